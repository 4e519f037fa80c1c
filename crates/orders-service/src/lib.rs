//! The orders service as a library: how a process is configured
//! ([`config`]), its HTTP API, live page and roles ([`server`]), and the
//! order saga between the orders and the inventory ([`saga`]). The `orders`
//! binary (crate `orders-cli`) and the bench (`orders-bench`) drive it.

pub mod config;
pub mod inventory_link;
pub mod saga;
pub mod server;

pub use config::{Config, KafkaOptions, Role, INVENTORY_PROJECTOR, PROJECTOR};
pub use server::{App, Running};
