//! The event envelope: what the write side stores and the read side consumes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Context recorded with every event of one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// The command that produced the event; also the trace id.
    pub command_id: String,
    /// When the command handler decided (write-side clock).
    pub occurred_at: DateTime<Utc>,
    /// Who sent the command (the token's `sub`), when the server checks callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id of this event.
    pub event_id: String,
    /// Stable event name.
    pub event_type: String,
    /// Payload schema version.
    pub schema_version: i32,
    /// The event as JSON.
    pub payload: serde_json::Value,
}

/// A stored event with its coordinates in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Global position in the write-side log (commit order on SQLite,
    /// allocation order on PostgreSQL).
    pub position: i64,
    /// Unique id of this event.
    pub event_id: String,
    /// Aggregate type ("order").
    pub aggregate_type: String,
    /// Aggregate id; also the Kafka key.
    pub aggregate_id: String,
    /// 1-based, gap-free version within the aggregate.
    pub version: i64,
    /// Stable event name.
    pub event_type: String,
    /// Payload schema version.
    pub schema_version: i32,
    /// The event as JSON.
    pub payload: serde_json::Value,
    /// Command id and decision time.
    pub metadata: EventMetadata,
    /// When the write transaction stored it.
    pub recorded_at: DateTime<Utc>,
}

impl EventEnvelope {
    /// Decodes the payload into a domain event type, upcasting a payload
    /// stored at an older schema version one step at a time first.
    pub fn decode<E: serde::de::DeserializeOwned + crate::DomainEvent>(
        &self,
    ) -> Result<E, DecodeError> {
        let current = E::current_version(&self.event_type);
        if self.schema_version > current {
            return Err(DecodeError::Newer {
                event_type: self.event_type.clone(),
                version: self.schema_version,
                known: current,
            });
        }
        let mut payload = self.payload.clone();
        for version in self.schema_version..current {
            payload = E::upcast(&self.event_type, version, payload).map_err(|reason| {
                DecodeError::Upcast {
                    event_type: self.event_type.clone(),
                    version,
                    reason,
                }
            })?;
        }
        // The stored JSON is externally tagged by event type so that the
        // payload alone is enough to decode it.
        Ok(serde_json::from_value(
            serde_json::json!({ &self.event_type: payload }),
        )?)
    }
}

/// Why a stored event does not decode into the domain's event type.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The (upcast) payload does not fit the type.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A step from an older version failed.
    #[error("{event_type} v{version} does not upcast: {reason}")]
    Upcast {
        /// Its type.
        event_type: String,
        /// The version the failing step started from.
        version: i32,
        /// The upcaster's complaint.
        reason: String,
    },
    /// Written by a newer build than this one.
    #[error("{event_type} v{version} is newer than this build knows (v{known})")]
    Newer {
        /// Its type.
        event_type: String,
        /// The stored version.
        version: i32,
        /// The newest version this build knows.
        known: i32,
    },
}

/// Why an event could not be turned into a stored payload.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// serde refused the value.
    #[error("event does not serialize: {0}")]
    Json(#[from] serde_json::Error),
    /// Event enums must be externally tagged: `{"OrderCreated": {...}}`.
    #[error("event enum must serialize as {{\"Type\": payload}}")]
    NotTagged,
}

impl NewEvent {
    /// Encodes a domain event; the payload is the variant's content.
    pub fn encode<E: Serialize + crate::DomainEvent>(
        event_id: String,
        event: &E,
    ) -> Result<Self, EncodeError> {
        let value = serde_json::to_value(event)?;
        let payload = match value {
            serde_json::Value::Object(map) if map.len() == 1 => map
                .into_iter()
                .next()
                .map(|(_, v)| v)
                .ok_or(EncodeError::NotTagged)?,
            _ => return Err(EncodeError::NotTagged),
        };
        Ok(Self {
            event_id,
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload,
        })
    }
}
