//! The HTTP API of the Orders service: commands in, queries out.

use crate::app::App;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use cqrs_http::{
    idempotency_key, wait_consistent, ApiError, ConsistencyParams, JsonBody, QueryParams,
    MAX_BODY_BYTES, TOKEN_HEADER,
};
use cqrs_sql::store::request_hash;
use cqrs_sql::{execute, CommandOptions, CommandOutcome, EventStore, IdempotencyRecord};
use orders::read_model::{self, OrderFilter};
use orders::{CancelOrder, CreateOrder, Order, OrderCommand, PayOrder, ShipOrder, Status};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

/// Conflicting appends retried before answering 409.
const MAX_RETRIES: u32 = 10;

/// The router with every route, limits and JSON fallbacks. Routes and the
/// OpenAPI document come from the same list, so they cannot drift apart.
pub fn router(app: App) -> Router {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_order, list_orders))
        .routes(routes!(get_order))
        .routes(routes!(pay_order))
        .routes(routes!(ship_order))
        .routes(routes!(deliver_order))
        .routes(routes!(cancel_order))
        .routes(routes!(order_history))
        .routes(routes!(customer_summary))
        .routes(routes!(stats))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(command_trace))
        .routes(routes!(live_page))
        .routes(routes!(live_stream))
        .split_for_parts();
    let doc = std::sync::Arc::new(doc);
    router
        .layer(axum::Extension(doc))
        .fallback(cqrs_http::not_found)
        .method_not_allowed_fallback(cqrs_http::method_not_allowed)
        .with_state(app)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            cqrs_http::panic_response,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orders-cqrs",
        description = "CQRS Orders service: commands to the write side, queries from the read models. Every error is {error, message, details}."
    ),
    components(schemas(ErrorBody, orders::Status, orders::views::StatusStats))
)]
struct ApiDoc;

/// Every error answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable code ("order_not_found", "invalid_field", ...).
    pub error: String,
    /// Human text.
    pub message: String,
    /// Extras: `field` for 4xx about a field, versions for conflicts.
    pub details: serde_json::Value,
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", responses((status = 200, description = "The OpenAPI 3.1 document")))]
async fn openapi_json(
    axum::Extension(doc): axum::Extension<std::sync::Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json((*doc).clone())
}

/// `GET /commands/{id}/trace`: the command's journey through every stage.
#[utoipa::path(get, path = "/commands/{id}/trace", tag = "queries", params(("id" = String, Path, description = "Command id")),
    responses((status = 200, description = "The stages with times and coordinates", body = crate::trace::CommandTrace),
        (status = 404, description = "No command with this id (or its trace expired)", body = ErrorBody),
        (status = 503, description = "A database is unavailable", body = ErrorBody)))]
async fn command_trace(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match crate::trace::load(&app, &id).await {
        Ok(Some(t)) => Ok(Json(t).into_response()),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "command_not_found",
            format!("no command {id:?}"),
        )),
        Err(e) => Err(ApiError::unavailable("the trace store", &e)),
    }
}

/// `GET /`: the live page.
#[utoipa::path(get, path = "/", tag = "meta", responses((status = 200, description = "The live page (HTML, no external assets)", content_type = "text/html")))]
async fn live_page() -> Response {
    crate::live::page().await.into_response()
}

/// `GET /stream`: Server-Sent Events of read-model changes and progress.
#[utoipa::path(get, path = "/stream", tag = "meta", responses((status = 200, description = "text/event-stream: `view` {stats, orders} on changes, `progress` {lag, rate} every second", content_type = "text/event-stream")))]
async fn live_stream(state: State<App>) -> Response {
    crate::live::stream(state).await.into_response()
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "meta", responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
async fn metrics() -> Response {
    crate::observe::metrics().await.into_response()
}

/// The answer to every command.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, utoipa::ToSchema)]
pub struct CommandAnswer {
    /// The order.
    pub order_id: String,
    /// Its version after the command.
    pub version: i64,
    /// Id of the command (and its trace).
    pub command_id: String,
    /// Present it to a query to read this write.
    pub consistency_token: String,
}

fn answer(status: StatusCode, outcome: &CommandOutcome) -> Response {
    let token = outcome.token().to_string();
    let body = CommandAnswer {
        order_id: outcome.aggregate_id.clone(),
        version: outcome.version,
        command_id: outcome.command_id.clone(),
        consistency_token: token.clone(),
    };
    let mut res = (status, Json(body)).into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&token) {
        h.insert(TOKEN_HEADER, v);
    }
    if status == StatusCode::CREATED {
        if let Ok(v) = HeaderValue::from_str(&format!("/orders/{}", outcome.aggregate_id)) {
            h.insert("location", v);
        }
    }
    if outcome.replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

fn order_id(raw: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map(|u| u.to_string())
        .map_err(|_| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "order_not_found",
                format!("no order with id {raw:?} (ids are UUIDs)"),
            )
        })
}

async fn run(
    app: &App,
    headers: &HeaderMap,
    id: &str,
    route: &str,
    body: &impl Serialize,
    command: OrderCommand,
    expected_version: Option<i64>,
) -> Result<CommandOutcome, ApiError> {
    if let Some(v) = expected_version.filter(|v| *v < 0) {
        return Err(ApiError::invalid_field(
            "expected_version",
            format!("must be >= 0, got {v}"),
        ));
    }
    let idempotency = match idempotency_key(headers)? {
        Some(key) => {
            let body = serde_json::to_vec(body)
                .map_err(|e| ApiError::invalid_field("body", e.to_string()))?;
            let target = if route == "create" { "" } else { id };
            Some(IdempotencyRecord {
                key,
                request_hash: request_hash(&[route.as_bytes(), target.as_bytes(), &body]),
            })
        }
        None => None,
    };
    let options = CommandOptions {
        command_id: uuid::Uuid::now_v7().to_string(),
        expected_version,
        idempotency,
        now: chrono::Utc::now(),
        max_retries: MAX_RETRIES,
    };
    let started = std::time::Instant::now();
    let result = execute::<Order, _>(&app.store, id, &command, options).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => match e {
            cqrs_sql::CommandError::Domain(d) => cqrs_core::DomainError::code(d),
            cqrs_sql::CommandError::VersionConflict { .. } => "version_conflict",
            cqrs_sql::CommandError::TooManyConflicts(_) => "contention",
            cqrs_sql::CommandError::IdempotencyMismatch => "idempotency_key_reused",
            cqrs_sql::CommandError::Store(_) => "unavailable",
        },
    };
    metrics::counter!("orders_commands_total", "command" => command.name(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("orders_command_duration_seconds", "command" => command.name())
        .record(started.elapsed().as_secs_f64());
    tracing::info!(
        command = command.name(),
        order_id = id,
        ok = result.is_ok(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "command handled"
    );
    Ok(result?)
}

#[utoipa::path(post, path = "/orders", tag = "commands", request_body = orders::CreateOrder, params(("idempotency-key" = Option<String>, Header, description = "Retries with the same key return the first answer")), responses((status = 201, description = "Created", body = CommandAnswer), (status = 400, description = "Malformed JSON or query", body = ErrorBody), (status = 413, description = "Body over 64 KiB", body = ErrorBody), (status = 415, description = "Body not JSON", body = ErrorBody), (status = 422, description = "Missing, unknown or invalid field; rule violated", body = ErrorBody), (status = 404, description = "Unknown order", body = ErrorBody), (status = 409, description = "Transition not allowed or version conflict", body = ErrorBody), (status = 503, description = "Write DB unavailable", body = ErrorBody)))]
async fn create_order(
    State(app): State<App>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateOrder>,
) -> Result<Response, ApiError> {
    let id = uuid::Uuid::now_v7().to_string();
    let outcome = run(
        &app,
        &headers,
        &id,
        "create",
        &body,
        OrderCommand::Create(body.clone()),
        None,
    )
    .await?;
    Ok(answer(StatusCode::CREATED, &outcome))
}

/// `POST /orders/{id}/pay`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayBody {
    /// Must equal the total.
    pub amount_cents: i64,
    /// Provider reference.
    pub payment_ref: String,
    /// Optional optimistic-concurrency guard.
    pub expected_version: Option<i64>,
}

/// `POST /orders/{id}/ship`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipBody {
    /// Carrier.
    pub carrier: String,
    /// Tracking number.
    pub tracking_number: String,
    /// Optional optimistic-concurrency guard.
    pub expected_version: Option<i64>,
}

/// `POST /orders/{id}/deliver`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliverBody {
    /// Optional optimistic-concurrency guard.
    pub expected_version: Option<i64>,
}

/// `POST /orders/{id}/cancel`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Why.
    pub reason: String,
    /// Optional optimistic-concurrency guard.
    pub expected_version: Option<i64>,
}

#[utoipa::path(post, path = "/orders/{id}/pay", tag = "commands", request_body = PayBody, params(("id" = String, Path, description = "Order id"), ("idempotency-key" = Option<String>, Header, description = "Retries with the same key return the first answer")), responses((status = 200, description = "Paid", body = CommandAnswer), (status = 400, description = "Malformed JSON or query", body = ErrorBody), (status = 413, description = "Body over 64 KiB", body = ErrorBody), (status = 415, description = "Body not JSON", body = ErrorBody), (status = 422, description = "Missing, unknown or invalid field; rule violated", body = ErrorBody), (status = 404, description = "Unknown order", body = ErrorBody), (status = 409, description = "Transition not allowed or version conflict", body = ErrorBody), (status = 503, description = "Write DB unavailable", body = ErrorBody)))]
async fn pay_order(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<PayBody>,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    let cmd = OrderCommand::Pay(PayOrder {
        amount_cents: b.amount_cents,
        payment_ref: b.payment_ref.clone(),
    });
    let outcome = run(&app, &headers, &id, "pay", &b, cmd, b.expected_version).await?;
    Ok(answer(StatusCode::OK, &outcome))
}

#[utoipa::path(post, path = "/orders/{id}/ship", tag = "commands", request_body = ShipBody, params(("id" = String, Path, description = "Order id"), ("idempotency-key" = Option<String>, Header, description = "Retries with the same key return the first answer")), responses((status = 200, description = "Shipped", body = CommandAnswer), (status = 400, description = "Malformed JSON or query", body = ErrorBody), (status = 413, description = "Body over 64 KiB", body = ErrorBody), (status = 415, description = "Body not JSON", body = ErrorBody), (status = 422, description = "Missing, unknown or invalid field; rule violated", body = ErrorBody), (status = 404, description = "Unknown order", body = ErrorBody), (status = 409, description = "Transition not allowed or version conflict", body = ErrorBody), (status = 503, description = "Write DB unavailable", body = ErrorBody)))]
async fn ship_order(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<ShipBody>,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    let cmd = OrderCommand::Ship(ShipOrder {
        carrier: b.carrier.clone(),
        tracking_number: b.tracking_number.clone(),
    });
    let outcome = run(&app, &headers, &id, "ship", &b, cmd, b.expected_version).await?;
    Ok(answer(StatusCode::OK, &outcome))
}

#[utoipa::path(post, path = "/orders/{id}/deliver", tag = "commands", request_body = DeliverBody, params(("id" = String, Path, description = "Order id"), ("idempotency-key" = Option<String>, Header, description = "Retries with the same key return the first answer")), responses((status = 200, description = "Delivered", body = CommandAnswer), (status = 400, description = "Malformed JSON or query", body = ErrorBody), (status = 413, description = "Body over 64 KiB", body = ErrorBody), (status = 415, description = "Body not JSON", body = ErrorBody), (status = 422, description = "Missing, unknown or invalid field; rule violated", body = ErrorBody), (status = 404, description = "Unknown order", body = ErrorBody), (status = 409, description = "Transition not allowed or version conflict", body = ErrorBody), (status = 503, description = "Write DB unavailable", body = ErrorBody)))]
async fn deliver_order(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<DeliverBody>,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    let outcome = run(
        &app,
        &headers,
        &id,
        "deliver",
        &b,
        OrderCommand::Deliver,
        b.expected_version,
    )
    .await?;
    Ok(answer(StatusCode::OK, &outcome))
}

#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "commands", request_body = CancelBody, params(("id" = String, Path, description = "Order id"), ("idempotency-key" = Option<String>, Header, description = "Retries with the same key return the first answer")), responses((status = 200, description = "Cancelled", body = CommandAnswer), (status = 400, description = "Malformed JSON or query", body = ErrorBody), (status = 413, description = "Body over 64 KiB", body = ErrorBody), (status = 415, description = "Body not JSON", body = ErrorBody), (status = 422, description = "Missing, unknown or invalid field; rule violated", body = ErrorBody), (status = 404, description = "Unknown order", body = ErrorBody), (status = 409, description = "Transition not allowed or version conflict", body = ErrorBody), (status = 503, description = "Write DB unavailable", body = ErrorBody)))]
async fn cancel_order(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<CancelBody>,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    let cmd = OrderCommand::Cancel(CancelOrder {
        reason: b.reason.clone(),
    });
    let outcome = run(&app, &headers, &id, "cancel", &b, cmd, b.expected_version).await?;
    Ok(answer(StatusCode::OK, &outcome))
}

fn read_error(e: read_model::QueryError) -> ApiError {
    ApiError::unavailable("the read database", &e)
}

#[utoipa::path(get, path = "/orders/{id}", tag = "queries", params(("id" = String, Path, description = "Order id"), ("x-consistency-token" = Option<String>, Header, description = "Wait until the read model includes this write"), ("consistent_with" = Option<String>, Query, description = "The token, as a parameter"), ("wait_ms" = Option<u64>, Query, description = "Longest wait, 0..=30000, default 2000")), responses((status = 200, description = "The order", body = orders::views::OrderView), (status = 404, description = "Not in the read model", body = ErrorBody), (status = 400, description = "Bad query or token", body = ErrorBody), (status = 503, description = "Not consistent within wait_ms (Retry-After)", body = ErrorBody)))]
async fn get_order(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    QueryParams(c): QueryParams<ConsistencyParams>,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    wait_consistent(&app.progress, &app.store, &headers, &c).await?;
    match read_model::get_order(&app.read.pool, &id).await.map_err(read_error)? {
        Some(order) => Ok(Json(order).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            format!("the read model has no order {id} (yet: present a consistency token to wait for a write)"),
        )),
    }
}

/// Query string of `GET /orders`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this customer's orders.
    customer_id: Option<String>,
    /// Only orders in this status (created, paid, shipped, delivered, cancelled).
    status: Option<String>,
    /// Page size, 1..=100 (default 20).
    limit: Option<i64>,
    /// The `next` cursor of the previous page.
    after: Option<String>,
    /// A consistency token to wait for.
    consistent_with: Option<String>,
    /// Longest wait, 0..=30000 ms (default 2000).
    wait_ms: Option<u64>,
}

#[utoipa::path(get, path = "/orders", tag = "queries", params(ListParams, ("x-consistency-token" = Option<String>, Header, description = "Wait until the read model includes this write")), responses((status = 200, description = "A page of orders, newest first: {orders, next}"), (status = 400, description = "Bad query or token", body = ErrorBody), (status = 503, description = "Not consistent within wait_ms (Retry-After)", body = ErrorBody)))]
async fn list_orders(
    State(app): State<App>,
    headers: HeaderMap,
    QueryParams(p): QueryParams<ListParams>,
) -> Result<Response, ApiError> {
    let bad = |field: &str, message: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
            .with_details(json!({ "field": field }))
    };
    let limit = p.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(bad("limit", format!("limit must be 1..=100, got {limit}")));
    }
    let status = match p.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            bad(
                "status",
                format!(
                    "status must be one of created, paid, shipped, delivered, cancelled; got {s:?}"
                ),
            )
        })?),
    };
    let c = ConsistencyParams {
        consistent_with: p.consistent_with,
        wait_ms: p.wait_ms,
    };
    wait_consistent(&app.progress, &app.store, &headers, &c).await?;
    let filter = OrderFilter {
        customer_id: p.customer_id,
        status,
        after: p.after,
        limit,
    };
    let (orders, next) = read_model::list_orders(&app.read.pool, &filter)
        .await
        .map_err(read_error)?;
    Ok(Json(json!({ "orders": orders, "next": next })).into_response())
}

#[utoipa::path(get, path = "/customers/{id}/summary", tag = "queries", params(("id" = String, Path, description = "Customer id"), ("x-consistency-token" = Option<String>, Header, description = "Wait until the read model includes this write"), ("consistent_with" = Option<String>, Query, description = "The token, as a parameter"), ("wait_ms" = Option<u64>, Query, description = "Longest wait, 0..=30000, default 2000")), responses((status = 200, description = "The summary", body = orders::views::CustomerSummary), (status = 404, description = "No orders for the customer", body = ErrorBody), (status = 400, description = "Bad query or token", body = ErrorBody), (status = 503, description = "Not consistent within wait_ms (Retry-After)", body = ErrorBody)))]
async fn customer_summary(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    QueryParams(c): QueryParams<ConsistencyParams>,
) -> Result<Response, ApiError> {
    wait_consistent(&app.progress, &app.store, &headers, &c).await?;
    match read_model::customer_summary(&app.read.pool, &id)
        .await
        .map_err(read_error)?
    {
        Some(s) => Ok(Json(s).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "customer_not_found",
            format!("no orders for customer {id:?}"),
        )),
    }
}

#[utoipa::path(get, path = "/stats", tag = "queries", params(("x-consistency-token" = Option<String>, Header, description = "Wait until the read model includes this write"), ("consistent_with" = Option<String>, Query, description = "The token, as a parameter"), ("wait_ms" = Option<u64>, Query, description = "Longest wait, 0..=30000, default 2000")), responses((status = 200, description = "Count and value per status: {by_status, total_orders}"), (status = 400, description = "Bad query or token", body = ErrorBody), (status = 503, description = "Not consistent within wait_ms (Retry-After)", body = ErrorBody)))]
async fn stats(
    State(app): State<App>,
    headers: HeaderMap,
    QueryParams(c): QueryParams<ConsistencyParams>,
) -> Result<Response, ApiError> {
    wait_consistent(&app.progress, &app.store, &headers, &c).await?;
    let by_status = read_model::stats(&app.read.pool)
        .await
        .map_err(read_error)?;
    let total_orders: i64 = by_status.values().map(|s| s.order_count).sum();
    Ok(Json(json!({ "by_status": by_status, "total_orders": total_orders })).into_response())
}

#[utoipa::path(get, path = "/orders/{id}/history", tag = "queries", params(("id" = String, Path, description = "Order id")), responses((status = 200, description = "The events of the order, from the write side"), (status = 404, description = "Unknown order", body = ErrorBody), (status = 503, description = "Write DB unavailable", body = ErrorBody)))]
async fn order_history(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    let events = app.store.load(&id).await?;
    if events.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            format!("no order {id}"),
        ));
    }
    Ok(Json(json!({ "order_id": id, "events": events })).into_response())
}

#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, description = "The process is alive")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when the write DB, the read DB and Kafka (if configured) answer; 503
/// with the reason otherwise.
#[utoipa::path(get, path = "/readyz", tag = "meta", responses((status = 200, description = "Write DB, read DB and Kafka answer"), (status = 503, description = "A dependency does not answer; checks say which")))]
async fn readyz(State(app): State<App>) -> Response {
    let checks = crate::observe::readiness(&app).await;
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    let body: serde_json::Map<String, serde_json::Value> = checks
        .into_iter()
        .map(|(k, r)| {
            (
                k.to_owned(),
                match r {
                    Ok(()) => json!("ok"),
                    Err(e) => json!(e),
                },
            )
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready, "checks": body }))).into_response()
}
