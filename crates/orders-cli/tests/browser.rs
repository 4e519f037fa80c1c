//! The live page in a real headless browser (Debian's Chromium driven by
//! playwright-core; `scripts/test` installs both), at 1280 px and on a
//! phone's 390 px (and 360 px): once as the demo serves it (with
//! `ORDERS_UPDATE_SCREENSHOTS=1`, saving the README's screenshots into
//! docs/), once with authentication on and a token typed into the page.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{free_port, wait_healthy, Proc};
use std::path::{Path, PathBuf};

fn browser_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci --prefix browser` (scripts/test does)"
    );
    dir
}

/// Serves a fresh instance with `env`, drives the page (typing `token` when
/// given; with `stock`, the page's SKU in stock so that the saga reacts),
/// saves its screenshots at 1280 and 390 px, and returns the server's log.
async fn drive(
    dir: &Path,
    env: &[(&str, String)],
    token: Option<&str>,
    shots: [&Path; 2],
    stock: bool,
) -> String {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        dir.display().to_string(),
    ];
    let mut server = Proc::serve("live", dir, &args, env);
    wait_healthy(&base, &mut server).await;
    for shot in shots {
        let _ = std::fs::remove_file(shot);
    }
    let mut node = std::process::Command::new("node");
    if stock {
        // The page orders "book": in stock, its orders go through the saga.
        let r = reqwest::Client::new()
            .post(format!("{base}/inventory/book/stock"))
            .json(&serde_json::json!({ "quantity": 1000 }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        node.env("EXPECT_REACTIONS", "1");
    }
    node.current_dir(browser_dir()).args([
        "page.test.mjs",
        &format!("{base}/"),
        &shots[0].display().to_string(),
        &shots[1].display().to_string(),
    ]);
    if let Some(t) = token {
        node.arg(t);
    }
    let out = node.output().expect("node is installed");
    assert!(
        out.status.success(),
        "{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    for shot in shots {
        assert!(shot.exists(), "no screenshot at {}", shot.display());
    }
    let html = reqwest::get(&base).await.unwrap().text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page must not load anything from the network"
    );
    server.terminate();
    server.log_text()
}

/// Where a test saves its screenshots: docs/ when asked to refresh the
/// README's (`ORDERS_UPDATE_SCREENSHOTS`), else `dir`, so that a test run
/// leaves the checkout as it found it.
fn screenshots_dir(dir: &Path) -> PathBuf {
    match std::env::var_os("ORDERS_UPDATE_SCREENSHOTS") {
        Some(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs"),
        None => dir.to_owned(),
    }
}

/// An operator's token for `sub`, signed with `secret` by `orders token`.
fn operator_token(secret: &str, sub: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["token", "--sub", sub, "--role", "operator"])
        .env("ORDERS_JWT_HS256_SECRET", secret)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_follows_commands_over_one_stream_at_desktop_and_phone_widths() {
    let dir = tempfile::tempdir().unwrap();
    let docs = screenshots_dir(dir.path());
    let shots = [
        docs.join("live-page-1280.png"),
        docs.join("live-page-390.png"),
    ];
    drive(dir.path(), &[], None, [&shots[0], &shots[1]], true).await;

    // With callers checked: the page works once an operator's token is typed
    // in, the stream included (its cookie), and the token is never logged.
    let dir = tempfile::tempdir().unwrap();
    let secret = "browser-test-secret-0123456789abcdef";
    let token = operator_token(secret, "ops");
    let env = [
        ("ORDERS_JWT_HS256_SECRET", secret.to_owned()),
        ("RUST_LOG", "debug,hyper=info".to_owned()),
    ];
    let shots = [
        dir.path().join("auth-1280.png"),
        dir.path().join("auth-390.png"),
    ];
    let logged = drive(
        dir.path(),
        &env,
        Some(&token),
        [&shots[0], &shots[1]],
        false,
    )
    .await;
    assert!(
        logged.contains(r#""caller":"ops""#),
        "the command ran as the token's caller"
    );
    assert!(
        !logged.contains(&token) && !logged.contains(secret),
        "a credential is in the log"
    );
}

/// Appends, behind order `id`'s creation, a payment that does not decode
/// (a poison record) and a cancellation that then parks behind it, straight
/// into the write DB as a writer with a bug would.
async fn poison(dir: &Path, id: &str) {
    use cqrs_core::{EventMetadata, NewEvent};
    use cqrs_sql::{AppendRequest, Db, DbOptions, EventStore, SqlEventStore};
    let url = format!("sqlite:{}", dir.join("write.db").display());
    let store = SqlEventStore::open(Db::connect(&url, &DbOptions::default()).await.unwrap())
        .await
        .unwrap();
    let event = |event_type: &str, payload| NewEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: event_type.into(),
        schema_version: 1,
        payload,
    };
    store
        .append(AppendRequest {
            aggregate_type: "order".into(),
            aggregate_id: id.into(),
            expected_version: 1,
            events: vec![
                event(
                    "OrderPaid",
                    serde_json::json!({ "amount_cents": "lots", "payment_ref": "bug" }),
                ),
                event(
                    "OrderCancelled",
                    serde_json::json!({ "reason": "after the bad payment" }),
                ),
            ],
            metadata: EventMetadata {
                command_id: uuid::Uuid::now_v7().to_string(),
                occurred_at: chrono::Utc::now(),
                caller: None,
                traceparent: None,
            },
            idempotency: None,
        })
        .await
        .unwrap();
    store.db().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_skips_dead_letters_and_rebuilds_from_the_page_at_desktop_and_phone_widths() {
    let dir = tempfile::tempdir().unwrap();
    let docs = screenshots_dir(dir.path());
    let shots = [docs.join("console-1280.png"), docs.join("console-360.png")];
    for shot in &shots {
        let _ = std::fs::remove_file(shot);
    }
    // With callers checked, as an operator's console would be.
    let secret = "console-test-secret-0123456789abcdef";
    let token = operator_token(secret, "ops-alice");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        dir.path().display().to_string(),
    ];
    let env = [("ORDERS_JWT_HS256_SECRET", secret.to_owned())];
    let mut server = Proc::serve("console", dir.path(), &args, &env);
    wait_healthy(&base, &mut server).await;
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{base}/orders"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "customer_id": "carol",
            "items": [{ "sku": "lamp", "quantity": 1, "unit_price_cents": 4200 }] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    poison(dir.path(), created["order_id"].as_str().unwrap()).await;
    let out = std::process::Command::new("node")
        .current_dir(browser_dir())
        .args([
            "console.test.mjs",
            &format!("{base}/ops"),
            &shots[0].display().to_string(),
            &shots[1].display().to_string(),
            &token,
        ])
        .output()
        .expect("node is installed");
    assert!(
        out.status.success(),
        "{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    for shot in &shots {
        assert!(shot.exists(), "no screenshot at {}", shot.display());
    }
    server.terminate();
    let logged = server.log_text();
    // Every action is in the log under the token's subject, and the token
    // is not.
    for action in ["dead_letter.skip", "rebuild.start", "rebuild.finish"] {
        assert!(
            logged.lines().any(|l| l.contains(r#""actor":"ops-alice""#)
                && l.contains(&format!(r#""action":"{action}""#))),
            "no audit line for {action}:\n{logged}"
        );
    }
    assert!(!logged.contains(&token), "the token is in the log");
}
