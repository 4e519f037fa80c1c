//! Commands that talk to a running service or operate on its databases:
//! the HTTP client, command traces, dead letters and replay.

pub mod client;
pub mod dead_letters;
pub mod migrate;
pub mod replay;
pub mod trace;
