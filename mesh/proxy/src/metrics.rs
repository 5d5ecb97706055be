//! Metrics: Istio's standard request metrics, in Prometheus text, at
//! `GET /stats/prometheus` on the admin listener.
//!
//! An Istio sidecar counts every request twice in the mesh: the caller's
//! Envoy with `reporter="source"`, the callee's with
//! `reporter="destination"`. Each count carries who called whom (workload and
//! version on both ends), the service asked for, the status and Envoy's
//! response flags. micromesh writes the same names and labels, so a Grafana
//! dashboard or a Kiali query written for Istio reads a micromesh sidecar
//! unchanged:
//!
//! ```text
//! istio_requests_total{reporter="source",source_workload="guestbook-ui",source_version="v1",
//!   destination_workload="helloworld-service",destination_version="v2",
//!   destination_service="helloworld-service",response_code="200",response_flags="-"} 42
//! istio_request_duration_milliseconds_bucket{...,le="5"} 40     (histogram)
//! istio_request_bytes_bucket{...}, istio_response_bytes_bucket{...}
//! ```
//!
//! The registry is the prometheus-client crate's. Two things are our own, to
//! keep the request path cheap:
//!
//! - [`AtomicHistogram`]: the crate's `Histogram` takes a mutex on every
//!   `observe`; ours adds to one atomic bucket counter and the atomic sum, so
//!   concurrent requests never wait for each other.
//! - [`SeriesCache`]: finding a series in a `Family` hashes its eight labels
//!   and takes the family's read lock, four times per request (one per
//!   metric). Each endpoint instead remembers the last series it used: when
//!   the next request has the same labels (same caller, same status: by far
//!   the common case) it uses those handles directly, lock-free. Only a
//!   request whose labels differ looks up the families.

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

/// The label set of one series, owned: a key of the families.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Labels {
    pub reporter: Reporter,
    pub source_workload: Arc<str>,
    pub source_version: Arc<str>,
    pub destination_workload: Arc<str>,
    pub destination_version: Arc<str>,
    pub destination_service: Arc<str>,
    pub response_code: u16,
    pub response_flags: ResponseFlags,
}

/// The same labels, borrowed from the request: compared with a cached
/// series without allocating, turned into [`Labels`] only on a miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelsRef<'a> {
    pub reporter: Reporter,
    pub source_workload: &'a str,
    pub source_version: &'a str,
    pub destination_workload: &'a str,
    pub destination_version: &'a str,
    pub destination_service: &'a str,
    pub response_code: u16,
    pub response_flags: ResponseFlags,
}

impl LabelsRef<'_> {
    fn is(&self, labels: &Labels) -> bool {
        self.reporter == labels.reporter
            && self.response_code == labels.response_code
            && self.response_flags == labels.response_flags
            && self.source_workload == &*labels.source_workload
            && self.source_version == &*labels.source_version
            && self.destination_workload == &*labels.destination_workload
            && self.destination_version == &*labels.destination_version
            && self.destination_service == &*labels.destination_service
    }

    pub fn to_labels(&self) -> Labels {
        Labels {
            reporter: self.reporter,
            source_workload: self.source_workload.into(),
            source_version: self.source_version.into(),
            destination_workload: self.destination_workload.into(),
            destination_version: self.destination_version.into(),
            destination_service: self.destination_service.into(),
            response_code: self.response_code,
            response_flags: self.response_flags,
        }
    }
}

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("reporter", self.reporter.as_str()).encode(encoder.encode_label())?;
        ("source_workload", &*self.source_workload).encode(encoder.encode_label())?;
        ("source_version", &*self.source_version).encode(encoder.encode_label())?;
        ("destination_workload", &*self.destination_workload).encode(encoder.encode_label())?;
        ("destination_version", &*self.destination_version).encode(encoder.encode_label())?;
        ("destination_service", &*self.destination_service).encode(encoder.encode_label())?;
        ("response_code", self.response_code).encode(encoder.encode_label())?;
        ("response_flags", self.response_flags).encode(encoder.encode_label())?;
        Ok(())
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

    fn labels(code: u16, flags: ResponseFlags) -> LabelsRef<'static> {
        LabelsRef {
            reporter: Reporter::Source,
            source_workload: "guestbook-ui",
            source_version: "v1",
            destination_workload: "helloworld-service",
            destination_version: "v2",
            destination_service: "helloworld-service",
            response_code: code,
            response_flags: flags,
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

    #[test]
    fn the_page_has_istios_names_labels_and_envoys_buckets() {
        let metrics = Metrics::new();
        observe(&metrics, None, 200, 3.0);
        let page = metrics.render();
        let series = "reporter=\"source\",source_workload=\"guestbook-ui\",source_version=\"v1\",\
                      destination_workload=\"helloworld-service\",destination_version=\"v2\",\
                      destination_service=\"helloworld-service\",response_code=\"200\",\
                      response_flags=\"-\"";
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
        assert!(page.contains("istio_request_bytes_bucket"), "{page}");
        assert!(page.contains("istio_response_bytes_sum"), "{page}");
        assert!(page.contains("micromesh_spans_dropped_total 0"), "{page}");
        let le_lines = page
            .lines()
            .filter(|l| l.starts_with("istio_request_duration_milliseconds_bucket"))
            .count();
        assert_eq!(le_lines, BUCKETS.len() + 1, "Envoy's buckets and +Inf");
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
            metrics
                .render()
                .contains("response_code=\"503\",response_flags=\"UF,URX\"")
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
        let other_caller = LabelsRef {
            source_version: "v2",
            ..a
        };
        assert!(cache.get(&other_caller).is_none());
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
