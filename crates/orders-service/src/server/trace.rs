//! The journey of one command through every stage: received, committed,
//! published, consumed, applied, first queried (`GET /commands/{id}/trace`),
//! assembled from what the write DB, the relay and the read DB recorded.

use super::{App, PROJECTOR};
use crate::saga::{OrderSaga, SAGA};
use chrono::{DateTime, Utc};
use cqrs_core::{EventEnvelope, Stage};
use cqrs_sql::db::parse_timestamp;
use serde::{Deserialize, Serialize};

/// One stage of a trace.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageTrace {
    /// received, committed, published, consumed, applied, queried.
    #[schema(value_type = String)]
    pub stage: Stage,
    /// Who did it.
    pub component: String,
    /// When (absent: not yet), RFC 3339.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub at: Option<DateTime<Utc>>,
    /// Milliseconds since the previous stage that happened.
    pub since_previous_ms: Option<f64>,
    /// Coordinates: position and version, partition and offset, ...
    pub detail: String,
}

/// A command's trace.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandTrace {
    /// The command.
    pub command_id: String,
    /// Its aggregate.
    pub aggregate_id: String,
    /// Who sent it (the token's `sub`; absent when the server checks no caller).
    pub caller: Option<String>,
    /// Its W3C trace id (what Jaeger, Tempo or the caller's backend find
    /// its spans under; absent for commands stored before trace contexts).
    pub trace_id: Option<String>,
    /// The events it appended.
    pub event_types: Vec<String>,
    /// The six stages, in order.
    pub stages: Vec<StageTrace>,
    /// Commands that other components issued in reaction to its events (the
    /// order saga's reservations, releases, confirmation or cancel), in
    /// the order they were issued.
    pub reactions: Vec<Reaction>,
}

/// A command issued in reaction to a traced command's event.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reaction {
    /// Who reacted ("order_saga").
    pub by: String,
    /// The event it reacted to.
    pub trigger: String,
    /// When it consumed that event, RFC 3339 (absent: once it commits).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub consumed_at: Option<DateTime<Utc>>,
    /// The reaction's command.
    pub command_id: String,
    /// The aggregate it commanded (`stock:<sku>`, or an order id).
    pub aggregate_id: String,
    /// The events it appended.
    pub event_types: Vec<String>,
    /// When they committed, RFC 3339.
    #[schema(value_type = String, format = DateTime)]
    pub committed_at: DateTime<Utc>,
    /// Milliseconds from the traced command's commit to this one's.
    pub since_command_ms: f64,
}

fn ts(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| parse_timestamp(&s).ok())
}

/// Assembles the trace of `command_id` from the write DB, the relay's
/// record of published batches and the read DB; `None` when no event has that command id.
pub async fn load(app: &App, command_id: &str) -> anyhow::Result<Option<CommandTrace>> {
    let events = app.store.events_of_command(command_id).await?;
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(None);
    };
    let (consumed, applied, consumed_from) = read_side(app, last).await?;
    let (published_at, published_detail) = published(app, last, &consumed_from).await?;
    let queried =
        cqrs_sql::read::traces::first_queried(&app.read, &last.aggregate_id, last.version).await?;
    let channel = if app.kafka.is_some() {
        "Kafka"
    } else {
        "Event log"
    };
    let raw = [
        (
            Stage::Received,
            "Command Handler (API)",
            Some(first.metadata.occurred_at),
            format!("{} v{}", last.aggregate_type, first.version - 1),
        ),
        (
            Stage::Committed,
            "Write DB",
            Some(last.recorded_at),
            format!("position {}, version {}", last.position, last.version),
        ),
        (Stage::Published, channel, published_at, published_detail),
        (
            Stage::Consumed,
            "Read Model (projector)",
            consumed,
            if consumed_from.is_empty() {
                "not yet".into()
            } else {
                format!("from {consumed_from}")
            },
        ),
        (
            Stage::Applied,
            "Read DB",
            applied,
            "order_details, customer_summary, order_stats".into(),
        ),
        (
            Stage::Queried,
            "Query Handler",
            ts(queried),
            "first query presenting a token that includes it".into(),
        ),
    ];
    Ok(Some(CommandTrace {
        command_id: command_id.to_owned(),
        caller: first.metadata.caller.clone(),
        trace_id: first
            .metadata
            .traceparent
            .as_deref()
            .and_then(cqrs_core::trace_context::trace_id)
            .map(str::to_owned),
        aggregate_id: last.aggregate_id.clone(),
        event_types: events.iter().map(|e| e.event_type.clone()).collect(),
        stages: timed(raw),
        reactions: reactions(app, &events).await?,
    }))
}

/// Most commands one reaction is looked for (a reservation and a release
/// per line, a confirmation or a cancel).
const MAX_REACTION_COMMANDS: usize = 2 * orders::aggregate::limits::MAX_ITEMS + 2;

/// The saga's commands caused by `events`, found by their idempotency keys
/// (`order_saga/<event id>/<n>`) in the orders' store and the inventory.
async fn reactions(app: &App, events: &[EventEnvelope]) -> anyhow::Result<Vec<Reaction>> {
    use cqrs_sql::process::ProcessManager;
    let mut found = Vec::new();
    let Some(committed) = events.last().map(|e| e.recorded_at) else {
        return Ok(found);
    };
    for trigger in events
        .iter()
        .filter(|e| OrderSaga::instance_of(e).is_some())
    {
        let keys: Vec<String> = (1..=MAX_REACTION_COMMANDS)
            .map(|n| format!("{SAGA}/{}/{n}", trigger.event_id))
            .collect();
        let consumed = cqrs_sql::read::traces::event_applied(&app.read, SAGA, &trigger.event_id)
            .await?
            .and_then(|a| parse_timestamp(&a.consumed_at).ok());
        // The orders' own, and the inventory's through its link (its
        // store here, or its service's API).
        let mut keyed = crate::inventory_link::keyed_in(&app.store, &keys).await?;
        keyed.extend(app.inventory_link.keyed(&keys).await?);
        keyed.sort_by_key(|k| {
            k.key
                .rsplit('/')
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0)
        });
        for k in keyed {
            found.push(Reaction {
                by: SAGA.to_owned(),
                trigger: trigger.event_type.clone(),
                consumed_at: consumed,
                aggregate_id: k.aggregate_id,
                event_types: k.event_types,
                committed_at: k.committed_at,
                since_command_ms: (k.committed_at - committed).num_microseconds().unwrap_or(0)
                    as f64
                    / 1000.0,
                command_id: k.command_id,
            });
        }
    }
    Ok(found)
}

/// When the projector consumed and applied `last`, and from where.
async fn read_side(
    app: &App,
    last: &EventEnvelope,
) -> anyhow::Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>, String)> {
    let read = cqrs_sql::read::traces::event_applied(&app.read, PROJECTOR, &last.event_id).await?;
    Ok(match read {
        Some(a) => (
            ts(Some(a.consumed_at)),
            ts(Some(a.applied_at)),
            a.published_as,
        ),
        None => (None, None, String::new()),
    })
}

/// When and where `last` was published.
async fn published(
    app: &App,
    last: &EventEnvelope,
    consumed_from: &str,
) -> anyhow::Result<(Option<DateTime<Utc>>, String)> {
    Ok(match &app.kafka {
        Some(k) => {
            // The relay records when each batch's reports came back; where
            // the record landed is what the projector consumed.
            let at = app.store.published_at(last.position).await?;
            let detail = match (&at, consumed_from.is_empty()) {
                (None, _) => "not yet published".to_owned(),
                (Some(_), false) => consumed_from.to_owned(),
                (Some(_), true) => format!("{} (partition by key {})", k.topic, last.aggregate_id),
            };
            (at, detail)
        }
        // Embedded: the write DB's log is the channel; committing publishes.
        None => (Some(last.recorded_at), format!("log@{}", last.position)),
    })
}

/// The stages with the time each took since the previous one that happened.
fn timed(raw: [(Stage, &str, Option<DateTime<Utc>>, String); 6]) -> Vec<StageTrace> {
    let mut previous: Option<DateTime<Utc>> = None;
    raw.into_iter()
        .map(|(stage, component, at, detail)| {
            let since = match (previous, at) {
                (Some(p), Some(a)) => Some((a - p).num_microseconds().unwrap_or(0) as f64 / 1000.0),
                _ => None,
            };
            if at.is_some() {
                previous = at;
            }
            StageTrace {
                stage,
                component: component.to_owned(),
                at,
                since_previous_ms: since,
                detail,
            }
        })
        .collect()
}
