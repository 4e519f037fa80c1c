//! The inventory service beside the orders: stock in through its own event
//! store, its read model through its own projector (on the embedded log, or
//! its own topic), read-your-writes with its tokens, idempotent stock
//! commands, and clear refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use serde_json::{json, Value};

async fn post(
    app: &common::TestApp,
    path: &str,
    body: Value,
    key: Option<&str>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = app.http.post(format!("{}{path}", app.base)).json(&body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let res = req.send().await.expect("send");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, res.json().await.unwrap_or(Value::Null), headers)
}

async fn stock_in_and_read_back(app: common::TestApp) {
    let (s, added, _) = post(
        &app,
        "/inventory/book/stock",
        json!({ "quantity": 5 }),
        Some("k-1"),
    )
    .await;
    assert_eq!(
        (s, added["sku"].as_str(), added["version"].as_i64()),
        (200, Some("book"), Some(1)),
        "{added}"
    );
    let token = added["consistency_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let (s, book, _) = app.get("/inventory/book?wait_ms=20000", Some(&token)).await;
    assert_eq!(s, 200, "{book}");
    assert_eq!(
        (
            book["on_hand"].as_i64(),
            book["reserved"].as_i64(),
            book["available"].as_i64()
        ),
        (Some(5), Some(0), Some(5))
    );

    // The same key and body: the first answer again, nothing added.
    let (s, again, headers) = post(
        &app,
        "/inventory/book/stock",
        json!({ "quantity": 5 }),
        Some("k-1"),
    )
    .await;
    assert_eq!((s, &again), (200, &added));
    assert_eq!(headers["idempotent-replayed"], "true");
    let (_, more, _) = post(
        &app,
        "/inventory/book/stock",
        json!({ "quantity": 3 }),
        None,
    )
    .await;
    let token = more["consistency_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let (_, book, _) = app.get("/inventory/book?wait_ms=20000", Some(&token)).await;
    assert_eq!(
        (book["on_hand"].as_i64(), book["version"].as_i64()),
        (Some(8), Some(2)),
        "{book}"
    );

    // Refusals say what is wrong and add nothing.
    for (body, code) in [
        (json!({ "quantity": 0 }), "invalid_field"),
        (json!({ "quantity": 1_000_001 }), "invalid_field"),
        (json!({ "quantity": "5" }), "invalid_body"),
        (json!({ "quantity": 1, "extra": true }), "invalid_body"),
    ] {
        let (s, e, _) = post(&app, "/inventory/book/stock", body.clone(), None).await;
        assert!((400..500).contains(&s), "{body} -> {s} {e}");
        assert_eq!(e["error"], code, "{body} -> {e}");
    }
    let (s, e, _) = app.get("/inventory/never-stocked", None).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (404, Some("sku_not_tracked")),
        "{e}"
    );

    // Pages in SKU order.
    let (_, mug, _) = post(&app, "/inventory/mug/stock", json!({ "quantity": 2 }), None).await;
    let token = mug["consistency_token"].as_str().expect("token").to_owned();
    app.get("/inventory/mug", Some(&token)).await;
    let (s, page, _) = app.get("/inventory?limit=1", None).await;
    assert_eq!(
        (s, page["stock"][0]["sku"].as_str(), page["next"].as_str()),
        (200, Some("book"), Some("book")),
        "{page}"
    );
    let (_, page, _) = app.get("/inventory?limit=1&after=book", None).await;
    assert_eq!(page["stock"][0]["sku"], "mug", "{page}");
    let (_, page, _) = app.get("/inventory?limit=5&after=mug", None).await;
    assert_eq!(
        (page["stock"].as_array().map(Vec::len), &page["next"]),
        (Some(0), &Value::Null)
    );
    let (s, _, _) = app.get("/inventory?limit=0", None).await;
    assert_eq!(s, 400);

    // Its own event store: the orders' log holds no stock events.
    let orders_log = app.app().store.all_events().await.expect("orders log");
    assert!(orders_log.iter().all(|e| e.aggregate_type == "order"));
    let stock_log = app
        .app()
        .inventory
        .as_ref()
        .expect("the inventory runs in this process")
        .store()
        .all_events()
        .await
        .expect("inventory log");
    assert_eq!(stock_log.len(), 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_comes_in_and_reads_back_on_the_embedded_log() {
    stock_in_and_read_back(common::spawn_app(false, 0).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_comes_in_and_reads_back_through_its_own_topic() {
    let app = common::spawn_kafka_app().await;
    stock_in_and_read_back(app).await;
}
