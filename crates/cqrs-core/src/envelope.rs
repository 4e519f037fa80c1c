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
    /// The W3C trace context the command ran in (`traceparent`): every
    /// stage that handles the event continues that trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
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
        if self.schema_version == current {
            // The common case reads the stored payload in place.
            return Ok(E::deserialize(tagged::Tagged {
                tag: &self.event_type,
                payload: &self.payload,
            })?);
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
        Ok(E::deserialize(tagged::Tagged {
            tag: &self.event_type,
            payload: &payload,
        })?)
    }
}

/// The stored JSON is externally tagged by event type, with the tag kept
/// beside the payload: a deserializer of `{tag: payload}` that reads the
/// payload where it is, without building that object.
mod tagged {
    use serde::de::{self, DeserializeSeed, Visitor};
    use serde::Deserializer;
    use serde_json::{Error, Value};

    pub(super) struct Tagged<'a> {
        pub(super) tag: &'a str,
        pub(super) payload: &'a Value,
    }

    impl<'de> Deserializer<'de> for Tagged<'de> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_enum(self)
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            _variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_enum(self)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map struct identifier ignored_any
        }
    }

    impl<'de> de::EnumAccess<'de> for Tagged<'de> {
        type Error = Error;
        type Variant = Payload<'de>;

        fn variant_seed<S: DeserializeSeed<'de>>(
            self,
            seed: S,
        ) -> Result<(S::Value, Self::Variant), Error> {
            let tag = de::value::BorrowedStrDeserializer::<Error>::new(self.tag);
            Ok((seed.deserialize(tag)?, Payload(self.payload)))
        }
    }

    pub(super) struct Payload<'a>(&'a Value);

    impl<'de> de::VariantAccess<'de> for Payload<'de> {
        type Error = Error;

        fn unit_variant(self) -> Result<(), Error> {
            match self.0 {
                Value::Null => Ok(()),
                other => serde::Deserialize::deserialize(other),
            }
        }

        fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
            seed.deserialize(self.0)
        }

        fn tuple_variant<V: Visitor<'de>>(
            self,
            _len: usize,
            visitor: V,
        ) -> Result<V::Value, Error> {
            self.0.deserialize_seq(visitor)
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            use de::Unexpected;
            // As serde_json: a struct variant is an object, never an array.
            let unexpected = match self.0 {
                Value::Object(_) => return self.0.deserialize_struct("", fields, visitor),
                Value::Null => Unexpected::Unit,
                Value::Bool(b) => Unexpected::Bool(*b),
                Value::Number(_) => Unexpected::Other("number"),
                Value::String(s) => Unexpected::Str(s),
                Value::Array(_) => Unexpected::Seq,
            };
            Err(de::Error::invalid_type(unexpected, &"struct variant"))
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[derive(Debug, PartialEq, Deserialize)]
    enum Shapes {
        Unit,
        Newtype(i64),
        Tuple(i64, String),
        Empty {},
        Fields { a: i64, b: Option<String> },
    }

    impl crate::DomainEvent for Shapes {
        fn event_type(&self) -> &'static str {
            "Shapes"
        }
    }

    fn envelope(event_type: &str, payload: Value) -> EventEnvelope {
        EventEnvelope {
            position: 1,
            event_id: "e".into(),
            aggregate_type: "t".into(),
            aggregate_id: "a".into(),
            version: 1,
            event_type: event_type.into(),
            schema_version: 1,
            payload,
            metadata: EventMetadata {
                command_id: "c".into(),
                occurred_at: Utc::now(),
                caller: None,
                traceparent: None,
            },
            recorded_at: Utc::now(),
        }
    }

    /// Reading the payload in place answers what decoding the built
    /// object `{type: payload}` answers, for every variant shape and for
    /// payloads that do not fit.
    #[test]
    fn decoding_in_place_agrees_with_decoding_the_tagged_object() {
        let cases = [
            ("Unit", json!(null)),
            ("Unit", json!({})),
            ("Newtype", json!(7)),
            ("Newtype", json!("7")),
            ("Tuple", json!([1, "x"])),
            ("Tuple", json!([1])),
            ("Empty", json!({})),
            ("Empty", json!(null)),
            ("Fields", json!({"a": 1, "b": "x"})),
            ("Fields", json!({"a": 1})),
            ("Fields", json!({"a": "no"})),
            ("Fields", json!([1, "x"])),
            ("Nope", json!({})),
        ];
        for (tag, payload) in cases {
            let built: Result<Shapes, _> = serde_json::from_value(json!({ tag: payload.clone() }));
            let in_place = envelope(tag, payload.clone()).decode::<Shapes>();
            match (&built, &in_place) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{tag} {payload}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{tag} {payload}: built {built:?}, in place {in_place:?}"),
            }
        }
    }
}
