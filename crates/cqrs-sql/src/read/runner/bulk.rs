//! A projector far behind catches up through the bulk path: its read models
//! are built to the head of history beside the live ones and swapped in
//! with their applied versions and checkpoints ([`Rebuild::to_head`]).
//! Batches then take over from where it read. It looks before its first
//! batch, and again while batches come full.

use super::ProjectorRunner;
use crate::read::rebuild::{events_to, targets_of, History, Rebuild, RebuildError, RebuildReport};
use crate::read::tables::checkpoint_rows;
use crate::read::EventSource;
use tokio_util::sync::CancellationToken;

/// A build folds every event from the start, applied ones included, about
/// eight times faster per event than batches apply them: it is taken while
/// at most this many times the lag is applied already.
const APPLIED_PER_BEHIND: i64 = 4;

/// How long the runner waits for its source's head before it goes on in
/// batches.
const LOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl ProjectorRunner {
    /// Catches up in bulk where every projection can, the lag is at least
    /// `bulk_from` events and the build is the cheaper way; whether it did.
    /// Whatever fails leaves the live tables as they were, and batches do
    /// the work.
    pub(super) async fn catch_up_in_bulk<S: EventSource>(
        &self,
        source: &S,
        shutdown: &CancellationToken,
    ) -> bool {
        let bulk = self.projections.iter().all(|p| p.bulk().is_some());
        if self.config.bulk_from == 0 || !bulk {
            return false;
        }
        let name = &self.config.name;
        match self.build_to_head(source, shutdown).await {
            Ok(None) => false,
            Ok(Some(r)) => {
                metrics::counter!("cqrs_projector_bulk_catch_ups_total", "projector" => name.clone())
                    .increment(1);
                tracing::info!(projector = %name, events = r.events, secs = r.secs,
                    events_per_sec = (r.events as f64 / r.secs.max(1e-9)) as u64,
                    cutover_ms = (r.cutover_secs * 1000.0) as u64, "caught up in bulk");
                true
            }
            Err(RebuildError::Busy { owner, .. }) => {
                tracing::info!(projector = %name, %owner,
                    "another process builds this read model; catching up in batches");
                false
            }
            Err(RebuildError::Cancelled) => false,
            Err(e) => {
                tracing::warn!(projector = %name, error = %e,
                    "cannot catch up in bulk; catching up in batches");
                false
            }
        }
    }

    /// The build to the head, where the lag makes it worth it (None: not).
    async fn build_to_head<S: EventSource>(
        &self,
        source: &S,
        shutdown: &CancellationToken,
    ) -> Result<Option<RebuildReport>, RebuildError> {
        let look = async {
            let Some(mut history) = source.history().await? else {
                return Ok::<_, RebuildError>(None);
            };
            let rows = checkpoint_rows(&self.db, &self.config.name).await?;
            let applied = events_to(&targets_of(&rows, &history)?);
            let behind = events_to(&history.heads().await?) - applied;
            Ok(Some((history, applied, behind)))
        };
        // A broker that is away must not hold the batches back.
        let Ok(looked) = tokio::time::timeout(LOOK_TIMEOUT, look).await else {
            tracing::debug!(projector = %self.config.name, "no answer on the source's head; in batches");
            return Ok(None);
        };
        let Some((history, applied, behind)) = looked? else {
            return Ok(None);
        };
        if behind < self.config.bulk_from as i64 || applied > APPLIED_PER_BEHIND * behind {
            return Ok(None);
        }
        tracing::info!(projector = %self.config.name, behind, applied, from = %history.describe(),
            "far behind: catching up in bulk");
        let report = Rebuild::new(self.db.clone(), &self.config.name, &self.projections)?
            .to_head()
            .with_progress(self.progress.clone())
            .run(history, shutdown.child_token())
            .await?;
        Ok(Some(report))
    }
}
