//! The HTTP API of the Orders service: commands in, queries out.

use super::App;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use cqrs_http::{
    idempotency_key, wait_consistent, ApiError, ConsistencyParams, JsonBody, NoParams, PathParam,
    QueryParams, TOKEN_HEADER,
};
use cqrs_sql::store::request_hash;
use cqrs_sql::{execute_cached, CommandOptions, CommandOutcome, EventStore, IdempotencyRecord};
use orders::read_model::{self, OrderFilter};
use orders::{CancelOrder, CreateOrder, OrderCommand, PayOrder, ShipOrder, Status};
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
        // The server reads and limits every body before a handler runs
        // (`cqrs_http::server`, `--http-max-body-bytes`).
        .layer(axum::extract::DefaultBodyLimit::disable())
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

/// The errors of every route that takes a JSON body.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum BodyErrors {
    /// Malformed JSON, a bad path segment or query parameter.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// The body did not arrive in time.
    #[response(status = 408)]
    Timeout(ErrorBody),
    /// The body is over the limit (64 KiB by default), or declares so.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The body is not sent as JSON.
    #[response(status = 415)]
    NotJson(ErrorBody),
    /// A missing, unknown or invalid field; a rule violated.
    #[response(status = 422)]
    Invalid(ErrorBody),
    /// The write DB is unavailable, or the server is shutting down.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The errors of a command on an existing order (beside [`BodyErrors`]).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum OrderCommandErrors {
    /// No such order.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The transition is not allowed, or `expected_version` is stale.
    #[response(status = 409)]
    Conflict(ErrorBody),
}

/// The errors of every query.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum QueryErrors {
    /// A bad path segment, query parameter or token.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Not in the read model (yet: present a token to wait for a write).
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The token names a write that never happened (`token_not_issued`).
    #[response(status = 422)]
    TokenNotIssued(ErrorBody),
    /// Not consistent within `wait_ms` (`Retry-After`), a database
    /// unavailable, or the server shutting down.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The only error of routes that take nothing.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum NoParamErrors {
    /// A query parameter was given (these routes take none).
    #[response(status = 400)]
    BadRequest(ErrorBody),
}

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document"), NoParamErrors))]
async fn openapi_json(
    axum::Extension(doc): axum::Extension<std::sync::Arc<utoipa::openapi::OpenApi>>,
    QueryParams(_): QueryParams<NoParams>,
) -> Json<utoipa::openapi::OpenApi> {
    Json((*doc).clone())
}

/// `GET /commands/{id}/trace`: the command's journey through every stage.
#[utoipa::path(get, path = "/commands/{id}/trace", tag = "queries",
    params(("id" = String, Path, description = "Command id (a UUID, from the command's answer)",
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")),
    responses((status = 200, description = "The stages with times and coordinates", body = super::trace::CommandTrace),
        QueryErrors))]
async fn command_trace(
    State(app): State<App>,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
) -> Result<Response, ApiError> {
    match super::trace::load(&app, &id).await {
        Ok(Some(t)) => Ok(Json(t).into_response()),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "command_not_found",
            format!("no command {id:?} (or its trace expired)"),
        )),
        Err(e) => Err(ApiError::unavailable("the trace store", &e)),
    }
}

/// `GET /`: the live page.
#[utoipa::path(get, path = "/", tag = "meta",
    responses((status = 200, description = "The live page (HTML, no external assets)", content_type = "text/html"), NoParamErrors))]
async fn live_page(QueryParams(_): QueryParams<NoParams>) -> Response {
    super::live::page().await.into_response()
}

/// `GET /stream`: Server-Sent Events of read-model changes and progress.
#[utoipa::path(get, path = "/stream", tag = "meta",
    responses((status = 200, description = "text/event-stream: `view` {stats, orders} on changes, `progress` {lag, rate} every second; ends when the server shuts down", content_type = "text/event-stream"),
        NoParamErrors))]
async fn live_stream(State(app): State<App>, QueryParams(_): QueryParams<NoParams>) -> Response {
    super::live::stream(app.live.clone(), app.closing.clone()).into_response()
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"), NoParamErrors))]
async fn metrics(QueryParams(_): QueryParams<NoParams>) -> Response {
    super::observe::metrics().await.into_response()
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
    let result = execute_cached(&app.store, Some(&*app.states), id, &command, options).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
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

#[utoipa::path(post, path = "/orders", tag = "commands", request_body = orders::CreateOrder,
    params(("idempotency-key" = Option<String>, Header, nullable = false, description = "Retries with the same key return the first answer",
        pattern = "^[!-~]{1,255}$")),
    responses((status = 201, description = "Created", body = CommandAnswer), BodyErrors))]
async fn create_order(
    State(app): State<App>,
    QueryParams(_): QueryParams<NoParams>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateOrder>,
) -> Result<Response, ApiError> {
    let id = uuid::Uuid::now_v7().to_string();
    // Generated here and now: nothing to load.
    app.states.insert_new(&id);
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
    /// Must equal the order's total (at most 10^14 cents).
    #[schema(minimum = 0, maximum = 100000000000000_i64)]
    pub amount_cents: i64,
    /// The payment provider's reference: 1..=500 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub payment_ref: String,
    /// Refuse unless the order is at this version (optimistic concurrency).
    #[schema(minimum = 0)]
    pub expected_version: Option<i64>,
}

/// `POST /orders/{id}/ship`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipBody {
    /// Who carries it: 1..=500 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub carrier: String,
    /// The carrier's tracking number: 1..=500 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub tracking_number: String,
    /// Refuse unless the order is at this version (optimistic concurrency).
    #[schema(minimum = 0)]
    pub expected_version: Option<i64>,
}

/// `POST /orders/{id}/deliver`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliverBody {
    /// Refuse unless the order is at this version (optimistic concurrency).
    #[schema(minimum = 0)]
    pub expected_version: Option<i64>,
}

/// `POST /orders/{id}/cancel`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Why: 1..=500 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub reason: String,
    /// Refuse unless the order is at this version (optimistic concurrency).
    #[schema(minimum = 0)]
    pub expected_version: Option<i64>,
}

/// A command on an existing order: the path's id, then the body's command.
async fn order_command(
    app: &App,
    id: &str,
    headers: &HeaderMap,
    route: &str,
    body: &impl Serialize,
    command: OrderCommand,
    expected_version: Option<i64>,
) -> Result<Response, ApiError> {
    let id = order_id(id)?;
    let outcome = run(app, headers, &id, route, body, command, expected_version).await?;
    Ok(answer(StatusCode::OK, &outcome))
}

#[utoipa::path(post, path = "/orders/{id}/pay", tag = "commands", request_body = PayBody,
    params(("id" = String, Path, description = "Order id"),
        ("idempotency-key" = Option<String>, Header, nullable = false, description = "Retries with the same key return the first answer", pattern = "^[!-~]{1,255}$")),
    responses((status = 200, description = "Paid", body = CommandAnswer), BodyErrors, OrderCommandErrors))]
async fn pay_order(
    State(app): State<App>,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<PayBody>,
) -> Result<Response, ApiError> {
    let cmd = OrderCommand::Pay(PayOrder {
        amount_cents: b.amount_cents,
        payment_ref: b.payment_ref.clone(),
    });
    order_command(&app, &id, &headers, "pay", &b, cmd, b.expected_version).await
}

#[utoipa::path(post, path = "/orders/{id}/ship", tag = "commands", request_body = ShipBody,
    params(("id" = String, Path, description = "Order id"),
        ("idempotency-key" = Option<String>, Header, nullable = false, description = "Retries with the same key return the first answer", pattern = "^[!-~]{1,255}$")),
    responses((status = 200, description = "Shipped", body = CommandAnswer), BodyErrors, OrderCommandErrors))]
async fn ship_order(
    State(app): State<App>,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<ShipBody>,
) -> Result<Response, ApiError> {
    let cmd = OrderCommand::Ship(ShipOrder {
        carrier: b.carrier.clone(),
        tracking_number: b.tracking_number.clone(),
    });
    order_command(&app, &id, &headers, "ship", &b, cmd, b.expected_version).await
}

#[utoipa::path(post, path = "/orders/{id}/deliver", tag = "commands", request_body = DeliverBody,
    params(("id" = String, Path, description = "Order id"),
        ("idempotency-key" = Option<String>, Header, nullable = false, description = "Retries with the same key return the first answer", pattern = "^[!-~]{1,255}$")),
    responses((status = 200, description = "Delivered", body = CommandAnswer), BodyErrors, OrderCommandErrors))]
async fn deliver_order(
    State(app): State<App>,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<DeliverBody>,
) -> Result<Response, ApiError> {
    let cmd = OrderCommand::Deliver;
    order_command(&app, &id, &headers, "deliver", &b, cmd, b.expected_version).await
}

#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "commands", request_body = CancelBody,
    params(("id" = String, Path, description = "Order id"),
        ("idempotency-key" = Option<String>, Header, nullable = false, description = "Retries with the same key return the first answer", pattern = "^[!-~]{1,255}$")),
    responses((status = 200, description = "Cancelled", body = CommandAnswer), BodyErrors, OrderCommandErrors))]
async fn cancel_order(
    State(app): State<App>,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<CancelBody>,
) -> Result<Response, ApiError> {
    let cmd = OrderCommand::Cancel(CancelOrder {
        reason: b.reason.clone(),
    });
    order_command(&app, &id, &headers, "cancel", &b, cmd, b.expected_version).await
}

fn read_error(e: read_model::QueryError) -> ApiError {
    ApiError::unavailable("the read database", &e)
}

#[utoipa::path(get, path = "/orders/{id}", tag = "queries",
    params(("id" = String, Path, description = "Order id"),
        ("x-consistency-token" = Option<String>, Header, nullable = false, description = "Wait until the read model includes this write",
            pattern = r"^v1\.[0-9]{1,18}\.[1-9][0-9]{0,17}\.[A-Za-z0-9-]{1,200}$"),
        ConsistencyParams),
    responses((status = 200, description = "The order", body = orders::views::OrderView), QueryErrors))]
async fn get_order(
    State(app): State<App>,
    PathParam(id): PathParam<String>,
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
    #[param(
        nullable = false,
        min_length = 1,
        max_length = 64,
        pattern = r"^[A-Za-z0-9_-]*$"
    )]
    customer_id: Option<String>,
    /// Only orders in this status.
    #[param(nullable = false, inline)]
    status: Option<Status>,
    /// Page size, 1..=100 (default 20).
    #[param(nullable = false, minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The `next` cursor of the previous page.
    #[param(nullable = false, min_length = 1, max_length = 200)]
    after: Option<String>,
    /// A consistency token to wait for (instead of the header).
    #[param(
        nullable = false,
        pattern = r"^v1\.[0-9]{1,18}\.[1-9][0-9]{0,17}\.[A-Za-z0-9-]{1,200}$"
    )]
    consistent_with: Option<String>,
    /// Longest wait for the token, in ms (default 2000).
    #[param(nullable = false, minimum = 0, maximum = 30000)]
    wait_ms: Option<u64>,
}

/// A page of orders.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderPage {
    /// Newest first.
    pub orders: Vec<orders::views::OrderView>,
    /// The cursor of the next page (`after`), null on the last page.
    pub next: Option<String>,
}

#[utoipa::path(get, path = "/orders", tag = "queries",
    params(ListParams,
        ("x-consistency-token" = Option<String>, Header, nullable = false, description = "Wait until the read model includes this write",
            pattern = r"^v1\.[0-9]{1,18}\.[1-9][0-9]{0,17}\.[A-Za-z0-9-]{1,200}$")),
    responses((status = 200, description = "A page of orders, newest first", body = OrderPage), QueryErrors))]
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
    if let Some(c) = p
        .customer_id
        .as_deref()
        .filter(|c| !orders::aggregate::is_customer_id(c))
    {
        return Err(bad(
            "customer_id",
            format!("customer_id must be 1..=64 of A-Z, a-z, 0-9, '_' or '-', got {c:?}"),
        ));
    }
    if let Some(a) = p
        .after
        .as_deref()
        .filter(|a| a.is_empty() || a.chars().count() > 200)
    {
        return Err(bad(
            "after",
            format!(
                "after must be 1..=200 characters (a `next` cursor), got {} characters",
                a.chars().count()
            ),
        ));
    }
    let c = ConsistencyParams {
        consistent_with: p.consistent_with,
        wait_ms: p.wait_ms,
    };
    wait_consistent(&app.progress, &app.store, &headers, &c).await?;
    let filter = OrderFilter {
        customer_id: p.customer_id,
        status: p.status,
        after: p.after,
        limit,
    };
    let (orders, next) = read_model::list_orders(&app.read.pool, &filter)
        .await
        .map_err(read_error)?;
    Ok(Json(OrderPage { orders, next }).into_response())
}

#[utoipa::path(get, path = "/customers/{id}/summary", tag = "queries",
    params(("id" = String, Path, description = "Customer id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]*$"),
        ("x-consistency-token" = Option<String>, Header, nullable = false, description = "Wait until the read model includes this write",
            pattern = r"^v1\.[0-9]{1,18}\.[1-9][0-9]{0,17}\.[A-Za-z0-9-]{1,200}$"),
        ConsistencyParams),
    responses((status = 200, description = "The summary", body = orders::views::CustomerSummary), QueryErrors))]
async fn customer_summary(
    State(app): State<App>,
    PathParam(id): PathParam<String>,
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

/// Count and value of the orders in each status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatsView {
    /// Every status, with its orders and their value.
    pub by_status: std::collections::BTreeMap<Status, orders::views::StatusStats>,
    /// Orders in all statuses.
    pub total_orders: i64,
}

#[utoipa::path(get, path = "/stats", tag = "queries",
    params(("x-consistency-token" = Option<String>, Header, nullable = false, description = "Wait until the read model includes this write",
            pattern = r"^v1\.[0-9]{1,18}\.[1-9][0-9]{0,17}\.[A-Za-z0-9-]{1,200}$"),
        ConsistencyParams),
    responses((status = 200, description = "Count and value per status", body = StatsView), QueryErrors))]
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
    Ok(Json(StatsView {
        by_status,
        total_orders,
    })
    .into_response())
}

#[utoipa::path(get, path = "/orders/{id}/history", tag = "queries",
    params(("id" = String, Path, description = "Order id")),
    responses((status = 200, description = "The events of the order, from the write side"), QueryErrors))]
async fn order_history(
    State(app): State<App>,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
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

#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "The process is alive"), NoParamErrors))]
async fn healthz(QueryParams(_): QueryParams<NoParams>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when the write DB accepts writes, the read DB answers and Kafka (if
/// configured) answers; 503 with the reason otherwise.
#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses((status = 200, description = "Every dependency answers"),
        (status = 503, description = "A dependency does not answer; checks say which"), NoParamErrors))]
async fn readyz(State(app): State<App>, QueryParams(_): QueryParams<NoParams>) -> Response {
    let checks = super::observe::readiness(&app).await;
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
