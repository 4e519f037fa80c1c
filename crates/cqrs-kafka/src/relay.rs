//! The relay: publishes outbox rows to Kafka in position order, marks a row
//! published only after its delivery report, and runs as the single leader of
//! its outbox (PostgreSQL advisory lock) with standbys waiting to take over.

use crate::record::headers_of;
use crate::{KafkaConfig, KafkaError};
use cqrs_sql::{Backend, EventStore, SqlEventStore};
use rdkafka::error::KafkaError as RdError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use sqlx::{Connection, Executor};
use std::time::Duration;
use tokio::sync::watch;

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

/// Publishes the outbox.
pub struct Relay {
    config: RelayConfig,
    store: SqlEventStore,
    producer: FutureProducer,
}

impl Relay {
    /// A relay over `store` (the write side).
    pub fn new(config: RelayConfig, store: SqlEventStore) -> Result<Self, KafkaError> {
        let producer: FutureProducer = config
            .kafka
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("max.in.flight.requests.per.connection", "5")
            .set("message.timeout.ms", "30000")
            .set("client.id", "orders-relay")
            .create()?;
        Ok(Self {
            config,
            store,
            producer,
        })
    }

    /// Runs until `shutdown`: waits for leadership, then publishes.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), KafkaError> {
        loop {
            let leader = tokio::select! {
                l = self.become_leader() => l,
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            };
            let leader = match leader {
                Ok(l) => l,
                Err(e) => {
                    // The write DB is away: try again, the relay must not
                    // end while its process goes on.
                    tracing::warn!(error = %e, "relay cannot take the leader lock; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.standby_retry) => {}
                        _ = shutdown.wait_for(|s| *s) => return Ok(()),
                    }
                    continue;
                }
            };
            tracing::info!("relay is the leader");
            match self.lead(leader, &mut shutdown).await {
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
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10)))
            .await
            .map_err(|e| KafkaError::Db(sqlx::Error::Protocol(e.to_string())))??;
        Ok(())
    }

    /// Blocks (polling) until this process holds the leader lock; on SQLite
    /// there is one writer process, so it is the leader.
    async fn become_leader(&self) -> Result<Option<sqlx::AnyConnection>, KafkaError> {
        if self.store.db().backend == Backend::Sqlite {
            return Ok(None);
        }
        let mut announced = false;
        loop {
            let mut conn = sqlx::AnyConnection::connect(&self.config.database_url).await?;
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
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
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), KafkaError> {
        let mut listener = match self.store.db().backend {
            Backend::Postgres => {
                let mut l = sqlx::postgres::PgListener::connect(&self.config.database_url).await?;
                l.listen("cqrs_outbox").await?;
                Some(l)
            }
            Backend::Sqlite => None,
        };
        let mut local = self.store.subscribe();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            // A dead lock connection means another relay may lead now.
            if let Some(conn) = leader.as_mut() {
                conn.execute("SELECT 1").await?;
            }
            let published = self.publish_batch().await?;
            if published > 0 {
                continue;
            }
            tokio::select! {
                n = async {
                    match listener.as_mut() {
                        Some(l) => l.recv().await.map(|_| ()),
                        None => std::future::pending().await,
                    }
                } => n?,
                _ = local.changed() => {}
                _ = tokio::time::sleep(self.config.poll) => {}
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            }
        }
    }

    /// Publishes one batch; returns how many rows it marked published.
    pub async fn publish_batch(&self) -> Result<usize, KafkaError> {
        let events = self.store.pending_outbox(self.config.batch_size).await?;
        if events.is_empty() {
            return Ok(0);
        }
        let mut deliveries = Vec::with_capacity(events.len());
        let mut failed: Option<RdError> = None;
        for e in &events {
            let payload = e.payload.to_string();
            let mut record = FutureRecord::to(&self.config.kafka.topic)
                .key(&e.aggregate_id)
                .payload(&payload)
                .headers(headers_of(e));
            // Enqueued in position order; the idempotent producer keeps that
            // order per partition, retries included.
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push((e.position, delivery));
                        break;
                    }
                    Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((err, _)) => {
                        failed = Some(err);
                        break;
                    }
                }
            }
            if failed.is_some() {
                break;
            }
        }
        let mut done = Vec::with_capacity(deliveries.len());
        for (position, delivery) in deliveries {
            match delivery.await {
                Ok(Ok(d)) if failed.is_none() => done.push((position, d.partition, d.offset)),
                Ok(Ok(_)) => {}
                Ok(Err((err, _))) => {
                    failed.get_or_insert(err);
                }
                Err(_) => {
                    failed.get_or_insert(RdError::Canceled);
                }
            }
        }
        // Only the prefix before the first failure is marked: the rest is
        // sent again, so Kafka may hold duplicates but never a gap.
        self.store.mark_published(&done).await?;
        metrics::counter!("cqrs_relay_published_total").increment(done.len() as u64);
        metrics::histogram!("cqrs_relay_batch_size").record(events.len() as f64);
        if let Some(e) = failed {
            metrics::counter!("cqrs_relay_errors_total").increment(1);
            return Err(e.into());
        }
        Ok(done.len())
    }
}
