//! W3C trace context (`traceparent`), carried with the events (their
//! metadata, a Kafka header) and continued by whatever handles them: the
//! relay, the projectors, a process manager. The framework exports nothing
//! itself: a binary that exports spans (OpenTelemetry) installs [`Hooks`];
//! without them the context is only carried, and spans per event are not
//! made at all.

use std::sync::OnceLock;

/// What an exporting binary plugs in.
#[derive(Clone, Copy)]
pub struct Hooks {
    /// Makes `span` (not yet entered) a child of the remote context
    /// `traceparent`.
    pub continue_from: fn(&tracing::Span, &str),
    /// The W3C traceparent of the current span.
    pub current: fn() -> Option<String>,
}

static HOOKS: OnceLock<Hooks> = OnceLock::new();

/// Installs the exporter's hooks (once; false when some were already).
pub fn install(hooks: Hooks) -> bool {
    HOOKS.set(hooks).is_ok()
}

/// Whether spans are exported: spans per event are made only then.
pub fn exporting() -> bool {
    HOOKS.get().is_some()
}

/// Makes `span` a child of `traceparent` (nothing when not exporting).
pub fn continue_from(span: &tracing::Span, traceparent: &str) {
    if let Some(h) = HOOKS.get() {
        (h.continue_from)(span, traceparent)
    }
}

/// The traceparent of the current span (None when not exporting).
pub fn current() -> Option<String> {
    HOOKS.get().and_then(|h| (h.current)())
}

/// `s` if it is a W3C traceparent this build understands (version 00:
/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`, ids not all zero).
pub fn valid(s: &str) -> Option<&str> {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let ok = parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0');
    ok.then_some(s)
}

/// The trace id of a traceparent.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    valid(traceparent).and_then(|t| t.split('-').nth(1))
}

/// A traceparent of a new trace, sampled, from 192 random bits (`ids`: at
/// least 24 random bytes, e.g. two v4 UUIDs): for a command that came
/// without one while nothing exports, so that its trace id still shows.
pub fn fresh(ids: &[u8]) -> Option<String> {
    if ids.len() < 24 || ids[..16].iter().all(|b| *b == 0) || ids[16..24].iter().all(|b| *b == 0) {
        return None;
    }
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    Some(format!("00-{}-{}-01", hex(&ids[..16]), hex(&ids[16..24])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_version_00_traceparents_with_real_ids_are_valid() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(valid(tp), Some(tp));
        assert_eq!(trace_id(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(valid(bad), None, "{bad}");
        }
        let fresh = fresh(&[7u8; 24]).unwrap();
        assert_eq!(valid(&fresh), Some(fresh.as_str()));
        assert_eq!(super::fresh(&[0u8; 24]), None);
    }
}
