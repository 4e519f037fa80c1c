//! The key ring on both databases: sealed data opens with its subject's key
//! and not after the key is erased; a process holding another master key
//! cannot open it until a rotation puts the keys under its master; two
//! processes making a subject's first key at once agree on one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use cqrs_sql::shred::{self, KeyRing, MasterKey, MasterSource, ShredError};
use cqrs_sql::Db;

async fn ring(db: &Db, master: &MasterKey) -> KeyRing {
    KeyRing::open(db.clone(), master.clone(), MasterSource::Fixed)
        .await
        .unwrap()
}

async fn keys_are_erased_rotated_and_shared(db: Db) {
    let a = MasterKey::generate();
    let ring_a = ring(&db, &a).await;
    let sealed = ring_a.seal("ada", b"1 Analytical Way").await.unwrap();
    assert!(!sealed.ciphertext.contains("Analytical"));
    let opened = ring_a.open_all(&[&sealed]).await.unwrap();
    assert_eq!(opened, vec![Some(b"1 Analytical Way".to_vec())]);
    // Her second secret is under the same key.
    let again = ring_a.seal("ada", b"ada@example.org").await.unwrap();
    assert_eq!(again.key_id, sealed.key_id);

    // A process with another master key cannot open it, and says why.
    let b = MasterKey::generate();
    let ring_b = ring(&db, &b).await;
    match ring_b.open_all(&[&sealed]).await {
        Err(ShredError::UnknownMaster { master_id, .. }) => assert_eq!(master_id, a.id()),
        other => panic!("{other:?}"),
    }
    // Rotated to b: b opens it, a (which never read b) no longer can.
    assert_eq!(
        shred::rotate(&db, std::slice::from_ref(&a), &b)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        ring_b.open_all(&[&sealed]).await.unwrap()[0].as_deref(),
        Some(&b"1 Analytical Way"[..])
    );
    assert!(matches!(
        ring_a.open_all(&[&sealed]).await,
        Err(ShredError::UnknownMaster { .. })
    ));
    assert_eq!(
        shred::masters_in_use(&db).await.unwrap(),
        vec![(b.id().to_owned(), 1)]
    );

    // Erased: unreadable, idempotent; a new secret gets a new key.
    assert_eq!(ring_b.erase("ada").await.unwrap(), 1);
    assert_eq!(ring_b.erase("ada").await.unwrap(), 0);
    assert_eq!(
        ring_b.open_all(&[&sealed, &again]).await.unwrap(),
        vec![None, None]
    );
    let later = ring_b.seal("ada", b"2 Difference Engine Rd").await.unwrap();
    assert_ne!(later.key_id, sealed.key_id);

    // Two processes making a subject's first key at once keep one.
    let ring_c = ring(&db, &b).await;
    let (x, y) = tokio::join!(ring_b.seal("bob", b"x"), ring_c.seal("bob", b"y"));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.key_id, y.key_id);
    assert_eq!(
        ring_c.open_all(&[&x, &y]).await.unwrap(),
        vec![Some(b"x".to_vec()), Some(b"y".to_vec())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_erased_rotated_and_shared_on_sqlite() {
    let (db, _dir) = test_support::fresh_sqlite().await;
    keys_are_erased_rotated_and_shared(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_erased_rotated_and_shared_on_postgres() {
    keys_are_erased_rotated_and_shared(test_support::fresh_postgres().await).await;
}
