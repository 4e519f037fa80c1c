//! SQL adapters of the CQRS pattern. Write side: an event store whose append
//! writes events (the log the relay publishes) and the idempotency record in
//! one transaction, shared by concurrent appends (group commit), and a command
//! handler with optimistic concurrency and a cache of aggregate states. Read side: a projector
//! runner that applies batches together with their checkpoint and drops
//! events it has already applied. Both run on PostgreSQL and SQLite.
//!
//! - [`db`]: one pool type for both databases ([`Db::connect`]).
//! - [`dialect`]: everything that differs between them ([`Dialect`]); the
//!   statements live in `sql/*.sql`.
//! - [`migrate`]: versioned migrations per owner of tables, applied by
//!   [`SqlEventStore::open`] and [`ProjectorRunner::new`].
//! - [`store`]: the [`EventStore`] trait and [`SqlEventStore`].
//! - [`command`]: [`execute`], the command handler for any
//!   [`cqrs_core::Aggregate`].
//! - [`process`]: process managers (sagas) run as projections, exactly once
//!   in effect.
//! - [`read`]: [`Projection`] (your read model: its migrations and how it
//!   applies a batch), [`ProjectorRunner`], [`LogSource`], [`ReadProgress`].
//!
//! `cargo run -p cqrs-sql --example account` runs an aggregate of its own
//! (`examples/account.rs`) through the command handler. The store alone:
//!
//! ```
//! use cqrs_core::{EventMetadata, NewEvent};
//! use cqrs_sql::{AppendRequest, Db, DbOptions, EventStore, SqlEventStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let url = cqrs_sql::db::sqlite_url(&dir.path().join("events.db"));
//! let store = SqlEventStore::open(Db::connect(&url, &DbOptions::default()).await?).await?;
//! let appended = store
//!     .append(AppendRequest {
//!         aggregate_type: "ticket".into(),
//!         aggregate_id: "t-1".into(),
//!         expected_version: 0, // a new aggregate; a stale version is a conflict
//!         events: vec![NewEvent {
//!             event_id: "e-1".into(),
//!             event_type: "Opened".into(),
//!             schema_version: 1,
//!             payload: serde_json::json!({ "title": "printer on fire" }),
//!         }],
//!         metadata: EventMetadata {
//!             command_id: "c-1".into(),
//!             occurred_at: chrono::Utc::now(),
//!             caller: None,
//!             traceparent: None,
//!         },
//!         idempotency: None,
//!     })
//!     .await?;
//! assert_eq!(appended.events[0].version, 1);
//! let history = store.load("t-1").await?;
//! assert_eq!(history[0].payload["title"], "printer on fire");
//! // The log, in commit order, is what the relay publishes and projectors read.
//! assert_eq!(store.read_log(0, 10).await?.len(), 1);
//! # Ok(())
//! # }
//! ```

pub mod batch;
pub mod bulk;
pub mod command;
mod connect;
pub mod db;
pub mod dialect;
pub mod migrate;
pub mod process;
pub mod read;
pub mod shred;
pub mod store;

pub use command::{
    execute, execute_cached, CommandError, CommandOptions, CommandOutcome, StateCache,
};
pub use db::{ConnectError, Db, DbOptions};
pub use dialect::{Dialect, Postgres, Sqlite};
pub use migrate::{AddedColumn, Component, MigrateError, Migration, Step};
pub use read::{
    EventSource, LogSource, Projection, ProjectionError, ProjectorConfig, ProjectorRunner,
    ReadCache, ReadProgress, SourceError, SourceKey, SourcedEvent, Stamp, WaitOutcome, Waiter,
};
pub use store::{
    AppendRequest, Appended, EventStore, IdempotencyRecord, SqlEventStore, StoreError,
};
