//! Like-for-like baselines of `orders-bench`: pgbench on the same server at
//! the same concurrency (one-row INSERT transactions, and the built-in
//! select-only script), and the query side's own closed loop of
//! `GET /orders/{id}` to set beside the latter.

use super::load::{bar, Percentiles};
use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A pgbench run: where, how many clients, how many seconds.
#[derive(Debug, Clone, Copy)]
pub struct Pgbench<'a> {
    /// The database.
    pub url: &'a str,
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds each run lasts.
    pub secs: u32,
}

/// pgbench's transactions per second with `args` (a script file or a
/// built-in).
async fn pgbench(run: Pgbench<'_>, args: &[&str]) -> anyhow::Result<f64> {
    let out = tokio::process::Command::new("pgbench")
        .args(["-n", "-c", &run.clients.to_string(), "-j", "2"])
        .args(["-T", &run.secs.to_string()])
        .args(args)
        .arg(run.url)
        .output()
        .await
        .context("running pgbench (it ships with PostgreSQL; scripts/services installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tps_of(&text).with_context(|| format!("no tps in pgbench's output: {text}"))
}

/// The `tps = N (without initial connection time)` figure of pgbench.
fn tps_of(output: &str) -> Option<f64> {
    output
        .lines()
        .filter(|l| l.starts_with("tps = "))
        .find(|l| l.contains("without initial connection time"))
        .or_else(|| output.lines().find(|l| l.starts_with("tps = ")))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// One-row INSERT transactions of an order-sized JSON body into a table
/// with a primary key, as many clients as ours.
pub async fn insert_tps(run: Pgbench<'_>) -> anyhow::Result<f64> {
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(run.url).await?;
    sqlx::Executor::execute(
        &mut conn,
        "CREATE TABLE IF NOT EXISTS bench_pgbench (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)",
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("insert.sql");
    std::fs::write(
        &script,
        "INSERT INTO bench_pgbench (body) VALUES ('{\"customer_id\":\"bench-1\",\"items\":[{\"sku\":\"sku-1\",\"quantity\":1,\"unit_price_cents\":1999}]}');\n",
    )?;
    let path = script.to_string_lossy().into_owned();
    pgbench(run, &["-f", &path]).await
}

/// pgbench's built-in select-only script (one row by primary key from
/// `pgbench_accounts`, scale 1: 100,000 rows), as many clients as ours.
pub async fn select_tps(run: Pgbench<'_>) -> anyhow::Result<f64> {
    let init = tokio::process::Command::new("pgbench")
        .args(["-i", "-q", "-s", "1"])
        .arg(run.url)
        .output()
        .await
        .context("running pgbench -i")?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    pgbench(run, &["-S"]).await
}

/// `GET /orders/{id}` in a closed loop of `clients`, over the orders the
/// read model holds: requests per second, and their latencies.
pub async fn get_throughput(
    base: &str,
    ids: Vec<String>,
    n: usize,
    clients: usize,
) -> anyhow::Result<(f64, Percentiles)> {
    if ids.is_empty() {
        bail!("no orders to read");
    }
    let http = reqwest::Client::new();
    let (ids, next) = (Arc::new(ids), Arc::new(AtomicUsize::new(0)));
    let pb = bar(n, "GET /orders/{id} (closed loop)");
    let started = Instant::now();
    let workers = (0..clients).map(|_| {
        let (http, ids, next, pb, base) = (
            http.clone(),
            ids.clone(),
            next.clone(),
            pb.clone(),
            base.to_owned(),
        );
        tokio::spawn(async move {
            let mut latencies = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let id = &ids[i % ids.len()];
                let sent = Instant::now();
                let res = http.get(format!("{base}/orders/{id}")).send().await?;
                if res.status() != 200 {
                    bail!("GET /orders/{id} answered {}", res.status());
                }
                res.bytes().await?;
                latencies.saturating_record(sent.elapsed().as_micros() as u64);
                pb.inc(1);
            }
        })
    });
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for w in futures::future::join_all(workers).await {
        all.add(w??)?;
    }
    pb.finish_and_clear();
    Ok((n as f64 / started.elapsed().as_secs_f64(), (&all).into()))
}

#[cfg(test)]
mod tests {
    use super::tps_of;

    #[test]
    fn the_tps_without_connection_time_is_read() {
        let out = "number of transactions actually processed: 156060\n\
                   latency average = 2.050 ms\n\
                   initial connection time = 25.123 ms\n\
                   tps = 15606.004211 (without initial connection time)\n";
        assert_eq!(tps_of(out), Some(15606.004211));
        assert_eq!(tps_of("nothing"), None);
    }
}
