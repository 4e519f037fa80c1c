//! Issues the order saga's commands: reservations, releases and dispatches
//! through the inventory link (in this process or over its HTTP API), the
//! confirmation and the out-of-stock cancel on the orders' store, each with
//! the saga's idempotency key.

use super::order_saga::{SagaAnswer, SagaCommand};
use crate::inventory_link::{InventoryLink, StockOutcome};
use cqrs_core::DomainError;
use cqrs_sql::process::{BusError, CommandBus};
use cqrs_sql::store::request_hash;
use cqrs_sql::{execute, CommandError, CommandOptions, IdempotencyRecord, SqlEventStore};
use futures::future::BoxFuture;
use inventory::StockCommand;
use orders::{CancelOrder, Order, OrderCommand};
use std::sync::Arc;

pub use orders::stock::OUT_OF_STOCK;

/// Where the saga's commands go.
#[derive(Clone)]
pub struct SagaBus {
    /// The orders' event store.
    pub orders: SqlEventStore,
    /// The inventory: in this process, or its service.
    pub inventory: Arc<dyn InventoryLink>,
}

impl SagaBus {
    /// A bus over the orders' store and the inventory.
    pub fn new(orders: SqlEventStore, inventory: Arc<dyn InventoryLink>) -> Self {
        Self { orders, inventory }
    }
}

fn hash_of(command: &SagaCommand) -> String {
    request_hash(&[format!("{command:?}").as_bytes()])
}

fn options(key: String, command: &SagaCommand) -> CommandOptions {
    CommandOptions {
        idempotency: Some(IdempotencyRecord {
            key,
            request_hash: hash_of(command),
        }),
        caller: Some(super::SAGA.to_owned()),
        ..CommandOptions::new()
    }
}

impl SagaBus {
    async fn on_stock(
        &self,
        sku: &str,
        command: StockCommand,
        key: String,
        saga: &SagaCommand,
    ) -> Result<SagaAnswer, BusError> {
        // The inventory away (or anything that is not its refusal) is a
        // BusError: the batch is tried again, never dead-lettered.
        let outcome = self
            .inventory
            .execute(sku, command, key, hash_of(saga))
            .await
            .map_err(|e| BusError(e.to_string()))?;
        Ok(match outcome {
            StockOutcome::Refused(code) => SagaAnswer::Refused(code),
            StockOutcome::Done(events) if events.iter().any(|t| t == "ReservationRejected") => {
                SagaAnswer::Rejected
            }
            StockOutcome::Done(_) => SagaAnswer::Done,
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
        match result {
            Ok(_) => Ok(SagaAnswer::Done),
            Err(CommandError::Domain(e)) => Ok(SagaAnswer::Refused(e.code().to_owned())),
            Err(other) => Err(BusError(other.to_string())),
        }
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
