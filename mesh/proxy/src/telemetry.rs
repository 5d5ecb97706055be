//! Telemetry for one request: where the listeners meet tracing (`trace.rs`,
//! `report.rs`) and metrics (`metrics.rs`).
//!
//! Every listener opens an [`Exchange`] as a request arrives. It
//!
//! 1. reads the trace context, opens this proxy's span (SERVER on the
//!    inbound side, CLIENT on the outbound side and at the gateway) and
//!    writes it into the request sent on, in every header format;
//! 2. tells the callee who calls: the outbound side adds
//!    `x-mesh-peer-metadata` (workload, namespace, app, version, canonical
//!    service and revision, cluster), the inbound side reads and removes it
//!    before the app sees the request (Istio's sidecars exchange the same
//!    facts in `x-envoy-peer-metadata`);
//! 3. travels with the response body and, when the last byte has gone (or
//!    the caller went away), writes the access-log line, counts the request
//!    once in the metrics and hands the finished span to the reporter's
//!    queue. Envoy writes its access log at the end of the stream too: only
//!    then is a gRPC call's `grpc-status` known, which an OK call sends in
//!    its trailers.
//!
//! Every label value a request needs was built before it arrived: this
//! proxy's own [`Peer`] and SPIFFE ID at start, each endpoint's and each
//! cluster's service name once per snapshot, a caller's once per distinct
//! header, a peer's verified SPIFFE ID once per mutual-TLS connection
//! (`listener.rs` for the caller's, `pool.rs`/`h2.rs` for the server's).
//! A request only picks `Arc`s and compares them with the series its
//! endpoint used last (`metrics.rs`'s `SeriesCache`); nothing is formatted
//! per request.
//!
//! Who is who comes from two places, on purpose: the workload, app and
//! version from the caller's `x-mesh-peer-metadata` (what it says about
//! itself), the principals only from the hop's certificates (what it
//! proved). Over plain text nothing was proved, and both principals are
//! `unknown`, as Istio writes them.
//!
//! Recording happens when the exchange is dropped, so no path can forget it:
//! a response streamed to the end, a local error reply, or a caller that
//! hung up before any response (`response_code="0"`, flag `DC`) all count
//! exactly once. The request path itself never waits for telemetry.
//!
//! With `MESH_TELEMETRY=off` the exchange only carries the access log's
//! fields: no span, no headers added, no metrics; it rides the body only of
//! a gRPC call (for the status in its trailers), and writes the line of any
//! other request as its response head goes out.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use mesh_api::xds::ProxyMode;

use crate::body::{ResponseBody, Rsp};
use crate::cluster::{ClusterRt, EndpointRt};
use crate::config::Config;
use crate::log::{AccessLog, Direction, RequestLog, ResponseFlags};
use crate::metrics::{
    LabelsRef, Metrics, Observation, Peer, Protocol, Reporter, SeriesCache, ServiceName, UNKNOWN,
};
use crate::proxy::Shared;
use crate::report::{Counters, SpanQueue};
use crate::trace::{Incoming, Kind, LocalService, Remote, Span, SpanContext, UpstreamCluster};

/// Set by the caller's sidecar: who calls, as
/// `workload=guestbook-ui;namespace=default;app=guestbook-ui;version=v1;canonical_service=guestbook-ui;canonical_revision=v1;cluster=Kubernetes`.
pub const PEER_METADATA: HeaderName = HeaderName::from_static("x-mesh-peer-metadata");

/// gRPC's status, in the response headers (a trailers-only reply) or in
/// the trailers.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

// === impl Telemetry ===

/// A proxy's telemetry settings and sinks, shared by every request.
#[derive(Debug)]
pub struct Telemetry {
    /// `MESH_TELEMETRY`: record spans and metrics at all.
    pub enabled: bool,
    /// `MESH_TRACE_SAMPLING`, percent.
    pub sampling: f64,
    pub metrics: Metrics,
    /// Where finished spans go; `None` without a collector.
    pub spans: Option<SpanQueue>,
    /// The reporter's counters (also on the metrics page).
    pub counters: Counters,
    /// This proxy, as its spans name it.
    pub local: Arc<LocalService>,
    /// The inbound side's series cache (its destination is always this
    /// workload; the callers vary).
    pub inbound_series: SeriesCache,
    /// The app's port and service, for the inbound cluster's name.
    pub app_port: u16,
    pub app_service: Arc<str>,
    /// This proxy's workload, as both ends of its requests' labels name it.
    pub me: Arc<Peer>,
    /// The service the inbound side serves (`destination_service`).
    pub own_service: Arc<ServiceName>,
    /// A peer the proxy knows nothing about.
    pub unknown: Arc<Peer>,
    /// This proxy's SPIFFE ID, the identity its certificate carries (the
    /// CA signs no other): its side of every mutual-TLS hop.
    pub own_principal: Arc<str>,
    /// `unknown`, shared, for the principals of a plain-text hop.
    pub unknown_principal: Arc<str>,
    /// `me`, as the header the outbound side sends.
    peer_header: HeaderValue,
    /// The last caller's header and what it says: callers are few, so
    /// parsing happens once per caller change, not per request.
    last_caller: ArcSwapOption<(HeaderValue, Arc<Peer>)>,
}

impl Telemetry {
    /// Telemetry for a proxy with `config`; `ip` is the address its spans
    /// give as `localEndpoint`. Set `spans` to record spans.
    pub fn new(config: &Config, ip: Option<IpAddr>) -> Telemetry {
        let metrics = Metrics::new();
        let counters = Counters {
            sent: metrics.spans_sent.clone(),
            dropped: metrics.spans_dropped.clone(),
            failed: metrics.spans_failed.clone(),
        };
        let me = Arc::new(Peer::of_workload(
            &config.service,
            &config.labels,
            &config.namespace,
            &config.cluster,
        ));
        // Names were checked at start (letters, digits, `-`, `_`, `.`) and
        // `encode_peer` drops anything else, so this is a valid header value.
        let peer_header =
            HeaderValue::from_str(&encode_peer(&me)).unwrap_or(HeaderValue::from_static(""));
        Telemetry {
            enabled: config.telemetry,
            sampling: config.trace_sampling,
            spans: None,
            counters,
            local: Arc::new(LocalService::new(
                &config.service,
                &config.version,
                &config.instance,
                ip.filter(|ip| !ip.is_unspecified()),
            )),
            inbound_series: SeriesCache::default(),
            app_port: config.app_addr.port(),
            app_service: config.service.as_str().into(),
            own_service: Arc::new(ServiceName::in_namespace(
                &config.service.to_ascii_lowercase(),
                &config.namespace,
            )),
            unknown: Arc::new(Peer::unknown()),
            own_principal: mesh_api::identity::Identity::new(
                &config.namespace,
                &config.service_account,
            )
            .to_string()
            .into(),
            unknown_principal: UNKNOWN.into(),
            me,
            peer_header,
            last_caller: ArcSwapOption::empty(),
            metrics,
        }
    }

    /// The caller a `x-mesh-peer-metadata` header names: the last caller's
    /// `Peer` when the header is the same bytes, else parsed anew.
    fn caller(&self, header: HeaderValue) -> Arc<Peer> {
        if let Some(last) = &*self.last_caller.load()
            && last.0 == header
        {
            return last.1.clone();
        }
        let peer = Arc::new(decode_peer(header.as_bytes()));
        self.last_caller
            .store(Some(Arc::new((header, peer.clone()))));
        peer
    }

    /// An endpoint's workload, as `destination_*` labels name it: built on
    /// its first request and kept with the endpoint. The control plane
    /// serves one namespace, so every endpoint is in this proxy's namespace
    /// and cluster.
    fn endpoint_peer<'e>(&self, endpoint: &'e EndpointRt) -> &'e Arc<Peer> {
        endpoint.peer.get_or_init(|| {
            Arc::new(Peer::of_workload(
                &endpoint.workload,
                &endpoint.labels,
                &self.me.namespace,
                &self.me.cluster,
            ))
        })
    }

    /// A cluster's service, as `destination_service*` name it: built once
    /// per cluster name (the state outlives snapshots).
    fn cluster_service<'c>(&self, cluster: &'c ClusterRt) -> &'c Arc<ServiceName> {
        cluster.state.service_name.get_or_init(|| {
            Arc::new(ServiceName::in_namespace(
                &cluster.service,
                &self.me.namespace,
            ))
        })
    }

    /// The reporter's counters, for the reporter task.
    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }
}

/// The IP a proxy's spans give as their `localEndpoint`: the advertised
/// inbound address for a sidecar, the gateway's own for a gateway.
pub fn local_ip(
    mode: ProxyMode,
    advertise: Option<SocketAddr>,
    gateway: Option<SocketAddr>,
) -> Option<IpAddr> {
    match mode {
        ProxyMode::Sidecar => advertise.map(|a| a.ip()),
        ProxyMode::Gateway => gateway.map(|g| crate::config::advertise_for(g).ip()),
    }
}

// === impl Exchange ===

/// One request at one listener, from its first byte to its response's last.
#[derive(Debug)]
pub struct Exchange {
    shared: Arc<Shared>,
    direction: Direction,
    start: Instant,
    timestamp_us: u64,
    peer: SocketAddr,
    pub log: Arc<RequestLog>,
    pub method: http::Method,
    pub authority: String,
    pub path_and_query: String,
    pub request_id: String,
    /// This proxy's span, when tracing is on (recorded only if sampled).
    span: Option<SpanContext>,
    user_agent: Option<String>,
    /// Inbound: the caller, as its sidecar named it.
    caller: Option<Arc<Peer>>,
    /// Inbound: the caller's SPIFFE ID, when its connection was mutual TLS
    /// (made once per connection, `listener.rs`).
    client_identity: Option<Arc<str>>,
    protocol: Protocol,
    /// gRPC's `grpc-status`, once seen in the response headers or trailers.
    grpc_status: Option<u16>,
    /// `None` until a response is sent.
    status: Option<u16>,
    response_bytes: u64,
}

/// What the listener knows when a request arrives.
pub struct Arrival<'a> {
    pub direction: Direction,
    pub peer: SocketAddr,
    pub start: Instant,
    pub method: http::Method,
    pub authority: String,
    pub path_and_query: String,
    pub request_id: String,
    /// The request's headers, as they will be sent on: the trace and the
    /// source headers are written here.
    pub headers: &'a mut HeaderMap,
}

impl Exchange {
    /// The request arrived over mutual TLS (inbound) from a client that
    /// proved `client` (its SPIFFE ID): the destination reports
    /// `connection_security_policy="mutual_tls"` and the principals.
    pub fn mutual_tls(&mut self, client: &Arc<str>) {
        self.client_identity = Some(client.clone());
    }

    pub fn begin(shared: &Arc<Shared>, arrival: Arrival<'_>) -> Exchange {
        let telemetry = &shared.telemetry;
        let headers = arrival.headers;
        let caller = if arrival.direction == Direction::Inbound {
            // Always removed: it is for this sidecar, not for the app.
            headers.remove(PEER_METADATA).map(|h| telemetry.caller(h))
        } else {
            None
        };
        let protocol = match headers.get(http::header::CONTENT_TYPE) {
            Some(t) if t.as_bytes().starts_with(b"application/grpc") => Protocol::Grpc,
            _ => Protocol::Http,
        };
        let mut exchange = Exchange {
            shared: shared.clone(),
            direction: arrival.direction,
            start: arrival.start,
            timestamp_us: 0,
            peer: arrival.peer,
            log: RequestLog::new(),
            method: arrival.method,
            authority: arrival.authority,
            path_and_query: arrival.path_and_query,
            request_id: arrival.request_id,
            span: None,
            user_agent: None,
            caller,
            client_identity: None,
            protocol,
            grpc_status: None,
            status: None,
            response_bytes: 0,
        };
        if !telemetry.enabled {
            return exchange;
        }
        exchange.timestamp_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        let span = SpanContext::open(
            Incoming::from_headers(headers),
            telemetry.sampling,
            &shared.rng,
        );
        span.inject(headers);
        if span.sampled && telemetry.spans.is_some() {
            exchange.user_agent = headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        exchange.span = Some(span);
        if exchange.direction != Direction::Inbound {
            headers.insert(PEER_METADATA, telemetry.peer_header.clone());
        }
        exchange
    }

    /// The response goes out: from now on its body carries the exchange, and
    /// the request is recorded when the body ends.
    pub fn respond(mut self, rsp: Rsp) -> Rsp {
        self.status = Some(rsp.status().as_u16());
        if self.protocol == Protocol::Grpc {
            self.grpc_status = grpc_status(rsp.headers());
        } else if !self.shared.telemetry.enabled {
            // Nothing to wait for: the access-log line is written now.
            return rsp;
        }
        rsp.map(|inner| {
            ObservedBody {
                inner,
                exchange: self,
            }
            .boxed()
        })
    }

    /// Count the request and report its span (from `Drop`).
    fn record(&mut self) {
        let telemetry = &self.shared.telemetry;
        if !telemetry.enabled {
            return;
        }
        let elapsed = self.start.elapsed();
        let mut flags = self.log.flags();
        let status = match self.status {
            Some(status) => status,
            None => {
                // The caller went away before any response: Envoy's `DC`.
                flags = flags.union(ResponseFlags::DC);
                0
            }
        };
        let crate::log::Attempt {
            cluster,
            endpoint,
            upstream_identity: server_identity,
        } = self.log.attempt();
        let host = strip_port(&self.authority);
        let unrouted: Arc<ServiceName>;

        // --- metrics ---
        let (reporter, source, destination, service, cache) = match self.direction {
            Direction::Inbound => (
                Reporter::Destination,
                self.caller.as_ref().unwrap_or(&telemetry.unknown),
                &telemetry.me,
                &telemetry.own_service,
                Some(&telemetry.inbound_series),
            ),
            Direction::Outbound | Direction::Gateway => {
                // No endpoint chosen (a fault abort, no healthy endpoint,
                // overflow): no workload answered, so `unknown`, as Istio
                // writes it, while `destination_service` still names the
                // routed service; that puts the failure on the service's
                // edge in the graph. No route at all: the host the app
                // called is all there is to name.
                let destination = match &endpoint {
                    Some(e) => telemetry.endpoint_peer(e),
                    None => &telemetry.unknown,
                };
                let (service, cache) = match (&cluster, &endpoint) {
                    (Some(c), Some(e)) => (telemetry.cluster_service(c), Some(&e.series)),
                    (Some(c), None) => (telemetry.cluster_service(c), Some(&c.state.series)),
                    (None, _) => {
                        unrouted = Arc::new(ServiceName::of_host(host, &telemetry.me.namespace));
                        (&unrouted, None)
                    }
                };
                (Reporter::Source, &telemetry.me, destination, service, cache)
            }
        };
        // The hop's identities (see the module docs): the peer's as its
        // certificate proved it, this proxy's own; `unknown` over plain text.
        let peer_identity = match reporter {
            Reporter::Destination => self.client_identity.as_ref(),
            Reporter::Source => server_identity.as_ref(),
        };
        let (source_principal, destination_principal) = match (reporter, peer_identity) {
            (_, None) => (&telemetry.unknown_principal, &telemetry.unknown_principal),
            (Reporter::Destination, Some(client)) => (client, &telemetry.own_principal),
            (Reporter::Source, Some(server)) => (&telemetry.own_principal, server),
        };
        let labels = LabelsRef {
            reporter,
            source,
            destination,
            source_principal,
            destination_principal,
            service,
            protocol: self.protocol,
            response_code: status,
            grpc_status: self.grpc_status,
            response_flags: flags,
            security: crate::metrics::SecurityPolicy::of(reporter, peer_identity.is_some()),
        };
        telemetry.metrics.record(
            cache,
            &Observation {
                labels,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                // Counted as the body streamed through (`body.rs`).
                request_bytes: self.log.request_bytes(),
                response_bytes: self.response_bytes,
            },
        );

        // --- the span ---
        let (Some(context), Some(queue)) = (self.span, &telemetry.spans) else {
            return;
        };
        if !context.sampled {
            return;
        }
        let (kind, remote, upstream_cluster, upstream_address) = match self.direction {
            Direction::Inbound => (
                Kind::Server,
                Remote {
                    service: self.caller.as_ref().map(|p| p.workload.clone()),
                    address: Some(self.peer),
                },
                UpstreamCluster::Inbound {
                    port: telemetry.app_port,
                    service: telemetry.app_service.clone(),
                },
                Some(self.shared.app.1.address.clone()),
            ),
            Direction::Outbound | Direction::Gateway => (
                Kind::Client,
                Remote {
                    service: endpoint
                        .as_ref()
                        .map(|e| e.workload.clone())
                        .or_else(|| cluster.as_ref().map(|c| c.service.clone())),
                    address: endpoint.as_ref().and_then(|e| e.address.parse().ok()),
                },
                match &cluster {
                    Some(c) => UpstreamCluster::Outbound {
                        port: port_of(&self.authority),
                        subset: c.subset.clone(),
                        service: c.service.clone(),
                    },
                    // No route: no cluster, which Envoy prints as `-`.
                    None => UpstreamCluster::None,
                },
                endpoint.as_ref().map(|e| e.address.clone()),
            ),
        };
        queue.push(Span {
            context,
            kind,
            local: telemetry.local.clone(),
            remote: Some(remote),
            timestamp_us: self.timestamp_us,
            duration_us: elapsed.as_micros() as u64,
            method: self.method.clone(),
            authority: std::mem::take(&mut self.authority),
            path_and_query: std::mem::take(&mut self.path_and_query),
            status,
            flags,
            upstream_cluster,
            upstream_address,
            peer: Some(self.peer),
            request_id: std::mem::take(&mut self.request_id),
            user_agent: self.user_agent.take(),
            retries: (self.log.attempts() as u32).saturating_sub(1),
            request_size: self.log.request_bytes(),
            response_size: self.response_bytes,
            principals: peer_identity
                .is_some()
                .then(|| (source_principal.clone(), destination_principal.clone())),
        });
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.access_log();
        self.record();
    }
}

impl Exchange {
    /// The request's access-log line, once its response has ended (as
    /// Envoy writes it, at the end of the stream): the duration is the
    /// whole exchange's, and a gRPC call's status is the one its trailers
    /// carried (`grpc-status` of an OK call comes only there). A caller that
    /// went away before any response gets no line.
    fn access_log(&self) {
        let Some(status) = self.status else {
            return;
        };
        if let Some(code) = self.grpc_status {
            self.log.record_grpc_status(code);
        }
        AccessLog {
            direction: self.direction,
            method: &self.method,
            authority: &self.authority,
            path: &self.path_and_query,
            status,
            duration: self.start.elapsed(),
            request_id: &self.request_id,
            log: &self.log,
        }
        .emit();
    }
}

/// A caller-supplied label value is kept only if it looks like a name
/// (letters, digits, `-`, `_`, `.`, at most 63 characters): a header must
/// not inject label syntax or unbounded names into the metrics.
fn is_label_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The fields of `x-mesh-peer-metadata`, in order. The principal is not
/// among them: it comes from the caller's certificate (mutual TLS), which a
/// header cannot forge.
const PEER_FIELDS: [&str; 7] = [
    "workload",
    "namespace",
    "app",
    "version",
    "canonical_service",
    "canonical_revision",
    "cluster",
];

fn peer_fields(peer: &Peer) -> [&str; 7] {
    [
        &peer.workload,
        &peer.namespace,
        &peer.app,
        &peer.version,
        &peer.canonical_service,
        &peer.canonical_revision,
        &peer.cluster,
    ]
}

/// `workload=guestbook-ui;namespace=default;...`; a value that is not a
/// name is sent as `unknown`.
fn encode_peer(peer: &Peer) -> String {
    PEER_FIELDS
        .iter()
        .zip(peer_fields(peer))
        .map(|(key, value)| {
            let value = if is_label_value(value) {
                value
            } else {
                UNKNOWN
            };
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The caller a header describes; a missing or malformed field is
/// `unknown`, an unknown key is ignored (a newer sidecar may send more).
fn decode_peer(header: &[u8]) -> Peer {
    let mut peer = Peer::unknown();
    let Ok(text) = std::str::from_utf8(header) else {
        return peer;
    };
    for pair in text.split(';') {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        if !is_label_value(value) {
            continue;
        }
        let field = match key.trim() {
            "workload" => &mut peer.workload,
            "namespace" => &mut peer.namespace,
            "app" => &mut peer.app,
            "version" => &mut peer.version,
            "canonical_service" => &mut peer.canonical_service,
            "canonical_revision" => &mut peer.canonical_revision,
            "cluster" => &mut peer.cluster,
            _ => continue,
        };
        *field = value.into();
    }
    peer
}

/// `grpc-status` as a number, when present and valid.
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers
        .get(GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// `host:port` -> `host` (IPv6 `[::1]:80` -> `[::1]`).
fn strip_port(authority: &str) -> &str {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => &authority[..i],
        _ => authority,
    }
}

/// The port of an authority; 80 (plain HTTP's) when it has none.
fn port_of(authority: &str) -> u16 {
    match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => authority[i + 1..].parse().unwrap_or(80),
        _ => 80,
    }
}

// === impl ObservedBody ===

/// A response body that counts its bytes and carries the [`Exchange`] to
/// the end: dropping it (after the last frame, or when the caller hangs up)
/// records the request.
#[derive(Debug)]
struct ObservedBody {
    inner: ResponseBody,
    exchange: Exchange,
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // Both fields are Unpin (the inner body is a Box), so no projection
        // is needed.
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.exchange.response_bytes += data.len() as u64;
            } else if let Some(trailers) = frame.trailers_ref()
                && this.exchange.protocol == Protocol::Grpc
            {
                // A gRPC server's status normally arrives here, last.
                this.exchange.grpc_status = grpc_status(trailers).or(this.exchange.grpc_status);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(strip_port("helloworld-service:8080"), "helloworld-service");
        assert_eq!(strip_port("helloworld-service"), "helloworld-service");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(port_of("helloworld-service:8080"), 8080);
        assert_eq!(port_of("helloworld-service"), 80);
        assert_eq!(port_of("[::1]"), 80);
    }

    #[test]
    fn the_peer_header_round_trips_and_refuses_what_is_not_a_name() {
        let labels = [("app", "guestbook-ui"), ("version", "v1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ui = Peer::of_workload("guestbook-ui", &labels, "guestbook", "east");
        let header = encode_peer(&ui);
        assert_eq!(
            header,
            "workload=guestbook-ui;namespace=guestbook;app=guestbook-ui;version=v1;\
             canonical_service=guestbook-ui;canonical_revision=v1;cluster=east"
        );
        assert_eq!(decode_peer(header.as_bytes()), ui);
        // What a header cannot do: inject label syntax or send an unbounded
        // name (nor set the principal: `Peer` has none, it comes from the
        // connection's certificate).
        let forged = decode_peer(
            format!(
                "workload=a\"b;principal=spiffe://x;namespace={};app=x y;version=v2",
                "n".repeat(64)
            )
            .as_bytes(),
        );
        assert_eq!(&*forged.workload, "unknown");
        assert_eq!(&*forged.namespace, "unknown");
        assert_eq!(&*forged.app, "unknown");
        assert_eq!(&*forged.version, "v2");
        assert_eq!(decode_peer(b"\xff"), Peer::unknown());
    }

    #[test]
    fn grpc_status_is_a_number_or_nothing() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert(GRPC_STATUS, HeaderValue::from_static("14"));
        assert_eq!(grpc_status(&headers), Some(14));
        headers.insert(GRPC_STATUS, HeaderValue::from_static("oops"));
        assert_eq!(grpc_status(&headers), None);
    }
}
