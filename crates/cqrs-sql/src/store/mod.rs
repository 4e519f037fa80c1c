//! The write side: an append-only event log (which is also the outbox the
//! relay publishes, behind its checkpoint) with idempotency.

mod history;
mod identity;
mod sql;
mod writer;

pub use history::GeneratedHistory;

/// The channel appends notify at commit where the database can wake another
/// process (PostgreSQL's `append_postamble` in `sql/postgres.sql` names it).
pub const LOG_CHANNEL: &str = "cqrs_events";
pub use sql::{write_components, SqlEventStore};
pub use writer::AppendParts;

use cqrs_core::{EventEnvelope, EventMetadata, NewEvent};
use std::future::Future;
use tokio::sync::watch;

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the aggregate first.
    #[error("version conflict on {aggregate_id}: expected version {expected}")]
    VersionConflict {
        /// The aggregate.
        aggregate_id: String,
        /// The version the append was based on.
        expected: i64,
    },
    /// Another request with the same idempotency key committed first.
    #[error("idempotency key {0:?} was used concurrently")]
    DuplicateIdempotencyKey(String),
    /// History may only be imported behind a relay that has published
    /// everything (it is imported as already published).
    #[error("{pending} events are not yet published; import history when the relay is idle")]
    Unpublished {
        /// Events after the relay checkpoint.
        pending: i64,
    },
    /// A stored row does not make sense (bad JSON, broken version chain).
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The write DB could not be brought to this build's schema.
    #[error(transparent)]
    Schema(#[from] crate::migrate::MigrateError),
}

impl StoreError {
    /// The error code a client sees for it (an API answers a store that
    /// failed as unavailable, one whose data is corrupt as such).
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Corrupt(_) => "corrupt_store",
            StoreError::Schema(_) => "schema_mismatch",
            _ => "unavailable",
        }
    }
}

/// The idempotency record written with an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The key as stored: a caller's key within its scope
    /// ([`IdempotencyRecord::for_caller`]), or a process manager's own.
    pub key: String,
    /// Hash of what the request asked, to refuse reuse with another body.
    pub request_hash: String,
}

impl IdempotencyRecord {
    /// A caller's `Idempotency-Key` within its scope (the caller's
    /// identity; `""` for one shared scope when nobody is checked): stored
    /// as `<scope length in characters>:<scope>:<key>`, so that two callers'
    /// keys never meet, whatever either contains, and never meet a process
    /// manager's keys (`<name>/...`, which start with a letter).
    pub fn for_caller(scope: &str, key: &str, request_hash: String) -> Self {
        Self {
            key: format!("{}:{scope}:{key}", scope.chars().count()),
            request_hash,
        }
    }
}

/// What a stored idempotency key answered the first time.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredAnswer {
    /// Hash of the first request.
    pub request_hash: String,
    /// The aggregate it touched.
    pub aggregate_id: String,
    /// The command id it was given.
    pub command_id: String,
    /// Aggregate version after it.
    pub version: i64,
    /// Log position of its last event.
    pub position: i64,
}

/// One append: events of one aggregate, from one command.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    /// "order".
    pub aggregate_type: String,
    /// Which aggregate.
    pub aggregate_id: String,
    /// The version the decision was based on (0 for a new aggregate).
    pub expected_version: i64,
    /// The events, in order.
    pub events: Vec<NewEvent>,
    /// Command id and decision time, stored on every event.
    pub metadata: EventMetadata,
    /// Written in the same transaction when present.
    pub idempotency: Option<IdempotencyRecord>,
}

/// What an append stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    /// The stored events with their positions.
    pub events: Vec<EventEnvelope>,
}

/// An event store: append with optimistic concurrency, load, tail the log.
pub trait EventStore: Send + Sync {
    /// The events of one aggregate, in version order.
    fn load(
        &self,
        aggregate_id: &str,
    ) -> impl Future<Output = Result<Vec<EventEnvelope>, StoreError>> + Send;

    /// Appends events (the log the relay publishes) and the idempotency record in one
    /// transaction; `VersionConflict` when the expected version is stale.
    fn append(
        &self,
        request: AppendRequest,
    ) -> impl Future<Output = Result<Appended, StoreError>> + Send;

    /// The answer stored for an idempotency key, if any.
    fn idempotent_answer(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<StoredAnswer>, StoreError>> + Send;

    /// The log position of the aggregate's event at `version`, if there is
    /// one: whether a consistency token names a write that happened.
    fn position_of(
        &self,
        aggregate_id: &str,
        version: i64,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Committed events after a log position, in position order, such that no
    /// event with a smaller position can commit later.
    fn read_log(
        &self,
        after: i64,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<EventEnvelope>, StoreError>> + Send;

    /// The highest log position appended so far, by any process (0 when empty).
    fn head_position(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Events the relay has not published yet (after its checkpoint).
    fn outbox_pending(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// Changes whenever this process commits an append (the last position).
    fn subscribe(&self) -> watch::Receiver<i64>;
}

/// Hash of a request's identifying parts, for idempotency keys.
pub fn request_hash(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}
