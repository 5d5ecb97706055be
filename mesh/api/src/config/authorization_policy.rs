//! AuthorizationPolicy: who may call a workload, and what they may do
//! (Istio's `security.istio.io` AuthorizationPolicy, the part micromesh
//! implements). This file validates the YAML; the decision itself is made
//! by the callee's sidecar, in `mesh/proxy/src/authz.rs`.
//!
//! A policy selects workloads (`selector`, or every workload of its
//! namespace, or of the mesh in the root namespace `istio-system`), takes an
//! `action` (ALLOW, the default; DENY; AUDIT) and lists `rules`. A rule
//! matches a request when its `from` (any one source), its `to` (any one
//! operation) and all its `when` conditions match; a field left out matches
//! everything. So, exactly as Istio's reference says:
//! - `spec: {}` (an ALLOW policy with no rules) matches no request: once it
//!   applies, every request to the workload is denied;
//! - `rules: [{}]` (one empty rule) matches every request: allow all.
//!
//! Values match in Istio's four forms: exact `abc`, prefix `abc*`, suffix
//! `*abc`, presence `*` (any non-empty value). A `*` anywhere else is refused
//! here, because Istio would read it literally (`a*b` only matches `a*b`),
//! which is never what its author meant.
//!
//! Paths may also be Istio's path templates: `{*}` stands for one path
//! segment, `{**}` for any number of them (`/api/{*}/info`,
//! `/{**}/admin`); `{**}` must be the last template in a path.
//!
//! The peer's identity can be matched whole (`principals`), or by part:
//! its namespace (`namespaces`), its service account (`serviceAccounts`,
//! `name` or `namespace/name`; a bare name is in the policy's namespace),
//! its trust domain (`trustDomains`). Addresses are matched too, though
//! locally every caller is 127.0.0.1, so identities are what tell callers
//! apart there: `ipBlocks` is the connection's peer address (the calling
//! pod on a cluster), `remoteIpBlocks` the original client's, read from
//! `x-forwarded-for` as Envoy does (at the gateway, the client the edge
//! determined; at a sidecar, the last entry).
//!
//! Refused by name: `CUSTOM` and `provider` (an external authorizer),
//! `targetRef(s)` (Gateway API attachment), `requestPrincipals` and the
//! `request.auth.*` conditions (until micromesh validates JWTs), and the
//! conditions on the connection micromesh does not keep (`destination.ip`,
//! `connection.sni`) or on Envoy's internals (`experimental.*`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::decode::{Decoder, Path, Shape, Unsupported};
use super::peer_authentication::decode_selector;

/// A validated AuthorizationPolicy spec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// `selector.matchLabels`; `None`: every workload of the namespace (or
    /// of the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub action: Action,
    /// Any one must match (OR). Empty: the policy matches no request.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl AuthorizationPolicy {
    /// Whether the policy applies to a workload with these labels (the
    /// namespace is the caller's business: see [`super::ConfigSet`]).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
}

/// What happens when a policy matches.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    /// Marks the request for auditing; never changes the decision.
    Audit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
        }
    }
}

/// One rule: `from` AND `to` AND every `when`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Any one must match; empty: any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Source>,
    /// Any one must match; empty: any operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Operation>,
    /// All must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// `from[].source`: every field set must match (AND); within a field, any
/// value (OR); a `notX` field matches when no value does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Peer identities, Istio's form `cluster.local/ns/default/sa/guestbook-ui`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// The namespace of the peer identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// The service account of the peer identity: `name` (in the policy's
    /// namespace) or `namespace/name`; matched exactly, no `*` forms.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    /// The trust domain of the peer identity (`cluster.local`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_trust_domains: Vec<String>,
    /// The connection's peer address, an address or a CIDR block.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<IpBlock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<IpBlock>,
    /// The original client's address (`x-forwarded-for`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<IpBlock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<IpBlock>,
}

/// An address block of `ipBlocks`: `10.0.0.0/8`, or one address (`/32`,
/// `/128`). Written and read as Istio writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpBlock {
    pub network: IpAddr,
    pub prefix: u8,
}

impl IpBlock {
    /// Whether `addr` is in the block (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, addr) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpBlock {
    type Err = String;

    fn from_str(text: &str) -> Result<IpBlock, String> {
        let bad = || {
            format!("`{text}` is not an address or a CIDR block; write `10.1.2.3` or `10.0.0.0/16`")
        };
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(bad()),
            },
        };
        Ok(IpBlock { network, prefix })
    }
}

impl TryFrom<String> for IpBlock {
    type Error = String;

    fn try_from(text: String) -> Result<IpBlock, String> {
        text.parse()
    }
}

impl From<IpBlock> for String {
    fn from(block: IpBlock) -> String {
        block.to_string()
    }
}

impl std::fmt::Display for IpBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `to[].operation`, the same AND/OR/NOT shape as [`Source`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// The request's authority, matched case-insensitively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    /// The workload port the request arrived for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Normalized paths, without the query string.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

/// One `when` entry: `key` with `values` (any matches) and/or `notValues`
/// (none may match).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub key: ConditionKey,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// The `when` keys micromesh understands (Istio's "Authorization Policy
/// Conditions" but those on JWTs and on what the connection does not keep).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConditionKey {
    /// `request.headers[x-user]`: the header's value (lower-case name);
    /// also the pseudo-headers `:method`, `:path` and `:authority`.
    RequestHeader(String),
    /// `source.principal`.
    SourcePrincipal,
    /// `source.namespace`.
    SourceNamespace,
    /// `source.serviceAccount`: `namespace/name`, or `name` in the
    /// policy's namespace.
    SourceServiceAccount,
    /// `source.trustDomain`.
    SourceTrustDomain,
    /// `source.ip`: the connection's peer address (values are blocks).
    SourceIp,
    /// `remote.ip`: the original client's address (values are blocks).
    RemoteIp,
    /// `destination.port`.
    DestinationPort,
}

impl ConditionKey {
    /// The key as Istio writes it.
    pub fn as_istio(&self) -> String {
        match self {
            ConditionKey::RequestHeader(name) => format!("request.headers[{name}]"),
            ConditionKey::SourcePrincipal => "source.principal".into(),
            ConditionKey::SourceNamespace => "source.namespace".into(),
            ConditionKey::SourceServiceAccount => "source.serviceAccount".into(),
            ConditionKey::SourceTrustDomain => "source.trustDomain".into(),
            ConditionKey::SourceIp => "source.ip".into(),
            ConditionKey::RemoteIp => "remote.ip".into(),
            ConditionKey::DestinationPort => "destination.port".into(),
        }
    }
}

// === shapes ===

const NO_JWT: &str = "matches the JWT's issuer/subject (RequestAuthentication); micromesh does not validate JWTs yet. Match the calling workload with `principals` instead";

pub(crate) const SPEC: Shape = Shape {
    what: "an AuthorizationPolicy spec",
    fields: &["selector", "action", "rules"],
    istio_only: &[
        (
            "provider",
            Unsupported::NotImplemented(
                "names the external authorizer of `action: CUSTOM`; micromesh decides ALLOW, DENY and AUDIT itself",
            ),
        ),
        (
            "targetRef",
            Unsupported::NotImplemented(
                "attaches the policy to a Gateway API resource; select workloads with `selector: {matchLabels: ...}`",
            ),
        ),
        (
            "targetRefs",
            Unsupported::NotImplemented(
                "attaches the policy to Gateway API resources; select workloads with `selector: {matchLabels: ...}`",
            ),
        ),
    ],
};

pub(crate) const RULE: Shape = Shape {
    what: "an authorization rule",
    fields: &["from", "to", "when"],
    istio_only: &[],
};

pub(crate) const FROM: Shape = Shape {
    what: "a `from` entry",
    fields: &["source"],
    istio_only: &[],
};

pub(crate) const TO: Shape = Shape {
    what: "a `to` entry",
    fields: &["operation"],
    istio_only: &[],
};

pub(crate) const SOURCE: Shape = Shape {
    what: "a source",
    fields: &[
        "principals",
        "notPrincipals",
        "namespaces",
        "notNamespaces",
        "serviceAccounts",
        "notServiceAccounts",
        "trustDomains",
        "notTrustDomains",
        "ipBlocks",
        "notIpBlocks",
        "remoteIpBlocks",
        "notRemoteIpBlocks",
    ],
    istio_only: &[
        ("requestPrincipals", Unsupported::NotImplemented(NO_JWT)),
        ("notRequestPrincipals", Unsupported::NotImplemented(NO_JWT)),
    ],
};

pub(crate) const OPERATION: Shape = Shape {
    what: "an operation",
    fields: &[
        "hosts",
        "notHosts",
        "ports",
        "notPorts",
        "methods",
        "notMethods",
        "paths",
        "notPaths",
    ],
    istio_only: &[],
};

pub(crate) const CONDITION: Shape = Shape {
    what: "a `when` condition",
    fields: &["key", "values", "notValues"],
    istio_only: &[],
};

// === decode ===

pub(crate) fn decode(d: &mut Decoder, spec: &Value) -> Option<AuthorizationPolicy> {
    let path = Path::root("spec");
    if spec.is_null() {
        return Some(AuthorizationPolicy::default());
    }
    let object = d.object(&path, spec, &SPEC)?;
    let selector = object
        .get("selector")
        .and_then(|(p, v)| decode_selector(d, &p, v));
    let action = object
        .get("action")
        .and_then(|(p, v)| decode_action(d, &p, v))
        .unwrap_or_default();
    let rules = object
        .get("rules")
        .and_then(|(p, v)| d.list(&p, v, decode_rule))
        .unwrap_or_default();
    Some(AuthorizationPolicy {
        selector,
        action,
        rules,
    })
}

fn decode_action(d: &mut Decoder, path: &Path, value: &Value) -> Option<Action> {
    let text = d.string(path, value)?;
    match text.as_str() {
        "ALLOW" => Some(Action::Allow),
        "DENY" => Some(Action::Deny),
        "AUDIT" => Some(Action::Audit),
        "CUSTOM" => {
            d.error(
                path,
                "micromesh does not implement `CUSTOM` (Istio does: it asks an external authorizer named by `provider`); use ALLOW, DENY or AUDIT",
            );
            None
        }
        other => {
            let upper = other.to_ascii_uppercase();
            let hint = if ["ALLOW", "DENY", "AUDIT"].contains(&upper.as_str()) {
                format!("; write `{upper}`")
            } else {
                String::new()
            };
            d.error(
                path,
                format!("`{other}` is not an action; use ALLOW (the default), DENY or AUDIT{hint}"),
            );
            None
        }
    }
}

fn decode_rule(d: &mut Decoder, path: &Path, value: &Value) -> Option<Rule> {
    let rule = d.object(path, value, &RULE)?;
    let before = d.errors.len();
    let from = rule
        .get("from")
        .and_then(|(p, v)| {
            let list = d.list(&p, v, |d, p, v| {
                let from = d.object(p, v, &FROM)?;
                let (p, v) = from.required(
                    d,
                    "source",
                    "{principals: [cluster.local/ns/default/sa/guestbook-ui]}",
                )?;
                decode_source(d, &p, v)
            })?;
            if list.is_empty() && v.as_sequence().is_some_and(|s| s.is_empty()) {
                d.error(
                    &p,
                    "`from` must not be empty; leave it out to match any source",
                );
            }
            Some(list)
        })
        .unwrap_or_default();
    let to = rule
        .get("to")
        .and_then(|(p, v)| {
            let list = d.list(&p, v, |d, p, v| {
                let to = d.object(p, v, &TO)?;
                let (p, v) = to.required(d, "operation", "{methods: [GET]}")?;
                decode_operation(d, &p, v)
            })?;
            if list.is_empty() && v.as_sequence().is_some_and(|s| s.is_empty()) {
                d.error(
                    &p,
                    "`to` must not be empty; leave it out to match any operation",
                );
            }
            Some(list)
        })
        .unwrap_or_default();
    let when = rule
        .get("when")
        .and_then(|(p, v)| d.list(&p, v, decode_condition))
        .unwrap_or_default();
    (d.errors.len() == before).then_some(Rule { from, to, when })
}

fn decode_source(d: &mut Decoder, path: &Path, value: &Value) -> Option<Source> {
    let before = d.errors.len();
    let object = d.object(path, value, &SOURCE)?;
    let mut list = |field: &str, check: fn(&str) -> Result<String, String>| {
        object
            .get(field)
            .and_then(|(p, v)| patterns(d, &p, v, check))
            .unwrap_or_default()
    };
    let principals = list("principals", check_principal);
    let not_principals = list("notPrincipals", check_principal);
    let namespaces = list("namespaces", check_pattern);
    let not_namespaces = list("notNamespaces", check_pattern);
    let service_accounts = list("serviceAccounts", check_service_account);
    let not_service_accounts = list("notServiceAccounts", check_service_account);
    let trust_domains = list("trustDomains", check_pattern);
    let not_trust_domains = list("notTrustDomains", check_pattern);
    let mut blocks = |field: &str| {
        object
            .get(field)
            .and_then(|(p, v)| {
                d.list(&p, v, |d, p, v| {
                    let text = d.name(p, v)?;
                    text.parse::<IpBlock>().map_err(|m| d.error(p, m)).ok()
                })
            })
            .unwrap_or_default()
    };
    let source = Source {
        principals,
        not_principals,
        namespaces,
        not_namespaces,
        service_accounts,
        not_service_accounts,
        trust_domains,
        not_trust_domains,
        ip_blocks: blocks("ipBlocks"),
        not_ip_blocks: blocks("notIpBlocks"),
        remote_ip_blocks: blocks("remoteIpBlocks"),
        not_remote_ip_blocks: blocks("notRemoteIpBlocks"),
    };
    if source == Source::default() && d.errors.len() == before {
        d.error(
            path,
            "a source must set at least one field (Istio refuses an empty source); leave `from` out to match any source",
        );
        return None;
    }
    Some(source)
}

fn decode_operation(d: &mut Decoder, path: &Path, value: &Value) -> Option<Operation> {
    let before = d.errors.len();
    let object = d.object(path, value, &OPERATION)?;
    let mut list = |field: &str, check: fn(&str) -> Result<String, String>| {
        object
            .get(field)
            .and_then(|(p, v)| patterns(d, &p, v, check))
            .unwrap_or_default()
    };
    let hosts = list("hosts", check_pattern);
    let not_hosts = list("notHosts", check_pattern);
    let methods = list("methods", check_pattern);
    let not_methods = list("notMethods", check_pattern);
    let paths = list("paths", check_path);
    let not_paths = list("notPaths", check_path);
    let mut ports = |field: &str| {
        object
            .get(field)
            .and_then(|(p, v)| d.list(&p, v, port))
            .unwrap_or_default()
    };
    let operation = Operation {
        hosts,
        not_hosts,
        ports: ports("ports"),
        not_ports: ports("notPorts"),
        methods,
        not_methods,
        paths,
        not_paths,
    };
    if operation == Operation::default() && d.errors.len() == before {
        d.error(
            path,
            "an operation must set at least one field (Istio refuses an empty operation); leave `to` out to match any operation",
        );
        return None;
    }
    Some(operation)
}

/// Istio writes ports as strings: `ports: ["8080"]`.
fn port(d: &mut Decoder, path: &Path, value: &Value) -> Option<u16> {
    let text = d.string(path, value)?;
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Some(port),
        _ => {
            d.error(
                path,
                format!("`{text}` is not a port; write a number 1..=65535 as a string, like \"8080\" (ports match exactly, without `*` patterns)"),
            );
            None
        }
    }
}

fn decode_condition(d: &mut Decoder, path: &Path, value: &Value) -> Option<Condition> {
    let object = d.object(path, value, &CONDITION)?;
    let key = object
        .required(d, "key", "request.headers[x-user]")
        .and_then(|(p, v)| {
            let text = d.name(&p, v)?;
            condition_key(&text).map_err(|m| d.error(&p, m)).ok()
        });
    let check = match key {
        Some(ConditionKey::SourcePrincipal) => check_principal,
        Some(ConditionKey::SourceServiceAccount) => check_service_account,
        _ => check_pattern,
    };
    let mut values = |field: &str| {
        object.get(field).and_then(|(p, v)| match key {
            Some(ConditionKey::DestinationPort) => {
                d.list(&p, v, |d, p, v| port(d, p, v).map(|n| n.to_string()))
            }
            // Kept as Istio wrote them; the proxy parses them again.
            Some(ConditionKey::SourceIp | ConditionKey::RemoteIp) => d.list(&p, v, |d, p, v| {
                let text = d.name(p, v)?;
                text.parse::<IpBlock>()
                    .map(|b| b.to_string())
                    .map_err(|m| d.error(p, m))
                    .ok()
            }),
            _ => patterns(d, &p, v, check),
        })
    };
    let (values, not_values) = (values("values"), values("notValues"));
    if values.as_ref().is_none_or(Vec::is_empty) && not_values.as_ref().is_none_or(Vec::is_empty) {
        d.error(
            path,
            "a condition needs `values` or `notValues` (Istio refuses one with neither)",
        );
        return None;
    }
    Some(Condition {
        key: key?,
        values: values.unwrap_or_default(),
        not_values: not_values.unwrap_or_default(),
    })
}

fn condition_key(text: &str) -> Result<ConditionKey, String> {
    const SUPPORTED: &str = "micromesh reads `request.headers[<name>]`, `source.principal`, `source.namespace`, `source.serviceAccount`, `source.trustDomain`, `source.ip`, `remote.ip` and `destination.port`";
    if let Some(name) = text
        .strip_prefix("request.headers[")
        .and_then(|rest| rest.strip_suffix(']'))
    {
        // Envoy's pseudo-headers name the request line's parts.
        if let Some(pseudo) = name.strip_prefix(':') {
            return match pseudo {
                "method" | "path" | "authority" => {
                    Ok(ConditionKey::RequestHeader(name.to_string()))
                }
                _ => Err(format!(
                    "`{text}`: micromesh reads the pseudo-headers `:method`, `:path` and `:authority`; for the scheme or anything else name a real header, like `request.headers[x-user]`"
                )),
            };
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return Err(format!(
                "`{text}` does not name a header; write `request.headers[x-user]`"
            ));
        }
        return Ok(ConditionKey::RequestHeader(name.to_ascii_lowercase()));
    }
    match text {
        "source.principal" => Ok(ConditionKey::SourcePrincipal),
        "source.namespace" => Ok(ConditionKey::SourceNamespace),
        "source.serviceAccount" => Ok(ConditionKey::SourceServiceAccount),
        "source.trustDomain" => Ok(ConditionKey::SourceTrustDomain),
        "source.ip" => Ok(ConditionKey::SourceIp),
        "remote.ip" => Ok(ConditionKey::RemoteIp),
        "destination.port" => Ok(ConditionKey::DestinationPort),
        "destination.ip" => Err(format!(
            "micromesh does not implement the condition `{text}` (Istio does: it matches the address the connection was made to, the pod's own; a workload is selected with `selector` instead); {SUPPORTED}"
        )),
        _ if text.starts_with("request.auth.") => Err(format!(
            "micromesh does not implement the condition `{text}` (Istio does: it {NO_JWT}); {SUPPORTED}"
        )),
        "connection.sni" => Err(format!(
            "micromesh does not implement the condition `{text}` (Istio does: it matches the TLS server name of the connection); {SUPPORTED}"
        )),
        _ if text.starts_with("experimental.envoy.filters.") => Err(format!(
            "micromesh does not implement the condition `{text}` (Istio does: it reads Envoy filter metadata, an experimental key); {SUPPORTED}"
        )),
        _ => Err(format!(
            "`{text}` is not a condition key Istio defines; {SUPPORTED}"
        )),
    }
}

/// A list of match values, each checked by `check` (which may rewrite it).
fn patterns(
    d: &mut Decoder,
    path: &Path,
    value: &Value,
    check: fn(&str) -> Result<String, String>,
) -> Option<Vec<String>> {
    d.list(path, value, |d, p, v| {
        let text = d.name(p, v)?;
        check(&text).map_err(|m| d.error(p, m)).ok()
    })
}

/// Istio's four value forms: `abc`, `abc*`, `*abc`, `*`.
fn check_pattern(text: &str) -> Result<String, String> {
    let inner = text.strip_prefix('*').unwrap_or(text);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if text != "*" && (inner.contains('*') || (text.starts_with('*') && text.ends_with('*'))) {
        return Err(format!(
            "`{text}`: a `*` may stand only at the start (suffix match, `*abc`) or the end (prefix match, `abc*`), or alone (any value); Istio would read this one literally"
        ));
    }
    Ok(text.to_string())
}

/// A principal as Istio writes it: `cluster.local/ns/default/sa/x`. A
/// `spiffe://` prefix (the URI in the certificate) is dropped.
fn check_principal(text: &str) -> Result<String, String> {
    let text = text.strip_prefix("spiffe://").unwrap_or(text);
    check_pattern(text)
}

/// A service account: `name` or `namespace/name`, matched exactly (Istio
/// quotes the value: a `*` in it is literal, so it is refused here).
fn check_service_account(text: &str) -> Result<String, String> {
    let fine = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
    };
    let ok = match text.split_once('/') {
        Some((ns, sa)) => fine(ns) && fine(sa),
        None => fine(text),
    };
    if !ok {
        return Err(format!(
            "`{text}` is not a service account; write `name` (in the policy's namespace) or `namespace/name`, like `default/guestbook-ui` (matched exactly, no `*`)"
        ));
    }
    Ok(text.to_string())
}

/// A path: starts with `/` unless it is a suffix or presence pattern. A
/// template (`{*}`, `{**}`) is checked as Istio does: the templates stand
/// for whole segments, `{**}` is the last template, and nothing else
/// holds a brace.
fn check_path(text: &str) -> Result<String, String> {
    if text.contains(['{', '}']) {
        let mut seen_any = false;
        for segment in text.trim_matches('/').split('/') {
            match segment {
                "{*}" | "{**}" if seen_any => {
                    return Err(format!(
                        "`{text}`: `{{**}}` must be the last template of a path (Istio refuses a template after it)"
                    ));
                }
                "{**}" => seen_any = true,
                "{*}" => {}
                _ if segment.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "`{text}`: a template stands for a whole segment, `{{*}}` (one segment) or `{{**}}` (any number), like `/api/{{*}}/info`; `{segment}` is neither"
                    ));
                }
                _ => {}
            }
        }
        if !text.starts_with('/') {
            return Err(format!(
                "`{text}` is not a path; paths start with `/`, like `/api/{{*}}/info`"
            ));
        }
        return Ok(text.to_string());
    }
    if !text.starts_with('/') && !text.starts_with('*') {
        return Err(format!(
            "`{text}` is not a path; paths start with `/`, like `/api/*`"
        ));
    }
    check_pattern(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_yaml(text: &str) -> (Option<AuthorizationPolicy>, Vec<(String, String)>) {
        let value: Value = serde_yaml::from_str(text).unwrap();
        let mut d = Decoder::default();
        let ap = decode(&mut d, &value);
        (
            ap,
            d.errors.into_iter().map(|e| (e.path, e.message)).collect(),
        )
    }

    #[test]
    fn istios_documented_example_decodes() {
        // The shape of the example in Istio's AuthorizationPolicy reference.
        let (ap, errors) = decode_yaml(
            r#"
selector:
  matchLabels: {app: guestbook-service}
action: ALLOW
rules:
- from:
  - source:
      principals: ["cluster.local/ns/default/sa/guestbook-ui"]
  - source:
      namespaces: ["test"]
  to:
  - operation:
      methods: ["GET"]
      paths: ["/info*"]
  - operation:
      methods: ["POST"]
      paths: ["/data"]
  when:
  - key: request.headers[X-User]
    values: ["alice*"]
  - key: destination.port
    notValues: ["9090"]
"#,
        );
        assert_eq!(errors, vec![]);
        let ap = ap.unwrap();
        assert_eq!(ap.action, Action::Allow);
        let rule = &ap.rules[0];
        assert_eq!(rule.from.len(), 2);
        assert_eq!(rule.to[0].paths, ["/info*"]);
        assert_eq!(
            rule.when[0].key,
            ConditionKey::RequestHeader("x-user".into()),
            "header names are lower-cased"
        );
        assert_eq!(rule.when[1].not_values, ["9090"]);
    }

    #[test]
    fn empty_spec_and_one_empty_rule_differ() {
        let (deny_all, errors) = decode_yaml("{}");
        assert_eq!(errors, vec![]);
        assert!(
            deny_all.unwrap().rules.is_empty(),
            "no rules: matches nothing"
        );
        let (allow_all, errors) = decode_yaml("rules: [{}]");
        assert_eq!(errors, vec![]);
        assert_eq!(allow_all.unwrap().rules, vec![Rule::default()]);
    }

    #[test]
    fn what_micromesh_does_not_implement_is_named() {
        let (_, errors) = decode_yaml(
            r#"
action: CUSTOM
provider: {name: ext-authz}
targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]
rules:
- from:
  - source: {requestPrincipals: ["*"], ipBlocks: ["10.0.0.300/8"]}
  - source: {}
  - {}
  to:
  - operation: {paths: ["/a*b", "/{*}x/x", "api"], ports: [8080, "http"]}
  when:
  - {key: "request.auth.claims[iss]", values: ["x"]}
  - {key: destination.ip, values: ["1.2.3.4"]}
  - {key: "request.headers[x-user]"}
  - {key: source.principl, values: [a]}
"#,
        );
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.provider",
                "spec.targetRefs",
                "spec.action",
                "spec.rules[0].from[0].source.requestPrincipals",
                "spec.rules[0].from[0].source.ipBlocks[0]",
                "spec.rules[0].from[1].source",
                "spec.rules[0].from[2].source",
                "spec.rules[0].to[0].operation.paths[0]",
                "spec.rules[0].to[0].operation.paths[1]",
                "spec.rules[0].to[0].operation.paths[2]",
                "spec.rules[0].to[0].operation.ports[0]",
                "spec.rules[0].to[0].operation.ports[1]",
                "spec.rules[0].when[0].key",
                "spec.rules[0].when[1].key",
                "spec.rules[0].when[2]",
                "spec.rules[0].when[3].key",
            ],
            "{errors:#?}"
        );
        let text = |i: usize| errors[i].1.as_str();
        assert!(text(2).contains("`CUSTOM`"));
        assert!(text(3).contains("JWT"));
        assert!(text(4).contains("not an address or a CIDR block"));
        assert!(text(7).contains("literally"));
        assert!(text(8).contains("a template stands for a whole segment"));
        assert!(text(9).contains("start with `/`"));
        assert!(text(10).contains("quote it"));
        assert!(text(12).contains("JWT"));
        assert!(text(13).contains("does not implement the condition `destination.ip`"));
        assert!(text(15).contains("not a condition key"));
    }

    #[test]
    fn identity_parts_addresses_templates_and_pseudo_headers_decode() {
        // The shapes of Istio's own test policies (pilot's authz testdata).
        let (ap, errors) = decode_yaml(
            r#"
rules:
- from:
  - source:
      serviceAccounts: ["guestbook-ui", "other/reader"]
      notServiceAccounts: ["default/robot"]
      trustDomains: ["cluster.local", "*-suffix"]
      ipBlocks: ["10.1.2.3", "5.6.0.0/16"]
      notRemoteIpBlocks: ["2001:db8::/32"]
  to:
  - operation: {paths: ["/api/{*}/info", "/{**}/admin", "/files/{**}"]}
  when:
  - {key: "request.headers[:method]", values: ["GET"]}
  - {key: source.serviceAccount, values: ["default/guestbook-ui"]}
  - {key: source.trustDomain, notValues: ["evil.example"]}
  - {key: source.ip, values: ["127.0.0.1"]}
  - {key: remote.ip, notValues: ["192.168.10.0/24"]}
"#,
        );
        assert_eq!(errors, vec![]);
        let rule = &ap.unwrap().rules[0];
        let source = &rule.from[0];
        assert_eq!(source.service_accounts, ["guestbook-ui", "other/reader"]);
        assert_eq!(source.ip_blocks[0].to_string(), "10.1.2.3/32");
        assert_eq!(source.ip_blocks[1].to_string(), "5.6.0.0/16");
        assert_eq!(
            rule.when[0].key,
            ConditionKey::RequestHeader(":method".into())
        );
        assert_eq!(rule.when[3].values, ["127.0.0.1/32"]);
        let (_, errors) = decode_yaml(
            r#"
rules:
- to: [{operation: {paths: ["/{**}/x/{*}", "/a{*}"]}}]
  from: [{source: {serviceAccounts: ["ns/*"], ipBlocks: ["10.0.0.0/33"]}}]
  when: [{key: "request.headers[:scheme]", values: [https]}]
"#,
        );
        let messages: Vec<&str> = errors.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(messages.len(), 5, "{messages:#?}");
        assert!(messages[0].contains("service account"));
        assert!(messages[1].contains("CIDR"));
        assert!(messages[2].contains("must be the last template"));
        assert!(messages[3].contains("whole segment"));
        assert!(messages[4].contains("pseudo-headers"));
    }

    #[test]
    fn ip_blocks_contain_their_addresses() {
        let block = |t: &str| t.parse::<IpBlock>().unwrap();
        let ip = |t: &str| t.parse::<IpAddr>().unwrap();
        assert!(block("10.0.0.0/8").contains(ip("10.200.1.1")));
        assert!(!block("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(block("10.1.2.3").contains(ip("10.1.2.3")));
        assert!(!block("10.1.2.3").contains(ip("10.1.2.4")));
        assert!(block("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(
            block("127.0.0.1").contains(ip("::ffff:127.0.0.1")),
            "v4-mapped"
        );
        assert!(block("2001:db8::/32").contains(ip("2001:db8:1::1")));
        assert!(!block("2001:db8::/32").contains(ip("10.0.0.1")));
        for bad in ["10.0.0.0/33", "10.0.0", "::/129", "a.b.c.d", "10.0.0.0/x"] {
            assert!(bad.parse::<IpBlock>().is_err(), "{bad}");
        }
    }

    #[test]
    fn spiffe_uris_become_istio_principals() {
        let (ap, errors) = decode_yaml(
            "rules: [{from: [{source: {principals: [\"spiffe://cluster.local/ns/default/sa/ui\"]}}]}]",
        );
        assert_eq!(errors, vec![]);
        assert_eq!(
            ap.unwrap().rules[0].from[0].principals,
            ["cluster.local/ns/default/sa/ui"]
        );
    }

    #[test]
    fn selectors_select_by_labels() {
        let labels = [("app".to_string(), "a".to_string())].into();
        assert!(AuthorizationPolicy::default().selects(&labels));
        let (ap, _) = decode_yaml("selector: {matchLabels: {app: b}}");
        assert!(!ap.unwrap().selects(&labels));
    }
}
