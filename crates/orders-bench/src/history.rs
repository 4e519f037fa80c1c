//! `orders-bench --store-events N`: the same service measured again after N
//! events of made-up order history were imported into its write store, to
//! show whether the cost of a command or a query grows with the log.
//!
//! The history is imported in bulk (`SqlEventStore::import_generated`) as
//! already published and already projected: the relay checkpoint and the
//! projector's log checkpoint move past it, so the run measures a large log,
//! not a catch-up. The read model is not filled with the history's orders.

use super::args::BenchArgs;
use super::load::{
    applied_sum, bar, caught_up_since, some_order_ids, throughput, Percentiles, Served,
};
use cqrs_core::Aggregate;
use cqrs_sql::store::EventStore;
use cqrs_sql::store::GeneratedHistory;
use orders::{OrderEvent, OrderLine};
use orders_service::server::{Config, Running, PROJECTOR};
use std::time::Instant;

/// The figures with history, beside the same measurement just before the
/// import (same phases, same order, both right after a restart).
#[derive(Debug, serde::Serialize)]
pub struct History {
    /// Events imported before measuring.
    pub events: i64,
    /// How long the import took.
    pub import_secs: f64,
    /// Before the import.
    pub before: Measured,
    /// After it.
    pub after: Measured,
    /// Commands/s after over before.
    pub command_ratio: f64,
    /// GET p99 after over before.
    pub read_p99_ratio: f64,
}

/// Creates then reads over HTTP, closed loops.
#[derive(Debug, serde::Serialize)]
pub struct Measured {
    /// Creates, commands/s.
    pub commands_per_sec: f64,
    /// `GET /orders/{id}`, requests/s.
    pub reads_per_sec: f64,
    /// Their latencies.
    pub reads_us: Percentiles,
}

/// An order's whole life, as the events the domain emits (type, schema
/// version, payload).
fn life() -> anyhow::Result<Vec<(String, i32, serde_json::Value)>> {
    let events = [
        OrderEvent::OrderCreated {
            customer_id: "history-1".to_owned(),
            items: vec![OrderLine {
                sku: "sku-1".to_owned(),
                quantity: 2,
                unit_price_cents: 1999,
                line_total_cents: 3998,
            }],
            total_cents: 3998,
            shipping: None,
        },
        OrderEvent::OrderPaid {
            amount_cents: 3998,
            payment_ref: "history-payment".to_owned(),
        },
        OrderEvent::OrderShipped {
            carrier: "history-carrier".to_owned(),
            tracking_number: "history-tracking".to_owned(),
        },
        OrderEvent::OrderDelivered {},
    ];
    events
        .iter()
        .map(|e| {
            // The stored payload is the variant's content, as appends store it.
            let stored = cqrs_core::NewEvent::encode(String::new(), e)?;
            Ok((stored.event_type, stored.schema_version, stored.payload))
        })
        .collect()
}

/// Imports `events` events of history (whole order lives) into the write
/// store of `config`, moving the projector past them when it reads the log.
async fn import(config: &Config, events: i64) -> anyhow::Result<()> {
    let (store, _, read) = orders_service::server::wiring::open_databases(config).await?;
    let store = store.ok_or_else(|| anyhow::anyhow!("the bench's config runs no order side"))?;
    let life = life()?;
    let history = GeneratedHistory {
        aggregate_type: orders::Order::TYPE.to_owned(),
        aggregates: events / life.len() as i64,
        life,
        salt: rand_salt(),
        relayed: config.kafka.is_some(),
        unpublished: false,
        interleaved: false,
    };
    let pb = bar(events as usize, "importing history");
    let head = store
        .import_generated(&history, |done| pb.set_position(done as u64))
        .await?;
    pb.finish_and_clear();
    if config.kafka.is_none() {
        let log = &cqrs_sql::SourceKey::Log;
        cqrs_sql::read::runner::advance_checkpoint(&read, PROJECTOR, log, head + 1).await?;
    }
    Ok(())
}

/// A salt that differs between imports.
fn rand_salt() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

/// Measures the service of `config` (after a restart), imports the
/// history, and measures it again.
pub async fn run(config: &Config, args: &BenchArgs, events: i64) -> anyhow::Result<History> {
    let before = restart_and_measure(config, args).await?;
    let started = Instant::now();
    import(config, events).await?;
    let import_secs = started.elapsed().as_secs_f64();
    let after = restart_and_measure(config, args).await?;
    Ok(History {
        events,
        import_secs,
        command_ratio: after.commands_per_sec / before.commands_per_sec,
        read_p99_ratio: after.reads_us.p99 as f64 / before.reads_us.p99.max(1) as f64,
        before,
        after,
    })
}

/// Starts the service, creates then reads over HTTP, stops it.
async fn restart_and_measure(config: &Config, args: &BenchArgs) -> anyhow::Result<Measured> {
    let served = Served::start(config).await?;
    let result = measure(&served.running, &served.base, args).await;
    served.stop().await?;
    result
}

/// Creates, then reads, over HTTP.
async fn measure(running: &Running, base: &str, args: &BenchArgs) -> anyhow::Result<Measured> {
    let head = running.app.store.head_position().await?;
    let applied_before = applied_sum(running).await?;
    let commands_per_sec = throughput(base, args.commands, args.concurrency).await?;
    caught_up_since(running, head, applied_before).await?;
    let ids = some_order_ids(running).await?;
    let (reads_per_sec, reads_us) =
        super::pg::get_throughput(base, ids, args.commands, args.concurrency).await?;
    Ok(Measured {
        commands_per_sec,
        reads_per_sec,
        reads_us,
    })
}
