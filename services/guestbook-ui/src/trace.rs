//! Trace-header propagation: copy the tracing headers of the request we are
//! serving onto every request we make because of it.
//!
//! Why the app has to do this: the sidecar sees the inbound request (with its
//! `traceparent`, `x-b3-*`, `x-request-id`) and, separately, the outbound
//! request the app makes while serving it. It cannot tell which inbound
//! request an outbound one belongs to, so unless the app carries the headers
//! across, each hop starts a new trace and the waterfall falls apart. Istio's
//! docs ask the same of every app ("Istio ... requires applications to
//! propagate the appropriate headers"). The sidecar adds its own span ids; the
//! app only copies.

use axum::http::HeaderMap;

/// The headers Istio's docs list for propagation: Envoy's request id, W3C
/// Trace Context, and Zipkin's B3 (multi- and single-header forms).
pub const TRACE_HEADERS: [&str; 9] = [
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
];

/// The trace headers present in `inbound`, to add to an outbound request.
pub fn forwarded(inbound: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in TRACE_HEADERS {
        if let Some(value) = inbound.get(name) {
            out.insert(name, value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_trace_headers() {
        let mut inbound = HeaderMap::new();
        inbound.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        inbound.insert("x-b3-sampled", "1".parse().unwrap());
        inbound.insert("cookie", "secret=1".parse().unwrap());
        let out = forwarded(&inbound);
        assert_eq!(out.len(), 2);
        assert_eq!(out["x-b3-sampled"], "1");
        assert!(out.get("cookie").is_none());
    }
}
