//! Idempotency keys belong to their caller: the same key sent by two
//! callers names two requests. Keys stored before keys were scoped are
//! moved into the scope of the caller their command recorded (the shared
//! scope when none was), and a process manager's own keys keep theirs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use cqrs_core::{EventMetadata, NewEvent};
use cqrs_sql::{AppendRequest, Db, EventStore, IdempotencyRecord, SqlEventStore};

fn append(id: &str, caller: Option<&str>, key: IdempotencyRecord) -> AppendRequest {
    AppendRequest {
        aggregate_type: "ticket".to_owned(),
        aggregate_id: id.to_owned(),
        expected_version: 0,
        events: vec![NewEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            event_type: "Opened".to_owned(),
            schema_version: 1,
            payload: serde_json::json!({ "Opened": { "title": "t" } }),
        }],
        metadata: EventMetadata {
            command_id: uuid::Uuid::now_v7().to_string(),
            occurred_at: chrono::Utc::now(),
            caller: caller.map(str::to_owned),
            traceparent: None,
        },
        idempotency: Some(key),
    }
}

fn raw(key: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        key: key.to_owned(),
        request_hash: "h".to_owned(),
    }
}

async fn keys(db: &Db) -> Vec<String> {
    let mut keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    keys.sort();
    keys
}

async fn stored_keys_move_into_their_callers_scope(db: Db) {
    let store = SqlEventStore::open(db.clone()).await.unwrap();
    // As the build before scopes stored them: the key as the caller sent it.
    store
        .append(append("t1", Some("alice"), raw("k")))
        .await
        .unwrap();
    store.append(append("t2", None, raw("k2"))).await.unwrap();
    store
        .append(append("t3", Some("bo:b"), raw("x:y")))
        .await
        .unwrap();
    let saga_key = "order_saga/0193/1";
    store
        .append(append("t4", Some("order_saga"), raw(saga_key)))
        .await
        .unwrap();
    drop(store);
    sqlx::query("DELETE FROM schema_migrations WHERE component = 'event_store' AND version = 3")
        .execute(&db.writer)
        .await
        .unwrap();
    let store = SqlEventStore::open(db.clone()).await.unwrap();
    assert_eq!(
        keys(&db).await,
        ["0::k2", "4:bo:b:x:y", "5:alice:k", saga_key],
        "each key in its caller's scope; the saga's as it was"
    );
    // What a caller's request now looks up finds its own answer only.
    let alice = IdempotencyRecord::for_caller("alice", "k", "h".into());
    assert!(store.idempotent_answer(&alice.key).await.unwrap().is_some());
    let bob = IdempotencyRecord::for_caller("bob", "k", "h".into());
    assert!(store.idempotent_answer(&bob.key).await.unwrap().is_none());
    // Scopes cannot be confused by what a sub or a key contains.
    assert_ne!(
        IdempotencyRecord::for_caller("a:1", "b", String::new()).key,
        IdempotencyRecord::for_caller("a", "1:b", String::new()).key
    );
    // And two callers' equal keys are two records.
    store
        .append(append("t5", Some("bob"), bob.clone()))
        .await
        .unwrap();
    assert!(store.idempotent_answer(&bob.key).await.unwrap().is_some());
    db.close().await;
}

#[tokio::test]
async fn sqlite_stored_keys_move_into_their_callers_scope() {
    let (db, _dir) = test_support::fresh_sqlite().await;
    stored_keys_move_into_their_callers_scope(db).await;
}

#[tokio::test]
async fn postgres_stored_keys_move_into_their_callers_scope() {
    stored_keys_move_into_their_callers_scope(test_support::fresh_postgres().await).await;
}
