//! The open-loop sweep of `orders-bench --sweep`: offered rates doubling
//! until the service no longer keeps up, the knee (the highest rate it
//! sustains), and the latencies at half the knee.

use super::load::{caught_up, latency, Percentiles};
use anyhow::{bail, Context};
use orders_service::server::Running;
use std::time::Duration;

/// The first offered rate of the sweep, commands/s.
const FIRST_RATE: f64 = 250.0;

/// The sweep stops at this offered rate whatever happens.
const LAST_RATE: f64 = 32_000.0;

/// Above this p99 (command -> queryable) a rate is not sustained.
const SUSTAINED_P99_US: u64 = 100_000;

/// One offered rate and what came of it.
#[derive(Debug, serde::Serialize)]
pub struct SweepPoint {
    /// Offered, commands/s.
    pub offered: f64,
    /// Achieved, commands/s.
    pub achieved: f64,
    /// Command answered, from its intended send time.
    pub command_us: Percentiles,
    /// Command queryable, from its intended send time.
    pub command_to_queryable_us: Percentiles,
    /// Commands or reads that failed.
    pub errors: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

impl SweepPoint {
    /// Whether the service kept up: at least 95 % of the offered rate, no
    /// errors, p99 command -> queryable under 100 ms.
    pub fn sustained(&self) -> bool {
        self.achieved >= 0.95 * self.offered
            && self.errors == 0
            && self.command_to_queryable_us.p99 <= SUSTAINED_P99_US
    }
}

/// What the sweep found.
#[derive(Debug, serde::Serialize)]
pub struct Sweep {
    /// Every rate tried, in order.
    pub points: Vec<SweepPoint>,
    /// The highest sustained offered rate (None: not even the first).
    pub knee: Option<f64>,
    /// Measured again at half the knee.
    pub half_knee: Option<SweepPoint>,
}

/// The server's open connections, from its own `/metrics`.
async fn open_connections(base: &str) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix("http_connections_open "))
        .and_then(|v| v.trim().parse().ok())
        .context("no http_connections_open in /metrics")
}

/// Waits until the connections of the rate before are gone: after an
/// overloaded rate the server holds up to its cap of them for a while, and
/// refuses new ones meanwhile (so a failed look at `/metrics` means "not
/// yet", until the deadline).
async fn connections_settled(base: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let open = open_connections(base).await;
        if matches!(open, Ok(n) if n <= 8.0) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let seen = open
                .map(|n| format!("{n} open"))
                .unwrap_or_else(|e| format!("{e:#}"));
            bail!("the server still holds the connections of the rate before after 2 minutes ({seen})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One rate, started level: the read model holds every event first and the
/// connections of the rate before are closed, so a backlog left by the rate
/// before does not count against this one.
async fn point(
    running: &Running,
    base: &str,
    seconds: f64,
    offered: f64,
) -> anyhow::Result<SweepPoint> {
    caught_up(running).await?;
    connections_settled(base).await?;
    let n = ((offered * seconds) as usize).max(50);
    let (lat, achieved) = latency(base, n, offered).await?;
    Ok(SweepPoint {
        offered,
        achieved,
        command_us: (&lat.command).into(),
        command_to_queryable_us: (&lat.queryable).into(),
        errors: lat.errors,
        first_error: lat.first_error,
    })
}

/// Offers rates from 250/s doubling, `seconds` each, until one is not
/// sustained; then measures half the knee.
pub async fn run(running: &Running, base: &str, seconds: f64) -> anyhow::Result<Sweep> {
    let mut points = Vec::new();
    let mut offered = FIRST_RATE;
    while offered <= LAST_RATE {
        let p = point(running, base, seconds, offered).await?;
        let sustained = p.sustained();
        points.push(p);
        if !sustained {
            break;
        }
        offered *= 2.0;
    }
    let knee = points
        .iter()
        .take_while(|p| p.sustained())
        .last()
        .map(|p| p.offered);
    let half_knee = match knee {
        Some(k) => Some(point(running, base, seconds, k / 2.0).await?),
        None => None,
    };
    Ok(Sweep {
        points,
        knee,
        half_knee,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offered: f64, achieved: f64, p99_ms: u64, errors: usize) -> SweepPoint {
        let p = |v| Percentiles {
            p50: v,
            p99: v,
            p999: v,
            max: v,
        };
        SweepPoint {
            offered,
            achieved,
            command_us: p(1_000),
            command_to_queryable_us: p(p99_ms * 1_000),
            errors,
            first_error: None,
        }
    }

    #[test]
    fn a_rate_is_sustained_only_when_kept_up_without_errors_or_queues() {
        assert!(at(1000.0, 990.0, 20, 0).sustained());
        assert!(!at(1000.0, 900.0, 20, 0).sustained(), "fell behind");
        assert!(!at(1000.0, 1000.0, 20, 1).sustained(), "an error");
        assert!(!at(1000.0, 1000.0, 500, 0).sustained(), "a queue built up");
    }
}
