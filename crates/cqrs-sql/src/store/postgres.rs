//! PostgreSQL dialect of the event store.

use super::sql::Dialect;

/// PostgreSQL: many writers (advisory key 1869767794 = "ordr" guards the log), so identity values are allocated in start order,
/// not commit order. Appends hold a shared advisory lock from before their
/// position is allocated until commit; a log reader briefly takes it
/// exclusively to learn a horizon below which every position is final.
pub(crate) struct Postgres;

impl Dialect for Postgres {
    fn position_column(&self) -> &'static str {
        "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    }

    fn payload_type(&self) -> &'static str {
        "JSONB"
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
