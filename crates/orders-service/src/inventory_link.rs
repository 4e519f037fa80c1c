//! How the order side reaches the inventory, and nothing else does: the
//! saga's stock commands, what they did (for traces), and which SKUs are
//! tracked (for order creation). In one process the inventory's command
//! handler and store answer directly ([`LocalInventory`]); apart, the
//! inventory service's HTTP API answers the commands, and the tracked SKUs
//! come from the order side's own copy of the stock read model, fed from
//! the inventory's topic ([`RemoteInventory`]). Neither opens the other
//! side's write database.

use chrono::{DateTime, Utc};
use cqrs_core::DomainError;
use cqrs_sql::process::KeyedLocks;
use cqrs_sql::{execute_cached, CommandError, CommandOptions, Db, SqlEventStore, StateCache};
use futures::future::BoxFuture;
use inventory::{Stock, StockCommand};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Keys asked for in one `GET /stock-commands` (at most 100 are taken).
const KEYS_PER_LOOKUP: usize = 40;

/// SKUs whose stock state the local link keeps in memory, at most.
const STOCK_STATES: usize = 10_000;

/// What a stock command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockOutcome {
    /// Handled: the types of the events it appended (the first time's,
    /// for a key seen before).
    Done(Vec<String>),
    /// The inventory refused, with its code (`stock_not_tracked`, ...).
    Refused(String),
}

/// A command the inventory stored under an idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyedStockCommand {
    /// The key it was issued with.
    pub key: String,
    /// Its command id.
    pub command_id: String,
    /// The stock it went to (`stock-<sku>`).
    pub aggregate_id: String,
    /// The events it appended, in order.
    pub event_types: Vec<String>,
    /// When its last event was recorded.
    #[schema(value_type = String, format = DateTime)]
    pub committed_at: DateTime<Utc>,
}

/// Why the inventory could not be asked (tried again later: never a
/// refusal).
#[derive(Debug, thiserror::Error)]
#[error("the inventory: {0}")]
pub struct LinkError(pub String);

/// The order side's way to the inventory.
pub trait InventoryLink: Send + Sync {
    /// Issues `command` on `sku`'s stock under the idempotency `key`, whose
    /// first answer any retry gets again.
    fn execute<'a>(
        &'a self,
        sku: &'a str,
        command: StockCommand,
        key: String,
        request_hash: String,
    ) -> BoxFuture<'a, Result<StockOutcome, LinkError>>;

    /// The commands stored under any of `keys`.
    fn keyed<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<KeyedStockCommand>, LinkError>>;

    /// Which of `skus` have stock records.
    fn tracked<'a>(
        &'a self,
        skus: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeSet<String>, LinkError>>;

    /// Where the inventory runs elsewhere: its URL and its `/readyz`
    /// answer (ready, and with an operator's token which dependency is
    /// not). `None`: it runs in this process.
    fn remote_readiness(&self) -> BoxFuture<'_, Option<(String, Result<RemoteReady, LinkError>)>> {
        Box::pin(async { None })
    }
}

/// The inventory service's own word on its readiness.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteReady {
    /// Whether it answered 200.
    pub ready: bool,
    /// Its `checks` (with an operator's token), dependency -> "ok" or why not.
    pub checks: serde_json::Map<String, serde_json::Value>,
}

/// The inventory in this process: its store, commanded directly.
pub struct LocalInventory {
    store: SqlEventStore,
    /// The last known state of the SKUs reserved on: a SKU's history grows
    /// with every order. A state another writer made stale (stock added
    /// through the API) is caught at append and decided again.
    states: Arc<StateCache<Stock>>,
    /// One command at a time per SKU from this process: concurrent
    /// reactions on a popular SKU queue instead of conflicting.
    turns: Arc<KeyedLocks>,
    /// Who the commands are recorded as issued by.
    caller: String,
}

impl LocalInventory {
    /// Over the inventory's store; commands recorded as `caller`'s.
    pub fn new(store: SqlEventStore, caller: &str) -> Self {
        Self {
            store,
            states: Arc::new(StateCache::new(STOCK_STATES)),
            turns: Arc::default(),
            caller: caller.to_owned(),
        }
    }
}

impl LocalInventory {
    /// The inventory's event store.
    pub fn store(&self) -> &SqlEventStore {
        &self.store
    }

    /// Runs `command` on `sku`'s stock: one at a time per SKU from this
    /// process, on the cached state.
    pub async fn command(
        &self,
        sku: &str,
        command: &StockCommand,
        options: CommandOptions,
    ) -> Result<cqrs_sql::CommandOutcome, CommandError<inventory::StockError>> {
        let asked = std::time::Instant::now();
        let turn = self.turns.lock(sku).await;
        let waited = asked.elapsed();
        let result = execute_cached(
            &self.store,
            Some(&*self.states),
            &Stock::id(sku),
            command,
            options,
        )
        .await;
        drop(turn);
        tracing::trace!(
            sku,
            waited_us = waited.as_micros() as u64,
            executed_us = (asked.elapsed() - waited).as_micros() as u64,
            "stock command"
        );
        result
    }
}

/// The types of what `outcome` appended (the first call's, when replayed).
pub async fn event_types(
    store: &SqlEventStore,
    outcome: cqrs_sql::CommandOutcome,
) -> Result<Vec<String>, cqrs_sql::StoreError> {
    let events = if outcome.replayed {
        store.events_of_command(&outcome.command_id).await?
    } else {
        outcome.events
    };
    Ok(events.into_iter().map(|e| e.event_type).collect())
}

/// The commands of `store` under `keys`, with what each appended.
pub async fn keyed_in(
    store: &SqlEventStore,
    keys: &[String],
) -> Result<Vec<KeyedStockCommand>, cqrs_sql::StoreError> {
    let mut found = Vec::new();
    for (key, command_id) in store.keyed_commands(keys).await? {
        let events = store.events_of_command(&command_id).await?;
        let Some(last) = events.last() else { continue };
        found.push(KeyedStockCommand {
            key,
            command_id,
            aggregate_id: last.aggregate_id.clone(),
            committed_at: last.recorded_at,
            event_types: events.iter().map(|e| e.event_type.clone()).collect(),
        });
    }
    Ok(found)
}

impl InventoryLink for LocalInventory {
    fn execute<'a>(
        &'a self,
        sku: &'a str,
        command: StockCommand,
        key: String,
        request_hash: String,
    ) -> BoxFuture<'a, Result<StockOutcome, LinkError>> {
        Box::pin(async move {
            let options = CommandOptions {
                idempotency: Some(cqrs_sql::IdempotencyRecord { key, request_hash }),
                caller: Some(self.caller.clone()),
                ..CommandOptions::new()
            };
            match self.command(sku, &command, options).await {
                Ok(o) => event_types(&self.store, o)
                    .await
                    .map(StockOutcome::Done)
                    .map_err(|e| LinkError(e.to_string())),
                Err(CommandError::Domain(e)) => Ok(StockOutcome::Refused(e.code().to_owned())),
                Err(other) => Err(LinkError(other.to_string())),
            }
        })
    }

    fn keyed<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<KeyedStockCommand>, LinkError>> {
        Box::pin(async move {
            keyed_in(&self.store, keys)
                .await
                .map_err(|e| LinkError(e.to_string()))
        })
    }

    fn tracked<'a>(
        &'a self,
        skus: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeSet<String>, LinkError>> {
        Box::pin(async move {
            let ids: Vec<String> = skus.iter().map(|s| Stock::id(s)).collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let found = self
                .store
                .existing(&ids)
                .await
                .map_err(|e| LinkError(e.to_string()))?;
            Ok(found
                .iter()
                .filter_map(|id| Stock::sku_of(id).map(str::to_owned))
                .collect())
        })
    }
}

/// Body of `POST /inventory/{sku}/reservations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReservationBody {
    /// The order the units are held for (1..=64 characters, no control
    /// characters).
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub order_id: String,
    /// Units, 1..=1,000,000.
    #[schema(minimum = 1, maximum = 1000000)]
    pub quantity: i64,
}

/// Body of `POST /inventory/{sku}/releases` and `.../dispatches`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderStockBody {
    /// The order whose held units are released or dispatched (1..=64
    /// characters, no control characters).
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    pub order_id: String,
}

/// The body of one of the saga's stock routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SagaStockBody {
    /// `POST /inventory/{sku}/reservations`.
    Reservation(ReservationBody),
    /// `POST /inventory/{sku}/releases` or `.../dispatches`.
    Order(OrderStockBody),
}

/// The route (last path segment) and body of a saga command on the
/// inventory's API: the types its handlers read (None: stock in, which the
/// saga never issues).
pub fn route_of(command: StockCommand) -> Option<(&'static str, SagaStockBody)> {
    use SagaStockBody::{Order, Reservation};
    match command {
        StockCommand::Reserve { order_id, quantity } => Some((
            "reservations",
            Reservation(ReservationBody { order_id, quantity }),
        )),
        StockCommand::Release { order_id } => {
            Some(("releases", Order(OrderStockBody { order_id })))
        }
        StockCommand::Dispatch { order_id } => {
            Some(("dispatches", Order(OrderStockBody { order_id })))
        }
        StockCommand::Add { .. } => None,
    }
}

/// The answer of the saga's stock routes (`POST /inventory/{sku}/reservations`,
/// `.../releases`, `.../dispatches`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StockCommandAnswer {
    /// The SKU.
    pub sku: String,
    /// Its stock's version after the command.
    pub version: i64,
    /// Id of the command (the first one's, for a key seen before).
    pub command_id: String,
    /// The types of the events it appended (the first time's).
    pub event_types: Vec<String>,
    /// Whether the key had been seen: this is the first answer again.
    pub replayed: bool,
}

/// The inventory as another service: commands over its HTTP API, tracked
/// SKUs from this side's copy of its read model (fed from its topic).
pub struct RemoteInventory {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
    read: Db,
}

impl RemoteInventory {
    /// The inventory service at `base` (`http://host:port`), called with
    /// `token` as bearer when given; tracked SKUs read from `read`.
    pub fn new(base: &str, token: Option<String>, read: Db) -> Result<Self, LinkError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| LinkError(e.to_string()))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token,
            read,
        })
    }

    fn authorized(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }
}

/// `/` and `%` and the like in a SKU, for a path segment.
fn segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl InventoryLink for RemoteInventory {
    fn remote_readiness(&self) -> BoxFuture<'_, Option<(String, Result<RemoteReady, LinkError>)>> {
        Box::pin(async move {
            let url = format!("{}/readyz", self.base);
            let answer = async {
                let res = self
                    .authorized(self.http.get(&url).timeout(Duration::from_secs(3)))
                    .send()
                    .await
                    .map_err(|e| LinkError(format!("GET {url}: {e}")))?;
                let ready = res.status().is_success();
                let body: serde_json::Value = res
                    .json()
                    .await
                    .map_err(|e| LinkError(format!("GET {url}: the answer: {e}")))?;
                let checks = body
                    .get("checks")
                    .and_then(|c| c.as_object())
                    .cloned()
                    .unwrap_or_default();
                Ok(RemoteReady { ready, checks })
            }
            .await;
            Some((self.base.clone(), answer))
        })
    }

    fn execute<'a>(
        &'a self,
        sku: &'a str,
        command: StockCommand,
        key: String,
        _request_hash: String,
    ) -> BoxFuture<'a, Result<StockOutcome, LinkError>> {
        Box::pin(async move {
            let Some((route, body)) = route_of(command) else {
                return Err(LinkError("stock in is not a saga command".into()));
            };
            let url = format!("{}/inventory/{}/{route}", self.base, segment(sku));
            let mut request = self.authorized(self.http.post(&url));
            // The saga's span (or the trace it continues) goes along: the
            // inventory's spans join the command's trace.
            if let Some(tp) = cqrs_core::trace_context::current() {
                request = request.header("traceparent", tp);
            }
            let res = request
                .header("idempotency-key", &key)
                .json(&body)
                .send()
                .await
                .map_err(|e| LinkError(format!("POST {url}: {e}")))?;
            let status = res.status();
            if status.is_success() {
                let answer: StockCommandAnswer = res
                    .json()
                    .await
                    .map_err(|e| LinkError(format!("POST {url}: the answer: {e}")))?;
                return Ok(StockOutcome::Done(answer.event_types));
            }
            let text = res.text().await.unwrap_or_default();
            let code = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(|c| c.as_str()).map(str::to_owned));
            match code {
                // The inventory's refusals are its answer; anything else
                // that is not a 2xx is tried again.
                Some(code)
                    if status.is_client_error()
                        && inventory::StockError::CODES.contains(&code.as_str()) =>
                {
                    Ok(StockOutcome::Refused(code))
                }
                _ => Err(LinkError(format!("POST {url}: {status}: {text}"))),
            }
        })
    }

    fn keyed<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<KeyedStockCommand>, LinkError>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let url = format!("{}/stock-commands", self.base);
            let mut found = Vec::new();
            // A few keys a request: the URL stays far below the limits.
            for chunk in keys.chunks(KEYS_PER_LOOKUP) {
                let query: Vec<(&str, &str)> = chunk.iter().map(|k| ("key", k.as_str())).collect();
                let res = self
                    .authorized(self.http.get(&url).query(&query))
                    .send()
                    .await
                    .map_err(|e| LinkError(format!("GET {url}: {e}")))?;
                if !res.status().is_success() {
                    let status = res.status();
                    let text = res.text().await.unwrap_or_default();
                    return Err(LinkError(format!("GET {url}: {status}: {text}")));
                }
                let page: Vec<KeyedStockCommand> = res
                    .json()
                    .await
                    .map_err(|e| LinkError(format!("GET {url}: the answer: {e}")))?;
                found.extend(page);
            }
            Ok(found)
        })
    }

    fn tracked<'a>(
        &'a self,
        skus: &'a [String],
    ) -> BoxFuture<'a, Result<BTreeSet<String>, LinkError>> {
        Box::pin(async move {
            let mut found = BTreeSet::new();
            for sku in skus {
                let row = inventory::read_model::stock(&self.read.pool, sku)
                    .await
                    .map_err(|e| LinkError(e.to_string()))?;
                if row.is_some() {
                    found.insert(sku.clone());
                }
            }
            Ok(found)
        })
    }
}
