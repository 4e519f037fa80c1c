//! The stages a command goes through, in the teaching page's order.

use serde::{Deserialize, Serialize};

/// One stage of a command's journey from client to query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The API received the command.
    Received,
    /// The write transaction committed events and outbox rows.
    Committed,
    /// The event reached the log (Kafka or the embedded log).
    Published,
    /// A projector took the event from the log.
    Consumed,
    /// The read DB transaction with the event committed.
    Applied,
    /// A query returned data that includes the event.
    Queried,
}

impl Stage {
    /// All stages in order.
    pub const ALL: [Stage; 6] = [
        Stage::Received,
        Stage::Committed,
        Stage::Published,
        Stage::Consumed,
        Stage::Applied,
        Stage::Queried,
    ];
}
