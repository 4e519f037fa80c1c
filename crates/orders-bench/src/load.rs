//! The load the benchmarks put on a server, and what they wait for between
//! phases: closed and open loops over HTTP, raw inserts, a served instance
//! on a free port, the read model caught up, scratch databases.

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use orders_service::server::{Config, Running};
use serde_json::json;
use sqlx::Executor;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Latency percentiles in microseconds.
#[derive(Debug, serde::Serialize)]
pub struct Percentiles {
    pub(crate) p50: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
}

impl From<&Histogram<u64>> for Percentiles {
    fn from(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

pub(crate) fn bar(len: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>32} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(what.to_owned());
    pb
}

/// The order a bench client sends as request `i` (cqrs-es-peer builds the same).
pub(crate) fn order_body(i: usize) -> serde_json::Value {
    json!({ "customer_id": format!("bench-{}", i % 97), "items": [
        { "sku": "sku-1", "quantity": 1 + (i % 5), "unit_price_cents": 1999 } ] })
}

/// The total of [`order_body`]`(i)`, in cents.
pub(crate) fn order_total(i: usize) -> i64 {
    1999 * (1 + (i % 5) as i64)
}

/// Creates over HTTP in a closed loop of `concurrency` clients; commands/s.
pub(crate) async fn throughput(base: &str, n: usize, concurrency: usize) -> anyhow::Result<f64> {
    let http = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pb = bar(n, "throughput (closed loop)");
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (http, next, pb, url) = (
            http.clone(),
            next.clone(),
            pb.clone(),
            format!("{base}/orders"),
        );
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let res = http.post(&url).json(&order_body(i)).send().await?;
                if res.status() != 201 {
                    bail!("create answered {}", res.status());
                }
                pb.inc(1);
            }
        })
    });
    for w in futures::future::join_all(workers).await {
        w??;
    }
    pb.finish_and_clear();
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// What an open-loop phase measured, from each command's intended send time.
pub(crate) struct Latencies {
    pub(crate) command: Histogram<u64>,
    pub(crate) queryable: Histogram<u64>,
    pub(crate) errors: usize,
    /// What the first failure was, to tell overload from a bug.
    pub(crate) first_error: Option<String>,
    /// The commands that became queryable, for their traces.
    pub(crate) command_ids: Vec<String>,
}

/// `n` creates offered at `rate`/s, each followed by its consistent read;
/// the latencies and the rate achieved.
pub(crate) async fn latency(base: &str, n: usize, rate: f64) -> anyhow::Result<(Latencies, f64)> {
    let http = reqwest::Client::new();
    let hist = || Histogram::<u64>::new_with_bounds(1, 120_000_000, 3);
    let lat = Arc::new(Mutex::new(Latencies {
        command: hist()?,
        queryable: hist()?,
        errors: 0,
        first_error: None,
        command_ids: Vec::new(),
    }));
    let pb = bar(n, &format!("latency (open loop, {rate}/s)"));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let intended = start + Duration::from_secs_f64(i as f64 / rate);
        let (http, lat, pb, base) = (http.clone(), lat.clone(), pb.clone(), base.to_owned());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(intended).await;
            let r = async {
                let res = http
                    .post(format!("{base}/orders"))
                    .json(&order_body(i))
                    .send()
                    .await?;
                let answered = tokio::time::Instant::now();
                if res.status() != 201 {
                    let status = res.status();
                    bail!(
                        "create answered {status}: {}",
                        res.text().await.unwrap_or_default()
                    );
                }
                let token = res
                    .headers()
                    .get("x-consistency-token")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .context("no token")?;
                let body: serde_json::Value = res.json().await?;
                let id = body["order_id"].as_str().context("no order id")?;
                let command = body["command_id"].as_str().unwrap_or_default().to_owned();
                let q = http
                    .get(format!("{base}/orders/{id}?wait_ms=30000"))
                    .header("x-consistency-token", token)
                    .send()
                    .await?;
                if !q.status().is_success() {
                    bail!("query answered {}", q.status());
                }
                Ok::<_, anyhow::Error>((answered, tokio::time::Instant::now(), command))
            }
            .await;
            if let Ok(mut l) = lat.lock() {
                match r {
                    Ok((answered, visible, command)) => {
                        l.command_ids.push(command);
                        let _ = l.command.record((answered - intended).as_micros() as u64);
                        let _ = l.queryable.record((visible - intended).as_micros() as u64);
                    }
                    Err(e) => {
                        l.errors += 1;
                        l.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            pb.inc(1);
        }));
    }
    futures::future::join_all(tasks).await;
    let achieved = n as f64 / (tokio::time::Instant::now() - start).as_secs_f64();
    pb.finish_and_clear();
    let lat = Arc::try_unwrap(lat).map_err(|_| anyhow::anyhow!("latency tasks still running"))?;
    Ok((
        lat.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?,
        achieved,
    ))
}

/// Single-row INSERT transactions at the same concurrency on the same database.
pub(crate) async fn raw_inserts(
    db: &cqrs_sql::Db,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    db.writer
        .execute("CREATE TABLE IF NOT EXISTS bench_raw (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
        .await?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pb = bar(n, "raw INSERT baseline");
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (db, next, pb) = (db.clone(), next.clone(), pb.clone());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, sqlx::Error>(());
                }
                sqlx::query("INSERT INTO bench_raw (id, body) VALUES ($1, $2)")
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(order_body(i).to_string())
                    .execute(&db.writer)
                    .await?;
                pb.inc(1);
            }
        })
    });
    for w in futures::future::join_all(workers).await {
        w??;
    }
    pb.finish_and_clear();
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// A started instance serving HTTP on a free loopback port.
pub(crate) struct Served {
    /// The instance.
    pub(crate) running: Running,
    /// `http://127.0.0.1:<port>`.
    pub(crate) base: String,
    server: tokio::task::JoinHandle<bool>,
}

impl Served {
    /// Starts `config` and serves it.
    pub(crate) async fn start(config: &Config) -> anyhow::Result<Self> {
        let running = Running::start(config).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let server = running.spawn_server(listener);
        Ok(Self {
            running,
            base,
            server,
        })
    }

    /// Stops serving, then the instance.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.server.abort();
        self.running.stop().await
    }
}

/// Waits until the read model holds every event of the write side (the sum
/// of applied versions equals the number of events); returns that number.
pub(crate) async fn caught_up(running: &Running) -> anyhow::Result<i64> {
    caught_up_since(running, 0, 0).await
}

/// How many events the projector has applied.
pub(crate) async fn applied_sum(running: &Running) -> anyhow::Result<i64> {
    let read = &running.app.read;
    Ok(cqrs_sql::read::traces::applied_events(read, orders_service::server::PROJECTOR).await?)
}

/// Waits until the projector has applied every event after position
/// `after` (imported history lies at or below it, never projected), counting
/// from `applied_before` (the applied sum when the history was imported).
pub(crate) async fn caught_up_since(
    running: &Running,
    after: i64,
    applied_before: i64,
) -> anyhow::Result<i64> {
    let events = running.app.store.count_after(after).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if applied_sum(running).await? - applied_before >= events {
            return Ok(events);
        }
        if Instant::now() > deadline {
            bail!("projector did not catch up within 10 minutes");
        }
        // Not tighter: the sum reads every row of projected_versions.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Up to 10,000 order ids from the read model, for the GET phases.
pub(crate) async fn some_order_ids(running: &Running) -> anyhow::Result<Vec<String>> {
    let filter = orders::read_model::OrderFilter {
        limit: 10_000,
        ..Default::default()
    };
    let (page, _) = orders::read_model::list_orders(&running.app.read.pool, &filter).await?;
    Ok(page.into_iter().map(|o| o.order_id).collect())
}

pub(crate) async fn drop_scratch(url: &str, name: &str) {
    if let Ok(mut conn) = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await {
        // The inventory's database beside it, made by the service.
        for db in [name.to_owned(), format!("{name}_inventory")] {
            let _ = conn
                .execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
                .await;
        }
    }
}

/// A new database on the server of `url`: (its URL, its name).
pub async fn scratch_postgres(url: &str) -> anyhow::Result<(String, String)> {
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await?;
    let name = format!("orders_bench_{}", uuid::Uuid::new_v4().simple());
    conn.execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url);
    Ok((format!("{base}/{name}"), name))
}

/// The machine the figures come from.
pub fn machine() -> serde_json::Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
    });
    json!({ "cpus": cpus, "cpu": model, "os": std::env::consts::OS })
}
