//! The service's databases brought to this build's schema: which owners of
//! tables live in the write DB and which in the read DB, migrated at start
//! (or by `orders migrate`) or only checked (`--no-migrate`).

use cqrs_sql::migrate::{self, Applied};
use cqrs_sql::{Component, Db};

/// The owners of tables in the write DB.
pub fn write_components(write: &Db) -> Vec<Component> {
    cqrs_sql::store::write_components(write.backend)
}

/// The owners of tables in the read DB: the projector runner and each order
/// projection.
pub fn read_components() -> Vec<Component> {
    cqrs_sql::read::runner::read_components(&orders::read_model::projections())
}

/// Applies what either database lacks (`apply`), or refuses with the list
/// of what is due; returns what it applied.
pub async fn bring_current(
    write: &Db,
    read: &Db,
    apply: bool,
) -> Result<Vec<Applied>, migrate::MigrateError> {
    let targets = [(write, write_components(write)), (read, read_components())];
    let mut applied = Vec::new();
    for (db, components) in &targets {
        if apply {
            applied.extend(migrate::migrate(db, components).await?);
        } else {
            migrate::ensure_current(db, components).await?;
        }
    }
    Ok(applied)
}

/// What is due on either database, without applying it.
pub async fn pending(write: &Db, read: &Db) -> Result<Vec<Applied>, migrate::MigrateError> {
    let mut due = migrate::pending(write, &write_components(write)).await?;
    due.extend(migrate::pending(read, &read_components()).await?);
    Ok(due)
}
