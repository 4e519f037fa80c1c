//! Who builds: one build per projector, claimed in `read_model_builds` and
//! held by its owner's heartbeat; a build whose owner is gone is dropped
//! and started again by the next claimant.

use super::{tables, Rebuild, RebuildError, RebuildStatus};
use crate::db::Db;
use crate::dialect::section;
use crate::read::dead_letters;
use crate::read::sql::SQL;
use crate::read::versions::{self, now_ms, BUILD_HEARTBEAT};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

impl Rebuild {
    /// Takes the build of this projector: where one exists whose owner is
    /// gone, its tables are dropped first.
    pub(super) async fn claim(&self) -> Result<(), RebuildError> {
        let previous = versions::build_of(&self.db, &self.projector).await?;
        let now = now_ms();
        if let Some(b) = &previous {
            if b.is_alive(now) && b.owner != self.owner && !owner_gone(&b.owner) {
                return Err(RebuildError::Busy {
                    projector: self.projector.clone(),
                    owner: b.owner.clone(),
                    age_ms: now - b.heartbeat_ms,
                });
            }
        }
        let tables = self.build_tables();
        let built: HashMap<&str, i64> = self
            .pairs
            .iter()
            .map(|(p, _)| (p.name(), p.version()))
            .collect();
        let claimed = sqlx::query(section(SQL, "claim_build"))
            .bind(&self.projector)
            .bind(&self.owner)
            .bind(serde_json::to_string(&built).map_err(|e| sqlx::Error::Encode(e.into()))?)
            .bind(serde_json::to_string(&tables).map_err(|e| sqlx::Error::Encode(e.into()))?)
            .bind(now)
            .bind(previous.as_ref().map_or(-1, |b| b.heartbeat_ms))
            .execute(&self.db.writer)
            .await?;
        if claimed.rows_affected() != 1 {
            return Err(RebuildError::Busy {
                projector: self.projector.clone(),
                owner: "another process".into(),
                age_ms: 0,
            });
        }
        if let Some(b) = previous {
            tracing::warn!(
                projector = self.projector,
                owner = b.owner,
                phase = b.phase,
                "a build whose owner stopped (heartbeat lost) is dropped and started again"
            );
            let old: Vec<String> = serde_json::from_str(&b.tables).unwrap_or_default();
            let mut conn = self.db.writer.acquire().await?;
            tables::drop_tables(&mut conn, &old).await?;
        }
        Ok(())
    }

    /// After a failure: the build's tables and its row go.
    pub(super) async fn abandon(&self) -> Result<(), sqlx::Error> {
        let tables = self.build_tables();
        let mut conn = self.db.writer.acquire().await?;
        tables::drop_tables(&mut conn, &tables).await?;
        end_build(&self.db, &self.projector, &self.owner).await
    }

    /// Every table a build of this projector makes (dropped when it fails
    /// or its owner is gone): the projections' and the staged versions'.
    fn build_tables(&self) -> Vec<String> {
        let mut tables: Vec<String> = self.pairs.iter().flat_map(|(_, b)| b.tables()).collect();
        tables.push(super::head::staging(&self.projector));
        tables
    }
}

pub(super) async fn end_build(db: &Db, projector: &str, owner: &str) -> Result<(), sqlx::Error> {
    sqlx::query(section(SQL, "end_build"))
        .bind(projector)
        .bind(owner)
        .execute(&db.writer)
        .await?;
    Ok(())
}

/// What became of a build's claim while it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// Held to the end.
    Kept,
    /// Another process took the build over.
    Lost,
    /// Its row was deleted: an operator cancelled it
    /// ([`crate::read::versions::withdraw_build`]).
    Withdrawn,
}

/// Says the build is alive (with its progress) until `done`; answers what
/// became of the claim. A withdrawn claim cancels `withdrawn` at once, so
/// that the build stops.
pub(super) async fn heartbeat(
    db: Db,
    projector: String,
    owner: String,
    status: Arc<RebuildStatus>,
    done: CancellationToken,
    stop: CancellationToken,
    withdrawn: CancellationToken,
) -> Claim {
    let mut every = tokio::time::interval(BUILD_HEARTBEAT);
    loop {
        tokio::select! {
            _ = done.cancelled() => return Claim::Kept,
            _ = stop.cancelled() => return Claim::Kept,
            _ = every.tick() => {}
        }
        let beat = sqlx::query(section(SQL, "build_heartbeat"))
            .bind(&projector)
            .bind(&owner)
            .bind(now_ms())
            .bind(status.done())
            .bind(status.total())
            .bind(status.phase())
            .execute(&db.writer)
            .await;
        match beat {
            Ok(r) if r.rows_affected() == 0 && !done.is_cancelled() => {
                return match versions::build_of(&db, &projector).await {
                    Ok(None) => {
                        withdrawn.cancel();
                        Claim::Withdrawn
                    }
                    _ => Claim::Lost,
                };
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, projector, "cannot record the build's heartbeat"),
        }
    }
}

/// Whether a build's owner was a process on this host that is gone (its
/// build is taken over at once rather than after the heartbeat goes stale).
fn owner_gone(owner: &str) -> bool {
    let mut parts = owner.split(':');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    host == hostname()
        && pid.parse::<u32>().is_ok_and(|pid| {
            pid != std::process::id()
                && cfg!(target_os = "linux")
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
}

pub(super) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// A rebuild would apply what the live model held back or skipped.
pub(super) async fn refuse_over_dead_letters(db: &Db, projector: &str) -> Result<(), RebuildError> {
    let all = dead_letters::list(db, projector, true).await?;
    let open = all.iter().filter(|l| l.status == "open").count();
    if open > 0 {
        return Err(RebuildError::Refused(format!(
            "{open} open dead letters: resolve them (orders dead-letters) before a rebuild"
        )));
    }
    let discarded = all.iter().filter(|l| l.status == "discarded").count();
    if discarded > 0 {
        return Err(RebuildError::Refused(format!(
            "{discarded} discarded dead letters: a rebuild would apply what the live model skipped"
        )));
    }
    Ok(())
}
