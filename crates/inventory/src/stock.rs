//! Stock of one SKU. Tracked from its first `StockAdded`: before that a SKU
//! has no stock records and is not the inventory's business (always
//! available to orders). Available = on hand - reserved, never below zero:
//! a reservation that does not fit is recorded as rejected.

use cqrs_core::{Aggregate, DomainError, DomainEvent, ErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most units one `AddStock` may add.
pub const MAX_ADD: i64 = 1_000_000;
/// Most units on hand of one SKU (sums stay far from i64's limit).
pub const MAX_ON_HAND: i64 = 1_000_000_000_000;

/// The aggregate: the stock of one SKU.
pub struct Stock;

impl Stock {
    /// The aggregate id of `sku`'s stock (SKUs and order ids share the
    /// store's id space; the prefix keeps them apart).
    pub fn id(sku: &str) -> String {
        format!("stock:{sku}")
    }

    /// The SKU of a stock aggregate id.
    pub fn sku_of(aggregate_id: &str) -> Option<&str> {
        aggregate_id.strip_prefix("stock:")
    }
}

/// What the inventory is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockCommand {
    /// Adds units on hand.
    Add {
        /// Units, 1..=1,000,000.
        quantity: i64,
    },
    /// Holds units for an order (nothing new when the order holds them already).
    Reserve {
        /// The order.
        order_id: String,
        /// Units, at least 1.
        quantity: i64,
    },
    /// Gives back what an order holds (nothing when it holds nothing).
    Release {
        /// The order.
        order_id: String,
    },
    /// The order shipped: what it holds leaves the shelf (nothing when it
    /// holds nothing).
    Dispatch {
        /// The order.
        order_id: String,
    },
}

/// What happened to a SKU's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
pub enum StockEvent {
    /// Units arrived.
    StockAdded {
        /// How many.
        quantity: i64,
    },
    /// Units held for an order.
    StockReserved {
        /// The order.
        order_id: String,
        /// How many.
        quantity: i64,
    },
    /// A reservation that did not fit what was available: recorded as a
    /// fact, so that a retried reservation gets the same answer.
    ReservationRejected {
        /// The order.
        order_id: String,
        /// Units asked for.
        requested: i64,
        /// Units available then.
        available: i64,
    },
    /// An order's units given back.
    ReservationReleased {
        /// The order.
        order_id: String,
        /// How many.
        quantity: i64,
    },
    /// An order's units left with it: off the shelf and no longer held.
    StockDispatched {
        /// The order.
        order_id: String,
        /// How many.
        quantity: i64,
    },
}

impl DomainEvent for StockEvent {
    fn event_type(&self) -> &'static str {
        self.into()
    }
}

/// Why the inventory refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StockError {
    /// A field breaks a rule.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as named in the request.
        field: &'static str,
        /// The rule.
        reason: String,
    },
    /// A reservation for a SKU with no stock records.
    #[error("this SKU has no stock records: it is not tracked")]
    NotTracked,
    /// The order holds another quantity already.
    #[error("the order holds {held} units already, not {requested}")]
    ReservationMismatch {
        /// Units held.
        held: i64,
        /// Units asked for now.
        requested: i64,
    },
}

impl StockError {
    /// Every code `code()` answers: what a caller over HTTP takes as the
    /// inventory's refusal.
    pub const CODES: [&'static str; 3] =
        ["invalid_field", "stock_not_tracked", "reservation_mismatch"];
}

impl DomainError for StockError {
    fn kind(&self) -> ErrorKind {
        match self {
            StockError::Invalid { field, .. } => ErrorKind::Invalid {
                field: (*field).to_owned(),
            },
            StockError::NotTracked => ErrorKind::NotFound,
            _ => ErrorKind::Conflict,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            StockError::Invalid { .. } => "invalid_field",
            StockError::NotTracked => "stock_not_tracked",
            StockError::ReservationMismatch { .. } => "reservation_mismatch",
        }
    }
}

/// A SKU's stock: units on hand and each order's reservation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockState {
    /// Whether any stock was ever added.
    pub tracked: bool,
    /// Units on hand (reserved ones included).
    pub on_hand: i64,
    /// Units held, per order.
    pub reservations: BTreeMap<String, i64>,
}

impl StockState {
    /// Units held for orders.
    pub fn reserved(&self) -> i64 {
        self.reservations.values().sum()
    }
    /// Units that can still be reserved.
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved()
    }
}

impl Aggregate for Stock {
    const TYPE: &'static str = "stock";
    type State = StockState;
    type Command = StockCommand;
    type Event = StockEvent;
    type Error = StockError;

    fn decide(s: &StockState, command: &StockCommand) -> Result<Vec<StockEvent>, StockError> {
        match command {
            StockCommand::Add { quantity } => add(s, *quantity),
            StockCommand::Reserve { order_id, quantity } => reserve(s, order_id, *quantity),
            StockCommand::Release { order_id } => Ok(s
                .reservations
                .get(order_id)
                .map(|&quantity| StockEvent::ReservationReleased {
                    order_id: order_id.clone(),
                    quantity,
                })
                .into_iter()
                .collect()),
            StockCommand::Dispatch { order_id } => Ok(s
                .reservations
                .get(order_id)
                .map(|&quantity| StockEvent::StockDispatched {
                    order_id: order_id.clone(),
                    quantity,
                })
                .into_iter()
                .collect()),
        }
    }

    fn evolve(mut s: StockState, event: &StockEvent) -> StockState {
        match event {
            StockEvent::StockAdded { quantity } => {
                s.tracked = true;
                s.on_hand += quantity;
            }
            // Reserved units leave the shelf when the order ships
            // (`StockDispatched`); until then they are on hand and held.
            StockEvent::StockReserved { order_id, quantity } => {
                s.reservations.insert(order_id.clone(), *quantity);
            }
            StockEvent::ReservationReleased { order_id, .. } => {
                s.reservations.remove(order_id);
            }
            StockEvent::ReservationRejected { .. } => {}
            StockEvent::StockDispatched { order_id, quantity } => {
                s.on_hand -= quantity;
                s.reservations.remove(order_id);
            }
        }
        s
    }
}

fn add(s: &StockState, quantity: i64) -> Result<Vec<StockEvent>, StockError> {
    if !(1..=MAX_ADD).contains(&quantity) {
        return Err(StockError::Invalid {
            field: "quantity",
            reason: format!("must be 1..={MAX_ADD}, got {quantity}"),
        });
    }
    if s.on_hand + quantity > MAX_ON_HAND {
        return Err(StockError::Invalid {
            field: "quantity",
            reason: format!("on hand would pass {MAX_ON_HAND}"),
        });
    }
    Ok(vec![StockEvent::StockAdded { quantity }])
}

fn reserve(s: &StockState, order_id: &str, quantity: i64) -> Result<Vec<StockEvent>, StockError> {
    if quantity < 1 {
        return Err(StockError::Invalid {
            field: "quantity",
            reason: format!("must be at least 1, got {quantity}"),
        });
    }
    if !s.tracked {
        return Err(StockError::NotTracked);
    }
    match s.reservations.get(order_id) {
        Some(&held) if held == quantity => Ok(Vec::new()),
        Some(&held) => Err(StockError::ReservationMismatch {
            held,
            requested: quantity,
        }),
        None if quantity > s.available() => Ok(vec![StockEvent::ReservationRejected {
            order_id: order_id.to_owned(),
            requested: quantity,
            available: s.available(),
        }]),
        None => Ok(vec![StockEvent::StockReserved {
            order_id: order_id.to_owned(),
            quantity,
        }]),
    }
}

#[cfg(test)]
#[path = "stock_tests.rs"]
mod tests;
