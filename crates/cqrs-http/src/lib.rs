//! axum plumbing for CQRS services: errors as JSON, strict JSON bodies and
//! query strings, idempotency keys, consistency waits, fallbacks.

pub mod auth;
pub mod consistency;
pub mod error;
pub mod extract;
pub mod logging;
pub mod parse_errors;
pub mod server;
pub mod ticket;
pub mod tls;

pub use consistency::{
    wait_consistent, ConsistencyHeader, ConsistencyParams, TOKEN_HEADER, TOKEN_PATTERN,
};
pub use error::ApiError;
pub use extract::{idempotency_key, IdempotencyHeader, JsonBody, NoParams, PathParam, QueryParams};
pub use server::{serve, ServerLimits};

use axum::http::{Method, Uri};

/// Largest accepted request body, by default.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Fallback for unknown routes: 404 as JSON.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "route_not_found",
        format!("no route for {method} {}", uri.path()),
    )
}

/// Fallback for a known route with the wrong method: 405 as JSON.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Turns a panic into a 500 JSON answer (a last resort: handlers do not panic).
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the server hit a bug; nothing was written by this request unless it answered otherwise",
    )
    .into_response()
}
