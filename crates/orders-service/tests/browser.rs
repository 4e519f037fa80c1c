//! The live page in a real headless browser (Debian's Chromium driven by
//! playwright-core; `scripts/test` installs both).

mod common;

use common::{free_port, wait_healthy, Proc};
use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_sends_a_command_and_shows_its_journey_and_the_order() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let browser_dir = root.join("browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci --prefix browser` (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        dir.path().display().to_string(),
    ];
    let mut server = Proc::serve("live", dir.path(), &args, &[]);
    wait_healthy(&base, &mut server).await;
    let shot = browser_dir.join("live-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = std::process::Command::new("node")
        .current_dir(&browser_dir)
        .args([
            "page.test.mjs",
            &format!("{base}/"),
            &shot.display().to_string(),
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
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    let html = reqwest::get(&base).await.unwrap().text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page must not load anything from the network"
    );
}
