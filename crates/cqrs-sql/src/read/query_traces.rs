//! Query traces (when a query first served a write) are written in batches
//! by one task per process, off the request path: a consistent read costs
//! no database write of its own. (Written one row per read, they took the
//! read DB's writer from the projector and set the knee of the open-loop
//! benchmark.)

use crate::batch::{self, Kind, Val};
use crate::db::Db;
use std::sync::OnceLock;
use tokio::sync::mpsc;

/// Traces waiting to be written, at most; beyond it a trace is dropped.
const QUEUE: usize = 10_000;

/// Traces per statement, at most.
const BATCH: usize = 1_000;

/// One trace: the aggregate, the version the query served, when.
type Trace = (String, i64, String);

/// The queue of one read DB's query traces.
pub(crate) struct QueryTraces {
    db: Db,
    queue: OnceLock<mpsc::Sender<Trace>>,
}

impl QueryTraces {
    /// Traces for `db`; the writing task starts with the first trace.
    pub(crate) fn new(db: Db) -> Self {
        Self {
            db,
            queue: OnceLock::new(),
        }
    }

    /// Queues a trace (dropped, with a debug line, when the queue is full:
    /// traces are diagnostics, never worth slowing a query for).
    pub(crate) fn record(&self, aggregate_id: String, version: i64) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(write_batches(self.db.clone(), rx));
            tx
        });
        let at = crate::db::timestamp(chrono::Utc::now());
        if queue.try_send((aggregate_id, version, at)).is_err() {
            tracing::debug!("query trace dropped: the queue is full");
        }
    }
}

/// Writes whatever is queued, one statement per batch, until every sender is gone.
async fn write_batches(db: Db, mut rx: mpsc::Receiver<Trace>) {
    while let Some(first) = rx.recv().await {
        let mut traces = vec![first];
        while traces.len() < BATCH {
            match rx.try_recv() {
                Ok(t) => traces.push(t),
                Err(_) => break,
            }
        }
        if let Err(e) = write(&db, &traces).await {
            tracing::debug!(error = %e, traces = traces.len(), "query traces not recorded");
        }
    }
}

/// The first time wins: a trace already stored for (aggregate, version) stays.
async fn write(db: &Db, traces: &[Trace]) -> Result<(), sqlx::Error> {
    let rows: Vec<Vec<Val>> = traces
        .iter()
        .map(|(a, v, at)| vec![Val::Text(a.clone()), Val::Int(*v), Val::Text(at.clone())])
        .collect();
    let source = batch::rows(
        db.dialect,
        1,
        &[
            ("aggregate_id", Kind::Text),
            ("version", Kind::Int),
            ("queried_at", Kind::Text),
        ],
    );
    let sql = crate::dialect::fill(
        crate::dialect::section(crate::read::sql::SQL, "write_query_traces"),
        &[("rows", &source)],
    );
    let mut tx = db.begin_derived().await?;
    sqlx::query(&sql)
        .bind(batch::rows_json(&rows)?)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}
