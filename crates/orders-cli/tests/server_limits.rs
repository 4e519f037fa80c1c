//! The real binary against hostile and careless clients: slow heads, stalled
//! bodies, oversize declarations, more connections than descriptors, and a
//! SIGTERM while live streams and waits are open. Defaults are what is tested.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{free_port, wait_healthy, Proc};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn embedded(name: &str, dir: &std::path::Path, port: u16, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--data-dir".to_owned(),
        dir.join(name).display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Reads until the server closes the connection (or `limit` passes);
/// returns what it sent and when it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Instant>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&out).into_owned(),
                    Some(Instant::now()),
                )
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), None),
        }
    }
}

/// A client that sends a request head one byte a second and never finishes.
async fn slow_loris(port: u16, started: Instant) -> Option<Duration> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .ok()?;
    let trickle = b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for b in trickle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if s.write_all(&[*b]).await.is_err() {
            return Some(started.elapsed());
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_slow_loris_clients_are_cut_off_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = Proc::serve(
        "loris",
        dir.path(),
        &embedded("loris", dir.path(), port, &[]),
        &[],
    );
    wait_healthy(&base, &mut server).await;
    let started = Instant::now();
    let clients: Vec<_> = (0..300)
        .map(|_| tokio::spawn(slow_loris(port, started)))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // While they hang on, everyone else is served at once.
    let t = Instant::now();
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "healthz took {:?}",
        t.elapsed()
    );
    let mut cut = Vec::new();
    for c in clients {
        cut.push(c.await.unwrap().expect("a slow client was never cut off"));
    }
    let slowest = cut.iter().max().copied().unwrap_or_default();
    eprintln!("300 slow-loris clients: the last one cut off after {slowest:?}");
    assert!(slowest < Duration::from_secs(30), "{slowest:?}");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_bodies_time_out_and_oversize_declarations_are_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let args = embedded("body", dir.path(), port, &["--http-body-timeout-secs", "3"]);
    let mut server = Proc::serve("body", dir.path(), &args, &[]);
    wait_healthy(&base, &mut server).await;

    // A declared 10 MB body is refused before a byte of it is sent.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(
        b"POST /orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 10000000\r\n\r\n",
    )
    .await
    .unwrap();
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""error":"body_too_large""#), "{answer}");
    assert!(
        closed.is_some(),
        "the connection is closed after the refusal"
    );

    // A hundred half-sent bodies: each answered 408 within the body timeout.
    let started = Instant::now();
    let stalled: Vec<_> = (0..100)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                s.write_all(b"POST /orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"customer_id\"")
                    .await
                    .unwrap();
                read_until_closed(&mut s, Duration::from_secs(20)).await
            })
        })
        .collect();
    for c in stalled {
        let (answer, closed) = c.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains(r#""error":"body_timeout""#), "{answer}");
        assert!(closed.is_some(), "a stalled body's connection is closed");
    }
    eprintln!(
        "100 stalled bodies answered 408 after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let store = cqrs_sql::Db::connect(
        &cqrs_sql::db::sqlite_url(&dir.path().join("body").join("write.db")),
        &cqrs_sql::DbOptions::default(),
    )
    .await
    .unwrap();
    let events = common::events_in(&store).await;
    assert_eq!(events, 0, "nothing was written");
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_few_file_descriptors_extra_connections_get_a_prompt_answer_and_health_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let args = embedded(
        "fds",
        dir.path(),
        port,
        &["--http-header-timeout-secs", "4"],
    );
    let mut server = Proc::serve_with_fd_limit("fds", dir.path(), 256, &args);
    wait_healthy(&base, &mut server).await;
    // More idle connections than the process has descriptors for.
    let mut idle = Vec::new();
    for _ in 0..300 {
        let connect = TcpStream::connect(("127.0.0.1", port));
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
            idle.push(s);
        }
    }
    // A request now is answered at once, 200 or a clear 503: never a hang.
    let t = Instant::now();
    let r = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    match r {
        Ok(r) => assert!([200, 503].contains(&r.status().as_u16()), "{}", r.status()),
        // The server may close an over-cap connection before the client
        // finishes sending: a prompt reset is an answer too.
        Err(e) => assert!(!e.is_timeout(), "healthz hung: {e}"),
    }
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(
        server.log_text().contains("capping connections"),
        "{}",
        server.log_text()
    );
    // Once the idle ones time out, health answers 200.
    // Each look is bounded too: an unanswered request must fail the test
    // with its reason, not hold the suite (once in a full run, a look
    // without a timeout never returned).
    let deadline = Instant::now() + Duration::from_secs(20);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    loop {
        let last = match http.get(format!("{base}/healthz")).send().await {
            Ok(r) if r.status() == 200 => break,
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => format!("{e:#}"),
        };
        assert!(Instant::now() < deadline, "health never recovered: {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(server.alive());
    drop(idle);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_live_streams_and_waits_open_exits_within_ten_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // The projector is held back a minute: a token wait stays open.
    let args = embedded("term", dir.path(), port, &["--projector-delay-ms", "60000"]);
    let mut server = Proc::serve("term", dir.path(), &args, &[]);
    wait_healthy(&base, &mut server).await;
    let http = reqwest::Client::new();
    let a = common::create_order_at(&http, &base, "t", 100).await;
    let id = a["order_id"].as_str().unwrap().to_owned();
    let token = a["consistency_token"].as_str().unwrap().to_owned();
    let mut streams = Vec::new();
    for _ in 0..5 {
        let r = http.get(format!("{base}/stream")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    let wait = {
        let http = http.clone();
        let url = format!("{base}/orders/{id}?wait_ms=30000");
        tokio::spawn(async move {
            let r = http
                .get(url)
                .header("x-consistency-token", token)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.unwrap())
        })
    };
    // A half-sent request too.
    let mut half = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    half.write_all(b"POST /orders HTTP/1.1\r\nhost: x\r\ncontent-length: 50\r\n\r\n{")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    server.signal_term();
    let status = tokio::task::spawn_blocking(move || {
        let s = server.wait_exit(Duration::from_secs(15));
        (s, server)
    })
    .await
    .unwrap();
    let (exit, server) = status;
    let took = sent.elapsed();
    eprintln!(
        "exited {took:?} after SIGTERM with 5 live streams, a token wait and a half-sent body"
    );
    let exit =
        exit.unwrap_or_else(|| panic!("still running 15 s after SIGTERM:\n{}", server.log_text()));
    assert!(exit.success(), "{}", server.log_text());
    assert!(took < Duration::from_secs(10), "{took:?}");
    let (s, b) = wait.await.unwrap();
    assert_eq!(
        (s, b["error"].as_str()),
        (503, Some("shutting_down")),
        "{b}"
    );
    let (answer, _) = read_until_closed(&mut half, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""error":"shutting_down""#), "{answer}");
    for mut r in streams {
        // Each stream ends (rather than being cut mid-event).
        while let Ok(Some(_)) = r.chunk().await {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_limit_follows_its_flag() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let args = embedded("limit", dir.path(), port, &["--http-max-body-bytes", "100"]);
    let mut server = Proc::serve("limit", dir.path(), &args, &[]);
    wait_healthy(&base, &mut server).await;
    let http = reqwest::Client::new();
    let small = serde_json::json!({"customer_id": "a", "items": [{"sku": "s", "quantity": 1, "unit_price_cents": 1}]});
    let r = http
        .post(format!("{base}/orders"))
        .json(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let big = serde_json::json!({"customer_id": "a", "items": [{"sku": "s".repeat(60), "quantity": 1, "unit_price_cents": 1}]});
    let r = http
        .post(format!("{base}/orders"))
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"], "body_too_large");
    assert!(server.terminate().success());
}
