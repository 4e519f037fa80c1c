//! Personal data (the orders' shipping details): sealed under the
//! customer's data key before the command runs, opened only for those who
//! may see it (the order's customer, the warehouse, operators), and erased
//! on request by deleting the key (`DELETE /customers/{id}/personal-data`).
//! Nothing here logs a personal field.

use super::access::{Caller, Right};
use super::api::ErrorBody;
use super::App;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cqrs_http::{ApiError, NoParams, PathParam, QueryParams};
use cqrs_sql::shred::ShredError;
use orders::shipping::{ShippingDetails, ShippingRecord, ShippingView};
use orders::views::OrderView;
use orders::{CreateOrder, OrderCommand};

fn keys_unavailable(e: &ShredError) -> ApiError {
    ApiError::unavailable("the key table", e)
}

fn key_ring(app: &App) -> Result<&cqrs_sql::shred::KeyRing, ApiError> {
    app.keys.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_key_table",
            "this process holds no key table (it serves no order commands)",
        )
    })
}

/// Validates the body's shipping details and seals them under its
/// customer's data key (made on the customer's first order with them).
pub async fn seal(app: &App, body: &mut CreateOrder) -> Result<(), ApiError> {
    let Some(details) = &body.shipping else {
        return Ok(());
    };
    // A bad customer id is the domain's refusal to make: no key for it.
    if !orders::aggregate::is_customer_id(&body.customer_id) {
        return Ok(());
    }
    details
        .validate()
        .map_err(|e| ApiError::from(cqrs_sql::CommandError::Domain(e)))?;
    let sealed = key_ring(app)?
        .seal(&body.customer_id, &details.to_bytes())
        .await
        .map_err(|e| keys_unavailable(&e))?;
    body.sealed_shipping = Some(sealed);
    Ok(())
}

/// Whether `caller` may see the shipping details of an order of `owner`:
/// its customer, the warehouse, operators (everyone when nobody is checked).
pub fn may_see(caller: &Caller, owner: &str) -> bool {
    caller.has(Right::Warehouse)
        || caller.has(Right::Operator)
        || caller.own_customer() == Some(owner)
}

/// Whether `caller` sees shipping details in lists: staff only.
pub fn may_list(caller: &Caller) -> bool {
    caller.has(Right::Warehouse) || caller.has(Right::Operator)
}

/// The views of `records` as their readers see them: the details where
/// the key still opens them, erased where it was deleted.
pub async fn open(
    app: &App,
    records: &[Option<&ShippingRecord>],
) -> Result<Vec<Option<ShippingView>>, ApiError> {
    let sealed: Vec<&cqrs_core::Sealed> = records
        .iter()
        .filter_map(|r| match r {
            Some(ShippingRecord::Sealed(s)) => Some(s),
            _ => None,
        })
        .collect();
    let mut opened = match sealed.is_empty() {
        true => Vec::new(),
        false => key_ring(app)?
            .open_all(&sealed)
            .await
            .map_err(|e| keys_unavailable(&e))?,
    }
    .into_iter();
    let erased = || ShippingView::Erased { erased: true };
    Ok(records
        .iter()
        .map(|r| match r {
            None => None,
            Some(ShippingRecord::Erased) => Some(erased()),
            Some(ShippingRecord::Sealed(_)) => Some(
                opened
                    .next()
                    .flatten()
                    .and_then(|bytes| ShippingDetails::from_bytes(&bytes))
                    .map_or_else(erased, ShippingView::Details),
            ),
        })
        .collect())
}

/// Fills in the shipping details of `orders` that `caller` may see.
pub async fn reveal(
    app: &App,
    caller: &Caller,
    orders: &mut [OrderView],
    list: bool,
) -> Result<(), ApiError> {
    let shown: Vec<bool> = orders
        .iter()
        .map(|o| match list {
            true => may_list(caller),
            false => may_see(caller, &o.customer_id),
        })
        .collect();
    let records: Vec<Option<&ShippingRecord>> = orders
        .iter()
        .zip(&shown)
        .map(|(o, shown)| o.sealed_shipping.as_ref().filter(|_| *shown))
        .collect();
    let views = open(app, &records).await?;
    for (o, v) in orders.iter_mut().zip(views) {
        o.shipping = v;
    }
    Ok(())
}

/// What an erasure did.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Erasure {
    /// The customer.
    pub customer_id: String,
    /// Data keys deleted (0: it had none, or they were deleted already).
    pub keys_deleted: u64,
    /// Orders whose read models were told to drop the details (a
    /// `ShippingErased` event each).
    pub orders: usize,
}

/// `DELETE /customers/{id}/personal-data`: deletes the customer's data key,
/// so that every copy of its shipping details (events, topics, replays,
/// backups) is unreadable, and records a `ShippingErased` event on each of
/// its orders that had them, so that read models drop them. The orders
/// themselves (amounts, statuses) stay. Idempotent: an unknown customer, or
/// one erased already, gets the same answer with nothing to do.
#[utoipa::path(delete, path = "/customers/{id}/personal-data", tag = "commands",
    params(("id" = String, Path, description = "Customer id", min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9_-]*$")),
    responses((status = 202, description = "Erased: the key is deleted; read models drop the details as they apply the events", body = Erasure),
        (status = 400, description = "A bad path segment or a query parameter", body = ErrorBody),
        (status = 403, description = "A customer erasing another's data", body = ErrorBody),
        (status = 503, description = "The write database is unavailable (try again: it is idempotent)", body = ErrorBody)))]
pub(super) async fn erase(
    State(app): State<App>,
    caller: Caller,
    PathParam(id): PathParam<String>,
    QueryParams(_): QueryParams<NoParams>,
) -> Result<Response, ApiError> {
    if !orders::aggregate::is_customer_id(&id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "customer id: 1..=64 characters of A-Z, a-z, 0-9, '_' or '-'",
        ));
    }
    if caller.own_customer().is_some_and(|own| own != id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a customer erases its own personal data only",
        ));
    }
    // The key first: from here on the details are unreadable everywhere,
    // whatever happens next (a retry finds no key and goes on).
    let keys_deleted = key_ring(&app)?
        .erase(&id)
        .await
        .map_err(|e| keys_unavailable(&e))?;
    let ids = orders::read_model::orders_with_shipping(&app.read.pool, &id)
        .await
        .map_err(|e| ApiError::unavailable("the read database", &e))?;
    let mut erased = 0;
    for order in &ids {
        let done = cqrs_sql::execute_cached(
            &app.store,
            Some(&*app.states),
            order,
            &OrderCommand::EraseShipping,
            cqrs_sql::CommandOptions {
                caller: caller.sub().map(str::to_owned),
                ..cqrs_sql::CommandOptions::new()
            },
        )
        .await?;
        if !done.events.is_empty() {
            erased += 1;
        }
    }
    tracing::info!(customer_id = %id, caller = caller.sub(), keys_deleted, orders = erased,
        "personal data erased");
    let body = Erasure {
        customer_id: id,
        keys_deleted,
        orders: erased,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
