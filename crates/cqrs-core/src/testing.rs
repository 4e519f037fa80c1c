//! Given (events) / when (command) / then (events or error): an aggregate's
//! rules tested as its own pure functions, with no store and no I/O.
//!
//! ```
//! # use cqrs_core::testing::GivenWhenThen;
//! # use cqrs_core::{Aggregate, DomainError, DomainEvent, ErrorKind};
//! # #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
//! # struct Rang;
//! # impl DomainEvent for Rang { fn event_type(&self) -> &'static str { "Rang" } }
//! # #[derive(Debug, PartialEq, thiserror::Error)]
//! # #[error("rung out")]
//! # struct RungOut;
//! # impl DomainError for RungOut {
//! #     fn kind(&self) -> ErrorKind { ErrorKind::Conflict }
//! #     fn code(&self) -> &'static str { "rung_out" }
//! # }
//! /// A bell that rings twice at most.
//! struct Bell;
//! impl Aggregate for Bell {
//!     const TYPE: &'static str = "bell";
//!     type State = u32;
//!     type Command = ();
//!     type Event = Rang;
//!     type Error = RungOut;
//!     fn decide(rings: &u32, _: &()) -> Result<Vec<Rang>, RungOut> {
//!         if *rings < 2 { Ok(vec![Rang]) } else { Err(RungOut) }
//!     }
//!     fn evolve(rings: u32, _: &Rang) -> u32 { rings + 1 }
//! }
//! Bell::given([Rang]).when(()).then([Rang]);
//! Bell::given([Rang, Rang]).when(()).then_error(RungOut);
//! Bell::given([Rang, Rang]).when(()).then_refused("rung_out");
//! ```

use crate::{Aggregate, DomainError};
use std::fmt::Debug;

/// Starts a scenario on any aggregate: `Order::given(events)`.
pub trait GivenWhenThen: Aggregate + Sized {
    /// The aggregate after `events` (its state is their fold).
    fn given(events: impl IntoIterator<Item = Self::Event>) -> Given<Self> {
        let events: Vec<Self::Event> = events.into_iter().collect();
        Given {
            state: Self::fold(&events),
        }
    }
}

impl<A: Aggregate> GivenWhenThen for A {}

/// An aggregate's state, built from the events it was given.
pub struct Given<A: Aggregate> {
    state: A::State,
}

impl<A: Aggregate> Given<A> {
    /// Decides `command` against the given state.
    pub fn when(self, command: A::Command) -> When<A> {
        When {
            outcome: A::decide(&self.state, &command),
        }
    }
}

/// What the aggregate decided.
pub struct When<A: Aggregate> {
    outcome: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> When<A>
where
    A::Event: PartialEq + Debug,
    A::Error: PartialEq + Debug,
{
    /// Asserts that the command produced exactly `expected`, in order.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        assert_eq!(self.outcome, Ok(expected), "the events decided");
    }

    /// Asserts that the command was refused with `expected`.
    #[track_caller]
    pub fn then_error(self, expected: A::Error) {
        assert_eq!(self.outcome, Err(expected), "the refusal");
    }

    /// Asserts that the command was refused with the error code `code`
    /// (the code clients see: `DomainError::code`).
    #[track_caller]
    pub fn then_refused(self, code: &str) {
        match self.outcome {
            Err(e) => assert_eq!(e.code(), code, "the refusal's code ({e:?})"),
            Ok(events) => panic!("expected a refusal {code}, got the events {events:?}"),
        }
    }

    /// What was decided, for an assertion of the test's own.
    pub fn outcome(self) -> Result<Vec<A::Event>, A::Error> {
        self.outcome
    }
}

#[cfg(test)]
mod tests {
    use super::GivenWhenThen;
    use crate::{Aggregate, DomainError, DomainEvent, ErrorKind};

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Added(u32);
    impl DomainEvent for Added {
        fn event_type(&self) -> &'static str {
            "Added"
        }
    }
    #[derive(Debug, PartialEq, thiserror::Error)]
    #[error("full")]
    struct Full;
    impl DomainError for Full {
        fn kind(&self) -> ErrorKind {
            ErrorKind::Conflict
        }
        fn code(&self) -> &'static str {
            "full"
        }
    }
    /// Adds to a sum that must stay under 10.
    struct Sum;
    impl Aggregate for Sum {
        const TYPE: &'static str = "sum";
        type State = u32;
        type Command = u32;
        type Event = Added;
        type Error = Full;
        fn decide(sum: &u32, n: &u32) -> Result<Vec<Added>, Full> {
            if sum + n < 10 {
                Ok(vec![Added(*n)])
            } else {
                Err(Full)
            }
        }
        fn evolve(sum: u32, e: &Added) -> u32 {
            sum + e.0
        }
    }

    #[test]
    fn the_state_is_the_fold_of_the_given_events() {
        Sum::given([Added(4), Added(4)]).when(1).then([Added(1)]);
        Sum::given([Added(4), Added(5)]).when(1).then_error(Full);
    }

    #[test]
    #[should_panic(expected = "the events decided")]
    fn then_fails_when_other_events_are_decided() {
        Sum::given([]).when(1).then([Added(2)]);
    }

    #[test]
    #[should_panic(expected = "expected a refusal full")]
    fn then_refused_fails_when_the_command_is_accepted() {
        Sum::given([]).when(1).then_refused("full");
    }
}
