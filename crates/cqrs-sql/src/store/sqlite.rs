//! SQLite dialect of the event store.

use super::sql::Dialect;

/// SQLite: one writer, so positions are assigned in commit order.
pub(crate) struct Sqlite;

impl Dialect for Sqlite {
    fn position_column(&self) -> &'static str {
        // AUTOINCREMENT: a position is never reused, even after the newest
        // event is gone.
        "INTEGER PRIMARY KEY AUTOINCREMENT"
    }

    fn payload_type(&self) -> &'static str {
        "TEXT"
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
