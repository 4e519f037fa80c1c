//! PostgreSQL: many writers, so positions are allocated in start order and
//! readers of the log wait for a horizon (`log_horizon`); LISTEN/NOTIFY
//! wakes other processes; advisory locks elect the relay and serialise
//! migrations; a pool that pings only connections idle long enough to have
//! been cut; a missing database made on request.

use super::{dialect_sql, section, Dialect, DialectSql, Listener};
use crate::connect::{DbOptions, Pools, FIRST_CONNECT_TIMEOUT};
use futures::future::BoxFuture;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Connection, Executor};
use std::str::FromStr;
use std::time::Duration;

/// PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Postgres;

const FILE: &str = include_str!("../../sql/postgres.sql");

/// A PostgreSQL-only migration step of `sql/postgres.sql` (`only_…`).
pub(crate) const fn only(name: &str) -> &'static str {
    section(FILE, name)
}

static SQL: DialectSql = dialect_sql!(FILE);

impl Dialect for Postgres {
    fn name(&self) -> &'static str {
        "Postgres"
    }

    fn sql(&self) -> &'static DialectSql {
        &SQL
    }

    fn writers(&self) -> usize {
        // A few transactions in flight keep the WAL flushes overlapping.
        4
    }

    fn upserts_versions(&self) -> bool {
        // A concurrent insert of a new aggregate must fail on the key.
        false
    }

    fn is_embedded(&self) -> bool {
        false
    }

    fn sibling(&self, url: &str, suffix: &str) -> Option<String> {
        Some(with_database_suffix(url, suffix))
    }

    fn follow_poll(&self) -> Duration {
        Duration::from_millis(500)
    }

    fn renames_indexes(&self) -> bool {
        true
    }

    fn bulk_load<'a>(
        &'a self,
        db: &'a crate::Db,
        rows: std::sync::Arc<crate::bulk::BulkRows>,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            // Encoding is CPU work: off the runtime's workers, which serve.
            let encoded = rows.clone();
            let chunks = tokio::task::spawn_blocking(move || {
                crate::bulk::lower_priority();
                encoded
                    .rows
                    .chunks(10_000)
                    .map(crate::bulk::copy_lines)
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("encoding rows for COPY: {e}")))?;
            // sqlx's Any driver has no COPY: a native connection of its own.
            let mut conn = sqlx::postgres::PgConnection::connect(db.url()).await?;
            let columns: Vec<&str> = rows.columns.iter().map(|c| c.0).collect();
            let mut copy = conn
                .copy_in_raw(&format!(
                    "COPY {} ({}) FROM STDIN",
                    rows.table,
                    columns.join(", ")
                ))
                .await?;
            for chunk in chunks {
                copy.send(chunk).await?;
            }
            copy.finish().await?;
            conn.close().await
        })
    }

    fn listen<'a>(
        &'a self,
        url: &'a str,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Option<Listener>, sqlx::Error>> {
        Box::pin(async move {
            let mut l = sqlx::postgres::PgListener::connect(url).await?;
            l.listen(channel).await?;
            Ok(Some(Listener(l)))
        })
    }

    fn open<'a>(
        &'a self,
        url: &'a str,
        options: &'a DbOptions,
    ) -> BoxFuture<'a, Result<Pools, sqlx::Error>> {
        Box::pin(async move {
            match first_connection(url).await {
                Err(e) if options.create_missing && is_missing_database(&e) => {
                    create_database(url).await?;
                    first_connection(url).await?;
                }
                other => other?,
            }
            let pool = pool(url, options).await?;
            Ok(Pools {
                writer: pool.clone(),
                pool,
                url: url.to_owned(),
            })
        })
    }

    fn is_missing_database(&self, e: &sqlx::Error) -> bool {
        is_missing_database(e)
    }
}

/// `url` naming the database `<its name><suffix>` (query kept; the server's
/// default database `postgres` when it names none).
fn with_database_suffix(url: &str, suffix: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let named = match base.rsplit_once('/') {
        Some((server, name)) if !server.ends_with('/') && !name.is_empty() => {
            format!("{server}/{name}{suffix}")
        }
        _ => format!("{}/postgres{suffix}", base.trim_end_matches('/')),
    };
    match query {
        Some(q) => format!("{named}?{q}"),
        None => named,
    }
}

/// A pooled connection idle this long is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// sqlx pings every connection it hands out: a second round trip for each
/// one-statement query (a third of a GET's time). This pool pings only a
/// connection that sat idle long enough to have been cut (a restart, a
/// proxy); one used within the last second has just answered.
async fn pool(url: &str, options: &DbOptions) -> Result<AnyPool, sqlx::Error> {
    AnyPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect(url)
        .await
}

/// The first connection to a server, on its own: its failure says what
/// went wrong (refused, unknown host, bad password, missing database),
/// where a pool would only report that it timed out.
async fn first_connection(url: &str) -> Result<(), sqlx::Error> {
    match tokio::time::timeout(FIRST_CONNECT_TIMEOUT, sqlx::AnyConnection::connect(url)).await {
        Ok(Ok(conn)) => conn.close().await,
        Ok(Err(e)) => Err(e),
        Err(_) => Err(sqlx::Error::PoolTimedOut),
    }
}

fn is_missing_database(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("3D000"))
}

/// Creates the database `url` names, connecting to the same server's
/// `postgres` database as the same user.
async fn create_database(url: &str) -> Result<(), sqlx::Error> {
    use sqlx::postgres::{PgConnectOptions, PgConnection};
    use sqlx::ConnectOptions;
    let options = PgConnectOptions::from_str(url)?;
    let name = options
        .get_database()
        .ok_or_else(|| sqlx::Error::Configuration("the URL names no database".into()))?
        .to_owned();
    let mut admin: PgConnection = options.database("postgres").connect().await?;
    // An identifier cannot be a bind parameter: quoted, its quotes doubled.
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match admin
        .execute(format!("CREATE DATABASE {quoted}").as_str())
        .await
    {
        Ok(_) => tracing::info!(database = %name, "database created"),
        // Another process created it first (processes starting together):
        // 42P04 duplicate_database, or the catalogue's unique index.
        Err(sqlx::Error::Database(d))
            if matches!(d.code().as_deref(), Some("42P04") | Some("23505")) => {}
        Err(e) => return Err(e),
    }
    admin.close().await?;
    Ok(())
}
