//! Why the proxy could not get an answer from upstream, and the response it
//! sends instead.
//!
//! Each failure maps to the status, body and response flag Envoy uses at the
//! same point, so `503 UF` in micromesh means what it means in an Istio mesh.
//! Where Envoy's text is terse (`NR`), ours adds what to check next.
//!
//! A gRPC client reads no HTTP status and no text body: it reads the
//! `grpc-status` and `grpc-message` of the answer. So when the request was a
//! gRPC call (`content-type: application/grpc...`), the proxy's own answer
//! (a local reply) is gRPC's *trailers-only* response, as Envoy sends it:
//! HTTP 200, `content-type: application/grpc`, the status and message in the
//! headers, no body ([`grpc_reply`]). The gRPC code is the one Envoy picks
//! for the HTTP status it would have sent (`Grpc::Utility::httpToGrpcStatus`,
//! after gRPC's own HTTP-to-gRPC table, [`grpc_status_for`]): a `503 UH`
//! becomes `UNAVAILABLE` (14), which is also what a gRPC client retries.
//! The response flags (`UH`, `NR`...) stay in the access log and metrics.

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::body::{Rsp, full, text_response};
use crate::log::{Direction, ResponseFlags};

/// A request failed inside the proxy (no upstream response to forward).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No virtual host answers this authority.
    #[error("no route to {authority:?}")]
    NoRoute {
        authority: String,
        direction: Direction,
    },
    /// A virtual host matched, but none of its routes matched the request.
    #[error("no route of {virtual_host:?} matches {path}")]
    NoRouteMatch { virtual_host: String, path: String },
    /// The proxy has not received a snapshot yet.
    #[error("no config from the control plane yet")]
    NoConfig,
    /// The cluster has no endpoint to send to (none registered, or all ejected).
    #[error("no healthy upstream in cluster {cluster:?}")]
    NoHealthyUpstream { cluster: String },
    /// Connecting to the endpoint failed (refused, unreachable, timed out).
    #[error("connection to {endpoint} failed: {source}")]
    ConnectFailure {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    /// The connection broke before the response headers arrived.
    #[error("connection to {endpoint} was reset before the response: {source}")]
    Reset {
        endpoint: String,
        #[source]
        source: hyper::Error,
    },
    /// The circuit breaker refused the request (connection pool full).
    #[error("circuit breaker of cluster {cluster:?} is open: {limit}")]
    Overflow {
        cluster: String,
        limit: &'static str,
    },
    /// The route's whole-request timeout fired.
    #[error("upstream request timeout")]
    Timeout,
    /// One attempt's `perTryTimeout` fired (retried if the policy says so).
    #[error("upstream per-try timeout")]
    PerTryTimeout,
    /// The client's request body broke off (it hung up mid-body, or sent a
    /// malformed chunk) while the proxy read it ahead for a retry.
    #[error(
        "the request body could not be read from the client: {0}. \
         Did the client hang up before sending all of it?"
    )]
    DownstreamBody(#[source] hyper::Error),
    /// The request cannot be proxied as written.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request head was refused at the door (`admit.rs`): 400, or 501
    /// for a transfer coding.
    #[error("refused: {0}")]
    Refused(#[from] crate::admit::Refusal),
    /// An AuthorizationPolicy denied the request (`authorize.rs`): 403
    /// `RBAC: access denied`, flag `RBAC`, as Envoy's RBAC filter answers;
    /// a gRPC caller reads `PERMISSION_DENIED` (7). The reason (which
    /// policy) goes to the proxy's debug log, never to the caller.
    #[error("RBAC: access denied ({reason})")]
    Denied { reason: String },
    /// A layer was used without what it needs (a bug in the stack's assembly).
    #[error("internal proxy error: {0}")]
    Internal(&'static str),
}

impl ProxyError {
    /// The response flag Envoy sets for this failure.
    pub fn flags(&self) -> ResponseFlags {
        match self {
            ProxyError::NoRoute { .. } | ProxyError::NoRouteMatch { .. } => ResponseFlags::NR,
            ProxyError::NoHealthyUpstream { .. } => ResponseFlags::UH,
            ProxyError::ConnectFailure { .. } => ResponseFlags::UF,
            ProxyError::Reset { .. } => ResponseFlags::UC,
            ProxyError::Overflow { .. } => ResponseFlags::UO,
            ProxyError::Timeout | ProxyError::PerTryTimeout => ResponseFlags::UT,
            // Envoy's DC: the downstream went away (or broke its body).
            ProxyError::DownstreamBody(_) => ResponseFlags::DC,
            ProxyError::Denied { .. } => ResponseFlags::RBAC,
            ProxyError::NoConfig
            | ProxyError::BadRequest(_)
            | ProxyError::Refused(_)
            | ProxyError::Internal(_) => ResponseFlags::empty(),
        }
    }

    /// The response the client gets instead of an upstream's.
    pub fn to_response(&self) -> Rsp {
        if let ProxyError::Refused(refusal) = self {
            // With `Connection: close` on HTTP/1 (`admit.rs`).
            return refusal.to_response();
        }
        let (status, text) = self.local_reply();
        text_response(status, text)
    }

    /// The same answer for a gRPC client: trailers-only, its `grpc-status`
    /// mapped from the HTTP status, the text as `grpc-message`.
    pub fn to_grpc_response(&self) -> Rsp {
        let (status, text) = self.local_reply();
        grpc_reply(status, text.trim_end())
    }

    /// The status and text of the local reply.
    fn local_reply(&self) -> (StatusCode, String) {
        match self {
            ProxyError::NoRoute {
                authority,
                direction: Direction::Gateway,
            } => reply(
                StatusCode::NOT_FOUND,
                format!(
                    "no route for host {authority:?} at the gateway: no Gateway and \
                     VirtualService serve this host. Check the VirtualService's `hosts` and \
                     `gateways` (meshctl get virtualservices).\n"
                ),
            ),
            ProxyError::NoRoute { authority, .. } => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no route to {authority:?}: no service of that name is known to this \
                     sidecar. Check the host and port in the URL (services are called as \
                     http://NAME:8080), and run `meshctl get services` to see what the \
                     mesh knows.\n"
                ),
            ),
            ProxyError::NoRouteMatch { virtual_host, path } => reply(
                StatusCode::NOT_FOUND,
                format!(
                    "no route of {virtual_host:?} matches {path}: every `match` of its \
                     VirtualService failed. Add a last route without `match` as a default \
                     (meshctl get virtualservices).\n"
                ),
            ),
            ProxyError::NoConfig => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "no config from the control plane yet: this proxy has not received a \
                 snapshot. Is the control plane running (MESH_CONTROL_URL)?\n",
            ),
            ProxyError::NoHealthyUpstream { .. } => {
                reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
            }
            ProxyError::ConnectFailure { .. } => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: \
                 connection failure",
            ),
            ProxyError::Reset { .. } => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: \
                 connection termination",
            ),
            ProxyError::Overflow { .. } => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: \
                 overflow",
            ),
            ProxyError::Timeout | ProxyError::PerTryTimeout => {
                reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
            }
            ProxyError::DownstreamBody(_) | ProxyError::BadRequest(_) => {
                reply(StatusCode::BAD_REQUEST, format!("{self}\n"))
            }
            ProxyError::Refused(refusal) => reply(refusal.status, format!("{}\n", refusal.reason)),
            ProxyError::Denied { .. } => {
                reply(crate::authz::DENIED_STATUS, crate::authz::DENIED_BODY)
            }
            ProxyError::Internal(_) => {
                reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{self}\n"))
            }
        }
    }
}

/// `(status, text)` from anything that reads as text.
fn reply(status: StatusCode, text: impl Into<String>) -> (StatusCode, String) {
    (status, text.into())
}

// === gRPC local replies ===

/// Whether a request is a gRPC call: its content type is `application/grpc`
/// (or `application/grpc+proto`, `+json`...), as Envoy decides it.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
}

/// gRPC status codes the proxy's own answers use (gRPC's `statuscodes.md`).
pub mod grpc_code {
    pub const UNKNOWN: u16 = 2;
    pub const PERMISSION_DENIED: u16 = 7;
    pub const UNIMPLEMENTED: u16 = 12;
    pub const INTERNAL: u16 = 13;
    pub const UNAVAILABLE: u16 = 14;
    pub const UNAUTHENTICATED: u16 = 16;
}

/// The gRPC status for an HTTP status, as Envoy maps it
/// (`Grpc::Utility::httpToGrpcStatus`, from gRPC's
/// `doc/http-grpc-status-mapping.md`). 504 is `UNAVAILABLE` there too, not
/// `DEADLINE_EXCEEDED`: the client's own deadline is what raises that one.
pub fn grpc_status_for(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => grpc_code::INTERNAL,
        401 => grpc_code::UNAUTHENTICATED,
        403 => grpc_code::PERMISSION_DENIED,
        404 => grpc_code::UNIMPLEMENTED,
        429 | 502 | 503 | 504 => grpc_code::UNAVAILABLE,
        _ => grpc_code::UNKNOWN,
    }
}

/// A gRPC trailers-only answer standing for an HTTP `status` with `text`:
/// HTTP 200, `grpc-status` from [`grpc_status_for`], `grpc-message` the
/// text percent-encoded as gRPC's wire format asks, and no body, so the
/// headers end the stream.
pub fn grpc_reply(status: StatusCode, text: &str) -> Rsp {
    grpc_reply_with_code(grpc_status_for(status), text)
}

/// The same trailers-only answer with a gRPC `code` chosen by config, not
/// mapped from an HTTP status: a `grpcStatus` fault abort (`fault.rs`), as
/// Envoy's local reply uses the fault filter's `grpc_status` when it has one.
pub fn grpc_reply_with_code(code: u16, text: &str) -> Rsp {
    let mut rsp = http::Response::new(full(bytes::Bytes::new()));
    let headers = rsp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(message) = HeaderValue::from_str(&grpc_message(text)) {
        headers.insert("grpc-message", message);
    }
    rsp
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is, every
/// other byte of the UTF-8 text as `%XX`.
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_to_grpc_codes_as_envoy_maps_them() {
        let cases = [
            (400, grpc_code::INTERNAL),
            (401, grpc_code::UNAUTHENTICATED),
            (403, grpc_code::PERMISSION_DENIED),
            (404, grpc_code::UNIMPLEMENTED),
            (429, grpc_code::UNAVAILABLE),
            (502, grpc_code::UNAVAILABLE),
            (503, grpc_code::UNAVAILABLE),
            (504, grpc_code::UNAVAILABLE),
            (500, grpc_code::UNKNOWN),
            (418, grpc_code::UNKNOWN),
        ];
        for (http, grpc) in cases {
            assert_eq!(
                grpc_status_for(StatusCode::from_u16(http).unwrap()),
                grpc,
                "HTTP {http}"
            );
        }
    }

    #[test]
    fn a_grpc_local_reply_is_trailers_only() {
        let rsp = ProxyError::NoHealthyUpstream {
            cluster: "hello-grpc".into(),
        }
        .to_grpc_response();
        assert_eq!(
            rsp.status(),
            200,
            "gRPC answers carry their status in grpc-status"
        );
        assert_eq!(rsp.headers()["content-type"], "application/grpc");
        assert_eq!(rsp.headers()["grpc-status"], "14");
        assert_eq!(rsp.headers()["grpc-message"], "no healthy upstream");
        assert!(
            http_body::Body::is_end_stream(rsp.body()),
            "no body: the headers end the stream"
        );
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_message("no route: 100% sure"), "no route: 100%25 sure");
        assert_eq!(grpc_message("line\nnext"), "line%0Anext");
        assert_eq!(grpc_message("Hola señor"), "Hola se%C3%B1or");
    }

    #[test]
    fn only_grpc_content_types_are_grpc() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&headers));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(!is_grpc(&headers));
    }
}
