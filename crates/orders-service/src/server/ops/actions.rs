//! What an operator does from the console: retry or skip a dead letter,
//! start or cancel a rebuild. Each action is audited, in the log (target
//! `orders::audit`) and in the read DB's `ops_actions`: who, what, on what,
//! when, and how it ended.

use super::super::access::Caller;
use super::super::live::RebuildSample;
use super::super::rebuilds::Side;
use super::super::App;
use super::Processor;
use axum::http::StatusCode;
use cqrs_http::ApiError;
use cqrs_sql::read::audit::{self, OpsAction};
use cqrs_sql::read::dead_letters::{self, DeadLetter};
use cqrs_sql::read::rebuild::{RebuildError, RebuildReport, DEFAULT_BATCH};
use cqrs_sql::read::versions;
use cqrs_sql::read::ProjectionError;
use cqrs_sql::{ProjectorConfig, ProjectorRunner};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Who the audit names: the token's subject, or `unchecked` when nobody is
/// checked (loopback, `--insecure-no-auth`).
fn actor(caller: &Caller) -> &str {
    caller.sub().unwrap_or("unchecked")
}

/// Audits an action: a log line, and a row in `ops_actions` (a row that
/// cannot be written is logged as an error; the action stands).
pub async fn audit(
    app: &App,
    actor: &str,
    action: &str,
    target: &str,
    outcome: &str,
    detail: Value,
) -> Option<OpsAction> {
    tracing::info!(target: "orders::audit", actor, action, on = target, outcome,
        detail = %detail, "operator action");
    audit::record(&app.read, actor, action, target, outcome, &detail)
        .await
        .inspect_err(|e| {
            tracing::error!(target: "orders::audit", actor, action, on = target, error = %e,
                "the action is not recorded in ops_actions")
        })
        .ok()
}

/// An action done on a dead letter: the letter afterwards and what the
/// retry (or skip) did to its aggregate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct LetterActionAnswer {
    /// The letter, as it stands now.
    pub letter: super::view::DeadLetterView,
    /// Letters of its aggregate applied by this action.
    pub applied: usize,
    /// Letters of its aggregate still open.
    pub left: usize,
}

/// 404 for a dead letter that does not exist.
pub fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "dead_letter_not_found",
        format!("no dead letter {id:?}"),
    )
}

/// The letter `id`, open, of a processor of this process's services; an
/// action on a letter that is closed (or not this process's) is audited as
/// refused.
async fn open_letter<'a>(
    app: &'a App,
    caller: &Caller,
    action: &str,
    id: &str,
) -> Result<(DeadLetter, &'a Processor), ApiError> {
    let found = letter_here(app, id).await;
    if let Err(e) = &found {
        if e.status == StatusCode::CONFLICT {
            let detail = json!({ "why": e.code, "message": e.message });
            audit(app, actor(caller), action, id, "refused", detail).await;
        }
    }
    found
}

async fn letter_here<'a>(app: &'a App, id: &str) -> Result<(DeadLetter, &'a Processor), ApiError> {
    uuid::Uuid::parse_str(id).map_err(|_| not_found(id))?;
    let letter = dead_letters::get(&app.read, id)
        .await
        .map_err(|e| ApiError::unavailable("the read database", &e))?
        .ok_or_else(|| not_found(id))?;
    if !matches!(letter.status.as_str(), "dead" | "parked") {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "dead_letter_closed",
            format!("dead letter {id} is {} already", letter.status),
        )
        .with_details(json!({ "status": letter.status })));
    }
    let processor = app.ops.processor(&letter.projector).ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "processor_not_here",
            format!(
                "dead letter {id} is {}'s, which is not a processor of this process's services",
                letter.projector
            ),
        )
    })?;
    Ok((letter, processor))
}

/// A runner of `p`'s projections beside the live one (its applies lock the
/// aggregate's version row, as the live one's do).
async fn runner_for(app: &App, p: &Processor) -> Result<ProjectorRunner, ApiError> {
    ProjectorRunner::new(
        app.read.clone(),
        ProjectorConfig {
            name: p.name.into(),
            ..ProjectorConfig::default()
        },
        p.projections.clone(),
    )
    .await
    .map_err(|e| ApiError::unavailable("the read database", &e))
}

/// A failed retry: the record still does not apply (409, with why), or
/// the read DB (or a service the saga calls) is away (503).
fn retry_failed(id: &str, e: &ProjectionError) -> ApiError {
    let still = matches!(
        e,
        ProjectionError::Decode { .. }
            | ProjectionError::Inconsistent(_)
            | ProjectionError::Db(sqlx::Error::Database(_))
    );
    match still {
        true => ApiError::new(
            StatusCode::CONFLICT,
            "retry_failed",
            format!("dead letter {id} still does not apply: {e}"),
        ),
        false => ApiError::unavailable("the read database", e),
    }
}

/// `POST /ops/dead-letters/{id}/retry`: applies the letter's aggregate's
/// open letters in version order, as far as they fit.
pub async fn retry(app: &App, caller: &Caller, id: &str) -> Result<LetterActionAnswer, ApiError> {
    let (letter, processor) = open_letter(app, caller, "dead_letter.retry", id).await?;
    let aggregate = match (&letter.aggregate_id, &letter.envelope) {
        (Some(a), Some(_)) => a.clone(),
        _ => {
            let e = ApiError::new(
                StatusCode::CONFLICT,
                "not_retryable",
                format!("dead letter {id} did not decode: it cannot be applied; skip it"),
            );
            audit(
                app,
                actor(caller),
                "dead_letter.retry",
                id,
                "refused",
                json!({ "why": "not_retryable" }),
            )
            .await;
            return Err(e);
        }
    };
    let runner = runner_for(app, processor).await?;
    match runner.retry_dead_letters(&aggregate).await {
        Ok((applied, left)) => {
            let answer = after(app, id, applied, left).await?;
            let detail = json!({ "projector": processor.name, "aggregate_id": aggregate,
                "applied": applied, "left": left, "status": answer.letter.status });
            audit(app, actor(caller), "dead_letter.retry", id, "done", detail).await;
            Ok(answer)
        }
        Err(e) => {
            let detail = json!({ "projector": processor.name, "aggregate_id": aggregate, "error": e.to_string() });
            audit(
                app,
                actor(caller),
                "dead_letter.retry",
                id,
                "failed",
                detail,
            )
            .await;
            Err(retry_failed(id, &e))
        }
    }
}

/// `POST /ops/dead-letters/{id}/skip`: closes the letter (its event counted
/// as applied without its effect) and applies the letters parked behind it.
pub async fn skip(app: &App, caller: &Caller, id: &str) -> Result<LetterActionAnswer, ApiError> {
    use cqrs_sql::read::runner::SkipError;
    let (_, processor) = open_letter(app, caller, "dead_letter.skip", id).await?;
    let runner = runner_for(app, processor).await?;
    match runner.skip_dead_letter(id).await {
        Ok(done) => {
            let answer = after(app, id, done.applied, done.left).await?;
            let detail = json!({ "projector": processor.name,
                "aggregate_id": answer.letter.aggregate_id, "version": answer.letter.version,
                "applied": done.applied, "left": done.left });
            audit(app, actor(caller), "dead_letter.skip", id, "done", detail).await;
            Ok(answer)
        }
        Err(e) => {
            let detail = json!({ "projector": processor.name, "error": e.to_string() });
            let (outcome, err) = match &e {
                SkipError::NotFound(_) => ("refused", not_found(id)),
                SkipError::Closed { .. } => (
                    "refused",
                    ApiError::new(StatusCode::CONFLICT, "dead_letter_closed", e.to_string()),
                ),
                SkipError::OutOfOrder { .. } => (
                    "refused",
                    ApiError::new(StatusCode::CONFLICT, "skip_out_of_order", e.to_string()),
                ),
                SkipError::Projection(p) => ("failed", retry_failed(id, p)),
            };
            audit(app, actor(caller), "dead_letter.skip", id, outcome, detail).await;
            Err(err)
        }
    }
}

/// The answer after an action: the letter as it stands now.
async fn after(
    app: &App,
    id: &str,
    applied: usize,
    left: usize,
) -> Result<LetterActionAnswer, ApiError> {
    let letter = dead_letters::get(&app.read, id)
        .await
        .map_err(|e| ApiError::unavailable("the read database", &e))?
        .ok_or_else(|| not_found(id))?;
    Ok(LetterActionAnswer {
        letter: letter.into(),
        applied,
        left,
    })
}

/// An operator's action, as audited.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ActionView {
    /// Id (time-ordered).
    pub id: String,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// Who: the token's subject, or `unchecked` when nobody is checked.
    pub actor: String,
    /// `dead_letter.retry`, `dead_letter.skip`, `rebuild.start`,
    /// `rebuild.cancel`, `rebuild.finish`.
    pub action: String,
    /// On what: a dead letter's id, a projector's name.
    pub target: String,
    /// `done`, `started`, `refused`, `failed`, `cancelled`.
    pub outcome: String,
    /// The rest.
    #[schema(value_type = Object)]
    pub detail: Value,
}

impl From<OpsAction> for ActionView {
    fn from(a: OpsAction) -> Self {
        ActionView {
            detail: serde_json::from_str(&a.detail).unwrap_or(Value::Null),
            id: a.id,
            at: a.at,
            actor: a.actor,
            action: a.action,
            target: a.target,
            outcome: a.outcome,
        }
    }
}

/// A processor's read models: the build running now (any process's) and
/// how the last one started from the API ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct RebuildState {
    /// The projector.
    pub projector: String,
    /// Its read models and the versions they serve and declare.
    pub read_models: Vec<super::view::ReadModelVersion>,
    /// The build running now, with its progress and ETA.
    pub running: Option<RebuildSample>,
    /// The last rebuild action on it (start, cancel, finish).
    pub last: Option<ActionView>,
}

/// Body of `POST /ops/rebuilds`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRebuild {
    /// The projector whose read models to rebuild, all of them in one pass
    /// over its history.
    pub projector: RebuildTarget,
}

/// A projector with read models.
#[derive(Debug, Clone, Copy, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RebuildTarget {
    /// The orders' read models (order details, customer summaries, stats).
    OrdersReadModel,
    /// The inventory's stock read model.
    InventoryReadModel,
}

impl RebuildTarget {
    /// Its projector's name.
    pub fn name(self) -> &'static str {
        match self {
            RebuildTarget::OrdersReadModel => crate::config::PROJECTOR,
            RebuildTarget::InventoryReadModel => crate::config::INVENTORY_PROJECTOR,
        }
    }
}

fn invalid(field: &str, message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
        .with_details(json!({ "field": field }))
}

/// The processor called `name` with its read models, where it has some.
pub fn rebuildable<'a>(app: &'a App, name: &str) -> Option<(&'a Processor, &'a Side)> {
    let p = app.ops.processor(name)?;
    Some((p, p.rebuild.as_ref()?))
}

/// 404 for a projector without read models here.
pub fn projector_not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "projector_not_found",
        format!("no projector {name:?} with read models here"),
    )
}

/// Where `p`'s read models stand: versions, the build running, the last
/// action.
pub async fn rebuild_state(app: &App, p: &Processor) -> Result<RebuildState, ApiError> {
    let db = |e: sqlx::Error| ApiError::unavailable("the read database", &e);
    let live: Vec<(String, i64)> = versions::live_versions(&app.read, p.name)
        .await
        .map_err(db)?
        .into_iter()
        .map(|l| (l.projection, l.live_version))
        .collect();
    let read_models = super::view::read_model_versions(p, &live);
    let now = versions::now_ms();
    let running = versions::build_of(&app.read, p.name)
        .await
        .map_err(db)?
        .map(|b| RebuildSample::of(p.name, &b, now));
    let last = audit::last_on(&app.read, p.name, "rebuild.")
        .await
        .map_err(db)?
        .map(ActionView::from);
    Ok(RebuildState {
        projector: p.name.to_owned(),
        read_models,
        running,
        last,
    })
}

/// How long a start waits to see its build claimed before it answers.
const CLAIM_WAIT: Duration = Duration::from_secs(5);

/// `POST /ops/rebuilds`: builds the read models beside the live ones in
/// this process, in the background; answers once the build is claimed (or
/// refused).
pub async fn start_rebuild(
    app: &App,
    caller: &Caller,
    body: StartRebuild,
) -> Result<RebuildState, ApiError> {
    let name = body.projector.name();
    let (p, side) = rebuildable(app, name).ok_or_else(|| {
        invalid(
            "projector",
            format!("{name}'s read models are not served here"),
        )
    })?;
    let who = actor(caller).to_owned();
    let names: Vec<String> = side
        .projections
        .iter()
        .map(|c| format!("{} v{}", c.name(), c.version()))
        .collect();
    let refused =
        |e: &ApiError| json!({ "read_models": names, "why": e.code, "message": e.message });
    let started = json!({ "read_models": names });
    if let Some(refusal) = refusal(app, p).await? {
        audit(
            app,
            &who,
            "rebuild.start",
            p.name,
            "refused",
            refused(&refusal),
        )
        .await;
        return Err(refusal);
    }
    match claimed(app, p.name, spawn_build(app, p, side.clone())).await? {
        Err(ended) => {
            if let Err(e) = &ended {
                let e = rebuild_refused(p.name, e);
                audit(app, &who, "rebuild.start", p.name, "refused", refused(&e)).await;
                return Err(e);
            }
            audit(app, &who, "rebuild.start", p.name, "started", started).await;
            finished(app, &who, p.name, &names, &ended).await;
        }
        Ok(task) => {
            audit(app, &who, "rebuild.start", p.name, "started", started).await;
            let (app, projector) = (app.clone(), p.name);
            tokio::spawn(async move {
                let result = task.await.unwrap_or_else(|e| {
                    Err(RebuildError::Refused(format!(
                        "the build's task ended: {e}"
                    )))
                });
                finished(&app, &who, projector, &names, &result).await;
            });
        }
    }
    rebuild_state(app, p).await
}

/// A build's task and what it answers.
type Build = tokio::task::JoinHandle<Result<RebuildReport, RebuildError>>;

/// Runs a rebuild of all of `side`'s read models in the background; it
/// stops when the process starts shutting down.
fn spawn_build(app: &App, p: &Processor, side: Side) -> Build {
    let stop = CancellationToken::new();
    let (mut closing, on_close) = (app.closing.clone(), stop.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = closing.wait_for(|c| *c) => on_close.cancel(),
            _ = on_close.cancelled() => {}
        }
    });
    let (progress, read) = (p.progress.clone(), app.read.clone());
    tokio::spawn(async move {
        let projections = side.projections.clone();
        let result = super::super::rebuilds::rebuild(
            &read,
            &side,
            &projections,
            DEFAULT_BATCH,
            progress,
            stop.clone(),
            |_| {},
        )
        .await;
        // Ends the shutdown watch above.
        stop.cancel();
        result
    })
}

/// Waits (at most [`CLAIM_WAIT`]) until `task`'s build row is claimed:
/// `Ok(task)` still running, or `Err(result)` when it ended first.
async fn claimed(
    app: &App,
    projector: &str,
    task: Build,
) -> Result<Result<Build, Result<RebuildReport, RebuildError>>, ApiError> {
    let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
    while tokio::time::Instant::now() < deadline && !task.is_finished() {
        if let Ok(Some(_)) = versions::build_of(&app.read, projector).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match task.is_finished() {
        true => Ok(Err(task
            .await
            .map_err(|e| ApiError::unavailable("the rebuild", &e))?)),
        false => Ok(Ok(task)),
    }
}

/// Why a rebuild of `p` cannot start now: one runs, or dead letters are
/// open (a rebuild would apply what the live model held back).
async fn refusal(app: &App, p: &Processor) -> Result<Option<ApiError>, ApiError> {
    let db = |e: sqlx::Error| ApiError::unavailable("the read database", &e);
    if let Some(b) = versions::build_of(&app.read, p.name).await.map_err(db)? {
        if b.is_alive(versions::now_ms()) {
            return Ok(Some(
                ApiError::new(
                    StatusCode::CONFLICT,
                    "rebuild_running",
                    format!(
                        "{} is building {}'s read models now ({})",
                        b.owner, p.name, b.phase
                    ),
                )
                .with_details(json!({ "owner": b.owner, "phase": b.phase })),
            ));
        }
    }
    let open = dead_letters::list_every(&app.read, false, Some(p.name), 1)
        .await
        .map_err(db)?;
    if !open.is_empty() {
        return Ok(Some(ApiError::new(
            StatusCode::CONFLICT,
            "dead_letters_open",
            format!(
                "{} has open dead letters: a rebuild would apply what the live read model held back; retry or skip them first",
                p.name
            ),
        )));
    }
    Ok(None)
}

/// A build that ended before it was claimed.
fn rebuild_refused(projector: &str, e: &RebuildError) -> ApiError {
    match e {
        RebuildError::Busy { owner, .. } => ApiError::new(
            StatusCode::CONFLICT,
            "rebuild_running",
            format!("{owner} is building {projector}'s read models now"),
        ),
        RebuildError::Refused(why) => {
            ApiError::new(StatusCode::CONFLICT, "rebuild_refused", why.clone())
        }
        other => ApiError::unavailable("the rebuild", other),
    }
}

/// Audits how a build started from the API ended.
async fn finished(
    app: &App,
    who: &str,
    projector: &str,
    names: &[String],
    result: &Result<cqrs_sql::read::rebuild::RebuildReport, RebuildError>,
) {
    let (outcome, detail) = match result {
        Ok(r) => (
            "done",
            json!({ "read_models": names, "events": r.events, "secs": r.secs,
                "cutover_ms": r.cutover_secs * 1e3,
                "swapped": r.swapped.iter().map(|(p, v)| json!({ "projection": p, "version": v })).collect::<Vec<_>>() }),
        ),
        Err(RebuildError::Withdrawn(_)) | Err(RebuildError::Cancelled) => (
            "cancelled",
            json!({ "read_models": names, "why": result.as_ref().err().map(|e| e.to_string()) }),
        ),
        Err(e) => (
            "failed",
            json!({ "read_models": names, "error": e.to_string() }),
        ),
    };
    audit(app, who, "rebuild.finish", projector, outcome, detail).await;
}

/// `POST /ops/rebuilds/{projector}/cancel`: stops the build, whichever
/// process runs it (within a second); its tables are dropped and the live
/// read models keep serving.
pub async fn cancel_rebuild(
    app: &App,
    caller: &Caller,
    projector: &str,
) -> Result<RebuildState, ApiError> {
    let (p, _) = rebuildable(app, projector).ok_or_else(|| projector_not_found(projector))?;
    let running = versions::build_of(&app.read, p.name)
        .await
        .map_err(|e| ApiError::unavailable("the read database", &e))?;
    let withdrawn = versions::withdraw_build(&app.read, p.name)
        .await
        .map_err(|e| ApiError::unavailable("the read database", &e))?;
    if !withdrawn {
        audit(
            app,
            actor(caller),
            "rebuild.cancel",
            p.name,
            "refused",
            json!({ "why": "no build runs" }),
        )
        .await;
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_rebuild_running",
            format!("no build of {}'s read models runs", p.name),
        ));
    }
    let detail = json!({ "owner": running.as_ref().map(|b| b.owner.clone()),
        "phase": running.as_ref().map(|b| b.phase.clone()) });
    audit(app, actor(caller), "rebuild.cancel", p.name, "done", detail).await;
    rebuild_state(app, p).await
}
