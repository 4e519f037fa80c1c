//! The benchmarks of `orders-bench`: commands/s (closed loop, beside a raw single-row INSERT
//! rate on the same database and concurrency) and command->queryable latency
//! (open loop at a fixed offered rate, measured from each command's intended
//! send time, so a slow server cannot hide its queue).

pub mod append;
pub mod args;
pub mod cpu;
pub mod history;
pub mod hops;
pub mod kafka;
pub mod load;
pub mod peer;
pub mod pg;
pub mod plot;
pub mod probe;
pub mod rebuild;
pub mod report;
pub mod results;
pub mod saga;
pub mod sweep;

pub use args::{BenchArgs, What};
use load::{
    caught_up, drop_scratch, latency, raw_inserts, scratch_postgres, some_order_ids, throughput,
    Served,
};
use orders_service::server::{Config, KafkaOptions, Role};
use results::BackendResult;
use std::time::Instant;

/// Creates in a closed loop against a process with only the API role:
/// commands/s, and the machine's CPU µs per command.
async fn write_side_alone(config: &Config, args: &BenchArgs) -> anyhow::Result<(f64, f64)> {
    let mut api_only = config.clone();
    api_only.roles = vec![Role::Api];
    let served = Served::start(&api_only).await?;
    let busy = cpu::MachineCpu::now()?;
    let cps = throughput(&served.base, args.commands, args.concurrency).await;
    let (cpu_us, _) = busy.since()?;
    served.stop().await?;
    Ok((cps?, cpu_us / args.commands as f64))
}

/// pgbench's one-row insert and select-only at the bench's concurrency, on
/// the PostgreSQL server of `config` (none on SQLite).
/// Also the machine's CPU µs per insert transaction.
async fn pgbench(config: &Config, args: &BenchArgs) -> anyhow::Result<Option<Pgbenched>> {
    let Some(url) = &config.database_url else {
        return Ok(None);
    };
    let run = pg::Pgbench {
        url,
        clients: args.concurrency,
        secs: args.pgbench_secs,
    };
    let busy = cpu::MachineCpu::now()?;
    let insert_tps = pg::insert_tps(run).await?;
    let (cpu_us, secs) = busy.since()?;
    Ok(Some(Pgbenched {
        insert_tps,
        insert_cpu_us: cpu_us / (insert_tps * secs),
        select_tps: pg::select_tps(run).await?,
    }))
}

/// pgbench's figures on one server.
struct Pgbenched {
    insert_tps: f64,
    insert_cpu_us: f64,
    select_tps: f64,
}

/// The closed loop of creates against all roles.
struct ClosedLoop {
    commands_per_sec: f64,
    /// From the first command until the read model held the last event.
    projector_events_per_sec: f64,
    /// The machine's, with everything the commands caused.
    cpu_us_per_command: f64,
}

/// Creates in a closed loop, timed until the read side caught up (which
/// also lets the next phase start level).
async fn closed_loop(
    running: &orders_service::server::Running,
    base: &str,
    args: &BenchArgs,
) -> anyhow::Result<ClosedLoop> {
    // The write-side phase's events first: every phase starts level.
    let before = caught_up(running).await?;
    let started = Instant::now();
    let busy = cpu::MachineCpu::now()?;
    let cps = throughput(base, args.commands, args.concurrency).await?;
    let events = caught_up(running).await? - before;
    let (cpu_us, _) = busy.since()?;
    Ok(ClosedLoop {
        commands_per_sec: cps,
        projector_events_per_sec: events as f64 / started.elapsed().as_secs_f64(),
        cpu_us_per_command: cpu_us / args.commands as f64,
    })
}

/// The open-loop latency phase, with Kafka's own latency probed meanwhile
/// when Kafka is between the sides.
async fn latency_probed(
    config: &Config,
    base: &str,
    args: &BenchArgs,
) -> anyhow::Result<(load::Latencies, f64, Option<probe::KafkaProbe>)> {
    let probe = match &config.kafka {
        Some(k) => Some(probe::start(&k.config()).await?),
        None => None,
    };
    let (lat, achieved) = latency(base, args.commands, args.rate).await?;
    let kafka_probe = match probe {
        Some(p) => Some(p.stop().await?),
        None => None,
    };
    Ok((lat, achieved, kafka_probe))
}

async fn bench_one(
    name: &str,
    mut config: Config,
    args: &BenchArgs,
) -> anyhow::Result<BackendResult> {
    eprintln!("== {name}");
    config.saga_concurrency = args.saga_concurrency;
    if let Some(bytes) = args.read_cache_bytes {
        config.read_cache_bytes = bytes;
    }
    let (write_only, cpu_alone) = write_side_alone(&config, args).await?;
    let served = Served::start(&config).await?;
    let (running, base) = (&served.running, served.base.as_str());
    let result = async {
        let closed = closed_loop(running, base, args).await?;
        let raw = raw_inserts(running.app.store.db(), args.commands, args.concurrency).await?;
        let create_pay = peer::create_then_pay(base, args.commands / 2, args.concurrency).await?;
        caught_up(running).await?;
        let (lat, achieved, kafka_probe) = latency_probed(&config, base, args).await?;
        let hops = hops::of(base, &lat.command_ids).await?;
        let saga = saga::phases(running, base, args.commands, args.rate).await?;
        let ids = some_order_ids(running).await?;
        let (reads, reads_us) =
            pg::get_throughput(base, ids.clone(), args.commands, args.concurrency).await?;
        let (cached_reads, _) =
            pg::get_throughput(base, ids, args.commands, args.concurrency).await?;
        let sweep = match args.sweep_secs {
            Some(secs) => Some(sweep::run(running, base, secs).await?),
            None => None,
        };
        let pgbenched = pgbench(&config, args).await?;
        Ok::<_, anyhow::Error>(BackendResult {
            backend: name.to_owned(),
            commands_per_sec: closed.commands_per_sec,
            write_only_commands_per_sec: write_only,
            create_pay_commands_per_sec: create_pay,
            projector_events_per_sec: closed.projector_events_per_sec,
            raw_inserts_per_sec: raw,
            ratio_to_raw: closed.commands_per_sec / raw,
            pgbench_insert_tps: pgbenched.as_ref().map(|p| p.insert_tps),
            cpu_us_per_command: closed.cpu_us_per_command,
            cpu_us_per_command_alone: cpu_alone,
            pgbench_insert_cpu_us: pgbenched.as_ref().map(|p| p.insert_cpu_us),
            reads_per_sec: reads,
            reads_us,
            cached_reads_per_sec: cached_reads,
            history: None,
            pgbench_select_tps: pgbenched.as_ref().map(|p| p.select_tps),
            offered_rate: args.rate,
            achieved_rate: achieved,
            command_us: (&lat.command).into(),
            command_to_queryable_us: (&lat.queryable).into(),
            hops,
            kafka_probe,
            errors: lat.errors,
            saga,
            sweep,
        })
    }
    .await;
    let settled = caught_up(running).await;
    served.stop().await?;
    let mut result = result?;
    settled?;
    if let Some(events) = args.store_events {
        result.history = Some(history::run(&config, args, events).await?);
    }
    Ok(result)
}

/// `orders-bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match &args.what {
        Some(What::Append { appends }) => {
            let url = args
                .database_url
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("bench append needs --database-url"))?;
            return append::run(url, *appends, args.concurrency, &args.out).await;
        }
        Some(what) => return kafka::run(what, &args).await,
        None => {}
    }
    let mut results = Vec::new();
    let peer = match &args.database_url {
        Some(url) => peer::cqrs_es(url, args.commands / 2, args.concurrency).await?,
        None => None,
    };
    let dir = tempfile::tempdir()?;
    results.push(bench_one("sqlite (embedded)", Config::embedded(dir.path()), &args).await?);
    if let Some(url) = &args.database_url {
        let (scratch, name) = scratch_postgres(url).await?;
        let mut config = Config::embedded(dir.path().join("pg"));
        config.database_url = Some(scratch);
        config.pool_size = (args.concurrency as u32 + 4).max(16);
        let r = bench_one("postgresql", config.clone(), &args).await;
        drop_scratch(url, &name).await;
        results.push(r?);
        if let Some(brokers) = &args.kafka_brokers {
            let (scratch, name) = scratch_postgres(url).await?;
            config.database_url = Some(scratch);
            let mut k = KafkaOptions::new(brokers.clone());
            k.topic = format!("{name}.events");
            k.group = Some(format!("{name}-group"));
            config.kafka = Some(k);
            let r = bench_one("postgresql + kafka", config, &args).await;
            drop_scratch(url, &name).await;
            results.push(r?);
        }
    } else {
        eprintln!("(no --database-url / DATABASE_URL: PostgreSQL not benched)");
    }
    let replay = match (&args.database_url, &args.kafka_brokers) {
        (Some(url), Some(brokers)) if args.replay_events > 0 => {
            Some(kafka::measure(args.replay_events, url, brokers).await?)
        }
        _ => None,
    };
    report::report(&results, peer.as_ref(), replay.as_ref(), &args)
}
