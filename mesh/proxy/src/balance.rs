//! Load balancing: which endpoint of the chosen cluster gets this attempt
//! (DestinationRule `trafficPolicy.loadBalancer.simple`).
//!
//! - `ROUND_ROBIN`: endpoints take turns; the position is kept per cluster
//!   and survives new snapshots.
//! - `LEAST_REQUEST`: Envoy's "power of two choices": pick two endpoints at
//!   random and send to the one with fewer requests in flight. Nearly as good
//!   as scanning them all, at constant cost.
//! - `RANDOM`: any endpoint, uniformly.
//!
//! Candidates are the cluster's endpoints minus those outlier detection has
//! ejected and, on a retry, minus those earlier attempts of the same request
//! used (Envoy's `previous_hosts` retry predicate, which Istio configures on
//! every route) as long as another endpoint is left. No candidate at all:
//! 503 "no healthy upstream", flag UH. (Envoy would, below 50% healthy hosts,
//! ignore health and use them all, its "panic mode"; micromesh does not.)

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use mesh_api::snapshot::LoadBalancer;
use tokio::time::Instant;

use crate::body::{ProxyService, Req, Rsp, RspFuture, ctx, ctx_mut};
use crate::cluster::{ClusterRt, EndpointRt, EndpointState};
use crate::error::ProxyError;
use crate::log::RequestLog;
use crate::rng::Rng;

/// Picks an endpoint of the cluster in the request's context (`body.rs`'s
/// `RequestCtx`) and puts the chosen `Arc<EndpointRt>` next to it.
#[derive(Clone, Debug)]
pub struct Balance<S> {
    inner: S,
    rng: Rng,
}

impl<S> Balance<S> {
    pub fn new(inner: S, rng: Rng) -> Self {
        Balance { inner, rng }
    }
}

/// Pick an endpoint index of `cluster` for one attempt.
pub fn pick(
    cluster: &ClusterRt,
    log: Option<&RequestLog>,
    rng: &Rng,
    now: Instant,
) -> Option<usize> {
    let endpoints = &cluster.endpoints;
    let healthy = |e: &EndpointRt| !e.state.outlier.is_ejected(now);
    let untried = |e: &EndpointRt| healthy(e) && !log.is_some_and(|l| l.tried(&e.address));
    // Prefer endpoints this request has not tried; fall back to any healthy one.
    choose(cluster, rng, untried)
        .or_else(|| choose(cluster, rng, healthy))
        .filter(|&i| i < endpoints.len())
}

fn choose(cluster: &ClusterRt, rng: &Rng, eligible: impl Fn(&EndpointRt) -> bool) -> Option<usize> {
    let endpoints = &cluster.endpoints;
    let n = endpoints.len();
    if n == 0 {
        return None;
    }
    match cluster.load_balancer {
        LoadBalancer::RoundRobin => {
            // Walk on from the cluster's position and take the first
            // eligible endpoint: no allocation, and turns stay fair while
            // everyone is eligible.
            let start = cluster.state.next.fetch_add(1, Ordering::Relaxed);
            (0..n)
                .map(|k| (start.wrapping_add(k)) % n)
                .find(|&i| eligible(&endpoints[i]))
        }
        LoadBalancer::Random => {
            let count = endpoints.iter().filter(|e| eligible(e)).count();
            if count == 0 {
                return None;
            }
            nth_eligible(endpoints, &eligible, rng.below(count as u64) as usize)
        }
        LoadBalancer::LeastRequest => {
            let count = endpoints.iter().filter(|e| eligible(e)).count();
            match count {
                0 => None,
                1 => nth_eligible(endpoints, &eligible, 0),
                _ => {
                    // Two distinct random candidates.
                    let a = rng.below(count as u64) as usize;
                    let mut b = rng.below(count as u64 - 1) as usize;
                    if b >= a {
                        b += 1;
                    }
                    let a = nth_eligible(endpoints, &eligible, a)?;
                    let b = nth_eligible(endpoints, &eligible, b)?;
                    let load = |i: usize| endpoints[i].state.in_flight.load(Ordering::Relaxed);
                    Some(if load(b) < load(a) { b } else { a })
                }
            }
        }
    }
}

fn nth_eligible(
    endpoints: &[Arc<EndpointRt>],
    eligible: &impl Fn(&EndpointRt) -> bool,
    nth: usize,
) -> Option<usize> {
    endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| eligible(e))
        .nth(nth)
        .map(|(i, _)| i)
}

/// Counts a request in flight on an endpoint until dropped.
struct InFlight(Arc<EndpointState>);

impl InFlight {
    fn new(state: &Arc<EndpointState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: ProxyService> tower::Service<Req> for Balance<S> {
    type Response = Rsp;
    type Error = ProxyError;
    type Future = RspFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> RspFuture {
        let Some(cluster) = ctx(&req).cluster.clone() else {
            return Box::pin(async {
                Err(ProxyError::Internal(
                    "balance needs a cluster in the request",
                ))
            });
        };
        let log = ctx(&req).log.as_deref();
        let Some(index) = pick(&cluster, log, &self.rng, Instant::now()) else {
            let error = ProxyError::NoHealthyUpstream {
                cluster: cluster.name.to_string(),
            };
            return Box::pin(async move { Err(error) });
        };
        let endpoint = cluster.endpoints[index].clone();
        if let Some(log) = log {
            log.record_endpoint(&endpoint);
        }
        // In flight until the response headers arrive.
        let in_flight = InFlight::new(&endpoint.state);
        ctx_mut(&mut req).endpoint = Some(endpoint);
        let future = self.inner.call(req);
        Box::pin(async move {
            let result = future.await;
            drop(in_flight);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use mesh_api::snapshot::OutlierDetection;
    use tower::ServiceExt;

    /// Send one request through Balance and return the endpoint it got.
    async fn pick_one(
        cluster: &Arc<ClusterRt>,
        log: Option<Arc<RequestLog>>,
    ) -> Result<Arc<str>, ProxyError> {
        let upstream = boxed(tower::service_fn(|req: Req| async move {
            let mut rsp = response(200);
            rsp.extensions_mut().insert(endpoint_of(&req));
            Ok::<_, ProxyError>(rsp)
        }));
        let mut req = request("/");
        crate::body::ctx_mut(&mut req).cluster = Some(cluster.clone());
        crate::body::ctx_mut(&mut req).log = log;
        let rsp = Balance::new(upstream, Rng::seeded(5)).oneshot(req).await?;
        Ok(rsp.extensions().get::<Arc<str>>().unwrap().clone())
    }

    #[tokio::test]
    async fn round_robin_takes_turns() {
        let cluster = cluster("hw", 3, LoadBalancer::RoundRobin);
        let mut picks = Vec::new();
        for _ in 0..6 {
            picks.push(pick_one(&cluster, None).await.unwrap());
        }
        assert_eq!(picks[..3], picks[3..]);
        assert_ne!(picks[0], picks[1]);
        assert_ne!(picks[1], picks[2]);
        assert_ne!(picks[0], picks[2]);
    }

    #[tokio::test]
    async fn least_request_avoids_the_busy_endpoint() {
        let cluster = cluster("hw", 2, LoadBalancer::LeastRequest);
        cluster.endpoints[0]
            .state
            .in_flight
            .store(100, Ordering::Relaxed);
        for _ in 0..50 {
            // With two endpoints the two random choices are always both.
            assert_eq!(
                pick_one(&cluster, None).await.unwrap(),
                cluster.endpoints[1].address
            );
        }
        // The in-flight count went back down after each request.
        assert_eq!(
            cluster.endpoints[1].state.in_flight.load(Ordering::Relaxed),
            0
        );
    }

    #[tokio::test]
    async fn random_reaches_every_endpoint() {
        let cluster = cluster("hw", 3, LoadBalancer::Random);
        let rng = Rng::seeded(3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            seen.insert(pick(&cluster, None, &rng, Instant::now()).unwrap());
        }
        assert_eq!(seen.len(), 3);
    }

    #[tokio::test]
    async fn a_retry_goes_to_an_endpoint_not_tried_yet_when_one_exists() {
        let cluster = cluster("hw", 2, LoadBalancer::Random);
        let log = RequestLog::new();
        let first = pick_one(&cluster, Some(log.clone())).await.unwrap();
        for _ in 0..20 {
            let fresh = RequestLog::new();
            fresh.record_upstream(log.upstream().unwrap());
            assert_ne!(pick_one(&cluster, Some(fresh)).await.unwrap(), first);
        }
        // With a single endpoint the retry goes back to it.
        let single = crate::test_util::cluster("one", 1, LoadBalancer::RoundRobin);
        let log = RequestLog::new();
        let a = pick_one(&single, Some(log.clone())).await.unwrap();
        assert_eq!(pick_one(&single, Some(log)).await.unwrap(), a);
    }

    #[tokio::test(start_paused = true)]
    async fn ejected_endpoints_are_skipped_and_none_left_is_uh() {
        let outlier = OutlierDetection {
            consecutive_5xx_errors: 1,
            consecutive_gateway_errors: 0,
            interval_ms: 1_000,
            base_ejection_time_ms: 30_000,
            max_ejection_percent: 100,
        };
        let cluster = cluster_with(
            "hw",
            2,
            LoadBalancer::RoundRobin,
            Some(outlier),
            Default::default(),
        );
        let now = Instant::now();
        assert!(crate::outlier::record(
            &cluster,
            &cluster.endpoints[0],
            crate::outlier::Outcome::ServerError,
            now
        ));
        for _ in 0..4 {
            assert_eq!(
                pick_one(&cluster, None).await.unwrap(),
                cluster.endpoints[1].address
            );
        }
        crate::outlier::record(
            &cluster,
            &cluster.endpoints[1],
            crate::outlier::Outcome::ServerError,
            now,
        );
        let err = pick_one(&cluster, None).await.unwrap_err();
        assert!(matches!(err, ProxyError::NoHealthyUpstream { .. }));
        assert_eq!(err.to_response().status(), 503);

        let empty = crate::test_util::cluster("empty", 0, LoadBalancer::RoundRobin);
        assert!(matches!(
            pick_one(&empty, None).await,
            Err(ProxyError::NoHealthyUpstream { .. })
        ));
    }
}
