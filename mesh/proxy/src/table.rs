//! A snapshot compiled into the proxy's own lookup tables.
//!
//! The control plane sends a [`Snapshot`]: plain data. Before the proxy uses
//! it, [`Compiled::compile`] turns it into what the request path reads: a
//! domain hash map per listener, anchored regexes, parsed header names, and
//! routes that point straight at their clusters. Anything that does not
//! compile (a bad regex, a route to a cluster the snapshot lacks, weights
//! that add up to zero) rejects the whole snapshot: the proxy NACKs it and
//! keeps serving the last good one, as Envoy does with a bad xDS update.
//!
//! The compiled snapshot is immutable. A new one replaces it in one atomic
//! pointer swap (`arc_swap::ArcSwapOption` in [`crate::proxy`]); a request
//! loads the pointer once and uses that version from start to end.

use std::collections::HashMap;
use std::sync::Arc;

use mesh_api::snapshot::Snapshot;

use crate::cluster::{ClusterRt, EndpointRt, StateStore};
use crate::route::RouteTable;

/// Why a snapshot was rejected. The text goes back to the control plane in
/// the NACK, and `meshctl get proxies` shows it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompileError {
    #[error("route {route:?}: {field} regex {pattern:?} does not compile: {error}")]
    BadRegex {
        route: String,
        field: String,
        pattern: String,
        error: String,
    },
    #[error(
        "route {route:?} sends traffic to cluster {cluster:?}, which is not in the snapshot; \
         check the destination's host and subset (meshctl analyze)"
    )]
    UnknownCluster { route: String, cluster: String },
    #[error("route {route:?} has no destination")]
    NoDestinations { route: String },
    #[error("route {route:?}: every destination has weight 0, so no request could be sent")]
    ZeroWeight { route: String },
    #[error("route {route:?}: {header:?} is not a valid HTTP header")]
    BadHeader { route: String, header: String },
    #[error("route {route:?}: {field} is {value}, expected 0..=100")]
    BadPercentage {
        route: String,
        field: &'static str,
        value: f64,
    },
    #[error("route {route:?}: fault abort status {status} is not an HTTP status (100..=599)")]
    BadAbortStatus { route: String, status: u16 },
    #[error("route {route:?}: unknown retryOn condition {condition:?}")]
    BadRetryOn { route: String, condition: String },
    #[error("domain {domain:?} is listed by two virtual hosts")]
    DuplicateDomain { domain: String },
    #[error("cluster {cluster:?} is defined twice")]
    DuplicateCluster { cluster: String },
    #[error("cluster {cluster:?}: endpoint {instance:?} has no address")]
    EmptyAddress { cluster: String, instance: String },
}

/// The snapshot in use, ready for the request path.
#[derive(Debug)]
pub struct Compiled {
    /// What the control plane sent, for `/config_dump`.
    pub snapshot: Arc<Snapshot>,
    /// Outbound routes (the sidecar's listener).
    pub outbound: RouteTable,
    /// Ingress routes, for a gateway.
    pub gateway: Option<RouteTable>,
    pub clusters: HashMap<String, Arc<ClusterRt>>,
}

impl Compiled {
    /// Compile `snapshot`, reusing per-cluster and per-endpoint state from
    /// `store` for clusters and endpoints that stay.
    pub fn compile(snapshot: Snapshot, store: &StateStore) -> Result<Compiled, CompileError> {
        let mut clusters = HashMap::with_capacity(snapshot.clusters.len());
        for c in &snapshot.clusters {
            // An empty `service` (a hand-written snapshot) falls back to the
            // cluster's name without its subset.
            let service = match c.service.as_str() {
                "" => c.name.split('|').next().unwrap_or(&c.name),
                service => service,
            };
            let endpoints = c
                .endpoints
                .iter()
                .map(|e| {
                    if e.address.is_empty() {
                        return Err(CompileError::EmptyAddress {
                            cluster: c.name.clone(),
                            instance: e.instance.clone(),
                        });
                    }
                    Ok(Arc::new(EndpointRt::new(
                        &e.address,
                        &e.instance,
                        e.labels.clone(),
                        service,
                        store.endpoint(&c.name, &e.address),
                    )))
                })
                .collect::<Result<_, _>>()?;
            let cluster = ClusterRt {
                name: c.name.as_str().into(),
                service: service.into(),
                subset: c.subset.as_deref().map(Into::into),
                load_balancer: c.policy.load_balancer,
                connection_pool: c.policy.connection_pool.clone(),
                outlier_detection: c.policy.outlier_detection.clone(),
                endpoints,
                state: store.cluster(&c.name),
            };
            if clusters.insert(c.name.clone(), Arc::new(cluster)).is_some() {
                return Err(CompileError::DuplicateCluster {
                    cluster: c.name.clone(),
                });
            }
        }
        let outbound = RouteTable::compile(&snapshot.virtual_hosts, &clusters)?;
        let gateway = snapshot
            .gateway
            .as_ref()
            .map(|g| RouteTable::compile(&g.virtual_hosts, &clusters))
            .transpose()?;
        Ok(Compiled {
            snapshot: Arc::new(snapshot),
            outbound,
            gateway,
            clusters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::snapshot::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            version: 1,
            proxy: "test".into(),
            virtual_hosts: vec![VirtualHost {
                name: "hw".into(),
                domains: vec!["hw".into(), "hw:8080".into()],
                routes: vec![HttpRoute {
                    name: "default".into(),
                    destinations: vec![Destination {
                        cluster: "hw".into(),
                        weight: 100,
                    }],
                    ..Default::default()
                }],
            }],
            clusters: vec![Cluster {
                name: "hw".into(),
                service: "hw".into(),
                endpoints: vec![Endpoint {
                    instance: "hw-1".into(),
                    address: "127.0.0.1:1".into(),
                    labels: Default::default(),
                }],
                ..Default::default()
            }],
            gateway: None,
        }
    }

    #[test]
    fn a_good_snapshot_compiles() {
        let compiled = Compiled::compile(snapshot(), &StateStore::default()).unwrap();
        assert!(compiled.outbound.find("hw:8080").is_some());
        assert!(
            compiled.outbound.find("HW").is_some(),
            "authorities ignore case"
        );
        assert!(
            compiled.outbound.find("hw:9090").is_some(),
            "host without port"
        );
        assert!(compiled.outbound.find("other").is_none());
    }

    #[test]
    fn bad_snapshots_are_rejected_with_a_reason() {
        let mut bad_regex = snapshot();
        bad_regex.virtual_hosts[0].routes[0].matches = vec![RouteMatch {
            uri: Some(StringMatch::Regex("(".into())),
            ..Default::default()
        }];
        let mut unknown = snapshot();
        unknown.virtual_hosts[0].routes[0].destinations[0].cluster = "hw|v9".into();
        let mut zero = snapshot();
        zero.virtual_hosts[0].routes[0].destinations[0].weight = 0;
        let mut dup = snapshot();
        dup.virtual_hosts.push(dup.virtual_hosts[0].clone());
        let mut abort = snapshot();
        abort.virtual_hosts[0].routes[0].fault = Some(Fault {
            abort: Some(FaultAbort {
                http_status: 42,
                percentage: 10.0,
            }),
            delay: None,
        });
        let mut retry = snapshot();
        retry.virtual_hosts[0].routes[0].retries.retry_on = vec!["sometimes".into()];

        let cases = [
            (bad_regex, "regex"),
            (unknown, "hw|v9"),
            (zero, "weight 0"),
            (dup, "two virtual hosts"),
            (abort, "42"),
            (retry, "sometimes"),
        ];
        for (snapshot, needle) in cases {
            let err = Compiled::compile(snapshot, &StateStore::default()).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
    }
}
