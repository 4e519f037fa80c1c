//! The CQRS flow through a real Apache Kafka broker, over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{order_body, spawn_kafka_app};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_six_steps_through_kafka() {
    let app = spawn_kafka_app().await;
    let topic = app.config_topic();
    // 1. Command sent.
    let (status, answer, _) = app.post("/orders", order_body()).await;
    assert_eq!(status, 201, "{answer}");
    let id = answer["order_id"].as_str().unwrap();
    let token = answer["consistency_token"].as_str().unwrap();
    // 2-4. Handled and written, published to Kafka, consumed and applied: the
    // consistent query waits for exactly that.
    let (status, order, _) = app
        .get(&format!("/orders/{id}?wait_ms=20000"), Some(token))
        .await;
    assert_eq!(status, 200, "{order}");
    // 5-6. The query handler answers from the read DB.
    assert_eq!(
        (order["status"].as_str(), order["total_cents"].as_i64()),
        (Some("created"), Some(3800))
    );
    // The relay's checkpoint passed the event once its delivery report came
    // back, the batch's publication time is recorded for the trace, and the
    // projector consumed the record from the topic.
    let store = &app.app().store;
    let position = cqrs_sql::EventStore::position_of(store, id, 1)
        .await
        .unwrap()
        .expect("the event has a position");
    // The projector may apply the record before the relay stores its report.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.relay_checkpoint().await.unwrap() < position {
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpoint never passed the event"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(store.published_at(position).await.unwrap().is_some());
    let consumed = common::applied_from(&app.app().read, id).await;
    assert!(
        consumed.starts_with(&format!("{topic}/")) && consumed.contains('@'),
        "{consumed}"
    );
    // The whole life of the order flows the same way, in order.
    for (verb, body, status) in [
        (
            "pay",
            json!({"amount_cents": 3800, "payment_ref": "p"}),
            "paid",
        ),
        (
            "ship",
            json!({"carrier": "dhl", "tracking_number": "T"}),
            "shipped",
        ),
        ("deliver", json!({}), "delivered"),
    ] {
        let (s, a, _) = app.post(&format!("/orders/{id}/{verb}"), body).await;
        assert_eq!(s, 200, "{a}");
        let (_, o, _) = app
            .get(
                &format!("/orders/{id}?wait_ms=20000"),
                a["consistency_token"].as_str(),
            )
            .await;
        assert_eq!(o["status"], status);
    }
    let store = &app.app().store;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cqrs_sql::EventStore::outbox_pending(store).await.unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "events left unpublished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    app.stop().await;
}

/// The aggregate version a consistency token (`v1.<position>.<version>.<id>`) asks for.
fn token_version(token: &str) -> i64 {
    token.split('.').nth(2).unwrap().parse().unwrap()
}

/// `orders replay` rebuilds the read models from the topic into fresh tables
/// and swaps them in, while queries keep being answered.
async fn replay_rebuilds_what_the_fold_says(app: common::TestApp, extra: &[String]) {
    let mut token = String::new();
    let mut tokens: Vec<(String, String)> = Vec::new();
    for i in 0..30 {
        let (_, a, _) = app.post("/orders", order_body()).await;
        let id = a["order_id"].as_str().unwrap().to_owned();
        token = a["consistency_token"].as_str().unwrap().to_owned();
        tokens.push((id.clone(), token.clone()));
        if i % 3 == 0 {
            let (_, p, _) = app
                .post(
                    &format!("/orders/{id}/pay"),
                    json!({"amount_cents": 3800, "payment_ref": "p"}),
                )
                .await;
            token = p["consistency_token"].as_str().unwrap().to_owned();
            tokens.push((id.clone(), token.clone()));
        }
        if i % 5 == 0 {
            let (_, c, _) = app
                .post(&format!("/orders/{id}/cancel"), json!({"reason": "r"}))
                .await;
            token = c["consistency_token"].as_str().unwrap().to_owned();
            tokens.push((id.clone(), token.clone()));
        }
    }
    assert_eq!(app.get("/stats?wait_ms=20000", Some(&token)).await.0, 200);
    // Damage the live read models: only a rebuild from the log repairs this.
    let read = &app.app().read;
    sqlx::query("UPDATE order_stats SET order_count = 999")
        .execute(&read.writer)
        .await
        .unwrap();
    sqlx::query("UPDATE customer_summary SET total_spent_cents = -1")
        .execute(&read.writer)
        .await
        .unwrap();
    sqlx::query("UPDATE order_details SET status = 'delivered', version = version + 100")
        .execute(&read.writer)
        .await
        .unwrap();
    // Queries keep being served during the replay, plain and with tokens:
    // every token answered before is answered during and after it, at its
    // version or later.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let http = app.http.clone();
    let base = app.base.clone();
    let held = tokens.clone();
    let reader = tokio::spawn(async move {
        let mut answers = 0;
        while !*stop.borrow() {
            let status = http
                .get(format!("{base}/stats"))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200, "a query failed during the replay");
            let (id, token) = &held[answers % held.len()];
            let res = http
                .get(format!("{base}/orders/{id}?wait_ms=5000"))
                .header("x-consistency-token", token)
                .send()
                .await
                .unwrap();
            let status = res.status();
            let order: serde_json::Value = res.json().await.unwrap();
            assert_eq!(
                status, 200,
                "a token read failed during the replay: {order}"
            );
            assert!(
                order["version"].as_i64().unwrap() >= token_version(token),
                "{order} {token}"
            );
            answers += 1;
        }
        answers
    });
    let db_url = app.config.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}",
            app.config.data_dir.join("write.db").display()
        )
    });
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["replay", "--projection", "all", "--database-url", &db_url])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("swapped in"), "{text}");
    stop_tx.send(true).unwrap();
    assert!(reader.await.unwrap() > 0);
    let events = app.app().store.all_events().await.unwrap();
    let folded = orders::views::Views::fold(&events).unwrap();
    let loaded = orders::read_model::load_views(&read.pool).await.unwrap();
    assert_eq!(
        loaded, folded,
        "the rebuilt read models equal the fold of the write side"
    );
    // Answers cached before the cutover (the damaged rows) are not served
    // after it: the cutover's mark reaches this process's cache.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for (id, view) in &folded.orders {
        loop {
            let (s, o, _) = app.get(&format!("/orders/{id}"), None).await;
            assert_eq!(s, 200, "{o}");
            if (o["status"].as_str(), o["version"].as_i64())
                == (Some(view.status.as_str()), Some(view.version))
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a stale answer after the cutover: {o}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    // Every token answered before the cutover is answered after it at once.
    for (id, token) in &tokens {
        let (s, o, _) = app
            .get(&format!("/orders/{id}?wait_ms=0"), Some(token))
            .await;
        assert_eq!(s, 200, "{o}");
        assert!(
            o["version"].as_i64().unwrap() >= token_version(token),
            "{o}"
        );
    }
    // The live projector carries on with the swapped tables.
    let (_, a, _) = app.post("/orders", order_body()).await;
    let (s, o, _) = app
        .get(
            &format!("/orders/{}?wait_ms=20000", a["order_id"].as_str().unwrap()),
            a["consistency_token"].as_str(),
        )
        .await;
    assert_eq!((s, o["status"].as_str()), (200, Some("created")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_from_kafka_rebuilds_and_swaps_while_serving() {
    let app = spawn_kafka_app().await;
    let k = app.config.kafka.clone().unwrap();
    let extra = vec![
        "--kafka-brokers".to_owned(),
        k.brokers,
        "--kafka-topic".to_owned(),
        k.topic,
    ];
    replay_rebuilds_what_the_fold_says(app, &extra).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_from_the_embedded_log_rebuilds_and_swaps_while_serving() {
    let app = common::spawn_app(false, 0).await;
    let dir = app.config.data_dir.display().to_string();
    replay_rebuilds_what_the_fold_says(app, &["--data-dir".to_owned(), dir]).await;
}

/// Runs `orders replay` with `args`; kills it after `secs` (a replay that
/// cannot finish must not hang the suite). Returns (success, stdout+stderr).
fn replay_within(secs: u64, args: &[String]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["replay", "--projection", "all"])
        .args(args)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let text = format!(
        "{}{}",
        std::fs::read_to_string(out_path).unwrap_or_default(),
        std::fs::read_to_string(err_path).unwrap_or_default()
    );
    match status {
        Some(s) => (s.success(), text),
        None => panic!("replay still running after {secs} s:\n{text}"),
    }
}

/// Creates five orders and waits until the read model has them.
async fn create_five(app: &common::TestApp) {
    let mut token = String::new();
    for _ in 0..5 {
        let (_, a, _) = app.post("/orders", order_body()).await;
        token = a["consistency_token"].as_str().unwrap().to_owned();
    }
    assert_eq!(app.get("/stats?wait_ms=20000", Some(&token)).await.0, 200);
}

/// The README's own order: a database served embedded first, then with
/// Kafka. Replay follows the source the read model follows now, and refuses
/// the stale one at once instead of waiting for a checkpoint it cannot reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_after_moving_from_the_embedded_log_to_kafka_follows_kafka() {
    let url = test_support::fresh_postgres_url().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = orders_service::Config::embedded(dir.path());
    config.database_url = Some(url.clone());
    let embedded = common::spawn_with(config.clone(), dir).await;
    create_five(&embedded).await;
    embedded.stop().await;
    let topic = test_support::unique_topic();
    config.kafka = Some(common::kafka_options(&topic));
    let dir = tempfile::tempdir().unwrap();
    config.data_dir = dir.path().to_owned();
    let with_kafka = common::spawn_with(config, dir).await;
    create_five(&with_kafka).await;
    let brokers = test_support::kafka_brokers();
    let base = vec!["--database-url".to_owned(), url.clone()];
    let (ok, text) = replay_within(10, &base);
    assert!(
        !ok,
        "replaying the stale embedded log must be refused: {text}"
    );
    assert!(text.contains("the live read model follows"), "{text}");
    let mut kafka_args = base.clone();
    kafka_args.extend([
        "--kafka-brokers".to_owned(),
        brokers,
        "--kafka-topic".to_owned(),
        topic,
    ]);
    let (ok, text) = replay_within(60, &kafka_args);
    assert!(ok, "{text}");
    assert!(text.contains("swapped in"), "{text}");
    assert!(text.contains("followed log before topic"), "{text}");
    let events = with_kafka.app().store.all_events().await.unwrap();
    let folded = orders::views::Views::fold(&events).unwrap();
    let loaded = orders::read_model::load_views(&with_kafka.app().read.pool)
        .await
        .unwrap();
    assert_eq!(loaded.orders.len(), 10);
    assert_eq!(loaded, folded);
    with_kafka.stop().await;
}
