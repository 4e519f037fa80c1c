//! A database made by the build before versioned migrations (fixtures in
//! `tests/fixtures/schema-2026-11`) is migrated at start and serves: its
//! orders read back, commands on them work, the read model still equals the
//! fold of the log; a process told not to migrate refuses until
//! `orders migrate` has run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use cqrs_sql::{Db, DbOptions};
use orders_service::Config;
use std::time::Duration;

const PG_DUMP: &str = include_str!("fixtures/schema-2026-11/postgres.sql");
const SQLITE_WRITE: &str = include_str!("fixtures/schema-2026-11/sqlite-write.sql");
const SQLITE_READ: &str = include_str!("fixtures/schema-2026-11/sqlite-read.sql");

async fn load(url: &str, dump: &str) {
    let db = Db::connect(url, &DbOptions::default())
        .await
        .expect("connect");
    sqlx::raw_sql(dump)
        .execute(&db.writer)
        .await
        .expect("load the dump");
    db.close().await;
}

/// A config on the fixture: embedded SQLite files, or one PostgreSQL database.
async fn fixture(postgres: bool) -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::embedded(dir.path());
    if postgres {
        let url = test_support::fresh_postgres_url().await;
        load(&url, PG_DUMP).await;
        config.database_url = Some(url);
    } else {
        let (write, read) = config.urls();
        load(&write, SQLITE_WRITE).await;
        load(&read, SQLITE_READ).await;
    }
    (config, dir)
}

async fn statuses(app: &common::TestApp) -> Vec<(String, String)> {
    let (s, body, _) = app.get("/orders?limit=10", None).await;
    assert_eq!(s, 200, "{body}");
    let mut all: Vec<(String, String)> = body["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| {
            (
                o["customer_id"].as_str().unwrap_or_default().to_owned(),
                o["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    all.sort();
    all
}

async fn a_database_from_before_migrations_upgrades_and_serves(postgres: bool) {
    let (mut config, dir) = fixture(postgres).await;

    // Told not to migrate, the service refuses and says what to run.
    config.no_migrate = true;
    let refused = orders_service::Running::start(&config)
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{refused:#}").contains("orders migrate"),
        "{refused:#}"
    );
    assert_eq!(
        orders_cli::migrate::run(&config, true).await.unwrap(),
        1,
        "migrations are due"
    );
    assert_eq!(orders_cli::migrate::run(&config, false).await.unwrap(), 0);
    assert_eq!(
        orders_cli::migrate::run(&config, true).await.unwrap(),
        0,
        "nothing left due"
    );

    // `dir` outlives the server: verify reads the files after it stops.
    let app = common::spawn_with(config.clone(), tempfile::tempdir().expect("temp dir")).await;
    assert_eq!(
        statuses(&app).await,
        [
            ("alice".to_owned(), "delivered".to_owned()),
            ("alice".to_owned(), "paid".to_owned()),
            ("bob".to_owned(), "cancelled".to_owned())
        ],
        "the old read model serves"
    );
    // A command on an old order: its events load and fold.
    let (_, body, _) = app.get("/orders?status=paid", None).await;
    let paid = body["orders"][0]["order_id"]
        .as_str()
        .expect("paid order")
        .to_owned();
    let (s, b, _) = app
        .post(
            &format!("/orders/{paid}/ship"),
            serde_json::json!({ "carrier": "ups", "tracking_number": "Z9" }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["version"], 3, "created, paid, then shipped");
    let token = b["consistency_token"].as_str().expect("token").to_owned();
    let (s, order, _) = app.get(&format!("/orders/{paid}"), Some(&token)).await;
    assert_eq!(
        (s, order["status"].as_str()),
        (200, Some("shipped")),
        "{order}"
    );
    // A new order next to the old ones, read back with its token: the
    // projector has applied it before the server stops (verify runs after).
    let (id, token) = app.create().await;
    let (s, order, _) = app.get(&format!("/orders/{id}"), Some(&token)).await;
    assert_eq!(s, 200, "{order}");

    let store = &app.app().store;
    let events = store.all_events().await.expect("events");
    assert_eq!(
        events.len(),
        10,
        "8 old events, the shipment, the new order"
    );
    assert!(
        events
            .windows(2)
            .all(|w| w[0].recorded_at <= w[1].recorded_at),
        "old and new times read back in order"
    );
    if postgres {
        let types: Vec<String> = sqlx::query_scalar(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'events' \
             AND column_name IN ('occurred_at', 'recorded_at')",
        )
        .fetch_all(&store.db().pool)
        .await
        .expect("catalogue");
        assert_eq!(types, ["timestamp with time zone"; 2]);
    }
    let versions = cqrs_sql::migrate::versions(store.db())
        .await
        .expect("versions");
    // Brought to this build's last migration, whatever its number.
    let latest = cqrs_sql::store::write_components(store.db().dialect)
        .iter()
        .find(|c| c.name == "event_store")
        .map(|c| c.migrations.len() as i64)
        .expect("event_store's migrations");
    assert!(
        latest >= 3 && versions.contains(&("event_store".to_owned(), latest)),
        "{versions:?}"
    );
    let config = app.config.clone();
    app.stop().await;

    let report = orders_cli::verify::verify(&config, Duration::from_secs(10))
        .await
        .expect("verify");
    assert_eq!(report.exit_code(), 0, "{report}");
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_from_before_migrations_upgrades_and_serves() {
    a_database_from_before_migrations_upgrades_and_serves(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_from_before_migrations_upgrades_and_serves() {
    a_database_from_before_migrations_upgrades_and_serves(true).await;
}
