//! The read side: projections, the runner that feeds them, event sources and
//! the progress that consistency waits watch.

pub mod audit;
pub mod cache;
pub mod classify;
pub mod dead_letters;
mod log_source;
mod progress;
mod query_traces;
pub mod rebuild;
pub mod runner;
mod source_key;
mod sql;
mod tables;
pub mod traces;
pub mod versions;

pub use cache::{ReadCache, Stamp};
pub use log_source::LogSource;
pub use progress::{ReadProgress, WaitOutcome, Waiter, CUTOVER_MARK, PROGRESS_CHANNEL};
pub use runner::{ProjectorConfig, ProjectorRunner};
pub use source_key::{BadSourceKey, SourceKey};

use crate::migrate::{MigrateError, Migration};
use chrono::{DateTime, Utc};
use cqrs_core::EventEnvelope;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

/// Why a projection could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The payload does not decode into the domain's event type.
    #[error("event {event_type} v{schema_version} does not decode: {source}")]
    Decode {
        /// Its type.
        event_type: String,
        /// Its schema version.
        schema_version: i32,
        /// Why: serde's complaint, a failed upcast, or a newer version.
        source: cqrs_core::DecodeError,
    },
    /// The event contradicts the read model (e.g. paid before created).
    #[error("event does not fit the read model: {0}")]
    Inconsistent(String),
    /// The read database failed.
    #[error("read database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The read database could not be brought to this build's schema.
    #[error(transparent)]
    Schema(#[from] MigrateError),
    /// A service the projection calls is away (a process manager's command
    /// store): the batch is retried until it answers, never dead-lettered.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A record could not be sent to the dead-letter channel (the broker is
    /// away): the batch is retried, nothing is skipped.
    #[error("dead-letter channel: {0}")]
    DeadLetterChannel(#[source] SourceError),
}

/// A read model fed by events. It applies a batch of new events (in log
/// order, each the next version of its aggregate) inside the runner's open
/// transaction; the runner owns batching, checkpoints, dedupe and dead letters.
pub trait Projection: Send + Sync {
    /// Name, unique per read DB ("order_details").
    fn name(&self) -> &'static str;
    /// Its tables, as this instance names them.
    fn tables(&self) -> Vec<String>;
    /// Its tables' migrations, oldest first (indexes named after
    /// `index_tag`; a replay builds fresh tables from them with its own
    /// tag). Released migrations are never edited: a change is a new one.
    fn migrations(&self, index_tag: &str) -> Vec<Migration>;
    /// Applies events.
    fn apply<'a>(
        &'a self,
        tx: &'a mut sqlx::AnyConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Result<(), ProjectionError>>;
    /// The version of what its rows mean: a deployment that raises it gets
    /// the read model rebuilt from history beside the live one
    /// ([`rebuild`]). A schema change alone is a migration, not a version.
    fn version(&self) -> i64 {
        1
    }
    /// The same projection over tables named with `suffix` (a rebuild's own
    /// tables); None where it cannot be rebuilt from history (a process
    /// manager, whose state is never rebuilt by issuing its commands again).
    fn rebuilt_into(&self, suffix: &str) -> Option<Arc<dyn Projection>> {
        let _ = suffix;
        None
    }
    /// A fold of history in memory into empty tables, written once at the
    /// end with the database's bulk load (None: a rebuild applies batches).
    fn bulk(&self) -> Option<Box<dyn rebuild::BulkFold>> {
        None
    }
    /// Whether it acts ahead of its batches ([`Projection::ahead`]).
    fn acts_ahead(&self) -> bool {
        false
    }
    /// Before a batch's transaction opens: slow side effects for the events
    /// about to be applied (a process manager's commands), so that they do
    /// not hold the read DB's writer. `snapshot` reads the read DB as of
    /// one moment, the one whose applied versions chose `events`. `apply`
    /// then uses what this did where nothing changed since, and does it
    /// again (idempotently) where something did.
    fn ahead<'a>(
        &'a self,
        snapshot: &'a mut sqlx::AnyConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        let _ = (snapshot, events);
        Box::pin(async { Ok(()) })
    }
}

/// An event as a source delivers it, with where to resume after it.
#[derive(Debug, Clone)]
pub struct SourcedEvent {
    /// Which stream of the source it came from.
    pub source_key: SourceKey,
    /// The position to resume from once this event is handled.
    pub next_position: i64,
    /// Where it was published (e.g. "orders.events/3@1207", "log@17").
    pub published_as: String,
    /// When the source handed it over.
    pub consumed_at: DateTime<Utc>,
    /// The aggregate as the transport names it (the Kafka key), even when
    /// the record does not decode.
    pub key: Option<String>,
    /// The event, or why the record is not one.
    pub event: Result<EventEnvelope, String>,
    /// The record as received, kept with a dead letter (JSON).
    pub raw: Option<serde_json::Value>,
}

impl SourcedEvent {
    /// The aggregate this record belongs to, if known.
    pub fn aggregate_id(&self) -> Option<&str> {
        match &self.event {
            Ok(e) => Some(&e.aggregate_id),
            Err(_) => self.key.as_deref(),
        }
    }
}

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading the write store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The read DB (where checkpoints are) failed.
    #[error("read database: {0}")]
    ReadDb(#[from] sqlx::Error),
    /// The broker, or the client talking to it, failed.
    #[error("{what}: {source}")]
    Broker {
        /// What the source was doing.
        what: &'static str,
        /// The client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The source was closed before the call.
    #[error("the event source is closed")]
    Closed,
    /// A lock inside the source was poisoned by a panic.
    #[error("{0} is poisoned (a thread panicked holding it)")]
    Poisoned(&'static str),
    /// The source can never read again (e.g. a consumer fenced by another
    /// process with its group instance id): the projector stops with it.
    #[error("{0}")]
    Fatal(String),
}

impl SourceError {
    /// A broker failure while doing `what`.
    pub fn broker(what: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        SourceError::Broker {
            what,
            source: Box::new(e),
        }
    }
}

/// Where a projector gets events from: the write store's log (embedded) or a
/// Kafka topic. The runner stores checkpoints; the source resumes from them.
pub trait EventSource: Send {
    /// What it delivers, from the beginning (how a projector far behind
    /// catches up in bulk); [`rebuild::NoHistory`] for a source without.
    type History: rebuild::History;

    /// Its history, opened (None: it has none); nothing is read before the
    /// first read.
    fn history(&self) -> impl Future<Output = Result<Option<Self::History>, SourceError>> + Send;

    /// Positions to resume from, as stored in the read DB, before the first batch.
    fn resume(
        &mut self,
        checkpoints: &HashMap<SourceKey, i64>,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// The next events; waits until at least one is available.
    fn next_batch(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Vec<SourcedEvent>, SourceError>> + Send;

    /// Publishes a record the projector gave up on to the source's dead-letter
    /// channel; called before the batch that records it commits.
    fn dead_letter(
        &mut self,
        _item: &SourcedEvent,
        _reason: &str,
    ) -> impl Future<Output = Result<(), SourceError>> + Send {
        async { Ok(()) }
    }

    /// Told after a batch committed to the read DB (for lag tooling).
    fn committed(
        &mut self,
        _checkpoints: &[(SourceKey, i64)],
    ) -> impl Future<Output = Result<(), SourceError>> + Send {
        async { Ok(()) }
    }
}
