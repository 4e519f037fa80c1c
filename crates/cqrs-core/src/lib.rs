//! The CQRS pattern with no I/O: aggregates as pure deciders, the event
//! envelope that travels from the write side to the read side, consistency
//! tokens and the stages of a command's trace.
//!
//! An [`Aggregate`] is two pure functions: `decide` turns a command into
//! events (or refuses it with a [`DomainError`]), `evolve` folds one event
//! into the state. Its state is the fold of its events, so its rules are
//! tested without a database (see [`testing`] behind the `testing` feature
//! for given/when/then), and any store can run it (`cqrs-sql`'s command
//! handler loads, decides, appends with optimistic concurrency).
//!
//! ```
//! use cqrs_core::{Aggregate, DomainError, DomainEvent, ErrorKind};
//!
//! /// A counter that never passes 10.
//! struct Counter;
//!
//! #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
//! enum Event {
//!     Added { n: u32 },
//! }
//! impl DomainEvent for Event {
//!     fn event_type(&self) -> &'static str {
//!         "Added"
//!     }
//! }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("the counter would pass 10")]
//! struct TooMany;
//! impl DomainError for TooMany {
//!     fn kind(&self) -> ErrorKind {
//!         ErrorKind::Conflict
//!     }
//!     fn code(&self) -> &'static str {
//!         "too_many"
//!     }
//! }
//!
//! impl Aggregate for Counter {
//!     const TYPE: &'static str = "counter";
//!     type State = u32;
//!     type Command = u32;
//!     type Event = Event;
//!     type Error = TooMany;
//!     fn decide(total: &u32, n: &u32) -> Result<Vec<Event>, TooMany> {
//!         if total + n > 10 {
//!             return Err(TooMany);
//!         }
//!         Ok(vec![Event::Added { n: *n }])
//!     }
//!     fn evolve(total: u32, event: &Event) -> u32 {
//!         match event {
//!             Event::Added { n } => total + n,
//!         }
//!     }
//! }
//!
//! let state = Counter::fold(&[Event::Added { n: 4 }, Event::Added { n: 5 }]);
//! assert_eq!(state, 9);
//! assert_eq!(Counter::decide(&state, &1).unwrap(), [Event::Added { n: 1 }]);
//! assert_eq!(Counter::decide(&state, &2).unwrap_err().code(), "too_many");
//! ```
//!
//! When an event's JSON shape changes, raise its version and upcast the old
//! shape ([`DomainEvent::current_version`], [`DomainEvent::upcast`]); stored
//! events are never rewritten, [`EventEnvelope::decode`] upcasts them.

pub mod aggregate;
pub mod envelope;
pub mod error;
pub mod sealed;
#[cfg(feature = "testing")]
pub mod testing;
pub mod token;
pub mod trace;
pub mod trace_context;

pub use aggregate::{Aggregate, DomainEvent};
pub use envelope::{DecodeError, EncodeError, EventEnvelope, EventMetadata, NewEvent};
pub use error::{DomainError, ErrorKind};
pub use sealed::Sealed;
pub use token::{ConsistencyToken, TokenError};
pub use trace::Stage;
