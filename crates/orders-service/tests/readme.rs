//! The README's HTTP API section, run as written: its shell blocks, in
//! order, against a fresh server (its port put where the README says 8080),
//! with curl failing on any 4xx or 5xx answer.

mod common;

use common::{free_port, wait_healthy, Proc};

/// The ```sh blocks between `## HTTP API` and the next `## ` heading.
fn http_api_blocks(readme: &str) -> Vec<String> {
    let start = readme.find("\n## HTTP API").expect("an HTTP API section");
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
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let blocks = http_api_blocks(&readme);
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
}
