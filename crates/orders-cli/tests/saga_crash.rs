//! The order saga under kill -9: many concurrent clients order two SKUs
//! with limited stock (cancelling some orders at once, and some once they
//! are reserved) while the process running the saga is killed and
//! restarted several times, the last time right after reserved orders were
//! cancelled (embedded: the whole server; PostgreSQL + Kafka: one of two
//! projector processes, which run the saga, so the other takes its
//! partitions over).
//! Afterwards no SKU's stock was negative after any of its events, every
//! order ended reserved or cancelled (`out_of_stock`, or by its client), and
//! the stock each SKU holds equals exactly the quantities of the reserved
//! orders, order by order: no double reservation, and no lost release
//! (after an out-of-stock second line, and after a client's cancel).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{free_port, random_count, wait_healthy, Cluster, Proc};
use cqrs_core::Aggregate;
use cqrs_sql::EventStore;
use serde_json::json;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Units in stock per SKU. An order reserves its lines in SKU order, so a
/// gadget is reserved before a widget; widgets (in every order) run out
/// first, and an order whose widget line fails after its gadget was
/// reserved must give the gadget back.
const STOCK: [(&str, i64); 2] = [("gadget", 60), ("widget", 60)];

/// The reason clients cancel with.
const CLIENT_REASON: &str = "changed my mind";

/// Lines per order: (SKU, units).
type Lines = Vec<(String, i64)>;

/// What the clients were told: orders accepted with a 201 and their lines,
/// and the ones whose cancel the client saw succeed.
#[derive(Clone, Default)]
struct Told {
    accepted: Arc<Mutex<HashMap<String, Lines>>>,
    cancelled: Arc<Mutex<HashSet<String>>>,
}

impl Told {
    /// Accepted orders not cancelled by their client.
    fn not_cancelled(&self) -> Vec<String> {
        let accepted = self.accepted.lock().unwrap();
        let cancelled = self.cancelled.lock().unwrap();
        accepted
            .keys()
            .filter(|id| !cancelled.contains(*id))
            .cloned()
            .collect()
    }
}

/// Whether the order reads back reserved and not cancelled (None: the
/// server did not answer).
async fn reads_reserved(http: &reqwest::Client, base: &str, id: &str) -> Option<bool> {
    let r = http.get(format!("{base}/orders/{id}")).send().await.ok()?;
    let o: serde_json::Value = r.json().await.unwrap_or_default();
    Some(o["stock"] == "reserved" && o["status"] != "cancelled")
}

/// The lines of a client's `i`th order, in SKU order (as the order keeps
/// them): 1-3 widgets, and every other order 1-2 gadgets too.
fn lines_of(c: usize, i: i64) -> Lines {
    let mut lines = vec![("widget".to_owned(), 1 + (i + c as i64) % 3)];
    if i % 2 == 0 {
        lines.insert(0, ("gadget".to_owned(), 1 + (c as i64) % 2));
    }
    lines
}

/// Clients ordering until told to stop, each cancelling one in ten of its
/// orders at once, and a canceller of reserved orders beside them; every
/// 201 and every cancel answered 200 is recorded.
fn drive(
    base: String,
    clients: usize,
    stop: watch::Receiver<bool>,
) -> (Told, Vec<tokio::task::JoinHandle<()>>) {
    let told = Told::default();
    let tasks = (0..clients)
        .map(|c| {
            let (told, base, stop) = (told.clone(), base.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut i = 0_i64;
                while !*stop.borrow() {
                    i += 1;
                    let lines = lines_of(c, i);
                    let items: Vec<_> = lines
                        .iter()
                        .map(|(sku, q)| json!({ "sku": sku, "quantity": q, "unit_price_cents": 100 }))
                        .collect();
                    let body = json!({ "customer_id": format!("c{c}"), "items": items });
                    let Ok(r) = http.post(format!("{base}/orders")).json(&body).send().await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    if r.status() != 201 {
                        continue;
                    }
                    let Ok(a) = r.json::<serde_json::Value>().await else {
                        continue;
                    };
                    let Some(id) = a["order_id"].as_str() else {
                        continue;
                    };
                    told.accepted.lock().unwrap().insert(id.to_owned(), lines);
                    // One in ten is cancelled at once, racing the saga.
                    if i % 10 == 0 {
                        cancel(&http, &base, id, &told).await;
                    }
                }
            })
        })
        .collect::<Vec<_>>();
    let mut tasks = tasks;
    tasks.push(cancel_reserved(base, told.clone(), stop));
    (told, tasks)
}

/// Cancels `id` as its client; a cancel answered 200 is recorded (true).
async fn cancel(http: &reqwest::Client, base: &str, id: &str, told: &Told) -> bool {
    let answer = http
        .post(format!("{base}/orders/{id}/cancel"))
        .json(&json!({ "reason": CLIENT_REASON }))
        .send()
        .await;
    let done = answer.is_ok_and(|r| r.status() == 200);
    if done {
        told.cancelled.lock().unwrap().insert(id.to_owned());
    }
    done
}

/// Until told to stop, every 50 ms: cancel one accepted order that reads
/// back reserved, so that its stock goes back (and later orders can have
/// it) while the saga's process is being killed.
fn cancel_reserved(
    base: String,
    told: Told,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        while !*stop.borrow() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            for id in told.not_cancelled().iter().take(40) {
                match reads_reserved(&http, &base, id).await {
                    None => break,
                    Some(true) => {
                        cancel(&http, &base, id, &told).await;
                        break;
                    }
                    Some(false) => {}
                }
            }
        }
    })
}

/// Cancels up to `n` accepted orders once they read back reserved (waiting
/// for the saga as long as needed); how many it cancelled.
async fn cancel_reserved_now(base: &str, told: &Told, n: usize, procs: &mut [&mut Proc]) -> usize {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done = 0;
    while done < n {
        assert!(
            Instant::now() < deadline,
            "no order read back reserved\n{}",
            common::logs_of(procs)
        );
        for id in told.not_cancelled() {
            if reads_reserved(&http, base, &id).await == Some(true)
                && cancel(&http, base, &id, told).await
            {
                done += 1;
                if done == n {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    done
}

async fn grows_by(told: &Told, more: usize, procs: &mut [&mut Proc]) {
    let count = || told.accepted.lock().unwrap().len();
    common::grows_by(count, more, 60, "orders", procs).await;
}

async fn add_stock(base: &str) {
    for (sku, units) in STOCK {
        let r = reqwest::Client::new()
            .post(format!("{base}/inventory/{sku}/stock"))
            .json(&json!({ "quantity": units }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// How the orders ended.
#[derive(Debug, Default)]
struct Ends {
    /// Reserved (and not cancelled), with their lines.
    reserved: BTreeMap<String, Lines>,
    out_of_stock: usize,
    by_client: usize,
}

/// Waits until every order of `all` is reserved or cancelled, and checks
/// the reason of each cancel.
async fn settled(
    base: &str,
    all: &HashMap<String, Lines>,
    told: &Told,
    procs: &mut [&mut Proc],
) -> Ends {
    let http = reqwest::Client::new();
    let cancelled_by_client = told.cancelled.lock().unwrap().clone();
    let mut pending: Vec<String> = all.keys().cloned().collect();
    let mut ends = Ends::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} orders never settled, e.g. {:?}\n{}",
            pending.len(),
            pending.first(),
            common::logs_of(procs)
        );
        let mut still = Vec::new();
        for id in pending {
            let Ok(r) = http.get(format!("{base}/orders/{id}")).send().await else {
                still.push(id);
                continue;
            };
            let o: serde_json::Value = r.json().await.unwrap_or_default();
            if o["status"] == "cancelled" {
                if cancelled_by_client.contains(&id) {
                    assert_eq!(o["cancel_reason"], CLIENT_REASON, "{o}");
                    ends.by_client += 1;
                } else {
                    // A cancel whose answer a kill cut off is the client's too.
                    assert!(
                        o["cancel_reason"] == "out_of_stock" || o["cancel_reason"] == CLIENT_REASON,
                        "{o}"
                    );
                    if o["cancel_reason"] == "out_of_stock" {
                        ends.out_of_stock += 1;
                    } else {
                        ends.by_client += 1;
                    }
                }
            } else if cancelled_by_client.contains(&id) {
                // Its cancel was answered 2xx: the read model has yet to
                // show it (a projector may have just been killed).
                still.push(id);
            } else if o["stock"] == "reserved" {
                ends.reserved.insert(id.clone(), all[&id].clone());
            } else {
                still.push(id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    ends
}

/// A SKU's own log folded event by event, checking that no event left its
/// stock negative; the state, and the log as text for failure messages.
async fn stock_in(
    store: &cqrs_sql::SqlEventStore,
    sku: &str,
) -> (inventory::StockState, Vec<String>) {
    let envelopes = store.load(&inventory::Stock::id(sku)).await.unwrap();
    let mut log = Vec::new();
    let mut state = inventory::StockState::default();
    for e in &envelopes {
        log.push(format!("v{} {} {}", e.version, e.event_type, e.payload));
        let event: inventory::StockEvent = e.decode().unwrap();
        state = inventory::Stock::evolve(state, &event);
        assert!(
            state.available() >= 0,
            "{sku}: negative stock after v{}: {state:?}\n{log:?}",
            e.version
        );
    }
    (state, log)
}

/// Every order the orders' store holds with its tracked lines: the
/// acknowledged ones and those whose answer a kill cut off.
async fn all_orders(write: cqrs_sql::Db, told: &Told) -> HashMap<String, Lines> {
    let store = cqrs_sql::SqlEventStore::open(write).await.unwrap();
    let mut all = HashMap::new();
    for e in store.all_events().await.unwrap() {
        if e.event_type == "StockReservationRequested" {
            let lines = e.payload["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    (
                        l["sku"].as_str().unwrap().to_owned(),
                        l["quantity"].as_i64().unwrap(),
                    )
                })
                .collect();
            all.insert(e.aggregate_id.clone(), lines);
        }
    }
    for (id, lines) in told.accepted.lock().unwrap().iter() {
        assert_eq!(
            all.get(id),
            Some(lines),
            "acknowledged order {id} is not in the store as answered"
        );
    }
    all
}

/// What each SKU should hold: the reserved orders' units, order by order.
fn wanted(ends: &Ends, sku: &str) -> BTreeMap<String, i64> {
    ends.reserved
        .iter()
        .filter_map(|(id, lines)| {
            let units: i64 = lines.iter().filter(|(s, _)| s == sku).map(|(_, q)| q).sum();
            (units > 0).then(|| (id.clone(), units))
        })
        .collect()
}

/// Each SKU holds exactly what the reserved orders asked of it, once the
/// saga has released what the last cancels gave back; and its read model
/// says the same.
async fn assert_exact(base: &str, inventory: cqrs_sql::Db, ends: &Ends) {
    eprintln!(
        "{} orders reserved, {} cancelled out of stock, {} by their client",
        ends.reserved.len(),
        ends.out_of_stock,
        ends.by_client
    );
    assert!(
        !ends.reserved.is_empty() && ends.out_of_stock > 0 && ends.by_client > 0,
        "the load must exhaust the stock and cancel some orders: {ends:?}"
    );
    let store = cqrs_sql::SqlEventStore::open(inventory).await.unwrap();
    for (sku, units) in STOCK {
        let want = wanted(ends, sku);
        // A release after a client's cancel may still be on its way.
        let deadline = Instant::now() + Duration::from_secs(30);
        let (state, log) = loop {
            let (state, log) = stock_in(&store, sku).await;
            if state.reservations == want || Instant::now() > deadline {
                break (state, log);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(state.on_hand, units);
        let releases = log
            .iter()
            .filter(|e| e.contains("ReservationReleased"))
            .count();
        eprintln!(
            "{sku}: {} reservations held, {releases} released",
            want.len()
        );
        assert!(
            releases > 0,
            "no {sku} was given back: the run exercised no release"
        );
        if state.reservations != want {
            let mut why = String::new();
            for id in state.reservations.keys().chain(want.keys()) {
                if state.reservations.get(id) != want.get(id) {
                    let history: serde_json::Value =
                        reqwest::get(format!("{base}/orders/{id}/history"))
                            .await
                            .unwrap()
                            .json()
                            .await
                            .unwrap_or_default();
                    why.push_str(&format!(
                        "\norder {id}: held {:?}, reserved per the order {:?}; its history: {history}",
                        state.reservations.get(id),
                        want.get(id)
                    ));
                }
            }
            panic!("{sku}: held stock differs from the reserved orders:{why}\nstock: {log:?}");
        }
        let total = want.values().sum::<i64>();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v: serde_json::Value = reqwest::get(format!("{base}/inventory/{sku}"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or_default();
            if v["reserved"].as_i64() == Some(total) {
                assert_eq!(v["available"].as_i64(), Some(units - total));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{sku} read model: {v}, want {total} reserved"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_embedded_server_mid_saga_reserves_nothing_twice_and_loses_no_release() {
    let dir = tempfile::tempdir().unwrap();
    let port = test_support::stable_port();
    let base = format!("http://127.0.0.1:{port}");
    let args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
    ];
    let mut server = Proc::serve("embedded-0", dir.path(), &args, &[]);
    wait_healthy(&base, &mut server).await;
    add_stock(&base).await;
    let (stop_tx, stop) = watch::channel(false);
    let (told, clients) = drive(base.clone(), 6, stop);
    for n in 1..=3 {
        grows_by(&told, random_count(10, 30), &mut [&mut server]).await;
        server.kill9();
        server = Proc::serve(&format!("embedded-{n}"), dir.path(), &args, &[]);
        wait_healthy(&base, &mut server).await;
    }
    grows_by(&told, 20, &mut [&mut server]).await;
    stop_tx.send(true).unwrap();
    for c in clients {
        c.await.unwrap();
    }
    // Reserved orders cancelled, and the saga killed right after: their
    // releases must survive it.
    cancel_reserved_now(&base, &told, 5, &mut [&mut server]).await;
    server.kill9();
    server = Proc::serve("embedded-last", dir.path(), &args, &[]);
    wait_healthy(&base, &mut server).await;
    let write = cqrs_sql::Db::connect(
        &cqrs_sql::db::sqlite_url(&dir.path().join("data/write.db")),
        &cqrs_sql::DbOptions::default(),
    )
    .await
    .unwrap();
    let all = all_orders(write, &told).await;
    let ends = settled(&base, &all, &told, &mut [&mut server]).await;
    let inventory = cqrs_sql::Db::connect(
        &cqrs_sql::db::sqlite_url(&dir.path().join("data/inventory.db")),
        &cqrs_sql::DbOptions::default(),
    )
    .await
    .unwrap();
    assert_exact(&base, inventory, &ends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_saga_process_over_kafka_reserves_nothing_twice_and_loses_no_release() {
    let cluster = Cluster::new().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = cluster.start("api", "api", Some(port), &[]);
    wait_healthy(&base, &mut api).await;
    let mut relay = cluster.start("relay", "relay", None, &[]);
    // Two saga processes share the orders' partitions; each kill hands the
    // killed one's partitions (and orders mid-saga) to the other.
    let mut projectors = [
        cluster.start("projector-a0", "projector", None, &[]),
        cluster.start("projector-b0", "projector", None, &[]),
    ];
    add_stock(&base).await;
    let (stop_tx, stop) = watch::channel(false);
    let (told, clients) = drive(base.clone(), 6, stop);
    for n in 1..=4 {
        let [a, b] = &mut projectors;
        grows_by(
            &told,
            random_count(10, 30),
            &mut [&mut api, &mut relay, a, b],
        )
        .await;
        let which = n % 2;
        projectors[which].kill9();
        let name = format!("projector-{}{n}", ["a", "b"][which]);
        projectors[which] = cluster.start(&name, "projector", None, &[]);
    }
    let [a, b] = &mut projectors;
    grows_by(&told, 20, &mut [&mut api, &mut relay, a, b]).await;
    stop_tx.send(true).unwrap();
    for c in clients {
        c.await.unwrap();
    }
    // Reserved orders cancelled, and a saga process killed right after:
    // their releases must survive it.
    cancel_reserved_now(&base, &told, 5, &mut [&mut api, &mut relay, a, b]).await;
    a.kill9();
    *a = cluster.start("projector-a-last", "projector", None, &[]);
    let all = all_orders(cluster.db().await, &told).await;
    let ends = settled(&base, &all, &told, &mut [&mut api, &mut relay, a, b]).await;
    let inventory_url = format!("{}_inventory", cluster.database_url);
    let inventory = cqrs_sql::Db::connect(&inventory_url, &cqrs_sql::DbOptions::default())
        .await
        .unwrap();
    assert_exact(&base, inventory, &ends).await;
}
