//! Istio resources as learners write them: parsing, validation, analysis.
//!
//! This is where `meshctl apply -f guestbook-ui-vs.yaml` lands, before
//! anything reaches a proxy:
//!
//! ```text
//! files --ConfigSet::parse--> Vec<Resource>   (all-or-nothing; ConfigErrors = HTTP 400)
//!       --ConfigSet::apply--> new ConfigSet + "created/configured/unchanged"
//!       --ConfigSet::analyze--> Diagnostics   (what Istio would answer with a silent 503)
//!       --compile (mesh-control)--> one Snapshot per proxy
//! ```
//!
//! In Istio the same steps are the Kubernetes API server (schema check
//! against the CRD), istiod's validating webhook (semantic checks),
//! `istioctl analyze` (cross-references) and istiod's push.
//!
//! The resources are Istio's own shapes, `networking.istio.io` VirtualService,
//! DestinationRule and Gateway, in versions `v1`, `v1beta1` and `v1alpha3`,
//! and `security.istio.io` PeerAuthentication and AuthorizationPolicy, in
//! `v1` and `v1beta1`.
//! A field micromesh does not implement is refused by name, never silently
//! ignored; the talk's older fields get an error that explains the current one.
//!
//! Contract with the control plane and meshctl: [`SourceFile`],
//! [`ApplyRequest`], [`ConfigSet::parse`], [`ConfigSet::parse_identities`],
//! [`ConfigSet::apply`], [`ConfigSet::delete`], [`ConfigSet::list`],
//! [`ConfigSet::analyze`], [`ConfigSet::analyze_proxies`], [`Kind::parse`];
//! `ConfigSet` is Serialize/Deserialize so the control plane persists it
//! (loading re-validates every resource).

mod analyze;
mod analyze_security;
pub mod authorization_policy;
#[cfg(test)]
mod conformance;
mod decode;
pub mod destination_rule;
mod duration;
pub mod gateway;
mod host;
mod kinds;
mod parse;
pub mod peer_authentication;
pub mod virtual_service;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use authorization_policy::AuthorizationPolicy;
pub use destination_rule::DestinationRule;
pub use duration::{format_duration_ms, parse_duration_ms};
pub use gateway::Gateway;
pub use host::{
    ROUTED_NAMESPACE, intersect_hosts, names_of_service, service_in_namespace, service_of_host,
};
pub use kinds::{
    Kind, NETWORKING_GROUP, NETWORKING_VERSIONS, SECURITY_GROUP, SECURITY_VERSIONS, UnknownKind,
};
pub use peer_authentication::{EffectiveMtls, MtlsMode, PeerAuthentication, ROOT_NAMESPACE};
pub use virtual_service::VirtualService;

use crate::xds::ProxyAnnounce;

/// One file as the user wrote it; `name` is used in error messages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    pub name: String,
    pub content: String,
}

/// Body of `POST /v1/config/apply` and `POST /v1/config/delete`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub files: Vec<SourceFile>,
}

/// Reply of apply and delete: what changed, and what analysis now says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub changes: Vec<Change>,
    pub diagnostics: Vec<Diagnostic>,
}

/// `virtualservice.networking.istio.io/guestbook-ui configured`, as kubectl says it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The kind as YAML spells it: `VirtualService`.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `created`, `configured`, `unchanged`, `deleted`, `not found`.
    pub action: String,
}

impl fmt::Display for Change {
    /// kubectl's line: `virtualservice.networking.istio.io/guestbook-ui created`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = Kind::parse(&self.kind)
            .map(Kind::qualified_name)
            .unwrap_or_else(|_| self.kind.to_ascii_lowercase());
        write!(f, "{kind}/{} {}", self.name, self.action)
    }
}

/// A cross-reference finding (`meshctl analyze`), like `istioctl analyze`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// `Error`, `Warning` or `Info`.
    pub level: String,
    /// Stable code, for example `ReferencedResourceNotFound`.
    pub code: String,
    /// `VirtualService default/guestbook-ui`.
    pub resource: String,
    /// Field path, for example `spec.http[0].route[1].destination.subset`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    /// `Error [ReferencedResourceNotFound] VirtualService default/x spec.http[0]...: message`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] {}", self.level, self.code, self.resource)?;
        if !self.field.is_empty() {
            write!(f, " {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a set of files (the body of an HTTP 400).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    /// One line per error, so meshctl can print it as is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigError {
    pub file: String,
    /// `VirtualService default/guestbook-ui`, or `document 2 (line 12)` when unnamed.
    pub resource: String,
    /// `spec.http[0].fault.abort.percent`; empty for a YAML syntax error.
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `file.yaml: VirtualService default/x: spec.http[0].timeout: message`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in [&self.file, &self.resource, &self.field] {
            if !part.is_empty() {
                write!(f, "{part}: ")?;
            }
        }
        f.write_str(&self.message)
    }
}

// === Resource ===

fn default_namespace() -> String {
    ROUTED_NAMESPACE.to_string()
}

/// The metadata micromesh keeps (Kubernetes' ObjectMeta, the user-written part).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub name: String,
    /// `default` when the YAML leaves it out.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ObjectMeta {
    fn default() -> Self {
        ObjectMeta {
            name: String::new(),
            namespace: default_namespace(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }
}

/// One applied resource, kept in the user's own shape: serialized to YAML it
/// is a document the user can apply again (`meshctl get vs x -o yaml`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// As written: `networking.istio.io/v1alpha3` stays `v1alpha3`.
    pub api_version: String,
    /// `VirtualService`, `DestinationRule` or `Gateway`.
    pub kind: String,
    pub metadata: ObjectMeta,
    /// The spec as written (key order kept), validated by `parse`.
    pub spec: serde_yaml::Value,
}

impl Resource {
    /// A resource that only names something, for [`ConfigSet::delete`]
    /// (`meshctl delete vs guestbook-ui`).
    pub fn reference(kind: Kind, namespace: &str, name: &str) -> Resource {
        Resource {
            api_version: kind.api_version(),
            kind: kind.as_str().to_string(),
            metadata: ObjectMeta {
                name: name.to_string(),
                namespace: namespace.to_string(),
                ..ObjectMeta::default()
            },
            spec: serde_yaml::Value::Null,
        }
    }

    /// `VirtualService default/guestbook-ui`, the way errors name it.
    pub fn id(&self) -> String {
        format!(
            "{} {}/{}",
            self.kind, self.metadata.namespace, self.metadata.name
        )
    }

    /// Whether micromesh routes this resource's namespace (only `default`).
    pub fn is_routed(&self) -> bool {
        self.metadata.namespace == ROUTED_NAMESPACE
    }

    fn key(&self) -> Option<(Kind, &str, &str)> {
        Some((
            Kind::from_yaml(&self.kind)?,
            &self.metadata.namespace,
            &self.metadata.name,
        ))
    }
}

/// A validated spec, typed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Spec {
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    Gateway(Gateway),
    PeerAuthentication(PeerAuthentication),
    AuthorizationPolicy(AuthorizationPolicy),
}

impl Spec {
    /// Validate a resource's spec again (used when a stored set is loaded
    /// and when `apply` receives resources).
    pub fn of(resource: &Resource) -> Result<Spec, ConfigErrors> {
        let id = resource.id();
        let fail = |field: &str, message: String| ConfigErrors {
            errors: vec![ConfigError {
                file: String::new(),
                resource: id.clone(),
                field: field.to_string(),
                message,
            }],
        };
        let kind = kinds::classify(&resource.api_version, &resource.kind)
            .map_err(|(field, message)| fail(field, message))?;
        let mut d = decode::Decoder::default();
        match parse::decode_spec(&mut d, kind, &resource.spec) {
            Some(spec) if d.errors.is_empty() => Ok(spec),
            _ => Err(ConfigErrors {
                errors: d
                    .errors
                    .into_iter()
                    .map(|e| ConfigError {
                        file: String::new(),
                        resource: id.clone(),
                        field: e.path,
                        message: e.message,
                    })
                    .collect(),
            }),
        }
    }
}

// === ConfigSet ===

/// The applied resources, in the order they were first created, as istiod
/// orders configs by creation time: it decides which VirtualService of a
/// host the sidecars use (the oldest), the order in which a gateway merges
/// the VirtualServices of a host, and how DestinationRules merge.
///
/// A set also knows the namespace its services live in (`default` locally,
/// the served namespace on a cluster), which decides what a host in a rule
/// names: see [`ConfigSet::service_of_host`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredConfigSet", into = "StoredConfigSet")]
pub struct ConfigSet {
    entries: Vec<Entry>,
    namespace: String,
}

impl Default for ConfigSet {
    /// An empty set for the local mesh (namespace `default`).
    fn default() -> Self {
        ConfigSet::for_namespace(ROUTED_NAMESPACE)
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    resource: Resource,
    spec: Spec,
}

/// How a `ConfigSet` is written to disk: just the resources, oldest first.
#[derive(Serialize, Deserialize)]
struct StoredConfigSet {
    /// `{}` (an empty set, as stores written before any apply hold) loads.
    #[serde(default)]
    resources: Vec<Resource>,
}

impl From<ConfigSet> for StoredConfigSet {
    fn from(set: ConfigSet) -> Self {
        StoredConfigSet {
            resources: set.entries.into_iter().map(|e| e.resource).collect(),
        }
    }
}

impl TryFrom<StoredConfigSet> for ConfigSet {
    type Error = String;

    /// A stored set is validated again: a hand-edited or older store fails
    /// to load with the reason, instead of compiling into a broken snapshot.
    fn try_from(stored: StoredConfigSet) -> Result<Self, String> {
        let (set, changes) = ConfigSet::default().apply(stored.resources);
        match changes.iter().find(|c| c.action.starts_with("invalid")) {
            Some(bad) => Err(format!(
                "stored {} {}/{} is {}",
                bad.kind, bad.namespace, bad.name, bad.action
            )),
            None => Ok(set),
        }
    }
}

impl ConfigSet {
    /// An empty set whose services live in `namespace`: on a cluster, the
    /// namespace mesh-control serves, so `reviews.guestbook` names `reviews`.
    pub fn for_namespace(namespace: impl Into<String>) -> ConfigSet {
        ConfigSet {
            entries: Vec::new(),
            namespace: namespace.into(),
        }
    }

    /// The namespace the mesh's services live in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The mesh service a host names, by Istio's rules in this set's
    /// namespace ([`service_in_namespace`]).
    pub fn service_of_host<'a>(&self, host: &'a str) -> Option<&'a str> {
        service_in_namespace(host, &self.namespace)
    }

    /// Hosts that name the same thing compare equal: every form of a
    /// service's name gives the service name; other hosts compare in lower
    /// case.
    pub fn host_key(&self, host: &str) -> String {
        self.service_of_host(host)
            .map(str::to_string)
            .unwrap_or_else(|| host.to_ascii_lowercase())
    }

    /// Parse and validate every document of every file, all or nothing.
    ///
    /// Empty documents are skipped; every error of every document is
    /// returned, each naming the file, the resource, the field path and what
    /// to write instead.
    pub fn parse(files: &[SourceFile]) -> Result<Vec<Resource>, ConfigErrors> {
        parse::parse_files(files, parse::Depth::Full)
    }

    /// Parse only what identifies each resource (apiVersion, kind,
    /// metadata), for `meshctl delete -f`: like kubectl, deleting does not
    /// need a spec that would still validate.
    pub fn parse_identities(files: &[SourceFile]) -> Result<Vec<Resource>, ConfigErrors> {
        parse::parse_files(files, parse::Depth::Identity)
    }

    /// The set with `resources` created or replaced, and what changed.
    ///
    /// Resources should come from [`ConfigSet::parse`]; one that does not
    /// validate is left out and reported with action `invalid: <reason>`.
    pub fn apply(&self, resources: Vec<Resource>) -> (ConfigSet, Vec<Change>) {
        let mut next = self.clone();
        let mut changes = Vec::new();
        for resource in resources {
            let action = match Spec::of(&resource) {
                Err(errors) => format!("invalid: {errors}"),
                Ok(spec) => match next.position(&resource) {
                    Some(i) if next.entries[i].resource == resource => "unchanged".to_string(),
                    Some(i) => {
                        // Replacing keeps the position: a configured resource
                        // keeps its age, like a Kubernetes object keeps its
                        // creationTimestamp.
                        next.entries[i] = Entry {
                            resource: resource.clone(),
                            spec,
                        };
                        "configured".to_string()
                    }
                    None => {
                        next.entries.push(Entry {
                            resource: resource.clone(),
                            spec,
                        });
                        "created".to_string()
                    }
                },
            };
            changes.push(change(&resource, action));
        }
        (next, changes)
    }

    /// The set without `resources` (matched by kind, namespace, name; the
    /// spec is not looked at).
    pub fn delete(&self, resources: &[Resource]) -> (ConfigSet, Vec<Change>) {
        let mut next = self.clone();
        let changes = resources
            .iter()
            .map(|resource| {
                let action = match next.position(resource) {
                    Some(i) => {
                        next.entries.remove(i);
                        "deleted"
                    }
                    None => "not found",
                };
                change(resource, action.to_string())
            })
            .collect();
        (next, changes)
    }

    /// The applied resources of one kind, or all, sorted by kind, namespace
    /// and name. `kind` is what a user types: `vs`, `VirtualService`,
    /// `destinationrules`... ([`Kind::parse`]); an unknown kind lists nothing.
    pub fn list(&self, kind: Option<&str>) -> Vec<Resource> {
        let wanted = match kind.map(Kind::parse) {
            Some(Ok(kind)) => Some(kind),
            Some(Err(_)) => return Vec::new(),
            None => None,
        };
        let mut listed: Vec<(Kind, &Resource)> = self
            .entries
            .iter()
            .filter_map(|e| Some((Kind::from_yaml(&e.resource.kind)?, &e.resource)))
            .filter(|(k, _)| wanted.is_none_or(|w| w == *k))
            .collect();
        listed.sort_by(|(ka, a), (kb, b)| {
            (ka, &a.metadata.namespace, &a.metadata.name).cmp(&(
                kb,
                &b.metadata.namespace,
                &b.metadata.name,
            ))
        });
        listed.into_iter().map(|(_, r)| r.clone()).collect()
    }

    /// Cross-reference analysis against the services the registry knows.
    pub fn analyze(&self, services: &[String]) -> Vec<Diagnostic> {
        analyze::analyze(self, &analyze::Registry::from_services(services))
    }

    /// Like [`ConfigSet::analyze`], with what the running proxies announced:
    /// also checks that each subset selects a running instance and that each
    /// Gateway selects a gateway proxy.
    pub fn analyze_proxies(&self, proxies: &[ProxyAnnounce]) -> Vec<Diagnostic> {
        analyze::analyze(self, &analyze::Registry::from_proxies(proxies))
    }

    /// Per resource id, how it combines with others for the same host
    /// (`gateway *: 2 of 2 (a-messages + b-hello)`); only resources that
    /// share a host appear. `meshctl get` shows it as the MERGED column.
    pub fn merges(&self) -> BTreeMap<String, Vec<String>> {
        analyze::merges(self)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every resource with its typed spec, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = (&Resource, &Spec)> {
        self.entries.iter().map(|e| (&e.resource, &e.spec))
    }

    /// The VirtualServices, oldest first.
    pub fn virtual_services(&self) -> impl Iterator<Item = (&Resource, &VirtualService)> {
        self.entries().filter_map(|(r, s)| match s {
            Spec::VirtualService(vs) => Some((r, vs)),
            _ => None,
        })
    }

    /// The DestinationRules, oldest first.
    pub fn destination_rules(&self) -> impl Iterator<Item = (&Resource, &DestinationRule)> {
        self.entries().filter_map(|(r, s)| match s {
            Spec::DestinationRule(dr) => Some((r, dr)),
            _ => None,
        })
    }

    /// The Gateways, oldest first.
    pub fn gateways(&self) -> impl Iterator<Item = (&Resource, &Gateway)> {
        self.entries().filter_map(|(r, s)| match s {
            Spec::Gateway(gw) => Some((r, gw)),
            _ => None,
        })
    }

    /// The PeerAuthentications, oldest first.
    pub fn peer_authentications(&self) -> impl Iterator<Item = (&Resource, &PeerAuthentication)> {
        self.entries().filter_map(|(r, s)| match s {
            Spec::PeerAuthentication(pa) => Some((r, pa)),
            _ => None,
        })
    }

    /// The AuthorizationPolicies, oldest first.
    pub fn authorization_policies(
        &self,
    ) -> impl Iterator<Item = (&Resource, &AuthorizationPolicy)> {
        self.entries().filter_map(|(r, s)| match s {
            Spec::AuthorizationPolicy(ap) => Some((r, ap)),
            _ => None,
        })
    }

    /// The inbound mTLS mode of a workload of this set's namespace with
    /// `labels`: see [`peer_authentication`] for Istio's precedence.
    pub fn effective_mtls(&self, labels: &BTreeMap<String, String>) -> EffectiveMtls {
        let policies =
            self.peer_authentications()
                .map(|(r, spec)| peer_authentication::PolicyRef {
                    namespace: &r.metadata.namespace,
                    name: &r.metadata.name,
                    spec,
                });
        peer_authentication::effective_mtls(policies, &self.namespace, labels).0
    }

    /// The AuthorizationPolicies that apply to a workload of this set's
    /// namespace with `labels`, oldest first: those of the root namespace
    /// (mesh-wide) and those of the workload's namespace, each when its
    /// selector matches the labels or it has none (Istio's scoping).
    pub fn authorization_policies_for(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Vec<(&Resource, &AuthorizationPolicy)> {
        self.authorization_policies()
            .filter(|(r, ap)| {
                let ns = r.metadata.namespace.as_str();
                (ns == ROOT_NAMESPACE || ns == self.namespace) && ap.selects(labels)
            })
            .collect()
    }

    /// The VirtualServices the sidecars use (routed namespace, bound to
    /// `mesh`), oldest first, each with the hosts it wins. Istio uses one
    /// VirtualService per host for sidecars; micromesh makes that choice
    /// explicit: the oldest, and analysis reports the others.
    pub fn mesh_virtual_services(&self) -> Vec<(&Resource, &VirtualService, Vec<&str>)> {
        let mut claimed: Vec<String> = Vec::new();
        self.virtual_services()
            .filter(|(r, vs)| r.is_routed() && vs.binds_mesh())
            .map(|(r, vs)| {
                let won = vs
                    .hosts
                    .iter()
                    .filter(|h| {
                        let key = self.host_key(h);
                        let free = !claimed.contains(&key);
                        if free {
                            claimed.push(key);
                        }
                        free
                    })
                    .map(String::as_str)
                    .collect();
                (r, vs, won)
            })
            .collect()
    }

    /// The DestinationRule in force for a service: every DestinationRule in
    /// the routed namespace whose host names it, oldest first, merged as
    /// istiod's `mergeDestinationRule` merges them: the subsets of all of
    /// them (a subset name already defined keeps the older definition), and
    /// the top-level `trafficPolicy` of the oldest one that has one.
    /// Returns the merged rule and the resources it came from, oldest first.
    pub fn destination_rule_for(&self, service: &str) -> Option<(Vec<&Resource>, DestinationRule)> {
        let mut from = Vec::new();
        let mut merged: Option<DestinationRule> = None;
        for (resource, rule) in self
            .destination_rules()
            .filter(|(r, dr)| r.is_routed() && self.host_key(&dr.host) == service)
        {
            from.push(resource);
            let Some(merged) = merged.as_mut() else {
                merged = Some(rule.clone());
                continue;
            };
            for subset in &rule.subsets {
                if merged.subset(&subset.name).is_none() {
                    merged.subsets.push(subset.clone());
                }
            }
            if merged.traffic_policy.is_none() {
                merged.traffic_policy = rule.traffic_policy.clone();
            }
        }
        merged.map(|rule| (from, rule))
    }

    /// What a gateway proxy with `labels` serves, in the order istiod builds
    /// a gateway's routes (`buildGatewayHTTPRouteConfig`): the routed Gateways
    /// that select it, oldest first; for each, the VirtualServices bound to
    /// it, oldest first; each VirtualService host that meets a server host
    /// gives a domain. Every VirtualService for a domain is merged into it,
    /// in that order (one that reaches it twice, through two Gateways,
    /// counts once: Istio appends its routes again, where they never match).
    pub fn gateway_virtual_hosts(&self, labels: &BTreeMap<String, String>) -> GatewayHosts<'_> {
        let gateways: Vec<(&Resource, &Gateway)> = self
            .gateways()
            .filter(|(r, gw)| r.is_routed() && gw.selects(labels))
            .collect();
        let mut hosts: Vec<GatewayHost<'_>> = Vec::new();
        for (gateway, spec) in &gateways {
            let bound = self.virtual_services().filter(|(r, vs)| {
                r.is_routed()
                    && vs.bound_gateways(&r.metadata.namespace).any(|(ns, name)| {
                        ns == gateway.metadata.namespace && name == gateway.metadata.name
                    })
            });
            for (resource, virtual_service) in bound {
                for host in &virtual_service.hosts {
                    for server_host in spec.hosts() {
                        let Some(domain) = intersect_hosts(server_host, host) else {
                            continue;
                        };
                        let domain = domain.to_ascii_lowercase();
                        let entry = match hosts.iter().position(|h| h.domain == domain) {
                            Some(i) => &mut hosts[i],
                            None => {
                                hosts.push(GatewayHost {
                                    domain,
                                    virtual_services: Vec::new(),
                                });
                                hosts.last_mut().expect("just pushed")
                            }
                        };
                        if !entry
                            .virtual_services
                            .iter()
                            .any(|(r, _)| r.id() == resource.id())
                        {
                            entry.virtual_services.push((resource, virtual_service));
                        }
                    }
                }
            }
        }
        GatewayHosts {
            gateways: gateways.into_iter().map(|(r, _)| r).collect(),
            hosts,
        }
    }

    fn position(&self, resource: &Resource) -> Option<usize> {
        let key = resource.key()?;
        self.entries
            .iter()
            .position(|e| e.resource.key() == Some(key))
    }
}

/// What one gateway proxy serves: see [`ConfigSet::gateway_virtual_hosts`].
#[derive(Debug)]
pub struct GatewayHosts<'a> {
    /// The routed Gateways that select the proxy, oldest first.
    pub gateways: Vec<&'a Resource>,
    /// One entry per domain, in the order the domains first appear.
    pub hosts: Vec<GatewayHost<'a>>,
}

/// One domain a gateway serves and the VirtualServices merged into it.
#[derive(Debug)]
pub struct GatewayHost<'a> {
    /// Lower case: `*`, `shop.example.com`.
    pub domain: String,
    /// In merge order (see [`ConfigSet::gateway_virtual_hosts`]).
    pub virtual_services: Vec<(&'a Resource, &'a VirtualService)>,
}

/// [`ConfigSet::host_key`] for the local mesh (namespace `default`).
pub fn host_key(host: &str) -> String {
    service_of_host(host)
        .map(str::to_string)
        .unwrap_or_else(|| host.to_ascii_lowercase())
}

fn change(resource: &Resource, action: String) -> Change {
    Change {
        kind: resource.kind.clone(),
        namespace: resource.metadata.namespace.clone(),
        name: resource.metadata.name.clone(),
        action,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(content: &str) -> Vec<SourceFile> {
        vec![SourceFile {
            name: "test.yaml".into(),
            content: content.into(),
        }]
    }

    const VS: &str = "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: hw}\nspec:\n  hosts: [helloworld-service]\n  http:\n  - route:\n    - destination: {host: helloworld-service}\n";

    #[test]
    fn apply_reports_created_configured_unchanged_like_kubectl() {
        let resources = ConfigSet::parse(&files(VS)).unwrap();
        let (set, changes) = ConfigSet::default().apply(resources.clone());
        assert_eq!(changes[0].action, "created");
        assert_eq!(
            changes[0].to_string(),
            "virtualservice.networking.istio.io/hw created"
        );
        let (set, changes) = set.apply(resources);
        assert_eq!(changes[0].action, "unchanged");
        let changed = ConfigSet::parse(&files(&VS.replace("v1alpha3", "v1"))).unwrap();
        let (set, changes) = set.apply(changed);
        assert_eq!(changes[0].action, "configured");
        assert_eq!(set.len(), 1);
        assert_eq!(
            set.list(Some("vs"))[0].api_version,
            "networking.istio.io/v1"
        );
    }

    #[test]
    fn delete_by_reference_and_not_found() {
        let (set, _) = ConfigSet::default().apply(ConfigSet::parse(&files(VS)).unwrap());
        let target = Resource::reference(Kind::VirtualService, "default", "hw");
        let (set, changes) = set.delete(std::slice::from_ref(&target));
        assert_eq!(changes[0].action, "deleted");
        assert!(set.is_empty());
        let (_, changes) = set.delete(&[target]);
        assert_eq!(changes[0].action, "not found");
    }

    #[test]
    fn the_stored_form_round_trips_and_is_revalidated() {
        let (set, _) = ConfigSet::default().apply(ConfigSet::parse(&files(VS)).unwrap());
        let json = serde_json::to_string(&set).unwrap();
        assert!(json.contains("\"apiVersion\":\"networking.istio.io/v1alpha3\""));
        let loaded: ConfigSet = serde_json::from_str(&json).unwrap();
        assert_eq!(loaded, set);

        let empty: ConfigSet = serde_json::from_str("{}").unwrap();
        assert!(empty.is_empty());

        let tampered = json.replace("helloworld-service\"}}]", "Bad Host\"}}]");
        let err = serde_json::from_str::<ConfigSet>(&tampered).unwrap_err();
        assert!(
            err.to_string().contains("VirtualService default/hw"),
            "{err}"
        );
    }

    #[test]
    fn apply_refuses_a_resource_that_does_not_validate() {
        let mut resource = ConfigSet::parse(&files(VS)).unwrap().remove(0);
        resource.spec = serde_yaml::from_str("hosts: []\nhttp: []").unwrap();
        let (set, changes) = ConfigSet::default().apply(vec![resource]);
        assert!(set.is_empty());
        assert!(
            changes[0].action.starts_with("invalid: "),
            "{}",
            changes[0].action
        );
    }

    #[test]
    fn get_prints_yaml_that_applies_again() {
        let (set, _) = ConfigSet::default().apply(ConfigSet::parse(&files(VS)).unwrap());
        let printed = serde_yaml::to_string(&set.list(None)[0]).unwrap();
        assert!(
            printed.starts_with("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\n"),
            "{printed}"
        );
        let again = ConfigSet::parse(&files(&printed)).unwrap();
        assert_eq!(set.apply(again).1[0].action, "unchanged");
    }
}
