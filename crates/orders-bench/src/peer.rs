//! The create-then-pay workload of `orders-bench`, over HTTP against ours and
//! in process against cqrs-es + postgres-es (the `cqrs-es-peer` binary,
//! built beside `orders` by `scripts/bench`), at the same concurrency on the
//! same PostgreSQL server.

use super::load::{bar, drop_scratch, order_body, order_total, scratch_postgres};
use anyhow::{bail, Context};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What the peer measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Peer {
    /// Which framework and versions.
    pub framework: String,
    /// Commands per second with events only.
    pub commands_per_sec: f64,
    /// Commands per second with its order-status view updated in the
    /// command's path (how cqrs-es keeps a view).
    pub with_view_commands_per_sec: f64,
}

/// `orders` closed loop: each of `clients` creates an order, then pays it;
/// commands (two per order) per second.
pub async fn create_then_pay(base: &str, orders: usize, clients: usize) -> anyhow::Result<f64> {
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let pb = bar(orders, "create then pay (closed loop)");
    let started = Instant::now();
    let workers = (0..clients).map(|_| {
        let (http, next, pb, base) = (http.clone(), next.clone(), pb.clone(), base.to_owned());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= orders {
                    return Ok::<_, anyhow::Error>(());
                }
                let body = order_body(i);
                let res = http.post(format!("{base}/orders")).json(&body).send().await?;
                if res.status() != 201 {
                    bail!("create answered {}", res.status());
                }
                let created: serde_json::Value = res.json().await?;
                let id = created["order_id"].as_str().context("no order id")?;
                let pay = serde_json::json!({ "amount_cents": order_total(i), "payment_ref": format!("pay-{i}") });
                let res = http
                    .post(format!("{base}/orders/{id}/pay"))
                    .json(&pay)
                    .send()
                    .await?;
                if !res.status().is_success() {
                    bail!("pay answered {}", res.status());
                }
                pb.inc(1);
            }
        })
    });
    for w in futures::future::join_all(workers).await {
        w??;
    }
    pb.finish_and_clear();
    Ok((2 * orders) as f64 / started.elapsed().as_secs_f64())
}

/// The peer binary beside ours, if it was built.
fn peer_binary() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let peer = exe.with_file_name("cqrs-es-peer");
    peer.exists().then_some(peer)
}

/// One run of the peer on a scratch database of the server of `url`.
async fn run_peer(
    binary: &std::path::Path,
    url: &str,
    orders: usize,
    clients: usize,
    with_view: bool,
) -> anyhow::Result<serde_json::Value> {
    let (scratch, name) = scratch_postgres(url).await?;
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args(["--database-url", &scratch])
        .args(["--orders", &orders.to_string()])
        .args(["--concurrency", &clients.to_string()]);
    if with_view {
        cmd.arg("--with-view");
    }
    let out = cmd.output().await;
    drop_scratch(url, &name).await;
    let out = out.with_context(|| format!("running {}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "cqrs-es-peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("cqrs-es-peer printed no JSON")
}

/// cqrs-es + postgres-es on create-then-pay, events only and with a view;
/// None (with a hint) when `cqrs-es-peer` was not built.
pub async fn cqrs_es(url: &str, orders: usize, clients: usize) -> anyhow::Result<Option<Peer>> {
    let Some(binary) = peer_binary() else {
        eprintln!(
            "(cqrs-es-peer not built beside this binary: cqrs-es baseline skipped; \
             scripts/bench builds it, or: cargo build --release -p orders-bench)"
        );
        return Ok(None);
    };
    eprintln!("cqrs-es + postgres-es: create then pay, {orders} orders");
    let plain = run_peer(&binary, url, orders, clients, false).await?;
    let view = run_peer(&binary, url, orders, clients, true).await?;
    let rate = |v: &serde_json::Value| v["commands_per_sec"].as_f64().context("no rate");
    Ok(Some(Peer {
        framework: plain["framework"].as_str().unwrap_or("cqrs-es").to_owned(),
        commands_per_sec: rate(&plain)?,
        with_view_commands_per_sec: rate(&view)?,
    }))
}
