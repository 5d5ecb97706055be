//! Outlier detection: take an endpoint that keeps failing out of the
//! balancer's choices for a while (Istio's DestinationRule
//! `trafficPolicy.outlierDetection`, Envoy's outlier detector).
//!
//! Sits between the balancer and the connection pool, so it sees each
//! attempt's result for the endpoint it went to:
//!
//! - a 5xx response, a connection failure or a reset adds one to the
//!   endpoint's consecutive-5xx counter; a 502/503/504 or connection failure
//!   adds one to its consecutive-gateway-errors counter; any other response
//!   resets both (Envoy treats locally seen connection failures as 503s too);
//! - reaching `consecutive5xxErrors` or `consecutiveGatewayErrors` (0 turns a
//!   check off) ejects the endpoint for `baseEjectionTime` times the number of
//!   times it has been ejected (capped at 300 s, Envoy's `max_ejection_time`);
//! - never more than `maxEjectionPercent` of the cluster is ejected at once,
//!   but, as in Envoy, one endpoint may always be ejected when the percentage
//!   is above zero.
//!
//! Envoy un-ejects hosts on a timer every `interval`. micromesh checks lazily
//! instead: the balancer asks [`OutlierState::is_ejected`] at pick time and an
//! endpoint whose ejection has run out comes back right then, counters reset.
//! So `interval` has no effect here; an endpoint returns up to one interval
//! sooner than in Envoy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::body::{ProxyService, Req, RspFuture};
use crate::cluster::{ClusterRt, EndpointRt};
use crate::error::ProxyError;

/// Envoy's default cap on one ejection.
pub const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

// === impl OutlierState ===

/// One endpoint's failure counters and ejection.
#[derive(Debug, Default)]
pub struct OutlierState {
    /// Fast path for the balancer: most endpoints are never ejected, and
    /// checking them costs one atomic load, no lock.
    ejected: AtomicBool,
    inner: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

/// What one attempt's result means for its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A 5xx that is not a gateway error (500, 501, ...).
    ServerError,
    /// 502/503/504, a connection failure, a reset or a per-try timeout.
    GatewayError,
    /// Nothing to learn about the endpoint (overflow, or our own failure).
    Ignore,
}

impl Outcome {
    pub fn of(result: &Result<crate::body::Rsp, ProxyError>) -> Outcome {
        match result {
            Ok(rsp) => match rsp.status().as_u16() {
                502..=504 => Outcome::GatewayError,
                500..=599 => Outcome::ServerError,
                _ => Outcome::Success,
            },
            Err(ProxyError::ConnectFailure { .. })
            | Err(ProxyError::Reset { .. })
            | Err(ProxyError::PerTryTimeout) => Outcome::GatewayError,
            Err(_) => Outcome::Ignore,
        }
    }
}

impl OutlierState {
    /// Whether the endpoint is ejected at `now`; an ejection that has run out
    /// ends here (lazily, see the module doc).
    pub fn is_ejected(&self, now: Instant) -> bool {
        if !self.ejected.load(Ordering::Acquire) {
            return false;
        }
        let mut counters = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match counters.ejected_until {
            Some(until) if now < until => true,
            _ => {
                counters.ejected_until = None;
                counters.consecutive_5xx = 0;
                counters.consecutive_gateway = 0;
                self.ejected.store(false, Ordering::Release);
                false
            }
        }
    }

    /// How many times the endpoint has been ejected.
    pub fn times_ejected(&self) -> u32 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .times_ejected
    }
}

/// Count `outcome` for `endpoint` and eject it if it crossed a threshold.
/// Returns whether this call ejected it.
pub fn record(cluster: &ClusterRt, endpoint: &EndpointRt, outcome: Outcome, now: Instant) -> bool {
    let Some(policy) = &cluster.outlier_detection else {
        return false;
    };
    let state = &endpoint.state.outlier;
    let tripped = {
        let mut c = state.inner.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Outcome::Ignore => return false,
            Outcome::Success => {
                c.consecutive_5xx = 0;
                c.consecutive_gateway = 0;
                return false;
            }
            Outcome::ServerError => {
                c.consecutive_5xx += 1;
                c.consecutive_gateway = 0;
            }
            Outcome::GatewayError => {
                c.consecutive_5xx += 1;
                c.consecutive_gateway += 1;
            }
        }
        let over_5xx =
            policy.consecutive_5xx_errors > 0 && c.consecutive_5xx >= policy.consecutive_5xx_errors;
        let over_gateway = policy.consecutive_gateway_errors > 0
            && c.consecutive_gateway >= policy.consecutive_gateway_errors;
        (over_5xx || over_gateway) && c.ejected_until.is_none()
    };
    if !tripped {
        return false;
    }

    // The lock on this endpoint is released before looking at the others:
    // two endpoints failing at once must not wait on each other's locks.
    let total = cluster.endpoints.len() as u64;
    let ejected = cluster
        .endpoints
        .iter()
        .filter(|e| !Arc::ptr_eq(&e.state, &endpoint.state) && e.state.outlier.is_ejected(now))
        .count() as u64;
    let allowed = match policy.max_ejection_percent {
        0 => 0,
        percent => (total * u64::from(percent.min(100)) / 100).max(1),
    };
    if ejected >= allowed {
        tracing::debug!(
            endpoint = %endpoint.address,
            cluster = %cluster.name,
            "outlier not ejected: maxEjectionPercent reached"
        );
        return false;
    }

    let mut c = state.inner.lock().unwrap_or_else(|e| e.into_inner());
    c.times_ejected += 1;
    let base = Duration::from_millis(policy.base_ejection_time_ms);
    let time = (base * c.times_ejected).min(MAX_EJECTION_TIME.max(base));
    c.ejected_until = Some(now + time);
    c.consecutive_5xx = 0;
    c.consecutive_gateway = 0;
    state.ejected.store(true, Ordering::Release);
    tracing::info!(
        endpoint = %endpoint.address,
        instance = %endpoint.instance,
        cluster = %cluster.name,
        ejection_ms = time.as_millis() as u64,
        times = c.times_ejected,
        "outlier detection ejected an endpoint"
    );
    true
}

// === impl Outlier ===

/// Records each attempt's result for the endpoint it went to.
#[derive(Clone, Debug)]
pub struct Outlier<S> {
    inner: S,
}

impl<S> Outlier<S> {
    pub fn new(inner: S) -> Self {
        Outlier { inner }
    }
}

impl<S: ProxyService> tower::Service<Req> for Outlier<S> {
    type Response = crate::body::Rsp;
    type Error = ProxyError;
    type Future = RspFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> RspFuture {
        let crate::body::RequestCtx {
            cluster, endpoint, ..
        } = crate::body::ctx(&req).clone();
        let future = self.inner.call(req);
        match (cluster, endpoint) {
            (Some(cluster), Some(endpoint)) if cluster.outlier_detection.is_some() => {
                Box::pin(async move {
                    let result = future.await;
                    record(&cluster, &endpoint, Outcome::of(&result), Instant::now());
                    result
                })
            }
            _ => future,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use mesh_api::snapshot::{LoadBalancer, OutlierDetection};
    use tower::ServiceExt;

    fn detection(consecutive_5xx: u32, gateway: u32, max_percent: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx_errors: consecutive_5xx,
            consecutive_gateway_errors: gateway,
            interval_ms: 1_000,
            base_ejection_time_ms: 10_000,
            max_ejection_percent: max_percent,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_5xx_eject_and_the_endpoint_returns_after_base_times_n() {
        let cluster = cluster_with(
            "hw",
            2,
            LoadBalancer::RoundRobin,
            Some(detection(3, 0, 100)),
            Default::default(),
        );
        let ep = &cluster.endpoints[0];
        let state = &ep.state.outlier;
        let now = Instant::now();

        // A success in between resets the count.
        record(&cluster, ep, Outcome::ServerError, now);
        record(&cluster, ep, Outcome::ServerError, now);
        record(&cluster, ep, Outcome::Success, now);
        record(&cluster, ep, Outcome::ServerError, now);
        record(&cluster, ep, Outcome::ServerError, now);
        assert!(!state.is_ejected(now));
        assert!(record(&cluster, ep, Outcome::ServerError, now));
        assert!(state.is_ejected(now));

        // First ejection: base time.
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(state.is_ejected(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            !state.is_ejected(Instant::now()),
            "back after baseEjectionTime"
        );

        // Second ejection: twice as long.
        for _ in 0..3 {
            record(&cluster, ep, Outcome::GatewayError, Instant::now());
        }
        assert_eq!(state.times_ejected(), 2);
        tokio::time::advance(Duration::from_millis(19_999)).await;
        assert!(state.is_ejected(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!state.is_ejected(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn gateway_errors_count_separately_from_other_5xx() {
        let cluster = cluster_with(
            "hw",
            2,
            LoadBalancer::RoundRobin,
            Some(detection(0, 2, 100)),
            Default::default(),
        );
        let ep = &cluster.endpoints[0];
        let now = Instant::now();
        for _ in 0..5 {
            record(&cluster, ep, Outcome::ServerError, now);
        }
        assert!(
            !ep.state.outlier.is_ejected(now),
            "500s are not gateway errors"
        );
        record(&cluster, ep, Outcome::GatewayError, now);
        assert!(record(&cluster, ep, Outcome::GatewayError, now));
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_caps_ejections_but_one_is_always_allowed() {
        let cluster = cluster_with(
            "hw",
            3,
            LoadBalancer::RoundRobin,
            Some(detection(1, 0, 10)),
            Default::default(),
        );
        let now = Instant::now();
        // 10% of 3 rounds down to 0, but Envoy always allows one.
        assert!(record(
            &cluster,
            &cluster.endpoints[0],
            Outcome::ServerError,
            now
        ));
        assert!(!record(
            &cluster,
            &cluster.endpoints[1],
            Outcome::ServerError,
            now
        ));
        assert!(!cluster.endpoints[1].state.outlier.is_ejected(now));

        let off = cluster_with(
            "hw",
            3,
            LoadBalancer::RoundRobin,
            Some(detection(1, 0, 0)),
            Default::default(),
        );
        assert!(
            !record(&off, &off.endpoints[0], Outcome::ServerError, now),
            "0% ejects nobody"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_records_what_the_endpoint_answered() {
        let cluster = cluster_with(
            "hw",
            2,
            LoadBalancer::RoundRobin,
            Some(detection(0, 1, 100)),
            Default::default(),
        );
        let (inner, mut handle) = mock();
        let mut req = request("/");
        crate::body::ctx_mut(&mut req).cluster = Some(cluster.clone());
        crate::body::ctx_mut(&mut req).endpoint = Some(cluster.endpoints[1].clone());
        let call = tokio::spawn(Outlier::new(inner).oneshot(req));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error(ProxyError::ConnectFailure {
            endpoint: cluster.endpoints[1].address.to_string(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        });
        assert!(call.await.unwrap().is_err());
        assert!(
            cluster.endpoints[1]
                .state
                .outlier
                .is_ejected(Instant::now())
        );
        assert!(
            !cluster.endpoints[0]
                .state
                .outlier
                .is_ejected(Instant::now())
        );
    }
}
