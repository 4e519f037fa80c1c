//! `orders verify`: do the read models equal the fold of the write-side
//! events? Tells a projector that is behind (lag) from a read model that is
//! wrong (divergence), and compares every read model in both directions.

use cqrs_sql::{ReadProgress, SqlEventStore};
use orders::read_model;
use orders::views::Views;
use orders_service::server::{Config, PROJECTOR};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// What `orders verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every read model equals the fold of the write side.
    Consistent,
    /// The projector has not applied everything yet; what it has applied agrees.
    Lagging {
        /// Events written but not yet applied.
        events_behind: i64,
        /// Orders with events not yet applied.
        orders_behind: usize,
    },
    /// A read model differs from the fold where the projector is caught up.
    Diverged,
}

/// The result of `orders verify`.
#[derive(Debug)]
pub struct VerifyReport {
    /// The verdict.
    pub verdict: Verdict,
    /// Events on the write side.
    pub events: usize,
    /// Orders in the fold.
    pub orders: usize,
    /// The first differences (for `Diverged`), or the orders behind.
    pub differences: Vec<String>,
}

impl VerifyReport {
    /// The process exit code: 0 consistent, 1 diverged, 2 lagging.
    pub fn exit_code(&self) -> i32 {
        match self.verdict {
            Verdict::Consistent => 0,
            Verdict::Diverged => 1,
            Verdict::Lagging { .. } => 2,
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let models = "order_details, customer_summary, order_stats";
        match &self.verdict {
            Verdict::Consistent => writeln!(f, "consistent: {} events, {} orders folded and compared with {models}", self.events, self.orders)?,
            Verdict::Lagging { events_behind, orders_behind } => writeln!(
                f,
                "lagging by {events_behind} events ({orders_behind} orders): the projector has not applied them yet; \
                 what it has applied agrees with the fold ({} events, {} orders). Run verify again once it catches up.",
                self.events, self.orders
            )?,
            Verdict::Diverged => writeln!(f, "DIVERGED: {models} differ from the fold of {} events ({} orders)", self.events, self.orders)?,
        }
        for d in &self.differences {
            writeln!(f, "  {d}")?;
        }
        Ok(())
    }
}

/// What one look at both sides found.
struct Comparison {
    /// Differences in any direction, in any read model.
    differences: Vec<String>,
    /// Differences that lag cannot explain.
    divergent: Vec<String>,
    /// (events behind, orders behind) with their ids.
    behind: (i64, Vec<String>),
}

fn compare(
    folded: &Views,
    loaded: &Views,
    written: &HashMap<String, i64>,
    applied: &HashMap<String, i64>,
) -> Comparison {
    let mut differences = Vec::new();
    let mut divergent = Vec::new();
    let (mut events_behind, mut orders_behind) = (0i64, Vec::new());
    for (id, v) in written {
        let a = applied.get(id).copied().unwrap_or(0);
        if a < *v {
            events_behind += v - a;
            orders_behind.push(id.clone());
        } else if a > *v {
            divergent.push(format!(
                "order {id}: the read model applied version {a}, the write side has {v}"
            ));
        }
    }
    for (id, o) in &folded.orders {
        let caught_up = applied.get(id) == written.get(id);
        match loaded.orders.get(id) {
            Some(l) if l == o => {}
            other => {
                let d = format!("order {id}: expected {o:?}, read model has {other:?}");
                if caught_up {
                    divergent.push(d.clone());
                }
                differences.push(d);
            }
        }
    }
    for id in loaded
        .orders
        .keys()
        .filter(|k| !folded.orders.contains_key(*k))
    {
        divergent.push(format!(
            "order {id} is in the read model but was never written"
        ));
    }
    for (id, c) in &folded.customers {
        if loaded.customers.get(id) != Some(c) {
            differences.push(format!(
                "customer {id}: expected {c:?}, read model has {:?}",
                loaded.customers.get(id)
            ));
        }
    }
    for id in loaded
        .customers
        .keys()
        .filter(|k| !folded.customers.contains_key(*k))
    {
        divergent.push(format!(
            "customer {id} is in the read model but has no orders"
        ));
    }
    if folded.stats != loaded.stats {
        differences.push(format!(
            "stats: expected {:?}, read model has {:?}",
            folded.stats, loaded.stats
        ));
    }
    differences.extend(divergent.iter().cloned());
    Comparison {
        differences,
        divergent,
        behind: (events_behind, orders_behind),
    }
}

/// Compares every read model with the fold of the write-side events,
/// waiting up to `wait` for the projector to catch up.
pub async fn verify(config: &Config, wait: Duration) -> anyhow::Result<VerifyReport> {
    let (write_url, read_url) = config.existing_urls()?;
    let options = cqrs_sql::DbOptions::default();
    let store = SqlEventStore::open(cqrs_sql::Db::connect(&write_url, &options).await?).await?;
    let read = cqrs_sql::Db::connect(&read_url, &options).await?;
    let progress = ReadProgress::new(read.clone(), PROJECTOR);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let events = store.all_events().await?;
        let folded = Views::fold(&events)?;
        let loaded = read_model::load_views(&read.pool).await?;
        let mut written: HashMap<String, i64> = HashMap::new();
        for e in &events {
            written.insert(e.aggregate_id.clone(), e.version);
        }
        let applied = progress.stored_versions().await?;
        let c = compare(&folded, &loaded, &written, &applied);
        let done = c.differences.is_empty() && c.behind.0 == 0;
        if done || tokio::time::Instant::now() >= deadline {
            let (verdict, mut differences) = if done {
                (Verdict::Consistent, Vec::new())
            } else if !c.divergent.is_empty() || c.behind.0 == 0 {
                (Verdict::Diverged, c.differences)
            } else {
                let (events_behind, orders) = c.behind;
                let listed = orders
                    .iter()
                    .take(10)
                    .map(|id| format!("order {id} not yet applied in full"))
                    .collect();
                (
                    Verdict::Lagging {
                        events_behind,
                        orders_behind: orders.len(),
                    },
                    listed,
                )
            };
            differences.truncate(10);
            return Ok(VerifyReport {
                verdict,
                events: events.len(),
                orders: folded.orders.len(),
                differences,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(pairs: &[(&str, i64)]) -> HashMap<String, i64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn an_unapplied_tail_is_lag_not_divergence() {
        let views = Views::default();
        let c = compare(
            &views,
            &views,
            &versions(&[("a", 3)]),
            &versions(&[("a", 2)]),
        );
        assert_eq!(c.behind.0, 1);
        assert!(c.divergent.is_empty());
    }

    #[test]
    fn a_read_model_ahead_of_the_write_side_diverged() {
        let views = Views::default();
        let c = compare(
            &views,
            &views,
            &versions(&[("a", 1)]),
            &versions(&[("a", 2)]),
        );
        assert_eq!(c.divergent.len(), 1);
    }
}
