//! Bulk history for benchmarks (`SqlEventStore::import_generated`), on
//! SQLite and PostgreSQL: what it writes must read back as ordinary,
//! already published events, and appends after it must work as before.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use cqrs_core::{EventMetadata, NewEvent};
use cqrs_sql::store::GeneratedHistory;
use cqrs_sql::{AppendRequest, EventStore, SqlEventStore, StoreError};

fn history(aggregates: i64, salt: u32, relayed: bool) -> GeneratedHistory {
    GeneratedHistory {
        aggregate_type: "ticket".to_owned(),
        life: vec![
            ("Opened".to_owned(), 1, serde_json::json!({ "title": "t" })),
            ("Closed".to_owned(), 1, serde_json::json!({})),
        ],
        aggregates,
        salt,
        relayed,
        unpublished: false,
        interleaved: false,
    }
}

fn append(id: &str, expected: i64) -> AppendRequest {
    AppendRequest {
        aggregate_type: "ticket".to_owned(),
        aggregate_id: id.to_owned(),
        expected_version: expected,
        events: vec![NewEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            event_type: "Opened".to_owned(),
            schema_version: 1,
            payload: serde_json::json!({ "Opened": { "title": "new" } }),
        }],
        metadata: EventMetadata {
            command_id: uuid::Uuid::now_v7().to_string(),
            occurred_at: chrono::Utc::now(),
            caller: None,
            traceparent: None,
        },
        idempotency: None,
    }
}

async fn imported_history_reads_back_as_published_events(store: SqlEventStore) {
    let mut seen = Vec::new();
    let head = store
        .import_generated(&history(120_001, 7, true), |done| seen.push(done))
        .await
        .unwrap();
    assert_eq!(head, 240_002, "two events per aggregate, positions from 1");
    assert_eq!(seen.last(), Some(&240_002), "progress reaches the end");
    assert!(seen.len() >= 3, "progress per chunk: {seen:?}");
    assert_eq!(store.head_position().await.unwrap(), head);
    assert_eq!(
        store.relay_checkpoint().await.unwrap(),
        head,
        "taken as published"
    );
    assert_eq!(store.outbox_pending().await.unwrap(), 0);

    // An aggregate in the middle loads in version order, with its payloads.
    let id = "00000007-0000-4000-8000-00000000ea61"; // aggregate 60001
    let events = store.load(id).await.unwrap();
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["Opened", "Closed"]);
    assert_eq!(events[0].payload, serde_json::json!({ "title": "t" }));
    assert_eq!(events[0].schema_version, 1);
    assert_eq!(events[1].position, events[0].position + 1);
    assert_eq!(events[0].aggregate_type, "ticket");
    assert!(uuid::Uuid::parse_str(&events[0].event_id).is_ok());

    // Appends go on after it: to an imported aggregate at its version, and
    // a stale one is still a conflict.
    store.append(append(id, 2)).await.unwrap();
    assert!(matches!(
        store.append(append(id, 2)).await,
        Err(StoreError::VersionConflict { .. })
    ));
    let log = store.read_log(head, 10).await.unwrap();
    assert_eq!(log.len(), 1, "the append lies after the history");

    // A second import with another salt adds, never clashes; with a relay
    // that still has that append to send, it is refused.
    assert!(matches!(
        store.import_generated(&history(10, 8, true), |_| ()).await,
        Err(StoreError::Unpublished { pending: 1 })
    ));
    let before = store.head_position().await.unwrap();
    let head2 = store
        .import_generated(&history(10, 8, false), |_| ())
        .await
        .unwrap();
    let added = store.read_log(before, 100).await.unwrap();
    assert_eq!(added.len(), 20, "ten more aggregates of two events");
    assert_eq!(added.last().map(|e| e.position), Some(head2));
    assert_eq!(store.relay_checkpoint().await.unwrap(), head2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_history_reads_back_as_published_events_on_sqlite() {
    let (db, _dir) = test_support::fresh_sqlite().await;
    imported_history_reads_back_as_published_events(SqlEventStore::open(db).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_history_reads_back_as_published_events_on_postgres() {
    let db = test_support::fresh_postgres().await;
    imported_history_reads_back_as_published_events(SqlEventStore::open(db).await.unwrap()).await;
}
