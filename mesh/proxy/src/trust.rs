//! Which request headers the mesh believes, and from whom.
//!
//! Some headers are instructions or claims that only the mesh itself may
//! make: who the client is (`x-forwarded-for`, `x-forwarded-client-cert`),
//! who the calling workload is (`x-mesh-peer-metadata`), how a proxy should
//! treat the request (`x-envoy-*`), which trace it belongs to and whether
//! it is recorded (`x-b3-sampled`, `traceparent`'s flag). A request from
//! outside the mesh may carry any of them, forged. So where a request
//! enters the mesh they are removed or replaced, as Envoy does at the edge
//! (`use_remote_address: true`, `xff_num_trusted_hops: 0`,
//! `forward_client_cert_details: SANITIZE`):
//!
//! | header | from outside the mesh |
//! | --- | --- |
//! | `x-forwarded-client-cert` | removed: only a proxy that terminated the client's TLS may write it |
//! | `x-envoy-*` (`x-envoy-retry-on`, `x-envoy-max-retries`, `x-envoy-upstream-rq-timeout-ms`, `x-envoy-force-trace`...) | removed: control headers for Envoys in the path |
//! | `x-mesh-*` (`x-mesh-peer-metadata`) | removed: the calling workload is named by its sidecar |
//! | `x-forwarded-for` | replaced by the peer's address (after the last `MESH_XFF_NUM_TRUSTED_HOPS` entries, 0 by default) |
//! | `forwarded` | removed: unverifiable; `x-forwarded-for` is the one the mesh writes |
//! | `x-forwarded-proto` | set to `http` (kept when hops in front are trusted) |
//! | `x-request-id` | kept when well-formed (1 to 128 of `A-Z a-z 0-9 - _ . : + / =`), else replaced by a new id |
//! | `x-b3-sampled`, `x-b3-flags`, `b3`'s decision, `traceparent`'s sampled flag | removed: the proxy decides with `MESH_TRACE_SAMPLING`, unless `MESH_TRUST_CLIENT_TRACE=1`; the trace and span ids are kept, so a client's own trace still continues |
//!
//! Who is outside? Every user at the **gateway**. At a sidecar's
//! **outbound** listener, never: the caller is the app in the same pod.
//! At a sidecar's **inbound** listener, the caller is another sidecar or
//! the gateway, whose outbound side always names itself in
//! `x-mesh-peer-metadata`; a request without that header came from
//! something else (a process that dialled the pod's port directly) and is
//! treated as from outside. Until the mesh speaks mutual TLS this is a
//! claim, not a proof: a client that forges `x-mesh-peer-metadata` is
//! believed, as a plaintext peer is in Istio's PERMISSIVE mode. With mTLS
//! the peer's certificate will decide instead. (A sidecar with
//! `MESH_TELEMETRY=off` sends no peer metadata, so its callees sanitize
//! its requests: safe, and only benchmarks run that way.)

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::log::Direction;
use crate::telemetry::PEER_METADATA;
use crate::trace::{
    B3_FLAGS, B3_PARENT_SPAN_ID, B3_SAMPLED, B3_SINGLE, B3_SPAN_ID, B3_TRACE_ID, TRACEPARENT,
    TRACESTATE, parse_traceparent,
};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest `x-request-id` taken from outside (a UUID is 36).
pub const MAX_REQUEST_ID: usize = 128;

/// What the edge trusts from outside (`MESH_XFF_NUM_TRUSTED_HOPS`,
/// `MESH_TRUST_CLIENT_TRACE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrustSettings {
    /// Proxies in front of the mesh whose `x-forwarded-for` entries count
    /// (Envoy's `xff_num_trusted_hops`): a cloud load balancer is one.
    pub xff_trusted_hops: u32,
    /// Take a client's sampling decision (`x-b3-sampled: 1`...) as given.
    pub client_trace: bool,
}

/// Who sent a request, as far as its listener can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    /// The local app, another sidecar, or the gateway.
    Mesh,
    /// A user at the gateway, or an unknown process at the inbound port.
    Outside,
}

/// Who sent a request arriving at `direction`'s listener (see the module
/// docs for why the inbound side reads `x-mesh-peer-metadata`).
pub fn sender(direction: Direction, headers: &HeaderMap) -> Sender {
    match direction {
        Direction::Gateway => Sender::Outside,
        Direction::Outbound => Sender::Mesh,
        Direction::Inbound if headers.contains_key(PEER_METADATA) => Sender::Mesh,
        Direction::Inbound => Sender::Outside,
    }
}

/// Remove or replace what a request from outside may not claim. `peer` is
/// the address that connected. A request from the mesh is left as it is.
pub fn sanitize(
    sender: Sender,
    settings: &TrustSettings,
    peer: SocketAddr,
    headers: &mut HeaderMap,
) {
    if sender == Sender::Mesh {
        return;
    }
    // The mesh's and Envoy's own headers, and the client certificate.
    let owned: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name.starts_with("x-envoy-") || name.starts_with("x-mesh-")
        })
        .cloned()
        .collect();
    for name in owned {
        headers.remove(name);
    }
    headers.remove(X_FORWARDED_CLIENT_CERT);
    headers.remove(FORWARDED);

    forwarded_for(settings.xff_trusted_hops, peer, headers);

    if !headers
        .get(REQUEST_ID)
        .is_some_and(|id| well_formed_request_id(id.as_bytes()))
    {
        // `ensure_request_id` gives the request a fresh one next.
        headers.remove(REQUEST_ID);
    }

    if !settings.client_trace {
        defer_sampling(headers);
    }
}

/// `x-forwarded-for` as Envoy writes it at the edge: the entries the
/// trusted hops in front added (the last `hops` ones), then the address
/// that connected. With no trusted hops, the peer's address alone.
fn forwarded_for(hops: u32, peer: SocketAddr, headers: &mut HeaderMap) {
    let mut entries: Vec<String> = Vec::new();
    if hops > 0 {
        let all: Vec<String> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        let keep = all.len().min(hops as usize);
        entries.extend_from_slice(&all[all.len() - keep..]);
    } else {
        // Nobody in front is trusted: the client's claims about the scheme
        // it used are as unverifiable as its address.
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    entries.push(peer.ip().to_string());
    headers.remove(X_FORWARDED_FOR);
    if let Ok(value) = HeaderValue::from_str(&entries.join(", ")) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// A request id the mesh keeps: bounded, and made of characters that read
/// the same in a log line, a span tag and a header.
pub fn well_formed_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+' | b'/' | b'=')
        })
}

/// Take the sampling decision out of the trace headers, keep the ids: the
/// proxy then decides (`trace.rs` reads a trace without a decision as
/// "deferred" and samples at `MESH_TRACE_SAMPLING`), and the trace the
/// client started still continues.
///
/// W3C `traceparent` has no "undecided" flag (`00` would mean "never
/// record", which lets a client hide its requests), so its ids move to the
/// B3 headers, which do: `x-b3-traceid` and `x-b3-spanid` without
/// `x-b3-sampled`.
fn defer_sampling(headers: &mut HeaderMap) {
    headers.remove(B3_SAMPLED);
    headers.remove(B3_FLAGS);
    if let Some(value) = headers.remove(B3_SINGLE) {
        // `{trace}-{span}[-{decision}[-{parent}]]`, or a lone decision.
        let text = value.to_str().unwrap_or_default();
        let mut fields = text.split('-');
        if let (Some(trace), Some(span)) = (fields.next(), fields.next())
            && let Ok(ids) = HeaderValue::from_str(&format!("{trace}-{span}"))
        {
            headers.insert(B3_SINGLE, ids);
        }
    }
    let context = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let parts: Vec<&str> = v.trim().split('-').collect();
            parse_traceparent(v).map(|_| (parts[1].to_string(), parts[2].to_string()))
        });
    if headers.remove(TRACEPARENT).is_some() {
        headers.remove(TRACESTATE);
    }
    if let Some((trace, span)) = context
        && let (Ok(trace), Ok(span)) = (HeaderValue::from_str(&trace), HeaderValue::from_str(&span))
    {
        headers.insert(B3_TRACE_ID, trace);
        headers.insert(B3_SPAN_ID, span);
        headers.remove(B3_PARENT_SPAN_ID);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::trace::{Incoming, SpanContext};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn peer() -> SocketAddr {
        "203.0.113.7:40000".parse().unwrap()
    }

    #[test]
    fn who_is_outside() {
        let plain = headers(&[]);
        let sidecar = headers(&[("x-mesh-peer-metadata", "workload=ui")]);
        assert_eq!(sender(Direction::Gateway, &sidecar), Sender::Outside);
        assert_eq!(sender(Direction::Outbound, &plain), Sender::Mesh);
        assert_eq!(sender(Direction::Inbound, &sidecar), Sender::Mesh);
        assert_eq!(sender(Direction::Inbound, &plain), Sender::Outside);
    }

    #[test]
    fn control_and_identity_headers_from_outside_are_removed() {
        let mut h = headers(&[
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-max-retries", "100"),
            ("x-envoy-upstream-rq-timeout-ms", "1"),
            ("x-envoy-force-trace", "true"),
            (
                "x-forwarded-client-cert",
                "By=spiffe://cluster.local/ns/default/sa/admin",
            ),
            ("x-mesh-peer-metadata", "workload=admin"),
            ("forwarded", "for=10.0.0.1"),
            ("x-request-id", "3f1c2a4e-0c7b-4f5e-9a51-3a2b1c0d9e8f"),
            ("content-type", "text/plain"),
        ]);
        sanitize(Sender::Outside, &TrustSettings::default(), peer(), &mut h);
        let mut left: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "content-type",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-request-id"
            ]
        );
        assert_eq!(h["x-request-id"], "3f1c2a4e-0c7b-4f5e-9a51-3a2b1c0d9e8f");

        // The same headers from inside the mesh are the mesh's own.
        let mut inside = headers(&[("x-envoy-retry-on", "5xx"), ("x-forwarded-for", "1.2.3.4")]);
        let before = inside.clone();
        sanitize(Sender::Mesh, &TrustSettings::default(), peer(), &mut inside);
        assert_eq!(inside, before);
    }

    #[test]
    fn a_spoofed_forwarded_for_is_replaced_by_the_peer() {
        let mut h = headers(&[
            ("x-forwarded-for", "127.0.0.1, 10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
        ]);
        sanitize(Sender::Outside, &TrustSettings::default(), peer(), &mut h);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "203.0.113.7");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn trusted_hops_keep_their_entries_and_the_peer_is_appended() {
        let settings = TrustSettings {
            xff_trusted_hops: 1,
            ..Default::default()
        };
        let mut h = headers(&[
            ("x-forwarded-for", "127.0.0.1, 198.51.100.1"),
            ("x-forwarded-proto", "https"),
        ]);
        sanitize(Sender::Outside, &settings, peer(), &mut h);
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 203.0.113.7");
        assert_eq!(h["x-forwarded-proto"], "https", "the trusted balancer's");
        // Fewer entries than hops: all kept.
        let mut h = headers(&[]);
        let two = TrustSettings {
            xff_trusted_hops: 2,
            ..Default::default()
        };
        sanitize(Sender::Outside, &two, peer(), &mut h);
        assert_eq!(h["x-forwarded-for"], "203.0.113.7");
    }

    #[test]
    fn request_ids_are_well_formed_or_replaced() {
        for good in [
            "3f1c2a4e-0c7b-4f5e-9a51-3a2b1c0d9e8f",
            "a",
            "req:42/retry=1",
        ] {
            assert!(well_formed_request_id(good.as_bytes()), "{good}");
        }
        let long = "a".repeat(MAX_REQUEST_ID + 1);
        for bad in [
            "",
            "two words",
            "a\"b",
            "<script>",
            "x\u{7f}",
            long.as_str(),
        ] {
            assert!(!well_formed_request_id(bad.as_bytes()), "{bad:?}");
        }
        let mut h = headers(&[("x-request-id", "id with spaces")]);
        sanitize(Sender::Outside, &TrustSettings::default(), peer(), &mut h);
        assert!(!h.contains_key("x-request-id"), "left for a fresh id");
    }

    #[test]
    fn an_outside_client_cannot_force_sampling() {
        let rng = Rng::from_seed(Some(7));
        let forced = [
            vec![("x-b3-flags", "1")],
            vec![
                ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
                ("x-b3-spanid", "00f067aa0ba902b7"),
                ("x-b3-sampled", "1"),
            ],
            vec![("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-d")],
            vec![("b3", "1")],
            vec![(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )],
        ];
        for pairs in forced {
            let mut h = headers(&pairs);
            assert!(
                SpanContext::open(Incoming::from_headers(&h), 0.0, &rng).sampled,
                "as sent, {pairs:?} forces a sample"
            );
            sanitize(Sender::Outside, &TrustSettings::default(), peer(), &mut h);
            let incoming = Incoming::from_headers(&h);
            assert!(
                !SpanContext::open(incoming, 0.0, &rng).sampled,
                "{pairs:?} still forced a sample at 0%: {h:?}"
            );
            // ... and with the proxy's own rate at 100% it is recorded.
            assert!(SpanContext::open(Incoming::from_headers(&h), 100.0, &rng).sampled);
        }
    }

    #[test]
    fn the_clients_trace_ids_are_kept() {
        let mut h = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        sanitize(Sender::Outside, &TrustSettings::default(), peer(), &mut h);
        let span = SpanContext::open(Incoming::from_headers(&h), 100.0, &Rng::from_seed(Some(1)));
        let mut out = HeaderMap::new();
        span.inject(&mut out);
        assert_eq!(out["x-b3-traceid"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(out["x-b3-parentspanid"], "00f067aa0ba902b7");
    }

    #[test]
    fn trusted_client_trace_settings_keep_the_decision() {
        let settings = TrustSettings {
            client_trace: true,
            ..Default::default()
        };
        let mut h = headers(&[("x-b3-flags", "1")]);
        sanitize(Sender::Outside, &settings, peer(), &mut h);
        let rng = Rng::from_seed(Some(7));
        assert!(SpanContext::open(Incoming::from_headers(&h), 0.0, &rng).sampled);
    }
}
