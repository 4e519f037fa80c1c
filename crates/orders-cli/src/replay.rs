//! `orders replay --projection NAME`: rebuilds read models from the start of
//! the log (the Kafka topic, or the embedded event log) into fresh tables,
//! catches up with the live projector under a short lock, and swaps the
//! tables in one transaction while queries keep being served.

use anyhow::{bail, Context};
use cqrs_core::EventEnvelope;
use cqrs_sql::{Db, DbOptions, Dialect, EventStore, Projection, SourceKey, SqlEventStore, Step};
use indicatif::{ProgressBar, ProgressStyle};
use orders_service::server::{Config, PROJECTOR};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::Executor;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `orders replay`.
#[derive(clap::Args, Clone)]
pub struct ReplayArgs {
    /// Which read model: order_details, customer_summary, order_stats, or all.
    #[arg(long, default_value = "all")]
    pub projection: String,
    /// Events per read-DB transaction.
    #[arg(long, default_value_t = 5_000)]
    pub batch: usize,
}

const SUFFIX: &str = "__replay";
const TAG: &str = "_replay";

/// A record read ahead of its target: offset and event (or why it is not one).
type Held = (i64, Result<EventEnvelope, cqrs_kafka::record::RecordError>);

/// The events the replay reads, from Kafka or the embedded log.
enum Reader {
    Kafka {
        consumer: BaseConsumer,
        topic: String,
        pending: HashMap<i32, VecDeque<Held>>,
    },
    Log {
        store: SqlEventStore,
        after: i64,
    },
}

/// Per source key: the next position the replay will apply.
type Positions = HashMap<SourceKey, i64>;

impl Reader {
    /// Reads events (in order per source key) strictly below `targets`,
    /// calling `apply` in batches; returns how many it read.
    async fn read_until(
        &mut self,
        positions: &mut Positions,
        targets: &Positions,
        batch: usize,
        mut apply: impl AsyncFnMut(Vec<EventEnvelope>) -> anyhow::Result<()>,
        pb: &ProgressBar,
    ) -> anyhow::Result<u64> {
        let mut read = 0u64;
        match self {
            Reader::Log { store, after } => {
                let target = targets.get(&SourceKey::Log).copied().unwrap_or(1);
                while *after + 1 < target {
                    let limit = ((target - 1 - *after) as usize).min(batch) as i64;
                    let events = store.read_log(*after, limit).await?;
                    let Some(last) = events.last() else { break };
                    *after = last.position;
                    positions.insert(SourceKey::Log, last.position + 1);
                    read += events.len() as u64;
                    pb.inc(events.len() as u64);
                    apply(events).await?;
                }
            }
            Reader::Kafka {
                consumer,
                topic,
                pending,
            } => loop {
                // Apply what is below target, then take what the client
                // has buffered (waiting a little only when it has nothing).
                let out = take_below(pending, topic, positions, targets);
                if !out.is_empty() {
                    read += out.len() as u64;
                    pb.inc(out.len() as u64);
                    // Per-aggregate order holds within each partition; across
                    // partitions any interleaving gives the same read model.
                    apply(out).await?;
                }
                let done = targets
                    .iter()
                    .all(|(k, t)| positions.get(k).copied().unwrap_or(0) >= *t);
                if done {
                    break;
                }
                poll_into(consumer, pending, batch.min(10_000))?;
            },
        }
        Ok(read)
    }
}

/// Takes the held records below their partition's target, moving
/// `positions` past them; undecodable ones were dead letters for the live
/// model too, so they are passed over.
fn take_below(
    pending: &mut HashMap<i32, VecDeque<Held>>,
    topic: &str,
    positions: &mut Positions,
    targets: &Positions,
) -> Vec<EventEnvelope> {
    let mut out = Vec::new();
    for (p, queue) in pending.iter_mut() {
        let key = SourceKey::partition(topic, *p);
        let target = targets.get(&key).copied().unwrap_or(0);
        while let Some((offset, event)) = queue.pop_front() {
            if offset >= target {
                queue.push_front((offset, event));
                break;
            }
            positions.insert(key.clone(), offset + 1);
            if let Ok(e) = event {
                out.push(e);
            }
        }
    }
    out
}

/// Holds up to `max` records the consumer has, waiting up to 200 ms for
/// the first.
fn poll_into(
    consumer: &BaseConsumer,
    pending: &mut HashMap<i32, VecDeque<Held>>,
    max: usize,
) -> anyhow::Result<()> {
    use rdkafka::Message;
    for polled in 0..max {
        let wait = if polled == 0 {
            Duration::from_millis(200)
        } else {
            Duration::ZERO
        };
        let Some(m) = tokio::task::block_in_place(|| consumer.poll(wait)) else {
            break;
        };
        let m = m.context("reading the topic")?;
        let event = cqrs_kafka::record::decode(&m);
        pending
            .entry(m.partition())
            .or_default()
            .push_back((m.offset(), event));
    }
    Ok(())
}

/// Keeps the events that are the next version of their aggregate (drops
/// duplicates the topic may hold); a gap is an error.
fn next_versions(
    events: Vec<EventEnvelope>,
    versions: &mut HashMap<String, i64>,
) -> anyhow::Result<Vec<EventEnvelope>> {
    let mut new = Vec::with_capacity(events.len());
    for e in events {
        let cur = versions.get(&e.aggregate_id).copied().unwrap_or(0);
        if e.version <= cur {
            continue;
        }
        if e.version != cur + 1 {
            bail!(
                "aggregate {} jumps from version {cur} to {}",
                e.aggregate_id,
                e.version
            );
        }
        versions.insert(e.aggregate_id.clone(), e.version);
        new.push(e);
    }
    Ok(new)
}

async fn apply_all(
    tx: &mut sqlx::AnyConnection,
    projections: &[Arc<dyn Projection>],
    events: &[EventEnvelope],
) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let refs: Vec<&EventEnvelope> = events.iter().collect();
    for p in projections {
        p.apply(tx, &refs).await?;
    }
    Ok(())
}

fn index_names(ddl: &[String]) -> Vec<String> {
    ddl.iter()
        .filter_map(|s| s.strip_prefix("CREATE INDEX IF NOT EXISTS "))
        .filter_map(|s| s.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The live checkpoints of the source this replay reads (`topic`, or the
/// embedded log when `None`). A read model can have followed the embedded
/// log and then a Kafka topic (or the other way): the source whose
/// checkpoint moved last is the live one. Replaying from the live source
/// ignores the other's stale checkpoint; replaying from the stale one is
/// refused, since it would roll the read model back.
fn checkpoints_of_source(
    rows: &[cqrs_sql::read::runner::Checkpoint],
    topic: Option<&str>,
) -> anyhow::Result<Positions> {
    let ours = |key: &SourceKey| match topic {
        Some(t) => key.partition_of(t).is_some(),
        None => *key == SourceKey::Log,
    };
    let (own, other): (Vec<_>, Vec<_>) = rows.iter().partition(|c| ours(&c.source_key));
    let latest =
        |cs: &[&cqrs_sql::read::runner::Checkpoint]| cs.iter().map(|c| c.updated_at.clone()).max();
    let this = topic.map_or("the embedded event log".to_owned(), |t| {
        format!("topic {t}")
    });
    if let Some(theirs) = latest(&other) {
        let names: Vec<String> = other.iter().map(|c| c.source_key.to_string()).collect();
        if latest(&own).is_none_or(|mine| theirs > mine) {
            bail!(
                "the live read model follows {} (checkpoint moved at {theirs}), not {this}: run replay with the \
                 source flags its projector runs with ({})",
                names.join(", "),
                if topic.is_some() {
                    "without --kafka-brokers for the embedded log, or the topic it reads with --kafka-topic"
                } else {
                    "--kafka-brokers and --kafka-topic"
                }
            );
        }
        eprintln!(
            "note: the read model followed {} before {this}; replaying from {this} only",
            names.join(", ")
        );
    }
    Ok(own
        .into_iter()
        .map(|c| (c.source_key.clone(), c.next_position))
        .collect())
}

/// `orders replay`: check, build fresh tables (phase 1), catch up under a
/// lock and swap (phase 2).
pub async fn run(args: ReplayArgs, config: &Config) -> anyhow::Result<()> {
    let (write_url, read_url) = config.existing_urls()?;
    let options = DbOptions {
        max_connections: 4,
        ..DbOptions::default()
    };
    let read = Db::connect(&read_url, &options).await?;
    cqrs_sql::read::runner::ensure_schema(&read).await?;
    let names: Vec<&str> = match args.projection.as_str() {
        "all" => vec!["order_details", "customer_summary", "order_stats"],
        one => vec![one],
    };
    let (fresh, live) = projections_named(&names)?;
    refuse_over_dead_letters(&read).await?;
    create_fresh_tables(&read, &fresh).await?;
    let mut reader = open_reader(config, &write_url, &options).await?;
    let topic = config.kafka.as_ref().map(|k| k.topic.as_str());
    let targets = checkpoints_of_source(
        &cqrs_sql::read::runner::checkpoint_rows(&read, PROJECTOR).await?,
        topic,
    )?;
    let total: i64 = targets.values().sum::<i64>() - if topic.is_none() { 1 } else { 0 };
    let pb = progress_bar(total);
    let started = Instant::now();
    let mut versions: HashMap<String, i64> = HashMap::new();
    let mut positions: Positions = HashMap::new();

    // Phase 1: everything the live model had applied when the replay started,
    // in batches of their own transactions.
    let mut count = reader
        .read_until(
            &mut positions,
            &targets,
            args.batch,
            async |events: Vec<EventEnvelope>| {
                let new = next_versions(events, &mut versions)?;
                let mut tx = read.writer.begin().await?;
                apply_all(&mut tx, &fresh, &new).await?;
                tx.commit().await?;
                Ok(())
            },
            &pb,
        )
        .await?;
    pb.set_message("0 (swapping)");

    // Phase 2: lock out the live projector, catch up to exactly where it is,
    // swap the tables, commit. Queries wait only for this transaction.
    let mut tx = read.writer.begin().await?;
    let final_targets = lock_out_projector(&mut tx, topic).await?;
    let mut tail: Vec<EventEnvelope> = Vec::new();
    count += reader
        .read_until(
            &mut positions,
            &final_targets,
            usize::MAX,
            async |events: Vec<EventEnvelope>| {
                tail.extend(events);
                Ok(())
            },
            &pb,
        )
        .await?;
    let new = next_versions(tail, &mut versions)?;
    apply_all(&mut tx, &fresh, &new).await?;
    swap_in(&mut tx, read.dialect, &fresh, &live).await?;
    tx.commit().await?;
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "replayed {count} events into {} in {secs:.1} s ({:.0} events/s); swapped in",
        names.join(", "),
        count as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// The fresh (suffixed) and live projections of these names.
type ProjectionPair = (Vec<Arc<dyn Projection>>, Vec<Arc<dyn Projection>>);

fn projections_named(names: &[&str]) -> anyhow::Result<ProjectionPair> {
    let mut fresh: Vec<Arc<dyn Projection>> = Vec::new();
    let mut live: Vec<Arc<dyn Projection>> = Vec::new();
    for n in names {
        fresh.push(
            orders::read_model::projection_named(n, SUFFIX).with_context(|| {
                format!(
                    "no projection {n:?}: use order_details, customer_summary, order_stats or all"
                )
            })?,
        );
        live.push(orders::read_model::projection_named(n, "").context("live projection")?);
    }
    Ok((fresh, live))
}

/// A replay would apply what the live model held back or skipped.
async fn refuse_over_dead_letters(read: &Db) -> anyhow::Result<()> {
    let open = cqrs_sql::read::dead_letters::list(read, PROJECTOR, false).await?;
    if !open.is_empty() {
        bail!(
            "{} open dead letters: resolve them (orders dead-letters) before a replay",
            open.len()
        );
    }
    let skip: HashSet<String> = cqrs_sql::read::dead_letters::list(read, PROJECTOR, true)
        .await?
        .into_iter()
        .filter(|l| l.status == "discarded")
        .map(|l| l.published_as)
        .collect();
    if !skip.is_empty() {
        bail!(
            "{} discarded dead letters: a replay would apply what the live model skipped",
            skip.len()
        );
    }
    Ok(())
}

/// Fresh tables, built by their projection's migrations, without secondary
/// indexes on SQLite (built at the swap).
async fn create_fresh_tables(read: &Db, fresh: &[Arc<dyn Projection>]) -> anyhow::Result<()> {
    let mut conn = read.writer.acquire().await?;
    for p in fresh {
        for t in p.tables() {
            conn.execute(format!("DROP TABLE IF EXISTS {t}").as_str())
                .await?;
        }
        for m in p.migrations(TAG) {
            for step in &m.steps {
                let deferred = matches!(step, Step::Sql(s) if s.starts_with("CREATE INDEX"));
                if !read.dialect.renames_indexes() && deferred {
                    continue;
                }
                cqrs_sql::migrate::run_step(&mut conn, read.dialect, step).await?;
            }
        }
    }
    Ok(())
}

/// Every statement of a projection's migrations.
fn ddl_of(p: &dyn Projection, tag: &str, dialect: &dyn Dialect) -> Vec<String> {
    p.migrations(tag)
        .iter()
        .flat_map(|m| m.statements(dialect))
        .collect()
}

/// The topic from its beginning, or the embedded log.
async fn open_reader(
    config: &Config,
    write_url: &str,
    options: &DbOptions,
) -> anyhow::Result<Reader> {
    let Some(k) = &config.kafka else {
        let store = SqlEventStore::open(Db::connect(write_url, options).await?).await?;
        return Ok(Reader::Log { store, after: 0 });
    };
    let consumer: BaseConsumer = k
        .config()
        .client()
        .set(
            "group.id",
            format!("orders-replay-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .create()?;
    let meta = tokio::task::block_in_place(|| {
        consumer.fetch_metadata(Some(&k.topic), Duration::from_secs(10))
    })?;
    let mut tpl = TopicPartitionList::new();
    for p in meta.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(&k.topic, p.id(), Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(Reader::Kafka {
        consumer,
        topic: k.topic.clone(),
        pending: HashMap::new(),
    })
}

fn progress_bar(total: i64) -> ProgressBar {
    let pb = ProgressBar::new(total.max(0) as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "replay [{bar:30}] {pos}/{len} events {per_sec} lag {msg} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// Holds the live projector back for the rest of `tx` and returns where it
/// stands: the positions the replay must reach exactly.
async fn lock_out_projector(
    tx: &mut sqlx::AnyConnection,
    topic: Option<&str>,
) -> anyhow::Result<Positions> {
    let rows = cqrs_sql::read::runner::lock_out_projectors(tx, PROJECTOR).await?;
    checkpoints_of_source(&rows, topic)
}

/// Renames the fresh tables (and their indexes) into the live names.
async fn swap_in(
    tx: &mut sqlx::AnyConnection,
    dialect: &dyn Dialect,
    fresh: &[Arc<dyn Projection>],
    live: &[Arc<dyn Projection>],
) -> anyhow::Result<()> {
    for (f, l) in fresh.iter().zip(live) {
        for (new_t, live_t) in f.tables().iter().zip(l.tables()) {
            tx.execute(format!("DROP TABLE IF EXISTS {live_t}__old").as_str())
                .await?;
            tx.execute(format!("ALTER TABLE {live_t} RENAME TO {live_t}__old").as_str())
                .await?;
            tx.execute(format!("ALTER TABLE {new_t} RENAME TO {live_t}").as_str())
                .await?;
            tx.execute(format!("DROP TABLE {live_t}__old").as_str())
                .await?;
        }
        let live_ddl = ddl_of(&**l, "", dialect);
        let canonical = index_names(&live_ddl);
        if dialect.renames_indexes() {
            for (tagged, name) in index_names(&ddl_of(&**f, TAG, dialect))
                .iter()
                .zip(&canonical)
            {
                tx.execute(format!("ALTER INDEX IF EXISTS {tagged} RENAME TO {name}").as_str())
                    .await?;
            }
        } else {
            for s in live_ddl.iter().filter(|s| s.starts_with("CREATE INDEX")) {
                tx.execute(s.as_str()).await?;
            }
        }
    }
    Ok(())
}
