//! SQL adapters of the CQRS pattern. Write side: an event store whose append
//! writes events, outbox rows and the idempotency record in one transaction,
//! and a command handler with optimistic concurrency. Read side: a projector
//! runner that applies batches together with their checkpoint and drops
//! events it has already applied. Both run on PostgreSQL and SQLite.

pub mod batch;
pub mod command;
pub mod db;
pub mod read;
pub mod store;

pub use command::{execute, CommandError, CommandOptions, CommandOutcome};
pub use db::{Backend, Db, DbOptions};
pub use read::{
    AddedColumn, EventSource, LogSource, Projection, ProjectionError, ProjectorConfig,
    ProjectorRunner, ReadProgress, SourceError, SourcedEvent, WaitOutcome, Waiter, LOG_KEY,
};
pub use store::{
    AppendRequest, Appended, EventStore, IdempotencyRecord, SqlEventStore, StoreError,
};
