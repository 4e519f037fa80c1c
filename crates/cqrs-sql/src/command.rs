//! The command handler: load, decide, append with optimistic concurrency,
//! retry a bounded number of times, answer idempotently.

use crate::store::{
    AppendRequest, Appended, EventStore, IdempotencyRecord, StoreError, StoredAnswer,
};
use chrono::{DateTime, Utc};
use cqrs_core::{Aggregate, ConsistencyToken, EventEnvelope, EventMetadata, NewEvent};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::Mutex;

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
    /// Who sends it (the token's `sub`), stored with its events.
    pub caller: Option<String>,
    /// The W3C trace context it runs in, stored with its events (None: the
    /// current span's, where spans are exported).
    pub traceparent: Option<String>,
}

impl CommandOptions {
    /// A new command: a fresh id (UUIDv7), decided now, no expected version,
    /// no idempotency key, no caller, up to 10 retries after a conflict.
    pub fn new() -> Self {
        Self {
            command_id: uuid::Uuid::now_v7().to_string(),
            expected_version: None,
            idempotency: None,
            now: Utc::now(),
            max_retries: 10,
            caller: None,
            traceparent: None,
        }
    }
}

impl Default for CommandOptions {
    fn default() -> Self {
        Self::new()
    }
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

impl<E: std::error::Error + cqrs_core::DomainError + 'static> CommandError<E> {
    /// The error code a client sees for it, and metrics count it under:
    /// the one table of them (the domain's own codes come from its error).
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::Domain(d) => d.code(),
            CommandError::VersionConflict { .. } => "version_conflict",
            CommandError::TooManyConflicts(_) => "contention",
            CommandError::IdempotencyMismatch => "idempotency_key_reused",
            CommandError::Store(s) => s.code(),
        }
    }
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

/// The state and version of recently commanded aggregates, kept after each
/// committed append so that the next command on the same aggregate does not
/// reload its history. An entry may be stale (another process appended
/// since): the version check of the append catches a stale acceptance, and
/// a refusal or a failed `expected_version` check decided on a cached state
/// is decided again on the stored one. Bounded, least recently used first out.
pub struct StateCache<A: Aggregate> {
    entries: Mutex<LruCache<String, (i64, A::State)>>,
}

impl<A: Aggregate> StateCache<A> {
    /// A cache of at most `capacity` aggregates (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// An aggregate that cannot exist yet (an id the caller just generated):
    /// its first command skips the load.
    pub fn insert_new(&self, aggregate_id: &str) {
        self.put(aggregate_id, 0, A::State::default());
    }

    fn get(&self, aggregate_id: &str) -> Option<(i64, A::State)> {
        // A poisoned lock only costs a load.
        self.entries.lock().ok()?.get(aggregate_id).cloned()
    }

    fn put(&self, aggregate_id: &str, version: i64, state: A::State) {
        if let Ok(mut e) = self.entries.lock() {
            e.put(aggregate_id.to_owned(), (version, state));
        }
    }

    fn forget(&self, aggregate_id: &str) {
        if let Ok(mut e) = self.entries.lock() {
            e.pop(aggregate_id);
        }
    }
}

/// Runs a command against the aggregate `aggregate_id`, loading its history.
pub async fn execute<A: Aggregate, S: EventStore>(
    store: &S,
    aggregate_id: &str,
    command: &A::Command,
    options: CommandOptions,
) -> Result<CommandOutcome, CommandError<A::Error>> {
    execute_cached::<A, S>(store, None, aggregate_id, command, options).await
}

/// Where a command's state came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Cache,
    Store,
}

/// Runs a command against the aggregate `aggregate_id`, starting from its
/// cached state when `cache` has it.
pub async fn execute_cached<A: Aggregate, S: EventStore>(
    store: &S,
    cache: Option<&StateCache<A>>,
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
    let mut use_cache = cache.is_some();
    loop {
        if attempt > 0 {
            // A concurrent request with the same key may be the one that won.
            if let Some(idem) = &options.idempotency {
                if let Some(outcome) = answer_for_key(store, idem).await? {
                    return Ok(outcome);
                }
            }
        }
        let (version, state, source) =
            current_state(store, cache.filter(|_| use_cache), aggregate_id).await?;
        let decided = match decide::<A>(&state, version, command, &options) {
            Ok(events) => events,
            // Decided on a state that may be stale: decide again on the stored one.
            Err(_) if source == Source::Cache => {
                use_cache = false;
                continue;
            }
            Err(CommandError::Domain(refusal)) => {
                // The refusal may be caused by this very request, committed
                // by a concurrent retry with the same key: answer as it did.
                let maybe_ours = attempt > 0 || version > 0;
                return match options.idempotency.as_ref().filter(|_| maybe_ours) {
                    Some(idem) => answer_for_key(store, idem)
                        .await?
                        .ok_or(CommandError::Domain(refusal)),
                    None => Err(CommandError::Domain(refusal)),
                };
            }
            Err(e) => return Err(e),
        };
        let request = append_request::<A>(aggregate_id, version, &decided, &options)?;
        match store.append(request).await {
            Ok(appended) => {
                if let Some(c) = cache {
                    let state = decided.iter().fold(state, A::evolve);
                    c.put(aggregate_id, version + decided.len() as i64, state);
                }
                return Ok(outcome_of(
                    aggregate_id,
                    version,
                    appended,
                    options.command_id,
                ));
            }
            Err(StoreError::VersionConflict { .. }) => {
                if let Some(c) = cache {
                    c.forget(aggregate_id);
                }
                if source == Source::Cache {
                    // Stale, not contended: no attempt spent, no pause.
                    use_cache = false;
                    continue;
                }
                attempt += 1;
                contended(store, aggregate_id, &options, attempt).await?;
            }
            Err(StoreError::DuplicateIdempotencyKey(_)) => {
                return taken_key_answer(store, &options).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// After losing a race at append: the client's `expected_version` is
/// stale (409 with the actual version), or too many attempts were lost, or
/// a pause before the next attempt.
async fn contended<S: EventStore, E: std::error::Error + 'static>(
    store: &S,
    aggregate_id: &str,
    options: &CommandOptions,
    attempt: u32,
) -> Result<(), CommandError<E>> {
    if let Some(expected) = options.expected_version {
        let actual = store.load(aggregate_id).await?.len() as i64;
        return Err(CommandError::VersionConflict { expected, actual });
    }
    if attempt > options.max_retries {
        return Err(CommandError::TooManyConflicts(attempt));
    }
    back_off(attempt).await;
    Ok(())
}

/// Another request with this idempotency key committed first: its answer.
async fn taken_key_answer<S: EventStore, E: std::error::Error + 'static>(
    store: &S,
    options: &CommandOptions,
) -> Result<CommandOutcome, CommandError<E>> {
    match &options.idempotency {
        Some(idem) => answer_for_key(store, idem)
            .await?
            .ok_or(CommandError::IdempotencyMismatch),
        None => Err(CommandError::IdempotencyMismatch),
    }
}

/// A pause with jitter before retry `attempt`, so that a crowd of retries
/// does not collide again.
async fn back_off(attempt: u32) {
    let jitter = uuid::Uuid::new_v4().as_u128() % 3_000;
    tokio::time::sleep(std::time::Duration::from_micros(
        jitter as u64 * u64::from(attempt),
    ))
    .await;
}

/// The aggregate's version and state: from `cache` when it has them, else
/// folded from the stored history.
async fn current_state<A: Aggregate, S: EventStore>(
    store: &S,
    cache: Option<&StateCache<A>>,
    aggregate_id: &str,
) -> Result<(i64, A::State, Source), StoreError> {
    if let Some((version, state)) = cache.and_then(|c| c.get(aggregate_id)) {
        return Ok((version, state, Source::Cache));
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
    Ok((history.len() as i64, state, Source::Store))
}

/// The pure decision, after the client's `expected_version` check.
fn decide<A: Aggregate>(
    state: &A::State,
    version: i64,
    command: &A::Command,
    options: &CommandOptions,
) -> Result<Vec<A::Event>, CommandError<A::Error>> {
    if let Some(expected) = options.expected_version.filter(|e| *e != version) {
        return Err(CommandError::VersionConflict {
            expected,
            actual: version,
        });
    }
    A::decide(state, command).map_err(CommandError::Domain)
}

/// The append of `events` on top of `version`.
fn append_request<A: Aggregate>(
    aggregate_id: &str,
    version: i64,
    events: &[A::Event],
    options: &CommandOptions,
) -> Result<AppendRequest, StoreError> {
    let events = events
        .iter()
        .map(|e| NewEvent::encode(uuid::Uuid::now_v7().to_string(), e))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(AppendRequest {
        aggregate_type: A::TYPE.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        expected_version: version,
        events,
        metadata: EventMetadata {
            command_id: options.command_id.clone(),
            occurred_at: options.now,
            caller: options.caller.clone(),
            traceparent: options
                .traceparent
                .clone()
                .or_else(cqrs_core::trace_context::current),
        },
        idempotency: options.idempotency.clone(),
    })
}

/// The answer to an append that committed.
fn outcome_of(
    aggregate_id: &str,
    version: i64,
    appended: Appended,
    command_id: String,
) -> CommandOutcome {
    let (version, position) = appended
        .events
        .last()
        .map_or((version, 0), |e| (e.version, e.position));
    CommandOutcome {
        aggregate_id: aggregate_id.to_owned(),
        version,
        command_id,
        position,
        replayed: false,
        events: appended.events,
    }
}
