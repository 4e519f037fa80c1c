//! The read cache never answers below what a process has already answered
//! or a token asks for: two real processes on one PostgreSQL database (one
//! runs the projector, the other only the API and follows the first through
//! NOTIFY), a random interleaving of commands and reads through either.
//! Every read with a token sees its write; every read, with a token or
//! without, is at least as new as the last answer the same process gave
//! for that order, and as every write before one the process answered a
//! token read for. (A token read leaves the process knowing every change
//! the read DB had by then: answered from the database, it catches the
//! follower up first. The log is projected in order here.) The cache is
//! seen to answer (its hit counter moves).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{free_port, wait_healthy, Proc};
use serde_json::{json, Value};
use std::collections::HashMap;

const ORDERS: usize = 12;
const STEPS: usize = 400;

/// xorshift64*: a reproducible sequence from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// An order's next command: (path suffix, body), or `None` when delivered.
fn next_command(status: &str, total: i64) -> Option<(&'static str, Value)> {
    match status {
        "created" => Some(("pay", json!({ "amount_cents": total, "payment_ref": "p" }))),
        "paid" => Some(("ship", json!({ "carrier": "ups", "tracking_number": "1Z" }))),
        "shipped" => Some(("deliver", json!({}))),
        _ => None,
    }
}

async fn get(http: &reqwest::Client, base: &str, id: &str, token: Option<&str>) -> Value {
    let mut req = http.get(format!("{base}/orders/{id}"));
    if let Some(t) = token {
        req = req
            .header("x-consistency-token", t)
            .query(&[("wait_ms", "10000")]);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200, "GET {id} through {base}");
    res.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_answers_below_a_token_or_below_what_it_answered_before() {
    let dir = tempfile::tempdir().unwrap();
    let db = test_support::fresh_postgres_url().await;
    let start = |name: &str, roles: &str| {
        let port = free_port();
        let args: Vec<String> = [
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--database-url".to_owned(),
            db.clone(),
            "--role".to_owned(),
            roles.to_owned(),
            "--data-dir".to_owned(),
            dir.path().join(name).display().to_string(),
        ]
        .into();
        (
            Proc::serve(name, dir.path(), &args, &[]),
            format!("http://127.0.0.1:{port}"),
        )
    };
    let (mut a, base_a) = start("all", "api,projector");
    wait_healthy(&base_a, &mut a).await;
    let (mut b, base_b) = start("api-only", "api");
    wait_healthy(&base_b, &mut b).await;
    let bases = [base_a.clone(), base_b.clone()];
    let http = reqwest::Client::new();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    // Per order: its id, status and total; per process and order: the
    // newest version it answered.
    let mut orders: Vec<(String, String, i64)> = Vec::new();
    let mut answered: [HashMap<String, i64>; 2] = [HashMap::new(), HashMap::new()];
    // Per order, its writes as (log position, version); per process, the
    // furthest log position a token read through it has shown it passed.
    let mut writes: HashMap<String, Vec<(i64, i64)>> = HashMap::new();
    let mut passed = [0i64; 2];
    let check = |answered: &mut [HashMap<String, i64>; 2],
                 p: usize,
                 id: &str,
                 order: &Value,
                 at_least: i64| {
        let v = order["version"].as_i64().unwrap();
        let floor = answered[p].get(id).copied().unwrap_or(0).max(at_least);
        assert!(
            v >= floor,
            "seed {seed}: process {p} answered {id} at v{v}, below v{floor}"
        );
        answered[p].insert(id.to_owned(), v);
    };
    for step in 0..STEPS {
        // A command through either process.
        let w = rng.below(2);
        let answer: Value = if orders.len() < ORDERS && (orders.is_empty() || rng.below(3) == 0) {
            let total = 100 + step as i64;
            let body = json!({ "customer_id": format!("c{}", rng.below(4)),
                "items": [{ "sku": "s", "quantity": 1, "unit_price_cents": total }] });
            let res = http
                .post(format!("{}/orders", bases[w]))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
            let a: Value = res.json().await.unwrap();
            orders.push((
                a["order_id"].as_str().unwrap().to_owned(),
                "created".into(),
                total,
            ));
            a
        } else {
            let i = rng.below(orders.len());
            let (id, status, total) = orders[i].clone();
            let Some((verb, body)) = next_command(&status, total) else {
                continue;
            };
            let res = http
                .post(format!("{}/orders/{id}/{verb}", bases[w]))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{verb} {id}");
            orders[i].1 = match verb {
                "pay" => "paid",
                "ship" => "shipped",
                _ => "delivered",
            }
            .into();
            res.json().await.unwrap()
        };
        let id = answer["order_id"].as_str().unwrap().to_owned();
        let version = answer["version"].as_i64().unwrap();
        let token = answer["consistency_token"].as_str().unwrap();
        // v1.<position>.<version>.<aggregate id>
        let position: i64 = token.split('.').nth(1).unwrap().parse().unwrap();
        writes
            .entry(id.clone())
            .or_default()
            .push((position, version));
        // Half the writes are read back with their token, through either.
        if rng.below(2) == 0 {
            let p = rng.below(2);
            let order = get(&http, &bases[p], &id, Some(token)).await;
            check(&mut answered, p, &id, &order, version);
            passed[p] = passed[p].max(position);
        }
        // And reads without a token, of any order, through either.
        for _ in 0..=rng.below(3) {
            let p = rng.below(2);
            let (id, _, _) = &orders[rng.below(orders.len())];
            let res = http
                .get(format!("{}/orders/{id}", bases[p]))
                .send()
                .await
                .unwrap();
            if res.status() == 404 {
                // Not projected yet: only before this process answered it.
                assert!(!answered[p].contains_key(id), "seed {seed}: {id} vanished");
                continue;
            }
            let order: Value = res.json().await.unwrap();
            let seen = writes[id]
                .iter()
                .filter(|(at, _)| *at <= passed[p])
                .map(|(_, v)| *v)
                .max()
                .unwrap_or(0);
            check(&mut answered, p, id, &order, seen);
        }
    }
    // The cache answered in both processes.
    for base in &bases {
        let metrics = common::metrics_text(&http, base).await;
        let hits: f64 = metrics
            .lines()
            .find(|l| {
                l.starts_with("cqrs_read_cache_total")
                    && l.contains("cache=\"orders\"")
                    && l.contains("outcome=\"hit\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        assert!(hits > 0.0, "{base}: no cache hits\n{metrics}");
    }
    a.terminate();
    b.terminate();
}
