//! What the projector does with each record of a batch, decided without I/O:
//! apply it, drop it as a duplicate, dead-letter it, or park it behind an
//! earlier dead letter of its aggregate. The runner then carries the plan
//! out in the batch's transaction.

use super::{SourceKey, SourcedEvent};
use std::collections::{HashMap, HashSet};

/// What becomes of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Projected into the read model.
    Apply,
    /// Its version is already in the read model: dropped.
    Duplicate,
    /// Cannot be projected (undecodable, failed for good, or a version gap):
    /// dead-lettered, and its aggregate parked behind it.
    Dead(String),
    /// Its aggregate has an open dead letter: set aside with the reason.
    Parked(String),
}

/// What the classifier knows besides the batch.
#[derive(Debug, Clone, Copy)]
pub struct Known<'a> {
    /// Versions the read model holds for the batch's aggregates.
    pub stored: &'a HashMap<&'a str, i64>,
    /// Records that failed for good before: (source key, next position)
    /// -> the reason.
    pub poison: &'a HashMap<(SourceKey, i64), String>,
    /// Aggregates with an open dead letter.
    pub parked: &'a HashSet<String>,
}

/// A classified batch.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    /// One fate per record, in batch order.
    pub fates: Vec<Fate>,
    /// Per source key, the next position once the batch commits.
    pub checkpoints: HashMap<&'a SourceKey, i64>,
    /// Per applied aggregate, the version it reaches.
    pub versions: HashMap<&'a str, i64>,
    /// Aggregates this batch dead-lettered or parked.
    pub newly_parked: Vec<String>,
}

/// Decides the fate of every record of `batch`, in order: a record sees the
/// versions and the parking that the records before it caused.
pub fn classify<'a>(batch: &'a [SourcedEvent], known: Known<'_>) -> Plan<'a> {
    let mut plan = Plan::default();
    for item in batch {
        let cp = plan
            .checkpoints
            .entry(&item.source_key)
            .or_insert(item.next_position);
        *cp = (*cp).max(item.next_position);
        let fate = fate_of(item, known, &mut plan);
        if matches!(fate, Fate::Dead(_) | Fate::Parked(_)) {
            if let Some(id) = item.aggregate_id() {
                plan.newly_parked.push(id.to_owned());
            }
        }
        plan.fates.push(fate);
    }
    plan
}

/// The fate of one record, given what the batch decided before it.
fn fate_of<'a>(item: &'a SourcedEvent, known: Known<'_>, plan: &mut Plan<'a>) -> Fate {
    let poisoned = known
        .poison
        .get(&(item.source_key.clone(), item.next_position));
    let event = match (&item.event, poisoned) {
        (Err(reason), _) | (Ok(_), Some(reason)) => return Fate::Dead(reason.clone()),
        (Ok(event), None) => event,
    };
    let id = event.aggregate_id.as_str();
    if known.parked.contains(id) || plan.newly_parked.iter().any(|p| p == id) {
        return Fate::Parked(format!("parked: aggregate {id} has an earlier dead letter"));
    }
    let current = plan
        .versions
        .get(id)
        .or_else(|| known.stored.get(&id))
        .copied()
        .unwrap_or(0);
    if event.version <= current {
        return Fate::Duplicate;
    }
    if event.version != current + 1 {
        return Fate::Dead(format!(
            "version gap: read model has {id} at version {current}, record is version {}",
            event.version
        ));
    }
    plan.versions.insert(id, event.version);
    Fate::Apply
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_core::{EventEnvelope, EventMetadata};

    fn record(id: &str, version: i64, offset: i64) -> SourcedEvent {
        SourcedEvent {
            source_key: SourceKey::partition("t", 0),
            next_position: offset + 1,
            published_as: format!("t/0@{offset}"),
            consumed_at: chrono::Utc::now(),
            key: Some(id.into()),
            event: Ok(EventEnvelope {
                position: offset,
                event_id: format!("{id}-{version}"),
                aggregate_type: "order".into(),
                aggregate_id: id.into(),
                version,
                event_type: "E".into(),
                schema_version: 1,
                payload: serde_json::json!({}),
                metadata: EventMetadata {
                    command_id: "c".into(),
                    occurred_at: chrono::Utc::now(),
                    caller: None,
                    traceparent: None,
                },
                recorded_at: chrono::Utc::now(),
            }),
            raw: None,
        }
    }

    fn undecodable(id: &str, offset: i64) -> SourcedEvent {
        SourcedEvent {
            event: Err("bad JSON".into()),
            ..record(id, 1, offset)
        }
    }

    /// Given the stored versions, poison and parked aggregates, when the
    /// batch is classified, then these fates.
    fn fates(
        stored: &[(&str, i64)],
        poison: &[i64],
        parked: &[&str],
        batch: &[SourcedEvent],
    ) -> Vec<Fate> {
        let stored = stored.iter().copied().collect();
        let poison = poison
            .iter()
            .map(|next| {
                (
                    (SourceKey::partition("t", 0), *next),
                    "failed 3 times".to_owned(),
                )
            })
            .collect();
        let parked = parked.iter().map(|a| a.to_string()).collect();
        let known = Known {
            stored: &stored,
            poison: &poison,
            parked: &parked,
        };
        classify(batch, known).fates
    }

    #[test]
    fn the_next_versions_apply_in_order_within_the_batch() {
        let batch = [record("a", 3, 0), record("a", 4, 1), record("b", 1, 2)];
        assert_eq!(
            fates(&[("a", 2)], &[], &[], &batch),
            [Fate::Apply, Fate::Apply, Fate::Apply]
        );
        let plan = classify(
            &batch,
            Known {
                stored: &HashMap::from([("a", 2)]),
                poison: &HashMap::new(),
                parked: &HashSet::new(),
            },
        );
        assert_eq!(plan.versions, HashMap::from([("a", 4), ("b", 1)]));
        assert_eq!(
            plan.checkpoints,
            HashMap::from([(&SourceKey::partition("t", 0), 3)])
        );
        assert!(plan.newly_parked.is_empty());
    }

    #[test]
    fn a_version_already_applied_is_a_duplicate_even_when_repeated_in_the_batch() {
        let batch = [record("a", 2, 0), record("a", 3, 1), record("a", 3, 2)];
        assert_eq!(
            fates(&[("a", 2)], &[], &[], &batch),
            [Fate::Duplicate, Fate::Apply, Fate::Duplicate]
        );
    }

    #[test]
    fn a_gap_is_dead_lettered_and_parks_the_rest_of_its_aggregate_only() {
        let batch = [record("a", 3, 0), record("a", 4, 1), record("b", 1, 2)];
        let got = fates(&[("a", 1)], &[], &[], &batch);
        assert!(
            matches!(&got[0], Fate::Dead(r) if r.contains("version gap") && r.contains("version 1")),
            "{got:?}"
        );
        assert!(matches!(&got[1], Fate::Parked(_)), "{got:?}");
        assert_eq!(got[2], Fate::Apply);
    }

    #[test]
    fn undecodable_and_poisoned_records_are_dead_lettered_with_their_reason() {
        let batch = [undecodable("a", 0), record("a", 1, 1), record("b", 1, 2)];
        let got = fates(&[], &[3], &[], &batch);
        assert_eq!(got[0], Fate::Dead("bad JSON".into()));
        assert!(
            matches!(&got[1], Fate::Parked(_)),
            "behind its aggregate's dead letter: {got:?}"
        );
        assert_eq!(got[2], Fate::Dead("failed 3 times".into()));
    }

    #[test]
    fn an_aggregate_with_an_open_dead_letter_stays_parked() {
        let batch = [record("a", 1, 0), record("b", 1, 1)];
        let got = fates(&[], &[], &["a"], &batch);
        assert!(matches!(&got[0], Fate::Parked(r) if r.contains("aggregate a")));
        assert_eq!(got[1], Fate::Apply);
    }
}
