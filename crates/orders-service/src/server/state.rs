//! What the request handlers share.

use super::access::Access;
use super::live::LiveFeed;
use crate::config::KafkaOptions;
use cqrs_sql::{Db, ReadProgress, SqlEventStore, StateCache};
use std::sync::Arc;
use tokio::sync::watch;

/// What request handlers share: one allocation, so that the clone every
/// request takes of it (axum's `State`) is one reference count, not one
/// per field (it showed in the command path's profile).
#[derive(Clone)]
pub struct App(Arc<AppState>);

impl App {
    /// Shares `state`.
    pub fn new(state: AppState) -> Self {
        Self(Arc::new(state))
    }
}

impl std::ops::Deref for App {
    type Target = AppState;

    fn deref(&self) -> &AppState {
        &self.0
    }
}

/// The parts of [`App`].
pub struct AppState {
    /// This process's write side: the orders' event store, or in an
    /// inventory-only process (`--role inventory`) the inventory's.
    pub store: SqlEventStore,
    /// Whether this process runs any of the order side (its routes, relay,
    /// projectors, saga).
    pub orders_here: bool,
    /// The inventory's write side (its own event store and outbox) and
    /// command handler, in a process that runs the inventory.
    pub inventory: Option<Arc<crate::inventory_link::LocalInventory>>,
    /// The order side's way to the inventory (the saga's commands, traces,
    /// tracked SKUs): in this process or over its service's API.
    pub inventory_link: Arc<dyn crate::inventory_link::InventoryLink>,
    /// The read DB.
    pub read: Db,
    /// The read model's progress, for consistency waits.
    pub progress: ReadProgress,
    /// The inventory read model's progress.
    pub inventory_progress: ReadProgress,
    /// Kafka, when it sits between the sides (for readiness and lag).
    pub kafka: Option<KafkaOptions>,
    /// The processors of this process's services (whose lag `/metrics`
    /// shows) and the console's feed.
    pub ops: super::ops::Ops,
    /// What the live page's streams forward.
    pub live: LiveFeed,
    /// Turns true when the server starts shutting down: streams end.
    pub closing: watch::Receiver<bool>,
    /// Whether this process runs the projector (its read DB must take writes).
    pub projects_here: bool,
    /// The last known state of recently commanded orders (commands skip
    /// reloading their history; a stale entry is caught at append).
    pub states: Arc<StateCache<orders::Order>>,
    /// Who may call which route.
    pub access: Access,
    /// Which SKUs the inventory tracks, as creates ask it.
    pub tracked: Arc<super::tracked::TrackedSkus>,
    /// Query answers kept in memory, current with the read progress.
    pub caches: super::cached::Caches,
    /// The customers' data keys (personal data), where the order side's
    /// write DB is open.
    pub keys: Option<Arc<cqrs_sql::shred::KeyRing>>,
}
