//! Made-up history in bulk, for benchmarks that ask whether the cost of a
//! command grows with the size of the log: millions of events written by
//! one `INSERT ... SELECT` per chunk instead of millions of appends.

use super::sql::advance_relay_checkpoint;
use super::{SqlEventStore, StoreError};
use crate::db::timestamp;
use crate::dialect::{fill, Dialect};
use sqlx::Executor;

/// Aggregates per statement (and per transaction).
const CHUNK: i64 = 50_000;

/// `aggregates` aggregates of one type that each lived through `life` (event
/// type, schema version and payload, in order; `{n}` in a payload's text becomes the
/// aggregate's number, 1-based). Ids are UUID-shaped and made from `salt`
/// and the aggregate's number ([`GeneratedHistory::aggregate_id`]), so two
/// imports with different salts never clash.
#[derive(Debug, Clone)]
pub struct GeneratedHistory {
    /// The aggregates' type.
    pub aggregate_type: String,
    /// Every aggregate's events, in version order.
    pub life: Vec<(String, i32, serde_json::Value)>,
    /// How many aggregates.
    pub aggregates: i64,
    /// Tells this import's ids from another's (32 bits are used).
    pub salt: u32,
    /// Whether a relay publishes this store: an import taken as published
    /// is then refused while the relay has events left to send, which would
    /// be skipped.
    pub relayed: bool,
    /// Left for the relay to publish like any append (the relay checkpoint
    /// stays); otherwise taken as published long ago.
    pub unpublished: bool,
    /// Positions follow version, then aggregate (each chunk's first events,
    /// then their second ones, ...), as a log that many aggregates write at
    /// once; otherwise aggregate, then version.
    pub interleaved: bool,
}

impl GeneratedHistory {
    /// The id of aggregate number `n` (1-based).
    pub fn aggregate_id(&self, n: i64) -> String {
        format!("{:08x}-0000-4000-8000-{n:012x}", self.salt)
    }
}

/// The INSERT of one chunk (`insert_history` of the dialect's file).
/// Positions follow version, then aggregate when `interleaved`.
fn insert_sql(dialect: &dyn Dialect, interleaved: bool) -> String {
    let d = dialect.sql();
    let order = if interleaved {
        d.history_interleaved
    } else {
        d.history_by_aggregate
    };
    fill(d.insert_history, &[("order", order)])
}

impl SqlEventStore {
    /// Writes `history` as if it had been appended (and, unless
    /// `unpublished`, published) long ago: one transaction per chunk of
    /// aggregates, each moving the relay checkpoint to its last event (so
    /// nothing of it is sent to Kafka). Taken as published, it is refused
    /// while a relay has anything left to publish. Calls
    /// `progress` with the number of events written so far; returns the log
    /// head after the import.
    pub async fn import_generated(
        &self,
        history: &GeneratedHistory,
        mut progress: impl FnMut(i64),
    ) -> Result<i64, StoreError> {
        if history.relayed && !history.unpublished {
            let pending = super::EventStore::outbox_pending(self).await?;
            if pending > 0 {
                return Err(StoreError::Unpublished { pending });
            }
        }
        let db = self.db();
        let life: Vec<serde_json::Value> = history
            .life
            .iter()
            .map(|(t, v, p)| serde_json::json!([t, p, v]))
            .collect();
        let life = serde_json::Value::Array(life).to_string();
        let (salt, now) = (
            format!("{:08x}", history.salt),
            timestamp(chrono::Utc::now()),
        );
        let mut head = 0;
        for first in (1..=history.aggregates).step_by(CHUNK as usize) {
            let last = (first + CHUNK - 1).min(history.aggregates);
            let mut tx = db.begin_append().await?;
            sqlx::query(&insert_sql(db.dialect, history.interleaved))
                .bind(&history.aggregate_type)
                .bind(&life)
                .bind(first)
                .bind(last)
                .bind(&now)
                .bind(&salt)
                .execute(&mut *tx)
                .await?;
            head = sqlx::query_scalar(super::sql::HEAD)
                .fetch_one(&mut *tx)
                .await?;
            if !history.unpublished {
                advance_relay_checkpoint(&mut tx, head, &now).await?;
            }
            tx.commit().await?;
            progress(last * history.life.len() as i64);
        }
        for after in [db.sql().after_bulk_load, db.sql().flush_after_bulk_load]
            .into_iter()
            .flatten()
        {
            db.writer.execute(after).await?;
        }
        self.committed.send_if_modified(|p| {
            let moved = head > *p;
            *p = (*p).max(head);
            moved
        });
        Ok(head)
    }
}
