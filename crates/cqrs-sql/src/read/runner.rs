//! The projector runner: takes batches from a source and applies each in one
//! read-DB transaction together with its checkpoints, dropping any event whose
//! (aggregate id, version) it has already applied, and dead-lettering records
//! it cannot apply (parking the rest of their aggregate behind them).

use super::dead_letters::{self, DeadLetterStatus};
use super::{EventSource, Projection, ProjectionError, ReadProgress, SourceError, SourcedEvent};
use crate::db::{timestamp, Backend, Db};
use cqrs_core::EventEnvelope;
use sqlx::{AnyConnection, Row};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

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
        PRIMARY KEY (projector, aggregate_id))",
    "CREATE INDEX IF NOT EXISTS projected_versions_applied ON projected_versions (projector, applied_at)",
];

/// How a projector runs.
#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// Name under which checkpoints and versions are stored.
    pub name: String,
    /// Most events per read-DB transaction.
    pub batch_size: usize,
    /// Artificial delay before applying each batch (to show stale reads).
    pub apply_delay: Duration,
    /// Attempts of a record whose projection fails in the database before it
    /// is dead-lettered.
    pub max_attempts: u32,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            name: "read_model".into(),
            batch_size: 500,
            apply_delay: Duration::ZERO,
            max_attempts: 3,
        }
    }
}

/// Why the runner stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The source failed for good.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The read DB failed while starting.
    #[error("read database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// A batch that failed at one record.
#[derive(Debug, thiserror::Error)]
#[error("record {index:?} of the batch: {error}")]
pub struct BatchError {
    /// Index of the failing record in the batch (None: not record-specific).
    pub index: Option<usize>,
    /// What failed.
    pub error: ProjectionError,
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        BatchError {
            index: None,
            error: e.into(),
        }
    }
}

/// How a batch went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    /// Events applied.
    pub applied: usize,
    /// Events dropped because their version was already applied.
    pub duplicates: usize,
    /// Records dead-lettered or parked.
    pub dead_lettered: usize,
}

/// Feeds projections from an event source.
pub struct ProjectorRunner {
    db: Db,
    config: ProjectorConfig,
    projections: Vec<Arc<dyn Projection>>,
    progress: ReadProgress,
    /// Aggregates with open dead letters (confirmed against the DB before use).
    parked: Mutex<HashSet<String>>,
    /// Records that failed deterministically: (source key, next position) -> reason.
    poison: Mutex<HashMap<(String, i64), String>>,
}

impl ProjectorRunner {
    /// A runner; creates the runner's and the projections' tables.
    pub async fn new(
        db: Db,
        config: ProjectorConfig,
        projections: Vec<Arc<dyn Projection>>,
    ) -> Result<Self, sqlx::Error> {
        db.migrate(CHECKPOINT_SCHEMA).await?;
        db.migrate(dead_letters::SCHEMA).await?;
        for p in &projections {
            db.migrate(p.schema()).await?;
        }
        let progress = ReadProgress::new(db.clone(), config.name.clone());
        let parked = dead_letters::parked_aggregates(&db, &config.name).await?;
        Ok(Self {
            db,
            config,
            projections,
            progress,
            parked: Mutex::new(parked),
            poison: Mutex::new(HashMap::new()),
        })
    }

    /// The progress handle that consistency waits use.
    pub fn progress(&self) -> ReadProgress {
        self.progress.clone()
    }

    /// The projector's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The read DB.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The stored checkpoints: source key -> next position.
    pub async fn checkpoints(&self) -> Result<HashMap<String, i64>, sqlx::Error> {
        load_checkpoints(&self.db, &self.config.name).await
    }

    /// Runs until `shutdown` turns true. Failed batches are retried with
    /// backoff; a record that keeps failing is dead-lettered; nothing is skipped.
    pub async fn run<S: EventSource>(
        self,
        mut source: S,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), RunnerError> {
        source.resume(&self.checkpoints().await?).await?;
        let mut attempts: HashMap<(String, i64), u32> = HashMap::new();
        loop {
            let batch = tokio::select! {
                b = source.next_batch(self.config.batch_size) => b?,
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            };
            if !self.config.apply_delay.is_zero() {
                tokio::time::sleep(self.config.apply_delay).await;
            }
            let mut backoff = Duration::from_millis(50);
            let checkpoints = loop {
                match self.apply_batch(&batch, &mut source).await {
                    Ok((_, checkpoints)) => break checkpoints,
                    Err(e) => {
                        if let Some(item) = e.index.and_then(|i| batch.get(i)) {
                            let key = (item.source_key.clone(), item.next_position);
                            let n = attempts.entry(key.clone()).or_insert(0);
                            *n += 1;
                            let deterministic = !matches!(e.error, ProjectionError::Db(_));
                            if deterministic || *n >= self.config.max_attempts {
                                tracing::warn!(projector = %self.config.name, record = %item.published_as,
                                    error = %e.error, "dead-lettering record");
                                if let Ok(mut p) = self.poison.lock() {
                                    p.insert(key, e.error.to_string());
                                }
                                continue;
                            }
                        }
                        tracing::error!(projector = %self.config.name, error = %e, "batch failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.wait_for(|s| *s) => return Ok(()),
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            };
            attempts.clear();
            if let Ok(mut p) = self.poison.lock() {
                p.clear();
            }
            source.committed(&checkpoints).await?;
        }
    }

    fn is_parked(&self, aggregate_id: &str) -> bool {
        self.parked
            .lock()
            .map(|p| p.contains(aggregate_id))
            .unwrap_or(true)
    }

    /// Applies one batch in one transaction with its checkpoints.
    pub async fn apply_batch<S: EventSource>(
        &self,
        batch: &[SourcedEvent],
        source: &mut S,
    ) -> Result<(BatchReport, Vec<(String, i64)>), BatchError> {
        let mut report = BatchReport::default();
        let mut tx = self.db.writer.begin().await?;
        let mut versions: HashMap<&str, Option<i64>> = HashMap::new();
        let mut applied: HashMap<&str, i64> = HashMap::new();
        let mut checkpoints: HashMap<&str, i64> = HashMap::new();
        let mut newly_parked: Vec<String> = Vec::new();
        let now = timestamp(chrono::Utc::now());
        for (index, item) in batch.iter().enumerate() {
            let cp = checkpoints
                .entry(&item.source_key)
                .or_insert(item.next_position);
            *cp = (*cp).max(item.next_position);
            let poisoned = self.poison.lock().ok().and_then(|p| {
                p.get(&(item.source_key.clone(), item.next_position))
                    .cloned()
            });
            let failure = match (&item.event, poisoned) {
                (Err(reason), _) => Err(reason.clone()),
                (Ok(_), Some(reason)) => Err(reason),
                (Ok(e), None) => Ok(e),
            };
            let event = match failure {
                Err(reason) => {
                    source
                        .dead_letter(item, &reason)
                        .await
                        .map_err(|e| BatchError {
                            index: None,
                            error: ProjectionError::Inconsistent(format!(
                                "dead-letter channel: {e}"
                            )),
                        })?;
                    dead_letters::record(
                        &mut tx,
                        &self.config.name,
                        item,
                        &reason,
                        DeadLetterStatus::Dead,
                        &now,
                    )
                    .await?;
                    if let Some(a) = item.aggregate_id() {
                        newly_parked.push(a.to_owned());
                    }
                    report.dead_lettered += 1;
                    continue;
                }
                Ok(e) => e,
            };
            let id = event.aggregate_id.as_str();
            let current = match versions.get(id) {
                Some(v) => *v,
                None => {
                    let v = lock_version(&mut tx, self.db.backend, &self.config.name, id).await?;
                    versions.insert(id, v);
                    v
                }
            };
            let mut parked = newly_parked.iter().any(|p| p == id);
            if !parked && self.is_parked(id) {
                parked = dead_letters::has_open(&mut tx, &self.config.name, id).await?;
                if !parked {
                    // Released by a retry or discard, maybe in another process.
                    if let Ok(mut p) = self.parked.lock() {
                        p.remove(id);
                    }
                }
            }
            if parked {
                let reason = format!("parked: aggregate {id} has an earlier dead letter");
                dead_letters::record(
                    &mut tx,
                    &self.config.name,
                    item,
                    &reason,
                    DeadLetterStatus::Parked,
                    &now,
                )
                .await?;
                newly_parked.push(id.to_owned());
                report.dead_lettered += 1;
                continue;
            }
            let cur = current.unwrap_or(0);
            if event.version <= cur {
                report.duplicates += 1;
                continue;
            }
            if event.version != cur + 1 {
                let reason = format!(
                    "version gap: read model has {id} at version {cur}, record is version {}",
                    event.version
                );
                source
                    .dead_letter(item, &reason)
                    .await
                    .map_err(|e| BatchError {
                        index: None,
                        error: ProjectionError::Inconsistent(format!("dead-letter channel: {e}")),
                    })?;
                dead_letters::record(
                    &mut tx,
                    &self.config.name,
                    item,
                    &reason,
                    DeadLetterStatus::Dead,
                    &now,
                )
                .await?;
                newly_parked.push(id.to_owned());
                report.dead_lettered += 1;
                continue;
            }
            self.apply_one(
                &mut tx,
                event,
                current.is_some(),
                &item.published_as,
                item.consumed_at,
                &now,
            )
            .await
            .map_err(|error| BatchError {
                index: Some(index),
                error,
            })?;
            versions.insert(id, Some(event.version));
            applied.insert(id, event.version);
            report.applied += 1;
        }
        for (key, next) in &checkpoints {
            sqlx::query(
                "INSERT INTO projector_checkpoints (projector, source_key, next_position, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (projector, source_key) DO UPDATE SET \
                 next_position = CASE WHEN excluded.next_position > projector_checkpoints.next_position \
                 THEN excluded.next_position ELSE projector_checkpoints.next_position END, \
                 updated_at = excluded.updated_at",
            )
            .bind(&self.config.name)
            .bind(*key)
            .bind(*next)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if let Ok(mut p) = self.parked.lock() {
            p.extend(newly_parked);
        }
        self.progress.applied(applied.iter().map(|(k, v)| (*k, *v)));
        if report.duplicates > 0 || report.dead_lettered > 0 {
            tracing::info!(projector = %self.config.name, applied = report.applied, duplicates = report.duplicates,
                dead_lettered = report.dead_lettered, "batch had records already applied or dead-lettered");
        }
        let checkpoints = checkpoints
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        Ok((report, checkpoints))
    }

    /// Applies one event to every projection and records its version.
    pub(crate) async fn apply_one(
        &self,
        tx: &mut AnyConnection,
        event: &EventEnvelope,
        existed: bool,
        published_as: &str,
        consumed_at: chrono::DateTime<chrono::Utc>,
        now: &str,
    ) -> Result<(), ProjectionError> {
        for p in &self.projections {
            p.apply(tx, event).await?;
        }
        let sql = if existed {
            "UPDATE projected_versions SET version = $3, position = $4, published_as = $5, consumed_at = $6, \
             applied_at = $7 WHERE projector = $1 AND aggregate_id = $2"
        } else {
            "INSERT INTO projected_versions \
             (projector, aggregate_id, version, position, published_as, consumed_at, applied_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        };
        sqlx::query(sql)
            .bind(&self.config.name)
            .bind(&event.aggregate_id)
            .bind(event.version)
            .bind(event.position)
            .bind(published_as)
            .bind(timestamp(consumed_at))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Re-applies the open dead letters of one aggregate in version order, as
    /// far as they fit; returns (applied, still open).
    pub async fn retry_dead_letters(
        &self,
        aggregate_id: &str,
    ) -> Result<(usize, usize), ProjectionError> {
        let mut tx = self.db.writer.begin().await?;
        let mut current =
            lock_version(&mut tx, self.db.backend, &self.config.name, aggregate_id).await?;
        let open = dead_letters::open_for(&mut tx, &self.config.name, aggregate_id).await?;
        let now = timestamp(chrono::Utc::now());
        let (mut done, mut left) = (0, 0);
        for dl in &open {
            let Some(event) = &dl.envelope else {
                left += 1;
                continue;
            };
            let cur = current.unwrap_or(0);
            if left == 0 && event.version <= cur {
                dead_letters::resolve(&mut tx, &dl.id, DeadLetterStatus::Retried, &now).await?;
                done += 1;
            } else if left == 0 && event.version == cur + 1 {
                self.apply_one(
                    &mut tx,
                    event,
                    current.is_some(),
                    &dl.published_as,
                    chrono::Utc::now(),
                    &now,
                )
                .await?;
                current = Some(event.version);
                dead_letters::resolve(&mut tx, &dl.id, DeadLetterStatus::Retried, &now).await?;
                done += 1;
            } else {
                left += 1;
            }
        }
        tx.commit().await?;
        if left == 0 {
            if let Ok(mut p) = self.parked.lock() {
                p.remove(aggregate_id);
            }
        }
        if let Some(v) = current {
            self.progress.applied([(aggregate_id, v)]);
        }
        Ok((done, left))
    }
}

/// Reads and locks the aggregate's applied version (None: never applied).
async fn lock_version(
    tx: &mut AnyConnection,
    backend: Backend,
    projector: &str,
    aggregate_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    // SQLite has one writer, so the transaction itself is the lock.
    let sql = match backend {
        Backend::Postgres => {
            "SELECT version FROM projected_versions WHERE projector = $1 AND aggregate_id = $2 FOR UPDATE"
        }
        Backend::Sqlite => "SELECT version FROM projected_versions WHERE projector = $1 AND aggregate_id = $2",
    };
    sqlx::query_scalar(sql)
        .bind(projector)
        .bind(aggregate_id)
        .fetch_optional(&mut *tx)
        .await
}

/// Creates the runner's tables (for processes that only read them).
pub async fn ensure_schema(db: &Db) -> Result<(), sqlx::Error> {
    db.migrate(CHECKPOINT_SCHEMA).await?;
    db.migrate(dead_letters::SCHEMA).await
}

/// The stored checkpoints of a projector: source key -> next position.
pub async fn load_checkpoints(
    db: &Db,
    projector: &str,
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT source_key, next_position FROM projector_checkpoints WHERE projector = $1",
    )
    .bind(projector)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("source_key")?, r.try_get("next_position")?)))
        .collect()
}
