//! The CQRS pattern with no I/O: aggregates as pure deciders, the event
//! envelope that travels from the write side to the read side, consistency
//! tokens and the stages of a command's trace.

pub mod aggregate;
pub mod envelope;
pub mod error;
#[cfg(feature = "testing")]
pub mod testing;
pub mod token;
pub mod trace;

pub use aggregate::{Aggregate, DomainEvent};
pub use envelope::{DecodeError, EncodeError, EventEnvelope, EventMetadata, NewEvent};
pub use error::{DomainError, ErrorKind};
pub use token::{ConsistencyToken, TokenError};
pub use trace::Stage;
