//! Consistency tokens: what a command answer carries so that a later query
//! can wait until the read model has caught up with it.

use std::fmt;
use std::str::FromStr;

/// The write a client wants to read: aggregate id, version and log position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyToken {
    /// Log position of the last event the command appended.
    pub position: i64,
    /// Aggregate version after the command.
    pub version: i64,
    /// The aggregate the command touched.
    pub aggregate_id: String,
}

/// Why a token string could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed consistency token {0:?}: expected v1.<position>.<version>.<aggregate id>")]
pub struct TokenError(pub String);

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v1.{}.{}.{}",
            self.position, self.version, self.aggregate_id
        )
    }
}

impl FromStr for ConsistencyToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TokenError(s.chars().take(200).collect());
        let mut parts = s.splitn(4, '.');
        if parts.next() != Some("v1") {
            return Err(bad());
        }
        let position = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let version: i64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let aggregate_id = parts.next().filter(|a| !a.is_empty()).ok_or_else(bad)?;
        if version < 1 || aggregate_id.len() > 200 {
            return Err(bad());
        }
        Ok(Self {
            position,
            version,
            aggregate_id: aggregate_id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_survives_a_round_trip_through_text() {
        let t = ConsistencyToken {
            position: 42,
            version: 3,
            aggregate_id: "0193.abc".into(),
        };
        assert_eq!(t.to_string().parse::<ConsistencyToken>(), Ok(t));
    }

    #[test]
    fn garbage_is_not_a_token() {
        for s in ["", "v1", "v2.1.1.a", "v1.x.1.a", "v1.1.0.a", "v1.1.1."] {
            assert!(s.parse::<ConsistencyToken>().is_err(), "{s}");
        }
    }
}
