//! The embedded event source: tails the write store's log.

use super::rebuild::LogHistory;
use super::{EventSource, SourceError, SourceKey, SourcedEvent};
use crate::store::EventStore;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;

/// Tails the write store's event log by position; wakes on local commits,
/// and polls slowly for commits made by other processes.
pub struct LogSource<S> {
    store: S,
    after: i64,
    wake: watch::Receiver<i64>,
    poll: Duration,
}

impl<S: EventStore> LogSource<S> {
    /// A source over `store`, polling every `poll` when nothing wakes it.
    pub fn new(store: S, poll: Duration) -> Self {
        let wake = store.subscribe();
        Self {
            store,
            after: 0,
            wake,
            poll,
        }
    }
}

impl<S: EventStore + Clone> EventSource for LogSource<S> {
    type History = LogHistory<S>;

    async fn history(&self) -> Result<Option<LogHistory<S>>, SourceError> {
        Ok(Some(LogHistory::new(self.store.clone())))
    }

    async fn resume(&mut self, checkpoints: &HashMap<SourceKey, i64>) -> Result<(), SourceError> {
        // The checkpoint is the next position to read; the log reads "after".
        self.after = checkpoints.get(&SourceKey::Log).copied().unwrap_or(1) - 1;
        Ok(())
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<SourcedEvent>, SourceError> {
        loop {
            self.wake.borrow_and_update();
            let events = self.store.read_log(self.after, max as i64).await?;
            if let Some(last) = events.last() {
                self.after = last.position;
                let now = chrono::Utc::now();
                return Ok(events
                    .into_iter()
                    .map(|envelope| SourcedEvent {
                        source_key: SourceKey::Log,
                        next_position: envelope.position + 1,
                        published_as: format!("{}@{}", SourceKey::Log, envelope.position),
                        consumed_at: now,
                        key: Some(envelope.aggregate_id.clone()),
                        event: Ok(envelope),
                        raw: None,
                    })
                    .collect());
            }
            tokio::select! {
                _ = self.wake.changed() => {}
                _ = tokio::time::sleep(self.poll) => {}
            }
        }
    }
}
