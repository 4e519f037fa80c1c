//! Read-your-writes: a query that presents a consistency token waits, bounded,
//! until the read model includes that write.

use crate::ApiError;
use axum::http::{HeaderMap, StatusCode};
use cqrs_core::ConsistencyToken;
use cqrs_sql::{ReadProgress, WaitOutcome};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// The header that carries a token, in answers and in queries.
pub const TOKEN_HEADER: &str = "x-consistency-token";
/// Default wait.
pub const DEFAULT_WAIT_MS: u64 = 2_000;
/// Longest wait a client may ask for.
pub const MAX_WAIT_MS: u64 = 30_000;

/// Query parameters of a consistent read.
#[derive(Debug, Default, Deserialize)]
pub struct ConsistencyParams {
    /// The token, instead of the header.
    pub consistent_with: Option<String>,
    /// How long to wait, 0..=30000 ms.
    pub wait_ms: Option<u64>,
}

/// Waits until the read model includes the presented token's write (if any).
/// On timeout: 503 with `Retry-After` and the read model's current version.
pub async fn wait_consistent(
    progress: &ReadProgress,
    headers: &HeaderMap,
    params: &ConsistencyParams,
) -> Result<(), ApiError> {
    let raw = match (&params.consistent_with, headers.get(TOKEN_HEADER)) {
        (Some(t), _) => t.clone(),
        (None, Some(h)) => h
            .to_str()
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_consistency_token",
                    "token is not text",
                )
            })?
            .to_owned(),
        (None, None) => return Ok(()),
    };
    let token: ConsistencyToken = raw.parse().map_err(|e: cqrs_core::TokenError| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_consistency_token",
            e.to_string(),
        )
    })?;
    let wait_ms = params.wait_ms.unwrap_or(DEFAULT_WAIT_MS);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("wait_ms must be 0..={MAX_WAIT_MS}, got {wait_ms}"),
        )
        .with_details(json!({ "field": "wait_ms" })));
    }
    let started = std::time::Instant::now();
    let outcome = progress
        .wait_for(&token, Duration::from_millis(wait_ms))
        .await;
    metrics::histogram!("cqrs_consistency_wait_seconds").record(started.elapsed().as_secs_f64());
    let label = match &outcome {
        Ok(WaitOutcome::Reached) => "reached",
        Ok(WaitOutcome::TimedOut { .. }) => "timeout",
        Err(_) => "error",
    };
    metrics::counter!("cqrs_consistency_waits_total", "outcome" => label).increment(1);
    match outcome {
        Ok(WaitOutcome::Reached) => {
            progress.record_query(&token);
            Ok(())
        }
        Ok(WaitOutcome::TimedOut { current_version }) => {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_yet_consistent",
                format!(
                    "the read model has {} at version {current_version}, not yet {} after {wait_ms} ms",
                    token.aggregate_id, token.version
                ),
            )
            .with_details(json!({
                "aggregate_id": token.aggregate_id,
                "read_model_version": current_version,
                "token_version": token.version,
                "waited_ms": wait_ms,
            }));
            e.retry_after = Some(1);
            Err(e)
        }
        Err(e) => Err(ApiError::unavailable("the read database", &e)),
    }
}
