//! A topic from its beginning, as history for a rebuild. The partitions
//! are read in parallel: a few threads, each with a consumer of its own (no
//! group offsets, nothing committed) assigned some partitions, fetch and
//! decode records into a bounded queue that the rebuild drains, at the
//! lowest CPU priority (what serving leaves).

use crate::record::{self, RecordError};
use crate::KafkaConfig;
use cqrs_core::EventEnvelope;
use cqrs_sql::read::rebuild::{reached, History, Positions};
use cqrs_sql::read::{SourceError, SourceKey};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{channel, Receiver, Sender};

/// A record read ahead of its target: offset and event (or why it is not one).
type Held = (i64, Result<EventEnvelope, RecordError>);

/// What a reader thread hands over: records of one partition, in order.
type Chunk = Result<(i32, Vec<Held>), SourceError>;

/// Records per chunk a reader thread hands over.
const CHUNK: usize = 1_000;

/// Chunks queued ahead of the rebuild (the read-ahead is bounded).
const QUEUED: usize = 64;

/// The events topic from its first record.
pub struct TopicHistory {
    topic: String,
    /// Until the readers start: what they read with and hand over to.
    kafka: Option<(KafkaConfig, Sender<Chunk>)>,
    partitions: Vec<i32>,
    /// Asks the brokers for the partitions' ends.
    probe: Arc<BaseConsumer>,
    passed_over: u64,
    pending: HashMap<i32, VecDeque<Held>>,
    chunks: Receiver<Chunk>,
    stop: Arc<AtomicBool>,
}

impl TopicHistory {
    /// A reader of `kafka`'s topic from the beginning of every partition.
    pub async fn open(kafka: &KafkaConfig) -> Result<Self, SourceError> {
        let probe = Arc::new(consumer(kafka)?);
        let (topic, asker) = (kafka.topic.clone(), probe.clone());
        let partitions = tokio::task::spawn_blocking(move || {
            let probe = asker;
            let meta = probe.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            Ok::<_, rdkafka::error::KafkaError>(
                meta.topics()
                    .iter()
                    .flat_map(|t| t.partitions())
                    .map(|p| p.id())
                    .collect::<Vec<i32>>(),
            )
        })
        .await
        .map_err(|e| SourceError::broker("reading the topic's partitions", e))?
        .map_err(|e| SourceError::broker("reading the topic's partitions", e))?;
        let (tx, chunks) = channel(QUEUED);
        Ok(Self {
            topic: kafka.topic.clone(),
            kafka: Some((kafka.clone(), tx)),
            partitions,
            probe,
            passed_over: 0,
            pending: HashMap::new(),
            chunks,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Starts the reader threads, on the first read (a history opened only
    /// for its heads reads nothing).
    fn start_readers(&mut self) -> Result<(), SourceError> {
        let Some((kafka, tx)) = self.kafka.take() else {
            return Ok(());
        };
        let partitions = &self.partitions;
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 4)
            .min(partitions.len().max(1));
        for i in 0..threads {
            let mine: Vec<i32> = partitions
                .iter()
                .copied()
                .filter(|p| (*p as usize) % threads == i)
                .collect();
            let c = consumer(&kafka)?;
            let mut tpl = TopicPartitionList::new();
            for p in &mine {
                tpl.add_partition_offset(&kafka.topic, *p, Offset::Beginning)
                    .map_err(|e| SourceError::broker("assigning the partitions", e))?;
            }
            c.assign(&tpl)
                .map_err(|e| SourceError::broker("assigning the partitions", e))?;
            let (tx, stop) = (tx.clone(), self.stop.clone());
            // Detached: it ends once stopped or once the queue is closed.
            std::thread::Builder::new()
                .name(format!("rebuild-read-{i}"))
                .spawn(move || read_partitions(c, tx, stop))
                .map_err(|e| SourceError::broker("starting a reader thread", e))?;
        }
        Ok(())
    }

    /// Takes the held records below their partition's target, moving
    /// `positions` past them; records that are not events are passed over.
    fn take_below(
        &mut self,
        positions: &mut Positions,
        targets: &Positions,
        max: usize,
    ) -> Vec<EventEnvelope> {
        let mut out = Vec::new();
        for (p, queue) in self.pending.iter_mut() {
            let key = SourceKey::partition(self.topic.as_str(), *p);
            let target = targets.get(&key).copied().unwrap_or(0);
            while out.len() < max {
                let Some((offset, event)) = queue.pop_front() else {
                    break;
                };
                if offset >= target {
                    queue.push_front((offset, event));
                    break;
                }
                positions.insert(key.clone(), offset + 1);
                match event {
                    Ok(e) => out.push(e),
                    Err(_) => self.passed_over += 1,
                }
            }
        }
        out
    }

    /// Holds what the readers have queued, waiting up to 200 ms for the first chunk.
    async fn take_queued(&mut self, max: usize) -> Result<(), SourceError> {
        let first = tokio::time::timeout(Duration::from_millis(200), self.chunks.recv()).await;
        let mut next = match first {
            Ok(Some(c)) => Some(c),
            Err(_) => return Ok(()),
            Ok(None) => return Err(SourceError::Closed),
        };
        let mut taken = 0;
        while let Some(chunk) = next {
            let (p, records) = chunk?;
            taken += records.len();
            self.pending.entry(p).or_default().extend(records);
            next = match taken < max {
                true => self.chunks.try_recv().ok(),
                false => None,
            };
        }
        Ok(())
    }
}

fn consumer(kafka: &KafkaConfig) -> Result<BaseConsumer, SourceError> {
    kafka
        .client()
        .set("group.id", format!("rebuild-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .set("queued.max.messages.kbytes", "262144")
        .create()
        .map_err(|e| SourceError::broker("creating the rebuild's consumer", e))
}

/// A reader thread: polls its partitions and hands over decoded records in
/// chunks per partition until stopped (or the rebuild is gone).
fn read_partitions(consumer: BaseConsumer, tx: Sender<Chunk>, stop: Arc<AtomicBool>) {
    cqrs_sql::read::rebuild::lower_priority();
    let mut held: HashMap<i32, Vec<Held>> = HashMap::new();
    while !stop.load(Ordering::Acquire) {
        let mut got = 0;
        while got < CHUNK {
            let wait = match got {
                0 => Duration::from_millis(100),
                _ => Duration::ZERO,
            };
            match consumer.poll(wait) {
                None => break,
                Some(Err(e)) => {
                    let _ = tx.blocking_send(Err(SourceError::broker("reading the topic", e)));
                    return;
                }
                Some(Ok(m)) => {
                    got += 1;
                    held.entry(m.partition())
                        .or_default()
                        .push((m.offset(), record::decode(&m)));
                }
            }
        }
        for (p, records) in held.drain() {
            if tx.blocking_send(Ok((p, records))).is_err() {
                return;
            }
        }
    }
}

impl Drop for TopicHistory {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.chunks.close();
    }
}

impl History for TopicHistory {
    fn covers(&self, key: &SourceKey) -> bool {
        key.partition_of(&self.topic).is_some()
    }

    fn describe(&self) -> String {
        format!("topic {}", self.topic)
    }

    async fn read(
        &mut self,
        positions: &mut Positions,
        targets: &Positions,
        max: usize,
    ) -> Result<Vec<EventEnvelope>, SourceError> {
        loop {
            let out = self.take_below(positions, targets, max.max(1));
            if !out.is_empty() || reached(positions, targets) {
                return Ok(out);
            }
            self.start_readers()?;
            self.take_queued(max.clamp(1, 100_000)).await?;
        }
    }

    async fn heads(&mut self) -> Result<Positions, SourceError> {
        let (probe, topic, partitions) = (
            self.probe.clone(),
            self.topic.clone(),
            self.partitions.clone(),
        );
        tokio::task::spawn_blocking(move || crate::admin::ends(&*probe, &topic, &partitions))
            .await
            .map_err(|e| SourceError::broker("reading the topic's ends", e))?
    }

    fn passed_over(&self) -> u64 {
        self.passed_over
    }
}
