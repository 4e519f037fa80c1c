//! The order saga under kill -9: many concurrent clients order a SKU with
//! limited stock while the process running the saga is killed and restarted
//! several times (embedded: the whole server; PostgreSQL + Kafka: the
//! projector process, which runs the saga). Afterwards stock was never
//! negative, every order ended reserved or cancelled `out_of_stock`, and the
//! stock held equals exactly the reserved orders' quantities: no double
//! reservation, no lost release.

mod common;

use common::{free_port, random_count, wait_healthy, Cluster, Proc};
use cqrs_core::Aggregate;
use cqrs_sql::EventStore;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Units of `widget` in stock: about a third of what the load orders.
const STOCK: i64 = 60;

/// Orders accepted with a 201 and the units each asked for.
type Accepted = Arc<Mutex<HashMap<String, i64>>>;

/// Clients ordering 1-3 widgets until told to stop; every 201 is recorded.
fn drive(
    base: String,
    clients: usize,
    stop: watch::Receiver<bool>,
) -> (Accepted, Vec<tokio::task::JoinHandle<()>>) {
    let accepted: Accepted = Arc::default();
    let tasks = (0..clients)
        .map(|c| {
            let (accepted, base, stop) = (accepted.clone(), base.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut i = 0_i64;
                while !*stop.borrow() {
                    i += 1;
                    let quantity = 1 + (i + c as i64) % 3;
                    let body = json!({ "customer_id": format!("c{c}"),
                        "items": [{ "sku": "widget", "quantity": quantity, "unit_price_cents": 100 }] });
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
                    if let Some(id) = a["order_id"].as_str() {
                        accepted.lock().unwrap().insert(id.to_owned(), quantity);
                    }
                }
            })
        })
        .collect();
    (accepted, tasks)
}

async fn grows_by(accepted: &Accepted, more: usize, procs: &mut [&mut Proc]) {
    let count = || accepted.lock().unwrap().len();
    common::grows_by(count, more, 60, "orders", procs).await;
}

async fn add_stock(base: &str) {
    let r = reqwest::Client::new()
        .post(format!("{base}/inventory/widget/stock"))
        .json(&json!({ "quantity": STOCK }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Waits until the saga is through with every order of `accepted`; returns the
/// reserved ones with their units, and how many were cancelled out of stock.
async fn settled(
    base: &str,
    accepted: &HashMap<String, i64>,
    procs: &mut [&mut Proc],
) -> (BTreeMap<String, i64>, usize) {
    let http = reqwest::Client::new();
    let mut pending: Vec<String> = accepted.keys().cloned().collect();
    let (mut reserved, mut out_of_stock) = (BTreeMap::new(), 0);
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
            if o["stock"] == "reserved" && o["status"] != "cancelled" {
                reserved.insert(id.clone(), accepted[&id]);
            } else if o["status"] == "cancelled" {
                assert_eq!(o["cancel_reason"], "out_of_stock", "{o}");
                out_of_stock += 1;
            } else {
                still.push(id);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    (reserved, out_of_stock)
}

/// The inventory's own log, folded (what it holds for whom), and the log
/// as text for failure messages.
async fn stock_in(inventory: cqrs_sql::Db) -> (inventory::StockState, Vec<String>) {
    let store = cqrs_sql::SqlEventStore::open(inventory).await.unwrap();
    let envelopes = store.load(&inventory::Stock::id("widget")).await.unwrap();
    let log = envelopes
        .iter()
        .map(|e| format!("v{} {} {}", e.version, e.event_type, e.payload))
        .collect();
    let events: Vec<inventory::StockEvent> =
        envelopes.iter().map(|e| e.decode().unwrap()).collect();
    (inventory::Stock::fold(&events), log)
}

/// Every order the orders' store holds with the widgets it asked for: the
/// acknowledged ones and those whose answer a kill cut off.
async fn all_orders(write: cqrs_sql::Db, accepted: &Accepted) -> HashMap<String, i64> {
    let store = cqrs_sql::SqlEventStore::open(write).await.unwrap();
    let mut all = HashMap::new();
    for e in store.all_events().await.unwrap() {
        if e.event_type == "StockReservationRequested" {
            let units = e.payload["lines"][0]["quantity"].as_i64().unwrap();
            all.insert(e.aggregate_id.clone(), units);
        }
    }
    for (id, units) in accepted.lock().unwrap().iter() {
        assert_eq!(
            all.get(id),
            Some(units),
            "acknowledged order {id} is not in the store as answered"
        );
    }
    all
}

async fn assert_exact(
    base: &str,
    inventory: cqrs_sql::Db,
    reserved: &BTreeMap<String, i64>,
    out_of_stock: usize,
) {
    let (state, log) = stock_in(inventory).await;
    eprintln!(
        "{} orders reserved ({} units), {out_of_stock} cancelled out of stock",
        reserved.len(),
        reserved.values().sum::<i64>()
    );
    assert!(
        !reserved.is_empty() && out_of_stock > 0,
        "the load must exhaust the stock"
    );
    assert_eq!(state.on_hand, STOCK);
    assert!(state.available() >= 0, "negative stock: {state:?}");
    let held: BTreeMap<String, i64> = state.reservations.clone().into_iter().collect();
    if &held != reserved {
        let mut why = String::new();
        for id in held.keys().chain(reserved.keys()) {
            if held.get(id) != reserved.get(id) {
                let history: serde_json::Value =
                    reqwest::get(format!("{base}/orders/{id}/history"))
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap_or_default();
                why.push_str(&format!(
                    "\norder {id}: held {:?}, reserved per the order {:?}; its history: {history}",
                    held.get(id),
                    reserved.get(id)
                ));
            }
        }
        panic!("held stock differs from the reserved orders:{why}\nstock: {log:?}");
    }
    // The read model says the same once it caught up.
    let want = reserved.values().sum::<i64>();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v: serde_json::Value = reqwest::get(format!("{base}/inventory/widget"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or_default();
        if v["reserved"].as_i64() == Some(want) {
            assert_eq!(v["available"].as_i64(), Some(STOCK - want));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "inventory read model: {v}, want {want} reserved"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
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
    let (accepted, clients) = drive(base.clone(), 6, stop);
    for n in 1..=3 {
        grows_by(&accepted, random_count(10, 30), &mut [&mut server]).await;
        server.kill9();
        server = Proc::serve(&format!("embedded-{n}"), dir.path(), &args, &[]);
        wait_healthy(&base, &mut server).await;
    }
    grows_by(&accepted, 20, &mut [&mut server]).await;
    stop_tx.send(true).unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let write = cqrs_sql::Db::connect(
        &cqrs_sql::db::sqlite_url(&dir.path().join("data/write.db")),
        &cqrs_sql::DbOptions::default(),
    )
    .await
    .unwrap();
    let all = all_orders(write, &accepted).await;
    let (reserved, out_of_stock) = settled(&base, &all, &mut [&mut server]).await;
    let inventory = cqrs_sql::Db::connect(
        &cqrs_sql::db::sqlite_url(&dir.path().join("data/inventory.db")),
        &cqrs_sql::DbOptions::default(),
    )
    .await
    .unwrap();
    assert_exact(&base, inventory, &reserved, out_of_stock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_saga_process_over_kafka_reserves_nothing_twice_and_loses_no_release() {
    let cluster = Cluster::new().await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut api = cluster.start("api", "api", Some(port), &[]);
    wait_healthy(&base, &mut api).await;
    let mut relay = cluster.start("relay", "relay", None, &[]);
    let mut projector = cluster.start("projector-0", "projector", None, &[]);
    add_stock(&base).await;
    let (stop_tx, stop) = watch::channel(false);
    let (accepted, clients) = drive(base.clone(), 6, stop);
    for n in 1..=3 {
        grows_by(
            &accepted,
            random_count(10, 30),
            &mut [&mut api, &mut relay, &mut projector],
        )
        .await;
        projector.kill9();
        projector = cluster.start(&format!("projector-{n}"), "projector", None, &[]);
    }
    grows_by(&accepted, 20, &mut [&mut api, &mut relay, &mut projector]).await;
    stop_tx.send(true).unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let all = all_orders(cluster.db().await, &accepted).await;
    let (reserved, out_of_stock) =
        settled(&base, &all, &mut [&mut api, &mut relay, &mut projector]).await;
    let inventory_url = format!("{}_inventory", cluster.database_url);
    let inventory = cqrs_sql::Db::connect(&inventory_url, &cqrs_sql::DbOptions::default())
        .await
        .unwrap();
    assert_exact(&base, inventory, &reserved, out_of_stock).await;
}
