//! Versioned schema changes. Every owner of tables (the event store, the
//! relay, the projector runner, each projection) keeps its own numbered list
//! of migrations; each is applied once, in order, in its own transaction,
//! and recorded in `schema_migrations` with a checksum of its statements.
//! Owners evolve independently (a user's projection next to ours), which is
//! why this is not one global sequence such as `sqlx::migrate!` keeps.

use crate::db::{timestamp, Db};
use crate::dialect::{section, Dialect};
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Executor};

/// One statement (or guarded change) of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Runs on every database.
    Sql(String),
    /// Runs only on one kind of database (a native type, say).
    Only(&'static dyn Dialect, String),
    /// Adds a column unless the table has it (tables made before their
    /// owner's migrations were versioned may lack it), then runs the backfill.
    AddColumn(AddedColumn),
}

/// A column that a later version added to a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedColumn {
    /// The table, as this instance names it.
    pub table: String,
    /// The column.
    pub column: &'static str,
    /// Its type and default, e.g. `BIGINT NOT NULL DEFAULT 0`.
    pub definition: &'static str,
    /// Run once right after the column is added (to fill it from old data).
    pub backfill: Option<String>,
}

impl AddedColumn {
    /// Its `ALTER TABLE … ADD COLUMN`.
    pub fn statement(&self) -> String {
        format!(
            "ALTER TABLE {} ADD COLUMN {} {}",
            self.table, self.column, self.definition
        )
    }
}

/// One numbered change of an owner's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// 1, 2, 3 … within its owner; never reused, never edited once released.
    pub version: i64,
    /// What it does, in a few words.
    pub name: &'static str,
    /// Run in order, in one transaction.
    pub steps: Vec<Step>,
}

impl Migration {
    /// An empty migration.
    pub fn new(version: i64, name: &'static str) -> Self {
        Self {
            version,
            name,
            steps: Vec::new(),
        }
    }

    /// Adds statements run on every database.
    pub fn sql<S: Into<String>>(mut self, statements: impl IntoIterator<Item = S>) -> Self {
        self.steps
            .extend(statements.into_iter().map(|s| Step::Sql(s.into())));
        self
    }

    /// Adds a statement run only on `dialect`.
    pub fn only(mut self, dialect: &'static dyn Dialect, statement: impl Into<String>) -> Self {
        self.steps.push(Step::Only(dialect, statement.into()));
        self
    }

    /// Adds a column unless present.
    pub fn add_column(mut self, column: AddedColumn) -> Self {
        self.steps.push(Step::AddColumn(column));
        self
    }

    /// The SQL it runs on `dialect` (an added column as its `ALTER TABLE`).
    pub fn statements(&self, dialect: &dyn Dialect) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Sql(sql) => Some(sql.clone()),
                Step::Only(d, sql) => (**d == *dialect).then(|| sql.clone()),
                Step::AddColumn(c) => Some(c.statement()),
            })
            .collect()
    }

    /// What identifies its content: a later edit of a released migration
    /// is refused rather than silently skipped. (It hashes each step's
    /// `Debug` text, dialect names included: a test pins every released
    /// one.)
    pub fn checksum(&self) -> String {
        let mut h = Sha256::new();
        for s in &self.steps {
            h.update(format!("{s:?}\n").as_bytes());
        }
        hex::encode(&h.finalize()[..8])
    }
}

/// An owner of tables and its migrations, oldest first.
#[derive(Debug, Clone)]
pub struct Component {
    /// Unique per database ("event_store", "projection order_details").
    pub name: String,
    /// Versions 1, 2, 3 … in order.
    pub migrations: Vec<Migration>,
}

/// A migration applied (or pending) on one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Its owner.
    pub component: String,
    /// Its number.
    pub version: i64,
    /// What it does.
    pub name: &'static str,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({})", self.component, self.version, self.name)
    }
}

/// Why a database could not be brought to this build's schema.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database failed outside a migration.
    #[error("schema migrations: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration's statements failed; its transaction was rolled back.
    #[error("migration {migration} failed and was rolled back: {source}")]
    Failed {
        /// Which.
        migration: Applied,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },
    /// The database was migrated by a newer build.
    #[error("{component} is at schema version {found}, this build knows up to {known}: run a newer build")]
    Newer {
        /// Owner.
        component: String,
        /// Version recorded in the database.
        found: i64,
        /// Latest version this build has.
        known: i64,
    },
    /// A released migration was edited after it ran.
    #[error("migration {migration} ran with other statements than this build's (checksum {recorded} there, {ours} here)")]
    Changed {
        /// Which.
        migration: Applied,
        /// Checksum recorded in the database.
        recorded: String,
        /// This build's.
        ours: String,
    },
    /// Migrations are due but this process was told not to run them.
    #[error("the database needs {count} schema migration(s) ({first} …): run `orders migrate`, or start without --no-migrate")]
    Pending {
        /// How many.
        count: usize,
        /// The first one due.
        first: Applied,
    },
}

const SQL: &str = include_str!("../sql/migrate.sql");
const LEDGER: &str = section(SQL, "ledger");
const VERSIONS: &str = section(SQL, "versions");
const RECORD: &str = section(SQL, "record");
const RECORDED: &str = section(SQL, "recorded");

/// Applies every migration `db` lacks, owner by owner; returns what it
/// applied. Concurrent processes wait for each other (PostgreSQL: an
/// advisory lock; SQLite: `BEGIN IMMEDIATE`).
pub async fn migrate(db: &Db, components: &[Component]) -> Result<Vec<Applied>, MigrateError> {
    // A database that is current is only read: a process without DDL
    // rights starts, and no lock is taken.
    if pending(db, components).await?.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = db.writer.acquire().await?;
    if let Some(lock) = db.sql().migrate_lock {
        conn.execute(lock).await?;
    }
    let result = migrate_locked(&mut conn, db.dialect, components).await;
    if let Some(unlock) = db.sql().migrate_unlock {
        conn.execute(unlock).await?;
    }
    result
}

/// What [`migrate`] would apply, without applying it.
pub async fn pending(db: &Db, components: &[Component]) -> Result<Vec<Applied>, MigrateError> {
    let mut conn = db.pool.acquire().await?;
    let has_ledger = has_table(&mut conn, db.dialect, "schema_migrations").await?;
    let mut due = Vec::new();
    for c in components {
        let recorded = if has_ledger {
            recorded(&mut conn, &c.name).await?
        } else {
            Vec::new()
        };
        due.extend(due_of(c, &recorded)?.into_iter().map(|m| applied(c, m)));
    }
    Ok(due)
}

/// Refuses to go on when migrations are due (for processes started with
/// migrations disabled).
pub async fn ensure_current(db: &Db, components: &[Component]) -> Result<(), MigrateError> {
    let due = pending(db, components).await?;
    match due.first() {
        None => Ok(()),
        Some(first) => Err(MigrateError::Pending {
            count: due.len(),
            first: first.clone(),
        }),
    }
}

/// The recorded versions of every owner, as `(component, version)`.
pub async fn versions(db: &Db) -> Result<Vec<(String, i64)>, MigrateError> {
    let mut conn = db.pool.acquire().await?;
    if !has_table(&mut conn, db.dialect, "schema_migrations").await? {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(VERSIONS).fetch_all(&mut *conn).await?)
}

async fn migrate_locked(
    conn: &mut AnyConnection,
    dialect: &dyn Dialect,
    components: &[Component],
) -> Result<Vec<Applied>, MigrateError> {
    conn.execute(LEDGER).await?;
    let mut done = Vec::new();
    for c in components {
        loop {
            // Read and apply under one write lock, one migration at a time,
            // so a second process (SQLite has no advisory lock) sees it done.
            begin(conn, dialect).await?;
            let next = match recorded(conn, &c.name).await.and_then(|r| due_of(c, &r)) {
                Ok(due) => due.into_iter().next(),
                Err(e) => {
                    conn.execute("ROLLBACK").await?;
                    return Err(e);
                }
            };
            let Some(m) = next else {
                conn.execute("ROLLBACK").await?;
                break;
            };
            let started = std::time::Instant::now();
            if let Err(source) = apply(conn, dialect, c, m).await {
                conn.execute("ROLLBACK").await?;
                return Err(MigrateError::Failed {
                    migration: applied(c, m),
                    source,
                });
            }
            conn.execute("COMMIT").await?;
            tracing::info!(component = %c.name, version = m.version, name = m.name,
                elapsed_ms = started.elapsed().as_millis() as u64, "schema migrated");
            done.push(applied(c, m));
        }
    }
    Ok(done)
}

async fn begin(conn: &mut AnyConnection, dialect: &dyn Dialect) -> Result<(), MigrateError> {
    conn.execute(dialect.sql().begin_write).await?;
    Ok(())
}

async fn apply(
    conn: &mut AnyConnection,
    dialect: &dyn Dialect,
    c: &Component,
    m: &Migration,
) -> Result<(), sqlx::Error> {
    for step in &m.steps {
        run_step(conn, dialect, step).await?;
    }
    sqlx::query(RECORD)
        .bind(&c.name)
        .bind(m.version)
        .bind(m.name)
        .bind(m.checksum())
        .bind(timestamp(chrono::Utc::now()))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Runs one step outside the ledger (fresh tables built for a replay).
pub async fn run_step(
    conn: &mut AnyConnection,
    dialect: &dyn Dialect,
    step: &Step,
) -> Result<(), sqlx::Error> {
    match step {
        Step::Sql(sql) => {
            conn.execute(sql.as_str()).await?;
        }
        Step::Only(d, sql) if **d == *dialect => {
            conn.execute(sql.as_str()).await?;
        }
        Step::Only(..) => {}
        Step::AddColumn(c) => {
            if !has_column(conn, dialect, &c.table, c.column).await? {
                conn.execute(c.statement().as_str()).await?;
                if let Some(b) = &c.backfill {
                    conn.execute(b.as_str()).await?;
                }
            }
        }
    }
    Ok(())
}

/// Whether `table` has `column`.
async fn has_column(
    conn: &mut AnyConnection,
    dialect: &dyn Dialect,
    table: &str,
    column: &str,
) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(dialect.sql().has_column)
        .bind(table)
        .bind(column)
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}

/// Whether `table` exists.
async fn has_table(
    conn: &mut AnyConnection,
    dialect: &dyn Dialect,
    table: &str,
) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(dialect.sql().has_table)
        .bind(table)
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}

/// `(version, checksum)` recorded for `component`, oldest first.
async fn recorded(
    conn: &mut AnyConnection,
    component: &str,
) -> Result<Vec<(i64, String)>, MigrateError> {
    Ok(sqlx::query_as(RECORDED)
        .bind(component)
        .fetch_all(conn)
        .await?)
}

/// The migrations of `c` not yet recorded, after checking the recorded ones
/// against this build.
fn due_of<'a>(
    c: &'a Component,
    recorded: &[(i64, String)],
) -> Result<Vec<&'a Migration>, MigrateError> {
    let known = c.migrations.last().map_or(0, |m| m.version);
    for (version, checksum) in recorded {
        let Some(m) = c.migrations.iter().find(|m| m.version == *version) else {
            return Err(MigrateError::Newer {
                component: c.name.clone(),
                found: *version,
                known,
            });
        };
        if m.checksum() != *checksum {
            return Err(MigrateError::Changed {
                migration: applied(c, m),
                recorded: checksum.clone(),
                ours: m.checksum(),
            });
        }
    }
    Ok(c.migrations
        .iter()
        .filter(|m| !recorded.iter().any(|(v, _)| *v == m.version))
        .collect())
}

fn applied(c: &Component, m: &Migration) -> Applied {
    Applied {
        component: c.name.clone(),
        version: m.version,
        name: m.name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component() -> Component {
        Component {
            name: "t".into(),
            migrations: vec![
                Migration::new(1, "create").sql(["CREATE TABLE t (a TEXT)"]),
                Migration::new(2, "native time").only(&crate::Postgres, "ALTER TABLE t ..."),
            ],
        }
    }

    #[test]
    fn only_unrecorded_migrations_are_due_and_edited_ones_are_refused() {
        let c = component();
        let v1 = c.migrations[0].checksum();
        let due = due_of(&c, &[(1, v1.clone())]).unwrap();
        assert_eq!(due.iter().map(|m| m.version).collect::<Vec<_>>(), [2]);
        assert!(matches!(
            due_of(&c, &[(1, "0000".into())]),
            Err(MigrateError::Changed { .. })
        ));
        assert!(matches!(
            due_of(&c, &[(1, v1), (3, "x".into())]),
            Err(MigrateError::Newer {
                found: 3,
                known: 2,
                ..
            })
        ));
    }

    #[test]
    fn a_dialect_only_step_runs_on_its_dialect_alone() {
        let c = component();
        assert!(c.migrations[1].statements(&crate::Sqlite).is_empty());
        assert_eq!(c.migrations[1].statements(&crate::Postgres).len(), 1);
    }
}
