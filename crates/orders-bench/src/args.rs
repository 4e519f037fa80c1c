//! The options of `orders-bench`.

use std::path::PathBuf;

/// Options of `orders-bench`.
#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// Commands per phase.
    #[arg(long, default_value_t = 2_000)]
    pub commands: usize,
    /// Offered rate of the latency phase, commands/s.
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// Concurrent clients of the throughput phase (and the raw baseline).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Also bench PostgreSQL: a server URL; a scratch database is created on it.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Also bench PostgreSQL with Kafka between the sides (needs --database-url).
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Also sweep offered rates (doubling from 250/s) for this many seconds
    /// each to find the knee, then measure half the knee.
    #[arg(long)]
    pub sweep_secs: Option<f64>,
    /// Seconds each pgbench baseline runs.
    #[arg(long, default_value_t = 10)]
    pub pgbench_secs: u32,
    /// Also measure again after importing this many events of made-up
    /// order history into the write store (e.g. 10000000): whether the cost
    /// of a command or a query grows with history.
    #[arg(long)]
    pub store_events: Option<i64>,
    /// Orders whose saga reactions of one batch run at once (as `serve`).
    #[arg(long, env = "ORDERS_SAGA_CONCURRENCY", default_value_t = orders_service::config::defaults::SAGA_CONCURRENCY,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub saga_concurrency: u16,
    /// Bytes of the servers' read cache [default: as `orders serve`]; 0
    /// reads every answer from the database.
    #[arg(long)]
    pub read_cache_bytes: Option<usize>,
    /// Events of the replay phases (relay, projector catch-up, rebuild
    /// while serving) in the main run, with PostgreSQL and Kafka; 0 skips
    /// them (`replay` runs them alone).
    #[arg(long, default_value_t = 1_000_000)]
    pub replay_events: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// A focused benchmark instead of the command benchmarks.
    #[command(subcommand)]
    pub what: Option<What>,
}

/// Focused benchmarks.
#[derive(clap::Subcommand, Clone)]
pub enum What {
    /// Relay vs raw producer, projector catch-up vs raw consumer, on a topic of N events.
    Replay {
        /// Events on the topic (orders x 4 events each).
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
    },
    /// The append alone on PostgreSQL through each driver (sqlx Any, sqlx
    /// PgPool, tokio-postgres pipelined) and the store's group commit,
    /// beside pgbench's one-row insert, with CPU per append.
    Append {
        /// Appends per variant.
        #[arg(long, default_value_t = 20_000)]
        appends: usize,
    },
}
