//! `OrderCreated` changed shape (v2: every line carries its total). Events
//! an older build stored at v1, in the store and on the topic, keep working:
//! the projector on Kafka reads them, a command on their order decides on
//! them, a replay from the topic rebuilds the read model from them, and the
//! read model still equals the fold of the log. Stored events are never
//! rewritten.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use cqrs_core::{ConsistencyToken, EventMetadata, NewEvent};
use cqrs_sql::{AppendRequest, EventStore};
use serde_json::json;
use std::time::Duration;

/// An order as the build before v2 stored it: created, with v1 lines.
async fn append_v1_order(app: &common::TestApp, id: &str) -> String {
    let appended = app
        .app()
        .store
        .append(AppendRequest {
            aggregate_type: "order".into(),
            aggregate_id: id.into(),
            expected_version: 0,
            events: vec![NewEvent {
                event_id: uuid::Uuid::now_v7().to_string(),
                event_type: "OrderCreated".into(),
                schema_version: 1,
                payload: json!({ "customer_id": "v1-customer", "total_cents": 3800, "items": [
                    { "sku": "book", "quantity": 2, "unit_price_cents": 1500 },
                    { "sku": "mug", "quantity": 1, "unit_price_cents": 800 } ] }),
            }],
            metadata: EventMetadata {
                command_id: uuid::Uuid::now_v7().to_string(),
                occurred_at: chrono::Utc::now(),
                caller: None,
                traceparent: None,
            },
            idempotency: None,
        })
        .await
        .expect("append a v1 event");
    let e = &appended.events[0];
    ConsistencyToken {
        position: e.position,
        version: e.version,
        aggregate_id: id.into(),
    }
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_events_work_through_the_store_kafka_and_replay_after_the_v2_change() {
    let app = common::spawn_kafka_app().await;
    let id = uuid::Uuid::now_v7().to_string();
    let token = append_v1_order(&app, &id).await;

    // Relayed to Kafka at v1 and projected from there. The first read waits
    // long: a fresh consumer group takes seconds to be handed its partitions.
    let (s, order, _) = app
        .get(&format!("/orders/{id}?wait_ms=20000"), Some(&token))
        .await;
    assert_eq!(s, 200, "{order}");
    assert_eq!(
        (order["status"].as_str(), order["total_cents"].as_i64()),
        (Some("created"), Some(3800))
    );

    // A command decides on the v1 history.
    let (s, paid, _) = app
        .post(
            &format!("/orders/{id}/pay"),
            json!({ "amount_cents": 3800, "payment_ref": "p-1" }),
        )
        .await;
    assert_eq!((s, paid["version"].as_i64()), (200, Some(2)), "{paid}");
    let token = paid["consistency_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let (s, order, _) = app
        .get(&format!("/orders/{id}?wait_ms=20000"), Some(&token))
        .await;
    assert_eq!(
        (s, order["status"].as_str()),
        (200, Some("paid")),
        "{order}"
    );

    // New orders are written at the current version (3 since shipping
    // details), old events stay as they were stored.
    let (new_id, new_token) = app.create().await;
    let old = app.app().store.load(&id).await.expect("load");
    assert_eq!(old[0].schema_version, 1);
    assert!(
        old[0].payload["items"][0].get("line_total_cents").is_none(),
        "never rewritten"
    );
    let new = app.app().store.load(&new_id).await.expect("load");
    assert_eq!(new[0].schema_version, 3);
    assert_eq!(new[0].payload["items"][0]["line_total_cents"], 3000);
    app.get(&format!("/orders/{new_id}?wait_ms=20000"), Some(&new_token))
        .await;

    // A rebuild from the topic's beginning rebuilds the read model from the
    // v1 record and the rest, and swaps it in.
    orders_cli::rebuild::run(
        orders_cli::rebuild::RebuildArgs {
            projection: vec!["all".into()],
            batch: 100,
        },
        &app.config,
    )
    .await
    .expect("replay");
    let (s, order, _) = app.get(&format!("/orders/{id}"), None).await;
    assert_eq!(
        (s, order["status"].as_str(), order["total_cents"].as_i64()),
        (200, Some("paid"), Some(3800)),
        "{order}"
    );
    let (s, summary, _) = app.get("/customers/v1-customer/summary", None).await;
    assert_eq!(
        (s, summary["total_spent_cents"].as_i64()),
        (200, Some(3800)),
        "{summary}"
    );

    let config = app.config.clone();
    app.stop().await;
    let report = orders_cli::verify::verify(&config, Duration::from_secs(10))
        .await
        .expect("verify");
    assert_eq!(report.exit_code(), 0, "{report}");
}
