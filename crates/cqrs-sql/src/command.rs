//! The command handler: load, decide, append with optimistic concurrency,
//! retry a bounded number of times, answer idempotently.

use crate::store::{AppendRequest, EventStore, IdempotencyRecord, StoreError, StoredAnswer};
use chrono::{DateTime, Utc};
use cqrs_core::{Aggregate, ConsistencyToken, EventEnvelope, EventMetadata, NewEvent};

/// How to run one command.
#[derive(Debug, Clone)]
pub struct CommandOptions {
    /// Id of this command (and of its trace).
    pub command_id: String,
    /// Refuse unless the aggregate is at this version.
    pub expected_version: Option<i64>,
    /// The client's idempotency key and the hash of its request.
    pub idempotency: Option<IdempotencyRecord>,
    /// The decision time stored on the events.
    pub now: DateTime<Utc>,
    /// Appends retried after a conflict before giving up.
    pub max_retries: u32,
}

/// The answer to a command that succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutcome {
    /// The aggregate.
    pub aggregate_id: String,
    /// Its version after the command.
    pub version: i64,
    /// The command id (the first one's, for a replayed key).
    pub command_id: String,
    /// Log position of the last event.
    pub position: i64,
    /// True when an idempotency key returned an earlier answer.
    pub replayed: bool,
    /// The events this call appended (empty when replayed).
    pub events: Vec<EventEnvelope>,
}

impl CommandOutcome {
    /// The token a query presents to read this write.
    pub fn token(&self) -> ConsistencyToken {
        ConsistencyToken {
            position: self.position,
            version: self.version,
            aggregate_id: self.aggregate_id.clone(),
        }
    }

    fn replay(a: StoredAnswer) -> Self {
        Self {
            aggregate_id: a.aggregate_id,
            version: a.version,
            command_id: a.command_id,
            position: a.position,
            replayed: true,
            events: Vec::new(),
        }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The domain refused it.
    #[error(transparent)]
    Domain(E),
    /// The client's `expected_version` is not the current one.
    #[error("expected version {expected} but the aggregate is at version {actual}")]
    VersionConflict {
        /// What the client expected.
        expected: i64,
        /// What it is.
        actual: i64,
    },
    /// Concurrent writers kept winning.
    #[error("gave up after {0} conflicting attempts; retry later")]
    TooManyConflicts(u32),
    /// The idempotency key was used for a different request.
    #[error("idempotency key was first used for a different request")]
    IdempotencyMismatch,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

async fn answer_for_key<S: EventStore, E: std::error::Error + 'static>(
    store: &S,
    idem: &IdempotencyRecord,
) -> Result<Option<CommandOutcome>, CommandError<E>> {
    match store.idempotent_answer(&idem.key).await? {
        Some(a) if a.request_hash == idem.request_hash => Ok(Some(CommandOutcome::replay(a))),
        Some(_) => Err(CommandError::IdempotencyMismatch),
        None => Ok(None),
    }
}

/// Runs a command against the aggregate `aggregate_id`.
pub async fn execute<A: Aggregate, S: EventStore>(
    store: &S,
    aggregate_id: &str,
    command: &A::Command,
    options: CommandOptions,
) -> Result<CommandOutcome, CommandError<A::Error>> {
    if let Some(idem) = &options.idempotency {
        if let Some(outcome) = answer_for_key(store, idem).await? {
            return Ok(outcome);
        }
    }
    let mut attempt = 0;
    loop {
        if attempt > 0 {
            // A concurrent request with the same key may be the one that won.
            if let Some(idem) = &options.idempotency {
                if let Some(outcome) = answer_for_key(store, idem).await? {
                    return Ok(outcome);
                }
            }
        }
        let history = store.load(aggregate_id).await?;
        let mut state = A::State::default();
        for envelope in &history {
            let event: A::Event = envelope.decode().map_err(|e| {
                StoreError::Corrupt(format!(
                    "event {} of {aggregate_id} does not decode: {e}",
                    envelope.version
                ))
            })?;
            state = A::evolve(state, &event);
        }
        let version = history.len() as i64;
        if let Some(expected) = options.expected_version {
            if expected != version {
                return Err(CommandError::VersionConflict {
                    expected,
                    actual: version,
                });
            }
        }
        let events = match A::decide(&state, command) {
            Ok(events) => events,
            Err(refusal) => {
                // The refusal may be caused by this very request, committed
                // by a concurrent retry with the same key: answer as it did.
                if let Some(idem) = options
                    .idempotency
                    .as_ref()
                    .filter(|_| attempt > 0 || version > 0)
                {
                    if let Some(outcome) = answer_for_key(store, idem).await? {
                        return Ok(outcome);
                    }
                }
                return Err(CommandError::Domain(refusal));
            }
        };
        let events = events
            .iter()
            .map(|e| NewEvent::encode(uuid::Uuid::now_v7().to_string(), e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let request = AppendRequest {
            aggregate_type: A::TYPE.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            expected_version: version,
            events,
            metadata: EventMetadata {
                command_id: options.command_id.clone(),
                occurred_at: options.now,
            },
            idempotency: options.idempotency.clone(),
        };
        match store.append(request).await {
            Ok(appended) => {
                let last = appended
                    .events
                    .last()
                    .map_or((version, 0), |e| (e.version, e.position));
                return Ok(CommandOutcome {
                    aggregate_id: aggregate_id.to_owned(),
                    version: last.0,
                    command_id: options.command_id,
                    position: last.1,
                    replayed: false,
                    events: appended.events,
                });
            }
            Err(StoreError::VersionConflict { .. }) => {
                if let Some(expected) = options.expected_version {
                    let actual = store.load(aggregate_id).await?.len() as i64;
                    return Err(CommandError::VersionConflict { expected, actual });
                }
                attempt += 1;
                if attempt > options.max_retries {
                    return Err(CommandError::TooManyConflicts(attempt));
                }
                // A little jitter keeps a crowd of retries from colliding again.
                let jitter = uuid::Uuid::new_v4().as_u128() % 3_000;
                tokio::time::sleep(std::time::Duration::from_micros(
                    jitter as u64 * attempt as u64,
                ))
                .await;
            }
            Err(StoreError::DuplicateIdempotencyKey(_)) => {
                if let Some(idem) = &options.idempotency {
                    if let Some(outcome) = answer_for_key(store, idem).await? {
                        return Ok(outcome);
                    }
                }
                return Err(CommandError::IdempotencyMismatch);
            }
            Err(e) => return Err(e.into()),
        }
    }
}
