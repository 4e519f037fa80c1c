//! Kafka's own latency under the load of the latency phase: a raw producer
//! with the relay's settings sends one small record every 10 ms to a
//! one-partition probe topic, and a raw consumer with the projectors'
//! fetch settings reads it back. Beside the stage-by-stage hops it says
//! what the broker alone takes on the same busy machine, at the same time.

use crate::load::Percentiles;
use anyhow::Context;
use cqrs_kafka::KafkaConfig;
use hdrhistogram::Histogram;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the probe sends.
const EVERY: Duration = Duration::from_millis(10);

/// What the probe measured.
#[derive(Debug, serde::Serialize)]
pub struct KafkaProbe {
    /// Records sent.
    pub sent: usize,
    /// From send to the broker's acknowledgement (`acks=all`), µs.
    pub acknowledged_us: Percentiles,
    /// From send to the consumer's receipt, µs.
    pub consumed_us: Percentiles,
}

/// A running probe; [`Running::stop`] ends it and gives its figures.
pub struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<KafkaProbe>>,
}

impl Running {
    /// Stops sending, waits a moment for the last records, and reports.
    pub async fn stop(self) -> anyhow::Result<KafkaProbe> {
        self.stop.cancel();
        self.task.await?
    }
}

/// Starts probing `kafka`'s brokers on the topic `<kafka.topic>.probe`.
pub async fn start(kafka: &KafkaConfig) -> anyhow::Result<Running> {
    let probe = KafkaConfig {
        topic: format!("{}.probe", kafka.topic),
        partitions: 1,
        ..kafka.clone()
    };
    cqrs_kafka::ensure_topics(&probe).await?;
    let producer: FutureProducer = cqrs_kafka::relay::producer_config(&probe).create()?;
    let consumer: StreamConsumer = probe
        .client()
        .set("group.id", format!("{}.probe", probe.topic))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&probe.topic, 0, Offset::End)?;
    consumer.assign(&tpl)?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(probe.topic, producer, consumer, stop.clone()));
    Ok(Running { stop, task })
}

async fn run(
    topic: String,
    producer: FutureProducer,
    consumer: StreamConsumer,
    stop: CancellationToken,
) -> anyhow::Result<KafkaProbe> {
    let hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let consumed = Arc::new(Mutex::new(hist()?));
    let reader = {
        let (sent_at, consumed, stop) = (sent_at.clone(), consumed.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    m = consumer.recv() => m,
                    // The last records have had their time.
                    _ = async { stop.cancelled().await; tokio::time::sleep(Duration::from_secs(1)).await } => return,
                };
                let Ok(m) = m else { continue };
                let seq = m
                    .payload()
                    .and_then(|p| std::str::from_utf8(p).ok())
                    .and_then(|p| p.parse::<u64>().ok());
                let sent = seq.and_then(|s| sent_at.lock().ok()?.remove(&s));
                if let (Some(sent), Ok(mut h)) = (sent, consumed.lock()) {
                    h.saturating_record(sent.elapsed().as_micros() as u64);
                }
            }
        })
    };
    let mut acknowledged = hist()?;
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.is_cancelled() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        seq += 1;
        let payload = seq.to_string();
        let sent = Instant::now();
        if let Ok(mut s) = sent_at.lock() {
            s.insert(seq, sent);
        }
        let record = FutureRecord::<str, str>::to(&topic).payload(&payload);
        producer
            .send(record, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| e)
            .context("the probe's record")?;
        acknowledged.saturating_record(sent.elapsed().as_micros() as u64);
    }
    reader.await?;
    let consumed = consumed
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    Ok(KafkaProbe {
        sent: seq as usize,
        acknowledged_us: (&acknowledged).into(),
        consumed_us: (&consumed).into(),
    })
}
