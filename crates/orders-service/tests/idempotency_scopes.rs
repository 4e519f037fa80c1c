//! An `Idempotency-Key` is the caller's own, through the real server with
//! authentication on: two callers sending one key get two independent
//! outcomes. Neither learns that the other used it, neither can block the
//! other by using it first, and neither receives the other's answer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{spawn_with, TestApp};
use cqrs_http::auth::{mint_hs256, JwtOptions, Mint, Secret};
use orders_service::Config;
use serde_json::{json, Value};
use std::time::Duration;

fn secret() -> Secret {
    "idempotency-scopes-secret-0123456789".parse().unwrap()
}

fn token(sub: &str, role: &str) -> String {
    let roles = [role.to_owned()];
    let mint = Mint {
        sub,
        roles: &roles,
        ttl: Duration::from_secs(600),
        issuer: None,
        audience: None,
    };
    mint_hs256(&secret(), &mint).unwrap()
}

async fn start() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.jwt = Some(JwtOptions {
        hs256_secret: Some(secret()),
        leeway: Duration::from_secs(5),
        ..JwtOptions::default()
    });
    spawn_with(config, dir).await
}

/// Status, body and whether it was a stored answer replayed.
async fn post(
    app: &TestApp,
    path: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> (u16, Value, bool) {
    let res = app
        .http
        .post(format!("{}{path}", app.base))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let replayed = res.headers().get("idempotent-replayed").is_some();
    (status, res.json().await.unwrap(), replayed)
}

fn order_of(customer: &str, cents: i64) -> Value {
    json!({ "customer_id": customer,
        "items": [{ "sku": "book", "quantity": 1, "unit_price_cents": cents }] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_customers_sending_one_key_get_two_independent_orders() {
    let app = start().await;
    let (alice, bob) = (token("alice", "customer"), token("bob", "customer"));
    let key = "checkout-1";
    let (s, a, replayed) = post(&app, "/orders", &alice, key, &order_of("alice", 700)).await;
    assert_eq!((s, replayed), (201, false), "{a}");
    // Bob, with Alice's key and another request: his own order, not 422.
    let (s, b, replayed) = post(&app, "/orders", &bob, key, &order_of("bob", 900)).await;
    assert_eq!((s, replayed), (201, false), "{b}");
    assert_ne!(a["order_id"], b["order_id"]);
    // Each retry answers its own caller's first request.
    let (_, again, replayed) = post(&app, "/orders", &alice, key, &order_of("alice", 700)).await;
    assert!(replayed);
    assert_eq!(again["order_id"], a["order_id"]);
    let (_, again, replayed) = post(&app, "/orders", &bob, key, &order_of("bob", 900)).await;
    assert!(replayed);
    assert_eq!(again["order_id"], b["order_id"]);
    // Within one caller a key still names one request.
    let (s, e, _) = post(&app, "/orders", &bob, key, &order_of("bob", 1)).await;
    assert_eq!(s, 422, "{e}");
    assert_eq!(e["error"], "idempotency_key_reused");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_payments_caller_never_receives_the_first_ones_answer() {
    let app = start().await;
    let alice = token("alice", "customer");
    let (s, order, _) = post(&app, "/orders", &alice, "o-1", &order_of("alice", 700)).await;
    assert_eq!(s, 201, "{order}");
    let pay_path = format!("/orders/{}/pay", order["order_id"].as_str().unwrap());
    let pay = json!({ "amount_cents": 700, "payment_ref": "p-1" });
    let (p1, p2) = (token("psp-1", "payments"), token("psp-2", "payments"));
    let (s, first, replayed) = post(&app, &pay_path, &p1, "pay-1", &pay).await;
    assert_eq!((s, replayed), (200, false), "{first}");
    // The same key and body from another caller is its own request: the
    // order is paid already, which it is told, not p1's stored success.
    let (s, second, replayed) = post(&app, &pay_path, &p2, "pay-1", &pay).await;
    assert!(!replayed, "p2 got p1's stored answer: {second}");
    assert_eq!(s, 409, "{second}");
    // p1's own retry is still its stored answer.
    let (s, again, replayed) = post(&app, &pay_path, &p1, "pay-1", &pay).await;
    assert_eq!((s, replayed), (200, true), "{again}");
    assert_eq!(again["command_id"], first["command_id"]);
    app.stop().await;
}
