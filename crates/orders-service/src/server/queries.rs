//! The query routes: they read only the read models (and the write side's
//! event history), waiting for a consistency token when one is presented.

use super::access::Caller;
use super::api::{order_id, owner_in, OrderPath, QueryErrors};
use super::cached;
use super::App;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cqrs_http::{
    wait_consistent, ApiError, ConsistencyHeader, ConsistencyParams, NoParams, PathParam,
    QueryParams,
};
use cqrs_sql::EventStore;
use orders::read_model::{self, OrderFilter};
use orders::Status;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A failed read-model query: the read DB is away.
fn read_error(e: read_model::QueryError) -> ApiError {
    ApiError::unavailable("the read database", &e)
}

#[utoipa::path(get, path = "/orders/{id}", tag = "queries",
    params(OrderPath, ConsistencyHeader, ConsistencyParams),
    responses((status = 200, description = "The order", body = orders::views::OrderView), QueryErrors))]
pub(super) async fn get_order(
    State(app): State<App>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    headers: HeaderMap,
    QueryParams(c): QueryParams<ConsistencyParams>,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    let token = wait_consistent(&app.progress, &app.store, &headers, &c).await?;
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            format!("the read model has no order {id} (yet: present a consistency token to wait for a write)"),
        )
    };
    let at_least = match &token {
        Some(t) if t.aggregate_id == id => t.version,
        _ => 0,
    };
    let cache = &app.caches.orders;
    // Another customer's order is answered as if it did not exist.
    if let Some(hit) = cache.row(&id, at_least) {
        if !caller.may_see(&hit.owner) {
            return Err(missing());
        }
        let body = || serde_json::from_slice(&hit.json);
        return with_shipping(
            &app,
            &caller,
            &hit.owner,
            hit.sealed.as_ref(),
            hit.response(),
            body,
        )
        .await;
    }
    let stamp = cache.stamp();
    let order = read_model::get_order(&app.read.pool, &id)
        .await
        .map_err(read_error)?
        .ok_or_else(missing)?;
    let owner = order.customer_id.clone();
    let sealed = order.sealed_shipping.clone();
    let res = cached::keep(
        cache,
        &id,
        Some(order.version),
        stamp,
        &owner,
        &order,
        sealed.clone(),
    );
    if !caller.may_see(&owner) {
        return Err(missing());
    }
    let body = || serde_json::to_value(&order);
    with_shipping(&app, &caller, &owner, sealed.as_ref(), res, body).await
}

/// An order's answer with its shipping details for those who may see them
/// (opened now: the cached answer never holds them), else `plain` as it is.
/// `body` (the answer as JSON) is made only then.
async fn with_shipping(
    app: &App,
    caller: &Caller,
    owner: &str,
    sealed: Option<&orders::shipping::ShippingRecord>,
    plain: Response,
    body: impl FnOnce() -> serde_json::Result<serde_json::Value>,
) -> Result<Response, ApiError> {
    if sealed.is_none() || !super::personal::may_see(caller, owner) {
        return Ok(plain);
    }
    let opened = super::personal::open(app, &[sealed]).await?;
    let mut value = body().map_err(|e| ApiError::unavailable("the order's answer", &e))?;
    if let (Some(obj), Some(Some(view))) = (value.as_object_mut(), opened.into_iter().next()) {
        obj.insert(
            "shipping".into(),
            serde_json::to_value(view).unwrap_or(serde_json::Value::Null),
        );
    }
    Ok(Json(value).into_response())
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
    params(ListParams, ConsistencyHeader),
    responses((status = 200, description = "A page of orders, newest first", body = OrderPage), QueryErrors))]
pub(super) async fn list_orders(
    State(app): State<App>,
    caller: Caller,
    headers: HeaderMap,
    QueryParams(mut p): QueryParams<ListParams>,
) -> Result<Response, ApiError> {
    if let Some(own) = caller.own_customer() {
        if p.customer_id.as_deref().is_some_and(|c| c != own) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a customer lists only its own orders",
            ));
        }
        p.customer_id = Some(own.to_owned());
    }
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
    let (mut orders, next) = read_model::list_orders(&app.read.pool, &filter)
        .await
        .map_err(read_error)?;
    // Staff see the shipping details in lists; customers in their own
    // order only.
    super::personal::reveal(&app, &caller, &mut orders, true).await?;
    Ok(Json(OrderPage { orders, next }).into_response())
}

#[utoipa::path(get, path = "/customers/{id}/summary", tag = "queries",
    params(("id" = String, Path, description = "Customer id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]*$"),
        ConsistencyHeader, ConsistencyParams),
    responses((status = 200, description = "The summary", body = orders::views::CustomerSummary), QueryErrors))]
pub(super) async fn customer_summary(
    State(app): State<App>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    headers: HeaderMap,
    QueryParams(c): QueryParams<ConsistencyParams>,
) -> Result<Response, ApiError> {
    let token = wait_consistent(&app.progress, &app.store, &headers, &c).await?;
    let missing = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "customer_not_found",
            format!("no orders for customer {id:?}"),
        )
    };
    if !caller.may_see(&id) {
        return Err(missing());
    }
    let cache = &app.caches.summaries;
    if let Some(hit) = cache.current(&id, cached::token_of(&token)) {
        return Ok(hit.response());
    }
    let stamp = cache.stamp();
    let summary = read_model::customer_summary(&app.read.pool, &id)
        .await
        .map_err(read_error)?
        .ok_or_else(missing)?;
    Ok(cached::keep(cache, &id, None, stamp, &id, &summary, None))
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
    params(ConsistencyHeader, ConsistencyParams),
    responses((status = 200, description = "Count and value per status", body = StatsView), QueryErrors))]
pub(super) async fn stats(
    State(app): State<App>,
    headers: HeaderMap,
    QueryParams(c): QueryParams<ConsistencyParams>,
) -> Result<Response, ApiError> {
    let token = wait_consistent(&app.progress, &app.store, &headers, &c).await?;
    let cache = &app.caches.stats;
    if let Some(hit) = cache.current("stats", cached::token_of(&token)) {
        return Ok(hit.response());
    }
    let stamp = cache.stamp();
    let by_status = read_model::stats(&app.read.pool)
        .await
        .map_err(read_error)?;
    let total_orders: i64 = by_status.values().map(|s| s.order_count).sum();
    let view = StatsView {
        by_status,
        total_orders,
    };
    Ok(cached::keep(cache, "stats", None, stamp, "", &view, None))
}

#[utoipa::path(get, path = "/orders/{id}/history", tag = "queries",
    params(OrderPath),
    responses((status = 200, description = "The events of the order, from the write side"), QueryErrors))]
pub(super) async fn order_history(
    State(app): State<App>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    let mut events = app.store.load(&id).await?;
    if !owner_in(&id, &events)?.is_some_and(|owner| caller.may_see(&owner)) {
        events.clear();
    }
    if events.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            format!("no order {id}"),
        ));
    }
    Ok(Json(json!({ "order_id": id, "events": events })).into_response())
}
