//! Clusters and endpoints as the request path sees them, and the state that
//! outlives a snapshot.
//!
//! A snapshot's `Cluster` is compiled into a [`ClusterRt`]: its policy plus a
//! list of [`EndpointRt`]. The split layer puts the chosen `Arc<ClusterRt>`
//! into the request's context (`body.rs`'s `RequestCtx`) and the balancer
//! the chosen `Arc<EndpointRt>`, so the layers below know their target (linkerd2-proxy
//! calls these "targets").
//!
//! Some state must survive a new snapshot: the round-robin position, each
//! endpoint's in-flight count, outlier ejections and pooled connections.
//! Envoy keeps a host's state when a cluster update still lists the host; we
//! do the same with a [`StateStore`] keyed by cluster name and endpoint
//! address, consulted only when a snapshot is compiled, never per request.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};

use mesh_api::identity::Identity;
use mesh_api::snapshot::{ConnectionPool, LoadBalancer, OutlierDetection};

use crate::metrics::{Peer, SeriesCache, ServiceName, UNKNOWN};
use crate::outlier::OutlierState;
use crate::pool::ConnPool;

/// One cluster of the snapshot in use.
#[derive(Debug)]
pub struct ClusterRt {
    /// `helloworld-service` or `helloworld-service|v2`.
    pub name: Arc<str>,
    /// The service (`helloworld-service`) and subset (`v2`), for telemetry.
    pub service: Arc<str>,
    pub subset: Option<Arc<str>>,
    pub load_balancer: LoadBalancer,
    pub connection_pool: ConnectionPool,
    pub outlier_detection: Option<OutlierDetection>,
    pub endpoints: Vec<Arc<EndpointRt>>,
    pub state: Arc<ClusterState>,
}

/// Per-cluster state that survives snapshot swaps.
#[derive(Debug, Default)]
pub struct ClusterState {
    /// Next round-robin position.
    pub next: AtomicUsize,
    /// Requests waiting for a connection (circuit breaker: pending requests).
    pub pending: Arc<AtomicU32>,
    /// Requests in flight (circuit breaker: max concurrent requests).
    pub active_requests: Arc<AtomicU32>,
    /// The service's `destination_service*` labels, built on first use.
    pub service_name: OnceLock<Arc<ServiceName>>,
    /// The series of the requests that reached no endpoint (fault aborts,
    /// overflow, no healthy endpoint), as `metrics.rs` caches them.
    pub series: SeriesCache,
}

/// One endpoint of a cluster: an instance's sidecar inbound address.
#[derive(Debug)]
pub struct EndpointRt {
    /// `ip:port` (or `host:port`) dialled for this endpoint.
    pub address: Arc<str>,
    pub instance: Arc<str>,
    pub labels: BTreeMap<String, String>,
    /// Its `app` and `version` labels, ready for the metrics' labels
    /// (`destination_workload`, `destination_version`).
    pub workload: Arc<str>,
    pub version: Arc<str>,
    pub state: Arc<EndpointState>,
    /// The metric series its last request used (`metrics.rs`).
    pub series: SeriesCache,
    /// Its `destination_*` labels, built on its first request
    /// (`telemetry.rs`).
    pub peer: OnceLock<Arc<Peer>>,
    /// Mutual TLS toward it (ISTIO_MUTUAL in the snapshot): the identity
    /// it must prove and this proxy's configs; `None`: plaintext.
    pub mtls: Option<Arc<UpstreamTls>>,
}

/// How a connection to an ISTIO_MUTUAL endpoint is secured.
#[derive(Debug)]
pub struct UpstreamTls {
    /// The SPIFFE identity the endpoint's certificate must carry.
    pub expected: Identity,
    pub mesh: Arc<crate::tls::MeshTls>,
}

/// Where an endpoint's state (its pools above all) is kept: by address,
/// and for mutual TLS by the identity expected too, so a plaintext and a
/// TLS connection (or two server identities) never share a pool.
pub fn state_key(address: &str, mtls: Option<&Identity>) -> String {
    match mtls {
        None => address.to_string(),
        Some(identity) => format!("{address} mtls {identity}"),
    }
}

impl EndpointRt {
    /// An endpoint of `service`; its workload is its `app` label, else the
    /// service, and its version its `version` label, else `unknown`.
    pub fn new(
        address: &str,
        instance: &str,
        labels: BTreeMap<String, String>,
        service: &str,
        state: Arc<EndpointState>,
    ) -> EndpointRt {
        EndpointRt {
            address: address.into(),
            instance: instance.into(),
            workload: labels.get("app").map_or(service, |s| s.as_str()).into(),
            version: labels.get("version").map_or(UNKNOWN, |s| s.as_str()).into(),
            labels,
            state,
            series: SeriesCache::default(),
            peer: OnceLock::new(),
            mtls: None,
        }
    }

    /// The same endpoint, reached over mutual TLS.
    pub fn with_mtls(mut self, mtls: Option<Arc<UpstreamTls>>) -> EndpointRt {
        self.mtls = mtls;
        self
    }

    /// Its key in the [`StateStore`].
    pub fn state_key(&self) -> String {
        state_key(&self.address, self.mtls.as_ref().map(|m| &m.expected))
    }
}

/// Per-endpoint state that survives snapshot swaps.
#[derive(Debug, Default)]
pub struct EndpointState {
    /// Requests sent and not yet answered (least-request reads it).
    pub in_flight: AtomicUsize,
    pub outlier: OutlierState,
    pub pool: ConnPool,
    /// The shared HTTP/2 connection, for requests that arrived as HTTP/2.
    pub h2: crate::h2::H2Conn,
}

/// Where per-cluster and per-endpoint state lives between snapshots.
#[derive(Debug, Default)]
pub struct StateStore {
    inner: Mutex<StoreInner>,
    /// The proxy's mTLS configs, for the endpoints that need them (`None`:
    /// a store of a proxy that only speaks plaintext, as in unit tests).
    mesh_tls: Option<Arc<crate::tls::MeshTls>>,
}

#[derive(Debug, Default)]
struct StoreInner {
    clusters: HashMap<String, Arc<ClusterState>>,
    endpoints: HashMap<(String, String), Arc<EndpointState>>,
}

impl StateStore {
    /// A store whose ISTIO_MUTUAL endpoints use `mesh_tls`.
    pub fn with_tls(mesh_tls: Arc<crate::tls::MeshTls>) -> StateStore {
        StateStore {
            mesh_tls: Some(mesh_tls),
            ..StateStore::default()
        }
    }

    pub fn mesh_tls(&self) -> Option<&Arc<crate::tls::MeshTls>> {
        self.mesh_tls.as_ref()
    }

    /// The state of cluster `name`: the existing one, or a new one.
    pub fn cluster(&self, name: &str) -> Arc<ClusterState> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.clusters.entry(name.to_string()).or_default().clone()
    }

    /// The state of the endpoint at `address` in cluster `cluster`.
    ///
    /// Keyed per cluster, as Envoy does: `helloworld-service` and
    /// `helloworld-service|v1` each keep their own pool to the same instance.
    pub fn endpoint(&self, cluster: &str, address: &str) -> Arc<EndpointState> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .endpoints
            .entry((cluster.to_string(), address.to_string()))
            .or_default()
            .clone()
    }

    /// Forget the state of every cluster and endpoint not in `clusters` (the
    /// snapshot now in use): their pooled connections close once the last
    /// in-flight request lets go of them.
    pub fn retain<'a>(&self, clusters: impl IntoIterator<Item = &'a ClusterRt>) {
        let mut keep_clusters = std::collections::HashSet::new();
        let mut keep_endpoints = std::collections::HashSet::new();
        for cluster in clusters {
            keep_clusters.insert(cluster.name.to_string());
            for endpoint in &cluster.endpoints {
                keep_endpoints.insert((cluster.name.to_string(), endpoint.state_key()));
            }
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .clusters
            .retain(|name, _| keep_clusters.contains(name));
        inner
            .endpoints
            .retain(|key, _| keep_endpoints.contains(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn state_is_shared_until_retain_drops_it() {
        let store = StateStore::default();
        let a = store.endpoint("hw", "127.0.0.1:1");
        a.in_flight.store(3, Ordering::Relaxed);
        let again = store.endpoint("hw", "127.0.0.1:1");
        assert_eq!(
            again.in_flight.load(Ordering::Relaxed),
            3,
            "same state for the same endpoint"
        );
        let other = store.endpoint("hw|v1", "127.0.0.1:1");
        assert_eq!(
            other.in_flight.load(Ordering::Relaxed),
            0,
            "each cluster has its own"
        );

        store.retain(std::iter::empty());
        let fresh = store.endpoint("hw", "127.0.0.1:1");
        assert_eq!(
            fresh.in_flight.load(Ordering::Relaxed),
            0,
            "forgotten once unused"
        );
    }
}
