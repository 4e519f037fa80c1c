//! What the server logs of each request: a span with the method, the path
//! and the query with anything secret-looking blanked (a token never
//! reaches a log line, at any level), and failures at the level they
//! deserve (a 503 the client is told to retry is not an error of ours).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use std::time::Duration;
use tower_http::classify::{ServerErrorsAsFailures, ServerErrorsFailureClass, SharedClassifier};
use tower_http::trace::{
    DefaultOnBodyChunk, DefaultOnEos, DefaultOnRequest, DefaultOnResponse, TraceLayer,
};
use tracing::Span;

/// The layer [`trace_layer`] builds.
pub type HttpTrace = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&Request<Body>) -> Span,
    DefaultOnRequest,
    DefaultOnResponse,
    DefaultOnBodyChunk,
    DefaultOnEos,
    fn(ServerErrorsFailureClass, Duration, &Span),
>;

/// Request spans (DEBUG) without secrets, failures at their level.
pub fn trace_layer() -> HttpTrace {
    TraceLayer::new_for_http()
        .make_span_with(request_span as fn(&Request<Body>) -> Span)
        .on_failure(on_failure as fn(ServerErrorsFailureClass, Duration, &Span))
}

fn request_span(request: &Request<Body>) -> Span {
    let span = tracing::debug_span!(
        "request",
        otel.name = %format!("{} {}", request.method(), request.uri().path()),
        otel.kind = "server",
        method = %request.method(),
        path = %request.uri().path(),
        query = %redacted_query(request.uri().query().unwrap_or_default()),
    );
    // A caller's W3C trace context: this request continues its trace
    // (where spans are exported; else the command handler keeps it as is).
    if let Some(tp) = traceparent_of(request.headers()) {
        cqrs_core::trace_context::continue_from(&span, tp);
    }
    span
}

/// The request's `traceparent` header, when it is a valid one.
pub fn traceparent_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(cqrs_core::trace_context::valid)
}

/// 503s are answers the client is told to retry (not yet consistent, not
/// ready, full): INFO. Other 5xx and failed bodies are errors.
fn on_failure(class: ServerErrorsFailureClass, latency: Duration, _span: &Span) {
    let ms = latency.as_secs_f64() * 1000.0;
    match class {
        ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE) => {
            tracing::info!(status = 503, latency_ms = ms, "answered 503 (retry later)")
        }
        ServerErrorsFailureClass::StatusCode(status) => {
            tracing::error!(status = status.as_u16(), latency_ms = ms, "server error")
        }
        ServerErrorsFailureClass::Error(error) => {
            tracing::error!(%error, latency_ms = ms, "response failed")
        }
    }
}

/// A query string with the values that could be credentials blanked: of a
/// parameter whose name says so, and any value shaped like a JWT.
pub fn redacted_query(query: &str) -> String {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let lower = name.to_ascii_lowercase();
            let named = [
                "token", "ticket", "secret", "password", "auth", "key", "jwt", "cookie",
            ]
            .iter()
            .any(|w| lower.contains(w));
            if named || looks_like_jwt(value) || looks_like_jwt(name) {
                format!(
                    "{}=[redacted]",
                    if looks_like_jwt(name) {
                        "[redacted]"
                    } else {
                        name
                    }
                )
            } else {
                pair.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `eyJ...` (a base64url JSON header) with two dots, percent-encoded or not.
fn looks_like_jwt(text: &str) -> bool {
    let dots =
        text.matches('.').count() + text.matches("%2E").count() + text.matches("%2e").count();
    text.contains("eyJ") && dots >= 2
}

#[cfg(test)]
mod tests {
    use super::redacted_query;

    #[test]
    fn credentials_in_a_query_are_blanked_and_the_rest_kept() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
        let q = format!("limit=10&access_token={jwt}&status=paid&x={jwt}&{jwt}");
        let r = redacted_query(&q);
        assert!(!r.contains("eyJ"), "{r}");
        assert_eq!(
            r,
            "limit=10&access_token=[redacted]&status=paid&x=[redacted]&[redacted]=[redacted]"
        );
        assert_eq!(
            redacted_query("ticket=abc&after=o1"),
            "ticket=[redacted]&after=o1"
        );
    }
}
