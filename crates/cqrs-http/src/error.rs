//! The one error shape of the API: `{"error","message","details"}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cqrs_core::{DomainError, ErrorKind};
use cqrs_sql::{CommandError, StoreError};
use serde_json::{json, Value};

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Human text.
    pub message: String,
    /// Structured extras (field, versions, ...).
    pub details: Value,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Value::Null,
            retry_after: None,
        }
    }

    /// Adds details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// 422 for a field that breaks a rule.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
            .with_details(json!({ "field": field }))
    }

    /// 503 because a database or broker is unreachable.
    pub fn unavailable(what: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "{what} unavailable");
        let mut err = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("{what} is unavailable right now; retry later"),
        );
        err.retry_after = Some(1);
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "message": self.message, "details": self.details });
        let mut res = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(ref m) => {
                tracing::error!(error = %m, "corrupt store");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.code(), m.clone())
            }
            other => ApiError::unavailable("the write database", &other),
        }
    }
}

impl<E: std::error::Error + DomainError + 'static> From<CommandError<E>> for ApiError {
    fn from(e: CommandError<E>) -> Self {
        let (message, code) = (e.to_string(), e.code());
        match e {
            CommandError::Domain(d) => match d.kind() {
                ErrorKind::NotFound => ApiError::new(StatusCode::NOT_FOUND, code, message),
                ErrorKind::Invalid { field } => {
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
                        .with_details(json!({ "field": field }))
                }
                ErrorKind::Conflict => ApiError::new(StatusCode::CONFLICT, code, message),
            },
            CommandError::VersionConflict { expected, actual } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
                    .with_details(json!({ "expected_version": expected, "actual_version": actual }))
            }
            CommandError::TooManyConflicts(n) => ApiError::new(StatusCode::CONFLICT, code, message)
                .with_details(json!({ "attempts": n })),
            CommandError::IdempotencyMismatch => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
                    .with_details(json!({ "field": "Idempotency-Key" }))
            }
            CommandError::Store(s) => s.into(),
        }
    }
}
