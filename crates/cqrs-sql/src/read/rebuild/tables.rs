//! The tables of a build: made from the projection's own migrations
//! without their secondary indexes, indexed once filled, and swapped in for
//! the live tables in the cutover's transaction (the live ones are kept as
//! `<table>__retired` for a grace period).

use crate::dialect::Dialect;
use crate::migrate::{run_step, Step};
use crate::read::versions::RETIRED;
use crate::read::Projection;
use sqlx::{AnyConnection, Executor};

/// The build tables' suffix for version `v` (`order_details__v2`).
pub fn suffix(v: i64) -> String {
    format!("__v{v}")
}

/// The build's index tag for version `v`.
pub fn tag(v: i64) -> String {
    format!("_v{v}")
}

fn is_index(step: &Step) -> bool {
    matches!(step, Step::Sql(s) if s.starts_with("CREATE INDEX"))
}

/// Every statement of a projection's migrations, its indexes named with `tag`.
fn ddl_of(p: &dyn Projection, tag: &str, dialect: &dyn Dialect) -> Vec<String> {
    p.migrations(tag)
        .iter()
        .flat_map(|m| m.statements(dialect))
        .collect()
}

/// The names of the indexes `ddl` makes.
fn index_names(ddl: &[String]) -> Vec<String> {
    ddl.iter()
        .filter_map(|s| s.strip_prefix("CREATE INDEX IF NOT EXISTS "))
        .filter_map(|s| s.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Drops `build`'s tables and makes them again, empty and without
/// secondary indexes.
pub async fn create(
    conn: &mut AnyConnection,
    dialect: &dyn Dialect,
    build: &dyn Projection,
    tag: &str,
) -> Result<(), sqlx::Error> {
    drop_tables(conn, &build.tables()).await?;
    for m in build.migrations(tag) {
        for step in m.steps.iter().filter(|s| !is_index(s)) {
            run_step(conn, dialect, step).await?;
        }
    }
    Ok(())
}

/// Drops these tables where they exist.
pub async fn drop_tables(conn: &mut AnyConnection, tables: &[String]) -> Result<(), sqlx::Error> {
    for t in tables {
        conn.execute(format!("DROP TABLE IF EXISTS {t}").as_str())
            .await?;
    }
    Ok(())
}

/// Makes `build`'s secondary indexes (under its tag) where the database
/// can rename them at the cutover; elsewhere the cutover makes them.
pub async fn index(
    conn: &mut AnyConnection,
    dialect: &dyn Dialect,
    build: &dyn Projection,
    tag: &str,
) -> Result<(), sqlx::Error> {
    if !dialect.renames_indexes() {
        return Ok(());
    }
    for m in build.migrations(tag) {
        for step in m.steps.iter().filter(|s| is_index(s)) {
            run_step(conn, dialect, step).await?;
        }
    }
    Ok(())
}

/// Inside the cutover's transaction: the live tables become
/// `<table>__retired` (without secondary indexes), the build's take their
/// names, and the indexes their canonical names.
pub async fn swap_in(
    tx: &mut AnyConnection,
    dialect: &dyn Dialect,
    build: &dyn Projection,
    live: &dyn Projection,
    tag: &str,
) -> Result<(), sqlx::Error> {
    let live_ddl = ddl_of(live, "", dialect);
    let canonical = index_names(&live_ddl);
    for (new_t, live_t) in build.tables().iter().zip(live.tables()) {
        tx.execute(format!("DROP TABLE IF EXISTS {live_t}{RETIRED}").as_str())
            .await?;
        tx.execute(format!("ALTER TABLE {live_t} RENAME TO {live_t}{RETIRED}").as_str())
            .await?;
        tx.execute(format!("ALTER TABLE {new_t} RENAME TO {live_t}").as_str())
            .await?;
    }
    for name in &canonical {
        tx.execute(format!("DROP INDEX IF EXISTS {name}").as_str())
            .await?;
    }
    if dialect.renames_indexes() {
        for (tagged, name) in index_names(&ddl_of(build, tag, dialect))
            .iter()
            .zip(&canonical)
        {
            tx.execute(format!("ALTER INDEX IF EXISTS {tagged} RENAME TO {name}").as_str())
                .await?;
        }
    } else {
        for s in live_ddl.iter().filter(|s| s.starts_with("CREATE INDEX")) {
            tx.execute(s.as_str()).await?;
        }
    }
    Ok(())
}
