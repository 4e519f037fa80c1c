//! Rows written at once into an empty table: what a rebuild's fold hands
//! to the database's bulk load (`Dialect::bulk_load`), and their encoding
//! in PostgreSQL's COPY text format.

use crate::batch::{Kind, Val};

/// Lowers the calling thread's CPU priority to the least (on Linux, nice
/// 19 for this thread alone): a rebuild's threads take what the threads
/// that serve leave. Best effort: where it cannot, the thread runs as is.
pub fn lower_priority() {
    let _ = thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min);
}

/// The rows of one table, in the order of its columns.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkRows {
    /// The table, as the folding projection names it.
    pub table: String,
    /// Its columns and their types.
    pub columns: Vec<(&'static str, Kind)>,
    /// The rows.
    pub rows: Vec<Vec<Val>>,
}

/// A value in PostgreSQL's COPY text format: backslash, tab, line breaks
/// escaped; NULL as `\N`.
pub fn copy_text(out: &mut Vec<u8>, v: &Val) {
    let text = match v {
        Val::Int(i) => {
            out.extend_from_slice(i.to_string().as_bytes());
            return;
        }
        Val::OptText(None) => {
            out.extend_from_slice(b"\\N");
            return;
        }
        Val::Text(t) | Val::OptText(Some(t)) => t,
    };
    for b in text.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// Rows as COPY text lines.
pub fn copy_lines(rows: &[Vec<Val>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * 64);
    for row in rows {
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            copy_text(&mut out, v);
        }
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_what_the_format_would_read_as_structure() {
        let rows = vec![vec![
            Val::Text("a\tb\\c\nd\re".into()),
            Val::OptText(None),
            Val::Int(-7),
            Val::OptText(Some("\\N".into())),
        ]];
        assert_eq!(
            String::from_utf8(copy_lines(&rows)).unwrap(),
            "a\\tb\\\\c\\nd\\re\t\\N\t-7\t\\\\N\n"
        );
    }
}
