//! `order_details`: one row per order, what `GET /orders/{id}` returns.

use super::queries::{order_from_row, ORDER_COLUMNS};
use super::SQL;
use super::{decoded, ids, load_rows, missing, upsert};
use crate::aggregate::{LineItem, OrderEvent, Status};
use crate::shipping::{erased, ShippingRecord};
use crate::stock::next_stock;
use crate::views::{target_status, OrderView};
use cqrs_core::EventEnvelope;
use cqrs_sql::batch::{Kind, Val};
use cqrs_sql::db::timestamp;
use cqrs_sql::dialect::{fill, section};
use cqrs_sql::read::rebuild::{BulkFold, BulkRows};
use cqrs_sql::{AddedColumn, Migration, Projection, ProjectionError};
use futures::future::BoxFuture;
use sqlx::AnyConnection;
use std::collections::HashMap;
use std::sync::Arc;

/// `order_details`: one row per order, what `GET /orders/{id}` returns.
pub struct OrderDetails {
    table: String,
}

impl OrderDetails {
    /// Over `order_details{suffix}`.
    pub fn new(suffix: &str) -> Self {
        Self {
            table: format!("order_details{suffix}"),
        }
    }

    async fn apply_events(
        &self,
        tx: &mut AnyConnection,
        events: &[&EventEnvelope],
    ) -> Result<(), ProjectionError> {
        let events = decoded(events)?;
        let mut rows: HashMap<String, OrderView> = HashMap::new();
        for r in load_rows(tx, ORDER_COLUMNS, &self.table, "order_id", &ids(&events)).await? {
            let o = order_from_row(&r).map_err(|e| ProjectionError::Inconsistent(e.to_string()))?;
            rows.insert(o.order_id.clone(), o);
        }
        let mut changed: Vec<String> = Vec::new();
        for (e, event) in &events {
            fold_order(&mut rows, e, event)?;
            changed.push(e.aggregate_id.clone());
        }
        changed.sort_unstable();
        changed.dedup();
        let out = changed
            .iter()
            .filter_map(|id| rows.remove(id))
            .map(order_row)
            .collect::<Result<Vec<_>, _>>()?;
        upsert(
            tx,
            &self.table,
            &ORDER_DETAILS_COLS,
            "order_id",
            ORDER_DETAILS_UPDATE,
            &out,
        )
        .await?;
        Ok(())
    }
}

/// The columns of `order_details` as the upsert writes them.
const ORDER_DETAILS_COLS: [(&str, Kind); 14] = [
    ("order_id", Kind::Text),
    ("customer_id", Kind::Text),
    ("status", Kind::Text),
    ("items", Kind::Text),
    ("total_cents", Kind::Int),
    ("version", Kind::Int),
    ("created_at", Kind::Text),
    ("updated_at", Kind::Text),
    ("payment_ref", Kind::Text),
    ("carrier", Kind::Text),
    ("tracking_number", Kind::Text),
    ("cancel_reason", Kind::Text),
    ("stock", Kind::Text),
    ("shipping", Kind::Text),
];

/// What an existing `order_details` row takes from the upsert.
const ORDER_DETAILS_UPDATE: &str = "customer_id = excluded.customer_id, status = excluded.status, \
    items = excluded.items, total_cents = excluded.total_cents, version = excluded.version, \
    created_at = excluded.created_at, updated_at = excluded.updated_at, payment_ref = excluded.payment_ref, \
    carrier = excluded.carrier, tracking_number = excluded.tracking_number, cancel_reason = excluded.cancel_reason, \
    stock = excluded.stock, shipping = excluded.shipping";

/// One event folded into the order rows it needs (a creation adds the row;
/// any other event needs it already there).
fn fold_order(
    rows: &mut HashMap<String, OrderView>,
    e: &EventEnvelope,
    event: &OrderEvent,
) -> Result<(), ProjectionError> {
    let at = timestamp(e.metadata.occurred_at);
    let id = &e.aggregate_id;
    if let OrderEvent::OrderCreated {
        customer_id,
        items,
        total_cents,
        shipping,
    } = event
    {
        rows.insert(
            id.clone(),
            OrderView {
                order_id: id.clone(),
                customer_id: customer_id.clone(),
                status: Status::Created,
                items: items.iter().map(LineItem::from).collect(),
                total_cents: *total_cents,
                version: e.version,
                created_at: at.clone(),
                updated_at: at,
                payment_ref: None,
                carrier: None,
                tracking_number: None,
                cancel_reason: None,
                stock: None,
                shipping: None,
                sealed_shipping: shipping.clone().map(ShippingRecord::Sealed),
            },
        );
        return Ok(());
    }
    let o = rows.get_mut(id).ok_or_else(|| missing(e))?;
    match event {
        OrderEvent::OrderPaid { payment_ref, .. } => o.payment_ref = Some(payment_ref.clone()),
        OrderEvent::OrderShipped {
            carrier,
            tracking_number,
        } => {
            o.carrier = Some(carrier.clone());
            o.tracking_number = Some(tracking_number.clone());
        }
        OrderEvent::OrderCancelled { reason } => o.cancel_reason = Some(reason.clone()),
        // The ciphertext goes: only "erased" stays.
        OrderEvent::ShippingErased {} => o.sealed_shipping = erased(o.sealed_shipping.take()),
        OrderEvent::OrderDelivered {}
        | OrderEvent::OrderCreated { .. }
        | OrderEvent::StockReservationRequested { .. }
        | OrderEvent::StockReserved {} => {}
    }
    if let Some(status) = target_status(event) {
        o.status = status;
    }
    o.stock = next_stock(o.stock, event);
    o.version = e.version;
    o.updated_at = at;
    Ok(())
}

/// An order as the upsert's row, in [`ORDER_DETAILS_COLS`] order.
fn order_row(o: OrderView) -> Result<Vec<Val>, ProjectionError> {
    let items = serde_json::to_string(&o.items)
        .map_err(|e| ProjectionError::Inconsistent(e.to_string()))?;
    let shipping = o
        .sealed_shipping
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| ProjectionError::Inconsistent(e.to_string()))?;
    Ok(vec![
        Val::Text(o.order_id),
        Val::Text(o.customer_id),
        Val::Text(o.status.as_str().to_owned()),
        Val::Text(items),
        Val::Int(o.total_cents),
        Val::Int(o.version),
        Val::Text(o.created_at),
        Val::Text(o.updated_at),
        Val::OptText(o.payment_ref),
        Val::OptText(o.carrier),
        Val::OptText(o.tracking_number),
        Val::OptText(o.cancel_reason),
        Val::OptText(o.stock.map(|s| s.as_str().to_owned())),
        Val::OptText(shipping),
    ])
}

impl Projection for OrderDetails {
    fn name(&self) -> &'static str {
        "order_details"
    }
    // 2: the stock of cancelled and shipped orders (it read `pending` or
    // `reserved` after them).
    fn version(&self) -> i64 {
        2
    }
    fn tables(&self) -> Vec<String> {
        vec![self.table.clone()]
    }
    fn migrations(&self, tag: &str) -> Vec<Migration> {
        let t = &self.table;
        let named = |n: &str| fill(section(SQL, n), &[("t", t), ("tag", tag)]);
        vec![
            Migration::new(1, "orders and their indexes").sql(
                [
                    "order_details_table",
                    "order_details_by_customer",
                    "order_details_by_status",
                    "order_details_by_customer_status",
                ]
                .map(named),
            ),
            Migration::new(2, "stock status").add_column(AddedColumn {
                table: t.clone(),
                column: "stock",
                definition: "TEXT",
                backfill: None,
            }),
            // Orders created before it had no shipping details: NULL is
            // what their rows mean, no rebuild needed.
            Migration::new(3, "shipping details (sealed)").add_column(AddedColumn {
                table: t.clone(),
                column: "shipping",
                definition: "TEXT",
                backfill: None,
            }),
        ]
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.apply_events(tx, events))
    }
    fn rebuilt_into(&self, suffix: &str) -> Option<Arc<dyn Projection>> {
        Some(Arc::new(OrderDetails::new(suffix)))
    }
    fn bulk(&self) -> Option<Box<dyn BulkFold>> {
        Some(Box::new(OrderFold {
            table: self.table.clone(),
            rows: HashMap::new(),
        }))
    }
}

/// A rebuild's fold: every order's row in memory.
struct OrderFold {
    table: String,
    rows: HashMap<String, OrderView>,
}

impl BulkFold for OrderFold {
    fn fold(&mut self, events: &[&EventEnvelope]) -> Result<(), ProjectionError> {
        for (e, event) in decoded(events)? {
            fold_order(&mut self.rows, e, &event)?;
        }
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<Vec<BulkRows>, ProjectionError> {
        let rows = self
            .rows
            .into_values()
            .map(order_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(vec![BulkRows {
            table: self.table,
            columns: ORDER_DETAILS_COLS.to_vec(),
            rows,
        }])
    }
}
