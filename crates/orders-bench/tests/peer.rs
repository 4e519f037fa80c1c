//! The baseline measures what it says: every order created and paid through
//! cqrs-es lands in postgres-es's event table, and the rate counts both
//! commands of each order.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_is_created_and_paid_and_both_commands_are_counted() {
    let url = test_support::fresh_postgres_url().await;
    let out = Command::new(env!("CARGO_BIN_EXE_cqrs-es-peer"))
        .args([
            "--database-url",
            &url,
            "--orders",
            "40",
            "--concurrency",
            "4",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["commands"], 80);
    assert!(report["commands_per_sec"].as_f64().is_some_and(|r| r > 0.0));
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let by_type: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, COUNT(*) FROM events WHERE aggregate_type = 'Order' GROUP BY event_type ORDER BY event_type",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        by_type,
        [
            ("OrderCreated".to_owned(), 40),
            ("OrderPaid".to_owned(), 40)
        ]
    );
}
