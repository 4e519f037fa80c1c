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
//! Why that is exactly once in effect: the commands of a reaction are issued
//! before its transaction commits. A crash in between re-delivers the event
//! to the same state; the pure functions issue the same commands with the
//! same keys (`<process>/<event id>/<n>`, n counting the reaction's
//! commands), and the store answers a key it has seen with the first
//! answer. So each command takes effect once, as long as a command's answer
//! is a stable function of its key: record a refusal that may stop holding
//! later (out of stock) as an event rather than as an error.

use crate::migrate::Migration;
use crate::read::{Projection, ProjectionError};
use cqrs_core::EventEnvelope;
use futures::future::BoxFuture;
use serde::{de::DeserializeOwned, Serialize};
use sqlx::AnyConnection;
use std::fmt::Debug;
use std::marker::PhantomData;

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

/// A process manager with its bus, run as a projection: its instances'
/// state lives in `process_instances`, written in the runner's transaction.
pub struct ProcessProjection<P: ProcessManager, B> {
    bus: B,
    _p: PhantomData<fn() -> P>,
}

impl<P: ProcessManager, B: CommandBus<P::Command, P::Answer>> ProcessProjection<P, B> {
    /// Runs `P` with `bus`.
    pub fn new(bus: B) -> Self {
        Self {
            bus,
            _p: PhantomData,
        }
    }

    /// Reacts to one event: the commands, each answer fed back, until none
    /// is left; returns the final state.
    async fn react(
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

    async fn apply_events(
        &self,
        tx: &mut AnyConnection,
        events: &[&EventEnvelope],
    ) -> Result<(), ProjectionError> {
        for e in events {
            let Some(instance) = P::instance_of(e) else {
                continue;
            };
            let (state, version) = load(tx, P::NAME, &instance).await?;
            let state = self.react(state, e).await?;
            save(tx, P::NAME, &instance, &state, version).await?;
        }
        Ok(())
    }
}

/// An instance's state and how many times it was saved (0: never).
async fn load<S: DeserializeOwned + Default>(
    tx: &mut AnyConnection,
    process: &str,
    instance: &str,
) -> Result<(S, i64), ProjectionError> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT state, version FROM process_instances WHERE process = $1 AND instance_id = $2",
    )
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
    sqlx::query(
        "INSERT INTO process_instances (process, instance_id, state, version, updated_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (process, instance_id) DO UPDATE \
         SET state = excluded.state, version = excluded.version, updated_at = excluded.updated_at",
    )
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
    vec![Migration::new(1, "process instances").sql([
        "CREATE TABLE IF NOT EXISTS process_instances (
            process TEXT NOT NULL,
            instance_id TEXT NOT NULL,
            state TEXT NOT NULL,
            version BIGINT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (process, instance_id))",
    ])]
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
}
