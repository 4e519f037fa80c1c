//! `orders trace ID`: a command's journey, fetched from the server and
//! printed as the teaching page's tables and a table of stages.

use crate::demo::{DemoRun, Snapshot, Step};
use anyhow::{bail, Context};
use chrono::Utc;
use orders_service::server::trace::CommandTrace;

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
    let path = format!("/commands/{}/trace", a.command_id);
    let res = a
        .server
        .request(reqwest::Method::GET, &path)?
        .send()
        .await
        .context("cannot reach the server (is `orders serve` running?)")?;
    if !res.status().is_success() {
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        bail!("{}", crate::client::refusal(status, &body));
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
    let by = t
        .caller
        .as_deref()
        .map(|c| format!(", sent by {c}"))
        .unwrap_or_default();
    let trace = t
        .trace_id
        .as_deref()
        .map(|id| format!("\nTrace id {id}"))
        .unwrap_or_default();
    println!(
        "Command {} on {} ({}{by}){trace}\n{table}",
        t.command_id,
        t.aggregate_id,
        t.event_types.join(", ")
    );
    if !t.reactions.is_empty() {
        println!("Reactions\n{}", reactions_table(&t.reactions));
    }
    Ok(())
}

/// The commands other components issued in reaction, as a table.
pub fn reactions_table(
    reactions: &[orders_service::server::trace::Reaction],
) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "#",
        "By",
        "On event",
        "Command on",
        "Appended",
        "+ms after the command",
    ]);
    for (i, r) in reactions.iter().enumerate() {
        table.add_row(vec![
            (i + 1).to_string(),
            r.by.clone(),
            r.trigger.clone(),
            r.aggregate_id.clone(),
            r.event_types.join(", "),
            format!("{:.2}", r.since_command_ms),
        ]);
    }
    table
}

/// The trace as the teaching page's step table and state tracker (the same
/// tables `orders demo` prints).
pub fn teaching_tables(t: &CommandTrace) -> DemoRun {
    DemoRun {
        started_at: t.stages.first().and_then(|s| s.at).unwrap_or_else(Utc::now),
        order_id: t.aggregate_id.clone(),
        steps: teaching_steps(t),
        tracker: teaching_tracker(t),
    }
}

/// The step table: the steps whose stage happened.
fn teaching_steps(t: &CommandTrace) -> Vec<Step> {
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
    rows.into_iter()
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
        .collect()
}

/// The state tracker: each part after steps 2, 3 and 5.
fn teaching_tracker(t: &CommandTrace) -> Vec<(String, Snapshot)> {
    let at = |i: usize| t.stages.get(i).and_then(|s| s.at);
    let event = t.event_types.join("+");
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
    vec![
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
    ]
}
