//! Poison records and clients that are not ours, on a real broker.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{order_body, spawn_kafka_app};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn orders_cli(args: &[&str], database_url: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["dead-letters", "--database-url", database_url])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_record_is_dead_lettered_its_aggregate_parks_and_resumes_after_retry() {
    let app = spawn_kafka_app().await;
    let kafka = app.config.kafka.clone().unwrap();
    let db_url = app.config.database_url.clone().unwrap();
    let (x, token) = app.create().await;
    assert_eq!(
        app.get(&format!("/orders/{x}?wait_ms=20000"), Some(&token))
            .await
            .0,
        200
    );

    // A record that is not an event, written straight into the topic under X's key.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .unwrap();
    let headers = OwnedHeaders::new().insert(Header {
        key: "event_type",
        value: Some("OrderPaid".as_bytes()),
    });
    producer
        .send(
            FutureRecord::to(&kafka.topic)
                .key(&x)
                .payload("this is not json")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    // A real command on X after it: must wait behind the poison, not jump it.
    let (s, paid, _) = app
        .post(
            &format!("/orders/{x}/pay"),
            json!({"amount_cents": 3800, "payment_ref": "p"}),
        )
        .await;
    assert_eq!(s, 200, "{paid}");
    let paid_token = paid["consistency_token"].as_str().unwrap().to_owned();
    // The projector keeps going for everyone else.
    let (y, y_token) = app.create().await;
    assert_eq!(
        app.get(&format!("/orders/{y}?wait_ms=20000"), Some(&y_token))
            .await
            .0,
        200
    );
    // Once the pay record has been consumed and parked behind the poison...
    let deadline = Instant::now() + Duration::from_secs(30);
    let letters: Vec<Value> = loop {
        let (ok, listed) = orders_cli(&["list", "--json"], &db_url);
        assert!(ok, "{listed}");
        let letters: Vec<Value> = serde_json::from_str(&listed).unwrap();
        if letters.iter().any(|l| l["status"] == "parked") {
            break letters;
        }
        assert!(
            Instant::now() < deadline,
            "the pay record never parked: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let dead: Vec<&Value> = letters.iter().filter(|l| l["status"] == "dead").collect();
    let parked: Vec<&Value> = letters.iter().filter(|l| l["status"] == "parked").collect();
    assert_eq!((dead.len(), parked.len()), (1, 1), "{letters:?}");
    assert_eq!(dead[0]["aggregate_id"], x.as_str());
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("not JSON"),
        "{letters:?}"
    );
    assert_eq!(
        (
            parked[0]["aggregate_id"].as_str(),
            parked[0]["version"].as_i64()
        ),
        (Some(x.as_str()), Some(2))
    );
    // ...a read of X's payment can only time out: the record was consumed,
    // it is held back, not late.
    let (s, e, _) = app
        .get(&format!("/orders/{x}?wait_ms=300"), Some(&paid_token))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (503, Some("not_yet_consistent")),
        "{e}"
    );
    assert_eq!(e["details"]["read_model_version"], 1, "{e}");
    assert_eq!(
        app.get(&format!("/orders/{x}"), None).await.1["status"],
        "created"
    );

    // The dead-letter topic holds the poison with the error in its headers.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", format!("dlq-check-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer
        .subscribe(&[&format!("{}.dlq", kafka.topic)])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        assert!(
            Instant::now() < deadline,
            "nothing on the dead-letter topic"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            assert_eq!(m.key(), Some(x.as_bytes()));
            assert_eq!(m.payload(), Some("this is not json".as_bytes()));
            let h = m.headers().unwrap();
            let reason = h
                .iter()
                .find(|h| h.key == "dlq_reason")
                .and_then(|h| h.value)
                .unwrap();
            break String::from_utf8_lossy(reason).into_owned();
        }
    };
    assert!(reason.contains("not JSON"), "{reason}");

    // Retrying while the poison is still there changes nothing.
    let (ok, out) = orders_cli(&["retry", &x], &db_url);
    assert!(!ok && out.contains("still open"), "{out}");
    // Fix the cause (drop the poison), retry: X resumes, in order.
    let id = dead[0]["id"].as_str().unwrap();
    let (ok, out) = orders_cli(&["discard", id], &db_url);
    assert!(ok, "{out}");
    let (ok, out) = orders_cli(&["retry", &x], &db_url);
    assert!(ok && out.contains("1 applied, 0 still open"), "{out}");
    let (s, order, _) = app
        .get(&format!("/orders/{x}?wait_ms=20000"), Some(&paid_token))
        .await;
    assert_eq!(
        (s, order["status"].as_str(), order["version"].as_i64()),
        (200, Some("paid"), Some(2))
    );
    // And later events of X flow normally again.
    let (_, shipped, _) = app
        .post(
            &format!("/orders/{x}/ship"),
            json!({"carrier": "c", "tracking_number": "t"}),
        )
        .await;
    let (s, order, _) = app
        .get(
            &format!("/orders/{x}?wait_ms=20000"),
            shipped["consistency_token"].as_str(),
        )
        .await;
    assert_eq!((s, order["status"].as_str()), (200, Some("shipped")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_reads_the_documented_key_headers_and_json() {
    let app = spawn_kafka_app().await;
    let kafka = app.config.kafka.clone().unwrap();
    let (s, answer, _) = app.post("/orders", order_body()).await;
    assert_eq!(s, 201);
    let id = answer["order_id"].as_str().unwrap();
    app.get(
        &format!("/orders/{id}?wait_ms=20000"),
        answer["consistency_token"].as_str(),
    )
    .await;
    let out = std::process::Command::new("kcat")
        .args([
            "-C",
            "-b",
            &kafka.brokers,
            "-t",
            &kafka.topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-J",
        ])
        .output()
        .expect("kcat is installed by scripts/test (Debian package kcat)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let record: Value = serde_json::from_str(line.lines().next().expect("one record")).unwrap();
    assert_eq!(record["key"], id);
    let h: Vec<&str> = record["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let header = |k: &str| h.chunks(2).find(|c| c[0] == k).map(|c| c[1]);
    assert_eq!(header("event_type"), Some("OrderCreated"));
    assert_eq!(header("aggregate_type"), Some("order"));
    assert_eq!(header("aggregate_id"), Some(id));
    assert_eq!(header("aggregate_version"), Some("1"));
    assert_eq!(header("schema_version"), Some("3"), "OrderCreated is at v3");
    assert_eq!(header("command_id"), answer["command_id"].as_str());
    assert_eq!(header("trace_id"), answer["command_id"].as_str());
    assert_eq!(
        header("caller"),
        None,
        "no caller where the server checks none"
    );
    assert!(
        header("event_id").is_some()
            && header("occurred_at").is_some()
            && header("position").is_some()
    );
    let value: Value = serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
    assert_eq!(value["customer_id"], "alice");
    assert_eq!(value["total_cents"], 3800);
    app.stop().await;
}
