//! The last hop: a connection pool per endpoint, and the circuit breaker.
//!
//! `Pool` is the innermost service of the outbound stack (and the whole of the
//! inbound one). It takes the endpoint the balancer chose (from the request's
//! context, `body.rs`), reuses an idle keep-alive connection to it or opens a new
//! one with `hyper::client::conn::http1`, and sends the request in origin form
//! (`GET /hello/ray`), keeping the `Host` header the app wrote.
//!
//! The DestinationRule's `connectionPool` settings are Envoy's circuit
//! breaker thresholds, honoured here exactly:
//!
//! - `http.http2MaxRequests` (`http2_max_requests`): requests in flight in
//!   the cluster at once;
//! - `tcp.maxConnections` (`max_connections`): open connections to one
//!   endpoint (Envoy counts them across the cluster; per endpoint is simpler
//!   to reason about, and the same for the one-instance labs);
//! - `http.http1MaxPendingRequests`: requests of the cluster waiting for a
//!   connection when none is free and no new one may be opened;
//! - `http.maxRequestsPerConnection`: a connection is closed after this many.
//!
//! Beyond a threshold the request fails at once with 503 and flag `UO`
//! ("reset reason: overflow"), which is exactly what Istio's circuit breaking
//! task shows with fortio.
//!
//! A connection goes back to the pool when its response body has been read to
//! the end; a body dropped half-way leaves the connection in an unknown
//! state, so it is closed instead.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::body::{Req, ReqBody, Rsp, RspFuture};
use crate::cluster::{ClusterRt, EndpointRt, EndpointState};
use crate::error::ProxyError;

/// How long to wait for a TCP connection (Istio's default `connectTimeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Sender = SendRequest<ReqBody>;

// === impl Pool ===

/// The endpoint service: sends the request to the `Arc<EndpointRt>` found in
/// its context, over a pooled connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pool;

impl Pool {
    pub fn new() -> Self {
        Pool
    }
}

impl tower::Service<Req> for Pool {
    type Response = Rsp;
    type Error = ProxyError;
    type Future = RspFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // Limits are checked per request in `call`: a full pool must answer
        // 503 UO at once, not make the caller wait in poll_ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> RspFuture {
        Box::pin(async move {
            let ctx = crate::body::ctx(&req);
            let cluster = ctx.cluster.clone().ok_or(ProxyError::Internal(
                "the pool needs a cluster in the request",
            ))?;
            let endpoint = ctx.endpoint.clone().ok_or(ProxyError::Internal(
                "the pool needs an endpoint in the request",
            ))?;
            send(&cluster, &endpoint, req).await
        })
    }
}

/// Send `req` to `endpoint` of `cluster`, honouring the cluster's limits.
pub async fn send(cluster: &ClusterRt, endpoint: &EndpointRt, req: Req) -> Result<Rsp, ProxyError> {
    let limits = &cluster.connection_pool;
    let request_slot = Slot::acquire(&cluster.state.active_requests, limits.http2_max_requests)
        .ok_or_else(|| ProxyError::Overflow {
            cluster: cluster.name.to_string(),
            limit: "too many requests in flight (connectionPool.http.http2MaxRequests)",
        })?;

    // Toward a mutual-TLS endpoint, the request's record learns which
    // identity the connection it goes out on proved (telemetry's
    // `destination_principal`); a plaintext endpoint skips even the lookup.
    let log = match endpoint.mtls {
        Some(_) => crate::body::ctx(&req).log.clone(),
        None => None,
    };

    // HTTP/2 in, HTTP/2 out, over the endpoint's shared connection
    // (`h2.rs`); the request slot is held until the response body ends.
    if req.version() == http::Version::HTTP_2 {
        // Boxed: HTTP/2's future is large, and an unboxed one would make
        // every HTTP/1.1 request's future as large (and copied as often).
        let (rsp, identity) = Box::pin(crate::h2::send(endpoint, req)).await?;
        if let (Some(log), Some(identity)) = (&log, &identity) {
            log.record_upstream_identity(identity);
        }
        let (parts, incoming) = rsp.into_parts();
        let body = PooledBody {
            inner: incoming,
            conn: None,
            endpoint: endpoint.state.clone(),
            max_uses: None,
            _request_slot: request_slot,
        };
        return Ok(Rsp::from_parts(parts, body.boxed()));
    }
    let mut upstream = to_upstream(req);
    loop {
        let (mut conn, reused) = checkout(cluster, endpoint).await?;
        if let (Some(log), Some(identity)) = (&log, &conn.identity) {
            log.record_upstream_identity(identity);
        }
        match conn.sender.try_send_request(upstream).await {
            Ok(rsp) => {
                conn.uses += 1;
                let (parts, incoming) = rsp.into_parts();
                // After a 101 the connection belongs to the WebSocket
                // tunnel (`upgrade.rs`), never back to the pool.
                let reusable = parts.status != http::StatusCode::SWITCHING_PROTOCOLS;
                let body = PooledBody {
                    inner: incoming,
                    conn: reusable.then_some(conn),
                    endpoint: endpoint.state.clone(),
                    max_uses: limits.max_requests_per_connection,
                    _request_slot: request_slot,
                };
                return Ok(Rsp::from_parts(parts, body.boxed()));
            }
            Err(mut error) => match error.take_message() {
                // The request never left: a kept-alive connection was closed
                // by the server in the meantime. Envoy retries this case
                // transparently on a new connection; so do we.
                Some(req) if reused => {
                    upstream = req;
                    continue;
                }
                _ => {
                    return Err(ProxyError::Reset {
                        endpoint: endpoint.address.to_string(),
                        source: error.into_error(),
                    });
                }
            },
        }
    }
}

/// Origin form (`/path?query`) with the app's `Host` header. The body goes
/// as it is: hyper writes each chunk as the client's side delivers it, and
/// asks for the next only when the upstream connection took the last one.
fn to_upstream(req: Req) -> http::Request<ReqBody> {
    let (mut parts, body) = req.into_parts();
    if !parts.headers.contains_key(http::header::HOST)
        && let Some(value) = parts
            .uri
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(http::header::HOST, value);
    }
    // Origin form: the path and query alone (a cheap copy, no parsing).
    parts.uri = match parts.uri.path_and_query() {
        Some(path) => http::Uri::from(path.clone()),
        None => http::Uri::from_static("/"),
    };
    parts.version = http::Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    http::Request::from_parts(parts, body)
}

// === impl ConnPool ===

/// The connections to one endpoint.
#[derive(Debug, Default)]
pub struct ConnPool {
    idle: Mutex<Vec<Conn>>,
    /// Open connections, idle or busy.
    connections: AtomicU32,
    /// Woken when a connection is returned or closed.
    notify: Notify,
}

impl ConnPool {
    /// Open connections to this endpoint, idle or busy.
    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    fn pop_idle(&self) -> Option<Conn> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn push_idle(&self, conn: Conn) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        self.notify.notify_waiters();
    }
}

#[derive(Debug)]
struct Conn {
    sender: Sender,
    uses: u32,
    /// The server's SPIFFE ID, as this connection's mutual-TLS handshake
    /// proved it; `None` for plain text.
    identity: Option<Arc<str>>,
}

/// An idle connection (reused: true) or a new one, or wait in the pending
/// queue, or overflow.
async fn checkout(cluster: &ClusterRt, endpoint: &EndpointRt) -> Result<(Conn, bool), ProxyError> {
    let pool = &endpoint.state.pool;
    let limits = &cluster.connection_pool;
    let max_connections = limits.max_connections.unwrap_or(u32::MAX);
    let mut pending: Option<Slot> = None;
    // The usual case first: an idle connection, taken without registering
    // for a wake-up (each registration locks the `Notify`'s waiter list
    // twice, which callgrind showed on every request).
    if let Some(conn) = pop_ready(pool).await {
        return Ok((conn, true));
    }
    loop {
        // Register for a wake-up *before* looking, so a connection returned
        // between the look and the wait is not missed.
        let notified = pool.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        if let Some(conn) = pop_ready(pool).await {
            return Ok((conn, true));
        }

        if increment_below(&pool.connections, max_connections) {
            // Boxed: a new connection (TCP, maybe TLS, hyper's handshake)
            // is rare, and its large future would otherwise be part of
            // every request's, copied at each move.
            return match Box::pin(connect(endpoint)).await {
                Ok((sender, identity)) => Ok((
                    Conn {
                        sender,
                        uses: 0,
                        identity,
                    },
                    false,
                )),
                Err(source) => {
                    pool.connections.fetch_sub(1, Ordering::Relaxed);
                    pool.notify.notify_waiters();
                    Err(ProxyError::ConnectFailure {
                        endpoint: endpoint.address.to_string(),
                        source,
                    })
                }
            };
        }

        // Every connection is busy and no new one may be opened: queue, if
        // the pending queue has room (Envoy's http1MaxPendingRequests).
        if pending.is_none() {
            pending = Some(
                Slot::acquire(&cluster.state.pending, limits.http1_max_pending_requests)
                    .ok_or_else(|| ProxyError::Overflow {
                        cluster: cluster.name.to_string(),
                        limit: "connection pool full and pending queue full \
                                (connectionPool.tcp.maxConnections, \
                                connectionPool.http.http1MaxPendingRequests)",
                    })?,
            );
        }
        notified.await;
    }
}

/// An idle connection that can take a request, if the pool has one; closed
/// ones found on the way are dropped.
async fn pop_ready(pool: &ConnPool) -> Option<Conn> {
    while let Some(mut conn) = pool.pop_idle() {
        if conn.sender.is_closed() {
            continue;
        }
        if conn.sender.ready().await.is_ok() {
            return Some(conn);
        }
    }
    None
}

/// Open a connection (mutual TLS when the endpoint says so) and run its
/// task; the task gives the connection's slot back when the connection
/// ends, whoever ends it. With mutual TLS, also the server identity the
/// handshake proved.
async fn connect(endpoint: &EndpointRt) -> std::io::Result<(Sender, Option<Arc<str>>)> {
    let tcp = connect_tcp(&endpoint.address).await?;
    match &endpoint.mtls {
        None => Ok((handshake(tcp, endpoint.state.clone()).await?, None)),
        Some(mtls) => {
            let config = client_tls(mtls, crate::tls::Alpn::Http1)?;
            let tls = crate::tls::connect(config, tcp).await?;
            let identity = server_identity(&tls);
            Ok((handshake(tls, endpoint.state.clone()).await?, identity))
        }
    }
}

/// The SPIFFE ID a finished client handshake's server proved (our
/// verifier accepted only the identity expected for the endpoint), as the
/// text telemetry labels with: formatted once per connection.
pub(crate) fn server_identity<S>(tls: &tokio_rustls::client::TlsStream<S>) -> Option<Arc<str>> {
    crate::tls::peer_identity(tls.get_ref().1.peer_certificates()).map(|id| id.to_string().into())
}

/// The client config toward an ISTIO_MUTUAL endpoint; an error while this
/// proxy holds no certificate (the connection fails as a connect failure:
/// 503 `UF`, retried by Istio's default policy), never plaintext instead.
pub(crate) fn client_tls(
    mtls: &crate::cluster::UpstreamTls,
    alpn: crate::tls::Alpn,
) -> std::io::Result<Arc<rustls::ClientConfig>> {
    match mtls.mesh.client(&mtls.expected, alpn) {
        Ok(Some(config)) => Ok(config),
        Ok(None) => Err(std::io::Error::other(format!(
            "mutual TLS to {} needs this proxy's workload certificate, and it has none yet",
            mtls.expected
        ))),
        Err(error) => Err(std::io::Error::other(error.to_string())),
    }
}

/// HTTP/1.1 over `io`, plaintext or TLS.
async fn handshake<IO>(io: IO, endpoint: Arc<EndpointState>) -> std::io::Result<Sender>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        // `with_upgrades`: a 101 hands the socket to the tunnel.
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upstream connection ended");
        }
        endpoint.pool.connections.fetch_sub(1, Ordering::Relaxed);
        endpoint.pool.notify.notify_waiters();
    });
    Ok(sender)
}

/// A TCP connection to `address`, within [`CONNECT_TIMEOUT`] (HTTP/1.1
/// here, HTTP/2 in `h2.rs`).
pub(crate) async fn connect_tcp(address: &str) -> std::io::Result<TcpStream> {
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {CONNECT_TIMEOUT:?}"),
            ));
        }
    };
    // Small requests and responses: do not wait to fill a packet.
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Add one to `counter` unless it has reached `max`.
fn increment_below(counter: &AtomicU32, max: u32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

// === impl Slot ===

/// One unit of a circuit-breaker counter, given back on drop.
#[derive(Debug)]
struct Slot(Arc<AtomicU32>);

impl Slot {
    /// Take a unit if the counter is below `limit` (`None`: unlimited).
    fn acquire(counter: &Arc<AtomicU32>, limit: Option<u32>) -> Option<Slot> {
        increment_below(counter, limit.unwrap_or(u32::MAX)).then(|| Slot(counter.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl PooledBody ===

/// An upstream response body that gives its connection back to the pool once
/// read to the end.
struct PooledBody {
    inner: Incoming,
    conn: Option<Conn>,
    endpoint: Arc<EndpointState>,
    max_uses: Option<u32>,
    _request_slot: Slot,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            let worn_out = self.max_uses.is_some_and(|max| conn.uses >= max);
            if !worn_out && !conn.sender.is_closed() {
                self.endpoint.pool.push_idle(conn);
            }
            // A worn-out connection is dropped here; hyper closes it.
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (`content-length: 0`) may never be polled: it is
        // complete all the same, and its connection is fine to reuse.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.release(),
            Some(Ok(_)) if self.inner.is_end_stream() => self.release(),
            Some(Ok(_)) => {}
            // A broken body: never reuse this connection.
            Some(Err(_)) => self.conn = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
