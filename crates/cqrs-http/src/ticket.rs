//! Stream tickets: what a browser's `EventSource` (which cannot send an
//! `Authorization` header) presents instead of the bearer token. A ticket is
//! not the token: it is signed with a key of its own, names the caller, the
//! one purpose it serves and a short life to be used in, and carries when
//! the token it was issued for expires, so that what it opens ends then.
//! The bearer token never leaves the page, not even in a cookie.

use crate::auth::{AuthError, Caller, Secret};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a ticket can be used to open a stream (not how long the stream
/// lasts: that is the token's own life).
pub const TICKET_TTL: Duration = Duration::from_secs(60);

/// The one thing a ticket is good for (its `aud`): a token, which has
/// another audience or none, is never taken for a ticket, nor a ticket for
/// a token (which is checked with other keys).
const PURPOSE: &str = "orders:stream-ticket";

/// Why no ticket could be made.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    /// The system gave no randomness for a key.
    #[error("no random key for stream tickets: {0}")]
    Random(String),
    /// The ticket could not be signed.
    #[error("cannot sign the stream ticket: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// A ticket and how long (seconds) it may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The value to present (in the stream cookie).
    pub value: String,
    /// Seconds it stays usable.
    pub max_age: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct TicketClaims {
    sub: String,
    roles: Vec<String>,
    aud: String,
    /// When the ticket can no longer open a stream.
    exp: u64,
    /// When the token it stands for expires.
    until: u64,
}

/// Signs and checks tickets with one key.
pub struct TicketKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKeys(redacted)")
    }
}

impl TicketKeys {
    /// A key of this process alone: tickets it signs open streams here only
    /// (several replicas behind one address share a key with
    /// [`TicketKeys::from_secret`]).
    pub fn random() -> Result<Self, TicketError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| TicketError::Random(e.to_string()))?;
        Ok(Self::from_bytes(&key))
    }

    /// A key shared by the processes given the same secret. The key is not
    /// the secret itself, so that even a secret also used for bearer tokens
    /// never signs something that passes for one.
    pub fn from_secret(secret: &Secret) -> Self {
        let key = [
            b"orders stream ticket key:".as_slice(),
            secret.expose().as_bytes(),
        ]
        .concat();
        Self::from_bytes(&key)
    }

    fn from_bytes(key: &[u8]) -> Self {
        Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
        }
    }

    /// A ticket for `caller`, usable for [`TICKET_TTL`] (less if the token
    /// expires sooner).
    pub fn issue(&self, caller: &Caller) -> Result<Ticket, TicketError> {
        let now = jsonwebtoken::get_current_timestamp();
        let exp = now.saturating_add(TICKET_TTL.as_secs()).min(caller.expires);
        let claims = TicketClaims {
            sub: caller.sub.clone(),
            roles: caller.roles.iter().cloned().collect(),
            aud: PURPOSE.to_owned(),
            exp,
            until: caller.expires,
        };
        let value = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(Ticket {
            value,
            max_age: exp.saturating_sub(now).max(1),
        })
    }

    /// The caller a ticket was issued to, with the expiry of its token.
    pub fn verify(&self, ticket: &str) -> Result<Caller, AuthError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_audience(&[PURPOSE]);
        v.set_required_spec_claims(&["exp", "sub", "aud"]);
        let claims = jsonwebtoken::decode::<TicketClaims>(ticket, &self.decoding, &v)
            .map_err(|_| {
                AuthError::Invalid("the stream ticket is not valid (ask for a new one)".into())
            })?
            .claims;
        Ok(Caller {
            sub: claims.sub,
            roles: claims.roles.into_iter().collect(),
            expires: claims.until,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn caller(expires_in: u64) -> Caller {
        Caller {
            sub: "ops".into(),
            roles: ["operator".to_owned()].into(),
            expires: jsonwebtoken::get_current_timestamp() + expires_in,
        }
    }

    #[test]
    fn a_ticket_names_its_caller_and_the_token_expiry_and_lives_a_minute_at_most() {
        let keys = TicketKeys::random().unwrap();
        let ops = caller(3600);
        let t = keys.issue(&ops).unwrap();
        assert!(t.max_age <= TICKET_TTL.as_secs() && t.max_age >= TICKET_TTL.as_secs() - 1);
        assert_eq!(keys.verify(&t.value), Ok(ops));
        let short = caller(5);
        assert!(
            keys.issue(&short).unwrap().max_age <= 5,
            "never past the token"
        );
    }

    #[test]
    fn another_key_or_a_token_is_not_a_ticket() {
        let (keys, other) = (TicketKeys::random().unwrap(), TicketKeys::random().unwrap());
        let t = keys.issue(&caller(3600)).unwrap();
        assert!(other.verify(&t.value).is_err(), "each process its own key");
        // A bearer token signed with the same bytes but without the ticket's
        // purpose is refused.
        let secret: Secret = "shared".parse().unwrap();
        let keys = TicketKeys::from_secret(&secret);
        let token = crate::auth::mint_hs256(
            &secret,
            &crate::auth::Mint {
                sub: "ops",
                roles: &["operator".to_owned()],
                ttl: Duration::from_secs(60),
                issuer: None,
                audience: None,
            },
        )
        .unwrap();
        assert!(keys.verify(&token).is_err());
    }
}
