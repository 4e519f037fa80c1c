//! Carrying out one batch: lock the versions, classify every record, write
//! what is applied, dead-lettered or parked, the versions, traces and
//! checkpoints, in one read-DB transaction.

use super::{BatchError, BatchReport, ProjectorRunner};
use crate::batch::{self, Kind, Val};
use crate::db::timestamp;
use crate::dialect::{fill, section};
use crate::read::classify::{classify, Fate, Known, Plan};
use crate::read::dead_letters::{self, DeadLetterStatus};
use crate::read::sql::SQL;
use crate::read::tables::{
    lock_versions, next_seq, notify_progress, versions, write_checkpoints, write_versions,
    VERSIONS_INSERT, VERSIONS_UPDATE, VERSIONS_UPSERT,
};
use crate::read::{EventSource, ProjectionError, SourceKey, SourcedEvent};
use cqrs_core::EventEnvelope;
use sqlx::AnyConnection;
use std::collections::{HashMap, HashSet};

impl ProjectorRunner {
    /// Applies one batch in one transaction with its checkpoints. With
    /// `per_event`, projections get one event at a time so that a failure
    /// names its record.
    pub async fn apply_batch<S: EventSource>(
        &self,
        batch: &[SourcedEvent],
        source: &mut S,
        per_event: bool,
    ) -> Result<(BatchReport, Vec<(SourceKey, i64)>), BatchError> {
        let mut report = BatchReport::default();
        let ids = aggregate_ids(batch);
        if !per_event && self.projections.iter().any(|p| p.acts_ahead()) {
            self.act_ahead(batch, &ids).await?;
        }
        let mut tx = self.db.begin_derived().await?;
        let t = std::time::Instant::now();
        let stored = lock_versions(&mut tx, self.db.dialect, &self.config.name, &ids).await?;
        tracing::trace!(
            ids = ids.len(),
            elapsed_us = t.elapsed().as_micros() as u64,
            "versions locked"
        );
        let parked = self.open_dead_letters(&mut tx, &ids).await?;
        let plan = self.plan(batch, &stored, &parked);
        let now = timestamp(chrono::Utc::now());
        let to_apply = self
            .carry_out(
                &mut tx,
                source,
                batch,
                &plan.fates,
                per_event,
                &now,
                &mut report,
            )
            .await?;
        if !per_event && !to_apply.is_empty() {
            let events: Vec<&EventEnvelope> = to_apply.iter().map(|(_, e)| *e).collect();
            self.apply_projections(&mut tx, &events).await?;
        }
        report.applied = to_apply.len();
        let t = std::time::Instant::now();
        self.record_versions(&mut tx, &to_apply, &stored, &now)
            .await?;
        tracing::trace!(
            elapsed_us = t.elapsed().as_micros() as u64,
            "versions recorded"
        );
        let t = std::time::Instant::now();
        write_checkpoints(&mut tx, &self.config.name, &plan.checkpoints, &now).await?;
        if !to_apply.is_empty() {
            notify_progress(&mut tx, self.db.dialect).await?;
        }
        tx.commit().await?;
        tracing::trace!(
            elapsed_us = t.elapsed().as_micros() as u64,
            "checkpoints and commit"
        );
        self.committed(&plan, batch.len(), &report);
        let checkpoints = plan
            .checkpoints
            .into_iter()
            .map(|(k, v)| (k.clone(), v))
            .collect();
        Ok((report, checkpoints))
    }

    /// What becomes of each record, given the versions and open dead
    /// letters read.
    fn plan<'b>(
        &self,
        batch: &'b [SourcedEvent],
        stored: &HashMap<&str, i64>,
        parked: &HashSet<String>,
    ) -> Plan<'b> {
        let empty = HashMap::new();
        let poison = self.poison.lock();
        let known = Known {
            stored,
            poison: poison.as_deref().unwrap_or(&empty),
            parked,
        };
        classify(batch, known)
    }

    /// Lets the projections that act ahead ([`Projection::ahead`]) do so for
    /// the records the batch will apply, as one snapshot of the read DB
    /// sees them: no read-DB lock is held meanwhile. The transaction that
    /// follows classifies again under its locks; a projection redoes what
    /// changed in between.
    async fn act_ahead(&self, batch: &[SourcedEvent], ids: &[&str]) -> Result<(), BatchError> {
        let t = std::time::Instant::now();
        let mut snapshot = self.db.begin_snapshot().await?;
        let stored = versions(
            &mut snapshot,
            self.db.dialect,
            &self.config.name,
            ids,
            false,
        )
        .await?;
        let parked = self.open_dead_letters(&mut snapshot, ids).await?;
        let plan = self.plan(batch, &stored, &parked);
        let events: Vec<&EventEnvelope> = batch
            .iter()
            .zip(&plan.fates)
            .filter_map(|(item, fate)| match (fate, &item.event) {
                (Fate::Apply, Ok(e)) => Some(e),
                _ => None,
            })
            .collect();
        for p in self.projections.iter().filter(|p| p.acts_ahead()) {
            p.ahead(&mut snapshot, &events)
                .await
                .map_err(|error| BatchError { index: None, error })?;
        }
        snapshot.rollback().await?;
        tracing::trace!(
            events = events.len(),
            elapsed_us = t.elapsed().as_micros() as u64,
            "acted ahead"
        );
        Ok(())
    }

    /// After a batch commits: its parked aggregates remembered, waiters on
    /// its versions woken, its counts in the metrics and, when it had
    /// duplicates or dead letters, in the log.
    fn committed(&self, plan: &Plan<'_>, batch_len: usize, report: &BatchReport) {
        if let Ok(mut p) = self.parked.lock() {
            p.extend(plan.newly_parked.iter().cloned());
        }
        self.progress
            .applied(plan.versions.iter().map(|(k, v)| (*k, *v)));
        metrics::histogram!("cqrs_projector_batch_size").record(batch_len as f64);
        metrics::counter!("cqrs_projector_events_applied_total").increment(report.applied as u64);
        metrics::counter!("cqrs_projector_duplicates_total").increment(report.duplicates as u64);
        metrics::counter!("cqrs_dead_letters_total").increment(report.dead_lettered as u64);
        if report.duplicates > 0 || report.dead_lettered > 0 {
            tracing::info!(projector = %self.config.name, applied = report.applied, duplicates = report.duplicates,
                dead_lettered = report.dead_lettered, "batch had records already applied or dead-lettered");
        }
    }

    /// Of the batch's aggregates that this process saw parked, those whose
    /// dead letter is still open (a retry or discard, maybe in another
    /// process, releases them).
    async fn open_dead_letters(
        &self,
        tx: &mut AnyConnection,
        ids: &[&str],
    ) -> Result<HashSet<String>, sqlx::Error> {
        let mut open = HashSet::new();
        for id in ids.iter().filter(|id| self.is_parked(id)) {
            if dead_letters::has_open(tx, &self.config.name, id).await? {
                open.insert((*id).to_owned());
            } else if let Ok(mut p) = self.parked.lock() {
                p.remove(*id);
            }
        }
        Ok(open)
    }

    /// Carries out the fates of the batch's records, in order: dead letters
    /// and parked records written, duplicates counted, and (with
    /// `per_event`) each event projected on its own so that a failure names
    /// its record. Returns the records to apply.
    #[allow(clippy::too_many_arguments)]
    async fn carry_out<'b, S: EventSource>(
        &self,
        tx: &mut AnyConnection,
        source: &mut S,
        batch: &'b [SourcedEvent],
        fates: &[Fate],
        per_event: bool,
        now: &str,
        report: &mut BatchReport,
    ) -> Result<Vec<(&'b SourcedEvent, &'b EventEnvelope)>, BatchError> {
        let mut to_apply = Vec::with_capacity(batch.len());
        for (index, (item, fate)) in batch.iter().zip(fates).enumerate() {
            match (fate, &item.event) {
                (Fate::Dead(reason), _) => {
                    self.dead_letter(tx, source, item, reason, now).await?;
                    report.dead_lettered += 1;
                }
                (Fate::Parked(reason), _) => {
                    let status = DeadLetterStatus::Parked;
                    dead_letters::record(tx, &self.config.name, item, reason, status, now).await?;
                    report.dead_lettered += 1;
                }
                (Fate::Duplicate, _) => report.duplicates += 1,
                (Fate::Apply, Ok(event)) => {
                    if per_event {
                        for p in &self.projections {
                            p.apply(tx, &[event]).await.map_err(|error| BatchError {
                                index: Some(index),
                                error,
                            })?;
                        }
                    }
                    to_apply.push((item, event));
                }
                (Fate::Apply, Err(_)) => {
                    return Err(BatchError {
                        index: Some(index),
                        error: ProjectionError::Inconsistent(
                            "an undecodable record was classified to apply".into(),
                        ),
                    })
                }
            }
        }
        Ok(to_apply)
    }

    /// The batch path: every projection gets all the batch's events at once.
    async fn apply_projections(
        &self,
        tx: &mut AnyConnection,
        events: &[&EventEnvelope],
    ) -> Result<(), BatchError> {
        for p in &self.projections {
            let t = std::time::Instant::now();
            p.apply(tx, events)
                .await
                .map_err(|error| BatchError { index: None, error })?;
            tracing::trace!(
                projection = p.name(),
                elapsed_us = t.elapsed().as_micros() as u64,
                "projection applied"
            );
        }
        Ok(())
    }

    async fn dead_letter<S: EventSource>(
        &self,
        tx: &mut AnyConnection,
        source: &mut S,
        item: &SourcedEvent,
        reason: &str,
        now: &str,
    ) -> Result<(), BatchError> {
        source
            .dead_letter(item, reason)
            .await
            .map_err(|e| BatchError {
                index: None,
                error: ProjectionError::DeadLetterChannel(e),
            })?;
        dead_letters::record(
            tx,
            &self.config.name,
            item,
            reason,
            DeadLetterStatus::Dead,
            now,
        )
        .await?;
        Ok(())
    }

    /// Stores when each applied event was consumed and applied (its trace).
    async fn record_traces(
        &self,
        tx: &mut AnyConnection,
        applied: &[(&SourcedEvent, &EventEnvelope)],
        now: &str,
    ) -> Result<(), sqlx::Error> {
        if applied.is_empty() {
            return Ok(());
        }
        let traces: Vec<Vec<Val>> = applied
            .iter()
            .map(|(item, e)| {
                vec![
                    Val::Text(e.event_id.clone()),
                    Val::Text(e.metadata.command_id.clone()),
                    Val::Text(item.published_as.clone()),
                    Val::Text(timestamp(item.consumed_at)),
                ]
            })
            .collect();
        let source = batch::rows(
            batch::dialect_of(tx),
            3,
            &[
                ("event_id", Kind::Text),
                ("command_id", Kind::Text),
                ("published_as", Kind::Text),
                ("consumed_at", Kind::Text),
            ],
        );
        let sql = fill(section(SQL, "write_event_traces"), &[("rows", &source)]);
        sqlx::query(&sql)
            .bind(now)
            .bind(&self.config.name)
            .bind(batch::rows_json(&traces)?)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Stores the last applied version of every aggregate in the batch,
    /// stamped with the next commit-ordered number (taken last, to hold the
    /// counter row for as short as possible): UPDATE the rows that existed
    /// (locked), INSERT the new ones (a concurrent writer of the same new
    /// aggregate fails on the key).
    async fn record_versions(
        &self,
        tx: &mut AnyConnection,
        applied: &[(&SourcedEvent, &EventEnvelope)],
        stored: &HashMap<&str, i64>,
        now: &str,
    ) -> Result<(), sqlx::Error> {
        self.record_traces(tx, applied, now).await?;
        let (mut old, mut new) = version_rows(applied, stored);
        if old.is_empty() && new.is_empty() {
            return Ok(());
        }
        let seq = next_seq(tx, &self.config.name).await?;
        let stamp = (now, self.config.name.as_str(), seq);
        if batch::dialect_of(tx).upserts_versions() {
            old.append(&mut new);
            return write_versions(tx, VERSIONS_UPSERT, stamp, &old).await;
        }
        write_versions(tx, VERSIONS_UPDATE, stamp, &old).await?;
        write_versions(tx, VERSIONS_INSERT, stamp, &new).await
    }
}

/// The version rows of the batch's last event per aggregate: those stored
/// before, and the new ones.
fn version_rows(
    applied: &[(&SourcedEvent, &EventEnvelope)],
    stored: &HashMap<&str, i64>,
) -> (Vec<Vec<Val>>, Vec<Vec<Val>>) {
    let mut last: HashMap<&str, (&SourcedEvent, &EventEnvelope)> = HashMap::new();
    for (item, e) in applied {
        last.insert(e.aggregate_id.as_str(), (item, e));
    }
    let (mut old, mut new) = (Vec::new(), Vec::new());
    for (id, (item, e)) in last {
        let row = vec![
            Val::Text(e.aggregate_id.clone()),
            Val::Int(e.version),
            Val::Int(e.position),
            Val::Text(item.published_as.clone()),
            Val::Text(timestamp(item.consumed_at)),
        ];
        if stored.contains_key(id) {
            old.push(row);
        } else {
            new.push(row);
        }
    }
    (old, new)
}

/// The batch's aggregates, each once, sorted (the order rows are locked in).
fn aggregate_ids(batch: &[SourcedEvent]) -> Vec<&str> {
    let mut ids: Vec<&str> = batch
        .iter()
        .filter_map(|i| i.event.as_ref().ok())
        .map(|e| e.aggregate_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}
