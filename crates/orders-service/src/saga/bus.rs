//! Issues the order saga's commands: reservations and releases on the
//! inventory's store, the confirmation and the out-of-stock cancel on the
//! orders' store, each with the saga's idempotency key.

use super::order_saga::{SagaAnswer, SagaCommand};
use cqrs_core::DomainError;
use cqrs_sql::process::{BusError, CommandBus, KeyedLocks};
use cqrs_sql::store::request_hash;
use cqrs_sql::{
    execute, execute_cached, CommandError, CommandOptions, CommandOutcome, IdempotencyRecord,
    SqlEventStore, StateCache,
};
use futures::future::BoxFuture;
use inventory::{Stock, StockCommand};
use orders::{CancelOrder, Order, OrderCommand};

/// The reason the saga cancels an order with.
pub const OUT_OF_STOCK: &str = "out_of_stock";

/// SKUs whose stock state the saga keeps in memory, at most.
const STOCK_STATES: usize = 10_000;

/// The two stores the saga commands.
#[derive(Clone)]
pub struct SagaBus {
    /// The orders' event store.
    pub orders: SqlEventStore,
    /// The inventory's event store.
    pub inventory: SqlEventStore,
    /// The last known state of the SKUs it reserved on: a SKU's history
    /// grows with every order, and every order's reservation would load it
    /// all again. A state another writer made stale (stock added through
    /// the API) is caught at append and decided again on the stored one.
    pub stock_states: std::sync::Arc<StateCache<Stock>>,
    /// One command at a time per SKU from this process: the saga's
    /// concurrent reactions on a popular SKU queue instead of conflicting.
    pub stock_turns: std::sync::Arc<KeyedLocks>,
}

impl SagaBus {
    /// A bus over the two stores.
    pub fn new(orders: SqlEventStore, inventory: SqlEventStore) -> Self {
        Self {
            orders,
            inventory,
            stock_states: std::sync::Arc::new(StateCache::new(STOCK_STATES)),
            stock_turns: std::sync::Arc::default(),
        }
    }
}

fn options(key: String, command: &SagaCommand) -> CommandOptions {
    let hash = request_hash(&[format!("{command:?}").as_bytes()]);
    CommandOptions {
        idempotency: Some(IdempotencyRecord {
            key,
            request_hash: hash,
        }),
        caller: Some(super::SAGA.to_owned()),
        ..CommandOptions::new()
    }
}

/// How a command went: done, or refused with the aggregate's code.
enum Issued {
    Done(CommandOutcome),
    Refused(&'static str),
}

/// A command's result as [`Issued`]; the store away (or anything else that
/// is not the aggregate's refusal) is a [`BusError`]: tried again later.
fn issued<E: std::error::Error + DomainError + 'static>(
    result: Result<CommandOutcome, CommandError<E>>,
) -> Result<Issued, BusError> {
    match result {
        Ok(o) => Ok(Issued::Done(o)),
        Err(CommandError::Domain(e)) => Ok(Issued::Refused(e.code())),
        Err(other) => Err(BusError(other.to_string())),
    }
}

impl SagaBus {
    /// The events a command appended (the first time, for a replayed key).
    async fn events_of(
        &self,
        store: &SqlEventStore,
        outcome: CommandOutcome,
    ) -> Result<Vec<String>, BusError> {
        let events = if outcome.replayed {
            store
                .events_of_command(&outcome.command_id)
                .await
                .map_err(|e| BusError(e.to_string()))?
        } else {
            outcome.events
        };
        Ok(events.into_iter().map(|e| e.event_type).collect())
    }

    async fn on_stock(
        &self,
        sku: &str,
        command: StockCommand,
        key: String,
        saga: &SagaCommand,
    ) -> Result<SagaAnswer, BusError> {
        let asked = std::time::Instant::now();
        let turn = self.stock_turns.lock(sku).await;
        let waited = asked.elapsed();
        let result = execute_cached(
            &self.inventory,
            Some(&*self.stock_states),
            &Stock::id(sku),
            &command,
            options(key, saga),
        )
        .await;
        drop(turn);
        tracing::trace!(
            sku,
            waited_us = waited.as_micros() as u64,
            executed_us = (asked.elapsed() - waited).as_micros() as u64,
            "saga stock command"
        );
        let outcome = match issued(result)? {
            Issued::Done(o) => o,
            Issued::Refused(code) => return Ok(SagaAnswer::Refused(code.to_owned())),
        };
        let rejected = self
            .events_of(&self.inventory, outcome)
            .await?
            .iter()
            .any(|t| t == "ReservationRejected");
        Ok(if rejected {
            SagaAnswer::Rejected
        } else {
            SagaAnswer::Done
        })
    }

    async fn on_order(
        &self,
        order_id: &str,
        command: OrderCommand,
        key: String,
        saga: &SagaCommand,
    ) -> Result<SagaAnswer, BusError> {
        let result =
            execute::<Order, _>(&self.orders, order_id, &command, options(key, saga)).await;
        Ok(match issued(result)? {
            Issued::Done(_) => SagaAnswer::Done,
            Issued::Refused(code) => SagaAnswer::Refused(code.to_owned()),
        })
    }
}

impl CommandBus<SagaCommand, SagaAnswer> for SagaBus {
    fn issue<'a>(
        &'a self,
        command: &'a SagaCommand,
        key: String,
    ) -> BoxFuture<'a, Result<SagaAnswer, BusError>> {
        Box::pin(async move {
            match command {
                SagaCommand::Reserve {
                    order_id,
                    sku,
                    quantity,
                } => {
                    let c = StockCommand::Reserve {
                        order_id: order_id.clone(),
                        quantity: *quantity,
                    };
                    self.on_stock(sku, c, key, command).await
                }
                SagaCommand::Release { order_id, sku } => {
                    let c = StockCommand::Release {
                        order_id: order_id.clone(),
                    };
                    self.on_stock(sku, c, key, command).await
                }
                SagaCommand::Dispatch { order_id, sku } => {
                    let c = StockCommand::Dispatch {
                        order_id: order_id.clone(),
                    };
                    self.on_stock(sku, c, key, command).await
                }
                SagaCommand::Confirm { order_id } => {
                    self.on_order(order_id, OrderCommand::ConfirmStock, key, command)
                        .await
                }
                SagaCommand::CancelOutOfStock { order_id } => {
                    let c = OrderCommand::Cancel(CancelOrder {
                        reason: OUT_OF_STOCK.into(),
                    });
                    self.on_order(order_id, c, key, command).await
                }
            }
        })
    }
}
