//! OpenTelemetry at the binary's edge: spans exported over OTLP/HTTP
//! (protobuf) where the standard variables say so, and the W3C trace
//! context hooks the framework crates call (`cqrs_core::trace_context`).
//!
//! On when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set
//! and `OTEL_SDK_DISABLED` is not `true`; `OTEL_SERVICE_NAME` names the
//! process (default `orders`); `OTEL_EXPORTER_OTLP_PROTOCOL`, when set, must
//! be `http/protobuf`. Off, nothing is exported and no span per event is made.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::collections::HashMap;
use std::sync::OnceLock;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Why spans cannot be exported as configured.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A protocol this build does not speak.
    #[error("{var}={value}: this build exports OTLP over http/protobuf only (unset it, or set it to http/protobuf)")]
    Protocol {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// The exporter could not be built.
    #[error("the OTLP exporter: {0}")]
    Exporter(String),
}

/// Whether the environment asks for export.
pub fn wanted() -> bool {
    let set = |v: &str| std::env::var(v).is_ok_and(|s| !s.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The layer that exports spans (None: export is off).
pub fn layer<S>() -> Result<Option<Box<dyn Layer<S> + Send + Sync>>, TelemetryError>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    if !wanted() {
        return Ok(None);
    }
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Ok(value) = std::env::var(var) {
            if !value.trim().is_empty() && value.trim() != "http/protobuf" {
                return Err(TelemetryError::Protocol { var, value });
            }
        }
    }
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "orders".to_owned());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(name).build())
        .build();
    let tracer = provider.tracer("orders-cqrs");
    let _ = PROVIDER.set(provider);
    cqrs_core::trace_context::install(cqrs_core::trace_context::Hooks {
        continue_from,
        current,
    });
    Ok(Some(
        tracing_opentelemetry::layer().with_tracer(tracer).boxed(),
    ))
}

/// What the log filter must add for the exported spans: the HTTP request's
/// span is at debug (none is made when nothing exports). One filter for
/// both layers: per-layer filters were seen to drop every other span.
pub const SPANS_FILTER: &str = "cqrs_http::logging=debug";

/// Sends what is buffered and stops exporting (at exit).
pub fn shutdown() {
    if let Some(p) = PROVIDER.get() {
        if let Err(e) = p.shutdown() {
            eprintln!("telemetry: the last spans were not all sent: {e}");
        }
    }
}

fn continue_from(span: &tracing::Span, traceparent: &str) {
    let carrier: HashMap<String, String> =
        HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}

fn current() -> Option<String> {
    let cx = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}
