//! What the real binary logs, and at which level: an answer the client is
//! told to retry (503 `not_yet_consistent`) is INFO, not ERROR.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{free_port, wait_healthy, Proc};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_not_yet_consistent_is_logged_at_info_not_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args: Vec<String> = [
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--data-dir".to_owned(),
        dir.path().join("data").display().to_string(),
        // The projector holds every batch for a minute: reads lag.
        "--projector-delay-ms".to_owned(),
        "60000".to_owned(),
    ]
    .into();
    let env = [("ORDERS_LOG_FORMAT", "json".to_owned())];
    let mut server = Proc::serve("lagging", dir.path(), &args, &env);
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base, &mut server).await;
    let http = reqwest::Client::new();
    let body = json!({ "customer_id": "c1",
        "items": [{ "sku": "pen", "quantity": 1, "unit_price_cents": 100 }] });
    let created: Value = http
        .post(format!("{base}/orders"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, token) = (
        created["order_id"].as_str().unwrap(),
        created["consistency_token"].as_str().unwrap(),
    );
    let res = http
        .get(format!(
            "{base}/orders/{id}?consistent_with={token}&wait_ms=50"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["error"], "not_yet_consistent");
    server.terminate();
    let lines: Vec<Value> = server
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let told = lines
        .iter()
        .find(|l| l["status"] == 503)
        .unwrap_or_else(|| panic!("the 503 is logged: {lines:?}"));
    assert_eq!(told["level"], "INFO", "{told}");
    let errors: Vec<&Value> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "{errors:?}");
}
