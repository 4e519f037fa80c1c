//! Derived instance ids: processes started alike take distinct slots of
//! one base, and a slot whose holder is gone is taken again (so a restart
//! gets its old id back), on the read DB's PostgreSQL server (an advisory
//! lock per slot) and beside a SQLite read DB (a locked file per slot).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use cqrs_kafka::MemberSlot;
use cqrs_sql::Db;
use std::time::{Duration, Instant};

async fn slots_are_distinct_and_taken_back(db: &Db) {
    let base = format!("test-{}", uuid::Uuid::new_v4().simple());
    let a = MemberSlot::claim(&base, db).await.unwrap();
    let b = MemberSlot::claim(&base, db).await.unwrap();
    assert_eq!(a.id(), format!("{base}-0"));
    assert_eq!(b.id(), format!("{base}-1"));
    // Another base does not compete for the same slots.
    let other = MemberSlot::claim(&format!("{base}x"), db).await.unwrap();
    assert_eq!(other.id(), format!("{base}x-0"));
    // The holder of slot 0 goes away (a killed process's session or file
    // handle is closed by the OS): the next claim is slot 0 again, while
    // slot 1 stays b's. The server notices a closed session by itself, so
    // wait for it with a deadline.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = MemberSlot::claim(&base, db).await.unwrap();
        if c.id() == format!("{base}-0") {
            break;
        }
        assert_eq!(c.id(), format!("{base}-2"), "slot 1 is b's");
        drop(c);
        assert!(Instant::now() < deadline, "slot 0 was never free again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(b);
}

#[tokio::test]
async fn postgres_slots_are_distinct_and_a_freed_one_is_taken_back() {
    let db = test_support::fresh_postgres().await;
    slots_are_distinct_and_taken_back(&db).await;
}

#[tokio::test]
async fn sqlite_slots_are_distinct_and_a_freed_one_is_taken_back() {
    let (db, _dir) = test_support::fresh_sqlite().await;
    slots_are_distinct_and_taken_back(&db).await;
}
