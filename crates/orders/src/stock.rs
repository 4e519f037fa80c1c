//! An order's stock, as the order knows it: which of its lines the inventory
//! tracks (decided when it is created, from the inventory's records), and
//! whether the order saga has reserved them. Untracked orders never wait.

use crate::aggregate::OrderEvent;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Where an order's stock stands.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum StockStatus {
    /// Some lines are tracked and not reserved yet: the order cannot ship.
    Pending,
    /// Every tracked line is reserved.
    Reserved,
    /// The order saga found a line out of stock and cancelled the order;
    /// it released whatever it had reserved first, so nothing is held.
    OutOfStock,
    /// The order was cancelled otherwise: it holds no stock any more, and
    /// the saga puts back on the shelf what had been reserved for it.
    Cancelled,
    /// Shipped: its reserved units left the shelf with it.
    Dispatched,
}

/// The reason the order saga cancels an order with.
pub const OUT_OF_STOCK: &str = "out_of_stock";

impl StockStatus {
    /// The name in JSON and in the read DB.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
    /// Parses the JSON/DB name.
    pub fn parse(s: &str) -> Option<StockStatus> {
        match s {
            "pending" => Some(StockStatus::Pending),
            "reserved" => Some(StockStatus::Reserved),
            "out_of_stock" => Some(StockStatus::OutOfStock),
            "cancelled" => Some(StockStatus::Cancelled),
            "dispatched" => Some(StockStatus::Dispatched),
            _ => None,
        }
    }
}

/// Where an order's stock stands after `event`, from `now` (None: none of
/// its lines is tracked, and that never changes after its creation).
pub fn next_stock(now: Option<StockStatus>, event: &OrderEvent) -> Option<StockStatus> {
    match (now, event) {
        (_, OrderEvent::StockReservationRequested { .. }) => Some(StockStatus::Pending),
        (Some(_), OrderEvent::StockReserved {}) => Some(StockStatus::Reserved),
        (Some(_), OrderEvent::OrderCancelled { reason }) if reason == OUT_OF_STOCK => {
            Some(StockStatus::OutOfStock)
        }
        (Some(_), OrderEvent::OrderCancelled { .. }) => Some(StockStatus::Cancelled),
        (Some(StockStatus::Reserved), OrderEvent::OrderShipped { .. }) => {
            Some(StockStatus::Dispatched)
        }
        (now, _) => now,
    }
}

/// Units of one tracked SKU that an order needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLine {
    /// The SKU.
    pub sku: String,
    /// Units, summed over the order's lines of that SKU.
    pub quantity: i64,
}

/// The lines to reserve: units per tracked SKU, in SKU order.
pub fn lines_to_reserve<'a>(
    items: impl IntoIterator<Item = (&'a str, i64)>,
    tracked: &BTreeSet<String>,
) -> Vec<StockLine> {
    let mut units: BTreeMap<&str, i64> = BTreeMap::new();
    for (sku, quantity) in items {
        if tracked.contains(sku) {
            *units.entry(sku).or_default() += quantity;
        }
    }
    units
        .into_iter()
        .map(|(sku, quantity)| StockLine {
            sku: sku.to_owned(),
            quantity,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use StockStatus::*;

    fn requested() -> OrderEvent {
        OrderEvent::StockReservationRequested {
            lines: vec![StockLine {
                sku: "s".into(),
                quantity: 1,
            }],
        }
    }
    fn cancelled(reason: &str) -> OrderEvent {
        OrderEvent::OrderCancelled {
            reason: reason.into(),
        }
    }
    fn shipped() -> OrderEvent {
        OrderEvent::OrderShipped {
            carrier: "c".into(),
            tracking_number: "t".into(),
        }
    }
    /// The stock after each event, from an untracked start.
    fn walk(events: &[OrderEvent]) -> Vec<Option<StockStatus>> {
        events
            .iter()
            .scan(None, |now, e| {
                *now = next_stock(*now, e);
                Some(*now)
            })
            .collect()
    }

    #[test]
    fn the_stock_tells_where_it_stands_after_every_event() {
        let reserved = OrderEvent::StockReserved {};
        assert_eq!(
            walk(&[requested(), reserved.clone(), shipped()]),
            [Some(Pending), Some(Reserved), Some(Dispatched)]
        );
        // The saga's cancel for want of stock: no longer `pending`.
        assert_eq!(
            walk(&[requested(), cancelled(OUT_OF_STOCK)]),
            [Some(Pending), Some(OutOfStock)]
        );
        assert_eq!(
            walk(&[requested(), reserved, cancelled("changed my mind")]),
            [Some(Pending), Some(Reserved), Some(Cancelled)]
        );
        // Untracked orders never get a stock.
        assert_eq!(walk(&[shipped(), cancelled(OUT_OF_STOCK)]), [None, None]);
        for s in [Pending, Reserved, OutOfStock, Cancelled, Dispatched] {
            assert_eq!(StockStatus::parse(s.as_str()), Some(s));
        }
    }
}
