//! A build to the head: how a projector far behind catches up through the
//! bulk path. The tables of its own version are folded from history up to
//! the head (not to the live checkpoints, which are behind), and the
//! cutover also swaps in what the build applied: every aggregate's version
//! (staged with the bulk load, upserted in the cutover's transaction) and
//! the checkpoints, moved to where the build read. The live tables it
//! replaces were behind: they are dropped at once, not kept for a grace
//! period.

use super::{BulkRows, History, Positions, Rebuild, RebuildError};
use crate::batch::{Kind, Val};
use crate::db::{timestamp, Db};
use crate::dialect::{fill, section};
use crate::read::sql::SQL;
use crate::read::tables::{write_checkpoints, write_versions, VERSIONS_UPSERT};
use crate::read::versions::RETIRED;
use crate::read::SourceKey;
use cqrs_core::EventEnvelope;
use sqlx::{AnyConnection, Executor};
use std::collections::HashMap;
use std::sync::Arc;

/// What the version rows of a bulk catch-up say they were published as.
pub const PUBLISHED_AS: &str = "bulk catch-up";

/// The table the build's versions are staged in.
pub(super) fn staging(projector: &str) -> String {
    let name: String = projector
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() {
            true => c.to_ascii_lowercase(),
            false => '_',
        })
        .collect();
    format!("cqrs_catch_up__{name}")
}

/// Raises each target to where the build has read: the build may be ahead
/// of the live projector, never behind it.
pub(super) fn at_least(targets: &mut Positions, read: &Positions) {
    for (k, p) in read {
        let t = targets.entry(k.clone()).or_insert(0);
        *t = (*t).max(*p);
    }
}

/// The history's heads, or the live checkpoints where those are ahead.
pub(super) async fn targets(
    history: &mut impl History,
    live: Positions,
) -> Result<Positions, RebuildError> {
    let mut heads = history.heads().await?;
    at_least(&mut heads, &live);
    Ok(heads)
}

/// Refuses a build that passed over records that are not events: the live
/// path dead-letters them (and parks what follows).
pub(super) fn refuse_passed_over(history: &impl History) -> Result<(), RebuildError> {
    match history.passed_over() {
        0 => Ok(()),
        n => Err(RebuildError::Refused(format!(
            "{n} records of {} are not events: the live path dead-letters them",
            history.describe()
        ))),
    }
}

/// Writes every aggregate's version the build has applied into the
/// staging table (made anew), with the database's bulk load.
pub(super) async fn stage_versions(
    db: &Db,
    projector: &str,
    versions: &HashMap<String, i64>,
) -> Result<(), RebuildError> {
    let table = staging(projector);
    {
        let mut conn = db.writer.acquire().await?;
        conn.execute(format!("DROP TABLE IF EXISTS {table}").as_str())
            .await?;
        conn.execute(
            format!("CREATE TABLE {table} (aggregate_id TEXT NOT NULL, version BIGINT NOT NULL)")
                .as_str(),
        )
        .await?;
    }
    let rows = BulkRows {
        table,
        columns: vec![("aggregate_id", Kind::Text), ("version", Kind::Int)],
        rows: versions
            .iter()
            .map(|(id, v)| vec![Val::Text(id.clone()), Val::Int(*v)])
            .collect(),
    };
    db.dialect.bulk_load(db, Arc::new(rows)).await?;
    Ok(())
}

/// Inside the cutover: the staged versions, then those of the tail (the
/// events applied in the cutover itself), all under stamp `seq`, and the
/// checkpoints moved to `targets`.
pub(super) async fn swap_in_applied(
    tx: &mut AnyConnection,
    projector: &str,
    seq: i64,
    tail: &[EventEnvelope],
    targets: &Positions,
) -> Result<(), RebuildError> {
    let now = timestamp(chrono::Utc::now());
    let applied: i64 = sqlx::query_scalar(section(SQL, "has_versions"))
        .bind(projector)
        .fetch_one(&mut *tx)
        .await?;
    let statement = match applied {
        0 => "versions_from_build_fresh",
        _ => "versions_from_build",
    };
    let sql = fill(section(SQL, statement), &[("build", &staging(projector))]);
    sqlx::query(&sql)
        .bind(projector)
        .bind(PUBLISHED_AS)
        .bind(&now)
        .bind(seq)
        .execute(&mut *tx)
        .await?;
    let mut last: HashMap<&str, &EventEnvelope> = HashMap::new();
    for e in tail {
        last.insert(e.aggregate_id.as_str(), e);
    }
    let rows: Vec<Vec<Val>> = last
        .values()
        .map(|e| {
            vec![
                Val::Text(e.aggregate_id.clone()),
                Val::Int(e.version),
                Val::Int(e.position),
                Val::Text(PUBLISHED_AS.into()),
                Val::Text(now.clone()),
            ]
        })
        .collect();
    write_versions(tx, VERSIONS_UPSERT, (&now, projector, seq), &rows).await?;
    let checkpoints: HashMap<&SourceKey, i64> = targets.iter().map(|(k, p)| (k, *p)).collect();
    write_checkpoints(tx, projector, &checkpoints, &now).await?;
    Ok(())
}

/// After the cutover: the replaced tables (behind, of no use) and the
/// staging table dropped.
pub(super) async fn drop_leftovers(
    db: &Db,
    projector: &str,
    retired: &[String],
) -> Result<(), sqlx::Error> {
    let mut conn = db.writer.acquire().await?;
    let mut tables = retired.to_vec();
    tables.push(staging(projector));
    super::tables::drop_tables(&mut conn, &tables).await?;
    Ok(())
}

impl Rebuild {
    /// After a catch-up's cutover: the tables it replaced were behind and
    /// go at once (and their version is no longer retired), with the
    /// staged versions.
    pub(super) async fn drop_replaced(&self) {
        let retired: Vec<String> = self
            .pairs
            .iter()
            .flat_map(|(p, _)| p.tables())
            .map(|t| format!("{t}{RETIRED}"))
            .collect();
        let mut r = drop_leftovers(&self.db, &self.projector, &retired).await;
        for (p, _) in &self.pairs {
            if r.is_ok() {
                r = sqlx::query(section(SQL, "clear_retired"))
                    .bind(&self.projector)
                    .bind(p.name())
                    .execute(&self.db.writer)
                    .await
                    .map(|_| ());
            }
        }
        if let Err(e) = r {
            tracing::warn!(projector = self.projector, error = %e,
                "cannot drop the tables a catch-up replaced (the version keeper drops them later)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_staging_table_is_an_identifier_whatever_the_projector_is_called() {
        assert_eq!(staging("read_model"), "cqrs_catch_up__read_model");
        assert_eq!(staging("Orders-RM.1"), "cqrs_catch_up__orders_rm_1");
    }

    #[test]
    fn targets_are_raised_to_what_the_build_read_never_lowered() {
        let (a, b) = (SourceKey::partition("t", 0), SourceKey::partition("t", 1));
        let mut targets = Positions::from([(a.clone(), 10), (b.clone(), 5)]);
        at_least(
            &mut targets,
            &Positions::from([(a.clone(), 7), (b.clone(), 9)]),
        );
        assert_eq!(targets, Positions::from([(a, 10), (b, 9)]));
    }
}
