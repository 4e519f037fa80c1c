//! The three SQL read models fed by the order events, and the queries that
//! read them. Portable SQL: the same statements run on PostgreSQL and SQLite.

use crate::aggregate::{OrderEvent, Status};
use crate::views::{decode, target_status, CustomerSummary, OrderView, StatusStats, Views};
use cqrs_core::EventEnvelope;
use cqrs_sql::db::timestamp;
use cqrs_sql::{Projection, ProjectionError};
use futures::future::BoxFuture;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};
use std::sync::Arc;

/// All order projections, in the order they apply.
pub fn projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(OrderDetails),
        Arc::new(CustomerSummaries),
        Arc::new(OrderStats),
    ]
}

fn expect_one(
    done: sqlx::any::AnyQueryResult,
    what: &str,
    id: &str,
) -> Result<(), ProjectionError> {
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(ProjectionError::Inconsistent(format!(
            "{what}: order {id} is not in the read model"
        )))
    }
}

/// `order_details`: one row per order, what `GET /orders/{id}` returns.
pub struct OrderDetails;

impl OrderDetails {
    async fn apply_event(
        &self,
        tx: &mut AnyConnection,
        e: &EventEnvelope,
    ) -> Result<(), ProjectionError> {
        let event = decode(e)?;
        let at = timestamp(e.metadata.occurred_at);
        let id = e.aggregate_id.as_str();
        if let OrderEvent::OrderCreated {
            customer_id,
            items,
            total_cents,
        } = &event
        {
            let items = serde_json::to_string(items)
                .map_err(|e| ProjectionError::Inconsistent(e.to_string()))?;
            sqlx::query(
                "INSERT INTO order_details (order_id, customer_id, status, items, total_cents, version, created_at, updated_at) \
                 VALUES ($1, $2, 'created', $3, $4, $5, $6, $6)",
            )
            .bind(id)
            .bind(customer_id)
            .bind(items)
            .bind(total_cents)
            .bind(e.version)
            .bind(&at)
            .execute(&mut *tx)
            .await?;
            return Ok(());
        }
        let (column, a, b): (&str, Option<&str>, Option<&str>) = match &event {
            OrderEvent::OrderPaid { payment_ref, .. } => (
                "payment_ref = $5, carrier = carrier",
                Some(payment_ref),
                None,
            ),
            OrderEvent::OrderShipped {
                carrier,
                tracking_number,
            } => (
                "carrier = $5, tracking_number = $6",
                Some(carrier),
                Some(tracking_number),
            ),
            OrderEvent::OrderCancelled { reason } => {
                ("cancel_reason = $5, carrier = carrier", Some(reason), None)
            }
            _ => ("carrier = carrier", None, None),
        };
        let sql = format!(
            "UPDATE order_details SET status = $1, version = $2, updated_at = $3, {column} WHERE order_id = $4"
        );
        let mut q = sqlx::query(&sql)
            .bind(target_status(&event).as_str())
            .bind(e.version)
            .bind(&at)
            .bind(id);
        if let Some(a) = a {
            q = q.bind(a);
        }
        if let Some(b) = b {
            q = q.bind(b);
        }
        expect_one(q.execute(&mut *tx).await?, &e.event_type, id)
    }
}

impl Projection for OrderDetails {
    fn name(&self) -> &'static str {
        "order_details"
    }
    fn schema(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE IF NOT EXISTS order_details (
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
                cancel_reason TEXT)",
            "CREATE INDEX IF NOT EXISTS order_details_customer ON order_details (customer_id, order_id)",
            "CREATE INDEX IF NOT EXISTS order_details_status ON order_details (status, order_id)",
        ]
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        e: &'a EventEnvelope,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.apply_event(tx, e))
    }
}

/// `customer_summary`: orders, money spent and the newest order per customer.
pub struct CustomerSummaries;

impl CustomerSummaries {
    async fn apply_event(
        &self,
        tx: &mut AnyConnection,
        e: &EventEnvelope,
    ) -> Result<(), ProjectionError> {
        let event = decode(e)?;
        let id = e.aggregate_id.as_str();
        let (customer, paid): (String, i64) = match &event {
            OrderEvent::OrderCreated { customer_id, .. } => {
                let at = timestamp(e.metadata.occurred_at);
                sqlx::query("INSERT INTO customer_orders (order_id, customer_id, paid_cents) VALUES ($1, $2, 0)")
                    .bind(id)
                    .bind(customer_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO customer_summary (customer_id, order_count, total_spent_cents, last_order_id, last_order_at) \
                     VALUES ($1, 1, 0, $2, $3) ON CONFLICT (customer_id) DO UPDATE SET \
                     order_count = customer_summary.order_count + 1, \
                     last_order_id = CASE WHEN excluded.last_order_at > customer_summary.last_order_at \
                       OR (excluded.last_order_at = customer_summary.last_order_at AND excluded.last_order_id > customer_summary.last_order_id) \
                       THEN excluded.last_order_id ELSE customer_summary.last_order_id END, \
                     last_order_at = CASE WHEN excluded.last_order_at > customer_summary.last_order_at \
                       THEN excluded.last_order_at ELSE customer_summary.last_order_at END",
                )
                .bind(customer_id)
                .bind(id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
                return Ok(());
            }
            OrderEvent::OrderPaid { .. } | OrderEvent::OrderCancelled { .. } => {
                let row = sqlx::query(
                    "SELECT customer_id, paid_cents FROM customer_orders WHERE order_id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| {
                    ProjectionError::Inconsistent(format!("{}: order {id} unknown", e.event_type))
                })?;
                (row.try_get(0)?, row.try_get(1)?)
            }
            _ => return Ok(()),
        };
        // Paid adds the amount; a cancel refunds whatever was paid.
        let (new_paid, delta) = match &event {
            OrderEvent::OrderPaid { amount_cents, .. } => (*amount_cents, *amount_cents - paid),
            _ => (0, -paid),
        };
        sqlx::query("UPDATE customer_orders SET paid_cents = $1 WHERE order_id = $2")
            .bind(new_paid)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("UPDATE customer_summary SET total_spent_cents = total_spent_cents + $1 WHERE customer_id = $2")
            .bind(delta)
            .bind(&customer)
            .execute(&mut *tx)
            .await?;
        expect_one(done, &e.event_type, id)
    }
}

impl Projection for CustomerSummaries {
    fn name(&self) -> &'static str {
        "customer_summary"
    }
    fn schema(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE IF NOT EXISTS customer_summary (
                customer_id TEXT PRIMARY KEY,
                order_count BIGINT NOT NULL,
                total_spent_cents BIGINT NOT NULL,
                last_order_id TEXT NOT NULL,
                last_order_at TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS customer_orders (
                order_id TEXT PRIMARY KEY,
                customer_id TEXT NOT NULL,
                paid_cents BIGINT NOT NULL)",
        ]
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        e: &'a EventEnvelope,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.apply_event(tx, e))
    }
}

/// `order_stats`: count and value of the orders in each status.
pub struct OrderStats;

impl OrderStats {
    async fn bump(
        tx: &mut AnyConnection,
        status: Status,
        count: i64,
        cents: i64,
    ) -> Result<(), ProjectionError> {
        sqlx::query(
            "INSERT INTO order_stats (status, order_count, revenue_cents) VALUES ($1, $2, $3) \
             ON CONFLICT (status) DO UPDATE SET order_count = order_stats.order_count + excluded.order_count, \
             revenue_cents = order_stats.revenue_cents + excluded.revenue_cents",
        )
        .bind(status.as_str())
        .bind(count)
        .bind(cents)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn apply_event(
        &self,
        tx: &mut AnyConnection,
        e: &EventEnvelope,
    ) -> Result<(), ProjectionError> {
        let event = decode(e)?;
        let id = e.aggregate_id.as_str();
        let to = target_status(&event);
        if let OrderEvent::OrderCreated { total_cents, .. } = &event {
            sqlx::query("INSERT INTO order_stats_members (order_id, status, total_cents) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(to.as_str())
                .bind(total_cents)
                .execute(&mut *tx)
                .await?;
            return Self::bump(tx, to, 1, *total_cents).await;
        }
        let row =
            sqlx::query("SELECT status, total_cents FROM order_stats_members WHERE order_id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| {
                    ProjectionError::Inconsistent(format!("{}: order {id} unknown", e.event_type))
                })?;
        let from: String = row.try_get(0)?;
        let total: i64 = row.try_get(1)?;
        let from = Status::parse(&from)
            .ok_or_else(|| ProjectionError::Inconsistent(format!("bad status {from}")))?;
        sqlx::query("UPDATE order_stats_members SET status = $1 WHERE order_id = $2")
            .bind(to.as_str())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        Self::bump(tx, from, -1, -total).await?;
        Self::bump(tx, to, 1, total).await
    }
}

impl Projection for OrderStats {
    fn name(&self) -> &'static str {
        "order_stats"
    }
    fn schema(&self) -> &'static [&'static str] {
        &[
            "CREATE TABLE IF NOT EXISTS order_stats (
                status TEXT PRIMARY KEY,
                order_count BIGINT NOT NULL,
                revenue_cents BIGINT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS order_stats_members (
                order_id TEXT PRIMARY KEY,
                status TEXT NOT NULL,
                total_cents BIGINT NOT NULL)",
        ]
    }
    fn apply<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        e: &'a EventEnvelope,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(self.apply_event(tx, e))
    }
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The read DB failed.
    #[error("read database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored row does not make sense.
    #[error("corrupt read model: {0}")]
    Corrupt(String),
}

const ORDER_COLUMNS: &str =
    "order_id, customer_id, status, items, total_cents, version, created_at, \
    updated_at, payment_ref, carrier, tracking_number, cancel_reason";

fn order_from_row(row: &AnyRow) -> Result<OrderView, QueryError> {
    let status: String = row.try_get("status")?;
    let items: String = row.try_get("items")?;
    Ok(OrderView {
        order_id: row.try_get("order_id")?,
        customer_id: row.try_get("customer_id")?,
        status: Status::parse(&status)
            .ok_or_else(|| QueryError::Corrupt(format!("status {status:?}")))?,
        items: serde_json::from_str(&items).map_err(|e| QueryError::Corrupt(e.to_string()))?,
        total_cents: row.try_get("total_cents")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        payment_ref: row.try_get("payment_ref")?,
        carrier: row.try_get("carrier")?,
        tracking_number: row.try_get("tracking_number")?,
        cancel_reason: row.try_get("cancel_reason")?,
    })
}

/// One order, if the read model has it.
pub async fn get_order(pool: &AnyPool, order_id: &str) -> Result<Option<OrderView>, QueryError> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM order_details WHERE order_id = $1");
    let row = sqlx::query(&sql)
        .bind(order_id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(order_from_row).transpose()
}

/// Filters and page of `GET /orders`.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    /// Only this customer's orders.
    pub customer_id: Option<String>,
    /// Only orders in this status.
    pub status: Option<Status>,
    /// Orders strictly older than this id (the cursor).
    pub after: Option<String>,
    /// Page size.
    pub limit: i64,
}

/// A page of orders, newest first (ids are time-ordered), and the cursor of
/// the next page.
pub async fn list_orders(
    pool: &AnyPool,
    f: &OrderFilter,
) -> Result<(Vec<OrderView>, Option<String>), QueryError> {
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM order_details WHERE ($1 IS NULL OR customer_id = $1) \
         AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR order_id < $3) ORDER BY order_id DESC LIMIT $4"
    );
    let rows = sqlx::query(&sql)
        .bind(f.customer_id.as_deref())
        .bind(f.status.map(Status::as_str))
        .bind(f.after.as_deref())
        .bind(f.limit + 1)
        .fetch_all(pool)
        .await?;
    let mut orders = rows
        .iter()
        .map(order_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next = if orders.len() as i64 > f.limit {
        orders.truncate(f.limit as usize);
        orders.last().map(|o| o.order_id.clone())
    } else {
        None
    };
    Ok((orders, next))
}

fn customer_from_row(row: &AnyRow) -> Result<CustomerSummary, QueryError> {
    Ok(CustomerSummary {
        customer_id: row.try_get("customer_id")?,
        order_count: row.try_get("order_count")?,
        total_spent_cents: row.try_get("total_spent_cents")?,
        last_order_id: row.try_get("last_order_id")?,
        last_order_at: row.try_get("last_order_at")?,
    })
}

const CUSTOMER_COLUMNS: &str =
    "customer_id, order_count, total_spent_cents, last_order_id, last_order_at";

/// One customer's summary.
pub async fn customer_summary(
    pool: &AnyPool,
    customer_id: &str,
) -> Result<Option<CustomerSummary>, QueryError> {
    let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM customer_summary WHERE customer_id = $1");
    let row = sqlx::query(&sql)
        .bind(customer_id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(customer_from_row).transpose()
}

/// Count and value per status, every status present.
pub async fn stats(
    pool: &AnyPool,
) -> Result<std::collections::BTreeMap<Status, StatusStats>, QueryError> {
    let rows = sqlx::query("SELECT status, order_count, revenue_cents FROM order_stats")
        .fetch_all(pool)
        .await?;
    let mut out = Views::default().stats;
    for row in rows {
        let status: String = row.try_get(0)?;
        let status = Status::parse(&status)
            .ok_or_else(|| QueryError::Corrupt(format!("status {status:?}")))?;
        out.insert(
            status,
            StatusStats {
                order_count: row.try_get(1)?,
                revenue_cents: row.try_get(2)?,
            },
        );
    }
    Ok(out)
}

/// Everything the read DB holds, as values, to compare with a fold.
pub async fn load_views(pool: &AnyPool) -> Result<Views, QueryError> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM order_details");
    let orders = sqlx::query(&sql).fetch_all(pool).await?;
    let sql = format!("SELECT {CUSTOMER_COLUMNS} FROM customer_summary");
    let customers = sqlx::query(&sql).fetch_all(pool).await?;
    Ok(Views {
        orders: orders
            .iter()
            .map(|r| order_from_row(r).map(|o| (o.order_id.clone(), o)))
            .collect::<Result<_, _>>()?,
        customers: customers
            .iter()
            .map(|r| customer_from_row(r).map(|c| (c.customer_id.clone(), c)))
            .collect::<Result<_, _>>()?,
        stats: stats(pool).await?,
    })
}
