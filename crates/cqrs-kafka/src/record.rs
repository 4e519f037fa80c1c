//! The record format on the topic: key = aggregate id, value = the event's
//! JSON payload, headers = the envelope's other fields.

use chrono::{DateTime, Utc};
use cqrs_core::{EventEnvelope, EventMetadata};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use serde_json::{json, Map, Value};

/// Header names, as a client that is not ours sees them.
pub mod header {
    /// Unique event id.
    pub const EVENT_ID: &str = "event_id";
    /// Event type ("OrderCreated").
    pub const EVENT_TYPE: &str = "event_type";
    /// Payload schema version.
    pub const SCHEMA_VERSION: &str = "schema_version";
    /// Aggregate type ("order").
    pub const AGGREGATE_TYPE: &str = "aggregate_type";
    /// Aggregate id (also the key).
    pub const AGGREGATE_ID: &str = "aggregate_id";
    /// Aggregate version.
    pub const AGGREGATE_VERSION: &str = "aggregate_version";
    /// Command id.
    pub const COMMAND_ID: &str = "command_id";
    /// Trace id (the command id).
    pub const TRACE_ID: &str = "trace_id";
    /// When the command was decided.
    pub const OCCURRED_AT: &str = "occurred_at";
    /// When the write transaction stored it.
    pub const RECORDED_AT: &str = "recorded_at";
    /// Position in the write-side log.
    pub const POSITION: &str = "position";
    /// Why a record was dead-lettered.
    pub const DLQ_REASON: &str = "dlq_reason";
    /// Where a dead-lettered record came from.
    pub const DLQ_SOURCE: &str = "dlq_source";
    /// Who sent the command (absent when the server checks no caller).
    pub const CALLER: &str = "caller";
    /// The W3C trace context of the command (and of the relay's span):
    /// consumers continue the trace.
    pub const TRACEPARENT: &str = "traceparent";
    /// The id of the store (write DB) the event was recorded in: a topic
    /// belongs to one store.
    pub const STORE_ID: &str = "store_id";
}

/// Headers of an event recorded in the store `store_id`, in the trace
/// context `traceparent` (the event's own, or the span that sends it).
pub fn headers_of(e: &EventEnvelope, store_id: &str, traceparent: Option<&str>) -> OwnedHeaders {
    let fields: [(&str, String); 12] = [
        (header::STORE_ID, store_id.to_owned()),
        (header::EVENT_ID, e.event_id.clone()),
        (header::EVENT_TYPE, e.event_type.clone()),
        (header::SCHEMA_VERSION, e.schema_version.to_string()),
        (header::AGGREGATE_TYPE, e.aggregate_type.clone()),
        (header::AGGREGATE_ID, e.aggregate_id.clone()),
        (header::AGGREGATE_VERSION, e.version.to_string()),
        (header::COMMAND_ID, e.metadata.command_id.clone()),
        (header::TRACE_ID, e.metadata.command_id.clone()),
        (
            header::OCCURRED_AT,
            cqrs_sql::db::timestamp(e.metadata.occurred_at),
        ),
        (header::RECORDED_AT, cqrs_sql::db::timestamp(e.recorded_at)),
        (header::POSITION, e.position.to_string()),
    ];
    let headers = fields.iter().fold(
        OwnedHeaders::new_with_capacity(fields.len() + 2),
        |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        },
    );
    let headers = match &e.metadata.caller {
        Some(caller) => headers.insert(Header {
            key: header::CALLER,
            value: Some(caller.as_bytes()),
        }),
        None => headers,
    };
    match traceparent.or(e.metadata.traceparent.as_deref()) {
        Some(tp) => headers.insert(Header {
            key: header::TRACEPARENT,
            value: Some(tp.as_bytes()),
        }),
        None => headers,
    }
}

/// The headers of a message as text.
pub fn header_map(m: &BorrowedMessage<'_>) -> Map<String, Value> {
    let mut out = Map::new();
    if let Some(h) = m.headers() {
        for hd in h.iter() {
            let v = hd.value.map(|v| String::from_utf8_lossy(v).into_owned());
            out.insert(
                hd.key.to_owned(),
                v.map(Value::String).unwrap_or(Value::Null),
            );
        }
    }
    out
}

/// The record as received, for a dead letter.
pub fn raw_of(m: &BorrowedMessage<'_>) -> Value {
    json!({
        "topic": m.topic(),
        "partition": m.partition(),
        "offset": m.offset(),
        "key": m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        "headers": header_map(m),
        "value": m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
    })
}

/// The store a record says it came from (None: a record of a version that
/// did not stamp it, or not ours at all).
pub fn store_of(m: &BorrowedMessage<'_>) -> Option<String> {
    RecordHeaders::of(m)
        .get(header::STORE_ID)
        .ok()
        .flatten()
        .map(str::to_owned)
}

/// Why a record of another store is refused, naming both stores.
pub fn foreign_store(topic: &str, theirs: &str, ours: &str) -> String {
    format!(
        "topic {topic} holds records of store {theirs}, and this is store {ours}: \
         two write databases publish to one topic. Give each its own --kafka-topic \
         (or delete the topic if its records are from a store that is gone)"
    )
}

/// Why a record on the topic is not one of our events.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The record has no value.
    #[error("record has no value")]
    NoValue,
    /// The value is not JSON.
    #[error("value is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    /// A header the envelope needs is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header does not read as what it holds.
    #[error("header {header}: {reason}")]
    BadHeader {
        /// Which header.
        header: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is not the aggregate id (the partitioning would be wrong).
    #[error("key {key:?} is not the aggregate id {aggregate_id}")]
    KeyMismatch {
        /// The record's key.
        key: Option<String>,
        /// The aggregate id header.
        aggregate_id: String,
    },
}

/// A record's headers, read where they are (no copies).
struct RecordHeaders<'a>(Vec<(&'a str, Option<&'a [u8]>)>);

impl<'a> RecordHeaders<'a> {
    fn of(m: &'a BorrowedMessage<'_>) -> Self {
        Self(
            m.headers()
                .map(|h| h.iter().map(|hd| (hd.key, hd.value)).collect())
                .unwrap_or_default(),
        )
    }

    /// The last value of header `k` (as the map it replaces kept it).
    fn get(&self, k: &'static str) -> Result<Option<&'a str>, RecordError> {
        match self.0.iter().rev().find(|(key, _)| *key == k) {
            None | Some((_, None)) => Ok(None),
            Some((_, Some(v))) => std::str::from_utf8(v).map(Some).map_err(|e| bad(k, e)),
        }
    }

    fn text(&self, k: &'static str) -> Result<&'a str, RecordError> {
        self.get(k)?.ok_or(RecordError::MissingHeader(k))
    }

    fn time(&self, k: &'static str) -> Result<DateTime<Utc>, RecordError> {
        cqrs_sql::db::parse_timestamp(self.text(k)?).map_err(|e| bad(k, e))
    }

    fn int(&self, k: &'static str) -> Result<i64, RecordError> {
        self.text(k)?.parse().map_err(|e| bad(k, e))
    }
}

fn bad(header: &'static str, reason: impl ToString) -> RecordError {
    RecordError::BadHeader {
        header,
        reason: reason.to_string(),
    }
}

/// Rebuilds the envelope from a record, or says why it is not one.
pub fn decode(m: &BorrowedMessage<'_>) -> Result<EventEnvelope, RecordError> {
    let h = RecordHeaders::of(m);
    let payload = m.payload().ok_or(RecordError::NoValue)?;
    let payload: Value = serde_json::from_slice(payload)?;
    let aggregate_id = h.text(header::AGGREGATE_ID)?;
    if m.key() != Some(aggregate_id.as_bytes()) {
        return Err(RecordError::KeyMismatch {
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            aggregate_id: aggregate_id.to_owned(),
        });
    }
    Ok(EventEnvelope {
        position: h.int(header::POSITION)?,
        event_id: h.text(header::EVENT_ID)?.to_owned(),
        aggregate_type: h.text(header::AGGREGATE_TYPE)?.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        version: h.int(header::AGGREGATE_VERSION)?,
        event_type: h.text(header::EVENT_TYPE)?.to_owned(),
        schema_version: h
            .int(header::SCHEMA_VERSION)?
            .try_into()
            .map_err(|_| bad(header::SCHEMA_VERSION, "out of range"))?,
        payload,
        metadata: EventMetadata {
            command_id: h.text(header::COMMAND_ID)?.to_owned(),
            occurred_at: h.time(header::OCCURRED_AT)?,
            caller: h.get(header::CALLER)?.map(str::to_owned),
            // Not ours to refuse a record for: a malformed one is dropped.
            traceparent: h
                .get(header::TRACEPARENT)
                .ok()
                .flatten()
                .and_then(cqrs_core::trace_context::valid)
                .map(str::to_owned),
        },
        recorded_at: h.time(header::RECORDED_AT)?,
    })
}
