//! The service's databases brought to this build's schema: which owners of
//! tables live in which database (the orders' write DB, the inventory's
//! write DB, the shared read DB), migrated at start (or by `orders
//! migrate`) or only checked (`--no-migrate`).

use cqrs_sql::migrate::{self, Applied};
use cqrs_sql::{Component, Db};

/// The databases of one process: the orders' write DB (none in an
/// inventory-only process), the inventory's own write DB (none where the
/// inventory runs elsewhere), and the read DB of this process's read models.
pub struct Databases {
    /// The orders' event store.
    pub write: Option<Db>,
    /// The inventory's event store.
    pub inventory: Option<Db>,
    /// The read models.
    pub read: Db,
}

impl Databases {
    /// Each database with what it is to this process, the read DB last
    /// (once: not again where it is the write DB).
    pub fn named(&self) -> Vec<(&'static str, &Db)> {
        let mut out: Vec<(&'static str, &Db)> = Vec::new();
        if let Some(w) = &self.write {
            out.push(("write", w));
        }
        if let Some(i) = &self.inventory {
            out.push(("inventory", i));
        }
        if !out.iter().any(|(_, d)| d.url() == self.read.url()) {
            out.push(("read", &self.read));
        }
        out
    }
}

/// The owners of tables in an event store's database.
pub fn write_components(write: &Db) -> Vec<Component> {
    cqrs_sql::store::write_components(write.dialect)
}

/// The owners of tables in the read DB: the projector runner and each
/// projection of both services.
pub fn read_components() -> Vec<Component> {
    let mut projections = orders::read_model::projections();
    projections.extend(inventory::read_model::projections());
    let mut components = cqrs_sql::read::runner::read_components(&projections);
    components.push(Component {
        name: format!("projection {}", crate::saga::SAGA),
        migrations: cqrs_sql::process::instance_migrations(),
    });
    components
}

fn targets(dbs: &Databases) -> Vec<(&Db, Vec<Component>)> {
    let mut out: Vec<(&Db, Vec<Component>)> = [&dbs.write, &dbs.inventory]
        .into_iter()
        .flatten()
        .map(|db| (db, write_components(db)))
        .collect();
    out.push((&dbs.read, read_components()));
    out
}

/// Applies what any database lacks (`apply`), or refuses with the list of
/// what is due; returns what it applied.
pub async fn bring_current(
    dbs: &Databases,
    apply: bool,
) -> Result<Vec<Applied>, migrate::MigrateError> {
    let mut applied = Vec::new();
    for (db, components) in &targets(dbs) {
        if apply {
            applied.extend(migrate::migrate(db, components).await?);
        } else {
            migrate::ensure_current(db, components).await?;
        }
    }
    Ok(applied)
}

/// What is due on any database, without applying it.
pub async fn pending(dbs: &Databases) -> Result<Vec<Applied>, migrate::MigrateError> {
    let mut due = Vec::new();
    for (db, components) in &targets(dbs) {
        due.extend(migrate::pending(db, components).await?);
    }
    Ok(due)
}
