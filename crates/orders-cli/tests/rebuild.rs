//! Versioned read models: a raised version is built by the serving process
//! beside the live tables and swapped in; a read model newer than the build
//! stops the start; a rebuild (or a bulk catch-up) killed with SIGKILL leaves the live model
//! serving, and the next run takes its build over and finishes it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::order_body;
use serde_json::json;
use std::time::{Duration, Instant};

/// Ten orders, every other one paid; waits until the read model has them.
async fn some_orders(app: &common::TestApp, n: usize) {
    let mut token = String::new();
    for i in 0..n {
        let (_, a, _) = app.post("/orders", order_body()).await;
        token = a["consistency_token"].as_str().unwrap().to_owned();
        if i % 2 == 0 {
            let id = a["order_id"].as_str().unwrap();
            let body = json!({"amount_cents": 3800, "payment_ref": "p"});
            let (_, p, _) = app.post(&format!("/orders/{id}/pay"), body).await;
            token = p["consistency_token"].as_str().unwrap().to_owned();
        }
    }
    assert_eq!(app.get("/stats?wait_ms=20000", Some(&token)).await.0, 200);
}

async fn db(url: &str) -> cqrs_sql::Db {
    cqrs_sql::Db::connect(url, &cqrs_sql::DbOptions::default())
        .await
        .unwrap()
}

async fn exists(db: &cqrs_sql::Db, table: &str) -> bool {
    common::table_exists(db, table).await
}

async fn live_version(db: &cqrs_sql::Db, projection: &str) -> (i64, Option<i64>) {
    sqlx::query_as(
        "SELECT live_version, retired_version FROM read_model_versions \
         WHERE projector = 'orders_read_model' AND projection = $1",
    )
    .bind(projection)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn assert_converged(app: &common::TestApp) {
    let events = app.app().store.all_events().await.unwrap();
    let folded = orders::views::Views::fold(&events).unwrap();
    let loaded = orders::read_model::load_views(&app.app().read.pool)
        .await
        .unwrap();
    assert_eq!(
        loaded, folded,
        "the read models equal the fold of the write side"
    );
}

fn config(dir: &tempfile::TempDir, url: &str) -> orders_service::Config {
    let mut config = orders_service::Config::embedded(dir.path());
    config.database_url = Some(url.to_owned());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raised_version_is_built_beside_the_live_one_by_the_serving_process() {
    let url = test_support::fresh_postgres_url().await;
    let dir = tempfile::tempdir().unwrap();
    let first = common::spawn_with(config(&dir, &url), dir).await;
    some_orders(&first, 10).await;
    first.stop().await;
    // As if the tables were made by a build that declared version 0, with
    // rows whose meaning has changed since: only a rebuild repairs them.
    let read = db(&url).await;
    sqlx::query(
        "UPDATE read_model_versions SET live_version = 0 \
         WHERE projector = 'orders_read_model' AND projection = 'order_details'",
    )
    .execute(&read.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE order_details SET status = 'delivered'")
        .execute(&read.pool)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let app = common::spawn_with(config(&dir, &url), dir).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    // order_details is at version 2 (its stock after a cancel or a ship).
    while live_version(&read, "order_details").await != (2, Some(0)) {
        assert!(Instant::now() < deadline, "version 2 was never swapped in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_converged(&app).await;
    // Built beside: the live tables of version 0 are kept for the grace
    // period; the read models whose version did not change were not touched.
    assert!(exists(&read, "order_details__retired").await);
    assert!(!exists(&read, "order_details__v2").await);
    assert_eq!(live_version(&read, "customer_summary").await, (1, None));
    assert!(!exists(&read, "customer_summary__retired").await);
    // Every process shows the versions it serves.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = common::metrics_text(&app.http, &app.base).await;
        let line = r#"cqrs_read_model_version{projector="orders_read_model",projection="order_details"} 2"#;
        if metrics.contains(line) {
            break;
        }
        assert!(Instant::now() < deadline, "no version gauge:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_model_newer_than_the_build_stops_the_start() {
    let url = test_support::fresh_postgres_url().await;
    let dir = tempfile::tempdir().unwrap();
    let first = common::spawn_with(config(&dir, &url), dir).await;
    first.stop().await;
    let read = db(&url).await;
    sqlx::query(
        "UPDATE read_model_versions SET live_version = 5 \
         WHERE projector = 'orders_read_model' AND projection = 'order_stats'",
    )
    .execute(&read.pool)
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let refused = orders_service::Running::start(&config(&dir, &url)).await;
    let why = format!("{:#}", refused.err().expect("the start is refused"));
    assert!(
        why.contains("order_stats") && why.contains("version 5"),
        "{why}"
    );
}

/// Runs `orders rebuild` with `args`, output to files in `dir`.
fn rebuild(dir: &std::path::Path, url: &str, args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["rebuild", "--database-url", url])
        .args(args)
        .stdout(std::fs::File::create(dir.join("out")).unwrap())
        .stderr(std::fs::File::create(dir.join("err")).unwrap())
        .spawn()
        .unwrap()
}

fn output(dir: &std::path::Path) -> String {
    format!(
        "{}{}",
        std::fs::read_to_string(dir.join("out")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("err")).unwrap_or_default()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_killed_mid_way_leaves_the_live_model_serving_and_the_next_one_finishes_it() {
    let url = test_support::fresh_postgres_url().await;
    let dir = tempfile::tempdir().unwrap();
    let app = common::spawn_with(config(&dir, &url), dir).await;
    some_orders(&app, 300).await;
    let read = db(&url).await;
    let out = tempfile::tempdir().unwrap();
    // One event per read of the log: slow enough to be caught mid-way.
    let mut child = rebuild(out.path(), &url, &["--projection", "all", "--batch", "1"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let building: Option<String> = sqlx::query_scalar(
            "SELECT owner FROM read_model_builds WHERE projector = 'orders_read_model'",
        )
        .fetch_optional(&read.pool)
        .await
        .unwrap();
        if building.is_some() && exists(&read, "order_details__v2").await {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended first: {}",
            output(out.path())
        );
        assert!(
            Instant::now() < deadline,
            "never building: {}",
            output(out.path())
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Its build is left behind; the live model serves as before.
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM read_model_builds")
        .fetch_one(&read.pool)
        .await
        .unwrap();
    assert_eq!(left, 1, "killed before it could end its build");
    assert!(exists(&read, "order_details__v2").await);
    assert_converged(&app).await;
    let (s, _, _) = app.get("/stats", None).await;
    assert_eq!(s, 200);

    // The next run takes the dead build over at once and finishes it.
    let started = Instant::now();
    let mut again = rebuild(out.path(), &url, &["--projection", "all"]);
    let status = loop {
        if let Some(s) = again.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            output(out.path())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let text = output(out.path());
    assert!(status.success(), "{text}");
    assert!(text.contains("swapped in"), "{text}");
    assert!(
        started.elapsed() < cqrs_sql::read::versions::BUILD_STALE,
        "a build whose process is gone is taken over without waiting for its heartbeat to age"
    );
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM read_model_builds")
        .fetch_one(&read.pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    assert!(!exists(&read, "order_details__v2").await);
    assert_converged(&app).await;
    // The live projector carries on over the swapped tables.
    let (_, a, _) = app.post("/orders", order_body()).await;
    let id = a["order_id"].as_str().unwrap();
    let (s, o, _) = app
        .get(
            &format!("/orders/{id}?wait_ms=20000"),
            a["consistency_token"].as_str(),
        )
        .await;
    assert_eq!((s, o["status"].as_str()), (200, Some("created")));
    app.stop().await;
}

/// Orders with an applied version in the read model (the `#cutover`
/// stamp is not one).
async fn orders_applied(read: &cqrs_sql::Db) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM projected_versions WHERE projector = 'orders_read_model' \
         AND aggregate_id <> '#cutover'",
    )
    .fetch_one(&read.pool)
    .await
    .unwrap()
}

/// A serving process killed with SIGKILL in the middle of a bulk catch-up
/// leaves the live read model as it was (nothing applied, no version
/// claimed); the next start takes the dead build over at once, catches up
/// and leaves no table of the dead build behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bulk_catch_up_killed_mid_way_is_taken_over_by_the_next_start() {
    use cqrs_sql::store::GeneratedHistory;
    let url = test_support::fresh_postgres_url().await;
    let store = cqrs_sql::SqlEventStore::open(db(&url).await).await.unwrap();
    // 60,000 orders written as if long ago, and no projector has run.
    let history = GeneratedHistory {
        aggregate_type: <orders::Order as cqrs_core::Aggregate>::TYPE.to_owned(),
        life: vec![(
            "OrderCreated".to_owned(),
            orders::event_versions::current_version("OrderCreated"),
            json!({ "customer_id": "c{n}", "total_cents": 1999,
                    "items": [{ "sku": "sku-1", "quantity": 1, "unit_price_cents": 1999,
                                "line_total_cents": 1999 }] }),
        )],
        aggregates: 60_000,
        salt: 7,
        relayed: false,
        unpublished: false,
        interleaved: false,
    };
    store.import_generated(&history, |_| {}).await.unwrap();
    let read = db(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let args = |port: u16| -> Vec<String> {
        [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            &url,
            "--bulk-catch-up-from",
            "1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut first = common::Proc::serve("first", dir.path(), &args(common::free_port()), &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let phase: Option<String> = sqlx::query_scalar(
            "SELECT phase FROM read_model_builds WHERE projector = 'orders_read_model'",
        )
        .fetch_optional(&read.pool)
        .await
        .unwrap_or(None);
        if phase.is_some() && exists(&read, "order_details__v2").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never caught up in bulk: see {:?}",
            first.log
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill9();
    let applied = orders_applied(&read).await;
    assert_eq!(
        applied, 0,
        "nothing of the dead build reached the live model"
    );

    let port = common::free_port();
    let mut second = common::Proc::serve("second", dir.path(), &args(port), &[]);
    common::wait_healthy(&format!("http://127.0.0.1:{port}"), &mut second).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let applied = orders_applied(&read).await;
        if applied == 60_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{applied} orders applied: see {:?}",
            second.log
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = store.all_events().await.unwrap();
    let folded = orders::views::Views::fold(&events).unwrap();
    let loaded = orders::read_model::load_views(&read.pool).await.unwrap();
    assert_eq!(
        loaded, folded,
        "the read models equal the fold of the write side"
    );
    let by_bulk: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM projected_versions WHERE projector = 'orders_read_model' \
         AND published_as = $1",
    )
    .bind(cqrs_sql::read::rebuild::CATCH_UP_PUBLISHED_AS)
    .fetch_one(&read.pool)
    .await
    .unwrap();
    assert_eq!(by_bulk, 60_000, "the second start caught up in bulk too");
    for table in [
        "order_details__v2",
        "order_details__retired",
        "cqrs_catch_up__orders_read_model",
    ] {
        assert!(!exists(&read, table).await, "{table} was left behind");
    }
    let builds: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM read_model_builds")
        .fetch_one(&read.pool)
        .await
        .unwrap();
    assert_eq!(builds, 0);
    second.terminate();
}
