//! Every metric a process records, with its help text: described when the
//! recorder is installed (a `# HELP` line for each on `/metrics`), and the
//! counters and gauges each role owns registered at 0 when the role starts
//! (a relay that has published nothing shows `cqrs_relay_published_total 0`,
//! not nothing).

use crate::config::Role;

/// What kind of metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution.
    Histogram,
}

/// One metric: name, kind, help, and the role that owns it (None: any
/// process).
pub struct Metric {
    /// Its name on `/metrics`.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// Its `# HELP` text.
    pub help: &'static str,
    /// The role that records it (registered at 0 when that role starts), or
    /// None: the process itself.
    pub owner: Option<Role>,
    /// Whether it has labels (a labelled one is registered at 0 only for
    /// the label values known at start).
    pub labelled: bool,
}

use Kind::{Counter, Gauge, Histogram};

const fn m(
    name: &'static str,
    kind: Kind,
    help: &'static str,
    owner: Option<Role>,
    labelled: bool,
) -> Metric {
    Metric {
        name,
        kind,
        help,
        owner,
        labelled,
    }
}

/// The catalogue.
pub const METRICS: &[Metric] = &[
    m("orders_commands_total", Counter, "Commands handled, by command and outcome (ok, or the error code).", Some(Role::Api), true),
    m("orders_command_duration_seconds", Histogram, "Time to handle a command, by command.", Some(Role::Api), true),
    m("cqrs_append_batch_size", Histogram, "Appends the event store's writer committed together (group commit).", Some(Role::Api), false),
    m("cqrs_consistency_waits_total", Counter, "Reads that waited for a consistency token, by outcome (reached, timeout).", Some(Role::Api), true),
    m("cqrs_consistency_wait_seconds", Histogram, "Time a read waited for its consistency token.", Some(Role::Api), false),
    m("cqrs_read_cache_total", Counter, "Query answers by cache and outcome: hit (from memory), miss (read DB), stale.", Some(Role::Api), true),
    m("cqrs_read_cache_bytes", Gauge, "Bytes of query answers kept in memory, by cache.", Some(Role::Api), true),
    m("orders_live_view_renders_total", Counter, "Renders of the live page's view (two reads of the read DB each).", Some(Role::Api), false),
    // Sampled by any process with Kafka; shown from the start where a relay runs
    // (embedded, the projector reads the log: no outbox to report).
    m("cqrs_outbox_pending", Gauge, "Events after the relay's checkpoint: written, not yet confirmed on Kafka.", Some(Role::Relay), false),
    m("cqrs_outbox_oldest_pending_age_seconds", Gauge, "Age of the oldest event the relay has not confirmed on Kafka.", Some(Role::Relay), false),
    m("cqrs_relay_published_total", Counter, "Events the relay published and Kafka acknowledged.", Some(Role::Relay), false),
    m("cqrs_relay_errors_total", Counter, "Relay batches that failed (sent again from the checkpoint).", Some(Role::Relay), false),
    m("cqrs_relay_batch_size", Histogram, "Events per relay batch.", Some(Role::Relay), false),
    m("cqrs_relay_ack_seconds", Histogram, "From a batch's last send to its last delivery report: the broker's part of the relay's time.", Some(Role::Relay), false),
    m("cqrs_relay_checkpoint_seconds", Histogram, "One write of the relay's checkpoint.", Some(Role::Relay), false),
    m("cqrs_projector_lag_records", Gauge, "Records a consumer group has not applied: the high watermark minus the read DB's offset (embedded: the log head minus the checkpoint), by group, topic and partition.", None, true),
    m("cqrs_projector_lag_seconds", Gauge, "While records wait: seconds since the partition's checkpoint last moved (0 when caught up), by group, topic and partition.", None, true),
    m("cqrs_consumer_assigned_partitions", Gauge, "Partitions this process's member of a consumer group owns, by group and topic.", Some(Role::Projector), true),
    m("cqrs_projector_batch_size", Histogram, "Records per applied projector batch.", Some(Role::Projector), false),
    m("cqrs_projector_events_applied_total", Counter, "Events the projectors applied.", Some(Role::Projector), false),
    m("cqrs_projector_duplicates_total", Counter, "Records dropped as already applied (a version at or below the applied one).", Some(Role::Projector), false),
    m("cqrs_dead_letters_total", Counter, "Records set aside as dead letters (their aggregates' later events are parked).", Some(Role::Projector), false),
    m("cqrs_projector_batch_failures_total", Counter, "Projector batches that failed and were retried.", Some(Role::Projector), false),
    m("cqrs_projector_source_errors_total", Counter, "Errors reading the projector's source (the broker or the log), retried.", Some(Role::Projector), false),
    m("cqrs_projector_bulk_catch_ups_total", Counter, "Catch-ups in bulk of a projector far behind, by projector.", Some(Role::Projector), true),
    m("cqrs_process_reactions_in_transaction_total", Counter, "Saga instances that reacted inside their batch's transaction rather than ahead of it, by process.", Some(Role::Projector), true),
    m("cqrs_read_model_version", Gauge, "The version of each read model the read DB serves, by projector and projection.", None, true),
    m("cqrs_rebuild_events", Gauge, "Events a running rebuild has folded, by projector.", None, true),
    m("cqrs_rebuild_events_target", Gauge, "Events a running rebuild will fold, by projector.", None, true),
    m("cqrs_rebuild_running", Gauge, "1 while a rebuild of the projector's read models runs, by projector.", None, true),
    m("http_connections_open", Gauge, "HTTP connections open.", None, false),
    m("http_connections_refused_total", Counter, "Connections refused at --http-max-connections.", None, false),
    m("http_accept_errors_total", Counter, "Errors accepting a connection.", None, false),
    m("http_tls_handshake_failures_total", Counter, "TLS handshakes that failed or timed out.", None, false),
];

/// Gives every metric of the catalogue its `# HELP` text (once the
/// recorder is installed).
pub fn describe() {
    for m in METRICS {
        match m.kind {
            Counter => metrics::describe_counter!(m.name, m.help),
            Gauge => metrics::describe_gauge!(m.name, m.help),
            Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// Registers at 0 what `owner` records (None: the process's own): the
/// unlabelled counters, gauges and histograms, and the labelled ones whose
/// label values are known before anything happened.
pub fn register(owner: Option<Role>) {
    for m in METRICS.iter().filter(|m| m.owner == owner && !m.labelled) {
        match m.kind {
            Counter => metrics::counter!(m.name).increment(0),
            Gauge => metrics::gauge!(m.name).increment(0.0),
            Histogram => drop(metrics::histogram!(m.name)),
        }
    }
    match owner {
        Some(Role::Api) => {
            for outcome in ["reached", "timeout", "closed", "not_issued", "error"] {
                metrics::counter!("cqrs_consistency_waits_total", "outcome" => outcome)
                    .increment(0);
            }
        }
        Some(Role::Projector) => {
            for projector in [crate::PROJECTOR, crate::INVENTORY_PROJECTOR] {
                metrics::counter!("cqrs_projector_bulk_catch_ups_total", "projector" => projector)
                    .increment(0);
            }
            metrics::counter!("cqrs_process_reactions_in_transaction_total",
                "process" => crate::saga::SAGA)
            .increment(0);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric the workspace's code records is in the catalogue (so it
    /// gets its help text), and the catalogue names each once.
    #[test]
    fn the_catalogue_names_every_metric_the_code_records_once() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let re = regex::Regex::new(r#"metrics::(counter|gauge|histogram)!\(\s*"([a-z_]+)""#)
            .expect("pattern");
        let mut recorded = std::collections::BTreeSet::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
                let path = entry.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if path.is_dir() && !["target", "tests", ".git", "node_modules"].contains(&name) {
                    dirs.push(path);
                } else if name.ends_with(".rs") && path.to_string_lossy().contains("/src/") {
                    let text = std::fs::read_to_string(&path).expect("source");
                    for c in re.captures_iter(&text) {
                        recorded.insert(c[2].to_owned());
                    }
                }
            }
        }
        let catalogued: std::collections::BTreeSet<String> =
            METRICS.iter().map(|m| m.name.to_owned()).collect();
        assert_eq!(catalogued.len(), METRICS.len(), "a name twice");
        let missing: Vec<_> = recorded
            .iter()
            .filter(|n| !catalogued.contains(*n) && !n.starts_with("bench_"))
            .collect();
        assert!(missing.is_empty(), "recorded, not catalogued: {missing:?}");
    }
}
