//! Metrics (Prometheus text on `/metrics`), readiness, and the sampler that
//! turns database and broker state into gauges: outbox backlog and the
//! projector's lag per partition.

use super::live::ProgressSample;
use super::{App, KafkaOptions, PROJECTOR};
use axum::http::header;
use axum::response::IntoResponse;
use cqrs_sql::SourceKey;
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ];
            let sizes = [1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), &sizes))
                .and_then(|b| b.install_recorder())
                .inspect_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
                .inspect(|_| {
                    super::metrics_catalog::describe();
                    super::metrics_catalog::register(None);
                })
        })
        .as_ref()
}

/// `GET /metrics`.
pub async fn metrics() -> impl IntoResponse {
    let body = install().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

fn kafka_client(k: &KafkaOptions) -> Result<BaseConsumer, String> {
    k.config()
        .client()
        .set("group.id", format!("orders-metrics-{}", std::process::id()))
        .create()
        .map_err(|e| e.to_string())
}

/// Each dependency and whether it answers: the write DBs (the orders' and
/// the inventory's) must accept a write, the read DB a read (and a write
/// where the projector runs here).
pub async fn readiness(app: &App) -> Vec<(&'static str, Result<(), String>)> {
    let within = |what: BoxFuture<'static, Result<(), String>>| async move {
        match tokio::time::timeout(Duration::from_secs(2), what).await {
            Ok(r) => r,
            Err(_) => Err("no answer within 2 s".to_owned()),
        }
    };
    let store = app.store.clone();
    let write = within(Box::pin(async move {
        store.check_writable().await.map_err(|e| e.to_string())
    }))
    .await;
    // Creates ask it which SKUs are tracked; the saga writes to it (where
    // it runs in this process beside the orders: alone, it is `write_db`).
    let stock = app
        .inventory
        .clone()
        .filter(|_| app.orders_here)
        .map(|l| l.store().clone());
    let inventory = match stock {
        Some(stock) => Some(
            within(Box::pin(async move {
                stock.check_writable().await.map_err(|e| e.to_string())
            }))
            .await,
        ),
        None => None,
    };
    let read_db = app.read.clone();
    let projects_here = app.projects_here;
    let read = within(Box::pin(async move {
        sqlx::query("SELECT 1")
            .execute(&read_db.pool)
            .await
            .map_err(|e| e.to_string())?;
        if projects_here {
            cqrs_sql::read::runner::check_writable(&read_db)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }))
    .await;
    let mut out = vec![("write_db", write)];
    if let Some(inventory) = inventory {
        out.push(("inventory_db", inventory));
    }
    out.push(("read_db", read));
    if let Some(k) = app.kafka.clone() {
        let r = tokio::task::spawn_blocking(move || {
            let c = kafka_client(&k)?;
            let meta = c
                .fetch_metadata(Some(&k.topic), Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            if meta.topics().iter().any(|t| t.partitions().is_empty()) {
                return Err(format!("topic {} has no partitions", k.topic));
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        out.push(("kafka", r));
    }
    out
}

/// Samples gauges every `every` until dropped, publishes the total lag and
/// the append rate for the live page, and (with `console`: where the API
/// serves it) the console's snapshot.
pub async fn sample_every(
    app: App,
    every: Duration,
    live: watch::Sender<Option<ProgressSample>>,
    console: Option<super::ops::OpsSources>,
) {
    let client = app
        .kafka
        .as_ref()
        .and_then(|k| {
            kafka_client(k)
                .map_err(
                    |e| tracing::warn!(error = %e, "no Kafka client: the lag gauges stay unset"),
                )
                .ok()
        })
        .map(Arc::new);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(i64, std::time::Instant)> = None;
    let mut view = super::ops::view::Console::default();
    loop {
        tick.tick().await;
        match sample(&app, client.clone()).await {
            Ok(Sampled {
                orders_lag: lag,
                head,
                streams,
            }) => {
                let now = std::time::Instant::now();
                let rate = last.map_or(0.0, |(h, t)| {
                    (head - h).max(0) as f64 / now.duration_since(t).as_secs_f64().max(1e-3)
                });
                last = Some((head, now));
                let (rebuilds, versions) = rebuilds(&app).await;
                if let Some(console) = &console {
                    let seen = super::ops::view::Sampled {
                        streams: &streams,
                        rebuilds: &rebuilds,
                        versions: &versions,
                    };
                    view.tick(&app, client.clone(), seen, console).await;
                }
                live.send_replace(Some(ProgressSample {
                    lag,
                    rate,
                    rebuilds,
                }));
            }
            Err(e) => tracing::debug!(error = %e, "metrics sample failed"),
        }
    }
}

/// The read models' live versions per projector (projection, version).
pub type LiveVersions = HashMap<String, Vec<(String, i64)>>;

/// The builds in the read DB (any process's) and the live versions, with
/// their gauges set.
async fn rebuilds(app: &App) -> (Vec<super::live::RebuildSample>, LiveVersions) {
    let mut versions = LiveVersions::new();
    let builds = match cqrs_sql::read::versions::builds(&app.read).await {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the builds");
            return (Vec::new(), versions);
        }
    };
    let now = cqrs_sql::read::versions::now_ms();
    let mut out = Vec::new();
    for projector in [PROJECTOR, crate::config::INVENTORY_PROJECTOR] {
        if let Ok(live) = cqrs_sql::read::versions::live_versions(&app.read, projector).await {
            for v in &live {
                metrics::gauge!("cqrs_read_model_version", "projector" => projector, "projection" => v.projection.clone())
                    .set(v.live_version as f64);
            }
            let pairs = live.into_iter().map(|v| (v.projection, v.live_version));
            versions.insert(projector.to_owned(), pairs.collect());
        }
        let row = builds.iter().find(|(p, _)| p == projector).map(|(_, b)| b);
        let (done, total) = row.map_or((0, 0), |b| (b.done, b.total));
        metrics::gauge!("cqrs_rebuild_events", "projector" => projector).set(done as f64);
        metrics::gauge!("cqrs_rebuild_events_target", "projector" => projector).set(total as f64);
        metrics::gauge!("cqrs_rebuild_running", "projector" => projector)
            .set(f64::from(u8::from(row.is_some_and(|b| b.is_alive(now)))));
        if let Some(b) = row {
            out.push(super::live::RebuildSample::of(projector, b, now));
        }
    }
    (out, versions)
}

/// What one sample measured.
struct Sampled {
    /// Records the orders' projector has not yet applied.
    orders_lag: i64,
    /// The write log's head position.
    head: i64,
    /// Every processor's partitions (or log), as measured.
    streams: HashMap<&'static str, Vec<super::ops::view::PartitionView>>,
}

/// Sets the gauges; answers what it measured.
async fn sample(app: &App, client: Option<Arc<BaseConsumer>>) -> anyhow::Result<Sampled> {
    use cqrs_sql::EventStore;
    let log_head = app.store.head_position().await?;
    // Only a relay moves the outbox checkpoint: in the embedded mode the
    // projector reads the log itself, and the gauges would only climb.
    if app.kafka.is_some() {
        metrics::gauge!("cqrs_outbox_pending").set(app.store.outbox_pending().await? as f64);
        metrics::gauge!("cqrs_outbox_oldest_pending_age_seconds")
            .set(app.store.oldest_pending_age().await?);
    }
    let now = chrono::Utc::now();
    let mut marks: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
    let mut orders_lag = 0;
    let mut sampled: HashMap<&'static str, Vec<super::ops::view::PartitionView>> = HashMap::new();
    for side in &app.ops.processors {
        let rows = cqrs_sql::read::runner::checkpoint_rows(&app.read, side.name).await?;
        let checkpoints: Checkpoints = rows
            .into_iter()
            .map(|c| (c.source_key, (c.next_position, c.updated_at)))
            .collect();
        let Some(streams) = stream_ends(side, &checkpoints, &client, &mut marks).await? else {
            continue;
        };
        let views = sampled.entry(side.name).or_default();
        for (key, end, lag) in streams {
            if side.name == PROJECTOR {
                orders_lag += lag;
            }
            views.push(partition_view(side, &key, end, lag, &checkpoints, now));
        }
    }
    Ok(Sampled {
        orders_lag,
        head: log_head,
        streams: sampled,
    })
}

/// A processor's checkpoints: next position and when it last moved.
type Checkpoints = HashMap<SourceKey, (i64, String)>;

/// Each stream of `side` with its end and the records waiting in it: its
/// topic's partitions (their high watermarks asked once per topic, kept in
/// `marks`), or its log; `None` where neither can be measured.
async fn stream_ends(
    side: &super::ops::Processor,
    checkpoints: &Checkpoints,
    client: &Option<Arc<BaseConsumer>>,
    marks: &mut HashMap<String, Vec<(i32, i64)>>,
) -> anyhow::Result<Option<Vec<(SourceKey, i64, i64)>>> {
    use cqrs_sql::EventStore;
    match (&side.log, client) {
        (None, Some(c)) => {
            if !marks.contains_key(&side.topic) {
                let m = high_watermarks(c.clone(), side.topic.clone()).await?;
                marks.insert(side.topic.clone(), m);
            }
            Ok(Some(
                marks
                    .get(&side.topic)
                    .into_iter()
                    .flatten()
                    .map(|(p, high)| {
                        let key = SourceKey::partition(side.topic.as_str(), *p);
                        let next = checkpoints.get(&key).map_or(0, |c| c.0);
                        (key, *high, (high - next).max(0))
                    })
                    .collect(),
            ))
        }
        (Some(log), _) => {
            // Log positions start at 1: the checkpoint is one past the last read.
            let head = log.head_position().await?;
            let next = checkpoints.get(&SourceKey::Log).map_or(1, |c| c.0);
            Ok(Some(vec![(
                SourceKey::Log,
                head + 1,
                (head - (next - 1)).max(0),
            )]))
        }
        (None, None) => Ok(None),
    }
}

/// One stream's lag gauges, set, and its view for the console.
fn partition_view(
    side: &super::ops::Processor,
    key: &SourceKey,
    end: i64,
    lag: i64,
    checkpoints: &Checkpoints,
    now: chrono::DateTime<chrono::Utc>,
) -> super::ops::view::PartitionView {
    let partition = match key {
        SourceKey::Partition { partition, .. } => partition.to_string(),
        SourceKey::Log => key.to_string(),
    };
    let labels = [
        ("projector", side.name.to_owned()),
        ("group", side.group.clone()),
        ("topic", side.topic.clone()),
        ("partition", partition.clone()),
    ];
    metrics::gauge!("cqrs_projector_lag_records", &labels).set(lag as f64);
    // Seconds since this stream's checkpoint last moved while records wait
    // (0 when caught up).
    let since = checkpoints
        .get(key)
        .and_then(|(_, u)| cqrs_sql::db::parse_timestamp(u).ok())
        .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
    let waited = if lag > 0 { since } else { 0.0 };
    metrics::gauge!("cqrs_projector_lag_seconds", &labels).set(waited);
    super::ops::view::PartitionView {
        partition,
        checkpoint: checkpoints.get(key).map(|c| c.0),
        end,
        lag_records: lag,
        lag_seconds: waited,
        member: None,
    }
}

/// Every partition of `topic` with its high watermark (the next offset to be
/// written), asked of the broker off the async threads.
async fn high_watermarks(
    client: Arc<BaseConsumer>,
    topic: String,
) -> anyhow::Result<Vec<(i32, i64)>> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(i32, i64)>> {
        let meta = client.fetch_metadata(Some(&topic), Duration::from_secs(2))?;
        let mut out = Vec::new();
        for t in meta.topics() {
            for p in t.partitions() {
                let (_, high) = client.fetch_watermarks(&topic, p.id(), Duration::from_secs(2))?;
                out.push((p.id(), high));
            }
        }
        Ok(out)
    })
    .await?
}
