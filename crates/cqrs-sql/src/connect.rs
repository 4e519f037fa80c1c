//! How a database is opened, shared by [`crate::db`] and each dialect:
//! the options, what a dialect's `open` hands back, and a URL fit for logs.

use sqlx::AnyPool;
use std::time::Duration;

/// How to open a database.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// Connections in the pool (PostgreSQL) or readers (SQLite).
    pub max_connections: u32,
    /// SQLite `synchronous`: `NORMAL` survives a process crash, `FULL` also power loss.
    pub sqlite_synchronous: String,
    /// Create a PostgreSQL database that does not exist yet (as the URL's
    /// user, through the server's `postgres` database).
    pub create_missing: bool,
}

/// The defaults of [`DbOptions`], for flags that set them.
pub mod defaults {
    /// Connections per pool.
    pub const MAX_CONNECTIONS: u32 = 16;
    /// SQLite's `synchronous`: survives a process crash.
    pub const SQLITE_SYNCHRONOUS: &str = "NORMAL";
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_connections: defaults::MAX_CONNECTIONS,
            sqlite_synchronous: defaults::SQLITE_SYNCHRONOUS.into(),
            create_missing: false,
        }
    }
}

/// The URL with any password replaced by `***`, fit for logs and errors.
pub fn redact_url(url: &str) -> String {
    let mut out = match url.split_once("://") {
        Some((scheme, rest)) => {
            // userinfo ends at the last '@' before the path.
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
                    let hidden = if userinfo.contains(':') { ":***" } else { "" };
                    format!("{scheme}://{user}{hidden}@{host}{path}")
                }
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    };
    // A password may also come as a query parameter.
    if let Some(i) = out.find("password=") {
        let start = i + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "***");
    }
    out
}

/// What a [`Dialect`](crate::Dialect) opens: a pool for reads and one for writes (the same
/// pool where the database takes concurrent writers).
pub struct Pools {
    /// For reads.
    pub pool: AnyPool,
    /// For writes.
    pub writer: AnyPool,
    /// The URL as connected (with any options the dialect added).
    pub url: String,
}

/// How long the first connection to a server may take before the start
/// fails, naming the server.
pub(crate) const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
