//! The README's HTTP API section, run as written: its shell blocks, in
//! order, against a fresh server (its port put where the README says 8080),
//! with curl failing on any 4xx or 5xx answer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{free_port, wait_healthy, Proc};

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md")
}

/// The ```sh blocks after `marker` up to the next `## ` heading.
fn blocks_after(readme: &str, marker: &str) -> Vec<String> {
    let start = readme
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in the README"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_http_api_blocks_run_in_order_against_a_fresh_server() {
    let blocks = blocks_after(&readme(), "\n## HTTP API");
    assert!(blocks.len() >= 2, "commands and queries: {blocks:?}");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        dir.path().display().to_string(),
    ];
    let mut server = Proc::serve("readme", dir.path(), &args, &[]);
    wait_healthy(&format!("http://127.0.0.1:{port}"), &mut server).await;
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
async fn the_readmes_client_commands_and_verify_run_against_a_fresh_server() {
    let blocks = blocks_after(&readme(), "\n## Client commands");
    assert_eq!(
        blocks.len(),
        2,
        "the client commands, then verify: {blocks:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        data.display().to_string(),
    ];
    let mut server = Proc::serve("readme-cli", dir.path(), &args, &[]);
    wait_healthy(&format!("http://127.0.0.1:{port}"), &mut server).await;
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
async fn the_readmes_security_example_runs_as_written() {
    let readme = readme();
    let security = blocks_after(&readme, "\n## Security");
    let json = blocks_after(&readme, "\n## Client commands")[0]
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
async fn the_readmes_migration_commands_run_on_a_fresh_database() {
    let blocks = blocks_after(&readme(), "**Schema migrations.**");
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
        stdout.contains("write db: event_store at version 2"),
        "{stdout}"
    );
}
