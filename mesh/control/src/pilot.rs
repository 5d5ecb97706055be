//! The control plane's own metrics, at `GET /metrics`, named as istiod
//! (whose config server is still called "pilot") names them, so Istio's
//! control-plane dashboard and its alerts read micromesh unchanged.
//!
//! Only the series that mean something here are served:
//!
//! ```text
//! istio_build{component="pilot",tag="0.1.0"} 1            the version running
//! pilot_xds{version="0.1.0"} 4                            proxies connected (live leases)
//! pilot_xds_pushes{type="snapshot"} 17              snapshots sent to proxies
//! pilot_total_xds_rejects{type="snapshot"} 1              snapshots a proxy refused (NACK)
//! pilot_xds_push_time_bucket{type="snapshot",le="0.01"}   seconds to compile and encode one push
//! pilot_proxy_convergence_time_bucket{le="0.1"}           seconds from a config change to a proxy's push
//! ```
//!
//! istiod pushes four xDS types (CDS, EDS, LDS, RDS) separately; a micromesh
//! snapshot carries all of them at once, so its pushes and rejects have the
//! one type `snapshot`. Convergence is measured as istiod does: from the
//! moment a change made a new config version to the moment a proxy is sent
//! that version.
//!
//! istiod's counters keep their names without Prometheus' `_total` suffix
//! (its exporter is told not to add one), and its dashboards and alerts
//! query them so: `sum(irate(pilot_xds_pushes{type="cds"}[1m]))`. So do we,
//! and `promtool check metrics` says of both what it says of istiod's.
//!
//! The page is written by hand: a few counters and two histograms, kept in
//! atomics so a long-poll never waits for a lock to count itself.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The `Content-Type` of the page: Prometheus' text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// istiod's buckets for `pilot_xds_push_time` (seconds).
const PUSH_TIME_BUCKETS: [f64; 8] = [0.01, 0.1, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];
/// istiod's buckets for `pilot_proxy_convergence_time` (seconds).
const CONVERGENCE_BUCKETS: [f64; 8] = [0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];

/// What the control plane counts about its pushes.
#[derive(Debug)]
pub struct PilotMetrics {
    pushes: AtomicU64,
    rejects: AtomicU64,
    push_time: Histogram,
    convergence: Histogram,
    /// The latest config version and when it was made.
    latest: Mutex<(u64, Instant)>,
}

impl Default for PilotMetrics {
    fn default() -> Self {
        PilotMetrics {
            pushes: AtomicU64::new(0),
            rejects: AtomicU64::new(0),
            push_time: Histogram::new(&PUSH_TIME_BUCKETS),
            convergence: Histogram::new(&CONVERGENCE_BUCKETS),
            latest: Mutex::new((0, Instant::now())),
        }
    }
}

impl PilotMetrics {
    /// Config version `version` was made at `at`.
    pub fn version_made(&self, version: u64, at: Instant) {
        // A poisoned lock only means a panic elsewhere; the pair is still whole.
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if version >= latest.0 {
            *latest = (version, at);
        }
    }

    /// A proxy was sent `version`, which took `push_time` to compile and
    /// encode, at `now`.
    pub fn pushed(&self, version: u64, push_time: Duration, now: Instant) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
        self.push_time.observe(push_time.as_secs_f64());
        let latest = *self.latest.lock().unwrap_or_else(|e| e.into_inner());
        // Only the newest version converges: an older one is a proxy
        // catching up after a restart, not the time a change took.
        if latest.0 == version {
            self.convergence
                .observe(now.saturating_duration_since(latest.1).as_secs_f64());
        }
    }

    /// A proxy refused a snapshot (NACK).
    pub fn rejected(&self) {
        self.rejects.fetch_add(1, Ordering::Relaxed);
    }

    /// The page, with `connected` proxies holding a live lease.
    pub fn render(&self, connected: usize) -> String {
        let tag = env!("CARGO_PKG_VERSION");
        let mut page = String::with_capacity(2048);
        // Writing into a String cannot fail: the `let _` below drop Ok(()).
        let _ = writeln!(
            page,
            "# HELP istio_build The build this control plane runs\n\
             # TYPE istio_build gauge\n\
             istio_build{{component=\"pilot\",tag=\"{tag}\"}} 1\n\
             # HELP pilot_xds Proxies connected to this control plane (a live lease)\n\
             # TYPE pilot_xds gauge\n\
             pilot_xds{{version=\"{tag}\"}} {connected}\n\
             # HELP pilot_xds_pushes Snapshots pushed to proxies\n\
             # TYPE pilot_xds_pushes counter\n\
             pilot_xds_pushes{{type=\"snapshot\"}} {}\n\
             # HELP pilot_total_xds_rejects Snapshots a proxy rejected (NACK)\n\
             # TYPE pilot_total_xds_rejects counter\n\
             pilot_total_xds_rejects{{type=\"snapshot\"}} {}",
            self.pushes.load(Ordering::Relaxed),
            self.rejects.load(Ordering::Relaxed),
        );
        self.push_time.write(
            &mut page,
            "pilot_xds_push_time",
            "Seconds to compile and encode one push",
            "type=\"snapshot\",",
        );
        self.convergence.write(
            &mut page,
            "pilot_proxy_convergence_time",
            "Seconds from a config change to its push to a proxy",
            "",
        );
        page
    }
}

// === impl Histogram ===

/// Fixed buckets, one atomic counter each (not cumulative: summed when the
/// page is written), and the sum in microseconds.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, seconds: f64) {
        let index = self.bounds.partition_point(|b| *b < seconds);
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// `labels` is empty or ends with a comma.
    fn write(&self, page: &mut String, name: &str, help: &str, labels: &str) {
        let _ = writeln!(page, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(bound) => bound.to_string(),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(page, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let labels = match labels.trim_end_matches(',') {
            "" => String::new(),
            labels => format!("{{{labels}}}"),
        };
        let _ = writeln!(page, "{name}_sum{labels} {sum}");
        let _ = writeln!(page, "{name}_count{labels} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_rejects_and_convergence_are_counted_as_istiod_names_them() {
        let metrics = PilotMetrics::default();
        let t0 = Instant::now();
        metrics.version_made(7, t0);
        // Version 7 reaches one proxy 200 ms after the change; an older
        // version sent to a proxy catching up does not count as convergence.
        metrics.pushed(7, Duration::from_millis(5), t0 + Duration::from_millis(200));
        metrics.pushed(6, Duration::from_millis(5), t0 + Duration::from_secs(4));
        metrics.rejected();
        let page = metrics.render(3);
        let tag = env!("CARGO_PKG_VERSION");
        for line in [
            format!("istio_build{{component=\"pilot\",tag=\"{tag}\"}} 1"),
            format!("pilot_xds{{version=\"{tag}\"}} 3"),
            "pilot_xds_pushes{type=\"snapshot\"} 2".to_string(),
            "pilot_total_xds_rejects{type=\"snapshot\"} 1".to_string(),
            // Both pushes took 5 ms: in the first bucket.
            "pilot_xds_push_time_bucket{type=\"snapshot\",le=\"0.01\"} 2".to_string(),
            "pilot_xds_push_time_count{type=\"snapshot\"} 2".to_string(),
            "pilot_xds_push_time_sum{type=\"snapshot\"} 0.01".to_string(),
            // 200 ms: above 0.1 s, within 0.5 s; only one observation.
            "pilot_proxy_convergence_time_bucket{le=\"0.1\"} 0".to_string(),
            "pilot_proxy_convergence_time_bucket{le=\"0.5\"} 1".to_string(),
            "pilot_proxy_convergence_time_bucket{le=\"+Inf\"} 1".to_string(),
            "pilot_proxy_convergence_time_count 1".to_string(),
        ] {
            assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
        }
    }

    #[test]
    fn an_older_version_never_replaces_the_latest() {
        let metrics = PilotMetrics::default();
        let t0 = Instant::now();
        metrics.version_made(9, t0);
        metrics.version_made(8, t0 + Duration::from_secs(1));
        metrics.pushed(9, Duration::ZERO, t0 + Duration::from_secs(2));
        assert!(
            metrics
                .render(0)
                .contains("pilot_proxy_convergence_time_bucket{le=\"3\"} 1\n"),
            "measured from version 9's making, 2 s: {}",
            metrics.render(0)
        );
    }
}
