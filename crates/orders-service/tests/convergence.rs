//! Property: after any sequence of commands, every read model equals the
//! fold of the write-side events (DESIGN invariant 6).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use cqrs_sql::{execute, CommandOptions, EventStore};
use orders::read_model::load_views;
use orders::views::Views;
use orders::{CancelOrder, CreateOrder, LineItem, Order, OrderCommand, PayOrder, ShipOrder};
use orders_service::{Config, Running};
use proptest::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone)]
enum Op {
    Create { customer: u8, qty: i64, price: i64 },
    Pay { order: u8, exact: bool },
    Ship(u8),
    Deliver(u8),
    Cancel(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 0i64..4, 0i64..5000).prop_map(|(customer, qty, price)| Op::Create {
            customer,
            qty,
            price
        }),
        (0u8..6, proptest::bool::weighted(0.8)).prop_map(|(order, exact)| Op::Pay { order, exact }),
        (0u8..6).prop_map(Op::Ship),
        (0u8..6).prop_map(Op::Deliver),
        (0u8..6).prop_map(Op::Cancel),
    ]
}

async fn run_sequence(postgres: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    if postgres {
        config.database_url = Some(test_support::fresh_postgres_url().await);
    }
    let running = Running::start(&config).await.unwrap();
    let app = &running.app;
    let mut orders: Vec<(String, i64)> = Vec::new();
    let mut last_tokens: HashMap<String, cqrs_core::ConsistencyToken> = HashMap::new();
    for op in ops {
        let (id, command) = match op {
            Op::Create {
                customer,
                qty,
                price,
            } => {
                let items = vec![LineItem {
                    sku: "sku".into(),
                    quantity: qty,
                    unit_price_cents: price,
                }];
                let id = uuid::Uuid::now_v7().to_string();
                (
                    id,
                    OrderCommand::Create(CreateOrder {
                        customer_id: format!("c{customer}"),
                        items,
                        tracked_skus: Default::default(),
                        shipping: None,
                        sealed_shipping: None,
                    }),
                )
            }
            Op::Pay { order, exact } => {
                let Some((id, total)) = orders.get(order as usize).cloned() else {
                    continue;
                };
                let amount = if exact { total } else { total + 1 };
                (
                    id,
                    OrderCommand::Pay(PayOrder {
                        amount_cents: amount,
                        payment_ref: "p".into(),
                    }),
                )
            }
            Op::Ship(o) => {
                let Some((id, _)) = orders.get(o as usize).cloned() else {
                    continue;
                };
                (
                    id,
                    OrderCommand::Ship(ShipOrder {
                        carrier: "c".into(),
                        tracking_number: "t".into(),
                    }),
                )
            }
            Op::Deliver(o) => {
                let Some((id, _)) = orders.get(o as usize).cloned() else {
                    continue;
                };
                (id, OrderCommand::Deliver)
            }
            Op::Cancel(o) => {
                let Some((id, _)) = orders.get(o as usize).cloned() else {
                    continue;
                };
                (id, OrderCommand::Cancel(CancelOrder { reason: "r".into() }))
            }
        };
        let options = CommandOptions {
            command_id: uuid::Uuid::now_v7().to_string(),
            expected_version: None,
            idempotency: None,
            now: chrono::Utc::now(),
            max_retries: 3,
            caller: None,
            traceparent: None,
        };
        // Refusals are part of the sequence: they must leave no trace.
        if let Ok(outcome) = execute::<Order, _>(&app.store, &id, &command, options).await {
            if let OrderCommand::Create(c) = &command {
                orders.push((
                    id.clone(),
                    c.items
                        .iter()
                        .map(|i| i.quantity * i.unit_price_cents)
                        .sum(),
                ));
            }
            last_tokens.insert(id, outcome.token());
        }
    }
    for token in last_tokens.values() {
        let reached = app
            .progress
            .wait_for(token, Duration::from_secs(20))
            .await
            .unwrap();
        prop_assert_eq!(reached, cqrs_sql::WaitOutcome::Reached);
    }
    let events = app.store.all_events().await.unwrap();
    for (id, _) in &orders {
        let versions: Vec<i64> = app
            .store
            .load(id)
            .await
            .unwrap()
            .iter()
            .map(|e| e.version)
            .collect();
        prop_assert_eq!(
            versions.clone(),
            (1..=versions.len() as i64).collect::<Vec<_>>()
        );
    }
    let folded = Views::fold(&events).unwrap();
    let loaded = load_views(&app.read.pool).await.unwrap();
    prop_assert_eq!(folded.orders.len(), orders.len());
    prop_assert_eq!(&loaded, &folded);
    running.stop().await.unwrap();
    Ok(())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn read_models_equal_the_fold_on_sqlite(ops in proptest::collection::vec(op(), 1..60)) {
        block_on(run_sequence(false, ops))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]
    #[test]
    fn read_models_equal_the_fold_on_postgres(ops in proptest::collection::vec(op(), 1..60)) {
        block_on(run_sequence(true, ops))?;
    }
}
