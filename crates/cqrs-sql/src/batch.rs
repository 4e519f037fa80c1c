//! Multi-row statements that take all their rows as one JSON parameter. The
//! SQL text is the same whatever the batch size, so each database prepares
//! and plans it once per connection, and a whole batch is one round trip.
//! (Statements with thousands of bind parameters, one per value, spent
//! most of a projector batch in parsing and planning: see BENCHMARKS.md.)

use crate::dialect::{fill, Dialect};
use serde::ser::{Serialize, SerializeSeq, Serializer};
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

/// A value in a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// A TEXT value.
    Text(String),
    /// Nullable TEXT.
    OptText(Option<String>),
    /// A BIGINT value.
    Int(i64),
}

impl Serialize for Val {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Val::Text(t) => s.serialize_str(t),
            Val::OptText(Some(t)) => s.serialize_str(t),
            Val::OptText(None) => s.serialize_none(),
            Val::Int(i) => s.serialize_i64(*i),
        }
    }
}

/// The SQL type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A BIGINT column.
    Int,
    /// TEXT (nullable or not).
    Text,
}

/// Which database a connection talks to.
pub fn dialect_of(conn: &AnyConnection) -> &'static dyn Dialect {
    crate::dialect::of_connection(conn)
}

/// `SELECT r.value->>0 AS <col0>, ... FROM <the rows of parameter $param>`:
/// a row source over a JSON array of arrays ([`rows_json`]), its columns
/// named and typed after `cols`.
pub fn rows(dialect: &dyn Dialect, param: usize, cols: &[(&str, Kind)]) -> String {
    let list = cols
        .iter()
        .enumerate()
        .map(|(i, (name, kind))| match kind {
            Kind::Int => format!("CAST(r.value->>{i} AS BIGINT) AS {name}"),
            Kind::Text => format!("r.value->>{i} AS {name}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let from = fill(dialect.sql().rows_from, &[("param", &param.to_string())]);
    format!("SELECT {list} FROM {from}")
}

/// `SELECT r.value FROM <the strings of parameter $param>` ([`keys_json`]).
pub fn keys(dialect: &dyn Dialect, param: usize) -> String {
    fill(dialect.sql().keys_from, &[("param", &param.to_string())])
}

/// `column` is one of the strings of parameter `$param` ([`keys_json`]).
pub fn key_in(dialect: &dyn Dialect, column: &str, param: usize) -> String {
    fill(
        dialect.sql().key_in,
        &[("column", column), ("keys", &keys(dialect, param))],
    )
}

/// Rows as the JSON parameter of [`rows`].
pub fn rows_json(rows: &[Vec<Val>]) -> Result<String, sqlx::Error> {
    serde_json::to_string(&Rows(rows)).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// Keys as the JSON parameter of [`keys`].
pub fn keys_json<S: AsRef<str>>(keys: &[S]) -> Result<String, sqlx::Error> {
    let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
    serde_json::to_string(&keys).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

struct Rows<'a>(&'a [Vec<Val>]);

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for row in self.0 {
            seq.serialize_element(row)?;
        }
        seq.end()
    }
}

/// Rows of `table` whose `key` is among `keys`: one statement.
pub async fn load_rows(
    tx: &mut AnyConnection,
    columns: &str,
    table: &str,
    key: &str,
    keys: &[&str],
) -> Result<Vec<AnyRow>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let filter = key_in(dialect_of(tx), key, 1);
    sqlx::query(&format!("SELECT {columns} FROM {table} WHERE {filter}"))
        .bind(keys_json(keys)?)
        .fetch_all(&mut *tx)
        .await
}

/// Multi-row upsert in one statement:
/// `INSERT ... SELECT <rows> ON CONFLICT (key) DO UPDATE SET <update>`.
pub async fn upsert(
    tx: &mut AnyConnection,
    table: &str,
    columns: &[(&str, Kind)],
    key: &str,
    update: &str,
    rows: &[Vec<Val>],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
    let names = names.join(", ");
    let source = self::rows(dialect_of(tx), 1, columns);
    let sql = format!(
        "INSERT INTO {table} ({names}) SELECT {names} FROM ({source}) AS v WHERE true \
         ON CONFLICT ({key}) DO UPDATE SET {update}"
    );
    sqlx::query(&sql)
        .bind(rows_json(rows)?)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_their_columns_by_position() {
        assert_eq!(
            rows(&crate::Sqlite, 2, &[("id", Kind::Text), ("n", Kind::Int)]),
            "SELECT r.value->>0 AS id, CAST(r.value->>1 AS BIGINT) AS n FROM json_each($2) AS r"
        );
        assert!(rows(&crate::Postgres, 1, &[("id", Kind::Text)])
            .ends_with("FROM jsonb_array_elements(CAST($1 AS jsonb)) AS r(value)"));
        assert_eq!(
            rows_json(&[vec![
                Val::Text("a\"b".into()),
                Val::Int(i64::MIN),
                Val::OptText(None)
            ]])
            .unwrap(),
            r#"[["a\"b",-9223372036854775808,null]]"#
        );
        assert_eq!(keys_json(&["x", "y"]).unwrap(), r#"["x","y"]"#);
    }
}
