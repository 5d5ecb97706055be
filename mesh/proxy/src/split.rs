//! Weighted choice among a route's destinations: the canary split
//! (`route[].weight` in an Istio VirtualService, Envoy's weighted clusters).
//!
//! Weights are relative, as in Istio: 80 and 20, or 4 and 1, both send 80% of
//! requests to the first destination. A destination of weight 0 gets nothing.
//! The chosen `Arc<ClusterRt>` goes into the request's extensions for the
//! balancer below.
//!
//! In micromesh the split sits under the retry layer (linkerd2-proxy's
//! order), so a retry draws again; Envoy picks the weighted cluster once per
//! request and retries within it.

use std::sync::Arc;
use std::task::{Context, Poll};

use crate::body::{ProxyService, Req, Rsp, RspFuture};
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
                req.extensions_mut().insert(destination.cluster.clone());
                Box::pin(self.inner.call(req))
            }
            // The compiler rejects routes whose weights are all zero.
            None => Box::pin(async { Err(ProxyError::Internal("a route with no weight")) }),
        }
    }
}
