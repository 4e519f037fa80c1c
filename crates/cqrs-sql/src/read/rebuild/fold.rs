//! The fold's work on threads of its own, at the lowest CPU priority.

use super::{BulkFold, BulkRows, RebuildError};
use crate::bulk::lower_priority;
use crate::read::ProjectionError;
use cqrs_core::EventEnvelope;
use std::collections::HashMap;

/// Folds one batch into every projection's fold, each on a thread of its own.
pub(super) fn fold_all(
    mut folds: Vec<Box<dyn BulkFold>>,
    batch: &[EventEnvelope],
) -> Result<Vec<Box<dyn BulkFold>>, RebuildError> {
    let refs: Vec<&EventEnvelope> = batch.iter().collect();
    let results: Vec<Result<(), ProjectionError>> = std::thread::scope(|s| {
        let running: Vec<_> = folds
            .iter_mut()
            .map(|f| {
                let refs = &refs;
                s.spawn(move || {
                    lower_priority();
                    f.fold(refs)
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
    for r in results {
        r?;
    }
    Ok(folds)
}

/// The cores this process may use.
pub(super) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Every fold's rows, the folds finished on threads of their own.
pub(super) fn finish_all(folds: Vec<Box<dyn BulkFold>>) -> Result<Vec<BulkRows>, RebuildError> {
    let finished: Vec<Result<Vec<BulkRows>, ProjectionError>> = std::thread::scope(|s| {
        let running: Vec<_> = folds
            .into_iter()
            .map(|f| {
                s.spawn(move || {
                    lower_priority();
                    f.finish()
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
    let mut all = Vec::new();
    for f in finished {
        all.extend(f?);
    }
    Ok(all)
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
