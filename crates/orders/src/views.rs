//! The read models as plain values, and their fold over the write-side
//! events: what `verify` and the property tests compare the read DB against.
//! The same types are the query answers.

use crate::aggregate::{LineItem, OrderEvent, OrderLine, Status};
use crate::money::{Cents, MoneyOverflow};
use crate::stock::{next_stock, StockStatus};
use cqrs_core::EventEnvelope;
use cqrs_sql::db::timestamp;
use cqrs_sql::ProjectionError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One order as `GET /orders/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderView {
    /// The order's id (a UUID).
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// Where it is.
    pub status: Status,
    /// The lines ordered.
    pub items: Vec<LineItem>,
    /// Total in cents.
    pub total_cents: i64,
    /// Aggregate version the view reflects.
    pub version: i64,
    /// When it was created.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// Payment reference once paid.
    pub payment_ref: Option<String>,
    /// Carrier once shipped.
    pub carrier: Option<String>,
    /// Tracking number once shipped.
    pub tracking_number: Option<String>,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
    /// Its tracked lines' stock: `pending` until the order saga reserved
    /// them (it cannot ship before), then `reserved`, `dispatched` once
    /// shipped; `out_of_stock` when the saga cancelled it for want of
    /// stock, `cancelled` when it was cancelled otherwise (it holds none);
    /// absent when the inventory tracks none of its SKUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock: Option<StockStatus>,
    /// Its shipping details, to its customer and to the warehouse and
    /// operators (absent for anyone else, and when none were given);
    /// `{"erased": true}` once its customer's personal data was erased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping: Option<crate::shipping::ShippingView>,
    /// Its shipping details as the read model keeps them: sealed, or erased.
    /// Never serialized: the API opens them for those who may see them.
    #[serde(skip)]
    pub sealed_shipping: Option<crate::shipping::ShippingRecord>,
}

/// Per-customer summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CustomerSummary {
    /// The customer.
    pub customer_id: String,
    /// Orders created.
    pub order_count: i64,
    /// Paid and not cancelled, in cents (exact; may exceed 2^63).
    pub total_spent_cents: Cents,
    /// The newest order (by creation time, then id).
    pub last_order_id: String,
    /// When it was created.
    pub last_order_at: String,
}

/// Orders currently in one status and their total value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusStats {
    /// Orders in this status.
    pub order_count: i64,
    /// Sum of their totals in cents (exact; may exceed 2^63).
    pub revenue_cents: Cents,
}

/// All three read models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Views {
    /// Order details by id.
    pub orders: BTreeMap<String, OrderView>,
    /// Summaries by customer.
    pub customers: BTreeMap<String, CustomerSummary>,
    /// Stats for every status.
    pub stats: BTreeMap<Status, StatusStats>,
}

impl Default for Views {
    fn default() -> Self {
        Self {
            orders: BTreeMap::new(),
            customers: BTreeMap::new(),
            stats: Status::all().map(|s| (s, StatusStats::default())).collect(),
        }
    }
}

fn overflow(e: MoneyOverflow) -> ProjectionError {
    ProjectionError::Inconsistent(e.to_string())
}

/// Decodes an envelope into an order event.
pub fn decode(envelope: &EventEnvelope) -> Result<OrderEvent, ProjectionError> {
    envelope.decode().map_err(|source| ProjectionError::Decode {
        event_type: envelope.event_type.clone(),
        schema_version: envelope.schema_version,
        source,
    })
}

/// The status an event moves an order to (None: its status stays).
pub fn target_status(event: &OrderEvent) -> Option<Status> {
    match event {
        OrderEvent::OrderCreated { .. } => Some(Status::Created),
        OrderEvent::OrderPaid { .. } => Some(Status::Paid),
        OrderEvent::OrderShipped { .. } => Some(Status::Shipped),
        OrderEvent::OrderDelivered {} => Some(Status::Delivered),
        OrderEvent::OrderCancelled { .. } => Some(Status::Cancelled),
        OrderEvent::StockReservationRequested { .. }
        | OrderEvent::StockReserved {}
        | OrderEvent::ShippingErased {} => None,
    }
}

impl Views {
    /// Folds all events (any interleaving of aggregates gives the same result).
    pub fn fold<'a>(
        events: impl IntoIterator<Item = &'a EventEnvelope>,
    ) -> Result<Views, ProjectionError> {
        let mut v = Views::default();
        for e in events {
            v.apply(e)?;
        }
        Ok(v)
    }

    /// Applies one event to all three views.
    pub fn apply(&mut self, envelope: &EventEnvelope) -> Result<(), ProjectionError> {
        let event = decode(envelope)?;
        let at = timestamp(envelope.metadata.occurred_at);
        match &event {
            OrderEvent::OrderCreated {
                customer_id,
                items,
                total_cents,
                shipping,
            } => {
                self.created(envelope, customer_id, items, *total_cents, at)?;
                if let (Some(o), Some(s)) = (self.orders.get_mut(&envelope.aggregate_id), shipping)
                {
                    o.sealed_shipping = Some(crate::shipping::ShippingRecord::Sealed(s.clone()));
                }
                Ok(())
            }
            _ => self.moved(envelope, &event, at),
        }
    }

    /// A new order: its view, its customer's count, the created stats.
    fn created(
        &mut self,
        envelope: &EventEnvelope,
        customer_id: &str,
        items: &[OrderLine],
        total_cents: i64,
        at: String,
    ) -> Result<(), ProjectionError> {
        let id = &envelope.aggregate_id;
        self.orders.insert(
            id.clone(),
            OrderView {
                order_id: id.clone(),
                customer_id: customer_id.to_owned(),
                status: Status::Created,
                items: items.iter().map(LineItem::from).collect(),
                total_cents,
                version: envelope.version,
                created_at: at.clone(),
                updated_at: at.clone(),
                payment_ref: None,
                carrier: None,
                tracking_number: None,
                cancel_reason: None,
                stock: None,
                shipping: None,
                sealed_shipping: None,
            },
        );
        let c = self
            .customers
            .entry(customer_id.to_owned())
            .or_insert_with(|| CustomerSummary {
                customer_id: customer_id.to_owned(),
                order_count: 0,
                total_spent_cents: Cents::ZERO,
                last_order_id: id.clone(),
                last_order_at: at.clone(),
            });
        c.order_count += 1;
        if (at.as_str(), id.as_str()) > (c.last_order_at.as_str(), c.last_order_id.as_str()) {
            c.last_order_id = id.clone();
            c.last_order_at = at;
        }
        self.count_in(Status::Created, 1, Cents::from(total_cents))
    }

    /// An existing order changes status: its view, what its customer spent,
    /// and the stats of the status it leaves and the one it joins.
    fn moved(
        &mut self,
        envelope: &EventEnvelope,
        event: &OrderEvent,
        at: String,
    ) -> Result<(), ProjectionError> {
        let id = &envelope.aggregate_id;
        let missing = || {
            ProjectionError::Inconsistent(format!("{} for unknown order {id}", envelope.event_type))
        };
        let order = self.orders.get_mut(id).ok_or_else(missing)?;
        let customer = self
            .customers
            .get_mut(&order.customer_id)
            .ok_or_else(missing)?;
        let from = order.status;
        match event {
            OrderEvent::OrderPaid {
                amount_cents,
                payment_ref,
            } => {
                order.payment_ref = Some(payment_ref.clone());
                customer.total_spent_cents = customer
                    .total_spent_cents
                    .checked_add(Cents::from(*amount_cents))
                    .map_err(overflow)?;
            }
            OrderEvent::OrderShipped {
                carrier,
                tracking_number,
            } => {
                order.carrier = Some(carrier.clone());
                order.tracking_number = Some(tracking_number.clone());
            }
            OrderEvent::OrderCancelled { reason } => {
                order.cancel_reason = Some(reason.clone());
                if from == Status::Paid {
                    customer.total_spent_cents = customer
                        .total_spent_cents
                        .checked_sub(Cents::from(order.total_cents))
                        .map_err(overflow)?;
                }
            }
            OrderEvent::ShippingErased {} => {
                order.sealed_shipping = crate::shipping::erased(order.sealed_shipping.take());
            }
            OrderEvent::OrderDelivered {}
            | OrderEvent::OrderCreated { .. }
            | OrderEvent::StockReservationRequested { .. }
            | OrderEvent::StockReserved {} => {}
        }
        order.stock = next_stock(order.stock, event);
        order.version = envelope.version;
        order.updated_at = at;
        let Some(to) = target_status(event) else {
            return Ok(());
        };
        order.status = to;
        let total = Cents::from(order.total_cents);
        self.count_in(from, -1, Cents::ZERO.checked_sub(total).map_err(overflow)?)?;
        self.count_in(to, 1, total)
    }

    /// Adds `orders` and `cents` to a status's stats.
    fn count_in(
        &mut self,
        status: Status,
        orders: i64,
        cents: Cents,
    ) -> Result<(), ProjectionError> {
        let s = self.stats.entry(status).or_default();
        s.order_count += orders;
        s.revenue_cents = s.revenue_cents.checked_add(cents).map_err(overflow)?;
        Ok(())
    }
}
