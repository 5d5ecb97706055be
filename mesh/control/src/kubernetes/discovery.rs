//! Kubernetes Services, EndpointSlices and Pods -> the workloads the snapshot
//! compiler routes to.
//!
//! This is the Kubernetes twin of `registry.rs`. Locally a sidecar's lease
//! says whether it gets traffic; on a cluster the kubelet runs the readiness
//! probes and the EndpointSlice controller writes the verdict into the
//! Service's EndpointSlices. istiod reads those slices, not the Pods, to
//! build Envoy's endpoints, and so do we:
//!
//! ```text
//! EndpointSlice (label kubernetes.io/service-name: helloworld-service)
//!   endpoints[i].addresses[0]          10.244.1.7      -> endpoint 10.244.1.7:15006 (the sidecar's inbound port)
//!   endpoints[i].conditions.ready      true/false/nil  -> in the rotation only when ready (nil means ready)
//!   endpoints[i].conditions.terminating               -> out of the rotation at once
//!   endpoints[i].targetRef Pod/name    -> the Pod: labels (`version`, subsets), service account
//! ```
//!
//! A terminating pod's endpoint keeps `serving: true` while its app drains,
//! but `ready` turns false the moment deletion starts: Istio (and we) take
//! it out of the rotation then, before the process stops.
//!
//! It is a pure function of the objects, so every rule is unit-tested here
//! without an API server; `source.rs` keeps the objects current.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_api::xds::{ProxyAnnounce, ProxyMode, ports};

use crate::compile::Workload;

/// The label the EndpointSlice controller puts on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The pod label that names a workload's version (Istio's convention, and
/// what DestinationRule subsets select on).
pub const VERSION_LABEL: &str = "version";

/// The workloads of every Service in `services`, one per (service, pod),
/// sorted by service then instance name. An endpoint that is not ready is
/// kept, unhealthy: its service still exists for the compiler (a call gets
/// 503 "no healthy upstream", not "no route"), as with an expired lease.
pub fn workloads(services: &[&Service], slices: &[&EndpointSlice], pods: &[&Pod]) -> Vec<Workload> {
    let pods: BTreeMap<&str, &Pod> = pods
        .iter()
        .filter_map(|pod| Some((pod.metadata.name.as_deref()?, *pod)))
        .collect();
    // (service, instance) -> workload: a pod listed in two slices of one
    // Service (an IPv4 and an IPv6 slice, or during a slice rebalance) is
    // one endpoint, healthy if any listing says so.
    let mut found: BTreeMap<(String, String), Workload> = BTreeMap::new();
    for service in services {
        let Some(name) = service.metadata.name.as_deref() else {
            continue;
        };
        if is_external_name(service) {
            // An alias for a DNS name outside the cluster: no endpoints.
            continue;
        }
        for slice in slices.iter().filter(|s| slice_service(s) == Some(name)) {
            for endpoint in slice.endpoints.iter().flatten() {
                let Some(address) = endpoint.addresses.first() else {
                    continue;
                };
                let conditions = endpoint.conditions.as_ref();
                // Kubernetes: "a nil value should be interpreted as true".
                let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
                let healthy = ready && !terminating;

                let pod_name = endpoint
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.as_deref());
                let pod = pod_name.and_then(|p| pods.get(p).copied());
                let instance = match pod_name {
                    Some(pod) => pod.to_string(),
                    // An endpoint written by hand (no Pod behind it).
                    None => format!("{name}-{}", address.replace([':', '.'], "-")),
                };
                let labels = pod
                    .and_then(|p| p.metadata.labels.clone())
                    .unwrap_or_default();
                let version = labels.get(VERSION_LABEL).cloned().unwrap_or_default();
                let announce = ProxyAnnounce {
                    identity: None,
                    instance: instance.clone(),
                    mode: ProxyMode::Sidecar,
                    service: name.to_string(),
                    version,
                    labels,
                    address: socket(address, ports::INBOUND),
                    ready: healthy,
                    admin_address: socket(address, ports::ADMIN),
                };
                found
                    .entry((name.to_string(), instance))
                    .and_modify(|w| w.healthy |= healthy)
                    .or_insert(Workload { announce, healthy });
            }
        }
    }
    found.into_values().collect()
}

/// The service account a pod runs as: its workload identity, as Istio's
/// SPIFFE ID `spiffe://cluster.local/ns/NS/sa/SA` names it.
pub fn service_account(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default")
}

fn slice_service(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)
        .map(String::as_str)
}

fn is_external_name(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_some_and(|t| t == "ExternalName")
}

/// `10.0.0.1:15006`, `[fd00::1]:15006`.
fn socket(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(name: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "guestbook"},
            "spec": {"ports": [{"name": "http", "port": 8080}]}
        }))
        .unwrap()
    }

    fn pod(name: &str, app: &str, version: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "guestbook",
                         "labels": {"app": app, "version": version}},
            "spec": {"serviceAccountName": app, "containers": []}
        }))
        .unwrap()
    }

    /// One slice of `service`: (pod, ip, ready, terminating) per endpoint.
    fn slice(service: &str, endpoints: &[(&str, &str, Option<bool>, bool)]) -> EndpointSlice {
        let endpoints: Vec<_> = endpoints
            .iter()
            .map(|(pod, ip, ready, terminating)| {
                json!({
                    "addresses": [ip],
                    "conditions": {"ready": ready, "serving": true, "terminating": terminating},
                    "targetRef": {"kind": "Pod", "name": pod, "namespace": "guestbook"}
                })
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-abc"), "namespace": "guestbook",
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "endpoints": endpoints
        }))
        .unwrap()
    }

    fn summary(workloads: &[Workload]) -> Vec<String> {
        workloads
            .iter()
            .map(|w| {
                let a = &w.announce;
                format!(
                    "{} {} {} {} {}",
                    a.service,
                    a.instance,
                    a.version,
                    a.address,
                    if w.healthy { "healthy" } else { "unhealthy" }
                )
            })
            .collect()
    }

    #[test]
    fn ready_endpoints_become_healthy_workloads_with_their_pods_version() {
        let services = [service("helloworld-service")];
        let slices = [slice(
            "helloworld-service",
            &[
                ("hw-v1-a", "10.0.0.1", Some(true), false),
                ("hw-v2-b", "10.0.0.2", None, false),
            ],
        )];
        let pods = [
            pod("hw-v1-a", "helloworld-service", "v1"),
            pod("hw-v2-b", "helloworld-service", "v2"),
        ];
        let got = workloads(
            &services.iter().collect::<Vec<_>>(),
            &slices.iter().collect::<Vec<_>>(),
            &pods.iter().collect::<Vec<_>>(),
        );
        assert_eq!(
            summary(&got),
            [
                "helloworld-service hw-v1-a v1 10.0.0.1:15006 healthy",
                // `ready: nil` means ready.
                "helloworld-service hw-v2-b v2 10.0.0.2:15006 healthy",
            ]
        );
        assert_eq!(got[0].announce.labels["app"], "helloworld-service");
        assert_eq!(service_account(&pods[0]), "helloworld-service");
    }

    #[test]
    fn unready_and_terminating_endpoints_leave_the_rotation_but_keep_the_service() {
        let services = [service("hw")];
        let slices = [slice(
            "hw",
            &[
                ("hw-a", "10.0.0.1", Some(false), false),
                // Terminating: the kubelet may still report ready for a
                // moment; the pod leaves the rotation anyway.
                ("hw-b", "10.0.0.2", Some(true), true),
            ],
        )];
        let pods = [pod("hw-a", "hw", "v1"), pod("hw-b", "hw", "v1")];
        let got = workloads(
            &services.iter().collect::<Vec<_>>(),
            &slices.iter().collect::<Vec<_>>(),
            &pods.iter().collect::<Vec<_>>(),
        );
        assert_eq!(
            summary(&got),
            [
                "hw hw-a v1 10.0.0.1:15006 unhealthy",
                "hw hw-b v1 10.0.0.2:15006 unhealthy"
            ]
        );
    }

    #[test]
    fn slices_of_other_services_and_external_names_are_ignored() {
        let mut external = service("db");
        external.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        let services = [service("hw"), external];
        let slices = [
            slice("hw", &[("hw-a", "10.0.0.1", Some(true), false)]),
            slice("not-ours", &[("x", "10.0.0.9", Some(true), false)]),
            slice("db", &[("db-a", "10.0.0.8", Some(true), false)]),
        ];
        let got = workloads(
            &services.iter().collect::<Vec<_>>(),
            &slices.iter().collect::<Vec<_>>(),
            &[],
        );
        // No Pod object (yet): the endpoint still counts, without labels.
        assert_eq!(summary(&got), ["hw hw-a  10.0.0.1:15006 healthy"]);
    }

    #[test]
    fn a_pod_in_two_slices_is_one_endpoint() {
        let services = [service("hw")];
        let mut second = slice("hw", &[("hw-a", "10.0.0.1", Some(true), false)]);
        second.metadata.name = Some("hw-def".into());
        let slices = [
            slice("hw", &[("hw-a", "10.0.0.1", Some(false), false)]),
            second,
        ];
        let got = workloads(
            &services.iter().collect::<Vec<_>>(),
            &slices.iter().collect::<Vec<_>>(),
            &[],
        );
        assert_eq!(summary(&got), ["hw hw-a  10.0.0.1:15006 healthy"]);
    }
}
