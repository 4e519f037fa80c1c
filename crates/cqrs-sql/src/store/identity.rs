//! The store's identity: a UUID made at its first open, kept in its write
//! DB. Whatever carries the store's events elsewhere (a topic) can say
//! whose they are, and refuse another store's.

use super::StoreError;
use crate::db::{timestamp, Db};
use crate::dialect::section;

const SQL: &str = include_str!("../../sql/event_store.sql");

/// The store's id, made now if this is its first open (two processes
/// opening a new store at once agree on the first one written).
pub(super) async fn load_or_make(db: &Db) -> Result<String, StoreError> {
    if let Some(id) = read(db).await? {
        return Ok(id);
    }
    let mut tx = db.writer.begin().await?;
    sqlx::query(section(SQL, "init_identity"))
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(timestamp(chrono::Utc::now()))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    read(db).await?.ok_or_else(|| {
        StoreError::Db(sqlx::Error::Protocol(
            "the store's identity row was written and is not there".into(),
        ))
    })
}

async fn read(db: &Db) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(section(SQL, "identity"))
        .fetch_optional(&db.pool)
        .await?)
}
