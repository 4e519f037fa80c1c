//! The order saga's decisions, with no I/O. Per order:
//!
//! - `StockReservationRequested`: reserve its tracked lines one by one; all
//!   reserved: confirm the order's stock; one rejected: release what was
//!   reserved, cancel the order (`out_of_stock`).
//! - The order refuses the confirmation (cancelled meanwhile): release all.
//! - `OrderCancelled` with anything reserved: release it.
//! - `OrderShipped`: what it holds leaves the shelf (dispatch).

use cqrs_core::EventEnvelope;
use cqrs_sql::process::ProcessManager;
use orders::{OrderEvent, StockLine};
use serde::{Deserialize, Serialize};

/// Where one order's saga stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Nothing asked of it yet (or an untracked order).
    #[default]
    Idle,
    /// Reserving its lines.
    Reserving,
    /// Every line reserved and the order told.
    Reserved,
    /// Out of stock: released and cancelling.
    OutOfStock,
    /// The order was cancelled; nothing is held for it.
    Released,
    /// The order shipped; its units left the shelf.
    Dispatched,
}

/// One order's saga.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaState {
    /// The order.
    pub order_id: String,
    /// Units per tracked SKU it needs.
    pub lines: Vec<StockLine>,
    /// SKUs reserved for it so far.
    pub reserved: Vec<String>,
    /// Where it stands.
    pub phase: Phase,
}

/// What the saga asks of the inventory and of the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaCommand {
    /// `Reserve` on a SKU's stock.
    Reserve {
        /// The order.
        order_id: String,
        /// The SKU.
        sku: String,
        /// Units.
        quantity: i64,
    },
    /// `Release` on a SKU's stock.
    Release {
        /// The order.
        order_id: String,
        /// The SKU.
        sku: String,
    },
    /// `Dispatch` on a SKU's stock.
    Dispatch {
        /// The order.
        order_id: String,
        /// The SKU.
        sku: String,
    },
    /// `ConfirmStock` on the order.
    Confirm {
        /// The order.
        order_id: String,
    },
    /// `CancelOrder` with reason `out_of_stock`.
    CancelOutOfStock {
        /// The order.
        order_id: String,
    },
}

/// How a command went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaAnswer {
    /// Done (reserved, released, confirmed, cancelled; or nothing to do).
    Done,
    /// The reservation did not fit what was available.
    Rejected,
    /// The aggregate refused, with its code (`order_closed`, ...).
    Refused(String),
}

/// The order saga.
pub struct OrderSaga;

fn release_all(s: &SagaState) -> Vec<SagaCommand> {
    s.reserved
        .iter()
        .map(|sku| SagaCommand::Release {
            order_id: s.order_id.clone(),
            sku: sku.clone(),
        })
        .collect()
}

/// The next line to reserve, or the confirmation once all are.
fn next_step(s: &SagaState) -> SagaCommand {
    match s.lines.get(s.reserved.len()) {
        Some(line) => SagaCommand::Reserve {
            order_id: s.order_id.clone(),
            sku: line.sku.clone(),
            quantity: line.quantity,
        },
        None => SagaCommand::Confirm {
            order_id: s.order_id.clone(),
        },
    }
}

impl ProcessManager for OrderSaga {
    const NAME: &'static str = super::SAGA;
    type State = SagaState;
    type Command = SagaCommand;
    type Answer = SagaAnswer;

    fn instance_of(event: &EventEnvelope) -> Option<String> {
        matches!(
            event.event_type.as_str(),
            "StockReservationRequested" | "OrderCancelled" | "OrderShipped"
        )
        .then(|| event.aggregate_id.clone())
    }

    fn on_event(
        state: &SagaState,
        event: &EventEnvelope,
    ) -> Result<(SagaState, Vec<SagaCommand>), String> {
        let decoded = orders::views::decode(event).map_err(|e| e.to_string())?;
        let mut s = state.clone();
        s.order_id = event.aggregate_id.clone();
        Ok(match decoded {
            OrderEvent::StockReservationRequested { lines } if s.phase == Phase::Idle => {
                s.lines = lines;
                s.phase = Phase::Reserving;
                let first = next_step(&s);
                (s, vec![first])
            }
            OrderEvent::OrderShipped { .. } if !s.reserved.is_empty() => {
                let dispatch = s
                    .reserved
                    .iter()
                    .map(|sku| SagaCommand::Dispatch {
                        order_id: s.order_id.clone(),
                        sku: sku.clone(),
                    })
                    .collect();
                s.reserved.clear();
                s.phase = Phase::Dispatched;
                (s, dispatch)
            }
            OrderEvent::OrderCancelled { .. } if !s.reserved.is_empty() => {
                let release = release_all(&s);
                s.reserved.clear();
                s.phase = Phase::Released;
                (s, release)
            }
            _ => (s, Vec::new()),
        })
    }

    fn on_answer(
        state: &SagaState,
        command: &SagaCommand,
        answer: &SagaAnswer,
    ) -> (SagaState, Vec<SagaCommand>) {
        let mut s = state.clone();
        match (command, answer) {
            (SagaCommand::Reserve { sku, .. }, SagaAnswer::Done) => {
                s.reserved.push(sku.clone());
                let next = next_step(&s);
                (s, vec![next])
            }
            (SagaCommand::Reserve { .. }, _) => {
                let mut then = release_all(&s);
                then.push(SagaCommand::CancelOutOfStock {
                    order_id: s.order_id.clone(),
                });
                s.reserved.clear();
                s.phase = Phase::OutOfStock;
                (s, then)
            }
            (SagaCommand::Confirm { .. }, SagaAnswer::Done) => {
                s.phase = Phase::Reserved;
                (s, Vec::new())
            }
            // Cancelled while its stock was being reserved: give it back.
            (SagaCommand::Confirm { .. }, _) => {
                let release = release_all(&s);
                s.reserved.clear();
                s.phase = Phase::Released;
                (s, release)
            }
            (
                SagaCommand::Release { .. }
                | SagaCommand::Dispatch { .. }
                | SagaCommand::CancelOutOfStock { .. },
                _,
            ) => (s, Vec::new()),
        }
    }
}

#[cfg(test)]
#[path = "order_saga_tests.rs"]
mod tests;
