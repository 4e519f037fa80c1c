//! The relay's checkpoint, written off the leader's loop. Writing it in the
//! loop (one transaction per confirmed batch) kept the loop from reading
//! new commits and from collecting reports: at 300 creates/s with the saga
//! the loop's database round trips were its limit, and a record waited
//! there rather than in Kafka. The writer takes every range confirmed since
//! its last write and stores them as one: the checkpoint moves to the
//! highest (never back), one publication row covers them all. A crash
//! before a write only means those events are sent again, which Kafka's
//! consumers drop by version, as with any relay restart.

use crate::KafkaError;
use cqrs_sql::SqlEventStore;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Writes between two prunings of the publication record.
const PRUNE_EVERY: u64 = 1_000;

/// How long the record of a published batch is kept (for traces).
const BATCH_RETENTION: chrono::Duration = chrono::Duration::hours(24);

/// The task that stores confirmed ranges, and the way to it.
pub(super) struct CheckpointWriter {
    confirmed: mpsc::UnboundedSender<(i64, i64)>,
    task: JoinHandle<Result<(), KafkaError>>,
}

impl CheckpointWriter {
    /// Starts writing `store`'s relay checkpoint.
    pub(super) fn start(store: SqlEventStore) -> Self {
        let (confirmed, rx) = mpsc::unbounded_channel();
        Self {
            confirmed,
            task: tokio::spawn(write_confirmed(store, rx)),
        }
    }

    /// Hands over the range `first..=last`, whose every delivery report
    /// came back (in position order: ranges arrive as they were sent).
    pub(super) fn confirmed(&self, first: i64, last: i64) {
        // A closed channel means the task ended: `ended` reports why.
        let _ = self.confirmed.send((first, last));
    }

    /// Whether the task stopped (a write failed): the leader then stops too.
    pub(super) fn ended(&self) -> bool {
        self.task.is_finished()
    }

    /// Writes what was handed over and stops; the write's error, if any.
    pub(super) async fn finish(self) -> Result<(), KafkaError> {
        drop(self.confirmed);
        match self.task.await {
            Ok(r) => r,
            Err(_) => Err(rdkafka::error::KafkaError::Canceled.into()),
        }
    }
}

async fn write_confirmed(
    store: SqlEventStore,
    mut rx: mpsc::UnboundedReceiver<(i64, i64)>,
) -> Result<(), KafkaError> {
    let mut writes = 0u64;
    while let Some((mut first, mut last)) = rx.recv().await {
        while let Ok((f, l)) = rx.try_recv() {
            first = first.min(f);
            last = last.max(l);
        }
        let started = Instant::now();
        store.relay_published(first, last).await?;
        metrics::histogram!("cqrs_relay_checkpoint_seconds")
            .record(started.elapsed().as_secs_f64());
        writes += 1;
        if writes % PRUNE_EVERY == 1 {
            let before = chrono::Utc::now() - BATCH_RETENTION;
            if let Err(e) = store.prune_relay_batches(before).await {
                tracing::warn!(error = %e, "cannot prune the relay's batch record");
            }
        }
    }
    Ok(())
}
