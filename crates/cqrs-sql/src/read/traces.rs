//! What the read side recorded of each event it applied and of each query
//! that first served a write: the read half of a command's trace, and the
//! counts that tools wait on. The tables are the runner's; these are the
//! only reads of them outside this crate's own paths.

use crate::db::Db;
use crate::dialect::section;
use crate::read::sql::SQL;

/// When and from where the projector took one event (or an aggregate's
/// last applied one).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Applied {
    /// Where the event came from ("log@41", "orders.events/3@17").
    pub published_as: String,
    /// When the projector received it (RFC 3339).
    pub consumed_at: String,
    /// When its read-DB transaction committed (RFC 3339).
    pub applied_at: String,
}

/// How `projector` consumed and applied the event `event_id`; `None` when
/// it has not (or its trace has been pruned).
pub async fn event_applied(
    db: &Db,
    projector: &str,
    event_id: &str,
) -> Result<Option<Applied>, sqlx::Error> {
    applied_row(db, section(SQL, "event_trace"), projector, event_id).await
}

/// How `projector` consumed and applied the last event of `aggregate_id`
/// it applied; `None` when it has applied none.
pub async fn last_applied(
    db: &Db,
    projector: &str,
    aggregate_id: &str,
) -> Result<Option<Applied>, sqlx::Error> {
    applied_row(db, section(SQL, "last_applied"), projector, aggregate_id).await
}

/// The [`Applied`] columns of the one row `sql` finds for `projector` and
/// `value`.
async fn applied_row(
    db: &Db,
    sql: &'static str,
    projector: &str,
    value: &str,
) -> Result<Option<Applied>, sqlx::Error> {
    sqlx::query_as(sql)
        .bind(projector)
        .bind(value)
        .fetch_optional(&db.pool)
        .await
}

/// When a query first served `version` (or later) of `aggregate_id` to a
/// client that presented its token (RFC 3339).
pub async fn first_queried(
    db: &Db,
    aggregate_id: &str,
    version: i64,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(section(SQL, "first_queried"))
        .bind(aggregate_id)
        .bind(version)
        .fetch_one(&db.pool)
        .await
}

/// How many events `projector` has applied, counted as the sum of every
/// aggregate's applied version (each aggregate's events are applied in
/// version order, without gaps). Reads every row of the projector's
/// versions: for tools, not for a hot path.
pub async fn applied_events(db: &Db, projector: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(section(SQL, "applied_events"))
        .bind(projector)
        .fetch_one(&db.pool)
        .await
}
