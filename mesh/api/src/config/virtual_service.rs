//! VirtualService: how requests to a host are routed (Istio's
//! `networking.istio.io` VirtualService, the part micromesh implements).
//!
//! A VirtualService is read top to bottom: its `http` rules are tried in
//! order and the first whose `match` succeeds routes the request, splitting
//! it by relative `weight` between destinations (a service, or a subset that
//! a DestinationRule defines), after an optional injected `fault`, with a
//! `timeout`, `retries`, header changes, a `rewrite` and a `mirror`.
//! `compile.rs` in mesh-control turns these into the snapshot's `HttpRoute`s.
//!
//! This module holds the typed form (durations in milliseconds, defaults not
//! yet applied, so analysis can tell "unset" from "zero") and its decoder.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::decode::{Decoder, Path, Shape, Unsupported};
use super::host::{check_host, is_dns_label, is_dns_subdomain};
use crate::snapshot::{HeaderOps, RouteMatch, StringMatch};

/// The pseudo-gateway name for "every sidecar in the mesh".
pub const MESH_GATEWAY: &str = "mesh";

/// A validated VirtualService spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualService {
    /// As written: service names, FQDNs, or (for gateways) any host or `*`.
    pub hosts: Vec<String>,
    /// As written; empty means `mesh` only, as in Istio.
    pub gateways: Vec<String>,
    pub http: Vec<HttpRoute>,
}

impl VirtualService {
    /// Whether sidecars use this VirtualService: no `gateways`, or `mesh` among them.
    pub fn binds_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == MESH_GATEWAY)
    }

    /// The Gateways this VirtualService binds to, as `(namespace, name)`;
    /// a bare name is in the VirtualService's own namespace.
    pub fn bound_gateways<'a>(
        &'a self,
        own_namespace: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.gateways
            .iter()
            .filter(|g| *g != MESH_GATEWAY)
            .map(move |g| g.split_once('/').unwrap_or((own_namespace, g.as_str())))
    }
}

/// One `http[]` rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    pub name: Option<String>,
    /// Any one must match; empty matches every request.
    pub matches: Vec<RouteMatch>,
    pub route: Vec<RouteDestination>,
    pub fault: Option<Fault>,
    pub timeout_ms: Option<u64>,
    pub retries: Option<Retries>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub rewrite_uri: Option<String>,
    pub mirror: Option<Mirror>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    pub destination: Destination,
    /// As written; `None` is 100 for a single destination, 0 otherwise.
    pub weight: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    pub delay: Option<Delay>,
    pub abort: Option<Abort>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delay {
    pub fixed_delay_ms: u64,
    /// `None`: Istio injects the fault into no request at all.
    pub percentage: Option<f64>,
}

/// Istio's `HTTPFaultInjection.Abort`: its error type is a oneof, so exactly
/// one of `http_status` and `grpc_status` is set (`http2Error`, the third
/// member, is refused by name).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Abort {
    /// `httpStatus`: the HTTP status of the answer, like 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// `grpcStatus`: a gRPC code name from [`GRPC_STATUS_CODES`], as
    /// written (`UNAVAILABLE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
    pub percentage: Option<f64>,
}

impl Abort {
    /// What the abort answers, for people: `503` or `gRPC UNAVAILABLE`.
    pub fn describe_status(&self) -> String {
        match (&self.grpc_status, self.http_status) {
            (Some(name), _) => format!("gRPC {name}"),
            (None, Some(status)) => status.to_string(),
            (None, None) => "-".to_string(),
        }
    }
}

/// The gRPC status names `grpcStatus` accepts, in code order (the index is
/// the number on the wire: `UNAVAILABLE` is 14). These are gRPC's
/// `doc/statuscodes.md` names, the same table istiod looks a `grpcStatus`
/// up in before it writes Envoy's `abort.grpc_status` number; Istio takes
/// only the upper-case name, never the number.
pub const GRPC_STATUS_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The wire number of a gRPC status name (`UNAVAILABLE` -> 14).
pub fn grpc_status_code(name: &str) -> Option<u16> {
    GRPC_STATUS_CODES
        .iter()
        .position(|known| *known == name)
        .map(|code| code as u16)
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// `None` or 0: Istio turns retries off for the route.
    pub attempts: Option<u32>,
    pub per_try_timeout_ms: Option<u64>,
    pub retry_on: Option<RetryOn>,
}

/// Istio's comma-separated `retryOn`, split the way istiod splits it: plain
/// status codes become retriable status codes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryOn {
    pub conditions: Vec<String>,
    pub status_codes: Vec<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    pub destination: Destination,
    /// `mirrorPercentage`; `None` mirrors every request (Istio's default).
    pub percentage: Option<f64>,
}

/// The `retryOn` conditions micromesh's proxy implements.
pub const RETRY_CONDITIONS: &[&str] = &[
    "5xx",
    "gateway-error",
    "connect-failure",
    "refused-stream",
    "reset",
    "retriable-status-codes",
    "unavailable",
    "cancelled",
];

/// Conditions Envoy (and so Istio) knows that micromesh does not.
const ISTIO_ONLY_RETRY_CONDITIONS: &[&str] = &[
    "retriable-4xx",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "reset-before-request",
];

// === shapes ===

pub(crate) const SPEC: Shape = Shape {
    what: "a VirtualService spec",
    fields: &["hosts", "gateways", "http"],
    istio_only: &[
        (
            "exportTo",
            Unsupported::NotImplemented(
                "limits which namespaces see this VirtualService; micromesh has one namespace",
            ),
        ),
        (
            "tcp",
            Unsupported::NotImplemented("routes opaque TCP connections; micromesh routes HTTP"),
        ),
        (
            "tls",
            Unsupported::NotImplemented(
                "routes TLS connections by SNI without terminating them; micromesh routes plain HTTP",
            ),
        ),
    ],
};

const HEADER_FIELDS_REPLACED: &str = "was removed from Istio's VirtualService; header changes are now written `headers: {request: {add: {...}, set: {...}, remove: [...]}, response: {...}}`";

pub(crate) const HTTP_ROUTE: Shape = Shape {
    what: "an http route",
    fields: &[
        "name",
        "match",
        "route",
        "fault",
        "timeout",
        "retries",
        "headers",
        "rewrite",
        "mirror",
        "mirrorPercentage",
    ],
    istio_only: &[
        (
            "corsPolicy",
            Unsupported::NotImplemented(
                "answers browsers' CORS preflight requests and adds the CORS response headers",
            ),
        ),
        (
            "delegate",
            Unsupported::NotImplemented("hands this rule's routing to another VirtualService"),
        ),
        (
            "directResponse",
            Unsupported::NotImplemented(
                "answers with a fixed status and body without calling any service",
            ),
        ),
        (
            "redirect",
            Unsupported::NotImplemented("answers with an HTTP 301/302 redirect"),
        ),
        (
            "mirrors",
            Unsupported::NotImplemented(
                "mirrors traffic to several destinations; micromesh mirrors to one: use `mirror` and `mirrorPercentage`",
            ),
        ),
        (
            "mirrorPercent",
            Unsupported::Replaced(
                "`mirrorPercent` is Istio's old integer field; write `mirrorPercentage: {value: N}`",
            ),
        ),
        (
            "mirror_percent",
            Unsupported::Replaced(
                "`mirror_percent` is Istio's old integer field; write `mirrorPercentage: {value: N}`",
            ),
        ),
        (
            "appendHeaders",
            Unsupported::Replaced(
                "`appendHeaders` was removed from Istio's VirtualService; write `headers: {request: {add: {name: value}}}`",
            ),
        ),
        (
            "appendRequestHeaders",
            Unsupported::Replaced(HEADER_FIELDS_REPLACED),
        ),
        (
            "appendResponseHeaders",
            Unsupported::Replaced(HEADER_FIELDS_REPLACED),
        ),
        (
            "removeRequestHeaders",
            Unsupported::Replaced(HEADER_FIELDS_REPLACED),
        ),
        (
            "removeResponseHeaders",
            Unsupported::Replaced(HEADER_FIELDS_REPLACED),
        ),
        (
            "websocketUpgrade",
            Unsupported::Replaced(
                "`websocketUpgrade` was removed from Istio's VirtualService (upgrades are always allowed now); remove it",
            ),
        ),
    ],
};

pub(crate) const MATCH: Shape = Shape {
    what: "a match",
    fields: &[
        "name",
        "uri",
        "method",
        "headers",
        "queryParams",
        "withoutHeaders",
    ],
    istio_only: &[
        (
            "authority",
            Unsupported::NotImplemented(
                "matches the Host header; micromesh picks the VirtualService by host already",
            ),
        ),
        (
            "gateways",
            Unsupported::NotImplemented("limits one match to some of the bound gateways"),
        ),
        (
            "ignoreUriCase",
            Unsupported::NotImplemented("matches the URI case-insensitively"),
        ),
        (
            "port",
            Unsupported::NotImplemented(
                "matches the port the caller used; micromesh services have one port",
            ),
        ),
        (
            "scheme",
            Unsupported::NotImplemented("matches the URI scheme (http, https)"),
        ),
        (
            "sourceLabels",
            Unsupported::NotImplemented("matches only callers whose workload has these labels"),
        ),
        (
            "sourceNamespace",
            Unsupported::NotImplemented("matches only callers in one namespace"),
        ),
        (
            "statPrefix",
            Unsupported::NotImplemented("names the route in Envoy's statistics"),
        ),
    ],
};

pub(crate) const STRING_MATCH: Shape = Shape {
    what: "a string match (one of `exact`, `prefix`, `regex`)",
    fields: &["exact", "prefix", "regex"],
    istio_only: &[],
};

pub(crate) const ROUTE_DESTINATION: Shape = Shape {
    what: "a route destination",
    fields: &["destination", "weight"],
    istio_only: &[(
        "headers",
        Unsupported::NotImplemented(
            "changes headers per destination; write them once for the rule under `headers`",
        ),
    )],
};

pub(crate) const DESTINATION: Shape = Shape {
    what: "a destination",
    fields: &["host", "subset", "port"],
    istio_only: &[],
};

pub(crate) const PORT_SELECTOR: Shape = Shape {
    what: "a port",
    fields: &["number"],
    istio_only: &[],
};

pub(crate) const FAULT: Shape = Shape {
    what: "a fault",
    fields: &["delay", "abort"],
    istio_only: &[],
};

pub(crate) const DELAY: Shape = Shape {
    what: "a fault delay",
    fields: &["fixedDelay", "percentage"],
    istio_only: &[
        (
            "percent",
            Unsupported::Replaced(
                "`percent` is the talk-era integer field: Istio's current CRD still accepts it in a delay but marks it deprecated, and micromesh refuses it; write `percentage: {value: 100}` (a double, so 0.5 works too)",
            ),
        ),
        (
            "exponentialDelay",
            Unsupported::NotImplemented("adds a random exponentially distributed delay"),
        ),
    ],
};

pub(crate) const ABORT: Shape = Shape {
    what: "a fault abort",
    fields: &["httpStatus", "grpcStatus", "percentage"],
    istio_only: &[
        (
            "percent",
            Unsupported::Replaced(
                "`percent` is the talk-era integer field, and Istio's current CRD no longer has it in an abort (Kubernetes refuses it as an unknown field): write `percentage: {value: 100}`",
            ),
        ),
        (
            "http2Error",
            Unsupported::NotImplemented("resets HTTP/2 streams with an error code"),
        ),
    ],
};

pub(crate) const RETRIES: Shape = Shape {
    what: "a retry policy",
    fields: &["attempts", "perTryTimeout", "retryOn"],
    istio_only: &[
        (
            "backoff",
            Unsupported::NotImplemented("sets the minimum wait between retries"),
        ),
        (
            "retryIgnorePreviousHosts",
            Unsupported::NotImplemented(
                "controls whether a retry may pick the host that just failed",
            ),
        ),
        (
            "retryRemoteLocalities",
            Unsupported::NotImplemented("retries in other localities (zones, regions)"),
        ),
    ],
};

pub(crate) const HEADERS: Shape = Shape {
    what: "header operations (`request`, `response`)",
    fields: &["request", "response"],
    istio_only: &[],
};

pub(crate) const HEADER_OPERATIONS: Shape = Shape {
    what: "header operations (`set`, `add`, `remove`)",
    fields: &["set", "add", "remove"],
    istio_only: &[],
};

pub(crate) const REWRITE: Shape = Shape {
    what: "a rewrite",
    fields: &["uri"],
    istio_only: &[
        (
            "authority",
            Unsupported::NotImplemented("rewrites the Host header"),
        ),
        (
            "uriRegexRewrite",
            Unsupported::NotImplemented("rewrites the path with a regular expression"),
        ),
    ],
};

// === decode ===

pub(crate) fn decode(d: &mut Decoder, spec: &Value) -> Option<VirtualService> {
    let path = Path::root("spec");
    let object = d.object(&path, spec, &SPEC)?;

    let hosts = object
        .required(d, "hosts", "[guestbook-ui]")
        .and_then(|(p, v)| {
            let hosts = d.list(&p, v, |d, p, v| {
                let host = d.string(p, v)?;
                check_host(&host, true).map_err(|m| d.error(p, m)).ok()?;
                Some(host)
            })?;
            if hosts.is_empty() && matches!(v, Value::Sequence(s) if s.is_empty()) {
                d.error(
                    &p,
                    "a VirtualService needs at least one host, like `guestbook-ui`",
                );
            }
            Some(hosts)
        })
        .unwrap_or_default();

    let gateways = object
        .get("gateways")
        .and_then(|(p, v)| {
            d.list(&p, v, |d, p, v| {
                let gateway = d.name(p, v)?;
                let name = gateway.split_once('/').map_or(gateway.as_str(), |(_, n)| n);
                let namespace_ok = gateway
                    .split_once('/')
                    .is_none_or(|(ns, _)| is_dns_label(ns));
                if !namespace_ok || !(name == MESH_GATEWAY || is_dns_subdomain(name)) {
                    d.error(
                        p,
                        format!("`{gateway}` is not a gateway reference: write a Gateway's name, `namespace/name`, or `mesh` for the sidecars"),
                    );
                    return None;
                }
                Some(gateway)
            })
        })
        .unwrap_or_default();

    let binds_mesh = gateways.is_empty() || gateways.iter().any(|g| g == MESH_GATEWAY);
    if binds_mesh && let Some(i) = hosts.iter().position(|h| h == "*") {
        d.error(
                &path.field("hosts").index(i),
                "`*` cannot be a host of a VirtualService the sidecars use (Istio rejects it too): name the service, like `guestbook-ui`, or bind the VirtualService to a Gateway with `gateways: [my-gateway]`",
            );
    }
    for (i, host) in hosts.iter().enumerate() {
        if hosts[..i].contains(host) {
            d.error(
                &path.field("hosts").index(i),
                format!("host `{host}` is listed twice"),
            );
        }
    }

    let http = object
        .required(
            d,
            "http",
            "[{route: [{destination: {host: guestbook-ui}}]}]",
        )
        .and_then(|(p, v)| {
            let empty = matches!(v, Value::Sequence(s) if s.is_empty());
            let rules = d.list(&p, v, decode_http_route)?;
            if empty {
                d.error(&p, "a VirtualService needs at least one http route");
            }
            Some(rules)
        })
        .unwrap_or_default();

    Some(VirtualService {
        hosts,
        gateways,
        http,
    })
}

fn decode_http_route(d: &mut Decoder, path: &Path, value: &Value) -> Option<HttpRoute> {
    let object = d.object(path, value, &HTTP_ROUTE)?;
    let errors_before = d.errors.len();
    let mut rule = HttpRoute {
        name: object.get("name").and_then(|(p, v)| d.name(&p, v)),
        ..Default::default()
    };

    if let Some((p, v)) = object.get("match") {
        rule.matches = d.list(&p, v, decode_match).unwrap_or_default();
    }

    match object.get("route") {
        Some((p, v)) => {
            let empty = matches!(v, Value::Sequence(s) if s.is_empty());
            rule.route = d.list(&p, v, decode_route_destination).unwrap_or_default();
            // Istio once required weights to sum to 100; now they are
            // relative, but all zero still leaves nowhere to send a request
            // (and a proxy would reject the snapshot), so refuse it here.
            let several = matches!(v, Value::Sequence(s) if s.len() > 1);
            if several && !rule.route.is_empty() && rule.route.iter().all(|r| r.weight.unwrap_or(0) == 0) {
                d.error(
                    &p,
                    "every destination of this rule has weight 0 (an unset weight counts as 0 when there are several destinations): requests would have nowhere to go. Give at least one destination a weight",
                );
            }
            if empty {
                d.error(&p, "an http route needs at least one destination, like `route: [{destination: {host: guestbook-ui}}]`");
            }
        }
        None => d.error(
            &path.field("route"),
            "missing required field `route`: an http route needs at least one destination, like `route: [{destination: {host: guestbook-ui}}]` (micromesh does not implement `redirect` or `directResponse`)",
        ),
    }

    if let Some((p, v)) = object.get("fault") {
        rule.fault = decode_fault(d, &p, v);
    }
    if let Some((p, v)) = object.get("timeout") {
        rule.timeout_ms = d.duration_ms(&p, v);
    }
    if let Some((p, v)) = object.get("retries") {
        rule.retries = decode_retries(d, &p, v);
    }
    if let Some((p, v)) = object.get("headers")
        && let Some(headers) = d.object(&p, v, &HEADERS)
    {
        if let Some((p, v)) = headers.get("request") {
            rule.request_headers = decode_header_ops(d, &p, v).unwrap_or_default();
        }
        if let Some((p, v)) = headers.get("response") {
            rule.response_headers = decode_header_ops(d, &p, v).unwrap_or_default();
        }
    }
    if let Some((p, v)) = object.get("rewrite")
        && let Some(rewrite) = d.object(&p, v, &REWRITE)
    {
        match rewrite.get("uri") {
            Some((p, v)) => {
                if let Some(uri) = d.string(&p, v) {
                    if uri.is_empty() {
                        d.error(&p, "an empty rewrite is not a path; write `uri: /` to replace the matched prefix with `/`");
                    } else {
                        rule.rewrite_uri = Some(uri);
                    }
                }
            }
            // Only report the missing `uri` when nothing else was wrong
            // with the rewrite (an unimplemented `authority` already was).
            None if v.as_mapping().is_some_and(|m| m.is_empty()) => {
                d.error(&p, "a rewrite needs `uri`, like `rewrite: {uri: /}`")
            }
            None => {}
        }
    }

    let mirror = object
        .get("mirror")
        .and_then(|(p, v)| decode_destination(d, &p, v));
    let mirror_percentage = object
        .get("mirrorPercentage")
        .and_then(|(p, v)| d.percentage(&p, v));
    if object.has("mirrorPercentage") && !object.has("mirror") {
        d.error(
            &path.field("mirrorPercentage"),
            "`mirrorPercentage` without `mirror` mirrors nothing; add `mirror: {host: ..., subset: ...}` or remove it",
        );
    }
    rule.mirror = mirror.map(|destination| Mirror {
        destination,
        percentage: mirror_percentage,
    });

    (d.errors.len() == errors_before).then_some(rule)
}

fn decode_match(d: &mut Decoder, path: &Path, value: &Value) -> Option<RouteMatch> {
    let object = d.object(path, value, &MATCH)?;
    let mut m = RouteMatch::default();
    if let Some((p, v)) = object.get("name") {
        d.name(&p, v);
    }
    if let Some((p, v)) = object.get("uri") {
        m.uri = decode_string_match(d, &p, v, true);
    }
    if let Some((p, v)) = object.get("method") {
        m.method = decode_string_match(d, &p, v, true);
    }
    if let Some((p, v)) = object.get("headers") {
        m.headers = decode_header_matches(d, &p, v);
    }
    if let Some((p, v)) = object.get("withoutHeaders") {
        m.without_headers = decode_header_matches(d, &p, v);
    }
    if let Some((p, v)) = object.get("queryParams") {
        m.query_params = d
            .map(&p, v, |d, p, _, v| decode_string_match(d, p, v, false))
            .unwrap_or_default();
    }
    Some(m)
}

fn decode_header_matches(
    d: &mut Decoder,
    path: &Path,
    value: &Value,
) -> BTreeMap<String, StringMatch> {
    d.map(path, value, |d, p, name, v| {
        if name.is_empty() {
            d.error(p, "a header name must not be empty");
            return None;
        }
        // The proxy's own check (`mesh_api::check`): a name it could not
        // match on would make every proxy reject the snapshot.
        if !crate::check::header_name(name) {
            d.error(
                p,
                format!("`{name}` is not a header name: use letters, digits and `-`, like `x-request-source`"),
            );
            return None;
        }
        if name != name.to_ascii_lowercase() {
            d.error(
                p,
                format!(
                    "header names are matched in lower case (Istio requires it): write `{}`",
                    name.to_ascii_lowercase()
                ),
            );
            return None;
        }
        decode_string_match(d, p, v, true)
    })
    .unwrap_or_default()
}

/// Istio's StringMatch: exactly one of `exact`, `prefix`, `regex`. Regexes
/// use RE2 syntax (Envoy's); the regex crate follows the same rules and is
/// used here to reject a bad one before any proxy sees it.
fn decode_string_match(
    d: &mut Decoder,
    path: &Path,
    value: &Value,
    prefix_allowed: bool,
) -> Option<StringMatch> {
    if let Value::String(s) = value {
        d.error(
            path,
            format!("a string match is a mapping: write `{{exact: {s:?}}}`, `{{prefix: ...}}` or `{{regex: ...}}`"),
        );
        return None;
    }
    let object = d.object(path, value, &STRING_MATCH)?;
    let present: Vec<&str> = STRING_MATCH
        .fields
        .iter()
        .copied()
        .filter(|k| object.has(k))
        .collect();
    match present.as_slice() {
        [] => {
            d.error(
                path,
                "a string match needs one of `exact`, `prefix` or `regex` (to match any value that is present, write `regex: \".*\"`)",
            );
            None
        }
        [kind] => {
            let (p, v) = object.get(kind)?;
            let text = d.string(&p, v)?;
            match *kind {
                "exact" => Some(StringMatch::Exact(text)),
                "prefix" if !prefix_allowed => {
                    d.error(
                        &p,
                        format!("Istio matches query parameters with `exact` or `regex` only; write `regex: \"{}.*\"`", regex::escape(&text)),
                    );
                    None
                }
                "prefix" => Some(StringMatch::Prefix(text)),
                _ => match crate::check::anchored_regex(&text) {
                    Ok(_) => Some(StringMatch::Regex(text)),
                    Err(e) => {
                        d.error(
                            &p,
                            format!(
                                "`{text}` is not a valid regular expression (RE2 syntax): {}",
                                one_line(&e.to_string())
                            ),
                        );
                        None
                    }
                },
            }
        }
        several => {
            d.error(
                path,
                format!(
                    "a string match takes exactly one of `exact`, `prefix`, `regex`; found {}",
                    several
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            );
            None
        }
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn decode_route_destination(
    d: &mut Decoder,
    path: &Path,
    value: &Value,
) -> Option<RouteDestination> {
    let object = d.object(path, value, &ROUTE_DESTINATION)?;
    let destination = object
        .required(d, "destination", "{host: guestbook-ui}")
        .and_then(|(p, v)| decode_destination(d, &p, v));
    let weight = object.get("weight").map(|(p, v)| {
        if let Value::Number(n) = v
            && n.as_i64().is_some_and(|w| w < 0)
        {
            d.error(
                &p,
                format!("weight {n} is negative; weights are relative shares, 0 or more"),
            );
            return None;
        }
        d.u32(&p, v, 0)
    });
    let weight = match weight {
        Some(None) => return None,
        Some(Some(w)) => Some(w),
        None => None,
    };
    Some(RouteDestination {
        destination: destination?,
        weight,
    })
}

pub(crate) fn decode_destination(
    d: &mut Decoder,
    path: &Path,
    value: &Value,
) -> Option<Destination> {
    let object = d.object(path, value, &DESTINATION)?;
    let errors_before = d.errors.len();
    let host = object
        .required(d, "host", "guestbook-ui")
        .and_then(|(p, v)| {
            let host = d.string(&p, v)?;
            check_host(&host, false).map_err(|m| d.error(&p, m)).ok()?;
            Some(host)
        });
    let subset = object.get("subset").and_then(|(p, v)| {
        let subset = d.string(&p, v)?;
        if !is_dns_label(&subset) {
            d.error(
                &p,
                format!("`{subset}` is not a subset name: subset names are DNS labels (lower-case letters, digits, `-`), like `v1`"),
            );
            return None;
        }
        Some(subset)
    });
    let port = object.get("port").and_then(|(p, v)| {
        let port = d.object(&p, v, &PORT_SELECTOR)?;
        let (p, v) = port.required(d, "number", "8080")?;
        d.integer(&p, v, 1, 65535).map(|n| n as u16)
    });
    if d.errors.len() != errors_before {
        return None;
    }
    Some(Destination {
        host: host?,
        subset,
        port,
    })
}

fn decode_fault(d: &mut Decoder, path: &Path, value: &Value) -> Option<Fault> {
    let object = d.object(path, value, &FAULT)?;
    let errors_before = d.errors.len();
    let mut fault = Fault::default();
    if let Some((p, v)) = object.get("delay")
        && let Some(delay) = d.object(&p, v, &DELAY)
    {
        let fixed = delay
            .required(d, "fixedDelay", "5s")
            .and_then(|(p, v)| d.duration_ms(&p, v));
        let percentage = delay
            .get("percentage")
            .and_then(|(p, v)| d.percentage(&p, v));
        fault.delay = fixed.map(|fixed_delay_ms| Delay {
            fixed_delay_ms,
            percentage,
        });
    }
    if let Some((p, v)) = object.get("abort")
        && let Some(abort) = d.object(&p, v, &ABORT)
    {
        // Istio's oneof: `httpStatus` or `grpcStatus`, exactly one.
        let http = abort.get("httpStatus");
        let grpc = abort.get("grpcStatus");
        let errors_before_status = d.errors.len();
        match (&http, &grpc) {
            (Some(_), Some((p, _))) => d.error(
                p,
                "an abort has one error type: write `httpStatus` (an HTTP answer, like 503) or \
                 `grpcStatus` (a gRPC status name, like UNAVAILABLE), not both",
            ),
            (None, None) => d.error(
                &p,
                "an abort needs its error type: `httpStatus: 503` (an HTTP status) or \
                 `grpcStatus: UNAVAILABLE` (a gRPC status name)",
            ),
            _ => {}
        }
        let http_status = http.and_then(|(p, v)| {
            let status = d.integer(&p, v, i64::MIN, i64::MAX)?;
            if !(200..=599).contains(&status) {
                d.error(
                    &p,
                    format!(
                        "{status} is not an HTTP status to abort with; use 200..=599, like 503"
                    ),
                );
                return None;
            }
            Some(status as u16)
        });
        let grpc_status = grpc.and_then(|(p, v)| decode_grpc_status(d, &p, v));
        let percentage = abort
            .get("percentage")
            .and_then(|(p, v)| d.percentage(&p, v));
        if d.errors.len() == errors_before_status {
            fault.abort = Some(Abort {
                http_status,
                grpc_status,
                percentage,
            });
        }
    }
    if !object.has("delay") && !object.has("abort") && d.errors.len() == errors_before {
        d.error(path, "a fault needs `delay` or `abort` (or both)");
    }
    (d.errors.len() == errors_before).then_some(fault)
}

/// `grpcStatus`: one of gRPC's upper-case code names, as Istio takes it.
fn decode_grpc_status(d: &mut Decoder, path: &Path, value: &Value) -> Option<String> {
    let names = GRPC_STATUS_CODES.join(", ");
    if let Value::Number(n) = value {
        let hint = n
            .as_u64()
            .and_then(|code| GRPC_STATUS_CODES.get(code as usize))
            .map(|name| format!("; for {n} write `{name}`"))
            .unwrap_or_default();
        d.error(
            path,
            format!("`grpcStatus` is a gRPC status name, not a number (Istio takes the name only){hint}; use one of {names}"),
        );
        return None;
    }
    let name = d.string(path, value)?;
    if grpc_status_code(&name).is_some() {
        return Some(name);
    }
    // The name written in lower case, or one or two letters off.
    let upper = name.to_ascii_uppercase().replace(['-', ' '], "_");
    let hint = GRPC_STATUS_CODES
        .iter()
        .map(|known| (super::decode::edit_distance(&upper, known), *known))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(distance, known)| match distance {
            0 => format!(" (names are upper case: `{known}`)"),
            _ => format!("; did you mean `{known}`?"),
        })
        .unwrap_or_default();
    d.error(
        path,
        format!("`{name}` is not a gRPC status name{hint}; use one of {names}"),
    );
    None
}

fn decode_retries(d: &mut Decoder, path: &Path, value: &Value) -> Option<Retries> {
    let object = d.object(path, value, &RETRIES)?;
    let errors_before = d.errors.len();
    let attempts = object.get("attempts").and_then(|(p, v)| d.u32(&p, v, 0));
    let per_try_timeout_ms = object
        .get("perTryTimeout")
        .and_then(|(p, v)| d.duration_ms(&p, v));
    let retry_on = object.get("retryOn").and_then(|(p, v)| {
        let text = d.string(&p, v)?;
        let mut on = RetryOn::default();
        for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Ok(code) = part.parse::<u16>() {
                if (100..=599).contains(&code) {
                    on.status_codes.push(code);
                } else {
                    d.error(&p, format!("{code} is not an HTTP status code"));
                }
            } else if RETRY_CONDITIONS.contains(&part) {
                on.conditions.push(part.to_string());
            } else if ISTIO_ONLY_RETRY_CONDITIONS.contains(&part) {
                d.error(
                    &p,
                    format!("micromesh does not implement the retry condition `{part}` (Envoy does); use {}", RETRY_CONDITIONS.join(", ")),
                );
            } else {
                d.error(
                    &p,
                    format!("`{part}` is not a retry condition; use a comma-separated list of {} or HTTP status codes like 503", RETRY_CONDITIONS.join(", ")),
                );
            }
        }
        Some(on)
    });
    (d.errors.len() == errors_before).then_some(Retries {
        attempts,
        per_try_timeout_ms,
        retry_on,
    })
}

fn decode_header_ops(d: &mut Decoder, path: &Path, value: &Value) -> Option<HeaderOps> {
    let object = d.object(path, value, &HEADER_OPERATIONS)?;
    let mut ops = HeaderOps::default();
    // RFC 9110 field names are "tokens"; values are visible ASCII on one
    // line. The checks are the proxy's own (`mesh_api::check`).
    let is_token = crate::check::header_name;
    let check_names = |d: &mut Decoder, p: &Path, names: Vec<&String>| {
        for name in names {
            if !is_token(name) {
                d.error(
                    p,
                    format!("`{name}` is not a header name: use letters, digits and `-`, like `x-request-source`"),
                );
            }
        }
    };
    let check_values = |d: &mut Decoder, p: &Path, values: &BTreeMap<String, String>| {
        for (name, value) in values {
            if value.contains(['\r', '\n', '\0']) {
                d.error(
                    p,
                    format!(
                        "header value {value:?} holds a line break; header values are one line"
                    ),
                );
            } else if !crate::check::header_value(value) {
                d.error(
                    p,
                    format!(
                        "the value of header `{name}`, {value:?}, holds a control character \
                         (only tab is allowed); remove it or percent-encode it"
                    ),
                );
            }
        }
    };
    if let Some((p, v)) = object.get("set") {
        ops.set = d.string_map(&p, v).unwrap_or_default();
        check_names(d, &p, ops.set.keys().collect());
        check_values(d, &p, &ops.set);
    }
    if let Some((p, v)) = object.get("add") {
        ops.add = d.string_map(&p, v).unwrap_or_default();
        check_names(d, &p, ops.add.keys().collect());
        check_values(d, &p, &ops.add);
    }
    if let Some((p, v)) = object.get("remove") {
        ops.remove = d.string_list(&p, v).unwrap_or_default();
        check_names(d, &p, ops.remove.iter().collect());
    }
    Some(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_yaml(text: &str) -> (Option<VirtualService>, Vec<(String, String)>) {
        let value: Value = serde_yaml::from_str(text).unwrap();
        let mut d = Decoder::default();
        let vs = decode(&mut d, &value);
        let errors = d.errors.into_iter().map(|e| (e.path, e.message)).collect();
        (vs, errors)
    }

    #[test]
    fn a_full_rule_decodes() {
        let (vs, errors) = decode_yaml(
            r#"
hosts: [helloworld-service]
http:
- name: canary
  match:
  - uri: {prefix: /hello}
    headers: {user-agent: {regex: ".*Chrome.*"}}
    method: {exact: GET}
    queryParams: {debug: {exact: "1"}}
  route:
  - destination: {host: helloworld-service, subset: v1, port: {number: 8080}}
    weight: 80
  - destination: {host: helloworld-service, subset: v2}
    weight: 20
  fault:
    delay: {fixedDelay: 1.5s, percentage: {value: 10}}
    abort: {httpStatus: 503}
  timeout: 2s
  retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,connect-failure,429"}
  headers:
    request: {set: {x-canary: "yes"}, remove: [x-debug]}
    response: {add: {x-served-by: mesh}}
  rewrite: {uri: /v2/hello}
  mirror: {host: helloworld-service, subset: v3}
  mirrorPercentage: {value: 5}
"#,
        );
        assert_eq!(errors, vec![]);
        let vs = vs.unwrap();
        assert!(vs.binds_mesh());
        let rule = &vs.http[0];
        assert_eq!(rule.name.as_deref(), Some("canary"));
        assert_eq!(
            rule.matches[0].uri,
            Some(StringMatch::Prefix("/hello".into()))
        );
        assert_eq!(rule.route[1].weight, Some(20));
        assert_eq!(rule.route[0].destination.port, Some(8080));
        let fault = rule.fault.as_ref().unwrap();
        assert_eq!(fault.delay.as_ref().unwrap().fixed_delay_ms, 1500);
        assert_eq!(fault.abort.as_ref().unwrap().percentage, None);
        assert_eq!(rule.timeout_ms, Some(2000));
        let retries = rule.retries.as_ref().unwrap();
        assert_eq!(retries.attempts, Some(3));
        let on = retries.retry_on.as_ref().unwrap();
        assert_eq!(on.conditions, vec!["5xx", "connect-failure"]);
        assert_eq!(on.status_codes, vec![429]);
        assert_eq!(rule.request_headers.remove, vec!["x-debug"]);
        assert_eq!(rule.rewrite_uri.as_deref(), Some("/v2/hello"));
        assert_eq!(rule.mirror.as_ref().unwrap().percentage, Some(5.0));
    }

    #[test]
    fn all_problems_of_a_rule_are_reported_together() {
        let (_, errors) = decode_yaml(
            r#"
hosts: ["*"]
http:
- match:
  - headers: {User-Agent: {regex: "("}}
    uri: {prefix: /, exact: /}
  route:
  - destination: {host: helloworld-service, subset: V1}
    weight: -5
  fault:
    delay: {percent: 100, fixedDelay: 5}
  retries: {retryOn: "5xx,retriable-4xx,bogus"}
  corsPolicy: {}
"#,
        );
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.hosts[0]",
                "spec.http[0].corsPolicy",
                "spec.http[0].match[0].uri",
                "spec.http[0].match[0].headers.User-Agent",
                "spec.http[0].route[0].destination.subset",
                "spec.http[0].route[0].weight",
                "spec.http[0].fault.delay.percent",
                "spec.http[0].fault.delay.fixedDelay",
                "spec.http[0].retries.retryOn",
                "spec.http[0].retries.retryOn",
            ],
            "{errors:#?}"
        );
    }

    fn abort_yaml(abort: &str) -> String {
        format!(
            "hosts: [hello-grpc]\nhttp:\n- route: [{{destination: {{host: hello-grpc}}}}]\n  fault: {{abort: {abort}}}\n"
        )
    }

    #[test]
    fn a_grpc_status_abort_decodes_by_name() {
        let (vs, errors) = decode_yaml(&abort_yaml(
            "{grpcStatus: UNAVAILABLE, percentage: {value: 50}}",
        ));
        assert_eq!(errors, vec![]);
        let abort = vs.unwrap().http[0].fault.clone().unwrap().abort.unwrap();
        assert_eq!(abort.grpc_status.as_deref(), Some("UNAVAILABLE"));
        assert_eq!(abort.http_status, None);
        assert_eq!(abort.percentage, Some(50.0));
        assert_eq!(abort.describe_status(), "gRPC UNAVAILABLE");
        // Every name gRPC defines, at its wire number.
        assert_eq!(grpc_status_code("OK"), Some(0));
        assert_eq!(grpc_status_code("UNAVAILABLE"), Some(14));
        assert_eq!(grpc_status_code("UNAUTHENTICATED"), Some(16));
        for name in GRPC_STATUS_CODES {
            let (_, errors) = decode_yaml(&abort_yaml(&format!("{{grpcStatus: {name}}}")));
            assert_eq!(errors, vec![], "{name}");
        }
    }

    #[test]
    fn a_bad_grpc_status_is_refused_with_the_names_to_use() {
        let cases = [
            (
                "{grpcStatus: UNAVAILBLE}",
                "`UNAVAILBLE` is not a gRPC status name; did you mean `UNAVAILABLE`?",
            ),
            (
                "{grpcStatus: SERVER_BUSY}",
                "`SERVER_BUSY` is not a gRPC status name; use",
            ),
            (
                "{grpcStatus: unavailable}",
                "names are upper case: `UNAVAILABLE`",
            ),
            ("{grpcStatus: 14}", "for 14 write `UNAVAILABLE`"),
        ];
        for (abort, expected) in cases {
            let (vs, errors) = decode_yaml(&abort_yaml(abort));
            // The fault is dropped whole, never kept with a guessed status
            // (and the errors refuse the resource: `ConfigSet::apply`).
            assert!(
                vs.is_none_or(|vs| vs.http.first().is_none_or(|r| r.fault.is_none())),
                "{abort}: nothing half-applied"
            );
            assert_eq!(errors.len(), 1, "{abort}: {errors:?}");
            let (path, message) = &errors[0];
            assert_eq!(path, "spec.http[0].fault.abort.grpcStatus");
            assert!(message.contains(expected), "{abort}: {message}");
            assert!(
                message.contains("OK, CANCELLED, UNKNOWN") && message.contains("UNAUTHENTICATED"),
                "{abort}: the message lists the names: {message}"
            );
        }
    }

    #[test]
    fn an_abort_has_exactly_one_error_type() {
        let (_, errors) = decode_yaml(&abort_yaml("{httpStatus: 503, grpcStatus: UNAVAILABLE}"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, "spec.http[0].fault.abort.grpcStatus");
        assert!(errors[0].1.contains("not both"), "{}", errors[0].1);

        let (_, errors) = decode_yaml(&abort_yaml("{percentage: {value: 10}}"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, "spec.http[0].fault.abort");
        assert!(
            errors[0].1.contains("`grpcStatus: UNAVAILABLE`"),
            "{}",
            errors[0].1
        );

        // `http2Error` is still refused by name.
        let (_, errors) = decode_yaml(&abort_yaml("{http2Error: REFUSED_STREAM}"));
        assert_eq!(errors[0].0, "spec.http[0].fault.abort.http2Error");
        assert!(
            errors[0]
                .1
                .contains("micromesh does not implement `http2Error`"),
            "{}",
            errors[0].1
        );
    }

    #[test]
    fn gateway_bound_virtual_services_may_use_star() {
        let (vs, errors) = decode_yaml(
            "hosts: ['*']\ngateways: [guestbook-gateway]\nhttp: [{route: [{destination: {host: guestbook-ui}}]}]\n",
        );
        assert_eq!(errors, vec![]);
        let vs = vs.unwrap();
        assert!(!vs.binds_mesh());
        assert_eq!(
            vs.bound_gateways("default").collect::<Vec<_>>(),
            vec![("default", "guestbook-gateway")]
        );
    }

    #[test]
    fn query_params_refuse_prefix_like_istio() {
        let (_, errors) = decode_yaml(
            "hosts: [a]\nhttp: [{match: [{queryParams: {v: {prefix: x}}}], route: [{destination: {host: a}}]}]\n",
        );
        assert_eq!(errors.len(), 1);
        assert!(errors[0].1.contains("regex: \"x.*\""), "{}", errors[0].1);
    }
}
