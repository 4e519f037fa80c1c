//! The three SQL read models fed by the order events: `order_details`, and
//! two read models of sums (per customer, per status) that share one shape
//! (`sums.rs`); the queries are in `queries.rs`. Portable SQL: the same
//! statements run on PostgreSQL and SQLite.

/// The read models' statements (`sql/read_models.sql`).
const SQL: &str = include_str!("../../sql/read_models.sql");

mod customer_summary;
mod order_details;
mod order_stats;
mod queries;
pub mod sums;

pub use customer_summary::{CustomerDelta, CustomerSummaries, CustomerSums, PaidOrder};
pub use order_details::OrderDetails;
pub use order_stats::{Member, OrderStats, StatusDelta, StatusSums};
pub use queries::*;

use crate::aggregate::OrderEvent;
use crate::money::MoneyOverflow;
use crate::views::decode;
use cqrs_core::EventEnvelope;
use cqrs_sql::batch::{load_rows, upsert};
use cqrs_sql::{Projection, ProjectionError};
use std::sync::Arc;

/// All order projections over the live tables (a rebuild asks each for
/// itself over tables of its own: [`Projection::rebuilt_into`]).
pub fn projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(OrderDetails::new("")),
        Arc::new(CustomerSummaries::new("")),
        Arc::new(OrderStats::new("")),
    ]
}

fn decoded<'a>(
    events: &[&'a EventEnvelope],
) -> Result<Vec<(&'a EventEnvelope, OrderEvent)>, ProjectionError> {
    events.iter().map(|e| Ok((*e, decode(e)?))).collect()
}

fn ids<'a>(events: &[(&'a EventEnvelope, OrderEvent)]) -> Vec<&'a str> {
    let mut ids: Vec<&str> = events
        .iter()
        .map(|(e, _)| e.aggregate_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn overflow(e: MoneyOverflow) -> ProjectionError {
    ProjectionError::Inconsistent(e.to_string())
}

fn missing(e: &EventEnvelope) -> ProjectionError {
    ProjectionError::Inconsistent(format!(
        "{} v{}: order {} is not in the read model",
        e.event_type, e.version, e.aggregate_id
    ))
}

#[cfg(test)]
mod tests {
    use super::sums::fold_batch;
    use super::*;
    use crate::aggregate::{OrderLine, Status};
    use crate::money::Cents;
    use std::collections::HashMap;

    fn envelope(id: &str, version: i64, event: &OrderEvent) -> (EventEnvelope, OrderEvent) {
        use cqrs_core::DomainEvent;
        let e = EventEnvelope {
            position: version,
            event_id: format!("{id}-{version}"),
            aggregate_type: "order".into(),
            aggregate_id: id.into(),
            version,
            event_type: event.event_type().into(),
            schema_version: 1,
            payload: serde_json::to_value(event).unwrap(),
            metadata: cqrs_core::EventMetadata {
                command_id: "c".into(),
                occurred_at: chrono::Utc::now(),
                caller: None,
                traceparent: None,
            },
            recorded_at: chrono::Utc::now(),
        };
        (e, event.clone())
    }

    fn created(total: i64) -> OrderEvent {
        OrderEvent::OrderCreated {
            customer_id: "alice".into(),
            items: vec![OrderLine {
                sku: "s".into(),
                quantity: 1,
                unit_price_cents: total,
                line_total_cents: total,
            }],
            total_cents: total,
            shipping: None,
        }
    }

    fn paid(amount: i64) -> OrderEvent {
        OrderEvent::OrderPaid {
            amount_cents: amount,
            payment_ref: "p".into(),
        }
    }

    #[test]
    fn a_batch_folds_into_one_delta_per_customer_and_status() {
        let cancelled = OrderEvent::OrderCancelled { reason: "r".into() };
        let batch = [
            envelope("a", 1, &created(300)),
            envelope("a", 2, &paid(300)),
            envelope("b", 1, &created(50)),
            envelope("a", 3, &cancelled),
        ];
        let refs: Vec<(&EventEnvelope, OrderEvent)> =
            batch.iter().map(|(e, o)| (e, o.clone())).collect();

        let mut orders = HashMap::new();
        let (customers, touched) = fold_batch::<CustomerSums>(&refs, &mut orders).unwrap();
        let alice = &customers["alice"];
        assert_eq!(
            (alice.orders, alice.spent),
            (2, Cents::ZERO),
            "paid, then refunded"
        );
        assert_eq!(touched, ["a", "b"]);
        let refunded = PaidOrder {
            customer_id: "alice".into(),
            paid_cents: 0,
        };
        assert_eq!(orders["a"], refunded);

        let mut members = HashMap::new();
        let (stats, _) = fold_batch::<StatusSums>(&refs, &mut members).unwrap();
        let of = |s: Status| stats.get(s.as_str()).map(|d| (d.orders, d.revenue.0));
        assert_eq!(
            of(Status::Created),
            Some((1, 50)),
            "a came and went, b stays"
        );
        assert_eq!(of(Status::Paid), Some((0, 0)));
        assert_eq!(of(Status::Cancelled), Some((1, 300)));
    }

    #[test]
    fn a_payment_for_an_order_the_batch_cannot_see_is_refused() {
        let batch = [envelope("ghost", 2, &paid(1))];
        let refs: Vec<(&EventEnvelope, OrderEvent)> =
            batch.iter().map(|(e, o)| (e, o.clone())).collect();
        assert!(fold_batch::<CustomerSums>(&refs, &mut HashMap::new()).is_err());
        assert!(fold_batch::<StatusSums>(&refs, &mut HashMap::new()).is_err());
    }
}
