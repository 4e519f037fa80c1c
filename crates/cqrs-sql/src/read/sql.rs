//! The projector runner's statements (`sql/projector.sql`), shared by the
//! modules that write and read its tables.

/// The file; statements are read from it with [`crate::dialect::section`].
pub(crate) const SQL: &str = include_str!("../../sql/projector.sql");
