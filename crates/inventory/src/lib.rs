//! The Inventory domain, a second service beside Orders: stock per SKU as a
//! pure aggregate (`Stock`: add stock, reserve for an order, release an
//! order's reservation; never negative, one reservation per order) and its
//! read model (on hand, reserved, available per SKU). It knows nothing of
//! orders beyond an order's id; the order saga ties the two together.

pub mod read_model;
pub mod stock;

pub use stock::{Stock, StockCommand, StockError, StockEvent, StockState};
