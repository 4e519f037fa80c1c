//! A projector that starts far behind catches up in bulk: its read models
//! are built to the head beside the live ones and swapped in with their
//! applied versions and checkpoints; then batches take over. Tokens of
//! writes made while no projector ran are answered, no trace row is written
//! per historical event, and nothing of the build is left behind. On
//! SQLite (the embedded default), and on PostgreSQL from the embedded log
//! and from Kafka.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use cqrs_sql::store::EventStore as _;
use orders_service::config::Role;
use serde_json::json;
use std::time::{Duration, Instant};

const ORDERS: usize = 120;

async fn count(db: &cqrs_sql::Db, sql: &str, bind: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(bind)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Waits (up to `secs`) until the read models equal the fold of every
/// event `store` holds now.
async fn converges(store: &cqrs_sql::SqlEventStore, read: &cqrs_sql::Db, secs: u64) {
    let events = store.all_events().await.unwrap();
    let folded = orders::views::Views::fold(&events).unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while orders::read_model::load_views(&read.pool).await.unwrap() != folded {
        assert!(
            Instant::now() < deadline,
            "the read models never equalled the fold of the write side"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the version applied of an order says it came from.
async fn applied_by(read: &cqrs_sql::Db, order: &str) -> String {
    sqlx::query_scalar(
        "SELECT published_as FROM projected_versions WHERE projector = 'orders_read_model' \
         AND aggregate_id = $1",
    )
    .bind(order)
    .fetch_one(&read.pool)
    .await
    .unwrap()
}

/// The bulk catch-ups this process counted, from its `/metrics`.
async fn bulk_catch_ups(app: &common::TestApp) -> u64 {
    let text = common::metrics_text(&app.http, &app.base).await;
    text.lines()
        .find(|l| {
            l.starts_with("cqrs_projector_bulk_catch_ups_total{")
                && l.contains("projector=\"orders_read_model\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Sqlite,
    PostgresLog,
    PostgresKafka,
}

async fn behind_then_caught_up_in_bulk(backend: Backend) {
    let kafka = backend == Backend::PostgresKafka;
    let url = match backend {
        Backend::Sqlite => None,
        _ => Some(test_support::fresh_postgres_url().await),
    };
    let topic = test_support::unique_topic();
    // Both processes share the files of the embedded default.
    let data = tempfile::tempdir().unwrap();
    let config = |_dir: &tempfile::TempDir, roles: Vec<Role>| {
        let mut c = orders_service::Config::embedded(data.path());
        c.database_url = url.clone();
        if kafka {
            c.kafka = Some(common::kafka_options(&topic));
        }
        c.roles = roles;
        c.bulk_catch_up_from = 100;
        c
    };
    // Writes while no projector runs (with Kafka, the relay publishes them).
    let dir = tempfile::tempdir().unwrap();
    let roles = match kafka {
        true => vec![Role::Api, Role::Relay],
        false => vec![Role::Api],
    };
    let writer = common::spawn_with(config(&dir, roles), dir).await;
    let mut written = Vec::new();
    for i in 0..ORDERS {
        let (id, mut token) = writer.create().await;
        if i % 2 == 0 {
            let body = json!({"amount_cents": 3800, "payment_ref": "p"});
            let (s, p, _) = writer.post(&format!("/orders/{id}/pay"), body).await;
            assert_eq!(s, 200, "{p}");
            token = p["consistency_token"].as_str().unwrap().to_owned();
        }
        written.push((id, token));
    }
    let (s, first, _) = writer.post("/orders", common::order_body()).await;
    assert_eq!(s, 201, "{first}");
    let first_command = first["command_id"].as_str().unwrap().to_owned();
    let store = writer.app().store.clone();
    let head = store.head_position().await.unwrap();
    if kafka {
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.relay_checkpoint().await.unwrap() < head {
            assert!(
                Instant::now() < deadline,
                "the relay never published the writes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let applied = "SELECT COUNT(*) FROM projected_versions WHERE projector = $1";
    let unread = count(&writer.app().read, applied, "orders_read_model").await;
    assert_eq!(unread, 0, "no projector ran");
    writer.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let app = common::spawn_with(config(&dir, vec![]), dir).await;
    let read = app.app().read.clone();
    // The versions it swapped in say they came from the bulk path.
    let bulk = "SELECT COUNT(*) FROM projected_versions WHERE projector = 'orders_read_model' \
                AND published_as = $1";
    let by_bulk = cqrs_sql::read::rebuild::CATCH_UP_PUBLISHED_AS;
    let deadline = Instant::now() + Duration::from_secs(60);
    // (The recorder is the test process's: another test's catch-ups count
    // too, so the metric says only that one was counted.)
    while count(&read, bulk, by_bulk).await < ORDERS as i64 || bulk_catch_ups(&app).await < 1 {
        assert!(
            Instant::now() < deadline,
            "the projector never caught up in bulk"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every token of the writes made while it was behind is answered, with
    // what the write did.
    for (i, (id, token)) in written.iter().enumerate() {
        let (s, o, _) = app
            .get(&format!("/orders/{id}?wait_ms=10000"), Some(token))
            .await;
        assert_eq!(s, 200, "{o}");
        let want = if i % 2 == 0 { "paid" } else { "created" };
        assert_eq!(o["status"].as_str(), Some(want), "{o}");
    }
    // Not one trace row per historical event, and no table of the build
    // left behind.
    let traced = "SELECT COUNT(*) FROM event_traces WHERE projector = 'orders_read_model' \
                  AND command_id = $1";
    assert_eq!(count(&read, traced, &first_command).await, 0);
    for table in [
        "order_details__retired",
        "order_details__v2",
        "cqrs_catch_up__orders_read_model",
    ] {
        assert!(
            !common::table_exists(&read, table).await,
            "{table} was left behind"
        );
    }
    // And back to batches: a new order is applied and traced as usual.
    let (id, token) = app.create().await;
    let (s, o, _) = app
        .get(&format!("/orders/{id}?wait_ms=10000"), Some(&token))
        .await;
    assert_eq!((s, o["status"].as_str()), (200, Some("created")), "{o}");
    converges(&app.app().store, &read, 30).await;
    let applied_by = applied_by(&read, &id).await;
    assert_ne!(applied_by, by_bulk, "applied by a batch");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_far_behind_the_embedded_log_catches_up_in_bulk_then_in_batches() {
    behind_then_caught_up_in_bulk(Backend::PostgresLog).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_far_behind_on_sqlite_catches_up_in_bulk_then_in_batches() {
    behind_then_caught_up_in_bulk(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projector_far_behind_on_kafka_catches_up_in_bulk_then_in_batches() {
    behind_then_caught_up_in_bulk(Backend::PostgresKafka).await;
}

/// A projector that falls far behind while it runs (here: slow batches of
/// ten while the writes pour in) switches to the bulk path at its next look,
/// then its Kafka source seeks to the checkpoints the build moved, and
/// batches go on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_projector_that_falls_far_behind_switches_to_bulk_and_back() {
    use cqrs_kafka::{KafkaSource, SourceConfig};
    use cqrs_sql::read::runner::{ProjectorConfig, ProjectorRunner};
    let url = test_support::fresh_postgres_url().await;
    let topic = test_support::unique_topic();
    let dir = tempfile::tempdir().unwrap();
    let mut config = orders_service::Config::embedded(dir.path());
    config.database_url = Some(url.clone());
    let kafka = common::kafka_options(&topic);
    config.kafka = Some(kafka.clone());
    config.roles = vec![Role::Api, Role::Relay];
    let writer = common::spawn_with(config, dir).await;
    let read = writer.app().read.clone();
    let runner = ProjectorRunner::new(
        read.clone(),
        ProjectorConfig {
            name: "orders_read_model".into(),
            batch_size: 10,
            apply_delay: Duration::from_millis(300),
            bulk_from: 100,
            bulk_recheck: Duration::from_millis(500),
            ..ProjectorConfig::default()
        },
        orders::read_model::projections(),
    )
    .await
    .unwrap();
    let source = KafkaSource::new(
        SourceConfig {
            kafka: kafka.config(),
            group_id: format!("g-mid-{topic}"),
            session_timeout_ms: 6000,
            projector: "orders_read_model".into(),
            instance_id: None,
            store_id: None,
        },
        read.clone(),
    )
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(runner.run(source, stop.clone()));
    // It starts in batches: the first order is applied by one (traced).
    let (first, _) = writer.create().await;
    let version = "SELECT COUNT(*) FROM projected_versions WHERE projector = 'orders_read_model' \
                   AND aggregate_id = $1";
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&read, version, &first).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the first order was never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..ORDERS * 2 {
        writer.create().await;
    }
    let bulk = "SELECT COUNT(*) FROM projected_versions WHERE projector = 'orders_read_model' \
                AND published_as = $1";
    let by_bulk = cqrs_sql::read::rebuild::CATCH_UP_PUBLISHED_AS;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&read, bulk, by_bulk).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the projector never switched to bulk"
        );
        assert!(!task.is_finished(), "the projector ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let traced = "SELECT COUNT(*) FROM event_traces WHERE projector = $1";
    assert!(
        count(&read, traced, "orders_read_model").await > 0,
        "it had applied batches before it switched"
    );
    // And back: what comes next is applied in batches, from where the build
    // read, every order once.
    let (last, _) = writer.create().await;
    converges(&writer.app().store, &read, 60).await;
    let applied_by = applied_by(&read, &last).await;
    assert!(
        applied_by.starts_with(&topic),
        "applied by a batch: {applied_by}"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
    writer.stop().await;
}
