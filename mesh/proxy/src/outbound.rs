//! The outbound and gateway listeners' request handling: from the app (or a
//! user, at the gateway) to another service.
//!
//! For each request: note the start time; strip hop-by-hop headers; give it
//! an `x-request-id` if it has none; open the telemetry [`Exchange`] (the
//! CLIENT span, propagated in the trace headers, and the `RequestLog` the
//! layers write into); hand the body on as it arrives (it streams; the
//! retry layer reads ahead into its bounded replay buffer only when the
//! route may retry, see `body.rs`); load the compiled snapshot once; route it through [`route_stack`];
//! turn a failure into Envoy's response and flag; add
//! `x-envoy-upstream-service-time`. The exchange rides along with the
//! response body and, when the body ends, writes the access-log line and
//! records the metrics and the span (`telemetry.rs`).
//!
//! The app uses the outbound listener as its HTTP proxy (`HTTP_PROXY`), so it
//! sends absolute-form requests (`GET http://helloworld-service:8080/hello
//! HTTP/1.1`); origin-form requests with a `Host` header work too. Either way
//! the authority picks the route, nothing is resolved by DNS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, HeaderValue};
use hyper::body::Incoming;

use crate::balance::Balance;
use crate::body::{ProxyService, ReqBody, Rsp, number_value};
use crate::error::ProxyError;
use crate::fault::Fault;
use crate::log::{Direction, RequestLog};
use crate::outlier::Outlier;
use crate::pool::Pool;
use crate::proxy::Shared;
use crate::retry::Retry;
use crate::rng::Rng;
use crate::route::{RouteRt, Router, authority_of};
use crate::split::Split;
use crate::telemetry::{Arrival, Exchange};
use crate::timeout::Timeout;
use crate::upgrade::{Tunnel, Upgrade};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

/// One route's stack, outermost first, along the request path:
/// fault -> timeout -> retry -> split -> balance -> outlier -> pool.
pub fn route_stack(route: &Arc<RouteRt>, rng: &Rng) -> impl ProxyService + use<> {
    let endpoint = Outlier::new(Pool::new());
    let balance = Balance::new(endpoint, rng.clone());
    let split = Split::new(balance, route.destinations.clone(), rng.clone());
    let retry = Retry::new(split, route.retry.clone(), rng.clone());
    let timeout = Timeout::new(retry, route.timeout);
    Fault::new(timeout, route.fault, rng.clone())
}

/// Handle one request on the outbound (or gateway) listener; `peer` is who
/// connected (the app, or a user at the gateway).
pub async fn handle(
    shared: Arc<Shared>,
    direction: Direction,
    peer: SocketAddr,
    mut req: http::Request<Incoming>,
) -> Result<Rsp, Infallible> {
    let start = Instant::now();
    // The door (`admit.rs`): untrusted headers sanitized, framing, one
    // authority, the path normalized, in place. A refused head goes no
    // further but is answered and logged below like any failed request.
    // At a gateway, the AuthorizationPolicies that select it (`authorize.rs`):
    // decided on the request as the door left it (its path normalized for
    // them), before it is routed. A user has no certificate: no principal.
    let table = (direction == Direction::Gateway)
        .then(|| shared.current.load_full())
        .flatten();
    let policies = table
        .as_deref()
        .map_or(&[][..], |t| &t.snapshot.inbound.authorization_policies[..]);
    let edge = crate::authorize::edge_settings(&shared.config.edge, !policies.is_empty());
    let refused = crate::admit::admit(&edge, direction, peer, &mut req).err();
    let denied = match refused {
        Some(_) => None,
        None => crate::authorize::authorize(
            crate::authorize::applied(policies),
            crate::authorize::Caller {
                identity: None,
                address: peer,
                direction,
            },
            mesh_api::xds::ports::GATEWAY,
            &req,
        )
        .err(),
    };
    // A WebSocket is routed like any request; its upgrade headers survive
    // the hop-by-hop strip (`upgrade.rs`).
    let upgrade = Upgrade::take(&mut req);
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(upgrade) = &upgrade {
        upgrade.restore(&mut parts.headers);
    }
    let request_id = ensure_request_id(&mut parts.headers);
    let grpc = crate::error::is_grpc(&parts.headers);
    let probe = http::Request::from_parts(parts, ());
    let authority = authority_of(&probe).to_string();
    let (mut parts, ()) = probe.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_string());
    // Open this proxy's CLIENT span (and name the source workload) on the
    // request that goes on; recorded when the response ends.
    let exchange = Exchange::begin(
        &shared,
        Arrival {
            direction,
            peer,
            start,
            method: parts.method.clone(),
            authority,
            path_and_query: path,
            request_id,
            headers: &mut parts.headers,
        },
    );
    let log = exchange.log.clone();

    let result = async {
        if let Some(refusal) = refused {
            return Err(ProxyError::Refused(refusal));
        }
        if let Some(denied) = denied {
            return Err(denied);
        }
        if parts.method == http::Method::CONNECT {
            // HTTPS through the proxy would be an opaque tunnel: nothing to
            // route, retry or observe. The mesh carries plain HTTP (mTLS
            // between sidecars comes later), so apps call http:// URLs.
            return Err(ProxyError::BadRequest(format!(
                "CONNECT {}: the sidecar proxies plain HTTP only; call the service \
                 as http://{} (the mesh secures traffic between sidecars itself)",
                exchange.authority, exchange.authority
            )));
        }
        // The log rides in the request's context (`body.rs`).
        let body = ReqBody::arriving(body, Some(log.clone()));
        let req = http::Request::from_parts(parts, body);
        // The one read of shared config on the request path.
        let compiled = shared.current.load_full().ok_or(ProxyError::NoConfig)?;
        let rng = shared.rng.clone();
        let router = Router::new(
            compiled,
            direction,
            rng.clone(),
            move |route: &Arc<RouteRt>| route_stack(route, &rng),
        );
        crate::body::call_now(router, req).await
    }
    .await;

    let rsp = finish(result, &log, start, grpc);
    let rsp = match upgrade {
        Some(upgrade) => upgrade.respond(rsp, tunnel_of(&exchange, direction)),
        None => rsp,
    };
    Ok(exchange.respond(rsp))
}

/// What a WebSocket's tunnel line says about this request.
pub(crate) fn tunnel_of(exchange: &Exchange, direction: Direction) -> Tunnel {
    Tunnel {
        direction,
        authority: exchange.authority.clone(),
        path: exchange.path_and_query.clone(),
        request_id: exchange.request_id.clone(),
        upstream: exchange
            .log
            .upstream()
            .map_or_else(|| "-".to_string(), |u| u.address.to_string()),
    }
}

/// Turn the stack's result into the response the client gets.
/// A gRPC call (`grpc`) gets the proxy's own errors as gRPC answers
/// (`error.rs`), and its `grpc-status`, when the headers carry one, goes to
/// the access log.
pub(crate) fn finish(
    result: Result<Rsp, ProxyError>,
    log: &RequestLog,
    start: Instant,
    grpc: bool,
) -> Rsp {
    let rsp = finish_http(result, log, start, grpc);
    if grpc && let Some(code) = crate::telemetry::grpc_status(rsp.headers()) {
        log.record_grpc_status(code);
    }
    rsp
}

fn finish_http(
    result: Result<Rsp, ProxyError>,
    log: &RequestLog,
    start: Instant,
    grpc: bool,
) -> Rsp {
    match result {
        Ok(mut rsp) => {
            strip_hop_by_hop(rsp.headers_mut());
            if log.upstream().is_some() {
                rsp.headers_mut().insert(
                    UPSTREAM_SERVICE_TIME,
                    number_value(start.elapsed().as_millis() as u64),
                );
            }
            rsp
        }
        Err(error) => {
            log.flag(error.flags());
            tracing::debug!(%error, "request failed in the proxy");
            if grpc {
                error.to_grpc_response()
            } else {
                error.to_response()
            }
        }
    }
}

/// Headers that describe one hop's connection, not the request: a proxy
/// must not forward them (RFC 9110, section 7.6.1). A `static`, not a
/// `const`: a const array of `HeaderName`s is built and dropped again at
/// every use, which callgrind showed costing more than the scan itself.
const HOP_BY_HOP_COUNT: usize = 8;
static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    http::header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

/// Remove the hop-by-hop headers. A message carries few headers and at
/// most one or two of these (`Connection: keep-alive`), so one pass over the
/// names present (comparing names, no hashing) finds which, and only those
/// are removed: this runs twice per request and per hop.
pub(crate) fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let mut present = [false; HOP_BY_HOP_COUNT];
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    // `Connection` may name more headers that are for this hop only
    // (`Connection: close, x-debug-hop`): those go too. Its usual values,
    // `keep-alive` and `close`, name nothing else: one look at the value
    // tells, without splitting it. (`present[0]` is `connection`, the first
    // of HOP_BY_HOP.)
    let names_nothing = |value: &HeaderValue| {
        let value = value.as_bytes();
        value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close")
    };
    if present[0]
        && !headers
            .get_all(http::header::CONNECTION)
            .iter()
            .all(names_nothing)
    {
        let listed: Vec<HeaderName> = headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|token| {
                !token.is_empty()
                    && !token.eq_ignore_ascii_case("close")
                    && !HOP_BY_HOP
                        .iter()
                        .any(|hop| token.eq_ignore_ascii_case(hop.as_str()))
            })
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

/// Which of [`HOP_BY_HOP`] `name` is. One `match` on the name's text (the
/// compiler tells the eight apart by length, then compares one or two):
/// comparing `name` with each of the eight `HeaderName`s in turn cost
/// several times as many instructions, for every header of every message.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let i = match name.as_str() {
        "connection" => 0,
        "proxy-connection" => 1,
        "keep-alive" => 2,
        "proxy-authorization" => 3,
        "te" => 4,
        "trailer" => 5,
        "transfer-encoding" => 6,
        "upgrade" => 7,
        _ => return None,
    };
    debug_assert_eq!(HOP_BY_HOP[i], name);
    Some(i)
}

/// Keep the caller's `x-request-id`, or make one (a random UUID v4, as Envoy).
pub(crate) fn ensure_request_id(headers: &mut http::HeaderMap) -> String {
    if let Some(id) = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
        return id.to_string();
    }
    let id = uuid_v4();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, value);
    }
    id
}

/// A random UUID, version 4, in its usual text form.
pub fn uuid_v4() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    // Written into one buffer: this runs for every request that arrives
    // without an id, so no per-byte `format!` (the benchmark's profile found
    // that costing 15% of the sidecar's work).
    let mut text = [0u8; 36];
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text[at] = b'-';
            at += 1;
        }
        text[at] = HEX[usize::from(byte >> 4)];
        text[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    // Hex digits and dashes: always UTF-8, checked in one pass.
    std::str::from_utf8(&text).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert!(
            id.chars()
                .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(uuid_v4(), id);
    }

    #[test]
    fn hop_by_hop_headers_are_stripped_and_the_rest_kept() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Debug-Hop"),
            ("x-debug-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("x-request-id", "abc"),
            ("content-type", "text/plain"),
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-request-id"]);
        // Nothing to strip: nothing changes.
        let before = headers.clone();
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers, before);
    }

    #[test]
    fn the_match_and_the_list_of_hop_by_hop_names_agree() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&http::header::HOST), None);
        assert_eq!(hop_by_hop_index(&REQUEST_ID), None);
    }

    #[test]
    fn an_existing_request_id_is_kept() {
        let mut headers = http::HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc"));
        assert_eq!(ensure_request_id(&mut headers), "abc");
        let mut empty = http::HeaderMap::new();
        let id = ensure_request_id(&mut empty);
        assert_eq!(empty[REQUEST_ID], id.as_str());
    }
}
