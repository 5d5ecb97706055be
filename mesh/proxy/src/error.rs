//! Why the proxy could not get an answer from upstream, and the response it
//! sends instead.
//!
//! Each failure maps to the status, body and response flag Envoy uses at the
//! same point, so `503 UF` in micromesh means what it means in an Istio mesh.
//! Where Envoy's text is terse (`NR`), ours adds what to check next.

use http::StatusCode;

use crate::body::{Rsp, text_response};
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
            ProxyError::NoConfig
            | ProxyError::BadRequest(_)
            | ProxyError::Refused(_)
            | ProxyError::Internal(_) => ResponseFlags::empty(),
        }
    }

    /// The response the client gets instead of an upstream's.
    pub fn to_response(&self) -> Rsp {
        match self {
            ProxyError::NoRoute {
                authority,
                direction: Direction::Gateway,
            } => text_response(
                StatusCode::NOT_FOUND,
                format!(
                    "no route for host {authority:?} at the gateway: no Gateway and \
                     VirtualService serve this host. Check the VirtualService's `hosts` and \
                     `gateways` (meshctl get virtualservices).\n"
                ),
            ),
            ProxyError::NoRoute { authority, .. } => text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "no route to {authority:?}: no service of that name is known to this \
                     sidecar. Check the host and port in the URL (services are called as \
                     http://NAME:8080), and run `meshctl get services` to see what the \
                     mesh knows.\n"
                ),
            ),
            ProxyError::NoRouteMatch { virtual_host, path } => text_response(
                StatusCode::NOT_FOUND,
                format!(
                    "no route of {virtual_host:?} matches {path}: every `match` of its \
                     VirtualService failed. Add a last route without `match` as a default \
                     (meshctl get virtualservices).\n"
                ),
            ),
            ProxyError::NoConfig => text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no config from the control plane yet: this proxy has not received a \
                 snapshot. Is the control plane running (MESH_CONTROL_URL)?\n",
            ),
            ProxyError::NoHealthyUpstream { .. } => {
                text_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
            }
            ProxyError::ConnectFailure { .. } => text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: \
                 connection failure",
            ),
            ProxyError::Reset { .. } => text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: \
                 connection termination",
            ),
            ProxyError::Overflow { .. } => text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: \
                 overflow",
            ),
            ProxyError::Timeout | ProxyError::PerTryTimeout => {
                text_response(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
            }
            ProxyError::DownstreamBody(_) | ProxyError::BadRequest(_) => {
                text_response(StatusCode::BAD_REQUEST, format!("{self}\n"))
            }
            // With `Connection: close` on HTTP/1 (`admit.rs`).
            ProxyError::Refused(refusal) => refusal.to_response(),
            ProxyError::Internal(_) => {
                text_response(StatusCode::INTERNAL_SERVER_ERROR, format!("{self}\n"))
            }
        }
    }
}
