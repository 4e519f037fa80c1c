//! Where the master key of personal data comes from.

use super::Config;

impl Config {
    /// The master key for personal data and where it comes from: the
    /// environment (or flag), the file given, or `master.key` in the data
    /// dir (made when missing).
    pub fn master_key(
        &self,
    ) -> Result<
        (cqrs_sql::shred::MasterKey, cqrs_sql::shred::MasterSource),
        cqrs_sql::shred::ShredError,
    > {
        use cqrs_sql::shred::{MasterKey, MasterSource};
        if let Some(k) = &self.master_key {
            return Ok((MasterKey::parse(k.expose())?, MasterSource::Fixed));
        }
        let (path, create) = match &self.master_key_file {
            Some(p) => (p.clone(), false),
            None => {
                std::fs::create_dir_all(&self.data_dir).map_err(|e| {
                    cqrs_sql::shred::ShredError::Master(format!("{}: {e}", self.data_dir.display()))
                })?;
                (self.data_dir.join("master.key"), true)
            }
        };
        let key = MasterKey::from_file(&path, create)?;
        Ok((key, MasterSource::File(path)))
    }
}
