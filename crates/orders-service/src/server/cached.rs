//! Query answers kept in memory (`cqrs_sql::ReadCache`): an order by id is
//! answered from memory while no newer version of it was applied, a
//! customer's summary and the stats while the read model has not moved.
//! What is kept is the answer's JSON and whose it is, so a hit costs no
//! database round trip and no serialisation, and ownership is checked on
//! every hit as on every read.

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use cqrs_core::ConsistencyToken;
use cqrs_sql::{ReadCache, ReadProgress, Stamp};
use std::sync::Arc;
use std::time::Duration;

/// An answer as it is sent, and the customer it belongs to.
#[derive(Debug)]
pub struct Cached {
    /// The customer whose answer it is (ownership is checked on each hit).
    pub owner: String,
    /// The JSON body.
    pub json: Bytes,
    /// An order's shipping details as sealed (never in `json`): opened per
    /// request for those who may see them.
    pub sealed: Option<orders::shipping::ShippingRecord>,
}

impl Cached {
    /// The 200 answer.
    pub fn response(&self) -> Response {
        (
            [(header::CONTENT_TYPE, "application/json")],
            self.json.clone(),
        )
            .into_response()
    }
}

/// The caches of the order read models.
#[derive(Debug, Clone)]
pub struct Caches {
    /// Orders by id.
    pub orders: Arc<ReadCache<Cached>>,
    /// Customer summaries by customer id.
    pub summaries: Arc<ReadCache<Cached>>,
    /// The stats (one entry).
    pub stats: Arc<ReadCache<Cached>>,
}

impl Caches {
    /// Caches over `progress` sharing `bytes` (most of it for orders).
    pub fn new(progress: &ReadProgress, bytes: usize, ttl: Duration) -> Self {
        let cache = |name, share: usize| {
            Arc::new(ReadCache::new(
                name,
                progress.clone(),
                bytes / 8 * share,
                ttl,
            ))
        };
        Self {
            orders: cache("orders", 6),
            summaries: cache("customer_summaries", 1),
            stats: cache("stats", 1),
        }
    }
}

/// `value` as JSON, kept under `key` (a row at `version`, or an answer
/// over many when `None`), and its answer.
pub fn keep<T: serde::Serialize>(
    cache: &ReadCache<Cached>,
    key: &str,
    version: Option<i64>,
    stamp: Stamp,
    owner: &str,
    value: &T,
    sealed: Option<orders::shipping::ShippingRecord>,
) -> Response {
    let Ok(json) = serde_json::to_vec(value) else {
        return axum::Json(value).into_response();
    };
    let cached = Cached {
        owner: owner.to_owned(),
        json: Bytes::from(json),
        sealed,
    };
    let res = cached.response();
    let bytes = cached.json.len() + cached.owner.len();
    match version {
        Some(v) => cache.put_row(key, v, stamp, cached, bytes),
        None => cache.put_current(key, stamp, cached, bytes),
    }
    res
}

/// The token as the cache takes it.
pub fn token_of(token: &Option<ConsistencyToken>) -> Option<(&str, i64)> {
    token.as_ref().map(|t| (t.aggregate_id.as_str(), t.version))
}
