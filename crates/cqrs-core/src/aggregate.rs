//! Aggregates are pure deciders: `decide` turns a command into events or an
//! error, `evolve` folds one event into the state. No clock, ids or I/O.

use serde::{de::DeserializeOwned, Serialize};

/// An event that knows its own name and schema version, and how payloads
/// stored by older versions become today's.
///
/// Changing an event's JSON shape means: raise [`DomainEvent::current_version`]
/// for its type and teach [`DomainEvent::upcast`] the step from the version
/// before. Stored events are never rewritten; every read
/// ([`crate::EventEnvelope::decode`]: the command handler's load, projectors
/// on the log or on Kafka, replays) upcasts them step by step.
pub trait DomainEvent {
    /// The stable name stored with the event ("OrderCreated").
    fn event_type(&self) -> &'static str;
    /// The payload's schema version, stored with the event.
    fn schema_version(&self) -> i32
    where
        Self: Sized,
    {
        Self::current_version(self.event_type())
    }
    /// The schema version this build writes for events named `event_type`.
    fn current_version(event_type: &str) -> i32
    where
        Self: Sized,
    {
        let _ = event_type;
        1
    }
    /// A payload of `event_type` at `version` in its shape at `version + 1`.
    fn upcast(
        event_type: &str,
        version: i32,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, String>
    where
        Self: Sized,
    {
        let _ = payload;
        Err(format!(
            "no upcaster for {event_type} from version {version}"
        ))
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
