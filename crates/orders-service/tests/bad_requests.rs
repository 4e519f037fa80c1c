//! A table of bad requests and the documented 4xx answers; none may write.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::spawn_app;
use serde_json::{json, Value};

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    headers: Vec<(&'static str, &'static str)>,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: impl Into<String>,
    body: Value,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        content_type: Some("application/json"),
        body: body.to_string().into_bytes(),
        headers: vec![],
        status,
        code,
        field: None,
    }
}

impl Case {
    fn field(mut self, f: &'static str) -> Self {
        self.field = Some(f);
        self
    }
    fn raw(mut self, body: &[u8], content_type: Option<&'static str>) -> Self {
        self.body = body.to_vec();
        self.content_type = content_type;
        self
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.push((k, v));
        self
    }
}

fn item(q: Value, p: Value) -> Value {
    json!({"customer_id": "c", "items": [{"sku": "s", "quantity": q, "unit_price_cents": p}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_documented_4xx_and_write_nothing() {
    let app = spawn_app(false, 0).await;
    let (id, _) = app.create().await;
    let o = |s: &str| format!("/orders/{id}/{s}");
    let missing = "/orders/01a21bad-0000-7000-8000-000000000000";
    let big = format!(
        "{{\"customer_id\":\"c\",\"items\":[],\"pad\":\"{}\"}}",
        "x".repeat(70_000)
    );
    let cases = vec![
        case("malformed json", "POST", "/orders", json!(null), 400, "malformed_json").raw(b"{\"customer_id\":", Some("application/json")),
        case("not json content type", "POST", "/orders", json!(null), 415, "unsupported_media_type").raw(b"customer_id=c", Some("text/plain")),
        case("no content type", "POST", "/orders", json!(null), 415, "unsupported_media_type").raw(b"{}", None),
        case("body over 64 KiB", "POST", "/orders", json!(null), 413, "body_too_large").raw(big.as_bytes(), Some("application/json")),
        case("missing field", "POST", "/orders", json!({"items": []}), 422, "invalid_body").field("customer_id"),
        case("unknown field", "POST", "/orders", json!({"customer_id": "c", "items": [], "coupon": 1}), 422, "invalid_body").field("coupon"),
        case("wrong type", "POST", "/orders", item(json!("two"), json!(1)), 422, "invalid_body").field("items[0].quantity"),
        case("no items", "POST", "/orders", json!({"customer_id": "c", "items": []}), 422, "invalid_field").field("items"),
        case("zero quantity", "POST", "/orders", item(json!(0), json!(1)), 422, "invalid_field").field("items[0].quantity"),
        case("negative price", "POST", "/orders", item(json!(1), json!(-5)), 422, "invalid_field").field("items[0].unit_price_cents"),
        case("bad customer", "POST", "/orders", json!({"customer_id": "a b", "items": [{"sku": "s", "quantity": 1, "unit_price_cents": 1}]}), 422, "invalid_field").field("customer_id"),
        case("wrong amount", "POST", o("pay"), json!({"amount_cents": 1, "payment_ref": "p"}), 422, "amount_mismatch").field("amount_cents"),
        case("ship unpaid", "POST", o("ship"), json!({"carrier": "dhl", "tracking_number": "T"}), 409, "not_paid"),
        case("deliver unshipped", "POST", o("deliver"), json!({}), 409, "invalid_transition"),
        case("stale expected version", "POST", o("cancel"), json!({"reason": "r", "expected_version": 7}), 409, "version_conflict"),
        case("negative expected version", "POST", o("cancel"), json!({"reason": "r", "expected_version": -1}), 422, "invalid_field").field("expected_version"),
        case("unknown order", "POST", format!("{missing}/pay"), json!({"amount_cents": 1, "payment_ref": "p"}), 404, "order_not_found"),
        case("id not a uuid", "GET", "/orders/not-a-uuid", json!(null), 404, "order_not_found"),
        case("unknown order query", "GET", missing, json!(null), 404, "order_not_found"),
        case("unknown route", "GET", "/nope", json!(null), 404, "route_not_found"),
        case("wrong method", "DELETE", format!("/orders/{id}"), json!(null), 405, "method_not_allowed"),
        case("bad token", "GET", format!("/orders/{id}"), json!(null), 400, "invalid_consistency_token").header("x-consistency-token", "garbage"),
        case("wait too long", "GET", format!("/orders/{id}?wait_ms=30001&consistent_with=v1.1.1.{id}"), json!(null), 400, "invalid_query").field("wait_ms"),
        case("wait not a number", "GET", format!("/orders/{id}?wait_ms=soon"), json!(null), 400, "invalid_query").field("wait_ms"),
        case("limit too big", "GET", "/orders?limit=101", json!(null), 400, "invalid_query").field("limit"),
        case("unknown status", "GET", "/orders?status=lost", json!(null), 400, "invalid_query").field("status"),
        case("bad idempotency key", "POST", "/orders", item(json!(1), json!(1)), 422, "invalid_field").header("idempotency-key", "").field("Idempotency-Key"),
        case("unknown customer", "GET", "/customers/zed/summary", json!(null), 404, "customer_not_found"),
        case("path not UTF-8", "GET", "/orders/%FF%FE", json!(null), 400, "invalid_path"),
        case("path not UTF-8 on a command", "POST", "/orders/%FF%FE/pay", json!({"amount_cents": 1, "payment_ref": "p"}), 400, "invalid_path"),
        case("wait too long without a token", "GET", "/stats?wait_ms=999999999", json!(null), 400, "invalid_query").field("wait_ms"),
        case("unknown parameter on stats", "GET", "/stats?verbose=1", json!(null), 400, "invalid_query").field("verbose"),
        case("unknown parameter on an order", "GET", format!("/orders/{id}?fields=all"), json!(null), 400, "invalid_query").field("fields"),
        case("unknown parameter on a summary", "GET", "/customers/zed/summary?x=1", json!(null), 400, "invalid_query").field("x"),
        case("unknown parameter on a list", "GET", "/orders?sort=asc", json!(null), 400, "invalid_query").field("sort"),
        case("a parameter on a command", "POST", "/orders?dry_run=1", item(json!(1), json!(1)), 400, "invalid_query").field("dry_run"),
        case("a parameter on health", "GET", "/healthz?x=1", json!(null), 400, "invalid_query").field("x"),
        case("a customer filter that is no customer id", "GET", "/orders?customer_id=%5Ex", json!(null), 400, "invalid_query").field("customer_id"),
        case("a cursor too long", "GET", format!("/orders?after={}", "x".repeat(201)), json!(null), 400, "invalid_query").field("after"),
        case("a fractional quantity", "POST", "/orders", item(json!(1.5), json!(1)), 422, "invalid_body").field("items[0].quantity"),
    ];
    for c in &cases {
        let mut req = app
            .http
            .request(c.method.parse().unwrap(), format!("{}{}", app.base, c.path));
        if c.method != "GET" && c.method != "DELETE" {
            req = req.body(c.body.clone());
            if let Some(ct) = c.content_type {
                req = req.header("content-type", ct);
            }
        }
        for (k, v) in &c.headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let ct = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, c.status, "{}: {body}", c.name);
        assert_eq!(ct.as_deref(), Some("application/json"), "{}", c.name);
        assert_eq!(body["error"], c.code, "{}: {body}", c.name);
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}: {body}",
            c.name
        );
        if let Some(f) = c.field {
            assert_eq!(body["details"]["field"], f, "{}: {body}", c.name);
        }
    }
    let events = common::events_in(app.app().store.db()).await;
    assert_eq!(events, 1, "no bad request wrote anything");
    app.stop().await;
}

/// What the server answers to `raw` bytes sent on a fresh connection:
/// its status and its body as JSON.
async fn raw_answer(base: &str, raw: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_end(&mut answer),
    )
    .await
    .expect("the server closes the connection after a parse error")
    .unwrap();
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_http_parser_refuses_get_json_bodies_too() {
    let app = spawn_app(false, 0).await;
    let long_path = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: [(&str, Vec<u8>, u16, &str); 4] = [
        (
            "a malformed request line",
            b"GARBAGE\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        ("a 100 KB path", long_path.into_bytes(), 414, "uri_too_long"),
        (
            "too many headers",
            format!("GET / HTTP/1.1\r\n{many_headers}\r\n").into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            "a bad Content-Length",
            b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
    ];
    for (what, raw, status, code) in cases {
        let (s, body) = raw_answer(&app.base, &raw).await;
        assert_eq!(
            (s, body["error"].as_str()),
            (status, Some(code)),
            "{what}: {body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    // Nothing was written by any of them.
    let (s, list, _) = app.get("/orders", None).await;
    assert_eq!(s, 200);
    assert_eq!(list["orders"], json!([]));
    app.stop().await;
}
