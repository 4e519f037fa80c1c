//! Shipping details: the personal data of an order. The client sends them
//! in plain text; the command handler seals them under the customer's data
//! key before the aggregate sees them, so events, topics and read models
//! carry only ciphertext and the key's id. Deleting the key erases them.

use crate::aggregate::{check_text, invalid, OrderError};
use cqrs_core::Sealed;
use serde::{Deserialize, Serialize};

/// Longest name.
pub const MAX_NAME: usize = 200;
/// Longest postal address.
pub const MAX_ADDRESS: usize = 1000;
/// Longest email address (RFC 5321's path limit).
pub const MAX_EMAIL: usize = 254;

/// Where an order goes and whom to tell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShippingDetails {
    /// Who receives it: 1..=200 characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// The postal address: 1..=1000 characters (line breaks allowed).
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\u0000-\u0009\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub address: String,
    /// An email address: `local@domain.tld`, at most 254 characters.
    #[schema(
        min_length = 3,
        max_length = 254,
        pattern = r"^[^@\s\u0000-\u001F\u007F-\u009F]{1,64}@[^@\s.\u0000-\u001F\u007F-\u009F]+(\.[^@\s.\u0000-\u001F\u007F-\u009F]+)+$"
    )]
    pub email: String,
}

impl ShippingDetails {
    /// Checks lengths and shapes. A refusal names the field and the rule,
    /// never the value (it is personal data).
    pub fn validate(&self) -> Result<(), OrderError> {
        check_text("shipping.name", &self.name, MAX_NAME)?;
        let address_len = self.address.chars().count();
        if address_len == 0 || address_len > MAX_ADDRESS {
            return Err(invalid(
                "shipping.address",
                format!("must be 1..={MAX_ADDRESS} characters, got {address_len}"),
            ));
        }
        if self
            .address
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\r')
        {
            return Err(invalid(
                "shipping.address",
                "must not contain control characters other than line breaks",
            ));
        }
        if !is_email(&self.email) {
            return Err(invalid(
                "shipping.email",
                format!(
                    "must be an email address (local@domain.tld, at most {MAX_EMAIL} characters)"
                ),
            ));
        }
        Ok(())
    }

    /// The details as the bytes that are sealed.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The details from opened bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<ShippingDetails> {
        serde_json::from_slice(bytes).ok()
    }
}

/// `local@domain.tld`: one `@`, a local part of 1..=64, a domain of dotted
/// non-empty labels, no spaces or control characters; at most 254 in all.
pub fn is_email(s: &str) -> bool {
    // U+FEFF: JSON Schema's `\s` (the documented pattern) counts it as a space.
    if s.chars().count() > MAX_EMAIL
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\u{feff}')
    {
        return false;
    }
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let labels: Vec<&str> = domain.split('.').collect();
    !local.is_empty()
        && local.chars().count() <= 64
        && !domain.contains('@')
        && labels.len() >= 2
        && labels.iter().all(|l| !l.is_empty())
}

/// What an order's read model keeps of its shipping details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShippingRecord {
    /// Sealed under the customer's data key.
    Sealed(Sealed),
    /// Erased: the key was deleted and the ciphertext dropped.
    Erased,
}

/// What an order keeps after `ShippingErased`: erased where it had
/// details, nothing where it had none.
pub fn erased(before: Option<ShippingRecord>) -> Option<ShippingRecord> {
    before.map(|_| ShippingRecord::Erased)
}

/// The shipping details as the API shows them to those who may see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ShippingView {
    /// The details.
    Details(ShippingDetails),
    /// Erased at the customer's request (`{"erased": true}`).
    Erased {
        /// Always true.
        erased: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_addresses_have_one_at_and_a_dotted_domain() {
        for ok in [
            "a@b.co",
            "ada.lovelace+orders@example.org",
            "x@sub.example.org",
        ] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "", "a", "a@b", "@b.co", "a@@b.co", "a@b..co", "a b@c.co", "a@b.co.", "a@.b.co",
        ] {
            assert!(!is_email(bad), "{bad}");
        }
        assert!(!is_email(&format!("{}@b.co", "x".repeat(65))));
    }

    #[test]
    fn a_refusal_names_the_rule_and_never_the_value() {
        let d = ShippingDetails {
            name: "Ada".into(),
            address: "1 Analytical Way".into(),
            email: "SECRET-not-an-email".into(),
        };
        let e = d.validate().unwrap_err().to_string();
        assert!(e.contains("shipping.email") && !e.contains("SECRET"), "{e}");
        let d = ShippingDetails {
            name: "SECRET\u{7}".into(),
            ..d
        };
        let e = d.validate().unwrap_err().to_string();
        assert!(e.contains("shipping.name") && !e.contains("SECRET"), "{e}");
    }
}
