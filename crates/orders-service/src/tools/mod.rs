//! Tools that start their own instances: the teaching demo, the
//! consistency check and the benchmarks.

pub mod bench;
pub mod demo;
pub mod demo_saga;
pub mod verify;
