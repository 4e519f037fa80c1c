//! Events carry who sent their command, in stores made before that existed
//! too: opening such a store adds the column, old events read back without
//! a caller, new ones with theirs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use cqrs_core::{EventMetadata, NewEvent};
use cqrs_sql::{AppendRequest, Db, EventStore, SqlEventStore};

fn append(id: &str, caller: Option<&str>) -> AppendRequest {
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
        idempotency: None,
    }
}

async fn an_older_store_gains_the_caller_column(db: Db) {
    let store = SqlEventStore::open(db.clone()).await.unwrap();
    store.append(append("old", None)).await.unwrap();
    drop(store);
    // As a store written before commands carried their caller (and before
    // migrations were versioned).
    for statement in [
        "ALTER TABLE events DROP COLUMN caller",
        "DROP TABLE schema_migrations",
    ] {
        sqlx::query(statement).execute(&db.writer).await.unwrap();
    }
    let store = SqlEventStore::open(db).await.unwrap();
    store.append(append("new", Some("alice"))).await.unwrap();
    let callers: Vec<(String, Option<String>)> = store
        .read_log(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.aggregate_id, e.metadata.caller))
        .collect();
    assert_eq!(
        callers,
        [
            ("old".to_owned(), None),
            ("new".to_owned(), Some("alice".to_owned()))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_store_gains_the_caller_column_on_sqlite() {
    let (db, _dir) = test_support::fresh_sqlite().await;
    an_older_store_gains_the_caller_column(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_store_gains_the_caller_column_on_postgres() {
    an_older_store_gains_the_caller_column(test_support::fresh_postgres().await).await;
}
