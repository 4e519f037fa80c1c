//! `orders-bench` end to end, small: the real binary against real SQLite and
//! PostgreSQL, with the cqrs-es baseline, the sweep and imported history;
//! every figure the report promises is in the JSON, and the plot is written.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use serde_json::Value;
use std::process::Command;

#[test]
fn the_bench_writes_every_figure_with_its_baseline_and_the_plot() {
    let bench = std::path::PathBuf::from(env!("CARGO_BIN_EXE_orders-bench"));
    let peer = std::path::PathBuf::from(env!("CARGO_BIN_EXE_cqrs-es-peer"));
    assert_eq!(
        peer.parent(),
        bench.parent(),
        "the bench runs the peer from beside itself"
    );
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(&bench)
        .args(["--commands", "200", "--sweep-secs", "0.2"])
        .args(["--store-events", "4000", "--pgbench-secs", "1"])
        .args(["--database-url", &test_support::postgres_admin_url()])
        .arg("--out")
        .arg(out_dir.path())
        .env_remove("KAFKA_BROKERS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for header in [
        "pgbench insert tps",
        "cqrs-es cmd/s",
        "events in store",
        "knee",
    ] {
        assert!(stdout.contains(header), "no {header:?} in:\n{stdout}");
    }
    let file = |ext: &str| {
        std::fs::read_dir(out_dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == ext))
            .unwrap_or_else(|| panic!("no .{ext} written"))
    };
    let doc: Value = serde_json::from_slice(&std::fs::read(file("json")).unwrap()).unwrap();
    let positive = |v: &Value, what: &str| {
        assert!(v.as_f64().is_some_and(|x| x > 0.0), "{what} = {v}");
    };
    positive(&doc["cqrs_es"]["commands_per_sec"], "cqrs-es");
    positive(
        &doc["cqrs_es"]["with_view_commands_per_sec"],
        "cqrs-es + view",
    );
    let results = doc["results"].as_array().unwrap();
    let backends: Vec<_> = results
        .iter()
        .map(|r| r["backend"].as_str().unwrap())
        .collect();
    assert_eq!(backends, ["sqlite (embedded)", "postgresql"]);
    for r in results {
        for key in [
            "commands_per_sec",
            "create_pay_commands_per_sec",
            "reads_per_sec",
            "cached_reads_per_sec",
            "cpu_us_per_command",
            "cpu_us_per_command_alone",
        ] {
            positive(&r[key], key);
        }
        assert_eq!(r["history"]["events"], 4000, "{r}");
        positive(
            &r["history"]["after"]["commands_per_sec"],
            "commands after the import",
        );
        positive(&r["history"]["command_ratio"], "command ratio");
        assert!(!r["sweep"]["points"].as_array().unwrap().is_empty(), "{r}");
        // The saga on one hot SKU and spread over many: every order reserved.
        let saga = r["saga"].as_array().unwrap();
        let spreads: Vec<_> = saga.iter().map(|p| p["skus"].as_u64()).collect();
        assert_eq!(spreads, [Some(1), Some(100)], "{r}");
        for phase in saga {
            assert_eq!(
                (&phase["orders"], &phase["errors"]),
                (&200.into(), &0.into()),
                "{phase}"
            );
            positive(&phase["create_to_reserved_us"]["p50"], "saga p50");
        }
    }
    positive(&results[1]["pgbench_insert_tps"], "pgbench insert");
    positive(&results[1]["pgbench_select_tps"], "pgbench select-only");
    positive(
        &results[1]["pgbench_insert_cpu_us"],
        "CPU per pgbench insert",
    );
    assert!(
        stdout.contains("machine CPU µs per command"),
        "no CPU table in:\n{stdout}"
    );
    let svg = std::fs::read_to_string(file("svg")).unwrap();
    assert!(
        svg.contains("postgresql p50"),
        "the plot has no postgresql line"
    );
}

/// `orders-bench append`: every driver variant ran and pgbench beside them
/// (the bench itself fails when a variant stored fewer events than it
/// appended).
#[test]
fn the_append_bench_runs_every_driver_and_pgbench() {
    let out_dir = tempfile::tempdir().unwrap();
    let url = test_support::postgres_admin_url();
    let out = Command::new(env!("CARGO_BIN_EXE_orders-bench"))
        .args(["--database-url", &url, "--out"])
        .arg(out_dir.path())
        .args(["append", "--appends", "300"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench append failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("bench-append-"))
        .expect("no bench-append JSON written");
    let doc: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let names: Vec<&str> = doc["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "store: group commit, sqlx Any",
            "one tx each, sqlx Any pool",
            "one tx each, sqlx PgPool (native)",
            "one tx each, tokio-postgres pipelined",
            "pgbench one-row insert (baseline)",
        ]
    );
    for v in doc["variants"].as_array().unwrap() {
        assert!(v["per_sec"].as_f64().unwrap() > 0.0, "{v}");
        assert!(v["machine_cpu_us"].as_f64().unwrap() > 0.0, "{v}");
    }
}
