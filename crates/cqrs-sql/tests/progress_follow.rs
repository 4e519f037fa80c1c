//! A process that does not run the projector learns the read model's
//! progress by following `projected_versions` page by page. A batch stamps
//! all its versions with one `seq`, so a page can end inside a stamp: the
//! next page must go on after the last aggregate read, neither skipping
//! nor stalling, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use cqrs_core::ConsistencyToken;
use cqrs_sql::read::{ReadProgress, WaitOutcome};
use cqrs_sql::{batch, Db};
use std::time::Duration;
use tokio::time::Instant;

/// More than the follower's page (5,000), all at one stamp.
const ROWS: usize = 5_500;

async fn stamp(db: &Db, seq: i64) {
    let ids: Vec<String> = (0..ROWS).map(|i| format!("agg-{i:05}")).collect();
    let sql = format!(
        "INSERT INTO projected_versions \
         (projector, aggregate_id, version, position, published_as, consumed_at, applied_at, seq) \
         SELECT 'p', v.value, 1, 0, '', '', '', $2 FROM ({}) AS v",
        batch::keys(db.dialect, 1)
    );
    sqlx::query(&sql)
        .bind(batch::keys_json(&ids).expect("keys"))
        .bind(seq)
        .execute(&db.writer)
        .await
        .expect("stamp versions");
}

async fn the_follower_pages_through_one_stamp_larger_than_a_page(db: Db) {
    cqrs_sql::read::runner::ensure_schema(&db)
        .await
        .expect("runner tables");
    let progress = ReadProgress::new(db.clone(), "p");
    let mut moved = progress.changes();
    tokio::spawn(progress.clone().follow_database(Duration::from_millis(50)));
    // The follower starts after whatever is stamped when it starts: stamp
    // one version at a time until it reports one, then it is following.
    let mut seq = 0;
    loop {
        seq += 1;
        sqlx::query(
            "INSERT INTO projected_versions \
             (projector, aggregate_id, version, position, published_as, consumed_at, applied_at, seq) \
             VALUES ('p', $1, 1, 0, '', '', '', $2)",
        )
        .bind(format!("sentinel-{seq}"))
        .bind(seq)
        .execute(&db.writer)
        .await
        .expect("a sentinel stamp");
        if tokio::time::timeout(Duration::from_secs(1), moved.changed())
            .await
            .is_ok()
        {
            break;
        }
        assert!(seq < 30, "the follower never reported a version");
    }
    let last = format!("agg-{:05}", ROWS - 1);
    // The wait starts before the versions exist: only the follower can
    // tell it of them before its deadline (at which it would ask the DB).
    let waiter = progress.start_wait(&last).await.expect("start wait");
    assert_eq!(waiter.current, 0);
    stamp(&db, seq + 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let outcome = waiter.until(1, deadline).await.expect("wait");
    assert_eq!(outcome, WaitOutcome::Reached);
    assert!(
        Instant::now() < deadline,
        "reached only at the deadline: the follower never read the last page"
    );
    // Every aggregate of the stamp is known, the first page's and the
    // second's alike (a token wait on each answers from memory).
    for i in [0, 4_999, 5_000, ROWS - 1] {
        let token = ConsistencyToken {
            position: 1,
            version: 1,
            aggregate_id: format!("agg-{i:05}"),
        };
        let outcome = progress
            .wait_for(&token, Duration::from_secs(10))
            .await
            .expect("wait");
        assert_eq!(outcome, WaitOutcome::Reached, "agg-{i:05}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_pages_through_one_stamp_larger_than_a_page_on_sqlite() {
    let (db, _dir) = test_support::fresh_sqlite().await;
    the_follower_pages_through_one_stamp_larger_than_a_page(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_pages_through_one_stamp_larger_than_a_page_on_postgres() {
    the_follower_pages_through_one_stamp_larger_than_a_page(test_support::fresh_postgres().await)
        .await;
}

/// A token wait the read DB answers (the follower has not read the stamp
/// yet) catches the follower up before it returns: the process then knows
/// every version the DB had, other aggregates' included.
async fn a_wait_answered_by_the_database_catches_the_follower_up(db: Db) {
    cqrs_sql::read::runner::ensure_schema(&db)
        .await
        .expect("runner tables");
    let progress = ReadProgress::new(db.clone(), "p");
    // A follower that polls once an hour, and nobody notifies it (the
    // projector's NOTIFY is not sent here): it learns only when asked.
    tokio::spawn(progress.clone().follow_database(Duration::from_secs(3600)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !progress.is_following() {
        assert!(Instant::now() < deadline, "the follower never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Two aggregates stamped in one batch (one statement, as a batch
    // commits them together), unknown to the process.
    sqlx::query(
        "INSERT INTO projected_versions \
         (projector, aggregate_id, version, position, published_as, consumed_at, applied_at, seq) \
         VALUES ('p', 'other', 3, 0, '', '', '', 1), ('p', 'mine', 3, 0, '', '', '', 1)",
    )
    .execute(&db.writer)
    .await
    .expect("a batch's stamps");
    let waiter = progress.start_wait("mine").await.expect("start wait");
    assert_eq!(waiter.current, 3, "the read DB has it");
    waiter.settle(3).await.expect("settle");
    assert_eq!(progress.known("mine").0, Some(3));
    assert_eq!(
        progress.known("other").0,
        Some(3),
        "the whole batch is known"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_answered_by_the_database_catches_the_follower_up_on_sqlite() {
    let (db, _dir) = test_support::fresh_sqlite().await;
    a_wait_answered_by_the_database_catches_the_follower_up(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_answered_by_the_database_catches_the_follower_up_on_postgres() {
    a_wait_answered_by_the_database_catches_the_follower_up(test_support::fresh_postgres().await)
        .await;
}
