//! PostgreSQL dialect of the event store.

use super::sql::Dialect;

/// PostgreSQL: many writers (advisory key 1869767794 = "ordr" guards the log), so identity values are allocated in start order,
/// not commit order. Appends hold a shared advisory lock from before their
/// position is allocated until commit; a log reader briefly takes it
/// exclusively to learn a horizon below which every position is final.
pub(crate) struct Postgres;

impl Dialect for Postgres {
    fn schema(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE IF NOT EXISTS events (
                position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                event_id TEXT NOT NULL UNIQUE,
                aggregate_type TEXT NOT NULL,
                aggregate_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                event_type TEXT NOT NULL,
                schema_version BIGINT NOT NULL,
                payload JSONB NOT NULL,
                command_id TEXT NOT NULL,
                occurred_at TEXT NOT NULL,
                recorded_at TEXT NOT NULL,
                CONSTRAINT events_aggregate_version UNIQUE (aggregate_id, version))",
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
        "payload::text"
    }

    fn append_preamble(&self) -> Option<&'static str> {
        Some("SELECT 1 FROM (SELECT pg_advisory_xact_lock_shared(1869767794)) AS l")
    }

    fn append_postamble(&self) -> Option<&'static str> {
        // Delivered at commit: wakes the relay without polling.
        Some("SELECT 1 FROM (SELECT pg_notify('cqrs_events', '')) AS n")
    }

    fn log_horizon(&self) -> Option<&'static str> {
        // One statement, one round trip: the exclusive lock is granted
        // only once every append that took the shared lock before it has
        // committed, and appends that come after allocate above anything
        // this statement's snapshot holds. So every position up to the MAX
        // it returns is final, whichever of the two it evaluates first. The
        // events themselves must be read by a later statement (a snapshot
        // taken after the wait).
        Some(
            "SELECT (SELECT CAST(COALESCE(MAX(position), 0) AS BIGINT) FROM events) \
             FROM (SELECT pg_advisory_xact_lock(1869767794)) AS l",
        )
    }
}
