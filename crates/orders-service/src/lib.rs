//! The `orders` service: wiring of the Orders domain to the event store, the
//! projector and the HTTP API (`server`), the commands that talk to a
//! running one (`cli`), and the demo, verify and bench tools (`tools`).

pub mod cli;
pub mod saga;
pub mod server;
pub mod tools;

pub use server::{App, Config, Running};
