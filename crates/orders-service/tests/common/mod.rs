//! Shared helpers: an instance of the service started in the test's own
//! process and served on a free port, talked to over HTTP. (The tests of
//! the `orders` binary use these too, beside their own for processes.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails
#![allow(dead_code)]

use orders_service::{Config, Running};
use serde_json::{json, Value};

pub struct TestApp {
    pub config: Config,
    pub base: String,
    pub http: reqwest::Client,
    pub running: Option<Running>,
    server: tokio::task::JoinHandle<bool>,
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
pub fn kafka_options(topic: &str) -> orders_service::server::KafkaOptions {
    let mut k = orders_service::server::KafkaOptions::new(test_support::kafka_brokers());
    k.topic = topic.to_owned();
    k.group = Some(format!("g-{topic}"));
    k.session_timeout_ms = 3000;
    k
}

/// Serves `config` on a free port (its files live in `dir`).
pub async fn spawn_with(config: Config, dir: tempfile::TempDir) -> TestApp {
    let running = Running::start(&config).await.expect("start");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("free port");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = running.spawn_server(listener);
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

/// Asserts that a command's trace has all six stages, in time order.
pub async fn assert_full_trace(app: &TestApp, command_id: &str) -> Value {
    let (s, t, _) = app
        .get(&format!("/commands/{command_id}/trace"), None)
        .await;
    assert_eq!(s, 200, "{t}");
    let stages = t["stages"].as_array().unwrap();
    let names: Vec<&str> = stages
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "received",
            "committed",
            "published",
            "consumed",
            "applied",
            "queried"
        ]
    );
    let times: Vec<chrono::DateTime<chrono::Utc>> = stages
        .iter()
        .map(|s| {
            s["at"]
                .as_str()
                .unwrap_or_else(|| panic!("stage without time: {t}"))
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "stages out of order: {t}"
    );
    t
}

/// Creates a one-item order through a server at `base`; returns its answer.
pub async fn create_order_at(
    http: &reqwest::Client,
    base: &str,
    customer: &str,
    unit_price_cents: i64,
) -> Value {
    let body = json!({"customer_id": customer, "items": [{"sku": "s", "quantity": 1, "unit_price_cents": unit_price_cents}]});
    let r = http
        .post(format!("{base}/orders"))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 201);
    r.json().await.expect("JSON answer")
}

/// A number in lo..hi (kills at random points of a load).
pub fn random_count(lo: usize, hi: usize) -> usize {
    lo + (uuid::Uuid::new_v4().as_u128() % (hi - lo) as u128) as usize
}

/// How many events the write store at `db` holds.
pub async fn events_in(db: &cqrs_sql::Db) -> i64 {
    let store = cqrs_sql::SqlEventStore::open(db.clone()).await.unwrap();
    store.count_after(0).await.unwrap()
}

/// How many dead letters (open or not) the read DB at `db` holds.
pub async fn dead_letters_in(db: &cqrs_sql::Db) -> usize {
    let projector = orders_service::server::PROJECTOR;
    let letters = cqrs_sql::read::dead_letters::list(db, projector, true).await;
    letters.unwrap().len()
}

/// Where the projector in `read` took the last applied event of order `id`
/// from ("log@41", "orders.events/3@17").
pub async fn applied_from(read: &cqrs_sql::Db, id: &str) -> String {
    let projector = orders_service::server::PROJECTOR;
    let applied = cqrs_sql::read::traces::last_applied(read, projector, id).await;
    applied.unwrap().expect("applied").published_as
}

/// The Prometheus text a server at `base` answers on `/metrics`.
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("metrics text")
}

/// Whether `table` exists in `db` (either database).
pub async fn table_exists(db: &cqrs_sql::Db, table: &str) -> bool {
    let sql = match db.dialect.is_embedded() {
        true => "SELECT name FROM sqlite_master WHERE type = 'table' AND name = $1",
        false => "SELECT CAST(to_regclass($1) AS TEXT)",
    };
    sqlx::query_scalar::<_, Option<String>>(sql)
        .bind(table)
        .fetch_optional(&db.pool)
        .await
        .expect("table lookup")
        .flatten()
        .is_some()
}
