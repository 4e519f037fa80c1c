//! What the read model has applied, for consistency waits.
//!
//! Every projector batch stamps the versions it records with a number from a
//! counter row that it holds until it commits (`projector_progress`), so the
//! stamps are in commit order, whichever process commits. A follower per
//! process reads the stamps past its cursor (one query per wake-up, woken by
//! `NOTIFY` on PostgreSQL, polling otherwise) into an in-memory map; waiters
//! read only that map, so a thousand waiters cost no database reads per batch.

use crate::db::Db;
use crate::dialect::section;
use crate::read::sql::SQL;
use cqrs_core::ConsistencyToken;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Beyond this many tracked aggregates the map is cleared; waiters then
/// re-read the database once.
const MAX_TRACKED: usize = 200_000;

/// Rows the follower reads per query.
const FOLLOW_PAGE: i64 = 5_000;

/// The aggregate id of the stamp a rebuild's cutover writes (no aggregate
/// id has a `#`).
pub const CUTOVER_MARK: &str = "#cutover";

/// The PostgreSQL channel a projector notifies after each commit.
pub const PROGRESS_CHANNEL: &str = "cqrs_read_progress";

/// The outcome of a consistency wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The read model includes the token's write.
    Reached,
    /// The deadline passed; the read model is at `current_version` of the aggregate.
    TimedOut {
        /// The aggregate's version in the read model (0 if absent).
        current_version: i64,
    },
    /// The process is shutting down; the wait was abandoned.
    Closed {
        /// The aggregate's version in the read model when the wait ended.
        current_version: i64,
    },
}

#[derive(Default)]
struct Tracked {
    versions: HashMap<String, i64>,
    /// Bumped whenever `versions` is cleared: a waiter then re-reads the DB.
    epoch: u64,
}

struct Inner {
    db: Db,
    projector: String,
    bump: watch::Sender<u64>,
    tracked: Mutex<Tracked>,
    closed: AtomicBool,
    /// Set once the follower has its cursor: from then on every change any
    /// process commits reaches `tracked` (what a cache relies on).
    following: AtomicBool,
    /// Where the follower is; shared, so that a wait answered from the
    /// database can catch the follower up first (`catch_up_now`).
    cursor: tokio::sync::Mutex<Option<Cursor>>,
    query_traces: super::query_traces::QueryTraces,
}

/// Read-model progress of one projector, shared by the runner and the API.
#[derive(Clone)]
pub struct ReadProgress {
    inner: Arc<Inner>,
}

/// A wait that has started: it holds what the read model had when it began.
pub struct Waiter {
    progress: ReadProgress,
    aggregate_id: String,
    rx: watch::Receiver<u64>,
    epoch: u64,
    /// The aggregate's version in the read model when the wait began.
    pub current: i64,
}

impl ReadProgress {
    /// Progress of `projector` whose versions live in `db`.
    pub fn new(db: Db, projector: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                query_traces: super::query_traces::QueryTraces::new(db.clone()),
                db,
                projector: projector.into(),
                bump: watch::channel(0).0,
                tracked: Mutex::new(Tracked::default()),
                closed: AtomicBool::new(false),
                following: AtomicBool::new(false),
                cursor: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Records versions the read model committed and wakes waiters.
    pub fn applied<'a>(&self, versions: impl IntoIterator<Item = (&'a str, i64)>) {
        if let Ok(mut t) = self.inner.tracked.lock() {
            if t.versions.len() > MAX_TRACKED {
                t.versions.clear();
                t.epoch += 1;
            }
            for (id, v) in versions {
                let e = t.versions.entry(id.to_owned()).or_insert(0);
                *e = (*e).max(v);
            }
        }
        self.inner.bump.send_modify(|g| *g += 1);
    }

    /// Forgets every version it knows and starts a new epoch: the read
    /// model's rows changed under their versions (a rebuild's cutover), so
    /// nothing cached before may be answered.
    pub fn forget_all(&self) {
        if let Ok(mut t) = self.inner.tracked.lock() {
            t.versions.clear();
            t.epoch += 1;
        }
        self.inner.bump.send_modify(|g| *g += 1);
    }

    /// Changes whenever the read model moves (local batch or followed from the DB).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.bump.subscribe()
    }

    /// Ends every wait now and from now on (the process is shutting down).
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.bump.send_modify(|g| *g += 1);
    }

    /// Whether every change the read model takes, from any process, reaches
    /// this process (its follower runs): until then nothing may be cached.
    pub fn is_following(&self) -> bool {
        self.inner.following.load(Ordering::Acquire)
    }

    /// Marks the progress as followed (for tests that feed it by hand).
    #[cfg(test)]
    pub(crate) fn assume_followed(&self) {
        self.inner.following.store(true, Ordering::Release);
    }

    /// How many times the read model moved, as this process knows it: what
    /// a cached answer that depends on more than one aggregate is valid for.
    pub fn generation(&self) -> u64 {
        *self.inner.bump.borrow()
    }

    /// How many times the map of applied versions was cleared (an answer
    /// checked against it is valid only within one epoch).
    pub fn epoch(&self) -> u64 {
        self.inner.tracked.lock().map_or(u64::MAX, |t| t.epoch)
    }

    /// The aggregate's version the read model applied, as far as this
    /// process followed it (`None`: no change seen since the map was last
    /// cleared), and the map's epoch.
    pub fn known(&self, aggregate_id: &str) -> (Option<i64>, u64) {
        match self.inner.tracked.lock() {
            Ok(t) => (t.versions.get(aggregate_id).copied(), t.epoch),
            Err(_) => (None, u64::MAX),
        }
    }

    /// The aggregate's version as the read DB has it now.
    pub async fn stored_version(&self, aggregate_id: &str) -> Result<i64, sqlx::Error> {
        let v: Option<i64> = sqlx::query_scalar(section(SQL, "version_of"))
            .bind(&self.inner.projector)
            .bind(aggregate_id)
            .fetch_optional(&self.inner.db.pool)
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Every aggregate's version as the read DB has it (for verification).
    pub async fn stored_versions(&self) -> Result<HashMap<String, i64>, sqlx::Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(section(SQL, "all_versions"))
            .bind(&self.inner.projector)
            .fetch_all(&self.inner.db.pool)
            .await?;
        Ok(rows.into_iter().collect())
    }

    /// Starts waiting for an aggregate: learns its current version (from
    /// memory when the follower has seen it, else with one read of the DB).
    pub async fn start_wait(&self, aggregate_id: &str) -> Result<Waiter, sqlx::Error> {
        let rx = self.inner.bump.subscribe();
        let (known, epoch) = self.known(aggregate_id);
        // A tracked entry is as fresh as the follower; otherwise the change
        // predates the follower (or was evicted) and only the DB knows it.
        let current = match known {
            Some(v) => v,
            None => self.stored_version(aggregate_id).await?,
        };
        Ok(Waiter {
            progress: self.clone(),
            aggregate_id: aggregate_id.to_owned(),
            rx,
            epoch,
            current,
        })
    }

    /// Waits until the read model includes the token's write, or `timeout`.
    pub async fn wait_for(
        &self,
        token: &ConsistencyToken,
        timeout: Duration,
    ) -> Result<WaitOutcome, sqlx::Error> {
        let deadline = Instant::now() + timeout;
        self.start_wait(&token.aggregate_id)
            .await?
            .until(token.version, deadline)
            .await
    }

    /// Follows the read model as every process moves it: reads the versions
    /// stamped past its cursor whenever woken (PostgreSQL `NOTIFY` from the
    /// projectors) and at least every `poll`. One query per wake-up, however
    /// many waiters. Runs until dropped.
    pub async fn follow_database(self, poll: Duration) {
        loop {
            match self.head().await {
                Ok(seq) => {
                    // Changes up to `seq` are in the database for any read
                    // from now on; later ones reach `tracked`.
                    *self.inner.cursor.lock().await = Some(Cursor { seq, id: None });
                    self.inner.following.store(true, Ordering::Release);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the read model's progress; retrying");
                    tokio::time::sleep(poll).await;
                }
            }
        }
        let mut listener = self.listen().await;
        loop {
            if let Err(e) = self.catch_up_now().await {
                tracing::warn!(error = %e, "cannot follow the read model's progress");
            }
            match listener.as_mut() {
                Some(l) => {
                    tokio::select! {
                        r = l.recv() => {
                            if let Err(e) = r {
                                tracing::debug!(error = %e, "progress listener lost; polling");
                                tokio::time::sleep(poll).await;
                            }
                            // Coalesce a burst of notifications into one read.
                            l.drain();
                        }
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                None => tokio::time::sleep(poll).await,
            }
        }
    }

    async fn listen(&self) -> Option<crate::dialect::Listener> {
        let db = &self.inner.db;
        match db.dialect.listen(db.url(), PROGRESS_CHANNEL).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for read-model progress; polling");
                None
            }
        }
    }

    async fn head(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(section(SQL, "last_stamp"))
            .bind(&self.inner.projector)
            .fetch_one(&self.inner.db.pool)
            .await
    }

    /// Reads every version stamped since the follower last looked, now;
    /// false while the follower has no cursor yet. After it, what this
    /// process knows is at least what the read DB had when it began, for
    /// every aggregate.
    pub async fn catch_up_now(&self) -> Result<bool, sqlx::Error> {
        let mut cursor = self.inner.cursor.lock().await;
        let Some(cursor) = cursor.as_mut() else {
            return Ok(false);
        };
        self.catch_up(cursor).await?;
        Ok(true)
    }

    /// Reads every version stamped after `cursor`, page by page.
    async fn catch_up(&self, cursor: &mut Cursor) -> Result<(), sqlx::Error> {
        loop {
            let q = match &cursor.id {
                None => sqlx::query_as::<_, (String, i64, i64)>(section(SQL, "stamped_after"))
                    .bind(&self.inner.projector)
                    .bind(cursor.seq)
                    .bind(FOLLOW_PAGE),
                // A row-value comparison: an index range on both (see the
                // statement's comment).
                Some(id) => {
                    sqlx::query_as::<_, (String, i64, i64)>(section(SQL, "stamped_after_id"))
                        .bind(&self.inner.projector)
                        .bind(cursor.seq)
                        .bind(id.clone())
                        .bind(FOLLOW_PAGE)
                }
            };
            let rows = q.fetch_all(&self.inner.db.pool).await?;
            let Some((id, _, seq)) = rows.last() else {
                return Ok(());
            };
            if let Some((_, _, at)) = rows.iter().find(|(a, _, _)| a == CUTOVER_MARK) {
                // Everything up to the cutover's stamp (which a catch-up
                // puts on every version) is passed over: once forgotten, an
                // aggregate not seen since is read from the database.
                self.forget_all();
                *cursor = Cursor { seq: *at, id: None };
                continue;
            }
            *cursor = Cursor {
                seq: *seq,
                id: Some(id.clone()),
            };
            self.applied(rows.iter().map(|(a, v, _)| (a.as_str(), *v)));
            if (rows.len() as i64) < FOLLOW_PAGE {
                return Ok(());
            }
        }
    }

    /// Records that a query served data including the token's write (the
    /// first time wins); off the request path, written in batches.
    pub fn record_query(&self, token: &ConsistencyToken) {
        self.inner
            .query_traces
            .record(token.aggregate_id.clone(), token.version);
    }
}

/// Where the follower is: past every stamp below `seq`, and at `seq` past `id`.
struct Cursor {
    seq: i64,
    id: Option<String>,
}

impl Waiter {
    /// Called when the wait is answered: if the read DB, not the progress,
    /// said that `version` is there, the follower catches up first, so that
    /// afterwards this process knows every change the read DB had (a read
    /// of another aggregate from memory is then at least as new, as a read
    /// of the database would be).
    pub async fn settle(&self, version: i64) -> Result<(), sqlx::Error> {
        if self.progress.known(&self.aggregate_id).0.unwrap_or(0) < version {
            self.progress.catch_up_now().await?;
        }
        Ok(())
    }

    /// Waits until the read model has `version` of the aggregate or the
    /// deadline passes. Reads only memory, except once after the tracked map
    /// was cleared and once at the deadline.
    pub async fn until(
        mut self,
        version: i64,
        deadline: Instant,
    ) -> Result<WaitOutcome, sqlx::Error> {
        loop {
            self.rx.borrow_and_update();
            let (known, epoch) = self.progress.known(&self.aggregate_id);
            self.current = self.current.max(known.unwrap_or(0));
            if epoch != self.epoch {
                self.epoch = epoch;
                let stored = self.progress.stored_version(&self.aggregate_id).await?;
                self.current = self.current.max(stored);
            }
            if self.current >= version {
                self.settle(version).await?;
                return Ok(WaitOutcome::Reached);
            }
            if self.progress.inner.closed.load(Ordering::Acquire) {
                return Ok(WaitOutcome::Closed {
                    current_version: self.current,
                });
            }
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        return Ok(WaitOutcome::Closed { current_version: self.current });
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    // The follower may be a poll behind: ask the DB once.
                    let stored = self.progress.stored_version(&self.aggregate_id).await?;
                    self.current = self.current.max(stored);
                    return Ok(if self.current >= version {
                        self.settle(version).await?;
                        WaitOutcome::Reached
                    } else {
                        WaitOutcome::TimedOut { current_version: self.current }
                    });
                }
            }
        }
    }
}
