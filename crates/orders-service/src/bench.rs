//! `orders bench`: commands/s (closed loop, beside a raw single-row INSERT
//! rate on the same database and concurrency) and command->queryable latency
//! (open loop at a fixed offered rate, measured from each command's intended
//! send time, so a slow server cannot hide its queue).

use crate::app::{Config, Running};
use crate::bench_pg;
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sqlx::Executor;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options of `orders bench`.
#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// Commands per phase.
    #[arg(long, default_value_t = 2_000)]
    pub commands: usize,
    /// Offered rate of the latency phase, commands/s.
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// Concurrent clients of the throughput phase (and the raw baseline).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Also bench PostgreSQL: a server URL; a scratch database is created on it.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Also bench PostgreSQL with Kafka between the sides (needs --database-url).
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Also sweep offered rates (doubling from 250/s) for this many seconds
    /// each to find the knee, then measure half the knee.
    #[arg(long)]
    pub sweep_secs: Option<f64>,
    /// Seconds each pgbench baseline runs.
    #[arg(long, default_value_t = 10)]
    pub pgbench_secs: u32,
    /// Also measure again after importing this many events of made-up
    /// order history into the write store (e.g. 10000000): whether the cost
    /// of a command or a query grows with history.
    #[arg(long)]
    pub store_events: Option<i64>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// A focused benchmark instead of the command benchmarks.
    #[command(subcommand)]
    pub what: Option<crate::bench_kafka::What>,
}

/// Figures of one backend.
#[derive(Debug, serde::Serialize)]
pub struct BackendResult {
    backend: String,
    commands_per_sec: f64,
    /// Create-then-pay over HTTP in a closed loop, commands (two per order)/s.
    create_pay_commands_per_sec: f64,
    projector_events_per_sec: f64,
    raw_inserts_per_sec: f64,
    ratio_to_raw: f64,
    /// pgbench one-row INSERT transactions at the same concurrency (PostgreSQL).
    pgbench_insert_tps: Option<f64>,
    /// `GET /orders/{id}` per second in a closed loop at the same concurrency.
    reads_per_sec: f64,
    /// Their latencies.
    reads_us: Percentiles,
    /// The same with `--store-events` of history in the store.
    history: Option<crate::bench_history::History>,
    /// pgbench select-only at the same concurrency (PostgreSQL).
    pgbench_select_tps: Option<f64>,
    offered_rate: f64,
    achieved_rate: f64,
    command_us: Percentiles,
    command_to_queryable_us: Percentiles,
    errors: usize,
    /// The open-loop sweep, when asked for.
    sweep: Option<crate::bench_sweep::Sweep>,
}

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

/// The order a bench client sends as request `i` (bench-cqrs-es builds the same).
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
                let token = res
                    .headers()
                    .get("x-consistency-token")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .context("no token")?;
                let body: serde_json::Value = res.json().await?;
                let id = body["order_id"].as_str().context("no order id")?;
                let q = http
                    .get(format!("{base}/orders/{id}?wait_ms=30000"))
                    .header("x-consistency-token", token)
                    .send()
                    .await?;
                if !q.status().is_success() {
                    bail!("query answered {}", q.status());
                }
                Ok::<_, anyhow::Error>((answered, tokio::time::Instant::now()))
            }
            .await;
            if let Ok(mut l) = lat.lock() {
                match r {
                    Ok((answered, visible)) => {
                        let _ = l.command.record((answered - intended).as_micros() as u64);
                        let _ = l.queryable.record((visible - intended).as_micros() as u64);
                    }
                    Err(_) => l.errors += 1,
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
async fn raw_inserts(db: &cqrs_sql::Db, n: usize, concurrency: usize) -> anyhow::Result<f64> {
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

async fn bench_one(name: &str, config: Config, args: &BenchArgs) -> anyhow::Result<BackendResult> {
    eprintln!("== {name}");
    let running = Running::start(&config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = running.spawn_server(listener);
    let result = async {
        let started = Instant::now();
        let cps = throughput(&base, args.commands, args.concurrency).await?;
        // The projector's own pace: from the first command until the read
        // model holds the last event. Also lets the next phase start level.
        let events = caught_up(&running).await?;
        let projector = events as f64 / started.elapsed().as_secs_f64();
        let raw = raw_inserts(running.app.store.db(), args.commands, args.concurrency).await?;
        let create_pay =
            crate::bench_peer::create_then_pay(&base, args.commands / 2, args.concurrency).await?;
        let (lat, achieved) = latency(&base, args.commands, args.rate).await?;
        let ids = some_order_ids(&running).await?;
        let (reads, reads_us) =
            bench_pg::get_throughput(&base, ids, args.commands, args.concurrency).await?;
        let sweep = match args.sweep_secs {
            Some(secs) => Some(crate::bench_sweep::run(&running, &base, secs).await?),
            None => None,
        };
        let (pgbench_insert_tps, pgbench_select_tps) = match &config.database_url {
            Some(url) => {
                let run = bench_pg::Pgbench {
                    url,
                    clients: args.concurrency,
                    secs: args.pgbench_secs,
                };
                (
                    Some(bench_pg::insert_tps(run).await?),
                    Some(bench_pg::select_tps(run).await?),
                )
            }
            None => (None, None),
        };
        Ok::<_, anyhow::Error>(BackendResult {
            backend: name.to_owned(),
            commands_per_sec: cps,
            create_pay_commands_per_sec: create_pay,
            projector_events_per_sec: projector,
            raw_inserts_per_sec: raw,
            ratio_to_raw: cps / raw,
            pgbench_insert_tps,
            reads_per_sec: reads,
            reads_us,
            history: None,
            pgbench_select_tps,
            offered_rate: args.rate,
            achieved_rate: achieved,
            command_us: (&lat.command).into(),
            command_to_queryable_us: (&lat.queryable).into(),
            errors: lat.errors,
            sweep,
        })
    }
    .await;
    let settled = caught_up(&running).await;
    server.abort();
    running.stop().await?;
    let mut result = result?;
    settled?;
    if let Some(events) = args.store_events {
        result.history = Some(crate::bench_history::run(&config, args, events).await?);
    }
    Ok(result)
}

/// Waits until the read model holds every event of the write side (the sum
/// of applied versions equals the number of events); returns that number.
pub(crate) async fn caught_up(running: &Running) -> anyhow::Result<i64> {
    caught_up_since(running, 0, 0).await
}

/// The sum of the versions the projector has applied.
pub(crate) async fn applied_sum(running: &Running) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(version), 0) AS BIGINT) FROM projected_versions WHERE projector = $1",
    )
    .bind(crate::app::PROJECTOR)
    .fetch_one(&running.app.read.pool)
    .await?)
}

/// Waits until the projector has applied every event after position
/// `after` (imported history lies at or below it, never projected), counting
/// from `applied_before` (the applied sum when the history was imported).
pub(crate) async fn caught_up_since(
    running: &Running,
    after: i64,
    applied_before: i64,
) -> anyhow::Result<i64> {
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE position > $1")
        .bind(after)
        .fetch_one(&running.app.store.db().pool)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if applied_sum(running).await? - applied_before >= events {
            return Ok(events);
        }
        if Instant::now() > deadline {
            bail!("projector did not catch up within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Up to 10,000 order ids from the read model, for the GET phases.
pub(crate) async fn some_order_ids(running: &Running) -> anyhow::Result<Vec<String>> {
    Ok(
        sqlx::query_scalar("SELECT order_id FROM order_details LIMIT 10000")
            .fetch_all(&running.app.read.pool)
            .await?,
    )
}

pub(crate) async fn drop_scratch(url: &str, name: &str) {
    if let Ok(mut conn) = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await {
        let _ = conn
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await;
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

/// `orders bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(what) = &args.what {
        return crate::bench_kafka::run(what, &args).await;
    }
    let mut results = Vec::new();
    let peer = match &args.database_url {
        Some(url) => crate::bench_peer::cqrs_es(url, args.commands / 2, args.concurrency).await?,
        None => None,
    };
    let dir = tempfile::tempdir()?;
    results.push(bench_one("sqlite (embedded)", Config::embedded(dir.path()), &args).await?);
    if let Some(url) = &args.database_url {
        let (scratch, name) = scratch_postgres(url).await?;
        let mut config = Config::embedded(dir.path().join("pg"));
        config.database_url = Some(scratch);
        config.pool_size = (args.concurrency as u32 + 4).max(16);
        let r = bench_one("postgresql", config.clone(), &args).await;
        drop_scratch(url, &name).await;
        results.push(r?);
        if let Some(brokers) = &args.kafka_brokers {
            let (scratch, name) = scratch_postgres(url).await?;
            config.database_url = Some(scratch);
            let mut k = crate::app::KafkaOptions::new(brokers.clone());
            k.topic = format!("{name}.events");
            k.group_id = format!("{name}-group");
            config.kafka = Some(k);
            let r = bench_one("postgresql + kafka", config, &args).await;
            drop_scratch(url, &name).await;
            results.push(r?);
        }
    } else {
        eprintln!("(no --database-url / DATABASE_URL: PostgreSQL not benched)");
    }
    report(&results, peer.as_ref(), &args)
}

/// Prints the tables and writes the JSON results (and the plot of the sweep).
fn report(
    results: &[BackendResult],
    peer: Option<&crate::bench_peer::Peer>,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    let new_table = |header: Vec<&str>| {
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
        t.set_header(header);
        t
    };
    let mut writes = new_table(vec![
        "backend",
        "cmd/s",
        "projector ev/s",
        "raw insert/s",
        "ratio",
        "offered/s",
        "achieved/s",
        "cmd p50 ms",
        "cmd p99 ms",
        "queryable p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
    ]);
    let mut baselines = new_table(vec![
        "backend",
        "cmd/s",
        "pgbench insert tps",
        "ratio",
        "GET /orders/{id} /s",
        "pgbench select-only tps",
        "ratio",
    ]);
    for r in results {
        writes.add_row(write_row(r));
        baselines.add_row(baseline_row(r));
    }
    println!("{writes}");
    println!("{baselines}");
    if let Some(peer) = peer {
        println!("{}", peer_table(results, peer));
    }
    if results.iter().any(|r| r.history.is_some()) {
        println!("{}", history_table(results));
    }
    for r in results {
        if let Some(sweep) = &r.sweep {
            print_sweep(&r.backend, sweep);
        }
    }
    println!(
        "{} commands per phase, {} clients in the closed loops (ours and pgbench's); latency measured from each command's intended send time.",
        args.commands, args.concurrency
    );
    std::fs::create_dir_all(&args.out)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let file = args.out.join(format!("bench-{stamp}.json"));
    let doc = json!({ "machine": machine(), "args": { "commands": args.commands, "rate": args.rate,
        "concurrency": args.concurrency, "store_events": args.store_events }, "results": results,
        "cqrs_es": peer });
    std::fs::write(&file, serde_json::to_string_pretty(&doc)?)?;
    println!("results: {}", file.display());
    let sweeps: Vec<_> = results
        .iter()
        .filter_map(|r| r.sweep.as_ref().map(|s| (r.backend.as_str(), s)))
        .collect();
    if !sweeps.is_empty() {
        let plot = args.out.join(format!("bench-{stamp}.svg"));
        crate::bench_plot::write(&plot, &sweeps)?;
        println!("plot: {}", plot.display());
    }
    Ok(())
}

/// Each backend before and after importing `--store-events` of history.
fn history_table(results: &[BackendResult]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "backend",
        "events in store",
        "import s",
        "cmd/s before",
        "cmd/s after",
        "ratio",
        "GET p99 ms before",
        "after",
        "ratio",
        "GET/s before",
        "after",
    ]);
    let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
    for r in results {
        if let Some(h) = &r.history {
            t.add_row(vec![
                r.backend.clone(),
                h.events.to_string(),
                format!("{:.0}", h.import_secs),
                format!("{:.0}", h.before.commands_per_sec),
                format!("{:.0}", h.after.commands_per_sec),
                format!("{:.2}", h.command_ratio),
                ms(h.before.reads_us.p99),
                ms(h.after.reads_us.p99),
                format!("{:.2}", h.read_p99_ratio),
                format!("{:.0}", h.before.reads_per_sec),
                format!("{:.0}", h.after.reads_per_sec),
            ]);
        }
    }
    t
}

/// Create-then-pay: ours over HTTP beside cqrs-es + postgres-es in process.
fn peer_table(results: &[BackendResult], peer: &crate::bench_peer::Peer) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "create then pay",
        "cmd/s (HTTP)",
        "cqrs-es cmd/s (in process)",
        "ratio",
        "cqrs-es + view cmd/s",
        "ratio",
    ]);
    for r in results {
        let ours = r.create_pay_commands_per_sec;
        t.add_row(vec![
            r.backend.clone(),
            format!("{ours:.0}"),
            format!("{:.0}", peer.commands_per_sec),
            format!("{:.2}", ours / peer.commands_per_sec),
            format!("{:.0}", peer.with_view_commands_per_sec),
            format!("{:.2}", ours / peer.with_view_commands_per_sec),
        ]);
    }
    t
}

/// A row of the commands-and-latency table.
fn write_row(r: &BackendResult) -> Vec<String> {
    let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
    vec![
        r.backend.clone(),
        format!("{:.0}", r.commands_per_sec),
        format!("{:.0}", r.projector_events_per_sec),
        format!("{:.0}", r.raw_inserts_per_sec),
        format!("{:.2}", r.ratio_to_raw),
        format!("{:.0}", r.offered_rate),
        format!("{:.0}", r.achieved_rate),
        ms(r.command_us.p50),
        ms(r.command_us.p99),
        ms(r.command_to_queryable_us.p50),
        ms(r.command_to_queryable_us.p99),
        ms(r.command_to_queryable_us.p999),
        ms(r.command_to_queryable_us.max),
        r.errors.to_string(),
    ]
}

/// A row of the pgbench table (dashes where there is no PostgreSQL).
fn baseline_row(r: &BackendResult) -> Vec<String> {
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    let ratio = |a: f64, b: Option<f64>| b.map_or("-".to_owned(), |b| format!("{:.2}", a / b));
    vec![
        r.backend.clone(),
        format!("{:.0}", r.commands_per_sec),
        opt(r.pgbench_insert_tps),
        ratio(r.commands_per_sec, r.pgbench_insert_tps),
        format!("{:.0}", r.reads_per_sec),
        opt(r.pgbench_select_tps),
        ratio(r.reads_per_sec, r.pgbench_select_tps),
    ]
}

/// The sweep of one backend as a table, with its knee.
fn print_sweep(backend: &str, sweep: &crate::bench_sweep::Sweep) {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "offered/s",
        "achieved/s",
        "cmd p50 ms",
        "queryable p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "sustained",
    ]);
    let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
    let half = sweep.half_knee.iter().map(|p| (p, " (half the knee)"));
    for (p, note) in sweep.points.iter().map(|p| (p, "")).chain(half) {
        t.add_row(vec![
            format!("{:.0}{note}", p.offered),
            format!("{:.0}", p.achieved),
            ms(p.command_us.p50),
            ms(p.command_to_queryable_us.p50),
            ms(p.command_to_queryable_us.p99),
            ms(p.command_to_queryable_us.p999),
            ms(p.command_to_queryable_us.max),
            p.errors.to_string(),
            if p.sustained() { "yes" } else { "no" }.to_owned(),
        ]);
    }
    let knee = sweep
        .knee
        .map_or("none (250/s not sustained)".to_owned(), |k| {
            format!("{k:.0}/s")
        });
    println!("{backend}: open-loop sweep, knee {knee}\n{t}");
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
