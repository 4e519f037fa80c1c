//! A topic belongs to one store. The relay stamps each record with its
//! store's id; before it publishes it reads the last record of every
//! partition and refuses a topic whose records came from another store
//! (two write databases on one topic would interleave two unrelated logs,
//! and every projector would mix them without a word).

use crate::record::{self, header};
use crate::KafkaConfig;
use cqrs_sql::{EventStore, SqlEventStore};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long the last records may take to arrive.
const LOOK: Duration = Duration::from_secs(10);

/// What the last record of a partition says of its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastRecord {
    /// Stamped with a store id.
    Stamped(String),
    /// Not stamped (written before records were): the event it carries.
    Unstamped {
        /// Its aggregate.
        aggregate_id: String,
        /// Its version (None: not an event at all).
        version: Option<i64>,
    },
}

/// Why the relay will not publish to the topic.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    /// The topic holds another store's records.
    #[error("{0}")]
    Foreign(String),
    /// The broker could not be asked.
    #[error("reading the topic's last records: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The store could not be asked.
    #[error(transparent)]
    Store(#[from] cqrs_sql::StoreError),
    /// The blocking reader failed.
    #[error("reading the topic's last records: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Refuses `kafka`'s topic when its last records came from a store other
/// than `store`. A record without a stamp (from before stamping) is ours
/// only if our log holds its event.
pub async fn check_owner(kafka: &KafkaConfig, store: &SqlEventStore) -> Result<(), OwnershipError> {
    let k = kafka.clone();
    let last = tokio::task::spawn_blocking(move || last_records(&k)).await??;
    let ours = store.id();
    for (partition, record) in last {
        match record {
            LastRecord::Stamped(theirs) if theirs == ours => {}
            LastRecord::Stamped(theirs) => {
                return Err(OwnershipError::Foreign(record::foreign_store(
                    &kafka.topic,
                    &theirs,
                    ours,
                )))
            }
            LastRecord::Unstamped {
                aggregate_id,
                version,
            } => {
                // Not an event at all: the projectors dead-letter it; it
                // says nothing of whose the topic is.
                let Some(v) = version else { continue };
                let known = store.position_of(&aggregate_id, v).await?.is_some();
                if !known {
                    let theirs = format!(
                        "unknown (partition {partition} ends with an unstamped record of \
                         aggregate {aggregate_id}, version {v}, which is not in this store's log)"
                    );
                    return Err(OwnershipError::Foreign(record::foreign_store(
                        &kafka.topic,
                        &theirs,
                        ours,
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The last record of each non-empty partition.
fn last_records(kafka: &KafkaConfig) -> Result<HashMap<i32, LastRecord>, OwnershipError> {
    let consumer: BaseConsumer = kafka
        .client()
        .set("group.id", format!("owner-check-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()?;
    let meta = consumer.fetch_metadata(Some(&kafka.topic), LOOK)?;
    let mut tpl = TopicPartitionList::new();
    let mut wanted: HashMap<i32, i64> = HashMap::new();
    for p in meta.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(&kafka.topic, p.id(), LOOK)?;
        if high > low {
            tpl.add_partition_offset(&kafka.topic, p.id(), Offset::Offset(high - 1))?;
            wanted.insert(p.id(), high - 1);
        }
    }
    let mut found = HashMap::new();
    if wanted.is_empty() {
        return Ok(found);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + LOOK;
    while found.len() < wanted.len() && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m?;
        // A transactional marker or a compacted gap: the record before the
        // end may be the last one there is; take what comes at or after.
        if wanted.get(&m.partition()).is_some_and(|o| m.offset() >= *o) {
            found.entry(m.partition()).or_insert_with(|| read_last(&m));
        }
    }
    Ok(found)
}

fn read_last(m: &rdkafka::message::BorrowedMessage<'_>) -> LastRecord {
    if let Some(store) = record::store_of(m) {
        return LastRecord::Stamped(store);
    }
    let text = |k: &str| {
        m.headers().and_then(|h| {
            h.iter()
                .filter(|hd| hd.key == k)
                .last()
                .and_then(|hd| hd.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        })
    };
    LastRecord::Unstamped {
        aggregate_id: text(header::AGGREGATE_ID).unwrap_or_default(),
        version: text(header::AGGREGATE_VERSION).and_then(|v| v.parse().ok()),
    }
}
