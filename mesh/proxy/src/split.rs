//! Weighted choice among a route's destinations: the canary split
//! (`route[].weight` in an Istio VirtualService, Envoy's weighted clusters).
//!
//! Weights are relative, as in Istio: 80 and 20, or 4 and 1, both send 80% of
//! requests to the first destination. A destination of weight 0 gets nothing.
//! The chosen `Arc<ClusterRt>` goes into the request's context (`body.rs`)
//! for the balancer below.
//!
//! In micromesh the split sits under the retry layer (linkerd2-proxy's
//! order), so a retry draws again; Envoy picks the weighted cluster once per
//! request and retries within it.

use std::sync::Arc;
use std::task::{Context, Poll};

use crate::body::{ProxyService, Req, Rsp, RspFuture, ctx_mut};
use crate::cluster::ClusterRt;
use crate::error::ProxyError;
use crate::rng::Rng;

/// One destination of a route.
#[derive(Clone, Debug)]
pub struct WeightedCluster {
    pub cluster: Arc<ClusterRt>,
    pub weight: u32,
}

/// Picks a destination by weight and passes the request on.
#[derive(Clone, Debug)]
pub struct Split<S> {
    inner: S,
    destinations: Arc<[WeightedCluster]>,
    total: u64,
    rng: Rng,
}

impl<S> Split<S> {
    pub fn new(inner: S, destinations: Arc<[WeightedCluster]>, rng: Rng) -> Self {
        let total = destinations.iter().map(|d| u64::from(d.weight)).sum();
        Split {
            inner,
            destinations,
            total,
            rng,
        }
    }

    /// The destination for one request.
    pub fn choose(&self) -> Option<&WeightedCluster> {
        if self.destinations.len() == 1 {
            return self.destinations.first();
        }
        if self.total == 0 {
            return None;
        }
        let mut point = self.rng.below(self.total);
        for destination in self.destinations.iter() {
            let weight = u64::from(destination.weight);
            if point < weight {
                return Some(destination);
            }
            point -= weight;
        }
        None
    }
}

impl<S: ProxyService> tower::Service<Req> for Split<S> {
    type Response = Rsp;
    type Error = ProxyError;
    type Future = RspFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> RspFuture {
        match self.choose() {
            Some(destination) => {
                let ctx = ctx_mut(&mut req);
                if let Some(log) = &ctx.log {
                    log.record_cluster(&destination.cluster);
                }
                ctx.cluster = Some(destination.cluster.clone());
                self.inner.call(req)
            }
            // The compiler rejects routes whose weights are all zero.
            None => Box::pin(async { Err(ProxyError::Internal("a route with no weight")) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use mesh_api::snapshot::LoadBalancer;
    use tower::ServiceExt;

    fn split_of(weights: &[u32], seed: u64) -> Split<impl ProxyService> {
        let destinations: Vec<_> = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| WeightedCluster {
                cluster: cluster(&format!("hw|v{}", i + 1), 1, LoadBalancer::RoundRobin),
                weight,
            })
            .collect();
        let upstream = boxed(tower::service_fn(|_req: Req| async {
            Ok::<_, ProxyError>(response(200))
        }));
        Split::new(upstream, destinations.into(), Rng::seeded(seed))
    }

    #[test]
    fn an_80_20_split_is_within_the_binomial_spread() {
        let split = split_of(&[80, 20], 7);
        let n = 10_000;
        let v1 = (0..n)
            .filter(|_| &*split.choose().unwrap().cluster.name == "hw|v1")
            .count();
        mesh_testkit::assert_binomial("requests to v1", v1 as u64, n, 0.8, 4.0);
    }

    #[test]
    fn weights_are_relative_and_zero_gets_nothing() {
        let split = split_of(&[0, 4, 1], 11);
        let mut counts = [0usize; 3];
        for _ in 0..5_000 {
            let name = split.choose().unwrap().cluster.name.clone();
            counts[name.trim_start_matches("hw|v").parse::<usize>().unwrap() - 1] += 1;
        }
        assert_eq!(counts[0], 0);
        mesh_testkit::assert_binomial("4:1 is 80%", counts[1] as u64, 5_000, 0.8, 4.0);
    }

    #[tokio::test]
    async fn the_chosen_cluster_travels_in_the_request() {
        let (inner, mut handle) = mock();
        let only = cluster("hw", 1, LoadBalancer::RoundRobin);
        let split = Split::new(
            inner,
            vec![WeightedCluster {
                cluster: only.clone(),
                weight: 100,
            }]
            .into(),
            Rng::seeded(1),
        );
        let call = tokio::spawn(split.oneshot(request("/")));
        let (req, send) = handle.next_request().await.unwrap();
        let chosen = crate::body::ctx(&req).cluster.as_ref().unwrap();
        assert!(Arc::ptr_eq(chosen, &only));
        send.send_response(response(200));
        call.await.unwrap().unwrap();
    }
}
