//! `orders keys status|rotate`: the master key that wraps the customers'
//! data keys (personal data).

use cqrs_sql::shred::{self, MasterKey, MasterSource};
use cqrs_sql::{Db, DbOptions};
use orders_service::server::Config;
use std::path::PathBuf;

/// What to do with the master key.
#[derive(clap::Subcommand)]
pub enum Action {
    /// How many data keys each master key wraps, and which one this
    /// configuration holds.
    Status,
    /// Rewraps every data key under a new master key, in one transaction,
    /// then puts the new key where the configured one was read from (its
    /// file); running servers read it there when they meet a data key
    /// wrapped by it. With the key from the environment, set the new one
    /// there and restart.
    Rotate {
        /// The new master key (base64 of 32 bytes); made here when the file
        /// does not exist.
        #[arg(long, value_name = "PATH")]
        new_master_key_file: PathBuf,
    },
}

async fn write_db(config: &Config) -> anyhow::Result<Db> {
    let (write_url, _) = config.existing_urls()?;
    Ok(Db::connect(
        &write_url,
        &DbOptions {
            max_connections: 2,
            ..DbOptions::default()
        },
    )
    .await?)
}

/// Runs a key command against the configured write DB.
pub async fn run(action: Action, config: &Config) -> anyhow::Result<()> {
    let db = write_db(config).await?;
    let (current, source) = config.master_key()?;
    match action {
        Action::Status => {
            println!("this configuration's master key: {}", current.id());
            for (master, n) in shred::masters_in_use(&db).await? {
                let mark = if master == current.id() {
                    " (this one)"
                } else {
                    ""
                };
                println!("{n} data keys wrapped by master key {master}{mark}");
            }
        }
        Action::Rotate {
            new_master_key_file,
        } => {
            let new = match new_master_key_file.exists() {
                true => MasterKey::from_file(&new_master_key_file, false)?,
                false => {
                    let k = MasterKey::generate();
                    k.write(&new_master_key_file)?;
                    k
                }
            };
            if new.id() == current.id() {
                anyhow::bail!("the new master key is the current one ({})", new.id());
            }
            // The file first: a server that meets a key under the new master
            // finds it there; keys servers make meanwhile under the old one
            // are rewrapped by the passes below.
            if let MasterSource::File(path) = &source {
                new.write(path)?;
            }
            let mut total = 0;
            for pass in 0..3 {
                let n = shred::rotate(&db, std::slice::from_ref(&current), &new).await?;
                total += n;
                if n == 0 && pass > 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            println!(
                "rewrapped {total} data keys from master key {} to {}",
                current.id(),
                new.id()
            );
            match &source {
                MasterSource::File(path) => println!(
                    "{} now holds the new master key; keep the old one until no backup needs it",
                    path.display()
                ),
                MasterSource::Fixed => println!(
                    "set ORDERS_MASTER_KEY to the new key (in {}) and restart the servers",
                    new_master_key_file.display()
                ),
            }
        }
    }
    db.close().await;
    Ok(())
}
