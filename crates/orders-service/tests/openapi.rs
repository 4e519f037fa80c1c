//! The OpenAPI document and the router agree: every documented route is
//! served, and every served route is documented.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use common::spawn_app;
use std::collections::BTreeSet;

const SERVED: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/stream"),
    ("post", "/stream/ticket"),
    ("get", "/commands/{id}/trace"),
    ("get", "/customers/{id}/summary"),
    ("delete", "/customers/{id}/personal-data"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/orders"),
    ("get", "/orders/{id}"),
    ("get", "/orders/{id}/history"),
    ("get", "/readyz"),
    ("get", "/stats"),
    ("post", "/orders"),
    ("post", "/orders/{id}/cancel"),
    ("post", "/orders/{id}/deliver"),
    ("post", "/orders/{id}/pay"),
    ("post", "/orders/{id}/ship"),
    ("get", "/inventory"),
    ("get", "/inventory/{sku}"),
    ("post", "/inventory/{sku}/stock"),
    ("post", "/inventory/{sku}/reservations"),
    ("post", "/inventory/{sku}/releases"),
    ("post", "/inventory/{sku}/dispatches"),
    ("get", "/stock-commands"),
    ("get", "/ops"),
    ("get", "/ops/processors"),
    ("get", "/ops/health"),
    ("get", "/ops/dead-letters"),
    ("get", "/ops/dead-letters/{id}"),
    ("post", "/ops/dead-letters/{id}/retry"),
    ("post", "/ops/dead-letters/{id}/skip"),
    ("get", "/ops/rebuilds"),
    ("post", "/ops/rebuilds"),
    ("get", "/ops/rebuilds/{projector}"),
    ("post", "/ops/rebuilds/{projector}/cancel"),
    ("get", "/ops/actions"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let app = spawn_app(false, 0).await;
    let (s, doc, _) = app.get("/openapi.json", None).await;
    assert_eq!(s, 200);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .filter(|(m, _)| ["get", "post", "put", "delete", "patch"].contains(&m.as_str()))
        .collect();
    let expected: BTreeSet<(String, String)> = SERVED
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, expected,
        "documented routes differ from the served ones"
    );
    // Each documented route answers something other than "no such route".
    let id = "01a21bad-0000-7000-8000-000000000000";
    for (method, path) in &documented {
        let url = format!("{}{}", app.base, path.replace("{id}", id));
        let req = app
            .http
            .request(method.to_uppercase().parse().unwrap(), &url);
        let req = if method == "post" {
            req.header("content-type", "application/json").body("{}")
        } else {
            req
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        // /stream never ends: its status is the answer.
        let body = if path == "/stream" {
            String::new()
        } else {
            r.text().await.unwrap()
        };
        assert!(
            !body.contains("route_not_found") && status != 405,
            "{method} {path}: {status} {body}"
        );
    }
    // Every command documents its errors with the shared error body.
    let pay = &doc["paths"]["/orders/{id}/pay"]["post"]["responses"];
    for code in ["404", "409", "422"] {
        assert_eq!(
            pay[code]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{code}"
        );
    }
    assert!(doc["components"]["schemas"]["OrderView"]["properties"]["status"].is_object());
    app.stop().await;
}

/// The limits the document states are the ones the domain enforces, and a
/// number JSON Schema calls an integer (`2.0`) is taken as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_limits_are_the_enforced_ones() {
    use orders::aggregate::limits;
    let app = spawn_app(false, 0).await;
    let (_, doc, _) = app.get("/openapi.json", None).await;
    let schemas = &doc["components"]["schemas"];
    let item = &schemas["LineItem"]["properties"];
    assert_eq!(item["quantity"]["maximum"], limits::MAX_QUANTITY);
    assert_eq!(item["quantity"]["minimum"], 1);
    assert_eq!(
        item["unit_price_cents"]["maximum"],
        limits::MAX_UNIT_PRICE_CENTS
    );
    assert_eq!(item["sku"]["maxLength"], limits::MAX_SKU);
    let create = &schemas["CreateOrder"]["properties"];
    assert_eq!(create["items"]["maxItems"], limits::MAX_ITEMS);
    assert_eq!(create["customer_id"]["maxLength"], limits::MAX_CUSTOMER_ID);
    for (body, field) in [
        ("PayBody", "payment_ref"),
        ("ShipBody", "carrier"),
        ("ShipBody", "tracking_number"),
        ("CancelBody", "reason"),
    ] {
        assert_eq!(
            schemas[body]["properties"][field]["maxLength"],
            limits::MAX_TEXT,
            "{body}.{field}"
        );
    }
    // Every route that takes a token states the same pattern and wait range
    // (utoipa takes them only as literals: this keeps the copies one).
    let mut token_params = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for op in ops.as_object().unwrap().values() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["name"] == "consistent_with" || p["name"] == "x-consistency-token" {
                    assert_eq!(
                        p["schema"]["pattern"],
                        cqrs_http::TOKEN_PATTERN,
                        "{path}: {p}"
                    );
                    token_params += 1;
                }
                if p["name"] == "wait_ms" {
                    assert_eq!(
                        p["schema"]["maximum"],
                        cqrs_http::consistency::MAX_WAIT_MS,
                        "{path}"
                    );
                }
            }
        }
    }
    assert_eq!(
        token_params, 10,
        "5 query routes (4 of orders, 1 of inventory), each with the header and the parameter"
    );
    // A real token fits the documented pattern.
    let (_, token) = app.create().await;
    let re = regex::Regex::new(cqrs_http::TOKEN_PATTERN).unwrap();
    assert!(re.is_match(&token), "{token}");
    // 2.0 is an integer to JSON Schema, so it is one here too.
    let body = serde_json::json!({"customer_id": "f", "items": [{"sku": "s", "quantity": 2.0, "unit_price_cents": 150.0}]});
    let (s, a, _) = app.post("/orders", body).await;
    assert_eq!(s, 201, "{a}");
    let (_, o, _) = app
        .get(
            &format!("/orders/{}", a["order_id"].as_str().unwrap()),
            a["consistency_token"].as_str(),
        )
        .await;
    assert_eq!(o["total_cents"], 300);
    app.stop().await;
}
