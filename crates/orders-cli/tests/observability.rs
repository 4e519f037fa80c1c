//! Metrics and readiness, scraped as Prometheus and a load balancer would.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

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
        let a = common::create_order_at(&http, &base, "m", 1).await;
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
        json!({"ready": true, "checks": {"write_db": "ok", "inventory_db": "ok", "read_db": "ok", "kafka": "ok"}})
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

/// A write DB that answers reads but refuses writes (a read-only
/// transaction default, as on a standby) is not ready, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_when_the_write_db_refuses_writes() {
    let app = common::spawn_app(true, 0).await;
    let (s, body, _) = app.get("/readyz", None).await;
    assert_eq!(s, 200, "{body}");
    let url = app.config.database_url.clone().unwrap();
    let name = url.rsplit('/').next().unwrap().to_owned();
    let admin = cqrs_sql::Db::connect(&test_support::postgres_admin_url(), &Default::default())
        .await
        .unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE {name} SET default_transaction_read_only = on"
    ))
    .execute(&admin.pool)
    .await
    .unwrap();
    // Sessions pick the default up when they connect: make the pools reconnect.
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&name)
        .execute(&admin.pool)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let body = loop {
        let (s, body, _) = app.get("/readyz", None).await;
        if s == 503
            && body["checks"]["write_db"]
                .as_str()
                .is_some_and(|r| r.contains("read-only"))
        {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still ready: {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["ready"], false);
    let (s, e, _) = app.post("/orders", common::order_body()).await;
    assert_eq!((s, e["error"].as_str()), (503, Some("unavailable")), "{e}");
    sqlx::query(&format!(
        "ALTER DATABASE {name} RESET default_transaction_read_only"
    ))
    .execute(&admin.pool)
    .await
    .unwrap();
}

/// API and projector in separate processes over Kafka: a query with the
/// token after each command always sees that command; one without may not;
/// with the projector stopped, a token wait ends in 503 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_give_read_your_writes_across_processes_on_every_query_route() {
    let cluster = Cluster::new().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = cluster.start("api", "api,relay", Some(port), &[]);
    wait_healthy(&base, &mut api).await;
    // A slow projector makes the stale read observable.
    let slow = [("ORDERS_PROJECTOR_DELAY_MS", "300".to_owned())];
    let mut projector = cluster.start("projector", "projector", None, &slow);
    let http = reqwest::Client::new();
    let get = |path: String, token: Option<String>| {
        let http = http.clone();
        async move {
            let mut req = http.get(path);
            if let Some(t) = token {
                req = req.header("x-consistency-token", t);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, r.json::<serde_json::Value>().await.unwrap(), retry)
        }
    };
    let mut stale_seen = 0;
    for i in 1..=5 {
        let a = common::create_order_at(&http, &base, "rw", 100).await;
        let id = a["order_id"].as_str().unwrap().to_owned();
        let token = a["consistency_token"].as_str().unwrap().to_owned();
        let (s, _, _) = get(format!("{base}/orders/{id}"), None).await;
        if s == 404 {
            stale_seen += 1;
        }
        let (s, o, _) = get(
            format!("{base}/orders/{id}?wait_ms=20000"),
            Some(token.clone()),
        )
        .await;
        assert_eq!((s, o["status"].as_str()), (200, Some("created")));
        let (_, c, _) = get(format!("{base}/customers/rw/summary"), Some(token.clone())).await;
        assert_eq!(c["order_count"], i);
        let (_, st, _) = get(format!("{base}/stats"), Some(token.clone())).await;
        assert_eq!(st["total_orders"], i);
        let (_, l, _) = get(format!("{base}/orders?customer_id=rw"), Some(token)).await;
        assert_eq!(l["orders"].as_array().unwrap().len(), i as usize);
    }
    assert!(
        stale_seen > 0,
        "with the projector 300 ms behind, a tokenless read right after a command is stale"
    );
    assert!(projector.terminate().success());
    let a = common::create_order_at(&http, &base, "rw", 100).await;
    let token = a["consistency_token"].as_str().unwrap().to_owned();
    let (s, e, retry) = get(format!("{base}/stats?wait_ms=500"), Some(token)).await;
    assert_eq!(
        (s, e["error"].as_str(), retry.as_deref()),
        (503, Some("not_yet_consistent"), Some("1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_or_projector_alone_answers_health_and_metrics_and_binds_first() {
    let cluster = Cluster::new().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut relay = cluster.start("relay", "relay", Some(port), &[]);
    wait_healthy(&base, &mut relay).await;
    // Its log (a file, not a terminal) is one JSON object per line, with one
    // line per dependency at start: where, and how long it took.
    let text = relay.log_text();
    // Whole lines only: the relay may be writing the next one.
    let lines: Vec<serde_json::Value> = text[..text.rfind('\n').map_or(0, |i| i + 1)]
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    let line = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {lines:?}"))
    };
    let db = line("database connected");
    assert!(db["elapsed_ms"].is_u64(), "{db}");
    assert!(
        db["database"].as_str().is_some_and(|u| u.contains(":***@")),
        "{db}"
    );
    let kafka = line("kafka connected");
    assert!(
        kafka["elapsed_ms"].is_u64() && kafka["brokers"].as_u64() >= Some(1),
        "{kafka}"
    );
    assert!(
        kafka["partitions"].as_i64() > Some(0) && kafka["topic"].is_string(),
        "{kafka}"
    );
    let metrics = wait_metric(&base, "cqrs_outbox_pending", |_| true, "the relay's gauges").await;
    assert!(metrics.contains("cqrs_outbox_pending"), "{metrics}");
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    // No API on it: a command has nowhere to go.
    let res = reqwest::Client::new()
        .post(format!("{base}/orders"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // A projector told to listen on that taken port stops before it joins
    // the consumer group.
    let mut projector = cluster.start("projector", "projector", Some(port), &[]);
    let status = projector
        .wait_exit(Duration::from_secs(20))
        .expect("the projector exits");
    assert!(!status.success());
    let log = projector.log_text();
    assert!(
        log.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{log}"
    );
    assert!(
        !log.contains("partitions assigned"),
        "it joined the group first:\n{log}"
    );
    drop(relay);
}

/// The `(event, data)` pairs of a Server-Sent Events stream until `done`
/// says to stop (or 20 s pass).
async fn sse_until(
    mut res: reqwest::Response,
    mut done: impl FnMut(&str, &serde_json::Value) -> bool,
) -> Vec<(String, serde_json::Value)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut buf, mut seen) = (String::new(), Vec::new());
    while Instant::now() < deadline {
        let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_secs(1), res.chunk()).await
        else {
            continue;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let field = |k: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(str::to_owned)
            };
            let (Some(event), Some(data)) = (field("event: "), field("data: ")) else {
                continue;
            };
            let data: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
            let stop = done(&event, &data);
            seen.push((event, data));
            if stop {
                return seen;
            }
        }
    }
    panic!("the stream did not deliver in 20 s: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_says_its_mode_and_carries_a_followed_journey_to_the_end() {
    let app = common::spawn_app(false, 0).await;
    let (s, created, _) = app.post("/orders", common::order_body()).await;
    assert_eq!(s, 201, "{created}");
    let command = created["command_id"].as_str().unwrap().to_owned();
    let res = app
        .http
        .get(format!("{}/stream?follow={command}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let stages_done = |j: &serde_json::Value| {
        j["stages"]
            .as_array()
            .map_or(0, |s| s.iter().filter(|s| !s["at"].is_null()).count())
    };
    // Applied: five stages; the consistent read then makes the sixth.
    let mut queried = false;
    let seen = sse_until(res, |event, data| {
        if event == "journey" && stages_done(data) == 5 && !queried {
            queried = true;
            let (http, url, token) = (
                app.http.clone(),
                format!(
                    "{}/orders/{}",
                    app.base,
                    created["order_id"].as_str().unwrap()
                ),
                created["consistency_token"].as_str().unwrap().to_owned(),
            );
            tokio::spawn(async move {
                http.get(url)
                    .header("x-consistency-token", token)
                    .send()
                    .await
            });
        }
        event == "journey" && stages_done(data) == 6
    })
    .await;
    assert_eq!(seen[0].0, "mode", "{seen:?}");
    assert_eq!(seen[0].1["kafka"], serde_json::Value::Null);
    let journeys: Vec<&serde_json::Value> = seen
        .iter()
        .filter(|(e, _)| e == "journey")
        .map(|(_, d)| d)
        .collect();
    assert!(journeys.iter().all(|j| j["command_id"] == command.as_str()));
    assert!(seen.iter().any(|(e, _)| e == "view"), "{seen:?}");

    // A follow list that is not command ids, or too long, is refused.
    for bad in ["nope".to_owned(), vec![command.clone(); 9].join(",")] {
        let (s, body, _) = app.get(&format!("/stream?follow={bad}"), None).await;
        assert_eq!(
            (s, body["details"]["field"].as_str()),
            (400, Some("follow")),
            "{body}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_mode_reports_no_outbox_that_only_a_relay_would_drain() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        dir.path().display().to_string(),
    ];
    let mut server = common::Proc::serve("embedded", dir.path(), &args, &[]);
    wait_healthy(&base, &mut server).await;
    let res = reqwest::Client::new()
        .post(format!("{base}/orders"))
        .json(&json!({"customer_id": "c", "items": [{"sku": "a", "quantity": 1, "unit_price_cents": 5}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let text = wait_metric(
        &base,
        "cqrs_projector_lag_records",
        |v| v == 0.0,
        "lag never 0",
    )
    .await;
    assert!(!text.contains("cqrs_outbox_pending"), "{text}");
}

/// The metric names of a scrape's samples, and those with a `# HELP` line.
fn named(text: &str) -> (Vec<String>, std::collections::HashSet<String>) {
    let helped: std::collections::HashSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).filter(|b| helped.contains(*b)));
            base.unwrap_or(n).to_owned()
        })
        .collect();
    (samples, helped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_relay_and_projector_show_their_metrics_at_zero_from_the_start_each_with_its_help() {
    let cluster = Cluster::new().await;
    let (api_port, projector_port) = (free_port(), free_port());
    let (api_base, projector_base) = (
        format!("http://127.0.0.1:{api_port}"),
        format!("http://127.0.0.1:{projector_port}"),
    );
    let mut api = cluster.start("api", "api,relay", Some(api_port), &[]);
    wait_healthy(&api_base, &mut api).await;
    let mut projector = cluster.start("projector", "projector", Some(projector_port), &[]);
    wait_healthy(&projector_base, &mut projector).await;
    // Nothing was published, applied or dead-lettered yet: each shows 0.
    let api_text = scrape(&api_base).await;
    for line in [
        "cqrs_relay_published_total 0",
        "cqrs_relay_errors_total 0",
        "cqrs_consistency_waits_total{outcome=\"timeout\"} 0",
        "http_connections_refused_total 0",
    ] {
        assert!(
            api_text.lines().any(|l| l == line),
            "no {line:?} in\n{api_text}"
        );
    }
    let group = format!("g-{}", cluster.topic);
    let deadline = Instant::now() + Duration::from_secs(30);
    let projector_text = loop {
        let text = scrape(&projector_base).await;
        let lag = format!(
            "cqrs_projector_lag_records{{projector=\"orders_read_model\",group=\"{group}\",topic=\"{}\"",
            cluster.topic
        );
        if text.contains(&lag) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no lag by group and topic in\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for line in [
        "cqrs_dead_letters_total 0",
        "cqrs_projector_events_applied_total 0",
        "cqrs_projector_batch_failures_total 0",
    ] {
        assert!(
            projector_text.lines().any(|l| l == line),
            "no {line:?} in\n{projector_text}"
        );
    }
    for g in [
        group.clone(),
        format!("{group}.order-saga"),
        format!("{group}.inventory"),
    ] {
        assert!(
            projector_text.contains(&format!("cqrs_consumer_assigned_partitions{{group=\"{g}\"")),
            "no assigned partitions of {g} in\n{projector_text}"
        );
    }
    // Every metric either process shows has its help text.
    for text in [&api_text, &projector_text] {
        let (samples, helped) = named(text);
        let bare: Vec<_> = samples.iter().filter(|n| !helped.contains(*n)).collect();
        assert!(bare.is_empty(), "no # HELP for {bare:?}");
    }
}

/// Needs Debian's `prometheus` (scripts/test installs it): a real
/// Prometheus scrapes a projector, loads deploy/prometheus/alerts.yml, and
/// fires `DeadLetters` once the projector dead-letters a poison record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_projector_and_fires_the_dead_letter_alert() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let prometheus = std::path::Path::new("/usr/bin/prometheus");
    assert!(
        prometheus.exists(),
        "Prometheus is required for this test: apt-get install prometheus (scripts/test does)"
    );
    let cluster = Cluster::new().await;
    let (projector_port, prometheus_port) = (free_port(), free_port());
    let projector_base = format!("http://127.0.0.1:{projector_port}");
    let mut projector = cluster.start("projector", "projector", Some(projector_port), &[]);
    wait_healthy(&projector_base, &mut projector).await;
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/prometheus/alerts.yml")
        .canonicalize()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: orders\n    static_configs:\n      - targets: [\"127.0.0.1:{projector_port}\"]\n",
            rules.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let mut server = std::process::Command::new(prometheus)
        .args([
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{prometheus_port}/api/v1");
    // Scraped while all is well: the counter is there, at 0, and no alert.
    let scraped = async |query: &str| -> Option<f64> {
        let r = reqwest::Client::new()
            .get(format!("{api}/query"))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while scraped("sum(cqrs_dead_letters_total)").await != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the projector at 0"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &cluster.brokers)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&cluster.topic)
                .key("poison")
                .payload("this is not json"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let firing = loop {
        let r: serde_json::Value = reqwest::get(format!("{api}/alerts"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let alerts = r["data"]["alerts"].as_array().cloned().unwrap_or_default();
        if let Some(a) = alerts
            .iter()
            .find(|a| a["labels"]["alertname"] == "DeadLetters" && a["state"] == "firing")
        {
            break a.clone();
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "DeadLetters never fired: {r}\n{}",
            projector.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(firing["labels"]["severity"], "warning", "{firing}");
    let _ = server.kill();
    let _ = server.wait();
}
