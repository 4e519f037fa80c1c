//! `orders rebuild` (alias `replay`): builds read models from history
//! beside the live ones (the orders' from their log or topic, the
//! inventory's from its own), catches up with the live projectors, and
//! swaps them in atomically while queries keep being served.

use anyhow::{bail, Context};
use cqrs_sql::read::rebuild::{RebuildStatus, DEFAULT_BATCH};
use cqrs_sql::read::versions;
use cqrs_sql::{Db, DbOptions, Projection, SqlEventStore};
use indicatif::{ProgressBar, ProgressStyle};
use orders_service::server::rebuilds::{self, HistoryOf, Side};
use orders_service::server::{Config, INVENTORY_PROJECTOR, PROJECTOR};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Options of `orders rebuild`.
#[derive(clap::Args, Clone)]
pub struct RebuildArgs {
    /// Which read models: `changed` (those whose version this build
    /// raised), `all`, or names (order_details, customer_summary,
    /// order_stats, inventory_stock), comma-separated.
    #[arg(long, default_value = "changed", value_delimiter = ',')]
    pub projection: Vec<String>,
    /// Events per fold step and per catch-up transaction.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
}

/// `orders rebuild`.
pub async fn run(args: RebuildArgs, config: &Config) -> anyhow::Result<()> {
    let (write_url, read_url) = config.existing_urls()?;
    let options = DbOptions {
        max_connections: 6,
        ..DbOptions::default()
    };
    let read = Db::connect(&read_url, &options).await?;
    let sides = [
        (PROJECTOR, orders::read_model::projections()),
        (INVENTORY_PROJECTOR, inventory::read_model::projections()),
    ];
    let known: Vec<&str> = sides
        .iter()
        .flat_map(|(_, ps)| ps.iter().map(|p| p.name()))
        .collect();
    if let Some(bad) = args
        .projection
        .iter()
        .find(|n| !known.contains(&n.as_str()) && *n != "all" && *n != "changed")
    {
        bail!(
            "no read model {bad:?}: use changed, all, or {}",
            known.join(", ")
        );
    }
    let mut rebuilt = 0;
    for (projector, projections) in sides {
        cqrs_sql::read::runner::ensure_tables(&read, &projections).await?;
        let stale = versions::reconcile(&read, projector, &projections).await?;
        let chosen: Vec<Arc<dyn Projection>> = projections
            .iter()
            .filter(|p| {
                args.projection.iter().any(|n| {
                    n == "all"
                        || n == p.name()
                        || (n == "changed" && stale.iter().any(|s| s.projection == p.name()))
                })
            })
            .cloned()
            .collect();
        if chosen.is_empty() {
            continue;
        }
        let history = match &config.kafka {
            Some(k) if projector == PROJECTOR => HistoryOf::Topic(k.config()),
            Some(k) => HistoryOf::Topic(k.inventory().config()),
            None => {
                // The inventory's database, where derived from the write
                // DB's, is made when missing, as `serve` makes it.
                let (url, derived) = match projector {
                    PROJECTOR => (write_url.clone(), false),
                    _ => config.inventory_url(),
                };
                let options = DbOptions {
                    create_missing: derived || options.create_missing,
                    ..options.clone()
                };
                HistoryOf::Log(SqlEventStore::open(Db::connect(&url, &options).await?).await?)
            }
        };
        let side = Side {
            projector,
            projections,
            history,
        };
        rebuild_side(&read, &side, &chosen, args.batch).await?;
        rebuilt += chosen.len();
    }
    if rebuilt == 0 {
        println!(
            "every read model is at the version this build declares: nothing to rebuild \
             (name one with --projection to rebuild it anyway)"
        );
    }
    Ok(())
}

async fn rebuild_side(
    read: &Db,
    side: &Side,
    chosen: &[Arc<dyn Projection>],
    batch: usize,
) -> anyhow::Result<()> {
    let names: Vec<String> = chosen
        .iter()
        .map(|p| format!("{} v{}", p.name(), p.version()))
        .collect();
    let stop = CancellationToken::new();
    let ctrl_c = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            ctrl_c.cancel();
        }
    });
    let (status_tx, status_rx) = tokio::sync::oneshot::channel::<Arc<RebuildStatus>>();
    let bar = tokio::spawn(show_progress(status_rx, names.join(", ")));
    let result = rebuilds::rebuild(read, side, chosen, batch, None, stop, |s| {
        let _ = status_tx.send(s);
    })
    .await;
    bar.abort();
    let _ = bar.await;
    let report = match result {
        Ok(r) => r,
        Err(cqrs_sql::read::rebuild::RebuildError::Busy { owner, age_ms, .. }) => bail!(
            "{owner} is building {}'s read models now (heartbeat {age_ms} ms ago): it swaps them in \
             when it has caught up; `orders rebuild` again afterwards if you need another",
            side.projector
        ),
        Err(e) => return Err(e).context("the rebuild failed; the live read models keep serving"),
    };
    println!(
        "rebuilt {} events into {} in {:.1} s ({:.0} events/s; {} fold {:.1} s, cutover {:.0} ms); swapped in",
        report.events,
        names.join(", "),
        report.secs,
        report.events as f64 / report.secs.max(1e-9),
        if report.bulk { "bulk" } else { "batched" },
        report.fold_secs,
        report.cutover_secs * 1e3
    );
    Ok(())
}

/// A bar with the rate and an ETA, from the build's status.
async fn show_progress(status: tokio::sync::oneshot::Receiver<Arc<RebuildStatus>>, what: String) {
    let Ok(status) = status.await else { return };
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} events {per_sec} {msg} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(format!("rebuild {what}"));
    loop {
        pb.set_length(status.total().max(status.done()).max(0) as u64);
        pb.set_position(status.done().max(0) as u64);
        pb.set_message(status.phase());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
