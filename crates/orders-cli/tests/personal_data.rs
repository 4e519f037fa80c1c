//! Personal data on PostgreSQL and Kafka, through the real binary: shipping
//! details sealed in the write DB (pg_dump), on the topic (kcat) and absent
//! from the logs; shown only to those who may see them; erased on request
//! for good (answers, read DB, `orders replay`); the master key rotated
//! under a running server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{free_port, wait_healthy, Cluster};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SECRET: &str = "personal-data-test-secret-0123456789";

fn token(sub: &str, role: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orders"))
        .args(["token", "--sub", sub, "--role", role])
        .env("ORDERS_JWT_HS256_SECRET", SECRET)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn call(method: &str, url: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method.parse().unwrap(), url)
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `orders` with `args` (a tool), its output.
fn orders(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_orders"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "orders {args:?}: {text}");
    text
}

/// Everything the database holds, as `pg_dump` writes it.
fn pg_dump(url: &str) -> String {
    let out = std::process::Command::new("pg_dump")
        .args(["--data-only", "--dbname", url])
        .output()
        .expect("pg_dump is installed (Debian's postgresql-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every record of `topic`, keys, headers and values, as `kcat` reads them.
fn kcat(brokers: &str, topic: &str) -> String {
    let out = std::process::Command::new("kcat")
        .args([
            "-C",
            "-b",
            brokers,
            "-t",
            topic,
            "-e",
            "-q",
            "-f",
            "%k %h %s\n",
        ])
        .output()
        .expect("kcat is installed (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn until(url: &str, token: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, body) = call("GET", url, token, None).await;
        if s == 200 && done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {s} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shipping_details_are_sealed_everywhere_shown_to_few_and_erased_for_good() {
    let c = Cluster::new().await;
    // One master key for every process of the deployment (64 hex digits).
    let key_file = c.dir.path().join("master.key");
    let hex = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(&key_file, hex).unwrap();
    let key = key_file.display().to_string();
    let env = [
        ("ORDERS_JWT_HS256_SECRET", SECRET.to_owned()),
        ("ORDERS_MASTER_KEY_FILE", key.clone()),
        ("RUST_LOG", "debug,rdkafka=info".to_owned()),
    ];
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = c.start("all", "api,relay,projector", Some(port), &env);
    wait_healthy(&base, &mut server).await;
    let (alice, bob) = (token("alice", "customer"), token("bob", "customer"));
    let (payments, warehouse, ops) = (
        token("pay", "payments"),
        token("wh", "warehouse"),
        token("ops", "operator"),
    );

    let marker = format!("pdmark{}", uuid::Uuid::new_v4().simple());
    let shipping = json!({ "name": format!("Alice {marker}"), "address": format!("{marker} Street 1\nLondon"),
        "email": format!("{marker}@example.org") });
    let (s, created) = call("POST", &format!("{base}/orders"), &alice, Some(json!({ "customer_id": "alice",
        "items": [{ "sku": "lamp", "quantity": 1, "unit_price_cents": 4200 }], "shipping": shipping }))).await;
    assert_eq!(s, 201, "{created}");
    let id = created["order_id"].as_str().unwrap().to_owned();
    let order = format!("{base}/orders/{id}");
    let seen = until(
        &format!(
            "{order}?consistent_with={}",
            created["consistency_token"].as_str().unwrap()
        ),
        &alice,
        "alice reads her order",
        |_| true,
    )
    .await;
    assert_eq!(seen["shipping"], shipping, "{seen}");

    // Who sees it: the customer and the warehouse; payments do not; another
    // customer does not even see the order. Lists: staff only.
    let (_, w) = call("GET", &order, &warehouse, None).await;
    assert_eq!(w["shipping"], shipping);
    let (s, p) = call("GET", &order, &payments, None).await;
    assert_eq!(s, 200);
    assert!(p.get("shipping").is_none(), "{p}");
    assert_eq!(call("GET", &order, &bob, None).await.0, 404);
    let (_, own_list) = call(
        "GET",
        &format!("{base}/orders?customer_id=alice"),
        &alice,
        None,
    )
    .await;
    assert!(
        own_list["orders"][0].get("shipping").is_none(),
        "{own_list}"
    );
    let (_, staff_list) = call(
        "GET",
        &format!("{base}/orders?customer_id=alice"),
        &warehouse,
        None,
    )
    .await;
    assert_eq!(staff_list["orders"][0]["shipping"], shipping);

    // Nowhere in plain text: not in the database (events, keys, read
    // models), not on the topic, not in the log.
    let dump = pg_dump(&c.database_url);
    assert!(!dump.contains(&marker), "the marker is in the database");
    assert!(
        dump.contains("\"ciphertext\"") && dump.contains("data_keys"),
        "no sealed data in the dump"
    );
    let records = kcat(&c.brokers, &c.topic);
    assert!(
        records.contains("OrderCreated") && records.contains("\"ciphertext\""),
        "{records}"
    );
    assert!(!records.contains(&marker), "the marker is on the topic");

    // Erasure: not another customer's, nor by payments; the customer's own
    // answers 202 and again 202 with nothing left to do; an unknown
    // customer's too.
    let erase = |who: &str| format!("{base}/customers/{who}/personal-data");
    assert_eq!(call("DELETE", &erase("alice"), &bob, None).await.0, 403);
    assert_eq!(
        call("DELETE", &erase("alice"), &payments, None).await.0,
        403
    );
    let (s, e) = call("DELETE", &erase("alice"), &alice, None).await;
    assert_eq!(
        (s, e["keys_deleted"].as_u64(), e["orders"].as_u64()),
        (202, Some(1), Some(1)),
        "{e}"
    );
    let erased = until(&order, &alice, "the erasure is applied", |o| {
        o["version"] == 2
    })
    .await;
    assert_eq!(erased["shipping"], json!({ "erased": true }));
    assert_eq!(
        (erased["total_cents"].as_i64(), erased["status"].as_str()),
        (Some(4200), Some("created"))
    );
    let (s, e) = call("DELETE", &erase("alice"), &alice, None).await;
    assert_eq!(
        (s, e["keys_deleted"].as_u64(), e["orders"].as_u64()),
        (202, Some(0), Some(0)),
        "{e}"
    );
    for _ in 0..2 {
        let (s, e) = call("DELETE", &erase("zed"), &ops, None).await;
        assert_eq!((s, e["keys_deleted"].as_u64()), (202, Some(0)), "{e}");
    }
    let db = c.db().await;
    let kept: Option<String> =
        sqlx::query_scalar("SELECT shipping FROM order_details WHERE order_id = $1")
            .bind(&id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        kept.as_deref(),
        Some("\"erased\""),
        "the read model dropped the ciphertext"
    );

    // A later order of hers gets a new key.
    let marker2 = format!("pdmark{}", uuid::Uuid::new_v4().simple());
    let shipping2 = json!({ "name": format!("Alice {marker2}"), "address": "2 Way", "email": "alice@example.org" });
    let (s, created2) = call("POST", &format!("{base}/orders"), &alice, Some(json!({ "customer_id": "alice",
        "items": [{ "sku": "lamp", "quantity": 1, "unit_price_cents": 4200 }], "shipping": shipping2 }))).await;
    assert_eq!(s, 201, "{created2}");
    let id2 = created2["order_id"].as_str().unwrap().to_owned();
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT payload::jsonb -> 'shipping' ->> 'key_id' FROM events \
         WHERE event_type = 'OrderCreated' AND aggregate_id IN ($1, $2) ORDER BY position",
    )
    .bind(&id)
    .bind(&id2)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1], "the erased key came back");
    let order2 = format!("{base}/orders/{id2}");
    until(
        &format!(
            "{order2}?consistent_with={}",
            created2["consistency_token"].as_str().unwrap()
        ),
        &alice,
        "her new order",
        |o| o["shipping"] == shipping2,
    )
    .await;

    // A replay of the whole topic brings nothing back.
    let replay_env = [("ORDERS_MASTER_KEY_FILE", key.as_str())];
    orders(
        &[
            "replay",
            "--projection",
            "all",
            "--database-url",
            &c.database_url,
            "--kafka-brokers",
            &c.brokers,
            "--kafka-topic",
            &c.topic,
            "--data-dir",
            c.dir.path().join("all").to_str().unwrap(),
        ],
        &replay_env,
    );
    let (_, after) = call("GET", &order, &ops, None).await;
    assert_eq!(after["shipping"], json!({ "erased": true }), "{after}");
    let dump = pg_dump(&c.database_url);
    assert!(
        !dump.contains(&marker) && !dump.contains(&marker2),
        "plain text in the database after the replay"
    );

    // The master key rotated under the running server: her details still
    // open (the server reads the new key from its file), and every data key
    // is under the new master.
    let new_key = c.dir.path().join("next.key");
    let rotated = orders(
        &[
            "keys",
            "--database-url",
            &c.database_url,
            "rotate",
            "--new-master-key-file",
            new_key.to_str().unwrap(),
        ],
        &replay_env,
    );
    assert!(rotated.contains("rewrapped 1 data keys"), "{rotated}");
    let (_, o2) = call("GET", &order2, &warehouse, None).await;
    assert_eq!(o2["shipping"], shipping2, "{o2}");
    let status = orders(
        &["keys", "--database-url", &c.database_url, "status"],
        &replay_env,
    );
    assert!(
        status.contains("1 data keys wrapped by master key") && status.contains("(this one)"),
        "{status}"
    );

    server.terminate();
    let logged = server.log_text();
    assert!(
        !logged.contains(&marker) && !logged.contains(&marker2),
        "personal data in the log"
    );
    assert!(
        logged.contains("personal data erased"),
        "the erasure is not logged"
    );
}
