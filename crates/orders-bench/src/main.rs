//! `orders-bench`: the benchmarks of the orders service, a binary of its
//! own so that `orders` links neither the plots nor the peer framework.

use clap::Parser;

/// Commands/s and command -> queryable latency, with their baselines.
#[derive(Parser)]
#[command(name = "orders-bench", version)]
struct Cli {
    #[command(flatten)]
    args: orders_bench::BenchArgs,
}

/// mimalloc: glibc's malloc took ~16 % of the command path's CPU here
/// (BENCHMARKS.md, "CPU per command").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    match orders_bench::run(Cli::parse().args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
