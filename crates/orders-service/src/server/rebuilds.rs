//! Versioned read models: each read side (the orders' and the inventory's)
//! rebuilt from its own history, by `orders rebuild` or, when a deployment
//! raises a projection's version, by the process that runs the projector,
//! beside the live tables; and the tables a cutover retired dropped after
//! their grace period.

use cqrs_kafka::{KafkaConfig, TopicHistory};
use cqrs_sql::read::rebuild::{LogHistory, Rebuild, RebuildError, RebuildReport, RebuildStatus};
use cqrs_sql::read::versions;
use cqrs_sql::{Db, Projection, ReadProgress, SqlEventStore};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where a read side's history is.
#[derive(Clone)]
pub enum HistoryOf {
    /// The write store's log (embedded).
    Log(SqlEventStore),
    /// A topic, from its beginning.
    Topic(KafkaConfig),
}

/// A read side: its projector, its projections and its history.
#[derive(Clone)]
pub struct Side {
    /// The projector's name.
    pub projector: &'static str,
    /// Its projections (the live ones).
    pub projections: Vec<Arc<dyn Projection>>,
    /// Where its history is.
    pub history: HistoryOf,
}

impl Side {
    /// The projections called `names`, or every one for `all`.
    pub fn named(&self, names: &[String]) -> Vec<Arc<dyn Projection>> {
        self.projections
            .iter()
            .filter(|p| names.iter().any(|n| n == "all" || n == p.name()))
            .cloned()
            .collect()
    }
}

/// Rebuilds `projections` of `side` (all at once, one pass over history)
/// and cuts over; `watch` gets the build's status as it starts.
pub async fn rebuild(
    read: &Db,
    side: &Side,
    projections: &[Arc<dyn Projection>],
    batch: usize,
    progress: Option<ReadProgress>,
    stop: CancellationToken,
    watch: impl FnOnce(Arc<RebuildStatus>),
) -> Result<RebuildReport, RebuildError> {
    let mut build = Rebuild::new(read.clone(), side.projector, projections)?.batch(batch);
    if let Some(p) = progress {
        build = build.with_progress(p);
    }
    watch(build.status());
    match &side.history {
        HistoryOf::Log(store) => build.run(LogHistory::new(store.clone()), stop).await,
        HistoryOf::Topic(k) => build.run(TopicHistory::open(k).await?, stop).await,
    }
}

/// The versions role of a process that projects `side`: settles the
/// versions now (a read model newer than this build stops the start here)
/// and answers the role that keeps them.
pub async fn keeper(
    read: &Db,
    side: Side,
    progress: &ReadProgress,
    config: &crate::Config,
    stop: CancellationToken,
) -> Result<impl std::future::Future<Output = ()>, versions::VersionError> {
    versions::reconcile(read, side.projector, &side.projections).await?;
    Ok(keep_versions(
        read.clone(),
        side,
        progress.clone(),
        !config.no_auto_rebuild,
        config.rebuild_grace,
        stop,
    ))
}

/// How long a process waits before it tries a failed build again.
const RETRY: Duration = Duration::from_secs(30);

/// How often retired tables are looked at.
const JANITOR: Duration = Duration::from_secs(60);

/// The role of a process that runs `side`'s projector: builds the read
/// models whose version the code raised (unless `auto` is off), then drops
/// retired tables once `grace` has passed; runs until the shutdown.
pub async fn keep_versions(
    read: Db,
    side: Side,
    progress: ReadProgress,
    auto: bool,
    grace: Duration,
    stop: CancellationToken,
) {
    let (mut told, mut auto) = (false, auto);
    loop {
        let stale = match versions::reconcile(&read, side.projector, &side.projections).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(projector = side.projector, error = %e, "cannot read the read models' versions");
                Vec::new()
            }
        };
        let next = match (auto, stale.is_empty()) {
            (_, true) => JANITOR,
            (false, false) => {
                if !std::mem::replace(&mut told, true) {
                    warn_waiting(side.projector, &stale);
                }
                JANITOR
            }
            (true, false) => match build_stale(&read, &side, &stale, &progress, &stop).await {
                Next::After(next) => next,
                Next::Stop => return,
                Next::Withdrawn => {
                    // An operator cancelled it: not again on its own.
                    auto = false;
                    told = true;
                    JANITOR
                }
            },
        };
        drop_retired(&read, &side, grace).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
        }
    }
}

/// With `--no-auto-rebuild`: which read models wait for `orders rebuild`.
fn warn_waiting(projector: &str, stale: &[versions::Stale]) {
    for s in stale {
        tracing::warn!(
            projector,
            projection = s.projection,
            live = s.live,
            code = s.code,
            "a read model holds an older version than this build declares \
            (--no-auto-rebuild): run `orders rebuild` to build it"
        );
    }
}

/// What the versions role does after a build.
enum Next {
    /// Look again after this long.
    After(Duration),
    /// The process is stopping.
    Stop,
    /// An operator cancelled the build: build no more on its own.
    Withdrawn,
}

/// Builds the stale read models of `side`; answers what to do next.
async fn build_stale(
    read: &Db,
    side: &Side,
    stale: &[versions::Stale],
    progress: &ReadProgress,
    stop: &CancellationToken,
) -> Next {
    let names: Vec<&str> = stale.iter().map(|s| s.projection).collect();
    let chosen: Vec<Arc<dyn Projection>> = side
        .projections
        .iter()
        .filter(|p| names.contains(&p.name()))
        .cloned()
        .collect();
    tracing::info!(projector = side.projector, projections = ?names,
        "a read model's version changed: building it beside the live one");
    let batch = cqrs_sql::read::rebuild::DEFAULT_BATCH;
    let stop = stop.child_token();
    match rebuild(
        read,
        side,
        &chosen,
        batch,
        Some(progress.clone()),
        stop,
        |_| {},
    )
    .await
    {
        Ok(r) => {
            tracing::info!(projector = side.projector, events = r.events, secs = r.secs,
                cutover_ms = r.cutover_secs * 1e3, swapped = ?r.swapped, "rebuilt and swapped in");
            Next::After(JANITOR)
        }
        Err(RebuildError::Cancelled) => Next::Stop,
        Err(RebuildError::Withdrawn(_)) => {
            tracing::warn!(
                projector = side.projector,
                "an operator cancelled the build: this process builds it no more on its own \
                (until it restarts); start one from the console (POST /ops/rebuilds) or `orders rebuild`"
            );
            Next::Withdrawn
        }
        Err(RebuildError::Busy { owner, .. }) => {
            tracing::info!(
                projector = side.projector,
                owner,
                "another process builds it"
            );
            Next::After(Duration::from_secs(5))
        }
        Err(e) => {
            tracing::error!(projector = side.projector, error = %e,
                "the rebuild failed; the live read model keeps serving");
            Next::After(RETRY)
        }
    }
}

/// Drops `side`'s retired tables whose grace has passed.
async fn drop_retired(read: &Db, side: &Side, grace: Duration) {
    match versions::drop_retired(read, side.projector, &side.projections, grace).await {
        Ok(d) if !d.is_empty() => {
            tracing::info!(projector = side.projector, projections = ?d, "retired tables dropped")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(projector = side.projector, error = %e, "cannot drop retired tables")
        }
    }
}
