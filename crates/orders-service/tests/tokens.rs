//! What a token opens, and for how long, through the real server with
//! authentication on: a live stream ends when its token expires (opened
//! with the token or with a ticket), a read that waits ends with its token
//! too, a stream ticket is not the token and opens the stream alone, and a
//! token that would live longer than the server allows is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::{spawn_with, TestApp};
use cqrs_http::auth::{JwtOptions, Secret};
use orders_service::Config;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The server's clock skew allowance, small so that the tests are short.
const LEEWAY: u64 = 1;
/// The longest a token may live on these servers.
const MAX_LIFETIME: u64 = 3600;

fn secret() -> Secret {
    "tokens-test-secret-0123456789abcdef".parse().unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token of `sub` with `roles` that expires at `exp` (seconds since 1970).
fn token_until(sub: &str, roles: &[&str], exp: u64) -> String {
    let claims = json!({ "sub": sub, "roles": roles, "exp": exp, "nbf": now() - 1 });
    let key = jsonwebtoken::EncodingKey::from_secret(secret().expose().as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

async fn start(projector_delay: Duration) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded(dir.path());
    config.projector_delay = projector_delay;
    config.jwt = Some(JwtOptions {
        hs256_secret: Some(secret()),
        leeway: Duration::from_secs(LEEWAY),
        max_lifetime: Duration::from_secs(MAX_LIFETIME),
        ..JwtOptions::default()
    });
    spawn_with(config, dir).await
}

/// The events of a stream until it ends (or `within` passes), each as
/// (its name, its data, when it arrived).
async fn events_of(res: reqwest::Response, within: Duration) -> Vec<(String, Value, Instant)> {
    let mut res = res;
    let (mut text, mut events) = (String::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(chunk) = tokio::time::timeout_at(deadline, res.chunk()).await {
        let Some(chunk) = chunk.unwrap() else {
            return events;
        };
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some((event, rest)) = text.split_once("\n\n") {
            let name = event.lines().find_map(|l| l.strip_prefix("event: "));
            let data = event.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some(name), Some(data)) = (name, data) {
                let data = serde_json::from_str(data).unwrap_or(Value::Null);
                events.push((name.to_owned(), data, Instant::now()));
            }
            text = rest.to_owned();
        }
    }
    panic!("the stream did not end within {within:?}: {events:?}");
}

/// Asserts that `events` end with the token's expiry: `mode` says when,
/// the last event is `end` with the reason, and it came after the expiry,
/// within leeway + 5 s of it.
fn ends_with_the_token(events: &[(String, Value, Instant)], exp: u64, opened: (Instant, u64)) {
    let (mode, _, _) = &events[0];
    assert_eq!(mode, "mode", "{events:?}");
    assert_eq!(events[0].1["ends_at"], exp + LEEWAY);
    let (last, data, at) = events.last().unwrap();
    assert_eq!(last, "end", "{events:?}");
    assert_eq!(data["reason"], "token_expired");
    // Seconds past the expiry at which it ended, on the opener's clock.
    let ended = opened.1 as f64 + at.duration_since(opened.0).as_secs_f64();
    assert!(
        ended >= exp as f64,
        "ended at {ended}, before the token expired at {exp}"
    );
    assert!(
        ended <= (exp + LEEWAY + 5) as f64,
        "ended at {ended}, more than leeway + 5 s after {exp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_ends_when_its_token_expires_and_says_why() {
    let app = start(Duration::ZERO).await;
    let exp = now() + 3;
    let token = token_until("ops", &["operator"], exp);
    let opened = (Instant::now(), now());
    let res = app
        .http
        .get(format!("{}/stream", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let events = events_of(res, Duration::from_secs(3 + LEEWAY + 10)).await;
    ends_with_the_token(&events, exp, opened);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ticket_is_not_the_token_and_its_stream_ends_with_the_token() {
    let app = start(Duration::ZERO).await;
    let exp = now() + 4;
    let token = token_until("ops", &["operator"], exp);
    let res = app
        .http
        .post(format!("{}/stream/ticket", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["Path=/stream", "HttpOnly", "SameSite=Strict"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "no Secure flag over plain HTTP: {cookie}"
    );
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !cookie.contains(&token) && !cookie.contains(signature),
        "the cookie carries the token: {cookie}"
    );
    let max_age: u64 = cookie
        .split("Max-Age=")
        .nth(1)
        .and_then(|v| v.split(';').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=4).contains(&max_age),
        "a ticket lives a minute at most, never past its token: {max_age}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let ticket = pair.strip_prefix("orders_stream=").unwrap().to_owned();
    let get = |path: &str| app.http.get(format!("{}{path}", app.base));

    // The ticket is good on /stream alone, and only as the cookie.
    let res = get("/stats").header("cookie", &pair).send().await.unwrap();
    assert_eq!(res.status(), 401, "the cookie elsewhere");
    let res = get("/stats").bearer_auth(&ticket).send().await.unwrap();
    assert_eq!(res.status(), 401, "the ticket as a bearer token");
    let res = get("/stream").bearer_auth(&ticket).send().await.unwrap();
    assert_eq!(res.status(), 401, "the ticket as a bearer token on /stream");
    // Nor is a token a ticket.
    let as_cookie = format!("orders_stream={token}");
    let res = get("/stream")
        .header("cookie", as_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "a bearer token in the cookie");
    let res = get("/stream")
        .header("cookie", "orders_stream=garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let opened = (Instant::now(), now());
    let res = get("/stream").header("cookie", &pair).send().await.unwrap();
    assert_eq!(res.status(), 200, "the ticket opens the stream");
    let events = events_of(res, Duration::from_secs(4 + LEEWAY + 10)).await;
    ends_with_the_token(&events, exp, opened);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_waits_past_its_tokens_expiry_ends_with_401() {
    // The projector holds each batch 60 s: a consistent read would wait
    // its whole 30 s.
    let app = start(Duration::from_secs(60)).await;
    let long = token_until("ops", &["operator"], now() + 600);
    let body = json!({ "customer_id": "c1",
        "items": [{ "sku": "pen", "quantity": 1, "unit_price_cents": 100 }] });
    let created: Value = app
        .http
        .post(format!("{}/orders", app.base))
        .bearer_auth(&long)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, consistency) = (
        created["order_id"].as_str().unwrap(),
        created["consistency_token"].as_str().unwrap(),
    );
    let exp = now() + 2;
    let short = token_until("ops", &["operator"], exp);
    let started = Instant::now();
    let res = app
        .http
        .get(format!(
            "{}/orders/{id}?consistent_with={consistency}&wait_ms=30000",
            app.base
        ))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    assert!(
        waited <= Duration::from_secs(2 + LEEWAY + 5),
        "the read outlived its token: {waited:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_would_outlive_the_maximum_is_refused() {
    let app = start(Duration::ZERO).await;
    let stats = |token: String| {
        let req = app
            .http
            .get(format!("{}/stats", app.base))
            .bearer_auth(token);
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let (s, _) = stats(token_until("ops", &["operator"], now() + MAX_LIFETIME - 10)).await;
    assert_eq!(s, 200, "within the maximum");
    for exp in [
        now() + MAX_LIFETIME + LEEWAY + 60,
        now() + 365 * 86400,
        u64::MAX,
    ] {
        let (s, body) = stats(token_until("ops", &["operator"], exp)).await;
        assert_eq!(s, 401, "exp {exp}: {body}");
        assert!(body.contains("ahead"), "{body}");
    }
    // No ticket either: the stream would follow the endless token.
    let res = app
        .http
        .post(format!("{}/stream/ticket", app.base))
        .bearer_auth(token_until("ops", &["operator"], u64::MAX))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("set-cookie").is_none());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_tells_strangers_only_whether_and_operators_why() {
    let app = start(Duration::ZERO).await;
    let readyz = |token: Option<String>| {
        let mut req = app.http.get(format!("{}/readyz", app.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let (s, body) = readyz(None).await;
    assert_eq!((s, body), (200, json!({ "ready": true })), "a stranger");
    let customer = token_until("alice", &["customer"], now() + 60);
    let (_, body) = readyz(Some(customer)).await;
    assert_eq!(body, json!({ "ready": true }), "a customer is no operator");
    let ops = token_until("ops", &["operator"], now() + 60);
    let (s, body) = readyz(Some(ops.clone())).await;
    assert_eq!(s, 200);
    assert_eq!(body["checks"]["write_db"], "ok", "{body}");
    // Not ready: the read database closed. The stranger learns only that.
    app.app().read.pool.close().await;
    let (s, body) = readyz(None).await;
    assert_eq!((s, body), (503, json!({ "ready": false })));
    let (s, body) = readyz(Some(ops)).await;
    assert_eq!(s, 503);
    assert!(
        body["checks"]["read_db"]
            .as_str()
            .is_some_and(|why| why != "ok"),
        "{body}"
    );
    app.stop().await;
}
