//! The trace context a request's command runs in (W3C `traceparent`).

use axum::http::HeaderMap;
use cqrs_core::trace_context;

/// Where spans are exported: the request span's (a child of the caller's
/// `traceparent`, if any, or the root of a new trace). Else the caller's
/// as it came, or a new trace's: every command has a trace id to show.
pub fn for_command(headers: &HeaderMap) -> Option<String> {
    if trace_context::exporting() {
        return trace_context::current();
    }
    match cqrs_http::logging::traceparent_of(headers) {
        Some(tp) => Some(tp.to_owned()),
        None => {
            let mut ids = uuid::Uuid::new_v4().as_bytes().to_vec();
            ids.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
            trace_context::fresh(&ids)
        }
    }
}
