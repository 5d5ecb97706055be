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
//! | `ConflictingMeshGatewayVirtualServiceHosts` | Warning | two VirtualServices for one host (sidecars): Istio's IST0109; names both and the winner |
//! | `GatewayVirtualServicesMerged` | Info | VirtualServices merged into one gateway host, and in which order |
//! | `GatewayCatchAllShadowed` | Warning | a second catch-all rule for one gateway host: only the first takes effect |
//! | `GatewayRuleShadowed` | Warning | a gateway rule whose every match an older VirtualService of the host takes first |
//! | `ConflictingDestinationRulesHost` | Warning | two DestinationRules for one host both define a subset, or both a top-level policy |
//! | `DestinationRulesMerged` | Info | DestinationRules for one host whose subsets are merged |
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
//!
//! The security kinds' findings (policies that lock everyone out, STRICT
//! with no sidecar to enforce it) are in `analyze_security.rs`.
//!
//! How several rules for one host combine (Istio's order and caveats) is
//! written out in mesh-control's compile.rs; [`merges`] summarises it per
//! resource for `meshctl get` and the dashboard.

use std::collections::{BTreeMap, BTreeSet};

use super::virtual_service::{Destination, HttpRoute};
use super::{ConfigSet, Diagnostic, GatewayHost, Resource, intersect_hosts};
use crate::snapshot::{RouteMatch, StringMatch};
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
    /// Labels of every sidecar instance per service, when known.
    pub(crate) fn instances(&self) -> Option<&BTreeMap<String, Vec<BTreeMap<String, String>>>> {
        self.instances.as_ref()
    }

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

    for (resource, spec) in set.entries() {
        // Security policies in the root namespace apply to the whole mesh.
        let mesh_wide = matches!(
            spec,
            super::Spec::PeerAuthentication(_) | super::Spec::AuthorizationPolicy(_)
        ) && resource.metadata.namespace == super::ROOT_NAMESPACE;
        if !resource.is_routed() && !mesh_wide {
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

    // Subsets defined per service, from every DestinationRule for it (merged).
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
                match set.service_of_host(host) {
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
            analyze_rule(&mut out, set, resource, i, rule, registry, &subsets_of);
        }

        // A rule that matches everything hides the rules after it, in a
        // sidecar. (At a gateway istiod moves catch-all rules last, so the
        // rules after it still run there.)
        if vs.binds_mesh()
            && let Some(i) = vs.http.iter().position(matches_everything)
            && i + 1 < vs.http.len()
        {
            out.add(
                    "Warning",
                    "VirtualServiceUnreachableRule",
                    resource,
                    &format!("spec.http[{}]", i + 1),
                    format!("rule {} matches every request, so for the sidecars the {} rule(s) after it never run; rules are tried in order, put catch-all rules last", i, vs.http.len() - i - 1),
                );
        }
    }

    // --- Several VirtualServices for one host ---
    // Sidecars: the oldest wins (Istio's IST0109 case).
    for conflict in mesh_conflicts(set) {
        let (winner, _) = conflict.winner;
        let (loser, index) = conflict.loser;
        let host = &conflict.host;
        out.add(
            "Warning",
            "ConflictingMeshGatewayVirtualServiceHosts",
            loser,
            &format!("spec.hosts[{index}]"),
            format!("{} and {} both route host `{host}` for the sidecars (the `mesh` gateway). {} is older, so it wins: it was applied first (Istio: created first; same second, by name), and this VirtualService's rules for `{host}` are not used. Istio keeps only one too, and `istioctl analyze` reports IST0109 (undefined behaviour). Merge the rules into one VirtualService", winner.id(), loser.id(), winner.id()),
        );
    }

    // Gateways: every VirtualService for a host is merged, oldest first.
    let mut reported: BTreeSet<(String, String, String)> = BTreeSet::new();
    for (labels, host) in gateway_merges(set, ingresses(set, registry).iter()) {
        let domain = &host.domain;
        let order = host
            .virtual_services
            .iter()
            .map(|(r, _)| format!("{}/{}", r.metadata.namespace, r.metadata.name))
            .collect::<Vec<_>>()
            .join(", ");
        let first_catch_all = host
            .virtual_services
            .iter()
            .find_map(|(r, vs)| vs.http.iter().position(matches_everything).map(|i| (*r, i)));
        for (position, (resource, vs)) in host.virtual_services.iter().enumerate() {
            let key = |code: &str| (resource.id(), code.to_string(), domain.clone());
            // A specific rule whose every match an older VirtualService's
            // specific rule already takes (same match, or a shorter prefix).
            for (i, rule) in vs.http.iter().enumerate() {
                let specific: Vec<&RouteMatch> =
                    rule.matches.iter().filter(|m| !m.is_catch_all()).collect();
                if specific.is_empty() {
                    continue;
                }
                let taken_by = specific.iter().map(|m| {
                    host.virtual_services[..position]
                        .iter()
                        .find_map(|(older, ovs)| {
                            ovs.http.iter().enumerate().find_map(|(j, orule)| {
                                orule
                                    .matches
                                    .iter()
                                    .any(|om| !om.is_catch_all() && takes_all_of(om, m))
                                    .then_some((*older, j))
                            })
                        })
                });
                let owners: Option<Vec<(&Resource, usize)>> = taken_by.collect();
                if let Some(owners) = owners
                    && reported.insert(key(&format!("shadowed {i}")))
                {
                    let by: Vec<String> = owners
                        .iter()
                        .map(|(r, j)| format!("rule {j} of {}", r.id()))
                        .collect();
                    out.add(
                        "Warning",
                        "GatewayRuleShadowed",
                        resource,
                        &format!("spec.http[{i}]"),
                        format!("every request this rule matches for host `{domain}` at the gateway is taken first by {}, which is older: merged VirtualServices are tried oldest first, so this rule never runs. Narrow the older rule, or move this rule into that VirtualService before it", by.join(" and ")),
                    );
                }
            }
            if position > 0 && reported.insert(key("merged")) {
                let (previous, _) = host.virtual_services[position - 1];
                out.add(
                    "Info",
                    "GatewayVirtualServicesMerged",
                    resource,
                    "spec.hosts",
                    format!("at the gateway proxies with {}, host `{domain}` merges the rules of {order}, in that order (Gateways oldest first, then the VirtualServices bound to each, oldest first; catch-all rules last), as Istio merges VirtualServices at a gateway: this one's rules are tried after {}'s", label_text(labels), previous.id()),
                );
            }
            let Some((owner, owner_rule)) = first_catch_all else {
                continue;
            };
            if owner.id() == resource.id() {
                continue;
            }
            if let Some(i) = vs.http.iter().position(matches_everything)
                && reported.insert(key("catch-all"))
            {
                out.add(
                    "Warning",
                    "GatewayCatchAllShadowed",
                    resource,
                    &format!("spec.http[{i}]"),
                    format!("this rule matches every request for host `{domain}` at the gateway, and so does rule {owner_rule} of {}, which is older. Istio moves catch-all rules after all others, and only the first one takes effect: {}'s gets every request no other rule matches, so this one never runs. Keep one default route per gateway host", owner.id(), owner.id()),
                );
            }
        }
    }

    // --- DestinationRules ---
    // Several for one host are merged (see `ConfigSet::destination_rule_for`).
    let mut dr_seen: BTreeMap<String, Vec<(&Resource, &super::DestinationRule)>> = BTreeMap::new();
    for (resource, dr) in set.destination_rules().filter(|(r, _)| r.is_routed()) {
        let older = dr_seen.entry(set.host_key(&dr.host)).or_default();
        let mut conflicts = false;
        for (i, subset) in dr.subsets.iter().enumerate() {
            if let Some((owner, _)) = older.iter().find(|(_, o)| o.subset(&subset.name).is_some()) {
                conflicts = true;
                out.add(
                    "Warning",
                    "ConflictingDestinationRulesHost",
                    resource,
                    &format!("spec.subsets[{i}]"),
                    format!("subset `{}` is also defined by {}, which is older, so its definition is used and this one is ignored (Istio merges the DestinationRules of one host but keeps the first subset of each name). Rename or remove one of them", subset.name, owner.id()),
                );
            }
        }
        if dr.traffic_policy.is_some()
            && let Some((owner, _)) = older.iter().find(|(_, o)| o.traffic_policy.is_some())
        {
            conflicts = true;
            out.add(
                "Warning",
                "ConflictingDestinationRulesHost",
                resource,
                "spec.trafficPolicy",
                format!("{} is older and also sets a top-level trafficPolicy for host `{}`, so its policy is used and this one is ignored (Istio takes the top-level policy of the oldest rule that has one; subsets are merged). Move the policy into one DestinationRule", owner.id(), dr.host),
            );
        }
        if !older.is_empty() && !conflicts {
            let names: Vec<String> = older.iter().map(|(r, _)| r.id()).collect();
            out.add(
                "Info",
                "DestinationRulesMerged",
                resource,
                "spec.host",
                format!("merged with {} for host `{}`: the subsets of all of them apply (as Istio merges DestinationRules of one host)", names.join(", "), dr.host),
            );
        }
        older.push((resource, dr));

        let service = set.service_of_host(&dr.host);
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

    super::analyze_security::analyze(set, registry, &mut out.0);
    out.0
}

// === several rules for one host ===

/// Two mesh-bound VirtualServices for one host: the older one wins.
struct MeshConflict<'a> {
    host: String,
    /// The older VirtualService, and the index of the host in its `hosts`.
    winner: (&'a Resource, usize),
    loser: (&'a Resource, usize),
}

/// Every host two sidecar VirtualServices claim, oldest first, as
/// `ConfigSet::mesh_virtual_services` resolves them.
fn mesh_conflicts(set: &ConfigSet) -> Vec<MeshConflict<'_>> {
    let mut owner: BTreeMap<String, (&Resource, usize)> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (resource, vs) in set
        .virtual_services()
        .filter(|(r, vs)| r.is_routed() && vs.binds_mesh())
    {
        for (i, host) in vs.hosts.iter().enumerate() {
            match owner.get(&set.host_key(host)) {
                Some(winner) if winner.0.id() != resource.id() => conflicts.push(MeshConflict {
                    host: host.clone(),
                    winner: *winner,
                    loser: (resource, i),
                }),
                Some(_) => {}
                None => {
                    owner.insert(set.host_key(host), (resource, i));
                }
            }
        }
    }
    conflicts
}

/// The label sets of the gateway proxies to check: the running ones when
/// known, else one per distinct Gateway selector (two Gateways with the same
/// selector select the same ingress).
fn ingresses(set: &ConfigSet, registry: &Registry) -> Vec<BTreeMap<String, String>> {
    let mut out: Vec<BTreeMap<String, String>> = Vec::new();
    let running = registry.gateways.as_deref().unwrap_or_default();
    let candidates: Vec<BTreeMap<String, String>> = if running.is_empty() {
        set.gateways()
            .filter(|(r, _)| r.is_routed())
            .map(|(_, gw)| gw.selector.clone())
            .collect()
    } else {
        running.to_vec()
    };
    for labels in candidates {
        if !out.contains(&labels) {
            out.push(labels);
        }
    }
    out
}

/// The gateway hosts into which more than one VirtualService is merged, for
/// each ingress, exactly as the compiler merges them.
fn gateway_merges<'a, 'l>(
    set: &'a ConfigSet,
    ingresses: impl Iterator<Item = &'l BTreeMap<String, String>>,
) -> Vec<(&'l BTreeMap<String, String>, GatewayHost<'a>)> {
    ingresses
        .flat_map(|labels| {
            set.gateway_virtual_hosts(labels)
                .hosts
                .into_iter()
                .filter(|h| h.virtual_services.len() > 1)
                .map(move |h| (labels, h))
        })
        .collect()
}

/// For each resource that shares a host with another, a short note of how
/// they combine: `gateway *: 2 of 2 (a-messages + b-hello)`,
/// `mesh helloworld-service: not used, second loses to first`... This is the
/// MERGED column of `meshctl get` and the dashboard's route view. Gateway
/// proxies are taken to be what the Gateways' selectors select.
pub fn merges(set: &ConfigSet) -> BTreeMap<String, Vec<String>> {
    let mut notes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut note = |resource: &Resource, text: String| {
        let list = notes.entry(resource.id()).or_default();
        if !list.contains(&text) {
            list.push(text);
        }
    };
    for c in mesh_conflicts(set) {
        let (winner, _) = c.winner;
        let (loser, _) = c.loser;
        note(
            winner,
            format!("mesh {}: used (older than {})", c.host, loser.metadata.name),
        );
        note(
            loser,
            format!(
                "mesh {}: not used ({} is older)",
                c.host, winner.metadata.name
            ),
        );
    }
    let ingresses = ingresses(set, &Registry::default());
    for (_, host) in gateway_merges(set, ingresses.iter()) {
        let names: Vec<&str> = host
            .virtual_services
            .iter()
            .map(|(r, _)| r.metadata.name.as_str())
            .collect();
        for (i, (resource, _)) in host.virtual_services.iter().enumerate() {
            note(
                resource,
                format!(
                    "gateway {}: {} of {} ({})",
                    host.domain,
                    i + 1,
                    names.len(),
                    names.join(" + ")
                ),
            );
        }
    }
    let mut by_host: BTreeMap<String, Vec<&Resource>> = BTreeMap::new();
    for (resource, dr) in set.destination_rules().filter(|(r, _)| r.is_routed()) {
        by_host
            .entry(set.host_key(&dr.host))
            .or_default()
            .push(resource);
    }
    for (host, rules) in by_host.iter().filter(|(_, rules)| rules.len() > 1) {
        let names: Vec<&str> = rules.iter().map(|r| r.metadata.name.as_str()).collect();
        for (i, resource) in rules.iter().enumerate() {
            note(
                resource,
                format!(
                    "{host}: {} of {} ({})",
                    i + 1,
                    names.len(),
                    names.join(" + ")
                ),
            );
        }
    }
    notes
}

fn analyze_rule(
    out: &mut Findings,
    set: &ConfigSet,
    resource: &Resource,
    index: usize,
    rule: &HttpRoute,
    registry: &Registry,
    subsets_of: &dyn Fn(&str) -> Vec<String>,
) {
    let at = format!("spec.http[{index}]");
    let check_destination = |out: &mut Findings, field: String, d: &Destination| {
        match set.service_of_host(&d.host) {
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

/// Whether every request `newer` matches is also matched by `older`: the
/// same match, or `older` only tests a uri prefix that `newer`'s uri
/// (prefix or exact) starts with. (Envoy's prefix is a plain string prefix.)
fn takes_all_of(older: &RouteMatch, newer: &RouteMatch) -> bool {
    if older == newer {
        return true;
    }
    let only_uri = older.method.is_none()
        && older.headers.is_empty()
        && older.without_headers.is_empty()
        && older.query_params.is_empty();
    match (&older.uri, &newer.uri) {
        (Some(StringMatch::Prefix(p)), Some(StringMatch::Prefix(q) | StringMatch::Exact(q))) => {
            only_uri && q.starts_with(p.as_str())
        }
        _ => false,
    }
}

/// A rule with no conditions, or a catch-all match (`uri: {prefix: /}`),
/// matches every request.
fn matches_everything(rule: &HttpRoute) -> bool {
    rule.matches.is_empty() || rule.matches.iter().any(RouteMatch::is_catch_all)
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
