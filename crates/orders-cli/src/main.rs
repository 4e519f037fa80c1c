//! `orders`: the CQRS Orders service and its tools.

use clap::{Parser, Subcommand};
use orders_cli::logs::{init_logs, LogFormat};
use orders_cli::serve::{serve, AuthArgs, HttpArgs, DEFAULT_LISTEN};
use orders_cli::{client, dead_letters, demo, keys, migrate, rebuild, token, trace, verify};
use orders_service::{Config, Role};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "orders",
    version,
    about = "CQRS Orders service: commands -> event store -> projector -> read models"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "ORDERS_LOG", global = true)]
    log: Option<String>,
    /// Log lines as JSON objects or as text [default: json when stderr is
    /// not a terminal (a file, a collector), pretty on a terminal].
    #[arg(long, env = "ORDERS_LOG_FORMAT", global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API with the in-process projector.
    Serve {
        /// Address to listen on [default: 127.0.0.1:8080 for a process with
        /// the API; a relay-only or projector-only process listens only when
        /// given one, for /healthz, /readyz and /metrics].
        #[arg(long, env = "ORDERS_LISTEN")]
        listen: Option<SocketAddr>,
        #[command(flatten)]
        config: Box<Config>,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Mint a bearer token from the HS256 secret (for local use and tests).
    Token(token::TokenArgs),
    /// Run the teaching page's scenario on a fresh embedded instance and print what happened.
    Demo(demo::DemoArgs),
    /// Check that every read model equals the fold of the write-side events
    /// (exit 0 consistent, 1 diverged, 2 lagging: the projector is behind).
    Verify {
        #[command(flatten)]
        config: Config,
        /// How long to wait for the projector to catch up.
        #[arg(long, default_value_t = 10)]
        wait_secs: u64,
    },
    /// Bring the write and read databases to this build's schema (what
    /// `serve` does at start unless --no-migrate) and list what was applied.
    Migrate {
        #[command(flatten)]
        config: Config,
        /// Apply nothing: list what is due and exit 1 if anything is.
        #[arg(long)]
        check: bool,
    },
    /// Inspect and resolve records the projector gave up on.
    DeadLetters {
        #[command(subcommand)]
        action: dead_letters::Action,
        #[command(flatten)]
        config: Config,
    },
    /// The master key of personal data: status, rotation.
    Keys {
        #[command(subcommand)]
        action: keys::Action,
        #[command(flatten)]
        config: Config,
    },
    /// Rebuild read models from history beside the live ones and swap them in.
    #[command(alias = "replay")]
    Rebuild {
        #[command(flatten)]
        args: rebuild::RebuildArgs,
        #[command(flatten)]
        config: Config,
    },
    /// Client: create an order.
    Create(client::CreateArgs),
    /// Client: pay an order.
    Pay(client::PayArgs),
    /// Client: ship an order.
    Ship(client::ShipArgs),
    /// Client: mark an order delivered.
    Deliver(client::IdArgs),
    /// Client: cancel an order.
    Cancel(client::CancelArgs),
    /// Client: erase a customer's personal data (its shipping details).
    Erase(client::EraseArgs),
    /// Client: show an order.
    Get(client::GetArgs),
    /// Client: list orders.
    List(client::ListArgs),
    /// Client: the journey of one command through every stage.
    Trace(trace::TraceArgs),
}

/// mimalloc: glibc's malloc took ~16 % of the command path's CPU here
/// (BENCHMARKS.md, "CPU per command").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long the runtime waits, at exit, for blocking work still running
/// (a Kafka consumer closing its group session can hang: a process that
/// has stopped its roles must not hang with it).
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run_main());
    runtime.shutdown_timeout(EXIT_GRACE);
    orders_cli::telemetry::shutdown();
    code
}

async fn run_main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Command::Demo(_));
    let default_filter = if quiet { "warn" } else { "info,sqlx=warn" };
    let format = init_logs(cli.log.as_deref(), cli.log_format, default_filter);
    let serving = matches!(cli.command, Command::Serve { .. });
    let args: Vec<String> = std::env::args().collect();
    for warning in orders_cli::logs::secrets_in_flags(&args) {
        tracing::warn!("{warning}");
    }
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever RUST_BACKTRACE says: the cause chain, not
            // frames; a server writing JSON logs says it as one more record.
            let why = orders_cli::logs::cause_chain(e.as_ref());
            if serving && format == LogFormat::Json {
                tracing::error!(error = %why, "exiting");
            } else {
                eprintln!("error: {why}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            config,
            http,
            auth,
        } => {
            let config = auth.apply(config.read_secret_files()?)?;
            let default = config.runs(Role::Api).then_some(DEFAULT_LISTEN);
            let listen = listen.or(default);
            if let Some(addr) = listen {
                auth.check_exposure(addr)?;
            }
            serve(listen, config, http).await
        }
        Command::Token(a) => token::token(a),
        Command::Demo(args) => demo::run(args).await,
        Command::Verify { config, wait_secs } => {
            let config = config.read_secret_files()?;
            let report = verify::verify(&config, Duration::from_secs(wait_secs)).await?;
            print!("{report}");
            exit_with(report.exit_code())
        }
        Command::Rebuild { args, config } => rebuild::run(args, &config.read_secret_files()?).await,
        Command::Migrate { config, check } => {
            exit_with(migrate::run(&config.read_secret_files()?, check).await?)
        }
        Command::DeadLetters { action, config } => {
            dead_letters::run(action, &config.read_secret_files()?).await
        }
        Command::Keys { action, config } => keys::run(action, &config.read_secret_files()?).await,
        Command::Create(a) => client::create(a).await,
        Command::Pay(a) => client::pay(a).await,
        Command::Ship(a) => client::ship(a).await,
        Command::Deliver(a) => client::deliver(a).await,
        Command::Cancel(a) => client::cancel(a).await,
        Command::Erase(a) => client::erase(a).await,
        Command::Get(a) => client::get(a).await,
        Command::List(a) => client::list(a).await,
        Command::Trace(a) => trace::print(a).await,
    }
}

/// Ends the process with `code` (0: returns, for a normal exit).
fn exit_with(code: i32) -> anyhow::Result<()> {
    match code {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}
