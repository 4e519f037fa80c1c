//! Personal data as events carry it: ciphertext under a data key of its
//! subject (a customer), named by the key's id. Deleting the key erases the
//! data wherever a copy of the event went (crypto-shredding); the domain
//! carries the value as it is and never sees the plain text.

/// A value encrypted under a subject's data key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// The data key's id (a UUID); the key lives in the key table.
    pub key_id: String,
    /// The nonce, base64.
    pub nonce: String,
    /// The ciphertext with its tag, base64.
    pub ciphertext: String,
}
