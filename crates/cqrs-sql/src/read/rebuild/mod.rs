//! Rebuilds of read models beside the live ones.
//!
//! A build reads history (the log, or a topic from its beginning) into
//! tables of its own (`<table>__v<N>`) while the live tables keep serving
//! and the live projector keeps following:
//! 1. **fold**: everything the live projector had applied when the build
//!    began, folded in memory and written once per table with the
//!    database's bulk load, before any secondary index exists (projections
//!    without a bulk fold apply batches instead);
//! 2. **index** the filled tables;
//! 3. **catch up** in batches, round after round, until little is left;
//! 4. **cut over**: one transaction holds the live projectors back, applies
//!    the rest up to exactly their checkpoints, renames the build's tables
//!    into the live names (the live ones become `<table>__retired`, dropped
//!    after a grace period), records the new versions, and stamps a mark
//!    that makes every process forget what it cached.
//!
//! The applied versions (and so consistency tokens) are the live
//! projector's and are not touched: the new tables hold exactly what the
//! live ones held at the cutover, so a token answered before it is
//! answered after it. One build per projector runs at a time, held by its
//! owner's heartbeat; a build whose owner died (kill -9) is dropped and
//! started again by the next one to claim it, the live tables untouched.

mod bulk;
mod claim;
mod fold;
mod head;
mod history;
mod tables;

pub use crate::bulk::lower_priority;
pub use bulk::{copy_lines, BulkFold, BulkRows};
pub use head::PUBLISHED_AS as CATCH_UP_PUBLISHED_AS;
pub use history::{
    events_to, reached, targets_of, History, LogHistory, NoHistory, Positions, WrongSource,
};
pub use tables::{suffix, tag};

use claim::{heartbeat, hostname, refuse_over_dead_letters, Claim};
use fold::{finish_all, fold_all, next_versions};

use super::sql::SQL;
use super::tables::{checkpoint_rows, lock_out_projectors, next_seq, notify_progress};
use super::versions::now_ms;
use super::{Projection, ProjectionError, ReadProgress, SourceError};
use crate::db::{timestamp, Db};
use crate::dialect::section;
use crate::migrate::MigrateError;
use cqrs_core::EventEnvelope;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Events per fold step and per catch-up transaction.
pub const DEFAULT_BATCH: usize = 20_000;

/// Catch-up rounds that leave at most this many events end the catch-up:
/// the cutover applies the rest while the live projectors wait.
const SMALL_REST: u64 = 2_000;

/// Why a rebuild failed. The live tables serve throughout; a failed build
/// drops its own tables.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The read DB failed.
    #[error("read database error: {0}")]
    Db(#[from] sqlx::Error),
    /// History could not be read.
    #[error("reading history: {0}")]
    Source(#[from] SourceError),
    /// A projection failed on an event.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The read DB's schema could not be settled.
    #[error(transparent)]
    Schema(#[from] MigrateError),
    /// Another process is building (its heartbeat is fresh).
    #[error("{owner} is building {projector}'s read models (heartbeat {age_ms} ms ago)")]
    Busy {
        /// The projector.
        projector: String,
        /// Who.
        owner: String,
        /// How long ago it last said it is alive.
        age_ms: i64,
    },
    /// The build was taken over (this process stalled past the heartbeat).
    #[error("the build of {0} was taken over by another process")]
    LostClaim(String),
    /// What the build would apply differs from what the live model did.
    #[error("{0}")]
    Refused(String),
    /// History has a hole.
    #[error("aggregate {aggregate} jumps from version {from} to {to}")]
    Gap {
        /// The aggregate.
        aggregate: String,
        /// Its last version read.
        from: i64,
        /// The next one read.
        to: i64,
    },
    /// The process is shutting down.
    #[error("the rebuild was cancelled")]
    Cancelled,
    /// An operator cancelled it (its row in `read_model_builds` was
    /// deleted): its tables are dropped, the live ones keep serving.
    #[error("the build of {0} was cancelled by an operator")]
    Withdrawn(String),
}

impl From<WrongSource> for RebuildError {
    fn from(e: WrongSource) -> Self {
        RebuildError::Refused(e.0)
    }
}

/// What a running build has done, for progress bars, metrics and the live page.
#[derive(Debug, Default)]
pub struct RebuildStatus {
    done: AtomicI64,
    total: AtomicI64,
    phase: Mutex<&'static str>,
}

impl RebuildStatus {
    /// Events read so far.
    pub fn done(&self) -> i64 {
        self.done.load(Ordering::Relaxed)
    }
    /// Events to read before the catch-up (grows as the live model moves).
    pub fn total(&self) -> i64 {
        self.total.load(Ordering::Relaxed)
    }
    /// What it does now.
    pub fn phase(&self) -> &'static str {
        self.phase
            .lock()
            .map_or("?", |p| if p.is_empty() { "starting" } else { *p })
    }
    fn set_phase(&self, phase: &'static str) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase;
        }
    }
    fn add(&self, n: usize) {
        self.done.fetch_add(n as i64, Ordering::Relaxed);
    }
}

/// How a rebuild went.
#[derive(Debug, Clone)]
pub struct RebuildReport {
    /// Events read from history (duplicates included).
    pub events: u64,
    /// Events of the fold (bulk) phase.
    pub folded: u64,
    /// Seconds from start to the committed cutover.
    pub secs: f64,
    /// Seconds the fold and its bulk write took.
    pub fold_secs: f64,
    /// Of those: reading history (fetching and decoding records).
    pub read_secs: f64,
    /// Of those: writing the folded rows.
    pub write_secs: f64,
    /// Seconds the cutover's transaction held the live projectors back.
    pub cutover_secs: f64,
    /// The projections swapped in, with the version they now hold.
    pub swapped: Vec<(&'static str, i64)>,
    /// Whether the fold took the bulk path.
    pub bulk: bool,
}

/// Where the build has read to: per source key, and per aggregate (the
/// versions that drop the duplicates a topic may hold).
#[derive(Default)]
struct Reading {
    positions: Positions,
    versions: HashMap<String, i64>,
}

/// Where the fold's time went.
#[derive(Default)]
struct Timing {
    read: f64,
    write: f64,
}

/// Where a build reads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// The live checkpoints: a new version of the read models.
    LiveCheckpoints,
    /// The head of history: a projector far behind catching up in bulk.
    Head,
}

/// One rebuild of some of a projector's read models.
pub struct Rebuild {
    goal: Goal,
    db: Db,
    projector: String,
    pairs: Vec<(Arc<dyn Projection>, Arc<dyn Projection>)>,
    owner: String,
    batch: usize,
    bulk: bool,
    status: Arc<RebuildStatus>,
    progress: Option<ReadProgress>,
}

impl Rebuild {
    /// A rebuild of `projections` (the live ones) of `projector` into
    /// tables of their version; each must be rebuildable.
    pub fn new(
        db: Db,
        projector: impl Into<String>,
        projections: &[Arc<dyn Projection>],
    ) -> Result<Self, RebuildError> {
        let mut pairs = Vec::new();
        for p in projections {
            let build = p.rebuilt_into(&suffix(p.version())).ok_or_else(|| {
                RebuildError::Refused(format!(
                    "{} cannot be rebuilt from history (a process manager's state is never \
                     rebuilt by issuing its commands again)",
                    p.name()
                ))
            })?;
            pairs.push((p.clone(), build));
        }
        Ok(Self {
            goal: Goal::LiveCheckpoints,
            db,
            projector: projector.into(),
            pairs,
            owner: format!(
                "{}:{}:{}",
                hostname(),
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            batch: DEFAULT_BATCH,
            bulk: true,
            status: Arc::default(),
            progress: None,
        })
    }

    /// Events per fold step and catch-up transaction.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Whether the fold may take the bulk path (where every projection has one).
    pub fn bulk(mut self, bulk: bool) -> Self {
        self.bulk = bulk;
        self
    }

    /// A catch-up in bulk of a projector far behind: the build reads to the
    /// head of history, and its cutover also swaps in the applied versions
    /// and moves the checkpoints to where it read.
    pub fn to_head(mut self) -> Self {
        self.goal = Goal::Head;
        self
    }

    /// This process's progress of the projector: told at once of the cutover.
    pub fn with_progress(mut self, progress: ReadProgress) -> Self {
        self.progress = Some(progress);
        self
    }

    /// What it has done so far (shared with the running build).
    pub fn status(&self) -> Arc<RebuildStatus> {
        self.status.clone()
    }

    /// Builds, catches up and cuts over; the live tables serve throughout.
    pub async fn run(
        self,
        history: impl History,
        stop: CancellationToken,
    ) -> Result<RebuildReport, RebuildError> {
        refuse_over_dead_letters(&self.db, &self.projector).await?;
        self.claim().await?;
        let beat = CancellationToken::new();
        let withdrawn = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            self.db.clone(),
            self.projector.clone(),
            self.owner.clone(),
            self.status.clone(),
            beat.clone(),
            stop.child_token(),
            withdrawn.clone(),
        ));
        let result = tokio::select! {
            r = self.build(history, &stop) => r,
            _ = stop.cancelled() => Err(RebuildError::Cancelled),
            _ = withdrawn.cancelled() => Err(RebuildError::Withdrawn(self.projector.clone())),
        };
        beat.cancel();
        let claim = heartbeat.await.unwrap_or(Claim::Kept);
        let lost = claim == Claim::Lost;
        let result = match (result, claim) {
            (Err(e), Claim::Lost) => {
                tracing::error!(projector = self.projector, error = %e, "the build was taken over");
                Err(RebuildError::LostClaim(self.projector.clone()))
            }
            // Cut over before the cancel was seen: it stands.
            (Err(_), Claim::Withdrawn) => Err(RebuildError::Withdrawn(self.projector.clone())),
            (r, _) => r,
        };
        if result.is_err() && !lost {
            if let Err(e) = self.abandon().await {
                tracing::warn!(error = %e, projector = self.projector, "cannot drop the failed build's tables");
            }
        }
        result
    }

    async fn build(
        &self,
        mut history: impl History,
        stop: &CancellationToken,
    ) -> Result<RebuildReport, RebuildError> {
        let started = Instant::now();
        self.for_each_build(false).await?;
        let mut at = Reading::default();
        let targets = self.targets(&mut history).await?;
        self.status
            .total
            .store(events_to(&targets), Ordering::Relaxed);
        let (folded, bulk, timing) = self.fold(&mut history, &mut at, &targets, stop).await?;
        let fold_secs = started.elapsed().as_secs_f64();
        self.status.set_phase("indexing");
        self.for_each_build(true).await?;
        let caught_up = self.catch_up(&mut history, &mut at, stop).await?;
        let cutover = Instant::now();
        let (tail, swapped) = self.cut_over(&mut history, &mut at).await?;
        Ok(RebuildReport {
            events: folded + caught_up + tail,
            folded,
            secs: started.elapsed().as_secs_f64(),
            fold_secs,
            read_secs: timing.read,
            write_secs: timing.write,
            cutover_secs: cutover.elapsed().as_secs_f64(),
            swapped,
            bulk,
        })
    }

    /// Makes every build's tables (`index` false), or their indexes, on
    /// one writer connection.
    async fn for_each_build(&self, index: bool) -> Result<(), RebuildError> {
        let mut conn = self.db.writer.acquire().await?;
        for (p, b) in &self.pairs {
            let (dialect, tag) = (self.db.dialect, tag(p.version()));
            match index {
                false => tables::create(&mut conn, dialect, &**b, &tag).await?,
                true => tables::index(&mut conn, dialect, &**b, &tag).await?,
            }
        }
        Ok(())
    }

    /// Step 1, the fold: everything the live projector had applied when the build began:
    /// folded in memory and bulk-loaded where every projection can, else
    /// applied in batches. Answers (events read, bulk or not, timing).
    async fn fold(
        &self,
        history: &mut impl History,
        at: &mut Reading,
        targets: &Positions,
        stop: &CancellationToken,
    ) -> Result<(u64, bool, Timing), RebuildError> {
        self.status.set_phase("folding");
        let folds: Option<Vec<Box<dyn BulkFold>>> = match self.bulk {
            true => self.pairs.iter().map(|(_, b)| b.bulk()).collect(),
            false => None,
        };
        let mut timing = Timing::default();
        let Some(folds) = folds else {
            let read = self.apply_until(history, at, targets, stop).await?;
            return Ok((read, false, timing));
        };
        let read = self
            .fold_in_memory(history, folds, at, targets, stop, &mut timing)
            .await?;
        Ok((read, true, timing))
    }

    /// Step 3: rounds of batches up to the live checkpoints, until a round is small.
    async fn catch_up(
        &self,
        history: &mut impl History,
        at: &mut Reading,
        stop: &CancellationToken,
    ) -> Result<u64, RebuildError> {
        self.status.set_phase("catching up");
        let mut events = 0;
        loop {
            let targets = self.targets(history).await?;
            self.status
                .total
                .store(events_to(&targets), Ordering::Relaxed);
            let n = self.apply_until(history, at, &targets, stop).await?;
            events += n;
            if n <= SMALL_REST {
                return Ok(events);
            }
        }
    }

    /// Step 4, the cutover, in one transaction: the live projectors held back, the rest applied
    /// up to exactly their checkpoints, the tables swapped, the versions and
    /// the cutover's mark recorded. Answers (events read, swapped versions).
    async fn cut_over(
        &self,
        history: &mut impl History,
        at: &mut Reading,
    ) -> Result<(u64, Vec<(&'static str, i64)>), RebuildError> {
        self.status.set_phase("cutting over");
        let dialect = self.db.dialect;
        if self.goal == Goal::Head {
            head::stage_versions(&self.db, &self.projector, &at.versions).await?;
        }
        let mut tx = self.db.writer.begin().await?;
        let rows = lock_out_projectors(&mut tx, &self.projector).await?;
        let mut targets = targets_of(&rows, history)?;
        if self.goal == Goal::Head {
            head::at_least(&mut targets, &at.positions);
        }
        let mut tail = Vec::new();
        while !reached(&at.positions, &targets) {
            let got = history
                .read(&mut at.positions, &targets, usize::MAX)
                .await?;
            self.status.add(got.len());
            tail.extend(got);
        }
        let read = tail.len() as u64;
        let new = next_versions(tail, &mut at.versions)?;
        if self.goal == Goal::Head {
            head::refuse_passed_over(history)?;
        }
        self.apply_built(&mut tx, &new).await?;
        let now = now_ms();
        let seq = next_seq(&mut tx, &self.projector).await?;
        if self.goal == Goal::Head {
            head::swap_in_applied(&mut tx, &self.projector, seq, &new, &targets).await?;
        }
        let mut swapped = Vec::new();
        for (p, b) in &self.pairs {
            tables::swap_in(&mut tx, dialect, &**b, &**p, &tag(p.version())).await?;
            sqlx::query(section(SQL, "cut_over_version"))
                .bind(&self.projector)
                .bind(p.name())
                .bind(p.version())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            swapped.push((p.name(), p.version()));
        }
        sqlx::query(section(SQL, "mark_cutover"))
            .bind(&self.projector)
            .bind(timestamp(chrono::Utc::now()))
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        sqlx::query(section(SQL, "end_build"))
            .bind(&self.projector)
            .bind(&self.owner)
            .execute(&mut *tx)
            .await?;
        notify_progress(&mut tx, dialect).await?;
        tx.commit().await?;
        if let Some(progress) = &self.progress {
            progress.forget_all();
        }
        if self.goal == Goal::Head {
            self.drop_replaced().await;
        }
        Ok((read, swapped))
    }

    /// Where the build reads to now: the live checkpoints, or the head.
    async fn targets(&self, history: &mut impl History) -> Result<Positions, RebuildError> {
        let live = self.live_targets(history).await?;
        match self.goal {
            Goal::LiveCheckpoints => Ok(live),
            Goal::Head => head::targets(history, live).await,
        }
    }

    /// The live projector's checkpoints on `history`'s streams.
    pub(super) async fn live_targets(
        &self,
        history: &impl History,
    ) -> Result<Positions, RebuildError> {
        let rows = checkpoint_rows(&self.db, &self.projector).await?;
        Ok(targets_of(&rows, history)?)
    }

    /// Reads to `targets` folding in memory, then writes every table once.
    async fn fold_in_memory(
        &self,
        history: &mut impl History,
        mut folds: Vec<Box<dyn BulkFold>>,
        at: &mut Reading,
        targets: &Positions,
        stop: &CancellationToken,
        timing: &mut Timing,
    ) -> Result<u64, RebuildError> {
        // Reading (fetch and decode) and folding overlap: the fold of one
        // batch runs on threads of its own while the next is read.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<EventEnvelope>>(2);
        let reader = async {
            let mut read = 0u64;
            while !reached(&at.positions, targets) {
                if stop.is_cancelled() {
                    return Err(RebuildError::Cancelled);
                }
                let t = Instant::now();
                let got = history.read(&mut at.positions, targets, self.batch).await?;
                timing.read += t.elapsed().as_secs_f64();
                read += got.len() as u64;
                self.status.add(got.len());
                let new = next_versions(got, &mut at.versions)?;
                if tx.send(new).await.is_err() {
                    break;
                }
            }
            drop(tx);
            Ok::<_, RebuildError>(read)
        };
        let folder = async {
            while let Some(batch) = rx.recv().await {
                folds = tokio::task::spawn_blocking(move || fold_all(folds, &batch))
                    .await
                    .map_err(|e| RebuildError::Refused(format!("a fold panicked: {e}")))??;
            }
            Ok::<_, RebuildError>(folds)
        };
        let (read, folds) = tokio::try_join!(reader, folder)?;
        self.status.set_phase("writing");
        let t = Instant::now();
        let all = tokio::task::spawn_blocking(move || finish_all(folds))
            .await
            .map_err(|e| RebuildError::Refused(format!("a fold panicked: {e}")))??;
        fold::write_all(&self.db, all).await?;
        timing.write = t.elapsed().as_secs_f64();
        Ok(read)
    }

    /// Reads to `targets`, applying each batch in a transaction of its own.
    async fn apply_until(
        &self,
        history: &mut impl History,
        at: &mut Reading,
        targets: &Positions,
        stop: &CancellationToken,
    ) -> Result<u64, RebuildError> {
        let mut read = 0u64;
        while !reached(&at.positions, targets) {
            if stop.is_cancelled() {
                return Err(RebuildError::Cancelled);
            }
            let got = history.read(&mut at.positions, targets, self.batch).await?;
            read += got.len() as u64;
            self.status.add(got.len());
            let new = next_versions(got, &mut at.versions)?;
            let mut tx = self.db.writer.begin().await?;
            self.apply_built(&mut tx, &new).await?;
            tx.commit().await?;
        }
        Ok(read)
    }

    async fn apply_built(
        &self,
        tx: &mut sqlx::AnyConnection,
        events: &[EventEnvelope],
    ) -> Result<(), RebuildError> {
        if events.is_empty() {
            return Ok(());
        }
        let refs: Vec<&EventEnvelope> = events.iter().collect();
        for (_, b) in &self.pairs {
            b.apply(tx, &refs).await?;
        }
        Ok(())
    }
}
