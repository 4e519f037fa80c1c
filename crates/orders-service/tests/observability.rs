//! Metrics and readiness, scraped as Prometheus and a load balancer would.

mod common;

use common::{free_port, spawn_kafka_app, wait_healthy, Cluster};
use serde_json::json;
use std::time::{Duration, Instant};

/// Sum of a metric's samples (all label sets) in Prometheus text.
fn sum_of(text: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

async fn scrape(base: &str) -> String {
    let r = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    r.text().await.unwrap()
}

async fn wait_metric(base: &str, name: &str, ok: impl Fn(f64) -> bool, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = scrape(base).await;
        if sum_of(&text, name).is_some_and(&ok) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}; last scrape:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lag_gauge_rises_while_the_projector_is_stopped_and_falls_after_it_restarts() {
    let cluster = Cluster::new().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = cluster.start("api", "api,relay", Some(port), &[]);
    wait_healthy(&base, &mut api).await;
    let mut projector = cluster.start("projector-1", "projector", None, &[]);
    let http = reqwest::Client::new();
    let create = || async {
        let body = json!({"customer_id": "m", "items": [{"sku": "s", "quantity": 1, "unit_price_cents": 1}]});
        let a: serde_json::Value = http
            .post(format!("{base}/orders"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            a["order_id"].as_str().unwrap().to_owned(),
            a["consistency_token"].as_str().unwrap().to_owned(),
        )
    };
    let (id, token) = create().await;
    let r = http
        .get(format!("{base}/orders/{id}?wait_ms=30000"))
        .header("x-consistency-token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = wait_metric(
        &base,
        "cqrs_projector_lag_records",
        |v| v == 0.0,
        "lag never settled at 0",
    )
    .await;
    for name in [
        "orders_commands_total{command=\"CreateOrder\",outcome=\"ok\"}",
        "cqrs_outbox_pending",
        "cqrs_relay_published_total",
        "cqrs_consistency_waits_total{outcome=\"reached\"}",
        "orders_command_duration_seconds_bucket",
        "cqrs_outbox_oldest_pending_age_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    assert!(projector.terminate().success());
    for _ in 0..20 {
        create().await;
    }
    wait_metric(
        &base,
        "cqrs_projector_lag_records",
        |v| v >= 20.0,
        "lag did not rise while the projector was stopped",
    )
    .await;
    let text = scrape(&base).await;
    assert!(
        sum_of(&text, "cqrs_projector_lag_seconds").is_some(),
        "{text}"
    );
    projector = cluster.start("projector-2", "projector", None, &[]);
    wait_metric(
        &base,
        "cqrs_projector_lag_records",
        |v| v == 0.0,
        "lag did not fall back to 0 after the restart",
    )
    .await;
    cluster
        .wait_converged(60, &mut [&mut api, &mut projector])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_each_dependency_and_fails_with_the_reason() {
    let app = spawn_kafka_app().await;
    let (s, body, _) = app.get("/readyz", None).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body,
        json!({"ready": true, "checks": {"write_db": "ok", "read_db": "ok", "kafka": "ok"}})
    );
    app.app().read.pool.close().await;
    let (s, body, _) = app.get("/readyz", None).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["ready"], false);
    // Here the write and read databases share one pool, so both fail.
    assert!(
        body["checks"]["read_db"]
            .as_str()
            .is_some_and(|r| r.contains("closed")),
        "{body}"
    );
    assert_eq!(body["checks"]["kafka"], "ok");
    let (s, _, _) = app.get("/healthz", None).await;
    assert_eq!(s, 200, "alive even when not ready");
}
