//! The console's routes: `GET /ops` (the page) and the operations API
//! under `/ops/` (operator only; the access table says so).

use super::actions::{self, ActionView, LetterActionAnswer, RebuildState, StartRebuild};
use super::view::{DeadLetterView, ProcessorView, ServiceHealth};
use crate::server::access::Caller;
use crate::server::api::{ErrorBody, NoParamErrors};
use crate::server::App;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use cqrs_http::{ApiError, JsonBody, NoParams, PathParam, QueryParams};
use cqrs_sql::read::{audit, dead_letters};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// The errors of the console's reads.
#[derive(utoipa::IntoResponses)]
pub enum OpsReadErrors {
    /// A bad path segment or query parameter.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No such dead letter or projector.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The read database is unavailable, or nothing is sampled yet.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The errors of the console's actions.
#[derive(utoipa::IntoResponses)]
pub enum OpsActionErrors {
    /// A query parameter was given, or a bad path segment.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No such dead letter, projector or running build.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// Not now: the letter is closed or cannot be applied, a skip would
    /// apply its aggregate out of order, a build runs, dead letters are open.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The read database (or a service the saga calls) is unavailable.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The id of a dead letter in a path.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct LetterPath {
    /// Dead-letter id (a UUID)
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    pub id: String,
}

/// The projector in a path.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ProjectorPath {
    /// Projector name (`orders_read_model`, `inventory_read_model`)
    #[param(min_length = 1, max_length = 100, pattern = "^[a-z_]+$")]
    pub projector: String,
}

/// `GET /ops`: the console.
#[utoipa::path(get, path = "/ops", tag = "ops",
    responses((status = 200, description = "The operator's console (HTML, no external assets; its data comes from the API and the event stream, with an operator's token)", content_type = "text/html"), NoParamErrors))]
pub(in crate::server) async fn console(
    QueryParams(_): QueryParams<NoParams>,
) -> Html<&'static str> {
    super::page().await
}

/// A bad query parameter (400, as the query extractor answers).
fn bad_query(field: &str, message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
        .with_details(json!({ "field": field }))
}

/// `limit` of a listing: 1..=1000, 100 when absent.
fn limit_of(limit: Option<i64>) -> Result<i64, ApiError> {
    let limit = limit.unwrap_or(100);
    match (1..=1000).contains(&limit) {
        true => Ok(limit),
        false => Err(bad_query(
            "limit",
            format!("limit must be 1..=1000, got {limit}"),
        )),
    }
}

/// How long a read waits for the sampler's first snapshot.
const FIRST_SNAPSHOT: Duration = Duration::from_secs(3);

/// `GET /ops/processors`: every projector and the saga, with their groups,
/// members, partitions, checkpoints, lag, state and read-model versions
/// (as the sampler saw them at most half a second ago).
#[utoipa::path(get, path = "/ops/processors", tag = "ops",
    responses((status = 200, description = "The processors of this process's services", body = Vec<ProcessorView>), OpsReadErrors))]
pub(in crate::server) async fn processors(
    State(app): State<App>,
    QueryParams(_): QueryParams<NoParams>,
) -> Result<Json<Vec<ProcessorView>>, ApiError> {
    let mut rx = app.ops.snapshot.clone();
    let first = tokio::time::timeout(FIRST_SNAPSHOT, rx.wait_for(|s| s.is_some())).await;
    let snapshot = match first {
        Ok(Ok(s)) => s.clone(),
        _ => None,
    };
    match snapshot {
        Some(s) => Ok(Json(s.snapshot.processors.clone())),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_sampled",
            "the processors are not sampled yet (the read database or the broker does not answer)",
        )),
    }
}

/// `GET /ops/health`: both services' health, asked now.
#[utoipa::path(get, path = "/ops/health", tag = "ops",
    responses((status = 200, description = "Each service: where it runs, whether it is ready, each dependency's state", body = Vec<ServiceHealth>), OpsReadErrors))]
pub(in crate::server) async fn health(
    State(app): State<App>,
    QueryParams(_): QueryParams<NoParams>,
) -> Json<Vec<ServiceHealth>> {
    Json(super::view::health(&app).await)
}

/// Which dead letters to list.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LetterFilter {
    /// Dead and parked ones.
    Open,
    /// Retried and discarded ones too.
    All,
}

/// Query string of `GET /ops/dead-letters`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LetterParams {
    /// `open` (default) or `all`.
    #[param(nullable = false, inline)]
    status: Option<LetterFilter>,
    /// Only this processor's.
    #[param(
        nullable = false,
        min_length = 1,
        max_length = 100,
        pattern = "^[a-z_]+$"
    )]
    projector: Option<String>,
    /// At most this many, newest first: 1..=1000 (default 100).
    #[param(nullable = false, minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// `GET /ops/dead-letters`: dead and parked records, newest first, with
/// their decoded envelopes.
#[utoipa::path(get, path = "/ops/dead-letters", tag = "ops", params(LetterParams),
    responses((status = 200, description = "The letters, newest first", body = Vec<DeadLetterView>), OpsReadErrors))]
pub(in crate::server) async fn dead_letters(
    State(app): State<App>,
    QueryParams(p): QueryParams<LetterParams>,
) -> Result<Json<Vec<DeadLetterView>>, ApiError> {
    let limit = limit_of(p.limit)?;
    if let Some(bad) = p.projector.as_deref().filter(|n| {
        n.is_empty() || n.len() > 100 || !n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    }) {
        return Err(bad_query(
            "projector",
            format!("projector: {bad:?} is not a processor's name ([a-z_]{{1,100}})"),
        ));
    }
    let all = matches!(p.status, Some(LetterFilter::All));
    let letters = dead_letters::list_every(&app.read, all, p.projector.as_deref(), limit)
        .await
        .map_err(|e| ApiError::unavailable("the read database", &e))?;
    Ok(Json(
        letters.into_iter().map(DeadLetterView::from).collect(),
    ))
}

/// `GET /ops/dead-letters/{id}`: one letter, with its decoded envelope.
#[utoipa::path(get, path = "/ops/dead-letters/{id}", tag = "ops", params(LetterPath),
    responses((status = 200, description = "The letter", body = DeadLetterView), OpsReadErrors))]
pub(in crate::server) async fn dead_letter(
    State(app): State<App>,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
) -> Result<Json<DeadLetterView>, ApiError> {
    uuid::Uuid::parse_str(&id).map_err(|_| actions::not_found(&id))?;
    let letter = dead_letters::get(&app.read, &id)
        .await
        .map_err(|e| ApiError::unavailable("the read database", &e))?
        .ok_or_else(|| actions::not_found(&id))?;
    Ok(Json(letter.into()))
}

/// `POST /ops/dead-letters/{id}/retry`: applies the letter, and the open
/// letters of its aggregate, in version order as far as they fit.
#[utoipa::path(post, path = "/ops/dead-letters/{id}/retry", tag = "ops", params(LetterPath),
    responses((status = 200, description = "Retried: the letter now (`retried` once applied), and what the retry did to its aggregate", body = LetterActionAnswer), OpsActionErrors))]
pub(in crate::server) async fn retry_letter(
    State(app): State<App>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
) -> Result<Json<LetterActionAnswer>, ApiError> {
    actions::retry(&app, &caller, &id).await.map(Json)
}

/// `POST /ops/dead-letters/{id}/skip`: closes the letter (`discarded`; its
/// event counts as applied without its effect) and applies the letters
/// parked behind it.
#[utoipa::path(post, path = "/ops/dead-letters/{id}/skip", tag = "ops", params(LetterPath),
    responses((status = 200, description = "Skipped: the letter now (`discarded`), and the parked letters applied after it", body = LetterActionAnswer), OpsActionErrors))]
pub(in crate::server) async fn skip_letter(
    State(app): State<App>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
) -> Result<Json<LetterActionAnswer>, ApiError> {
    actions::skip(&app, &caller, &id).await.map(Json)
}

/// `GET /ops/rebuilds`: each projector's read models, the build running
/// (any process's, with progress and ETA) and the last rebuild action.
#[utoipa::path(get, path = "/ops/rebuilds", tag = "ops",
    responses((status = 200, description = "Every projector with read models", body = Vec<RebuildState>), OpsReadErrors))]
pub(in crate::server) async fn rebuilds(
    State(app): State<App>,
    QueryParams(_): QueryParams<NoParams>,
) -> Result<Json<Vec<RebuildState>>, ApiError> {
    let mut out = Vec::new();
    for p in app.ops.processors.iter().filter(|p| p.rebuild.is_some()) {
        out.push(actions::rebuild_state(&app, p).await?);
    }
    Ok(Json(out))
}

/// `POST /ops/rebuilds`: rebuilds a projector's read models from history
/// beside the live ones, in this process; they are swapped in once caught
/// up. Answers once the build is claimed; watch it with
/// `GET /ops/rebuilds/{projector}` or on the event stream.
#[utoipa::path(post, path = "/ops/rebuilds", tag = "ops", request_body = StartRebuild,
    responses((status = 202, description = "Started: the build (progress, ETA) and the start action", body = RebuildState),
        (status = 409, description = "A build runs already, or dead letters are open", body = ErrorBody),
        crate::server::api::BodyErrors))]
pub(in crate::server) async fn start_rebuild(
    State(app): State<App>,
    caller: Caller,
    QueryParams(_): QueryParams<NoParams>,
    JsonBody(body): JsonBody<StartRebuild>,
) -> Result<Response, ApiError> {
    let state = actions::start_rebuild(&app, &caller, body).await?;
    Ok((StatusCode::ACCEPTED, Json(state)).into_response())
}

/// `GET /ops/rebuilds/{projector}`: its read models, the build running and
/// the last rebuild action.
#[utoipa::path(get, path = "/ops/rebuilds/{projector}", tag = "ops", params(ProjectorPath),
    responses((status = 200, description = "The projector's read models and build", body = RebuildState), OpsReadErrors))]
pub(in crate::server) async fn rebuild(
    State(app): State<App>,
    PathParam(projector): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
) -> Result<Json<RebuildState>, ApiError> {
    let (p, _) = actions::rebuildable(&app, &projector)
        .ok_or_else(|| actions::projector_not_found(&projector))?;
    actions::rebuild_state(&app, p).await.map(Json)
}

/// `POST /ops/rebuilds/{projector}/cancel`: stops the build whichever
/// process runs it (within a second); its tables are dropped and the live
/// read models keep serving. A build whose cutover committed first stands.
#[utoipa::path(post, path = "/ops/rebuilds/{projector}/cancel", tag = "ops", params(ProjectorPath),
    responses((status = 202, description = "Cancelled: the projector's state now", body = RebuildState), OpsActionErrors))]
pub(in crate::server) async fn cancel_rebuild(
    State(app): State<App>,
    caller: Caller,
    PathParam(projector): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
) -> Result<Response, ApiError> {
    let state = actions::cancel_rebuild(&app, &caller, &projector).await?;
    Ok((StatusCode::ACCEPTED, Json(state)).into_response())
}

/// Query string of `GET /ops/actions`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ActionParams {
    /// At most this many, newest first: 1..=1000 (default 100).
    #[param(nullable = false, minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// `GET /ops/actions`: the audit of operators' actions, newest first.
#[utoipa::path(get, path = "/ops/actions", tag = "ops", params(ActionParams),
    responses((status = 200, description = "Who did what, on what, when, and how it ended", body = Vec<ActionView>), OpsReadErrors))]
pub(in crate::server) async fn actions_list(
    State(app): State<App>,
    QueryParams(p): QueryParams<ActionParams>,
) -> Result<Json<Vec<ActionView>>, ApiError> {
    let limit = limit_of(p.limit)?;
    let rows = audit::recent(&app.read, limit)
        .await
        .map_err(|e| ApiError::unavailable("the read database", &e))?;
    Ok(Json(rows.into_iter().map(ActionView::from).collect()))
}
