//! The projector runner's tables: checkpoints per source, the version
//! applied per aggregate (with its commit-ordered stamp), event traces and
//! query traces, and the statements the runner writes them with.

use super::dead_letters;
use super::{Projection, SourceKey};
use crate::batch::{self, Kind, Val};
use crate::db::{timestamp, Backend, Db};
use crate::migrate::{self, AddedColumn, Component, MigrateError, Migration};
use sqlx::{AnyConnection, Executor};
use std::collections::HashMap;
use std::sync::Arc;

/// The runner's own tables.
pub const CHECKPOINT_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS projector_checkpoints (
        projector TEXT NOT NULL,
        source_key TEXT NOT NULL,
        next_position BIGINT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (projector, source_key))",
    "CREATE TABLE IF NOT EXISTS projected_versions (
        projector TEXT NOT NULL,
        aggregate_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        position BIGINT NOT NULL,
        published_as TEXT NOT NULL,
        consumed_at TEXT NOT NULL,
        applied_at TEXT NOT NULL,
        seq BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (projector, aggregate_id))",
    // One row per projector: the last commit-ordered stamp handed out.
    "CREATE TABLE IF NOT EXISTS projector_progress (
        projector TEXT PRIMARY KEY,
        seq BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event_traces (
        projector TEXT NOT NULL,
        event_id TEXT NOT NULL,
        command_id TEXT NOT NULL,
        published_as TEXT NOT NULL,
        consumed_at TEXT NOT NULL,
        applied_at TEXT NOT NULL,
        PRIMARY KEY (projector, event_id))",
    "CREATE INDEX IF NOT EXISTS event_traces_applied ON event_traces (projector, applied_at)",
    "CREATE TABLE IF NOT EXISTS query_traces (
        aggregate_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        queried_at TEXT NOT NULL,
        PRIMARY KEY (aggregate_id, version))",
];

/// Indexes over columns that databases made before versioned migrations gain.
const CHECKPOINT_INDEXES: &[&str] = &[
    "DROP INDEX IF EXISTS projected_versions_applied",
    "CREATE INDEX IF NOT EXISTS projected_versions_seq ON projected_versions (projector, seq, aggregate_id)",
];

/// Reads and locks the applied versions of aggregates (absent: never applied).
pub(super) async fn lock_versions<'a>(
    tx: &mut AnyConnection,
    backend: Backend,
    projector: &str,
    ids: &[&'a str],
) -> Result<HashMap<&'a str, i64>, sqlx::Error> {
    versions(tx, backend, projector, ids, true).await
}

/// Reads the applied versions of `ids` (absent: never applied), locking
/// their rows on PostgreSQL when `lock`.
pub(super) async fn versions<'a>(
    tx: &mut AnyConnection,
    backend: Backend,
    projector: &str,
    ids: &[&'a str],
    lock: bool,
) -> Result<HashMap<&'a str, i64>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    // SQLite has one writer, so the transaction itself is the lock. On
    // PostgreSQL `= ANY(ARRAY(...))` keeps the primary key's index scan
    // whatever the planner guesses of the list's length.
    let sql = match backend {
        Backend::Postgres => format!(
            "SELECT aggregate_id, version FROM projected_versions WHERE projector = $1 \
             AND aggregate_id = ANY(ARRAY({})) ORDER BY aggregate_id{}",
            batch::keys(backend, 2),
            if lock { " FOR UPDATE" } else { "" }
        ),
        Backend::Sqlite => format!(
            "SELECT aggregate_id, version FROM projected_versions WHERE projector = $1 \
             AND aggregate_id IN ({})",
            batch::keys(backend, 2)
        ),
    };
    let rows = sqlx::query_as::<_, (String, i64)>(&sql)
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
    backend: Backend,
    projector: &str,
    aggregate_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    Ok(lock_versions(tx, backend, projector, &[aggregate_id])
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
                .sql(CHECKPOINT_SCHEMA.iter().copied())
                // Databases made before migrations were versioned may lack it.
                .add_column(AddedColumn {
                    table: "projected_versions".into(),
                    column: "seq",
                    definition: "BIGINT NOT NULL DEFAULT 0",
                    backfill: None,
                })
                .sql(CHECKPOINT_INDEXES.iter().copied())
                .sql(dead_letters::SCHEMA.iter().copied()),
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
    sqlx::query(
        "INSERT INTO projector_checkpoints (projector, source_key, next_position, updated_at) \
         VALUES ($1, 'probe', 0, '')",
    )
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
pub(super) async fn next_seq(tx: &mut AnyConnection, projector: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO projector_progress (projector, seq) VALUES ($1, 1) \
         ON CONFLICT (projector) DO UPDATE SET seq = projector_progress.seq + 1 RETURNING seq",
    )
    .bind(projector)
    .fetch_one(&mut *tx)
    .await
}

/// Moves the checkpoints forward (never back), in key order: one statement.
pub(super) async fn write_checkpoints(
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
        batch::backend_of(tx),
        3,
        &[("source_key", Kind::Text), ("next_position", Kind::Int)],
    );
    let sql = format!(
        "INSERT INTO projector_checkpoints (projector, source_key, next_position, updated_at) \
         SELECT $1, v.source_key, v.next_position, $2 FROM ({source}) AS v WHERE true \
         ON CONFLICT (projector, source_key) DO UPDATE SET \
         next_position = CASE WHEN excluded.next_position > projector_checkpoints.next_position \
         THEN excluded.next_position ELSE projector_checkpoints.next_position END, \
         updated_at = excluded.updated_at"
    );
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
    backend: Backend,
) -> Result<(), sqlx::Error> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT 1 FROM (SELECT pg_notify($1, '')) AS n")
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
    sqlx::query_as(
        "SELECT source_key, next_position, updated_at FROM projector_checkpoints WHERE projector = $1",
    )
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
    if batch::backend_of(tx) == Backend::Postgres {
        // A runner's first statement locks rows of projected_versions, so
        // it waits here before touching any table.
        tx.execute("LOCK TABLE projected_versions IN EXCLUSIVE MODE")
            .await?;
    } else {
        // Takes SQLite's write lock: every projector waits for `tx`.
        tx.execute("UPDATE projector_checkpoints SET updated_at = updated_at WHERE 1 = 0")
            .await?;
    }
    sqlx::query_as(
        "SELECT source_key, next_position, updated_at FROM projector_checkpoints WHERE projector = $1",
    )
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
