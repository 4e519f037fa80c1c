//! `orders`: the CQRS Orders service and its tools.

use anyhow::Context;
use clap::{Parser, Subcommand};
use cqrs_http::auth::{mint_hs256, JwtOptions, Mint, Secret};
use cqrs_http::tls::ServerCert;
use cqrs_kafka::KafkaProperties;
use orders_service::cli::{client, dead_letters, migrate, replay, trace};
use orders_service::server::config::defaults;
use orders_service::server::{KafkaOptions, Role};
use orders_service::tools::{bench, demo};
use orders_service::{Config, Running};
use std::net::SocketAddr;
use std::path::PathBuf;
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

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One JSON object per line: timestamp, level, target, message and fields.
    Json,
    /// Text for people (colours only on a terminal).
    Pretty,
}

/// Where the data lives.
#[derive(clap::Args, Clone)]
struct DbArgs {
    /// Directory of the embedded SQLite databases.
    #[arg(long, env = "ORDERS_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Write database (postgres://...); embedded SQLite when absent.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Read database; defaults to the write database's server, or SQLite.
    #[arg(long, env = "READ_DATABASE_URL")]
    read_database_url: Option<String>,
    /// The inventory's own write database [default: inventory.db beside the
    /// SQLite files, or WRITE_DB_inventory on the write database's
    /// PostgreSQL server, created when missing].
    #[arg(long, env = "INVENTORY_DATABASE_URL")]
    inventory_database_url: Option<String>,
    /// Create a PostgreSQL database the URLs name when it does not exist
    /// (as the URL's user, who needs the CREATEDB right).
    #[arg(long, env = "ORDERS_CREATE_DATABASE")]
    create_database: bool,
    /// Do not apply due schema migrations at start; refuse to start while
    /// any is due (run `orders migrate` as a deploy step instead).
    #[arg(long, env = "ORDERS_NO_MIGRATE")]
    no_migrate: bool,
    /// SQLite synchronous mode: NORMAL survives process crashes, FULL also power loss.
    #[arg(long, env = "ORDERS_SQLITE_SYNCHRONOUS", default_value = defaults::SQLITE_SYNCHRONOUS)]
    sqlite_synchronous: String,
    /// Connections per database pool.
    #[arg(long, env = "ORDERS_POOL_SIZE", default_value_t = defaults::POOL_SIZE)]
    pool_size: u32,
    /// Orders whose saga reactions of one batch run at once (1: one after
    /// another).
    #[arg(long, env = "ORDERS_SAGA_CONCURRENCY", default_value_t = defaults::SAGA_CONCURRENCY,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    saga_concurrency: u16,
    /// Delay the projector applies before each batch (shows stale reads).
    #[arg(long, env = "ORDERS_PROJECTOR_DELAY_MS", default_value_t = 0)]
    projector_delay_ms: u64,
    /// Kafka bootstrap servers; the embedded log when absent.
    #[arg(long, env = "KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Events topic.
    #[arg(long, env = "ORDERS_KAFKA_TOPIC", default_value = defaults::KAFKA_TOPIC)]
    kafka_topic: String,
    /// The inventory's events topic [default: inventory.events beside
    /// orders.events, X.inventory.events beside X.events]; its projectors'
    /// group is TOPIC.projectors.
    #[arg(long, env = "ORDERS_KAFKA_INVENTORY_TOPIC")]
    kafka_inventory_topic: Option<String>,
    /// Partitions of the events topic when it is created.
    #[arg(long, env = "ORDERS_KAFKA_PARTITIONS", default_value_t = defaults::KAFKA_PARTITIONS)]
    kafka_partitions: i32,
    /// Replication factor when topics are created.
    #[arg(long, env = "ORDERS_KAFKA_REPLICATION", default_value_t = defaults::KAFKA_REPLICATION)]
    kafka_replication: i32,
    /// Consumer group of the projectors (default: TOPIC.projectors).
    #[arg(long, env = "ORDERS_KAFKA_GROUP")]
    kafka_group: Option<String>,
    /// A librdkafka property for every Kafka client, KEY=VALUE (repeatable;
    /// comma-separated in the environment): TLS and SASL, e.g.
    /// security.protocol=SASL_SSL, sasl.mechanisms=SCRAM-SHA-512,
    /// sasl.username=..., sasl.password=..., ssl.ca.location=...
    #[arg(long = "kafka-property", env = "ORDERS_KAFKA_PROPERTIES", value_delimiter = ',',
          hide_env_values = true, value_parser = KafkaProperties::parse_one)]
    kafka_properties: Vec<(String, String)>,
    /// How long a dead projector holds its partitions.
    #[arg(
        long,
        env = "ORDERS_KAFKA_SESSION_TIMEOUT_MS",
        default_value_t = defaults::KAFKA_SESSION_TIMEOUT_MS
    )]
    kafka_session_timeout_ms: u32,
    /// How long command traces are kept, in seconds.
    #[arg(long, env = "ORDERS_TRACE_RETENTION_SECS", default_value_t = defaults::TRACE_RETENTION_SECS)]
    trace_retention_secs: u64,
    /// What this process runs (repeatable: api, relay, projector); all when absent.
    #[arg(long = "role", env = "ORDERS_ROLES", value_enum, value_delimiter = ',')]
    roles: Vec<Role>,
}

impl DbArgs {
    fn config(&self) -> Config {
        Config {
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            inventory_database_url: self.inventory_database_url.clone(),
            read_database_url: self.read_database_url.clone(),
            projector_delay: Duration::from_millis(self.projector_delay_ms),
            sqlite_synchronous: self.sqlite_synchronous.clone(),
            pool_size: self.pool_size,
            saga_concurrency: usize::from(self.saga_concurrency),
            kafka: self.kafka_brokers.as_ref().map(|b| KafkaOptions {
                brokers: b.clone(),
                topic: self.kafka_topic.clone(),
                partitions: self.kafka_partitions,
                replication: self.kafka_replication,
                group_id: self
                    .kafka_group
                    .clone()
                    .unwrap_or_else(|| defaults::kafka_group(&self.kafka_topic)),
                session_timeout_ms: self.kafka_session_timeout_ms,
                properties: KafkaProperties(self.kafka_properties.clone()),
                inventory_topic: self.kafka_inventory_topic.clone(),
            }),
            roles: self.roles.clone(),
            trace_retention: Duration::from_secs(self.trace_retention_secs),
            jwt: None,
            metrics_public: false,
            create_database: self.create_database,
            migrate: !self.no_migrate,
        }
    }
}

/// Limits of the HTTP server.
#[derive(clap::Args, Clone)]
struct HttpArgs {
    /// Seconds a client has to send a complete request head, from when the
    /// connection opens or its previous response ends (so it also closes
    /// idle keep-alive connections).
    #[arg(long, env = "ORDERS_HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    http_header_timeout_secs: u64,
    /// Seconds a client has to send a complete request body.
    #[arg(long, env = "ORDERS_HTTP_BODY_TIMEOUT_SECS", default_value_t = 10)]
    http_body_timeout_secs: u64,
    /// Largest request body in bytes (a larger declared one is refused
    /// before it is read).
    #[arg(long, env = "ORDERS_HTTP_MAX_BODY_BYTES", default_value_t = cqrs_http::MAX_BODY_BYTES)]
    http_max_body_bytes: usize,
    /// Open connections at most (kept below the file-descriptor limit);
    /// more are answered 503 and closed.
    #[arg(long, env = "ORDERS_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    http_max_connections: usize,
    /// Seconds from SIGTERM to exit: open requests finish, live streams and
    /// consistency waits end, the roles stop; whatever remains is dropped.
    #[arg(long, env = "ORDERS_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    shutdown_timeout_secs: u64,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); read
    /// again on SIGHUP.
    #[arg(long, env = "ORDERS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "ORDERS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl HttpArgs {
    /// The server's limits; draining connections gets most of the shutdown
    /// time, stopping the roles the rest.
    fn limits(&self) -> cqrs_http::ServerLimits {
        cqrs_http::ServerLimits {
            header_timeout: Duration::from_secs(self.http_header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(self.http_body_timeout_secs.max(1)),
            max_body_bytes: self.http_max_body_bytes.max(1),
            max_connections: self.http_max_connections.max(1),
            shutdown_timeout: self.shutdown_timeout().mul_f64(0.7),
        }
        .fitted_to_fd_limit()
    }
    fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs.max(1))
    }

    /// The TLS acceptor, when HTTPS is asked for, with a task that reads
    /// the certificate again on SIGHUP.
    fn tls(&self) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let cert = ServerCert::load(cert, key)?;
        let acceptor = cert.acceptor()?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                match cert.reload() {
                    Ok(()) => tracing::info!("TLS certificate reloaded"),
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate not reloaded; the one in use stays")
                    }
                }
            }
        });
        Ok(Some(acceptor))
    }
}

/// Who may call the server.
#[derive(clap::Args, Clone)]
struct AuthArgs {
    /// Shared secret of HS256 bearer tokens; turns authentication on.
    #[arg(long, env = "ORDERS_JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Option<Secret>,
    /// JWKS file of RS256/ES256 public keys; turns authentication on. Read
    /// again when it changes and on SIGHUP.
    #[arg(long, env = "ORDERS_JWT_JWKS")]
    jwt_jwks: Option<PathBuf>,
    /// Refuse tokens whose `iss` is not this.
    #[arg(long, env = "ORDERS_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Refuse tokens whose `aud` does not include this.
    #[arg(long, env = "ORDERS_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "ORDERS_JWT_LEEWAY_SECS", default_value_t = 30)]
    jwt_leeway_secs: u64,
    /// Serve /metrics without a token (for a scraper inside the network).
    #[arg(long, env = "ORDERS_METRICS_PUBLIC")]
    metrics_public: bool,
    /// Serve a non-loopback address without authentication, on purpose
    /// (a gateway in front checks every caller).
    #[arg(long, env = "ORDERS_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
}

impl AuthArgs {
    /// The token checks, if any key is configured.
    fn jwt(&self) -> Option<JwtOptions> {
        if self.jwt_hs256_secret.is_none() && self.jwt_jwks.is_none() {
            return None;
        }
        Some(JwtOptions {
            hs256_secret: self.jwt_hs256_secret.clone(),
            jwks: self.jwt_jwks.clone(),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway: Duration::from_secs(self.jwt_leeway_secs),
        })
    }

    /// Refuses to expose the API beyond this machine with nobody checking
    /// who calls.
    fn check_exposure(&self, listen: SocketAddr) -> anyhow::Result<()> {
        if listen.ip().is_loopback() || self.jwt().is_some() || self.insecure_no_auth {
            return Ok(());
        }
        anyhow::bail!(
            "refusing to serve {listen} without authentication: anyone who reaches it could read \
             and change every order. Set --jwt-hs256-secret (ORDERS_JWT_HS256_SECRET) or --jwt-jwks \
             (ORDERS_JWT_JWKS), listen on a loopback address such as 127.0.0.1, or pass \
             --insecure-no-auth (ORDERS_INSECURE_NO_AUTH) if a gateway in front checks every caller"
        )
    }
}

/// `orders token`: a bearer token signed with the HS256 secret.
#[derive(clap::Args)]
struct TokenArgs {
    /// Who the token names (`sub`; for a customer, the customer id).
    #[arg(long)]
    sub: String,
    /// A role it grants (repeatable or comma-separated).
    #[arg(long = "role", required = true, value_delimiter = ',',
          value_parser = ["customer", "payments", "warehouse", "operator"])]
    roles: Vec<String>,
    /// How long it is valid, in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    /// The server's HS256 secret.
    #[arg(long, env = "ORDERS_JWT_HS256_SECRET", hide_env_values = true)]
    jwt_hs256_secret: Secret,
    /// `iss` to put in the token.
    #[arg(long, env = "ORDERS_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// `aud` to put in the token.
    #[arg(long, env = "ORDERS_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

fn token(a: TokenArgs) -> anyhow::Result<()> {
    let mint = Mint {
        sub: &a.sub,
        roles: &a.roles,
        ttl: Duration::from_secs(a.ttl_secs),
        issuer: a.jwt_issuer.as_deref(),
        audience: a.jwt_audience.as_deref(),
    };
    println!("{}", mint_hs256(&a.jwt_hs256_secret, &mint)?);
    Ok(())
}

/// Where a process with the API listens when not told.
const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

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
        db: DbArgs,
        #[command(flatten)]
        http: HttpArgs,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Mint a bearer token from the HS256 secret (for local use and tests).
    Token(TokenArgs),
    /// Run the teaching page's scenario on a fresh embedded instance and print what happened.
    Demo(demo::DemoArgs),
    /// Check that every read model equals the fold of the write-side events
    /// (exit 0 consistent, 1 diverged, 2 lagging: the projector is behind).
    Verify {
        #[command(flatten)]
        db: DbArgs,
        /// How long to wait for the projector to catch up.
        #[arg(long, default_value_t = 10)]
        wait_secs: u64,
    },
    /// Bring the write and read databases to this build's schema (what
    /// `serve` does at start unless --no-migrate) and list what was applied.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
        /// Apply nothing: list what is due and exit 1 if anything is.
        #[arg(long)]
        check: bool,
    },
    /// Inspect and resolve records the projector gave up on.
    DeadLetters {
        #[command(subcommand)]
        action: dead_letters::Action,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Rebuild read models from the start of the log and swap them in.
    Replay {
        #[command(flatten)]
        args: replay::ReplayArgs,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Measure command throughput and command->queryable latency.
    Bench(bench::BenchArgs),
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
    /// Client: show an order.
    Get(client::GetArgs),
    /// Client: list orders.
    List(client::ListArgs),
    /// Client: the journey of one command through every stage.
    Trace(trace::TraceArgs),
}

/// Installs the log subscriber; returns the format it writes.
fn init_logs(filter: Option<&str>, format: Option<LogFormat>, default: &str) -> LogFormat {
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| default.to_owned());
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let format = format.unwrap_or(if terminal {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        // Colours only on a terminal: a log file gets plain text.
        LogFormat::Pretty => builder.with_ansi(terminal).try_init(),
    };
    if let Err(e) = installed {
        eprintln!("logs not set up: {e}");
    }
    format
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn serve(listen: Option<SocketAddr>, config: Config, http: HttpArgs) -> anyhow::Result<()> {
    // Bound before the roles start: a taken port stops the process before it
    // joins the consumer group (a needless rebalance) or takes the relay lock.
    let listener = match listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let running = Running::start(&config).await?;
    let signalled = std::sync::OnceLock::new();
    let failed = std::sync::OnceLock::new();
    let signal = async {
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("shutdown requested: draining"),
            why = running.failure() => {
                let _ = failed.set(why);
            }
        }
        let _ = signalled.set(std::time::Instant::now());
        running.begin_shutdown();
    };
    if let Some(listener) = listener {
        let limits = http.limits();
        let tls = http.tls()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let api = config.runs(Role::Api);
        // Without the API, only what shows the process's health.
        let router = if api {
            running.router()
        } else {
            running.ops_router()
        };
        tracing::info!(addr = %listener.local_addr()?, scheme, api, max_connections = limits.max_connections, "serving");
        cqrs_http::serve(listener, router, limits, tls, signal).await;
    } else {
        tracing::info!(roles = ?config.roles, "running without the API and without a listener");
        signal.await;
    }
    let spent = signalled.get().map_or(Duration::ZERO, |t| t.elapsed());
    let left = http.shutdown_timeout().saturating_sub(spent);
    let stopped = tokio::time::timeout(left, running.stop()).await;
    if let Some(why) = failed.get() {
        // A supervisor restarts the process; running on without a role
        // would look healthy and do nothing.
        anyhow::bail!("{why}");
    }
    match stopped {
        Ok(stopped) => stopped,
        Err(_) => {
            // Nothing is lost: an unfinished batch rolls back and is read
            // again, and batches the relay had no reports for are sent again.
            tracing::warn!(
                after_secs = http.shutdown_timeout().as_secs_f64(),
                "the roles did not stop within the shutdown timeout; exiting anyway"
            );
            std::process::exit(0)
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(cli.command, Command::Demo(_) | Command::Bench(_));
    let default_filter = if quiet { "warn" } else { "info,sqlx=warn" };
    let format = init_logs(cli.log.as_deref(), cli.log_format, default_filter);
    let serving = matches!(cli.command, Command::Serve { .. });
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever RUST_BACKTRACE says: the cause chain, not
            // frames; a server writing JSON logs says it as one more record.
            let why = format!("{e:#}");
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
            db,
            http,
            auth,
        } => {
            let config = Config {
                jwt: auth.jwt(),
                metrics_public: auth.metrics_public,
                ..db.config()
            };
            let default = config.runs(Role::Api).then_some(DEFAULT_LISTEN);
            let listen = listen.or(default);
            if let Some(addr) = listen {
                auth.check_exposure(addr)?;
            }
            serve(listen, config, http).await
        }
        Command::Token(a) => token(a),
        Command::Demo(args) => demo::run(args).await,
        Command::Verify { db, wait_secs } => {
            let report =
                orders_service::tools::verify::verify(&db.config(), Duration::from_secs(wait_secs))
                    .await?;
            print!("{report}");
            match report.exit_code() {
                0 => Ok(()),
                code => std::process::exit(code),
            }
        }
        Command::Bench(args) => bench::run(args).await,
        Command::Replay { args, db } => replay::run(args, &db.config()).await,
        Command::Migrate { db, check } => match migrate::run(&db.config(), check).await? {
            0 => Ok(()),
            code => std::process::exit(code),
        },
        Command::DeadLetters { action, db } => dead_letters::run(action, &db.config()).await,
        Command::Create(a) => client::create(a).await,
        Command::Pay(a) => client::pay(a).await,
        Command::Ship(a) => client::ship(a).await,
        Command::Deliver(a) => client::deliver(a).await,
        Command::Cancel(a) => client::cancel(a).await,
        Command::Get(a) => client::get(a).await,
        Command::List(a) => client::list(a).await,
        Command::Trace(a) => trace::print(a).await,
    }
}
