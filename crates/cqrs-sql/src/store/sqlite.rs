//! SQLite dialect of the event store.

use super::sql::Dialect;

/// SQLite: one writer, so positions are assigned in commit order.
pub(crate) struct Sqlite;

impl Dialect for Sqlite {
    fn schema(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE IF NOT EXISTS events (
                position INTEGER PRIMARY KEY AUTOINCREMENT,
                event_id TEXT NOT NULL UNIQUE,
                aggregate_type TEXT NOT NULL,
                aggregate_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                event_type TEXT NOT NULL,
                schema_version BIGINT NOT NULL,
                payload TEXT NOT NULL,
                command_id TEXT NOT NULL,
                occurred_at TEXT NOT NULL,
                recorded_at TEXT NOT NULL,
                UNIQUE (aggregate_id, version))",
            "CREATE INDEX IF NOT EXISTS events_command ON events (command_id)",
            "CREATE TABLE IF NOT EXISTS idempotency (
                key TEXT PRIMARY KEY,
                request_hash TEXT NOT NULL,
                aggregate_id TEXT NOT NULL,
                command_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                position BIGINT NOT NULL,
                created_at TEXT NOT NULL)",
        ]
    }

    fn payload_column(&self) -> &'static str {
        "payload"
    }

    fn append_preamble(&self) -> Option<&'static str> {
        None
    }

    fn append_postamble(&self) -> Option<&'static str> {
        None
    }

    fn log_horizon(&self) -> Option<&'static str> {
        None
    }
}
