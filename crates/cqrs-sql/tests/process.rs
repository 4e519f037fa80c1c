//! A process manager run as a projection, on real SQLite and PostgreSQL:
//! the instances of a batch react at the same time, each to its own events
//! in order; a reaction that cannot finish fails the batch only after the
//! others have run to their end, and the batch again issues the same keys;
//! what was reacted ahead of the transaction is kept where the instance did
//! not move meanwhile, and done again where it did.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use cqrs_core::{EventEnvelope, EventMetadata};
use cqrs_sql::migrate::{migrate, Component};
use cqrs_sql::process::{
    instance_migrations, BusError, CommandBus, KeyedLocks, ProcessManager, ProcessProjection,
};
use cqrs_sql::read::{Projection, ProjectionError};
use cqrs_sql::Db;
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Echoes every event as one command, and counts its instance's events.
struct Echo;

impl ProcessManager for Echo {
    const NAME: &'static str = "echo";
    type State = u32;
    type Command = String;
    type Answer = ();

    fn instance_of(event: &EventEnvelope) -> Option<String> {
        (event.event_type != "Ignored").then(|| event.aggregate_id.clone())
    }
    fn on_event(state: &u32, event: &EventEnvelope) -> Result<(u32, Vec<String>), String> {
        Ok((
            state + 1,
            vec![format!("{}#{}", event.aggregate_id, event.version)],
        ))
    }
    fn on_answer(state: &u32, _: &String, _: &()) -> (u32, Vec<String>) {
        (*state, vec![])
    }
}

/// Records what it was asked, in order; holds every command until `gate`
/// commands are in flight at once, refuses those of `down`, and answers an
/// event's command the later the lower its version (so that reactions to
/// one instance's events run side by side would record out of order).
#[derive(Clone)]
struct Gated {
    issued: Arc<Mutex<Vec<(String, String)>>>,
    gate: Arc<tokio::sync::Barrier>,
    down: Option<&'static str>,
}

impl CommandBus<String, ()> for Gated {
    fn issue<'a>(
        &'a self,
        command: &'a String,
        key: String,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            self.gate.wait().await;
            let version: u64 = command
                .split('#')
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(5 * 5u64.saturating_sub(version))).await;
            if self.down.is_some_and(|d| command.starts_with(d)) {
                return Err(BusError(format!("{command}: store away")));
            }
            if let Ok(mut issued) = self.issued.lock() {
                issued.push((command.clone(), key));
            }
            Ok(())
        })
    }
}

fn event(aggregate: &str, version: i64, event_type: &str) -> EventEnvelope {
    EventEnvelope {
        position: 0,
        event_id: format!("{aggregate}-{version}"),
        aggregate_type: "thing".into(),
        aggregate_id: aggregate.into(),
        version,
        event_type: event_type.into(),
        schema_version: 1,
        payload: serde_json::json!({}),
        metadata: EventMetadata {
            command_id: "c".into(),
            occurred_at: chrono::Utc::now(),
            caller: None,
            traceparent: None,
        },
        recorded_at: chrono::Utc::now(),
    }
}

async fn with_instances_table(db: &Db) {
    let component = Component {
        name: "projection echo".into(),
        migrations: instance_migrations(),
    };
    migrate(db, &[component]).await.expect("migrate");
}

/// Applies `events` in one transaction; commits when it succeeded.
async fn apply(
    db: &Db,
    projection: &ProcessProjection<Echo, Gated>,
    events: &[EventEnvelope],
) -> Result<(), ProjectionError> {
    let refs: Vec<&EventEnvelope> = events.iter().collect();
    let mut tx = db.begin_derived().await.expect("begin");
    let applied = tokio::time::timeout(Duration::from_secs(10), projection.apply(&mut tx, &refs))
        .await
        .expect("the batch's reactions wait on each other: they ran one after another");
    if applied.is_ok() {
        tx.commit().await.expect("commit");
    }
    applied
}

async fn states(db: &Db) -> Vec<(String, String, i64)> {
    sqlx::query_as("SELECT instance_id, state, version FROM process_instances ORDER BY instance_id")
        .fetch_all(&db.pool)
        .await
        .expect("states")
}

fn the_batch() -> Vec<EventEnvelope> {
    vec![
        event("a", 1, "Made"),
        event("b", 1, "Made"),
        event("a", 2, "Made"),
        event("x", 1, "Ignored"),
        event("c", 1, "Made"),
        event("b", 2, "Made"),
        event("a", 3, "Made"),
    ]
}

async fn instances_react_together_each_in_order(db: Db) {
    with_instances_table(&db).await;
    // Three instances: every command waits until all three are in flight.
    let bus = Gated {
        issued: Arc::default(),
        gate: Arc::new(tokio::sync::Barrier::new(3)),
        down: None,
    };
    let projection = ProcessProjection::<Echo, _>::new(bus.clone());
    // One event each: run one after another, the first would wait forever.
    let batch = vec![
        event("a", 1, "Made"),
        event("b", 1, "Made"),
        event("x", 1, "Ignored"),
        event("c", 1, "Made"),
    ];
    apply(&db, &projection, &batch).await.expect("applied");
    let issued = bus.issued.lock().map(|i| i.clone()).unwrap_or_default();
    let mut commands: Vec<&str> = issued.iter().map(|(c, _)| c.as_str()).collect();
    commands.sort_unstable();
    assert_eq!(
        commands,
        ["a#1", "b#1", "c#1"],
        "the ignored event issued nothing"
    );
    assert!(
        issued
            .iter()
            .all(|(c, k)| k == &format!("echo/{}-1/1", &c[..1])),
        "keys are <process>/<event id>/<n>: {issued:?}"
    );

    // Each instance's own events in batch order, whatever the others do.
    let bus = Gated {
        issued: Arc::default(),
        gate: Arc::new(tokio::sync::Barrier::new(1)),
        down: None,
    };
    let projection = ProcessProjection::<Echo, _>::new(bus.clone());
    let later: Vec<EventEnvelope> = the_batch()
        .into_iter()
        .map(|e| event(&e.aggregate_id, e.version + 1, &e.event_type))
        .collect();
    apply(&db, &projection, &later).await.expect("applied");
    let issued = bus.issued.lock().map(|i| i.clone()).unwrap_or_default();
    for instance in ["a", "b", "c"] {
        let versions: Vec<&str> = issued
            .iter()
            .filter(|(c, _)| c.starts_with(instance))
            .map(|(c, _)| c.as_str())
            .collect();
        let mut sorted = versions.clone();
        sorted.sort_unstable();
        assert_eq!(versions, sorted, "{instance}'s events in order: {issued:?}");
    }
    assert_eq!(
        states(&db).await,
        [
            ("a".into(), "4".into(), 2),
            ("b".into(), "3".into(), 2),
            ("c".into(), "2".into(), 2)
        ],
        "each state counts its events and was saved once per batch"
    );
}

async fn a_failed_reaction_fails_the_batch_after_the_others_finished(db: Db) {
    with_instances_table(&db).await;
    let bus = Gated {
        issued: Arc::default(),
        gate: Arc::new(tokio::sync::Barrier::new(3)),
        down: Some("b"),
    };
    let projection = ProcessProjection::<Echo, _>::new(bus.clone());
    let batch = vec![
        event("a", 1, "Made"),
        event("b", 1, "Made"),
        event("c", 1, "Made"),
    ];
    let failed = apply(&db, &projection, &batch).await;
    assert!(
        matches!(&failed, Err(ProjectionError::Unavailable(m)) if m.contains("store away")),
        "{failed:?}"
    );
    let mut first: Vec<(String, String)> = bus.issued.lock().map(|i| i.clone()).unwrap_or_default();
    first.sort();
    assert_eq!(
        first.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(),
        ["a#1", "c#1"],
        "the others ran to their end"
    );
    assert!(states(&db).await.is_empty(), "nothing saved");

    // The batch again, the store back: the same keys again, and b's.
    let bus = Gated {
        down: None,
        issued: Arc::default(),
        ..bus
    };
    let projection = ProcessProjection::<Echo, _>::new(bus.clone());
    apply(&db, &projection, &batch).await.expect("applied");
    let mut again = bus.issued.lock().map(|i| i.clone()).unwrap_or_default();
    again.sort();
    assert_eq!(&again[0], &first[0]);
    assert_eq!(&again[2], &first[1]);
    assert_eq!(again[1], ("b#1".to_owned(), "echo/b-1/1".to_owned()));
}

async fn reactions_ahead_are_kept_unless_the_instance_moved(db: Db) {
    with_instances_table(&db).await;
    let bus = Gated {
        issued: Arc::default(),
        gate: Arc::new(tokio::sync::Barrier::new(1)),
        down: None,
    };
    let projection = ProcessProjection::<Echo, _>::new(bus.clone());
    let batch = [event("a", 1, "Made"), event("b", 1, "Made")];
    let refs: Vec<&EventEnvelope> = batch.iter().collect();
    let mut snapshot = db.begin_snapshot().await.expect("snapshot");
    projection
        .ahead(&mut snapshot, &refs)
        .await
        .expect("reacted ahead");
    snapshot.rollback().await.expect("end the snapshot");
    let issued = |bus: &Gated| bus.issued.lock().map(|i| i.clone()).unwrap_or_default();
    let mut first = issued(&bus);
    first.sort();
    assert_eq!(
        first,
        [
            ("a#1".to_owned(), "echo/a-1/1".to_owned()),
            ("b#1".to_owned(), "echo/b-1/1".to_owned())
        ]
    );
    // Meanwhile another owner moved b on (its state 7, saved once).
    sqlx::query(
        "INSERT INTO process_instances (process, instance_id, state, version, updated_at) \
         VALUES ('echo', 'b', '7', 1, 'then')",
    )
    .execute(&db.writer)
    .await
    .expect("move b");
    let mut tx = db.begin_derived().await.expect("begin");
    projection.apply(&mut tx, &refs).await.expect("applied");
    tx.commit().await.expect("commit");
    assert_eq!(
        issued(&bus)[2..],
        [("b#1".to_owned(), "echo/b-1/1".to_owned())],
        "a kept its reaction; b, moved on, reacted again in the transaction with the same key"
    );
    assert_eq!(
        states(&db).await,
        [("a".into(), "1".into(), 1), ("b".into(), "8".into(), 2)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_ahead_are_kept_unless_the_instance_moved_on_sqlite() {
    let (db, _dir) = test_support::fresh_sqlite().await;
    reactions_ahead_are_kept_unless_the_instance_moved(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_ahead_are_kept_unless_the_instance_moved_on_postgres() {
    reactions_ahead_are_kept_unless_the_instance_moved(test_support::fresh_postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_react_together_each_in_order_on_sqlite() {
    let (db, _dir) = test_support::fresh_sqlite().await;
    instances_react_together_each_in_order(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_react_together_each_in_order_on_postgres() {
    instances_react_together_each_in_order(test_support::fresh_postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reaction_fails_the_batch_after_the_others_finished_on_sqlite() {
    let (db, _dir) = test_support::fresh_sqlite().await;
    a_failed_reaction_fails_the_batch_after_the_others_finished(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reaction_fails_the_batch_after_the_others_finished_on_postgres() {
    a_failed_reaction_fails_the_batch_after_the_others_finished(
        test_support::fresh_postgres().await,
    )
    .await;
}

#[tokio::test]
async fn keyed_locks_serialise_one_key_and_let_others_pass() {
    let locks = Arc::new(KeyedLocks::default());
    let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (locks, inside, most) = (locks.clone(), inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let _turn = locks.lock("hot").await;
            let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            tokio::task::yield_now().await;
            inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }));
    }
    // Another key is not held up by the hot one.
    let held = locks.lock("hot").await;
    tokio::time::timeout(Duration::from_secs(5), locks.lock("cold"))
        .await
        .expect("another key passes");
    drop(held);
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(locks.is_empty(), "released keys are forgotten");
}
