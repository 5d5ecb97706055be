//! A snapshot compiled into the proxy's own lookup tables.
//!
//! The control plane sends a [`Snapshot`]: plain data. Before the proxy uses
//! it, [`Compiled::compile`] turns it into what the request path reads: a
//! domain hash map per listener, anchored regexes, parsed header names, and
//! routes that point straight at their clusters. Anything that does not
//! compile (a bad regex, a route to a cluster the snapshot lacks, weights
//! that add up to zero) fails [`Compiled::compile`]. The checks are
//! `mesh_api::check`, the same ones the control plane runs before it
//! commits a change, so a snapshot it sends should never fail here. If one
//! does, `Shared::apply` (`crate::proxy`) applies what passes and keeps the
//! last good version of only the rejected virtual host, then NACKs the
//! version: one bad rule never holds back endpoint changes.
//!
//! The compiled snapshot is immutable. A new one replaces it in one atomic
//! pointer swap (`arc_swap::ArcSwapOption` in [`crate::proxy`]); a request
//! loads the pointer once and uses that version from start to end.

use std::collections::HashMap;
use std::sync::Arc;

use mesh_api::snapshot::{Snapshot, TlsMode};

use crate::cluster::{ClusterRt, EndpointRt, StateStore, UpstreamTls, state_key};
use crate::route::RouteTable;

/// Why a snapshot was rejected: the error of the one check shared with the
/// control plane (`mesh_api::check`), so both sides word it the same.
pub use mesh_api::check::SnapshotError as CompileError;

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
        // The check the control plane ran before it sent this: anything it
        // would refuse is refused here too, so the two cannot disagree. The
        // conversions below then cannot fail on a field; their errors stay
        // as a second line of defence.
        mesh_api::check::check_snapshot(&snapshot)?;
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
                    // ISTIO_MUTUAL: the identity the control plane expects
                    // this endpoint to prove (a proxy without TLS configs,
                    // a unit test's store, speaks plaintext).
                    let mtls = match (e.tls_mode, &e.identity, store.mesh_tls()) {
                        (TlsMode::IstioMutual, Some(expected), Some(mesh)) => {
                            Some(Arc::new(UpstreamTls {
                                expected: expected.clone(),
                                mesh: mesh.clone(),
                            }))
                        }
                        _ => None,
                    };
                    let key = state_key(&e.address, mtls.as_ref().map(|m| &m.expected));
                    Ok(Arc::new(
                        EndpointRt::new(
                            &e.address,
                            &e.instance,
                            e.labels.clone(),
                            service,
                            store.endpoint(&c.name, &key),
                        )
                        .with_mtls(mtls),
                    ))
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
                    identity: None,
                    tls_mode: Default::default(),
                }],
                ..Default::default()
            }],
            gateway: None,
            inbound: Default::default(),
            trust_bundle: Vec::new(),
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
                grpc_status: None,
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

    /// The shared check (`mesh_api::check`) and the `http` crate the proxy
    /// parses with agree on every byte: a name or value the control plane
    /// lets through is one the proxy can build, and the other way round.
    #[test]
    fn the_shared_header_checks_agree_with_the_http_crate() {
        for b in 0u8..=255 {
            let one = [b];
            let text = String::from_utf8_lossy(&one).into_owned();
            let name = format!("x{}", text.to_ascii_lowercase());
            assert_eq!(
                mesh_api::check::header_name(&name),
                http::HeaderName::from_bytes(name.as_bytes()).is_ok(),
                "header name {name:?}"
            );
            let value = format!("a{text}b");
            assert_eq!(
                mesh_api::check::header_value(&value),
                http::HeaderValue::from_str(&value).is_ok(),
                "header value {value:?}"
            );
        }
    }
}
