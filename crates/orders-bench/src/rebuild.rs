//! Rebuild while serving: every order read model rebuilt from the topic
//! (`orders rebuild --projection all`'s path) while an API-only instance
//! answers `GET /orders/{id}` at a steady rate from the read DB (cache off, so every answer
//! is a read of the tables being swapped). Reads are compared with what the
//! same instance answered before the rebuild began.

use super::load::{bar, Served};
use anyhow::{bail, Context};
use cqrs_kafka::KafkaConfig;
use cqrs_sql::read::rebuild::RebuildReport;
use cqrs_sql::{Db, DbOptions};
use hdrhistogram::Histogram;
use orders_service::server::rebuilds::{self, HistoryOf, Side};
use orders_service::server::{Config, Role, PROJECTOR};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Reads per second while idle and during the rebuild: a service under
/// steady use, not one saturated (a closed loop would take every core the
/// rebuild needs and measure only how they are shared).
const READ_RATE: f64 = 500.0;

/// What a rebuild under reads measured.
pub struct RebuildFigures {
    /// The rebuild.
    pub report: RebuildReport,
    /// Read p99 before the rebuild, µs.
    pub idle_p99_us: u64,
    /// Read p99 during it, µs.
    pub during_p99_us: u64,
    /// Reads during it.
    pub reads: u64,
    /// Reads that failed (not 200).
    pub failed: u64,
    /// Reads whose body differed from the answer before the rebuild.
    pub wrong: u64,
    /// Per phase of the rebuild when each read was due: (phase, reads, p99 µs).
    pub phases: Vec<(&'static str, u64, u64)>,
}

/// The rebuild's phase, as the reads see it (sampled every 10 ms).
type Phase = Arc<std::sync::Mutex<&'static str>>;

/// Rebuilds the order read models of `read_url` from `kafka`'s topic while
/// an API-only instance over `write_url`/`read_url` serves reads of `ids`.
pub async fn while_serving(
    write_url: &str,
    read_url: &str,
    kafka: &KafkaConfig,
    ids: Vec<String>,
    idle_secs: f64,
) -> anyhow::Result<RebuildFigures> {
    if ids.is_empty() {
        bail!("no orders to read");
    }
    let dir = tempfile::tempdir()?;
    let mut config = Config::embedded(dir.path());
    config.database_url = Some(write_url.to_owned());
    config.read_database_url = Some(read_url.to_owned());
    config.roles = vec![Role::Api];
    config.read_cache_bytes = 0;
    let served = Served::start(&config).await?;
    let expected = Arc::new(answers(&served.base, &ids).await?);
    let ids = Arc::new(ids);
    let phase: Phase = Arc::new(std::sync::Mutex::new("idle"));
    let idle = reads(&served.base, &ids, &expected, idle_until(idle_secs), &phase).await?;
    if let Ok(mut p) = phase.lock() {
        *p = "starting";
    }
    let done = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(reads_until(
        served.base.clone(),
        ids.clone(),
        expected.clone(),
        done.clone(),
        phase.clone(),
    ));
    let read = Db::connect(read_url, &DbOptions::default()).await?;
    let report = rebuild_watched(&read, kafka, phase.clone()).await;
    done.store(true, Ordering::Release);
    let report = report?;
    let during = load.await??;
    read.close().await;
    served.stop().await?;
    Ok(RebuildFigures {
        report,
        idle_p99_us: idle.latencies.value_at_quantile(0.99),
        during_p99_us: during.latencies.value_at_quantile(0.99),
        reads: during.latencies.len(),
        failed: during.failed,
        wrong: during.wrong,
        phases: during
            .by_phase
            .iter()
            .map(|(p, h)| (*p, h.len(), h.value_at_quantile(0.99)))
            .collect(),
    })
}

/// Rebuilds every order read model of `read` from `kafka`'s topic, with a
/// progress bar, keeping `phase` at the rebuild's phase (every 10 ms).
async fn rebuild_watched(
    read: &Db,
    kafka: &KafkaConfig,
    phase: Phase,
) -> anyhow::Result<RebuildReport> {
    let side = Side {
        projector: PROJECTOR,
        projections: orders::read_model::projections(),
        history: HistoryOf::Topic(kafka.clone()),
    };
    let pb = bar(0, "rebuild while serving");
    let status_pb = pb.clone();
    let report = rebuilds::rebuild(
        read,
        &side,
        &side.projections,
        cqrs_sql::read::rebuild::DEFAULT_BATCH,
        None,
        CancellationToken::new(),
        move |s| {
            tokio::spawn(async move {
                while !status_pb.is_finished() {
                    status_pb.set_length(s.total().max(s.done()).max(0) as u64);
                    status_pb.set_position(s.done().max(0) as u64);
                    status_pb.set_message(s.phase());
                    if let Ok(mut p) = phase.lock() {
                        *p = s.phase();
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        },
    )
    .await;
    pb.finish_and_clear();
    report.context("rebuild while serving")
}

/// What the instance answers for each of `ids` before the rebuild.
async fn answers(base: &str, ids: &[String]) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let http = reqwest::Client::new();
    let mut expected = HashMap::new();
    for id in ids {
        let res = http.get(format!("{base}/orders/{id}")).send().await?;
        if res.status() != 200 {
            bail!(
                "GET /orders/{id} answered {} before the rebuild",
                res.status()
            );
        }
        expected.insert(id.clone(), res.bytes().await?.to_vec());
    }
    Ok(expected)
}

/// Reads measured in one phase.
struct Reads {
    latencies: Histogram<u64>,
    /// The same, by the rebuild's phase when each read was due.
    by_phase: std::collections::BTreeMap<&'static str, Histogram<u64>>,
    failed: u64,
    wrong: u64,
}

fn idle_until(secs: f64) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        flag.store(true, Ordering::Release);
    });
    stop
}

async fn reads_until(
    base: String,
    ids: Arc<Vec<String>>,
    expected: Arc<HashMap<String, Vec<u8>>>,
    stop: Arc<AtomicBool>,
    phase: Phase,
) -> anyhow::Result<Reads> {
    reads(&base, &ids, &expected, stop, &phase).await
}

/// Reads at `READ_RATE` per second (each scheduled on its own, so a slow
/// answer does not hold the next back) until `stop`; latency from when
/// each was due.
async fn reads(
    base: &str,
    ids: &Arc<Vec<String>>,
    expected: &Arc<HashMap<String, Vec<u8>>>,
    stop: Arc<AtomicBool>,
    phase: &Phase,
) -> anyhow::Result<Reads> {
    let http = reqwest::Client::new();
    let every = Duration::from_secs_f64(1.0 / READ_RATE);
    let started = tokio::time::Instant::now();
    let mut sent = Vec::new();
    let mut i = 0usize;
    while !stop.load(Ordering::Acquire) {
        let due = started + every * i as u32;
        tokio::time::sleep_until(due).await;
        let id = ids[(i * 7919) % ids.len()].clone();
        let (http, expected, base) = (http.clone(), expected.clone(), base.to_owned());
        let during = phase.lock().map_or("?", |p| *p);
        sent.push(tokio::spawn(async move {
            let res = http.get(format!("{base}/orders/{id}")).send().await;
            let body = match res {
                Ok(r) if r.status() == 200 => r.bytes().await.ok(),
                _ => None,
            };
            let took = due.elapsed();
            let outcome = match body {
                None => Outcome::Failed,
                Some(b) if expected.get(&id).map(Vec::as_slice) != Some(&b[..]) => Outcome::Wrong,
                Some(_) => Outcome::Right,
            };
            (took, outcome, during)
        }));
        i += 1;
    }
    let histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
    let mut all = Reads {
        latencies: histogram()?,
        by_phase: Default::default(),
        failed: 0,
        wrong: 0,
    };
    for r in futures::future::join_all(sent).await {
        let (took, outcome, during) = r?;
        all.latencies.saturating_record(took.as_micros() as u64);
        if !all.by_phase.contains_key(during) {
            all.by_phase.insert(during, histogram()?);
        }
        if let Some(h) = all.by_phase.get_mut(during) {
            h.saturating_record(took.as_micros() as u64);
        }
        match outcome {
            Outcome::Failed => all.failed += 1,
            Outcome::Wrong => all.wrong += 1,
            Outcome::Right => {}
        }
    }
    Ok(all)
}

enum Outcome {
    Right,
    Wrong,
    Failed,
}
