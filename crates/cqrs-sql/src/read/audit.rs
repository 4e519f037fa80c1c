//! What operators did to the read side (retried or skipped a dead letter,
//! started or cancelled a rebuild), kept in the read DB beside what it
//! changed: who, what, on what, when, and how it ended.

use crate::db::{timestamp, Db};
use crate::dialect::section;

const SQL: &str = include_str!("../../sql/ops_actions.sql");

/// The table and its index (the runner's migration 3).
pub(crate) fn schema() -> [&'static str; 2] {
    [section(SQL, "table"), section(SQL, "index")]
}

/// One recorded action.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct OpsAction {
    /// Id (time-ordered).
    pub id: String,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Who: the token's subject, or `unchecked` when nobody is checked.
    pub actor: String,
    /// What, e.g. `dead_letter.retry`, `rebuild.start`.
    pub action: String,
    /// On what: a dead letter's id, a projector's name.
    pub target: String,
    /// How it ended: `done`, `refused`, `failed`, `started`, `cancelled`.
    pub outcome: String,
    /// The rest, as JSON text.
    pub detail: String,
}

/// Records an action; answers it as stored.
pub async fn record(
    db: &Db,
    actor: &str,
    action: &str,
    target: &str,
    outcome: &str,
    detail: &serde_json::Value,
) -> Result<OpsAction, sqlx::Error> {
    let row = OpsAction {
        id: uuid::Uuid::now_v7().to_string(),
        at: timestamp(chrono::Utc::now()),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        outcome: outcome.to_owned(),
        detail: detail.to_string(),
    };
    sqlx::query(section(SQL, "record"))
        .bind(&row.id)
        .bind(&row.at)
        .bind(&row.actor)
        .bind(&row.action)
        .bind(&row.target)
        .bind(&row.outcome)
        .bind(&row.detail)
        .execute(&db.writer)
        .await?;
    Ok(row)
}

/// The newest `limit` actions, newest first.
pub async fn recent(db: &Db, limit: i64) -> Result<Vec<OpsAction>, sqlx::Error> {
    sqlx::query_as(section(SQL, "recent"))
        .bind(limit)
        .fetch_all(&db.pool)
        .await
}

/// The newest action on `target` whose name starts with `prefix`.
pub async fn last_on(
    db: &Db,
    target: &str,
    prefix: &str,
) -> Result<Option<OpsAction>, sqlx::Error> {
    sqlx::query_as(section(SQL, "last_on"))
        .bind(target)
        .bind(format!("{prefix}%"))
        .fetch_optional(&db.pool)
        .await
}
