//! Which stream of an event source a checkpoint belongs to. The read DB keeps
//! it as text (`log`, `orders.events/3`); everything else handles it typed.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::Database;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// One stream a projector reads in order and checkpoints on its own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    /// The write store's own log, tailed by the embedded source.
    Log,
    /// One partition of a Kafka topic.
    Partition {
        /// The topic (shared: every record of a batch names it).
        topic: Arc<str>,
        /// The partition number.
        partition: i32,
    },
}

impl SourceKey {
    /// The key of `topic`'s partition `partition`.
    pub fn partition(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        SourceKey::Partition {
            topic: topic.into(),
            partition,
        }
    }

    /// The partition this key names, if it is one of `topic`'s.
    pub fn partition_of(&self, topic: &str) -> Option<i32> {
        match self {
            SourceKey::Partition {
                topic: t,
                partition,
            } if &**t == topic => Some(*partition),
            _ => None,
        }
    }
}

/// The text form of the embedded log's key.
const LOG: &str = "log";

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKey::Log => f.write_str(LOG),
            SourceKey::Partition { topic, partition } => write!(f, "{topic}/{partition}"),
        }
    }
}

/// A stored source key that is neither `log` nor `topic/partition`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a source key (expected \"log\" or \"topic/partition\")")]
pub struct BadSourceKey(pub String);

impl FromStr for SourceKey {
    type Err = BadSourceKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == LOG {
            return Ok(SourceKey::Log);
        }
        // Kafka topic names cannot hold '/', so the last one splits.
        let bad = || BadSourceKey(s.to_owned());
        let (topic, partition) = s.rsplit_once('/').ok_or_else(bad)?;
        let partition: i32 = partition.parse().map_err(|_| bad())?;
        if topic.is_empty() || partition < 0 {
            return Err(bad());
        }
        Ok(SourceKey::partition(topic, partition))
    }
}

// Stored as its text form in every database sqlx speaks.
impl<DB: Database> sqlx::Type<DB> for SourceKey
where
    String: sqlx::Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <String as sqlx::Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <String as sqlx::Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: Database> sqlx::Decode<'r, DB> for SourceKey
where
    String: sqlx::Decode<'r, DB>,
{
    fn decode(value: <DB as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(<String as sqlx::Decode<'r, DB>>::decode(value)?.parse()?)
    }
}

impl<'q, DB: Database> sqlx::Encode<'q, DB> for SourceKey
where
    String: sqlx::Encode<'q, DB>,
{
    fn encode_by_ref(
        &self,
        buf: &mut <DB as Database>::ArgumentBuffer<'q>,
    ) -> Result<IsNull, BoxDynError> {
        <String as sqlx::Encode<'q, DB>>::encode(self.to_string(), buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_back_as_it_is_written() {
        for key in [SourceKey::Log, SourceKey::partition("orders.events", 11)] {
            assert_eq!(key.to_string().parse::<SourceKey>(), Ok(key));
        }
        assert_eq!(
            SourceKey::partition("orders.events", 3).to_string(),
            "orders.events/3"
        );
        assert_eq!(SourceKey::Log.to_string(), "log");
    }

    #[test]
    fn text_that_names_no_stream_is_refused() {
        for bad in [
            "",
            "logs",
            "orders.events",
            "orders.events/",
            "/3",
            "t/-1",
            "t/x",
        ] {
            assert_eq!(
                bad.parse::<SourceKey>(),
                Err(BadSourceKey(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_partition_belongs_only_to_its_own_topic() {
        let key = SourceKey::partition("orders.events", 4);
        assert_eq!(key.partition_of("orders.events"), Some(4));
        assert_eq!(key.partition_of("orders"), None);
        assert_eq!(SourceKey::Log.partition_of("orders.events"), None);
    }
}
