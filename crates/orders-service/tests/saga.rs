//! The order saga between the orders and the inventory, on the embedded log
//! and on PostgreSQL + Kafka: tracked orders get their stock reserved or are
//! cancelled `out_of_stock`, shipped orders take their units off the shelf,
//! cancelled orders give their stock back, and untracked orders are as they
//! always were.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn stock(app: &common::TestApp, sku: &str, quantity: i64) {
    let (s, b, _) = app
        .post(
            &format!("/inventory/{sku}/stock"),
            json!({ "quantity": quantity }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let token = b["consistency_token"].as_str().expect("token").to_owned();
    let (s, _, _) = app
        .get(&format!("/inventory/{sku}?wait_ms=20000"), Some(&token))
        .await;
    assert_eq!(s, 200);
}

async fn order(app: &common::TestApp, sku: &str, quantity: i64) -> String {
    order_and_command(app, sku, quantity).await.0
}

/// A new order and the id of the command that created it.
async fn order_and_command(app: &common::TestApp, sku: &str, quantity: i64) -> (String, String) {
    let body = json!({ "customer_id": "saga", "items": [{ "sku": sku, "quantity": quantity, "unit_price_cents": 100 }] });
    let (s, b, _) = app.post("/orders", body).await;
    assert_eq!(s, 201, "{b}");
    (
        b["order_id"].as_str().expect("id").to_owned(),
        b["command_id"].as_str().expect("command id").to_owned(),
    )
}

/// The reactions in a command's trace: (aggregate, appended event types).
async fn reactions(app: &common::TestApp, command: &str) -> Vec<(String, String)> {
    let (s, t, _) = app.get(&format!("/commands/{command}/trace"), None).await;
    assert_eq!(s, 200, "{t}");
    t["reactions"]
        .as_array()
        .expect("reactions")
        .iter()
        .map(|r| {
            assert_eq!(r["by"], "order_saga");
            assert_eq!(r["trigger"], "StockReservationRequested");
            assert!(
                r["since_command_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
                "{r}"
            );
            (
                r["aggregate_id"].as_str().unwrap_or_default().to_owned(),
                r["event_types"][0].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The order once `done` says the saga is through with it (20 s at most).
async fn settled(app: &common::TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, o, _) = app.get(&format!("/orders/{id}"), None).await;
        if s == 200 && done(&o) {
            return o;
        }
        assert!(Instant::now() < deadline, "order {id} never settled: {o}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn inventory_of(app: &common::TestApp, sku: &str, reserved: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v, _) = app.get(&format!("/inventory/{sku}"), None).await;
        if v["reserved"].as_i64() == Some(reserved) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{sku} never had {reserved} reserved: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn the_saga_reserves_rejects_and_releases(app: common::TestApp) {
    stock(&app, "book", 3).await;

    let (a, a_command) = order_and_command(&app, "book", 2).await;
    let a_view = settled(&app, &a, |o| o["stock"] == "reserved").await;
    assert_eq!(a_view["status"], "created");
    inventory_of(&app, "book", 2).await;
    // The creation's trace shows what it caused.
    assert_eq!(
        reactions(&app, &a_command).await,
        [
            ("stock:book".to_owned(), "StockReserved".to_owned()),
            (a.clone(), "StockReserved".to_owned())
        ]
    );

    // One more than is left: cancelled out of stock, nothing held for it.
    let (b, b_command) = order_and_command(&app, "book", 2).await;
    let b_view = settled(&app, &b, |o| o["status"] == "cancelled").await;
    assert_eq!(b_view["cancel_reason"], "out_of_stock", "{b_view}");
    // Its stock says so too (it read "pending" here once).
    assert_eq!(b_view["stock"], "out_of_stock", "{b_view}");
    assert_eq!(
        reactions(&app, &b_command).await,
        [
            ("stock:book".to_owned(), "ReservationRejected".to_owned()),
            (b.clone(), "OrderCancelled".to_owned())
        ]
    );
    let book = inventory_of(&app, "book", 2).await;
    assert_eq!(book["available"], 1);

    // An untracked SKU: no stock field, ships at once.
    let c = order(&app, "mug", 5).await;
    let (_, c_view, _) = app.get(&format!("/orders/{c}"), None).await;
    assert!(c_view.get("stock").is_none(), "{c_view}");
    for (step, body) in [
        ("pay", json!({ "amount_cents": 500, "payment_ref": "p" })),
        ("ship", json!({ "carrier": "dhl", "tracking_number": "T" })),
    ] {
        let (s, e, _) = app.post(&format!("/orders/{c}/{step}"), body).await;
        assert_eq!(s, 200, "{step}: {e}");
    }

    // The reserved order ships; a cancelled one gives its stock back.
    for (step, body) in [
        ("pay", json!({ "amount_cents": 200, "payment_ref": "p" })),
        ("ship", json!({ "carrier": "dhl", "tracking_number": "T" })),
    ] {
        let (s, e, _) = app.post(&format!("/orders/{a}/{step}"), body).await;
        assert_eq!(s, 200, "{step}: {e}");
    }
    // Shipped: its 2 units left the shelf.
    settled(&app, &a, |o| o["stock"] == "dispatched").await;
    let book = inventory_of(&app, "book", 0).await;
    assert_eq!(
        (book["on_hand"].as_i64(), book["available"].as_i64()),
        (Some(1), Some(1))
    );
    let d = order(&app, "book", 1).await;
    settled(&app, &d, |o| o["stock"] == "reserved").await;
    inventory_of(&app, "book", 1).await;
    let (s, e, _) = app
        .post(
            &format!("/orders/{d}/cancel"),
            json!({ "reason": "changed my mind" }),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    settled(&app, &d, |o| o["stock"] == "cancelled").await;
    let book = inventory_of(&app, "book", 0).await;
    assert_eq!(
        (book["on_hand"].as_i64(), book["available"].as_i64()),
        (Some(1), Some(1))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_reserves_rejects_and_releases_on_the_embedded_log() {
    the_saga_reserves_rejects_and_releases(common::spawn_app(false, 0).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_reserves_rejects_and_releases_over_kafka() {
    the_saga_reserves_rejects_and_releases(common::spawn_kafka_app().await).await;
}
