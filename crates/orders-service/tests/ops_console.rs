//! The operations API on real PostgreSQL and Kafka: poison records skipped
//! and early records retried, rebuilds started, watched and cancelled, the
//! processors as the broker sees their groups, and every action audited.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{spawn_app, spawn_kafka_app, TestApp};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Waits (20 s at most) until `GET path` answers something `done` accepts.
async fn until(app: &TestApp, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, body, _) = app.get(path, None).await;
        if s == 200 && done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {s} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(app: &TestApp, path: &str) -> (u16, Value) {
    let res = app
        .http
        .post(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

/// Both processors that consume the orders' topic, each in its own group.
const PROCESSORS: [&str; 2] = ["orders_read_model", "order_saga"];

/// `projector`'s letter of `aggregate` in `status`, once there is one.
async fn letter(app: &TestApp, projector: &str, aggregate: &str, status: &str) -> Value {
    let path = format!("/ops/dead-letters?projector={projector}");
    let what = format!("{projector} has a {status} letter of {aggregate}");
    let letters = until(app, &path, &what, |b| {
        b.as_array()
            .unwrap()
            .iter()
            .any(|l| l["status"] == status && l["aggregate_id"] == aggregate)
    })
    .await;
    letters
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["status"] == status && l["aggregate_id"] == aggregate)
        .unwrap()
        .clone()
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap()
}

/// Sends `payload` under `key` with `headers` straight into the topic, as a
/// client that is not ours (or a repartitioned history) would.
async fn send(p: &FutureProducer, topic: &str, key: &str, payload: &str, headers: OwnedHeaders) {
    p.send(
        FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_record_is_skipped_and_an_early_record_retried_from_the_api_each_audited() {
    let app = spawn_kafka_app().await;
    let kafka = app.config.kafka.clone().unwrap();
    let kafka_producer = producer(&kafka.brokers);
    let read = app.app().read.clone();

    // The processors as the broker sees them: the group has this process as
    // a member holding every partition.
    let procs = until(
        &app,
        "/ops/processors",
        "the projector's group has a member",
        |b| {
            b.as_array().unwrap().iter().any(|p| {
                p["name"] == "orders_read_model"
                    && p["members"].as_array().is_some_and(|m| m.len() == 1)
                    && p["partitions"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|s| s["member"].is_string())
            })
        },
    )
    .await;
    let orders = procs
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "orders_read_model")
        .unwrap();
    assert_eq!(orders["group"], format!("g-{}", kafka.topic));
    assert_eq!(orders["topic"], kafka.topic);
    assert_eq!(orders["group_state"], "Stable");
    assert_eq!(orders["state"], "running");
    let held: usize = orders["members"][0]["partitions"].as_array().unwrap().len();
    assert_eq!(held, orders["partitions"].as_array().unwrap().len());
    assert_eq!(orders["read_models"][0]["projection"], "order_details");

    // Skip: a record that is not an event, under X's key, then X paid: the
    // payment parks behind it, in the read model's projector and in the
    // saga (each consumes the topic in its own group).
    let (x, created) = app.create().await;
    // On the topic before the poison (the relay publishes in the background).
    let (s, _, _) = app
        .get(&format!("/orders/{x}?wait_ms=10000"), Some(&created))
        .await;
    assert_eq!(s, 200);
    let headers = OwnedHeaders::new().insert(Header {
        key: "event_type",
        value: Some("OrderPaid".as_bytes()),
    });
    send(
        &kafka_producer,
        &kafka.topic,
        &x,
        "this is not json",
        headers,
    )
    .await;
    let (s, paid, _) = app
        .post(
            &format!("/orders/{x}/pay"),
            json!({"amount_cents": 3800, "payment_ref": "p"}),
        )
        .await;
    assert_eq!(s, 200, "{paid}");
    let mut dead_x = Vec::new();
    for projector in PROCESSORS {
        let dead = letter(&app, projector, &x, "dead").await;
        let parked = letter(&app, projector, &x, "parked").await;
        assert_eq!(
            dead["raw"].as_str().map(|r| r.contains("this is not json")),
            Some(true),
            "{dead}"
        );
        assert!(dead["envelope"].is_null(), "{dead}");
        // The parked one's envelope, decoded: what it is, its payload.
        assert_eq!(parked["envelope"]["event_type"], "OrderPaid", "{parked}");
        assert_eq!(parked["envelope"]["version"], 2);
        assert_eq!(parked["envelope"]["payload"]["amount_cents"], 3800);
        dead_x.push(dead["id"].as_str().unwrap().to_owned());
    }
    let processors = until(&app, "/ops/processors", "the projector shows parked", |b| {
        b.as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "orders_read_model" && p["state"] == "parked")
    })
    .await;
    let orders = processors
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "orders_read_model")
        .unwrap();
    assert_eq!(
        (orders["dead_letters"].as_i64(), orders["parked"].as_i64()),
        (Some(1), Some(1))
    );

    // It cannot be retried (it never decoded): refused, and it stays;
    // skipped, the payment parked behind it is applied.
    for id in &dead_x {
        let (s, e) = post(&app, &format!("/ops/dead-letters/{id}/retry")).await;
        assert_eq!(
            (s, e["error"].as_str()),
            (409, Some("not_retryable")),
            "{e}"
        );
        let (s, skipped) = post(&app, &format!("/ops/dead-letters/{id}/skip")).await;
        assert_eq!(s, 200, "{skipped}");
        assert_eq!(skipped["letter"]["status"], "discarded");
        assert_eq!(
            (skipped["applied"].as_u64(), skipped["left"].as_u64()),
            (Some(1), Some(0))
        );
    }
    let token = paid["consistency_token"].as_str().unwrap();
    let (s, order, _) = app
        .get(&format!("/orders/{x}?wait_ms=5000"), Some(token))
        .await;
    assert_eq!(
        (s, order["status"].as_str()),
        (200, Some("paid")),
        "{order}"
    );
    let (s, e) = post(&app, &format!("/ops/dead-letters/{}/skip", dead_x[0])).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (409, Some("dead_letter_closed")),
        "{e}"
    );

    // Retry: Y's version 3 arrives before its version 2 (as after a
    // repartition): dead for the gap; version 2 parks behind it; one retry
    // applies both, in order.
    let (y, created) = app.create().await;
    let (s, _, _) = app
        .get(&format!("/orders/{y}?wait_ms=10000"), Some(&created))
        .await;
    assert_eq!(s, 200);
    let store = app.app().store.clone();
    let created = cqrs_sql::EventStore::load(&store, &y)
        .await
        .unwrap()
        .remove(0);
    let mut early = created.clone();
    early.version = 3;
    early.position = created.position + 1_000_000;
    early.event_id = uuid::Uuid::new_v4().to_string();
    early.event_type = "OrderShipped".into();
    early.schema_version = 1;
    early.payload = json!({ "carrier": "ups", "tracking_number": "1Z" });
    let headers = cqrs_kafka::record::headers_of(&early, store.id(), None);
    send(
        &kafka_producer,
        &kafka.topic,
        &y,
        &early.payload.to_string(),
        headers,
    )
    .await;
    let mut early_ids = Vec::new();
    for projector in PROCESSORS {
        let dead = letter(&app, projector, &y, "dead").await;
        assert!(
            dead["reason"].as_str().unwrap().contains("version gap"),
            "{dead}"
        );
        early_ids.push(dead["id"].as_str().unwrap().to_owned());
    }
    // Retrying now: version 2 is not there yet, nothing applies.
    let (s, r) = post(&app, &format!("/ops/dead-letters/{}/retry", early_ids[0])).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (
            r["applied"].as_u64(),
            r["left"].as_u64(),
            r["letter"]["status"].as_str()
        ),
        (Some(0), Some(1), Some("dead"))
    );
    let (s, paid, _) = app
        .post(
            &format!("/orders/{y}/pay"),
            json!({"amount_cents": 3800, "payment_ref": "p"}),
        )
        .await;
    assert_eq!(s, 200, "{paid}");
    for (projector, id) in PROCESSORS.iter().zip(&early_ids) {
        letter(&app, projector, &y, "parked").await;
        let (s, r) = post(&app, &format!("/ops/dead-letters/{id}/retry")).await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(
            (
                r["applied"].as_u64(),
                r["left"].as_u64(),
                r["letter"]["status"].as_str()
            ),
            (Some(2), Some(0), Some("retried")),
            "{r}"
        );
    }
    let (s, order, _) = app.get(&format!("/orders/{y}"), None).await;
    assert_eq!(
        (s, order["status"].as_str(), order["version"].as_i64()),
        (200, Some("shipped"), Some(3)),
        "{order}"
    );
    // Nothing of either is open any more.
    let (_, open, _) = app.get("/ops/dead-letters", None).await;
    assert_eq!(open, json!([]));

    // Every action audited, in the table and the same as the API lists.
    let (_, audited, _) = app.get("/ops/actions", None).await;
    let seen: Vec<(String, String, String)> = audited
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|a| {
            (
                a["action"].as_str().unwrap().into(),
                a["target"].as_str().unwrap().into(),
                a["outcome"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("dead_letter.retry", dead_x[0].as_str(), "refused"),
        ("dead_letter.skip", &dead_x[0], "done"),
        ("dead_letter.retry", &dead_x[1], "refused"),
        ("dead_letter.skip", &dead_x[1], "done"),
        ("dead_letter.skip", &dead_x[0], "refused"),
        ("dead_letter.retry", &early_ids[0], "done"),
        ("dead_letter.retry", &early_ids[0], "done"),
        ("dead_letter.retry", &early_ids[1], "done"),
    ]
    .iter()
    .map(|(a, t, o)| ((*a).into(), (*t).into(), (*o).into()))
    .collect();
    assert_eq!(seen, want);
    let rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM ops_actions WHERE actor = 'unchecked'")
            .fetch_one(&read.pool)
            .await
            .unwrap();
    assert_eq!(rows, 8);
    app.stop().await;
}

/// Names of the read DB's tables like `pattern`.
async fn tables_like(read: &cqrs_sql::Db, pattern: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() AND tablename LIKE $1")
        .bind(pattern)
        .fetch_all(&read.pool)
        .await
        .unwrap()
}

/// The orders' read models once a rebuild's end is audited.
async fn finished_rebuild(app: &TestApp, what: &str) -> Value {
    until(app, "/ops/rebuilds/orders_read_model", what, |b| {
        b["last"]["action"] == "rebuild.finish"
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_is_started_watched_and_cancelled_from_the_api() {
    let app = spawn_app(true, 0).await;
    let read = app.app().read.clone();
    let mut last = String::new();
    for _ in 0..40 {
        last = app.create().await.1;
    }
    app.get(
        &format!("/orders?consistent_with={last}&wait_ms=10000"),
        None,
    )
    .await;

    // Started: answered once claimed; watched until it is swapped in.
    let res = app
        .post("/ops/rebuilds", json!({ "projector": "orders_read_model" }))
        .await;
    assert_eq!(res.0, 202, "{}", res.1);
    assert_eq!(res.1["last"]["action"], "rebuild.start", "{}", res.1);
    let done = finished_rebuild(&app, "the rebuild finished").await;
    assert_eq!(done["last"]["outcome"], "done", "{done}");
    assert!(done["running"].is_null(), "{done}");
    let events = done["last"]["detail"]["events"].as_u64().unwrap();
    assert!(events >= 40, "{done}");
    // The saga has no read models to rebuild.
    let res = app
        .post("/ops/rebuilds", json!({ "projector": "order_saga" }))
        .await;
    assert_eq!(
        (res.0, res.1["error"].as_str()),
        (422, Some("invalid_body")),
        "{}",
        res.1
    );
    let res = app
        .post(
            "/ops/rebuilds",
            json!({ "projector": "orders_read_model", "projections": ["nope"] }),
        )
        .await;
    assert_eq!(
        (res.0, res.1["error"].as_str()),
        (422, Some("invalid_body")),
        "{}",
        res.1
    );
    // Queries still answer, from the swapped-in tables.
    let (s, list, _) = app.get("/orders?limit=100", None).await;
    assert_eq!(
        (s, list["orders"].as_array().map(Vec::len)),
        (200, Some(40))
    );

    // Cancelled: a build held where it reads the live checkpoints (this
    // test locks their table), cancelled from the API: it stops, its tables
    // go, the live read model keeps serving.
    let mut lock = read.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE projector_checkpoints IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let res = app
        .post("/ops/rebuilds", json!({ "projector": "orders_read_model" }))
        .await;
    assert_eq!(res.0, 202, "{}", res.1);
    let running = until(
        &app,
        "/ops/rebuilds/orders_read_model",
        "the build runs",
        |b| b["running"]["alive"] == true,
    )
    .await;
    assert_eq!(
        running["running"]["versions"]["order_details"], 2,
        "{running}"
    );
    assert!(
        !tables_like(&read, "order_details__v%").await.is_empty(),
        "the build's tables exist"
    );
    // A second start is refused while it runs.
    let res = app
        .post("/ops/rebuilds", json!({ "projector": "orders_read_model" }))
        .await;
    assert_eq!(
        (res.0, res.1["error"].as_str()),
        (409, Some("rebuild_running")),
        "{}",
        res.1
    );
    let (s, cancelled) = post(&app, "/ops/rebuilds/orders_read_model/cancel").await;
    assert_eq!(s, 202, "{cancelled}");
    assert_eq!(cancelled["last"]["action"], "rebuild.cancel");
    let ended = finished_rebuild(&app, "the build stopped").await;
    assert_eq!(ended["last"]["outcome"], "cancelled", "{ended}");
    assert!(ended["running"].is_null(), "{ended}");
    lock.rollback().await.unwrap();
    assert_eq!(
        tables_like(&read, "order_details__v%").await,
        Vec::<String>::new()
    );
    let (s, list, _) = app.get("/orders?limit=100", None).await;
    assert_eq!(
        (s, list["orders"].as_array().map(Vec::len)),
        (200, Some(40))
    );
    let (s, e) = post(&app, "/ops/rebuilds/orders_read_model/cancel").await;
    assert_eq!(
        (s, e["error"].as_str()),
        (404, Some("no_rebuild_running")),
        "{e}"
    );

    let (_, audited, _) = app.get("/ops/actions", None).await;
    let seen: Vec<String> = audited
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|a| {
            format!(
                "{} {}",
                a["action"].as_str().unwrap(),
                a["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            "rebuild.start started",
            "rebuild.finish done",
            "rebuild.start started",
            "rebuild.start refused",
            "rebuild.cancel done",
            "rebuild.finish cancelled",
            "rebuild.cancel refused"
        ]
    );
    app.stop().await;
}
