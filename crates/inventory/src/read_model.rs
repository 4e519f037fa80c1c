//! The inventory read model: one row per tracked SKU (on hand, reserved,
//! available), fed by the stock events, and the queries over it.

use crate::stock::{Stock, StockEvent};
use cqrs_core::EventEnvelope;
use cqrs_sql::batch::{load_rows, upsert, Kind, Val};
use cqrs_sql::db::timestamp;
use cqrs_sql::dialect::{fill, section};
use cqrs_sql::read::rebuild::{BulkFold, BulkRows};
use cqrs_sql::{Migration, Projection, ProjectionError};
use futures::future::BoxFuture;
use serde::Serialize;
use sqlx::{AnyConnection, AnyPool, FromRow};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Stock of one SKU, as queries answer it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow, utoipa::ToSchema)]
pub struct StockView {
    /// The SKU.
    pub sku: String,
    /// Units on hand (reserved ones included).
    pub on_hand: i64,
    /// Units held for orders.
    pub reserved: i64,
    /// Units that can still be reserved: on hand - reserved.
    pub available: i64,
    /// The stock aggregate's version.
    pub version: i64,
    /// When it last changed (RFC 3339).
    pub updated_at: String,
}

/// The projection over `inventory_stock`.
pub struct InventoryStock {
    table: String,
}

impl InventoryStock {
    /// Over `inventory_stock{suffix}` (a rebuild builds its own tables).
    pub fn new(suffix: &str) -> Self {
        Self {
            table: format!("{TABLE}{suffix}"),
        }
    }
}

/// The projections of the inventory.
pub fn projections() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(InventoryStock::new(""))]
}

const TABLE: &str = "inventory_stock";
/// The read model's statements (`sql/stock.sql`).
const SQL: &str = include_str!("../sql/stock.sql");
const COLUMNS: &str =
    "sku, on_hand, reserved, on_hand - reserved AS available, version, updated_at";

impl InventoryStock {
    async fn apply_events(
        &self,
        tx: &mut AnyConnection,
        events: &[&EventEnvelope],
    ) -> Result<(), ProjectionError> {
        let mut skus: Vec<&str> = events
            .iter()
            .filter_map(|e| Stock::sku_of(&e.aggregate_id))
            .collect();
        skus.sort_unstable();
        skus.dedup();
        let mut rows: BTreeMap<String, StockView> = BTreeMap::new();
        for row in load_rows(tx, COLUMNS, &self.table, "sku", &skus).await? {
            let v = StockView::from_row(&row)?;
            rows.insert(v.sku.clone(), v);
        }
        for e in events {
            fold_stock(&mut rows, e)?;
        }
        let values: Vec<Vec<Val>> = rows.into_values().map(stock_row).collect();
        let update = "on_hand = excluded.on_hand, reserved = excluded.reserved, \
                      version = excluded.version, updated_at = excluded.updated_at";
        upsert(tx, &self.table, &STOCK_COLUMNS, "sku", update, &values).await?;
        Ok(())
    }
}

/// The columns of `inventory_stock` as it is written.
const STOCK_COLUMNS: [(&str, Kind); 5] = [
    ("sku", Kind::Text),
    ("on_hand", Kind::Int),
    ("reserved", Kind::Int),
    ("version", Kind::Int),
    ("updated_at", Kind::Text),
];

fn stock_row(r: StockView) -> Vec<Val> {
    vec![
        Val::Text(r.sku),
        Val::Int(r.on_hand),
        Val::Int(r.reserved),
        Val::Int(r.version),
        Val::Text(r.updated_at),
    ]
}

/// One stock event folded into the rows (a SKU's first event adds its row).
fn fold_stock(
    rows: &mut BTreeMap<String, StockView>,
    e: &EventEnvelope,
) -> Result<(), ProjectionError> {
    let sku = Stock::sku_of(&e.aggregate_id).ok_or_else(|| {
        ProjectionError::Inconsistent(format!("{} is not a stock id", e.aggregate_id))
    })?;
    let event: StockEvent = e.decode().map_err(|source| ProjectionError::Decode {
        event_type: e.event_type.clone(),
        schema_version: e.schema_version,
        source,
    })?;
    let row = rows.entry(sku.to_owned()).or_insert_with(|| StockView {
        sku: sku.to_owned(),
        on_hand: 0,
        reserved: 0,
        available: 0,
        version: 0,
        updated_at: String::new(),
    });
    match event {
        StockEvent::StockAdded { quantity } => row.on_hand += quantity,
        StockEvent::StockReserved { quantity, .. } => row.reserved += quantity,
        StockEvent::ReservationReleased { quantity, .. } => row.reserved -= quantity,
        StockEvent::ReservationRejected { .. } => {}
        StockEvent::StockDispatched { quantity, .. } => {
            row.on_hand -= quantity;
            row.reserved -= quantity;
        }
    }
    row.version = e.version;
    row.updated_at = timestamp(e.recorded_at);
    Ok(())
}

/// The rebuild's fold: every SKU's row in memory.
struct StockFold {
    table: String,
    rows: BTreeMap<String, StockView>,
}

impl BulkFold for StockFold {
    fn fold(&mut self, events: &[&EventEnvelope]) -> Result<(), ProjectionError> {
        events
            .iter()
            .try_for_each(|e| fold_stock(&mut self.rows, e))
    }
    fn finish(self: Box<Self>) -> Result<Vec<BulkRows>, ProjectionError> {
        Ok(vec![BulkRows {
            table: self.table,
            columns: STOCK_COLUMNS.to_vec(),
            rows: self.rows.into_values().map(stock_row).collect(),
        }])
    }
}

impl Projection for InventoryStock {
    fn name(&self) -> &'static str {
        "inventory_stock"
    }
    fn tables(&self) -> Vec<String> {
        vec![self.table.clone()]
    }
    fn migrations(&self, _index_tag: &str) -> Vec<Migration> {
        let table = fill(section(SQL, "table"), &[("t", &self.table)]);
        vec![Migration::new(1, "stock per SKU").sql([table])]
    }
    fn rebuilt_into(&self, suffix: &str) -> Option<Arc<dyn Projection>> {
        Some(Arc::new(InventoryStock::new(suffix)))
    }
    fn bulk(&self) -> Option<Box<dyn BulkFold>> {
        Some(Box::new(StockFold {
            table: self.table.clone(),
            rows: BTreeMap::new(),
        }))
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.apply_events(tx, events))
    }
}

/// One SKU's stock, if it is tracked.
pub async fn stock(pool: &AnyPool, sku: &str) -> Result<Option<StockView>, sqlx::Error> {
    let row = sqlx::query(&fill(section(SQL, "by_sku"), &[("columns", COLUMNS)]))
        .bind(sku)
        .fetch_optional(pool)
        .await?;
    row.map(|r| StockView::from_row(&r)).transpose()
}

/// Tracked SKUs in SKU order, `limit` of them after `after`.
pub async fn list(
    pool: &AnyPool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<StockView>, sqlx::Error> {
    let rows = sqlx::query(&fill(section(SQL, "list"), &[("columns", COLUMNS)]))
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(StockView::from_row).collect()
}
