//! Static group membership without an id given by hand: a process's
//! `group.instance.id` derived from what its command line keeps across a
//! restart, plus a slot number so that two processes started alike never
//! share one (the broker would fence the older).
//!
//! The slot is a lock that the dead process's database session or file
//! handle releases the moment it dies: a process killed -9 and started
//! again at once takes its old slot, hence its old id, hence its old
//! partitions, without waiting for the session timeout.

use cqrs_sql::Db;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;

/// Slots tried before giving up: more processes than this started alike
/// on one read database are a misconfiguration, not a deployment.
pub const MAX_SLOTS: u32 = 64;

/// Namespace of the slots' advisory locks (the relay's leader lock is
/// another key).
const KEY_SPACE: &[u8] = b"cqrs-kafka group.instance.id slot";

/// A claimed `group.instance.id`: held while this value lives.
pub struct MemberSlot {
    id: String,
    /// What keeps the slot ours; released by dropping (or by dying).
    _held: Held,
}

enum Held {
    /// A PostgreSQL session holding `pg_try_advisory_lock(slot key)`.
    Session(#[allow(dead_code)] sqlx::AnyConnection),
    /// A file beside the SQLite read DB, locked exclusively.
    File(#[allow(dead_code)] File),
}

impl std::fmt::Debug for MemberSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberSlot").field("id", &self.id).finish()
    }
}

/// Why no slot could be claimed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The read DB refused the lock query.
    #[error("claiming a consumer-group instance id on the read database: {0}")]
    Db(#[from] sqlx::Error),
    /// The lock file could not be opened or locked.
    #[error("claiming a consumer-group instance id with {path}: {source}")]
    File {
        /// The lock file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Every slot is held.
    #[error("all {MAX_SLOTS} instance ids derived from {base} are held by running processes; give this one --kafka-instance-id")]
    Full {
        /// The derived part of the ids.
        base: String,
    },
}

impl MemberSlot {
    /// The instance id: `BASE-SLOT`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Claims the lowest free slot of `base` on the read DB every member of
    /// the group shares (its PostgreSQL server, or the SQLite file's
    /// directory): the id is then unique among the live processes of the
    /// group, and a restarted process finds its own slot free again.
    pub async fn claim(base: &str, read_db: &Db) -> Result<MemberSlot, MembershipError> {
        match read_db.sql().try_lead {
            Some(try_lock) => {
                let mut conn =
                    <sqlx::AnyConnection as sqlx::Connection>::connect(read_db.url()).await?;
                for slot in 0..MAX_SLOTS {
                    let id = format!("{base}-{slot}");
                    let got: bool = sqlx::query_scalar(try_lock)
                        .bind(slot_key(&id))
                        .fetch_one(&mut conn)
                        .await?;
                    if got {
                        return Ok(MemberSlot {
                            id,
                            _held: Held::Session(conn),
                        });
                    }
                }
                Err(MembershipError::Full { base: base.into() })
            }
            None => {
                let beside = sqlite_file(read_db.url());
                for slot in 0..MAX_SLOTS {
                    let id = format!("{base}-{slot}");
                    let path = lock_path(&beside, &id);
                    let file = OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)
                        .map_err(|source| MembershipError::File {
                            path: path.clone(),
                            source,
                        })?;
                    match file.try_lock() {
                        Ok(()) => {
                            return Ok(MemberSlot {
                                id,
                                _held: Held::File(file),
                            })
                        }
                        Err(TryLockError::WouldBlock) => continue,
                        Err(TryLockError::Error(source)) => {
                            return Err(MembershipError::File { path, source })
                        }
                    }
                }
                Err(MembershipError::Full { base: base.into() })
            }
        }
    }
}

/// The readable, stable part of a derived id: `PREFIX-HOST-HASH`, where the
/// hash covers `parts` (what the command line keeps: roles, data directory,
/// groups) and the host, so that unlike processes never compete for slots.
pub fn derived_base(prefix: &str, host: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(host.as_bytes());
    for p in parts {
        h.update([0]);
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let short: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    format!("{prefix}-{host}-{short}")
}

/// This machine's host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`,
/// else "localhost").
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The advisory-lock key of one slot's id.
fn slot_key(id: &str) -> i64 {
    let mut h = Sha256::new();
    h.update(KEY_SPACE);
    h.update(id.as_bytes());
    let d = h.finalize();
    i64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The SQLite file of `sqlite://PATH?options`.
fn sqlite_file(url: &str) -> PathBuf {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    PathBuf::from(path.split('?').next().unwrap_or(path))
}

/// `read.db` -> `read.db.member-ID.lock`, beside it.
fn lock_path(db_file: &std::path::Path, id: &str) -> PathBuf {
    let mut name = db_file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "read.db".into());
    name.push(format!(".member-{id}.lock"));
    db_file.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_derived_base_is_stable_and_tells_unlike_command_lines_apart() {
        let a = derived_base("orders", "web-1", &["projector", "/srv/data"]);
        assert_eq!(
            a,
            derived_base("orders", "web-1", &["projector", "/srv/data"])
        );
        assert!(a.starts_with("orders-web-1-"), "{a}");
        assert_ne!(
            a,
            derived_base("orders", "web-1", &["projector", "/srv/other"])
        );
        assert_ne!(
            a,
            derived_base("orders", "web-2", &["projector", "/srv/data"])
        );
        // Parts are separated: ("ab", "c") is not ("a", "bc").
        assert_ne!(
            derived_base("o", "h", &["ab", "c"]),
            derived_base("o", "h", &["a", "bc"])
        );
        assert!(
            derived_base("o", "a host/with:odd chars", &[]).starts_with("o-a_host_with_odd_chars-")
        );
    }

    #[test]
    fn the_sqlite_lock_files_sit_beside_the_database() {
        let f = sqlite_file("sqlite:///srv/data/read.db?mode=rwc");
        assert_eq!(f, PathBuf::from("/srv/data/read.db"));
        assert_eq!(
            lock_path(&f, "orders-h-0011-0"),
            PathBuf::from("/srv/data/read.db.member-orders-h-0011-0.lock")
        );
    }
}
