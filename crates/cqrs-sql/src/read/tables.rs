//! The projector runner's tables: checkpoints per source, the version
//! applied per aggregate (with its commit-ordered stamp), event traces and
//! query traces, and the statements the runner writes them with.

use super::dead_letters;
use super::{Projection, SourceKey};
use crate::batch::{self, Kind, Val};
use crate::db::{timestamp, Db};
use crate::dialect::{fill, section, Dialect};
use crate::migrate::{self, AddedColumn, Component, MigrateError, Migration};
use sqlx::{AnyConnection, Executor};
use std::collections::HashMap;
use std::sync::Arc;

use super::sql::SQL;

/// Reads and locks the applied versions of aggregates (absent: never applied).
pub(super) async fn lock_versions<'a>(
    tx: &mut AnyConnection,
    dialect: &dyn Dialect,
    projector: &str,
    ids: &[&'a str],
) -> Result<HashMap<&'a str, i64>, sqlx::Error> {
    versions(tx, dialect, projector, ids, true).await
}

/// Reads the applied versions of `ids` (absent: never applied), locking
/// their rows on PostgreSQL when `lock`.
pub(super) async fn versions<'a>(
    tx: &mut AnyConnection,
    dialect: &dyn Dialect,
    projector: &str,
    ids: &[&'a str],
    lock: bool,
) -> Result<HashMap<&'a str, i64>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = match lock {
        true => dialect.sql().versions_locked,
        false => dialect.sql().versions,
    };
    let rows = sqlx::query_as::<_, (String, i64)>(sql)
        .bind(projector)
        .bind(batch::keys_json(ids)?)
        .fetch_all(&mut *tx)
        .await?;
    let wanted: HashMap<&str, &'a str> = ids.iter().map(|k| (*k, *k)).collect();
    Ok(rows
        .into_iter()
        .filter_map(|(id, v)| wanted.get(id.as_str()).map(|k| (*k, v)))
        .collect())
}

/// Reads and locks one aggregate's applied version (None: never applied).
pub(super) async fn lock_version(
    tx: &mut AnyConnection,
    dialect: &dyn Dialect,
    projector: &str,
    aggregate_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    Ok(lock_versions(tx, dialect, projector, &[aggregate_id])
        .await?
        .get(aggregate_id)
        .copied())
}

/// The runner's tables and their migrations (component `projector`).
pub fn runner_component() -> Component {
    Component {
        name: "projector".into(),
        migrations: vec![
            Migration::new(1, "checkpoints, versions, traces, dead letters")
                .sql(
                    [
                        "checkpoints_table",
                        "versions_table",
                        "progress_table",
                        "event_traces_table",
                        "event_traces_index",
                        "query_traces_table",
                    ]
                    .map(|name| section(SQL, name)),
                )
                // Databases made before migrations were versioned may lack it.
                .add_column(AddedColumn {
                    table: "projected_versions".into(),
                    column: "seq",
                    definition: "BIGINT NOT NULL DEFAULT 0",
                    backfill: None,
                })
                .sql([
                    section(SQL, "drop_old_versions_index"),
                    section(SQL, "versions_seq_index"),
                ])
                .sql(dead_letters::schema()),
            Migration::new(2, "read model versions and builds").sql(
                ["read_model_versions_table", "read_model_builds_table"]
                    .map(|name| section(SQL, name)),
            ),
            Migration::new(3, "operators' actions").sql(super::audit::schema()),
        ],
    }
}

/// The component of each projection: `projection <name>`.
pub fn projection_components(projections: &[Arc<dyn Projection>]) -> Vec<Component> {
    projections
        .iter()
        .map(|p| Component {
            name: format!("projection {}", p.name()),
            migrations: p.migrations(""),
        })
        .collect()
}

/// Brings the runner's tables to this build's schema (also for processes
/// that only read them).
pub async fn ensure_schema(db: &Db) -> Result<(), MigrateError> {
    migrate::migrate(db, &[runner_component()]).await?;
    Ok(())
}

/// Whether the read DB accepts the runner's writes now: one checkpoint row
/// written and rolled back.
pub async fn check_writable(db: &Db) -> Result<(), sqlx::Error> {
    let mut tx = db.writer.begin().await?;
    sqlx::query(section(SQL, "probe_write"))
        .bind(format!("readiness-probe-{}", uuid::Uuid::new_v4()))
        .execute(&mut *tx)
        .await?;
    tx.rollback().await
}

/// Brings the runner's tables and those of `projections` to this build's
/// schema: what a process that serves queries needs even before any
/// projector has run.
pub async fn ensure_tables(
    db: &Db,
    projections: &[Arc<dyn Projection>],
) -> Result<(), MigrateError> {
    migrate::migrate(db, &read_components(projections)).await?;
    Ok(())
}

/// Every component of a read DB that holds `projections`.
pub fn read_components(projections: &[Arc<dyn Projection>]) -> Vec<Component> {
    let mut all = vec![runner_component()];
    all.extend(projection_components(projections));
    all
}

/// Takes the next commit-ordered stamp of `projector`. The counter row stays
/// locked until the caller's transaction ends, so stamps commit in the order
/// they are taken, whichever process takes them; take it as late as possible.
pub(crate) async fn next_seq(tx: &mut AnyConnection, projector: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(section(SQL, "next_seq"))
        .bind(projector)
        .fetch_one(&mut *tx)
        .await
}

/// Moves the checkpoints forward (never back), in key order: one statement.
pub(crate) async fn write_checkpoints(
    tx: &mut AnyConnection,
    projector: &str,
    checkpoints: &HashMap<&SourceKey, i64>,
    now: &str,
) -> Result<(), sqlx::Error> {
    if checkpoints.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<(&SourceKey, i64)> = checkpoints.iter().map(|(k, v)| (*k, *v)).collect();
    // One order for every writer, so two never wait on each other's rows.
    sorted.sort_unstable();
    let rows: Vec<Vec<Val>> = sorted
        .into_iter()
        .map(|(k, v)| vec![Val::Text(k.to_string()), Val::Int(v)])
        .collect();
    let source = batch::rows(
        batch::dialect_of(tx),
        3,
        &[("source_key", Kind::Text), ("next_position", Kind::Int)],
    );
    let sql = fill(section(SQL, "write_checkpoints"), &[("rows", &source)]);
    sqlx::query(&sql)
        .bind(projector)
        .bind(now)
        .bind(batch::rows_json(&rows)?)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Wakes followers in other processes once the transaction commits.
pub(super) async fn notify_progress(
    tx: &mut AnyConnection,
    dialect: &dyn Dialect,
) -> Result<(), sqlx::Error> {
    if let Some(notify) = dialect.sql().notify_progress {
        sqlx::query(notify)
            .bind(super::progress::PROGRESS_CHANNEL)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// The stored checkpoints of a projector: source key -> next position.
pub async fn load_checkpoints(
    db: &Db,
    projector: &str,
) -> Result<HashMap<SourceKey, i64>, sqlx::Error> {
    Ok(checkpoint_rows(db, projector)
        .await?
        .into_iter()
        .map(|c| (c.source_key, c.next_position))
        .collect())
}

/// A stored checkpoint with the time it last moved.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Checkpoint {
    /// The stream.
    pub source_key: SourceKey,
    /// The next position to read.
    pub next_position: i64,
    /// When a batch last moved it (RFC 3339).
    pub updated_at: String,
}

/// The stored checkpoints of a projector, with when each last moved.
pub async fn checkpoint_rows(db: &Db, projector: &str) -> Result<Vec<Checkpoint>, sqlx::Error> {
    sqlx::query_as(section(SQL, "checkpoints"))
        .bind(projector)
        .fetch_all(&db.pool)
        .await
}

/// Holds every live projector back until `tx` ends and returns where
/// `projector` stands: its checkpoints, which cannot move meanwhile (what a
/// replay must reach exactly before it swaps its tables in).
pub async fn lock_out_projectors(
    tx: &mut AnyConnection,
    projector: &str,
) -> Result<Vec<Checkpoint>, sqlx::Error> {
    tx.execute(batch::dialect_of(tx).sql().lock_out_projectors)
        .await?;
    sqlx::query_as(section(SQL, "checkpoints"))
        .bind(projector)
        .fetch_all(&mut *tx)
        .await
}

/// Moves a projector's checkpoint on one source forward to `next_position`
/// (never back): what lies before it is taken as projected already, as for
/// history imported with [`crate::SqlEventStore::import_generated`].
pub async fn advance_checkpoint(
    db: &Db,
    projector: &str,
    source_key: &SourceKey,
    next_position: i64,
) -> Result<(), super::ProjectionError> {
    ensure_schema(db).await?;
    let mut tx = db.writer.begin().await?;
    let checkpoint = HashMap::from([(source_key, next_position)]);
    write_checkpoints(
        &mut tx,
        projector,
        &checkpoint,
        &timestamp(chrono::Utc::now()),
    )
    .await?;
    Ok(tx.commit().await?)
}

/// Rows stored before get their new version.
pub(crate) const VERSIONS_UPDATE: &str = section(SQL, "versions_update");
/// New rows.
pub(crate) const VERSIONS_INSERT: &str = section(SQL, "versions_insert");
/// Either, where one writer makes it safe.
pub(crate) const VERSIONS_UPSERT: &str = section(SQL, "versions_upsert");

/// Runs one of the version statements over `rows` (none: nothing to do),
/// stamped (applied at, projector, seq).
pub(crate) async fn write_versions(
    tx: &mut AnyConnection,
    statement: &str,
    (now, projector, seq): (&str, &str, i64),
    rows: &[Vec<Val>],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let source = batch::rows(
        batch::dialect_of(tx),
        4,
        &[
            ("aggregate_id", Kind::Text),
            ("version", Kind::Int),
            ("position", Kind::Int),
            ("published_as", Kind::Text),
            ("consumed_at", Kind::Text),
        ],
    );
    sqlx::query(&fill(statement, &[("rows", &source)]))
        .bind(now)
        .bind(projector)
        .bind(seq)
        .bind(batch::rows_json(rows)?)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
