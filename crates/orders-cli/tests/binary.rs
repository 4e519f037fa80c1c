//! The real `orders` binary: serve, answer as a client expects, drain on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

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

/// What `orders demo ARGS` printed, after it succeeded.
fn demo(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_orders"))
        .arg("demo")
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// No line of `text` is wider than `columns` (box-drawing characters are
/// one column each).
fn assert_fits(text: &str, columns: usize) {
    for line in text.lines() {
        assert!(
            line.chars().count() <= columns,
            "{} columns: {line}\n{text}",
            line.chars().count()
        );
    }
}

#[test]
fn demo_tables_fit_120_columns_unless_asked_to_keep_whole_cells() {
    for args in [&[][..], &["--saga"][..]] {
        let text = demo(args);
        assert_fits(&text, 120);
        assert!(text.contains("Process table") && text.contains("State tracker"));
        let narrow = demo(&[args, &["--width", "90"]].concat());
        assert_fits(&narrow, 90);
    }
    // Whole cells, one row a line: wider than 120, as the run's content is.
    let whole = demo(&["--width", "0"]);
    assert!(whole.lines().any(|l| l.chars().count() > 120));
}

#[test]
fn demo_prints_both_tables_from_a_real_run() {
    let text = demo(&["--projector-delay-ms", "200", "--width", "0"]);
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

#[test]
fn demo_saga_prints_the_two_service_flow_from_a_real_run() {
    let text = demo(&["--saga", "--width", "0"]);
    for needle in [
        "Process table",
        "State tracker",
        "Add stock (2)",
        "OrderCreated, StockReservationRequested",
        "Saga reacts to StockReservationRequested",
        "Inventory (stock:book)",
        "ReservationRejected",
        "status=created stock=reserved",
        "status=cancelled stock=out_of_stock reason=out_of_stock",
        "Write DB (Inventory)",
        "book: on hand 2, reserved 2, available 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

fn verify(dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["verify", "--wait-secs", "1"])
        .env("ORDERS_DATA_DIR", dir)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Orders written while no projector runs are lag (exit 2), a read model
/// edited behind the projector's back is divergence (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_tells_a_lagging_projector_from_a_diverged_read_model() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = Server(
        Command::new(env!("CARGO_BIN_EXE_orders"))
            .args([
                "serve",
                "--role",
                "api",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("ORDERS_DATA_DIR", dir.path())
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_healthy(&base).await;
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let r = http
            .post(format!("{base}/orders"))
            .json(&serde_json::json!({"customer_id": "v", "items": [{"sku": "a", "quantity": 1, "unit_price_cents": 5}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let (code, text) = verify(dir.path());
    assert_eq!(code, 2, "{text}");
    assert!(text.starts_with("lagging by 3 events (3 orders)"), "{text}");
    let _ = api.0.kill();
    let _ = api.0.wait();
    // A projector catches up: consistent.
    let running = orders_service::Running::start(&orders_service::Config::embedded(dir.path()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let (code, text) = verify(dir.path());
        if code == 0 {
            break text;
        }
        assert!(Instant::now() < deadline, "never consistent: {text}");
    };
    assert!(text.starts_with("consistent: 3 events"), "{text}");
    // Someone edits the read model: divergence, named.
    sqlx::query("UPDATE order_details SET status = 'paid'")
        .execute(&running.app.read.writer)
        .await
        .unwrap();
    let (code, text) = verify(dir.path());
    assert_eq!(code, 1, "{text}");
    assert!(text.starts_with("DIVERGED"), "{text}");
    assert!(text.contains("order "), "{text}");
    running.stop().await.unwrap();
}

/// A relay without a broker to relay to refuses to start, and says why.
#[test]
fn a_relay_without_kafka_exits_at_once_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["serve", "--role", "relay"])
        .env("ORDERS_DATA_DIR", dir.path())
        .env_remove("DATABASE_URL")
        .env_remove("KAFKA_BROKERS")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--role relay needs --kafka-brokers"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// An unsupported database URL is refused without echoing its password.
#[test]
fn a_bad_database_url_is_refused_without_its_password() {
    let out = Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["serve", "--database-url", "mysql://root:hunter2@db/orders"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("unsupported database URL"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn a_public_address_needs_authentication_and_the_cli_carries_a_minted_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let serve = |secret: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orders"));
        cmd.args(["serve", "--listen", &listen])
            .env("ORDERS_DATA_DIR", dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("ORDERS_JWT_HS256_SECRET")
            .stdout(Stdio::null());
        if let Some(s) = secret {
            cmd.env("ORDERS_JWT_HS256_SECRET", s);
        }
        cmd
    };
    let refused = serve(None).stderr(Stdio::piped()).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let why = String::from_utf8_lossy(&refused.stderr);
    for flag in ["--jwt-hs256-secret", "--jwt-jwks", "--insecure-no-auth"] {
        assert!(why.contains(flag), "the refusal names {flag}: {why}");
    }
    let secret = "binary-test-secret-0123456789abcdef";
    let log = dir.path().join("serve.log");
    let child = serve(Some(secret))
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _server = Server(child);
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;
    let cli = |args: &[&str], token: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_orders"));
        cmd.args(args)
            .env("RUST_BACKTRACE", "1")
            .env("ORDERS_SERVER", &base)
            .env("ORDERS_JWT_HS256_SECRET", secret)
            .env_remove("ORDERS_TOKEN");
        if let Some(t) = token {
            cmd.env("ORDERS_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let minted = cli(&["token", "--sub", "alice", "--role", "customer"], None);
    assert!(minted.status.success(), "{minted:?}");
    let token = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    let create = ["create", "--customer", "alice", "--item", "book:1:700"];
    let anonymous = cli(&create, None);
    assert!(!anonymous.status.success());
    // One line on stderr with the server's error, no backtrace.
    let why = String::from_utf8_lossy(&anonymous.stderr);
    assert_eq!(why.lines().count(), 1, "{why}");
    assert!(
        why.starts_with("error: 401 Unauthorized: unauthenticated: "),
        "{why}"
    );
    let created = cli(&create, Some(&token));
    assert!(created.status.success(), "{created:?}");
    let answer: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert!(answer["order_id"].is_string(), "{answer}");
    // A refused command: one line with the domain's code, logged with it.
    let id = answer["order_id"].as_str().unwrap();
    assert!(cli(&["cancel", id], Some(&token)).status.success());
    let again = cli(&["cancel", id], Some(&token));
    let why = String::from_utf8_lossy(&again.stderr);
    assert_eq!(why.lines().count(), 1, "{why}");
    assert!(
        why.starts_with("error: 409 Conflict: order_closed: "),
        "{why}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains(r#""outcome":"order_closed""#)
    {
        assert!(
            Instant::now() < deadline,
            "the refusal's code is not logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The caller is in the command's log line; the token is nowhere.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains(r#""caller":"alice""#), "{logged}");
    // A server's log, written to a file, is one JSON object per line.
    for line in logged.lines() {
        let record: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            record["timestamp"].is_string() && record["level"].is_string(),
            "{line}"
        );
    }
    assert!(!logged.contains(&token) && !logged.contains(secret));
}

#[test]
fn a_tool_pointed_at_no_data_says_so_once_and_makes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    for tool in [&["verify"][..], &["replay"], &["dead-letters", "list"]] {
        let (command, rest) = tool.split_first().unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_orders"))
            .arg(command)
            .arg("--data-dir")
            .arg(&missing)
            .args(rest)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{tool:?}");
        assert_eq!(
            err.matches("no data directory").count(),
            1,
            "{tool:?}: {err}"
        );
        assert!(err.contains("--data-dir"), "{tool:?}: {err}");
        assert!(!missing.exists(), "{tool:?} made the directory");
    }
}

#[tokio::test]
async fn an_unreachable_or_missing_database_is_named_with_the_way_out() {
    let serve = |url: &str| {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_orders"))
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", url])
            .env_remove("DATABASE_URL")
            .output()
            .unwrap();
        assert!(!out.status.success());
        (
            String::from_utf8_lossy(&out.stderr).into_owned(),
            started.elapsed(),
        )
    };
    let port = free_port();
    let (err, took) = serve(&format!("postgres://orders:s3cret@127.0.0.1:{port}/orders"));
    assert!(
        err.contains(&format!(
            "cannot connect to postgres://orders:***@127.0.0.1:{port}/orders"
        )),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains("refused"),
        "the cause is given: {err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
    assert_eq!(err.matches("cannot connect").count(), 1, "said once: {err}");
    assert!(
        took < Duration::from_secs(12),
        "a refused connection fails fast: {took:?}"
    );
    let admin = test_support::postgres_admin_url();
    let base = admin.rsplit_once('/').unwrap().0;
    let missing = format!("{base}/t_missing_{}", uuid::Uuid::new_v4().simple());
    let (err, _) = serve(&missing);
    let hint = err.contains("does not exist") && err.contains("--create-database");
    assert!(hint, "{err}");
    assert_eq!(err.matches("does not exist").count(), 1, "said once: {err}");
    // Told to, it creates the database and serves from it.
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_orders"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--create-database",
        ])
        .args(["--database-url", &missing])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = Server(child);
    let served = format!("http://127.0.0.1:{port}");
    wait_healthy(&served).await;
    let body = serde_json::json!({"customer_id": "c",
        "items": [{"sku": "a", "quantity": 1, "unit_price_cents": 5}]});
    let res = reqwest::Client::new()
        .post(format!("{served}/orders"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}
