//! The HTTP API of the Orders service: the router over the command and
//! query routes, the API document, and the routes about the service itself.

use super::access::Caller;
use super::api::{found, owner_of, ErrorBody, NoParamErrors, QueryErrors};
use super::ops::routes as ops;
use super::App;
use super::{commands, inventory, queries};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use cqrs_http::{ApiError, NoParams, PathParam, QueryParams};
use serde_json::json;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

/// The router with every route, limits and JSON fallbacks. Routes and the
/// OpenAPI document come from the same list, so they cannot drift apart.
pub fn router(app: App) -> Router {
    let mut api = OpenApiRouter::with_openapi(ApiDoc::openapi());
    // Each service's routes where it runs: an inventory-only process serves
    // the inventory's; the order side with the inventory elsewhere, its own.
    if app.orders_here {
        api = api
            .routes(routes!(commands::create_order, queries::list_orders))
            .routes(routes!(queries::get_order))
            .routes(routes!(commands::pay_order))
            .routes(routes!(commands::ship_order))
            .routes(routes!(commands::deliver_order))
            .routes(routes!(commands::cancel_order))
            .routes(routes!(queries::order_history))
            .routes(routes!(queries::customer_summary))
            .routes(routes!(super::personal::erase))
            .routes(routes!(queries::stats))
            .routes(routes!(command_trace))
            .routes(routes!(live_page))
            .routes(routes!(live_stream))
            .routes(routes!(stream_ticket))
            .routes(routes!(ops::console));
    }
    // The operations API of whichever services run here.
    api = api
        .routes(routes!(ops::processors))
        .routes(routes!(ops::health))
        .routes(routes!(ops::dead_letters))
        .routes(routes!(ops::dead_letter))
        .routes(routes!(ops::retry_letter))
        .routes(routes!(ops::skip_letter))
        .routes(routes!(ops::rebuilds, ops::start_rebuild))
        .routes(routes!(ops::rebuild))
        .routes(routes!(ops::cancel_rebuild))
        .routes(routes!(ops::actions_list));
    if app.inventory.is_some() {
        api = api
            .routes(routes!(inventory::add_stock))
            .routes(routes!(inventory::get_stock))
            .routes(routes!(inventory::list_stock))
            .routes(routes!(inventory::reserve))
            .routes(routes!(inventory::release))
            .routes(routes!(inventory::dispatch))
            .routes(routes!(inventory::keyed_commands));
    }
    let (router, doc) = api
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .split_for_parts();
    let mut doc = doc;
    super::access::document(&mut doc);
    let doc = std::sync::Arc::new(doc);
    router
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            super::access::guard,
        ))
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
        .layer(cqrs_http::logging::trace_layer())
}

/// The routes of a process without the API (a relay or a projector alone):
/// health, readiness and metrics, under the same access table.
pub fn ops_router(app: App) -> Router {
    use axum::routing::get;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            super::access::guard,
        ))
        .fallback(cqrs_http::not_found)
        .method_not_allowed_fallback(cqrs_http::method_not_allowed)
        .with_state(app)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "orders-cqrs",
        description = "CQRS Orders service: commands to the write side, queries from the read models. Every error is {error, message, details}."
    ),
    components(schemas(
        ErrorBody,
        orders::Status,
        orders::views::StatusStats,
        orders::shipping::ShippingView,
        orders::shipping::ShippingDetails
    ))
)]
struct ApiDoc;

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
    caller: Caller,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
) -> Result<Response, ApiError> {
    let trace = match super::trace::load(&app, &id).await {
        Ok(Some(t)) if caller.own_customer().is_some() => {
            let owner = owner_of(&app, &t.aggregate_id).await?;
            owner.is_some_and(|o| caller.may_see(&o)).then_some(t)
        }
        other => other.map_err(|e| ApiError::unavailable("the trace store", &e))?,
    };
    found(trace, "command_not_found", || {
        format!("no command {id:?} (or its trace expired)")
    })
}

/// `GET /`: the live page.
#[utoipa::path(get, path = "/", tag = "meta",
    responses((status = 200, description = "The live page (HTML, no external assets)", content_type = "text/html"), NoParamErrors))]
async fn live_page(QueryParams(_): QueryParams<NoParams>) -> Response {
    super::live::page().await.into_response()
}

/// Query string of `GET /stream`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamParams {
    /// Command ids (UUIDs, comma-separated, at most 8) whose journeys the
    /// stream carries as `journey` events until each is complete.
    #[param(
        nullable = false,
        min_length = 36,
        max_length = 300,
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(,[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}){0,7}$"
    )]
    follow: Option<String>,
    /// With `true`, the stream also carries the operator's console: `ops`
    /// (the processors and both services' health) every second, and
    /// `dead_letters` (the open ones) whenever they change.
    #[param(nullable = false)]
    ops: Option<bool>,
}

/// `GET /stream`: Server-Sent Events of the server's mode, read-model
/// changes, progress and followed commands' journeys.
#[utoipa::path(get, path = "/stream", tag = "meta", params(StreamParams),
    responses((status = 200, description = "text/event-stream: `mode` {kafka: {topic, partitions} or null, projects_here} first, `view` {stats, orders} on changes, `progress` {lag, rate} every second, `journey` (a command trace) whenever a followed command moves on, until it is complete; with `ops=true` also `ops` {at, processors, health} every second and `dead_letters` {counts, letters} when they change; `end` {reason: token_expired, at} when the caller's token expires (after the leeway), and the stream closes; ends also when the server shuts down", content_type = "text/event-stream"),
        NoParamErrors))]
async fn live_stream(
    State(app): State<App>,
    caller: Caller,
    QueryParams(p): QueryParams<StreamParams>,
) -> Result<Response, ApiError> {
    let follow = match p.follow.as_deref() {
        None => Vec::new(),
        Some(list) => followed_ids(list)?,
    };
    let ends_at = app.access.ends_at(&caller);
    let console = p.ops.unwrap_or(false);
    Ok(super::live::stream(app, follow, ends_at, console).into_response())
}

/// The command ids of `follow`, as stored; a bad list is a bad query (400,
/// as the query extractor answers).
fn followed_ids(list: &str) -> Result<Vec<String>, ApiError> {
    let bad = |message: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("follow: {message}"),
        )
        .with_details(json!({ "field": "follow" }))
    };
    let ids: Vec<String> = list
        .split(',')
        .map(|raw| {
            uuid::Uuid::parse_str(raw)
                .map(|u| u.to_string())
                .map_err(|_| bad(format!("{raw:?} is not a command id (a UUID)")))
        })
        .collect::<Result<_, _>>()?;
    if ids.len() > super::live::MAX_FOLLOWED {
        return Err(bad(format!(
            "at most {} command ids, got {}",
            super::live::MAX_FOLLOWED,
            ids.len()
        )));
    }
    Ok(ids)
}

/// `POST /stream/ticket`: lets a browser open `/stream`, which an
/// `EventSource` cannot send a bearer token to: a stream ticket (signed
/// apart from the token, bound to its subject, good for `/stream` alone and
/// for a minute) goes into an HttpOnly, SameSite=Strict cookie for
/// `/stream` (Secure over HTTPS). The token itself is never echoed; a
/// stream opened with the ticket still ends when the token expires.
#[utoipa::path(post, path = "/stream/ticket", tag = "meta",
    responses((status = 204, description = "The cookie is set (nothing to set when the server checks no caller)"), NoParamErrors))]
async fn stream_ticket(
    State(app): State<App>,
    caller: Caller,
    https: Option<axum::Extension<cqrs_http::tls::Https>>,
    QueryParams(_): QueryParams<NoParams>,
) -> Result<Response, ApiError> {
    let mut res = StatusCode::NO_CONTENT.into_response();
    if let Some(cookie) = app.access.ticket_cookie(&caller, https.is_some())? {
        let value = axum::http::HeaderValue::from_str(&cookie).map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the stream ticket is not a header value",
            )
        })?;
        res.headers_mut()
            .insert(axum::http::header::SET_COOKIE, value);
    }
    Ok(res)
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"), NoParamErrors))]
async fn metrics(QueryParams(_): QueryParams<NoParams>) -> Response {
    super::observe::metrics().await.into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "The process is alive"), NoParamErrors))]
async fn healthz(QueryParams(_): QueryParams<NoParams>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when the write DB accepts writes, the read DB answers and Kafka (if
/// configured) answers; 503 otherwise. Which dependency failed, and why,
/// only an operator (or anyone, when nobody is checked) is told; the log
/// always says it.
#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses((status = 200, description = "Every dependency answers (an operator's token also gets `checks`, each dependency's state)"),
        (status = 503, description = "A dependency does not answer (an operator's token also gets `checks`, saying which and why)"), NoParamErrors))]
async fn readyz(
    State(app): State<App>,
    headers: axum::http::HeaderMap,
    QueryParams(_): QueryParams<NoParams>,
) -> Response {
    let checks = super::observe::readiness(&app).await;
    let ready = checks.iter().all(|(_, r)| r.is_ok());
    for (dependency, why) in checks
        .iter()
        .filter_map(|(k, r)| Some((k, r.as_ref().err()?)))
    {
        tracing::warn!(dependency, reason = %why, "not ready");
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if !app.access.is_operator(&headers) {
        return (status, Json(json!({ "ready": ready }))).into_response();
    }
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
    (status, Json(json!({ "ready": ready, "checks": body }))).into_response()
}
