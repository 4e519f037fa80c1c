//! The projector runner: takes batches from a source and applies each in one
//! read-DB transaction together with its checkpoints, dropping any event whose
//! (aggregate id, version) it has already applied, and dead-lettering records
//! it cannot apply (parking the rest of their aggregate behind them).

mod apply;
mod bulk;
mod retry;

pub use retry::{Retried, SkipError};

use super::dead_letters;
use super::sql::SQL;
pub use super::tables::{
    advance_checkpoint, check_writable, checkpoint_rows, ensure_schema, ensure_tables,
    load_checkpoints, lock_out_projectors, projection_components, read_components,
    runner_component, Checkpoint,
};
use super::{
    EventSource, Projection, ProjectionError, ReadProgress, SourceError, SourceKey, SourcedEvent,
};
use crate::db::{timestamp, Db};
use crate::dialect::section;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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
    /// How long per-event traces (consumed/applied times) are kept.
    pub trace_retention: Duration,
    /// Events behind at which the projector catches up in bulk (a build to
    /// the head) rather than in batches; 0: never.
    pub bulk_from: u64,
    /// While batches come full, how often it looks again whether it is
    /// that far behind.
    pub bulk_recheck: Duration,
}

/// The default of [`ProjectorConfig::bulk_from`].
pub const BULK_FROM: u64 = 100_000;

/// The default of [`ProjectorConfig::bulk_recheck`].
pub const BULK_RECHECK: Duration = Duration::from_secs(30);

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            name: "read_model".into(),
            batch_size: 500,
            apply_delay: Duration::ZERO,
            max_attempts: 3,
            trace_retention: Duration::from_secs(24 * 3600),
            bulk_from: BULK_FROM,
            bulk_recheck: BULK_RECHECK,
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
    poison: Mutex<HashMap<(SourceKey, i64), String>>,
}

impl ProjectorRunner {
    /// A runner; brings the runner's and the projections' tables to this
    /// build's schema.
    pub async fn new(
        db: Db,
        config: ProjectorConfig,
        projections: Vec<Arc<dyn Projection>>,
    ) -> Result<Self, ProjectionError> {
        ensure_tables(&db, &projections).await?;
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
    pub async fn checkpoints(&self) -> Result<HashMap<SourceKey, i64>, sqlx::Error> {
        load_checkpoints(&self.db, &self.config.name).await
    }

    /// Runs until `shutdown` is cancelled. Failed batches are retried with
    /// backoff; a record that keeps failing is dead-lettered; nothing is skipped.
    pub async fn run<S: EventSource>(
        self,
        mut source: S,
        shutdown: CancellationToken,
    ) -> Result<(), RunnerError> {
        self.catch_up_in_bulk(&source, &shutdown).await;
        if !self.resume(&mut source, &shutdown).await {
            return Ok(());
        }
        let mut batches: u64 = 0;
        let mut bulk_checked = std::time::Instant::now();
        loop {
            batches += 1;
            if batches % 200 == 1 {
                self.prune_traces().await;
            }
            let Some(batch) = self.next_batch(&mut source, &shutdown).await? else {
                return Ok(());
            };
            if !self.config.apply_delay.is_zero()
                && !pause(self.config.apply_delay, &shutdown).await
            {
                return Ok(());
            }
            let started = std::time::Instant::now();
            let spans = record_spans(&self.config.name, &batch);
            let Some(checkpoints) = self.apply_retrying(&batch, &mut source, &shutdown).await
            else {
                return Ok(());
            };
            // They end once the batch's transaction committed.
            drop(spans);
            tracing::debug!(projector = %self.config.name, records = batch.len(),
                elapsed_us = started.elapsed().as_micros() as u64, "batch applied");
            if let Ok(mut p) = self.poison.lock() {
                p.clear();
            }
            if let Err(e) = source.committed(&checkpoints).await {
                tracing::warn!(projector = %self.config.name, error = %e,
                    "the source was not told of the commit (lag tools may lag)");
            }
            // Full batches for a while: maybe far behind again (the read DB
            // was away); once caught up in bulk, the source resumes from
            // the checkpoints the build moved.
            if batch.len() >= self.config.batch_size
                && bulk_checked.elapsed() >= self.config.bulk_recheck
            {
                bulk_checked = std::time::Instant::now();
                if self.catch_up_in_bulk(&source, &shutdown).await
                    && !self.resume(&mut source, &shutdown).await
                {
                    return Ok(());
                }
            }
        }
    }

    /// Applies one batch: a failure not tied to a record is retried one
    /// event at a time to find the record; a record that keeps failing is
    /// dead-lettered; anything else is retried with backoff. The
    /// checkpoints committed; None at shutdown.
    async fn apply_retrying<S: EventSource>(
        &self,
        batch: &[SourcedEvent],
        source: &mut S,
        shutdown: &CancellationToken,
    ) -> Option<Vec<(SourceKey, i64)>> {
        let mut attempts: HashMap<(SourceKey, i64), u32> = HashMap::new();
        let mut backoff = Duration::from_millis(50);
        let mut per_event = false;
        loop {
            let e = match self.apply_batch(batch, source, per_event).await {
                Ok((_, checkpoints)) => return Some(checkpoints),
                Err(e) => e,
            };
            if e.index.is_none() && !per_event && !is_transient(&e.error) {
                // Find the record: the same batch, one event at a time.
                per_event = true;
                continue;
            }
            if let Some(item) = e.index.and_then(|i| batch.get(i)) {
                per_event = false;
                if self.gives_up_on(item, &e.error, &mut attempts) {
                    continue;
                }
            }
            tracing::error!(projector = %self.config.name, error = %e, "batch failed; retrying");
            metrics::counter!("cqrs_projector_batch_failures_total").increment(1);
            if !pause(backoff, shutdown).await {
                return None;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Counts a failure of `item`; whether it is given up on (marked to be
    /// dead-lettered by the next attempt): at once when the failure is in
    /// the data, after `max_attempts` when in the database, never while a
    /// service it needs is away.
    fn gives_up_on(
        &self,
        item: &SourcedEvent,
        error: &ProjectionError,
        attempts: &mut HashMap<(SourceKey, i64), u32>,
    ) -> bool {
        let key = (item.source_key.clone(), item.next_position);
        let n = attempts.entry(key.clone()).or_insert(0);
        *n += 1;
        let deterministic = !matches!(
            error,
            ProjectionError::Db(_) | ProjectionError::Unavailable(_)
        );
        let give_up =
            !matches!(error, ProjectionError::Unavailable(_)) && *n >= self.config.max_attempts;
        if !(deterministic || give_up) {
            return false;
        }
        tracing::warn!(projector = %self.config.name, record = %item.published_as,
            error = %error, "dead-lettering record");
        if let Ok(mut p) = self.poison.lock() {
            p.insert(key, error.to_string());
        }
        true
    }

    /// Hands the stored checkpoints to the source, retrying while the read
    /// DB or the source is away; false at shutdown.
    async fn resume<S: EventSource>(&self, source: &mut S, shutdown: &CancellationToken) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            let r = match self.checkpoints().await {
                Ok(c) => source.resume(&c).await,
                Err(e) => Err(SourceError::ReadDb(e)),
            };
            match r {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(projector = %self.config.name, error = %e,
                        retry_in_ms = backoff.as_millis() as u64, "cannot resume; retrying");
                    if !pause(backoff, shutdown).await {
                        return false;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The next batch. A failing source is retried with backoff: a broker or
    /// database that is away comes back, and the projector must not end
    /// while the process goes on. None at shutdown.
    async fn next_batch<S: EventSource>(
        &self,
        source: &mut S,
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<SourcedEvent>>, SourceError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let r = tokio::select! {
                b = source.next_batch(self.config.batch_size) => b,
                _ = shutdown.cancelled() => return Ok(None),
            };
            match r {
                Ok(b) => return Ok(Some(b)),
                Err(e @ SourceError::Fatal(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(projector = %self.config.name, error = %e,
                        retry_in_ms = backoff.as_millis() as u64, "the event source failed; retrying");
                    metrics::counter!("cqrs_projector_source_errors_total").increment(1);
                    if !pause(backoff, shutdown).await {
                        return Ok(None);
                    }
                    // The client reconnects on its own: look again soon.
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Drops traces older than the retention.
    async fn prune_traces(&self) {
        let retention = chrono::Duration::from_std(self.config.trace_retention)
            .unwrap_or(chrono::Duration::days(1));
        let cutoff = timestamp(chrono::Utc::now() - retention);
        let r = sqlx::query(section(SQL, "prune_event_traces"))
            .bind(&self.config.name)
            .bind(&cutoff)
            .execute(&self.db.writer)
            .await;
        let q = sqlx::query(section(SQL, "prune_query_traces"))
            .bind(&cutoff)
            .execute(&self.db.writer)
            .await;
        if let Err(e) = r.and(q) {
            tracing::warn!(error = %e, "cannot prune traces");
        }
    }

    fn is_parked(&self, aggregate_id: &str) -> bool {
        self.parked
            .lock()
            .map(|p| p.contains(aggregate_id))
            .unwrap_or(true)
    }
}

/// Sleeps for `d` unless shutdown comes first (then false).
async fn pause(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Whether an error is the database being away (or a race on a key) rather
/// than the data being bad.
fn is_transient(e: &ProjectionError) -> bool {
    match e {
        ProjectionError::Db(sqlx::Error::Database(db)) => db.is_unique_violation(),
        ProjectionError::Db(_)
        | ProjectionError::DeadLetterChannel(_)
        | ProjectionError::Unavailable(_) => true,
        _ => false,
    }
}

/// Where spans are exported: one per record that carries a trace context,
/// a child of its command's span (none otherwise: nothing to pay for).
fn record_spans(projector: &str, batch: &[SourcedEvent]) -> Vec<tracing::Span> {
    use cqrs_core::trace_context;
    if !trace_context::exporting() {
        return Vec::new();
    }
    batch
        .iter()
        .filter_map(|item| {
            let e = item.event.as_ref().ok()?;
            let tp = e.metadata.traceparent.as_deref()?;
            let span = tracing::info_span!("project",
                otel.name = %format!("{projector} applies {}", e.event_type), otel.kind = "consumer",
                projector, aggregate_id = %e.aggregate_id, source = %item.published_as);
            trace_context::continue_from(&span, tp);
            Some(span)
        })
        .collect()
}
