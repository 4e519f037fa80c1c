//! The runnable blocks of the README and of docs/, run as written: their
//! shell blocks, in order, against a fresh server (its port put where the
//! text says 8080), with curl failing on any 4xx or 5xx answer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{free_port, wait_healthy, Proc};

/// A document of the checkout: `README.md`, `docs/api.md`, ...
fn doc(path: &str) -> String {
    let full = format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// The ```sh blocks after `marker` up to the next `## ` heading.
fn blocks_after(readme: &str, marker: &str) -> Vec<String> {
    let start = readme
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in the document"));
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut blocks = Vec::new();
    let mut rest = &section[..end];
    while let Some(open) = rest.find("```sh\n") {
        let body = &rest[open + 6..];
        let close = body.find("```").expect("a closed block");
        blocks.push(body[..close].to_owned());
        rest = &body[close + 3..];
    }
    blocks
}

/// The ```sh blocks between `start` and `end`.
fn blocks_between(text: &str, start: &str, end: &str) -> Vec<String> {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in the document"));
    let to = text[from..].find(end).map_or(text.len(), |i| from + i);
    blocks_after(&text[..to], start)
}

/// A fresh embedded server with its data under `data`, on a free port; the
/// process stops when dropped.
async fn fresh_server(name: &str, dir: &std::path::Path, data: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        data.display().to_string(),
    ];
    let mut server = Proc::serve(name, dir, &args, &[]);
    wait_healthy(&format!("http://127.0.0.1:{port}"), &mut server).await;
    (server, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_tour_runs_against_a_fresh_server() {
    let blocks = blocks_between(&doc("README.md"), "\n### 2. A server", "\n### 3.");
    let [serve, tour] = &blocks[..] else {
        panic!("the serve line, then the tour: {blocks:?}");
    };
    assert!(serve.contains("-- serve"), "{serve}");
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = fresh_server("readme-tour", dir.path(), dir.path()).await;
    let script = format!("curl() {{ command curl --fail-with-body \"$@\"; }}\n{tour}");
    let (stdout, _) = run(&script, dir.path(), port, &[]).await;
    // The consistent read, the trace's six stages, the payment, the stats.
    assert!(stdout.contains(r#""status":"created""#), "{stdout}");
    for stage in [
        "received",
        "committed",
        "published",
        "consumed",
        "applied",
        "queried",
    ] {
        assert!(
            stdout.contains(&format!(r#""stage":"{stage}""#)),
            "{stage}: {stdout}"
        );
    }
    assert!(stdout.contains(r#""paid":{"order_count":1"#), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_blocks_run_in_order_against_a_fresh_server() {
    let blocks = blocks_after(&doc("docs/api.md"), "\n## HTTP API");
    assert!(blocks.len() >= 2, "commands and queries: {blocks:?}");
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = fresh_server("readme", dir.path(), dir.path()).await;
    let script = format!(
        "set -euo pipefail\ncurl() {{ command curl --fail-with-body \"$@\"; }}\n{}",
        blocks
            .join("\n")
            .replace("localhost:8080", &format!("localhost:{port}"))
    );
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .await
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the README's blocks failed:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the blocks claim: the first order went through to delivered, the
    // second was cancelled, and the customer summary counts both.
    assert!(stdout.contains(r#""status":"delivered""#), "{stdout}");
    assert!(
        stdout.contains(r#""cancelled":{"order_count":1"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#""customer_id":"alice","order_count":2"#),
        "{stdout}"
    );
    // The inventory's block: stock in, read back with its token.
    assert!(
        stdout.contains(r#""on_hand":5,"reserved":0,"available":5"#),
        "{stdout}"
    );
}

/// Runs `script` under `bash -euo pipefail` in `cwd`, with the `orders` just
/// built first on the PATH and the client pointed at `port`.
async fn run(
    script: &str,
    cwd: &std::path::Path,
    port: u16,
    env: &[(&str, &str)],
) -> (String, String) {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_orders"));
    let path = format!(
        "{}:{}",
        bin.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = format!(
        "set -euo pipefail\n{}",
        script
            .replace("localhost:8080", &format!("localhost:{port}"))
            .replace("0.0.0.0:8080", &format!("0.0.0.0:{port}"))
    );
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(cwd)
        .env("PATH", path)
        .env("ORDERS_SERVER", format!("http://127.0.0.1:{port}"))
        .envs(env.iter().copied())
        .output()
        .await
        .expect("bash");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "the README's blocks failed:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_commands_and_verify_run_against_a_fresh_server() {
    let blocks = blocks_after(&doc("docs/api.md"), "\n## Client commands");
    assert_eq!(
        blocks.len(),
        2,
        "the client commands, then verify: {blocks:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = fresh_server("readme-cli", dir.path(), &dir.path().join("data")).await;
    let (stdout, stderr) = run(&blocks.join("\n"), dir.path(), port, &[]).await;
    assert!(stdout.contains(r#""status": "delivered""#), "{stdout}");
    assert!(stdout.contains("refused: it was delivered"), "{stdout}");
    assert!(
        stderr.contains("error: 409 Conflict: order_closed"),
        "{stderr}"
    );
    assert!(stdout.contains("consistent"), "verify's verdict: {stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_security_example_runs_as_written() {
    let security = blocks_after(&doc("docs/security.md"), "\n## A worked example");
    let json = blocks_after(&doc("docs/api.md"), "\n## Client commands")[0]
        .lines()
        .next()
        .expect("the json helper")
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let script = format!("{json}\n{}", security[0]);
    let (stdout, stderr) = run(&script, dir.path(), port, &[]).await;
    assert_eq!(stdout.matches("refused").count(), 2, "{stdout}");
    assert_eq!(stderr.matches("403 Forbidden").count(), 2, "{stderr}");
    assert!(stdout.contains(" 401"), "{stdout}");
    assert!(
        stdout.to_lowercase().contains("www-authenticate: bearer"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_commands_run_on_a_fresh_database() {
    let blocks = blocks_after(&doc("docs/operations.md"), "\n## Schema migrations");
    let dir = tempfile::tempdir().unwrap();
    let db = test_support::fresh_postgres_url().await;
    let (stdout, _) = run(&blocks[0], dir.path(), free_port(), &[("DB", &db)]).await;
    assert!(stdout.contains("due: event_store 1"), "{stdout}");
    assert!(stdout.contains("migrations are due"), "{stdout}");
    assert!(
        stdout.contains("applied: event_store 2 (native timestamps)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("applied: event_store 3 (idempotency keys scoped to their caller)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("applied: event_store 4 (store identity)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("applied: event_store 5 (trace context)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("write db: event_store at version 5"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuild_commands_run_on_a_fresh_database() {
    let blocks = blocks_after(
        &doc("docs/operations.md"),
        "\n## Rebuilds: versioned read models",
    );
    let dir = tempfile::tempdir().unwrap();
    let db = test_support::fresh_postgres_url().await;
    let (stdout, _) = run(&blocks[0], dir.path(), free_port(), &[("DB", &db)]).await;
    assert!(stdout.contains("nothing to rebuild"), "{stdout}");
    assert!(stdout.contains("events into order_stats v1"), "{stdout}");
    assert!(
        stdout.contains("events into order_details v2, customer_summary v1, order_stats v1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("events into inventory_stock v1"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("swapped in").count(), 3, "{stdout}");
}
