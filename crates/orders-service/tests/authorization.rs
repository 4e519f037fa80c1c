//! Who may do what, through the real server with authentication on: every
//! route for every role, anonymous callers and every kind of bad token.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::spawn_with;
use cqrs_http::auth::{mint_hs256, JwtOptions, Mint, Secret};
use orders_service::Config;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const ISSUER: &str = "https://id.example";
const AUDIENCE: &str = "orders";

fn secret() -> Secret {
    "authorization-test-secret-0123456789".parse().unwrap()
}

fn token(sub: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| r.to_string()).collect();
    let mint = Mint {
        sub,
        roles: &roles,
        ttl: Duration::from_secs(300),
        issuer: Some(ISSUER),
        audience: Some(AUDIENCE),
    };
    mint_hs256(&secret(), &mint).unwrap()
}

/// A token signed over `claims` with `key`.
fn signed(claims: Value, key: &[u8]) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(key);
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

struct Api {
    app: common::TestApp,
}

impl Api {
    async fn start() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::embedded(dir.path());
        config.jwt = Some(JwtOptions {
            hs256_secret: Some(secret()),
            jwks: None,
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            leeway: Duration::from_secs(5),
            ..JwtOptions::default()
        });
        Api {
            app: spawn_with(config, dir).await,
        }
    }

    /// Status, body and headers of one request (the body is not read for
    /// the event stream, which does not end).
    async fn call(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self
            .app
            .http
            .request(method.clone(), format!("{}{path}", self.app.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.unwrap();
        let (status, headers) = (res.status().as_u16(), res.headers().clone());
        let is_stream = headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let body = if is_stream {
            Value::Null
        } else {
            let text = res.text().await.unwrap_or_default();
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body, headers)
    }

    /// A new order of `customer`, moved through `steps` by the operator;
    /// returns its id and the id of the command that created it.
    async fn order(&self, customer: &str, steps: &[&str]) -> (String, String) {
        let ops = token("ops", &["operator"]);
        let body = json!({ "customer_id": customer,
            "items": [{ "sku": "book", "quantity": 1, "unit_price_cents": 700 }] });
        let (s, created, _) = self
            .call(&Method::POST, "/orders", Some(&body), Some(&ops))
            .await;
        assert_eq!(s, 201, "{created}");
        let id = created["order_id"].as_str().unwrap().to_owned();
        let mut last = created["consistency_token"].as_str().unwrap().to_owned();
        for step in steps {
            let (s, b, _) = self
                .call(
                    &Method::POST,
                    &format!("/orders/{id}/{step}"),
                    Some(&step_body(step)),
                    Some(&ops),
                )
                .await;
            assert_eq!(s, 200, "{step}: {b}");
            last = b["consistency_token"].as_str().unwrap().to_owned();
        }
        // Read models hold it before anyone is asked about it.
        let path = format!("/orders/{id}?consistent_with={last}");
        let (s, b, _) = self.call(&Method::GET, &path, None, Some(&ops)).await;
        assert_eq!(s, 200, "{b}");
        (id, created["command_id"].as_str().unwrap().to_owned())
    }
}

fn step_body(step: &str) -> Value {
    match step {
        "pay" => json!({ "amount_cents": 700, "payment_ref": "p-1" }),
        "ship" => json!({ "carrier": "ups", "tracking_number": "1Z" }),
        "cancel" => json!({ "reason": "changed my mind" }),
        _ => json!({}),
    }
}

/// A dead letter that does not exist.
const NO_LETTER: &str = "01900000-0000-7000-8000-000000000000";

/// The callers of every row, in this order.
const CALLERS: [&str; 6] = [
    "anonymous",
    "alice",
    "bob",
    "payments",
    "warehouse",
    "operator",
];

fn caller_token(caller: &str) -> Option<String> {
    match caller {
        "anonymous" => None,
        "alice" | "bob" => Some(token(caller, &["customer"])),
        role => Some(token(role, &[role])),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_as_the_table_says() {
    let api = Api::start().await;
    let (order, command) = api.order("alice", &[]).await;
    // (method, path, body, the order it needs moved how far,
    //  expected status for anonymous, alice, bob, payments, warehouse, operator)
    type Row = (
        Method,
        String,
        Option<Value>,
        Option<&'static [&'static str]>,
        [u16; 6],
    );
    let new_order = json!({ "customer_id": "alice",
        "items": [{ "sku": "mug", "quantity": 1, "unit_price_cents": 800 }] });
    // A tracked SKU, read back with its token so that an allowed read is 200.
    let ops = token("ops", &["operator"]);
    let (_, added, _) = api
        .call(
            &Method::POST,
            "/inventory/shelf/stock",
            Some(&json!({ "quantity": 1 })),
            Some(&ops),
        )
        .await;
    let book = format!(
        "/inventory/shelf?consistent_with={}",
        added["consistency_token"].as_str().unwrap()
    );
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        (Method::GET, "/".into(), None, None, [200; 6]),
        (Method::GET, "/openapi.json".into(), None, None, [200; 6]),
        (Method::GET, "/healthz".into(), None, None, [200; 6]),
        (Method::GET, "/readyz".into(), None, None, [200; 6]),
        (Method::GET, "/metrics".into(), None, None, [401, 403, 403, 403, 403, 200]),
        (Method::GET, "/stream".into(), None, None, [401, 403, 403, 403, 403, 200]),
        (Method::POST, "/stream/ticket".into(), None, None, [401, 403, 403, 403, 403, 204]),
        (Method::GET, "/stats".into(), None, None, [401, 403, 403, 403, 403, 200]),
        (Method::POST, "/orders".into(), Some(new_order), None, [401, 201, 403, 403, 403, 201]),
        (Method::GET, "/orders".into(), None, None, [401, 200, 200, 200, 200, 200]),
        (Method::GET, "/orders?customer_id=alice".into(), None, None, [401, 200, 403, 200, 200, 200]),
        (Method::GET, format!("/orders/{order}"), None, None, [401, 200, 404, 200, 200, 200]),
        (Method::GET, format!("/orders/{order}/history"), None, None, [401, 200, 404, 403, 403, 200]),
        (Method::GET, "/customers/alice/summary".into(), None, None, [401, 200, 404, 403, 403, 200]),
        // A customer erases its own personal data only; an operator anyone's.
        (Method::DELETE, "/customers/alice/personal-data".into(), None, None, [401, 202, 403, 403, 403, 202]),
        (Method::GET, format!("/commands/{command}/trace"), None, None, [401, 200, 404, 403, 403, 200]),
        (Method::POST, "pay".into(), None, Some(&[]), [401, 403, 403, 200, 403, 200]),
        (Method::POST, "ship".into(), None, Some(&["pay"]), [401, 403, 403, 403, 200, 200]),
        (Method::POST, "deliver".into(), None, Some(&["pay", "ship"]), [401, 403, 403, 403, 200, 200]),
        (Method::POST, "cancel".into(), None, Some(&[]), [401, 200, 404, 403, 403, 200]),
        (Method::POST, "/inventory/shelf/stock".into(), Some(json!({ "quantity": 1 })), None, [401, 403, 403, 403, 200, 200]),
        (Method::GET, "/inventory".into(), None, None, [401, 403, 403, 200, 200, 200]),
        (Method::GET, book, None, None, [401, 403, 403, 200, 200, 200]),
        // The saga's calls to the inventory service: allowed ones go on to
        // the handler, which wants an Idempotency-Key (this call sends none).
        (Method::POST, "/inventory/shelf/reservations".into(), Some(json!({ "order_id": "o1", "quantity": 1 })), None, [401, 403, 403, 403, 400, 400]),
        (Method::POST, "/inventory/shelf/releases".into(), Some(json!({ "order_id": "o1" })), None, [401, 403, 403, 403, 400, 400]),
        (Method::POST, "/inventory/shelf/dispatches".into(), Some(json!({ "order_id": "o1" })), None, [401, 403, 403, 403, 400, 400]),
        (Method::GET, "/stock-commands?key=k1".into(), None, None, [401, 403, 403, 403, 200, 200]),
        // The console: the page is for anyone (a browser cannot send a
        // token when it opens it); its data and actions, operators only.
        (Method::GET, "/ops".into(), None, None, [200; 6]),
        (Method::GET, "/ops/processors".into(), None, None, [401, 403, 403, 403, 403, 200]),
        (Method::GET, "/ops/health".into(), None, None, [401, 403, 403, 403, 403, 200]),
        (Method::GET, "/ops/dead-letters".into(), None, None, [401, 403, 403, 403, 403, 200]),
        (Method::GET, format!("/ops/dead-letters/{NO_LETTER}"), None, None, [401, 403, 403, 403, 403, 404]),
        (Method::POST, format!("/ops/dead-letters/{NO_LETTER}/retry"), None, None, [401, 403, 403, 403, 403, 404]),
        (Method::POST, format!("/ops/dead-letters/{NO_LETTER}/skip"), None, None, [401, 403, 403, 403, 403, 404]),
        (Method::GET, "/ops/rebuilds".into(), None, None, [401, 403, 403, 403, 403, 200]),
        (Method::GET, "/ops/rebuilds/orders_read_model".into(), None, None, [401, 403, 403, 403, 403, 200]),
        (Method::POST, "/ops/rebuilds".into(), Some(json!({ "projector": "no_such" })), None, [401, 403, 403, 403, 403, 422]),
        (Method::POST, "/ops/rebuilds/orders_read_model/cancel".into(), None, None, [401, 403, 403, 403, 403, 404]),
        (Method::GET, "/ops/actions".into(), None, None, [401, 403, 403, 403, 403, 200]),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, moved, expected) in &rows {
        for (caller, want) in CALLERS.iter().zip(expected) {
            // A command gets an order of alice's of its own, in the state
            // where it is allowed, so that an allowed call answers 200.
            let (path, body) = match moved {
                Some(steps) => {
                    let (id, _) = api.order("alice", steps).await;
                    (format!("/orders/{id}/{path}"), Some(step_body(path)))
                }
                None => (path.clone(), body.clone()),
            };
            let token = caller_token(caller);
            let (got, answer, headers) = api
                .call(method, &path, body.as_ref(), token.as_deref())
                .await;
            if got != *want {
                wrong.push(format!(
                    "{method} {path} as {caller}: {got}, not {want}: {answer}"
                ));
            }
            if got == 401 {
                let challenge = headers
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap_or(""));
                if challenge != Some(r#"Bearer realm="orders""#) {
                    wrong.push(format!(
                        "{method} {path} as {caller}: challenge {challenge:?}"
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cells differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // The operator's refused actions are audited under its name; the
    // callers refused at the door did nothing to audit.
    let (_, audited, _) = api
        .call(&Method::GET, "/ops/actions", None, Some(&ops))
        .await;
    let rows = audited.as_array().unwrap();
    let by = |actor: &str, action: &str| {
        rows.iter()
            .any(|a| a["actor"] == actor && a["action"] == action && a["outcome"] == "refused")
    };
    assert!(by("operator", "rebuild.cancel"), "{audited}");
    assert!(rows.iter().all(|a| a["actor"] == "operator"), "{audited}");
    api.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_lists_and_reads_only_its_own_orders() {
    let api = Api::start().await;
    let (alices, _) = api.order("alice", &[]).await;
    let (bobs, _) = api.order("bob", &["pay"]).await;
    let ids = |page: &Value| -> Vec<String> {
        let orders = page["orders"].as_array().cloned().unwrap_or_default();
        orders
            .iter()
            .map(|o| o["order_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let alice = token("alice", &["customer"]);
    let (_, page, _) = api.call(&Method::GET, "/orders", None, Some(&alice)).await;
    assert_eq!(ids(&page), std::slice::from_ref(&alices), "{page}");
    let (_, page, _) = api
        .call(&Method::GET, "/orders?status=paid", None, Some(&alice))
        .await;
    assert_eq!(
        ids(&page),
        Vec::<String>::new(),
        "bob's paid order stays hidden"
    );
    let ops = token("ops", &["operator"]);
    let (_, page, _) = api.call(&Method::GET, "/orders", None, Some(&ops)).await;
    assert_eq!(ids(&page), [bobs.clone(), alices.clone()]);
    // Another customer's order answers exactly as a missing one.
    let missing = "01a21bad-0000-7000-8000-000000000000";
    let (_, theirs, _) = api
        .call(&Method::GET, &format!("/orders/{bobs}"), None, Some(&alice))
        .await;
    let (_, none, _) = api
        .call(
            &Method::GET,
            &format!("/orders/{missing}"),
            None,
            Some(&alice),
        )
        .await;
    assert_eq!(theirs["error"], none["error"]);
    assert_eq!(
        theirs["message"].as_str().unwrap().replace(&bobs, "ID"),
        none["message"].as_str().unwrap().replace(missing, "ID")
    );
    let cancel = step_body("cancel");
    let (_, theirs, _) = api
        .call(
            &Method::POST,
            &format!("/orders/{bobs}/cancel"),
            Some(&cancel),
            Some(&alice),
        )
        .await;
    let (_, none, _) = api
        .call(
            &Method::POST,
            &format!("/orders/{missing}/cancel"),
            Some(&cancel),
            Some(&alice),
        )
        .await;
    assert_eq!(
        (&theirs["error"], &theirs["message"]),
        (&none["error"], &none["message"])
    );
    api.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_a_401_that_says_why() {
    let api = Api::start().await;
    let (order, _) = api.order("alice", &[]).await;
    let path = format!("/orders/{order}");
    let now = jsonwebtoken::get_current_timestamp();
    let claims = |f: &dyn Fn(&mut Value)| {
        let mut c = json!({ "sub": "ops", "roles": ["operator"], "iss": ISSUER, "aud": AUDIENCE,
                            "exp": now + 300, "nbf": now - 1 });
        f(&mut c);
        c
    };
    let key = secret().expose().as_bytes().to_vec();
    let cases = [
        (
            signed(claims(&|_| {}), b"not-the-secret-not-the-secret-xx"),
            "bad signature",
        ),
        (
            signed(claims(&|c| c["exp"] = json!(now - 120)), &key),
            "expired",
        ),
        (
            signed(claims(&|c| c["iss"] = json!("https://evil.example")), &key),
            "wrong issuer",
        ),
        (
            signed(claims(&|c| c["aud"] = json!("billing")), &key),
            "wrong audience",
        ),
        ("garbage".to_owned(), "not a JWT"),
    ];
    // The same claims, properly signed, are let in.
    let (s, _, _) = api
        .call(
            &Method::GET,
            &path,
            None,
            Some(&signed(claims(&|_| {}), &key)),
        )
        .await;
    assert_eq!(s, 200);
    for (bad, why) in cases {
        let (s, body, headers) = api.call(&Method::GET, &path, None, Some(&bad)).await;
        assert_eq!(s, 401, "{why}: {body}");
        assert_eq!(body["error"], "invalid_token", "{why}");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.contains(r#"error="invalid_token""#) && challenge.contains(why),
            "{challenge}"
        );
        assert!(
            !body.to_string().contains(&bad) && !challenge.contains(&bad),
            "the token is quoted back"
        );
    }
    let res = api
        .app
        .http
        .get(format!("{}{path}", api.app.base))
        .header("authorization", "Basic YWxpY2U6cHc=")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "a non-bearer scheme");
    api.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commands_trace_names_its_caller() {
    let api = Api::start().await;
    let alice = token("alice", &["customer"]);
    let body = json!({ "customer_id": "alice",
        "items": [{ "sku": "pen", "quantity": 1, "unit_price_cents": 250 }] });
    let (s, created, _) = api
        .call(&Method::POST, "/orders", Some(&body), Some(&alice))
        .await;
    assert_eq!(s, 201, "{created}");
    let command = created["command_id"].as_str().unwrap();
    let (s, trace, _) = api
        .call(
            &Method::GET,
            &format!("/commands/{command}/trace"),
            None,
            Some(&alice),
        )
        .await;
    assert_eq!(s, 200, "{trace}");
    assert_eq!(trace["caller"], "alice", "{trace}");
    let (_, history, _) = api
        .call(
            &Method::GET,
            &format!("/orders/{}/history", created["order_id"].as_str().unwrap()),
            None,
            Some(&alice),
        )
        .await;
    assert_eq!(
        history["events"][0]["metadata"]["caller"], "alice",
        "{history}"
    );
    api.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_added_to_the_jwks_file_is_honoured_without_a_restart() {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cqrs-http/tests/keys");
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys": []}"#).unwrap();
    let mut config = Config::embedded(dir.path());
    config.jwt = Some(JwtOptions {
        hs256_secret: None,
        jwks: Some(jwks.clone()),
        issuer: None,
        audience: None,
        leeway: Duration::from_secs(5),
        ..JwtOptions::default()
    });
    let app = spawn_with(config, dir).await;
    let pem = std::fs::read(keys.join("rs256.pem")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({ "sub": "ops", "roles": ["operator"], "exp": now + 300 });
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let stats = || {
        let req = app
            .http
            .get(format!("{}/stats", app.base))
            .bearer_auth(&token);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(stats().await, 401, "no key yet");
    std::fs::copy(keys.join("jwks.json"), &jwks).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stats().await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new key set was not read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}
