//! The demo's two tables, as the teaching page draws them: the process
//! table (a row per step) and the state tracker (a row per store, a column
//! per moment), fitted to the screen.

use chrono::{DateTime, Utc};
use comfy_table::{presets::UTF8_FULL_CONDENSED, ContentArrangement, Table};

/// How wide the tables are when not told: they fit a 120-column screen.
pub const WIDTH: u16 = 120;

/// One row of the step table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// Step number on the teaching page ("2b" for the stale read).
    pub step: String,
    /// When it completed.
    pub at: DateTime<Utc>,
    /// What happened.
    pub action: String,
    /// Who did it.
    pub component: String,
    /// The data after it.
    pub data_state: String,
    /// The event involved.
    pub event: String,
    /// What came out.
    pub output: String,
}

/// A table whose cells wrap to fit `width` columns (or a narrower
/// terminal); `width` 0 keeps whole cells.
fn fitted(width: u16) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    if width == 0 {
        table.set_content_arrangement(ContentArrangement::Disabled);
        return table;
    }
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout())
        .then(|| table.width())
        .flatten();
    table
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(terminal.map_or(width, |t| t.min(width)));
    table
}

/// The step table: one row per step, times in ms since `started_at`.
pub fn steps_table(started_at: DateTime<Utc>, steps: &[Step], width: u16) -> Table {
    let mut table = fitted(width);
    table.set_header(vec![
        "Step",
        "+ms",
        "Action",
        "Component",
        "Data State",
        "Event",
        "Output",
    ]);
    for s in steps {
        let ms = (s.at - started_at).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        table.add_row(vec![
            s.step.clone(),
            format!("{ms:.2}"),
            s.action.clone(),
            s.component.clone(),
            s.data_state.clone(),
            s.event.clone(),
            s.output.clone(),
        ]);
    }
    table
}

/// A tracker row: its name and how to read it from a snapshot.
pub type TrackerRow<'a, S> = (&'a str, fn(&S) -> String);

/// The state tracker: a row per variable, a column per moment.
pub fn tracker_table<S>(columns: &[(String, S)], rows: &[TrackerRow<'_, S>], width: u16) -> Table {
    let mut table = fitted(width);
    let mut header = vec!["Variable".to_owned()];
    header.extend(columns.iter().map(|(l, _)| l.clone()));
    table.set_header(header);
    for (name, get) in rows {
        let mut row = vec![(*name).to_owned()];
        row.extend(columns.iter().map(|(_, s)| get(s)));
        table.add_row(row);
    }
    table
}
