//! The CQRS flow through a real Apache Kafka broker, over HTTP.

mod common;

use common::{order_body, spawn_kafka_app};
use serde_json::json;
use sqlx::Row;

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
    // The outbox row was marked with the coordinates Kafka gave it, and the
    // projector consumed exactly that record.
    let row = sqlx::query("SELECT published_at, partition_no, offset_no FROM outbox")
        .fetch_one(&app.app().store.db().pool)
        .await
        .unwrap();
    let (published, partition, offset): (Option<String>, Option<i64>, Option<i64>) =
        (row.get(0), row.get(1), row.get(2));
    assert!(published.is_some());
    let consumed: String =
        sqlx::query_scalar("SELECT published_as FROM projected_versions WHERE aggregate_id = $1")
            .bind(id)
            .fetch_one(&app.app().read.pool)
            .await
            .unwrap();
    assert_eq!(
        consumed,
        format!("{topic}/{}@{}", partition.unwrap(), offset.unwrap())
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
    let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(&app.app().store.db().pool)
        .await
        .unwrap();
    assert_eq!(pending, 0);
    app.stop().await;
}

/// `orders replay` rebuilds the read models from the topic into fresh tables
/// and swaps them in, while queries keep being answered.
async fn replay_rebuilds_what_the_fold_says(app: common::TestApp, extra: &[String]) {
    let mut token = String::new();
    for i in 0..30 {
        let (_, a, _) = app.post("/orders", order_body()).await;
        let id = a["order_id"].as_str().unwrap().to_owned();
        token = a["consistency_token"].as_str().unwrap().to_owned();
        if i % 3 == 0 {
            let (_, p, _) = app
                .post(
                    &format!("/orders/{id}/pay"),
                    json!({"amount_cents": 3800, "payment_ref": "p"}),
                )
                .await;
            token = p["consistency_token"].as_str().unwrap().to_owned();
        }
        if i % 5 == 0 {
            let (_, c, _) = app
                .post(&format!("/orders/{id}/cancel"), json!({"reason": "r"}))
                .await;
            token = c["consistency_token"].as_str().unwrap().to_owned();
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
    sqlx::query("UPDATE order_details SET status = 'lost'")
        .execute(&read.writer)
        .await
        .unwrap();
    // Queries keep being served during the replay.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let http = app.http.clone();
    let url = format!("{}/stats", app.base);
    let reader = tokio::spawn(async move {
        let mut answers = 0;
        while !*stop.borrow() {
            let status = http.get(&url).send().await.unwrap().status();
            assert_eq!(status, 200, "a query failed during the replay");
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
