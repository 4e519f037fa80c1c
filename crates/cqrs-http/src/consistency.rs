//! Read-your-writes: a query that presents a consistency token waits, bounded,
//! until the read model includes that write.

use crate::ApiError;
use axum::http::{HeaderMap, StatusCode};
use cqrs_core::ConsistencyToken;
use cqrs_sql::{EventStore, ReadProgress, WaitOutcome};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// The header that carries a token, in answers and in queries.
pub const TOKEN_HEADER: &str = "x-consistency-token";
/// Default wait.
pub const DEFAULT_WAIT_MS: u64 = 2_000;
/// Longest wait a client may ask for.
pub const MAX_WAIT_MS: u64 = 30_000;

/// What a well-formed token looks like (for API documents):
/// `v1.<log position>.<version>.<aggregate id>`.
pub const TOKEN_PATTERN: &str = r"^v1\.[0-9]{1,18}\.[1-9][0-9]{0,17}\.[A-Za-z0-9-]{1,200}$";

/// Query parameters of a consistent read.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyParams {
    /// A consistency token from a command's answer (instead of the
    /// `X-Consistency-Token` header): the query waits until the read model
    /// includes that write.
    #[param(
        nullable = false,
        pattern = r"^v1\.[0-9]{1,18}\.[1-9][0-9]{0,17}\.[A-Za-z0-9-]{1,200}$"
    )]
    pub consistent_with: Option<String>,
    /// Longest wait for the token, in ms (default 2000).
    #[param(nullable = false, minimum = 0, maximum = 30000)]
    pub wait_ms: Option<u64>,
}

/// The header form of the token, for API documents (handlers read it from
/// the request's headers with [`wait_consistent`]).
#[derive(Debug, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct ConsistencyHeader {
    /// Wait until the read model includes this write.
    #[param(
        rename = "x-consistency-token",
        nullable = false,
        pattern = r"^v1\.[0-9]{1,18}\.[1-9][0-9]{0,17}\.[A-Za-z0-9-]{1,200}$"
    )]
    pub token: Option<String>,
}

fn invalid_token(message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_consistency_token",
        message,
    )
}

/// The presented token, if any (the parameter wins over the header).
fn presented_token(
    headers: &HeaderMap,
    params: &ConsistencyParams,
) -> Result<Option<ConsistencyToken>, ApiError> {
    let raw = match (&params.consistent_with, headers.get(TOKEN_HEADER)) {
        (Some(t), _) => t.as_str(),
        (None, Some(h)) => h.to_str().map_err(|_| invalid_token("token is not text"))?,
        (None, None) => return Ok(None),
    };
    raw.parse()
        .map(Some)
        .map_err(|e: cqrs_core::TokenError| invalid_token(e.to_string()))
}

/// `wait_ms`, checked whether or not a token comes with it.
fn wait_of(params: &ConsistencyParams) -> Result<u64, ApiError> {
    let wait_ms = params.wait_ms.unwrap_or(DEFAULT_WAIT_MS);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("wait_ms must be 0..={MAX_WAIT_MS}, got {wait_ms}"),
        )
        .with_details(json!({ "field": "wait_ms" })));
    }
    Ok(wait_ms)
}

/// Waits until the read model includes the presented token's write (if any)
/// and returns the token. A token for a write the store never made is
/// refused at once (422 `token_not_issued`); on timeout: 503 with
/// `Retry-After` and the read model's current version.
pub async fn wait_consistent<S: EventStore>(
    progress: &ReadProgress,
    store: &S,
    headers: &HeaderMap,
    params: &ConsistencyParams,
) -> Result<Option<ConsistencyToken>, ApiError> {
    let wait_ms = wait_of(params)?;
    let Some(token) = presented_token(headers, params)? else {
        return Ok(None);
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let started = std::time::Instant::now();
    let outcome = wait(progress, store, &token, deadline).await;
    metrics::histogram!("cqrs_consistency_wait_seconds").record(started.elapsed().as_secs_f64());
    let label = match &outcome {
        Ok(WaitOutcome::Reached) => "reached",
        Ok(WaitOutcome::TimedOut { .. }) => "timeout",
        Ok(WaitOutcome::Closed { .. }) => "closed",
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY => "not_issued",
        Err(_) => "error",
    };
    metrics::counter!("cqrs_consistency_waits_total", "outcome" => label).increment(1);
    match outcome? {
        WaitOutcome::Reached => {
            progress.record_query(&token);
            Ok(Some(token))
        }
        WaitOutcome::TimedOut { current_version } => {
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
        WaitOutcome::Closed { current_version } => {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down; retry against another instance or after it restarts",
            )
            .with_details(json!({
                "aggregate_id": token.aggregate_id,
                "read_model_version": current_version,
                "token_version": token.version,
            }));
            e.retry_after = Some(1);
            Err(e)
        }
    }
}

async fn wait<S: EventStore>(
    progress: &ReadProgress,
    store: &S,
    token: &ConsistencyToken,
    deadline: tokio::time::Instant,
) -> Result<WaitOutcome, ApiError> {
    let read_db = |e: sqlx::Error| ApiError::unavailable("the read database", &e);
    let waiter = progress
        .start_wait(&token.aggregate_id)
        .await
        .map_err(read_db)?;
    if waiter.current >= token.version {
        // Reached; still, a position beyond the end of the log was never
        // issued. Positions this process wrote are known without a query.
        let beyond = token.position > *store.subscribe().borrow()
            && token.position > store.head_position().await?;
        if beyond {
            return Err(not_issued(token));
        }
        waiter.settle(token.version).await.map_err(read_db)?;
        return Ok(WaitOutcome::Reached);
    }
    // Only a write that happened can be waited for: a forged or mistyped
    // token would otherwise hold a request (and invite retries) forever.
    let issued = store
        .position_of(&token.aggregate_id, token.version)
        .await?;
    if issued != Some(token.position) {
        return Err(not_issued(token));
    }
    waiter.until(token.version, deadline).await.map_err(read_db)
}

/// 422 `token_not_issued`: the token names a write that never happened.
fn not_issued(token: &ConsistencyToken) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "token_not_issued",
        format!(
            "no write made version {} of {} at log position {}: this token was not issued by this service",
            token.version, token.aggregate_id, token.position
        ),
    )
    .with_details(json!({
        "field": "consistency_token",
        "aggregate_id": token.aggregate_id,
        "token_version": token.version,
        "token_position": token.position,
    }))
}
