//! Command -> queryable, stage by stage: when each stage a command's trace
//! records (published, consumed, applied, queried) happened after its
//! commit, over a sample of the latency phase's commands. Offsets from the
//! commit rather than from the stage before: the relay records a batch as
//! published once its delivery reports are back, which can be after a
//! projector consumed it.

use super::load::Percentiles;
use anyhow::Context;
use hdrhistogram::Histogram;

/// Traces read per backend: enough for a p99, few enough to stay off the run.
pub const SAMPLE: usize = 300;

/// One stage and when it happened after the commit.
#[derive(Debug, serde::Serialize)]
pub struct Hop {
    /// The stage (published, consumed, applied, queried).
    pub stage: String,
    /// Microseconds from the commit, over the sample.
    pub us: Percentiles,
}

/// The hops of `command_ids`' traces (every stage the traces record).
pub async fn of(base: &str, command_ids: &[String]) -> anyhow::Result<Vec<Hop>> {
    let http = reqwest::Client::new();
    let mut hops: Vec<(String, Histogram<u64>)> = Vec::new();
    let step = (command_ids.len() / SAMPLE).max(1);
    for id in command_ids.iter().step_by(step) {
        let trace: serde_json::Value = http
            .get(format!("{base}/commands/{id}/trace"))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("the trace of {id}"))?
            .json()
            .await?;
        let stages = trace["stages"]
            .as_array()
            .context("a trace without stages")?;
        let at = |s: &serde_json::Value| {
            s["at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        };
        let Some(committed) = stages
            .iter()
            .find(|s| s["stage"] == "committed")
            .and_then(at)
        else {
            continue;
        };
        for s in stages {
            let (Some(stage), Some(t)) = (s["stage"].as_str(), at(s)) else {
                continue;
            };
            if matches!(stage, "received" | "committed") {
                continue;
            }
            let ms = (t - committed).num_microseconds().unwrap_or(0) as f64 / 1000.0;
            let i = match hops.iter().position(|(n, _)| n == stage) {
                Some(i) => i,
                None => {
                    hops.push((
                        stage.to_owned(),
                        Histogram::new_with_bounds(1, 120_000_000, 3)?,
                    ));
                    hops.len() - 1
                }
            };
            hops[i].1.saturating_record((ms * 1000.0).max(1.0) as u64);
        }
    }
    Ok(hops
        .into_iter()
        .map(|(stage, h)| Hop {
            stage,
            us: (&h).into(),
        })
        .collect())
}
