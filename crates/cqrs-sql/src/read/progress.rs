//! What the read model has applied, for consistency waits. The runner pushes
//! every committed batch here; waiters wake on a watch channel and read an
//! in-memory map, so a thousand waiters cost no database polls.

use crate::db::Db;
use cqrs_core::ConsistencyToken;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Beyond this many tracked aggregates the map is cleared; waiters then fall
/// back to one database read.
const MAX_TRACKED: usize = 200_000;

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
}

struct Inner {
    db: Db,
    projector: String,
    bump: watch::Sender<u64>,
    versions: Mutex<HashMap<String, i64>>,
}

/// Read-model progress of one projector, shared by the runner and the API.
#[derive(Clone)]
pub struct ReadProgress {
    inner: Arc<Inner>,
}

impl ReadProgress {
    /// Progress of `projector` whose versions live in `db`.
    pub fn new(db: Db, projector: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                projector: projector.into(),
                bump: watch::channel(0).0,
                versions: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Records versions applied by a committed batch and wakes waiters.
    pub fn applied<'a>(&self, versions: impl IntoIterator<Item = (&'a str, i64)>) {
        if let Ok(mut map) = self.inner.versions.lock() {
            if map.len() > MAX_TRACKED {
                map.clear();
            }
            for (id, v) in versions {
                let e = map.entry(id.to_owned()).or_insert(0);
                *e = (*e).max(v);
            }
        }
        self.inner.bump.send_modify(|g| *g += 1);
    }

    /// Changes whenever the read model moves (local batch or followed from the DB).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.bump.subscribe()
    }

    /// Wakes waiters so that they re-read the database (progress made by
    /// another process).
    pub fn poke(&self) {
        if let Ok(mut map) = self.inner.versions.lock() {
            map.clear();
        }
        self.inner.bump.send_modify(|g| *g += 1);
    }

    /// The aggregate's version in the read model.
    pub async fn version_of(&self, aggregate_id: &str) -> Result<i64, sqlx::Error> {
        let known = self
            .inner
            .versions
            .lock()
            .ok()
            .and_then(|m| m.get(aggregate_id).copied());
        if let Some(v) = known {
            return Ok(v);
        }
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM projected_versions WHERE projector = $1 AND aggregate_id = $2",
        )
        .bind(&self.inner.projector)
        .bind(aggregate_id)
        .fetch_optional(&self.inner.db.pool)
        .await?;
        Ok(v.unwrap_or(0))
    }

    /// Follows a projector that runs in another process: every `interval`,
    /// one query picks up the versions it applied since the last look and
    /// wakes the waiters. One query per interval, however many waiters.
    pub fn follow_database(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut since = crate::db::timestamp(chrono::Utc::now() - chrono::Duration::seconds(5));
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let rows: Result<Vec<(String, i64, String)>, _> = sqlx::query_as(
                    "SELECT aggregate_id, version, applied_at FROM projected_versions \
                     WHERE projector = $1 AND applied_at >= $2 ORDER BY applied_at LIMIT 10000",
                )
                .bind(&this.inner.projector)
                .bind(&since)
                .fetch_all(&this.inner.db.pool)
                .await;
                match rows {
                    Ok(rows) if !rows.is_empty() => {
                        if let Some(last) = rows.last() {
                            since = last.2.clone();
                        }
                        this.applied(rows.iter().map(|(a, v, _)| (a.as_str(), *v)));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot follow the read model's progress"),
                }
            }
        })
    }

    /// Records that a query served data including the token's write (the
    /// first time wins); off the request path.
    pub fn record_query(&self, token: &ConsistencyToken) {
        let db = self.inner.db.clone();
        let (aggregate_id, version) = (token.aggregate_id.clone(), token.version);
        tokio::spawn(async move {
            let r = sqlx::query(
                "INSERT INTO query_traces (aggregate_id, version, queried_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (aggregate_id, version) DO NOTHING",
            )
            .bind(aggregate_id)
            .bind(version)
            .bind(crate::db::timestamp(chrono::Utc::now()))
            .execute(&db.writer)
            .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "query trace not recorded");
            }
        });
    }

    /// Waits until the read model includes the token's write, or `timeout`.
    pub async fn wait_for(
        &self,
        token: &ConsistencyToken,
        timeout: Duration,
    ) -> Result<WaitOutcome, sqlx::Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.inner.bump.subscribe();
        loop {
            rx.borrow_and_update();
            let v = self.version_of(&token.aggregate_id).await?;
            if v >= token.version {
                return Ok(WaitOutcome::Reached);
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Ok(WaitOutcome::TimedOut { current_version: v });
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let v = self.version_of(&token.aggregate_id).await?;
                    return Ok(if v >= token.version {
                        WaitOutcome::Reached
                    } else {
                        WaitOutcome::TimedOut { current_version: v }
                    });
                }
            }
        }
    }
}
