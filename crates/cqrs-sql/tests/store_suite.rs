//! One suite for the event store and command handler, run on SQLite and on
//! PostgreSQL. A tiny "ticket" aggregate defined here shows the framework
//! needs nothing from the Orders domain.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use cqrs_core::{Aggregate, DomainError, DomainEvent, ErrorKind, EventMetadata, NewEvent};
use cqrs_sql::store::request_hash;
use cqrs_sql::{
    execute, execute_cached, AppendRequest, CommandError, CommandOptions, Db, EventStore,
    IdempotencyRecord, SqlEventStore, StateCache, StoreError,
};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum TicketEvent {
    Opened { title: String },
    Closed {},
}
impl DomainEvent for TicketEvent {
    fn event_type(&self) -> &'static str {
        match self {
            TicketEvent::Opened { .. } => "Opened",
            TicketEvent::Closed {} => "Closed",
        }
    }
}
#[derive(Debug, Clone)]
enum TicketCommand {
    Open(String),
    Close,
}
#[derive(Debug, thiserror::Error, PartialEq)]
enum TicketError {
    #[error("not open")]
    NotOpen,
}
impl DomainError for TicketError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Conflict
    }
    fn code(&self) -> &'static str {
        "not_open"
    }
}
#[derive(Debug, Clone, Default, PartialEq)]
enum TicketState {
    #[default]
    None,
    Open,
    Closed,
}
struct Ticket;
impl Aggregate for Ticket {
    const TYPE: &'static str = "ticket";
    type State = TicketState;
    type Command = TicketCommand;
    type Event = TicketEvent;
    type Error = TicketError;
    fn decide(s: &TicketState, c: &TicketCommand) -> Result<Vec<TicketEvent>, TicketError> {
        match (s, c) {
            (TicketState::None, TicketCommand::Open(t)) => {
                Ok(vec![TicketEvent::Opened { title: t.clone() }])
            }
            (TicketState::Open, TicketCommand::Close) => Ok(vec![TicketEvent::Closed {}]),
            _ => Err(TicketError::NotOpen),
        }
    }
    fn evolve(_: TicketState, e: &TicketEvent) -> TicketState {
        match e {
            TicketEvent::Opened { .. } => TicketState::Open,
            TicketEvent::Closed {} => TicketState::Closed,
        }
    }
}

fn new_event(n: usize) -> NewEvent {
    NewEvent::encode(
        uuid::Uuid::new_v4().to_string(),
        &TicketEvent::Opened {
            title: format!("t{n}"),
        },
    )
    .unwrap()
}

fn append_req(id: &str, expected: i64, n: usize) -> AppendRequest {
    AppendRequest {
        aggregate_type: "ticket".into(),
        aggregate_id: id.into(),
        expected_version: expected,
        events: (0..n).map(new_event).collect(),
        metadata: EventMetadata {
            command_id: uuid::Uuid::new_v4().to_string(),
            occurred_at: chrono::Utc::now(),
            caller: None,
            traceparent: None,
        },
        idempotency: None,
    }
}

fn options() -> CommandOptions {
    CommandOptions {
        command_id: uuid::Uuid::new_v4().to_string(),
        expected_version: None,
        idempotency: None,
        now: chrono::Utc::now(),
        max_retries: 100,
        caller: None,
        traceparent: None,
    }
}

async fn count(db: &Db, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn appended_events_load_in_version_order(store: SqlEventStore) {
    store.append(append_req("a", 0, 2)).await.unwrap();
    store.append(append_req("b", 0, 1)).await.unwrap();
    store.append(append_req("a", 2, 1)).await.unwrap();
    let a = store.load("a").await.unwrap();
    assert_eq!(
        a.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(a.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(a[0].payload, serde_json::json!({"title": "t0"}));
    assert_eq!(a[0].aggregate_type, "ticket");
    assert!(store.load("nobody").await.unwrap().is_empty());
}

async fn an_append_is_all_or_nothing_and_the_relay_checkpoint_only_moves_forward(
    store: SqlEventStore,
) {
    let appended = store.append(append_req("a", 0, 3)).await.unwrap();
    let positions: Vec<i64> = appended.events.iter().map(|e| e.position).collect();
    // The log is the outbox: everything after the relay's checkpoint is pending.
    assert_eq!(store.relay_checkpoint().await.unwrap(), 0);
    assert_eq!(store.outbox_pending().await.unwrap(), 3);
    // The second event's insert fails: if events were written in
    // transactions of their own, the first would remain.
    refuse_inserts(
        store.db(),
        "events",
        "aggregate_id = 'doomed' AND NEW.version = 2",
    )
    .await;
    let failed = store.append(append_req("doomed", 0, 2)).await;
    assert!(failed.is_err(), "{failed:?}");
    assert!(
        store.load("doomed").await.unwrap().is_empty(),
        "half an append survived"
    );
    assert_eq!(count(store.db(), "events").await, 3);
    assert_eq!(store.outbox_pending().await.unwrap(), 3);
    // The idempotency row, written last, fails: nothing of the append remains.
    refuse_inserts(store.db(), "idempotency", "key = 'doomed-key'").await;
    let mut req = append_req("doomed-too", 0, 1);
    req.idempotency = Some(IdempotencyRecord {
        key: "doomed-key".into(),
        request_hash: "h".into(),
    });
    assert!(store.append(req).await.is_err());
    assert!(store.load("doomed-too").await.unwrap().is_empty());
    assert_eq!(count(store.db(), "events").await, 3);
    // A published batch moves the checkpoint (never back) and is dated.
    store
        .relay_published(positions[0], positions[2])
        .await
        .unwrap();
    store
        .relay_published(positions[0], positions[1])
        .await
        .unwrap();
    assert_eq!(store.relay_checkpoint().await.unwrap(), positions[2]);
    assert_eq!(store.outbox_pending().await.unwrap(), 0);
    assert!(store.published_at(positions[1]).await.unwrap().is_some());
    assert!(store
        .published_at(positions[2] + 1)
        .await
        .unwrap()
        .is_none());
}

/// Makes every insert into `table` that matches `when` fail (a trigger), to
/// break an append half-way.
async fn refuse_inserts(db: &Db, table: &str, when: &str) {
    let name = format!("refuse_{table}");
    // Test-only SQL: a trigger is written differently on each database.
    let statements = match db.dialect.name() {
        "Sqlite" => vec![format!(
            "CREATE TRIGGER {name} BEFORE INSERT ON {table} WHEN NEW.{when} \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )],
        _ => vec![
            format!(
                "CREATE FUNCTION {name}() RETURNS trigger AS $$ BEGIN \
                 RAISE EXCEPTION 'injected failure'; END $$ LANGUAGE plpgsql"
            ),
            format!(
                "CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW \
                 WHEN (NEW.{when}) EXECUTE FUNCTION {name}()"
            ),
        ],
    };
    for s in statements {
        sqlx::query(&s).execute(&db.writer).await.unwrap();
    }
}

async fn a_stale_expected_version_is_a_conflict_and_writes_nothing(store: SqlEventStore) {
    store.append(append_req("a", 0, 2)).await.unwrap();
    for stale in [0, 1] {
        match store.append(append_req("a", stale, 2)).await {
            Err(StoreError::VersionConflict { expected, .. }) => assert_eq!(expected, stale),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    assert_eq!(count(store.db(), "events").await, 2);
}

async fn an_idempotency_key_is_stored_with_the_append_and_used_once(store: SqlEventStore) {
    let mut req = append_req("a", 0, 1);
    req.idempotency = Some(IdempotencyRecord {
        key: "k1".into(),
        request_hash: "h".into(),
    });
    let first = store.append(req.clone()).await.unwrap();
    let answer = store.idempotent_answer("k1").await.unwrap().unwrap();
    assert_eq!(
        (answer.version, answer.position),
        (1, first.events[0].position)
    );
    let mut again = append_req("b", 0, 1);
    again.idempotency = req.idempotency.clone();
    assert!(matches!(
        store.append(again).await,
        Err(StoreError::DuplicateIdempotencyKey(_))
    ));
    assert!(
        store.load("b").await.unwrap().is_empty(),
        "a refused key must append nothing"
    );
}

async fn the_log_reads_after_a_position_in_order(store: SqlEventStore) {
    for i in 0..5 {
        store
            .append(append_req(&format!("x{i}"), 0, 2))
            .await
            .unwrap();
    }
    let all = store.read_log(0, 100).await.unwrap();
    assert_eq!(all.len(), 10);
    let tail = store.read_log(all[3].position, 4).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.position).collect::<Vec<_>>(),
        all[4..8].iter().map(|e| e.position).collect::<Vec<_>>()
    );
    assert!(store
        .read_log(all[9].position, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn fifty_concurrent_appends_at_one_version_have_one_winner(store: SqlEventStore) {
    store.append(append_req("a", 0, 1)).await.unwrap();
    let results =
        futures::future::join_all((0..50).map(|_| store.append(append_req("a", 1, 1)))).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1);
    assert!(results
        .iter()
        .all(|r| r.is_ok() || matches!(r, Err(StoreError::VersionConflict { .. }))));
    let versions: Vec<i64> = store
        .load("a")
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, vec![1, 2]);
}

/// Appends queued together commit together (group commit); one that loses
/// its version or its idempotency key fails alone, and what it had written
/// in the shared transaction is gone.
async fn conflicting_appends_fail_alone_and_their_neighbours_commit(store: SqlEventStore) {
    store.append(append_req("hot", 0, 1)).await.unwrap();
    let keyed = |id: &str, key: &str| {
        let mut r = append_req(id, 0, 2);
        r.idempotency = Some(IdempotencyRecord {
            key: key.into(),
            request_hash: id.into(),
        });
        r
    };
    let mut requests = Vec::new();
    for i in 0..40 {
        requests.push(match i % 4 {
            0 => append_req("hot", 1, 2),
            1 => keyed(&format!("shared-key-{i}"), "shared"),
            _ => append_req(&format!("cold-{i}"), 0, 3),
        });
    }
    let results = futures::future::join_all(requests.into_iter().map(|r| store.append(r))).await;
    let (mut hot, mut shared, mut cold) = (0, 0, 0);
    for (i, r) in results.iter().enumerate() {
        match (i % 4, r) {
            (0, Ok(_)) => hot += 1,
            (0, Err(StoreError::VersionConflict { .. })) => {}
            (1, Ok(_)) => shared += 1,
            (1, Err(StoreError::DuplicateIdempotencyKey(k))) => assert_eq!(k, "shared"),
            (_, Ok(a)) => {
                assert_eq!(a.events.len(), 3);
                cold += 1;
            }
            (_, other) => panic!("append {i}: {other:?}"),
        }
    }
    assert_eq!((hot, shared, cold), (1, 1, 20));
    assert_eq!(
        store.load("hot").await.unwrap().len(),
        3,
        "one winner, versions 2 and 3"
    );
    let answer = store.idempotent_answer("shared").await.unwrap().unwrap();
    let holders: Vec<usize> = (0..40)
        .filter(|i| i % 4 == 1)
        .filter(|i| results[*i].is_ok())
        .collect();
    let holder = format!("shared-key-{}", holders[0]);
    assert_eq!(
        answer.aggregate_id, holder,
        "the key answers for its holder"
    );
    for i in (0..40).filter(|i| i % 4 == 1 && *i != holders[0]) {
        assert!(
            store
                .load(&format!("shared-key-{i}"))
                .await
                .unwrap()
                .is_empty(),
            "an append refused for its key left events behind"
        );
    }
    // 1 + 2 (hot) + 2 (shared) + 20 x 3 (cold)
    assert_eq!(count(store.db(), "events").await, 65);
}

/// The store, counting how often a history is loaded.
struct CountingLoads {
    store: SqlEventStore,
    loads: AtomicUsize,
}

impl EventStore for CountingLoads {
    async fn load(&self, id: &str) -> Result<Vec<cqrs_core::EventEnvelope>, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.store.load(id).await
    }
    async fn append(&self, r: AppendRequest) -> Result<cqrs_sql::Appended, StoreError> {
        self.store.append(r).await
    }
    async fn idempotent_answer(
        &self,
        key: &str,
    ) -> Result<Option<cqrs_sql::store::StoredAnswer>, StoreError> {
        self.store.idempotent_answer(key).await
    }
    async fn position_of(&self, id: &str, version: i64) -> Result<Option<i64>, StoreError> {
        self.store.position_of(id, version).await
    }
    async fn read_log(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<cqrs_core::EventEnvelope>, StoreError> {
        self.store.read_log(after, limit).await
    }
    async fn head_position(&self) -> Result<i64, StoreError> {
        self.store.head_position().await
    }
    async fn outbox_pending(&self) -> Result<i64, StoreError> {
        self.store.outbox_pending().await
    }
    fn subscribe(&self) -> tokio::sync::watch::Receiver<i64> {
        self.store.subscribe()
    }
}

/// A cached state saves the load; one that another process made stale is
/// caught (by the append's version check, or by deciding a refusal again on
/// the stored state) and the command ends as it would have without a cache.
async fn a_cached_state_saves_the_load_and_a_stale_one_is_decided_again(store: SqlEventStore) {
    let ours = CountingLoads {
        store: store.clone(),
        loads: AtomicUsize::new(0),
    };
    let cache = StateCache::<Ticket>::new(16);
    let loads = || ours.loads.load(Ordering::SeqCst);
    cache.insert_new("t");
    execute_cached(
        &ours,
        Some(&cache),
        "t",
        &TicketCommand::Open("x".into()),
        options(),
    )
    .await
    .unwrap();
    assert_eq!(loads(), 0, "a new aggregate needs no load");
    // Another process closes it: our cached state (open) is stale.
    execute::<Ticket, _>(&store, "t", &TicketCommand::Close, options())
        .await
        .unwrap();
    let r = execute_cached(&ours, Some(&cache), "t", &TicketCommand::Close, options()).await;
    assert!(
        matches!(r, Err(CommandError::Domain(TicketError::NotOpen))),
        "the stale acceptance must fail at append and be refused on the stored state: {r:?}"
    );
    assert_eq!(loads(), 1);
    assert_eq!(store.load("t").await.unwrap().len(), 2, "closed once");
    // A cached "never opened" that another process opened: the refusal is
    // decided again on the stored state, and the command goes through.
    cache.insert_new("u");
    execute::<Ticket, _>(&store, "u", &TicketCommand::Open("y".into()), options())
        .await
        .unwrap();
    let closed = execute_cached(&ours, Some(&cache), "u", &TicketCommand::Close, options())
        .await
        .unwrap();
    assert_eq!(closed.version, 2);
    assert_eq!(loads(), 2);
    // After its own append the state is cached: the next command loads nothing.
    cache.insert_new("v");
    execute_cached(
        &ours,
        Some(&cache),
        "v",
        &TicketCommand::Open("z".into()),
        options(),
    )
    .await
    .unwrap();
    let closed = execute_cached(&ours, Some(&cache), "v", &TicketCommand::Close, options())
        .await
        .unwrap();
    assert_eq!((closed.version, loads()), (2, 2));
    // A refusal on a cached state is checked on the stored one.
    let again = execute_cached(&ours, Some(&cache), "v", &TicketCommand::Close, options()).await;
    assert!(matches!(
        again,
        Err(CommandError::Domain(TicketError::NotOpen))
    ));
    assert_eq!(loads(), 3);
}

async fn fifty_concurrent_conflicting_commands_have_one_winner(store: SqlEventStore) {
    execute::<Ticket, _>(&store, "t", &TicketCommand::Open("x".into()), options())
        .await
        .unwrap();
    let results = futures::future::join_all(
        (0..50).map(|_| execute::<Ticket, _>(&store, "t", &TicketCommand::Close, options())),
    )
    .await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "exactly one Close must win");
    for r in &results {
        match r {
            Ok(o) => assert_eq!(o.version, 2),
            Err(CommandError::Domain(TicketError::NotOpen)) => {}
            Err(e) => panic!("losers see the closed ticket, got {e:?}"),
        }
    }
    let versions: Vec<i64> = store
        .load("t")
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, vec![1, 2]);
}

async fn a_retried_command_appends_nothing_and_answers_the_same(store: SqlEventStore) {
    let idem = IdempotencyRecord {
        key: "key-1".into(),
        request_hash: request_hash(&[b"open", b"x"]),
    };
    let opts = || CommandOptions {
        idempotency: Some(idem.clone()),
        ..options()
    };
    let first = execute::<Ticket, _>(&store, "t", &TicketCommand::Open("x".into()), opts())
        .await
        .unwrap();
    let again = execute::<Ticket, _>(&store, "t", &TicketCommand::Open("x".into()), opts())
        .await
        .unwrap();
    assert!(again.replayed && !first.replayed);
    assert_eq!(
        (again.version, again.position, &again.command_id),
        (first.version, first.position, &first.command_id)
    );
    assert_eq!(count(store.db(), "events").await, 1);
    let other = CommandOptions {
        idempotency: Some(IdempotencyRecord {
            key: "key-1".into(),
            request_hash: "different".into(),
        }),
        ..options()
    };
    let r = execute::<Ticket, _>(&store, "u", &TicketCommand::Open("y".into()), other).await;
    assert!(matches!(r, Err(CommandError::IdempotencyMismatch)));
    assert_eq!(count(store.db(), "events").await, 1);
}

async fn concurrent_retries_with_one_key_append_once(store: SqlEventStore) {
    let idem = IdempotencyRecord {
        key: "key-c".into(),
        request_hash: "h".into(),
    };
    let results =
        futures::future::join_all((0..20).map(|_| {
            let opts = CommandOptions {
                idempotency: Some(idem.clone()),
                ..options()
            };
            let store = store.clone();
            async move {
                execute::<Ticket, _>(&store, "t", &TicketCommand::Open("x".into()), opts).await
            }
        }))
        .await;
    let answers: HashSet<(i64, i64, String)> = results
        .into_iter()
        .map(|r| {
            let o = r.unwrap();
            (o.version, o.position, o.command_id)
        })
        .collect();
    assert_eq!(answers.len(), 1, "every retry gets the first answer");
    assert_eq!(count(store.db(), "events").await, 1);
}

async fn an_expected_version_that_is_not_current_is_refused(store: SqlEventStore) {
    execute::<Ticket, _>(&store, "t", &TicketCommand::Open("x".into()), options())
        .await
        .unwrap();
    let opts = CommandOptions {
        expected_version: Some(0),
        ..options()
    };
    match execute::<Ticket, _>(&store, "t", &TicketCommand::Close, opts).await {
        Err(CommandError::VersionConflict {
            expected: 0,
            actual: 1,
        }) => {}
        other => panic!("{other:?}"),
    }
    let opts = CommandOptions {
        expected_version: Some(1),
        ..options()
    };
    assert_eq!(
        execute::<Ticket, _>(&store, "t", &TicketCommand::Close, opts)
            .await
            .unwrap()
            .version,
        2
    );
}

/// Many writers append while a reader tails the log: the reader must see every
/// event exactly once, in position order, even when transactions commit out
/// of allocation order (PostgreSQL).
async fn a_tailing_reader_misses_nothing_under_concurrent_writes(store: SqlEventStore) {
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    store
                        .append(append_req(&format!("w{w}-{i}"), 0, 1))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut after = 0;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while seen.len() < 320 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reader saw only {} of 320",
            seen.len()
        );
        let batch = store.read_log(after, 7).await.unwrap();
        for e in &batch {
            assert!(e.position > after);
            after = e.position;
            seen.push(e.position);
        }
        if batch.is_empty() {
            if writers.iter().all(|w| w.is_finished())
                && store.read_log(after, 1).await.unwrap().is_empty()
            {
                break; // every writer is done and the log has nothing after `after`
            }
            tokio::task::yield_now().await;
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    let all: Vec<i64> = store
        .all_events()
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(seen, all);
}

/// PostgreSQL allocates positions when an append starts, not when it
/// commits. An append that took position P and commits after one that took
/// P+1 must still be read before P+1: the reader waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_waits_for_a_lower_position_that_commits_late_on_postgres() {
    use sqlx::{Connection, Executor};
    let db = test_support::fresh_postgres().await;
    let store = SqlEventStore::open(db.clone()).await.unwrap();
    // A slow append, by hand, as the store writes one: the shared lock of
    // appenders, then the event (position P), then... no commit yet.
    let mut slow = sqlx::AnyConnection::connect(db.url()).await.unwrap();
    slow.execute("BEGIN").await.unwrap();
    slow.execute("SELECT 1 FROM (SELECT pg_advisory_xact_lock_shared(1869767794)) AS l")
        .await
        .unwrap();
    let p: i64 = sqlx::query_scalar(
        "INSERT INTO events (event_id, aggregate_type, aggregate_id, version, event_type, schema_version, \
         payload, command_id, occurred_at, recorded_at) VALUES ('slow', 'ticket', 'slow', 1, 'Opened', 1, \
         CAST('{\"title\":\"s\"}' AS JSONB), 'c', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z') \
         RETURNING position",
    )
    .fetch_one(&mut slow)
    .await
    .unwrap();
    // A fast append takes P+1 and commits first.
    let fast = store.append(append_req("fast", 0, 1)).await.unwrap();
    assert_eq!(fast.events[0].position, p + 1);
    let reader = {
        let store = store.clone();
        tokio::spawn(async move { store.read_log(0, 10).await.unwrap() })
    };
    // The reader cannot answer while P is in flight...
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !reader.is_finished(),
        "the reader answered while position {p} was still in flight"
    );
    // ...and once P commits it answers both, in order.
    slow.execute("COMMIT").await.unwrap();
    let read: Vec<i64> = reader.await.unwrap().iter().map(|e| e.position).collect();
    assert_eq!(read, vec![p, p + 1]);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let (db, _dir) = test_support::fresh_sqlite().await;
                super::$name(cqrs_sql::SqlEventStore::open(db).await.unwrap()).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let db = test_support::fresh_postgres().await;
                super::$name(cqrs_sql::SqlEventStore::open(db).await.unwrap()).await;
            })*
        }
    };
}

suite!(
    appended_events_load_in_version_order,
    an_append_is_all_or_nothing_and_the_relay_checkpoint_only_moves_forward,
    conflicting_appends_fail_alone_and_their_neighbours_commit,
    a_cached_state_saves_the_load_and_a_stale_one_is_decided_again,
    a_stale_expected_version_is_a_conflict_and_writes_nothing,
    an_idempotency_key_is_stored_with_the_append_and_used_once,
    the_log_reads_after_a_position_in_order,
    fifty_concurrent_appends_at_one_version_have_one_winner,
    fifty_concurrent_conflicting_commands_have_one_winner,
    a_retried_command_appends_nothing_and_answers_the_same,
    concurrent_retries_with_one_key_append_once,
    an_expected_version_that_is_not_current_is_refused,
    a_tailing_reader_misses_nothing_under_concurrent_writes,
);

/// Read models and the relay checkpoint commit without waiting for the WAL
/// flush, in that transaction only: the connection goes back to the pool
/// durable, so an append that gets it next is flushed before its 2xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_derived_transactions_skip_the_flush_on_postgres() {
    let url = test_support::fresh_postgres_url().await;
    let options = cqrs_sql::DbOptions {
        max_connections: 1,
        ..cqrs_sql::DbOptions::default()
    };
    let db = Db::connect(&url, &options).await.unwrap();
    let setting = "SELECT current_setting('synchronous_commit')";
    let mut tx = db.begin_derived().await.unwrap();
    let inside: String = sqlx::query_scalar(setting)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(inside, "off");
    // One connection in the pool: the same one, after the transaction.
    let after: String = sqlx::query_scalar(setting)
        .fetch_one(&db.writer)
        .await
        .unwrap();
    assert_eq!(after, "on");
    let mut plain = db.writer.begin().await.unwrap();
    let appends: String = sqlx::query_scalar(setting)
        .fetch_one(&mut *plain)
        .await
        .unwrap();
    assert_eq!(appends, "on");
}

/// The second aggregate's rules, through the same given/when/then harness
/// the Orders tests use: the harness needs nothing from any domain.
#[test]
fn a_ticket_opens_once_and_closes_once() {
    use cqrs_core::testing::GivenWhenThen;
    let opened = TicketEvent::Opened { title: "t".into() };
    Ticket::given([])
        .when(TicketCommand::Open("t".into()))
        .then([opened.clone()]);
    Ticket::given([opened.clone()])
        .when(TicketCommand::Open("again".into()))
        .then_error(TicketError::NotOpen);
    Ticket::given([opened.clone()])
        .when(TicketCommand::Close)
        .then([TicketEvent::Closed {}]);
    Ticket::given([opened, TicketEvent::Closed {}])
        .when(TicketCommand::Close)
        .then_refused("not_open");
}
