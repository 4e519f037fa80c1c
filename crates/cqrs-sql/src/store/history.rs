//! Made-up history in bulk, for benchmarks that ask whether the cost of a
//! command grows with the size of the log: millions of events written by
//! one `INSERT ... SELECT` per chunk instead of millions of appends.

use super::sql::advance_relay_checkpoint;
use super::{SqlEventStore, StoreError};
use crate::db::{timestamp, Backend};
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

/// The INSERT of one chunk. `$1` type, `$2` the life as a JSON array of
/// `[event_type, payload, schema_version]`, `$3..=$4` the aggregate numbers, `$5` now, `$6`
/// the salt as 8 hex digits. Positions follow `order`.
fn insert_sql(backend: Backend, interleaved: bool) -> String {
    match backend {
        Backend::Postgres => {
            let order = if interleaved {
                "l.ord, a.i"
            } else {
                "a.i, l.ord"
            };
            format!(
                "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
                 schema_version, payload, command_id, occurred_at, recorded_at) \
                 SELECT $6 || '-' || lpad(to_hex(l.ord), 4, '0') || '-4000-9000-' || lpad(to_hex(a.i), 12, '0'), \
                 $1, $6 || '-0000-4000-8000-' || lpad(to_hex(a.i), 12, '0'), l.ord, l.value->>0, CAST(l.value->>2 AS BIGINT), \
                 CAST(replace(CAST(l.value->1 AS TEXT), '{{n}}', CAST(a.i AS TEXT)) AS jsonb), \
                 $6 || '-' || lpad(to_hex(l.ord), 4, '0') || '-4000-a000-' || lpad(to_hex(a.i), 12, '0'), \
                 CAST($5 AS TIMESTAMPTZ), CAST($5 AS TIMESTAMPTZ) \
                 FROM generate_series(CAST($3 AS BIGINT), CAST($4 AS BIGINT)) AS a(i) \
                 CROSS JOIN jsonb_array_elements(CAST($2 AS jsonb)) WITH ORDINALITY AS l(value, ord) \
                 ORDER BY {order}"
            )
        }
        Backend::Sqlite => {
            let order = if interleaved {
                "l.key, a.i"
            } else {
                "a.i, l.key"
            };
            format!(
                "WITH RECURSIVE a(i) AS (SELECT $3 UNION ALL SELECT i + 1 FROM a WHERE i < $4) \
                 INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, \
                 schema_version, payload, command_id, occurred_at, recorded_at) \
                 SELECT printf('%s-%04x-4000-9000-%012x', $6, l.key + 1, a.i), $1, \
                 printf('%s-0000-4000-8000-%012x', $6, a.i), l.key + 1, json_extract(l.value, '$[0]'), json_extract(l.value, '$[2]'), \
                 json(replace(json_extract(l.value, '$[1]'), '{{n}}', a.i)), \
                 printf('%s-%04x-4000-a000-%012x', $6, l.key + 1, a.i), $5, $5 \
                 FROM a CROSS JOIN json_each($2) AS l ORDER BY {order}"
            )
        }
    }
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
            let mut tx = db.writer.begin().await?;
            if let Some(preamble) = self.dialect.append_preamble() {
                tx.execute(preamble).await?;
            }
            sqlx::query(&insert_sql(db.backend, history.interleaved))
                .bind(&history.aggregate_type)
                .bind(&life)
                .bind(first)
                .bind(last)
                .bind(&now)
                .bind(&salt)
                .execute(&mut *tx)
                .await?;
            head = sqlx::query_scalar("SELECT CAST(MAX(position) AS BIGINT) FROM events")
                .fetch_one(&mut *tx)
                .await?;
            if !history.unpublished {
                advance_relay_checkpoint(&mut tx, head, &now).await?;
            }
            tx.commit().await?;
            progress(last * history.life.len() as i64);
        }
        // As after any bulk load: fresh statistics (the planner would plan
        // for the table as it was) and the visibility map set (or autovacuum
        // does it later, in the middle of whatever runs then).
        if db.backend == Backend::Postgres {
            db.writer.execute("VACUUM (ANALYZE) events").await?;
        }
        self.committed.send_if_modified(|p| {
            let moved = head > *p;
            *p = (*p).max(head);
            moved
        });
        Ok(head)
    }
}
