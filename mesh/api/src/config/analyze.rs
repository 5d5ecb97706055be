//! Cross-reference analysis: what is valid YAML but still will not work.
//!
//! Istio accepts a VirtualService that routes to a subset no DestinationRule
//! defines, and the request then fails with a 503 ("no healthy upstream")
//! that says nothing about the typo. `istioctl analyze` finds these after
//! the fact; micromesh runs the same kind of checks on every apply and
//! answers them with the change, using istioctl's codes where one exists:
//!
//! | code | level | finding |
//! | --- | --- | --- |
//! | `ReferencedResourceNotFound` | Error | a subset or a Gateway that nothing defines |
//! | `ReferencedResourceNotFound` | Warning | a destination host with no service |
//! | `ConflictingMeshGatewayVirtualServiceHosts` | Warning | two VirtualServices for one host (sidecars) |
//! | `ConflictingGatewayVirtualServiceHosts` | Warning | two VirtualServices for one host on one Gateway |
//! | `ConflictingDestinationRulesHost` | Warning | two DestinationRules for one host |
//! | `VirtualServiceHostNotFoundInGateway` | Warning | a host none of the bound Gateways serves |
//! | `VirtualServiceUnreachableRule` | Warning | a rule after one that matches everything |
//! | `SubsetSelectsNoInstances` | Warning | a subset whose labels no running instance has |
//! | `GatewaySelectsNoProxy` | Warning | a Gateway whose selector no gateway proxy matches |
//! | `GatewayHasNoRoutes` | Warning | a Gateway no VirtualService binds to |
//! | `WildcardHostNotSupported` | Warning | a `*.example.com` host (the gateway matches exact hosts or `*`) |
//! | `PortNotFound` | Warning | a destination port other than the services' 8080 |
//! | `NamespaceNotRouted` | Warning | a resource outside namespace `default` |
//! | `FaultInjectsNothing` | Info | a fault with no `percentage` (Istio injects 0%) |
//! | `RetriesDisabled` | Info | `retries` without `attempts`, or retries on a fault route |
//! | `Deprecated` | Info | Istio's old `LEAST_CONN` |

use std::collections::{BTreeMap, BTreeSet};

use super::virtual_service::{Destination, HttpRoute};
use super::{ConfigSet, Diagnostic, Resource, host_key, intersect_hosts, service_of_host};
use crate::snapshot::StringMatch;
use crate::xds::{ProxyAnnounce, ProxyMode, ports};

/// What analysis knows about the running mesh.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    services: BTreeSet<String>,
    /// Labels of every sidecar instance per service, when known.
    instances: Option<BTreeMap<String, Vec<BTreeMap<String, String>>>>,
    /// Labels of every gateway proxy, when known.
    gateways: Option<Vec<BTreeMap<String, String>>>,
}

impl Registry {
    pub(crate) fn from_services(services: &[String]) -> Registry {
        Registry {
            services: services.iter().cloned().collect(),
            ..Registry::default()
        }
    }

    pub(crate) fn from_proxies(proxies: &[ProxyAnnounce]) -> Registry {
        let mut registry = Registry {
            instances: Some(BTreeMap::new()),
            gateways: Some(Vec::new()),
            ..Registry::default()
        };
        for proxy in proxies {
            // The same labels the compiler gives an endpoint: `app` and
            // `version` are implied by the announce.
            let mut labels = proxy.labels.clone();
            labels
                .entry("app".into())
                .or_insert_with(|| proxy.service.clone());
            if !proxy.version.is_empty() {
                labels
                    .entry("version".into())
                    .or_insert_with(|| proxy.version.clone());
            }
            match proxy.mode {
                ProxyMode::Sidecar => {
                    registry.services.insert(proxy.service.clone());
                    if let Some(instances) = registry.instances.as_mut() {
                        instances
                            .entry(proxy.service.clone())
                            .or_default()
                            .push(labels);
                    }
                }
                ProxyMode::Gateway => {
                    if let Some(gateways) = registry.gateways.as_mut() {
                        gateways.push(labels);
                    }
                }
            }
        }
        registry
    }
}

/// Collects findings with less ceremony.
struct Findings(Vec<Diagnostic>);

impl Findings {
    fn add(&mut self, level: &str, code: &str, resource: &Resource, field: &str, message: String) {
        self.0.push(Diagnostic {
            level: level.to_string(),
            code: code.to_string(),
            resource: resource.id(),
            field: field.to_string(),
            message,
        });
    }
}

pub(crate) fn analyze(set: &ConfigSet, registry: &Registry) -> Vec<Diagnostic> {
    let mut out = Findings(Vec::new());

    for (resource, _) in set.entries() {
        if !resource.is_routed() {
            out.add(
                "Warning",
                "NamespaceNotRouted",
                resource,
                "metadata.namespace",
                format!(
                    "micromesh routes only namespace `default`; this resource is stored but changes nothing. Remove `namespace: {}`",
                    resource.metadata.namespace
                ),
            );
        }
    }

    // Subsets defined per service, from the DestinationRule in force.
    let subsets_of = |service: &str| -> Vec<String> {
        set.destination_rule_for(service)
            .map(|(_, dr)| dr.subsets.iter().map(|s| s.name.clone()).collect())
            .unwrap_or_default()
    };
    let routed_gateways: Vec<(&Resource, &super::Gateway)> =
        set.gateways().filter(|(r, _)| r.is_routed()).collect();

    // --- VirtualServices ---
    for (resource, vs) in set.virtual_services().filter(|(r, _)| r.is_routed()) {
        let namespace = resource.metadata.namespace.as_str();

        if vs.binds_mesh() {
            for (i, host) in vs.hosts.iter().enumerate() {
                let field = format!("spec.hosts[{i}]");
                match service_of_host(host) {
                    Some(service) if !registry.services.contains(service) => out.add(
                        "Warning",
                        "ReferencedResourceNotFound",
                        resource,
                        &field,
                        format!("no service `{service}` is registered; these routes apply once it runs ({})", known(registry)),
                    ),
                    None => out.add(
                        "Warning",
                        "ReferencedResourceNotFound",
                        resource,
                        &field,
                        format!("`{host}` is not a service in the mesh: sidecars route only to mesh services (`name` or `name.default.svc.cluster.local`)"),
                    ),
                    _ => {}
                }
            }
        }

        // Gateways named must exist, and each host should be served by one.
        let bound: Vec<(usize, &str, &str)> = vs
            .gateways
            .iter()
            .enumerate()
            .filter(|(_, g)| *g != super::virtual_service::MESH_GATEWAY)
            .map(|(i, g)| {
                let (ns, name) = g.split_once('/').unwrap_or((namespace, g.as_str()));
                (i, ns, name)
            })
            .collect();
        let mut bound_gateways = Vec::new();
        for (i, ns, name) in &bound {
            match routed_gateways
                .iter()
                .find(|(r, _)| r.metadata.namespace == *ns && r.metadata.name == *name)
            {
                Some(found) => bound_gateways.push(*found),
                None => out.add(
                    "Error",
                    "ReferencedResourceNotFound",
                    resource,
                    &format!("spec.gateways[{i}]"),
                    format!(
                        "no Gateway `{ns}/{name}` is applied ({}): these routes are served by no gateway",
                        names(routed_gateways.iter().map(|(r, _)| r.metadata.name.as_str()))
                    ),
                ),
            }
        }
        if !bound_gateways.is_empty() {
            for (i, host) in vs.hosts.iter().enumerate() {
                if host.starts_with("*.") {
                    out.add(
                        "Warning",
                        "WildcardHostNotSupported",
                        resource,
                        &format!("spec.hosts[{i}]"),
                        format!("micromesh's gateway matches hosts exactly, or everything with `*`; `{host}` matches no request. Name each host, or use `'*'`"),
                    );
                }
                let served = bound_gateways
                    .iter()
                    .any(|(_, gw)| gw.hosts().any(|h| intersect_hosts(h, host).is_some()));
                if !served {
                    out.add(
                        "Warning",
                        "VirtualServiceHostNotFoundInGateway",
                        resource,
                        &format!("spec.hosts[{i}]"),
                        format!("none of the bound Gateways serves host `{host}`: add it to a server's `hosts`, or use `'*'`"),
                    );
                }
            }
        }

        for (i, rule) in vs.http.iter().enumerate() {
            analyze_rule(&mut out, resource, i, rule, registry, &subsets_of);
        }

        // A rule that matches everything hides the rules after it.
        if let Some(i) = vs.http.iter().position(matches_everything)
            && i + 1 < vs.http.len()
        {
            out.add(
                    "Warning",
                    "VirtualServiceUnreachableRule",
                    resource,
                    &format!("spec.http[{}]", i + 1),
                    format!("rule {} matches every request, so the {} rule(s) after it never run; rules are tried in order, put catch-all rules last", i, vs.http.len() - i - 1),
                );
        }
    }

    // --- Conflicts between VirtualServices ---
    let mut mesh_owner: BTreeMap<String, &Resource> = BTreeMap::new();
    for (resource, vs) in set
        .virtual_services()
        .filter(|(r, vs)| r.is_routed() && vs.binds_mesh())
    {
        for (i, host) in vs.hosts.iter().enumerate() {
            match mesh_owner.get(&host_key(host)) {
                Some(owner) if owner.id() != resource.id() => out.add(
                    "Warning",
                    "ConflictingMeshGatewayVirtualServiceHosts",
                    resource,
                    &format!("spec.hosts[{i}]"),
                    format!("{} also routes host `{host}` for the sidecars and is older, so it wins; this VirtualService's routes for `{host}` are not used (Istio also uses only one). Merge the rules into one VirtualService", owner.id()),
                ),
                Some(_) => {}
                None => {
                    mesh_owner.insert(host_key(host), resource);
                }
            }
        }
    }
    let mut gateway_owner: BTreeMap<(String, String), &Resource> = BTreeMap::new();
    for (resource, vs) in set.virtual_services().filter(|(r, _)| r.is_routed()) {
        for (_, gateway) in vs.bound_gateways(&resource.metadata.namespace) {
            for (i, host) in vs.hosts.iter().enumerate() {
                let key = (gateway.to_string(), host_key(host));
                match gateway_owner.get(&key) {
                    Some(owner) if owner.id() != resource.id() => out.add(
                        "Warning",
                        "ConflictingGatewayVirtualServiceHosts",
                        resource,
                        &format!("spec.hosts[{i}]"),
                        format!("{} also routes host `{host}` on Gateway `{gateway}` and is older, so micromesh uses its routes only (Istio would merge both rule lists). Merge the rules into one VirtualService", owner.id()),
                    ),
                    Some(_) => {}
                    None => {
                        gateway_owner.insert(key, resource);
                    }
                }
            }
        }
    }

    // --- DestinationRules ---
    let mut dr_owner: BTreeMap<String, &Resource> = BTreeMap::new();
    for (resource, dr) in set.destination_rules().filter(|(r, _)| r.is_routed()) {
        let key = host_key(&dr.host);
        if let Some(owner) = dr_owner.get(&key) {
            out.add(
                "Warning",
                "ConflictingDestinationRulesHost",
                resource,
                "spec.host",
                format!("{} is also for host `{}` and is older, so it is the one in force; this one is not used. Merge the subsets into one DestinationRule", owner.id(), dr.host),
            );
            continue;
        }
        dr_owner.insert(key, resource);

        let service = service_of_host(&dr.host);
        match service {
            Some(service) if !registry.services.contains(service) => out.add(
                "Warning",
                "ReferencedResourceNotFound",
                resource,
                "spec.host",
                format!(
                    "no service `{service}` is registered; this rule applies once it runs ({})",
                    known(registry)
                ),
            ),
            None if dr.host.contains('*') => {}
            None => out.add(
                "Warning",
                "ReferencedResourceNotFound",
                resource,
                "spec.host",
                format!(
                    "`{}` is not a service in the mesh; this rule changes nothing",
                    dr.host
                ),
            ),
            _ => {}
        }

        if let (Some(service), Some(instances)) = (service, registry.instances.as_ref()) {
            let running = instances
                .get(service)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if !running.is_empty() {
                for (i, subset) in dr.subsets.iter().enumerate() {
                    if !running.iter().any(|labels| subset.selects(labels)) {
                        let have: BTreeSet<String> = running
                            .iter()
                            .filter_map(|l| l.get("version").map(|v| format!("version={v}")))
                            .collect();
                        out.add(
                            "Warning",
                            "SubsetSelectsNoInstances",
                            resource,
                            &format!("spec.subsets[{i}].labels"),
                            format!(
                                "subset `{}` selects {}, which no running instance of `{service}` has (they have {}); requests routed to it get 503 \"no healthy upstream\"",
                                subset.name,
                                label_text(&subset.labels),
                                names(have.iter().map(String::as_str))
                            ),
                        );
                    }
                }
            }
        }

        let policies = std::iter::once((
            "spec.trafficPolicy".to_string(),
            &resource.spec["trafficPolicy"],
        ))
        .chain((0..dr.subsets.len()).map(|i| {
            (
                format!("spec.subsets[{i}].trafficPolicy"),
                &resource.spec["subsets"][i]["trafficPolicy"],
            )
        }));
        for (path, policy) in policies {
            if policy["loadBalancer"]["simple"].as_str() == Some("LEAST_CONN") {
                out.add(
                    "Info",
                    "Deprecated",
                    resource,
                    &format!("{path}.loadBalancer.simple"),
                    "LEAST_CONN is Istio's old name for LEAST_REQUEST (both pick the instance with fewer active requests); write LEAST_REQUEST".into(),
                );
            }
        }
    }

    // --- Gateways ---
    for (resource, gateway) in &routed_gateways {
        let bound = set.virtual_services().any(|(r, vs)| {
            r.is_routed()
                && vs.bound_gateways(&r.metadata.namespace).any(|(ns, name)| {
                    ns == resource.metadata.namespace && name == resource.metadata.name
                })
        });
        if !bound {
            out.add(
                "Warning",
                "GatewayHasNoRoutes",
                resource,
                "",
                format!("no VirtualService binds to this Gateway, so the gateway proxies it selects answer 404 to every request; add `gateways: [{}]` to a VirtualService", resource.metadata.name),
            );
        }
        for (s, server) in gateway.servers.iter().enumerate() {
            for (h, host) in server.hosts.iter().enumerate() {
                if super::gateway::strip_namespace(host).starts_with("*.") {
                    out.add(
                        "Warning",
                        "WildcardHostNotSupported",
                        resource,
                        &format!("spec.servers[{s}].hosts[{h}]"),
                        format!("micromesh's gateway matches hosts exactly, or everything with `*`; `{host}` only serves VirtualService hosts it names exactly"),
                    );
                }
            }
        }
        if let Some(proxies) = registry.gateways.as_ref()
            && !proxies.iter().any(|labels| gateway.selects(labels))
        {
            out.add(
                    "Warning",
                    "GatewaySelectsNoProxy",
                    resource,
                    "spec.selector",
                    format!(
                        "no running gateway proxy has the labels {}; micromesh's gateway announces `istio: ingressgateway`",
                        label_text(&gateway.selector)
                    ),
                );
        }
    }

    out.0
}

fn analyze_rule(
    out: &mut Findings,
    resource: &Resource,
    index: usize,
    rule: &HttpRoute,
    registry: &Registry,
    subsets_of: &dyn Fn(&str) -> Vec<String>,
) {
    let at = format!("spec.http[{index}]");
    let check_destination = |out: &mut Findings, field: String, d: &Destination| {
        match service_of_host(&d.host) {
            Some(service) => {
                if !registry.services.contains(service) {
                    out.add(
                        "Warning",
                        "ReferencedResourceNotFound",
                        resource,
                        &format!("{field}.host"),
                        format!("no service `{service}` is registered ({}): requests get 503 \"no healthy upstream\" until it runs", known(registry)),
                    );
                }
                if let Some(subset) = &d.subset {
                    let defined = subsets_of(service);
                    if !defined.contains(subset) {
                        let where_ = if defined.is_empty() {
                            format!("no DestinationRule defines subsets for `{service}`")
                        } else {
                            format!("the DestinationRule for `{service}` defines {}", names(defined.iter().map(String::as_str)))
                        };
                        out.add(
                            "Error",
                            "ReferencedResourceNotFound",
                            resource,
                            &format!("{field}.subset"),
                            format!("subset `{subset}` is not defined: {where_}. Requests routed here get 503 \"no healthy upstream\" (Istio answers the same, silently); add the subset to a DestinationRule with `host: {service}`"),
                        );
                    }
                }
            }
            None => out.add(
                "Warning",
                "ReferencedResourceNotFound",
                resource,
                &format!("{field}.host"),
                format!("`{}` is not a service in the mesh; micromesh routes only to mesh services (Istio would need a ServiceEntry), so requests get 503", d.host),
            ),
        }
        if let Some(port) = d.port
            && port != ports::SERVICE
        {
            out.add(
                    "Warning",
                    "PortNotFound",
                    resource,
                    &format!("{field}.port.number"),
                    format!("micromesh services listen on port {} only; port {port} is ignored here, but would not match the service on Istio", ports::SERVICE),
                );
        }
    };

    for (i, destination) in rule.route.iter().enumerate() {
        check_destination(
            out,
            format!("{at}.route[{i}].destination"),
            &destination.destination,
        );
    }
    if let Some(mirror) = &rule.mirror {
        check_destination(out, format!("{at}.mirror"), &mirror.destination);
    }

    if let Some(fault) = &rule.fault {
        if fault.delay.as_ref().is_some_and(|d| d.percentage.is_none()) {
            out.add(
                "Info",
                "FaultInjectsNothing",
                resource,
                &format!("{at}.fault.delay"),
                "a delay without `percentage` delays no request (Istio's rule too); add `percentage: {value: 100}`".into(),
            );
        }
        if fault.abort.as_ref().is_some_and(|a| a.percentage.is_none()) {
            out.add(
                "Info",
                "FaultInjectsNothing",
                resource,
                &format!("{at}.fault.abort"),
                "an abort without `percentage` aborts no request (Istio's rule too); add `percentage: {value: 100}`".into(),
            );
        }
        if rule.retries.is_some() {
            out.add(
                "Info",
                "RetriesDisabled",
                resource,
                &format!("{at}.retries"),
                "a route with a fault gets no retries in micromesh (Istio's fault filter sits before the router, so injected faults are never retried); split the fault into its own rule to keep retries".into(),
            );
        }
    }
    if let Some(retries) = &rule.retries
        && retries.attempts.is_none()
        && rule.fault.is_none()
    {
        out.add(
                "Info",
                "RetriesDisabled",
                resource,
                &format!("{at}.retries"),
                "`retries` without `attempts` turns retries off (Istio reads a missing `attempts` as 0); add `attempts: 3`".into(),
            );
    }
}

/// A rule with no conditions, or only `uri: {prefix: /}`, matches every request.
fn matches_everything(rule: &HttpRoute) -> bool {
    rule.matches.is_empty()
        || rule.matches.iter().any(|m| {
            m.method.is_none()
                && m.headers.is_empty()
                && m.without_headers.is_empty()
                && m.query_params.is_empty()
                && match &m.uri {
                    None => true,
                    Some(StringMatch::Prefix(p)) => p == "/" || p.is_empty(),
                    Some(StringMatch::Regex(r)) => r == ".*",
                    Some(StringMatch::Exact(_)) => false,
                }
        })
}

fn known(registry: &Registry) -> String {
    if registry.services.is_empty() {
        "no services are registered yet".to_string()
    } else {
        format!(
            "registered: {}",
            names(registry.services.iter().map(String::as_str))
        )
    }
}

fn names<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.map(|s| format!("`{s}`")).collect();
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

fn label_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "no labels".to_string();
    }
    labels
        .iter()
        .map(|(k, v)| format!("`{k}: {v}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
