//! What happened to one request, and the access-log line that reports it.
//!
//! Every listener creates a [`RequestLog`] when a request arrives and puts it
//! in the request's extensions; the layers below write into it (the chosen
//! endpoint, the endpoints already tried, response flags) and the listener
//! prints one line at the end, target `access`:
//!
//! ```text
//! outbound GET helloworld-service:8080/hello/ray 200 - 3ms upstream=127.0.0.1:40123 (helloworld-service-v1-1a2b3)
//! ```
//!
//! The flags are Envoy's: the same two letters appear in an Istio sidecar's
//! access log, so what a learner reads here transfers directly.
//!
//! The same record feeds telemetry (`telemetry.rs`): the cluster and endpoint
//! of the last attempt give the span's `upstream_cluster` and the metrics'
//! `destination_workload` / `destination_version`.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use crate::cluster::{ClusterRt, EndpointRt};

/// Which listener a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the local app, to another service.
    Outbound,
    /// From another sidecar or the gateway, to the local app.
    Inbound,
    /// From a user, into the mesh.
    Gateway,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
            Direction::Gateway => "gateway",
        })
    }
}

/// Envoy's response flags: why a response is what it is. Several can be set
/// at once (`UF,URX`: connection failures, retries exhausted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u16);

impl ResponseFlags {
    /// No healthy upstream: the cluster has no endpoint to pick.
    pub const UH: ResponseFlags = ResponseFlags(1);
    /// Upstream request timeout (the route's `timeout`).
    pub const UT: ResponseFlags = ResponseFlags(1 << 1);
    /// Upstream connection failure.
    pub const UF: ResponseFlags = ResponseFlags(1 << 2);
    /// Upstream connection terminated before the response.
    pub const UC: ResponseFlags = ResponseFlags(1 << 3);
    /// Upstream overflow: the circuit breaker refused the request.
    pub const UO: ResponseFlags = ResponseFlags(1 << 4);
    /// No route for the request.
    pub const NR: ResponseFlags = ResponseFlags(1 << 5);
    /// The fault filter delayed the request.
    pub const DI: ResponseFlags = ResponseFlags(1 << 6);
    /// The fault filter aborted the request.
    pub const FI: ResponseFlags = ResponseFlags(1 << 7);
    /// Retries exhausted on a retriable failure.
    pub const URX: ResponseFlags = ResponseFlags(1 << 8);
    /// The downstream (the caller) went away before the response was sent.
    pub const DC: ResponseFlags = ResponseFlags(1 << 9);

    /// Envoy's order when it prints several.
    const NAMES: [(ResponseFlags, &'static str); 10] = [
        (Self::UH, "UH"),
        (Self::UT, "UT"),
        (Self::UF, "UF"),
        (Self::UC, "UC"),
        (Self::UO, "UO"),
        (Self::NR, "NR"),
        (Self::DI, "DI"),
        (Self::FI, "FI"),
        (Self::URX, "URX"),
        (Self::DC, "DC"),
    ];

    pub fn empty() -> Self {
        ResponseFlags(0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: ResponseFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: ResponseFlags) -> Self {
        ResponseFlags(self.0 | other.0)
    }
}

impl fmt::Display for ResponseFlags {
    /// `-` when no flag is set, like Envoy; else `UF,URX`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// The endpoint a request was (last) sent to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub address: Arc<str>,
    pub instance: Arc<str>,
}

/// Shared record of one request, in its extensions as `Arc<RequestLog>`.
///
/// Retries copy the request but share this record, so the balancer can see
/// which endpoints earlier attempts used (Envoy's previous-hosts predicate).
#[derive(Debug, Default)]
pub struct RequestLog {
    flags: AtomicU16,
    // Only this request's own attempts touch the lock, one at a time; it is
    // never contended and never shared between requests.
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    upstreams: Vec<Upstream>,
    /// The cluster of the latest attempt (or the route's first destination
    /// before an attempt picks one).
    cluster: Option<Arc<ClusterRt>>,
    /// The endpoint of the latest attempt, if it got as far as one.
    endpoint: Option<Arc<EndpointRt>>,
}

impl RequestLog {
    pub fn new() -> Arc<Self> {
        Arc::new(RequestLog::default())
    }

    pub fn flag(&self, flags: ResponseFlags) {
        self.flags.fetch_or(flags.0, Ordering::Relaxed);
    }

    pub fn flags(&self) -> ResponseFlags {
        ResponseFlags(self.flags.load(Ordering::Relaxed))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record that an attempt goes to `upstream`.
    pub fn record_upstream(&self, upstream: Upstream) {
        self.state().upstreams.push(upstream);
    }

    /// Record the cluster an attempt (or, before any, the route) aims at;
    /// forgets the previous attempt's endpoint.
    pub fn record_cluster(&self, cluster: &Arc<ClusterRt>) {
        let mut state = self.state();
        state.cluster = Some(cluster.clone());
        state.endpoint = None;
    }

    /// Record the endpoint the latest attempt goes to (with its address,
    /// as [`record_upstream`](Self::record_upstream) does).
    pub fn record_endpoint(&self, endpoint: &Arc<EndpointRt>) {
        let mut state = self.state();
        state.upstreams.push(Upstream {
            address: endpoint.address.clone(),
            instance: endpoint.instance.clone(),
        });
        state.endpoint = Some(endpoint.clone());
    }

    /// The cluster and endpoint of the latest attempt, as far as it got.
    pub fn target(&self) -> (Option<Arc<ClusterRt>>, Option<Arc<EndpointRt>>) {
        let state = self.state();
        (state.cluster.clone(), state.endpoint.clone())
    }

    /// The endpoint of the latest attempt.
    pub fn upstream(&self) -> Option<Upstream> {
        self.state().upstreams.last().cloned()
    }

    /// Whether an earlier attempt of this request went to `address`.
    pub fn tried(&self, address: &str) -> bool {
        self.state()
            .upstreams
            .iter()
            .any(|u| &*u.address == address)
    }

    /// How many attempts picked an endpoint.
    pub fn attempts(&self) -> usize {
        self.state().upstreams.len()
    }
}

/// The fields of one access-log line.
pub struct AccessLog<'a> {
    pub direction: Direction,
    pub method: &'a http::Method,
    pub authority: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub request_id: &'a str,
    pub log: &'a RequestLog,
}

impl AccessLog<'_> {
    /// Print the line at info level, target `access`.
    pub fn emit(&self) {
        let upstream = self.log.upstream();
        let (address, instance) = match &upstream {
            Some(u) => (&*u.address, &*u.instance),
            None => ("-", "-"),
        };
        let flags = self.log.flags();
        tracing::info!(
            target: "access",
            direction = %self.direction,
            method = %self.method,
            authority = self.authority,
            path = self.path,
            status = self.status,
            duration_ms = self.duration.as_millis() as u64,
            upstream = address,
            upstream_instance = instance,
            flags = %flags,
            request_id = self.request_id,
            "{} {} {}{} {} {} {}ms upstream={} ({})",
            self.direction,
            self.method,
            self.authority,
            self.path,
            self.status,
            flags,
            self.duration.as_millis(),
            address,
            instance,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_print_like_envoy() {
        assert_eq!(ResponseFlags::empty().to_string(), "-");
        let flags = ResponseFlags::URX.union(ResponseFlags::UF);
        assert_eq!(flags.to_string(), "UF,URX");
        assert_eq!(
            ResponseFlags::DI.union(ResponseFlags::FI).to_string(),
            "DI,FI"
        );
    }

    #[test]
    fn the_log_remembers_every_endpoint_tried() {
        let log = RequestLog::new();
        log.record_upstream(Upstream {
            address: "127.0.0.1:1".into(),
            instance: "a".into(),
        });
        log.record_upstream(Upstream {
            address: "127.0.0.1:2".into(),
            instance: "b".into(),
        });
        assert!(log.tried("127.0.0.1:1"));
        assert!(!log.tried("127.0.0.1:3"));
        assert_eq!(&*log.upstream().unwrap().instance, "b");
        assert_eq!(log.attempts(), 2);
    }
}
