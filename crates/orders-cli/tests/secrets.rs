//! Secrets need not be flags: the real binary takes the HS256 secret, the
//! database URL (with its password) and its own client token from files.
//! A secret given as a flag still works but is warned of, without its
//! value, and what the server writes on disk is its owner's alone.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{free_port, wait_healthy, Proc};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const SECRET: &str = "secrets-test-hs256-secret-0123456789";

fn orders(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(args)
        .env_remove("ORDERS_JWT_HS256_SECRET")
        .env_remove("ORDERS_TOKEN")
        .output()
        .unwrap()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_files_and_a_secret_flag_is_warned_of() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("hs256");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let url_file = dir.path().join("db-url");
    let db_url = test_support::fresh_postgres_url().await;
    assert!(
        db_url.contains(":postgres@"),
        "a URL with a password: {db_url}"
    );
    std::fs::write(&url_file, &db_url).unwrap();

    // The token, minted from the secret's file, and used from a file.
    let secret_arg = secret_file.display().to_string();
    let out = orders(&[
        "token",
        "--sub",
        "ops",
        "--role",
        "operator",
        "--jwt-hs256-secret-file",
        &secret_arg,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    // Never longer than the server accepts.
    let out = orders(&[
        "token",
        "--sub",
        "ops",
        "--role",
        "operator",
        "--ttl-secs",
        "90000",
        "--jwt-hs256-secret-file",
        &secret_arg,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--jwt-max-lifetime-secs 86400"));

    let port = free_port();
    let data = dir.path().join("data");
    let args: Vec<String> = [
        "--listen".to_owned(),
        format!("0.0.0.0:{port}"),
        "--jwt-hs256-secret-file".to_owned(),
        secret_arg.clone(),
        "--database-url-file".to_owned(),
        url_file.display().to_string(),
        "--data-dir".to_owned(),
        data.display().to_string(),
    ]
    .into();
    let mut server = Proc::serve("from-files", dir.path(), &args, &[]);
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base, &mut server).await;
    let out = orders(&[
        "create",
        "--customer",
        "alice",
        "--item",
        "book:1:1500",
        "--server",
        &base,
        "--token-file",
        &token_file.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = orders(&[
        "create",
        "--customer",
        "alice",
        "--item",
        "book:1:1500",
        "--server",
        &base,
    ]);
    assert!(!out.status.success(), "without a token: refused");
    server.terminate();
    let log = server.log_text();
    assert!(
        !log.contains("command line"),
        "no secret flag, no warning:\n{log}"
    );

    // The same secret as a flag: served, and warned of without its value.
    let port = free_port();
    let embedded = dir.path().join("embedded");
    let args: Vec<String> = [
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--jwt-hs256-secret".to_owned(),
        SECRET.to_owned(),
        "--data-dir".to_owned(),
        embedded.display().to_string(),
    ]
    .into();
    let mut server = Proc::serve("from-flags", dir.path(), &args, &[]);
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base, &mut server).await;
    let stats = reqwest::Client::new()
        .get(format!("{base}/stats"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 200);
    // The SQLite files and their directory: 0600 and 0700.
    assert_eq!(mode(&embedded), 0o700);
    for file in ["write.db", "read.db", "inventory.db", "write.db-wal"] {
        assert_eq!(mode(&embedded.join(file)), 0o600, "{file}");
    }
    server.terminate();
    let log = server.log_text();
    assert!(
        log.contains("--jwt-hs256-secret carries a secret on the command line")
            && log.contains("--jwt-hs256-secret-file"),
        "{log}"
    );
    assert!(!log.contains(SECRET), "the secret is in the log");
}
