//! The HTTP contract, through a real server on a free port.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{order_body, spawn_app};
use orders_service::server::Role;
use serde_json::{json, Value};

/// The six steps of the teaching page: command sent, handled and written,
/// event published, consumed and applied, query sent, query answered.
async fn the_six_steps_of_the_teaching_page(postgres: bool) {
    let app = spawn_app(postgres, 0).await;
    // 1. The client sends CreateOrder.
    let (status, answer, headers) = app.post("/orders", order_body()).await;
    assert_eq!(status, 201, "{answer}");
    let id = answer["order_id"].as_str().unwrap();
    let token = answer["consistency_token"].as_str().unwrap();
    assert_eq!(headers["x-consistency-token"], token);
    assert_eq!(answer["version"], 1);
    assert!(answer["command_id"].as_str().is_some_and(|c| !c.is_empty()));
    // 2. The command handler wrote the event to the write DB's log (the
    // outbox the relay reads).
    let history = app.get(&format!("/orders/{id}/history"), None).await.1;
    assert_eq!(history["events"][0]["event_type"], "OrderCreated");
    assert_eq!(
        history["events"][0]["metadata"]["command_id"],
        answer["command_id"]
    );
    let position = history["events"][0]["position"].as_i64().unwrap();
    let logged = cqrs_sql::EventStore::read_log(&app.app().store, position - 1, 1)
        .await
        .unwrap();
    let logged: Vec<(i64, &str)> = logged
        .iter()
        .map(|e| (e.position, e.aggregate_id.as_str()))
        .collect();
    assert_eq!(
        logged,
        [(position, id)],
        "the event is in the log at its position"
    );
    // 3 + 4. Published to the log, consumed, and the read DB updated: a query
    // with the token waits for exactly that.
    let (status, order, _) = app.get(&format!("/orders/{id}"), Some(token)).await;
    assert_eq!(status, 200, "{order}");
    // 5 + 6. The query handler answers from the read DB.
    assert_eq!(order["status"], "created");
    assert_eq!(order["total_cents"], 3800);
    assert_eq!(order["customer_id"], "alice");
    assert_eq!(order["version"], 1);
    assert_eq!(order["items"][1]["sku"], "mug");
    assert!(order["created_at"].is_string() && order["updated_at"].is_string());
    let applied = common::applied_from(&app.app().read, id).await;
    assert_eq!(
        applied,
        format!("log@{position}"),
        "the read model consumed the published event"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_six_steps_on_sqlite() {
    the_six_steps_of_the_teaching_page(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_six_steps_on_postgres() {
    the_six_steps_of_the_teaching_page(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_lives_its_whole_life_and_every_view_follows() {
    let app = spawn_app(false, 0).await;
    let (id, _) = app.create().await;
    let steps = [
        (
            "pay",
            json!({"amount_cents": 3800, "payment_ref": "p-1"}),
            "paid",
        ),
        (
            "ship",
            json!({"carrier": "dhl", "tracking_number": "T-1"}),
            "shipped",
        ),
        ("deliver", json!({}), "delivered"),
    ];
    let mut token = String::new();
    for (i, (verb, body, status)) in steps.iter().enumerate() {
        let (s, a, _) = app
            .post(&format!("/orders/{id}/{verb}"), body.clone())
            .await;
        assert_eq!(s, 200, "{verb}: {a}");
        assert_eq!(a["version"], i as i64 + 2);
        token = a["consistency_token"].as_str().unwrap().to_owned();
        let (_, o, _) = app.get(&format!("/orders/{id}"), Some(&token)).await;
        assert_eq!(o["status"], *status);
    }
    let (_, o, _) = app.get(&format!("/orders/{id}"), None).await;
    assert_eq!(
        (o["payment_ref"].as_str(), o["tracking_number"].as_str()),
        (Some("p-1"), Some("T-1"))
    );
    let (_, c, _) = app.get("/customers/alice/summary", Some(&token)).await;
    assert_eq!(
        (c["order_count"].as_i64(), c["total_spent_cents"].as_i64()),
        (Some(1), Some(3800))
    );
    assert_eq!(c["last_order_id"], id.as_str());
    let (_, s, _) = app.get("/stats", Some(&token)).await;
    assert_eq!(
        s["by_status"]["delivered"],
        json!({"order_count": 1, "revenue_cents": 3800})
    );
    assert_eq!(
        s["by_status"]["created"],
        json!({"order_count": 0, "revenue_cents": 0})
    );
    assert_eq!(s["total_orders"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_by_cursor_and_filter() {
    let app = spawn_app(false, 0).await;
    let mut ids = Vec::new();
    let mut token = String::new();
    for i in 0..5 {
        let body = json!({"customer_id": if i % 2 == 0 { "even" } else { "odd" },
            "items": [{"sku": "s", "quantity": 1, "unit_price_cents": 100}]});
        let (_, a, _) = app.post("/orders", body).await;
        ids.push(a["order_id"].as_str().unwrap().to_owned());
        token = a["consistency_token"].as_str().unwrap().to_owned();
    }
    app.get("/stats", Some(&token)).await;
    let (_, p1, _) = app.get("/orders?limit=2", None).await;
    let first: Vec<&str> = p1["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["order_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        first,
        vec![ids[4].as_str(), ids[3].as_str()],
        "newest first"
    );
    let next = p1["next"].as_str().unwrap();
    let (_, p2, _) = app
        .get(&format!("/orders?limit=2&after={next}"), None)
        .await;
    assert_eq!(p2["orders"][0]["order_id"], ids[2].as_str());
    let (_, p3, _) = app
        .get(
            &format!("/orders?limit=2&after={}", p2["next"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(p3["orders"].as_array().unwrap().len(), 1);
    assert!(p3["next"].is_null());
    let (_, even, _) = app
        .get("/orders?customer_id=even&status=created", None)
        .await;
    assert_eq!(even["orders"].as_array().unwrap().len(), 3);
    let (_, none, _) = app.get("/orders?status=paid", None).await;
    assert!(none["orders"].as_array().unwrap().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_without_the_token_is_stale_and_one_with_it_waits_for_the_write() {
    // The API runs alone: nothing projects until a projector starts below.
    let dir = tempfile::tempdir().unwrap();
    let mut config = orders_service::Config::embedded(dir.path());
    config.roles = vec![Role::Api];
    let mut projector_config = config.clone();
    projector_config.roles = vec![Role::Projector];
    let app = common::spawn_with(config, dir).await;
    let (id, token) = app.create().await;
    let (stale, _, _) = app.get(&format!("/orders/{id}"), None).await;
    assert_eq!(
        stale, 404,
        "no projector has run: a tokenless read is stale"
    );
    let (s, _, h) = app
        .get(&format!("/orders/{id}?wait_ms=50"), Some(&token))
        .await;
    assert_eq!(s, 503, "a short wait times out");
    assert_eq!(h["retry-after"], "1");
    let path = format!("/orders/{id}?consistent_with={token}&wait_ms=20000");
    let fresh = app.get(&path, None);
    let projector = async {
        orders_service::Running::start(&projector_config)
            .await
            .expect("projector")
    };
    let ((fresh, o, _), projector) = tokio::join!(fresh, projector);
    assert_eq!((fresh, o["status"].as_str()), (200, Some("created")));
    projector.stop().await.expect("projector stops");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_wait_reports_the_read_models_version() {
    // The projector holds every batch back 3 s: the 30 ms wait ends first.
    let app = spawn_app(false, 3_000).await;
    let (id, token) = app.create().await;
    let (s, b, h) = app
        .get(&format!("/orders/{id}?wait_ms=30"), Some(&token))
        .await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(h["retry-after"], "1");
    assert_eq!(b["error"], "not_yet_consistent");
    assert_eq!(b["details"]["read_model_version"], 0);
    assert_eq!(b["details"]["token_version"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_a_write_that_never_happened_is_refused_at_once() {
    let app = spawn_app(false, 0).await;
    let (id, token) = app.create().await;
    assert_eq!(token, format!("v1.1.1.{id}"));
    // Version 1 is in the read model: a forged position is refused all the same.
    let (s, _, _) = app.get(&format!("/orders/{id}"), Some(&token)).await;
    assert_eq!(s, 200);
    let unknown = uuid::Uuid::now_v7();
    for forged in [
        format!("v1.1.9.{id}"),      // a version beyond the order's
        format!("v1.999.1.{id}"),    // a position beyond the log
        format!("v1.1.1.{unknown}"), // an order that does not exist
    ] {
        let started = std::time::Instant::now();
        let (s, b, h) = app
            .get(&format!("/orders/{id}?wait_ms=5000"), Some(&forged))
            .await;
        assert_eq!(s, 422, "{forged}: {b}");
        assert_eq!(b["error"], "token_not_issued", "{forged}");
        assert!(h.get("retry-after").is_none(), "no invitation to retry");
        assert!(
            started.elapsed() < std::time::Duration::from_millis(1_000),
            "{forged} was waited on for {:?}",
            started.elapsed()
        );
    }
    let (s, _, _) = app.get(&format!("/orders/{id}"), Some(&token)).await;
    assert_eq!(s, 200, "the real token still works");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_command_with_the_same_key_returns_the_first_answer() {
    let app = spawn_app(false, 0).await;
    let send = |body: Value, key: &'static str| {
        let req = app
            .http
            .post(format!("{}/orders", app.base))
            .header("idempotency-key", key)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap(),
                replayed,
            )
        }
    };
    let (s1, first, r1) = send(order_body(), "k-1").await;
    let (s2, again, r2) = send(order_body(), "k-1").await;
    assert_eq!((s1, s2, r1, r2), (201, 201, false, true));
    assert_eq!(first, again);
    let mut other = order_body();
    other["customer_id"] = json!("bob");
    let (s3, err, _) = send(other, "k-1").await;
    assert_eq!(
        (s3, err["error"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    let count = common::events_in(app.app().store.db()).await;
    assert_eq!(count, 1, "retries append nothing");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_payments_of_one_order_have_one_winner() {
    let app = spawn_app(true, 0).await;
    let (id, _) = app.create().await;
    let pay = json!({"amount_cents": 3800, "payment_ref": "p"});
    let path = format!("/orders/{id}/pay");
    let results = futures::future::join_all((0..50).map(|_| app.post(&path, pay.clone()))).await;
    let codes: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 409), "{codes:?}");
    let history = app.get(&format!("/orders/{id}/history"), None).await.1;
    let versions: Vec<i64> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2]);
    app.stop().await;
}
