//! Aggregates are pure deciders: `decide` turns a command into events or an
//! error, `evolve` folds one event into the state. No clock, ids or I/O.

use serde::{de::DeserializeOwned, Serialize};

/// An event that knows its own name and schema version.
pub trait DomainEvent {
    /// The stable name stored with the event ("OrderCreated").
    fn event_type(&self) -> &'static str;
    /// The payload's schema version, for upcasting later.
    fn schema_version(&self) -> i32 {
        1
    }
}

/// A consistency boundary: its state is the fold of its events.
pub trait Aggregate {
    /// The aggregate type stored with each event ("order").
    const TYPE: &'static str;
    /// State before any event is `Default`.
    type State: Default + Clone + Send + Sync;
    /// What a client asks for.
    type Command;
    /// What happened.
    type Event: Serialize + DeserializeOwned + DomainEvent + Clone + Send + Sync;
    /// Why a command was refused.
    type Error: std::error::Error + crate::DomainError + Send + Sync + 'static;

    /// Decides which events a command produces against the current state.
    fn decide(
        state: &Self::State,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Error>;
    /// Applies one event to the state.
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;

    /// Folds a history into a state.
    fn fold<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self::State
    where
        Self::Event: 'a,
    {
        events
            .into_iter()
            .fold(Self::State::default(), |s, e| Self::evolve(s, e))
    }
}
