//! Telemetry for one request: where the listeners meet tracing (`trace.rs`,
//! `report.rs`) and metrics (`metrics.rs`).
//!
//! Every listener opens an [`Exchange`] as a request arrives. It
//!
//! 1. reads the trace context, opens this proxy's span (SERVER on the
//!    inbound side, CLIENT on the outbound side and at the gateway) and
//!    writes it into the request sent on, in every header format;
//! 2. tells the callee who calls: the outbound side adds
//!    `x-mesh-source-workload` / `x-mesh-source-version`, the inbound side
//!    reads and removes them before the app sees the request (Istio's
//!    sidecars exchange the same facts in `x-envoy-peer-metadata`);
//! 3. travels with the response body and, when the last byte has gone (or
//!    the caller went away), counts the request once in the metrics and
//!    hands the finished span to the reporter's queue.
//!
//! Recording happens when the exchange is dropped, so no path can forget it:
//! a response streamed to the end, a local error reply, or a caller that
//! hung up before any response (`response_code="0"`, flag `DC`) all count
//! exactly once. The request path itself never waits for telemetry.
//!
//! With `MESH_TELEMETRY=off` the exchange only carries the access log's
//! fields: no span, no headers added, no metrics.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use mesh_api::xds::ProxyMode;

use crate::body::{ResponseBody, Rsp};
use crate::config::Config;
use crate::log::{Direction, RequestLog, ResponseFlags};
use crate::metrics::{LabelsRef, Metrics, Observation, Reporter, SeriesCache, UNKNOWN};
use crate::proxy::Shared;
use crate::report::{Counters, SpanQueue};
use crate::trace::{Incoming, Kind, LocalService, Remote, Span, SpanContext};

/// Set by the caller's sidecar: the calling workload and its version.
pub const SOURCE_WORKLOAD: HeaderName = HeaderName::from_static("x-mesh-source-workload");
pub const SOURCE_VERSION: HeaderName = HeaderName::from_static("x-mesh-source-version");

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
    /// The app's port, for the inbound cluster's name.
    pub app_port: u16,
    source_workload: HeaderValue,
    source_version: HeaderValue,
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
        // Service and version names were checked at start (letters, digits,
        // `-`, `_`, `.`), so they are valid header values.
        let header =
            |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(UNKNOWN));
        Telemetry {
            enabled: config.telemetry,
            sampling: config.trace_sampling,
            spans: None,
            counters,
            local: Arc::new(LocalService {
                service: config.service.to_ascii_lowercase().into(),
                version: config.version.as_str().into(),
                instance: config.instance.as_str().into(),
                ip: ip.filter(|ip| !ip.is_unspecified()),
            }),
            inbound_series: SeriesCache::default(),
            app_port: config.app_addr.port(),
            source_workload: header(&config.service),
            source_version: header(&config.version),
            metrics,
        }
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
    caller: Option<(String, String)>,
    request_bytes: u64,
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
    pub fn begin(shared: &Arc<Shared>, arrival: Arrival<'_>) -> Exchange {
        let telemetry = &shared.telemetry;
        let headers = arrival.headers;
        let caller = if arrival.direction == Direction::Inbound {
            // Always removed: they are for this sidecar, not for the app.
            let workload = headers.remove(SOURCE_WORKLOAD);
            let version = headers.remove(SOURCE_VERSION);
            workload.map(|w| (label_value(Some(&w)), label_value(version.as_ref())))
        } else {
            None
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
            request_bytes: 0,
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
            headers.insert(SOURCE_WORKLOAD, telemetry.source_workload.clone());
            headers.insert(SOURCE_VERSION, telemetry.source_version.clone());
        }
        exchange
    }

    /// The size of the request body (buffered before routing).
    pub fn request_body(&mut self, bytes: usize) {
        self.request_bytes = bytes as u64;
    }

    /// The response goes out: from now on its body carries the exchange, and
    /// the request is recorded when the body ends.
    pub fn respond(mut self, rsp: Rsp) -> Rsp {
        self.status = Some(rsp.status().as_u16());
        if !self.shared.telemetry.enabled {
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
        let (cluster, endpoint) = self.log.target();
        let host = strip_port(&self.authority);
        let config = &self.shared.config;

        // --- metrics ---
        let unknown_caller = (UNKNOWN.to_string(), UNKNOWN.to_string());
        let labels = match self.direction {
            Direction::Inbound => {
                let (workload, version) = self.caller.as_ref().unwrap_or(&unknown_caller);
                LabelsRef {
                    reporter: Reporter::Destination,
                    source_workload: workload,
                    source_version: version,
                    destination_workload: &config.service,
                    destination_version: &config.version,
                    destination_service: &config.service,
                    response_code: status,
                    response_flags: flags,
                }
            }
            Direction::Outbound | Direction::Gateway => LabelsRef {
                reporter: Reporter::Source,
                source_workload: &config.service,
                source_version: &config.version,
                // No endpoint chosen (a fault abort, no healthy endpoint,
                // overflow, no route): no workload answered, so `unknown`,
                // as Istio writes it. `destination_service` still names the
                // service, which is what puts the failure on that service's
                // edge in the graph.
                destination_workload: endpoint.as_ref().map_or(UNKNOWN, |e| &e.workload),
                destination_version: endpoint.as_ref().map_or(UNKNOWN, |e| &e.version),
                // The host the app called. At the gateway, where users call
                // a public host name, the service it was routed to.
                destination_service: match (&cluster, self.direction) {
                    (Some(c), Direction::Gateway) => &c.service,
                    _ => host,
                },
                response_code: status,
                response_flags: flags,
            },
        };
        let cache = match self.direction {
            Direction::Inbound => Some(&telemetry.inbound_series),
            _ => endpoint.as_ref().map(|e| &e.series),
        };
        telemetry.metrics.record(
            cache,
            &Observation {
                labels,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                request_bytes: self.request_bytes,
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
                    service: self.caller.as_ref().map(|(w, _)| w.as_str().into()),
                    address: Some(self.peer),
                },
                format!("inbound|{}||{}", telemetry.app_port, config.service),
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
                    Some(c) => format!(
                        "outbound|{}|{}|{}",
                        port_of(&self.authority),
                        c.subset.as_deref().unwrap_or(""),
                        c.service
                    ),
                    // No route: no cluster, which Envoy prints as `-`.
                    None => "-".to_string(),
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
            request_size: self.request_bytes,
            response_size: self.response_bytes,
        });
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.record();
    }
}

/// A caller-supplied label value: a workload or version name, else
/// `unknown` (a header is not allowed to inject label syntax or unbounded
/// names into the metrics).
fn label_value(value: Option<&HeaderValue>) -> String {
    value
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 63
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        .unwrap_or(UNKNOWN)
        .to_string()
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
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.exchange.response_bytes += data.len() as u64;
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
    fn caller_labels_are_names_or_unknown() {
        let v = |s: &'static str| Some(HeaderValue::from_static(s));
        assert_eq!(label_value(v("guestbook-ui").as_ref()), "guestbook-ui");
        assert_eq!(label_value(v("v1.2_x").as_ref()), "v1.2_x");
        assert_eq!(label_value(None), "unknown");
        assert_eq!(label_value(v("").as_ref()), "unknown");
        assert_eq!(label_value(v("a\"b").as_ref()), "unknown");
        assert_eq!(label_value(v("x y").as_ref()), "unknown");
    }
}
