//! The inventory's routes: stock in (`POST /inventory/{sku}/stock`) on its
//! own event store, and its read model (`GET /inventory/{sku}`,
//! `GET /inventory`), with the same idempotency keys and consistency tokens
//! as the order routes.

use super::access::Caller;
use super::api::{BodyErrors, QueryErrors};
use super::App;
use crate::inventory_link::{
    KeyedStockCommand, OrderStockBody, ReservationBody, StockCommandAnswer,
};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cqrs_http::{
    idempotency_key, wait_consistent, ApiError, ConsistencyHeader, ConsistencyParams,
    IdempotencyHeader, JsonBody, PathParam, QueryParams, TOKEN_HEADER,
};
use cqrs_sql::store::request_hash;
use cqrs_sql::{CommandOptions, IdempotencyRecord};
use inventory::read_model::{self, StockView};
use inventory::StockCommand;
use serde::{Deserialize, Serialize};

/// The SKU in the path of every inventory route, for API documents
/// (handlers read it with `sku_of`).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SkuPath {
    /// Stock keeping unit
    #[param(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub sku: String,
}

/// The SKU a path names, checked as order lines check theirs.
fn sku_of(raw: &str) -> Result<String, ApiError> {
    let ok = !raw.is_empty()
        && raw.chars().count() <= orders::aggregate::limits::MAX_SKU
        && !raw.chars().any(char::is_control);
    ok.then(|| raw.to_owned()).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "sku: 1..=64 characters, no control characters",
        )
    })
}

/// Body of `POST /inventory/{sku}/stock`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddStock {
    /// Units that arrived, 1..=1,000,000.
    #[schema(minimum = 1, maximum = 1000000)]
    pub quantity: i64,
}

/// The answer to a stock command.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, utoipa::ToSchema)]
pub struct StockAnswer {
    /// The SKU.
    pub sku: String,
    /// Its stock's version after the command.
    pub version: i64,
    /// Id of the command.
    pub command_id: String,
    /// Present it to `GET /inventory/{sku}` to read this write.
    pub consistency_token: String,
}

#[utoipa::path(post, path = "/inventory/{sku}/stock", tag = "inventory", request_body = AddStock,
    params(SkuPath, IdempotencyHeader),
    responses((status = 200, description = "Added: the stock's new version, and the token to read it with", body = StockAnswer),
        BodyErrors))]
pub(super) async fn add_stock(
    State(app): State<App>,
    caller: Caller,
    PathParam(sku): PathParam<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<AddStock>,
) -> Result<Response, ApiError> {
    let sku = sku_of(&sku)?;
    let idempotency = idempotency_key(&headers)?.map(|key| {
        let hash = request_hash(&[b"AddStock", sku.as_bytes(), &body.quantity.to_be_bytes()]);
        IdempotencyRecord::for_caller(caller.key_scope(), &key, hash)
    });
    let options = CommandOptions {
        idempotency,
        caller: caller.sub().map(str::to_owned),
        ..CommandOptions::new()
    };
    let command = StockCommand::Add {
        quantity: body.quantity,
    };
    let options = CommandOptions {
        traceparent: super::telemetry::for_command(&headers),
        ..options
    };
    let result = local(&app)?.command(&sku, &command, options).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    tracing::info!(command = "AddStock", sku = %sku, caller = caller.sub(), outcome, "command handled");
    let done = result?;
    let token = done.token().to_string();
    let mut res = Json(StockAnswer {
        sku,
        version: done.version,
        command_id: done.command_id.clone(),
        consistency_token: token.clone(),
    })
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&token) {
        res.headers_mut().insert(TOKEN_HEADER, v);
    }
    if done.replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(res)
}

/// The inventory of this process (its routes are served only where it runs).
fn local(app: &App) -> Result<&crate::inventory_link::LocalInventory, ApiError> {
    app.inventory.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the inventory runs in another service",
        )
    })
}

fn read_error(e: sqlx::Error) -> ApiError {
    ApiError::unavailable("the read database", &e)
}

#[utoipa::path(get, path = "/inventory/{sku}", tag = "inventory",
    params(SkuPath, ConsistencyHeader, ConsistencyParams),
    responses((status = 200, description = "The SKU's stock", body = StockView), QueryErrors))]
pub(super) async fn get_stock(
    State(app): State<App>,
    PathParam(sku): PathParam<String>,
    headers: HeaderMap,
    QueryParams(c): QueryParams<ConsistencyParams>,
) -> Result<Response, ApiError> {
    let sku = sku_of(&sku)?;
    wait_consistent(&app.inventory_progress, local(&app)?.store(), &headers, &c).await?;
    let stock = read_model::stock(&app.read.pool, &sku)
        .await
        .map_err(read_error)?;
    super::api::found(stock, "sku_not_tracked", || {
        format!("no stock records for {sku:?}: it is not tracked (always available to orders)")
    })
}

/// Query string of `GET /inventory`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InventoryParams {
    /// The SKU after which the page starts (the last one of the page before).
    #[param(nullable = false, min_length = 1, max_length = 64)]
    after: Option<String>,
    /// Page size, 1..=100 (default 50).
    #[param(nullable = false, minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// A page of tracked SKUs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InventoryPage {
    /// In SKU order.
    pub stock: Vec<StockView>,
    /// `after` for the next page (absent on the last one).
    pub next: Option<String>,
}

#[utoipa::path(get, path = "/inventory", tag = "inventory", params(InventoryParams),
    responses((status = 200, description = "Tracked SKUs in SKU order", body = InventoryPage), QueryErrors))]
pub(super) async fn list_stock(
    State(app): State<App>,
    QueryParams(p): QueryParams<InventoryParams>,
) -> Result<Response, ApiError> {
    if let Some(after) = &p.after {
        let chars = after.chars().count();
        if !(1..=orders::aggregate::limits::MAX_SKU).contains(&chars) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("after: 1..=64 characters (a SKU), got {chars}"),
            )
            .with_details(serde_json::json!({ "field": "after" })));
        }
    }
    let limit = p.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit: must be 1..=100, got {limit}"),
        ));
    }
    let stock = read_model::list(&app.read.pool, p.after.as_deref(), limit)
        .await
        .map_err(read_error)?;
    let next = (stock.len() as i64 == limit)
        .then(|| stock.last().map(|s| s.sku.clone()))
        .flatten();
    Ok(Json(InventoryPage { stock, next }).into_response())
}

/// The `Idempotency-Key` the saga's stock routes require.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct RequiredIdempotencyKey {
    /// Required: a retry with the same key gets the first answer again,
    /// never a second reservation.
    #[param(rename = "idempotency-key", pattern = "^[!-~]{1,255}$")]
    pub key: String,
}

#[utoipa::path(post, path = "/inventory/{sku}/reservations", tag = "inventory", request_body = ReservationBody,
    params(SkuPath, RequiredIdempotencyKey),
    responses((status = 200, description = "Reserved, or recorded as rejected (not enough available); for a key seen before, its first answer again", body = StockCommandAnswer),
        (status = 404, description = "The SKU has no stock records (stock_not_tracked)", body = super::api::ErrorBody),
        (status = 409, description = "The order holds another quantity already (reservation_mismatch)", body = super::api::ErrorBody),
        BodyErrors))]
/// Holds units for an order (the order saga's reservation).
pub(super) async fn reserve(
    State(app): State<App>,
    caller: Caller,
    PathParam(sku): PathParam<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ReservationBody>,
) -> Result<Response, ApiError> {
    if !(1..=1_000_000).contains(&body.quantity) {
        return Err(field_error("quantity", "1..=1000000"));
    }
    let command = StockCommand::Reserve {
        order_id: order_id_of(body.order_id)?,
        quantity: body.quantity,
    };
    saga_command(&app, &caller, &sku, &headers, "Reserve", command).await
}

#[utoipa::path(post, path = "/inventory/{sku}/releases", tag = "inventory", request_body = OrderStockBody,
    params(SkuPath, RequiredIdempotencyKey),
    responses((status = 200, description = "What the order held is back on the shelf (nothing when it held nothing)", body = StockCommandAnswer),
        (status = 404, description = "The SKU has no stock records (stock_not_tracked)", body = super::api::ErrorBody),
        (status = 409, description = "The order holds another quantity already (reservation_mismatch)", body = super::api::ErrorBody),
        BodyErrors))]
/// Gives back what an order holds (the order saga's release).
pub(super) async fn release(
    State(app): State<App>,
    caller: Caller,
    PathParam(sku): PathParam<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<OrderStockBody>,
) -> Result<Response, ApiError> {
    let command = StockCommand::Release {
        order_id: order_id_of(body.order_id)?,
    };
    saga_command(&app, &caller, &sku, &headers, "Release", command).await
}

#[utoipa::path(post, path = "/inventory/{sku}/dispatches", tag = "inventory", request_body = OrderStockBody,
    params(SkuPath, RequiredIdempotencyKey),
    responses((status = 200, description = "What the order held left the shelf (nothing when it held nothing)", body = StockCommandAnswer),
        (status = 404, description = "The SKU has no stock records (stock_not_tracked)", body = super::api::ErrorBody),
        (status = 409, description = "The order holds another quantity already (reservation_mismatch)", body = super::api::ErrorBody),
        BodyErrors))]
/// The order shipped: what it holds leaves the shelf (the saga's dispatch).
pub(super) async fn dispatch(
    State(app): State<App>,
    caller: Caller,
    PathParam(sku): PathParam<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<OrderStockBody>,
) -> Result<Response, ApiError> {
    let command = StockCommand::Dispatch {
        order_id: order_id_of(body.order_id)?,
    };
    saga_command(&app, &caller, &sku, &headers, "Dispatch", command).await
}

fn field_error(field: &str, rule: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_field",
        format!("{field}: {rule}"),
    )
    .with_details(serde_json::json!({ "field": field }))
}

/// An order id as the schema says: 1..=64 characters, no control ones.
fn order_id_of(id: String) -> Result<String, ApiError> {
    let ok = !id.is_empty() && id.chars().count() <= 64 && !id.chars().any(char::is_control);
    ok.then_some(id)
        .ok_or_else(|| field_error("order_id", "1..=64 characters, no control characters"))
}

/// The saga's stock commands, for the order side when the inventory is a
/// service of its own. The key is required: a retry must never reserve
/// twice.
async fn saga_command(
    app: &App,
    caller: &Caller,
    sku: &str,
    headers: &HeaderMap,
    kind: &'static str,
    command: StockCommand,
) -> Result<Response, ApiError> {
    let sku = sku_of(sku)?;
    let Some(key) = idempotency_key(headers)? else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            "a stock command needs an Idempotency-Key header: a retry must not reserve twice",
        ));
    };
    let hash = request_hash(&[
        b"StockCommand",
        sku.as_bytes(),
        format!("{command:?}").as_bytes(),
    ]);
    let idempotency = IdempotencyRecord::for_caller(caller.key_scope(), &key, hash);
    let inventory = local(app)?;
    let options = CommandOptions {
        idempotency: Some(idempotency),
        caller: caller.sub().map(str::to_owned),
        traceparent: super::telemetry::for_command(headers),
        ..CommandOptions::new()
    };
    let result = inventory.command(&sku, &command, options).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    tracing::info!(command = kind, sku = %sku, caller = caller.sub(), outcome, "command handled");
    let done = result?;
    let (version, command_id, replayed) = (done.version, done.command_id.clone(), done.replayed);
    let event_types = crate::inventory_link::event_types(inventory.store(), done).await?;
    Ok(Json(StockCommandAnswer {
        sku,
        version,
        command_id,
        event_types,
        replayed,
    })
    .into_response())
}

/// Query string of `GET /stock-commands`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KeyParams {
    /// Idempotency keys (repeat `key=`), 1..=100 of them.
    #[param(min_items = 1, max_items = 100)]
    pub key: Vec<String>,
}

#[utoipa::path(get, path = "/stock-commands", tag = "inventory", params(KeyParams),
    responses((status = 200, description = "The stock commands stored under the caller's keys, with the events each appended", body = [KeyedStockCommand]), QueryErrors))]
/// What the stock commands sent with these keys did (the order side's
/// traces show the saga's reactions with it).
pub(super) async fn keyed_commands(
    State(app): State<App>,
    caller: Caller,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    // Repeated `key=` (serde_urlencoded reads a sequence no other way).
    let keys: Vec<String> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .map(|(k, v)| match k.as_str() {
            "key" => Ok(v),
            other => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("unknown query parameter {other:?}: only key=..."),
            )),
        })
        .collect::<Result<_, _>>()?;
    if keys.is_empty() || keys.len() > 100 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("key: 1..=100 of them, got {}", keys.len()),
        ));
    }
    // Stored in the caller's scope, as `stock_command` stored them.
    let scoped: Vec<String> = keys
        .iter()
        .map(|k| IdempotencyRecord::for_caller(caller.key_scope(), k, String::new()).key)
        .collect();
    let found = crate::inventory_link::keyed_in(local(&app)?.store(), &scoped).await?;
    let answer: Vec<KeyedStockCommand> = found
        .into_iter()
        .filter_map(|mut k| {
            let i = scoped.iter().position(|s| *s == k.key)?;
            k.key = keys[i].clone();
            Some(k)
        })
        .collect();
    Ok(Json(answer).into_response())
}
