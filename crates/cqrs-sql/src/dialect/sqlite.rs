//! SQLite: one writer at a time, so positions are allocated in commit
//! order, one process leads the relay, and a pool of one writer connection
//! queues writes instead of meeting SQLITE_BUSY; WAL mode lets readers go
//! on beside it. Nothing can wake another process: followers poll.

use super::{dialect_sql, Dialect, DialectSql, Listener};
use crate::connect::{DbOptions, Pools};
use futures::future::BoxFuture;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::Executor;
use std::str::FromStr;
use std::time::Duration;

/// SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sqlite;

const FILE: &str = include_str!("../../sql/sqlite.sql");

static SQL: DialectSql = dialect_sql!(FILE);

impl Dialect for Sqlite {
    fn name(&self) -> &'static str {
        "Sqlite"
    }

    fn sql(&self) -> &'static DialectSql {
        &SQL
    }

    fn writers(&self) -> usize {
        1
    }

    fn upserts_versions(&self) -> bool {
        // `UPDATE … FROM` was planned as a walk over all of the projector's
        // rows for each row of the batch (70 ms a batch at a few thousand
        // aggregates); an upsert is driven by the batch's rows, each found
        // by its key. One writer: no concurrent insert to fail on.
        true
    }

    fn is_embedded(&self) -> bool {
        true
    }

    fn sibling(&self, _url: &str, _suffix: &str) -> Option<String> {
        None
    }

    fn follow_poll(&self) -> Duration {
        Duration::from_millis(50)
    }

    fn renames_indexes(&self) -> bool {
        false
    }

    fn bulk_load<'a>(
        &'a self,
        db: &'a crate::Db,
        rows: std::sync::Arc<crate::bulk::BulkRows>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            use crate::batch::Val;
            let columns: Vec<&str> = rows.columns.iter().map(|c| c.0).collect();
            // Well below SQLite's 32,766 parameters; one statement text per
            // chunk size, prepared once.
            let per = (30_000 / columns.len().max(1)).clamp(1, 1_000);
            let one = format!("({})", vec!["?"; columns.len()].join(", "));
            let mut tx = db.writer.begin().await?;
            for chunk in rows.rows.chunks(per) {
                let sql = format!(
                    "INSERT INTO {} ({}) VALUES {}",
                    rows.table,
                    columns.join(", "),
                    vec![one.as_str(); chunk.len()].join(", ")
                );
                let mut q = sqlx::query(&sql);
                for v in chunk.iter().flatten() {
                    q = match v {
                        Val::Text(t) => q.bind(t.as_str()),
                        Val::OptText(t) => q.bind(t.as_deref()),
                        Val::Int(i) => q.bind(*i),
                    };
                }
                q.execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    }

    fn listen<'a>(
        &'a self,
        _url: &'a str,
        _channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<Listener>, sqlx::Error>> {
        Box::pin(async { Ok(None) })
    }

    fn open<'a>(
        &'a self,
        url: &'a str,
        options: &'a DbOptions,
    ) -> BoxFuture<'a, Result<Pools, sqlx::Error>> {
        Box::pin(open(url, options))
    }

    fn is_missing_database(&self, _e: &sqlx::Error) -> bool {
        // `mode=rwc`: a missing file is created.
        false
    }
}

/// The file a SQLite URL names (`None` for an in-memory database).
fn file_of(url: &str) -> Option<std::path::PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| path.into())
}

/// Creates a database file that is not there yet, readable by its owner
/// alone (0600), in directories made 0700: it holds every order and
/// customer. SQLite gives its -wal and -shm files the database file's mode.
/// A file that exists keeps its mode.
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

async fn open(url: &str, options: &DbOptions) -> Result<Pools, sqlx::Error> {
    if let Some(file) = file_of(url) {
        create_private(&file)?;
    }
    let url = if url.contains('?') || url.contains(":memory:") {
        url.to_owned()
    } else {
        format!("{url}?mode=rwc")
    };
    let connect = AnyConnectOptions::from_str(&url)?;
    let sync = options.sqlite_synchronous.clone();
    if !matches!(
        sync.to_ascii_uppercase().as_str(),
        "OFF" | "NORMAL" | "FULL" | "EXTRA"
    ) {
        return Err(sqlx::Error::Configuration(
            format!("sqlite synchronous must be OFF, NORMAL, FULL or EXTRA, not {sync:?}").into(),
        ));
    }
    let opts = |n: u32| {
        let sync = sync.clone();
        AnyPoolOptions::new()
            .max_connections(n)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                let sync = sync.clone();
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute(format!("PRAGMA synchronous = {sync}").as_str())
                        .await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    // SQLite's default page cache is 2 MiB: with a log of
                    // millions of events every insert into its indexes
                    // would read pages again.
                    conn.execute("PRAGMA cache_size = -32768").await?;
                    Ok(())
                })
            })
    };
    let writer = opts(1).connect_with(connect.clone()).await?;
    let pool = opts(options.max_connections.clamp(1, 8))
        .connect_with(connect)
        .await?;
    Ok(Pools { pool, writer, url })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn urls_name_their_file() {
        assert_eq!(file_of("sqlite:///d/w.db"), Some("/d/w.db".into()));
        assert_eq!(file_of("sqlite://w.db?mode=rwc"), Some("w.db".into()));
        assert_eq!(file_of("sqlite::memory:"), None);
        assert_eq!(file_of("postgres://h/db"), None);
    }

    #[tokio::test]
    async fn a_new_database_and_its_directory_are_its_owners_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("new/dir/write.db");
        let url = format!("sqlite://{}", file.display());
        sqlx::any::install_default_drivers();
        let pools = open(&url, &DbOptions::default()).await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&pools.writer)
            .await
            .unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(file.parent().unwrap()), 0o700);
        assert_eq!(mode(&tmp.path().join("new")), 0o700);
        let wal = tmp.path().join("new/dir/write.db-wal");
        assert!(wal.exists(), "WAL mode writes beside it");
        assert_eq!(mode(&wal), 0o600, "the WAL takes the database's mode");
    }
}
