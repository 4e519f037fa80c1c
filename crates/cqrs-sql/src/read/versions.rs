//! The version of each read model in a read DB (`read_model_versions`), and
//! the build of a newer one beside it (`read_model_builds`, one per
//! projector, held by its owner's heartbeat so that a build whose process
//! died is taken over and started again).

use super::sql::SQL;
use super::Projection;
use crate::db::Db;
use crate::dialect::section;
use std::sync::Arc;
use std::time::Duration;

/// A build whose heartbeat is older than this has no living owner.
pub const BUILD_STALE: Duration = Duration::from_secs(10);

/// How often a build's owner says it is alive (and how far it got).
pub const BUILD_HEARTBEAT: Duration = Duration::from_secs(1);

/// Why the versions cannot be settled.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The read DB failed.
    #[error("read database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The live read model is newer than this build knows: running this
    /// build's projector would write old meanings into new rows.
    #[error(
        "read model {projection} of {projector} is at version {live} in the read DB, this build \
         knows version {code}: run a build that knows it (or rebuild with this one: orders rebuild \
         --projection {projection})"
    )]
    Newer {
        /// The projector.
        projector: String,
        /// The projection.
        projection: String,
        /// The version its tables hold.
        live: i64,
        /// The version this build's code declares.
        code: i64,
    },
}

/// One read model's versions as the read DB records them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LiveVersion {
    /// The projection.
    pub projection: String,
    /// The version its live tables hold.
    pub live_version: i64,
    /// The version its retired tables (`<table>__retired`) hold, if kept.
    pub retired_version: Option<i64>,
    /// When those were retired (unix ms).
    pub retired_at_ms: Option<i64>,
}

/// A read model whose tables hold an older version than the code declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// The projection.
    pub projection: &'static str,
    /// The version its tables hold.
    pub live: i64,
    /// The version the code declares.
    pub code: i64,
}

/// A build of new versions, as its row says.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BuildRow {
    /// Which process holds it.
    pub owner: String,
    /// JSON: projection -> version being built.
    pub versions: String,
    /// JSON: the tables it builds (dropped when it is taken over).
    pub tables: String,
    /// When it started (unix ms).
    pub started_ms: i64,
    /// When its owner last said it is alive (unix ms).
    pub heartbeat_ms: i64,
    /// Events folded so far.
    pub done: i64,
    /// Events to fold before the catch-up.
    pub total: i64,
    /// What it is doing: starting, folding, writing, indexing, catching up,
    /// cutting over.
    pub phase: String,
}

impl BuildRow {
    /// Whether its owner is still alive at `now_ms`.
    pub fn is_alive(&self, now_ms: i64) -> bool {
        now_ms - self.heartbeat_ms < BUILD_STALE.as_millis() as i64
    }
}

/// Now, in unix ms.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Records the code's version of every projection the read DB has no
/// version of yet (its tables, made by this build or an older one, are
/// taken as holding it), and answers which ones are older than the code.
/// A projection that cannot be rebuilt takes its new version as it is. A
/// read model newer than the code is an error.
pub async fn reconcile(
    db: &Db,
    projector: &str,
    projections: &[Arc<dyn Projection>],
) -> Result<Vec<Stale>, VersionError> {
    for p in projections {
        sqlx::query(section(SQL, "register_version"))
            .bind(projector)
            .bind(p.name())
            .bind(p.version())
            .execute(&db.writer)
            .await?;
    }
    let live = live_versions(db, projector).await?;
    let mut stale = Vec::new();
    for p in projections {
        let Some(row) = live.iter().find(|r| r.projection == p.name()) else {
            continue;
        };
        let code = p.version();
        if row.live_version > code {
            return Err(VersionError::Newer {
                projector: projector.to_owned(),
                projection: p.name().to_owned(),
                live: row.live_version,
                code,
            });
        }
        if row.live_version == code {
            continue;
        }
        if p.rebuilt_into("").is_none() {
            tracing::info!(
                projector,
                projection = p.name(),
                from = row.live_version,
                to = code,
                "a read model that cannot be rebuilt from history takes its new version as it is"
            );
            sqlx::query(section(SQL, "set_live_version"))
                .bind(projector)
                .bind(p.name())
                .bind(code)
                .execute(&db.writer)
                .await?;
            continue;
        }
        stale.push(Stale {
            projection: p.name(),
            live: row.live_version,
            code,
        });
    }
    Ok(stale)
}

/// The recorded versions of `projector`'s read models.
pub async fn live_versions(db: &Db, projector: &str) -> Result<Vec<LiveVersion>, sqlx::Error> {
    sqlx::query_as(section(SQL, "live_versions"))
        .bind(projector)
        .fetch_all(&db.pool)
        .await
}

/// The build of `projector` in progress, if any (alive or not).
pub async fn build_of(db: &Db, projector: &str) -> Result<Option<BuildRow>, sqlx::Error> {
    sqlx::query_as(section(SQL, "build_of"))
        .bind(projector)
        .fetch_optional(&db.pool)
        .await
}

/// A build row with its projector.
#[derive(sqlx::FromRow)]
struct ProjectorBuild {
    projector: String,
    #[sqlx(flatten)]
    row: BuildRow,
}

/// Every build in the read DB, with its projector.
pub async fn builds(db: &Db) -> Result<Vec<(String, BuildRow)>, sqlx::Error> {
    let rows: Vec<ProjectorBuild> = sqlx::query_as(section(SQL, "builds"))
        .fetch_all(&db.pool)
        .await?;
    Ok(rows.into_iter().map(|b| (b.projector, b.row)).collect())
}

/// Cancels `projector`'s build, whichever process runs it: its row goes,
/// and its owner's next heartbeat (within [`BUILD_HEARTBEAT`]) stops it and
/// drops its tables. Answers whether there was a build to cancel. A build
/// already in its cutover's transaction completes.
pub async fn withdraw_build(db: &Db, projector: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(section(SQL, "withdraw_build"))
        .bind(projector)
        .execute(&db.writer)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Drops the retired tables of `projector`'s read models retired longer
/// than `grace` ago; answers the projections whose tables it dropped.
pub async fn drop_retired(
    db: &Db,
    projector: &str,
    projections: &[Arc<dyn Projection>],
    grace: Duration,
) -> Result<Vec<&'static str>, sqlx::Error> {
    let now = now_ms();
    let mut dropped = Vec::new();
    for row in live_versions(db, projector).await? {
        let Some(at) = row.retired_at_ms else {
            continue;
        };
        if now - at < grace.as_millis() as i64 {
            continue;
        }
        let Some(p) = projections.iter().find(|p| p.name() == row.projection) else {
            continue;
        };
        let mut tx = db.writer.begin().await?;
        for t in p.tables() {
            sqlx::query(&format!("DROP TABLE IF EXISTS {t}{RETIRED}"))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(section(SQL, "clear_retired"))
            .bind(projector)
            .bind(p.name())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        dropped.push(p.name());
    }
    Ok(dropped)
}

/// The suffix of a live table once retired by a cutover.
pub const RETIRED: &str = "__retired";
