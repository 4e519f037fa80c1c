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
