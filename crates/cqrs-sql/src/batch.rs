//! Building multi-row statements with bind parameters, for batch projections.

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::Any;

/// A value to bind.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// TEXT.
    Text(String),
    /// Nullable TEXT.
    OptText(Option<String>),
    /// BIGINT.
    Int(i64),
}

/// `($first, ...), (...)`: `rows` tuples of `cols` parameters, numbered from
/// `first`. BIGINT columns are cast so that PostgreSQL types VALUES lists right.
pub fn tuples(rows: usize, kinds: &[Kind], first: usize) -> String {
    let mut out = String::with_capacity(rows * kinds.len() * 8);
    let mut n = first;
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for (c, kind) in kinds.iter().enumerate() {
            if c > 0 {
                out.push_str(", ");
            }
            match kind {
                Kind::Int => out.push_str(&format!("CAST(${n} AS BIGINT)")),
                Kind::Text => out.push_str(&format!("CAST(${n} AS TEXT)")),
            }
            n += 1;
        }
        out.push(')');
    }
    out
}

/// The SQL type of a column in a VALUES list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// BIGINT.
    Int,
    /// TEXT (nullable or not).
    Text,
}

/// `$first, $first+1, ...` (n parameters).
pub fn list(n: usize, first: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds values in order.
pub fn bind_all<'q>(
    mut q: Query<'q, Any, AnyArguments<'q>>,
    vals: &[Val],
) -> Query<'q, Any, AnyArguments<'q>> {
    for v in vals {
        q = match v {
            Val::Text(s) => q.bind(s.clone()),
            Val::OptText(s) => q.bind(s.clone()),
            Val::Int(i) => q.bind(*i),
        };
    }
    q
}

/// Bind parameters per statement: far below both databases' limits, because
/// planning cost grows faster than linearly with the parameter count.
const PARAMS_PER_STATEMENT: usize = 2_000;

/// Rows per statement for `cols` parameters a row.
pub fn rows_per_statement(cols: usize) -> usize {
    (PARAMS_PER_STATEMENT / cols.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_number_parameters_in_order() {
        assert_eq!(
            tuples(2, &[Kind::Text, Kind::Int], 3),
            "(CAST($3 AS TEXT), CAST($4 AS BIGINT)), (CAST($5 AS TEXT), CAST($6 AS BIGINT))"
        );
        assert_eq!(list(3, 2), "$2, $3, $4");
    }
}
