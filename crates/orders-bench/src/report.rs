//! The report of `orders-bench`: its tables on stdout, the JSON results
//! and the plot of the sweep.

use super::args::BenchArgs;
use super::load::machine;
use super::results::BackendResult;
use serde_json::json;

/// Microseconds as milliseconds with two decimals.
fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// A table in the report's style.
fn table(header: Vec<&str>) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(header);
    t
}

/// Prints the tables and writes the JSON results (and the plot of the sweep).
pub(crate) fn report(
    results: &[BackendResult],
    peer: Option<&super::peer::Peer>,
    replay: Option<&super::kafka::Rates>,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    let (writes, baselines) = write_tables(results);
    println!("{writes}");
    println!("{baselines}");
    println!("{}", cpu_table(results));
    println!("{}", saga_table(results));
    if let Some(peer) = peer {
        println!("{}", peer_table(results, peer));
    }
    if results.iter().any(|r| r.history.is_some()) {
        println!("{}", history_table(results));
    }
    for r in results {
        if let Some(sweep) = &r.sweep {
            print_sweep(&r.backend, sweep);
        }
    }
    println!("{}", hops_table(results));
    if let Some(r) = replay {
        println!("{}", super::kafka::table(r));
    }
    println!("{}", targets_table(results, peer, replay));
    println!(
        "{} commands per phase, {} clients in the closed loops (ours and pgbench's); latency measured from each command's intended send time.",
        args.commands, args.concurrency
    );
    write_files(results, peer, replay, args)
}

/// Each backend's write side and latency, and its like-for-like baselines.
fn write_tables(results: &[BackendResult]) -> (comfy_table::Table, comfy_table::Table) {
    let mut writes = table(vec![
        "backend",
        "cmd/s",
        "projector ev/s",
        "raw insert/s",
        "ratio",
        "offered/s",
        "achieved/s",
        "cmd p50 ms",
        "cmd p99 ms",
        "queryable p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
    ]);
    let mut baselines = table(vec![
        "backend",
        "cmd/s",
        "cmd/s write side alone",
        "pgbench insert tps",
        "ratio",
        "ratio alone",
        "GET /orders/{id} /s",
        "the same again (cached) /s",
        "pgbench select-only tps",
        "ratio",
        "ratio cached",
    ]);
    for r in results {
        writes.add_row(write_row(r));
        baselines.add_row(baseline_row(r));
    }
    (writes, baselines)
}

/// What a command costs the machine (every process on it), beside what a
/// pgbench insert costs it: the commands' ceiling on these cores.
fn cpu_table(results: &[BackendResult]) -> comfy_table::Table {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut t = table(vec![
        "backend",
        "machine CPU µs per command (all it causes)",
        "per command, write side alone",
        "per pgbench insert",
        "ratio (alone)",
        "cmd/s the cores allow (alone)",
    ]);
    for r in results {
        let per_insert = r.pgbench_insert_cpu_us;
        t.add_row(vec![
            r.backend.clone(),
            format!("{:.0}", r.cpu_us_per_command),
            format!("{:.0}", r.cpu_us_per_command_alone),
            per_insert.map_or("-".to_owned(), |c| format!("{c:.0}")),
            per_insert.map_or("-".to_owned(), |c| {
                format!(
                    "{:.2} ({:.2})",
                    r.cpu_us_per_command / c,
                    r.cpu_us_per_command_alone / c
                )
            }),
            format!(
                "{:.0} ({:.0})",
                cores * 1e6 / r.cpu_us_per_command,
                cores * 1e6 / r.cpu_us_per_command_alone
            ),
        ]);
    }
    t
}

/// Each backend's saga phases: create -> stock reserved per SKU spread.
fn saga_table(results: &[BackendResult]) -> comfy_table::Table {
    let mut saga = table(vec![
        "backend",
        "SKUs",
        "saga orders",
        "offered/s",
        "create -> stock reserved p50 ms",
        "p99 ms",
        "max ms",
        "errors",
    ]);
    for r in results {
        for phase in &r.saga {
            saga.add_row(vec![
                r.backend.clone(),
                phase.skus.to_string(),
                phase.orders.to_string(),
                format!("{:.0}", r.offered_rate),
                ms(phase.create_to_reserved_us.p50),
                ms(phase.create_to_reserved_us.p99),
                ms(phase.create_to_reserved_us.max),
                phase.errors.to_string(),
            ]);
        }
    }
    saga
}

/// Writes the JSON results under `--out`, and the plot when there was a sweep.
fn write_files(
    results: &[BackendResult],
    peer: Option<&super::peer::Peer>,
    replay: Option<&super::kafka::Rates>,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let file = args.out.join(format!("bench-{stamp}.json"));
    let doc = json!({ "machine": machine(), "args": { "commands": args.commands, "rate": args.rate,
        "concurrency": args.concurrency, "store_events": args.store_events }, "results": results,
        "cqrs_es": peer, "replay": replay.map(super::kafka::json) });
    std::fs::write(&file, serde_json::to_string_pretty(&doc)?)?;
    println!("results: {}", file.display());
    let sweeps: Vec<_> = results
        .iter()
        .filter_map(|r| r.sweep.as_ref().map(|s| (r.backend.as_str(), s)))
        .collect();
    if !sweeps.is_empty() {
        let plot = args.out.join(format!("bench-{stamp}.svg"));
        super::plot::write(&plot, &sweeps)?;
        println!("plot: {}", plot.display());
    }
    Ok(())
}

/// Each backend before and after importing `--store-events` of history.
fn history_table(results: &[BackendResult]) -> comfy_table::Table {
    let mut t = table(vec![
        "backend",
        "events in store",
        "import s",
        "cmd/s before",
        "cmd/s after",
        "ratio",
        "GET p99 ms before",
        "after",
        "ratio",
        "GET/s before",
        "after",
    ]);
    for r in results {
        if let Some(h) = &r.history {
            t.add_row(vec![
                r.backend.clone(),
                h.events.to_string(),
                format!("{:.0}", h.import_secs),
                format!("{:.0}", h.before.commands_per_sec),
                format!("{:.0}", h.after.commands_per_sec),
                format!("{:.2}", h.command_ratio),
                ms(h.before.reads_us.p99),
                ms(h.after.reads_us.p99),
                format!("{:.2}", h.read_p99_ratio),
                format!("{:.0}", h.before.reads_per_sec),
                format!("{:.0}", h.after.reads_per_sec),
            ]);
        }
    }
    t
}

/// Command -> queryable at the offered rate, stage by stage (from traces).
fn hops_table(results: &[BackendResult]) -> comfy_table::Table {
    let mut t = table(vec![
        "backend",
        "stage, after the commit",
        "p50 ms",
        "p99 ms",
        "max ms",
    ]);
    for r in results {
        for h in &r.hops {
            t.add_row(vec![
                r.backend.clone(),
                h.stage.clone(),
                ms(h.us.p50),
                ms(h.us.p99),
                ms(h.us.max),
            ]);
        }
        if let Some(p) = &r.kafka_probe {
            for (what, us) in [
                (
                    "raw Kafka probe, same time: acknowledged after its send",
                    &p.acknowledged_us,
                ),
                (
                    "raw Kafka probe, same time: consumed after its send",
                    &p.consumed_us,
                ),
            ] {
                t.add_row(vec![
                    r.backend.clone(),
                    what.to_owned(),
                    ms(us.p50),
                    ms(us.p99),
                    ms(us.max),
                ]);
            }
        }
    }
    t
}

/// Issue 22's targets, each with what this run measured and whether it is
/// met.
fn targets_table(
    results: &[BackendResult],
    peer: Option<&super::peer::Peer>,
    replay: Option<&super::kafka::Rates>,
) -> comfy_table::Table {
    let mut t = table(vec!["target", "backend", "measured", "wanted", "met"]);
    let mut row = |what: &str, backend: &str, measured: String, wanted: &str, met: bool| {
        t.add_row(vec![
            what.to_owned(),
            backend.to_owned(),
            measured,
            wanted.to_owned(),
            if met { "yes" } else { "no" }.to_owned(),
        ]);
    };
    for r in results {
        let b = r.backend.as_str();
        if let Some(select) = r.pgbench_select_tps {
            let cached = r.cached_reads_per_sec / select;
            row(
                "GET /orders/{id} / pgbench select-only",
                b,
                format!(
                    "{cached:.2}x (cached), {:.2}x (read DB)",
                    r.reads_per_sec / select
                ),
                ">= 1.0x",
                cached >= 1.0,
            );
        }
        if let Some(insert) = r.pgbench_insert_tps {
            let ratio = r.commands_per_sec / insert;
            row(
                "commands / pgbench one-row insert",
                b,
                format!("{ratio:.2}x"),
                ">= 0.6x",
                ratio >= 0.6,
            );
        }
        if let Some(peer) = peer {
            let ratio = r.create_pay_commands_per_sec / peer.commands_per_sec;
            row(
                "create then pay / cqrs-es",
                b,
                format!("{ratio:.2}x"),
                ">= 3x",
                ratio >= 3.0,
            );
        }
        let (p50, p99) = (r.command_to_queryable_us.p50, r.command_to_queryable_us.p99);
        row(
            &format!("command -> queryable at {:.0}/s, saga on", r.offered_rate),
            b,
            format!("p50 {} ms, p99 {} ms", ms(p50), ms(p99)),
            "p50 <= 5 ms, p99 <= 20 ms (through Kafka)",
            p50 <= 5_000 && p99 <= 20_000,
        );
    }
    for (what, measured, wanted, met) in replay.map(super::kafka::target_rows).unwrap_or_default() {
        row(&what, "postgresql + kafka", measured, wanted, met);
    }
    t
}

/// Create-then-pay: ours over HTTP beside cqrs-es + postgres-es in process.
fn peer_table(results: &[BackendResult], peer: &super::peer::Peer) -> comfy_table::Table {
    let mut t = table(vec![
        "create then pay",
        "cmd/s (HTTP)",
        "cqrs-es cmd/s (in process)",
        "ratio",
        "cqrs-es + view cmd/s",
        "ratio",
    ]);
    for r in results {
        let ours = r.create_pay_commands_per_sec;
        t.add_row(vec![
            r.backend.clone(),
            format!("{ours:.0}"),
            format!("{:.0}", peer.commands_per_sec),
            format!("{:.2}", ours / peer.commands_per_sec),
            format!("{:.0}", peer.with_view_commands_per_sec),
            format!("{:.2}", ours / peer.with_view_commands_per_sec),
        ]);
    }
    t
}

/// A row of the commands-and-latency table.
fn write_row(r: &BackendResult) -> Vec<String> {
    vec![
        r.backend.clone(),
        format!("{:.0}", r.commands_per_sec),
        format!("{:.0}", r.projector_events_per_sec),
        format!("{:.0}", r.raw_inserts_per_sec),
        format!("{:.2}", r.ratio_to_raw),
        format!("{:.0}", r.offered_rate),
        format!("{:.0}", r.achieved_rate),
        ms(r.command_us.p50),
        ms(r.command_us.p99),
        ms(r.command_to_queryable_us.p50),
        ms(r.command_to_queryable_us.p99),
        ms(r.command_to_queryable_us.p999),
        ms(r.command_to_queryable_us.max),
        r.errors.to_string(),
    ]
}

/// A row of the pgbench table (dashes where there is no PostgreSQL).
fn baseline_row(r: &BackendResult) -> Vec<String> {
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    let ratio = |a: f64, b: Option<f64>| b.map_or("-".to_owned(), |b| format!("{:.2}", a / b));
    vec![
        r.backend.clone(),
        format!("{:.0}", r.commands_per_sec),
        format!("{:.0}", r.write_only_commands_per_sec),
        opt(r.pgbench_insert_tps),
        ratio(r.commands_per_sec, r.pgbench_insert_tps),
        ratio(r.write_only_commands_per_sec, r.pgbench_insert_tps),
        format!("{:.0}", r.reads_per_sec),
        format!("{:.0}", r.cached_reads_per_sec),
        opt(r.pgbench_select_tps),
        ratio(r.reads_per_sec, r.pgbench_select_tps),
        ratio(r.cached_reads_per_sec, r.pgbench_select_tps),
    ]
}

/// The sweep of one backend as a table, with its knee.
fn print_sweep(backend: &str, sweep: &super::sweep::Sweep) {
    let mut t = table(vec![
        "offered/s",
        "achieved/s",
        "cmd p50 ms",
        "queryable p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "sustained",
    ]);
    let half = sweep.half_knee.iter().map(|p| (p, " (half the knee)"));
    for (p, note) in sweep.points.iter().map(|p| (p, "")).chain(half) {
        t.add_row(vec![
            format!("{:.0}{note}", p.offered),
            format!("{:.0}", p.achieved),
            ms(p.command_us.p50),
            ms(p.command_to_queryable_us.p50),
            ms(p.command_to_queryable_us.p99),
            ms(p.command_to_queryable_us.p999),
            ms(p.command_to_queryable_us.max),
            p.errors.to_string(),
            if p.sustained() { "yes" } else { "no" }.to_owned(),
        ]);
    }
    let knee = sweep
        .knee
        .map_or("none (250/s not sustained)".to_owned(), |k| {
            format!("{k:.0}/s")
        });
    println!("{backend}: open-loop sweep, knee {knee}\n{t}");
    let half = sweep.half_knee.iter();
    for p in sweep.points.iter().chain(half) {
        if let Some(e) = &p.first_error {
            println!(
                "  at {:.0}/s the first of {} errors: {e}",
                p.offered, p.errors
            );
        }
    }
}
