//! The command routes: each turns its JSON body into an [`OrderCommand`] and
//! runs it on the write side, with idempotency keys, optimistic versions,
//! metrics and a log line.

use super::access::Caller;
use super::api::{order_id, owner_of, BodyErrors, OrderCommandErrors, OrderPath};
use super::App;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cqrs_http::{
    idempotency_key, ApiError, IdempotencyHeader, JsonBody, NoParams, PathParam, QueryParams,
    TOKEN_HEADER,
};
use cqrs_sql::store::request_hash;
use cqrs_sql::{execute_cached, CommandOptions, CommandOutcome, IdempotencyRecord};
use orders::{CancelOrder, CommandKind, CreateOrder, OrderCommand, PayOrder, ShipOrder};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

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

/// A command on an existing order that succeeded, for API documents.
#[derive(utoipa::IntoResponses)]
pub enum CommandApplied {
    /// Applied: the order's new version, and the token to read it with.
    #[response(status = 200)]
    Applied(CommandAnswer),
}

/// The answer to a command that succeeded: its body, the token header,
/// and `Location` for a new order.
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

/// Runs `command` on order `id` with the request's idempotency key (hashed
/// with the command's verb, its target and `body`), counted and logged.
async fn run(
    app: &App,
    caller: &Caller,
    headers: &HeaderMap,
    id: &str,
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
            // A create's id is new each time: the key alone names the request.
            let kind = command.kind();
            let target = if kind == CommandKind::Create { "" } else { id };
            let verb: &'static str = kind.into();
            Some(IdempotencyRecord::for_caller(
                caller.key_scope(),
                &key,
                request_hash(&[verb.as_bytes(), target.as_bytes(), &body]),
            ))
        }
        None => None,
    };
    let options = CommandOptions {
        expected_version,
        idempotency,
        caller: caller.sub().map(str::to_owned),
        traceparent: super::telemetry::for_command(headers),
        ..CommandOptions::new()
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
        caller = caller.sub(),
        outcome,
        ok = result.is_ok(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "command handled"
    );
    Ok(result?)
}

#[utoipa::path(post, path = "/orders", tag = "commands", request_body = orders::CreateOrder,
    params(IdempotencyHeader),
    responses((status = 201, description = "Created", body = CommandAnswer), BodyErrors))]
pub(super) async fn create_order(
    State(app): State<App>,
    caller: Caller,
    QueryParams(_): QueryParams<NoParams>,
    headers: HeaderMap,
    JsonBody(mut body): JsonBody<CreateOrder>,
) -> Result<Response, ApiError> {
    if let Some(own) = caller.own_customer().filter(|own| *own != body.customer_id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("a customer orders for itself: customer_id must be {own:?}"),
        )
        .with_details(serde_json::json!({ "field": "customer_id" })));
    }
    body.tracked_skus = tracked_skus(&app, &body).await?;
    super::personal::seal(&app, &mut body).await?;
    let id = uuid::Uuid::now_v7().to_string();
    // Generated here and now: nothing to load.
    app.states.insert_new(&id);
    let command = OrderCommand::Create(body.clone());
    let outcome = run(&app, &caller, &headers, &id, &body, command, None).await?;
    Ok(answer(StatusCode::CREATED, &outcome))
}

/// The SKUs of the order's lines that the inventory tracks (see
/// [`super::tracked`]).
async fn tracked_skus(app: &App, body: &CreateOrder) -> Result<BTreeSet<String>, ApiError> {
    let skus: BTreeSet<String> = body.items.iter().map(|i| i.sku.clone()).collect();
    app.tracked
        .of(&*app.inventory_link, &skus)
        .await
        .map_err(|e| ApiError::unavailable("the inventory", &e))
}

/// A JSON body that asks one command of an existing order.
pub trait OrderCommandBody: Serialize {
    /// The command it asks.
    fn command(&self) -> OrderCommand;
    /// The version the order must be at, when the client names one.
    fn expected_version(&self) -> Option<i64>;
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

impl OrderCommandBody for PayBody {
    fn command(&self) -> OrderCommand {
        OrderCommand::Pay(PayOrder {
            amount_cents: self.amount_cents,
            payment_ref: self.payment_ref.clone(),
        })
    }
    fn expected_version(&self) -> Option<i64> {
        self.expected_version
    }
}

impl OrderCommandBody for ShipBody {
    fn command(&self) -> OrderCommand {
        OrderCommand::Ship(ShipOrder {
            carrier: self.carrier.clone(),
            tracking_number: self.tracking_number.clone(),
        })
    }
    fn expected_version(&self) -> Option<i64> {
        self.expected_version
    }
}

impl OrderCommandBody for DeliverBody {
    fn command(&self) -> OrderCommand {
        OrderCommand::Deliver
    }
    fn expected_version(&self) -> Option<i64> {
        self.expected_version
    }
}

impl OrderCommandBody for CancelBody {
    fn command(&self) -> OrderCommand {
        OrderCommand::Cancel(CancelOrder {
            reason: self.reason.clone(),
        })
    }
    fn expected_version(&self) -> Option<i64> {
        self.expected_version
    }
}

/// Every command on an existing order: the path's id, the body's command.
/// A customer may command only its own orders; another's is answered as
/// if it did not exist.
async fn on_order(
    app: &App,
    caller: &Caller,
    id: &str,
    headers: &HeaderMap,
    body: &impl OrderCommandBody,
) -> Result<Response, ApiError> {
    let id = order_id(id)?;
    if caller.own_customer().is_some() {
        let owner = owner_of(app, &id).await?;
        if !owner.is_some_and(|o| caller.may_see(&o)) {
            // The very answer a missing order gets.
            let missing = cqrs_sql::CommandError::Domain(orders::OrderError::NotFound);
            return Err(missing.into());
        }
    }
    let (command, expected) = (body.command(), body.expected_version());
    let outcome = run(app, caller, headers, &id, body, command, expected).await?;
    Ok(answer(StatusCode::OK, &outcome))
}

// The four routes below differ only in path and body; each is a route of
// its own so that the API document lists its body schema.

#[utoipa::path(post, path = "/orders/{id}/pay", tag = "commands", request_body = PayBody,
    params(OrderPath, IdempotencyHeader), responses(CommandApplied, BodyErrors, OrderCommandErrors))]
pub(super) async fn pay_order(
    State(app): State<App>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PayBody>,
) -> Result<Response, ApiError> {
    on_order(&app, &caller, &id, &headers, &body).await
}

#[utoipa::path(post, path = "/orders/{id}/ship", tag = "commands", request_body = ShipBody,
    params(OrderPath, IdempotencyHeader), responses(CommandApplied, BodyErrors, OrderCommandErrors))]
pub(super) async fn ship_order(
    State(app): State<App>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ShipBody>,
) -> Result<Response, ApiError> {
    on_order(&app, &caller, &id, &headers, &body).await
}

#[utoipa::path(post, path = "/orders/{id}/deliver", tag = "commands", request_body = DeliverBody,
    params(OrderPath, IdempotencyHeader), responses(CommandApplied, BodyErrors, OrderCommandErrors))]
pub(super) async fn deliver_order(
    State(app): State<App>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<DeliverBody>,
) -> Result<Response, ApiError> {
    on_order(&app, &caller, &id, &headers, &body).await
}

#[utoipa::path(post, path = "/orders/{id}/cancel", tag = "commands", request_body = CancelBody,
    params(OrderPath, IdempotencyHeader), responses(CommandApplied, BodyErrors, OrderCommandErrors))]
pub(super) async fn cancel_order(
    State(app): State<App>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CancelBody>,
) -> Result<Response, ApiError> {
    on_order(&app, &caller, &id, &headers, &body).await
}
