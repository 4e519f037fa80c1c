//! SQL adapters of the CQRS pattern. Write side: an event store whose append
//! writes events (the log the relay publishes) and the idempotency record in
//! one transaction, shared by concurrent appends (group commit), and a command
//! handler with optimistic concurrency and a cache of aggregate states. Read side: a projector
//! runner that applies batches together with their checkpoint and drops
//! events it has already applied. Both run on PostgreSQL and SQLite.

pub mod batch;
pub mod command;
pub mod db;
pub mod migrate;
pub mod read;
pub mod store;

pub use command::{
    execute, execute_cached, CommandError, CommandOptions, CommandOutcome, StateCache,
};
pub use db::{Backend, Db, DbOptions};
pub use migrate::{AddedColumn, Component, MigrateError, Migration, Step};
pub use read::{
    EventSource, LogSource, Projection, ProjectionError, ProjectorConfig, ProjectorRunner,
    ReadProgress, SourceError, SourceKey, SourcedEvent, WaitOutcome, Waiter,
};
pub use store::{
    AppendRequest, Appended, EventStore, IdempotencyRecord, SqlEventStore, StoreError,
};
