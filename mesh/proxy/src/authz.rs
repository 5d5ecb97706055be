//! Authorization: may this caller do this request? The callee's sidecar
//! decides, on its inbound side, from the AuthorizationPolicies that apply
//! to its workload (Istio's RBAC filter in the inbound Envoy chain).
//!
//! Istio's order, which [`evaluate`] follows:
//!
//! ```text
//! CUSTOM (refused at validation: micromesh has no external authorizer)
//!   -> any DENY policy matches?            deny
//!   -> no ALLOW policy applies?            allow
//!   -> any ALLOW policy matches?           allow
//!   -> otherwise                           deny
//! AUDIT policies never change the decision; one that matches marks the
//! request as audited.
//! ```
//!
//! So one ALLOW policy with no rules (`spec: {}`) denies everything, and one
//! with an empty rule (`rules: [{}]`) allows everything.
//!
//! A policy matches when any of its rules does; a rule when any `from`
//! source, any `to` operation and every `when` condition match (a part left
//! out matches everything). Within a source or operation every field set
//! must match; a list matches when any value does, a `notX` list when none
//! does. Values are Istio's four forms ([`matches_value`]): exact `abc`,
//! prefix `abc*`, suffix `*abc`, presence `*` (any non-empty value). Hosts
//! compare case-insensitively; methods and paths exactly. Paths may also be
//! templates ([`template_matches`]): `{*}` one segment, `{**}` any number.
//!
//! The peer identity is matched whole (`principals`, `source.principal`)
//! or by its parts, as Envoy's RBAC filter does with the regexes Istio
//! writes: the namespace after `/ns/`, the service account after `/sa/`
//! (`serviceAccounts`: `name` in the policy's namespace, or
//! `namespace/name`, exactly), the trust domain before the first `/`.
//! Addresses: `ipBlocks`/`source.ip` the connection's peer,
//! `remoteIpBlocks`/`remote.ip` the original client (see
//! `authorize::remote_address`).
//!
//! What the request carries in:
//! - the peer's identity in Istio's principal form,
//!   `cluster.local/ns/default/sa/guestbook-ui` (the client certificate's
//!   SPIFFE URI without `spiffe://`). A plaintext request has none: it
//!   matches no `principals` and no `namespaces` value, not even `*`, and
//!   therefore does match every `notPrincipals` and `notNamespaces` (Envoy's
//!   `not` of an "authenticated" matcher that is false without TLS);
//! - the path as `normalize.rs` made it, the same path the route saw and
//!   the app receives. For authorization Istio recommends
//!   `DECODE_AND_MERGE_SLASHES`, so that `/admin`, `//admin` and `/%2Fadmin`
//!   are one path to a `DENY /admin*` rule; the wiring passes the path
//!   normalized that way. The query string (and a `#fragment`, which never
//!   reaches a proxy from a conforming client) is not part of the path
//!   matched, as in Envoy's `url_path` matcher.
//!
//! For the wiring into the inbound listener: a denied request is answered
//! by the sidecar itself with [`DENIED_STATUS`] and the body
//! [`DENIED_BODY`], and its access-log line and metrics carry the response
//! flag [`RESPONSE_FLAG`], exactly what Envoy's RBAC filter produces.

use std::net::IpAddr;

use http::HeaderMap;
use mesh_api::config::authorization_policy::{
    Action, AuthorizationPolicy, Condition, ConditionKey, IpBlock, Operation, Rule, Source,
};

/// The status of a denied request.
pub const DENIED_STATUS: http::StatusCode = http::StatusCode::FORBIDDEN;
/// The body of a denied request, Envoy's words.
pub const DENIED_BODY: &str = "RBAC: access denied";
/// The response flag of a denied request in the access log and metrics.
pub const RESPONSE_FLAG: &str = "RBAC";

/// What authorization looks at in one request.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The peer identity (`cluster.local/ns/x/sa/y`); `None` for plaintext.
    pub principal: Option<&'a str>,
    pub method: &'a str,
    /// The authority (`Host`), as received.
    pub host: &'a str,
    /// The normalized path; anything from `?` or `#` on is ignored.
    pub path: &'a str,
    /// The workload port the request is for.
    pub port: u16,
    pub headers: &'a HeaderMap,
    /// The connection's peer address (`source.ip`, `ipBlocks`).
    pub source_ip: IpAddr,
    /// The original client's address (`remote.ip`, `remoteIpBlocks`).
    pub remote_ip: IpAddr,
}

/// One applied policy: its `namespace/name` (for logs, and the namespace
/// a bare `serviceAccounts` name is in) and its spec.
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    pub name: &'a str,
    pub spec: &'a AuthorizationPolicy,
}

/// The decision and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// `denied by default/deny-admin`, `allowed by default/viewers`,
    /// `no ALLOW policy matched`, `no ALLOW policy applies`.
    pub reason: String,
    /// The AUDIT policies that matched, by name.
    pub audited_by: Vec<String>,
}

/// Decide a request against every policy that applies to the workload.
pub fn evaluate<'a>(policies: impl IntoIterator<Item = Policy<'a>>, request: &Request) -> Decision {
    let policies: Vec<Policy<'a>> = policies.into_iter().collect();
    let audited_by = policies
        .iter()
        .filter(|p| p.spec.action == Action::Audit && p.matches(request))
        .map(|p| p.name.to_string())
        .collect();
    let decide = |allowed: bool, reason: String| Decision {
        allowed,
        reason,
        audited_by,
    };
    if let Some(deny) = policies
        .iter()
        .find(|p| p.spec.action == Action::Deny && p.matches(request))
    {
        return decide(false, format!("denied by {}", deny.name));
    }
    let mut allows = policies
        .iter()
        .filter(|p| p.spec.action == Action::Allow)
        .peekable();
    if allows.peek().is_none() {
        return decide(true, "no ALLOW policy applies".into());
    }
    match allows.find(|p| p.matches(request)) {
        Some(allow) => decide(true, format!("allowed by {}", allow.name)),
        None => decide(false, "no ALLOW policy matched".into()),
    }
}

impl Policy<'_> {
    /// The namespace of the policy (`default` of `default/viewers`).
    pub fn namespace(&self) -> &str {
        self.name.split_once('/').map_or("", |(ns, _)| ns)
    }

    /// Whether any rule of the policy matches (no rules: never).
    pub fn matches(&self, request: &Request) -> bool {
        policy_matches(self.spec, self.namespace(), request)
    }
}

/// Whether any rule of the policy (in `namespace`) matches (no rules:
/// never).
pub fn policy_matches(policy: &AuthorizationPolicy, namespace: &str, request: &Request) -> bool {
    policy
        .rules
        .iter()
        .any(|rule| rule_matches(rule, namespace, request))
}

fn rule_matches(rule: &Rule, namespace: &str, request: &Request) -> bool {
    (rule.from.is_empty()
        || rule
            .from
            .iter()
            .any(|s| source_matches(s, namespace, request)))
        && (rule.to.is_empty() || rule.to.iter().any(|o| operation_matches(o, request)))
        && rule
            .when
            .iter()
            .all(|c| condition_matches(c, namespace, request))
}

fn source_matches(source: &Source, namespace: &str, request: &Request) -> bool {
    let principal = |p: &String| principal_matches(p, request.principal);
    let ns = |n: &String| namespace_matches(n, request.principal);
    let account = |a: &String| service_account_matches(a, namespace, request.principal);
    let domain = |d: &String| trust_domain_matches(d, request.principal);
    let source_ip = |b: &IpBlock| b.contains(request.source_ip);
    let remote_ip = |b: &IpBlock| b.contains(request.remote_ip);
    field(&source.principals, &source.not_principals, principal)
        && field(&source.namespaces, &source.not_namespaces, ns)
        && field(
            &source.service_accounts,
            &source.not_service_accounts,
            account,
        )
        && field(&source.trust_domains, &source.not_trust_domains, domain)
        && field(&source.ip_blocks, &source.not_ip_blocks, source_ip)
        && field(
            &source.remote_ip_blocks,
            &source.not_remote_ip_blocks,
            remote_ip,
        )
}

fn operation_matches(operation: &Operation, request: &Request) -> bool {
    let request_host = request.host.to_ascii_lowercase();
    let host = |h: &String| matches_value(&h.to_ascii_lowercase(), &request_host);
    let method = |m: &String| matches_value(m, request.method);
    let path = |p: &String| path_matches(p, path_only(request.path));
    let port = |p: &u16| *p == request.port;
    field(&operation.hosts, &operation.not_hosts, host)
        && field(&operation.methods, &operation.not_methods, method)
        && field(&operation.paths, &operation.not_paths, path)
        && field(&operation.ports, &operation.not_ports, port)
}

fn condition_matches(condition: &Condition, namespace: &str, request: &Request) -> bool {
    // What the key names in this request, read once.
    let (port, header) = match &condition.key {
        ConditionKey::DestinationPort => (request.port.to_string(), None),
        ConditionKey::RequestHeader(name) => (String::new(), header_value(request, name)),
        _ => (String::new(), None),
    };
    // Validation wrote every address value as a block.
    let in_block = |value: &String, addr: IpAddr| {
        value
            .parse::<IpBlock>()
            .is_ok_and(|block| block.contains(addr))
    };
    let test = |value: &String| match &condition.key {
        ConditionKey::SourcePrincipal => principal_matches(value, request.principal),
        ConditionKey::SourceNamespace => namespace_matches(value, request.principal),
        ConditionKey::SourceServiceAccount => {
            service_account_matches(value, namespace, request.principal)
        }
        ConditionKey::SourceTrustDomain => trust_domain_matches(value, request.principal),
        ConditionKey::SourceIp => in_block(value, request.source_ip),
        ConditionKey::RemoteIp => in_block(value, request.remote_ip),
        // Ports match exactly (validation refused patterns on them).
        ConditionKey::DestinationPort => *value == port,
        ConditionKey::RequestHeader(_) => {
            header.as_deref().is_some_and(|h| matches_value(value, h))
        }
    };
    field(&condition.values, &condition.not_values, test)
}

/// One field and its `notX` twin: any of `values` (when set), none of `not`.
fn field<T>(values: &[T], not: &[T], test: impl Fn(&T) -> bool) -> bool {
    (values.is_empty() || values.iter().any(&test)) && !not.iter().any(&test)
}

/// Istio's value forms: `*` any non-empty value, `abc*` prefix, `*abc`
/// suffix, otherwise exact.
pub fn matches_value(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return !value.is_empty();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

/// A principal pattern against the peer identity; nothing matches plaintext.
pub fn principal_matches(pattern: &str, principal: Option<&str>) -> bool {
    principal.is_some_and(|p| matches_value(pattern, p))
}

/// A namespace pattern against the peer identity's namespace (the segment
/// after `/ns/`); nothing matches plaintext.
pub fn namespace_matches(pattern: &str, principal: Option<&str>) -> bool {
    principal
        .and_then(namespace_of)
        .is_some_and(|ns| matches_value(pattern, ns))
}

/// A service account (`name`, in `namespace`, or `namespace/name`)
/// against the peer identity: its `/ns/` and `/sa/` segments equal them
/// (Istio's regex `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`, read on the
/// segments); nothing matches plaintext.
pub fn service_account_matches(value: &str, namespace: &str, principal: Option<&str>) -> bool {
    let (ns, sa) = value.split_once('/').unwrap_or((namespace, value));
    let Some(principal) = principal else {
        return false;
    };
    let segments: Vec<&str> = principal.split('/').collect();
    // segments[0] is the trust domain; then `ns <ns>`, then `sa <sa>` later.
    segments.len() >= 5
        && segments[1] == "ns"
        && segments[2] == ns
        && segments[3..].windows(2).any(|w| w[0] == "sa" && w[1] == sa)
}

/// A trust-domain pattern against the peer identity's trust domain (what
/// comes before its first `/`); nothing matches plaintext.
pub fn trust_domain_matches(pattern: &str, principal: Option<&str>) -> bool {
    principal
        .and_then(|p| p.split('/').next())
        .is_some_and(|td| matches_value(pattern, td))
}

/// A `paths` value against the request's path: a template when it holds
/// `{*}` or `{**}`, otherwise Istio's four forms.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    if pattern.contains('{') {
        template_matches(pattern, path)
    } else {
        matches_value(pattern, path)
    }
}

/// Istio's path templates, as Envoy's `uri_template` matcher reads them:
/// `{*}` matches one non-empty path segment, `{**}` any run of characters
/// including `/` (so any number of segments, none too), and the rest
/// literally. Both operators take only the characters a path segment may
/// hold unencoded (RFC 3986's `pchar`); `?` and `#` were cut off before.
pub fn template_matches(template: &str, path: &str) -> bool {
    fn pchar(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;:@=".contains(&b)
    }
    fn go(t: &[u8], p: &[u8]) -> bool {
        if let Some(rest) = t.strip_prefix(b"{**}") {
            // Try every length, shortest first, of a run of pchars and `/`.
            let mut n = 0;
            loop {
                if go(rest, &p[n..]) {
                    return true;
                }
                if n < p.len() && (pchar(p[n]) || p[n] == b'/') {
                    n += 1;
                } else {
                    return false;
                }
            }
        }
        if let Some(rest) = t.strip_prefix(b"{*}") {
            let run = p.iter().take_while(|&&b| pchar(b)).count();
            return (1..=run).any(|n| go(rest, &p[n..]));
        }
        match (t.first(), p.first()) {
            (None, None) => true,
            (Some(a), Some(b)) if a == b => go(&t[1..], &p[1..]),
            _ => false,
        }
    }
    go(template.as_bytes(), path.as_bytes())
}

/// `default` from `cluster.local/ns/default/sa/guestbook-ui`.
pub fn namespace_of(principal: &str) -> Option<&str> {
    let mut segments = principal.split('/');
    segments.next()?; // the trust domain
    match (segments.next(), segments.next()) {
        (Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

/// The path without its query and fragment.
fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// A header's value as Envoy's header matcher sees it: several values
/// joined with `,`; `None` when absent. The pseudo-headers are the request
/// line's parts.
fn header_value(request: &Request, name: &str) -> Option<String> {
    match name {
        ":method" => return Some(request.method.to_string()),
        ":path" => return Some(request.path.to_string()),
        ":authority" => return Some(request.host.to_string()),
        _ => {}
    }
    let values: Vec<&str> = request
        .headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap_or_default())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

#[cfg(test)]
mod tests;
