//! Metrics: Istio's standard request metrics, in Prometheus text, at
//! `GET /stats/prometheus` on the admin listener.
//!
//! An Istio sidecar counts every request twice in the mesh: the caller's
//! Envoy with `reporter="source"`, the callee's with
//! `reporter="destination"`. Each count carries all of Istio's standard
//! labels ("Istio Standard Metrics" on istio.io): both workloads with their
//! namespace, app, version, canonical service and revision, cluster and
//! principal; the service asked for by its full name; the protocol, status,
//! gRPC status, Envoy's response flags and the connection's security policy.
//! micromesh writes the same names, labels and values, so Istio's Grafana
//! dashboards and Kiali read a micromesh sidecar unchanged:
//!
//! ```text
//! istio_requests_total{reporter="source",source_workload="guestbook-ui",
//!   source_workload_namespace="default",source_principal="unknown",source_app="guestbook-ui",
//!   source_version="v1",source_canonical_service="guestbook-ui",source_canonical_revision="v1",
//!   source_cluster="Kubernetes",destination_workload="helloworld-service",...,
//!   destination_service="helloworld-service.default.svc.cluster.local",
//!   destination_service_name="helloworld-service",destination_service_namespace="default",
//!   request_protocol="http",response_code="200",grpc_response_status="",response_flags="-",
//!   connection_security_policy="unknown"} 42
//! istio_request_duration_milliseconds_bucket{...,le="5"} 40     (histogram)
//! istio_request_bytes_bucket{...}, istio_response_bytes_bucket{...}
//! istio_build{component="proxy",tag="0.1.0"} 1
//! ```
//!
//! A destination's security policy is `mutual_tls` when its sidecar
//! terminated mTLS, `none` for plaintext (a source always says `unknown`,
//! as Istio's).
//!
//! The principals are the SPIFFE IDs the hop's mutual TLS proved, as
//! Istio's stats filter reads them from the connection's certificates
//! (the peer's URI SAN and the local one):
//!
//! | reporter | `source_principal` | `destination_principal` |
//! | --- | --- | --- |
//! | `destination` | the client's, from its verified certificate | this sidecar's own |
//! | `source` | this sidecar's own | the server's, verified in the handshake |
//!
//! as in `spiffe://cluster.local/ns/default/sa/guestbook-ui`; both are
//! `unknown` whenever the hop was plain text (no certificate, no
//! identity). They belong to the connection, not to the request: each
//! is an `Arc<str>` made once per handshake (`listener.rs`, `pool.rs`,
//! `h2.rs`) or once per proxy (its own), and a request only passes it on.
//!
//! The registry is the prometheus-client crate's. Two things are our own, to
//! keep the request path cheap:
//!
//! - [`AtomicHistogram`]: the crate's `Histogram` takes a mutex on every
//!   `observe`; ours adds to one atomic bucket counter and the atomic sum, so
//!   concurrent requests never wait for each other.
//! - [`SeriesCache`]: finding a series in a `Family` hashes its 25 labels
//!   and takes the family's read lock, four times per request (one per
//!   metric). Each endpoint instead remembers the last series it used: when
//!   the next request has the same labels (same caller, same status: by far
//!   the common case) it uses those handles directly, lock-free. Only a
//!   request whose labels differ looks up the families.
//! - The label values themselves are built before any request: a [`Peer`]
//!   per workload and a [`ServiceName`] per service, shared behind `Arc`s,
//!   so comparing a request's labels with the cached ones is mostly pointer
//!   comparisons and nothing is formatted per request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelSetEncoder, LabelValueEncoder,
    MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::log::ResponseFlags;

/// Envoy's default histogram buckets, which Istio emits for all three
/// histograms (milliseconds for durations, bytes for sizes).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The `Content-Type` of the page: Prometheus' classic text format, which
/// Envoy serves too and `promtool check metrics` reads.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What Istio writes for a label it cannot know.
pub const UNKNOWN: &str = "unknown";

// === labels ===

/// Who reports a request: the caller's proxy (`source`) or the callee's
/// (`destination`). The gateway reports as a source, as Istio's does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// One end of a request as the labels name it: Istio's `source_*` and
/// `destination_*` groups carry the same eight facts about a workload; the
/// eighth, the principal, is the connection's, not the workload's, so it
/// travels beside the `Peer` ([`Labels::source_principal`]).
///
/// Built once per endpoint, per caller and for the proxy itself, then shared
/// behind an `Arc`: a request only clones the `Arc`, never a string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The workload (micromesh names it by its `app`, the service it runs).
    pub workload: Arc<str>,
    pub namespace: Arc<str>,
    /// The `app` and `version` labels.
    pub app: Arc<str>,
    pub version: Arc<str>,
    /// Istio's canonical service and revision: the
    /// `service.istio.io/canonical-name` / `-revision` labels, else
    /// `app.kubernetes.io/name` / `version`, else `app` / `version`, else
    /// the workload / `latest`.
    pub canonical_service: Arc<str>,
    pub canonical_revision: Arc<str>,
    pub cluster: Arc<str>,
}

impl Peer {
    /// A workload with these pod labels, in `namespace` of `cluster`.
    pub fn of_workload(
        workload: &str,
        labels: &BTreeMap<String, String>,
        namespace: &str,
        cluster: &str,
    ) -> Peer {
        let first = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k)).map(String::as_str);
        Peer {
            workload: workload.into(),
            namespace: namespace.into(),
            app: first(&["app"]).unwrap_or(UNKNOWN).into(),
            version: first(&["version"]).unwrap_or(UNKNOWN).into(),
            canonical_service: first(&[CANONICAL_NAME, "app.kubernetes.io/name", "app"])
                .unwrap_or(workload)
                .into(),
            canonical_revision: first(&[
                CANONICAL_REVISION,
                "app.kubernetes.io/version",
                "version",
            ])
            .unwrap_or("latest")
            .into(),
            cluster: cluster.into(),
        }
    }

    /// Nothing known: no endpoint was reached, or the caller is outside
    /// the mesh.
    pub fn unknown() -> Peer {
        let u: Arc<str> = UNKNOWN.into();
        Peer {
            workload: u.clone(),
            namespace: u.clone(),
            app: u.clone(),
            version: u.clone(),
            canonical_service: u.clone(),
            canonical_revision: u.clone(),
            cluster: u,
        }
    }
}

/// Istio's labels for a workload's canonical service and revision.
pub const CANONICAL_NAME: &str = "service.istio.io/canonical-name";
pub const CANONICAL_REVISION: &str = "service.istio.io/canonical-revision";

/// The service a request asked for: `destination_service` (the full
/// Kubernetes name), `destination_service_name` and `_namespace`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceName {
    pub host: Arc<str>,
    pub name: Arc<str>,
    pub namespace: Arc<str>,
}

impl ServiceName {
    /// A mesh service in `namespace`: `helloworld-service` becomes
    /// `helloworld-service.default.svc.cluster.local`.
    pub fn in_namespace(name: &str, namespace: &str) -> ServiceName {
        ServiceName {
            host: format!("{name}.{namespace}.svc.cluster.local").into(),
            name: name.into(),
            namespace: namespace.into(),
        }
    }

    /// The host an app called, read as Kubernetes' DNS would: a bare name
    /// is a service of the caller's namespace, `name.ns[.svc[.cluster.local]]`
    /// one of namespace `ns`. Any other host (an IP, an external name) is
    /// kept as it is, in namespace `unknown`.
    pub fn of_host(host: &str, own_namespace: &str) -> ServiceName {
        let parts: Vec<&str> = host.split('.').collect();
        let is_name =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !parts.iter().all(|p| is_name(p)) || parts[0].chars().all(|c| c.is_ascii_digit()) {
            return ServiceName {
                host: host.into(),
                name: host.into(),
                namespace: UNKNOWN.into(),
            };
        }
        match parts.as_slice() {
            [name] => ServiceName::in_namespace(name, own_namespace),
            [name, ns] | [name, ns, "svc"] | [name, ns, "svc", "cluster", "local"] => {
                ServiceName::in_namespace(name, ns)
            }
            _ => ServiceName {
                host: host.into(),
                name: host.into(),
                namespace: UNKNOWN.into(),
            },
        }
    }
}

/// What Istio's `request_protocol` says: gRPC is told apart by its
/// `Content-Type`; everything else micromesh proxies is HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Istio's `connection_security_policy`. Istio's reference: `mutual_tls`
/// when the destination's sidecar terminated mTLS, `none` when it received
/// plain text, and `unknown` whenever the source reports (a client cannot
/// know the server's policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    Unknown,
    None,
    MutualTls,
}

impl SecurityPolicy {
    /// What `reporter` says of a connection that was (`mtls`) or was not
    /// mutual TLS.
    pub fn of(reporter: Reporter, mtls: bool) -> SecurityPolicy {
        match (reporter, mtls) {
            (Reporter::Source, _) => SecurityPolicy::Unknown,
            (Reporter::Destination, false) => SecurityPolicy::None,
            (Reporter::Destination, true) => SecurityPolicy::MutualTls,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::Unknown => UNKNOWN,
            SecurityPolicy::None => "none",
            SecurityPolicy::MutualTls => "mutual_tls",
        }
    }
}

/// The label set of one series, owned: a key of the families. Its strings
/// are shared (`Arc`), so making one per request costs a few reference
/// counts and no formatting.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Labels {
    pub reporter: Reporter,
    pub source: Arc<Peer>,
    pub destination: Arc<Peer>,
    /// The SPIFFE IDs the hop's mutual TLS proved (see the module docs);
    /// `unknown` over plain text.
    pub source_principal: Arc<str>,
    pub destination_principal: Arc<str>,
    pub service: Arc<ServiceName>,
    pub protocol: Protocol,
    pub response_code: u16,
    /// gRPC's `grpc-status`; `None` (an empty label, as Istio writes) for
    /// plain HTTP or when the server sent none.
    pub grpc_status: Option<u16>,
    pub response_flags: ResponseFlags,
    pub security: SecurityPolicy,
}

/// The same labels, borrowed from the request: compared with a cached
/// series without touching any reference count, turned into [`Labels`]
/// only on a miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelsRef<'a> {
    pub reporter: Reporter,
    pub source: &'a Arc<Peer>,
    pub destination: &'a Arc<Peer>,
    pub source_principal: &'a Arc<str>,
    pub destination_principal: &'a Arc<str>,
    pub service: &'a Arc<ServiceName>,
    pub protocol: Protocol,
    pub response_code: u16,
    pub grpc_status: Option<u16>,
    pub response_flags: ResponseFlags,
    pub security: SecurityPolicy,
}

impl LabelsRef<'_> {
    fn is(&self, labels: &Labels) -> bool {
        // `Arc<T: Eq>`'s `==` compares pointers first: the common case (the
        // same endpoint, the same caller) never compares strings.
        self.reporter == labels.reporter
            && self.response_code == labels.response_code
            && self.response_flags == labels.response_flags
            && self.grpc_status == labels.grpc_status
            && self.security == labels.security
            && self.protocol == labels.protocol
            && *self.source == labels.source
            && *self.destination == labels.destination
            && *self.source_principal == labels.source_principal
            && *self.destination_principal == labels.destination_principal
            && *self.service == labels.service
    }

    pub fn to_labels(&self) -> Labels {
        Labels {
            reporter: self.reporter,
            source: self.source.clone(),
            destination: self.destination.clone(),
            source_principal: self.source_principal.clone(),
            destination_principal: self.destination_principal.clone(),
            service: self.service.clone(),
            protocol: self.protocol,
            response_code: self.response_code,
            grpc_status: self.grpc_status,
            response_flags: self.response_flags,
            security: self.security,
        }
    }
}

impl EncodeLabelSet for Labels {
    /// Istio's standard labels, all of them, in the order of its reference.
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        let (s, d) = (&*self.source, &*self.destination);
        ("reporter", self.reporter.as_str()).encode(encoder.encode_label())?;
        for (prefix, peer, principal) in [
            ("source", s, &self.source_principal),
            ("destination", d, &self.destination_principal),
        ] {
            let pairs: [(&str, &str); 8] = [
                ("workload", &peer.workload),
                ("workload_namespace", &peer.namespace),
                ("principal", principal),
                ("app", &peer.app),
                ("version", &peer.version),
                ("canonical_service", &peer.canonical_service),
                ("canonical_revision", &peer.canonical_revision),
                ("cluster", &peer.cluster),
            ];
            for (name, value) in pairs {
                (LabelName(prefix, name), value).encode(encoder.encode_label())?;
            }
            if prefix == "destination" {
                ("destination_service", &*self.service.host).encode(encoder.encode_label())?;
                ("destination_service_name", &*self.service.name).encode(encoder.encode_label())?;
                ("destination_service_namespace", &*self.service.namespace)
                    .encode(encoder.encode_label())?;
            }
        }
        ("request_protocol", self.protocol.as_str()).encode(encoder.encode_label())?;
        ("response_code", self.response_code).encode(encoder.encode_label())?;
        // Empty for plain HTTP, as Istio writes it.
        ("grpc_response_status", self.grpc_status).encode(encoder.encode_label())?;
        ("response_flags", self.response_flags).encode(encoder.encode_label())?;
        ("connection_security_policy", self.security.as_str()).encode(encoder.encode_label())?;
        Ok(())
    }
}

/// `source_` + `workload`, written straight into the page (no `String`).
struct LabelName(&'static str, &'static str);

impl prometheus_client::encoding::EncodeLabelKey for LabelName {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelKeyEncoder,
    ) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}_{}", self.0, self.1)
    }
}

impl EncodeLabelValue for ResponseFlags {
    /// `-`, `UH`, `UF,URX`: as the access log prints them.
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(encoder, "{self}")
    }
}

// === impl AtomicHistogram ===

/// A histogram with fixed buckets whose `observe` takes no lock: one atomic
/// add on the bucket, one compare-and-swap on the sum.
///
/// Bucket counts are stored per bucket (not cumulative) and summed when the
/// page is written, so `_count` always equals the `+Inf` bucket even while
/// requests are being recorded.
#[derive(Clone, Debug)]
pub struct AtomicHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// One counter per bound, plus the overflow (`+Inf`) at the end.
    counts: Box<[AtomicU64]>,
    /// The sum of every observation, as `f64` bits.
    sum: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        AtomicHistogram {
            inner: Arc::new(HistogramInner {
                bounds,
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    pub fn observe(&self, value: f64) {
        let inner = &*self.inner;
        // `le` buckets: a value equal to a bound belongs to that bound.
        let index = inner.bounds.partition_point(|bound| *bound < value);
        inner.counts[index].fetch_add(1, Ordering::Relaxed);
        // The closure always returns Some, so fetch_update cannot fail.
        let _ = inner
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn sum(&self) -> f64 {
        f64::from_bits(self.inner.sum.load(Ordering::Relaxed))
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &*self.inner;
        let counts: Vec<u64> = inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let count = counts.iter().sum();
        // Per-bucket counts; the encoder makes them cumulative and writes
        // `+Inf` as the total.
        let buckets: Vec<(f64, u64)> = inner.bounds.iter().copied().zip(counts).collect();
        encoder.encode_histogram::<NoLabelSet>(self.sum(), count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

fn new_histogram() -> AtomicHistogram {
    AtomicHistogram::new(&BUCKETS)
}

// === impl Metrics ===

/// The handles of one series in all four request metrics.
#[derive(Clone, Debug)]
pub struct Series {
    pub requests: Counter,
    pub duration_ms: AtomicHistogram,
    pub request_bytes: AtomicHistogram,
    pub response_bytes: AtomicHistogram,
}

/// One request, as the metrics see it.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    pub labels: LabelsRef<'a>,
    /// First byte of the request to last byte of the response.
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

type HistogramFamily = Family<Labels, AtomicHistogram, fn() -> AtomicHistogram>;

/// A proxy's registry: Istio's request metrics and the span reporter's
/// own counters.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    duration_ms: HistogramFamily,
    request_bytes: HistogramFamily,
    response_bytes: HistogramFamily,
    /// Spans handed to the collector (it answered 2xx).
    pub spans_sent: Counter,
    /// Spans dropped because the reporter's queue was full.
    pub spans_dropped: Counter,
    /// Spans lost because the collector refused them or could not be reached.
    pub spans_failed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        let histogram = || HistogramFamily::new_with_constructor(new_histogram);
        let (duration_ms, request_bytes, response_bytes) = (histogram(), histogram(), histogram());
        // prometheus-client appends `_total` to a counter's name.
        registry.register(
            "istio_requests",
            "Requests, counted once per reporter when the response ends",
            requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds, first byte of the request to last byte of the response",
            duration_ms.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body size in bytes",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body size in bytes",
            response_bytes.clone(),
        );
        // Istio's dashboards list every component's version from this
        // gauge: `istio_build{component="proxy",tag="1.24.0"} 1`.
        let build = Family::<[(&'static str, &'static str); 2], Gauge>::default();
        build
            .get_or_create(&[("component", "proxy"), ("tag", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("istio_build", "The build this proxy runs", build);
        let (spans_sent, spans_dropped, spans_failed) =
            (Counter::default(), Counter::default(), Counter::default());
        registry.register(
            "micromesh_spans_sent",
            "Spans the trace collector accepted",
            spans_sent.clone(),
        );
        registry.register(
            "micromesh_spans_dropped",
            "Spans dropped because the reporter's queue was full",
            spans_dropped.clone(),
        );
        registry.register(
            "micromesh_spans_failed",
            "Spans lost because the collector refused them or could not be reached",
            spans_failed.clone(),
        );
        Metrics {
            registry,
            requests,
            duration_ms,
            request_bytes,
            response_bytes,
            spans_sent,
            spans_dropped,
            spans_failed,
        }
    }

    /// The series for `labels`, created on first use (the slow path: four
    /// family lookups).
    pub fn series(&self, labels: &Labels) -> Series {
        Series {
            requests: self.requests.get_or_create_owned(labels),
            duration_ms: self.duration_ms.get_or_create_owned(labels),
            request_bytes: self.request_bytes.get_or_create_owned(labels),
            response_bytes: self.response_bytes.get_or_create_owned(labels),
        }
    }

    /// Count one request, through `cache` when given.
    pub fn record(&self, cache: Option<&SeriesCache>, observation: &Observation<'_>) {
        let labels = &observation.labels;
        let cached = cache.and_then(|c| c.get(labels));
        let series = match cached {
            Some(series) => series,
            None => {
                let owned = labels.to_labels();
                let series = Arc::new(CachedSeries {
                    series: self.series(&owned),
                    labels: owned,
                });
                if let Some(cache) = cache {
                    cache.put(series.clone());
                }
                series
            }
        };
        let series = &series.series;
        series.requests.inc();
        series.duration_ms.observe(observation.duration_ms);
        series
            .request_bytes
            .observe(observation.request_bytes as f64);
        series
            .response_bytes
            .observe(observation.response_bytes as f64);
    }

    /// The page `/stats/prometheus` serves.
    pub fn render(&self) -> String {
        let mut page = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail, and every metric we register
        // encodes in this format.
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut page, &self.registry)
        {
            tracing::warn!(%error, "could not encode the metrics page");
        }
        page
    }
}

// === impl SeriesCache ===

#[derive(Debug)]
struct CachedSeries {
    labels: Labels,
    series: Series,
}

/// The last series used at one place of the request path (an endpoint, the
/// inbound listener): lock-free to read, replaced when the labels change.
#[derive(Debug, Default)]
pub struct SeriesCache {
    last: ArcSwapOption<CachedSeries>,
}

impl SeriesCache {
    fn get(&self, labels: &LabelsRef<'_>) -> Option<Arc<CachedSeries>> {
        let guard = self.last.load();
        match &*guard {
            Some(cached) if labels.is(&cached.labels) => Some(cached.clone()),
            _ => None,
        }
    }

    fn put(&self, series: Arc<CachedSeries>) {
        self.last.store(Some(series));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::LazyLock;

    static UI: LazyLock<Arc<Peer>> = LazyLock::new(|| {
        let labels = BTreeMap::from([
            ("app".to_string(), "guestbook-ui".to_string()),
            ("version".to_string(), "v1".to_string()),
        ]);
        Arc::new(Peer::of_workload(
            "guestbook-ui",
            &labels,
            "default",
            "Kubernetes",
        ))
    });
    static HW: LazyLock<Arc<Peer>> = LazyLock::new(|| {
        let labels = BTreeMap::from([
            ("app".to_string(), "helloworld-service".to_string()),
            ("version".to_string(), "v2".to_string()),
        ]);
        Arc::new(Peer::of_workload(
            "helloworld-service",
            &labels,
            "default",
            "Kubernetes",
        ))
    });
    static HW_SERVICE: LazyLock<Arc<ServiceName>> =
        LazyLock::new(|| Arc::new(ServiceName::in_namespace("helloworld-service", "default")));
    static UNKNOWN_PRINCIPAL: LazyLock<Arc<str>> = LazyLock::new(|| UNKNOWN.into());

    fn labels(code: u16, flags: ResponseFlags) -> LabelsRef<'static> {
        LabelsRef {
            reporter: Reporter::Source,
            source: &UI,
            destination: &HW,
            source_principal: &UNKNOWN_PRINCIPAL,
            destination_principal: &UNKNOWN_PRINCIPAL,
            service: &HW_SERVICE,
            protocol: Protocol::Http,
            response_code: code,
            grpc_status: None,
            response_flags: flags,
            security: SecurityPolicy::Unknown,
        }
    }

    fn observe(metrics: &Metrics, cache: Option<&SeriesCache>, code: u16, ms: f64) {
        metrics.record(
            cache,
            &Observation {
                labels: labels(code, ResponseFlags::empty()),
                duration_ms: ms,
                request_bytes: 0,
                response_bytes: 12,
            },
        );
    }

    /// Every label of Istio's "Istio Standard Metrics" reference, with the
    /// values Istio gives a plain-text HTTP request seen by the caller.
    const SERIES: &str = "reporter=\"source\",\
        source_workload=\"guestbook-ui\",source_workload_namespace=\"default\",\
        source_principal=\"unknown\",source_app=\"guestbook-ui\",source_version=\"v1\",\
        source_canonical_service=\"guestbook-ui\",source_canonical_revision=\"v1\",\
        source_cluster=\"Kubernetes\",\
        destination_workload=\"helloworld-service\",destination_workload_namespace=\"default\",\
        destination_principal=\"unknown\",destination_app=\"helloworld-service\",\
        destination_version=\"v2\",destination_canonical_service=\"helloworld-service\",\
        destination_canonical_revision=\"v2\",destination_cluster=\"Kubernetes\",\
        destination_service=\"helloworld-service.default.svc.cluster.local\",\
        destination_service_name=\"helloworld-service\",destination_service_namespace=\"default\",\
        request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",\
        response_flags=\"-\",connection_security_policy=\"unknown\"";

    #[test]
    fn the_page_has_istios_names_labels_and_envoys_buckets() {
        let metrics = Metrics::new();
        observe(&metrics, None, 200, 3.0);
        let page = metrics.render();
        let series = SERIES;
        assert!(
            page.contains("# TYPE istio_requests_total counter"),
            "{page}"
        );
        assert!(
            page.contains(&format!("istio_requests_total{{{series}}} 1\n")),
            "{page}"
        );
        assert!(
            page.contains("# TYPE istio_request_duration_milliseconds histogram"),
            "{page}"
        );
        // 3 ms falls in the `le="5"` bucket, not in `le="1"`.
        assert!(
            page.contains(&format!(
                "istio_request_duration_milliseconds_bucket{{{series},le=\"1\"}} 0\n"
            )),
            "{page}"
        );
        assert!(
            page.contains(&format!(
                "istio_request_duration_milliseconds_bucket{{{series},le=\"5\"}} 1\n"
            )),
            "{page}"
        );
        assert!(
            page.contains(&format!(
                "istio_request_duration_milliseconds_bucket{{{series},le=\"+Inf\"}} 1\n"
            )),
            "{page}"
        );
        assert!(
            page.contains("# TYPE istio_request_bytes histogram"),
            "{page}"
        );
        assert!(
            page.contains("# TYPE istio_response_bytes histogram"),
            "{page}"
        );
        assert!(
            page.contains(&format!("istio_response_bytes_sum{{{series}}} 12.0\n")),
            "{page}"
        );
        assert!(page.contains("micromesh_spans_dropped_total 0"), "{page}");
        let build = format!(
            "istio_build{{component=\"proxy\",tag=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(page.contains(&build), "{page}");
        let le_lines = page
            .lines()
            .filter(|l| l.starts_with("istio_request_duration_milliseconds_bucket"))
            .count();
        assert_eq!(le_lines, BUCKETS.len() + 1, "Envoy's buckets and +Inf");
    }

    #[test]
    fn a_destination_report_says_none_and_grpc_says_its_status() {
        let metrics = Metrics::new();
        metrics.record(
            None,
            &Observation {
                labels: LabelsRef {
                    reporter: Reporter::Destination,
                    protocol: Protocol::Grpc,
                    grpc_status: Some(14),
                    security: SecurityPolicy::None,
                    ..labels(200, ResponseFlags::empty())
                },
                duration_ms: 1.0,
                request_bytes: 5,
                response_bytes: 0,
            },
        );
        let page = metrics.render();
        assert!(
            page.contains(
                "request_protocol=\"grpc\",response_code=\"200\",grpc_response_status=\"14\",\
                 response_flags=\"-\",connection_security_policy=\"none\"} 1\n"
            ),
            "{page}"
        );
    }

    #[test]
    fn an_mtls_hop_names_both_principals_and_they_make_their_own_series() {
        let metrics = Metrics::new();
        let cache = SeriesCache::default();
        let ui: Arc<str> = "spiffe://cluster.local/ns/default/sa/guestbook-ui".into();
        let hw: Arc<str> = "spiffe://cluster.local/ns/default/sa/helloworld-service".into();
        let mtls = LabelsRef {
            reporter: Reporter::Destination,
            source_principal: &ui,
            destination_principal: &hw,
            security: SecurityPolicy::MutualTls,
            ..labels(200, ResponseFlags::empty())
        };
        let plaintext = LabelsRef {
            reporter: Reporter::Destination,
            security: SecurityPolicy::None,
            ..labels(200, ResponseFlags::empty())
        };
        for labels in [mtls, mtls, plaintext] {
            metrics.record(
                Some(&cache),
                &Observation {
                    labels,
                    duration_ms: 1.0,
                    request_bytes: 0,
                    response_bytes: 0,
                },
            );
        }
        let page = metrics.render();
        let requests = |principals: &str| {
            page.lines()
                .filter(|l| l.starts_with("istio_requests_total{"))
                .filter(|l| l.contains(principals))
                .map(|l| l.rsplit(' ').next().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            requests("source_principal=\"spiffe://cluster.local/ns/default/sa/guestbook-ui\""),
            ["2"],
            "{page}"
        );
        assert_eq!(
            requests(
                "destination_principal=\"spiffe://cluster.local/ns/default/sa/helloworld-service\""
            ),
            ["2"],
            "{page}"
        );
        assert_eq!(
            requests("source_principal=\"unknown\""),
            ["1"],
            "plain text: unknown, its own series: {page}"
        );
        // Another connection of the same caller: its own `Arc`, equal text,
        // the same series (the cache compares the text when the pointers
        // differ).
        let again: Arc<str> = (*ui).into();
        assert!(
            cache
                .get(&LabelsRef {
                    source_principal: &again,
                    ..mtls
                })
                .is_none(),
            "the last series used was the plain-text one"
        );
        let series = metrics.series(
            &LabelsRef {
                source_principal: &again,
                ..mtls
            }
            .to_labels(),
        );
        assert_eq!(series.requests.get(), 2);
    }

    #[test]
    fn canonical_names_follow_istios_label_order() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let plain = Peer::of_workload("hw", &map(&[]), "default", "Kubernetes");
        assert_eq!(&*plain.canonical_service, "hw", "no label: the workload");
        assert_eq!(&*plain.canonical_revision, "latest");
        assert_eq!(&*plain.app, "unknown");
        let k8s = Peer::of_workload(
            "hw",
            &map(&[
                ("app", "hw"),
                ("version", "v1"),
                ("app.kubernetes.io/name", "hello"),
                ("app.kubernetes.io/version", "1.2"),
            ]),
            "ns",
            "c",
        );
        assert_eq!(
            (&*k8s.canonical_service, &*k8s.canonical_revision),
            ("hello", "1.2")
        );
        let istio = Peer::of_workload(
            "hw",
            &map(&[
                ("app.kubernetes.io/name", "hello"),
                (CANONICAL_NAME, "greeter"),
                (CANONICAL_REVISION, "r7"),
            ]),
            "ns",
            "c",
        );
        assert_eq!(
            (&*istio.canonical_service, &*istio.canonical_revision),
            ("greeter", "r7")
        );
    }

    #[test]
    fn hosts_are_read_as_kubernetes_dns_reads_them() {
        let full = |host: &str| ServiceName::of_host(host, "guestbook");
        let hw = ServiceName::in_namespace("helloworld-service", "guestbook");
        assert_eq!(&*hw.host, "helloworld-service.guestbook.svc.cluster.local");
        assert_eq!(
            full("helloworld-service"),
            hw,
            "a bare name: the caller's namespace"
        );
        assert_eq!(
            full("helloworld-service.other"),
            ServiceName::in_namespace("helloworld-service", "other")
        );
        assert_eq!(full("helloworld-service.guestbook.svc"), hw);
        assert_eq!(full("helloworld-service.guestbook.svc.cluster.local"), hw);
        let external = full("example.com.evil.org");
        assert_eq!(
            (&*external.host, &*external.name, &*external.namespace),
            ("example.com.evil.org", "example.com.evil.org", "unknown")
        );
        assert_eq!(
            &*full("10.0.0.1").namespace,
            "unknown",
            "an IP is no service"
        );
    }

    #[test]
    fn flags_and_codes_make_their_own_series() {
        let metrics = Metrics::new();
        let cache = SeriesCache::default();
        observe(&metrics, Some(&cache), 200, 1.0);
        observe(&metrics, Some(&cache), 200, 1.0);
        observe(&metrics, Some(&cache), 503, 1.0);
        metrics.record(
            Some(&cache),
            &Observation {
                labels: labels(503, ResponseFlags::UF.union(ResponseFlags::URX)),
                duration_ms: 1.0,
                request_bytes: 0,
                response_bytes: 0,
            },
        );
        let ok = metrics.series(&labels(200, ResponseFlags::empty()).to_labels());
        let failed = metrics.series(&labels(503, ResponseFlags::empty()).to_labels());
        let flagged =
            metrics.series(&labels(503, ResponseFlags::UF.union(ResponseFlags::URX)).to_labels());
        assert_eq!(
            ok.requests.get(),
            2,
            "the cache hit counts into the same series"
        );
        assert_eq!(failed.requests.get(), 1);
        assert_eq!(flagged.requests.get(), 1);
        assert_eq!(ok.response_bytes.count(), 2);
        assert_eq!(ok.response_bytes.sum(), 24.0);
        assert!(
            metrics.render().contains(
                "response_code=\"503\",grpc_response_status=\"\",response_flags=\"UF,URX\""
            )
        );
    }

    #[test]
    fn the_cache_serves_only_identical_labels() {
        let cache = SeriesCache::default();
        let metrics = Metrics::new();
        let a = labels(200, ResponseFlags::empty());
        assert!(cache.get(&a).is_none());
        observe(&metrics, Some(&cache), 200, 1.0);
        assert!(cache.get(&a).is_some());
        // Another caller with equal contents but its own allocation still
        // hits (`Arc`'s `==` falls back to comparing values)...
        let same_ui = Arc::new((**UI).clone());
        assert!(
            cache
                .get(&LabelsRef {
                    source: &same_ui,
                    ..a
                })
                .is_some()
        );
        // ...and a caller that differs in any one label misses.
        let other_ns = Arc::new(Peer {
            namespace: "other".into(),
            ..(**UI).clone()
        });
        assert!(
            cache
                .get(&LabelsRef {
                    source: &other_ns,
                    ..a
                })
                .is_none()
        );
        assert!(cache.get(&labels(500, ResponseFlags::empty())).is_none());
    }

    #[test]
    fn histogram_buckets_are_le_and_count_matches_inf() {
        let h = AtomicHistogram::new(&[1.0, 10.0]);
        for v in [0.2, 1.0, 1.5, 10.0, 99.0] {
            h.observe(v);
        }
        let counts: Vec<u64> = h
            .inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, vec![2, 2, 1], "1.0 is in le=1, 10.0 in le=10");
        assert_eq!(h.count(), 5);
        assert!((h.sum() - 111.7).abs() < 1e-9);
    }
}
