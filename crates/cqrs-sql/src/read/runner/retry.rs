//! An operator's answers to dead letters: retry an aggregate's open letters
//! in version order, or skip one (its event counted as applied without its
//! effect) and go on with the letters parked behind it.

use super::ProjectorRunner;
use crate::db::timestamp;
use crate::dialect::section;
use crate::read::dead_letters::{self, DeadLetter, DeadLetterStatus};
use crate::read::sql::SQL;
use crate::read::tables::{lock_version, next_seq, notify_progress};
use crate::read::ProjectionError;
use sqlx::AnyConnection;

/// What a retry or a skip did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Retried {
    /// Letters applied (or found applied already).
    pub applied: usize,
    /// Letters of the aggregate still open.
    pub left: usize,
}

/// Why a letter cannot be skipped.
#[derive(Debug, thiserror::Error)]
pub enum SkipError {
    /// No letter has that id (for this projector).
    #[error("no dead letter {0:?} of this projector")]
    NotFound(String),
    /// It was retried or discarded already.
    #[error("dead letter {id:?} is {status} already")]
    Closed {
        /// The letter.
        id: String,
        /// Its status.
        status: String,
    },
    /// An earlier letter of its aggregate is open: skipping this one would
    /// apply the aggregate out of order.
    #[error(
        "dead letter {id:?} is version {version} of {aggregate}, whose read model is at \
         version {current}: retry or skip the earlier letter first"
    )]
    OutOfOrder {
        /// The letter.
        id: String,
        /// Its aggregate.
        aggregate: String,
        /// Its version.
        version: i64,
        /// The aggregate's applied version.
        current: i64,
    },
    /// The read DB or a projection failed.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

impl From<sqlx::Error> for SkipError {
    fn from(e: sqlx::Error) -> Self {
        SkipError::Projection(e.into())
    }
}

impl ProjectorRunner {
    /// Re-applies the open dead letters of one aggregate in version order, as
    /// far as they fit; returns (applied, still open).
    pub async fn retry_dead_letters(
        &self,
        aggregate_id: &str,
    ) -> Result<(usize, usize), ProjectionError> {
        let mut tx = self.db.writer.begin().await?;
        let current =
            lock_version(&mut tx, self.db.dialect, &self.config.name, aggregate_id).await?;
        let open = dead_letters::open_for(&mut tx, &self.config.name, aggregate_id).await?;
        let (current, done) = self
            .apply_in_order(&mut tx, aggregate_id, current, &open)
            .await?;
        self.finish(tx, aggregate_id, current, done).await?;
        Ok((done.applied, done.left))
    }

    /// Skips dead letter `id`: closes it (`discarded`) and, where it is the
    /// aggregate's next version, counts that version as applied without its
    /// effect; then applies the letters parked behind it as far as they
    /// fit. A letter that never decoded (no version) is closed alone. One
    /// read-DB transaction.
    pub async fn skip_dead_letter(&self, id: &str) -> Result<Retried, SkipError> {
        let mut tx = self.db.writer.begin().await?;
        let letter = dead_letters::one_in(&mut tx, id)
            .await?
            .filter(|l| l.projector == self.config.name)
            .ok_or_else(|| SkipError::NotFound(id.to_owned()))?;
        if !matches!(letter.status.as_str(), "dead" | "parked") {
            return Err(SkipError::Closed {
                id: id.to_owned(),
                status: letter.status,
            });
        }
        let now = timestamp(chrono::Utc::now());
        let Some(aggregate) = letter.aggregate_id.clone() else {
            dead_letters::resolve(&mut tx, id, DeadLetterStatus::Discarded, &now).await?;
            tx.commit().await?;
            return Ok(Retried {
                applied: 0,
                left: 0,
            });
        };
        let mut current =
            lock_version(&mut tx, self.db.dialect, &self.config.name, &aggregate).await?;
        // Read again under the aggregate's lock: a retry may have closed it.
        let letter = dead_letters::one_in(&mut tx, id)
            .await?
            .ok_or_else(|| SkipError::NotFound(id.to_owned()))?;
        if !matches!(letter.status.as_str(), "dead" | "parked") {
            return Err(SkipError::Closed {
                id: id.to_owned(),
                status: letter.status,
            });
        }
        if let Some(version) = letter.version {
            let at = current.unwrap_or(0);
            if version > at + 1 {
                return Err(SkipError::OutOfOrder {
                    id: id.to_owned(),
                    aggregate,
                    version,
                    current: at,
                });
            }
            if version == at + 1 {
                let position = letter.envelope.as_ref().map_or(0, |e| e.position);
                self.set_version(&mut tx, &aggregate, current, version, position, &letter)
                    .await?;
                current = Some(version);
            }
        }
        dead_letters::resolve(&mut tx, id, DeadLetterStatus::Discarded, &now).await?;
        let open = dead_letters::open_for(&mut tx, &self.config.name, &aggregate).await?;
        let (current, done) = self
            .apply_in_order(&mut tx, &aggregate, current, &open)
            .await?;
        self.finish(tx, &aggregate, current, done).await?;
        Ok(done)
    }

    /// Applies `open` (an aggregate's open letters, in version order) from
    /// `current` on while each is the next version; closes those applied or
    /// found applied already. Answers the aggregate's version after them.
    async fn apply_in_order(
        &self,
        tx: &mut AnyConnection,
        aggregate_id: &str,
        mut current: Option<i64>,
        open: &[DeadLetter],
    ) -> Result<(Option<i64>, Retried), ProjectionError> {
        let now = timestamp(chrono::Utc::now());
        let mut done = Retried {
            applied: 0,
            left: 0,
        };
        for dl in open {
            let Some(event) = &dl.envelope else {
                done.left += 1;
                continue;
            };
            let cur = current.unwrap_or(0);
            if done.left == 0 && event.version <= cur {
                dead_letters::resolve(tx, &dl.id, DeadLetterStatus::Retried, &now).await?;
                done.applied += 1;
            } else if done.left == 0 && event.version == cur + 1 {
                for p in &self.projections {
                    p.apply(tx, &[event]).await?;
                }
                self.set_version(tx, aggregate_id, current, event.version, event.position, dl)
                    .await?;
                current = Some(event.version);
                dead_letters::resolve(tx, &dl.id, DeadLetterStatus::Retried, &now).await?;
                done.applied += 1;
            } else {
                done.left += 1;
            }
        }
        Ok((current, done))
    }

    /// Records `version` as the aggregate's applied one (with a fresh
    /// commit-ordered stamp, so that waiters and caches see it).
    async fn set_version(
        &self,
        tx: &mut AnyConnection,
        aggregate_id: &str,
        current: Option<i64>,
        version: i64,
        position: i64,
        letter: &DeadLetter,
    ) -> Result<(), sqlx::Error> {
        let sql = match current {
            Some(_) => section(SQL, "version_update_one"),
            None => section(SQL, "version_insert_one"),
        };
        let seq = next_seq(tx, &self.config.name).await?;
        sqlx::query(sql)
            .bind(&self.config.name)
            .bind(aggregate_id)
            .bind(version)
            .bind(position)
            .bind(&letter.published_as)
            .bind(timestamp(chrono::Utc::now()))
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Commits, then tells this process's waiters and forgets the
    /// aggregate's parking once nothing of it is open.
    async fn finish(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Any>,
        aggregate_id: &str,
        current: Option<i64>,
        done: Retried,
    ) -> Result<(), sqlx::Error> {
        if current.is_some() {
            notify_progress(&mut tx, self.db.dialect).await?;
        }
        tx.commit().await?;
        if done.left == 0 {
            if let Ok(mut p) = self.parked.lock() {
                p.remove(aggregate_id);
            }
        }
        if let Some(v) = current {
            self.progress.applied([(aggregate_id, v)]);
        }
        Ok(())
    }
}
