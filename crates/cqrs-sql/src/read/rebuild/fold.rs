//! The fold's work on threads of its own, at the lowest CPU priority.

use super::{BulkFold, BulkRows, RebuildError};
use crate::bulk::lower_priority;
use crate::read::ProjectionError;
use cqrs_core::EventEnvelope;
use std::collections::HashMap;

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

/// The cores this process may use.
pub(super) fn cores() -> usize {
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
