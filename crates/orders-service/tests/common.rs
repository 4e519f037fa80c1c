//! Shared helpers: an instance served on a free port, talked to over HTTP.
#![allow(dead_code)]

use orders_service::{Config, Running};
use serde_json::{json, Value};

pub struct TestApp {
    pub config: Config,
    pub base: String,
    pub http: reqwest::Client,
    pub running: Option<Running>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    pub async fn stop(mut self) {
        self.server.abort();
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean stop");
        }
    }
    pub fn config_topic(&self) -> String {
        self.config
            .kafka
            .as_ref()
            .map(|k| k.topic.clone())
            .unwrap_or_default()
    }
    pub fn app(&self) -> &orders_service::App {
        &self.running.as_ref().expect("running").app
    }
}

/// Starts an embedded instance (or one on a fresh PostgreSQL database).
pub async fn spawn_app(postgres: bool, projector_delay_ms: u64) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::embedded(dir.path());
    config.projector_delay = std::time::Duration::from_millis(projector_delay_ms);
    if postgres {
        config.database_url = Some(test_support::fresh_postgres_url().await);
    }
    spawn_with(config, dir).await
}

/// Starts an instance on a fresh PostgreSQL database with Kafka between the
/// sides, on a topic and group of its own.
pub async fn spawn_kafka_app() -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::embedded(dir.path());
    config.database_url = Some(test_support::fresh_postgres_url().await);
    config.kafka = Some(kafka_options(&test_support::unique_topic()));
    spawn_with(config, dir).await
}

/// Kafka options for a test topic.
pub fn kafka_options(topic: &str) -> orders_service::app::KafkaOptions {
    let mut k = orders_service::app::KafkaOptions::new(test_support::kafka_brokers());
    k.topic = topic.to_owned();
    k.group_id = format!("g-{topic}");
    k.session_timeout_ms = 3000;
    k
}

async fn spawn_with(config: Config, dir: tempfile::TempDir) -> TestApp {
    let running = Running::start(&config).await.expect("start");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("free port");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let router = running.router();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    TestApp {
        config,
        base,
        http: reqwest::Client::new(),
        running: Some(running),
        server,
        _dir: dir,
    }
}

pub fn order_body() -> Value {
    json!({ "customer_id": "alice", "items": [
        { "sku": "book", "quantity": 2, "unit_price_cents": 1500 },
        { "sku": "mug", "quantity": 1, "unit_price_cents": 800 } ] })
}

impl TestApp {
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value, reqwest::header::HeaderMap) {
        let res = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, res.json().await.unwrap_or(Value::Null), headers)
    }
    pub async fn get(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("x-consistency-token", t);
        }
        let res = req.send().await.expect("send");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, res.json().await.unwrap_or(Value::Null), headers)
    }
    pub async fn create(&self) -> (String, String) {
        let (s, b, _) = self.post("/orders", order_body()).await;
        assert_eq!(s, 201, "{b}");
        (
            b["order_id"].as_str().unwrap().to_owned(),
            b["consistency_token"].as_str().unwrap().to_owned(),
        )
    }
}
