//! The saga's latency: orders of tracked SKUs offered at a fixed rate,
//! each timed from its intended send to the commit of the order's
//! `StockReserved` (the saga's last word, in the write DB). Run on one hot
//! SKU (every reservation on one aggregate, one commit after another) and
//! spread over many (reservations side by side).

use super::load::{bar, Percentiles};
use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use cqrs_sql::EventStore;
use hdrhistogram::Histogram;
use orders_service::server::Running;
use serde_json::json;
use std::time::Duration;

/// The SKUs the phases order from, one and many.
pub(crate) const SPREADS: [usize; 2] = [1, 100];

/// The `k`th SKU of a phase over `skus` (stocked first).
fn sku(skus: usize, k: usize) -> String {
    format!("bench-{skus}-{k}")
}

/// What one saga phase measured.
#[derive(Debug, serde::Serialize)]
pub struct SagaLatency {
    /// The SKUs the orders were spread over (order i takes SKU i mod skus).
    pub(crate) skus: usize,
    /// Orders offered and settled.
    pub(crate) orders: usize,
    /// From the intended send to the order's `StockReserved` commit.
    pub(crate) create_to_reserved_us: Percentiles,
    /// Orders that did not come through.
    pub(crate) errors: usize,
}

/// Every phase of [`SPREADS`], one after another.
pub(crate) async fn phases(
    running: &Running,
    base: &str,
    n: usize,
    rate: f64,
) -> anyhow::Result<Vec<SagaLatency>> {
    let mut out = Vec::with_capacity(SPREADS.len());
    for skus in SPREADS {
        out.push(create_to_reserved(running, base, n, rate, skus).await?);
    }
    Ok(out)
}

/// `n` creates of one stocked unit each, spread over `skus` SKUs, offered
/// at `rate`/s.
async fn create_to_reserved(
    running: &Running,
    base: &str,
    n: usize,
    rate: f64,
    skus: usize,
) -> anyhow::Result<SagaLatency> {
    let http = reqwest::Client::new();
    let each = (n / skus + 1).min(1_000_000) as i64;
    for k in 0..skus {
        let stocked = http
            .post(format!("{base}/inventory/{}/stock", sku(skus, k)))
            .json(&json!({ "quantity": each }))
            .send()
            .await?;
        if !stocked.status().is_success() {
            bail!("stock answered {}", stocked.status());
        }
    }
    let pb = bar(
        n,
        &format!("saga latency over {skus} SKU(s) (open loop, {rate}/s)"),
    );
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let wall_start = Utc::now() + chrono::Duration::milliseconds(50);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let offset = Duration::from_secs_f64(i as f64 / rate);
        let (http, base, pb) = (http.clone(), base.to_owned(), pb.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + offset).await;
            let body = json!({ "customer_id": format!("saga-{}", i % 97),
                "items": [{ "sku": sku(skus, i % skus), "quantity": 1, "unit_price_cents": 100 }] });
            let r = async {
                let res = http
                    .post(format!("{base}/orders"))
                    .json(&body)
                    .send()
                    .await?;
                if res.status() != 201 {
                    bail!("create answered {}", res.status());
                }
                let v: serde_json::Value = res.json().await?;
                Ok::<_, anyhow::Error>(v["order_id"].as_str().context("no order id")?.to_owned())
            }
            .await;
            pb.inc(1);
            r.ok().map(|id| (id, offset))
        }));
    }
    let sent: Vec<(String, Duration)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .filter_map(|t| t.ok().flatten())
        .collect();
    pb.finish_and_clear();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut errors = n - sent.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (id, offset) in &sent {
        let intended = wall_start + chrono::Duration::from_std(*offset)?;
        match reserved_at(running, id, deadline).await? {
            Some(at) => {
                let _ = hist.record((at - intended).num_microseconds().unwrap_or(0).max(1) as u64);
            }
            None => errors += 1,
        }
    }
    Ok(SagaLatency {
        skus,
        orders: sent.len(),
        create_to_reserved_us: Percentiles::from(&hist),
        errors,
    })
}

/// When the order's `StockReserved` committed (None: not by the deadline).
async fn reserved_at(
    running: &Running,
    id: &str,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Option<DateTime<Utc>>> {
    loop {
        let events = running.app.store.load(id).await?;
        if let Some(e) = events.iter().find(|e| e.event_type == "StockReserved") {
            return Ok(Some(e.recorded_at));
        }
        if tokio::time::Instant::now() > deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
