//! Where a rebuild reads history: the write store's log here, a Kafka topic
//! from its beginning in `cqrs-kafka`. A rebuild reads up to targets (the
//! live projector's checkpoints), so the source keys and positions are the
//! live projector's own.

use crate::read::runner::Checkpoint;
use crate::read::{SourceError, SourceKey};
use crate::store::EventStore;
use cqrs_core::EventEnvelope;
use std::collections::HashMap;
use std::future::Future;

/// Per source key: the next position (what a checkpoint stores).
pub type Positions = HashMap<SourceKey, i64>;

/// History a rebuild reads, in order per source key.
pub trait History: Send {
    /// Whether `key` is one of its streams.
    fn covers(&self, key: &SourceKey) -> bool;
    /// What it is, for messages ("topic orders.events").
    fn describe(&self) -> String;
    /// Up to about `max` events strictly below `targets`, in order per
    /// source key, moving `positions` past what it read (records that are
    /// not events were dead letters of the live model too, and are passed
    /// over); waits for more while a target is not reached, and answers
    /// nothing once every one is.
    fn read(
        &mut self,
        positions: &mut Positions,
        targets: &Positions,
        max: usize,
    ) -> impl Future<Output = Result<Vec<EventEnvelope>, SourceError>> + Send;
    /// The next position of each of its streams now: where a catch-up to
    /// the head reads to.
    fn heads(&mut self) -> impl Future<Output = Result<Positions, SourceError>> + Send;
    /// Records read so far that were not events. A catch-up to the head
    /// refuses to pass over them: the live path dead-letters them.
    fn passed_over(&self) -> u64 {
        0
    }
}

/// The history of a source that has none (`EventSource::history` answers
/// None): it never exists.
#[derive(Debug)]
pub enum NoHistory {}

impl History for NoHistory {
    fn covers(&self, _key: &SourceKey) -> bool {
        match *self {}
    }
    fn describe(&self) -> String {
        match *self {}
    }
    async fn read(
        &mut self,
        _positions: &mut Positions,
        _targets: &Positions,
        _max: usize,
    ) -> Result<Vec<EventEnvelope>, SourceError> {
        match *self {}
    }
    async fn heads(&mut self) -> Result<Positions, SourceError> {
        match *self {}
    }
}

/// Whether every target is reached.
pub fn reached(positions: &Positions, targets: &Positions) -> bool {
    targets
        .iter()
        .all(|(k, t)| positions.get(k).copied().unwrap_or(0) >= *t)
}

/// The embedded event log, from its start.
pub struct LogHistory<S> {
    store: S,
    after: i64,
}

impl<S: EventStore> LogHistory<S> {
    /// The log of `store`, from its first event.
    pub fn new(store: S) -> Self {
        Self { store, after: 0 }
    }
}

impl<S: EventStore> History for LogHistory<S> {
    fn covers(&self, key: &SourceKey) -> bool {
        *key == SourceKey::Log
    }

    fn describe(&self) -> String {
        "the embedded event log".into()
    }

    async fn read(
        &mut self,
        positions: &mut Positions,
        targets: &Positions,
        max: usize,
    ) -> Result<Vec<EventEnvelope>, SourceError> {
        let target = targets.get(&SourceKey::Log).copied().unwrap_or(1);
        if self.after + 1 >= target {
            return Ok(Vec::new());
        }
        let limit = ((target - 1 - self.after) as usize).min(max.max(1)) as i64;
        let events = self.store.read_log(self.after, limit).await?;
        if let Some(last) = events.last() {
            self.after = last.position;
            positions.insert(SourceKey::Log, last.position + 1);
        }
        Ok(events)
    }

    async fn heads(&mut self) -> Result<Positions, SourceError> {
        let head = self.store.head_position().await?;
        Ok(Positions::from([(SourceKey::Log, head + 1)]))
    }
}

/// Why the live checkpoints cannot be a rebuild's targets.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WrongSource(pub String);

/// The live checkpoints on `history`'s streams. A read model can have
/// followed the embedded log and then a Kafka topic (or the other way):
/// the source whose checkpoint moved last is the live one. Rebuilding from
/// the live source ignores the other's stale checkpoint; rebuilding from
/// the stale one is refused, since it would roll the read model back.
pub fn targets_of(rows: &[Checkpoint], history: &impl History) -> Result<Positions, WrongSource> {
    let (own, other): (Vec<_>, Vec<_>) = rows.iter().partition(|c| history.covers(&c.source_key));
    let latest = |cs: &[&Checkpoint]| cs.iter().map(|c| c.updated_at.clone()).max();
    let this = history.describe();
    if let Some(theirs) = latest(&other) {
        let names: Vec<String> = other.iter().map(|c| c.source_key.to_string()).collect();
        if latest(&own).is_none_or(|mine| theirs > mine) {
            return Err(WrongSource(format!(
                "the live read model follows {} (checkpoint moved at {theirs}), not {this}: \
                 rebuild from the source its projector runs with",
                names.join(", ")
            )));
        }
        tracing::warn!(
            "the read model followed {} before {this}; rebuilding from {this} only",
            names.join(", ")
        );
    }
    Ok(own
        .into_iter()
        .map(|c| (c.source_key.clone(), c.next_position))
        .collect())
}

/// Events to read from the start of each stream to `targets`.
pub fn events_to(targets: &Positions) -> i64 {
    targets
        .iter()
        .map(|(k, t)| match k {
            // Log positions start at 1.
            SourceKey::Log => (t - 1).max(0),
            _ => (*t).max(0),
        })
        .sum()
}
