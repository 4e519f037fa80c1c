//! The bulk path of a rebuild: a projection folds history in memory into
//! the rows of its empty tables, and each table is written once with the
//! database's own bulk load (PostgreSQL `COPY`, SQLite prepared multi-row
//! inserts in one transaction), before its secondary indexes exist.

pub use crate::bulk::{copy_lines, BulkRows};
use crate::read::ProjectionError;
use cqrs_core::EventEnvelope;

/// A projection's fold of history into the rows of its empty tables.
pub trait BulkFold: Send {
    /// Folds the next events (in log order, each the next version of its
    /// aggregate).
    fn fold(&mut self, events: &[&EventEnvelope]) -> Result<(), ProjectionError>;
    /// The rows of every table.
    fn finish(self: Box<Self>) -> Result<Vec<BulkRows>, ProjectionError>;
}
