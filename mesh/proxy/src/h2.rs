//! HTTP/2 to the next hop, for requests that arrived as HTTP/2.
//!
//! An app that speaks HTTP/2 to its sidecar (gRPC always does, with prior
//! knowledge) gets HTTP/2 all the way: the outbound sidecar sends to the
//! chosen endpoint's inbound listener over HTTP/2, and the inbound sidecar
//! to its app the same way. Each endpoint has one shared HTTP/2 connection
//! ([`H2Conn`]) that carries every request to it at once, as streams; a new
//! one is opened when it closes, by one handshake that every waiting
//! request shares (a reset request cannot multiply connections). Balancing stays per request (each request
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

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use futures::FutureExt;
use futures::future::Shared;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::body::{Req, ReqBody};
use crate::cluster::{EndpointRt, EndpointState};
use crate::error::ProxyError;
use crate::listener::{H2_CONNECTION_WINDOW, H2_STREAM_WINDOW};

type Sender = SendRequest<ReqBody>;

/// An open connection: its sender, and the server's SPIFFE ID as the
/// mutual-TLS handshake proved it (`None`: plain text), formatted once per
/// connection for telemetry's `destination_principal`.
#[derive(Clone, Debug)]
struct Open {
    sender: Sender,
    identity: Option<Arc<str>>,
}

/// A connection being opened, awaited by every request that needs it. The
/// error is kept as its kind and text: `io::Error` cannot be cloned.
type Connecting =
    Shared<Pin<Box<dyn Future<Output = Result<Open, (std::io::ErrorKind, String)>> + Send>>>;

/// The one HTTP/2 connection to an endpoint, if open. Every request to the
/// endpoint reads it, so it sits behind an atomic pointer (as the snapshot
/// does), not a lock: the request path takes none.
///
/// Opening it is done once for everyone: requests that find no connection
/// wait for the same handshake ([`Connecting`]), which runs in its own task.
/// A request reset by its client half-way (HTTP/2 RST_STREAM, or a client
/// that went away) therefore neither cancels the handshake nor starts a new
/// one; without this, thousands of HEADERS-then-RST_STREAM streams opened
/// hundreds of upstream connections a second.
#[derive(Debug, Default)]
pub struct H2Conn {
    sender: ArcSwapOption<Open>,
    connecting: Mutex<Option<ConnectingSlot>>,
}

/// [`Connecting`], with a `Debug` the endpoint's state can print.
struct ConnectingSlot(Connecting);

impl std::fmt::Debug for ConnectingSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connecting")
    }
}

impl H2Conn {
    fn get(&self) -> Option<Open> {
        let current = self.sender.load();
        current
            .as_deref()
            .filter(|o| !o.sender.is_closed())
            .cloned()
    }

    fn set(&self, open: Open) {
        self.sender.store(Some(Arc::new(open)));
    }

    /// The handshake in progress, or a new one started for `endpoint`.
    fn connecting(&self, endpoint: &EndpointRt) -> Connecting {
        let mut slot = self.connecting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ConnectingSlot(pending)) = slot.as_ref() {
            return pending.clone();
        }
        // Opened (and the slot cleared) since the caller looked.
        if let Some(open) = self.get() {
            return futures::future::ready(Ok(open)).boxed().shared();
        }
        let (address, state) = (endpoint.address.clone(), endpoint.state.clone());
        let mtls = endpoint.mtls.clone();
        let task = tokio::spawn(async move {
            let result = open(&address, mtls.as_deref()).await;
            if let Ok(open) = &result {
                state.h2.set(open.clone());
            }
            // The next request after a failure tries again.
            clear(&state);
            result.map_err(|e| (e.kind(), e.to_string()))
        });
        let pending: Connecting = async move {
            task.await.unwrap_or_else(|join| {
                Err((std::io::ErrorKind::Other, format!("handshake task: {join}")))
            })
        }
        .boxed()
        .shared();
        *slot = Some(ConnectingSlot(pending.clone()));
        pending
    }
}

fn clear(state: &EndpointState) {
    *state
        .h2
        .connecting
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = None;
}

/// Open an HTTP/2 connection to `address` (mutual TLS when `mtls` says
/// so, ALPN `istio-h2`) and run it in its own task.
async fn open(address: &str, mtls: Option<&crate::cluster::UpstreamTls>) -> std::io::Result<Open> {
    let tcp = crate::pool::connect_tcp(address).await?;
    match mtls {
        None => Ok(Open {
            sender: handshake(tcp).await?,
            identity: None,
        }),
        Some(mtls) => {
            let config = crate::pool::client_tls(mtls, crate::tls::Alpn::H2)?;
            let tls = crate::tls::connect(config, tcp).await?;
            let identity = crate::pool::server_identity(&tls);
            Ok(Open {
                sender: handshake(tls).await?,
                identity,
            })
        }
    }
}

/// HTTP/2 over `io`, plaintext or TLS.
async fn handshake<IO>(io: IO) -> std::io::Result<Sender>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // The same bounded windows as the listeners': what one upstream
        // stream may have sent and the caller not read yet.
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .handshake(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

/// Send an HTTP/2 request to `endpoint` over its shared connection; with
/// the server identity that connection proved (mutual TLS).
pub async fn send(
    endpoint: &EndpointRt,
    req: Req,
) -> Result<(http::Response<Incoming>, Option<Arc<str>>), ProxyError> {
    let Open {
        mut sender,
        identity,
    } = match endpoint.state.h2.get() {
        Some(open) => open,
        None => endpoint
            .state
            .h2
            .connecting(endpoint)
            .await
            .map_err(|(kind, text)| ProxyError::ConnectFailure {
                endpoint: endpoint.address.to_string(),
                source: std::io::Error::new(kind, text),
            })?,
    };
    let reset = |source| ProxyError::Reset {
        endpoint: endpoint.address.to_string(),
        source,
    };
    sender.ready().await.map_err(reset)?;
    let rsp = sender.send_request(to_upstream(req)).await.map_err(reset)?;
    Ok((rsp, identity))
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
