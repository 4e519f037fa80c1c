//! Everything that differs between PostgreSQL and SQLite, in one place.
//!
//! A [`Dialect`] is a database's answer to each difference: the statements
//! whose text differs (kept in `sql/postgres.sql` and `sql/sqlite.sql`
//! under the same names, see [`DialectSql`]), the fragments that other
//! statements are built from (a batch's rows as one JSON parameter, a key
//! list, a time column), and the behaviours (how many writers, whether
//! another process can be woken at commit, how a leader is elected).
//! Statements that are the same on both live in one `.sql` file per owner
//! of tables (`sql/event_store.sql`, `sql/projector.sql`, ...). Both kinds
//! are read at compile time with [`section`]: a missing name fails the
//! build. A third database is a third module here, not a branch elsewhere.

pub(crate) mod postgres;
mod sqlite;

pub use postgres::Postgres;
pub use sqlite::Sqlite;

use futures::future::BoxFuture;

/// The statements and fragments whose text differs between the databases,
/// one field per name in `sql/<dialect>.sql`.
#[derive(Debug)]
pub struct DialectSql {
    /// The `events.position` column's type and allocation.
    pub position_column: &'static str,
    /// The `events.payload` column's type.
    pub payload_type: &'static str,
    /// The payload column read back as JSON text.
    pub payload_out: &'static str,
    /// The payload of a batch row (`v.payload`) as stored.
    pub payload_in: &'static str,
    /// RFC 3339 text (`{expr}`) as a value of a time column.
    pub instant_in: &'static str,
    /// A time column (`{column}`) read back as RFC 3339 UTC text with
    /// microseconds, whatever the session's time zone.
    pub instant_out: &'static str,
    /// The rows of JSON parameter `${param}` as a row source `r`, each row
    /// a JSON array read with `r.value->>i`.
    pub rows_from: &'static str,
    /// The strings of JSON parameter `${param}` as a one-column query.
    pub keys_from: &'static str,
    /// `{column}` is one of the keys of the query `{keys}`.
    pub key_in: &'static str,
    /// Begins every append transaction, with what it must run first, in
    /// one round trip (None: a plain BEGIN).
    pub append_begin: Option<&'static str>,
    /// Run after appends commit, to wake the relay (None: it is woken in
    /// process).
    pub append_postamble: Option<&'static str>,
    /// Waits until no append that took a position is in flight, and
    /// answers the position up to which the log is final (None: appends
    /// are serial, every position read is final).
    pub log_horizon: Option<&'static str>,
    /// One chunk of made-up history (`{order}`: the order of positions).
    pub insert_history: &'static str,
    /// `{order}` of [`DialectSql::insert_history`]: versions first.
    pub history_interleaved: &'static str,
    /// `{order}` of [`DialectSql::insert_history`]: aggregates first.
    pub history_by_aggregate: &'static str,
    /// Run after a bulk load of `events` (None: nothing to do).
    pub after_bulk_load: Option<&'static str>,
    /// Then run, so the load's dirty pages are written now rather than in
    /// the middle of whatever comes next (None: nothing to do).
    pub flush_after_bulk_load: Option<&'static str>,
    /// Begins a transaction that reads, then writes, the migration ledger.
    pub begin_write: &'static str,
    /// Begins a derived-data transaction, with its settings, in one round
    /// trip (None: a plain BEGIN).
    pub derived_begin: Option<&'static str>,
    /// Begins a snapshot transaction (None: any read transaction is one).
    pub snapshot_begin: Option<&'static str>,
    /// Takes the session lock of migrating processes (None: the write
    /// transaction is the lock).
    pub migrate_lock: Option<&'static str>,
    /// Releases it.
    pub migrate_unlock: Option<&'static str>,
    /// How many columns named `$2` table `$1` has.
    pub has_column: &'static str,
    /// How many tables named `$1` there are.
    pub has_table: &'static str,
    /// The applied versions of projector `$1` for the keys of `$2`.
    pub versions: &'static str,
    /// The same, locking the rows until the transaction ends.
    pub versions_locked: &'static str,
    /// Wakes other processes' progress followers at commit (None: they
    /// poll).
    pub notify_progress: Option<&'static str>,
    /// Holds every projector back until the transaction ends.
    pub lock_out_projectors: &'static str,
    /// Tries the relay's leader lock `$1` on a connection (None: one
    /// process writes, so it leads).
    pub try_lead: Option<&'static str>,
}

/// A statement of `file` that may be empty ("nothing to run here").
pub(crate) const fn optional(file: &'static str, name: &str) -> Option<&'static str> {
    let s = section(file, name);
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

/// The [`DialectSql`] of a dialect's `.sql` file: each field is the
/// section of its own name (`Option` fields are empty where the dialect has
/// nothing to run).
macro_rules! dialect_sql {
    ($file:expr) => {
        dialect_sql!($file;
            required: position_column, payload_type, payload_out, payload_in, instant_in,
                instant_out, rows_from, keys_from, key_in, insert_history,
                history_interleaved, history_by_aggregate, begin_write, has_column,
                has_table, versions, versions_locked, lock_out_projectors;
            optional: append_begin, append_postamble, log_horizon, after_bulk_load,
                flush_after_bulk_load, derived_begin, snapshot_begin, migrate_lock,
                migrate_unlock, notify_progress, try_lead)
    };
    ($file:expr; required: $($r:ident),*; optional: $($o:ident),*) => {
        $crate::dialect::DialectSql {
            $($r: $crate::dialect::section($file, stringify!($r)),)*
            $($o: $crate::dialect::optional($file, stringify!($o)),)*
        }
    };
}
pub(crate) use dialect_sql;

/// What differs between the databases. Implemented by [`Postgres`] and
/// [`Sqlite`]; a `Db` knows its own ([`crate::Db::dialect`]).
pub trait Dialect: std::fmt::Debug + Send + Sync + 'static {
    /// Its name, as logs and `Debug` show it ("Postgres", "Sqlite").
    fn name(&self) -> &'static str;
    /// The statements and fragments whose text differs.
    fn sql(&self) -> &'static DialectSql;
    /// Concurrent append transactions worth keeping in flight.
    fn writers(&self) -> usize;
    /// Whether applied versions are written with one upsert per batch
    /// (one writer: no concurrent insert of a new aggregate to fail on)
    /// rather than an update and an insert that fails on a concurrent one.
    fn upserts_versions(&self) -> bool;
    /// Whether a database of this dialect is a file of the process's own
    /// (its data directory must exist) rather than one on a server.
    fn is_embedded(&self) -> bool;
    /// A database named after `url`'s with `suffix` appended, on the same
    /// server (None: a file has no server to put one on).
    fn sibling(&self, url: &str, suffix: &str) -> Option<String>;
    /// How often a follower of the read model reads it again when nothing
    /// woke it (a fallback where other processes notify, the pace where
    /// they cannot).
    fn follow_poll(&self) -> std::time::Duration;
    /// Whether an index can be renamed: then a rebuild makes its indexes
    /// with its tables and renames them at the swap; otherwise it makes
    /// them at the swap.
    fn renames_indexes(&self) -> bool;
    /// Writes `rows` into their empty table at once (a rebuild's bulk
    /// path): PostgreSQL `COPY` on a connection of its own, SQLite prepared
    /// multi-row inserts in one transaction.
    fn bulk_load<'a>(
        &'a self,
        db: &'a crate::Db,
        rows: std::sync::Arc<crate::bulk::BulkRows>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
    /// Connects to `url`: a pool for reads and one for writes.
    fn open<'a>(
        &'a self,
        url: &'a str,
        options: &'a crate::connect::DbOptions,
    ) -> BoxFuture<'a, Result<crate::connect::Pools, sqlx::Error>>;
    /// Whether `e` says the database `url` names does not exist.
    fn is_missing_database(&self, e: &sqlx::Error) -> bool;
    /// Opens a connection that wakes on `channel`'s notifications from
    /// other processes (None: the database sends none; callers poll).
    fn listen<'a>(
        &'a self,
        url: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<Listener>, sqlx::Error>>;
}

impl PartialEq for dyn Dialect {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for dyn Dialect {}

/// A connection that waits for notifications ([`Dialect::listen`]).
pub struct Listener(sqlx::postgres::PgListener);

impl Listener {
    /// Waits for the next notification.
    pub async fn recv(&mut self) -> Result<(), sqlx::Error> {
        self.0.recv().await.map(|_| ())
    }

    /// Takes every notification already received, without waiting.
    pub fn drain(&mut self) {
        while let Some(Ok(_)) = futures::FutureExt::now_or_never(self.0.recv()) {}
    }
}

/// Which dialect a URL's scheme names.
pub fn of_url(url: &str) -> Result<&'static dyn Dialect, sqlx::Error> {
    if url.starts_with("sqlite:") {
        Ok(&Sqlite)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(&Postgres)
    } else {
        Err(sqlx::Error::Configuration(
            format!(
                "unsupported database URL {:?}: use sqlite:PATH or postgres://...",
                crate::connect::redact_url(url)
            )
            .into(),
        ))
    }
}

/// The dialect of an open connection (for code handed only a connection,
/// such as a projection inside its transaction).
pub fn of_connection(conn: &sqlx::AnyConnection) -> &'static dyn Dialect {
    if conn.backend_name() == "PostgreSQL" {
        &Postgres
    } else {
        &Sqlite
    }
}

/// Whether `url` names an embedded database ([`Dialect::is_embedded`]); a
/// URL of no known dialect is not (connecting to it says why).
pub fn is_embedded_url(url: &str) -> bool {
    of_url(url).is_ok_and(|d| d.is_embedded())
}

/// `template` with each `{name}` replaced by its value.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// The statement named `name` in `file`: the lines after its
/// `-- name: NAME` line up to the next blank line, without the final line
/// break. Lines between a blank line and the next `-- name:` line are
/// comments for the reader. A `const` use fails the build when `name` is
/// missing.
pub const fn section(file: &'static str, name: &str) -> &'static str {
    let bytes = file.as_bytes();
    let marker = b"-- name: ";
    let name = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // At the start of a line: is it this name's marker?
        if (i == 0 || bytes[i - 1] == b'\n') && starts_with_at(bytes, i, marker) {
            let n = i + marker.len();
            let end_of_name = n + name.len();
            if starts_with_at(bytes, n, name)
                && (end_of_name == bytes.len() || bytes[end_of_name] == b'\n')
            {
                let start = if end_of_name < bytes.len() {
                    end_of_name + 1
                } else {
                    end_of_name
                };
                let mut end = start;
                // Up to the first empty line (or the end).
                while end < bytes.len()
                    && !(bytes[end] == b'\n' && (end == start || bytes[end - 1] == b'\n'))
                {
                    end += 1;
                }
                let mut stop = end;
                while stop > start && (bytes[stop - 1] == b'\n' || bytes[stop - 1] == b' ') {
                    stop -= 1;
                }
                let (_, rest) = bytes.split_at(start);
                let (text, _) = rest.split_at(stop - start);
                return match core::str::from_utf8(text) {
                    Ok(s) => s,
                    Err(_) => panic!("a statement is not UTF-8"),
                };
            }
        }
        i += 1;
    }
    panic!("no statement of that name in the .sql file")
}

const fn starts_with_at(bytes: &[u8], at: usize, prefix: &[u8]) -> bool {
    if at + prefix.len() > bytes.len() {
        return false;
    }
    let mut j = 0;
    while j < prefix.len() {
        if bytes[at + j] != prefix[j] {
            return false;
        }
        j += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "-- a comment\n\n-- name: one\nSELECT 1\n\n-- why two\n-- name: two\nSELECT a,\n       b\nFROM t\n\n-- name: last\nLAST";

    #[test]
    fn a_section_is_its_lines_up_to_the_next_blank_line() {
        assert_eq!(section(FILE, "one"), "SELECT 1");
        assert_eq!(section(FILE, "two"), "SELECT a,\n       b\nFROM t");
        assert_eq!(section(FILE, "last"), "LAST");
    }

    #[test]
    #[should_panic(expected = "no statement of that name")]
    fn a_name_must_match_whole() {
        section(FILE, "on");
    }

    fn names(file: &str) -> Vec<&str> {
        file.lines()
            .filter_map(|l| l.strip_prefix("-- name: "))
            .filter(|n| !n.starts_with("only_"))
            .collect()
    }

    #[test]
    fn both_dialect_files_name_the_same_statements() {
        let pg = names(include_str!("../../sql/postgres.sql"));
        let lite = names(include_str!("../../sql/sqlite.sql"));
        assert_eq!(pg, lite);
        assert!(pg.len() >= 28, "{pg:?}");
    }

    #[test]
    fn both_dialects_fill_in_their_fragments() {
        for d in [&Postgres as &dyn Dialect, &Sqlite] {
            let sql = d.sql();
            for (what, text) in [("rows_from", sql.rows_from), ("keys_from", sql.keys_from)] {
                assert!(text.contains("${param}"), "{d:?} {what}: {text}");
            }
            assert!(sql.key_in.contains("{column}") && sql.key_in.contains("{keys}"));
            assert!(sql.instant_in.contains("{expr}"));
            assert!(sql.instant_out.contains("{column}"));
            assert!(sql.insert_history.contains("{order}"));
        }
    }
}
