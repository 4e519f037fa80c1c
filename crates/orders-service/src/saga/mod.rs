//! The order saga: the process manager between the orders and the
//! inventory. `order_saga.rs` is its pure core (state, events in, commands
//! out); `bus.rs` issues its commands on the two event stores. It runs in
//! the projector role, as a projector of its own (`order_saga`) over the
//! orders' log or topic, through `cqrs_sql::process`.

pub mod bus;
pub mod order_saga;

pub use bus::SagaBus;
pub use order_saga::{OrderSaga, Phase, SagaAnswer, SagaCommand, SagaState};

/// The saga's projector name (checkpoints, versions, state, keys).
pub const SAGA: &str = "order_saga";
