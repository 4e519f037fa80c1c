//! Process managers (sagas): react to events by issuing commands, with state
//! per instance, exactly once in effect.
//!
//! A process manager is a pure state machine ([`ProcessManager`]): an event
//! arrives, or a command it issued is answered, and it returns its next
//! state and the commands to issue. The only I/O is a [`CommandBus`] that
//! issues a command with an idempotency key. [`ProcessProjection`] runs one
//! as a [`Projection`] of a [`crate::ProjectorRunner`], which brings what the
//! projector has: batches from the log or a topic, the instance's state
//! written in the same transaction as the checkpoint and the applied
//! version (an event is reacted to once per commit), dead letters, kill -9
//! and rebalance safety.
//!
//! The reactions run ahead of the batch's transaction
//! ([`Projection::ahead`]): the runner reads the applied versions and the
//! instances' states in one snapshot, the instances react (side by side,
//! each to its own events in order), and only then does the transaction
//! open, so that the read DB's writer (one connection on SQLite) is not
//! held while commands commit elsewhere. In the transaction each instance
//! keeps what it reached ahead if its saved version is still the one it
//! reacted from, to the same events; otherwise it reacts again there.
//!
//! Why that is exactly once in effect: the commands of a reaction are issued
//! before its transaction commits. A crash in between re-delivers the event
//! to the same state; the pure functions issue the same commands with the
//! same keys (`<process>/<event id>/<n>`, n counting the reaction's
//! commands), and the store answers a key it has seen with the first
//! answer. So each command takes effect once, as long as a command's answer
//! is a stable function of its key: record a refusal that may stop holding
//! later (out of stock) as an event rather than as an error.

use crate::dialect::section;
use crate::migrate::Migration;
use crate::read::{Projection, ProjectionError};
use cqrs_core::EventEnvelope;
use futures::future::BoxFuture;
use futures::StreamExt;
use serde::{de::DeserializeOwned, Serialize};
use sqlx::AnyConnection;
use std::collections::HashMap;
use std::fmt::Debug;
use std::marker::PhantomData;

const SQL: &str = include_str!("../sql/process.sql");
use std::sync::Arc;

/// A process manager's decisions, with no I/O: on each event, and on each
/// answer to a command it issued.
pub trait ProcessManager: Send + Sync + 'static {
    /// Its name: the key of its state and of its commands' idempotency keys.
    const NAME: &'static str;
    /// State of one instance (`Default` before its first event).
    type State: Serialize + DeserializeOwned + Default + Clone + Debug + Send + Sync;
    /// What it asks other aggregates to do.
    type Command: Debug + Send + Sync;
    /// The answer to one of its commands.
    type Answer: Debug + Send + Sync;

    /// The instance an event belongs to; `None`: not its business.
    fn instance_of(event: &EventEnvelope) -> Option<String>;
    /// An event arrived: the next state and the commands to issue, in order.
    fn on_event(
        state: &Self::State,
        event: &EventEnvelope,
    ) -> Result<(Self::State, Vec<Self::Command>), String>;
    /// A command was answered: the next state and more commands.
    fn on_answer(
        state: &Self::State,
        command: &Self::Command,
        answer: &Self::Answer,
    ) -> (Self::State, Vec<Self::Command>);
}

/// Why a command could not be issued now (a store away): the reaction is
/// tried again, never given up on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BusError(pub String);

/// Issues a process manager's commands: its only I/O.
pub trait CommandBus<C, A>: Send + Sync {
    /// Issues `command` with the idempotency key `key`; the answer of a key
    /// issued before is the first one.
    fn issue<'a>(&'a self, command: &'a C, key: String) -> BoxFuture<'a, Result<A, BusError>>;
}

/// How many instances of a batch react at once by default.
pub const DEFAULT_CONCURRENCY: usize = 32;

/// Serialises work per key within a process: commands of concurrent
/// reactions on one aggregate (a popular SKU) queue here instead of racing
/// to append at the same version and retrying.
#[derive(Debug, Default)]
pub struct KeyedLocks {
    held: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one key of a [`KeyedLocks`] until dropped.
pub struct KeyedGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    /// Waits for `key`, in the order asked.
    pub async fn lock(&self, key: &str) -> KeyedGuard<'_> {
        let mutex = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.entry(key.to_owned()).or_default().clone()
        };
        KeyedGuard {
            locks: self,
            key: key.to_owned(),
            guard: Some(mutex.lock_owned().await),
        }
    }

    /// Keys held or waited for now.
    pub fn len(&self) -> usize {
        self.held.lock().map(|h| h.len()).unwrap_or(0)
    }

    /// No key is held or waited for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        // Under the map's lock nobody can take a new handle, so a count of
        // one (the map's own) means nobody holds or waits for the key.
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        if held
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            held.remove(&self.key);
        }
    }
}

/// A process manager with its bus, run as a projection: its instances'
/// state lives in `process_instances`, written in the runner's transaction.
///
/// The instances of a batch react concurrently (each to its own events in
/// order), so one instance waiting on a commit does not hold up the
/// others; their states are written in the batch's transaction once all
/// have reacted.
pub struct ProcessProjection<P: ProcessManager, B> {
    bus: B,
    concurrency: usize,
    /// The reactions done ahead of the batch's transaction, per instance.
    ahead: std::sync::Mutex<HashMap<String, Reacted<P::State>>>,
    _p: PhantomData<fn() -> P>,
}

/// An instance's reaction done ahead of its batch's transaction: from the
/// state saved at which version, to which events, and the state reached.
struct Reacted<S> {
    from_version: i64,
    events: Vec<String>,
    state: S,
}

/// One instance's share of a batch: its events in order, and its state and
/// saved version before them.
struct Share<'a, S> {
    instance: String,
    events: Vec<&'a EventEnvelope>,
    state: S,
    version: i64,
}

impl<P: ProcessManager, B: CommandBus<P::Command, P::Answer>> ProcessProjection<P, B> {
    /// Runs `P` with `bus`, [`DEFAULT_CONCURRENCY`] instances at once.
    pub fn new(bus: B) -> Self {
        Self {
            bus,
            concurrency: DEFAULT_CONCURRENCY,
            ahead: std::sync::Mutex::default(),
            _p: PhantomData,
        }
    }

    /// At most `n` (at least 1) instances of a batch react at once.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Reacts to one event: the commands, each answer fed back, until none
    /// is left; returns the final state.
    async fn react(
        &self,
        state: P::State,
        event: &EventEnvelope,
    ) -> Result<P::State, ProjectionError> {
        use tracing::Instrument;
        // Where spans are exported, the commands run in a span of the
        // event's trace: their events, and the services they call, carry it.
        let span = match (
            cqrs_core::trace_context::exporting(),
            &event.metadata.traceparent,
        ) {
            (true, Some(tp)) => {
                let span = tracing::info_span!("react",
                    otel.name = %format!("{} reacts to {}", P::NAME, event.event_type),
                    process = P::NAME, event_id = %event.event_id);
                cqrs_core::trace_context::continue_from(&span, tp);
                span
            }
            _ => tracing::Span::none(),
        };
        self.react_in(state, event).instrument(span).await
    }

    async fn react_in(
        &self,
        state: P::State,
        event: &EventEnvelope,
    ) -> Result<P::State, ProjectionError> {
        let (mut state, mut queue) =
            P::on_event(&state, event).map_err(ProjectionError::Inconsistent)?;
        queue.reverse();
        let mut n = 0;
        while let Some(command) = queue.pop() {
            n += 1;
            let key = format!("{}/{}/{n}", P::NAME, event.event_id);
            let answer = self
                .bus
                .issue(&command, key)
                .await
                .map_err(|e| ProjectionError::Unavailable(e.0))?;
            tracing::debug!(process = P::NAME, event = %event.event_id, ?command, ?answer, "process command answered");
            let (next, more) = P::on_answer(&state, &command, &answer);
            state = next;
            queue.extend(more.into_iter().rev());
        }
        Ok(state)
    }

    /// Reacts to one instance's events in order; the final state.
    async fn react_all<'e>(
        &self,
        share: Share<'e, P::State>,
    ) -> Result<Share<'e, P::State>, ProjectionError> {
        let mut state = share.state;
        for e in &share.events {
            state = self.react(state, e).await?;
        }
        Ok(Share { state, ..share })
    }

    /// The instances of `events`, each with its events and its saved
    /// state as `conn` reads it.
    async fn shares<'e>(
        conn: &mut AnyConnection,
        events: &[&'e EventEnvelope],
    ) -> Result<Vec<Share<'e, P::State>>, ProjectionError> {
        let mut shares = Vec::new();
        for (instance, events) in by_instance::<P>(events) {
            let (state, version) = load(conn, P::NAME, &instance).await?;
            shares.push(Share {
                instance,
                events,
                state,
                version,
            });
        }
        Ok(shares)
    }

    /// Every share reacted to, [`Self::with_concurrency`] at once. Every
    /// reaction runs to its end, even when another failed: a command
    /// dropped halfway would be left to the retry to find out.
    async fn react_shares<'e>(
        &self,
        shares: Vec<Share<'e, P::State>>,
    ) -> Vec<Result<Share<'e, P::State>, ProjectionError>> {
        let mut reactions = Vec::with_capacity(shares.len());
        for share in shares {
            reactions.push(self.react_all(share));
        }
        futures::stream::iter(reactions)
            .buffer_unordered(self.concurrency)
            .collect()
            .await
    }

    fn reacted_ahead(&self) -> std::sync::MutexGuard<'_, HashMap<String, Reacted<P::State>>> {
        self.ahead.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reacts to the batch from the snapshot's states and keeps what each
    /// instance reached for [`Self::apply_events`].
    async fn act_ahead(
        &self,
        snapshot: &mut AnyConnection,
        events: &[&EventEnvelope],
    ) -> Result<(), ProjectionError> {
        self.reacted_ahead().clear();
        let shares = Self::shares(snapshot, events).await?;
        let mut done = HashMap::new();
        let mut failed = None;
        for reacted in self.react_shares(shares).await {
            match reacted {
                Ok(s) => {
                    let reacted = Reacted {
                        from_version: s.version,
                        events: s.events.iter().map(|e| e.event_id.clone()).collect(),
                        state: s.state,
                    };
                    done.insert(s.instance, reacted);
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        *self.reacted_ahead() = done;
        failed.map_or(Ok(()), Err)
    }

    /// Saves each instance's state in the batch's transaction: the one
    /// reached ahead when the instance is still at the version it was
    /// reacted from, to the same events; else reacts again now (the same
    /// commands with the same keys, where the state is the same).
    async fn apply_events(
        &self,
        tx: &mut AnyConnection,
        events: &[&EventEnvelope],
    ) -> Result<(), ProjectionError> {
        let mut ahead = std::mem::take(&mut *self.reacted_ahead());
        let (mut done, mut todo) = (Vec::new(), Vec::new());
        for share in Self::shares(tx, events).await? {
            match ahead.remove(&share.instance) {
                Some(r)
                    if r.from_version == share.version
                        && r.events.iter().eq(share.events.iter().map(|e| &e.event_id)) =>
                {
                    done.push(Ok(Share {
                        state: r.state,
                        ..share
                    }))
                }
                _ => todo.push(share),
            }
        }
        if !todo.is_empty() {
            metrics::counter!("cqrs_process_reactions_in_transaction_total", "process" => P::NAME)
                .increment(todo.len() as u64);
            done.extend(self.react_shares(todo).await);
        }
        for share in done {
            let share = share?;
            save(tx, P::NAME, &share.instance, &share.state, share.version).await?;
        }
        Ok(())
    }
}

/// The batch's events grouped by the instance they belong to, each group
/// in batch order, groups in the order of their first event.
fn by_instance<'a, P: ProcessManager>(
    events: &[&'a EventEnvelope],
) -> Vec<(String, Vec<&'a EventEnvelope>)> {
    let mut groups: Vec<(String, Vec<&'a EventEnvelope>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for e in events {
        let Some(instance) = P::instance_of(e) else {
            continue;
        };
        match index.get(&instance) {
            Some(&i) => groups[i].1.push(e),
            None => {
                index.insert(instance.clone(), groups.len());
                groups.push((instance, vec![e]));
            }
        }
    }
    groups
}

/// An instance's state and how many times it was saved (0: never).
async fn load<S: DeserializeOwned + Default>(
    tx: &mut AnyConnection,
    process: &str,
    instance: &str,
) -> Result<(S, i64), ProjectionError> {
    let row: Option<(String, i64)> = sqlx::query_as(section(SQL, "load"))
        .bind(process)
        .bind(instance)
        .fetch_optional(&mut *tx)
        .await?;
    match row {
        None => Ok((S::default(), 0)),
        Some((json, version)) => serde_json::from_str(&json)
            .map(|s| (s, version))
            .map_err(|e| {
                ProjectionError::Inconsistent(format!(
                    "{process} {instance}: state does not decode: {e}"
                ))
            }),
    }
}

async fn save<S: Serialize>(
    tx: &mut AnyConnection,
    process: &str,
    instance: &str,
    state: &S,
    version: i64,
) -> Result<(), ProjectionError> {
    let json = serde_json::to_string(state)
        .map_err(|e| ProjectionError::Inconsistent(format!("{process} {instance}: {e}")))?;
    sqlx::query(section(SQL, "save"))
        .bind(process)
        .bind(instance)
        .bind(json)
        .bind(version + 1)
        .bind(crate::db::timestamp(chrono::Utc::now()))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The migrations of the instances' table, shared by every process manager
/// (each creates it if missing): the component `projection <name>`.
pub fn instance_migrations() -> Vec<Migration> {
    vec![Migration::new(1, "process instances").sql([section(SQL, "table")])]
}

impl<P: ProcessManager, B: CommandBus<P::Command, P::Answer> + 'static> Projection
    for ProcessProjection<P, B>
{
    fn name(&self) -> &'static str {
        P::NAME
    }
    fn tables(&self) -> Vec<String> {
        vec!["process_instances".to_owned()]
    }
    fn migrations(&self, _index_tag: &str) -> Vec<Migration> {
        instance_migrations()
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.apply_events(tx, events))
    }
    fn acts_ahead(&self) -> bool {
        true
    }
    fn ahead<'a>(
        &'a self,
        snapshot: &'a mut AnyConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.act_ahead(snapshot, events))
    }
}
