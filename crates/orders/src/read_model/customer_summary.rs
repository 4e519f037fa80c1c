//! `customer_summary`: orders, money spent and the newest order per customer
//! (with `customer_orders`, what each order has paid).

use super::sums::{Delta, SumProjection, Sums};
use super::{missing, overflow};
use crate::aggregate::OrderEvent;
use crate::money::Cents;
use cqrs_core::EventEnvelope;
use cqrs_sql::batch::{Kind, Val};
use cqrs_sql::db::timestamp;
use cqrs_sql::dialect::{fill, section};
use cqrs_sql::ProjectionError;
use sqlx::any::AnyRow;
use sqlx::FromRow;
use std::collections::{BTreeMap, HashMap};

/// The `customer_summary` projection.
pub type CustomerSummaries = SumProjection<CustomerSums>;

/// Sums per customer.
pub struct CustomerSums;

/// What `customer_orders` keeps of one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaidOrder {
    /// Who ordered.
    pub customer_id: String,
    /// What it has paid (0 until paid, and again once cancelled).
    pub paid_cents: i64,
}

/// What one batch changes in one customer's summary.
#[derive(Debug, Default)]
pub struct CustomerDelta {
    /// Orders placed.
    pub orders: i64,
    /// Money spent (payments less refunds).
    pub spent: Cents,
    last_id: String,
    last_at: String,
}

impl Delta for CustomerDelta {
    fn count(&self) -> i64 {
        self.orders
    }
    fn money(&self) -> Cents {
        self.spent
    }
    fn extra_values(self) -> Vec<Val> {
        vec![Val::Text(self.last_id), Val::Text(self.last_at)]
    }
}

impl Sums for CustomerSums {
    const NAME: &'static str = "customer_summary";
    const MEMBERS: &'static str = "customer_orders";
    const KEY: &'static str = "customer_id";
    const MONEY: &'static str = "total_spent_cents";
    const MONEY_E18: &'static str = "total_spent_cents_e18";
    const EXTRA_COLUMNS: &'static [(&'static str, Kind)] =
        &[("last_order_id", Kind::Text), ("last_order_at", Kind::Text)];
    const MEMBER_COLUMNS: &'static [(&'static str, Kind)] =
        &[("customer_id", Kind::Text), ("paid_cents", Kind::Int)];
    type Member = PaidOrder;
    type Delta = CustomerDelta;

    fn member_from_row(row: &AnyRow) -> Result<(String, PaidOrder), ProjectionError> {
        let (order_id, customer_id, paid_cents): (String, String, i64) = FromRow::from_row(row)?;
        let order = PaidOrder {
            customer_id,
            paid_cents,
        };
        Ok((order_id, order))
    }

    fn member_values(order: &PaidOrder) -> Vec<Val> {
        vec![
            Val::Text(order.customer_id.clone()),
            Val::Int(order.paid_cents),
        ]
    }

    fn fold(
        e: &EventEnvelope,
        event: &OrderEvent,
        orders: &mut HashMap<String, PaidOrder>,
        deltas: &mut BTreeMap<String, CustomerDelta>,
    ) -> Result<bool, ProjectionError> {
        let id = &e.aggregate_id;
        // A payment replaces what was paid; a cancel refunds it.
        let now_paid = match event {
            OrderEvent::OrderCreated { customer_id, .. } => {
                let at = timestamp(e.metadata.occurred_at);
                orders.insert(
                    id.clone(),
                    PaidOrder {
                        customer_id: customer_id.clone(),
                        paid_cents: 0,
                    },
                );
                let d = deltas.entry(customer_id.clone()).or_default();
                d.orders += 1;
                if (at.as_str(), id.as_str()) > (d.last_at.as_str(), d.last_id.as_str()) {
                    d.last_id = id.clone();
                    d.last_at = at;
                }
                return Ok(true);
            }
            OrderEvent::OrderPaid { amount_cents, .. } => *amount_cents,
            OrderEvent::OrderCancelled { .. } => 0,
            _ => return Ok(false),
        };
        let order = orders.get_mut(id).ok_or_else(|| missing(e))?;
        let d = deltas.entry(order.customer_id.clone()).or_default();
        d.spent = d
            .spent
            .checked_add(Cents::from(now_paid))
            .and_then(|s| s.checked_sub(Cents::from(order.paid_cents)))
            .map_err(overflow)?;
        order.paid_cents = now_paid;
        Ok(true)
    }

    fn merge_extra_sql(t: &str) -> String {
        format!(
            "last_order_id = CASE WHEN excluded.last_order_at > {t}.last_order_at OR (excluded.last_order_at = {t}.last_order_at \
               AND excluded.last_order_id > {t}.last_order_id) THEN excluded.last_order_id ELSE {t}.last_order_id END, \
             last_order_at = CASE WHEN excluded.last_order_at > {t}.last_order_at THEN excluded.last_order_at \
               ELSE {t}.last_order_at END"
        )
    }

    fn schema(summary: &str, orders: &str) -> Vec<String> {
        vec![
            fill(
                section(super::SQL, "customer_summary_table"),
                &[("summary", summary)],
            ),
            fill(
                section(super::SQL, "customer_orders_table"),
                &[("orders", orders)],
            ),
        ]
    }
}
