//! Fresh, real databases for tests: a SQLite file in a temp dir, or a new
//! PostgreSQL database on the server that `scripts/services` starts.
//! A missing PostgreSQL is a failure, never a skip.

// Only tests use this crate: a setup that cannot be made panics, which is
// how a test fails.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod kafka;
pub mod postgres;
pub mod proxy;

use cqrs_sql::{Db, DbOptions};
use tempfile::TempDir;

/// The admin URL of the test PostgreSQL server.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:55432/postgres".into())
}

/// A new, empty PostgreSQL database; returns its URL.
pub async fn fresh_postgres_url() -> String {
    use sqlx::Executor;
    sqlx::any::install_default_drivers();
    let admin = postgres_admin_url();
    let mut conn = match <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await {
        Ok(c) => c,
        Err(e) => panic!(
            "PostgreSQL is required for this test and does not answer at {admin}: {e}. \
             Start it with `scripts/services start` (scripts/test does)."
        ),
    };
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    format!("{base}/{name}")
}

/// A new PostgreSQL database, connected.
pub async fn fresh_postgres() -> Db {
    let url = fresh_postgres_url().await;
    Db::connect(&url, &DbOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// A new SQLite database in a temp dir (kept alive by the returned guard).
pub async fn fresh_sqlite() -> (Db, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = cqrs_sql::db::sqlite_url(&dir.path().join("test.db"));
    let db = Db::connect(&url, &DbOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    (db, dir)
}

/// The test Kafka broker (`TEST_KAFKA_BROKERS`, default 127.0.0.1:19092, the broker of `scripts/services`);
/// panics when nothing answers there.
pub fn kafka_brokers() -> String {
    let brokers = std::env::var("TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let first = brokers.split(',').next().unwrap_or_default().to_owned();
    if let Err(e) = std::net::TcpStream::connect(&first) {
        panic!(
            "Apache Kafka is required for this test and does not answer at {first}: {e}. \
             Start it with `scripts/services start` (scripts/test does)."
        );
    }
    brokers
}

/// The test Jaeger (`scripts/services`): where spans go over OTLP/HTTP
/// (`TEST_OTLP_ENDPOINT`, default http://127.0.0.1:4318) and where its
/// query API answers (`TEST_JAEGER_QUERY`, default http://127.0.0.1:16686);
/// panics when it does not answer.
pub fn jaeger() -> (String, String) {
    let otlp =
        std::env::var("TEST_OTLP_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4318".into());
    let query =
        std::env::var("TEST_JAEGER_QUERY").unwrap_or_else(|_| "http://127.0.0.1:16686".into());
    for url in [&otlp, &query] {
        let addr = url.trim_start_matches("http://").trim_end_matches('/');
        if let Err(e) = std::net::TcpStream::connect(addr) {
            panic!(
                "Jaeger is required for this test and does not answer at {url}: {e}. \
                 Start it with `scripts/services start jaeger` (scripts/test does)."
            );
        }
    }
    (otlp, query)
}

/// A topic name no other test uses.
pub fn unique_topic() -> String {
    format!("t{}.events", uuid::Uuid::new_v4().simple())
}

/// A free port outside the kernel's ephemeral range (read from
/// /proc/sys/net/ipv4/ip_local_port_range), so that no outgoing connection
/// takes it while a service that listens on it is down and restarting.
pub fn stable_port() -> u16 {
    let (lo, _) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| {
            let mut it = r.split_whitespace().filter_map(|p| p.parse::<u16>().ok());
            Some((it.next()?, it.next()?))
        })
        .unwrap_or((32768, 60999));
    let (first, last) = (10_000u16, lo.saturating_sub(2).max(10_001));
    loop {
        let p = first + (uuid::Uuid::new_v4().as_u128() % u128::from(last - first)) as u16;
        let both_free = [p, p + 1]
            .iter()
            .all(|q| std::net::TcpListener::bind(("127.0.0.1", *q)).is_ok());
        if both_free {
            return p;
        }
    }
}

/// The TLS material `scripts/services` makes: the local CA, and the server
/// certificate and key that PostgreSQL and Kafka present.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The CA certificate (PEM).
    pub ca: std::path::PathBuf,
    /// The server certificate (PEM, for 127.0.0.1 and localhost).
    pub cert: std::path::PathBuf,
    /// Its key (PEM).
    pub key: std::path::PathBuf,
}

fn required_file(var: &str) -> std::path::PathBuf {
    let path = std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests through scripts/test, or `eval \"$(scripts/services env)\"`")
    });
    let path = std::path::PathBuf::from(path);
    assert!(
        path.is_file(),
        "{var}={} does not exist: run `scripts/services start`",
        path.display()
    );
    path
}

/// The TLS files of the local services; panics when they are missing.
pub fn tls() -> Tls {
    Tls {
        ca: required_file("TEST_TLS_CA"),
        cert: required_file("TEST_TLS_CERT"),
        key: required_file("TEST_TLS_KEY"),
    }
}

/// The broker's SASL_SSL listener and its test user: (brokers, user,
/// password); panics when nothing answers there.
pub fn kafka_sasl() -> (String, String, String) {
    let var = |v: &str| {
        std::env::var(v)
            .unwrap_or_else(|_| panic!("{v} is not set: run the tests through scripts/test"))
    };
    let brokers = var("TEST_KAFKA_SASL_BROKERS");
    if let Err(e) = std::net::TcpStream::connect(&brokers) {
        panic!("Kafka's SASL_SSL listener does not answer at {brokers}: {e}. Run `scripts/services start`.");
    }
    (
        brokers,
        var("TEST_KAFKA_SASL_USER"),
        var("TEST_KAFKA_SASL_PASSWORD"),
    )
}
