//! The relay: publishes the event log to Kafka in position order from a
//! checkpoint (the last position whose delivery report came back), reading
//! only below the log's commit horizon so that a late commit is never
//! skipped; runs as the single leader of its write DB (PostgreSQL advisory
//! lock) with standbys waiting to take over. Several batches are in flight
//! at once: the producer sends batch n+1 while batch n's reports come back,
//! and the checkpoint (one row) moves once per batch, never per event.

use crate::record::headers_of;
use crate::{KafkaConfig, KafkaError};
use cqrs_core::trace_context;
use cqrs_sql::{EventStore, SqlEventStore};
use futures::future::join_all;
use rdkafka::error::KafkaError as RdError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use sqlx::{Connection, Executor};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

mod checkpoint;

use checkpoint::CheckpointWriter;

/// What a delivery report says (`Err` when the producer dropped it).
type Delivery = <DeliveryFuture as std::future::Future>::Output;

/// A batch's delivery reports, and when the last one came back.
type Reports = (Vec<Delivery>, std::time::Instant);

/// How often the leader checks that its lock's connection is alive.
const LEADER_PING: Duration = Duration::from_millis(250);

/// Batches enqueued ahead of the oldest one whose reports are awaited.
const MAX_IN_FLIGHT: usize = 4;

/// A batch handed to the producer: its positions and the reports to come.
struct InFlight {
    first: i64,
    last: i64,
    count: usize,
    /// All its delivery reports, collected by a task of their own (so that
    /// the leader can read new commits meanwhile, and the time they came
    /// back is the broker's, not when the leader got to them).
    reports: tokio::task::JoinHandle<Reports>,
    /// When the log read for it started.
    read_at: std::time::Instant,
    /// When its last record was handed to the producer.
    sent_at: std::time::Instant,
    /// How long its first event had been recorded when the read returned.
    read_after: chrono::Duration,
}

/// What the leader has read and sent (what is confirmed goes to the
/// checkpoint writer).
struct Pipeline {
    /// Everything at or below it is handed to the producer.
    read_to: i64,
    in_flight: VecDeque<InFlight>,
}

impl Pipeline {
    /// Nothing in flight, everything up to `checkpoint` confirmed.
    fn at(checkpoint: i64) -> Self {
        Self {
            read_to: checkpoint,
            in_flight: VecDeque::new(),
        }
    }
}

/// Advisory lock key of relay leadership ("rely").
const LEADER_KEY: i64 = 0x7265_6c79;

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Broker and topic.
    pub kafka: KafkaConfig,
    /// The write DB's URL (for LISTEN and the leader lock).
    pub database_url: String,
    /// Most rows per batch.
    pub batch_size: i64,
    /// Poll interval when no notification arrives.
    pub poll: Duration,
    /// How often a standby tries to become leader.
    pub standby_retry: Duration,
}

/// The relay's producer settings (benchmarks build their raw baseline
/// producer from the same).
pub fn producer_config(kafka: &KafkaConfig) -> rdkafka::ClientConfig {
    let mut c = kafka.client();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        // A record goes out at once when the producer is idle; under load
        // the batches fill while the previous request is in flight.
        .set("linger.ms", "0")
        .set("batch.num.messages", "10000")
        .set("max.in.flight.requests.per.connection", "5")
        .set("message.timeout.ms", "30000")
        .set("client.id", "orders-relay");
    c
}

/// Publishes the event log.
pub struct Relay {
    config: RelayConfig,
    store: SqlEventStore,
    producer: FutureProducer,
}

impl Relay {
    /// A relay over `store` (the write side).
    pub fn new(config: RelayConfig, store: SqlEventStore) -> Result<Self, KafkaError> {
        let producer: FutureProducer = producer_config(&config.kafka).create()?;
        Ok(Self {
            config,
            store,
            producer,
        })
    }

    /// Runs until `shutdown`: waits for leadership, then publishes.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), KafkaError> {
        loop {
            let leader = tokio::select! {
                l = self.become_leader() => l,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let leader = match leader {
                Ok(l) => l,
                Err(e) => {
                    // The write DB is away: try again, the relay must not
                    // end while its process goes on.
                    tracing::warn!(error = %e, "relay cannot take the leader lock; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.standby_retry) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                    continue;
                }
            };
            // A topic another store publishes to is refused before a
            // record of ours joins it: the role fails, naming both stores.
            match crate::ownership::check_owner(&self.config.kafka, &self.store).await {
                Ok(()) => {}
                Err(e @ crate::ownership::OwnershipError::Foreign(_)) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, "relay cannot read the topic's last records; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.standby_retry) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                    continue;
                }
            }
            tracing::info!(topic = %self.config.kafka.topic, store = self.store.id(), "relay is the leader");
            match self.lead(leader, &shutdown).await {
                Ok(()) => return self.flush().await,
                Err(e) => {
                    tracing::error!(error = %e, "relay lost its footing; standing by");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn flush(&self) -> Result<(), KafkaError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await??;
        Ok(())
    }

    /// Blocks (polling) until this process holds the leader lock; on SQLite
    /// there is one writer process, so it is the leader.
    async fn become_leader(&self) -> Result<Option<sqlx::AnyConnection>, KafkaError> {
        let Some(try_lead) = self.store.db().sql().try_lead else {
            return Ok(None);
        };
        let mut announced = false;
        loop {
            let mut conn = sqlx::AnyConnection::connect(&self.config.database_url).await?;
            let got: bool = sqlx::query_scalar(try_lead)
                .bind(LEADER_KEY)
                .fetch_one(&mut conn)
                .await?;
            if got {
                return Ok(Some(conn));
            }
            drop(conn);
            if !announced {
                tracing::info!("relay standing by: another relay leads this outbox");
                announced = true;
            }
            tokio::time::sleep(self.config.standby_retry).await;
        }
    }

    async fn lead(
        &self,
        mut leader: Option<sqlx::AnyConnection>,
        shutdown: &CancellationToken,
    ) -> Result<(), KafkaError> {
        let dialect = self.store.db().dialect;
        let mut listener = dialect
            .listen(&self.config.database_url, cqrs_sql::store::LOG_CHANNEL)
            .await?;
        let mut local = self.store.subscribe();
        let mut pipe = Pipeline::at(self.store.relay_checkpoint().await?);
        let checkpoint = CheckpointWriter::start(self.store.clone());
        let mut pinged = std::time::Instant::now();
        loop {
            let stopping = shutdown.is_cancelled();
            if stopping {
                return self.drain(&mut pipe, checkpoint).await;
            }
            if checkpoint.ended() {
                // Its write failed: start again from the stored checkpoint.
                checkpoint.finish().await?;
                return Err(rdkafka::error::KafkaError::Canceled.into());
            }
            // A dead lock connection means another relay may lead now. Not
            // on every turn: a round trip per batch was a tenth of the
            // loop's time, and a second leader for a moment only sends
            // duplicates, which consumers drop by version.
            if let Some(conn) = leader.as_mut().filter(|_| pinged.elapsed() >= LEADER_PING) {
                conn.execute("SELECT 1").await?;
                pinged = std::time::Instant::now();
            }
            self.fill(&mut pipe).await?;
            let room = pipe.in_flight.len() < MAX_IN_FLIGHT;
            let mut wake = std::pin::pin!(self.woken(&mut listener, &mut local, shutdown));
            // A commit that lands while the oldest batch's reports are on
            // their way is read and sent at once, not after them.
            let reports = match pipe.in_flight.front_mut() {
                None => None,
                Some(oldest) => tokio::select! {
                    biased;
                    r = &mut oldest.reports => Some(r),
                    w = &mut wake, if room => { w?; None }
                },
            };
            match reports {
                Some(reports) => self.settle_oldest(&mut pipe, &checkpoint, reports)?,
                None if pipe.in_flight.is_empty() => wake.await?,
                None => {}
            }
        }
    }

    /// Until something may have been committed: a notification from the
    /// write DB, a commit of this process, the poll interval, or shutdown.
    async fn woken(
        &self,
        listener: &mut Option<cqrs_sql::dialect::Listener>,
        local: &mut watch::Receiver<i64>,
        shutdown: &CancellationToken,
    ) -> Result<(), KafkaError> {
        tokio::select! {
            n = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await,
                    None => std::future::pending().await,
                }
            } => n?,
            _ = local.changed() => {}
            _ = tokio::time::sleep(self.config.poll) => {}
            _ = shutdown.cancelled() => {}
        }
        Ok(())
    }

    /// Reads and enqueues batches until `MAX_IN_FLIGHT` are out or nothing
    /// committed is left.
    async fn fill(&self, pipe: &mut Pipeline) -> Result<(), KafkaError> {
        while pipe.in_flight.len() < MAX_IN_FLIGHT {
            let read_at = std::time::Instant::now();
            let events = self
                .store
                .read_log(pipe.read_to, self.config.batch_size)
                .await?;
            let (Some(first), Some(last)) = (events.first(), events.last()) else {
                return Ok(());
            };
            let read_after = chrono::Utc::now() - first.recorded_at;
            let (first, last) = (first.position, last.position);
            let mut deliveries = Vec::with_capacity(events.len());
            for e in &events {
                deliveries.push(self.enqueue(e).await?);
            }
            pipe.read_to = last;
            pipe.in_flight.push_back(InFlight {
                first,
                last,
                count: deliveries.len(),
                reports: tokio::spawn(async move {
                    let reports = join_all(deliveries).await;
                    (reports, std::time::Instant::now())
                }),
                read_at,
                sent_at: std::time::Instant::now(),
                read_after,
            });
        }
        Ok(())
    }

    /// Hands one event to the producer (in position order: the idempotent
    /// producer keeps that order per partition, retries included).
    async fn enqueue(&self, e: &cqrs_core::EventEnvelope) -> Result<DeliveryFuture, KafkaError> {
        let payload = e.payload.to_string();
        // Where spans are exported, one per record, a child of the
        // command's: the consumers continue from it.
        let traceparent = match (trace_context::exporting(), &e.metadata.traceparent) {
            (true, Some(tp)) => {
                let span = tracing::info_span!("relay publish",
                    otel.name = %format!("publish {}", e.event_type), otel.kind = "producer",
                    messaging.destination.name = %self.config.kafka.topic,
                    aggregate_id = %e.aggregate_id, position = e.position);
                trace_context::continue_from(&span, tp);
                span.in_scope(trace_context::current)
            }
            _ => None,
        };
        let mut record = FutureRecord::to(&self.config.kafka.topic)
            .key(&e.aggregate_id)
            .payload(&payload)
            .headers(headers_of(e, self.store.id(), traceparent.as_deref()));
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((err, _)) => return Err(err.into()),
            }
        }
    }

    /// Moves the checkpoint past the oldest batch, whose `reports` came
    /// back. A failed report fails the leader: it starts again from the
    /// stored checkpoint, so Kafka may hold duplicates but never a gap.
    fn settle_oldest(
        &self,
        pipe: &mut Pipeline,
        checkpoint: &CheckpointWriter,
        reports: Result<Reports, tokio::task::JoinError>,
    ) -> Result<(), KafkaError> {
        let Some(batch) = pipe.in_flight.pop_front() else {
            return Ok(());
        };
        let count = batch.count;
        let Ok((reports, acked)) = reports else {
            metrics::counter!("cqrs_relay_errors_total").increment(1);
            return Err(RdError::Canceled.into());
        };
        for report in reports {
            match report {
                Ok(Ok(_)) => {}
                Ok(Err((err, _))) => {
                    metrics::counter!("cqrs_relay_errors_total").increment(1);
                    return Err(err.into());
                }
                Err(_) => {
                    metrics::counter!("cqrs_relay_errors_total").increment(1);
                    return Err(RdError::Canceled.into());
                }
            }
        }
        // From the batch's last send to its last acknowledgement.
        let acked_after = acked.saturating_duration_since(batch.sent_at);
        metrics::histogram!("cqrs_relay_ack_seconds").record(acked_after.as_secs_f64());
        tracing::debug!(
            events = count,
            read_after_recorded_us = batch.read_after.num_microseconds().unwrap_or(0),
            read_and_sent_us = (batch.sent_at - batch.read_at).as_micros() as u64,
            acked_after_us = acked_after.as_micros() as u64,
            settled_after_us = batch.sent_at.elapsed().as_micros() as u64,
            "relay batch confirmed"
        );
        checkpoint.confirmed(batch.first, batch.last);
        metrics::counter!("cqrs_relay_published_total").increment(count as u64);
        metrics::histogram!("cqrs_relay_batch_size").record(count as f64);
        Ok(())
    }

    /// At shutdown: confirms what is in flight, as far as reports come
    /// within a few seconds (the rest is sent again by the next leader).
    async fn drain(
        &self,
        pipe: &mut Pipeline,
        checkpoint: CheckpointWriter,
    ) -> Result<(), KafkaError> {
        let settle = async {
            while let Some(oldest) = pipe.in_flight.front_mut() {
                let reports = (&mut oldest.reports).await;
                self.settle_oldest(pipe, &checkpoint, reports)?;
            }
            Ok::<_, KafkaError>(())
        };
        let settled = match tokio::time::timeout(Duration::from_secs(5), settle).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(
                    "relay stopped with batches unconfirmed; the next leader sends them again"
                );
                Ok(())
            }
        };
        // What was confirmed is stored before the relay ends.
        let written = checkpoint.finish().await;
        settled.and(written)
    }
}
