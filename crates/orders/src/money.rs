//! Sums of money that cannot overflow. One order's total fits an `i64`
//! easily (at most 10^14 cents), but a sum over every order does not: 92,234
//! maximal orders pass `i64::MAX`. Sums are `i128` in memory, added with
//! checked arithmetic, stored in two BIGINT columns on both databases
//! (`<name>` and `<name>_e18`, value = e18 x 10^18 + name), and served as
//! exact JSON integers.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The unit of the `_e18` column: 10^18 cents.
pub const E18: i64 = 1_000_000_000_000_000_000;

/// An exact amount of cents, possibly beyond `i64`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cents(pub i128);

/// A sum left the range of `i128` (about 1.7 x 10^38 cents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a sum of money overflows i128 cents")]
pub struct MoneyOverflow;

impl Cents {
    /// No money.
    pub const ZERO: Cents = Cents(0);

    /// `self + other`, or an error instead of wrapping.
    pub fn checked_add(self, other: Cents) -> Result<Cents, MoneyOverflow> {
        self.0.checked_add(other.0).map(Cents).ok_or(MoneyOverflow)
    }

    /// `self - other`, or an error instead of wrapping.
    pub fn checked_sub(self, other: Cents) -> Result<Cents, MoneyOverflow> {
        self.0.checked_sub(other.0).map(Cents).ok_or(MoneyOverflow)
    }

    /// Split for storage: `(e18, cents)` with `|cents| < 10^18`.
    pub fn to_parts(self) -> Result<(i64, i64), MoneyOverflow> {
        let e18 = i64::try_from(self.0 / i128::from(E18)).map_err(|_| MoneyOverflow)?;
        // |remainder| < 10^18 always fits.
        let cents = (self.0 % i128::from(E18)) as i64;
        Ok((e18, cents))
    }

    /// Joins the two stored columns.
    pub fn from_parts(e18: i64, cents: i64) -> Cents {
        Cents(i128::from(e18) * i128::from(E18) + i128::from(cents))
    }
}

impl From<i64> for Cents {
    fn from(v: i64) -> Self {
        Cents(i128::from(v))
    }
}

impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Cents {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i128(self.0)
    }
}

impl<'de> Deserialize<'de> for Cents {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        i128::deserialize(d).map(Cents)
    }
}

impl utoipa::PartialSchema for Cents {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .description(Some(
                "Cents, exact; a sum may exceed 2^63 (parse with a big-integer-aware JSON reader)",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Cents {}

/// SQL that adds a delta stored as (`{col}_e18`, `{col}`) to the row of
/// `table` in an upsert, carrying whole 10^18s into `{col}_e18` so that the
/// `{col}` column never leaves (-2 x 10^18, 2 x 10^18) mid-statement.
pub fn add_parts_sql(table: &str, col: &str) -> String {
    format!(
        "{col}_e18 = {table}.{col}_e18 + excluded.{col}_e18 + ({table}.{col} + excluded.{col}) / {E18}, \
         {col} = ({table}.{col} + excluded.{col}) % {E18}"
    )
}

/// SQL that moves whole 10^18s of `{col}` into `{col}_e18` on every row of
/// `table` (for sums stored by versions before the `_e18` column).
pub fn carry_sql(table: &str, col: &str) -> String {
    format!("UPDATE {table} SET {col}_e18 = {col}_e18 + {col} / {E18}, {col} = {col} % {E18}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_at_the_edges() {
        for v in [
            0i128,
            1,
            -1,
            i128::from(i64::MAX),
            i128::from(i64::MAX) + 1,
            i128::from(i64::MIN) - 1,
            9_223_372_036_854_775_807 * 1_000,
            -(i128::from(E18) * 5 + 7),
        ] {
            let (e18, cents) = Cents(v).to_parts().unwrap();
            assert!(cents.abs() < E18);
            assert_eq!(Cents::from_parts(e18, cents), Cents(v), "{v}");
        }
        assert_eq!(Cents(i128::MAX).to_parts(), Err(MoneyOverflow));
    }

    #[test]
    fn sums_refuse_to_wrap() {
        assert_eq!(Cents(i128::MAX).checked_add(Cents(1)), Err(MoneyOverflow));
        assert_eq!(Cents(i128::MIN).checked_sub(Cents(1)), Err(MoneyOverflow));
        let past_i64 = Cents::from(i64::MAX).checked_add(Cents(1)).unwrap();
        assert_eq!(past_i64.0, 9_223_372_036_854_775_808);
    }

    #[test]
    fn json_carries_every_digit() {
        let v = Cents(123_456_789_012_345_678_901_234_567);
        let text = serde_json::to_string(&v).unwrap();
        assert_eq!(text, "123456789012345678901234567");
        assert_eq!(serde_json::from_str::<Cents>(&text).unwrap(), v);
    }
}
