//! Queries over the read models: what the query handlers serve.

use super::SQL;
use crate::aggregate::Status;
use crate::money::Cents;
use crate::stock::StockStatus;
use crate::views::{CustomerSummary, OrderView, StatusStats, Views};
use cqrs_sql::dialect::{fill, section};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, FromRow};

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

pub(super) const ORDER_COLUMNS: &str =
    "order_id, customer_id, status, items, total_cents, version, created_at, \
    updated_at, payment_ref, carrier, tracking_number, cancel_reason, stock, shipping";

/// An `order_details` row as stored (status and items as text).
#[derive(sqlx::FromRow)]
struct OrderRow {
    order_id: String,
    customer_id: String,
    status: String,
    items: String,
    total_cents: i64,
    version: i64,
    created_at: String,
    updated_at: String,
    payment_ref: Option<String>,
    carrier: Option<String>,
    tracking_number: Option<String>,
    cancel_reason: Option<String>,
    stock: Option<String>,
    shipping: Option<String>,
}

pub(super) fn order_from_row(row: &AnyRow) -> Result<OrderView, QueryError> {
    let r = OrderRow::from_row(row)?;
    Ok(OrderView {
        status: Status::parse(&r.status)
            .ok_or_else(|| QueryError::Corrupt(format!("status {:?}", r.status)))?,
        items: serde_json::from_str(&r.items).map_err(|e| QueryError::Corrupt(e.to_string()))?,
        order_id: r.order_id,
        customer_id: r.customer_id,
        total_cents: r.total_cents,
        version: r.version,
        created_at: r.created_at,
        updated_at: r.updated_at,
        payment_ref: r.payment_ref,
        carrier: r.carrier,
        tracking_number: r.tracking_number,
        cancel_reason: r.cancel_reason,
        stock: match r.stock.as_deref() {
            None => None,
            Some(s) => Some(
                StockStatus::parse(s).ok_or_else(|| QueryError::Corrupt(format!("stock {s:?}")))?,
            ),
        },
        shipping: None,
        sealed_shipping: r
            .shipping
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| QueryError::Corrupt(format!("shipping: {e}")))?,
    })
}

/// One order, if the read model has it.
pub async fn get_order(pool: &AnyPool, order_id: &str) -> Result<Option<OrderView>, QueryError> {
    let sql = fill(
        section(SQL, "order_by_id"),
        &[("order_columns", ORDER_COLUMNS)],
    );
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

/// The statement of `GET /orders` for this filter. Only the filters given
/// appear, so that each combination uses its own index (a `($1 IS NULL OR
/// ...)` form makes SQLite scan). Parameters, in order: customer, status,
/// cursor (those present), then the row limit.
pub fn list_orders_sql(f: &OrderFilter) -> String {
    let mut conditions = Vec::new();
    let mut n = 0;
    let mut param = || {
        n += 1;
        format!("${n}")
    };
    if f.customer_id.is_some() {
        conditions.push(format!("customer_id = {}", param()));
    }
    if f.status.is_some() {
        conditions.push(format!("status = {}", param()));
    }
    if f.after.is_some() {
        conditions.push(format!("order_id < {}", param()));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    format!(
        "SELECT {ORDER_COLUMNS} FROM order_details{filter} ORDER BY order_id DESC LIMIT {}",
        param()
    )
}

/// Binds a filter's parameters to `list_orders_sql` (or a statement that
/// wraps it, such as `EXPLAIN`), in its order; the limit asks for one more
/// row than a page, to learn whether a next page exists.
pub fn bind_list_filter<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    f: &'q OrderFilter,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    if let Some(c) = &f.customer_id {
        q = q.bind(c.as_str());
    }
    if let Some(s) = f.status {
        q = q.bind(s.as_str());
    }
    if let Some(a) = &f.after {
        q = q.bind(a.as_str());
    }
    q.bind(f.limit + 1)
}

/// A page of orders, newest first (ids are time-ordered), and the cursor of
/// the next page.
pub async fn list_orders(
    pool: &AnyPool,
    f: &OrderFilter,
) -> Result<(Vec<OrderView>, Option<String>), QueryError> {
    let sql = list_orders_sql(f);
    let rows = bind_list_filter(sqlx::query(&sql), f)
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

/// A `customer_summary` row as stored (money in two columns).
#[derive(sqlx::FromRow)]
struct CustomerRow {
    customer_id: String,
    order_count: i64,
    total_spent_cents: i64,
    total_spent_cents_e18: i64,
    last_order_id: String,
    last_order_at: String,
}

pub(super) fn customer_from_row(row: &AnyRow) -> Result<CustomerSummary, QueryError> {
    let r = CustomerRow::from_row(row)?;
    Ok(CustomerSummary {
        customer_id: r.customer_id,
        order_count: r.order_count,
        total_spent_cents: Cents::from_parts(r.total_spent_cents_e18, r.total_spent_cents),
        last_order_id: r.last_order_id,
        last_order_at: r.last_order_at,
    })
}

pub(super) const CUSTOMER_COLUMNS: &str =
    "customer_id, order_count, total_spent_cents, total_spent_cents_e18, last_order_id, last_order_at";

/// One customer's summary.
pub async fn customer_summary(
    pool: &AnyPool,
    customer_id: &str,
) -> Result<Option<CustomerSummary>, QueryError> {
    let sql = fill(
        section(SQL, "customer_by_id"),
        &[("customer_columns", CUSTOMER_COLUMNS)],
    );
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
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(section(SQL, "stats"))
        .fetch_all(pool)
        .await?;
    let mut out = Views::default().stats;
    for (status, order_count, cents, cents_e18) in rows {
        let status = Status::parse(&status)
            .ok_or_else(|| QueryError::Corrupt(format!("status {status:?}")))?;
        out.insert(
            status,
            StatusStats {
                order_count,
                revenue_cents: Cents::from_parts(cents_e18, cents),
            },
        );
    }
    Ok(out)
}

/// Everything the read DB holds, as values, to compare with a fold.
pub async fn load_views(pool: &AnyPool) -> Result<Views, QueryError> {
    let sql = fill(
        section(SQL, "all_orders"),
        &[("order_columns", ORDER_COLUMNS)],
    );
    let orders = sqlx::query(&sql).fetch_all(pool).await?;
    let sql = fill(
        section(SQL, "all_customers"),
        &[("customer_columns", CUSTOMER_COLUMNS)],
    );
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

/// The ids of `customer_id`'s orders whose shipping details the read
/// model still keeps sealed (not erased).
pub async fn orders_with_shipping(
    pool: &AnyPool,
    customer_id: &str,
) -> Result<Vec<String>, QueryError> {
    Ok(sqlx::query_scalar(section(SQL, "orders_with_shipping"))
        .bind(customer_id)
        .fetch_all(pool)
        .await?)
}
