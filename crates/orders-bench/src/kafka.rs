//! `orders-bench replay`: on a topic of N events (default 1,000,000), the
//! relay's rate beside a raw producer's, and the projector's catch-up rate
//! beside a raw consumer's, all on the same broker in the same run.

use super::args::{BenchArgs, What};
use super::load::{bar, drop_scratch, machine, scratch_postgres};
use anyhow::{bail, Context};
use cqrs_kafka::{KafkaConfig, KafkaSource, Relay, RelayConfig, SourceConfig};
use cqrs_sql::store::GeneratedHistory;
use cqrs_sql::{Db, DbOptions, EventStore, ProjectorConfig, ProjectorRunner, SqlEventStore};
use orders_service::server::PROJECTOR;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use std::time::{Duration, Instant};

/// `orders` orders with 4 events each (created, paid, shipped, delivered),
/// each with its own customer and references, positioned as many orders
/// live at once (every first event, then every second one, ...).
pub fn history(orders: usize) -> GeneratedHistory {
    let life = vec![
        (
            "OrderCreated",
            json!({ "customer_id": "c{n}", "total_cents": 1999,
                    "items": [{ "sku": "sku-1", "quantity": 1, "unit_price_cents": 1999,
                                "line_total_cents": 1999 }] }),
        ),
        (
            "OrderPaid",
            json!({ "amount_cents": 1999, "payment_ref": "psp-{n}" }),
        ),
        (
            "OrderShipped",
            json!({ "carrier": "dhl", "tracking_number": "T{n}" }),
        ),
        ("OrderDelivered", json!({})),
    ];
    GeneratedHistory {
        aggregate_type: <orders::Order as cqrs_core::Aggregate>::TYPE.to_owned(),
        life: life
            .into_iter()
            .map(|(t, p)| (t.to_owned(), orders::event_versions::current_version(t), p))
            .collect(),
        aggregates: orders as i64,
        salt: uuid::Uuid::new_v4().as_u128() as u32,
        relayed: true,
        unpublished: true,
        interleaved: true,
    }
}

/// The raw baseline of the relay: the same producer settings, the same key,
/// eleven headers and value size per record, built in memory instead of
/// read from the write DB.
async fn raw_produce(
    kafka: &KafkaConfig,
    topic: &str,
    history: &GeneratedHistory,
    value_len: usize,
) -> anyhow::Result<f64> {
    let n = (history.aggregates as usize) * history.life.len();
    let producer: FutureProducer = cqrs_kafka::relay::producer_config(kafka).create()?;
    let value = "x".repeat(value_len);
    let pb = bar(n, "raw producer");
    let started = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    let now = chrono::Utc::now();
    for i in 0..n {
        let key = history.aggregate_id((i / 4) as i64 + 1);
        let envelope = cqrs_core::EventEnvelope {
            position: i as i64 + 1,
            event_id: format!("{i:032x}"),
            aggregate_type: "order".into(),
            aggregate_id: key.clone(),
            version: (i % 4) as i64 + 1,
            event_type: "OrderPaid".into(),
            schema_version: 1,
            payload: serde_json::Value::Null,
            metadata: cqrs_core::EventMetadata {
                command_id: format!("bench-{i}"),
                occurred_at: now,
                caller: None,
                traceparent: None,
            },
            recorded_at: now,
        };
        let mut record = FutureRecord::to(topic).key(&key).payload(&value).headers(
            cqrs_kafka::record::headers_of(&envelope, "orders-bench", None),
        );
        loop {
            match producer.send_result(record) {
                Ok(d) => {
                    pending.push(d);
                    break;
                }
                Err((_, back)) => {
                    record = back;
                    for d in pending.drain(..) {
                        d.await?.map_err(|(e, _)| e)?;
                    }
                }
            }
        }
        if pending.len() >= 10_000 {
            for d in pending.drain(..) {
                d.await?.map_err(|(e, _)| e)?;
            }
            pb.set_position(i as u64);
        }
    }
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    pb.finish_and_clear();
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// The raw baseline of the projector: a consumer that joins a fresh group
/// on the same topic (timed from before the join, as the projector is) and
/// only counts the records.
fn raw_consume(kafka: &KafkaConfig, n: usize) -> anyhow::Result<f64> {
    let topic = kafka.topic.as_str();
    let started = Instant::now();
    let consumer: BaseConsumer = kafka
        .client()
        .set("group.id", format!("raw-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .create()?;
    consumer.subscribe(&[topic])?;
    let pb = bar(n, "raw consumer");
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(900);
    while seen < n {
        if let Some(m) = consumer.poll(Duration::from_millis(500)) {
            m?;
            seen += 1;
            if seen % 10_000 == 0 {
                pb.set_position(seen as u64);
            }
        }
        if Instant::now() > deadline {
            bail!("raw consumer saw only {seen} of {n}");
        }
    }
    pb.finish_and_clear();
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// What `orders-bench replay` measured.
/// What the replay phases measured.
pub(crate) struct Rates {
    events: usize,
    value_len: i64,
    relay: f64,
    raw_producer: f64,
    projector: f64,
    raw_consumer: f64,
    rebuild: super::rebuild::RebuildFigures,
}

/// `orders-bench replay`.
pub async fn run(what: &What, args: &BenchArgs) -> anyhow::Result<()> {
    let What::Replay { events } = what else {
        bail!("not a replay benchmark");
    };
    let (Some(url), Some(brokers)) = (&args.database_url, &args.kafka_brokers) else {
        bail!("bench replay needs --database-url and --kafka-brokers");
    };
    let rates = measure(*events, url, brokers).await?;
    report(&rates, &args.out)
}

/// The relay, the catch-up and the rebuild while serving, each beside its
/// raw baseline, on a topic of `events` (scratch databases on `url`).
pub(crate) async fn measure(events: usize, url: &str, brokers: &str) -> anyhow::Result<Rates> {
    let n = events.div_ceil(4) * 4;
    let (write_url, write_name) = scratch_postgres(url).await?;
    let (read_url, read_name) = scratch_postgres(url).await?;
    let kafka = KafkaConfig {
        brokers: brokers.to_owned(),
        topic: format!("{write_name}.events"),
        partitions: 6,
        replication: 1,
        properties: cqrs_kafka::KafkaProperties::default(),
    };
    let result = async {
        cqrs_kafka::ensure_topics(&kafka).await?;
        let store =
            SqlEventStore::open(Db::connect(&write_url, &DbOptions::default()).await?).await?;
        let history = history(n / 4);
        let pb = bar(n, "writing the events to the write DB");
        store
            .import_generated(&history, |done| pb.set_position(done as u64))
            .await?;
        pb.finish_and_clear();
        let value_len = store.mean_payload_bytes().await?;
        let relay = time_relay(&store, &kafka, &write_url, n).await?;
        let raw_topic = format!("{write_name}.raw");
        cqrs_kafka::ensure_topics(&KafkaConfig {
            topic: raw_topic.clone(),
            ..kafka.clone()
        })
        .await?;
        let raw_producer = raw_produce(&kafka, &raw_topic, &history, value_len as usize).await?;
        let projector = time_projector(&kafka, &read_url, &format!("{read_name}-group"), n).await?;
        let raw = kafka.clone();
        let raw_consumer = tokio::task::spawn_blocking(move || raw_consume(&raw, n)).await??;
        let ids = order_ids(&read_url).await?;
        let rebuild =
            super::rebuild::while_serving(&write_url, &read_url, &kafka, ids, 5.0).await?;
        Ok::<_, anyhow::Error>(Rates {
            rebuild,
            events: n,
            value_len,
            relay,
            raw_producer,
            projector,
            raw_consumer,
        })
    }
    .await;
    drop_scratch(url, &write_name).await;
    drop_scratch(url, &read_name).await;
    result
}

/// Runs the relay from an empty checkpoint until it has confirmed the
/// whole log; events per second.
async fn time_relay(
    store: &SqlEventStore,
    kafka: &KafkaConfig,
    write_url: &str,
    n: usize,
) -> anyhow::Result<f64> {
    let relay = Relay::new(
        RelayConfig {
            kafka: kafka.clone(),
            database_url: write_url.to_owned(),
            batch_size: 5_000,
            poll: Duration::from_millis(100),
            standby_retry: Duration::from_millis(100),
        },
        store.clone(),
    )?;
    let head = store.head_position().await?;
    let pb = bar(n, "relay (log -> kafka)");
    let started = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(relay.run(stop.clone()));
    loop {
        let at = store.relay_checkpoint().await?;
        pb.set_position(at as u64);
        if at >= head {
            break;
        }
        if task.is_finished() || started.elapsed() > Duration::from_secs(1800) {
            bail!("relay stopped at position {at} of {head}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pb.finish_and_clear();
    let rate = n as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    task.await?.context("relay")?;
    Ok(rate)
}

/// Runs a projector from offset 0 into an empty read DB until it has
/// applied all `n` events; events per second.
async fn time_projector(
    kafka: &KafkaConfig,
    read_url: &str,
    group_id: &str,
    n: usize,
) -> anyhow::Result<f64> {
    let read = Db::connect(read_url, &DbOptions::default()).await?;
    let runner = ProjectorRunner::new(
        read.clone(),
        ProjectorConfig {
            name: PROJECTOR.into(),
            batch_size: 5_000,
            ..ProjectorConfig::default()
        },
        orders::read_model::projections(),
    )
    .await?;
    let source = KafkaSource::new(
        SourceConfig {
            kafka: kafka.clone(),
            group_id: group_id.to_owned(),
            session_timeout_ms: orders_service::config::defaults::KAFKA_SESSION_TIMEOUT_MS,
            projector: PROJECTOR.into(),
            instance_id: None,
            store_id: None,
        },
        read.clone(),
    )?;
    let stop = tokio_util::sync::CancellationToken::new();
    let pb = bar(n, "projector catch-up");
    let started = Instant::now();
    let task = tokio::spawn(runner.run(source, stop.clone()));
    loop {
        // The checkpoints (one row per partition, moved in each batch's
        // transaction) count the records consumed from the fresh topic; a
        // sum over the read model would itself take a core from the run.
        let applied: i64 = cqrs_sql::read::runner::checkpoint_rows(&read, PROJECTOR)
            .await?
            .iter()
            .map(|c| c.next_position)
            .sum();
        pb.set_position(applied as u64);
        if applied as usize >= n {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("projector applied only {applied} of {n} in 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    pb.finish_and_clear();
    stop.cancel();
    task.await?.context("projector")?;
    Ok(rate)
}

/// Up to 10,000 order ids of the read model.
async fn order_ids(read_url: &str) -> anyhow::Result<Vec<String>> {
    let read = Db::connect(read_url, &DbOptions::default()).await?;
    let filter = orders::read_model::OrderFilter {
        limit: 10_000,
        ..Default::default()
    };
    let (page, _) = orders::read_model::list_orders(&read.pool, &filter).await?;
    read.close().await;
    Ok(page.into_iter().map(|o| o.order_id).collect())
}

/// Prints the table and writes the JSON results into `out`.
fn report(r: &Rates, out: &std::path::Path) -> anyhow::Result<()> {
    println!("{}", table(r));
    std::fs::create_dir_all(out)?;
    let file = out.join(format!(
        "bench-replay-{}.json",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
    ));
    let mut doc = json(r);
    doc["machine"] = machine();
    std::fs::write(&file, serde_json::to_string_pretty(&doc)?)?;
    println!("results: {}", file.display());
    Ok(())
}

/// The replay's table, and what the rebuild's time went to.
pub(crate) fn table(r: &Rates) -> String {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(vec!["stage", "ours /s", "raw baseline /s", "ratio"]);
    table.add_row(vec![
        "relay: event log -> Kafka (checkpointed; target >= 0.5)".to_owned(),
        format!("{:.0}", r.relay),
        format!("{:.0} (raw idempotent producer)", r.raw_producer),
        format!("{:.2}", r.relay / r.raw_producer),
    ]);
    table.add_row(vec![
        "projector catch-up: Kafka -> 3 read models (target >= 50,000/s)".to_owned(),
        format!("{:.0}", r.projector),
        format!("{:.0} (raw consumer)", r.raw_consumer),
        format!("{:.2}", r.projector / r.raw_consumer),
    ]);
    let rb = &r.rebuild;
    let rate = rebuild_rate(r);
    table.add_row(vec![
        format!(
            "rebuild while serving: topic -> 3 read models ({}; target >= 100,000/s)",
            if rb.report.bulk { "bulk" } else { "batched" }
        ),
        format!("{rate:.0}"),
        format!("{:.0} (raw consumer)", r.raw_consumer),
        format!("{:.2}", rate / r.raw_consumer),
    ]);
    table.add_row(vec![
        "GET p99 during the rebuild, µs (target <= 2x idle, 0 failed or wrong)".to_owned(),
        format!("{}", rb.during_p99_us),
        format!("{} (idle)", rb.idle_p99_us),
        format!(
            "{:.2}; {} reads, {} failed, {} wrong",
            read_ratio(r),
            rb.reads,
            rb.failed,
            rb.wrong
        ),
    ]);
    let phases: Vec<String> = rb
        .phases
        .iter()
        .map(|(p, n, p99)| format!("{p} {:.2} ms ({n} reads)", *p99 as f64 / 1e3))
        .collect();
    format!(
        "{table}\nreads' p99 by the rebuild's phase when due: {}\nrebuild: fold + bulk write {:.1} s (reading the topic {:.1} s, writing {:.1} s), catch-up and cutover {:.1} s, live projector held back {:.0} ms\n{} events ({} orders x 4), values of ~{} bytes, 6 partitions, one broker.",
        phases.join(", "),
        rb.report.fold_secs,
        rb.report.read_secs,
        rb.report.write_secs,
        rb.report.secs - rb.report.fold_secs,
        rb.report.cutover_secs * 1e3,
        r.events,
        r.events / 4,
        r.value_len
    )
}

fn rebuild_rate(r: &Rates) -> f64 {
    r.rebuild.report.events as f64 / r.rebuild.report.secs.max(1e-9)
}

fn read_ratio(r: &Rates) -> f64 {
    r.rebuild.during_p99_us as f64 / r.rebuild.idle_p99_us.max(1) as f64
}

/// The replay's figures as JSON.
pub(crate) fn json(r: &Rates) -> serde_json::Value {
    json!({ "events": r.events, "relay_per_sec": r.relay,
        "raw_producer_per_sec": r.raw_producer, "projector_per_sec": r.projector,
        "raw_consumer_per_sec": r.raw_consumer,
        "rebuild_per_sec": rebuild_rate(r),
        "rebuild_events": r.rebuild.report.events, "rebuild_secs": r.rebuild.report.secs,
        "rebuild_fold_secs": r.rebuild.report.fold_secs, "rebuild_read_secs": r.rebuild.report.read_secs, "rebuild_write_secs": r.rebuild.report.write_secs, "rebuild_cutover_secs": r.rebuild.report.cutover_secs,
        "read_p99_idle_us": r.rebuild.idle_p99_us, "read_p99_rebuild_us": r.rebuild.during_p99_us,
        "reads_during_rebuild": r.rebuild.reads, "reads_failed": r.rebuild.failed, "reads_wrong": r.rebuild.wrong,
        "read_p99_by_phase_us": r.rebuild.phases.iter().map(|(p, n, p99)| json!({"phase": p, "reads": n, "p99_us": p99})).collect::<Vec<_>>() })
}

/// The replay's rows of the targets table: (target, measured, wanted, met).
pub(crate) fn target_rows(r: &Rates) -> Vec<(String, String, &'static str, bool)> {
    let rb = &r.rebuild;
    let relay = r.relay / r.raw_producer;
    let rebuild = rebuild_rate(r);
    vec![
        (
            "relay / raw producer".to_owned(),
            format!("{relay:.2}x ({:.0}/s vs {:.0}/s)", r.relay, r.raw_producer),
            ">= 0.5x",
            relay >= 0.5,
        ),
        (
            format!("projector catch-up from {} behind", r.events),
            format!("{:.0}/s", r.projector),
            ">= 50,000/s",
            r.projector >= 50_000.0,
        ),
        (
            format!("rebuild of {} while serving", r.events),
            format!("{rebuild:.0}/s"),
            ">= 100,000/s",
            rebuild >= 100_000.0,
        ),
        (
            "GET p99 during the rebuild / idle".to_owned(),
            format!(
                "{:.2}x; {} reads, {} failed, {} wrong",
                read_ratio(r),
                rb.reads,
                rb.failed,
                rb.wrong
            ),
            "<= 2x, 0 failed or wrong",
            read_ratio(r) <= 2.0 && rb.failed == 0 && rb.wrong == 0,
        ),
    ]
}
