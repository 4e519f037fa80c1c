//! Two hundred open live pages on a 100k-event store cost the database what
//! one does: the view is rendered once per change for all of them, while
//! every page streams views and progress. Point-read latency alone and with
//! the pages open is printed (a figure, not a pass mark: timing belongs to
//! the bench).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{free_port, wait_healthy, Proc};
use std::time::{Duration, Instant};

const PAGES: usize = 200;

/// p50 and p99 of `GET /orders/{id}` over `n` sequential reads.
async fn read_latency(
    http: &reqwest::Client,
    base: &str,
    ids: &[String],
    n: usize,
) -> (Duration, Duration) {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let r = http
            .get(format!("{base}/orders/{}", ids[i % ids.len()]))
            .send()
            .await
            .expect("read");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
        took.push(t.elapsed());
    }
    took.sort();
    (took[n / 2], took[n * 99 / 100])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_live_pages_on_a_100k_event_store_share_one_render_per_change() {
    let url = test_support::fresh_postgres_url().await;
    let db = cqrs_sql::Db::connect(&url, &cqrs_sql::DbOptions::default())
        .await
        .unwrap();
    let store = cqrs_sql::SqlEventStore::open(db.clone()).await.unwrap();
    let history = orders_bench::kafka::history(25_000);
    store.import_generated(&history, |_| {}).await.unwrap();
    db.close().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--database-url",
        &url,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut server = Proc::serve("live", dir.path(), &args, &[]);
    wait_healthy(&base, &mut server).await;
    let http = reqwest::Client::new();
    // The projector catches up with the 100k events first.
    let started = Instant::now();
    loop {
        let stats: serde_json::Value = http
            .get(format!("{base}/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // Every filled order ends delivered (its 4th and last event).
        if stats["by_status"]["delivered"]["order_count"] == 25_000 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the projector did not catch up: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "projected 100,000 events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut ids = Vec::new();
    let mut last_token = String::new();
    for _ in 0..50 {
        let a = common::create_order_at(&http, &base, "reader", 100).await;
        ids.push(a["order_id"].as_str().unwrap().to_owned());
        last_token = a["consistency_token"].as_str().unwrap().to_owned();
    }
    let r = http
        .get(format!("{base}/stats?wait_ms=10000"))
        .header("x-consistency-token", &last_token)
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(
        status,
        200,
        "the 50 orders to read are projected: {}\n{}",
        r.text().await.unwrap(),
        server.log_text()
    );
    let (p50_alone, p99_alone) = read_latency(&http, &base, &ids, 300).await;

    // The pages, and a trickle of commands so that every page gets views.
    let mut pages = Vec::with_capacity(PAGES);
    for _ in 0..PAGES {
        let mut r = reqwest::get(format!("{base}/stream")).await.unwrap();
        assert_eq!(r.status(), 200);
        pages.push(tokio::spawn(async move {
            let mut events = 0usize;
            while let Ok(Some(chunk)) = r.chunk().await {
                events += chunk.windows(6).filter(|w| w == b"event:").count();
            }
            events
        }));
    }
    let writer = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            loop {
                common::create_order_at(&http, &base, "writer", 100).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let renders_before = view_renders(&http, &base).await;
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (p50, p99) = read_latency(&http, &base, &ids, 1000).await;
    writer.abort();
    let renders = view_renders(&http, &base).await - renders_before;
    let secs = window.elapsed().as_secs_f64();
    eprintln!(
        "GET /orders/{{id}} alone: p50 {p50_alone:?} p99 {p99_alone:?}; \
         with {PAGES} live pages and 10 commands/s: p50 {p50:?} p99 {p99:?}; \
         {renders} view renders in {secs:.1} s"
    );
    // At most one render per 200 ms however many pages are open (one per
    // page would be 200 times the commands' 10 a second).
    let most = (secs / 0.2).ceil() as u64 + 1;
    assert!(
        (1..=most).contains(&renders),
        "{renders} renders in {secs:.1} s for {PAGES} pages (at most {most})"
    );
    assert!(server.terminate().success(), "{}", server.log_text());
    let mut quiet = 0;
    for p in pages {
        if p.await.unwrap() < 3 {
            quiet += 1;
        }
    }
    assert_eq!(quiet, 0, "pages that got fewer than 3 events");
}

/// The server's count of live-view renders, from `/metrics`.
async fn view_renders(http: &reqwest::Client, base: &str) -> u64 {
    let text = common::metrics_text(http, base).await;
    text.lines()
        .find_map(|l| l.strip_prefix("orders_live_view_renders_total "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}
