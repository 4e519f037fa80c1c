//! The journey of one command through every stage: received, committed,
//! published, consumed, applied, first queried. `GET /commands/{id}/trace`
//! and `orders trace ID`.

use crate::app::{App, PROJECTOR};
use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use cqrs_core::{EventEnvelope, Stage};
use cqrs_sql::db::parse_timestamp;
use serde::{Deserialize, Serialize};
use sqlx::Row;

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
    /// The events it appended.
    pub event_types: Vec<String>,
    /// The six stages, in order.
    pub stages: Vec<StageTrace>,
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
    let queried: Option<String> = sqlx::query_scalar(
        "SELECT MIN(queried_at) FROM query_traces WHERE aggregate_id = $1 AND version >= $2",
    )
    .bind(&last.aggregate_id)
    .bind(last.version)
    .fetch_one(&app.read.pool)
    .await?;
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
        aggregate_id: last.aggregate_id.clone(),
        event_types: events.iter().map(|e| e.event_type.clone()).collect(),
        stages: timed(raw),
    }))
}

/// When the projector consumed and applied `last`, and from where.
async fn read_side(
    app: &App,
    last: &EventEnvelope,
) -> anyhow::Result<(Option<DateTime<Utc>>, Option<DateTime<Utc>>, String)> {
    let read = sqlx::query("SELECT published_as, consumed_at, applied_at FROM event_traces WHERE projector = $1 AND event_id = $2")
        .bind(PROJECTOR)
        .bind(&last.event_id)
        .fetch_optional(&app.read.pool)
        .await?;
    Ok(match read {
        Some(r) => (
            ts(r.try_get(1)?),
            ts(r.try_get(2)?),
            r.try_get::<String, _>(0)?,
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

/// `orders trace`.
#[derive(clap::Args)]
pub struct TraceArgs {
    /// The command id (from a command's answer).
    command_id: String,
    #[command(flatten)]
    server: crate::client::Server,
}

/// Prints a command's trace as a table.
pub async fn print(a: TraceArgs) -> anyhow::Result<()> {
    let url = format!(
        "{}/commands/{}/trace",
        a.server.server.trim_end_matches('/'),
        a.command_id
    );
    let res = reqwest::get(&url)
        .await
        .context("cannot reach the server (is `orders serve` running?)")?;
    if !res.status().is_success() {
        let status = res.status();
        bail!("{status}: {}", res.text().await.unwrap_or_default());
    }
    let t: CommandTrace = res.json().await?;
    println!("{}", teaching_tables(&t));
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "Step",
        "Stage",
        "Component",
        "At (UTC)",
        "+ms",
        "Detail",
    ]);
    for (i, s) in t.stages.iter().enumerate() {
        table.add_row(vec![
            (i + 1).to_string(),
            format!("{:?}", s.stage).to_lowercase(),
            s.component.clone(),
            s.at.map(|a| a.format("%H:%M:%S%.6f").to_string())
                .unwrap_or_else(|| "—".into()),
            s.since_previous_ms
                .map(|m| format!("{m:.2}"))
                .unwrap_or_default(),
            s.detail.clone(),
        ]);
    }
    println!(
        "Command {} on {} ({})\n{table}",
        t.command_id,
        t.aggregate_id,
        t.event_types.join(", ")
    );
    Ok(())
}

/// The trace as the teaching page's step table and state tracker (the same
/// tables `orders demo` prints).
pub fn teaching_tables(t: &CommandTrace) -> crate::demo::DemoRun {
    use crate::demo::{DemoRun, Snapshot, Step};
    let at = |i: usize| t.stages.get(i).and_then(|s| s.at);
    let detail = |i: usize| {
        t.stages
            .get(i)
            .map(|s| s.detail.clone())
            .unwrap_or_default()
    };
    let event = t.event_types.join("+");
    let rows = [
        (
            "1",
            0,
            "Send command",
            "Client",
            "No new event".to_owned(),
            "None".to_owned(),
            "Command sent",
        ),
        (
            "2",
            1,
            "Process command",
            "Command Handler",
            format!("Saved in Write DB ({})", detail(1)),
            format!("{event} published ({})", detail(2)),
            "2xx with token",
        ),
        (
            "3",
            4,
            "Consume event",
            "Read Model",
            "Read DB updated".to_owned(),
            format!("{event} consumed {}", detail(3)),
            "Read DB updated",
        ),
        (
            "4-5",
            5,
            "Query with token",
            "Query Handler",
            "Read DB accessed".to_owned(),
            "None".to_owned(),
            "Status returned",
        ),
    ];
    let steps = rows
        .into_iter()
        .filter_map(|(n, i, action, component, data_state, ev, out)| {
            at(i).map(|a| Step {
                step: n.into(),
                at: a,
                action: action.into(),
                component: component.into(),
                data_state,
                event: ev,
                output: out.into(),
            })
        })
        .collect();
    let snap = |write: bool, log: &str, read: bool, client: &str| Snapshot {
        write_db: if write {
            format!("{event} stored")
        } else {
            "Empty".into()
        },
        event_log: log.into(),
        read_db: if read {
            "Updated".into()
        } else {
            "Not updated".into()
        },
        client_output: client.into(),
    };
    let applied = at(4).is_some();
    let log_after2 = if at(2).is_some() {
        format!("{event} published")
    } else {
        "Not yet published".into()
    };
    let log_after3 = if applied {
        format!("{event} consumed")
    } else {
        log_after2.clone()
    };
    let client5 = if at(5).is_some() {
        "Status response"
    } else {
        "No query yet"
    };
    DemoRun {
        started_at: at(0).unwrap_or_else(Utc::now),
        order_id: t.aggregate_id.clone(),
        steps,
        tracker: vec![
            ("Start".to_owned(), snap(false, "Empty", false, "None")),
            (
                "After Step 2".to_owned(),
                snap(true, &log_after2, false, "2xx with token"),
            ),
            (
                "After Step 3".to_owned(),
                snap(true, &log_after3, applied, "2xx with token"),
            ),
            (
                "After Step 5".to_owned(),
                snap(true, &log_after3, applied, client5),
            ),
        ],
    }
}
