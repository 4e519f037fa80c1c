//! `cqrs-es-peer`: the peer baseline of `orders-bench`. The same order rules
//! (`orders::Order::decide`/`evolve`) run inside cqrs-es with postgres-es as
//! its event store, in process with no HTTP, on the create-then-pay workload
//! that `orders-bench` sends over HTTP: each client creates an order, then
//! pays it. Prints one JSON line with the commands per second.
//!
//! It is a binary of its own, built beside `orders-bench`, which runs it:
//! neither framework shares a process, runtime or pool with the other, and
//! the product (`orders`) never links a second CQRS framework.

use anyhow::Context;
use clap::Parser;
use cqrs_core::{Aggregate as _, DomainEvent as _};
use cqrs_es::{EventEnvelope, View};
use orders::{CreateOrder, LineItem, Order, OrderCommand, OrderError, OrderEvent, PayOrder};
use postgres_es::PostgresViewRepository;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The options of `cqrs-es-peer`.
#[derive(Parser)]
struct Args {
    /// The database (its tables are created; use a scratch database).
    #[arg(long)]
    database_url: String,
    /// Orders to create and pay (two commands each).
    #[arg(long, default_value_t = 5_000)]
    orders: usize,
    /// Concurrent clients; the pool has four connections more.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Also keep an order-status view, updated in the command's path as
    /// cqrs-es does (`GenericQuery` over `PostgresViewRepository`).
    #[arg(long)]
    with_view: bool,
}

/// The order aggregate as cqrs-es wants it. The state is not snapshotted
/// here, so it is skipped by serde.
#[derive(Default, Serialize, Deserialize)]
struct PeerOrder {
    #[serde(skip)]
    state: <Order as cqrs_core::Aggregate>::State,
}

/// Our event, under cqrs-es's event trait.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
struct PeerEvent(OrderEvent);

impl cqrs_es::DomainEvent for PeerEvent {
    fn event_type(&self) -> String {
        self.0.event_type().to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl cqrs_es::Aggregate for PeerOrder {
    const TYPE: &'static str = "Order";
    type Command = OrderCommand;
    type Event = PeerEvent;
    type Error = OrderError;
    type Services = ();

    async fn handle(
        &mut self,
        command: OrderCommand,
        _: &(),
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), OrderError> {
        for event in Order::decide(&self.state, &command)? {
            sink.write(PeerEvent(event), self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: PeerEvent) {
        self.state = Order::evolve(std::mem::take(&mut self.state), &event.0);
    }
}

/// The order-status view of `--with-view`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StatusView {
    status: String,
    total_cents: i64,
}

impl View<PeerOrder> for StatusView {
    fn update(&mut self, event: &EventEnvelope<PeerOrder>) {
        if let OrderEvent::OrderCreated { total_cents, .. } = &event.payload.0 {
            self.total_cents = *total_cents;
        }
        self.status = event.payload.0.event_type().to_owned();
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    aggregate_type text NOT NULL, aggregate_id text NOT NULL,
    sequence bigint CHECK (sequence >= 0) NOT NULL,
    event_type text NOT NULL, event_version text NOT NULL,
    payload json NOT NULL, metadata json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence));
CREATE TABLE IF NOT EXISTS order_status_view (
    view_id text NOT NULL PRIMARY KEY,
    version bigint CHECK (version >= 0) NOT NULL, payload json NOT NULL)";

/// The same order as `orders-bench` creates for client request `i`.
fn create(i: usize) -> (CreateOrder, i64) {
    let quantity = 1 + (i % 5) as i64;
    let order = CreateOrder {
        customer_id: format!("bench-{}", i % 97),
        items: vec![LineItem {
            sku: "sku-1".to_owned(),
            quantity,
            unit_price_cents: 1999,
        }],
        tracked_skus: Default::default(),
        shipping: None,
        sealed_shipping: None,
    };
    (order, 1999 * quantity)
}

/// The same allocator as ours, so that the peer comparison measures the
/// frameworks, not the allocators. mimalloc: glibc's malloc took ~16 % of the command path's CPU here
/// (BENCHMARKS.md, "CPU per command").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = PgPoolOptions::new()
        .max_connections(args.concurrency as u32 + 4)
        .connect(&args.database_url)
        .await
        .context("connecting to --database-url")?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await?;
    let queries: Vec<Box<dyn cqrs_es::Query<PeerOrder>>> = if args.with_view {
        let repo =
            PostgresViewRepository::<StatusView, PeerOrder>::new("order_status_view", pool.clone());
        vec![Box::new(cqrs_es::persist::GenericQuery::new(Arc::new(
            repo,
        )))]
    } else {
        vec![]
    };
    let cqrs = Arc::new(postgres_es::postgres_cqrs(pool, queries, ()));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients = (0..args.concurrency).map(|_| {
        let (cqrs, next, n) = (cqrs.clone(), next.clone(), args.orders);
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let id = uuid::Uuid::now_v7().to_string();
                let (order, total) = create(i);
                cqrs.execute(&id, OrderCommand::Create(order)).await?;
                let pay = PayOrder {
                    amount_cents: total,
                    payment_ref: format!("pay-{i}"),
                };
                cqrs.execute(&id, OrderCommand::Pay(pay)).await?;
            }
        })
    });
    for client in futures::future::join_all(clients).await {
        client??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let commands = 2 * args.orders;
    println!(
        "{}",
        serde_json::json!({ "framework": "cqrs-es 0.5 + postgres-es 0.5", "with_view": args.with_view,
            "commands": commands, "seconds": seconds, "commands_per_sec": commands as f64 / seconds })
    );
    Ok(())
}
