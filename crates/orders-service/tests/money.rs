//! Sums of money past i64: the read models and their JSON stay exact on both
//! databases, `/stats` keeps answering, and a read model written by a version
//! that stored sums in one BIGINT is carried over exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{spawn_app, TestApp};
use serde_json::{json, Value};

/// 100 items x 10,000 x 100,000,000 cents: the largest valid order, 10^14 cents.
const MAX_ORDER_CENTS: u64 = 100_000_000_000_000;
/// Seeded sums: 807 cents below i64::MAX.
const NEAR_I64_MAX: u64 = 9_223_372_036_854_775_000;

fn largest_order(customer: &str) -> Value {
    let items: Vec<Value> = (0..100)
        .map(|i| json!({"sku": format!("sku-{i}"), "quantity": 10_000, "unit_price_cents": 100_000_000}))
        .collect();
    json!({ "customer_id": customer, "items": items })
}

/// Creates the largest order (and pays it when asked); returns its id and
/// the last command's token.
async fn order(app: &TestApp, customer: &str, pay: bool) -> (String, String) {
    let (s, a, _) = app.post("/orders", largest_order(customer)).await;
    assert_eq!(s, 201, "{a}");
    let id = a["order_id"].as_str().unwrap().to_owned();
    let mut token = a["consistency_token"].as_str().unwrap().to_owned();
    if pay {
        let body = json!({"amount_cents": MAX_ORDER_CENTS, "payment_ref": "p"});
        let (s, a, _) = app.post(&format!("/orders/{id}/pay"), body).await;
        assert_eq!(s, 200, "{a}");
        token = a["consistency_token"].as_str().unwrap().to_owned();
    }
    (id, token)
}

/// Puts `value` into a stored sum the way this version stores it.
async fn seed(app: &TestApp, table: &str, col: &str, key: (&str, &str), value: u64) {
    let e18 = 1_000_000_000_000_000_000u64;
    let sql = format!(
        "UPDATE {table} SET {col}_e18 = {}, {col} = {} WHERE {} = $1",
        value / e18,
        value % e18,
        key.0
    );
    let done = sqlx::query(&sql)
        .bind(key.1)
        .execute(&app.app().read.writer)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 1);
}

async fn sums_past_i64_stay_exact(postgres: bool) {
    let app = spawn_app(postgres, 0).await;
    let (_, token) = order(&app, "whale", true).await;
    app.get("/stats", Some(&token)).await;
    seed(
        &app,
        "order_stats",
        "revenue_cents",
        ("status", "created"),
        NEAR_I64_MAX,
    )
    .await;
    seed(
        &app,
        "order_stats",
        "revenue_cents",
        ("status", "paid"),
        NEAR_I64_MAX,
    )
    .await;
    seed(
        &app,
        "customer_summary",
        "total_spent_cents",
        ("customer_id", "whale"),
        NEAR_I64_MAX,
    )
    .await;
    // Three more created, two of them paid: both sums cross i64::MAX.
    order(&app, "whale", false).await;
    order(&app, "whale", true).await;
    let (_, token) = order(&app, "whale", true).await;
    let (s, stats, _) = app.get("/stats", Some(&token)).await;
    assert_eq!(s, 200, "{stats}");
    let created = &stats["by_status"]["created"]["revenue_cents"];
    let paid = &stats["by_status"]["paid"]["revenue_cents"];
    assert_eq!(
        created.as_u64(),
        Some(NEAR_I64_MAX + MAX_ORDER_CENTS),
        "{stats}"
    );
    assert_eq!(
        paid.as_u64(),
        Some(NEAR_I64_MAX + 2 * MAX_ORDER_CENTS),
        "{stats}"
    );
    assert!(paid.as_u64().unwrap() > i64::MAX as u64);
    let (s, c, _) = app.get("/customers/whale/summary", Some(&token)).await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(
        c["total_spent_cents"].as_u64(),
        Some(NEAR_I64_MAX + 2 * MAX_ORDER_CENTS),
        "{c}"
    );
    // Back below the limit, exactly: a paid order cancelled refunds.
    let (id, _) = order(&app, "whale", true).await;
    let (s, a, _) = app
        .post(&format!("/orders/{id}/cancel"), json!({"reason": "r"}))
        .await;
    assert_eq!(s, 200, "{a}");
    let token = a["consistency_token"].as_str().unwrap();
    let (_, c, _) = app.get("/customers/whale/summary", Some(token)).await;
    assert_eq!(
        c["total_spent_cents"].as_u64(),
        Some(NEAR_I64_MAX + 2 * MAX_ORDER_CENTS)
    );
    let (s, live, _) = app.get("/readyz", None).await;
    assert_eq!(s, 200, "{live}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sums_past_i64_stay_exact_on_sqlite() {
    sums_past_i64_stay_exact(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sums_past_i64_stay_exact_on_postgres() {
    sums_past_i64_stay_exact(true).await;
}

/// A read DB from the version that kept each sum in one BIGINT, already near
/// the limit: the new column is added at start, the sum carried into it, and
/// the next orders push it past i64 exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_from_before_the_e18_columns_is_carried_over_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let read = cqrs_sql::Db::connect(
        &cqrs_sql::db::sqlite_url(&dir.path().join("read.db")),
        &cqrs_sql::DbOptions::default(),
    )
    .await
    .unwrap();
    for statement in [
        "CREATE TABLE order_stats (status TEXT PRIMARY KEY, order_count BIGINT NOT NULL, revenue_cents BIGINT NOT NULL)",
        "INSERT INTO order_stats VALUES ('created', 1, 9223372036854775000)",
    ] {
        sqlx::query(statement).execute(&read.writer).await.unwrap();
    }
    read.close().await;
    let app = common::spawn_with(orders_service::Config::embedded(dir.path()), dir).await;
    let (_, token) = order(&app, "whale", false).await;
    let (s, stats, _) = app.get("/stats", Some(&token)).await;
    assert_eq!(s, 200, "{stats}");
    assert_eq!(
        stats["by_status"]["created"]["revenue_cents"].as_u64(),
        Some(NEAR_I64_MAX + MAX_ORDER_CENTS),
        "{stats}"
    );
    app.stop().await;
}
