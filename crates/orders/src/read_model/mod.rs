//! The three SQL read models fed by the order events (projections here, the
//! queries in `queries.rs`). Portable SQL: the same statements run on
//! PostgreSQL and SQLite.

mod queries;

pub use queries::*;

use crate::aggregate::{OrderEvent, Status};
use crate::money::{add_parts_sql, carry_sql, Cents, MoneyOverflow};
use crate::views::{decode, target_status, OrderView};
use cqrs_core::EventEnvelope;
use cqrs_sql::batch::{self, Kind, Val};
use cqrs_sql::db::{timestamp, Backend};
use cqrs_sql::{AddedColumn, Projection, ProjectionError};
use futures::future::BoxFuture;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, FromRow};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// All order projections over the live tables.
pub fn projections() -> Vec<Arc<dyn Projection>> {
    projections_into("")
}

/// All order projections writing to tables named with `suffix` (replays build
/// fresh tables this way, then swap them in).
pub fn projections_into(suffix: &str) -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(OrderDetails::new(suffix)),
        Arc::new(CustomerSummaries::new(suffix)),
        Arc::new(OrderStats::new(suffix)),
    ]
}

/// The projection called `name` ("order_details", "customer_summary", "order_stats").
pub fn projection_named(name: &str, suffix: &str) -> Option<Arc<dyn Projection>> {
    projections_into(suffix)
        .into_iter()
        .find(|p| p.name() == name)
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

/// Rows of `table` whose `key` is among `keys`: one statement.
async fn load_rows(
    tx: &mut AnyConnection,
    columns: &str,
    table: &str,
    key: &str,
    keys: &[&str],
) -> Result<Vec<AnyRow>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let backend = batch::backend_of(tx);
    // `= ANY(ARRAY(...))`: PostgreSQL keeps the key's index scan whatever it
    // guesses of the list's length.
    let filter = match backend {
        Backend::Postgres => format!("{key} = ANY(ARRAY({}))", batch::keys(backend, 1)),
        Backend::Sqlite => format!("{key} IN ({})", batch::keys(backend, 1)),
    };
    sqlx::query(&format!("SELECT {columns} FROM {table} WHERE {filter}"))
        .bind(batch::keys_json(keys)?)
        .fetch_all(&mut *tx)
        .await
}

/// Multi-row upsert in one statement:
/// `INSERT ... SELECT <rows> ON CONFLICT (key) DO UPDATE SET <update>`.
async fn upsert(
    tx: &mut AnyConnection,
    table: &str,
    columns: &[(&str, Kind)],
    key: &str,
    update: &str,
    rows: &[Vec<Val>],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = columns.iter().map(|c| c.0).collect();
    let names = names.join(", ");
    let source = batch::rows(batch::backend_of(tx), 1, columns);
    let sql = format!(
        "INSERT INTO {table} ({names}) SELECT {names} FROM ({source}) AS v WHERE true \
         ON CONFLICT ({key}) DO UPDATE SET {update}"
    );
    sqlx::query(&sql)
        .bind(batch::rows_json(rows)?)
        .execute(&mut *tx)
        .await?;
    Ok(())
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
const ORDER_DETAILS_COLS: [(&str, Kind); 12] = [
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
];

/// What an existing `order_details` row takes from the upsert.
const ORDER_DETAILS_UPDATE: &str = "customer_id = excluded.customer_id, status = excluded.status, \
    items = excluded.items, total_cents = excluded.total_cents, version = excluded.version, \
    created_at = excluded.created_at, updated_at = excluded.updated_at, payment_ref = excluded.payment_ref, \
    carrier = excluded.carrier, tracking_number = excluded.tracking_number, cancel_reason = excluded.cancel_reason";

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
    } = event
    {
        rows.insert(
            id.clone(),
            OrderView {
                order_id: id.clone(),
                customer_id: customer_id.clone(),
                status: Status::Created,
                items: items.clone(),
                total_cents: *total_cents,
                version: e.version,
                created_at: at.clone(),
                updated_at: at,
                payment_ref: None,
                carrier: None,
                tracking_number: None,
                cancel_reason: None,
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
        OrderEvent::OrderDelivered {} | OrderEvent::OrderCreated { .. } => {}
    }
    o.status = target_status(event);
    o.version = e.version;
    o.updated_at = at;
    Ok(())
}

/// An order as the upsert's row, in [`ORDER_DETAILS_COLS`] order.
fn order_row(o: OrderView) -> Result<Vec<Val>, ProjectionError> {
    let items = serde_json::to_string(&o.items)
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
    ])
}

impl Projection for OrderDetails {
    fn name(&self) -> &'static str {
        "order_details"
    }
    fn tables(&self) -> Vec<String> {
        vec![self.table.clone()]
    }
    fn schema(&self, tag: &str) -> Vec<String> {
        let t = &self.table;
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                order_id TEXT PRIMARY KEY,
                customer_id TEXT NOT NULL,
                status TEXT NOT NULL,
                items TEXT NOT NULL,
                total_cents BIGINT NOT NULL,
                version BIGINT NOT NULL,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                payment_ref TEXT,
                carrier TEXT,
                tracking_number TEXT,
                cancel_reason TEXT)"
            ),
            format!("CREATE INDEX IF NOT EXISTS order_details_customer{tag} ON {t} (customer_id, order_id)"),
            format!("CREATE INDEX IF NOT EXISTS order_details_status{tag} ON {t} (status, order_id)"),
            format!("CREATE INDEX IF NOT EXISTS order_details_customer_status{tag} ON {t} (customer_id, status, order_id)"),
        ]
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.apply_events(tx, events))
    }
}

/// `customer_summary`: orders, money spent and the newest order per customer
/// (with `customer_orders`, what each order has paid).
pub struct CustomerSummaries {
    summary: String,
    orders: String,
}

impl CustomerSummaries {
    /// Over `customer_summary{suffix}` and `customer_orders{suffix}`.
    pub fn new(suffix: &str) -> Self {
        Self {
            summary: format!("customer_summary{suffix}"),
            orders: format!("customer_orders{suffix}"),
        }
    }

    async fn apply_events(
        &self,
        tx: &mut AnyConnection,
        events: &[&EventEnvelope],
    ) -> Result<(), ProjectionError> {
        let events = decoded(events)?;
        // order id -> (customer, paid cents)
        let mut orders: HashMap<String, (String, i64)> = HashMap::new();
        for r in load_rows(
            tx,
            "order_id, customer_id, paid_cents",
            &self.orders,
            "order_id",
            &ids(&events),
        )
        .await?
        {
            let (order_id, customer_id, paid): (String, String, i64) = FromRow::from_row(&r)?;
            orders.insert(order_id, (customer_id, paid));
        }
        let (deltas, touched) = customer_deltas(&events, &mut orders)?;
        self.write_paid(tx, &touched, &orders).await?;
        self.write_summaries(tx, deltas).await
    }

    /// What each touched order has paid now.
    async fn write_paid(
        &self,
        tx: &mut AnyConnection,
        touched: &[String],
        orders: &HashMap<String, (String, i64)>,
    ) -> Result<(), ProjectionError> {
        use Kind::{Int, Text};
        let rows: Vec<Vec<Val>> = touched
            .iter()
            .filter_map(|id| {
                orders
                    .get(id)
                    .map(|(c, p)| vec![Val::Text(id.clone()), Val::Text(c.clone()), Val::Int(*p)])
            })
            .collect();
        upsert(
            tx,
            &self.orders,
            &[
                ("order_id", Text),
                ("customer_id", Text),
                ("paid_cents", Int),
            ],
            "order_id",
            "customer_id = excluded.customer_id, paid_cents = excluded.paid_cents",
            &rows,
        )
        .await?;
        Ok(())
    }

    /// Adds the deltas to the summaries, in customer order: the same lock
    /// order in every process, so projectors cannot deadlock on them.
    async fn write_summaries(
        &self,
        tx: &mut AnyConnection,
        deltas: BTreeMap<String, CustomerDelta>,
    ) -> Result<(), ProjectionError> {
        use Kind::{Int, Text};
        let mut rows: Vec<Vec<Val>> = Vec::with_capacity(deltas.len());
        for (customer, d) in deltas {
            let (spent_e18, spent) = d.spent.to_parts().map_err(overflow)?;
            rows.push(vec![
                Val::Text(customer),
                Val::Int(d.orders),
                Val::Int(spent_e18),
                Val::Int(spent),
                Val::Text(d.last_id),
                Val::Text(d.last_at),
            ]);
        }
        let update = format!(
            "order_count = {t}.order_count + excluded.order_count, {spent}, \
             last_order_id = CASE WHEN excluded.last_order_at > {t}.last_order_at OR (excluded.last_order_at = {t}.last_order_at \
               AND excluded.last_order_id > {t}.last_order_id) THEN excluded.last_order_id ELSE {t}.last_order_id END, \
             last_order_at = CASE WHEN excluded.last_order_at > {t}.last_order_at THEN excluded.last_order_at \
               ELSE {t}.last_order_at END",
            t = self.summary,
            spent = add_parts_sql(&self.summary, "total_spent_cents"),
        );
        upsert(
            tx,
            &self.summary,
            &[
                ("customer_id", Text),
                ("order_count", Int),
                ("total_spent_cents_e18", Int),
                ("total_spent_cents", Int),
                ("last_order_id", Text),
                ("last_order_at", Text),
            ],
            "customer_id",
            &update,
            &rows,
        )
        .await?;
        Ok(())
    }
}

/// Folds a batch into per-customer deltas (deltas, not absolute values:
/// another projector process may update the same customer concurrently for
/// orders on other partitions), updating what each order has paid; returns
/// the deltas and the orders touched.
fn customer_deltas(
    events: &[(&EventEnvelope, OrderEvent)],
    orders: &mut HashMap<String, (String, i64)>,
) -> Result<(BTreeMap<String, CustomerDelta>, Vec<String>), ProjectionError> {
    let mut deltas: BTreeMap<String, CustomerDelta> = BTreeMap::new();
    let mut touched = Vec::new();
    for (e, event) in events {
        let id = &e.aggregate_id;
        match event {
            OrderEvent::OrderCreated { customer_id, .. } => {
                let at = timestamp(e.metadata.occurred_at);
                orders.insert(id.clone(), (customer_id.clone(), 0));
                let d = deltas.entry(customer_id.clone()).or_default();
                d.orders += 1;
                if (at.as_str(), id.as_str()) > (d.last_at.as_str(), d.last_id.as_str()) {
                    d.last_id = id.clone();
                    d.last_at = at;
                }
            }
            OrderEvent::OrderPaid { amount_cents, .. } => {
                let (customer, paid) = orders.get_mut(id).ok_or_else(|| missing(e))?;
                let d = deltas.entry(customer.clone()).or_default();
                d.spent = d
                    .spent
                    .checked_add(Cents::from(*amount_cents))
                    .and_then(|s| s.checked_sub(Cents::from(*paid)))
                    .map_err(overflow)?;
                *paid = *amount_cents;
            }
            OrderEvent::OrderCancelled { .. } => {
                // A cancel refunds whatever was paid.
                let (customer, paid) = orders.get_mut(id).ok_or_else(|| missing(e))?;
                let d = deltas.entry(customer.clone()).or_default();
                d.spent = d.spent.checked_sub(Cents::from(*paid)).map_err(overflow)?;
                *paid = 0;
            }
            _ => continue,
        }
        touched.push(id.clone());
    }
    touched.sort_unstable();
    touched.dedup();
    Ok((deltas, touched))
}

/// What one batch changes in one customer's summary.
#[derive(Default)]
struct CustomerDelta {
    orders: i64,
    spent: Cents,
    last_id: String,
    last_at: String,
}

impl Projection for CustomerSummaries {
    fn name(&self) -> &'static str {
        "customer_summary"
    }
    fn tables(&self) -> Vec<String> {
        vec![self.summary.clone(), self.orders.clone()]
    }
    fn schema(&self, _tag: &str) -> Vec<String> {
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {} (
                customer_id TEXT PRIMARY KEY,
                order_count BIGINT NOT NULL,
                total_spent_cents BIGINT NOT NULL,
                total_spent_cents_e18 BIGINT NOT NULL DEFAULT 0,
                last_order_id TEXT NOT NULL,
                last_order_at TEXT NOT NULL)",
                self.summary
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (
                order_id TEXT PRIMARY KEY,
                customer_id TEXT NOT NULL,
                paid_cents BIGINT NOT NULL)",
                self.orders
            ),
        ]
    }
    fn added_columns(&self) -> Vec<AddedColumn> {
        vec![AddedColumn {
            table: self.summary.clone(),
            column: "total_spent_cents_e18",
            definition: "BIGINT NOT NULL DEFAULT 0",
            backfill: Some(carry_sql(&self.summary, "total_spent_cents")),
        }]
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.apply_events(tx, events))
    }
}

/// `order_stats`: count and value of the orders in each status (with
/// `order_stats_members`, each order's status and total).
pub struct OrderStats {
    stats: String,
    members: String,
}

impl OrderStats {
    /// Over `order_stats{suffix}` and `order_stats_members{suffix}`.
    pub fn new(suffix: &str) -> Self {
        Self {
            stats: format!("order_stats{suffix}"),
            members: format!("order_stats_members{suffix}"),
        }
    }

    async fn apply_events(
        &self,
        tx: &mut AnyConnection,
        events: &[&EventEnvelope],
    ) -> Result<(), ProjectionError> {
        let events = decoded(events)?;
        let mut members: HashMap<String, (Status, i64)> = HashMap::new();
        for r in load_rows(
            tx,
            "order_id, status, total_cents",
            &self.members,
            "order_id",
            &ids(&events),
        )
        .await?
        {
            let (order_id, status, total): (String, String, i64) = FromRow::from_row(&r)?;
            let status = Status::parse(&status)
                .ok_or_else(|| ProjectionError::Inconsistent(format!("bad status {status}")))?;
            members.insert(order_id, (status, total));
        }
        let (deltas, touched) = status_deltas(&events, &mut members)?;
        self.write_members(tx, &touched, &members).await?;
        self.write_stats(tx, deltas).await
    }

    /// Each touched order's status and total.
    async fn write_members(
        &self,
        tx: &mut AnyConnection,
        touched: &[String],
        members: &HashMap<String, (Status, i64)>,
    ) -> Result<(), ProjectionError> {
        use Kind::{Int, Text};
        let rows: Vec<Vec<Val>> = touched
            .iter()
            .filter_map(|id| {
                members.get(id).map(|(s, t)| {
                    vec![
                        Val::Text(id.clone()),
                        Val::Text(s.as_str().to_owned()),
                        Val::Int(*t),
                    ]
                })
            })
            .collect();
        upsert(
            tx,
            &self.members,
            &[("order_id", Text), ("status", Text), ("total_cents", Int)],
            "order_id",
            "status = excluded.status, total_cents = excluded.total_cents",
            &rows,
        )
        .await?;
        Ok(())
    }

    /// Adds the deltas to the stats, in status-name order (one lock order
    /// in every process).
    async fn write_stats(
        &self,
        tx: &mut AnyConnection,
        deltas: BTreeMap<&'static str, StatusDelta>,
    ) -> Result<(), ProjectionError> {
        use Kind::{Int, Text};
        let mut rows: Vec<Vec<Val>> = Vec::with_capacity(deltas.len());
        for (status, d) in deltas {
            let (revenue_e18, revenue) = d.revenue.to_parts().map_err(overflow)?;
            rows.push(vec![
                Val::Text(status.to_owned()),
                Val::Int(d.orders),
                Val::Int(revenue_e18),
                Val::Int(revenue),
            ]);
        }
        let update = format!(
            "order_count = {t}.order_count + excluded.order_count, {revenue}",
            t = self.stats,
            revenue = add_parts_sql(&self.stats, "revenue_cents"),
        );
        upsert(
            tx,
            &self.stats,
            &[
                ("status", Text),
                ("order_count", Int),
                ("revenue_cents_e18", Int),
                ("revenue_cents", Int),
            ],
            "status",
            &update,
            &rows,
        )
        .await?;
        Ok(())
    }
}

/// Folds a batch into per-status deltas (the order leaves its old status
/// and joins its new one), updating each order's status; returns the deltas
/// and the orders touched.
fn status_deltas(
    events: &[(&EventEnvelope, OrderEvent)],
    members: &mut HashMap<String, (Status, i64)>,
) -> Result<(BTreeMap<&'static str, StatusDelta>, Vec<String>), ProjectionError> {
    let mut deltas: BTreeMap<&'static str, StatusDelta> = BTreeMap::new();
    let mut touched = Vec::new();
    for (e, event) in events {
        let to = target_status(event);
        if let OrderEvent::OrderCreated { total_cents, .. } = event {
            members.insert(e.aggregate_id.clone(), (to, *total_cents));
            deltas
                .entry(to.as_str())
                .or_default()
                .add(1, *total_cents)?;
        } else {
            let (status, total) = members.get_mut(&e.aggregate_id).ok_or_else(|| missing(e))?;
            deltas
                .entry(status.as_str())
                .or_default()
                .add(-1, -*total)?;
            deltas.entry(to.as_str()).or_default().add(1, *total)?;
            *status = to;
        }
        touched.push(e.aggregate_id.clone());
    }
    touched.sort_unstable();
    touched.dedup();
    Ok((deltas, touched))
}

/// What one batch changes in one status's count and value.
#[derive(Default)]
struct StatusDelta {
    orders: i64,
    revenue: Cents,
}

impl StatusDelta {
    fn add(&mut self, orders: i64, cents: i64) -> Result<(), ProjectionError> {
        self.orders += orders;
        self.revenue = self
            .revenue
            .checked_add(Cents::from(cents))
            .map_err(overflow)?;
        Ok(())
    }
}

impl Projection for OrderStats {
    fn name(&self) -> &'static str {
        "order_stats"
    }
    fn tables(&self) -> Vec<String> {
        vec![self.stats.clone(), self.members.clone()]
    }
    fn schema(&self, _tag: &str) -> Vec<String> {
        vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {} (
                status TEXT PRIMARY KEY,
                order_count BIGINT NOT NULL,
                revenue_cents BIGINT NOT NULL,
                revenue_cents_e18 BIGINT NOT NULL DEFAULT 0)",
                self.stats
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (
                order_id TEXT PRIMARY KEY,
                status TEXT NOT NULL,
                total_cents BIGINT NOT NULL)",
                self.members
            ),
        ]
    }
    fn added_columns(&self) -> Vec<AddedColumn> {
        vec![AddedColumn {
            table: self.stats.clone(),
            column: "revenue_cents_e18",
            definition: "BIGINT NOT NULL DEFAULT 0",
            backfill: Some(carry_sql(&self.stats, "revenue_cents")),
        }]
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        events: &'a [&'a EventEnvelope],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.apply_events(tx, events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::LineItem;

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
            },
            recorded_at: chrono::Utc::now(),
        };
        (e, event.clone())
    }

    fn created(total: i64) -> OrderEvent {
        OrderEvent::OrderCreated {
            customer_id: "alice".into(),
            items: vec![LineItem {
                sku: "s".into(),
                quantity: 1,
                unit_price_cents: total,
            }],
            total_cents: total,
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
        let (customers, touched) = customer_deltas(&refs, &mut orders).unwrap();
        let alice = &customers["alice"];
        assert_eq!(
            (alice.orders, alice.spent),
            (2, Cents::ZERO),
            "paid, then refunded"
        );
        assert_eq!(touched, ["a", "b"]);
        assert_eq!(orders["a"], ("alice".to_owned(), 0));

        let mut members = HashMap::new();
        let (stats, _) = status_deltas(&refs, &mut members).unwrap();
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
        assert!(customer_deltas(&refs, &mut HashMap::new()).is_err());
        assert!(status_deltas(&refs, &mut HashMap::new()).is_err());
    }
}
