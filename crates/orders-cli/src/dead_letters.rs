//! `orders dead-letters list|retry|discard`.

use cqrs_sql::read::dead_letters;
use cqrs_sql::{Db, DbOptions, ProjectorConfig, ProjectorRunner};
use orders_service::server::{Config, PROJECTOR};

/// What to do with dead letters.
#[derive(clap::Subcommand)]
pub enum Action {
    /// Open dead letters (and parked records), newest first.
    List {
        /// Include retried and discarded ones.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-apply the open letters of an aggregate in version order, as far as they fit.
    Retry {
        /// The aggregate (order id).
        aggregate_id: String,
    },
    /// Drop a dead letter (by id) or every open letter of an aggregate.
    Discard {
        /// Dead-letter id or aggregate id.
        id: String,
    },
}

async fn read_db(config: &Config) -> anyhow::Result<Db> {
    let (_, read_url) = config.existing_urls()?;
    let db = Db::connect(
        &read_url,
        &DbOptions {
            max_connections: 2,
            ..DbOptions::default()
        },
    )
    .await?;
    cqrs_sql::read::runner::ensure_schema(&db).await?;
    Ok(db)
}

/// Runs a dead-letter command against the configured read DB.
pub async fn run(action: Action, config: &Config) -> anyhow::Result<()> {
    let db = read_db(config).await?;
    match action {
        Action::List { all, json } => {
            let letters = dead_letters::list(&db, PROJECTOR, all).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                println!("no dead letters");
            } else {
                let mut t = comfy_table::Table::new();
                t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
                t.set_header(vec![
                    "id",
                    "status",
                    "aggregate",
                    "version",
                    "type",
                    "published as",
                    "reason",
                ]);
                for l in letters {
                    t.add_row(vec![
                        l.id,
                        l.status,
                        l.aggregate_id.unwrap_or_default(),
                        l.version.map(|v| v.to_string()).unwrap_or_default(),
                        l.event_type.unwrap_or_default(),
                        l.published_as,
                        l.reason,
                    ]);
                }
                println!("{t}");
            }
        }
        Action::Retry { aggregate_id } => {
            let runner = ProjectorRunner::new(
                db,
                ProjectorConfig {
                    name: PROJECTOR.into(),
                    ..ProjectorConfig::default()
                },
                orders::read_model::projections(),
            )
            .await?;
            let (applied, left) = runner.retry_dead_letters(&aggregate_id).await?;
            println!("{aggregate_id}: {applied} applied, {left} still open");
            if left > 0 {
                anyhow::bail!("{left} letters of {aggregate_id} still do not apply; see `orders dead-letters list`");
            }
        }
        Action::Discard { id } => {
            let n = dead_letters::discard(&db, PROJECTOR, &id).await?;
            println!("{n} discarded");
            if n == 0 {
                anyhow::bail!("no open dead letter or aggregate {id:?}");
            }
        }
    }
    Ok(())
}
