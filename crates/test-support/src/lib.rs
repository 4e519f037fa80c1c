//! Fresh, real databases for tests: a SQLite file in a temp dir, or a new
//! PostgreSQL database on the server that `scripts/services` starts.
//! A missing PostgreSQL is a failure, never a skip.

use cqrs_sql::{Db, DbOptions};
use tempfile::TempDir;

/// The admin URL of the test PostgreSQL server.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
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

/// The test Kafka broker (`TEST_KAFKA_BROKERS`, default 127.0.0.1:9092);
/// panics when nothing answers there.
pub fn kafka_brokers() -> String {
    let brokers = std::env::var("TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let first = brokers.split(',').next().unwrap_or_default().to_owned();
    if let Err(e) = std::net::TcpStream::connect(&first) {
        panic!(
            "Apache Kafka is required for this test and does not answer at {first}: {e}. \
             Start it with `scripts/services start` (scripts/test does)."
        );
    }
    brokers
}

/// A topic name no other test uses.
pub fn unique_topic() -> String {
    format!("t{}.events", uuid::Uuid::new_v4().simple())
}
