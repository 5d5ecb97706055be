//! The snapshot compiler: registry + applied config -> one proxy's `Snapshot`.
//!
//! This is what istiod does when it turns Kubernetes Services, Endpoints and
//! Istio resources into Envoy's listeners, routes and clusters. It is a pure
//! function, so every rule is unit-tested without a server.
//!
//! With no VirtualService a service gets one virtual host whose single route
//! sends everything to the whole service, round-robin, with Istio's default
//! retries: exactly what a fresh Istio mesh does.

use std::collections::BTreeMap;

use mesh_api::config::ConfigSet;
use mesh_api::snapshot::{
    Cluster, Destination, Endpoint, GatewayConfig, HttpRoute, RetryPolicy, Snapshot, VirtualHost,
};
use mesh_api::xds::{ProxyAnnounce, ProxyMode, ports};

/// A registered sidecar and whether it may receive traffic.
#[derive(Clone, Debug)]
pub struct Workload {
    pub announce: ProxyAnnounce,
    /// Live lease and app ready.
    pub healthy: bool,
}

/// Until Gateway resources are applied, the ingress sends everything here.
pub const DEFAULT_INGRESS_SERVICE: &str = "guestbook-ui";

/// Compile the snapshot for `proxy` at `version`.
pub fn compile(
    _config: &ConfigSet,
    workloads: &[Workload],
    proxy: &ProxyAnnounce,
    version: u64,
) -> Snapshot {
    // Every service that has at least one registered instance, healthy or not:
    // a service whose instances are all down answers 503 "no healthy
    // upstream" (UH), not "no route" (NR).
    let mut services: BTreeMap<&str, Vec<Endpoint>> = BTreeMap::new();
    for workload in workloads {
        let a = &workload.announce;
        if a.mode != ProxyMode::Sidecar {
            continue;
        }
        let endpoints = services.entry(a.service.as_str()).or_default();
        if workload.healthy {
            endpoints.push(endpoint_of(a));
        }
    }

    let clusters = services
        .iter()
        .map(|(service, endpoints)| Cluster {
            name: Cluster::name_for(service, None),
            service: service.to_string(),
            subset: None,
            policy: Default::default(),
            endpoints: endpoints.clone(),
        })
        .collect();
    let virtual_hosts = services
        .keys()
        .map(|service| default_virtual_host(service))
        .collect();

    let gateway = (proxy.mode == ProxyMode::Gateway).then(|| GatewayConfig {
        gateways: Vec::new(),
        virtual_hosts: vec![VirtualHost {
            name: format!("ingress -> {DEFAULT_INGRESS_SERVICE}"),
            domains: vec!["*".to_string()],
            routes: vec![default_route(DEFAULT_INGRESS_SERVICE)],
        }],
    });

    Snapshot {
        version,
        proxy: proxy.instance.clone(),
        virtual_hosts,
        clusters,
        gateway,
    }
}

/// The authorities a service answers to: its short name, with the service
/// port, and the Kubernetes DNS forms, so the same app config works everywhere.
pub fn domains_for(service: &str) -> Vec<String> {
    let names = [
        service.to_string(),
        format!("{service}.default"),
        format!("{service}.default.svc"),
        format!("{service}.default.svc.cluster.local"),
    ];
    names
        .iter()
        .flat_map(|name| [name.clone(), format!("{name}:{}", ports::SERVICE)])
        .collect()
}

fn default_virtual_host(service: &str) -> VirtualHost {
    VirtualHost {
        name: service.to_string(),
        domains: domains_for(service),
        routes: vec![default_route(service)],
    }
}

fn default_route(service: &str) -> HttpRoute {
    HttpRoute {
        name: "default".to_string(),
        matches: Vec::new(),
        destinations: vec![Destination {
            cluster: Cluster::name_for(service, None),
            weight: 100,
        }],
        retries: RetryPolicy::default(),
        ..Default::default()
    }
}

fn endpoint_of(announce: &ProxyAnnounce) -> Endpoint {
    let mut labels = announce.labels.clone();
    labels
        .entry("app".to_string())
        .or_insert_with(|| announce.service.clone());
    labels
        .entry("version".to_string())
        .or_insert_with(|| announce.version.clone());
    Endpoint {
        instance: announce.instance.clone(),
        address: announce.address.clone(),
        labels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(instance: &str, service: &str, version: &str, port: u16) -> ProxyAnnounce {
        ProxyAnnounce {
            instance: instance.into(),
            mode: ProxyMode::Sidecar,
            service: service.into(),
            version: version.into(),
            labels: BTreeMap::new(),
            address: format!("127.0.0.1:{port}"),
            ready: true,
            admin_address: String::new(),
        }
    }

    #[test]
    fn without_config_every_service_gets_a_default_route_and_only_healthy_endpoints() {
        let ui = sidecar("ui-1", "guestbook-ui", "v1", 1000);
        let workloads = vec![
            Workload {
                announce: ui.clone(),
                healthy: true,
            },
            Workload {
                announce: sidecar("hw-1", "helloworld-service", "v1", 1001),
                healthy: true,
            },
            Workload {
                announce: sidecar("hw-2", "helloworld-service", "v2", 1002),
                healthy: false,
            },
        ];
        let snapshot = compile(&ConfigSet::default(), &workloads, &ui, 3);
        assert_eq!(snapshot.version, 3);
        assert_eq!(snapshot.proxy, "ui-1");
        let hw = snapshot
            .clusters
            .iter()
            .find(|c| c.name == "helloworld-service")
            .unwrap();
        assert_eq!(
            hw.endpoints.len(),
            1,
            "the unhealthy instance gets no traffic"
        );
        assert_eq!(hw.endpoints[0].labels["version"], "v1");
        let vh = snapshot
            .virtual_hosts
            .iter()
            .find(|v| v.name == "helloworld-service")
            .unwrap();
        assert!(vh.domains.contains(&"helloworld-service:8080".to_string()));
        assert_eq!(vh.routes[0].retries, RetryPolicy::default());
        assert!(snapshot.gateway.is_none(), "a sidecar serves no ingress");
    }

    #[test]
    fn the_gateway_sends_everything_to_the_ui_by_default() {
        let gw = ProxyAnnounce {
            mode: ProxyMode::Gateway,
            ..sidecar("gw", "ingressgateway", "", 0)
        };
        let snapshot = compile(&ConfigSet::default(), &[], &gw, 1);
        let gateway = snapshot.gateway.unwrap();
        assert_eq!(gateway.virtual_hosts[0].domains, vec!["*"]);
        assert_eq!(
            gateway.virtual_hosts[0].routes[0].destinations[0].cluster,
            "guestbook-ui"
        );
    }
}
