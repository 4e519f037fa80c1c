//! The `orders` binary's parts: `serve` (with its listener, limits and
//! authentication), the operator's tools on the databases (`migrate`,
//! `verify`, `rebuild`, `dead-letters`), the teaching demo, and the client
//! commands that talk to a running server over HTTP.

pub mod client;
pub mod dead_letters;
pub mod demo;
pub mod keys;
pub mod logs;
pub mod migrate;
pub mod rebuild;
pub mod serve;
pub mod telemetry;
pub mod token;
pub mod trace;
pub mod verify;
