//! A per-process cache of read-model answers, kept current by the read
//! progress the process already follows, so a hit costs no database round
//! trip and no serialisation.
//!
//! Two kinds of entry:
//! - one aggregate's row (an order by id) is valid while its version is at
//!   least the version the read model applied for that aggregate, as far as
//!   the follower has seen (the projector's own batches at once, other
//!   processes' on their NOTIFY or the next poll);
//! - an answer over many aggregates (stats, a customer's summary) is valid
//!   until the read model moves at all.
//!
//! Either expires after a time to live, which bounds what a change the
//! progress does not report (a rebuild swapped in by `orders replay`) can
//! leave behind. A token's version is honoured exactly as without the
//! cache: a consistent read waits for the progress first, and an entry
//! below the token's version is never answered. The cache is bounded in
//! bytes, least recently used first out.

use super::ReadProgress;
use lru::LruCache;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the process knew before it read the database for an answer: the
/// entry it fills is checked against this, never against what it knows
/// later (a change that landed during the read then invalidates it).
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    epoch: u64,
    generation: u64,
    at: Instant,
}

struct Entry<V> {
    value: Arc<V>,
    /// The aggregate's version (a row), or `None` (an answer over many).
    version: Option<i64>,
    stamp: Stamp,
    bytes: usize,
}

struct Lru<V> {
    entries: LruCache<String, Entry<V>>,
    bytes: usize,
}

/// Answers of one kind, by key.
pub struct ReadCache<V> {
    name: &'static str,
    progress: ReadProgress,
    max_bytes: usize,
    ttl: Duration,
    lru: Mutex<Lru<V>>,
}

impl<V> std::fmt::Debug for ReadCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("name", &self.name)
            .field("max_bytes", &self.max_bytes)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl<V> ReadCache<V> {
    /// A cache named `name` (its metrics' label) of at most `max_bytes`
    /// (0: nothing is kept) whose entries live `ttl` at most.
    pub fn new(
        name: &'static str,
        progress: ReadProgress,
        max_bytes: usize,
        ttl: Duration,
    ) -> Self {
        Self {
            name,
            progress,
            max_bytes,
            ttl,
            lru: Mutex::new(Lru {
                entries: LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    /// Whether anything is kept (and answered): a budget, and a process
    /// that follows every change of the read model.
    pub fn enabled(&self) -> bool {
        self.max_bytes > 0 && self.progress.is_following()
    }

    /// Take this before reading the database for an answer to put.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            epoch: self.progress.epoch(),
            generation: self.progress.generation(),
            at: Instant::now(),
        }
    }

    /// The row of aggregate `id`, if one is kept that is as new as the read
    /// model's applied version and at least `at_least` (a token's version).
    pub fn row(&self, id: &str, at_least: i64) -> Option<Arc<V>> {
        if !self.enabled() {
            return None;
        }
        let (applied, epoch) = self.progress.known(id);
        let fresh = |e: &Entry<V>| {
            e.version.is_some_and(|v| {
                v >= at_least && v >= applied.unwrap_or(0) && e.stamp.epoch == epoch
            })
        };
        self.lookup(id, fresh)
    }

    /// The answer kept under `key`, if the read model has not moved since
    /// it was read; with a token (`aggregate id`, version), only once the
    /// progress has seen that version (an answer read after it includes it).
    pub fn current(&self, key: &str, token: Option<(&str, i64)>) -> Option<Arc<V>> {
        if !self.enabled() {
            return None;
        }
        if let Some((id, version)) = token {
            if self.progress.known(id).0.unwrap_or(0) < version {
                return None;
            }
        }
        let generation = self.progress.generation();
        self.lookup(key, |e| {
            e.version.is_none() && e.stamp.generation == generation
        })
    }

    /// Keeps the row of aggregate `id` at `version`, read after `stamp`.
    pub fn put_row(&self, id: &str, version: i64, stamp: Stamp, value: V, bytes: usize) {
        self.put(id, Some(version), stamp, value, bytes);
    }

    /// Keeps an answer over many aggregates under `key`, read after `stamp`.
    pub fn put_current(&self, key: &str, stamp: Stamp, value: V, bytes: usize) {
        self.put(key, None, stamp, value, bytes);
    }

    fn lookup(&self, key: &str, fresh: impl Fn(&Entry<V>) -> bool) -> Option<Arc<V>> {
        let Ok(mut lru) = self.lru.lock() else {
            return None;
        };
        let found = match lru.entries.get(key) {
            None => None,
            Some(e) if e.stamp.at.elapsed() < self.ttl && fresh(e) => Some(e.value.clone()),
            Some(_) => {
                // Stale: out now, so that it costs no memory until evicted.
                if let Some(old) = lru.entries.pop(key) {
                    lru.bytes -= old.bytes;
                }
                metrics::counter!("cqrs_read_cache_total", "cache" => self.name, "outcome" => "stale")
                    .increment(1);
                return None;
            }
        };
        let outcome = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!("cqrs_read_cache_total", "cache" => self.name, "outcome" => outcome)
            .increment(1);
        found
    }

    fn put(&self, key: &str, version: Option<i64>, stamp: Stamp, value: V, bytes: usize) {
        // An entry larger than a tenth of the budget would push out many.
        let bytes = bytes + key.len() + std::mem::size_of::<Entry<V>>();
        if !self.enabled() || bytes > self.max_bytes / 10 {
            return;
        }
        let Ok(mut lru) = self.lru.lock() else {
            return;
        };
        // Two reads of one row that raced: the newer version stays (an
        // answer never goes back to an older one in this process).
        let newer_kept = lru
            .entries
            .peek(key)
            .is_some_and(|e| matches!((e.version, version), (Some(kept), Some(v)) if kept > v));
        if newer_kept {
            return;
        }
        let entry = Entry {
            value: Arc::new(value),
            version,
            stamp,
            bytes,
        };
        if let Some(old) = lru.entries.put(key.to_owned(), entry) {
            lru.bytes -= old.bytes;
        }
        lru.bytes += bytes;
        while lru.bytes > self.max_bytes {
            match lru.entries.pop_lru() {
                Some((_, old)) => lru.bytes -= old.bytes,
                None => break,
            }
        }
        metrics::gauge!("cqrs_read_cache_bytes", "cache" => self.name).set(lru.bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn cache(
        max_bytes: usize,
        ttl: Duration,
    ) -> (ReadCache<String>, ReadProgress, tempfile::TempDir) {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let db = crate::Db::connect(&url, &crate::DbOptions::default())
            .await
            .unwrap();
        let progress = ReadProgress::new(db, "p");
        progress.assume_followed();
        (
            ReadCache::new("test", progress.clone(), max_bytes, ttl),
            progress,
            dir,
        )
    }

    #[tokio::test]
    async fn a_row_is_answered_until_a_newer_version_is_applied_and_never_below_a_token() {
        let (c, progress, _dir) = cache(1 << 20, Duration::from_secs(60)).await;
        let s = c.stamp();
        c.put_row("o1", 2, s, "v2".into(), 2);
        assert_eq!(c.row("o1", 0).as_deref(), Some(&"v2".to_owned()));
        assert_eq!(c.row("o1", 2).as_deref(), Some(&"v2".to_owned()));
        progress.applied([("o1", 2)]);
        assert!(c.row("o1", 0).is_some(), "the version it holds");
        progress.applied([("o1", 3)]);
        assert!(c.row("o1", 0).is_none(), "version 3 applied");
        c.put_row("o1", 3, c.stamp(), "v3".into(), 2);
        c.put_row("o1", 2, c.stamp(), "late v2".into(), 2);
        assert_eq!(
            c.row("o1", 3).as_deref(),
            Some(&"v3".to_owned()),
            "a late older read"
        );
        assert!(c.row("o1", 4).is_none(), "a token for version 4");
        assert!(c.row("o2", 0).is_none());
    }

    #[tokio::test]
    async fn an_answer_over_many_lives_until_the_read_model_moves() {
        let (c, progress, _dir) = cache(1 << 20, Duration::from_secs(60)).await;
        let s = c.stamp();
        c.put_current("stats", s, "s".into(), 1);
        assert!(c.current("stats", None).is_some());
        progress.applied([("any", 1)]);
        assert!(c.current("stats", None).is_none());
        // Read before the move, put after it: never answered.
        let before = c.stamp();
        progress.applied([("any", 2)]);
        c.put_current("stats", before, "old".into(), 3);
        assert!(c.current("stats", None).is_none());
        // A token the progress has not seen yet: not from the cache.
        c.put_current("stats", c.stamp(), "new".into(), 3);
        assert!(c.current("stats", Some(("any", 2))).is_some());
        assert!(c.current("stats", Some(("any", 3))).is_none());
        assert!(c.current("stats", Some(("other", 1))).is_none());
    }

    #[tokio::test]
    async fn nothing_is_answered_before_the_progress_is_followed() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let db = crate::Db::connect(&url, &crate::DbOptions::default())
            .await
            .unwrap();
        let c = ReadCache::new(
            "t",
            ReadProgress::new(db, "p"),
            1 << 20,
            Duration::from_secs(60),
        );
        c.put_row("o1", 1, c.stamp(), "x".to_owned(), 1);
        assert!(c.row("o1", 0).is_none());
    }

    #[tokio::test]
    async fn entries_expire_and_the_budget_evicts_the_least_recently_used() {
        let (c, _p, _dir) = cache(1 << 20, Duration::from_millis(30)).await;
        c.put_row("o1", 1, c.stamp(), "x".into(), 1);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(c.row("o1", 0).is_none(), "expired");
        let entry = 1000 + std::mem::size_of::<Entry<String>>() + 2;
        let (c, _p, _dir) = cache(entry * 20, Duration::from_secs(60)).await;
        for i in 0..30 {
            c.put_row(&format!("k{i}"), 1, c.stamp(), String::new(), 1000);
            // k0 is read each time: the most recently used stays.
            assert!(c.row("k0", 0).is_some(), "k0 after {i}");
        }
        assert!(
            c.row("k1", 0).is_none(),
            "the least recently used went first"
        );
        assert!(c.row("k29", 0).is_some());
        let kept = c.lru.lock().unwrap().bytes;
        assert!(kept <= entry * 20, "{kept}");
    }
}
