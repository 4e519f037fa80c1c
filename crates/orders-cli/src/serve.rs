//! `orders serve`: the listener, its limits, who may call it, and a clean
//! shutdown on SIGTERM or when a role fails.

use anyhow::Context;
use cqrs_http::auth::{JwtOptions, Secret};
use cqrs_http::server::defaults as limits;
use cqrs_http::tls::ServerCert;
use orders_service::{Config, Role, Running};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Limits of the HTTP server.
#[derive(clap::Args, Clone)]
pub struct HttpArgs {
    /// Seconds a client has to send a complete request head, from when the
    /// connection opens or its previous response ends (so it also closes
    /// idle keep-alive connections).
    #[arg(long, env = "ORDERS_HTTP_HEADER_TIMEOUT_SECS", default_value_t = limits::HEADER_TIMEOUT_SECS)]
    http_header_timeout_secs: u64,
    /// Seconds a client has to send a complete request body.
    #[arg(long, env = "ORDERS_HTTP_BODY_TIMEOUT_SECS", default_value_t = limits::BODY_TIMEOUT_SECS)]
    http_body_timeout_secs: u64,
    /// Largest request body in bytes (a larger declared one is refused
    /// before it is read).
    #[arg(long, env = "ORDERS_HTTP_MAX_BODY_BYTES", default_value_t = cqrs_http::MAX_BODY_BYTES)]
    http_max_body_bytes: usize,
    /// Open connections at most (kept below the file-descriptor limit);
    /// more are answered 503 and closed.
    #[arg(long, env = "ORDERS_HTTP_MAX_CONNECTIONS", default_value_t = limits::MAX_CONNECTIONS)]
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
    pub fn limits(&self) -> cqrs_http::ServerLimits {
        cqrs_http::ServerLimits {
            header_timeout: Duration::from_secs(self.http_header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(self.http_body_timeout_secs.max(1)),
            max_body_bytes: self.http_max_body_bytes.max(1),
            max_connections: self.http_max_connections.max(1),
            shutdown_timeout: self.shutdown_timeout().mul_f64(0.7),
        }
        .fitted_to_fd_limit()
    }
    /// How long the process has from SIGTERM to exit.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs.max(1))
    }

    /// The TLS acceptor, when HTTPS is asked for, with a task that reads
    /// the certificate again on SIGHUP.
    pub fn tls(&self) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
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
pub struct AuthArgs {
    /// Shared secret of HS256 bearer tokens; turns authentication on. As a
    /// flag it shows in `ps`: prefer the file or the environment.
    #[arg(
        long,
        env = "ORDERS_JWT_HS256_SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_hs256_secret_file"
    )]
    jwt_hs256_secret: Option<Secret>,
    /// A file holding the HS256 secret (one line); turns authentication on.
    #[arg(long, env = "ORDERS_JWT_HS256_SECRET_FILE", value_name = "PATH")]
    jwt_hs256_secret_file: Option<PathBuf>,
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
    /// Clock skew allowed on `exp` and `nbf`, in seconds (a live stream
    /// ends this long after its token expires).
    #[arg(long, env = "ORDERS_JWT_LEEWAY_SECS", default_value_t = 30)]
    jwt_leeway_secs: u64,
    /// Refuse tokens whose `exp` lies more than this many seconds ahead.
    #[arg(long, env = "ORDERS_JWT_MAX_LIFETIME_SECS",
          default_value_t = cqrs_http::auth::DEFAULT_MAX_LIFETIME.as_secs())]
    jwt_max_lifetime_secs: u64,
    /// A file holding the key stream tickets are signed with, for replicas
    /// behind one address (a ticket one signs opens a stream on another)
    /// [default: a random key of this process].
    #[arg(long, env = "ORDERS_STREAM_TICKET_SECRET_FILE", value_name = "PATH")]
    stream_ticket_secret_file: Option<PathBuf>,
    /// Serve /metrics without a token (for a scraper inside the network).
    #[arg(long, env = "ORDERS_METRICS_PUBLIC")]
    metrics_public: bool,
    /// Serve a non-loopback address without authentication, on purpose
    /// (a gateway in front checks every caller).
    #[arg(long, env = "ORDERS_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
}

impl AuthArgs {
    /// `config` with these callers' checks (the secret files read now).
    pub fn apply(&self, config: Config) -> anyhow::Result<Config> {
        let stream_ticket_secret = match &self.stream_ticket_secret_file {
            Some(path) => Some(read_secret(path, "--stream-ticket-secret-file")?),
            None => None,
        };
        Ok(Config {
            jwt: self.jwt()?,
            stream_ticket_secret,
            metrics_public: self.metrics_public,
            ..config
        })
    }

    /// Whether any key to check tokens with is configured.
    fn checks_tokens(&self) -> bool {
        self.jwt_hs256_secret.is_some()
            || self.jwt_hs256_secret_file.is_some()
            || self.jwt_jwks.is_some()
    }

    /// The token checks, if any key is configured.
    pub fn jwt(&self) -> anyhow::Result<Option<JwtOptions>> {
        if !self.checks_tokens() {
            return Ok(None);
        }
        let hs256_secret = match &self.jwt_hs256_secret_file {
            Some(path) => Some(read_secret(path, "--jwt-hs256-secret-file")?),
            None => self.jwt_hs256_secret.clone(),
        };
        Ok(Some(JwtOptions {
            hs256_secret,
            jwks: self.jwt_jwks.clone(),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway: Duration::from_secs(self.jwt_leeway_secs),
            max_lifetime: Duration::from_secs(self.jwt_max_lifetime_secs.max(1)),
        }))
    }

    /// Refuses to expose the API beyond this machine with nobody checking
    /// who calls.
    pub fn check_exposure(&self, listen: SocketAddr) -> anyhow::Result<()> {
        if listen.ip().is_loopback() || self.checks_tokens() || self.insecure_no_auth {
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

/// The secret in the file `flag` names.
pub fn read_secret(path: &std::path::Path, flag: &str) -> anyhow::Result<Secret> {
    Secret::from_file(path).with_context(|| format!("{flag} {}", path.display()))
}

/// Where a process with the API listens when not told.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

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

/// Serves `config` on `listen` (health and metrics only without the API
/// role; no listener at all when `None`) until SIGTERM, Ctrl-C, or a role
/// fails, then drains within the shutdown timeout.
pub async fn serve(
    listen: Option<SocketAddr>,
    config: Config,
    http: HttpArgs,
) -> anyhow::Result<()> {
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
        // The inventory service serves its API with its role.
        let api = config.runs(Role::Api) || config.roles.contains(&Role::Inventory);
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
