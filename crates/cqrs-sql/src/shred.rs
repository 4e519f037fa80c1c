//! Crypto-shredding: personal data is sealed (AES-256-GCM) under a data key
//! of its subject (a customer); the data keys live in the write DB's
//! `data_keys` table, each wrapped (AES-256-GCM) by a master key that never
//! enters a database. Deleting a subject's key erases its data from every
//! event, topic, replay and backup that holds only the ciphertext.

use crate::db::{timestamp, Db};
use crate::dialect::section;
use crate::migrate::{self, Component, MigrateError, Migration};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use cqrs_core::Sealed;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

const SQL: &str = include_str!("../sql/keys.sql");

/// Why personal data cannot be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum ShredError {
    /// The key table failed.
    #[error("key table: {0}")]
    Db(#[from] sqlx::Error),
    /// Its schema could not be settled.
    #[error(transparent)]
    Schema(#[from] MigrateError),
    /// A master key is malformed or unreadable.
    #[error("master key: {0}")]
    Master(String),
    /// A data key is wrapped by a master key this process does not hold.
    #[error(
        "data key {key_id} is wrapped by master key {master_id}, which this process does not hold"
    )]
    UnknownMaster {
        /// The data key.
        key_id: String,
        /// Its master key's id.
        master_id: String,
    },
    /// Ciphertext (or a wrapped key) that does not authenticate.
    #[error("{0} does not decrypt (tampered with, or under another key)")]
    Corrupt(String),
}

/// A master key: 32 bytes, written as base64 (or 64 hex digits).
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    key: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    /// A new random key.
    pub fn generate() -> MasterKey {
        let key: [u8; 32] = Aes256Gcm::generate_key(&mut OsRng).into();
        MasterKey::from_bytes(key)
    }

    fn from_bytes(key: [u8; 32]) -> MasterKey {
        let id = hex::encode(&Sha256::digest(key)[..8]);
        MasterKey { id, key }
    }

    /// The key written as `text` (base64 of 32 bytes, or 64 hex digits).
    pub fn parse(text: &str) -> Result<MasterKey, ShredError> {
        let text = text.trim();
        let bytes = match text.len() {
            64 => hex::decode(text).map_err(|e| ShredError::Master(e.to_string()))?,
            _ => B64
                .decode(text)
                .map_err(|e| ShredError::Master(format!("not base64: {e}")))?,
        };
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            ShredError::Master(format!("{} bytes, not 32 (AES-256)", b.len()))
        })?;
        Ok(MasterKey::from_bytes(key))
    }

    /// The key in `path`; made (32 random bytes, owner-only) when `create`
    /// and the file is missing.
    pub fn from_file(path: &Path, create: bool) -> Result<MasterKey, ShredError> {
        match std::fs::read_to_string(path) {
            Ok(text) => MasterKey::parse(&text)
                .map_err(|e| ShredError::Master(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let key = MasterKey::generate();
                key.write(path)?;
                tracing::info!(path = %path.display(), master_id = key.id,
                    "made a master key for personal data (keep it: without it the personal data is unreadable)");
                Ok(key)
            }
            Err(e) => Err(ShredError::Master(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes the key to `path`, readable by its owner only, replacing any
    /// file there at once (a rename).
    pub fn write(&self, path: &Path) -> Result<(), ShredError> {
        let io = |e: std::io::Error| ShredError::Master(format!("{}: {e}", path.display()));
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp).map_err(io)?;
            writeln!(f, "{}", B64.encode(self.key)).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Its id: the first 8 bytes of its SHA-256, in hex (names it, reveals
    /// nothing of it).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.key))
    }
}

/// Where a process's master key comes from.
#[derive(Debug, Clone)]
pub enum MasterSource {
    /// A file, read again when a data key is wrapped by a master this
    /// process does not hold yet (after `keys rotate`).
    File(PathBuf),
    /// The environment (or a flag): rotation needs a restart.
    Fixed,
}

/// The key table and wrapping: seals and opens personal data, erases
/// subjects.
pub struct KeyRing {
    db: Db,
    masters: RwLock<Masters>,
    source: MasterSource,
}

struct Masters {
    current: MasterKey,
    known: HashMap<String, MasterKey>,
}

/// A data key's row.
#[derive(sqlx::FromRow)]
struct KeyRow {
    key_id: String,
    master_id: String,
    wrapped: String,
}

/// The key table's schema (component `data_keys` of the write DB).
pub fn component() -> Component {
    Component {
        name: "data_keys".into(),
        migrations: vec![
            Migration::new(1, "data keys per subject, wrapped by a master key")
                .sql([section(SQL, "table"), section(SQL, "by_subject")]),
        ],
    }
}

fn seal_with(cipher: &Aes256Gcm, plain: &[u8], aad: &[u8]) -> (String, String) {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    // Encrypting into a Vec cannot fail for inputs of this size.
    let ct = cipher
        .encrypt(&nonce, Payload { msg: plain, aad })
        .unwrap_or_default();
    (B64.encode(nonce), B64.encode(ct))
}

fn open_with(
    cipher: &Aes256Gcm,
    nonce: &str,
    ct: &str,
    aad: &[u8],
    what: &str,
) -> Result<Vec<u8>, ShredError> {
    let corrupt = || ShredError::Corrupt(what.to_owned());
    let nonce = B64.decode(nonce).map_err(|_| corrupt())?;
    let ct = B64.decode(ct).map_err(|_| corrupt())?;
    if nonce.len() != 12 {
        return Err(corrupt());
    }
    cipher
        .decrypt(Nonce::from_slice(&nonce), Payload { msg: &ct, aad })
        .map_err(|_| corrupt())
}

impl KeyRing {
    /// The key ring over `db` (the write DB), sealing with `master`.
    pub async fn open(
        db: Db,
        master: MasterKey,
        source: MasterSource,
    ) -> Result<KeyRing, ShredError> {
        migrate::migrate(&db, &[component()]).await?;
        // A deployment whose processes hold different master keys cannot
        // open each other's data keys: say so at start, naming both.
        let others: Vec<(String, i64)> = sqlx::query_as(section(SQL, "per_master"))
            .fetch_all(&db.pool)
            .await?;
        for (id, n) in others.iter().filter(|(id, _)| *id != master.id) {
            tracing::warn!(master_id = master.id, other_master_id = %id, data_keys = n,
                "data keys are wrapped by a master key this process does not hold: their personal \
                data is unreadable here until it reads that key (give every process the same \
                --master-key-file), or `orders keys rotate` finishes");
        }
        let known = HashMap::from([(master.id.clone(), master.clone())]);
        Ok(KeyRing {
            db,
            masters: RwLock::new(Masters {
                current: master,
                known,
            }),
            source,
        })
    }

    fn current(&self) -> MasterKey {
        match self.masters.read() {
            Ok(m) => m.current.clone(),
            Err(p) => p.into_inner().current.clone(),
        }
    }

    fn known(&self, id: &str) -> Option<MasterKey> {
        match self.masters.read() {
            Ok(m) => m.known.get(id).cloned(),
            Err(p) => p.into_inner().known.get(id).cloned(),
        }
    }

    /// Reads the master key file again (after a rotation); the new key
    /// becomes the current one, the old ones stay known.
    fn reload(&self) -> Result<(), ShredError> {
        let MasterSource::File(path) = &self.source else {
            return Ok(());
        };
        let key = MasterKey::from_file(path, false)?;
        let mut m = self
            .masters
            .write()
            .map_err(|_| ShredError::Master("lock poisoned".into()))?;
        if m.current.id != key.id {
            tracing::info!(
                master_id = key.id,
                "the master key changed: sealing new data keys with it"
            );
            m.known.insert(key.id.clone(), key.clone());
            m.current = key;
        }
        Ok(())
    }

    /// The master that wrapped `row`, reading the file again once if it is
    /// not known yet.
    fn master_of(&self, row: &KeyRow) -> Result<MasterKey, ShredError> {
        if let Some(m) = self.known(&row.master_id) {
            return Ok(m);
        }
        self.reload()?;
        self.known(&row.master_id)
            .ok_or_else(|| ShredError::UnknownMaster {
                key_id: row.key_id.clone(),
                master_id: row.master_id.clone(),
            })
    }

    fn unwrap_key(&self, row: &KeyRow) -> Result<Aes256Gcm, ShredError> {
        let key = unwrap_with(&self.master_of(row)?, row)?;
        Aes256Gcm::new_from_slice(&key)
            .map_err(|_| ShredError::Corrupt(format!("data key {}", row.key_id)))
    }

    /// `subject`'s data key, made when it has none (two processes making
    /// one at once agree on the first stored).
    async fn key_of(&self, subject: &str) -> Result<(String, Aes256Gcm), ShredError> {
        let existing: Option<KeyRow> = sqlx::query_as(section(SQL, "of_subject"))
            .bind(subject)
            .fetch_optional(&self.db.pool)
            .await?;
        if let Some(row) = existing {
            return Ok((row.key_id.clone(), self.unwrap_key(&row)?));
        }
        // A rotation may have replaced the file: new keys go under its key.
        self.reload()?;
        let master = self.current();
        let data_key = Aes256Gcm::generate_key(&mut OsRng);
        let key_id = uuid::Uuid::new_v4().to_string();
        let (nonce, ct) = seal_with(&master.cipher(), &data_key, key_id.as_bytes());
        sqlx::query(section(SQL, "insert"))
            .bind(&key_id)
            .bind(subject)
            .bind(&master.id)
            .bind(format!("{nonce}.{ct}"))
            .bind(timestamp(chrono::Utc::now()))
            .execute(&self.db.writer)
            .await?;
        let row: KeyRow = sqlx::query_as(section(SQL, "of_subject"))
            .bind(subject)
            .fetch_one(&self.db.writer)
            .await?;
        Ok((row.key_id.clone(), self.unwrap_key(&row)?))
    }

    /// Seals `plain` under `subject`'s data key (made if it has none).
    pub async fn seal(&self, subject: &str, plain: &[u8]) -> Result<Sealed, ShredError> {
        let (key_id, cipher) = self.key_of(subject).await?;
        let (nonce, ciphertext) = seal_with(&cipher, plain, key_id.as_bytes());
        Ok(Sealed {
            key_id,
            nonce,
            ciphertext,
        })
    }

    /// Opens each of `sealed`: `None` where its key was erased.
    pub async fn open_all(&self, sealed: &[&Sealed]) -> Result<Vec<Option<Vec<u8>>>, ShredError> {
        let mut ids: Vec<&str> = sealed.iter().map(|s| s.key_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut keys: HashMap<String, Aes256Gcm> = HashMap::new();
        for id in ids {
            let row: Option<KeyRow> = sqlx::query_as(section(SQL, "one"))
                .bind(id)
                .fetch_optional(&self.db.pool)
                .await?;
            if let Some(row) = row {
                keys.insert(row.key_id.clone(), self.unwrap_key(&row)?);
            }
        }
        sealed
            .iter()
            .map(|s| match keys.get(&s.key_id) {
                None => Ok(None),
                Some(c) => open_with(
                    c,
                    &s.nonce,
                    &s.ciphertext,
                    s.key_id.as_bytes(),
                    "sealed data",
                )
                .map(Some),
            })
            .collect()
    }

    /// Deletes `subject`'s data key: what was sealed under it is unreadable
    /// from now on. Answers how many keys went (0: it had none).
    pub async fn erase(&self, subject: &str) -> Result<u64, ShredError> {
        let done = sqlx::query(section(SQL, "erase"))
            .bind(subject)
            .execute(&self.db.writer)
            .await?;
        Ok(done.rows_affected())
    }
}

/// The data key of `row`, unwrapped by `master`.
fn unwrap_with(master: &MasterKey, row: &KeyRow) -> Result<Vec<u8>, ShredError> {
    let what = format!("data key {}", row.key_id);
    let (nonce, ct) = row
        .wrapped
        .split_once('.')
        .ok_or_else(|| ShredError::Corrupt(what.clone()))?;
    open_with(&master.cipher(), nonce, ct, row.key_id.as_bytes(), &what)
}

/// Rewraps every data key of `db` not yet under `to` from the masters in
/// `from`, in one transaction; answers how many it rewrapped. Keys wrapped
/// by a master in neither fail the whole rotation.
pub async fn rotate(db: &Db, from: &[MasterKey], to: &MasterKey) -> Result<u64, ShredError> {
    migrate::migrate(db, &[component()]).await?;
    let known: HashMap<&str, &MasterKey> = from.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut tx = db.writer.begin().await?;
    let rows: Vec<KeyRow> = sqlx::query_as(section(SQL, "not_under"))
        .bind(&to.id)
        .fetch_all(&mut *tx)
        .await?;
    let mut n = 0;
    for row in rows {
        let master =
            known
                .get(row.master_id.as_str())
                .ok_or_else(|| ShredError::UnknownMaster {
                    key_id: row.key_id.clone(),
                    master_id: row.master_id.clone(),
                })?;
        let key = unwrap_with(master, &row)?;
        let (nonce, ct) = seal_with(&to.cipher(), &key, row.key_id.as_bytes());
        sqlx::query(section(SQL, "rewrap"))
            .bind(&row.key_id)
            .bind(&to.id)
            .bind(format!("{nonce}.{ct}"))
            .execute(&mut *tx)
            .await?;
        n += 1;
    }
    tx.commit().await?;
    Ok(n)
}

/// How many data keys `db` holds under each master (for `keys status`).
pub async fn masters_in_use(db: &Db) -> Result<Vec<(String, i64)>, ShredError> {
    migrate::migrate(db, &[component()]).await?;
    Ok(sqlx::query_as(section(SQL, "per_master"))
        .fetch_all(&db.pool)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_key_reads_back_as_written_and_refuses_the_wrong_length() {
        let k = MasterKey::generate();
        let text = B64.encode(k.key);
        assert_eq!(MasterKey::parse(&text).unwrap().id(), k.id());
        assert_eq!(MasterKey::parse(&hex::encode(k.key)).unwrap().id(), k.id());
        assert!(MasterKey::parse(&B64.encode([0u8; 16])).is_err());
        assert!(format!("{k:?}").contains(k.id()) && !format!("{k:?}").contains(&text));
    }

    #[test]
    fn sealed_data_opens_only_with_its_key_and_its_associated_data() {
        let k = MasterKey::generate();
        let (nonce, ct) = seal_with(&k.cipher(), b"ada@example.org", b"key-1");
        assert!(!ct.contains("ada"));
        assert_eq!(
            open_with(&k.cipher(), &nonce, &ct, b"key-1", "x").unwrap(),
            b"ada@example.org"
        );
        assert!(open_with(&k.cipher(), &nonce, &ct, b"key-2", "x").is_err());
        assert!(open_with(&MasterKey::generate().cipher(), &nonce, &ct, b"key-1", "x").is_err());
    }
}
