//! The `orders serve` process: its configuration, the state its handlers
//! share, the HTTP routes, the live page, observability, command traces and
//! the wiring that starts and stops its roles.

pub mod access;
pub mod api;
pub mod cached;
pub mod commands;
mod databases;
pub mod inventory;
pub mod live;
mod membership;
pub mod metrics_catalog;
pub mod observe;
pub mod ops;
pub mod personal;
pub mod queries;
pub mod rebuilds;
pub mod routes;
pub mod schema;
mod sides;
pub mod state;
pub mod telemetry;
pub mod trace;
pub mod tracked;
pub mod wiring;

pub use crate::config::{Config, KafkaOptions, Role, INVENTORY_PROJECTOR, PROJECTOR};
pub use state::{App, AppState};
pub use wiring::Running;
