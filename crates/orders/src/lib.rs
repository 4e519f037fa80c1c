//! The Orders domain: a pure aggregate (commands, events, rules) and the read
//! models that the same event stream feeds.

pub mod aggregate;
pub mod event_versions;
pub mod money;
pub mod read_model;
pub mod shipping;
pub mod stock;
pub mod views;

pub use aggregate::{
    CancelOrder, CommandKind, CreateOrder, LineItem, Order, OrderCommand, OrderError, OrderEvent,
    OrderLine, OrderState, PayOrder, ShipOrder, Status,
};
pub use money::Cents;
pub use stock::{StockLine, StockStatus};
