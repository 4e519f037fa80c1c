//! The event store over either database; the differences live in a `Dialect`.

use super::{AppendRequest, Appended, EventStore, StoreError, StoredAnswer};
use crate::db::{parse_timestamp, timestamp, Backend, Db};
use crate::migrate::{AddedColumn, Component, Migration};
use cqrs_core::{EventEnvelope, EventMetadata};
use sqlx::Executor;
use std::sync::Arc;
use tokio::sync::watch;

/// The write side's first schema (`schema.sql`) in `dialect`'s terms.
pub(crate) fn write_schema(dialect: &dyn Dialect) -> Vec<String> {
    include_str!("schema.sql")
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("{position}", dialect.position_column())
        .replace("{payload}", dialect.payload_type())
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What differs between PostgreSQL and SQLite.
pub(crate) trait Dialect: Send + Sync {
    /// The `position` column's type and allocation.
    fn position_column(&self) -> &'static str;
    /// The payload column's type.
    fn payload_type(&self) -> &'static str;
    /// The payload column as text.
    fn payload_column(&self) -> &'static str;
    /// Run first in every append transaction.
    fn append_preamble(&self) -> Option<&'static str>;
    /// Run after every append commits (e.g. NOTIFY the relay).
    fn append_postamble(&self) -> Option<&'static str>;
    /// Run before reading the log: waits until no append that allocated a
    /// position is still in flight, and answers the highest position below
    /// which every position is final (None: appends are serial anyway).
    fn log_horizon(&self) -> Option<&'static str>;
}

/// The event store on a SQL database.
#[derive(Clone)]
pub struct SqlEventStore {
    db: Db,
    pub(super) dialect: Arc<dyn Dialect>,
    pub(super) committed: Arc<watch::Sender<i64>>,
    notifying: Arc<std::sync::atomic::AtomicBool>,
    select_events: Arc<str>,
    appends: tokio::sync::mpsc::Sender<super::writer::Job>,
}

fn dialect_of(backend: Backend) -> Arc<dyn Dialect> {
    match backend {
        Backend::Sqlite => Arc::new(super::sqlite::Sqlite),
        Backend::Postgres => Arc::new(super::postgres::Postgres),
    }
}

/// The write side's owners of tables and their migrations: `event_store`
/// (events, idempotency) and `relay` (its checkpoint and batches).
pub fn write_components(backend: Backend) -> Vec<Component> {
    let dialect = dialect_of(backend);
    vec![
        Component {
            name: "event_store".into(),
            migrations: vec![
                Migration::new(1, "events and idempotency keys")
                    .sql(write_schema(&*dialect))
                    // Stores made before commands carried their caller.
                    .add_column(AddedColumn {
                        table: "events".into(),
                        column: "caller",
                        definition: "TEXT",
                        backfill: None,
                    }),
                // Version 1 kept RFC 3339 text; the text casts exactly.
                Migration::new(2, "native timestamps")
                    .only(
                        Backend::Postgres,
                        "ALTER TABLE events \
                         ALTER COLUMN occurred_at TYPE TIMESTAMPTZ USING CAST(occurred_at AS TIMESTAMPTZ), \
                         ALTER COLUMN recorded_at TYPE TIMESTAMPTZ USING CAST(recorded_at AS TIMESTAMPTZ)",
                    )
                    .only(
                        Backend::Postgres,
                        "ALTER TABLE idempotency \
                         ALTER COLUMN created_at TYPE TIMESTAMPTZ USING CAST(created_at AS TIMESTAMPTZ)",
                    ),
            ],
        },
        Component {
            name: "relay".into(),
            migrations: vec![Migration::new(1, "checkpoint and batches").sql(RELAY_SCHEMA.iter().copied())],
        },
    ]
}

impl SqlEventStore {
    /// Opens the store, bringing its tables to this build's schema first
    /// (see [`crate::migrate`]).
    pub async fn open(db: Db) -> Result<Self, StoreError> {
        crate::migrate::migrate(&db, &write_components(db.backend)).await?;
        Self::open_current(db).await
    }

    /// Opens a store whose schema must already be this build's (a process
    /// not allowed to migrate); refuses with [`MigrateError::Pending`] when
    /// migrations are due.
    ///
    /// [`MigrateError::Pending`]: crate::MigrateError::Pending
    pub async fn open_current(db: Db) -> Result<Self, StoreError> {
        crate::migrate::ensure_current(&db, &write_components(db.backend)).await?;
        let dialect = dialect_of(db.backend);
        init_relay_checkpoint(&db).await?;
        let last: i64 =
            sqlx::query_scalar("SELECT CAST(COALESCE(MAX(position), 0) AS BIGINT) FROM events")
                .fetch_one(&db.pool)
                .await?;
        let select_events = format!(
            "SELECT position, event_id, aggregate_type, aggregate_id, version, event_type, \
             schema_version, {} AS payload, command_id, {} AS occurred_at, {} AS recorded_at, \
             caller FROM events",
            dialect.payload_column(),
            db.backend.instant_out("occurred_at"),
            db.backend.instant_out("recorded_at"),
        );
        let appends = super::writer::spawn(
            db.clone(),
            dialect.append_preamble(),
            super::writer::writer_count(db.backend),
        );
        Ok(Self {
            db,
            dialect,
            committed: Arc::new(watch::channel(last).0),
            notifying: Arc::default(),
            select_events: select_events.into(),
            appends,
        })
    }

    /// The database underneath.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Whether the write DB accepts a write now: one row written and rolled
    /// back (a read-only file or a read-only replica fails here, not on the
    /// next command).
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        let mut tx = self.db.writer.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO idempotency (key, request_hash, aggregate_id, command_id, version, position, created_at) \
             VALUES ($1, '', '', '', 0, 0, {})",
            self.db.backend.instant_in("$2")
        ))
        .bind(format!("readiness-probe-{}", uuid::Uuid::new_v4()))
        .bind(timestamp(chrono::Utc::now()))
        .execute(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok(())
    }

    /// The commands stored under any of `keys` (idempotency keys), as
    /// `(key, command id)`: one query.
    pub async fn keyed_commands(
        &self,
        keys: &[String],
    ) -> Result<Vec<(String, String)>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT key, command_id FROM idempotency WHERE key IN ({})",
            crate::batch::keys(self.db.backend, 1)
        );
        Ok(sqlx::query_as(&sql)
            .bind(crate::batch::keys_json(keys)?)
            .fetch_all(&self.db.pool)
            .await?)
    }

    /// Which of `ids` have any event: one query, whatever their number.
    pub async fn existing(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let sql = format!(
            "SELECT aggregate_id FROM events WHERE version = 1 AND aggregate_id IN ({})",
            crate::batch::keys(self.db.backend, 1)
        );
        let found: Vec<String> = sqlx::query_scalar(&sql)
            .bind(crate::batch::keys_json(ids)?)
            .fetch_all(&self.db.pool)
            .await?;
        Ok(found.into_iter().collect())
    }

    /// Every event, in position order (for verification and tooling).
    pub async fn all_events(&self) -> Result<Vec<EventEnvelope>, StoreError> {
        let sql = format!("{} ORDER BY position", self.select_events);
        let rows = sqlx::query_as(&sql).fetch_all(&self.db.pool).await?;
        envelopes(rows)
    }

    /// How many events lie after `position` (positions may have gaps: a
    /// rolled-back append leaves one).
    pub async fn count_after(&self, position: i64) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE position > $1")
                .bind(position)
                .fetch_one(&self.db.pool)
                .await?,
        )
    }

    /// The mean size of an event's payload as JSON text, in bytes (0 when
    /// the log is empty).
    pub async fn mean_payload_bytes(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT CAST(COALESCE(AVG(length(CAST(payload AS TEXT))), 0) AS BIGINT) FROM events",
        )
        .fetch_one(&self.db.pool)
        .await?)
    }

    /// The events a command appended.
    pub async fn events_of_command(
        &self,
        command_id: &str,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let sql = format!(
            "{} WHERE command_id = $1 ORDER BY position",
            self.select_events
        );
        let rows = sqlx::query_as(&sql)
            .bind(command_id)
            .fetch_all(&self.db.pool)
            .await?;
        envelopes(rows)
    }

    /// Queues an append for the group-commit writers and waits for its
    /// outcome; hands the request back with the positions of its events.
    async fn append_grouped(
        &self,
        request: AppendRequest,
    ) -> Result<(AppendRequest, super::writer::Stored), StoreError> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        let gone = || StoreError::Db(sqlx::Error::PoolClosed);
        self.appends
            .send(super::writer::Job { request, reply })
            .await
            .map_err(|_| gone())?;
        let (request, stored) = outcome.await.map_err(|_| gone())?;
        let stored = stored?;
        if let Some(post) = self.dialect.append_postamble() {
            // After the commit, in its own tiny transaction, at most one at
            // a time per process: a NOTIFY inside every append serialises
            // all commits on PostgreSQL's notify lock. A wake-up that is
            // skipped or lost only delays the relay until its next poll.
            if !self
                .notifying
                .swap(true, std::sync::atomic::Ordering::AcqRel)
            {
                let (db, notifying) = (self.db.clone(), self.notifying.clone());
                tokio::spawn(async move {
                    if let Err(e) = db.writer.execute(post).await {
                        tracing::debug!(error = %e, "log notification not sent");
                    }
                    notifying.store(false, std::sync::atomic::Ordering::Release);
                });
            }
        }
        Ok((request, stored))
    }

    /// Where the relay has published up to: every event at or below this
    /// position is on Kafka.
    pub async fn relay_checkpoint(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT position FROM relay_checkpoint WHERE relay = $1")
                .bind(RELAY)
                .fetch_optional(&self.db.pool)
                .await?
                .unwrap_or(0),
        )
    }

    /// Moves the relay's checkpoint back to `position`, so that every event
    /// after it is published again (after a topic was lost or recreated).
    /// Consumers that have an event already drop the copy by its version.
    pub async fn republish_from(&self, position: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE relay_checkpoint SET position = $2, updated_at = $3 WHERE relay = $1")
            .bind(RELAY)
            .bind(position)
            .bind(timestamp(chrono::Utc::now()))
            .execute(&self.db.writer)
            .await?;
        Ok(())
    }

    /// Records that the events `first..=last` are on Kafka: the checkpoint
    /// moves to `last` (never back) and the batch is remembered for traces.
    /// One transaction, two rows, whatever the batch size.
    pub async fn relay_published(&self, first: i64, last: i64) -> Result<(), StoreError> {
        let now = timestamp(chrono::Utc::now());
        let mut tx = self.db.begin_derived().await?;
        advance_relay_checkpoint(&mut tx, last, &now).await?;
        sqlx::query(
            "INSERT INTO relay_batches (last_position, first_position, published_at) VALUES ($1, $2, $3) \
             ON CONFLICT (last_position) DO UPDATE SET first_position = excluded.first_position, \
             published_at = excluded.published_at",
        )
        .bind(last)
        .bind(first)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets published batches older than `before` (their events' traces
    /// then show no publication time).
    pub async fn prune_relay_batches(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM relay_batches WHERE published_at < $1")
                .bind(timestamp(before))
                .execute(&self.db.writer)
                .await?
                .rows_affected(),
        )
    }

    /// When the relay published the event at `position` (None: not yet, or
    /// so long ago that the batch was pruned).
    pub async fn published_at(
        &self,
        position: i64,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        let at: Option<String> = sqlx::query_scalar(
            "SELECT published_at FROM relay_batches WHERE last_position >= $1 AND first_position <= $1 \
             ORDER BY last_position LIMIT 1",
        )
        .bind(position)
        .fetch_optional(&self.db.pool)
        .await?;
        at.map(|a| parse_timestamp(&a))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("relay batch time: {e}")))
    }

    /// Age in seconds of the oldest event the relay has not published (0
    /// when none).
    pub async fn oldest_pending_age(&self) -> Result<f64, StoreError> {
        let oldest: Option<String> = sqlx::query_scalar(&format!(
            "SELECT {} FROM events WHERE position > \
             (SELECT position FROM relay_checkpoint WHERE relay = $1) ORDER BY position LIMIT 1",
            self.db.backend.instant_out("recorded_at")
        ))
        .bind(RELAY)
        .fetch_optional(&self.db.pool)
        .await?;
        let oldest = oldest.and_then(|o| {
            parse_timestamp(&o)
                .inspect_err(|error| {
                    tracing::warn!(recorded_at = %o, %error,
                    "an unpublished event's time does not parse; its age reads 0")
                })
                .ok()
        });
        Ok(match oldest {
            Some(t) => (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0,
            None => 0.0,
        })
    }
}

/// The relay's tables, the same on both databases: its checkpoint (one
/// row), and when each published batch went out (for traces).
const RELAY_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS relay_checkpoint (
        relay TEXT PRIMARY KEY,
        position BIGINT NOT NULL,
        updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS relay_batches (
        last_position BIGINT PRIMARY KEY,
        first_position BIGINT NOT NULL,
        published_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS relay_batches_published ON relay_batches (published_at)",
];

/// Moves the relay checkpoint to `position`, never back.
pub(super) async fn advance_relay_checkpoint(
    conn: &mut sqlx::AnyConnection,
    position: i64,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE relay_checkpoint SET position = $2, updated_at = $3 WHERE relay = $1 AND position < $2",
    )
    .bind(RELAY)
    .bind(position)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The checkpoint row's key: one relay leads per write DB.
pub(super) const RELAY: &str = "outbox";

/// Creates the relay checkpoint once. A write DB made by a version that
/// kept an `outbox` table with a published mark per row starts from its
/// first unpublished row, so nothing is skipped and little is sent twice.
async fn init_relay_checkpoint(db: &Db) -> Result<(), StoreError> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT position FROM relay_checkpoint WHERE relay = $1")
            .bind(RELAY)
            .fetch_optional(&db.pool)
            .await?;
    if exists.is_some() {
        return Ok(());
    }
    let legacy = sqlx::query("SELECT 1 FROM outbox WHERE 1 = 0")
        .execute(&db.pool)
        .await
        .is_ok();
    let start: i64 = if legacy {
        sqlx::query_scalar(
            "SELECT CAST(COALESCE((SELECT MIN(position) - 1 FROM outbox WHERE published_at IS NULL), \
             (SELECT MAX(position) FROM outbox), 0) AS BIGINT)",
        )
        .fetch_one(&db.pool)
        .await?
    } else {
        0
    };
    sqlx::query(
        "INSERT INTO relay_checkpoint (relay, position, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (relay) DO NOTHING",
    )
    .bind(RELAY)
    .bind(start)
    .bind(timestamp(chrono::Utc::now()))
    .execute(&db.writer)
    .await?;
    Ok(())
}

/// An `events` row as stored: timestamps as text, the payload as JSON text.
#[derive(sqlx::FromRow)]
struct EventRow {
    position: i64,
    event_id: String,
    aggregate_type: String,
    aggregate_id: String,
    version: i64,
    event_type: String,
    schema_version: i64,
    payload: String,
    command_id: String,
    occurred_at: String,
    recorded_at: String,
    caller: Option<String>,
}

impl EventRow {
    /// The envelope it stores, or why the row is corrupt.
    fn into_envelope(self) -> Result<EventEnvelope, StoreError> {
        let position = self.position;
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("event at position {position}: {what}: {e}"))
        };
        Ok(EventEnvelope {
            position,
            event_id: self.event_id,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            version: self.version,
            event_type: self.event_type,
            schema_version: i32::try_from(self.schema_version)
                .map_err(|e| corrupt("schema_version", &e))?,
            payload: serde_json::from_str(&self.payload).map_err(|e| corrupt("payload", &e))?,
            metadata: EventMetadata {
                command_id: self.command_id,
                occurred_at: parse_timestamp(&self.occurred_at)
                    .map_err(|e| corrupt("occurred_at", &e))?,
                caller: self.caller,
            },
            recorded_at: parse_timestamp(&self.recorded_at)
                .map_err(|e| corrupt("recorded_at", &e))?,
        })
    }
}

/// The envelopes of `rows`, in their order.
fn envelopes(rows: Vec<EventRow>) -> Result<Vec<EventEnvelope>, StoreError> {
    rows.into_iter().map(EventRow::into_envelope).collect()
}

impl EventStore for SqlEventStore {
    async fn load(&self, aggregate_id: &str) -> Result<Vec<EventEnvelope>, StoreError> {
        let sql = format!(
            "{} WHERE aggregate_id = $1 ORDER BY version",
            self.select_events
        );
        let rows = sqlx::query_as(&sql)
            .bind(aggregate_id)
            .fetch_all(&self.db.pool)
            .await?;
        let events = envelopes(rows)?;
        for (i, e) in events.iter().enumerate() {
            if e.version != i as i64 + 1 {
                return Err(StoreError::Corrupt(format!(
                    "aggregate {aggregate_id} has version {} at index {i}",
                    e.version
                )));
            }
        }
        Ok(events)
    }

    async fn append(&self, req: AppendRequest) -> Result<Appended, StoreError> {
        let (req, (positions, now)) = self.append_grouped(req).await?;
        if let Some(&last) = positions.last() {
            self.committed.send_if_modified(|p| {
                let moved = last > *p;
                *p = (*p).max(last);
                moved
            });
        }
        let events = req
            .events
            .into_iter()
            .zip(positions)
            .enumerate()
            .map(|(i, (e, position))| EventEnvelope {
                position,
                event_id: e.event_id,
                aggregate_type: req.aggregate_type.clone(),
                aggregate_id: req.aggregate_id.clone(),
                version: req.expected_version + 1 + i as i64,
                event_type: e.event_type,
                schema_version: e.schema_version,
                payload: e.payload,
                metadata: req.metadata.clone(),
                recorded_at: now,
            })
            .collect();
        Ok(Appended { events })
    }

    async fn idempotent_answer(&self, key: &str) -> Result<Option<StoredAnswer>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT request_hash, aggregate_id, command_id, version, position FROM idempotency WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&self.db.pool)
        .await?)
    }

    async fn position_of(
        &self,
        aggregate_id: &str,
        version: i64,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT position FROM events WHERE aggregate_id = $1 AND version = $2",
        )
        .bind(aggregate_id)
        .bind(version)
        .fetch_optional(&self.db.pool)
        .await?)
    }

    async fn read_log(&self, after: i64, limit: i64) -> Result<Vec<EventEnvelope>, StoreError> {
        let rows = match self.dialect.log_horizon() {
            None => {
                let sql = format!(
                    "{} WHERE position > $1 ORDER BY position LIMIT $2",
                    self.select_events
                );
                sqlx::query_as(&sql)
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.db.pool)
                    .await?
            }
            Some(horizon) => {
                let horizon: i64 = sqlx::query_scalar(horizon).fetch_one(&self.db.pool).await?;
                if horizon <= after {
                    return Ok(Vec::new());
                }
                let sql = format!(
                    "{} WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3",
                    self.select_events
                );
                sqlx::query_as(&sql)
                    .bind(after)
                    .bind(horizon)
                    .bind(limit)
                    .fetch_all(&self.db.pool)
                    .await?
            }
        };
        envelopes(rows)
    }

    async fn head_position(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT CAST(COALESCE(MAX(position), 0) AS BIGINT) FROM events")
                .fetch_one(&self.db.pool)
                .await?,
        )
    }

    async fn outbox_pending(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM events WHERE position > \
             (SELECT position FROM relay_checkpoint WHERE relay = $1)",
        )
        .bind(RELAY)
        .fetch_one(&self.db.pool)
        .await?)
    }

    fn subscribe(&self) -> watch::Receiver<i64> {
        self.committed.subscribe()
    }
}

#[cfg(test)]
mod schema_tests {
    use super::write_schema;

    #[test]
    fn both_dialects_get_the_same_tables_with_their_own_position_and_payload() {
        let pg = write_schema(&crate::store::postgres::Postgres);
        let lite = write_schema(&crate::store::sqlite::Sqlite);
        assert_eq!(pg.len(), 3, "{pg:?}");
        assert_eq!(lite.len(), 3, "{lite:?}");
        assert!(pg[0].contains("position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"));
        assert!(pg[0].contains("payload JSONB NOT NULL"));
        assert!(lite[0].contains("position INTEGER PRIMARY KEY AUTOINCREMENT"));
        assert!(lite[0].contains("payload TEXT NOT NULL"));
        for s in pg.iter().chain(&lite) {
            assert!(!s.contains('{') && !s.contains("--"), "left in: {s}");
        }
        // Apart from the two filled-in parts, the statements are the same.
        let generic = |s: &str, pos: &str, payload: &str| {
            s.replace(pos, "{position}")
                .replace(&format!("payload {payload}"), "payload {payload}")
        };
        for (p, l) in pg.iter().zip(&lite) {
            assert_eq!(
                generic(
                    p,
                    "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
                    "JSONB"
                ),
                generic(l, "INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT")
            );
        }
    }
}
