//! The HTTP/1.1 server with the limits a public port needs: a deadline for
//! request heads (which also closes idle keep-alive connections), a deadline
//! and a size cap for bodies (a declared oversize `Content-Length` is refused
//! before a byte is read), a cap on open connections that stays below the
//! file-descriptor limit, and a graceful shutdown bounded in time.

use crate::parse_errors::JsonParseErrors;
use crate::ApiError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// File descriptors kept free for the databases, the broker and the logs.
const RESERVED_FDS: u64 = 128;

/// The server's limits (each has a flag and an environment variable in the
/// binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// A complete request head must arrive within this time of the
    /// connection becoming ready for one (opened, or idle after a response).
    pub header_timeout: Duration,
    /// A complete request body must arrive within this time of its head.
    pub body_timeout: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Open connections at most; more are answered 503 and closed.
    pub max_connections: usize,
    /// Longest graceful shutdown: in-flight requests finish within it, or
    /// their connections are dropped.
    pub shutdown_timeout: Duration,
}

/// The defaults of [`ServerLimits`], in the units a flag takes.
pub mod defaults {
    /// Seconds for a complete request head.
    pub const HEADER_TIMEOUT_SECS: u64 = 10;
    /// Seconds for a complete request body.
    pub const BODY_TIMEOUT_SECS: u64 = 10;
    /// Open connections at most.
    pub const MAX_CONNECTIONS: usize = 1024;
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(defaults::HEADER_TIMEOUT_SECS),
            body_timeout: Duration::from_secs(defaults::BODY_TIMEOUT_SECS),
            max_body_bytes: crate::MAX_BODY_BYTES,
            max_connections: defaults::MAX_CONNECTIONS,
            shutdown_timeout: Duration::from_secs(8),
        }
    }
}

impl ServerLimits {
    /// The connection cap this process can honour: raises the soft
    /// file-descriptor limit as far as the hard one allows, then keeps the
    /// cap below it (with room for pools and the broker), so that `accept`
    /// never fails for want of descriptors.
    pub fn fitted_to_fd_limit(mut self) -> Self {
        let wanted = self.max_connections as u64 + RESERVED_FDS;
        match rlimit::increase_nofile_limit(wanted) {
            Ok(soft) if soft < wanted => {
                let cap = soft.saturating_sub(RESERVED_FDS).max(1) as usize;
                tracing::warn!(
                    fd_limit = soft,
                    requested = self.max_connections,
                    cap,
                    "the file-descriptor limit is low: capping connections"
                );
                self.max_connections = cap;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the file-descriptor limit"),
        }
        self
    }
}

/// Serves `router` on `listener` (over TLS when `tls` is given) until
/// `shutdown` resolves; then stops accepting and lets open requests finish,
/// for at most `limits.shutdown_timeout`. Returns whether every connection
/// finished.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ServerLimits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let (closing, closing_rx) = tokio::sync::watch::channel(false);
    let router = match tls {
        Some(_) => router.layer(axum::Extension(crate::tls::Https)),
        None => router,
    };
    let router = router.layer(axum::middleware::from_fn_with_state(
        BodyReading {
            limits,
            closing: closing_rx,
        },
        read_body,
    ));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or memory: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    metrics::counter!("http_accept_errors_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("http_connections_refused_total").increment(1);
            tokio::spawn(refuse(stream));
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "TCP_NODELAY not set; answers may wait for Nagle");
        }
        let service = TowerToHyperService::new(router.clone());
        let (http, watcher, tls) = (http.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            metrics::gauge!("http_connections_open").increment(1.0);
            serve_connection(stream, service, http, watcher, tls, limits.header_timeout).await;
            metrics::gauge!("http_connections_open").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    closing.send_replace(true);
    let open = graceful.count();
    tracing::info!(
        open_connections = open,
        "stopped accepting; draining open requests"
    );
    match tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(
                after_secs = limits.shutdown_timeout.as_secs_f64(),
                "connections still open at the shutdown deadline; dropping them"
            );
            false
        }
    }
}

/// Serves one connection until it closes or the shutdown ends it; over
/// TLS, after a handshake that counts against the head deadline (a client
/// that never finishes it is cut off like a slow head).
async fn serve_connection(
    stream: tokio::net::TcpStream,
    service: TowerToHyperService<axum::Router>,
    http: hyper::server::conn::http1::Builder,
    watcher: hyper_util::server::graceful::Watcher,
    tls: Option<TlsAcceptor>,
    head_deadline: Duration,
) {
    let ended = match tls {
        None => {
            let io = TokioIo::new(JsonParseErrors::new(stream));
            let conn = http.serve_connection(io, service);
            watcher.watch(conn).await
        }
        Some(tls) => match tokio::time::timeout(head_deadline, tls.accept(stream)).await {
            Ok(Ok(stream)) => {
                let io = TokioIo::new(JsonParseErrors::new(stream));
                let conn = http.serve_connection(io, service);
                watcher.watch(conn).await
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                metrics::counter!("http_tls_handshake_failures_total").increment(1);
                Ok(())
            }
            Err(_) => {
                metrics::counter!("http_tls_handshake_failures_total").increment(1);
                Ok(())
            }
        },
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Answers a connection over the cap with 503 and closes it, without
/// reading its request.
async fn refuse(mut stream: tokio::net::TcpStream) {
    let body = r#"{"error":"too_many_connections","message":"the server is at its connection limit; retry shortly","details":null}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    };
    // Best effort: a refused client that does not read within a second is
    // dropped without its answer.
    if let Ok(Err(error)) | Err(error) = tokio::time::timeout(Duration::from_secs(1), write)
        .await
        .map_err(std::io::Error::from)
    {
        tracing::debug!(%error, "the refusal did not reach the client");
    }
}

/// What the body-reading middleware needs.
#[derive(Clone)]
struct BodyReading {
    limits: ServerLimits,
    /// Turns true at shutdown: bodies still arriving are abandoned.
    closing: tokio::sync::watch::Receiver<bool>,
}

/// Reads the whole request body before the handler runs: refuses a declared
/// oversize `Content-Length` at once (413), a body over the cap as it
/// arrives (413), a body that does not arrive in time (408), and one still
/// arriving when the server shuts down (503).
async fn read_body(State(state): State<BodyReading>, req: Request, next: Next) -> Response {
    let BodyReading {
        limits,
        mut closing,
    } = state;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        linger(req.into_body());
        return too_large(limits).into_response();
    }
    let (parts, body) = req.into_parts();
    let read = axum::body::to_bytes(body, limits.max_body_bytes);
    let read = async {
        tokio::select! {
            r = tokio::time::timeout(limits.body_timeout, read) => Some(r),
            _ = closing.wait_for(|c| *c) => None,
        }
    };
    let Some(read) = read.await else {
        let mut res = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down; send the request again",
        )
        .into_response();
        res.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        res.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return res;
    };
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if is_length_limit(&e) => return too_large(limits).into_response(),
        Ok(Err(e)) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "body_unreadable",
                format!("the request body could not be read: {e}"),
            )
            .into_response()
        }
        Err(_) => {
            let mut res = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    limits.body_timeout.as_secs_f64()
                ),
            )
            .into_response();
            res.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return res;
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// After an early refusal, reads and discards what the client is still
/// sending, for a moment and up to 1 MiB, so that a client that writes its
/// whole body before reading gets the answer rather than a reset.
fn linger(body: Body) {
    use futures::StreamExt;
    tokio::spawn(async move {
        let discard = async {
            let mut stream = body.into_data_stream();
            let mut seen = 0usize;
            while let Some(Ok(chunk)) = stream.next().await {
                seen += chunk.len();
                if seen > 1 << 20 {
                    break;
                }
            }
        };
        // Draining is only so that the client reads the answer instead of a
        // reset; whatever is left after a second is dropped with the socket.
        let _drained = tokio::time::timeout(Duration::from_secs(1), discard).await;
    });
}

fn too_large(limits: ServerLimits) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "request bodies are limited to {} bytes",
            limits.max_body_bytes
        ),
    )
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}
