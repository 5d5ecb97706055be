//! The snapshot compiler: registry + applied config -> one proxy's `Snapshot`.
//!
//! This is what istiod does when it turns Kubernetes Services, Endpoints and
//! Istio resources into Envoy's listeners, routes and clusters. It is a pure
//! function, so every rule is unit-tested without a server.
//!
//! With no VirtualService a service gets one virtual host whose single route
//! sends everything to the whole service, round-robin, with Istio's default
//! retries: exactly what a fresh Istio mesh does. Config changes that:
//!
//! ```text
//! VirtualService (bound to `mesh`)  -> one VirtualHost per host, its http[] rules as routes
//! VirtualService (bound to Gateway) -> the gateway's VirtualHosts, for the Gateway's hosts
//! DestinationRule                   -> one Cluster per subset (`service|v2`), traffic policies
//! Gateway                           -> which gateway proxies serve what
//! ```
//!
//! A few rules worth knowing, all Istio's:
//! - weights are relative; a single destination gets 100 whatever it says;
//! - a fault with no `percentage` injects nothing;
//! - no `retries` means Istio's default retry policy, `attempts: 0` none;
//! - the route timeout is off unless set.
//!
//! Several resources for one host are combined as istiod combines them
//! (checked against istio/istio's `pilot/pkg/networking/core/gateway.go`,
//! `route.SortVHostRoutes`, `model.configCompareByCreationTime` and
//! `model.mergeDestinationRule`):
//! - **Sidecars** (the `mesh` gateway): one VirtualService per host, the
//!   oldest. Envoy's route table cannot hold one domain twice, so istiod
//!   keeps the first and drops the duplicate; `istioctl analyze` calls
//!   this IST0109, "undefined behavior". `meshctl analyze` names both
//!   resources and the winner (`ConflictingMeshGatewayVirtualServiceHosts`).
//! - **Gateways**: every VirtualService bound to a Gateway that selects this
//!   gateway proxy is merged into each host it meets, in istiod's order:
//!   the Gateways that select the proxy, oldest first; for each, its bound
//!   VirtualServices, oldest first (so with one Gateway, or two Gateways that
//!   bind the same VirtualServices, simply creation order). Rules keep their
//!   order within a VirtualService. Then, as `SortVHostRoutes` does, every
//!   catch-all match (no match, `uri: {prefix: /}` or `uri: {regex: .*}`
//!   with no other condition) is moved after all other rules, keeping its
//!   order: the first catch-all then takes whatever nothing else matched and
//!   the others never match (`meshctl analyze`: `GatewayCatchAllShadowed`).
//!   This holds for a lone VirtualService too: at a gateway its rules after
//!   a catch-all still run (in a sidecar they never do). A specific rule an
//!   older VirtualService already matches never runs (`GatewayRuleShadowed`).
//!   A rule with a catch-all match beside other matches is split the way
//!   Envoy sees it: one route per match, so only its catch-all part moves.
//!   A VirtualService that reaches a host through two Gateways counts once
//!   (istiod appends its routes again, where they can never match).
//!   Each route's `origin` names its VirtualService in `/config_dump`.
//! - **DestinationRules** for one service: the subsets of all of them, oldest
//!   first (a subset name already defined keeps the older definition), and
//!   the top-level `trafficPolicy` of the oldest one that has one
//!   (`ConfigSet::destination_rule_for`; analysis reports the conflicts).
//!
//! "Oldest" is Istio's creation time, with ties broken by name, then
//! namespace. micromesh's local store has no clock: a resource is older
//! when it was applied first (within one file, the earlier document), and
//! re-applying keeps its age, like a Kubernetes object's
//! `creationTimestamp`. With `--source kubernetes` the order is the
//! objects' `creationTimestamp`, then name.
//! Not implemented, so rejected by name when applied: `delegate`
//! (VirtualService chaining) and `exportTo` (micromesh has one namespace).
//!
//! Security (issue 17) is compiled in two places:
//! - **inbound** (`Snapshot::inbound`): the proxy's own effective
//!   PeerAuthentication mode (workload over namespace over the root
//!   namespace `istio-system`, Istio's default PERMISSIVE, `portLevelMtls`
//!   per port) and the AuthorizationPolicies that select it. These depend
//!   on the proxy's labels, so they are the one part of a sidecar's
//!   snapshot that is not shared: [`inbound_policy`] is compiled per sidecar
//!   and watch.rs pastes it beside the shared routes and clusters (a few
//!   microseconds per proxy; the routes stay compiled once per version).
//!   Shipping every policy and letting each proxy choose would cost the
//!   same and put Istio's scoping rules in two programs.
//! - **endpoints** (`Endpoint::tls_mode`, `Endpoint::identity`): the
//!   DestinationRule's `tls.mode` (port level first) when it sets one, else
//!   Istio's auto mTLS: ISTIO_MUTUAL to an endpoint whose sidecar holds a
//!   certificate (it announced an identity) unless that workload's own
//!   PeerAuthentication is DISABLE, plaintext otherwise. The identity
//!   expected is the one the endpoint's sidecar announced (the control plane
//!   checked it: its bootstrap token, later its client certificate); on a
//!   cluster the pod's service account (`kubernetes/workload_identity.rs`).
//!   ISTIO_MUTUAL toward an endpoint with no identity known expects
//!   `spiffe://cluster.local/ns/<namespace>/sa/<service>`, the local
//!   convention. The workload port that `portLevelMtls` and
//!   `portLevelSettings` name is the service port, 8080 (the Guestbook's
//!   apps listen on it in their pods).
//!
//! And micromesh's own choices, each explained where it is made:
//! - a route with a fault gets no retries;
//! - a destination no instance serves still gets a cluster, an empty one, so
//!   the proxy answers 503 "no healthy upstream" (and `meshctl analyze` says
//!   why) instead of rejecting the whole snapshot;
//! - with no Gateway resource at all, the gateway sends everything to the
//!   Guestbook UI, so `meshctl up` serves the Guestbook on :8080 out of the box.

use std::collections::BTreeMap;

use mesh_api::config::destination_rule::ClientTlsMode;
use mesh_api::config::virtual_service::{self as vs, VirtualService};
use mesh_api::config::{ConfigSet, MtlsMode, ROOT_NAMESPACE, Resource, names_of_service};
use mesh_api::identity::Identity;
use mesh_api::snapshot::{
    AppliedAuthorizationPolicy, Cluster, Destination, Endpoint, Fault, FaultAbort, FaultDelay,
    GatewayConfig, HttpRoute, InboundPolicy, Mirror, RetryPolicy, RouteMatch, Snapshot,
    StringMatch, TlsMode, VirtualHost,
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
///
/// For a sidecar the result depends on `proxy` only through the `proxy`
/// field: watch.rs compiles once per version and shares it between all
/// sidecars. (Per-sidecar scoping, Istio's `Sidecar` resource or `exportTo`,
/// would have to change that cache too.)
pub fn compile(
    config: &ConfigSet,
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

    let mut clusters = Clusters {
        config,
        services: &services,
        built: BTreeMap::new(),
    };
    // Envoy (via istiod) gets a cluster per service and per subset whether
    // or not a route uses it; so does micromesh's proxy.
    for service in services.keys() {
        clusters.cluster(service, None);
        if let Some((_, dr)) = config.destination_rule_for(service) {
            for subset in &dr.subsets {
                clusters.cluster(service, Some(&subset.name));
            }
        }
    }

    // --- outbound: what this proxy's app may call ---
    let mut virtual_hosts = Vec::new();
    let mut covered: Vec<String> = Vec::new();
    for (resource, virtual_service, hosts) in config.mesh_virtual_services() {
        for host in hosts {
            let routes = compile_routes(resource, virtual_service, &mut clusters);
            let (name, domains) = match config.service_of_host(host) {
                Some(service) => (
                    service.to_string(),
                    domains_for(service, config.namespace()),
                ),
                // A host that is no service of the mesh (`example.com`):
                // the app may still call it through its sidecar.
                None => (
                    host.to_string(),
                    vec![host.to_string(), format!("{host}:{}", ports::SERVICE)],
                ),
            };
            covered.push(config.host_key(host));
            virtual_hosts.push(VirtualHost {
                name,
                domains,
                routes,
            });
        }
    }
    for service in services.keys() {
        if !covered.iter().any(|c| c == service) {
            virtual_hosts.push(default_virtual_host(service, config.namespace()));
        }
    }

    // --- ingress, for a gateway proxy ---
    let gateway =
        (proxy.mode == ProxyMode::Gateway).then(|| compile_gateway(config, proxy, &mut clusters));

    Snapshot {
        version,
        proxy: proxy.instance.clone(),
        virtual_hosts,
        clusters: clusters.built.into_values().collect(),
        gateway,
        inbound: inbound_policy(config, proxy),
        // The CA's roots: watch.rs adds them (they come from the CA, not
        // from the config this function compiles).
        trust_bundle: Vec::new(),
    }
}

/// The part of a proxy's snapshot that is its own: for a sidecar, the mTLS
/// mode its inbound listener runs and the AuthorizationPolicies that select
/// it; for a gateway, the AuthorizationPolicies that select it (no mTLS:
/// its callers are users, outside the mesh).
///
/// Which policies reach a gateway: Istio's ingress gateway runs in
/// `istio-system`, the root namespace, so the policies that apply to it are
/// the root namespace's, those whose selector picks its labels (`istio:
/// ingressgateway`, the usual way) and those with no selector (mesh-wide).
/// A policy of the workloads' namespace is not the gateway's, as in Istio
/// (micromesh's gateway runs in `mesh-system` on a cluster, beside the
/// control plane, in that role). The gateway enforces them where a user's
/// request is admitted (mesh/proxy/src/outbound.rs).
pub fn inbound_policy(config: &ConfigSet, proxy: &ProxyAnnounce) -> InboundPolicy {
    let applied = |policies: Vec<(&Resource, &mesh_api::config::AuthorizationPolicy)>| {
        policies
            .into_iter()
            .map(|(resource, spec)| AppliedAuthorizationPolicy {
                name: format!("{}/{}", resource.metadata.namespace, resource.metadata.name),
                spec: spec.clone(),
            })
            .collect()
    };
    let labels = endpoint_of(proxy).labels;
    match proxy.mode {
        ProxyMode::Sidecar => InboundPolicy {
            mtls: config.effective_mtls(&labels),
            authorization_policies: applied(config.authorization_policies_for(&labels)),
        },
        ProxyMode::Gateway => InboundPolicy {
            authorization_policies: applied(
                config
                    .authorization_policies_for(&labels)
                    .into_iter()
                    .filter(|(r, _)| r.metadata.namespace == ROOT_NAMESPACE)
                    .collect(),
            ),
            ..InboundPolicy::default()
        },
    }
}

/// The authorities a service in `namespace` answers to: its short name and
/// the Kubernetes DNS forms (`helloworld-service.guestbook`,
/// `...guestbook.svc`, `...guestbook.svc.cluster.local`), each bare and with
/// the service port, so the same app config works locally (namespace
/// `default`) and on a cluster. Envoy's virtual host domains from istiod
/// list the same forms; names in other namespaces are other services.
pub fn domains_for(service: &str, namespace: &str) -> Vec<String> {
    names_of_service(service, namespace)
        .into_iter()
        .flat_map(|name| {
            let with_port = format!("{name}:{}", ports::SERVICE);
            [name, with_port]
        })
        .collect()
}

// === gateway ===

/// What the gateway serves: the VirtualServices bound to the Gateways that
/// select this proxy, merged per host (`ConfigSet::gateway_virtual_hosts`
/// decides which and in what order; the module doc gives Istio's rules).
///
/// Istio builds one Envoy listener per Gateway server port; micromesh's
/// gateway has one HTTP listener (8080 locally, 80 in a cluster), so every
/// HTTP server of a selected Gateway is served there and only its hosts
/// matter (gateway.rs in mesh-api explains the choice).
fn compile_gateway(
    config: &ConfigSet,
    proxy: &ProxyAnnounce,
    clusters: &mut Clusters,
) -> GatewayConfig {
    if !config.gateways().any(|(r, _)| r.is_routed()) {
        // No Gateway resource yet: keep the quick start working. (Istio's
        // gateway would listen on nothing and refuse connections.) The UI's
        // cluster exists even before the UI registers (empty: 503), or the
        // proxy would reject the whole snapshot for a missing cluster.
        clusters.cluster(DEFAULT_INGRESS_SERVICE, None);
        return GatewayConfig {
            gateways: Vec::new(),
            virtual_hosts: vec![VirtualHost {
                name: format!("ingress -> {DEFAULT_INGRESS_SERVICE}"),
                domains: vec!["*".to_string()],
                routes: vec![default_route(DEFAULT_INGRESS_SERVICE)],
            }],
        };
    }

    let mut labels = proxy.labels.clone();
    labels
        .entry("app".to_string())
        .or_insert_with(|| proxy.service.clone());
    let served = config.gateway_virtual_hosts(&labels);

    // Domains merged from the same VirtualServices share one virtual host
    // (istiod's `collapseDuplicateRoutes` does the same for Envoy).
    let mut virtual_hosts: Vec<(Vec<String>, VirtualHost)> = Vec::new();
    for host in &served.hosts {
        let ids: Vec<String> = host.virtual_services.iter().map(|(r, _)| r.id()).collect();
        if let Some((_, vh)) = virtual_hosts.iter_mut().find(|(seen, _)| *seen == ids) {
            vh.domains.push(host.domain.clone());
            continue;
        }
        let routes = host
            .virtual_services
            .iter()
            .flat_map(|(resource, vs)| compile_routes(resource, vs, clusters))
            .collect();
        let names: Vec<&str> = host
            .virtual_services
            .iter()
            .map(|(r, _)| r.metadata.name.as_str())
            .collect();
        virtual_hosts.push((
            ids,
            VirtualHost {
                // Completed with its domains below, once all are known.
                name: names.join(" + "),
                domains: vec![host.domain.clone()],
                routes: catch_all_last(routes),
            },
        ));
    }

    GatewayConfig {
        gateways: served
            .gateways
            .iter()
            .map(|r| format!("{}/{}", r.metadata.namespace, r.metadata.name))
            .collect(),
        virtual_hosts: virtual_hosts
            .into_iter()
            .map(|(_, mut vh)| {
                // `* (a-messages + b-hello)`: the proxy's 404 names it.
                vh.name = format!("{} ({})", vh.domains.join(", "), vh.name);
                vh
            })
            .collect(),
    }
}

/// istiod's `SortVHostRoutes` for a gateway host: catch-all routes move
/// after every other route, each group keeping its order, so the rules of
/// a newer VirtualService are not hidden behind an older one's default.
///
/// Envoy's routes have one match each (istiod writes a route per `match`
/// entry); micromesh's route keeps them together, so a route with both
/// kinds is split in two: its specific matches stay, its catch-all ones move.
fn catch_all_last(routes: Vec<HttpRoute>) -> Vec<HttpRoute> {
    let mut specific = Vec::new();
    let mut catch_all = Vec::new();
    for route in routes {
        if route.matches.is_empty() {
            catch_all.push(route);
            continue;
        }
        let (everything, some): (Vec<RouteMatch>, Vec<RouteMatch>) =
            route.matches.iter().cloned().partition(is_catch_all);
        if !some.is_empty() {
            specific.push(HttpRoute {
                matches: some,
                ..route.clone()
            });
        }
        if !everything.is_empty() {
            catch_all.push(HttpRoute {
                matches: everything,
                ..route
            });
        }
    }
    specific.extend(catch_all);
    specific
}

/// Envoy's `IsCatchAllRoute` for one match: path prefix `/` or regex `.*`
/// and nothing else (a method match is a header match in Envoy).
fn is_catch_all(m: &RouteMatch) -> bool {
    let path_matches_all = match &m.uri {
        None => true,
        Some(StringMatch::Prefix(p)) => p == "/" || p.is_empty(),
        Some(StringMatch::Regex(r)) => r == ".*",
        Some(StringMatch::Exact(_)) => false,
    };
    path_matches_all
        && m.method.is_none()
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
}

// === routes ===

fn compile_routes(
    resource: &Resource,
    virtual_service: &VirtualService,
    clusters: &mut Clusters,
) -> Vec<HttpRoute> {
    virtual_service
        .http
        .iter()
        .enumerate()
        .map(|(index, rule)| compile_route(resource, index, rule, clusters))
        .collect()
}

/// One `http[]` rule of a VirtualService, resolved against the clusters.
fn compile_route(
    resource: &Resource,
    index: usize,
    rule: &vs::HttpRoute,
    clusters: &mut Clusters,
) -> HttpRoute {
    // Istio: a single destination takes all the traffic whatever its weight;
    // with several, an unset weight is 0 and the rest are relative shares.
    let single = rule.route.len() == 1;
    let destinations = rule
        .route
        .iter()
        .map(|d| Destination {
            cluster: clusters.for_destination(&d.destination),
            weight: if single { 100 } else { d.weight.unwrap_or(0) },
        })
        .collect();

    // Istio: a fault without `percentage` injects into 0% of requests. A
    // `grpcStatus` abort becomes its code number and HTTP 200, which is
    // what istiod hands Envoy's fault filter (`abort.grpc_status`) and what
    // that filter answers with.
    let fault = rule.fault.as_ref().map(|f| Fault {
        delay: f.delay.as_ref().map(|d| FaultDelay {
            fixed_delay_ms: d.fixed_delay_ms,
            percentage: d.percentage.unwrap_or(0.0),
        }),
        abort: f.abort.as_ref().map(|a| {
            let grpc_status = a.grpc_status.as_deref().and_then(vs::grpc_status_code);
            FaultAbort {
                http_status: match grpc_status {
                    Some(_) => 200,
                    // The parser set one of the two; 503 is never reached.
                    None => a.http_status.unwrap_or(503),
                },
                grpc_status,
                percentage: a.percentage.unwrap_or(0.0),
            }
        }),
    });

    let mirror = rule.mirror.as_ref().map(|m| Mirror {
        cluster: clusters.for_destination(&m.destination),
        // Istio mirrors every request when `mirrorPercentage` is not set.
        percentage: m.percentage.unwrap_or(100.0),
    });

    HttpRoute {
        name: rule
            .name
            .clone()
            .unwrap_or_else(|| format!("{}[{index}]", resource.metadata.name)),
        origin: Some(format!(
            "{}/{}",
            resource.metadata.namespace, resource.metadata.name
        )),
        matches: rule.matches.clone(),
        destinations,
        retries: retry_policy(rule),
        fault,
        timeout_ms: rule.timeout_ms,
        request_headers: rule.request_headers.clone(),
        response_headers: rule.response_headers.clone(),
        rewrite_uri: rule.rewrite_uri.clone(),
        mirror,
    }
}

/// istiod's `retry.ConvertPolicy`, plus one micromesh rule for faults.
fn retry_policy(rule: &vs::HttpRoute) -> RetryPolicy {
    // In Envoy the fault filter runs before the router, so an injected abort
    // or delay is never retried. micromesh's proxy runs fault inside the
    // route's stack; turning retries off for a route with a fault keeps what
    // the learner sees equal to the percentage they wrote.
    if rule.fault.is_some() {
        return RetryPolicy::none();
    }
    let Some(retries) = &rule.retries else {
        // Nothing written: Istio's default policy.
        return RetryPolicy::default();
    };
    // Istio reads a missing `attempts` as 0, which turns retries off.
    let attempts = retries.attempts.unwrap_or(0);
    if attempts == 0 {
        return RetryPolicy::none();
    }
    let mut policy = RetryPolicy {
        attempts,
        per_try_timeout_ms: retries.per_try_timeout_ms,
        ..RetryPolicy::default()
    };
    if let Some(on) = &retries.retry_on {
        // A written `retryOn` replaces the default conditions *and* the
        // default status codes; plain codes in it are retriable status codes.
        policy.retry_on = on.conditions.clone();
        policy.retriable_status_codes = on.status_codes.clone();
        if !on.status_codes.is_empty()
            && !policy
                .retry_on
                .iter()
                .any(|c| c == "retriable-status-codes")
        {
            policy.retry_on.push("retriable-status-codes".to_string());
        }
    }
    policy
}

fn default_virtual_host(service: &str, namespace: &str) -> VirtualHost {
    VirtualHost {
        name: service.to_string(),
        domains: domains_for(service, namespace),
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

// === clusters ===

/// The clusters of one snapshot, built on demand so every route destination
/// has one (a snapshot that names a missing cluster is rejected by the proxy).
struct Clusters<'a> {
    config: &'a ConfigSet,
    /// Registered services and their healthy endpoints.
    services: &'a BTreeMap<&'a str, Vec<Endpoint>>,
    built: BTreeMap<String, Cluster>,
}

impl Clusters<'_> {
    /// The cluster for a route destination or mirror.
    fn for_destination(&mut self, destination: &vs::Destination) -> String {
        match self.config.service_of_host(&destination.host) {
            Some(service) => self.cluster(service, destination.subset.as_deref()),
            None => {
                // A host outside the mesh: an empty cluster, so the request
                // gets 503 instead of the proxy rejecting the snapshot.
                let host = destination.host.to_ascii_lowercase();
                let name = Cluster::name_for(&host, destination.subset.as_deref());
                self.built.entry(name.clone()).or_insert_with(|| Cluster {
                    name: name.clone(),
                    service: host,
                    subset: destination.subset.clone(),
                    policy: Default::default(),
                    endpoints: Vec::new(),
                });
                name
            }
        }
    }

    /// The cluster of a service, or of one of its subsets: endpoints whose
    /// labels the subset selects, and the DestinationRule's merged policy.
    fn cluster(&mut self, service: &str, subset: Option<&str>) -> String {
        let name = Cluster::name_for(service, subset);
        if self.built.contains_key(&name) {
            return name;
        }
        // Every DestinationRule for the service, merged (subsets from all).
        let rule = self.config.destination_rule_for(service).map(|(_, dr)| dr);
        let all = self
            .services
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let endpoints = match subset {
            None => all.to_vec(),
            Some(subset_name) => match rule.as_ref().and_then(|dr| dr.subset(subset_name)) {
                Some(subset) => all
                    .iter()
                    .filter(|e| subset.selects(&e.labels))
                    .cloned()
                    .collect(),
                // No DestinationRule defines this subset: no endpoints, so
                // the proxy answers 503 "no healthy upstream" (UH), as Envoy
                // does for Istio; `meshctl analyze` reports the missing subset.
                None => Vec::new(),
            },
        };
        let policy = rule
            .as_ref()
            .map(|dr| dr.policy_for(subset))
            .unwrap_or_default();
        // The DestinationRule's `tls.mode` toward the service port, the
        // subset's over the rule's; `None`: auto mTLS, endpoint by endpoint.
        let written_tls = rule.as_ref().and_then(|dr| {
            let own = dr.traffic_policy.clone().unwrap_or_default();
            let merged = match subset.and_then(|name| dr.subset(name)) {
                Some(found) => match &found.traffic_policy {
                    Some(sub) => own.merge(sub),
                    None => own,
                },
                None => own,
            };
            merged.tls_for_port(ports::SERVICE)
        });
        let namespace = self.config.namespace().to_string();
        let endpoints = endpoints
            .into_iter()
            .map(|e| secure_endpoint(self.config, &namespace, service, written_tls, e))
            .collect();
        self.built.insert(
            name.clone(),
            Cluster {
                name: name.clone(),
                service: service.to_string(),
                subset: subset.map(str::to_string),
                policy,
                endpoints,
            },
        );
        name
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
        identity: announce.identity.clone(),
        tls_mode: TlsMode::Disable,
    }
}

/// How a client reaches `endpoint` of `service`: see the opening comment.
fn secure_endpoint(
    config: &ConfigSet,
    namespace: &str,
    service: &str,
    written: Option<ClientTlsMode>,
    mut endpoint: Endpoint,
) -> Endpoint {
    endpoint.tls_mode = match written {
        Some(ClientTlsMode::IstioMutual) => TlsMode::IstioMutual,
        Some(ClientTlsMode::Disable) => TlsMode::Disable,
        // Auto mTLS: a sidecar with a certificate, not told to refuse TLS.
        None if endpoint.identity.is_some()
            && config
                .effective_mtls(&endpoint.labels)
                .for_port(ports::SERVICE)
                != MtlsMode::Disable =>
        {
            TlsMode::IstioMutual
        }
        None => TlsMode::Disable,
    };
    if endpoint.tls_mode == TlsMode::IstioMutual && endpoint.identity.is_none() {
        endpoint.identity = Some(Identity::new(namespace, service));
    }
    endpoint
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::config::SourceFile;
    use mesh_api::snapshot::{LoadBalancer, StringMatch};

    fn sidecar(instance: &str, service: &str, version: &str, port: u16) -> ProxyAnnounce {
        ProxyAnnounce {
            identity: None,
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

    fn gateway_proxy() -> ProxyAnnounce {
        ProxyAnnounce {
            mode: ProxyMode::Gateway,
            labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
            address: String::new(),
            ..sidecar("gw", "ingressgateway", "", 0)
        }
    }

    /// Two versions of helloworld-service and one guestbook-ui, all healthy.
    fn guestbook() -> Vec<Workload> {
        [
            sidecar("ui-1", "guestbook-ui", "v1", 1000),
            sidecar("hw-1", "helloworld-service", "v1", 1001),
            sidecar("hw-2", "helloworld-service", "v2", 1002),
        ]
        .into_iter()
        .map(|announce| Workload {
            announce,
            healthy: true,
        })
        .collect()
    }

    /// A ConfigSet from YAML, through the same parse + apply as the API.
    fn config(yaml: &str) -> ConfigSet {
        let resources = ConfigSet::parse(&[SourceFile {
            name: "test.yaml".into(),
            content: yaml.into(),
        }])
        .unwrap_or_else(|e| panic!("test YAML is invalid:\n{e}"));
        ConfigSet::default().apply(resources).0
    }

    /// hw-1 and hw-2 hold certificates (they announced their identity),
    /// ui-1 has none.
    fn guestbook_with_identities() -> Vec<Workload> {
        let mut workloads = guestbook();
        for w in &mut workloads {
            if w.announce.service == "helloworld-service" {
                w.announce.identity = Some(Identity::new("default", "helloworld-service"));
            }
        }
        workloads
    }

    fn tls_of(snapshot: &Snapshot, cluster_name: &str) -> Vec<(String, TlsMode, Option<String>)> {
        cluster(snapshot, cluster_name)
            .endpoints
            .iter()
            .map(|e| {
                let identity = e.identity.as_ref().map(Identity::to_string);
                (e.instance.clone(), e.tls_mode, identity)
            })
            .collect()
    }

    #[test]
    fn auto_mtls_goes_to_sidecars_with_a_certificate_unless_they_disable_it() {
        let workloads = guestbook_with_identities();
        let ui = &workloads[0].announce;
        let hw = "spiffe://cluster.local/ns/default/sa/helloworld-service".to_string();
        // No security config at all: Istio's default, auto mTLS.
        let plain = compile(&ConfigSet::default(), &workloads, ui, 1);
        assert_eq!(
            tls_of(&plain, "helloworld-service"),
            [
                ("hw-1".into(), TlsMode::IstioMutual, Some(hw.clone())),
                ("hw-2".into(), TlsMode::IstioMutual, Some(hw.clone())),
            ]
        );
        // No certificate: plaintext, no identity to expect.
        assert_eq!(
            tls_of(&plain, "guestbook-ui"),
            [("ui-1".into(), TlsMode::Disable, None)]
        );
        // v2's own PeerAuthentication says DISABLE: auto mTLS sends plaintext.
        let v2_disabled = config(
            "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: hw-v2-plain, namespace: default}
spec:
  selector: {matchLabels: {app: helloworld-service, version: v2}}
  mtls: {mode: DISABLE}
",
        );
        let snapshot = compile(&v2_disabled, &workloads, ui, 2);
        assert_eq!(
            tls_of(&snapshot, "helloworld-service"),
            [
                ("hw-1".into(), TlsMode::IstioMutual, Some(hw.clone())),
                ("hw-2".into(), TlsMode::Disable, Some(hw.clone())),
            ]
        );
    }

    #[test]
    fn destination_rule_tls_overrides_auto_mtls_subset_over_rule() {
        let workloads = guestbook_with_identities();
        let ui = &workloads[0].announce;
        let rules = config(
            "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tls-rules}
spec:
  host: helloworld-service
  trafficPolicy: {tls: {mode: DISABLE}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ui-mutual}
spec:
  host: guestbook-ui
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
",
        );
        let snapshot = compile(&rules, &workloads, ui, 1);
        let hw = "spiffe://cluster.local/ns/default/sa/helloworld-service".to_string();
        assert_eq!(
            tls_of(&snapshot, "helloworld-service|v1"),
            [("hw-1".into(), TlsMode::Disable, Some(hw.clone()))]
        );
        assert_eq!(
            tls_of(&snapshot, "helloworld-service|v2"),
            [("hw-2".into(), TlsMode::IstioMutual, Some(hw))]
        );
        // ISTIO_MUTUAL toward a sidecar that announced no identity expects
        // the local convention: the service's name as service account.
        assert_eq!(
            tls_of(&snapshot, "guestbook-ui"),
            [(
                "ui-1".into(),
                TlsMode::IstioMutual,
                Some("spiffe://cluster.local/ns/default/sa/guestbook-ui".into())
            )]
        );
    }

    const HW_SUBSETS: &str = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld-service}
spec:
  host: helloworld-service
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

    fn outbound(snapshot: &Snapshot, name: &str) -> VirtualHost {
        snapshot
            .virtual_hosts
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no virtual host {name}: {:#?}", snapshot.virtual_hosts))
            .clone()
    }

    fn cluster<'a>(snapshot: &'a Snapshot, name: &str) -> &'a Cluster {
        snapshot
            .clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    }

    /// Every destination and mirror of every route names a cluster of the
    /// snapshot, and no domain is in two virtual hosts: what the proxy
    /// checks before it accepts a snapshot.
    fn assert_consistent(snapshot: &Snapshot) {
        let names: Vec<&str> = snapshot.clusters.iter().map(|c| c.name.as_str()).collect();
        let tables = std::iter::once(&snapshot.virtual_hosts)
            .chain(snapshot.gateway.as_ref().map(|g| &g.virtual_hosts));
        for table in tables {
            let mut domains = Vec::new();
            for vh in table {
                for d in &vh.domains {
                    assert!(!domains.contains(d), "domain {d} twice");
                    domains.push(d.clone());
                }
                for route in &vh.routes {
                    for dest in &route.destinations {
                        assert!(
                            names.contains(&dest.cluster.as_str()),
                            "missing cluster {}",
                            dest.cluster
                        );
                    }
                    if let Some(m) = &route.mirror {
                        assert!(
                            names.contains(&m.cluster.as_str()),
                            "missing cluster {}",
                            m.cluster
                        );
                    }
                }
            }
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
        assert_eq!(vh.routes[0].retries, istio_default_retries());
        assert!(snapshot.gateway.is_none(), "a sidecar serves no ingress");
    }

    #[test]
    fn a_gateway_gets_the_root_namespaces_policies_that_select_it_and_no_mtls() {
        let config = config(
            r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ingress, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec:
  action: AUDIT
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: namespace-wide, namespace: default}
spec: {}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"#,
        );
        let names = |policy: &InboundPolicy| -> Vec<String> {
            policy
                .authorization_policies
                .iter()
                .map(|p| p.name.clone())
                .collect()
        };
        let gateway = inbound_policy(&config, &gateway_proxy());
        assert_eq!(
            names(&gateway),
            ["istio-system/ingress", "istio-system/mesh-wide"]
        );
        // Users are outside the mesh: no PeerAuthentication at the gateway.
        assert_eq!(gateway.mtls, Default::default());
        // A sidecar: the mesh-wide and its namespace's, never the gateway's.
        let sidecar = inbound_policy(&config, &sidecar("ui-1", "guestbook-ui", "v1", 1));
        assert_eq!(
            names(&sidecar),
            ["istio-system/mesh-wide", "default/namespace-wide"]
        );
        // And the gateway's snapshot carries them.
        let snapshot = compile(&config, &guestbook(), &gateway_proxy(), 1);
        assert_eq!(names(&snapshot.inbound), names(&gateway));
    }

    #[test]
    fn the_gateway_sends_everything_to_the_ui_by_default() {
        let gw = ProxyAnnounce {
            mode: ProxyMode::Gateway,
            ..sidecar("gw", "ingressgateway", "", 0)
        };
        let snapshot = compile(&ConfigSet::default(), &[], &gw, 1);
        // Even with no UI registered yet, the snapshot is whole (the proxy
        // rejects a route to a cluster it does not have).
        assert_consistent(&snapshot);
        let gateway = snapshot.gateway.unwrap();
        assert_eq!(gateway.virtual_hosts[0].domains, vec!["*"]);
        assert_eq!(
            gateway.virtual_hosts[0].routes[0].destinations[0].cluster,
            "guestbook-ui"
        );
    }

    #[test]
    fn canary_weights_split_between_subset_clusters() {
        let config = config(&format!(
            "{HW_SUBSETS}---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: helloworld-service}}
spec:
  hosts: [helloworld-service]
  http:
  - route:
    - destination: {{host: helloworld-service, subset: v1}}
      weight: 80
    - destination: {{host: helloworld-service, subset: v2}}
      weight: 20
"
        ));
        let ui = sidecar("ui-1", "guestbook-ui", "v1", 1000);
        let snapshot = compile(&config, &guestbook(), &ui, 1);
        assert_consistent(&snapshot);
        let vh = outbound(&snapshot, "helloworld-service");
        assert_eq!(vh.domains, domains_for("helloworld-service", "default"));
        let route = &vh.routes[0];
        assert_eq!(route.name, "helloworld-service[0]");
        let split: Vec<(&str, u32)> = route
            .destinations
            .iter()
            .map(|d| (d.cluster.as_str(), d.weight))
            .collect();
        assert_eq!(
            split,
            vec![("helloworld-service|v1", 80), ("helloworld-service|v2", 20)]
        );
        // The other service keeps its default route.
        assert_eq!(
            outbound(&snapshot, "guestbook-ui").routes[0].name,
            "default"
        );
    }

    #[test]
    fn subset_clusters_hold_the_instances_whose_labels_match() {
        let snapshot = compile(
            &config(HW_SUBSETS),
            &guestbook(),
            &sidecar("ui-1", "guestbook-ui", "v1", 1000),
            1,
        );
        assert_consistent(&snapshot);
        let instances = |name: &str| -> Vec<String> {
            cluster(&snapshot, name)
                .endpoints
                .iter()
                .map(|e| e.instance.clone())
                .collect()
        };
        assert_eq!(instances("helloworld-service"), vec!["hw-1", "hw-2"]);
        assert_eq!(instances("helloworld-service|v1"), vec!["hw-1"]);
        assert_eq!(instances("helloworld-service|v2"), vec!["hw-2"]);
        assert_eq!(
            cluster(&snapshot, "helloworld-service|v2")
                .subset
                .as_deref(),
            Some("v2")
        );
    }

    #[test]
    fn header_match_routes_chrome_to_v2_first() {
        let config = config(&format!(
            "{HW_SUBSETS}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: helloworld-service}}
spec:
  hosts: [helloworld-service.default.svc.cluster.local]
  http:
  - match:
    - headers: {{user-agent: {{regex: '.*Chrome.*'}}}}
    route:
    - destination: {{host: helloworld-service, subset: v2}}
  - route:
    - destination: {{host: helloworld-service, subset: v1}}
"
        ));
        let snapshot = compile(
            &config,
            &guestbook(),
            &sidecar("ui-1", "guestbook-ui", "v1", 1000),
            1,
        );
        let vh = outbound(&snapshot, "helloworld-service");
        assert!(
            vh.domains.contains(&"helloworld-service".to_string()),
            "the FQDN host covers the short name"
        );
        assert_eq!(vh.routes.len(), 2);
        assert_eq!(
            vh.routes[0].matches[0].headers["user-agent"],
            StringMatch::Regex(".*Chrome.*".into())
        );
        assert_eq!(
            vh.routes[0].destinations[0].cluster,
            "helloworld-service|v2"
        );
        assert!(
            vh.routes[1].matches.is_empty(),
            "the fallback rule matches everything"
        );
        assert_eq!(
            vh.routes[1].destinations[0].cluster,
            "helloworld-service|v1"
        );
    }

    #[test]
    fn destination_rule_policies_merge_subset_over_service() {
        let config = config(
            "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld-service}
spec:
  host: helloworld-service
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
    connectionPool: {tcp: {maxConnections: 10}}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 5s}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: LEAST_REQUEST}
",
        );
        let snapshot = compile(
            &config,
            &guestbook(),
            &sidecar("ui-1", "guestbook-ui", "v1", 1000),
            1,
        );
        let whole = &cluster(&snapshot, "helloworld-service").policy;
        assert_eq!(whole.load_balancer, LoadBalancer::Random);
        assert_eq!(whole.connection_pool.max_connections, Some(10));
        assert_eq!(
            whole
                .outlier_detection
                .as_ref()
                .unwrap()
                .consecutive_5xx_errors,
            2
        );
        let v1 = &cluster(&snapshot, "helloworld-service|v1").policy;
        assert_eq!(v1, whole, "a subset without a policy inherits the rule's");
        let v2 = &cluster(&snapshot, "helloworld-service|v2").policy;
        assert_eq!(
            v2.load_balancer,
            LoadBalancer::LeastRequest,
            "the subset's setting wins"
        );
        assert_eq!(
            v2.connection_pool.max_connections,
            Some(10),
            "the rest is inherited"
        );
        assert_eq!(v2.outlier_detection, whole.outlier_detection);
        // A service without a DestinationRule: round robin, no limits, no ejection.
        let ui = &cluster(&snapshot, "guestbook-ui").policy;
        assert_eq!(*ui, Default::default());
    }

    fn route_of(yaml_rule: &str) -> HttpRoute {
        let config = config(&format!(
            "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: hw}}
spec:
  hosts: [helloworld-service]
  http:
  - route:
    - destination: {{host: helloworld-service}}
{yaml_rule}"
        ));
        let snapshot = compile(
            &config,
            &guestbook(),
            &sidecar("ui-1", "guestbook-ui", "v1", 1000),
            1,
        );
        assert_consistent(&snapshot);
        outbound(&snapshot, "helloworld-service").routes[0].clone()
    }

    /// Istio's default retry policy for an HTTP route with no `retries`,
    /// written out from its documentation (pilot's `DefaultPolicy`: 2
    /// attempts, `retryOn: connect-failure,refused-stream,unavailable,
    /// cancelled,retriable-status-codes` with status 503, no per-try
    /// timeout), so the test compares the compiler with Istio, not
    /// `RetryPolicy::default()` with itself.
    fn istio_default_retries() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            per_try_timeout_ms: None,
            retry_on: vec![
                "connect-failure".to_string(),
                "refused-stream".to_string(),
                "unavailable".to_string(),
                "cancelled".to_string(),
                "retriable-status-codes".to_string(),
            ],
            retriable_status_codes: vec![503],
        }
    }

    #[test]
    fn retries_default_to_istios_and_follow_what_is_written() {
        let route = route_of("");
        assert_eq!(route.retries, istio_default_retries());
        assert_eq!(route.timeout_ms, None, "no timeout unless set");
        assert_eq!(route.destinations[0].weight, 100);

        let route = route_of("    retries: {attempts: 3, perTryTimeout: 2s}\n    timeout: 10s\n");
        assert_eq!(route.retries.attempts, 3);
        assert_eq!(route.retries.per_try_timeout_ms, Some(2_000));
        assert_eq!(
            route.retries.retry_on,
            istio_default_retries().retry_on,
            "default conditions"
        );
        assert_eq!(route.timeout_ms, Some(10_000));

        let route = route_of("    retries: {attempts: 2, retryOn: '5xx,429'}\n");
        assert_eq!(
            route.retries.retry_on,
            vec!["5xx", "retriable-status-codes"]
        );
        assert_eq!(route.retries.retriable_status_codes, vec![429]);

        assert_eq!(
            route_of("    retries: {attempts: 0}\n").retries,
            RetryPolicy::none()
        );
        assert_eq!(
            route_of("    retries: {perTryTimeout: 1s}\n").retries,
            RetryPolicy::none(),
            "Istio reads a missing attempts as 0"
        );
    }

    #[test]
    fn a_fault_disables_retries_and_no_percentage_injects_nothing() {
        let route = route_of(
            "    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}\n    retries: {attempts: 3}\n",
        );
        assert_eq!(route.retries, RetryPolicy::none());
        let abort = route.fault.unwrap().abort.unwrap();
        assert_eq!((abort.http_status, abort.percentage), (503, 50.0));
        assert_eq!(abort.grpc_status, None);

        // A gRPC abort: its code's number, and HTTP 200 as Envoy answers it.
        let route = route_of(
            "    fault: {abort: {grpcStatus: RESOURCE_EXHAUSTED, percentage: {value: 100}}}\n",
        );
        let abort = route.fault.unwrap().abort.unwrap();
        assert_eq!(
            (abort.http_status, abort.grpc_status, abort.percentage),
            (200, Some(8), 100.0)
        );

        let route = route_of("    fault: {delay: {fixedDelay: 5s}}\n");
        let delay = route.fault.unwrap().delay.unwrap();
        assert_eq!((delay.fixed_delay_ms, delay.percentage), (5_000, 0.0));
    }

    #[test]
    fn headers_rewrite_and_mirror_are_carried_over() {
        let route = route_of(
            "    headers: {request: {set: {x-canary: 'yes'}}, response: {remove: [server]}}
    rewrite: {uri: /v2}
    mirror: {host: helloworld-service, subset: v2}
",
        );
        assert_eq!(route.request_headers.set["x-canary"], "yes");
        assert_eq!(route.response_headers.remove, vec!["server"]);
        assert_eq!(route.rewrite_uri.as_deref(), Some("/v2"));
        let mirror = route.mirror.unwrap();
        assert_eq!(
            (mirror.cluster.as_str(), mirror.percentage),
            ("helloworld-service|v2", 100.0)
        );
    }

    #[test]
    fn an_undefined_subset_compiles_to_an_empty_cluster() {
        let route = route_of(
            "    - destination: {host: helloworld-service, subset: v3}\n      weight: 10\n",
        );
        assert_eq!(route.destinations[1].cluster, "helloworld-service|v3");
        let snapshot = compile(
            &config(
                "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hw}
spec:
  hosts: [helloworld-service]
  http: [{route: [{destination: {host: helloworld-service, subset: v3}}]}]
",
            ),
            &guestbook(),
            &sidecar("ui-1", "guestbook-ui", "v1", 1000),
            1,
        );
        assert!(
            cluster(&snapshot, "helloworld-service|v3")
                .endpoints
                .is_empty(),
            "503 no healthy upstream, as Envoy"
        );
    }

    #[test]
    fn one_virtual_service_may_cover_several_hosts() {
        let config = config(
            "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backends}
spec:
  hosts: [helloworld-service, guestbook-service, guestbook-service.default.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /hello}}]
    route: [{destination: {host: helloworld-service}}]
  - route: [{destination: {host: guestbook-service}}]
",
        );
        let snapshot = compile(
            &config,
            &guestbook(),
            &sidecar("ui-1", "guestbook-ui", "v1", 1000),
            1,
        );
        assert_consistent(&snapshot);
        let hw = outbound(&snapshot, "helloworld-service");
        let gs = outbound(&snapshot, "guestbook-service");
        assert_eq!(hw.routes, gs.routes, "both hosts get the same rules");
        assert_eq!(hw.routes[0].name, "backends[0]");
        assert!(
            gs.domains
                .contains(&"guestbook-service.default.svc.cluster.local:8080".to_string())
        );
        // guestbook-service has no instance: its cluster exists, empty.
        assert!(cluster(&snapshot, "guestbook-service").endpoints.is_empty());
        assert_eq!(
            snapshot
                .virtual_hosts
                .iter()
                .filter(|v| v.name == "guestbook-service")
                .count(),
            1
        );
    }

    #[test]
    fn the_oldest_virtual_service_wins_a_host() {
        let older = config(
            "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: first}
spec:
  hosts: [helloworld-service]
  http: [{route: [{destination: {host: helloworld-service}}], timeout: 1s}]
",
        );
        let newer = ConfigSet::parse(&[SourceFile {
            name: "b.yaml".into(),
            content: "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: second}
spec:
  hosts: [helloworld-service.default]
  http: [{route: [{destination: {host: helloworld-service}}], timeout: 2s}]
"
            .into(),
        }])
        .unwrap();
        let (config, _) = older.apply(newer);
        let snapshot = compile(
            &config,
            &guestbook(),
            &sidecar("ui-1", "guestbook-ui", "v1", 1000),
            1,
        );
        assert_consistent(&snapshot);
        let hw = outbound(&snapshot, "helloworld-service");
        assert_eq!(hw.routes[0].timeout_ms, Some(1_000));
    }

    const GATEWAY: &str = "
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: guestbook-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*']
";

    #[test]
    fn gateway_serves_the_virtual_services_bound_to_it() {
        let config = config(&format!(
            "{GATEWAY}---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: guestbook-ui}}
spec:
  hosts: ['*']
  gateways: [guestbook-gateway]
  http:
  - match: [{{uri: {{prefix: /}}}}]
    route: [{{destination: {{host: guestbook-ui}}}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: hello-api}}
spec:
  hosts: [api.example.com]
  gateways: [default/guestbook-gateway]
  http:
  - route: [{{destination: {{host: helloworld-service}}}}]
"
        ));
        let snapshot = compile(&config, &guestbook(), &gateway_proxy(), 1);
        assert_consistent(&snapshot);
        let gateway = snapshot.gateway.as_ref().unwrap();
        assert_eq!(gateway.gateways, vec!["default/guestbook-gateway"]);
        let hosts: Vec<&Vec<String>> = gateway.virtual_hosts.iter().map(|v| &v.domains).collect();
        assert_eq!(
            hosts,
            vec![&vec!["*".to_string()], &vec!["api.example.com".to_string()]]
        );
        assert_eq!(
            gateway.virtual_hosts[1].routes[0].destinations[0].cluster,
            "helloworld-service"
        );
        // Gateway-only VirtualServices leave the sidecars' routes alone.
        assert_eq!(
            outbound(&snapshot, "guestbook-ui").routes[0].name,
            "default"
        );

        // A sidecar gets no gateway section, whatever is applied.
        let sidecar_snapshot = compile(
            &config,
            &guestbook(),
            &sidecar("ui-1", "guestbook-ui", "v1", 1000),
            1,
        );
        assert!(sidecar_snapshot.gateway.is_none());
    }

    #[test]
    fn gateway_only_serves_gateways_that_select_it_and_hosts_they_list() {
        let config = config(
            "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: other}
spec:
  selector: {istio: egressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: [shop.example.com]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: all}
spec:
  hosts: ['*']
  gateways: [shop, other]
  http: [{route: [{destination: {host: guestbook-ui}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: elsewhere}
spec:
  hosts: [blog.example.com]
  gateways: [shop]
  http: [{route: [{destination: {host: helloworld-service}}]}]
",
        );
        let snapshot = compile(&config, &guestbook(), &gateway_proxy(), 1);
        let gateway = snapshot.gateway.unwrap();
        assert_eq!(gateway.gateways, vec!["default/shop"]);
        // `*` meets the server's host and narrows to it; blog.example.com
        // meets no server host and is not served.
        assert_eq!(gateway.virtual_hosts.len(), 1);
        assert_eq!(gateway.virtual_hosts[0].domains, vec!["shop.example.com"]);
    }

    #[test]
    fn applied_gateways_replace_the_quick_start_fallback() {
        // A Gateway that selects no proxy here: the gateway serves nothing
        // (404), like Istio's, rather than silently falling back.
        let config = config(&GATEWAY.replace("ingressgateway", "someone-else"));
        let gateway = compile(&config, &guestbook(), &gateway_proxy(), 1)
            .gateway
            .unwrap();
        assert!(gateway.gateways.is_empty());
        assert!(gateway.virtual_hosts.is_empty());
    }

    // --- several rules for one host (issue 18) ---

    /// Apply each text in turn, as separate `meshctl apply`s: earlier is older.
    fn applied(texts: &[&str]) -> ConfigSet {
        texts.iter().fold(ConfigSet::default(), |set, text| {
            let resources = ConfigSet::parse(&[SourceFile {
                name: "test.yaml".into(),
                content: text.to_string(),
            }])
            .unwrap_or_else(|e| panic!("test YAML is invalid:\n{e}"));
            set.apply(resources).0
        })
    }

    /// A gateway VirtualService for `*`, bound to `gateway`, one rule per
    /// `(uri prefix, service)`; prefix `/` is written as no match at all.
    fn gateway_vs(name: &str, gateway: &str, rules: &[(&str, &str)]) -> String {
        let mut yaml = format!(
            "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: ['*']
  gateways: [{gateway}]
  http:
"
        );
        for (prefix, service) in rules {
            if *prefix != "/" {
                yaml += &format!(
                    "  - match: [{{uri: {{prefix: {prefix}}}}}]\n    route: [{{destination: {{host: {service}}}}}]\n"
                );
            } else {
                yaml += &format!("  - route: [{{destination: {{host: {service}}}}}]\n");
            }
        }
        yaml
    }

    /// `(route name, origin)` of the gateway's only virtual host.
    fn gateway_routes(config: &ConfigSet) -> Vec<(String, String)> {
        let snapshot = compile(config, &guestbook(), &gateway_proxy(), 1);
        assert_consistent(&snapshot);
        let gateway = snapshot.gateway.unwrap();
        assert_eq!(
            gateway.virtual_hosts.len(),
            1,
            "{:#?}",
            gateway.virtual_hosts
        );
        gateway.virtual_hosts[0]
            .routes
            .iter()
            .map(|r| (r.name.clone(), r.origin.clone().unwrap_or_default()))
            .collect()
    }

    fn named(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn gateway_virtual_services_for_one_host_are_merged_in_creation_order() {
        // Two Gateway resources that select the same ingress, a VirtualService
        // on each: the issue's a-messages / b-hello case.
        let second_gateway = GATEWAY.replace("guestbook-gateway", "hello-gateway");
        let config = applied(&[
            GATEWAY,
            &second_gateway,
            &gateway_vs(
                "a-messages",
                "guestbook-gateway",
                &[("/messages", "guestbook-service")],
            ),
            &gateway_vs(
                "b-hello",
                "hello-gateway",
                &[("/hello", "helloworld-service")],
            ),
        ]);
        let snapshot = compile(&config, &guestbook(), &gateway_proxy(), 1);
        let gateway = snapshot.gateway.as_ref().unwrap();
        assert_eq!(
            gateway.gateways,
            vec!["default/guestbook-gateway", "default/hello-gateway"]
        );
        assert_eq!(gateway.virtual_hosts[0].name, "* (a-messages + b-hello)");
        assert_eq!(
            gateway_routes(&config),
            named(&[
                ("a-messages[0]", "default/a-messages"),
                ("b-hello[0]", "default/b-hello"),
            ])
        );
        // Sidecars are not affected: gateway rules never reach them.
        let sidecar_snapshot = compile(
            &config,
            &guestbook(),
            &sidecar("ui-1", "guestbook-ui", "v1", 1000),
            1,
        );
        assert!(
            sidecar_snapshot
                .virtual_hosts
                .iter()
                .all(|vh| vh.routes.iter().all(|r| r.origin.is_none())),
            "only default routes for sidecars"
        );
    }

    #[test]
    fn overlapping_gateway_matches_go_to_the_older_virtual_service() {
        // `z-old` is applied first: creation order decides, not the name.
        let old = gateway_vs(
            "z-old",
            "guestbook-gateway",
            &[("/hello", "helloworld-service")],
        );
        let new = gateway_vs("a-new", "guestbook-gateway", &[("/hello", "guestbook-ui")]);
        assert_eq!(
            gateway_routes(&applied(&[GATEWAY, &old, &new])),
            named(&[("z-old[0]", "default/z-old"), ("a-new[0]", "default/a-new")])
        );
        assert_eq!(
            gateway_routes(&applied(&[GATEWAY, &new, &old])),
            named(&[("a-new[0]", "default/a-new"), ("z-old[0]", "default/z-old")])
        );
        // Re-applying the older one (configured) keeps its age.
        assert_eq!(
            gateway_routes(&applied(&[
                GATEWAY,
                &old,
                &new,
                &old.replace("helloworld-service", "guestbook-service")
            ])),
            named(&[("z-old[0]", "default/z-old"), ("a-new[0]", "default/a-new")])
        );
    }

    #[test]
    fn catch_all_rules_move_after_every_other_rule_at_a_gateway() {
        // The older VirtualService ends with a default route; Istio moves it
        // after the newer one's /hello rule, so /hello still reaches it. The
        // newer one's own default comes after the older default: it never
        // matches (analysis says so).
        let ui = gateway_vs(
            "ui",
            "guestbook-gateway",
            &[("/static", "guestbook-ui"), ("/", "guestbook-ui")],
        );
        let hello = gateway_vs(
            "hello",
            "guestbook-gateway",
            &[
                ("/hello", "helloworld-service"),
                ("/", "helloworld-service"),
            ],
        );
        assert_eq!(
            gateway_routes(&applied(&[GATEWAY, &ui, &hello])),
            named(&[
                ("ui[0]", "default/ui"),
                ("hello[0]", "default/hello"),
                ("ui[1]", "default/ui"),
                ("hello[1]", "default/hello"),
            ])
        );

        // A rule whose matches mix a catch-all with a specific one is split
        // as Envoy sees it (one route per match): only the catch-all part moves.
        let mixed = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mixed}
spec:
  hosts: ['*']
  gateways: [guestbook-gateway]
  http:
  - match: [{headers: {x-beta: {exact: '1'}}}, {uri: {prefix: /}}]
    route: [{destination: {host: guestbook-ui}}]
";
        let config = applied(&[GATEWAY, mixed, &hello]);
        let snapshot = compile(&config, &guestbook(), &gateway_proxy(), 1);
        let routes = &snapshot.gateway.unwrap().virtual_hosts[0].routes;
        let shape: Vec<(&str, usize, bool)> = routes
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.matches.len(),
                    r.matches.iter().all(is_catch_all),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("mixed[0]", 1, false),
                ("hello[0]", 1, false),
                ("mixed[0]", 1, true),
                ("hello[1]", 0, true),
            ]
        );
        assert!(routes[0].matches[0].headers.contains_key("x-beta"));
    }

    #[test]
    fn mesh_virtual_services_for_one_host_keep_only_the_oldest_with_its_origin() {
        let first = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: z-first}
spec:
  hosts: [helloworld-service]
  http: [{route: [{destination: {host: helloworld-service}}], timeout: 1s}]
";
        let second = first.replace("z-first", "a-second").replace("1s", "2s");
        let snapshot = compile(
            &applied(&[first, &second]),
            &guestbook(),
            &sidecar("ui-1", "guestbook-ui", "v1", 1000),
            1,
        );
        let routes = outbound(&snapshot, "helloworld-service").routes;
        assert_eq!(routes.len(), 1, "no merge for sidecars");
        assert_eq!(routes[0].origin.as_deref(), Some("default/z-first"));
        assert_eq!(routes[0].timeout_ms, Some(1_000));
    }

    #[test]
    fn destination_rules_for_one_host_merge_subsets_and_keep_the_first_policy() {
        let v1 = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hw-v1}
spec:
  host: helloworld-service
  subsets: [{name: v1, labels: {version: v1}}]
";
        // The newer rule adds v2, repeats v1 with other labels (ignored: the
        // older definition stays), and brings the first top-level policy:
        // the older rule has none, so this one is used, as in Istio.
        let v2 = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hw-v2}
spec:
  host: helloworld-service.default.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets:
  - {name: v2, labels: {version: v2}}
  - {name: v1, labels: {version: v2}}
";
        let third = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hw-late}
spec:
  host: helloworld-service
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
";
        let snapshot = compile(
            &applied(&[v1, v2, third]),
            &guestbook(),
            &sidecar("ui-1", "guestbook-ui", "v1", 1000),
            1,
        );
        assert_consistent(&snapshot);
        let instances = |name: &str| -> Vec<String> {
            cluster(&snapshot, name)
                .endpoints
                .iter()
                .map(|e| e.instance.clone())
                .collect()
        };
        assert_eq!(instances("helloworld-service|v1"), vec!["hw-1"]);
        assert_eq!(instances("helloworld-service|v2"), vec!["hw-2"]);
        for name in [
            "helloworld-service",
            "helloworld-service|v1",
            "helloworld-service|v2",
        ] {
            assert_eq!(
                cluster(&snapshot, name).policy.load_balancer,
                LoadBalancer::Random,
                "{name}: the top-level policy of the oldest rule that has one"
            );
        }
    }

    #[test]
    fn on_a_cluster_every_kubernetes_name_of_a_service_reaches_it() {
        // mesh-control serves `guestbook`: the rules are written with three
        // different forms of one service's name, as learners write them.
        let resources = ConfigSet::parse(&[SourceFile {
            name: "cluster.yaml".into(),
            content: "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld-service}
spec:
  host: helloworld-service
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld-service}
spec:
  hosts: [helloworld-service.guestbook.svc.cluster.local]
  http:
  - route:
    - destination: {host: helloworld-service.guestbook, subset: v2}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: elsewhere}
spec:
  hosts: [helloworld-service.default]
  http:
  - route:
    - destination: {host: helloworld-service.default}
"
            .into(),
        }])
        .unwrap();
        let config = ConfigSet::for_namespace("guestbook").apply(resources).0;
        let ui = sidecar("ui-1", "guestbook-ui", "v1", 1000);
        let snapshot = compile(&config, &guestbook(), &ui, 1);
        assert_consistent(&snapshot);

        // One virtual host for the service, answering to every form of its
        // name in `guestbook`, bare and with the port, and routing to v2.
        let hw = outbound(&snapshot, "helloworld-service");
        for domain in [
            "helloworld-service",
            "helloworld-service:8080",
            "helloworld-service.guestbook",
            "helloworld-service.guestbook:8080",
            "helloworld-service.guestbook.svc",
            "helloworld-service.guestbook.svc.cluster.local",
            "helloworld-service.guestbook.svc.cluster.local:8080",
        ] {
            assert!(hw.domains.iter().any(|d| d == domain), "{domain}: {hw:?}");
        }
        assert_eq!(
            hw.routes[0].destinations[0].cluster,
            "helloworld-service|v2"
        );
        // The short host in the DestinationRule is in the rule's namespace:
        // its subsets became clusters with the v2 endpoint in them.
        assert_eq!(
            cluster(&snapshot, "helloworld-service|v2").endpoints.len(),
            1
        );

        // A service without rules gets the same names in its namespace.
        let ui_host = outbound(&snapshot, "guestbook-ui");
        assert_eq!(ui_host.domains, domains_for("guestbook-ui", "guestbook"));
        assert!(ui_host.domains.iter().all(|d| !d.contains(".default")));

        // `.default` is another namespace on this cluster: not the mesh's
        // service, so it stays a host of its own with no endpoints (503).
        let other = outbound(&snapshot, "helloworld-service.default");
        assert_eq!(
            other.domains,
            [
                "helloworld-service.default",
                "helloworld-service.default:8080"
            ]
        );
        let target = &other.routes[0].destinations[0].cluster;
        assert!(cluster(&snapshot, target).endpoints.is_empty());
    }
}
