//! Records the projector gave up on, and the later records of the same
//! aggregate parked behind them so that nothing is applied out of order.

use super::SourcedEvent;
use crate::db::Db;
use crate::dialect::section;
use cqrs_core::EventEnvelope;
use sqlx::AnyConnection;
use std::collections::HashSet;

const SQL: &str = include_str!("../../sql/dead_letters.sql");

/// The dead-letter table and its index (part of the runner's migration 1).
pub(crate) fn schema() -> [&'static str; 2] {
    [section(SQL, "table"), section(SQL, "index")]
}

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterStatus {
    /// The record itself failed.
    Dead,
    /// Held back behind an earlier dead letter of its aggregate.
    Parked,
    /// Applied later by `retry`.
    Retried,
    /// Dropped by an operator.
    Discarded,
}

impl DeadLetterStatus {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterStatus::Dead => "dead",
            DeadLetterStatus::Parked => "parked",
            DeadLetterStatus::Retried => "retried",
            DeadLetterStatus::Discarded => "discarded",
        }
    }
}

/// One dead letter.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    /// Id (time-ordered).
    pub id: String,
    /// The projector that gave up on it.
    pub projector: String,
    /// Where it was published.
    pub published_as: String,
    /// Its aggregate, when known.
    pub aggregate_id: Option<String>,
    /// Its version, when it decoded.
    pub version: Option<i64>,
    /// Its event type, when it decoded.
    pub event_type: Option<String>,
    /// Why it could not be applied.
    pub reason: String,
    /// dead, parked, retried or discarded.
    pub status: String,
    /// When it was recorded.
    pub created_at: String,
    /// The decoded event.
    #[serde(skip)]
    #[sqlx(skip)]
    pub envelope: Option<EventEnvelope>,
    /// The record as it came, when it did not decode (read by [`get`] and
    /// [`list_every`] only).
    #[serde(skip)]
    #[sqlx(default)]
    pub raw: Option<String>,
}

/// A stored letter with its envelope still as JSON text.
#[derive(sqlx::FromRow)]
struct Stored {
    #[sqlx(flatten)]
    letter: DeadLetter,
    envelope: Option<String>,
}

impl Stored {
    /// The letter with its envelope decoded. One that does not decode is
    /// left out (the letter can still be listed and discarded, not
    /// retried), with a warning.
    fn decoded(self) -> DeadLetter {
        let mut letter = self.letter;
        letter.envelope = self.envelope.and_then(|e| {
            serde_json::from_str(&e)
                .map_err(|error| {
                    tracing::warn!(id = %letter.id, %error,
                        "a dead letter's stored envelope does not decode");
                })
                .ok()
        });
        letter
    }
}

/// Stores a dead or parked record.
pub(crate) async fn record(
    tx: &mut AnyConnection,
    projector: &str,
    item: &SourcedEvent,
    reason: &str,
    status: DeadLetterStatus,
    now: &str,
) -> Result<(), sqlx::Error> {
    let envelope = item.event.as_ref().ok();
    sqlx::query(section(SQL, "record"))
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(projector)
        .bind(&item.source_key)
        .bind(item.next_position)
        .bind(&item.published_as)
        .bind(item.aggregate_id())
        .bind(envelope.map(|e| e.version))
        .bind(envelope.map(|e| e.event_type.clone()))
        .bind(reason)
        .bind(status.as_str())
        .bind(envelope.and_then(|e| {
            // Without its envelope a letter can be listed and discarded, not retried.
            serde_json::to_string(e)
                .inspect_err(|error| {
                    tracing::warn!(record = %item.published_as, %error,
                "a dead letter's envelope does not encode; kept without it")
                })
                .ok()
        }))
        .bind(item.raw.as_ref().map(|r| r.to_string()))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Whether the aggregate has an open (dead or parked) letter.
pub(crate) async fn has_open(
    tx: &mut AnyConnection,
    projector: &str,
    aggregate_id: &str,
) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(section(SQL, "has_open"))
        .bind(projector)
        .bind(aggregate_id)
        .fetch_one(&mut *tx)
        .await?;
    Ok(n > 0)
}

/// The open letters of an aggregate, in version order.
pub(crate) async fn open_for(
    tx: &mut AnyConnection,
    projector: &str,
    aggregate_id: &str,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let rows: Vec<Stored> = sqlx::query_as(section(SQL, "open_for"))
        .bind(projector)
        .bind(aggregate_id)
        .fetch_all(&mut *tx)
        .await?;
    Ok(rows.into_iter().map(Stored::decoded).collect())
}

/// Closes a letter.
pub(crate) async fn resolve(
    tx: &mut AnyConnection,
    id: &str,
    status: DeadLetterStatus,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(section(SQL, "resolve"))
        .bind(status.as_str())
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Aggregates with open letters.
pub(crate) async fn parked_aggregates(
    db: &Db,
    projector: &str,
) -> Result<HashSet<String>, sqlx::Error> {
    sqlx::query_scalar(section(SQL, "parked_aggregates"))
        .bind(projector)
        .fetch_all(&db.pool)
        .await
        .map(|v: Vec<String>| v.into_iter().collect())
}

/// Dead letters, newest first; only open ones unless `all`.
pub async fn list(db: &Db, projector: &str, all: bool) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let sql = match all {
        true => section(SQL, "list_all"),
        false => section(SQL, "list_open"),
    };
    let rows: Vec<Stored> = sqlx::query_as(sql)
        .bind(projector)
        .fetch_all(&db.pool)
        .await?;
    Ok(rows.into_iter().map(Stored::decoded).collect())
}

/// Discards open letters: one by id, or every open letter of an aggregate.
pub async fn discard(db: &Db, projector: &str, id_or_aggregate: &str) -> Result<u64, sqlx::Error> {
    let now = crate::db::timestamp(chrono::Utc::now());
    let done = sqlx::query(section(SQL, "discard"))
        .bind(now)
        .bind(projector)
        .bind(id_or_aggregate)
        .execute(&db.writer)
        .await?;
    Ok(done.rows_affected())
}

/// Letters newest first, of `projector` or of every one: only open ones
/// unless `all`; at most `limit`.
pub async fn list_every(
    db: &Db,
    all: bool,
    projector: Option<&str>,
    limit: i64,
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let rows: Vec<Stored> = sqlx::query_as(section(SQL, "list_every"))
        .bind(i64::from(!all))
        .bind(limit)
        .bind(projector.unwrap_or(""))
        .fetch_all(&db.pool)
        .await?;
    Ok(rows.into_iter().map(Stored::decoded).collect())
}

/// One letter by id.
pub async fn get(db: &Db, id: &str) -> Result<Option<DeadLetter>, sqlx::Error> {
    one(&db.pool, id).await
}

/// Open letters per (projector, status).
pub async fn open_counts(db: &Db) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(section(SQL, "open_counts"))
        .fetch_all(&db.pool)
        .await
}

/// One letter by id, inside a transaction.
pub(crate) async fn one_in(
    tx: &mut AnyConnection,
    id: &str,
) -> Result<Option<DeadLetter>, sqlx::Error> {
    one(&mut *tx, id).await
}

async fn one<'e>(
    on: impl sqlx::Executor<'e, Database = sqlx::Any>,
    id: &str,
) -> Result<Option<DeadLetter>, sqlx::Error> {
    let row: Option<Stored> = sqlx::query_as(section(SQL, "one"))
        .bind(id)
        .fetch_optional(on)
        .await?;
    Ok(row.map(Stored::decoded))
}
