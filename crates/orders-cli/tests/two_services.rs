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
        self.start_inventory_with(name, &[])
    }

    fn start_inventory_with(&self, name: &str, env: &[(&str, String)]) -> Proc {
        Proc::serve(name, self.cluster.dir.path(), &self.inventory_args(), env)
    }

    async fn new() -> Services {
        let cluster = Cluster::new().await;
        let inventory_db = test_support::fresh_postgres_url().await;
        let inventory_port = free_port();
        Services {
            inventory_db,
            inventory_port,
            orders_base: String::new(),
            inventory_base: format!("http://127.0.0.1:{inventory_port}"),
            cluster,
        }
    }

    /// The order side's environment: the inventory over HTTP, and an
    /// inventory database it must never open.
    fn order_side(&self, extra: &[(&str, String)]) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("ORDERS_INVENTORY_URL", self.inventory_base.clone()),
            ("INVENTORY_DATABASE_URL", UNREACHABLE.to_owned()),
        ];
        for (k, v) in extra {
            let k: &'static str = match *k {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_SERVICE_NAME" => "OTEL_SERVICE_NAME",
                "OTEL_BSP_SCHEDULE_DELAY" => "OTEL_BSP_SCHEDULE_DELAY",
                other => panic!("unexpected variable {other}"),
            };
            env.push((k, v.clone()));
        }
        env
    }

    /// Adds stock at the inventory, and waits until the order side's copy
    /// of its read model has the SKU (and any earlier miss expired).
    async fn stock(&self, orders: &Proc, quantity: i64) {
        let (status, added) = post(
            &format!("{}/inventory/{SKU}/stock", self.inventory_base),
            json!({ "quantity": quantity }),
        )
        .await;
        assert_eq!(status, 200, "{added}");
        let read = self.cluster.db().await;
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
    let mut s = Services::new().await;
    let orders_port = free_port();
    s.orders_base = format!("http://127.0.0.1:{orders_port}");
    let mut inventory = s.start_inventory("inventory");
    wait_healthy(&s.inventory_base, &mut inventory).await;
    let order_side = s.order_side(&[]);
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

    s.stock(&orders, STOCK).await;

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
    // The order side's console knows both services: itself, and the
    // inventory at its URL, asked on its /readyz.
    let inventory_health = |h: Value| {
        h.as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == "inventory")
            .cloned()
            .unwrap()
    };
    let (status, health) = get(&format!("{}/ops/health", s.orders_base)).await;
    assert_eq!(status, 200, "{health}");
    let inv = inventory_health(health.clone());
    assert_eq!(
        (inv["location"].as_str(), inv["ready"].as_bool()),
        (Some(s.inventory_base.as_str()), Some(true)),
        "{health}"
    );
    assert_eq!(inv["checks"]["write_db"], "ok", "{health}");
    assert_eq!(health[0]["location"], "this process", "{health}");
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
    let (_, health) = get(&format!("{}/ops/health", s.orders_base)).await;
    let inv = inventory_health(health.clone());
    assert_eq!(inv["ready"], false, "{health}");
    assert!(
        inv["checks"]["reachable"]
            .as_str()
            .is_some_and(|r| r.contains("/readyz")),
        "{health}"
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

/// The spans of `trace_id` in Jaeger: (service, operation) pairs.
async fn jaeger_spans(query: &str, trace_id: &str) -> Vec<(String, String)> {
    let (status, body) = get(&format!("{query}/api/traces/{trace_id}")).await;
    if status != 200 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for t in body["data"].as_array().into_iter().flatten() {
        for span in t["spans"].as_array().into_iter().flatten() {
            let pid = span["processID"].as_str().unwrap_or_default();
            let service = t["processes"][pid]["serviceName"]
                .as_str()
                .unwrap_or_default();
            out.push((
                service.to_owned(),
                span["operationName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
    }
    out
}

/// Needs Jaeger (`scripts/services start jaeger`): scripts/test runs it
/// after the main suite, once Jaeger is built.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn otel_one_commands_trace_in_jaeger_has_spans_from_every_process_it_crossed() {
    let (otlp, query) = test_support::jaeger();
    let otel = |name: &str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.clone()),
            ("OTEL_SERVICE_NAME", name.to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
        ]
    };
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (api_name, projector_name, inventory_name) = (
        format!("orders-api-{run}"),
        format!("orders-projector-{run}"),
        format!("inventory-{run}"),
    );
    let mut s = Services::new().await;
    let orders_port = free_port();
    s.orders_base = format!("http://127.0.0.1:{orders_port}");
    let mut inventory = s.start_inventory_with("inventory", &otel(&inventory_name));
    wait_healthy(&s.inventory_base, &mut inventory).await;
    let mut api = s.cluster.start(
        "api",
        "api,relay",
        Some(orders_port),
        &s.order_side(&otel(&api_name)),
    );
    wait_healthy(&s.orders_base, &mut api).await;
    let projector = s.cluster.start(
        "projector",
        "projector",
        None,
        &s.order_side(&otel(&projector_name)),
    );
    s.stock(&projector, 5).await;

    // The caller's own trace: the command continues it.
    let caller_trace = uuid::Uuid::new_v4().simple().to_string();
    let res = reqwest::Client::new()
        .post(format!("{}/orders", s.orders_base))
        .header(
            "traceparent",
            format!("00-{caller_trace}-00f067aa0ba902b7-01"),
        )
        .json(&json!({ "customer_id": "c1",
                       "items": [{ "sku": SKU, "quantity": 1, "unit_price_cents": 100 }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let (id, command) = (
        created["order_id"].as_str().unwrap().to_owned(),
        created["command_id"].as_str().unwrap().to_owned(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, o) = get(&format!("{}/orders/{id}", s.orders_base)).await;
        if o["stock"] == "reserved" {
            break;
        }
        assert!(Instant::now() < deadline, "never reserved: {o}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, trace) = get(&format!("{}/commands/{command}/trace", s.orders_base)).await;
    assert_eq!(trace["trace_id"], caller_trace.as_str(), "{trace}");

    // Every process it crossed exported its part of that one trace.
    let wanted = [
        (api_name.as_str(), "POST /orders"),
        (api_name.as_str(), "publish OrderCreated"),
        (
            projector_name.as_str(),
            "orders_read_model applies OrderCreated",
        ),
        (
            projector_name.as_str(),
            "order_saga reacts to StockReservationRequested",
        ),
        (
            inventory_name.as_str(),
            "POST /inventory/widget/reservations",
        ),
        (inventory_name.as_str(), "publish StockReserved"),
        (
            inventory_name.as_str(),
            "inventory_read_model applies StockReserved",
        ),
        (
            projector_name.as_str(),
            "inventory_read_model applies StockReserved",
        ),
        (api_name.as_str(), "publish StockReserved"),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = jaeger_spans(&query, &caller_trace).await;
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(svc, op)| !spans.iter().any(|(s, o)| s == svc && o == op))
            .collect();
        if missing.is_empty() {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "missing spans {missing:?} in Jaeger's trace {caller_trace}: {spans:?}\nDEBUG {}\n{}",
            api.log_text()
                .lines()
                .filter(|l| l.contains("DEBUG"))
                .collect::<Vec<_>>()
                .join("\n"),
            projector
                .log_text()
                .lines()
                .filter(|l| l.contains("DEBUG"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let services: HashSet<&str> = spans.iter().map(|(s, _)| s.as_str()).collect();
    eprintln!(
        "trace {caller_trace}: {} spans from {} processes: {spans:?}",
        spans.len(),
        services.len()
    );
    drop(projector);
    drop(api);
    drop(inventory);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_export_a_command_keeps_the_callers_trace_id_or_gets_one() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let args = [
        "--data-dir".to_owned(),
        dir.path().join("data").display().to_string(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
    ];
    let mut server = Proc::serve("embedded", dir.path(), &args, &[]);
    wait_healthy(&base, &mut server).await;
    let body = json!({ "customer_id": "c1",
                       "items": [{ "sku": "x", "quantity": 1, "unit_price_cents": 100 }] });
    let theirs = "4bf92f3577b34da6a3ce929d0e0e4736";
    for (traceparent, expected) in [
        (
            Some(format!("00-{theirs}-00f067aa0ba902b7-01")),
            Some(theirs),
        ),
        (Some("not-a-traceparent".to_owned()), None),
        (None, None),
    ] {
        let mut req = reqwest::Client::new()
            .post(format!("{base}/orders"))
            .json(&body);
        if let Some(tp) = &traceparent {
            req = req.header("traceparent", tp);
        }
        let created: Value = req.send().await.unwrap().json().await.unwrap();
        let command = created["command_id"].as_str().unwrap();
        let (_, trace) = get(&format!("{base}/commands/{command}/trace")).await;
        let got = trace["trace_id"].as_str().unwrap_or_default();
        match expected {
            Some(id) => assert_eq!(got, id, "{trace}"),
            // A new trace: a W3C trace id of its own.
            None => assert!(
                got.len() == 32 && got != theirs && got.bytes().all(|b| b.is_ascii_hexdigit()),
                "{trace}"
            ),
        }
    }
    drop(server);
}
