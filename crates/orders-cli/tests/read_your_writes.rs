//! Read-your-writes with the roles spread over processes: two API processes
//! (one also relays), three projector processes in one consumer group, and
//! clients that write through one API and read each write back through
//! either, presenting its consistency token.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{free_port, wait_healthy, Cluster};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 8;
const ORDERS_PER_CLIENT: usize = 63; // 8 x 63 x (create + pay) = 1008 commands

#[derive(Default)]
struct Tally {
    commands: AtomicUsize,
    reads: AtomicUsize,
    failed_reads: AtomicUsize,
}

/// Reads `path` with `token` (wait up to 5 s); returns the status and body.
async fn read_with(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    token: &str,
) -> (u16, serde_json::Value) {
    let r = http
        .get(format!("{base}{path}"))
        .query(&[("wait_ms", "5000")])
        .header("x-consistency-token", token)
        .send()
        .await
        .expect("read");
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

async fn client(n: usize, write: String, reads: [String; 2], tally: Arc<Tally>) {
    let http = reqwest::Client::new();
    for i in 0..ORDERS_PER_CLIENT {
        let read = &reads[i % 2];
        let body = json!({"customer_id": format!("c{n}"),
            "items": [{"sku": "s", "quantity": 1, "unit_price_cents": 100 + i}]});
        let r = http
            .post(format!("{write}/orders"))
            .json(&body)
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), 201);
        let a: serde_json::Value = r.json().await.expect("answer");
        tally.commands.fetch_add(1, Ordering::Relaxed);
        let id = a["order_id"].as_str().expect("id").to_owned();
        let token = a["consistency_token"].as_str().expect("token").to_owned();
        let (s, o) = read_with(&http, read, &format!("/orders/{id}"), &token).await;
        tally.reads.fetch_add(1, Ordering::Relaxed);
        if (s, o["version"].as_i64()) != (200, Some(1)) {
            eprintln!("read of {id} after create: {s} {o}");
            tally.failed_reads.fetch_add(1, Ordering::Relaxed);
        }
        let pay = json!({"amount_cents": 100 + i, "payment_ref": "p"});
        let r = http
            .post(format!("{write}/orders/{id}/pay"))
            .json(&pay)
            .send()
            .await
            .expect("pay");
        assert_eq!(r.status(), 200);
        let a: serde_json::Value = r.json().await.expect("answer");
        tally.commands.fetch_add(1, Ordering::Relaxed);
        let token = a["consistency_token"].as_str().expect("token").to_owned();
        let (s, o) = read_with(&http, read, &format!("/orders/{id}"), &token).await;
        tally.reads.fetch_add(1, Ordering::Relaxed);
        if (s, o["status"].as_str()) != (200, Some("paid")) {
            eprintln!("read of {id} after pay: {s} {o}");
            tally.failed_reads.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_token_read_sees_its_write_with_three_projector_processes_and_two_apis() {
    let cluster = Cluster::new().await;
    let (port_a, port_b) = (free_port(), free_port());
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let mut api_a = cluster.start("api-a", "api,relay", Some(port_a), &[]);
    let mut api_b = cluster.start("api-b", "api", Some(port_b), &[]);
    wait_healthy(&base_a, &mut api_a).await;
    wait_healthy(&base_b, &mut api_b).await;
    let mut projectors: Vec<_> = (1..=3)
        .map(|n| cluster.start(&format!("projector-{n}"), "projector", None, &[]))
        .collect();
    // All three hold partitions before the load starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !projectors
        .iter()
        .all(|p| p.log_text().contains("partitions assigned"))
    {
        assert!(
            Instant::now() < deadline,
            "the projectors never shared the partitions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            tokio::spawn(client(
                n,
                base_a.clone(),
                [base_a.clone(), base_b.clone()],
                tally.clone(),
            ))
        })
        .collect();
    for c in clients {
        c.await.expect("client");
    }
    let (commands, reads, failed) = (
        tally.commands.load(Ordering::Relaxed),
        tally.reads.load(Ordering::Relaxed),
        tally.failed_reads.load(Ordering::Relaxed),
    );
    eprintln!(
        "{commands} commands, {reads} token reads ({failed} failed) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(commands >= 1000, "only {commands} commands");
    assert_eq!(failed, 0, "token reads that did not see their write");
    let mut procs: Vec<&mut common::Proc> = vec![&mut api_a, &mut api_b];
    procs.extend(projectors.iter_mut());
    cluster.wait_converged(60, &mut procs).await;
}
