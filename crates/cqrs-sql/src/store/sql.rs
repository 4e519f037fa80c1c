//! The event store over either database; its statements are in
//! `sql/event_store.sql` and `sql/relay.sql`, the differences in the `Db`'s
//! [`Dialect`].

use super::{AppendRequest, Appended, EventStore, StoreError, StoredAnswer};
use crate::db::{parse_timestamp, timestamp, Db};
use crate::dialect::{fill, section, Dialect};
use crate::migrate::{AddedColumn, Component, Migration};
use cqrs_core::{EventEnvelope, EventMetadata};
use sqlx::Executor;
use std::sync::Arc;
use tokio::sync::watch;

const SQL: &str = include_str!("../../sql/event_store.sql");
const RELAY_SQL: &str = include_str!("../../sql/relay.sql");
/// The last position of the log (0 when empty).
pub(super) const HEAD: &str = section(SQL, "head");

/// The write side's first schema (`sql/event_store_v1.sql`) in `dialect`'s
/// terms: statements separated by semicolons, comments dropped.
pub(crate) fn write_schema(dialect: &dyn Dialect) -> Vec<String> {
    include_str!("../../sql/event_store_v1.sql")
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("{position}", dialect.sql().position_column)
        .replace("{payload}", dialect.sql().payload_type)
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The store's statements, filled in for its dialect once.
struct Statements {
    load: String,
    all_events: String,
    events_of_command: String,
    read_log: String,
    read_log_below: String,
    existing: String,
    keyed_commands: String,
    probe_write: String,
    oldest_pending: String,
}

impl Statements {
    fn of(dialect: &dyn Dialect) -> Statements {
        let d = dialect.sql();
        let columns = fill(
            section(SQL, "event_columns"),
            &[
                ("payload", d.payload_out),
                (
                    "occurred_at",
                    &fill(d.instant_out, &[("column", "occurred_at")]),
                ),
                (
                    "recorded_at",
                    &fill(d.instant_out, &[("column", "recorded_at")]),
                ),
            ],
        );
        let events = |name: &str| fill(section(SQL, name), &[("event_columns", &columns)]);
        let keys = crate::batch::keys(dialect, 1);
        Statements {
            load: events("load"),
            all_events: events("all_events"),
            events_of_command: events("events_of_command"),
            read_log: events("read_log"),
            read_log_below: events("read_log_below"),
            existing: fill(section(SQL, "existing"), &[("keys", &keys)]),
            keyed_commands: fill(section(SQL, "keyed_commands"), &[("keys", &keys)]),
            probe_write: fill(
                section(SQL, "probe_write"),
                &[("created_at", &fill(d.instant_in, &[("expr", "$2")]))],
            ),
            oldest_pending: fill(
                section(RELAY_SQL, "oldest_pending"),
                &[(
                    "recorded_at",
                    &fill(d.instant_out, &[("column", "recorded_at")]),
                )],
            ),
        }
    }
}

/// The event store on a SQL database.
#[derive(Clone)]
pub struct SqlEventStore {
    db: Db,
    pub(super) committed: Arc<watch::Sender<i64>>,
    notifying: Arc<std::sync::atomic::AtomicBool>,
    sql: Arc<Statements>,
    appends: tokio::sync::mpsc::Sender<super::writer::Job>,
    id: Arc<str>,
}

/// The write side's owners of tables and their migrations: `event_store`
/// (events, idempotency) and `relay` (its checkpoint and batches).
pub fn write_components(dialect: &'static dyn Dialect) -> Vec<Component> {
    vec![
        Component {
            name: "event_store".into(),
            migrations: vec![
                Migration::new(1, "events and idempotency keys")
                    .sql(write_schema(dialect))
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
                        &crate::Postgres,
                        crate::dialect::postgres::only("only_native_timestamps_events"),
                    )
                    .only(
                        &crate::Postgres,
                        crate::dialect::postgres::only("only_native_timestamps_idempotency"),
                    ),
                Migration::new(3, "idempotency keys scoped to their caller")
                    .sql([section(SQL, "scope_idempotency_keys")]),
                Migration::new(4, "store identity").sql([section(SQL, "identity_table")]),
                // The W3C trace context each command ran in.
                Migration::new(5, "trace context").add_column(AddedColumn {
                    table: "events".into(),
                    column: "traceparent",
                    definition: "TEXT",
                    backfill: None,
                }),
            ],
        },
        Component {
            name: "relay".into(),
            migrations: vec![Migration::new(1, "checkpoint and batches").sql([
                section(RELAY_SQL, "checkpoint_table"),
                section(RELAY_SQL, "batches_table"),
                section(RELAY_SQL, "batches_index"),
            ])],
        },
    ]
}

impl SqlEventStore {
    /// Opens the store, bringing its tables to this build's schema first
    /// (see [`crate::migrate`]).
    pub async fn open(db: Db) -> Result<Self, StoreError> {
        crate::migrate::migrate(&db, &write_components(db.dialect)).await?;
        Self::open_current(db).await
    }

    /// Opens a store whose schema must already be this build's (a process
    /// not allowed to migrate); refuses with [`MigrateError::Pending`] when
    /// migrations are due.
    ///
    /// [`MigrateError::Pending`]: crate::MigrateError::Pending
    pub async fn open_current(db: Db) -> Result<Self, StoreError> {
        crate::migrate::ensure_current(&db, &write_components(db.dialect)).await?;
        init_relay_checkpoint(&db).await?;
        let id = super::identity::load_or_make(&db).await?;
        let last: i64 = sqlx::query_scalar(HEAD).fetch_one(&db.pool).await?;
        let appends = super::writer::spawn(db.clone());
        Ok(Self {
            sql: Arc::new(Statements::of(db.dialect)),
            db,
            committed: Arc::new(watch::channel(last).0),
            notifying: Arc::default(),
            appends,
            id: id.into(),
        })
    }

    /// The store's identity (made at its first open, never changed): what
    /// the relay stamps on every record it publishes.
    pub fn id(&self) -> &str {
        &self.id
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
        sqlx::query(&self.sql.probe_write)
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
        Ok(sqlx::query_as(&self.sql.keyed_commands)
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
        let found: Vec<String> = sqlx::query_scalar(&self.sql.existing)
            .bind(crate::batch::keys_json(ids)?)
            .fetch_all(&self.db.pool)
            .await?;
        Ok(found.into_iter().collect())
    }

    /// Every event, in position order (for verification and tooling).
    pub async fn all_events(&self) -> Result<Vec<EventEnvelope>, StoreError> {
        let rows = sqlx::query_as(&self.sql.all_events)
            .fetch_all(&self.db.pool)
            .await?;
        envelopes(rows)
    }

    /// How many events lie after `position` (positions may have gaps: a
    /// rolled-back append leaves one).
    pub async fn count_after(&self, position: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(section(SQL, "count_after"))
            .bind(position)
            .fetch_one(&self.db.pool)
            .await?)
    }

    /// The mean size of an event's payload as JSON text, in bytes (0 when
    /// the log is empty).
    pub async fn mean_payload_bytes(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(section(SQL, "mean_payload_bytes"))
            .fetch_one(&self.db.pool)
            .await?)
    }

    /// The events a command appended.
    pub async fn events_of_command(
        &self,
        command_id: &str,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let rows = sqlx::query_as(&self.sql.events_of_command)
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
        if let Some(post) = self.db.sql().append_postamble {
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
        Ok(sqlx::query_scalar(section(RELAY_SQL, "checkpoint"))
            .bind(RELAY)
            .fetch_optional(&self.db.pool)
            .await?
            .unwrap_or(0))
    }

    /// Moves the relay's checkpoint back to `position`, so that every event
    /// after it is published again (after a topic was lost or recreated).
    /// Consumers that have an event already drop the copy by its version.
    pub async fn republish_from(&self, position: i64) -> Result<(), StoreError> {
        sqlx::query(section(RELAY_SQL, "rewind"))
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
        sqlx::query(section(RELAY_SQL, "record_batch"))
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
        Ok(sqlx::query(section(RELAY_SQL, "prune_batches"))
            .bind(timestamp(before))
            .execute(&self.db.writer)
            .await?
            .rows_affected())
    }

    /// When the relay published the event at `position` (None: not yet, or
    /// so long ago that the batch was pruned).
    pub async fn published_at(
        &self,
        position: i64,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        let at: Option<String> = sqlx::query_scalar(section(RELAY_SQL, "published_at"))
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
        let oldest: Option<String> = sqlx::query_scalar(&self.sql.oldest_pending)
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

/// Moves the relay checkpoint to `position`, never back.
pub(super) async fn advance_relay_checkpoint(
    conn: &mut sqlx::AnyConnection,
    position: i64,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(section(RELAY_SQL, "advance"))
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
    let exists: Option<i64> = sqlx::query_scalar(section(RELAY_SQL, "checkpoint"))
        .bind(RELAY)
        .fetch_optional(&db.pool)
        .await?;
    if exists.is_some() {
        return Ok(());
    }
    let legacy = sqlx::query(section(RELAY_SQL, "legacy_outbox"))
        .execute(&db.pool)
        .await
        .is_ok();
    let start: i64 = if legacy {
        sqlx::query_scalar(section(RELAY_SQL, "legacy_start"))
            .fetch_one(&db.pool)
            .await?
    } else {
        0
    };
    sqlx::query(section(RELAY_SQL, "init"))
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
    traceparent: Option<String>,
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
                traceparent: self.traceparent,
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
        let rows = sqlx::query_as(&self.sql.load)
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
        Ok(sqlx::query_as(section(SQL, "idempotent_answer"))
            .bind(key)
            .fetch_optional(&self.db.pool)
            .await?)
    }

    async fn position_of(
        &self,
        aggregate_id: &str,
        version: i64,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(section(SQL, "position_of"))
            .bind(aggregate_id)
            .bind(version)
            .fetch_optional(&self.db.pool)
            .await?)
    }

    async fn read_log(&self, after: i64, limit: i64) -> Result<Vec<EventEnvelope>, StoreError> {
        let rows = match self.db.sql().log_horizon {
            None => {
                sqlx::query_as(&self.sql.read_log)
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
                sqlx::query_as(&self.sql.read_log_below)
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
        Ok(sqlx::query_scalar(HEAD).fetch_one(&self.db.pool).await?)
    }

    async fn outbox_pending(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(section(RELAY_SQL, "pending"))
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
        let pg = write_schema(&crate::Postgres);
        let lite = write_schema(&crate::Sqlite);
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
