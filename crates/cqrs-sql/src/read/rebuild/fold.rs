//! The fold's work on threads of its own, at the lowest CPU priority.

use super::{BulkFold, BulkRows, RebuildError};
use crate::bulk::lower_priority;
use crate::db::Db;
use crate::read::ProjectionError;
use cqrs_core::EventEnvelope;
use futures::StreamExt as _;
use std::collections::HashMap;
use std::sync::Arc;

/// `work` on each item, each on a thread of its own at the lowest
/// priority; the results in the items' order (a panic is an error).
fn on_threads<I: Send, R: Send>(
    items: impl IntoIterator<Item = I>,
    work: impl Fn(I) -> Result<R, ProjectionError> + Sync,
) -> Result<Vec<R>, RebuildError> {
    let work = &work;
    let results: Vec<Result<R, ProjectionError>> = std::thread::scope(|s| {
        let running: Vec<_> = items
            .into_iter()
            .map(|item| {
                s.spawn(move || {
                    lower_priority();
                    work(item)
                })
            })
            .collect();
        running
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ProjectionError::Inconsistent("a fold panicked".into()))
                })
            })
            .collect()
    });
    results
        .into_iter()
        .map(|r| r.map_err(RebuildError::from))
        .collect()
}

/// Folds one batch into every projection's fold, each on a thread of its own.
pub(super) fn fold_all(
    mut folds: Vec<Box<dyn BulkFold>>,
    batch: &[EventEnvelope],
) -> Result<Vec<Box<dyn BulkFold>>, RebuildError> {
    let refs: Vec<&EventEnvelope> = batch.iter().collect();
    on_threads(folds.iter_mut(), |f| f.fold(&refs))?;
    Ok(folds)
}

/// Writes every table's rows with the database's bulk load. On a server,
/// tables load side by side, one per core (the rows are encoded at the
/// lowest priority, so serving still comes first); a file has one writer.
/// (Loading the largest table in parts on two connections at once did not
/// write faster here: 4.8 s against 3.9-4.5 s.)
pub(super) async fn write_all(db: &Db, all: Vec<BulkRows>) -> Result<(), RebuildError> {
    let side_by_side = match db.dialect.is_embedded() {
        true => 1,
        false => cores(),
    };
    let mut loads = futures::stream::iter(all.into_iter().map(|rows| {
        let db = db.clone();
        async move { db.dialect.bulk_load(&db, Arc::new(rows)).await }
    }))
    .buffer_unordered(side_by_side);
    while let Some(r) = loads.next().await {
        r?;
    }
    Ok(())
}

/// The cores this process may use.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Every fold's rows, the folds finished on threads of their own.
pub(super) fn finish_all(folds: Vec<Box<dyn BulkFold>>) -> Result<Vec<BulkRows>, RebuildError> {
    Ok(on_threads(folds, |f| f.finish())?
        .into_iter()
        .flatten()
        .collect())
}

/// Keeps the events that are the next version of their aggregate (drops
/// the duplicates a topic may hold); a hole is an error.
pub(super) fn next_versions(
    events: Vec<EventEnvelope>,
    versions: &mut HashMap<String, i64>,
) -> Result<Vec<EventEnvelope>, RebuildError> {
    let mut new = Vec::with_capacity(events.len());
    for e in events {
        let cur = versions.get(&e.aggregate_id).copied().unwrap_or(0);
        if e.version <= cur {
            continue;
        }
        if e.version != cur + 1 {
            return Err(RebuildError::Gap {
                aggregate: e.aggregate_id,
                from: cur,
                to: e.version,
            });
        }
        versions.insert(e.aggregate_id.clone(), e.version);
        new.push(e);
    }
    Ok(new)
}
