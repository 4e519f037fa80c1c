//! The projector's Kafka source: one member of a consumer group. Offsets live
//! in the read DB (written with the projection); Kafka's committed offsets
//! follow them for lag tools. After an assignment the source seeks each new
//! partition to the read DB's offset and drops anything below it.

use crate::record::{self, header, raw_of};
use crate::KafkaConfig;
use cqrs_sql::read::runner::load_checkpoints;
use cqrs_sql::{Db, EventSource, SourceError, SourceKey, SourcedEvent};
use futures::FutureExt;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the source joins its group.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Broker and topic.
    pub kafka: KafkaConfig,
    /// Consumer group.
    pub group_id: String,
    /// `session.timeout.ms`: how long a dead member holds its partitions.
    pub session_timeout_ms: u32,
    /// Name of the projector whose checkpoints the read DB holds.
    pub projector: String,
    /// `group.instance.id`: static membership. A member restarted with the
    /// same id takes its partitions back at once instead of waiting out
    /// the dead one's session; but a static member never leaves the group
    /// by itself, so one that stops for good holds its partitions for the
    /// session timeout. None: dynamic membership.
    pub instance_id: Option<String>,
    /// The store whose topic this is: a record stamped with another store's
    /// id is dead-lettered, the reason naming both (None: not checked).
    pub store_id: Option<String>,
}

#[derive(Default)]
struct Assignment {
    /// Partitions assigned since the last look: seek them to the read DB's offset.
    fresh: HashSet<i32>,
    /// Partitions taken away since the last look.
    revoked: HashSet<i32>,
    /// Partitions held now.
    owned: HashSet<i32>,
    /// Whether the consumer has joined the group (on the first `resume`).
    subscribed: bool,
}

struct Ctx {
    assignment: Arc<Mutex<Assignment>>,
    /// Who consumes what, named in every line this consumer logs.
    group: Arc<str>,
    topic: Arc<str>,
}

impl ClientContext for Ctx {
    // librdkafka's own lines too name the group and the topic (several
    // consumers of one process would otherwise be told apart by nothing).
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let (group, topic) = (&*self.group, &*self.topic);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(group, topic, facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(group, topic, facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(group, topic, facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(group, topic, facility = fac, "librdkafka: {message}")
            }
        }
    }
}

impl Ctx {
    /// The partitions this member owns, as a gauge: a group whose members
    /// all show 0 (or none at all) applies nothing.
    fn count_owned(&self, n: usize) {
        metrics::gauge!("cqrs_consumer_assigned_partitions",
            "group" => self.group.to_string(), "topic" => self.topic.to_string())
        .set(n as f64);
    }
}

impl ConsumerContext for Ctx {
    // Runs inside poll, i.e. only while the source is collecting a batch,
    // never while a batch is being applied: a partition is released between
    // batches, so its in-flight records are committed first or dropped.
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Revoke(tpl), Ok(mut a)) = (rebalance, self.assignment.lock()) {
            for e in tpl.elements() {
                a.revoked.insert(e.partition());
                a.owned.remove(&e.partition());
                a.fresh.remove(&e.partition());
            }
            tracing::info!(group = &*self.group, topic = &*self.topic, partitions = ?a.revoked, "partitions revoked");
            self.count_owned(a.owned.len());
        }
    }
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Assign(tpl), Ok(mut a)) = (rebalance, self.assignment.lock()) {
            for e in tpl.elements() {
                a.fresh.insert(e.partition());
                a.owned.insert(e.partition());
                a.revoked.remove(&e.partition());
            }
            tracing::info!(group = &*self.group, topic = &*self.topic, partitions = ?a.owned, "partitions assigned");
            self.count_owned(a.owned.len());
        }
    }
}

/// Consumes the events topic for a projector.
pub struct KafkaSource {
    config: SourceConfig,
    /// The topic, shared by every record's source key.
    topic: Arc<str>,
    consumer: Option<Arc<StreamConsumer<Ctx>>>,
    dlq: FutureProducer,
    assignment: Arc<Mutex<Assignment>>,
    read_db: Db,
    /// Per partition: the read DB's next offset when it was assigned.
    floor: HashMap<i32, i64>,
    errors: ErrorLog,
    group: Arc<str>,
    /// Whether a fence made this source a dynamic member.
    dynamic: bool,
}

/// Consumer errors, logged at most every few seconds with a count.
#[derive(Default)]
struct ErrorLog {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn note(&mut self, e: &rdkafka::error::KafkaError, group: &str, topic: &str) {
        metrics::counter!("cqrs_projector_source_errors_total").increment(1);
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if due {
            tracing::warn!(group, topic, error = %e,
                suppressed = self.suppressed, "consumer error; the client reconnects by itself");
            self.last = Some(std::time::Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }
}

impl KafkaSource {
    /// Joins the group (subscribes on `resume`).
    pub fn new(config: SourceConfig, read_db: Db) -> Result<Self, crate::KafkaError> {
        let assignment = Arc::new(Mutex::new(Assignment::default()));
        let (group, topic): (Arc<str>, Arc<str>) = (
            config.group_id.as_str().into(),
            config.kafka.topic.as_str().into(),
        );
        let consumer = make_consumer(
            &config,
            config.instance_id.as_deref(),
            &assignment,
            &group,
            &topic,
        )?;
        consumer.context().count_owned(0);
        let dlq: FutureProducer = config
            .kafka
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()?;
        Ok(Self {
            topic: topic.clone(),
            config,
            consumer: Some(Arc::new(consumer)),
            dlq,
            assignment,
            read_db,
            floor: HashMap::new(),
            errors: ErrorLog::default(),
            group,
            dynamic: false,
        })
    }

    /// After a fence: the consumer is replaced by a dynamic member of the
    /// same group, subscribed at once (its partitions come back through a
    /// rebalance, each sought to the read DB's offset as always).
    fn rejoin_dynamic(&mut self, why: &str) -> Result<(), SourceError> {
        tracing::warn!(group = &*self.group, topic = &*self.topic,
            instance_id = ?self.config.instance_id, reason = why,
            "fenced as a static member: going on as a dynamic member until the process restarts");
        let fresh = make_consumer(
            &self.config,
            None,
            &self.assignment,
            &self.group,
            &self.topic,
        )
        .map_err(|e| SourceError::broker("rejoining the group", e))?;
        fresh.context().count_owned(0);
        if let Ok(mut a) = self.assignment.lock() {
            *a = Assignment::default();
        }
        self.floor.clear();
        if let Some(old) = self.consumer.replace(Arc::new(fresh)) {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn_blocking(move || drop(old));
            }
        }
        self.dynamic = true;
        self.consumer()?
            .subscribe(&[&self.config.kafka.topic])
            .map_err(|e| SourceError::broker("subscribing to the topic", e))?;
        if let Ok(mut a) = self.assignment.lock() {
            a.subscribed = true;
        }
        Ok(())
    }

    fn consumer(&self) -> Result<&Arc<StreamConsumer<Ctx>>, SourceError> {
        self.consumer.as_ref().ok_or(SourceError::Closed)
    }

    fn key(&self, partition: i32) -> SourceKey {
        SourceKey::partition(self.topic.clone(), partition)
    }

    /// Seeks freshly assigned partitions to the read DB's offsets.
    async fn seek_fresh(&mut self) -> Result<HashSet<i32>, SourceError> {
        let fresh: Vec<i32> = match self.assignment.lock() {
            Ok(mut a) => a.fresh.drain().collect(),
            Err(_) => return Err(SourceError::Poisoned("the partition assignment")),
        };
        let mut seeked = HashSet::new();
        if fresh.is_empty() {
            return Ok(seeked);
        }
        let stored = load_checkpoints(&self.read_db, &self.config.projector).await?;
        let consumer = self.consumer()?.clone();
        for p in fresh {
            let next = stored.get(&self.key(p)).copied().unwrap_or(0);
            self.floor.insert(p, next);
            if next > 0 {
                // Asynchronous seek: the fetcher starts again at `next`, so
                // what was received of the partition before it comes again.
                match consumer.seek(
                    &self.config.kafka.topic,
                    p,
                    Offset::Offset(next),
                    Duration::ZERO,
                ) {
                    Ok(()) => {
                        seeked.insert(p);
                    }
                    Err(e) => {
                        tracing::debug!(group = %self.config.group_id, topic = &*self.topic, partition = p, error = %e, "seek not taken; relying on the floor")
                    }
                }
            }
        }
        Ok(seeked)
    }

    fn owned(&self, partition: i32) -> bool {
        self.assignment
            .lock()
            .map(|a| a.owned.contains(&partition))
            .unwrap_or(false)
    }
}

fn to_sourced(
    m: &rdkafka::message::BorrowedMessage<'_>,
    key: SourceKey,
    ours: Option<&str>,
) -> SourcedEvent {
    // Another store's record is refused like any record that is not ours:
    // dead-lettered with the reason, naming both stores.
    let foreign = match (ours, record::store_of(m)) {
        (Some(ours), Some(theirs)) if theirs != ours => {
            Some(record::foreign_store(m.topic(), &theirs, ours))
        }
        _ => None,
    };
    SourcedEvent {
        published_as: format!("{key}@{}", m.offset()),
        source_key: key,
        next_position: m.offset() + 1,
        consumed_at: chrono::Utc::now(),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        // The reason is kept as text: it is what the dead letter records.
        event: match foreign {
            Some(why) => Err(why),
            None => record::decode(m).map_err(|e| e.to_string()),
        },
        raw: Some(raw_of(m)),
    }
}

impl EventSource for KafkaSource {
    type History = crate::history::TopicHistory;

    async fn history(&self) -> Result<Option<Self::History>, SourceError> {
        crate::history::TopicHistory::open(&self.config.kafka)
            .await
            .map(Some)
    }

    async fn resume(&mut self, _checkpoints: &HashMap<SourceKey, i64>) -> Result<(), SourceError> {
        // Checkpoints are read per partition at assignment time (seek_fresh).
        // Called again (the checkpoints moved under the source: a catch-up
        // in bulk), every partition it owns seeks again.
        {
            let Ok(mut a) = self.assignment.lock() else {
                return Err(SourceError::Poisoned("the partition assignment"));
            };
            if a.subscribed {
                let owned: Vec<i32> = a.owned.iter().copied().collect();
                a.fresh.extend(owned);
                return Ok(());
            }
        }
        self.consumer()?
            .subscribe(&[&self.config.kafka.topic])
            .map_err(|e| SourceError::broker("subscribing to the topic", e))?;
        if let Ok(mut a) = self.assignment.lock() {
            a.subscribed = true;
        }
        Ok(())
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<SourcedEvent>, SourceError> {
        let mut consumer = self.consumer()?.clone();
        let mut batch: Vec<(i32, SourcedEvent)> = Vec::new();
        while batch.is_empty() {
            let first = match consumer.recv().await {
                Ok(m) => m,
                Err(e) => {
                    // A fenced static member (another process joined with
                    // its instance id) or an exhausted idempotent client
                    // never reads again: say so and stop, rather than spin.
                    if let Some((code, reason)) = consumer.client().fatal_error() {
                        let code = format!("{code:?}");
                        // librdkafka fences a static member by its own new
                        // incarnation too (its session lapsed while the
                        // group coordinator moved): going on as a dynamic
                        // member is always safe, never a fight over the id.
                        if code.contains("Fenced") && !self.dynamic {
                            self.rejoin_dynamic(&fatal_message(&self.config, &code, &reason))?;
                            consumer = self.consumer()?.clone();
                            continue;
                        }
                        return Err(SourceError::Fatal(fatal_message(
                            &self.config,
                            &code,
                            &reason,
                        )));
                    }
                    // librdkafka reports a broker or link that is away as
                    // error events and reconnects on its own. Keep polling:
                    // a rebalance waits in the same queue, behind them.
                    self.errors.note(&e, &self.config.group_id, &self.topic);
                    continue;
                }
            };
            let mut received = vec![(
                first.partition(),
                to_sourced(
                    &first,
                    self.key(first.partition()),
                    self.config.store_id.as_deref(),
                ),
            )];
            drop(first);
            // Whatever is already buffered joins the batch, without waiting.
            while received.len() < max {
                match consumer.recv().now_or_never() {
                    Some(Ok(m)) => {
                        let ours = self.config.store_id.as_deref();
                        let item = to_sourced(&m, self.key(m.partition()), ours);
                        received.push((m.partition(), item));
                    }
                    Some(Err(e)) => {
                        // What was received is consumed: hand it over, and
                        // let the error surface on the next call.
                        tracing::debug!(group = %self.config.group_id, topic = &*self.topic, error = %e, "consumer error after a partial batch");
                        break;
                    }
                    None => break,
                }
            }
            // A partition sought to its checkpoint just now is read again
            // from there: what this batch holds of it would come twice.
            let seeked = self.seek_fresh().await?;
            let revoked: HashSet<i32> = self
                .assignment
                .lock()
                .map(|mut a| std::mem::take(&mut a.revoked))
                .unwrap_or_default();
            for (p, item) in received {
                let below_floor = self.floor.get(&p).is_some_and(|f| item.next_position <= *f);
                if !below_floor && !seeked.contains(&p) && self.owned(p) && !revoked.contains(&p) {
                    batch.push((p, item));
                }
            }
        }
        Ok(batch.into_iter().map(|(_, i)| i).collect())
    }

    async fn dead_letter(&mut self, item: &SourcedEvent, reason: &str) -> Result<(), SourceError> {
        let raw = item.raw.clone().unwrap_or_default();
        let value = raw["value"].as_str().unwrap_or("").to_owned();
        let mut headers = OwnedHeaders::new();
        if let Some(h) = raw["headers"].as_object() {
            for (k, v) in h {
                headers = headers.insert(Header {
                    key: k,
                    value: v.as_str().map(str::as_bytes),
                });
            }
        }
        headers = headers
            .insert(Header {
                key: header::DLQ_REASON,
                value: Some(reason.as_bytes()),
            })
            .insert(Header {
                key: header::DLQ_SOURCE,
                value: Some(item.published_as.as_bytes()),
            });
        let key = item.key.clone().unwrap_or_default();
        let topic = self.config.kafka.dlq_topic();
        let record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&value)
            .headers(headers);
        self.dlq
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| SourceError::broker("sending to the dead-letter topic", e))?;
        Ok(())
    }

    async fn committed(&mut self, checkpoints: &[(SourceKey, i64)]) -> Result<(), SourceError> {
        let mut tpl = TopicPartitionList::new();
        for (key, next) in checkpoints {
            let Some(p) = key.partition_of(&self.config.kafka.topic) else {
                continue;
            };
            if !self.owned(p) {
                continue;
            }
            let topic = &self.config.kafka.topic;
            if let Err(e) = tpl.add_partition_offset(topic, p, Offset::Offset(*next)) {
                tracing::debug!(group = %self.config.group_id, topic = &*self.topic, partition = p, error = %e, "offset not committed to Kafka");
            }
        }
        if tpl.count() > 0 {
            // For lag tools only: the read DB holds the truth.
            if let Err(e) = self.consumer()?.commit(&tpl, CommitMode::Async) {
                tracing::debug!(group = %self.config.group_id, topic = &*self.topic, error = %e, "offset commit to Kafka failed");
            }
        }
        Ok(())
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Leaving the group (and even unsubscribing) can block; never on a
        // runtime thread. The binary bounds how long its runtime waits for
        // this at exit.
        if let Some(consumer) = self.consumer.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn_blocking(move || {
                        consumer.unsubscribe();
                        drop(consumer)
                    });
                }
                Err(_) => consumer.unsubscribe(),
            }
        }
    }
}

/// What a fatal consumer error means, in words an operator can act on.
fn fatal_message(config: &SourceConfig, code: &str, reason: &str) -> String {
    let (group, topic) = (&config.group_id, &config.kafka.topic);
    match &config.instance_id {
        Some(id) if code.contains("Fenced") || reason.contains("fenced") => format!(
            "consumer group {group} on {topic}: another process joined as instance id {id:?} \
             and the broker fenced this one ({reason}); give each process its own \
             --kafka-instance-id"
        ),
        _ => format!("consumer group {group} on {topic}: fatal client error {code}: {reason}"),
    }
}

/// A consumer of `config`'s group, static when `instance_id` is given.
fn make_consumer(
    config: &SourceConfig,
    instance_id: Option<&str>,
    assignment: &Arc<Mutex<Assignment>>,
    group: &Arc<str>,
    topic: &Arc<str>,
) -> Result<StreamConsumer<Ctx>, rdkafka::error::KafkaError> {
    let mut client = config.kafka.client();
    if let Some(id) = instance_id {
        client.set("group.instance.id", id);
    }
    client
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (config.session_timeout_ms / 4).max(250).to_string(),
        )
        .set(
            "client.id",
            format!("orders-projector-{}", std::process::id()),
        )
        .create_with_context(Ctx {
            assignment: assignment.clone(),
            group: group.clone(),
            topic: topic.clone(),
        })
}
