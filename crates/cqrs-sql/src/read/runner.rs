//! The projector runner: takes batches from a source and applies each in one
//! read-DB transaction together with its checkpoints, dropping any event whose
//! (aggregate id, version) it has already applied.

use super::{EventSource, Projection, ProjectionError, ReadProgress, SourceError, SourcedEvent};
use crate::db::{timestamp, Db};
use sqlx::Row;
use std::collections::HashMap;
use std::sync::Arc;
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
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            name: "read_model".into(),
            batch_size: 500,
            apply_delay: Duration::ZERO,
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

/// Feeds projections from an event source.
pub struct ProjectorRunner {
    db: Db,
    config: ProjectorConfig,
    projections: Vec<Arc<dyn Projection>>,
    progress: ReadProgress,
}

/// How a batch went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchReport {
    /// Events applied.
    pub applied: usize,
    /// Events dropped because their version was already applied.
    pub duplicates: usize,
}

impl ProjectorRunner {
    /// A runner; creates the runner's and the projections' tables.
    pub async fn new(
        db: Db,
        config: ProjectorConfig,
        projections: Vec<Arc<dyn Projection>>,
    ) -> Result<Self, sqlx::Error> {
        db.migrate(CHECKPOINT_SCHEMA).await?;
        for p in &projections {
            db.migrate(p.schema()).await?;
        }
        let progress = ReadProgress::new(db.clone(), config.name.clone());
        Ok(Self {
            db,
            config,
            projections,
            progress,
        })
    }

    /// The progress handle that consistency waits use.
    pub fn progress(&self) -> ReadProgress {
        self.progress.clone()
    }

    /// The stored checkpoints: source key -> next position.
    pub async fn checkpoints(&self) -> Result<HashMap<String, i64>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT source_key, next_position FROM projector_checkpoints WHERE projector = $1",
        )
        .bind(&self.config.name)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("source_key")?, r.try_get("next_position")?)))
            .collect()
    }

    /// Runs until `shutdown` turns true. Failed batches are retried with
    /// backoff; nothing is skipped.
    pub async fn run<S: EventSource>(
        self,
        mut source: S,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), RunnerError> {
        source.resume(&self.checkpoints().await?).await?;
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
                match self.apply_batch(&batch).await {
                    Ok((_, checkpoints)) => break checkpoints,
                    Err(e) => {
                        tracing::error!(projector = %self.config.name, error = %e, "batch failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.wait_for(|s| *s) => return Ok(()),
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            };
            source.committed(&checkpoints).await?;
        }
    }

    /// Applies one batch in one transaction with its checkpoints.
    pub async fn apply_batch(
        &self,
        batch: &[SourcedEvent],
    ) -> Result<(BatchReport, Vec<(String, i64)>), ProjectionError> {
        let mut report = BatchReport::default();
        let mut tx = self.db.writer.begin().await?;
        let mut seen: HashMap<&str, i64> = HashMap::new();
        let mut checkpoints: HashMap<&str, i64> = HashMap::new();
        let applied_at = timestamp(chrono::Utc::now());
        for item in batch {
            let e = &item.envelope;
            let cp = checkpoints
                .entry(&item.source_key)
                .or_insert(item.next_position);
            *cp = (*cp).max(item.next_position);
            let current = match seen.get(e.aggregate_id.as_str()) {
                Some(v) => *v,
                None => sqlx::query_scalar::<_, i64>(
                    "SELECT version FROM projected_versions WHERE projector = $1 AND aggregate_id = $2",
                )
                .bind(&self.config.name)
                .bind(&e.aggregate_id)
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or(0),
            };
            if e.version <= current {
                report.duplicates += 1;
                seen.insert(&e.aggregate_id, current);
                continue;
            }
            if e.version != current + 1 {
                return Err(ProjectionError::Inconsistent(format!(
                    "aggregate {} jumps from version {current} to {}",
                    e.aggregate_id, e.version
                )));
            }
            for p in &self.projections {
                p.apply(&mut tx, e).await?;
            }
            sqlx::query(
                "INSERT INTO projected_versions \
                 (projector, aggregate_id, version, position, published_as, consumed_at, applied_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (projector, aggregate_id) DO UPDATE SET version = excluded.version, \
                 position = excluded.position, published_as = excluded.published_as, \
                 consumed_at = excluded.consumed_at, applied_at = excluded.applied_at",
            )
            .bind(&self.config.name)
            .bind(&e.aggregate_id)
            .bind(e.version)
            .bind(e.position)
            .bind(&item.published_as)
            .bind(timestamp(item.consumed_at))
            .bind(&applied_at)
            .execute(&mut *tx)
            .await?;
            seen.insert(&e.aggregate_id, e.version);
            report.applied += 1;
        }
        for (key, next) in &checkpoints {
            sqlx::query(
                "INSERT INTO projector_checkpoints (projector, source_key, next_position, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (projector, source_key) DO UPDATE SET \
                 next_position = excluded.next_position, updated_at = excluded.updated_at",
            )
            .bind(&self.config.name)
            .bind(*key)
            .bind(*next)
            .bind(&applied_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.progress.applied(seen.iter().map(|(k, v)| (*k, *v)));
        let checkpoints = checkpoints
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        Ok((report, checkpoints))
    }
}
