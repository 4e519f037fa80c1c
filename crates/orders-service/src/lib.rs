//! The `orders` service: wiring of the Orders domain to the event store, the
//! projector and the HTTP API, plus the demo, bench and client commands.

pub mod api;
pub mod app;
pub mod bench;
pub mod bench_history;
pub mod bench_kafka;
pub mod bench_peer;
pub mod bench_pg;
pub mod bench_plot;
pub mod bench_report;
pub mod bench_sweep;
pub mod client;
pub mod dead_letters;
pub mod demo;
pub mod live;
pub mod observe;
pub mod replay;
pub mod trace;
pub mod verify;

pub use app::{App, Config, Running};
