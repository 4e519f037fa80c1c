//! The inventory as a service of its own: one process runs it (`--role
//! inventory`, its own write DB, API, relay, topic and read model), the
//! order side runs apart (`--inventory-url`), and the two meet only on
//! Kafka and the inventory's HTTP API. Each is given a write-DB URL of the
//! other that cannot be opened: neither opens it. The inventory process is
//! killed -9 while the saga works: orders wait with stock `pending`, resolve
//! after its restart, and no order is reserved twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{free_port, wait_healthy, Cluster, Proc};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// A database URL nothing answers at: a process that opened it would fail.
const UNREACHABLE: &str = "postgres://nobody:nothing@127.0.0.1:9/none";

const SKU: &str = "widget";
const STOCK: i64 = 30;
const ORDERS: usize = 40;

struct Services {
    cluster: Cluster,
    inventory_db: String,
    inventory_port: u16,
    orders_base: String,
    inventory_base: String,
}

impl Services {
    fn inventory_args(&self) -> Vec<String> {
        [
            "--role",
            "inventory",
            "--inventory-database-url",
            &self.inventory_db,
            "--read-database-url",
            &self.inventory_db,
            "--database-url",
            UNREACHABLE,
            "--kafka-brokers",
            &self.cluster.brokers,
            "--kafka-topic",
            &self.cluster.topic,
            "--kafka-group",
            &format!("inv-{}", self.cluster.topic),
            "--kafka-session-timeout-ms",
            "3000",
            "--listen",
            &format!("127.0.0.1:{}", self.inventory_port),
            "--data-dir",
            &self
                .cluster
                .dir
                .path()
                .join("inventory")
                .display()
                .to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn start_inventory(&self, name: &str) -> Proc {
        Proc::serve(name, self.cluster.dir.path(), &self.inventory_args(), &[])
    }
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str) -> (u16, Value) {
    let res = reqwest::get(url).await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Every order's stock, as the order side reads it.
async fn stocks(base: &str, ids: &[String]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for id in ids {
        let (_, o) = get(&format!("{base}/orders/{id}")).await;
        out.insert(id.clone(), o["stock"].as_str().unwrap_or("none").to_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_services_apart_survive_the_inventory_killed_mid_saga_with_no_double_reservation() {
    let cluster = Cluster::new().await;
    let inventory_db = test_support::fresh_postgres_url().await;
    let (inventory_port, orders_port) = (free_port(), free_port());
    let s = Services {
        inventory_db,
        inventory_port,
        orders_base: format!("http://127.0.0.1:{orders_port}"),
        inventory_base: format!("http://127.0.0.1:{inventory_port}"),
        cluster,
    };
    let mut inventory = s.start_inventory("inventory");
    wait_healthy(&s.inventory_base, &mut inventory).await;
    let order_side = [
        ("ORDERS_INVENTORY_URL", s.inventory_base.clone()),
        ("INVENTORY_DATABASE_URL", UNREACHABLE.to_owned()),
    ];
    let mut orders = s.cluster.start(
        "orders",
        "api,relay,projector",
        Some(orders_port),
        &order_side,
    );
    wait_healthy(&s.orders_base, &mut orders).await;

    // Each serves its own routes only.
    let (status, _) = get(&format!("{}/inventory/{SKU}", s.orders_base)).await;
    assert_eq!(status, 404, "the order side served the inventory's route");
    let (status, _) = get(&format!("{}/orders", s.inventory_base)).await;
    assert_eq!(status, 404, "the inventory served the order side's route");

    let (status, added) = post(
        &format!("{}/inventory/{SKU}/stock", s.inventory_base),
        json!({ "quantity": STOCK }),
    )
    .await;
    assert_eq!(status, 200, "{added}");
    // The order side learns that the SKU is tracked from the inventory's
    // topic, into its own copy of the stock read model.
    let read = s.cluster.db().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inventory_stock WHERE sku = $1")
            .bind(SKU)
            .fetch_one(&read.pool)
            .await
            .unwrap_or(0);
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the order side never saw the stock:\n{}",
            orders.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Untracked for up to a second after a miss: wait it out once.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let create = |n: usize| {
        let base = s.orders_base.clone();
        async move {
            let (status, body) = post(
                &format!("{base}/orders"),
                json!({ "customer_id": format!("c{n}"),
                        "items": [{ "sku": SKU, "quantity": 1, "unit_price_cents": 100 }] }),
            )
            .await;
            assert_eq!(status, 201, "{body}");
            let id = |k: &str| body[k].as_str().unwrap().to_owned();
            (id("order_id"), id("command_id"))
        }
    };
    let mut ids = Vec::new();
    let (first, first_command) = create(0).await;
    ids.push(first);
    for n in 1..ORDERS / 2 {
        ids.push(create(n).await.0);
    }
    // Kill the inventory while the saga works on those; more orders come.
    inventory.kill9();
    let killed = Instant::now();
    for n in ORDERS / 2..ORDERS {
        ids.push(create(n).await.0);
    }
    // While it is down, the later orders wait: stock `pending`, none
    // cancelled for want of an answer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let down = stocks(&s.orders_base, &ids[ORDERS / 2..]).await;
    assert!(
        down.values().all(|st| st == "pending"),
        "with the inventory down: {down:?}"
    );
    let mut inventory = s.start_inventory("inventory-restarted");
    wait_healthy(&s.inventory_base, &mut inventory).await;
    let restarted = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let settled = loop {
        let st = stocks(&s.orders_base, &ids).await;
        if st.values().all(|v| v == "reserved" || v == "out_of_stock") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "orders never settled after the restart: {st:?}\n{}",
            orders.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "inventory down {:?}; every order settled {:?} after its restart",
        restarted - killed,
        restarted.elapsed()
    );
    let reserved: HashSet<&String> = settled
        .iter()
        .filter(|(_, v)| *v == "reserved")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(reserved.len() as i64, STOCK, "{settled:?}");

    // The inventory's own log: each reserved order reserved once, the
    // others never.
    let inv = cqrs_sql::Db::connect(&s.inventory_db, &cqrs_sql::DbOptions::default())
        .await
        .unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_type, payload::text FROM events WHERE aggregate_id = $1 ORDER BY version",
    )
    .bind(format!("stock:{SKU}"))
    .fetch_all(&inv.pool)
    .await
    .unwrap();
    let mut reservations: HashMap<String, usize> = HashMap::new();
    for (event_type, payload) in &rows {
        if event_type == "StockReserved" {
            let p: Value = serde_json::from_str(payload).unwrap();
            *reservations
                .entry(p["order_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    for id in &ids {
        let expected = usize::from(reserved.contains(id));
        assert_eq!(
            reservations.get(id).copied().unwrap_or(0),
            expected,
            "order {id}: reservations in the inventory's log"
        );
    }
    let (_, stock) = get(&format!("{}/inventory/{SKU}", s.inventory_base)).await;
    assert_eq!(stock["reserved"], STOCK, "{stock}");

    // A trace on the order side shows the inventory's reaction, found
    // through the inventory's API.
    let (_, trace) = get(&format!("{}/commands/{first_command}/trace", s.orders_base)).await;
    assert!(
        trace["reactions"]
            .to_string()
            .contains(&format!("stock:{SKU}")),
        "no inventory reaction in the trace: {trace}\n{}",
        orders.log_text()
    );
    drop(inventory);
    drop(orders);
}
