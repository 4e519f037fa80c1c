//! What one backend's run measured (the JSON results are these).

use super::load::Percentiles;

/// Figures of one backend.
#[derive(Debug, serde::Serialize)]
pub struct BackendResult {
    pub(crate) backend: String,
    pub(crate) commands_per_sec: f64,
    /// The same closed loop against the write side alone (a process with
    /// only the API role: no relay, no projector), as pgbench runs alone.
    pub(crate) write_only_commands_per_sec: f64,
    /// Create-then-pay over HTTP in a closed loop, commands (two per order)/s.
    pub(crate) create_pay_commands_per_sec: f64,
    pub(crate) projector_events_per_sec: f64,
    pub(crate) raw_inserts_per_sec: f64,
    pub(crate) ratio_to_raw: f64,
    /// pgbench one-row INSERT transactions at the same concurrency (PostgreSQL).
    pub(crate) pgbench_insert_tps: Option<f64>,
    /// The machine's CPU µs per command of the closed loop, with all it
    /// causes (relay, projectors, saga, the load's own client) until the
    /// read side caught up.
    pub(crate) cpu_us_per_command: f64,
    /// The same against the write side alone.
    pub(crate) cpu_us_per_command_alone: f64,
    /// The machine's CPU µs per pgbench insert transaction (its client too).
    pub(crate) pgbench_insert_cpu_us: Option<f64>,
    /// `GET /orders/{id}` per second in a closed loop at the same concurrency.
    pub(crate) reads_per_sec: f64,
    /// Their latencies.
    pub(crate) reads_us: Percentiles,
    /// The same reads again, right after: answered from the read cache
    /// while no newer version was applied (all of them, unless it is off).
    pub(crate) cached_reads_per_sec: f64,
    /// The same with `--store-events` of history in the store.
    pub(crate) history: Option<super::history::History>,
    /// pgbench select-only at the same concurrency (PostgreSQL).
    pub(crate) pgbench_select_tps: Option<f64>,
    pub(crate) offered_rate: f64,
    pub(crate) achieved_rate: f64,
    pub(crate) command_us: Percentiles,
    pub(crate) command_to_queryable_us: Percentiles,
    /// The same, hop by hop, from a sample of the commands' traces.
    pub(crate) hops: Vec<super::hops::Hop>,
    /// Kafka's own latency during the latency phase (with Kafka).
    pub(crate) kafka_probe: Option<super::probe::KafkaProbe>,
    pub(crate) errors: usize,
    /// Create -> stock reserved by the order saga, at the offered rate, on
    /// one SKU and spread over many.
    pub(crate) saga: Vec<super::saga::SagaLatency>,
    /// The open-loop sweep, when asked for.
    pub(crate) sweep: Option<super::sweep::Sweep>,
}
