//! HTTP/2 to the next hop, for requests that arrived as HTTP/2.
//!
//! An app that speaks HTTP/2 to its sidecar (gRPC always does, with prior
//! knowledge) gets HTTP/2 all the way: the outbound sidecar sends to the
//! chosen endpoint's inbound listener over HTTP/2, and the inbound sidecar
//! to its app the same way. Each endpoint has one shared HTTP/2 connection
//! ([`H2Conn`]) that carries every request to it at once, as streams; a new
//! one is opened when it closes. Balancing stays per request (each request
//! picks its endpoint before it gets here), which is what makes a mesh
//! spread gRPC calls that Kubernetes' per-connection balancing pins to one
//! pod.
//!
//! The protocol follows the caller, as Istio's sidecars do for a port whose
//! protocol is detected (Envoy's `USE_DOWNSTREAM_PROTOCOL`): an app that
//! calls with HTTP/2 must be calling a service that speaks HTTP/2 (every
//! gRPC server does); HTTP/1.1 callers are unaffected.
//!
//! Trailers (`grpc-status`) and streaming bodies pass as HTTP/2 frames.
//!
//! # Decision: HTTP/1.1 stays HTTP/1.1 between sidecars
//!
//! Linkerd and Istio carry an app's HTTP/1.1 requests over HTTP/2 between
//! their proxies: one multiplexed connection per pair of proxies, which
//! matters most once every connection is a mutual-TLS handshake. micromesh
//! measured what it would cost here before doing it (`./scripts/bench.sh
//! --callgrind --cases micromesh,micromesh-h2`, 2026-12-07): a request
//! through one sidecar costs 43.8k user-space instructions over HTTP/1.1
//! and 86.7k over HTTP/2 (hyper's HTTP/2 per request: HPACK, stream and
//! flow-control state, a connection task to hand each stream to), so
//! +42.9k for an HTTP/2 hop. Carried over HTTP/2, a mesh path's HTTP/1.1
//! request would pay about half of that at each of its two sidecars (the
//! outbound one encodes HTTP/2, the inbound one decodes it): roughly +43k
//! per request on a path that costs about 88k today, against a cost target
//! of nginx's 19.5k per proxy. Serial round trips on a busy 2-core VM
//! (h2load, one connection, one request at a time) added 633 us through
//! the sidecar over HTTP/1.1 and 378 us over HTTP/2: wall-clock numbers
//! on that machine were too noisy to weigh against a 2x instruction count,
//! and are for the lead's quiet re-measure. Keep-alive HTTP/1.1 pools
//! (`pool.rs`) already reuse connections without TLS, so nothing needs the
//! multiplexing yet: HTTP/1.1 stays HTTP/1.1, HTTP/2 stays HTTP/2 ("the
//! protocol follows the caller"), and the question comes back with mTLS,
//! when a connection costs a handshake.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::body::{Req, ReqBody};
use crate::cluster::EndpointRt;
use crate::error::ProxyError;

/// The one HTTP/2 connection to an endpoint, if open. Every request to the
/// endpoint reads it, so it sits behind an atomic pointer (as the snapshot
/// does), not a lock: the request path takes none.
#[derive(Debug, Default)]
pub struct H2Conn(ArcSwapOption<SendRequest<ReqBody>>);

impl H2Conn {
    fn get(&self) -> Option<SendRequest<ReqBody>> {
        let current = self.0.load();
        current.as_deref().filter(|s| !s.is_closed()).cloned()
    }

    fn set(&self, sender: SendRequest<ReqBody>) {
        self.0.store(Some(Arc::new(sender)));
    }
}

/// Send an HTTP/2 request to `endpoint` over its shared connection.
pub async fn send(endpoint: &EndpointRt, req: Req) -> Result<http::Response<Incoming>, ProxyError> {
    let connect_failure = |source: std::io::Error| ProxyError::ConnectFailure {
        endpoint: endpoint.address.to_string(),
        source,
    };
    let mut sender = match endpoint.state.h2.get() {
        Some(sender) => sender,
        None => {
            let tcp = crate::pool::connect_tcp(&endpoint.address)
                .await
                .map_err(connect_failure)?;
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .map_err(|e| connect_failure(std::io::Error::other(e)))?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "upstream HTTP/2 connection ended");
                }
            });
            endpoint.state.h2.set(sender.clone());
            sender
        }
    };
    let reset = |source| ProxyError::Reset {
        endpoint: endpoint.address.to_string(),
        source,
    };
    sender.ready().await.map_err(reset)?;
    sender.send_request(to_upstream(req)).await.map_err(reset)
}

/// HTTP/2 needs the scheme and authority in the request's URI (they become
/// `:scheme` and `:authority`); `Host`, if the app wrote one, gives the
/// authority. gRPC servers expect `te: trailers`, which the hop-by-hop strip
/// removed: it is put back for gRPC.
fn to_upstream(req: Req) -> http::Request<ReqBody> {
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.remove(http::header::HOST);
    if parts.uri.authority().is_none()
        && let Some(host) = host.as_ref().and_then(|h| h.to_str().ok())
    {
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        if let Ok(uri) = format!("http://{host}{path}").parse() {
            parts.uri = uri;
        }
    }
    if parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
    {
        parts
            .headers
            .insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
    parts.version = http::Version::HTTP_2;
    parts.extensions = http::Extensions::new();
    http::Request::from_parts(parts, body)
}
