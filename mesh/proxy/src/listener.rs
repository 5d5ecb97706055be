//! Accepting connections: one accept loop per listener, one task per
//! connection, HTTP/1.1 (and HTTP/2 with prior knowledge) via hyper-util,
//! and how long a connection may hold the proxy's memory and descriptors.
//!
//! The handler gets each request with its connection's [`Peer`]: the
//! address that sent it (telemetry's `peer.address`) and, on a mutual-TLS
//! connection, the client's verified certificate (its SPIFFE identity, for
//! AuthorizationPolicy's `source.principal` and `x-forwarded-client-cert`).
//!
//! ## mTLS at the inbound listener (PeerAuthentication)
//!
//! An inbound listener asks its [`Admit`] for the mode in effect when a
//! connection arrives, and peeks at the first byte the client sends
//! (Envoy's `tls_inspector`): a TLS handshake record, or plaintext HTTP.
//!
//! | mode | TLS ClientHello | plaintext |
//! | --- | --- | --- |
//! | STRICT | handshake, client certificate required | closed at once |
//! | PERMISSIVE (Istio's default) | handshake, client certificate required | served |
//! | DISABLE | closed (nothing here speaks TLS) | served |
//!
//! A sidecar without a certificate (no CA) serves plaintext only; under
//! STRICT it refuses everything until its certificate arrives. The peek
//! and the handshake run under the request headers timeout, so a client
//! that connects and says nothing is closed like a slow one.
//!
//! Around the handler, this file enforces what Envoy's
//! HTTP connection manager enforces for Istio (each value from the
//! environment, `config.rs`):
//!
//! - **request headers timeout** (`MESH_REQUEST_HEADERS_TIMEOUT`, 60 s): a
//!   client sending its head one byte a second (slowloris) is closed. As
//!   Envoy's, the clock starts at the head's first byte, so an idle
//!   keep-alive connection waiting for its next request is the idle
//!   timeout's business, not this one's. The connection's watchdog runs it
//!   beside the idle clocks, not hyper: hyper's own header timer is a boxed
//!   `Sleep` armed and dropped again for every request (an allocation and
//!   two trips through the timer wheel), where the watchdog's look costs a
//!   load and a store per read.
//! - **idle timeout** (`MESH_IDLE_TIMEOUT`, Envoy's 1 h): a connection with no
//!   request in flight and no byte moving is closed (GOAWAY for HTTP/2).
//! - **stream idle timeout** (`MESH_STREAM_IDLE_TIMEOUT`, Envoy's 5 min): a
//!   connection whose requests in flight move no byte either way is closed;
//!   this bounds a request body that stalls half-way as well.
//! - **connection cap** (`MESH_MAX_CONNECTIONS`): beyond it a new connection
//!   is closed at accept, before a byte is read, as Envoy's overload manager
//!   does; the log says so at most once per [`LOG_EVERY`].
//! - **accept errors** (out of descriptors: `EMFILE`, `ENFILE`): the loop
//!   backs off, 5 ms doubling up to 1 s, instead of spinning, and logs once
//!   per [`LOG_EVERY`], as tokio's and hyper's examples and Envoy do.
//! - **per-connection buffers**: an HTTP/1.1 connection buffers at most
//!   [`H1_MAX_BUF`], an HTTP/2 stream [`H2_STREAM_WINDOW`], so memory under
//!   many concurrent uploads is bounded by the buffers, not the bodies.
//!
//! ## Drain
//!
//! A proxy drains in three steps ([`Drain`], driven by `proxy.rs`), as
//! Envoy's drain manager and Istio's `terminationDrainDuration` do:
//! 1. *draining*: readiness turns 503 (`admin.rs`); the listeners still
//!    accept, every HTTP/1.1 response says `Connection: close`, and HTTP/2
//!    connections get GOAWAY, so clients move to other instances without an
//!    error;
//! 2. *closing*: the accept loops stop; each connection closes once its
//!    requests are answered;
//! 3. *cut*: requests still waiting for their answer get 503 with
//!    `Connection: close` (a status the client can act on, rather than a
//!    reset connection).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use mesh_api::config::MtlsMode;
use mesh_api::identity::Identity;

use crate::body::{ResponseBody, Rsp, text_response};
use crate::config::ListenerLimits;
use crate::tls::PeerCertificate;

// === Peer ===

/// Who is at the other end of a connection; every request on it gets it.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The client's address (telemetry's `peer.address`).
    pub address: SocketAddr,
    /// Set on a mutual-TLS connection: the client's verified certificate.
    pub certificate: Option<Arc<PeerCertificate>>,
}

impl Peer {
    /// A plaintext peer.
    pub fn plaintext(address: SocketAddr) -> Peer {
        Peer {
            address,
            certificate: None,
        }
    }

    /// The client's SPIFFE identity, proven by its certificate; `None` on
    /// a plaintext connection.
    pub fn identity(&self) -> Option<&Identity> {
        self.certificate.as_deref().map(|c| &c.identity)
    }
}

/// What an inbound listener enforces for a new connection: the mode in
/// effect (the snapshot's PeerAuthentication) and the server config of the
/// current certificate (`None`: the proxy holds none).
pub struct Admission {
    pub mode: MtlsMode,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Asked once per connection, as it arrives (so a new snapshot or a
/// rotated certificate applies to the next connection).
pub type Admit = Arc<dyn Fn() -> Admission + Send + Sync>;

/// At most one warning per listener and kind (refusals, accept errors) in
/// this long; the next one says how many were not logged.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The first pause after a failed accept; it doubles while accepts fail.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest pause between failed accepts.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// An HTTP/1.1 connection's read and write buffers grow up to this (hyper's
/// default is about 400 KiB). A body is streamed through, chunk by chunk, so
/// 64 KiB (the replay buffer's size, `body.rs`) costs no throughput and keeps
/// fifty concurrent uploads within a few MB.
pub const H1_MAX_BUF: usize = 64 * 1024;

/// What one HTTP/2 stream may send before the proxy reads it (hyper's
/// default is 1 MiB per stream and per connection).
pub const H2_STREAM_WINDOW: u32 = 256 * 1024;
/// What one HTTP/2 connection may send, all streams together, before the
/// proxy reads it.
pub const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Streams one HTTP/2 client connection may have open at once (Envoy's
/// default is 2^31-1; hyper's 200 is a saner bound for a sidecar).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 200;

// === impl Drain ===

/// The phases of a drain, shared by every listener of a proxy; each token is
/// cancelled once, in order (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct Drain {
    /// Shutdown began: not ready, `Connection: close`, GOAWAY.
    pub draining: CancellationToken,
    /// The drain duration is over: stop accepting.
    pub closing: CancellationToken,
    /// The drain timeout is over: answer what still waits with 503.
    pub cut: CancellationToken,
}

impl Drain {
    /// Whether shutdown has begun (readiness reports it).
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }
}

// === serve ===

/// Serve `handler` on `listener` until `drain.closing` is cancelled,
/// plaintext only.
pub fn serve<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: ListenerLimits,
    drain: Drain,
    tasks: TaskTracker,
    handler: F,
) where
    F: Fn(Peer, http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Rsp, Infallible>> + Send + 'static,
{
    serve_admitting(name, listener, limits, drain, tasks, None, handler)
}

/// [`serve`], with mutual TLS as `admit` says (the inbound listener).
pub fn serve_admitting<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: ListenerLimits,
    drain: Drain,
    tasks: TaskTracker,
    admit: Option<Admit>,
    handler: F,
) where
    F: Fn(Peer, http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Rsp, Infallible>> + Send + 'static,
{
    let builder = builder();
    let accept_tasks = tasks.clone();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    tasks.spawn(async move {
        let mut refusals = Quiet::default();
        let mut failures = Quiet::default();
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let (stream, peer) = tokio::select! {
                _ = drain.closing.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        accepted
                    }
                    Err(error) => {
                        // Usually out of descriptors (EMFILE, ENFILE): the
                        // pending connection stays in the kernel's queue, so
                        // retrying at once would fail at once, forever.
                        // Wait, longer each time, until one closes.
                        if let Some(unlogged) = failures.allow() {
                            tracing::warn!(
                                listener = name, %error, unlogged,
                                retry_in = ?backoff,
                                "accept failed; backing off (out of file descriptors? \
                                 raise `ulimit -n` or lower MESH_MAX_CONNECTIONS)"
                            );
                        }
                        tokio::select! {
                            _ = drain.closing.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                },
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                // Over the cap: close before reading a byte. The client sees
                // its connection closed at once, and can try another
                // instance; the proxy spends nothing more on it.
                if let Some(unlogged) = refusals.allow() {
                    tracing::warn!(
                        listener = name, %peer, unlogged,
                        max_connections = limits.max_connections,
                        "connection refused: the listener is at its connection cap \
                         (MESH_MAX_CONNECTIONS)"
                    );
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            accept_tasks.spawn(connection(
                Accepted {
                    name,
                    stream,
                    peer,
                    permit,
                    admit: admit.clone(),
                },
                builder.clone(),
                limits,
                drain.clone(),
                handler.clone(),
            ));
        }
        tracing::debug!(listener = name, "stopped accepting");
    });
}

/// One hyper builder per listener, shared by its connections.
fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The watchdog runs the request headers timeout (`ConnState`).
        .header_read_timeout(None)
        .max_buf_size(H1_MAX_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_send_buf_size(H1_MAX_BUF);
    builder
}

/// An accepted connection and its place under the cap.
struct Accepted {
    name: &'static str,
    stream: TcpStream,
    peer: SocketAddr,
    /// Given back when the connection task ends.
    permit: OwnedSemaphorePermit,
    admit: Option<Admit>,
}

/// Peek, then handshake or not, as the mode says (see the module docs).
/// `Err` says why the connection is closed.
async fn establish(
    stream: TcpStream,
    admit: Option<&Admit>,
) -> Result<(Stream, Option<Arc<PeerCertificate>>), String> {
    let Some(admit) = admit else {
        return Ok((Stream::Plain(stream), None));
    };
    let Admission { mode, tls } = admit();
    let mut first = [0u8; 1];
    let tls_hello = match stream.peek(&mut first).await {
        Ok(0) => return Err("closed before sending anything".into()),
        Ok(_) => crate::tls::looks_like_tls(first[0]),
        Err(error) => return Err(format!("could not read: {error}")),
    };
    match (mode, tls_hello, tls) {
        (MtlsMode::Disable, false, _) => Ok((Stream::Plain(stream), None)),
        (MtlsMode::Disable, true, _) => {
            Err("a TLS handshake, but PeerAuthentication says DISABLE here".into())
        }
        (MtlsMode::Strict, false, _) => {
            Err("plaintext refused: PeerAuthentication is STRICT here (mutual TLS only)".into())
        }
        (_, false, _) => Ok((Stream::Plain(stream), None)),
        (_, true, None) => Err("a TLS handshake, but this sidecar holds no certificate yet".into()),
        (_, true, Some(config)) => {
            let tls = tokio_rustls::TlsAcceptor::from(config)
                .accept(stream)
                .await
                .map_err(|error| format!("TLS handshake failed: {error}"))?;
            let certificate = PeerCertificate::of(tls.get_ref().1.peer_certificates())
                .ok_or("the client's certificate carries no SPIFFE identity")?;
            Ok((Stream::Tls(Box::new(tls)), Some(Arc::new(certificate))))
        }
    }
}

async fn connection<F, Fut>(
    accepted: Accepted,
    builder: auto::Builder<TokioExecutor>,
    limits: ListenerLimits,
    drain: Drain,
    handler: F,
) where
    F: Fn(Peer, http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Rsp, Infallible>> + Send + 'static,
{
    let Accepted {
        name,
        stream,
        peer: address,
        permit: _permit,
        admit,
    } = accepted;
    // Counted while this task lives; when a crowd has left, the last to go
    // gives their memory back to the kernel (`memory.rs`).
    let _counted = crate::memory::Connection::open();
    // mTLS or plaintext, within the time a client has for its first request
    // head (a client that connects and sends nothing is closed like a slow
    // one).
    let handshake = establish(stream, admit.as_ref());
    let established = match limits.request_headers_timeout {
        Some(limit) => tokio::time::timeout(limit, handshake)
            .await
            .unwrap_or_else(|_| {
                Err("no TLS handshake or request within the request headers timeout".into())
            }),
        None => handshake.await,
    };
    let (stream, certificate) = match established {
        Ok(established) => established,
        Err(reason) => {
            tracing::debug!(listener = name, peer = %address, reason, "connection closed");
            return;
        }
    };
    let peer = Peer {
        address,
        certificate,
    };
    let state = Arc::new(ConnState::new());
    let io = Watched {
        inner: stream,
        state: state.clone(),
    };
    // Shared by the connection's requests behind one `Arc`: cloning a
    // `CancellationToken` (and dropping the clone) takes a lock, and a
    // `Drain` holds three.
    let (s, d) = (state.clone(), Arc::new(drain.clone()));
    let service = service_fn(move |req: http::Request<Incoming>| {
        let in_flight = InFlight::enter(&s);
        let h2 = req.version() == http::Version::HTTP_2;
        if h2 {
            s.h2.store(true, Ordering::Relaxed);
        }
        // Boxed once: the handler's future is large (the whole request's
        // state), and hyper moves the future it gets from here into its own
        // slot, and `select!` below moves `answer` into its own; behind a
        // box each move is a pointer, not a memcpy of the state (callgrind:
        // about 1.5k instructions per request for one allocation).
        let answer = Box::pin(handler(peer.clone(), req));
        let (s, d) = (s.clone(), d.clone());
        async move {
            let mut rsp = tokio::select! {
                // The answer first: no random pick between the two per poll.
                biased;
                rsp = answer => rsp?,
                _ = d.cut.cancelled() => shutting_down(),
            };
            if d.is_draining() {
                if h2 {
                    // GOAWAY once this response is on its way.
                    s.goaway.notify_one();
                } else if rsp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                    // hyper closes the connection after this response.
                    rsp.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
            }
            // Not boxed again: the body already is one (`ResponseBody`).
            Ok::<_, Infallible>(rsp.map(|body| Tracked {
                inner: body,
                _in_flight: in_flight,
            }))
        }
    });
    // With upgrades: a WebSocket's 101 hands the socket to its tunnel.
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);

    // Once `graceful_shutdown` was called: hyper closes the connection
    // after its requests in flight, or at once when it has none.
    let mut shut = false;
    let mut drain_seen = false;
    // The connection's own signals (the drain's phases, a GOAWAY asked for,
    // the watchdog's clock) wake this task through `signals`, so each wake-up
    // polls only what woke it: hyper's connection on its socket's wake-ups
    // (several per request), the signals on theirs (next to never). A
    // `select!` over all five would poll every signal at every wake-up, each
    // poll a lock in tokio's `Notify`: about a thousand instructions per
    // request under callgrind.
    let signals = Arc::new(SignalWake::default());
    let signal_waker = std::task::Waker::from(signals.clone());
    let result = loop {
        let next_check = state.deadline(&limits);
        let (open, draining_unseen) = (!shut, !drain_seen);
        let signal = async {
            let signal = tokio::select! {
                biased;
                _ = drain.closing.cancelled(), if open => Some(Signal::Closing),
                // HTTP/2 has GOAWAY to say "finish, then go elsewhere" without
                // a race; an HTTP/1.1 client learns it from the `Connection:
                // close` on its next response instead.
                _ = drain.draining.cancelled(), if draining_unseen => Some(Signal::Draining),
                _ = state.goaway.notified(), if open => Some(Signal::GoAway),
                _ = sleep_until(next_check), if next_check.is_some() => Some(Signal::Check),
                else => None,
            };
            match signal {
                Some(signal) => signal,
                // Nothing left to wait for: only the connection can end.
                None => std::future::pending().await,
            }
        };
        let mut signal = std::pin::pin!(signal);
        // A new set of signal futures has not been polled yet.
        signals.woken.store(true, Ordering::Relaxed);
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(ControlFlow::Break(result));
            }
            signals.task.register(cx.waker());
            if signals.woken.swap(false, Ordering::AcqRel) {
                let mut signal_cx = Context::from_waker(&signal_waker);
                if let Poll::Ready(signal) = signal.as_mut().poll(&mut signal_cx) {
                    return Poll::Ready(ControlFlow::Continue(signal));
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            // The connection ended.
            ControlFlow::Break(result) => break result,
            ControlFlow::Continue(Signal::Closing) => {
                conn.as_mut().graceful_shutdown();
                shut = true;
            }
            ControlFlow::Continue(Signal::Draining) => {
                drain_seen = true;
                if state.h2.load(Ordering::Relaxed) && !shut {
                    conn.as_mut().graceful_shutdown();
                    shut = true;
                }
            }
            ControlFlow::Continue(Signal::GoAway) => {
                conn.as_mut().graceful_shutdown();
                shut = true;
            }
            ControlFlow::Continue(Signal::Check) => match state.verdict(&limits) {
                Verdict::Alive => {}
                Verdict::Idle if !shut => {
                    tracing::debug!(listener = name, peer = %address, "idle timeout (MESH_IDLE_TIMEOUT)");
                    conn.as_mut().graceful_shutdown();
                    shut = true;
                }
                // Still open after a graceful close was asked for, with
                // nothing in flight: the client ignores GOAWAY.
                Verdict::Idle => break Ok(()),
                Verdict::StreamIdle => {
                    tracing::debug!(
                        listener = name, peer = %address,
                        "stream idle timeout (MESH_STREAM_IDLE_TIMEOUT): closing"
                    );
                    break Ok(());
                }
                // As hyper did: no response, the connection is closed.
                Verdict::HeadersTimeout => {
                    tracing::debug!(
                        listener = name, peer = %address,
                        "request headers timeout (MESH_REQUEST_HEADERS_TIMEOUT): closing"
                    );
                    break Ok(());
                }
            },
        }
    };
    if let Err(error) = result {
        tracing::debug!(listener = name, peer = %address, %error, "connection ended with an error");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What woke a connection's task, besides its socket.
enum Signal {
    /// The drain duration is over: finish what is in flight, then close.
    Closing,
    /// The drain began.
    Draining,
    /// A response asked for GOAWAY (HTTP/2, draining).
    GoAway,
    /// The watchdog's clock: time to look at the idle timeouts.
    Check,
}

/// The waker the connection's signals see: it marks that a signal moved,
/// then wakes the connection's task.
#[derive(Default)]
struct SignalWake {
    woken: AtomicBool,
    task: futures::task::AtomicWaker,
}

impl std::task::Wake for SignalWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// What a request still waiting when the drain timeout ends gets.
fn shutting_down() -> Rsp {
    let mut rsp = text_response(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "the proxy is shutting down and could not finish this request in time \
         (MESH_DRAIN_TIMEOUT); send it again: another instance will take it\n",
    );
    rsp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    rsp
}

// === impl ConnState ===

/// What the watchdog knows about one connection.
#[derive(Debug)]
struct ConnState {
    born: Instant,
    /// Milliseconds after `born` when a byte last moved either way.
    last_activity_ms: AtomicU64,
    /// Milliseconds after `born` when the first byte of a request head
    /// arrived, while that head is incomplete; [`NO_HEAD`] otherwise. Set
    /// by a read with nothing in flight (HTTP/1.1), cleared when the head
    /// became a request ([`InFlight::enter`]).
    head_since_ms: AtomicU64,
    /// Requests whose response has not ended yet.
    in_flight: AtomicUsize,
    /// The connection speaks HTTP/2 (seen on its first request).
    h2: AtomicBool,
    /// Asks the connection task for a graceful shutdown (GOAWAY).
    goaway: Notify,
}

enum Verdict {
    Alive,
    Idle,
    StreamIdle,
    HeadersTimeout,
}

/// `head_since_ms` when no request head is on its way.
const NO_HEAD: u64 = u64::MAX;

impl ConnState {
    fn new() -> Self {
        ConnState {
            born: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(NO_HEAD),
            in_flight: AtomicUsize::new(0),
            h2: AtomicBool::new(false),
            goaway: Notify::new(),
        }
    }

    /// A byte moved: the idle clocks start again. Returns when, in
    /// milliseconds after `born`.
    fn touch(&self) -> u64 {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
        ms
    }

    /// Bytes arrived: with nothing in flight on an HTTP/1.1 connection they
    /// begin a request head, unless one is already on its way.
    fn read(&self) {
        let ms = self.touch();
        if self.in_flight.load(Ordering::Relaxed) == 0
            && !self.h2.load(Ordering::Relaxed)
            && self.head_since_ms.load(Ordering::Relaxed) == NO_HEAD
        {
            self.head_since_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// When the request head on its way (if any) must be complete.
    fn head_deadline(&self, limits: &ListenerLimits) -> Option<Instant> {
        let since = self.head_since_ms.load(Ordering::Relaxed);
        let limit = limits.request_headers_timeout?;
        (since != NO_HEAD).then(|| self.born + Duration::from_millis(since) + limit)
    }

    fn last_activity(&self) -> Instant {
        self.born + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }

    /// The timeout that applies now: idle with nothing in flight, stream
    /// idle otherwise.
    fn timeout(&self, limits: &ListenerLimits) -> (Option<Duration>, Verdict) {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            (limits.idle_timeout, Verdict::Idle)
        } else {
            (limits.stream_idle_timeout, Verdict::StreamIdle)
        }
    }

    /// When to look again: the moment the shorter timeout would expire if
    /// nothing moves. Which one applies depends on whether a request is in
    /// flight, which changes without waking this task; looking at the
    /// shorter one costs a spare wake-up per stream idle timeout (5 min) on
    /// an idle connection, and no work per request.
    ///
    /// A head may begin at any read without waking this task, so the
    /// request headers timeout counts among the shorter ones too: at worst
    /// the first look comes one headers timeout after the last byte before
    /// the head, and from then on the head's own deadline is known.
    fn deadline(&self, limits: &ListenerLimits) -> Option<Instant> {
        let shorter = [
            limits.idle_timeout,
            limits.stream_idle_timeout,
            limits.request_headers_timeout,
        ]
        .into_iter()
        .flatten()
        .min();
        // A timeout far beyond any process's life: no timer at all.
        let idle = shorter
            .filter(|t| *t < Duration::from_secs(100 * 365 * 24 * 3600))
            .map(|t| self.last_activity() + t);
        match (idle, self.head_deadline(limits)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn verdict(&self, limits: &ListenerLimits) -> Verdict {
        if self
            .head_deadline(limits)
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return Verdict::HeadersTimeout;
        }
        let (timeout, verdict) = self.timeout(limits);
        match timeout {
            Some(t) if self.last_activity().elapsed() >= t => verdict,
            _ => Verdict::Alive,
        }
    }
}

/// One request in flight on a connection, until its response body ends.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn enter(state: &Arc<ConnState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        // The head is complete: it became this request.
        state.head_since_ms.store(NO_HEAD, Ordering::Relaxed);
        state.touch();
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight.
struct Tracked {
    inner: ResponseBody,
    _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl Watched ===

/// The client's socket, noting when a byte last moved (the idle clocks).
struct Watched {
    inner: Stream,
    state: Arc<ConnState>,
}

/// A client connection, plaintext or mutual TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Watched {
    fn note<T>(&self, poll: &Poll<io::Result<T>>) {
        if let Poll::Ready(Ok(_)) = poll {
            self.state.touch();
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll
            && buf.filled().len() > before
        {
            self.state.read();
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// === impl Quiet ===

/// A log line at most once per [`LOG_EVERY`]; counts the ones held back.
#[derive(Debug, Default)]
struct Quiet {
    last: Option<Instant>,
    unlogged: u64,
}

impl Quiet {
    /// `Some(held back since the last line)` when this event may be logged.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < LOG_EVERY => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_events_logs_one_line_per_period() {
        let mut quiet = Quiet::default();
        assert_eq!(quiet.allow(), Some(0), "the first is logged");
        for _ in 0..999 {
            assert_eq!(quiet.allow(), None, "the rest of the burst is counted");
        }
        tokio::time::advance(LOG_EVERY).await;
        assert_eq!(quiet.allow(), Some(999), "the next line says how many");
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_tells_idle_from_stream_idle() {
        let limits = ListenerLimits {
            idle_timeout: Some(Duration::from_secs(10)),
            stream_idle_timeout: Some(Duration::from_secs(3)),
            ..ListenerLimits::default()
        };
        let state = Arc::new(ConnState::new());
        assert!(matches!(state.verdict(&limits), Verdict::Alive));
        assert_eq!(
            state.deadline(&limits),
            Some(state.born + Duration::from_secs(3)),
            "the shorter timeout wakes the watchdog"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(state.verdict(&limits), Verdict::Idle));

        // A request in flight: the stream clock applies, from its start.
        let request = InFlight::enter(&state);
        assert!(matches!(state.verdict(&limits), Verdict::Alive));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(matches!(state.verdict(&limits), Verdict::StreamIdle));
        drop(request);
        assert!(matches!(state.verdict(&limits), Verdict::Alive));

        let off = ListenerLimits {
            idle_timeout: None,
            stream_idle_timeout: None,
            request_headers_timeout: None,
            ..limits
        };
        assert_eq!(
            state.deadline(&off),
            None,
            "a timeout turned off sets no timer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_headers_clock_runs_from_a_heads_first_byte_until_its_request() {
        let limits = ListenerLimits {
            request_headers_timeout: Some(Duration::from_secs(5)),
            idle_timeout: Some(Duration::from_secs(60)),
            stream_idle_timeout: Some(Duration::from_secs(60)),
            ..ListenerLimits::default()
        };
        let state = Arc::new(ConnState::new());
        // Idle, no byte yet: the headers clock is not running, but the
        // watchdog looks again after one headers timeout (a head may start).
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(matches!(state.verdict(&limits), Verdict::Alive));
        assert_eq!(
            state.deadline(&limits),
            Some(state.born + Duration::from_secs(5))
        );

        // The head's first byte, then more trickling in: the clock keeps
        // its start.
        state.read();
        let started = Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await;
        state.read();
        assert_eq!(
            state.deadline(&limits),
            Some(started + Duration::from_secs(5))
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(state.verdict(&limits), Verdict::HeadersTimeout));

        // A head that became a request stops the clock; the next one
        // starts it again, from its own first byte.
        let request = InFlight::enter(&state);
        assert!(matches!(state.verdict(&limits), Verdict::Alive));
        state.read(); // its body
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(state.verdict(&limits), Verdict::Alive));
        drop(request);
        state.read();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(matches!(state.verdict(&limits), Verdict::Alive));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(state.verdict(&limits), Verdict::HeadersTimeout));

        // HTTP/2 has no head between requests to time: frames keep coming.
        let h2 = Arc::new(ConnState::new());
        h2.h2.store(true, Ordering::Relaxed);
        h2.read();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(h2.verdict(&limits), Verdict::Alive));
    }
}
