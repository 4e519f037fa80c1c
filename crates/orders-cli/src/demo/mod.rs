//! `orders demo`: the teaching page's scenario (create an order, then query
//! its status), or the two services' (`--saga`), run for real on a fresh
//! embedded instance and printed as the page's step table and state
//! tracker from what actually happened.

pub mod page;
pub mod saga;
pub mod tables;

pub use page::{DemoRun, Snapshot};
pub use tables::{Step, WIDTH};

use orders_service::server::{Config, Running};
use std::time::Duration;

/// Options of `orders demo`.
#[derive(clap::Args, Clone)]
pub struct DemoArgs {
    /// Delay the projector before applying, to show a stale read and then the
    /// consistent read that waits with the token.
    #[arg(long, default_value_t = 0)]
    pub projector_delay_ms: u64,
    /// Print the captured run as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// The two-service flow instead: stock, an order the saga reserves, one
    /// it cancels out of stock.
    #[arg(long)]
    pub saga: bool,
    /// Widest the tables may be, in columns: cells wrap to fit (and to a
    /// narrower terminal); 0 never wraps, one row a line, for grep.
    #[arg(long, default_value_t = WIDTH)]
    pub width: u16,
}

/// `orders demo`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::embedded(dir.path());
    config.projector_delay = Duration::from_millis(args.projector_delay_ms);
    let running = Running::start(&config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = running.spawn_server(listener);
    let result = match args.saga {
        true => saga::scenario(&running, &base).await.map(Captured::Saga),
        false => page::scenario(&running, &base, args.projector_delay_ms > 0)
            .await
            .map(Captured::Page),
    };
    server.abort();
    running.stop().await?;
    match (result?, args.json) {
        (Captured::Page(run), true) => println!("{}", serde_json::to_string_pretty(&run)?),
        (Captured::Saga(run), true) => println!("{}", serde_json::to_string_pretty(&run)?),
        (Captured::Page(run), false) => {
            println!("{run:w$}", w = usize::from(args.width));
            println!("Embedded mode: SQLite write DB (its event log is the outbox), tailed by an");
            println!("in-process projector, SQLite read DB.");
            if args.projector_delay_ms == 0 {
                println!(
                    "Try `orders demo --projector-delay-ms 500` to see a stale read, then the"
                );
                println!("token's consistent read.");
            }
        }
        (Captured::Saga(run), false) => {
            println!("{run:w$}", w = usize::from(args.width));
            println!("Embedded mode: two SQLite write DBs (orders, inventory), each log its own");
            println!("outbox; the saga and both projectors tail them in process.");
        }
    }
    Ok(())
}

/// What a demo captured: the teaching page's scenario, or the saga's.
enum Captured {
    Page(DemoRun),
    Saga(saga::SagaRun),
}
