//! What the routes share: the error body and the error sets of the API
//! document, and the order id that paths carry.

use super::App;
use axum::http::StatusCode;
use cqrs_http::ApiError;
use cqrs_sql::EventStore;
use serde::Serialize;

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
pub enum BodyErrors {
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
pub enum OrderCommandErrors {
    /// No such order.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The transition is not allowed, or `expected_version` is stale.
    #[response(status = 409)]
    Conflict(ErrorBody),
}

/// The errors of every query.
#[derive(utoipa::IntoResponses)]
pub enum QueryErrors {
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
pub enum NoParamErrors {
    /// A query parameter was given (these routes take none).
    #[response(status = 400)]
    BadRequest(ErrorBody),
}

/// The order a path names, for API documents.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OrderPath {
    /// Order id
    pub id: String,
}

/// The order id of a path, as stored (a UUID in lower-case hyphenated form);
/// anything else names no order.
pub fn order_id(raw: &str) -> Result<String, ApiError> {
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

/// The customer who placed order `id`, from the write side (it never
/// changes); `None` when there is no such order.
pub async fn owner_of(app: &App, id: &str) -> Result<Option<String>, ApiError> {
    owner_in(id, &app.store.load(id).await?)
}

/// The customer who placed order `id`, from its loaded `events`.
pub fn owner_in(id: &str, events: &[cqrs_core::EventEnvelope]) -> Result<Option<String>, ApiError> {
    let Some(first) = events.first() else {
        return Ok(None);
    };
    match orders::views::decode(first) {
        Ok(orders::OrderEvent::OrderCreated { customer_id, .. }) => Ok(Some(customer_id)),
        Ok(_) | Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "corrupt_store",
            format!("order {id} does not begin with OrderCreated"),
        )),
    }
}

/// A found value as JSON, or 404 with `code` and `message` (also what a
/// caller gets for something that is not theirs to see).
pub fn found<T: Serialize>(
    value: Option<T>,
    code: &'static str,
    message: impl FnOnce() -> String,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    match value {
        Some(v) => Ok(axum::Json(v).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, code, message())),
    }
}
