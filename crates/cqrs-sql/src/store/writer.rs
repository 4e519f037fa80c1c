//! Group commit: appends from concurrent commands queue up for a few writer
//! tasks, and each writer commits whatever is waiting in one transaction of
//! a handful of statements, whatever the batch size. A conflicting append
//! (its version or its idempotency key taken) fails alone; its batch-mates
//! commit.

use super::{AppendRequest, StoreError};
use crate::batch::{self, Kind, Val};
use crate::db::{timestamp, Db};
use crate::dialect::{fill, section};
use sqlx::AnyConnection;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Mutex};

/// Most appends committed in one transaction.
const MAX_BATCH: usize = 512;

/// Appends waiting for a writer, at most.
const QUEUE: usize = 4_096;

/// What an append stored: its events' positions and their recording time.
pub(crate) type Stored = (Vec<i64>, chrono::DateTime<chrono::Utc>);

/// One append and where its outcome goes (with the request handed back,
/// so that the caller need not keep a copy of its payloads).
pub(crate) struct Job {
    pub request: AppendRequest,
    pub reply: oneshot::Sender<(AppendRequest, Result<Stored, StoreError>)>,
}

impl Job {
    /// Hands the request back with its outcome (a caller that has gone away
    /// no longer wants it).
    fn answer(self, outcome: Result<Stored, StoreError>) {
        let _ = self.reply.send((self.request, outcome));
    }
}

const SQL: &str = include_str!("../../sql/event_store.sql");

/// The columns of a batch of events, as [`batch::rows`] reads them.
const EVENT_ROW: [(&str, Kind); 12] = [
    ("ord", Kind::Int),
    ("event_id", Kind::Text),
    ("aggregate_type", Kind::Text),
    ("aggregate_id", Kind::Text),
    ("version", Kind::Int),
    ("event_type", Kind::Text),
    ("schema_version", Kind::Int),
    ("payload", Kind::Text),
    ("command_id", Kind::Text),
    ("occurred_at", Kind::Text),
    ("caller", Kind::Text),
    ("traceparent", Kind::Text),
];

/// The columns of a batch of idempotency keys.
const KEY_ROW: [(&str, Kind); 6] = [
    ("key", Kind::Text),
    ("request_hash", Kind::Text),
    ("aggregate_id", Kind::Text),
    ("command_id", Kind::Text),
    ("version", Kind::Int),
    ("position", Kind::Int),
];

/// The writers' statements, filled in for the database once.
struct Statements {
    insert_events: String,
    insert_keys: String,
    take_back: String,
}

/// The writers' shared view of the database.
#[derive(Clone)]
pub(crate) struct Writers {
    db: Db,
    sql: Arc<Statements>,
}

/// Starts the dialect's number of writers over `db`; they stop when every
/// sender is gone.
pub(crate) fn spawn(db: Db) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>(QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    let sql = statements(db.dialect);
    let count = db.dialect.writers();
    let writers = Writers {
        db,
        sql: Arc::new(sql),
    };
    for _ in 0..count.max(1) {
        let (w, rx) = (writers.clone(), rx.clone());
        tokio::spawn(async move {
            while let Some(jobs) = next_batch(&rx).await {
                w.commit(jobs).await;
            }
        });
    }
    tx
}

/// The writers' statements for `dialect`.
fn statements(dialect: &'static dyn crate::Dialect) -> Statements {
    let d = dialect.sql();
    let instant = |expr: &str| fill(d.instant_in, &[("expr", expr)]);
    Statements {
        insert_events: fill(
            section(SQL, "insert_events"),
            &[
                ("payload", d.payload_in),
                ("occurred_at", &instant("v.occurred_at")),
                ("recorded_at", &instant("$2")),
                ("rows", &batch::rows(dialect, 1, &EVENT_ROW)),
            ],
        ),
        insert_keys: fill(
            section(SQL, "insert_keys"),
            &[
                ("created_at", &instant("$2")),
                ("rows", &batch::rows(dialect, 1, &KEY_ROW)),
            ],
        ),
        take_back: fill(
            section(SQL, "take_back"),
            &[("keys", &batch::keys(dialect, 1))],
        ),
    }
}

/// The statements of an append without idempotency key, for drivers other
/// than the store's own to run (`orders-bench append` compares them on the
/// same SQL): begin with `begin` as a simple query, run `insert_events`
/// with `$1` = [`AppendParts::rows`] and `$2` = [`AppendParts::recorded_at`],
/// both text, and commit.
#[derive(Debug, Clone)]
pub struct AppendParts {
    /// Begins the transaction and takes what the insert needs held (the
    /// log's shared lock on PostgreSQL).
    pub begin: &'static str,
    /// Inserts the events; returns (event_id, position) per stored event.
    pub insert_events: String,
}

impl AppendParts {
    /// The statements for `dialect`, as the store's writers run them.
    pub fn for_dialect(dialect: &'static dyn crate::Dialect) -> Self {
        Self {
            begin: dialect.sql().append_begin.unwrap_or("BEGIN"),
            insert_events: statements(dialect).insert_events,
        }
    }

    /// `$1` of `insert_events` for `requests` (their events as JSON rows).
    pub fn rows(requests: &[&AppendRequest]) -> Result<String, sqlx::Error> {
        batch::rows_json(&event_rows(requests))
    }

    /// `$2` of `insert_events`: the recording time as the store writes it.
    pub fn recorded_at(at: chrono::DateTime<chrono::Utc>) -> String {
        timestamp(at)
    }
}

/// The rows of `requests`' events, in [`EVENT_ROW`]'s columns.
fn event_rows(requests: &[&AppendRequest]) -> Vec<Vec<Val>> {
    let mut rows: Vec<Vec<Val>> = Vec::new();
    for r in requests {
        let occurred_at = timestamp(r.metadata.occurred_at);
        for (i, e) in r.events.iter().enumerate() {
            rows.push(vec![
                Val::Int(rows.len() as i64),
                Val::Text(e.event_id.clone()),
                Val::Text(r.aggregate_type.clone()),
                Val::Text(r.aggregate_id.clone()),
                Val::Int(r.expected_version + 1 + i as i64),
                Val::Text(e.event_type.clone()),
                Val::Int(i64::from(e.schema_version)),
                Val::Text(e.payload.to_string()),
                Val::Text(r.metadata.command_id.clone()),
                Val::Text(occurred_at.clone()),
                Val::OptText(r.metadata.caller.clone()),
                Val::OptText(r.metadata.traceparent.clone()),
            ]);
        }
    }
    rows
}

/// Waits for one job, then takes whatever else is already queued.
async fn next_batch(rx: &Mutex<mpsc::Receiver<Job>>) -> Option<Vec<Job>> {
    let mut rx = rx.lock().await;
    let first = rx.recv().await?;
    let mut jobs = vec![first];
    while jobs.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(j) => jobs.push(j),
            Err(_) => break,
        }
    }
    Some(jobs)
}

/// How one append of a batch ended, before the commit.
enum Fate {
    Stored(Stored),
    Refused(StoreError),
}

impl Writers {
    /// Commits a batch and answers every job. When the batch as a whole
    /// fails, each job is tried alone so that the error lands on its owner.
    async fn commit(&self, jobs: Vec<Job>) {
        let (jobs, empty): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| !j.request.events.is_empty());
        for j in empty {
            j.answer(Ok((Vec::new(), chrono::Utc::now())));
        }
        if jobs.is_empty() {
            return;
        }
        metrics::histogram!("cqrs_append_batch_size").record(jobs.len() as f64);
        let requests: Vec<&AppendRequest> = jobs.iter().map(|j| &j.request).collect();
        match self.write(&requests).await {
            Ok(fates) => {
                for (job, fate) in jobs.into_iter().zip(fates) {
                    job.answer(match fate {
                        Fate::Stored(p) => Ok(p),
                        Fate::Refused(e) => Err(e),
                    });
                }
            }
            // A row the database refused names no job: try each alone so
            // that the error reaches its owner only.
            Err(e) if jobs.len() > 1 && e.as_database_error().is_some() => {
                for job in jobs {
                    let outcome = match self.write(&[&job.request]).await {
                        Ok(mut f) => match f.pop() {
                            Some(Fate::Stored(p)) => Ok(p),
                            Some(Fate::Refused(e)) => Err(e),
                            None => Err(StoreError::Corrupt("an append had no outcome".into())),
                        },
                        Err(e) => Err(classify(e)),
                    };
                    job.answer(outcome);
                }
            }
            // The database is away: every job fails alike.
            Err(e) => {
                let message = e.to_string();
                let mut jobs = jobs.into_iter();
                if let Some(first) = jobs.next() {
                    first.answer(Err(classify(e)));
                }
                for job in jobs {
                    job.answer(Err(StoreError::Db(sqlx::Error::Protocol(message.clone()))));
                }
            }
        }
    }

    /// One transaction: insert every event (a taken version skips the row),
    /// take back what losers inserted, insert the winners' idempotency keys
    /// (a taken key skips the row and its append is taken back too).
    async fn write(&self, requests: &[&AppendRequest]) -> Result<Vec<Fate>, sqlx::Error> {
        let now = chrono::Utc::now();
        let recorded_at = timestamp(now);
        let mut tx = self.db.begin_append().await?;
        let stored = self.insert_events(&mut tx, requests, &recorded_at).await?;
        let mut fates = Vec::with_capacity(requests.len());
        let mut taken_back: Vec<&str> = Vec::new();
        for r in requests {
            let positions: Vec<Option<i64>> = r
                .events
                .iter()
                .map(|e| stored.get(e.event_id.as_str()).copied())
                .collect();
            if positions.iter().all(Option::is_some) {
                fates.push(Fate::Stored((
                    positions.into_iter().flatten().collect(),
                    now,
                )));
            } else {
                taken_back.extend(
                    r.events
                        .iter()
                        .filter(|e| stored.contains_key(e.event_id.as_str()))
                        .map(|e| e.event_id.as_str()),
                );
                fates.push(Fate::Refused(StoreError::VersionConflict {
                    aggregate_id: r.aggregate_id.clone(),
                    expected: r.expected_version,
                }));
            }
        }
        let refused_keys = self
            .insert_keys(&mut tx, requests, &fates, &recorded_at)
            .await?;
        for (index, (r, fate)) in requests.iter().zip(fates.iter_mut()).enumerate() {
            let Some(idem) = &r.idempotency else { continue };
            if refused_keys.contains(&index) {
                taken_back.extend(r.events.iter().map(|e| e.event_id.as_str()));
                *fate = Fate::Refused(StoreError::DuplicateIdempotencyKey(idem.key.clone()));
            }
        }
        if !taken_back.is_empty() {
            sqlx::query(&self.sql.take_back)
                .bind(batch::keys_json(&taken_back)?)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(fates)
    }

    /// Inserts every event of the batch in one statement; returns the
    /// position of each stored event by id (absent: its version was taken).
    async fn insert_events(
        &self,
        tx: &mut AnyConnection,
        requests: &[&AppendRequest],
        recorded_at: &str,
    ) -> Result<HashMap<String, i64>, sqlx::Error> {
        let stored: Vec<(String, i64)> = sqlx::query_as(&self.sql.insert_events)
            .bind(AppendParts::rows(requests)?)
            .bind(recorded_at)
            .fetch_all(&mut *tx)
            .await?;
        Ok(stored.into_iter().collect())
    }

    /// Inserts the idempotency keys of the appends stored so far; returns
    /// the indexes of the appends whose key another append holds already.
    async fn insert_keys(
        &self,
        tx: &mut AnyConnection,
        requests: &[&AppendRequest],
        fates: &[Fate],
        recorded_at: &str,
    ) -> Result<HashSet<usize>, sqlx::Error> {
        let mut rows: Vec<Vec<Val>> = Vec::new();
        let mut wanted: HashMap<&str, usize> = HashMap::new();
        let mut refused: HashSet<usize> = HashSet::new();
        for (index, (r, fate)) in requests.iter().zip(fates).enumerate() {
            let (Some(idem), Fate::Stored((positions, _))) = (&r.idempotency, fate) else {
                continue;
            };
            let Some(&last) = positions.last() else {
                continue;
            };
            // A key twice in one batch: the first holder keeps it.
            if wanted.contains_key(idem.key.as_str()) {
                refused.insert(index);
                continue;
            }
            wanted.insert(idem.key.as_str(), index);
            rows.push(vec![
                Val::Text(idem.key.clone()),
                Val::Text(idem.request_hash.clone()),
                Val::Text(r.aggregate_id.clone()),
                Val::Text(r.metadata.command_id.clone()),
                Val::Int(r.expected_version + r.events.len() as i64),
                Val::Int(last),
            ]);
        }
        if rows.is_empty() {
            return Ok(refused);
        }
        let inserted: Vec<String> = sqlx::query_scalar(&self.sql.insert_keys)
            .bind(batch::rows_json(&rows)?)
            .bind(recorded_at)
            .fetch_all(&mut *tx)
            .await?;
        let inserted: HashSet<String> = inserted.into_iter().collect();
        refused.extend(
            wanted
                .into_iter()
                .filter(|(k, _)| !inserted.contains(*k))
                .map(|(_, i)| i),
        );
        Ok(refused)
    }
}

/// The store error for a failed write.
fn classify(e: sqlx::Error) -> StoreError {
    match e.as_database_error() {
        Some(db) if db.is_unique_violation() => StoreError::Corrupt(format!(
            "duplicate event id: {} {}",
            db.constraint().unwrap_or(""),
            db.message()
        )),
        _ => StoreError::Db(e),
    }
}
