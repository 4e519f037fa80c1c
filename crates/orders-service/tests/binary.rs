//! The real `orders` binary: serve, answer as a client expects, drain on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

async fn wait_healthy(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/healthz")).await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "server did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serve_answers_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("ORDERS_DATA_DIR", dir.path())
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    wait_healthy(&base).await;
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{base}/orders"))
        .json(&serde_json::json!({"customer_id": "cli", "items": [{"sku": "a", "quantity": 1, "unit_price_cents": 5}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = created["consistency_token"].as_str().unwrap();
    let id = created["order_id"].as_str().unwrap();
    let order: serde_json::Value = http
        .get(format!("{base}/orders/{id}"))
        .header("x-consistency-token", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(order["status"], "created");
    // `orders trace` prints the command's journey, every stage filled in.
    let command_id = created["command_id"].as_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["trace", command_id, "--server", &base])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stage in [
        "received",
        "committed",
        "published",
        "consumed",
        "applied",
        "queried",
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!(" {stage} ")))
            .unwrap_or_else(|| panic!("{stage} missing:\n{text}"));
        assert!(!line.contains('—'), "{stage} has no time:\n{text}");
    }
    // SIGTERM: drains and exits 0.
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    // The data survives: `orders verify` on the same directory agrees.
    let out = Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["verify", "--wait-secs", "5"])
        .env("ORDERS_DATA_DIR", dir.path())
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("consistent: 1 events"),
        "{text}"
    );
}

#[test]
fn demo_prints_both_tables_from_a_real_run() {
    let out = Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["demo", "--projector-delay-ms", "200"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "Process table",
        "State tracker",
        "Send CreateOrder command",
        "Command Handler",
        "OrderCreated consumed from log@1",
        "404 Not Found: order_not_found",
        "Order status returned: created",
        "Consistent read and write DBs (verified)",
        "Order data updated (created, 3800 cents)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}
