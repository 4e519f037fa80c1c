//! The relay and the projector's source against the test broker (Apache
//! Kafka from `scripts/services`), each on a topic of its own: what the
//! relay publishes is every event of the log, in order per aggregate, with
//! its envelope in the headers; the source hands it back as the same
//! envelopes, resumes from the read DB's offsets, and sends a record that
//! is not an event to the dead-letter topic with its reason.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use cqrs_core::{EventEnvelope, EventMetadata, NewEvent};
use cqrs_kafka::{ensure_topics, KafkaConfig, KafkaSource, Relay, RelayConfig, SourceConfig};
use cqrs_sql::{AppendRequest, EventSource, EventStore, SourceKey, SqlEventStore};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const AGGREGATES: usize = 5;
const EVENTS_EACH: usize = 4;

fn kafka(topic: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: test_support::kafka_brokers(),
        topic: topic.to_owned(),
        partitions: 3,
        replication: 1,
        properties: Default::default(),
    }
}

/// `AGGREGATES` aggregates of `EVENTS_EACH` events each, appended one
/// event at a time and interleaved, as concurrent commands would.
async fn append_events(store: &SqlEventStore) -> Vec<EventEnvelope> {
    append_events_of(store, "t").await
}

/// The same, the aggregates named `PREFIX-N`.
async fn append_events_of(store: &SqlEventStore, prefix: &str) -> Vec<EventEnvelope> {
    for v in 0..EVENTS_EACH {
        for a in 0..AGGREGATES {
            store
                .append(AppendRequest {
                    aggregate_type: "ticket".into(),
                    aggregate_id: format!("{prefix}-{a}"),
                    expected_version: v as i64,
                    events: vec![NewEvent {
                        event_id: uuid::Uuid::new_v4().to_string(),
                        event_type: "Touched".into(),
                        schema_version: 1,
                        payload: serde_json::json!({ "n": v }),
                    }],
                    metadata: EventMetadata {
                        command_id: uuid::Uuid::new_v4().to_string(),
                        occurred_at: chrono::Utc::now(),
                        caller: Some("tester".into()),
                        traceparent: None,
                    },
                    idempotency: None,
                })
                .await
                .unwrap();
        }
    }
    store.all_events().await.unwrap()
}

/// Runs a relay over `store` to `topic` until every event is confirmed.
async fn relay_everything(store: &SqlEventStore, topic: &str) {
    let relay = relay(store, topic);
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));
    let head = store.head_position().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.relay_checkpoint().await.unwrap() < head {
        assert!(
            Instant::now() < deadline,
            "the relay confirmed {} of {head}",
            store.relay_checkpoint().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(store.outbox_pending().await.unwrap(), 0);
}

/// A relay over `store` to `topic`.
fn relay(store: &SqlEventStore, topic: &str) -> Relay {
    Relay::new(
        RelayConfig {
            kafka: kafka(topic),
            database_url: store.db().url().to_owned(),
            batch_size: 7,
            poll: Duration::from_millis(50),
            standby_retry: Duration::from_millis(100),
        },
        store.clone(),
    )
    .unwrap()
}

/// Every record of `topic` from its start, read by a client of its own
/// (not the source under test): (partition, key, headers, value).
fn read_topic(
    config: &KafkaConfig,
    topic: &str,
    expected: usize,
) -> Vec<(i32, String, BTreeMap<String, String>, String)> {
    let consumer: BaseConsumer = config
        .client()
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let meta = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in meta.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while records.len() < expected {
        assert!(
            Instant::now() < deadline,
            "{} of {expected} records on {topic}",
            records.len()
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push((
            m.partition(),
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            headers,
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
        ));
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_every_event_once_in_order_per_aggregate_with_its_envelope() {
    let (db, _dir) = test_support::fresh_sqlite().await;
    let store = SqlEventStore::open(db).await.unwrap();
    let events = append_events(&store).await;
    let topic = test_support::unique_topic();
    let ready = ensure_topics(&kafka(&topic)).await.unwrap();
    assert_eq!(ready.partitions, 3);
    relay_everything(&store, &topic).await;

    let records = read_topic(&kafka(&topic), &topic, events.len());
    assert_eq!(records.len(), AGGREGATES * EVENTS_EACH);
    let by_id: HashMap<&str, &EventEnvelope> =
        events.iter().map(|e| (e.event_id.as_str(), e)).collect();
    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    for (partition, key, headers, value) in &records {
        let e = by_id[headers["event_id"].as_str()];
        assert_eq!(key, &e.aggregate_id, "key = aggregate id");
        assert_eq!(headers["aggregate_version"], e.version.to_string());
        assert_eq!(headers["event_type"], "Touched");
        assert_eq!(headers["position"], e.position.to_string());
        assert_eq!(headers["caller"], "tester");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(value).unwrap(),
            e.payload
        );
        // One aggregate, one partition.
        assert_eq!(
            *partition_of.entry(key.clone()).or_insert(*partition),
            *partition
        );
        versions
            .entry(key.clone())
            .or_default()
            .push(headers["aggregate_version"].clone());
    }
    for (aggregate, seen) in versions {
        assert_eq!(
            seen,
            ["1", "2", "3", "4"],
            "{aggregate}: in version order, once each"
        );
    }
}

/// A source of its own group on `topic`, over `read`.
fn source(topic: &str, read: &cqrs_sql::Db, projector: &str) -> KafkaSource {
    KafkaSource::new(
        SourceConfig {
            kafka: kafka(topic),
            group_id: format!("g-{}", uuid::Uuid::new_v4()),
            session_timeout_ms: 6_000,
            projector: projector.to_owned(),
            instance_id: None,
            store_id: None,
        },
        read.clone(),
    )
    .unwrap()
}

/// Batches from `source` until `n` records came (bounded in time).
async fn take(source: &mut KafkaSource, n: usize) -> Vec<cqrs_sql::SourcedEvent> {
    let mut got = Vec::new();
    while got.len() < n {
        let batch = tokio::time::timeout(Duration::from_secs(30), source.next_batch(100))
            .await
            .unwrap_or_else(|_| panic!("{} of {n} records within 30 s", got.len()))
            .unwrap();
        got.extend(batch);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_hands_back_the_same_envelopes_and_resumes_from_the_read_db() {
    let (db, _dir) = test_support::fresh_sqlite().await;
    let store = SqlEventStore::open(db).await.unwrap();
    let events = append_events(&store).await;
    let topic = test_support::unique_topic();
    ensure_topics(&kafka(&topic)).await.unwrap();
    relay_everything(&store, &topic).await;
    let (read, _read_dir) = test_support::fresh_sqlite().await;
    cqrs_sql::read::runner::ensure_schema(&read).await.unwrap();

    let mut first = source(&topic, &read, "p");
    first.resume(&HashMap::new()).await.unwrap();
    let got = take(&mut first, events.len()).await;
    let by_id: HashMap<&str, &EventEnvelope> =
        events.iter().map(|e| (e.event_id.as_str(), e)).collect();
    let mut next: HashMap<SourceKey, i64> = HashMap::new();
    for item in &got {
        let e = item.event.as_ref().unwrap();
        let stored = by_id[e.event_id.as_str()];
        assert_eq!(e.aggregate_id, stored.aggregate_id);
        assert_eq!(e.version, stored.version);
        assert_eq!(e.payload, stored.payload);
        assert_eq!(e.metadata.caller.as_deref(), Some("tester"));
        let SourceKey::Partition { topic: t, .. } = &item.source_key else {
            panic!("not a partition: {:?}", item.source_key);
        };
        assert_eq!(&**t, topic.as_str());
        let at = next.entry(item.source_key.clone()).or_insert(0);
        assert_eq!(
            item.next_position,
            *at + 1,
            "offsets in order, none skipped"
        );
        *at = item.next_position;
    }
    drop(first);

    // The read DB says the first half of each partition is applied: a new
    // member starts after it, whatever Kafka's group offsets say.
    let mut expected = 0;
    for (key, end) in &next {
        let half = end / 2;
        cqrs_sql::read::runner::advance_checkpoint(&read, "p", key, half)
            .await
            .unwrap();
        expected += (end - half) as usize;
    }
    let mut second = source(&topic, &read, "p");
    second.resume(&HashMap::new()).await.unwrap();
    let mut again = take(&mut second, expected).await;
    // Nothing comes twice: a partition sought to its checkpoint is read
    // once from there (the records fetched before the seek are not kept).
    if let Ok(more) = tokio::time::timeout(Duration::from_secs(1), second.next_batch(100)).await {
        again.extend(more.unwrap());
    }
    let mut seen: Vec<&str> = again.iter().map(|i| i.published_as.as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!((again.len(), seen.len()), (expected, expected), "{seen:?}");
    for item in &again {
        let half = next[&item.source_key] / 2;
        assert!(
            item.next_position > half,
            "{} was applied before the restart (checkpoint {half})",
            item.published_as
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_is_not_an_event_goes_to_the_dead_letter_topic_with_its_reason() {
    let topic = test_support::unique_topic();
    let config = KafkaConfig {
        partitions: 1,
        ..kafka(&topic)
    };
    ensure_topics(&config).await.unwrap();
    let producer: FutureProducer = config.client().create().unwrap();
    producer
        .send(
            FutureRecord::to(&topic).key("t-9").payload("not json {"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let (read, _dir) = test_support::fresh_sqlite().await;
    cqrs_sql::read::runner::ensure_schema(&read).await.unwrap();
    let mut src = source(&topic, &read, "p");
    src.resume(&HashMap::new()).await.unwrap();
    let got = take(&mut src, 1).await;
    let item = &got[0];
    assert!(item.event.is_err(), "{:?}", item.event);
    assert_eq!(item.key.as_deref(), Some("t-9"));
    src.dead_letter(item, "not an event: no headers")
        .await
        .unwrap();

    let dlq = config.dlq_topic();
    let records = read_topic(&config, &dlq, 1);
    let (_, key, headers, value) = &records[0];
    assert_eq!(key, "t-9");
    assert_eq!(value, "not json {");
    assert_eq!(headers["dlq_reason"], "not an event: no headers");
    assert_eq!(headers["dlq_source"], item.published_as);
}

/// Store A's events on `topic`, relayed; store B's events appended (on
/// aggregates of its own), nothing of B's relayed yet.
async fn two_stores_one_topic() -> (SqlEventStore, SqlEventStore, String) {
    let topic = test_support::unique_topic();
    ensure_topics(&kafka(&topic)).await.unwrap();
    let a = SqlEventStore::open(test_support::fresh_postgres().await)
        .await
        .unwrap();
    let b = SqlEventStore::open(test_support::fresh_postgres().await)
        .await
        .unwrap();
    assert_ne!(a.id(), b.id(), "two stores, one id");
    append_events_of(&a, "a").await;
    append_events_of(&b, "b").await;
    relay_everything(&a, &topic).await;
    (a, b, topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_refuses_a_topic_holding_another_stores_records_naming_both() {
    let (a, b, topic) = two_stores_one_topic().await;
    let ended = tokio::time::timeout(
        Duration::from_secs(30),
        relay(&b, &topic).run(CancellationToken::new()),
    )
    .await
    .expect("the relay of store B ran on");
    let why = ended
        .expect_err("store B's relay published to store A's topic")
        .to_string();
    assert!(
        why.contains(a.id()) && why.contains(b.id()) && why.contains(&topic),
        "{why}"
    );
    assert_eq!(b.relay_checkpoint().await.unwrap(), 0);
    let on_topic = read_topic(&kafka(&topic), &topic, AGGREGATES * EVENTS_EACH);
    assert!(
        on_topic
            .iter()
            .all(|(_, key, headers, _)| key.starts_with("a-") && headers["store_id"] == a.id()),
        "a record not of store A on its topic"
    );
    // The owner's relay goes on publishing to its own topic.
    append_events_of(&a, "a2").await;
    relay_everything(&a, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_refuses_unstamped_records_its_log_does_not_hold_and_accepts_its_own() {
    let topic = test_support::unique_topic();
    let config = KafkaConfig {
        partitions: 1,
        ..kafka(&topic)
    };
    ensure_topics(&config).await.unwrap();
    let store = SqlEventStore::open(test_support::fresh_postgres().await)
        .await
        .unwrap();
    let events = append_events_of(&store, "s").await;
    // A record as a version before stamping wrote it: the envelope's
    // headers without the store's id.
    let producer: FutureProducer = config.client().create().unwrap();
    let unstamped = |aggregate: &str, version: i64| {
        rdkafka::message::OwnedHeaders::new()
            .insert(rdkafka::message::Header {
                key: "aggregate_id",
                value: Some(aggregate),
            })
            .insert(rdkafka::message::Header {
                key: "aggregate_version",
                value: Some(&version.to_string()),
            })
    };
    let last = events.last().unwrap();
    for (aggregate, version) in [(last.aggregate_id.as_str(), last.version)] {
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(aggregate)
                    .payload("{}")
                    .headers(unstamped(aggregate, version)),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    // Its own event, unstamped: accepted.
    tokio::time::timeout(Duration::from_secs(60), relay_everything(&store, &topic))
        .await
        .expect("the relay refused its own unstamped record");
    // Another store's event, unstamped: refused.
    producer
        .send(
            FutureRecord::to(&topic)
                .key("elsewhere-1")
                .payload("{}")
                .headers(unstamped("elsewhere-1", 3)),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    append_events_of(&store, "s2").await;
    let ended = tokio::time::timeout(
        Duration::from_secs(30),
        relay(&store, &topic).run(CancellationToken::new()),
    )
    .await
    .expect("the relay ran on over another store's record");
    let why = ended
        .expect_err("published after another store's record")
        .to_string();
    assert!(
        why.contains("elsewhere-1") && why.contains(store.id()),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_dead_letters_another_stores_records_naming_both() {
    let (a, b, topic) = two_stores_one_topic().await;
    let n = AGGREGATES * EVENTS_EACH;
    let (read, _dir) = test_support::fresh_sqlite().await;
    cqrs_sql::read::runner::ensure_schema(&read).await.unwrap();
    for (store, foreign) in [(&b, true), (&a, false)] {
        let mut src = KafkaSource::new(
            SourceConfig {
                kafka: kafka(&topic),
                group_id: format!("g-{}", uuid::Uuid::new_v4()),
                session_timeout_ms: 6_000,
                projector: "p".into(),
                instance_id: None,
                store_id: Some(store.id().to_owned()),
            },
            read.clone(),
        )
        .unwrap();
        src.resume(&HashMap::new()).await.unwrap();
        let got = take(&mut src, n).await;
        for item in &got {
            match (&item.event, foreign) {
                (Err(why), true) => assert!(
                    why.contains(a.id()) && why.contains(b.id()) && why.contains(&topic),
                    "{why}"
                ),
                (Ok(_), false) => {}
                (e, _) => panic!("store {}'s source took {e:?}", store.id()),
            }
        }
    }
}
