//! The one check of a snapshot, shared by the control plane and the proxy.
//!
//! A proxy turns a [`Snapshot`] into header names, anchored regexes and
//! cluster pointers (`mesh/proxy/src/table.rs`). If the control plane let
//! through a field the proxy cannot compile, every proxy would reject
//! (NACK) every snapshot carrying it, and so miss every later endpoint
//! change: one typo in a VirtualService would freeze the whole mesh. So the
//! rules live here, once:
//!
//! - the config parser (`mesh_api::config`, run by `meshctl apply` at the
//!   control plane and by `meshctl validate` offline) calls the field checks
//!   ([`header_name`], [`header_value`], [`anchored_regex`], ...);
//! - the control plane runs [`check_snapshot`] on the snapshots a change
//!   compiles to before it commits the change, and refuses the change if one
//!   fails;
//! - the proxy runs [`check_snapshot`] first thing at snapshot acceptance.
//!
//! If a proxy still meets a snapshot it rejects (an older control plane, a
//! hand-written snapshot file, a bug), [`isolate`] does what Envoy does with
//! per-resource-type NACKs and Istio with a bad resource: the rejected
//! virtual host keeps its last good version (or is left out if it has none),
//! a bad endpoint or a second cluster of the same name is left out, and
//! everything else, endpoints first, is applied. The proxy still NACKs the
//! version with every reason, so `meshctl get proxies` shows what was held
//! back.

use std::collections::HashSet;

use regex::Regex;

use crate::snapshot::{HeaderOps, HttpRoute, RouteMatch, Snapshot, StringMatch, VirtualHost};

/// Retry conditions the proxy understands (Envoy's names). The proxy's
/// `retry.rs` turns each into a flag; the HTTP/2 and gRPC ones are accepted
/// and never met over HTTP/1.1.
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "connect-failure",
    "reset",
    "retriable-status-codes",
    "refused-stream",
    "unavailable",
    "cancelled",
    "deadline-exceeded",
    "resource-exhausted",
    "internal",
    "retriable-4xx",
];

/// Why a snapshot (or one resource of it) was rejected. The text goes back
/// to the control plane in the NACK, and `meshctl get proxies` shows it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SnapshotError {
    #[error("route {route:?}: {field} regex {pattern:?} does not compile: {error}")]
    BadRegex {
        route: String,
        field: String,
        pattern: String,
        error: String,
    },
    #[error(
        "route {route:?} sends traffic to cluster {cluster:?}, which is not in the snapshot; \
         check the destination's host and subset (meshctl analyze)"
    )]
    UnknownCluster { route: String, cluster: String },
    #[error("route {route:?} has no destination")]
    NoDestinations { route: String },
    #[error("route {route:?}: every destination has weight 0, so no request could be sent")]
    ZeroWeight { route: String },
    #[error("route {route:?}: {header:?} is not a valid HTTP header")]
    BadHeader { route: String, header: String },
    #[error("route {route:?}: {field} is {value}, expected 0..=100")]
    BadPercentage {
        route: String,
        field: &'static str,
        value: f64,
    },
    #[error("route {route:?}: fault abort status {status} is not an HTTP status (100..=599)")]
    BadAbortStatus { route: String, status: u16 },
    #[error("route {route:?}: fault abort grpcStatus {status} is not a gRPC status code (0..=16)")]
    BadAbortGrpcStatus { route: String, status: u16 },
    #[error("route {route:?}: unknown retryOn condition {condition:?}")]
    BadRetryOn { route: String, condition: String },
    #[error("domain {domain:?} is listed by two virtual hosts")]
    DuplicateDomain { domain: String },
    #[error("cluster {cluster:?} is defined twice")]
    DuplicateCluster { cluster: String },
    #[error("cluster {cluster:?}: endpoint {instance:?} has no address")]
    EmptyAddress { cluster: String, instance: String },
    /// What [`isolate`] reports: the snapshot was applied without these.
    #[error(
        "applied without the parts it rejected (the last good version of each stays): {reasons}"
    )]
    PartlyApplied { reasons: String },
}

// === field checks ===

/// An HTTP field name as RFC 9110 defines it: a non-empty "token". Exactly
/// what `http::HeaderName` accepts (it lower-cases letters itself).
pub fn header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value a proxy can send: no control character but tab. Exactly
/// what `http::HeaderValue::from_str` accepts (RFC 9110's field-vchar,
/// obs-text included, so UTF-8 passes); a line break, a NUL or DEL is
/// refused.
pub fn header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// A string-match regex, anchored: Envoy (and so Istio) require the regex to
/// match the whole value, not a part of it.
pub fn anchored_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

/// A percentage as Istio writes it: 0.0..=100.0.
pub fn percentage(value: f64) -> bool {
    (0.0..=100.0).contains(&value)
}

/// A status a fault may abort with.
pub fn abort_status(status: u16) -> bool {
    (100..=599).contains(&status)
}

/// A gRPC status code (gRPC defines 0, `OK`, to 16, `UNAUTHENTICATED`).
pub fn grpc_status(code: u16) -> bool {
    code <= 16
}

// === whole-snapshot check ===

/// Check everything the proxy compiles: the first problem found, or `Ok`.
pub fn check_snapshot(snapshot: &Snapshot) -> Result<(), SnapshotError> {
    let mut names = HashSet::new();
    for c in &snapshot.clusters {
        if !names.insert(c.name.as_str()) {
            return Err(SnapshotError::DuplicateCluster {
                cluster: c.name.clone(),
            });
        }
        if let Some(e) = c.endpoints.iter().find(|e| e.address.is_empty()) {
            return Err(SnapshotError::EmptyAddress {
                cluster: c.name.clone(),
                instance: e.instance.clone(),
            });
        }
    }
    let has_cluster = |name: &str| names.contains(name);
    check_listener(&snapshot.virtual_hosts, &has_cluster)?;
    if let Some(gateway) = &snapshot.gateway {
        check_listener(&gateway.virtual_hosts, &has_cluster)?;
    }
    Ok(())
}

/// The virtual hosts of one listener: each checked, no domain twice.
fn check_listener(
    hosts: &[VirtualHost],
    has_cluster: &dyn Fn(&str) -> bool,
) -> Result<(), SnapshotError> {
    let mut domains = HashSet::new();
    for host in hosts {
        check_virtual_host(host, has_cluster)?;
        for domain in &host.domains {
            if !domains.insert(domain.to_ascii_lowercase()) {
                return Err(SnapshotError::DuplicateDomain {
                    domain: domain.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Every route of one virtual host.
pub fn check_virtual_host(
    host: &VirtualHost,
    has_cluster: &dyn Fn(&str) -> bool,
) -> Result<(), SnapshotError> {
    host.routes
        .iter()
        .try_for_each(|route| check_route(route, has_cluster))
}

/// One route: destinations, matches, fault, retries, headers, mirror.
pub fn check_route(
    route: &HttpRoute,
    has_cluster: &dyn Fn(&str) -> bool,
) -> Result<(), SnapshotError> {
    let name = route.name.as_str();
    let unknown = |cluster: &str| SnapshotError::UnknownCluster {
        route: name.to_string(),
        cluster: cluster.to_string(),
    };
    if route.destinations.is_empty() {
        return Err(SnapshotError::NoDestinations {
            route: name.to_string(),
        });
    }
    if let Some(d) = route.destinations.iter().find(|d| !has_cluster(&d.cluster)) {
        return Err(unknown(&d.cluster));
    }
    if route.destinations.iter().all(|d| d.weight == 0) {
        return Err(SnapshotError::ZeroWeight {
            route: name.to_string(),
        });
    }
    for m in &route.matches {
        check_match(name, m)?;
    }
    if let Some(mirror) = &route.mirror {
        if !has_cluster(&mirror.cluster) {
            return Err(unknown(&mirror.cluster));
        }
        check_percentage(name, "mirror.percentage", mirror.percentage)?;
    }
    if let Some(fault) = &route.fault {
        if let Some(delay) = &fault.delay {
            check_percentage(name, "fault.delay.percentage", delay.percentage)?;
        }
        if let Some(abort) = &fault.abort {
            check_percentage(name, "fault.abort.percentage", abort.percentage)?;
            if !abort_status(abort.http_status) {
                return Err(SnapshotError::BadAbortStatus {
                    route: name.to_string(),
                    status: abort.http_status,
                });
            }
            if let Some(status) = abort.grpc_status.filter(|s| !grpc_status(*s)) {
                return Err(SnapshotError::BadAbortGrpcStatus {
                    route: name.to_string(),
                    status,
                });
            }
        }
    }
    if let Some(condition) = route
        .retries
        .retry_on
        .iter()
        .find(|c| !RETRY_ON.contains(&c.as_str()))
    {
        return Err(SnapshotError::BadRetryOn {
            route: name.to_string(),
            condition: condition.clone(),
        });
    }
    check_header_ops(name, &route.request_headers)?;
    check_header_ops(name, &route.response_headers)
}

/// `value` must be a percentage, or the route is rejected.
pub fn check_percentage(route: &str, field: &'static str, value: f64) -> Result<(), SnapshotError> {
    if percentage(value) {
        Ok(())
    } else {
        Err(SnapshotError::BadPercentage {
            route: route.to_string(),
            field,
            value,
        })
    }
}

fn bad_header(route: &str, header: String) -> SnapshotError {
    SnapshotError::BadHeader {
        route: route.to_string(),
        header,
    }
}

fn check_string_match(route: &str, field: &str, m: &StringMatch) -> Result<(), SnapshotError> {
    match m {
        StringMatch::Regex(pattern) => {
            anchored_regex(pattern)
                .map(|_| ())
                .map_err(|e| SnapshotError::BadRegex {
                    route: route.to_string(),
                    field: field.to_string(),
                    pattern: pattern.clone(),
                    error: e.to_string(),
                })
        }
        StringMatch::Exact(_) | StringMatch::Prefix(_) => Ok(()),
    }
}

fn check_match(route: &str, m: &RouteMatch) -> Result<(), SnapshotError> {
    if let Some(uri) = &m.uri {
        check_string_match(route, "uri", uri)?;
    }
    if let Some(method) = &m.method {
        check_string_match(route, "method", method)?;
    }
    for (what, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, value) in map {
            if !header_name(name) {
                return Err(bad_header(route, name.clone()));
            }
            check_string_match(route, &format!("{what}.{name}"), value)?;
        }
    }
    for (name, q) in &m.query_params {
        check_string_match(route, &format!("queryParams.{name}"), q)?;
    }
    Ok(())
}

fn check_header_ops(route: &str, ops: &HeaderOps) -> Result<(), SnapshotError> {
    for (name, value) in ops.set.iter().chain(&ops.add) {
        if !header_name(name) {
            return Err(bad_header(route, name.clone()));
        }
        if !header_value(value) {
            return Err(bad_header(route, format!("{name}: {value}")));
        }
    }
    match ops.remove.iter().find(|name| !header_name(name)) {
        Some(name) => Err(bad_header(route, name.clone())),
        None => Ok(()),
    }
}

// === isolation ===

/// Split `snapshot` into what passes [`check_snapshot`] and what does not.
///
/// Returns the snapshot to apply and every resource held back, with why:
///
/// - an endpoint without an address is left out of its cluster;
/// - a second cluster with a name already seen is left out;
/// - a virtual host that fails (a bad field, a cluster that is not there, a
///   domain another host already claims) is replaced by the virtual host of
///   the same name in `last_good` (the proxy's current snapshot) if that one
///   still passes against the new clusters, and left out otherwise.
///
/// Endpoints, clusters and every other virtual host are applied as sent, so
/// a bad rule for one service never holds back an endpoint change.
pub fn isolate(
    mut snapshot: Snapshot,
    last_good: Option<&Snapshot>,
) -> (Snapshot, Vec<SnapshotError>) {
    let mut rejected = Vec::new();
    let mut names = HashSet::new();
    let mut clusters = Vec::with_capacity(snapshot.clusters.len());
    for mut c in std::mem::take(&mut snapshot.clusters) {
        if !names.insert(c.name.clone()) {
            rejected.push(SnapshotError::DuplicateCluster { cluster: c.name });
            continue;
        }
        c.endpoints.retain(|e| {
            let ok = !e.address.is_empty();
            if !ok {
                rejected.push(SnapshotError::EmptyAddress {
                    cluster: c.name.clone(),
                    instance: e.instance.clone(),
                });
            }
            ok
        });
        clusters.push(c);
    }
    snapshot.clusters = clusters;
    let has_cluster = |name: &str| names.contains(name);

    let old_outbound = last_good.map(|s| s.virtual_hosts.as_slice()).unwrap_or(&[]);
    snapshot.virtual_hosts = isolate_listener(
        std::mem::take(&mut snapshot.virtual_hosts),
        old_outbound,
        &has_cluster,
        &mut rejected,
    );
    if let Some(gateway) = &mut snapshot.gateway {
        let old = last_good
            .and_then(|s| s.gateway.as_ref())
            .map(|g| g.virtual_hosts.as_slice())
            .unwrap_or(&[]);
        gateway.virtual_hosts = isolate_listener(
            std::mem::take(&mut gateway.virtual_hosts),
            old,
            &has_cluster,
            &mut rejected,
        );
    }
    (snapshot, rejected)
}

fn isolate_listener(
    hosts: Vec<VirtualHost>,
    last_good: &[VirtualHost],
    has_cluster: &dyn Fn(&str) -> bool,
    rejected: &mut Vec<SnapshotError>,
) -> Vec<VirtualHost> {
    let mut domains: HashSet<String> = HashSet::new();
    let mut kept = Vec::with_capacity(hosts.len());
    // A host passes if its routes pass and none of its domains is taken.
    let passes = |host: &VirtualHost, domains: &HashSet<String>| {
        check_virtual_host(host, has_cluster)?;
        let mut own = HashSet::new();
        match host.domains.iter().find(|d| {
            let d = d.to_ascii_lowercase();
            domains.contains(&d) || !own.insert(d)
        }) {
            Some(domain) => Err(SnapshotError::DuplicateDomain {
                domain: domain.clone(),
            }),
            None => Ok(()),
        }
    };
    for host in hosts {
        let host = match passes(&host, &domains) {
            Ok(()) => host,
            Err(error) => {
                rejected.push(error);
                match last_good.iter().find(|old| old.name == host.name) {
                    Some(old) if passes(old, &domains).is_ok() => old.clone(),
                    _ => continue,
                }
            }
        };
        domains.extend(host.domains.iter().map(|d| d.to_ascii_lowercase()));
        kept.push(host);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::*;

    /// Two services, one route each: passes.
    fn good() -> Snapshot {
        let host = |name: &str| VirtualHost {
            name: name.into(),
            domains: vec![name.into()],
            routes: vec![HttpRoute {
                name: format!("{name}-default"),
                destinations: vec![Destination {
                    cluster: name.into(),
                    weight: 100,
                }],
                ..Default::default()
            }],
        };
        let cluster = |name: &str| Cluster {
            name: name.into(),
            service: name.into(),
            endpoints: vec![Endpoint {
                instance: format!("{name}-1"),
                address: "127.0.0.1:1".into(),
                labels: Default::default(),
                identity: None,
                tls_mode: Default::default(),
            }],
            ..Default::default()
        };
        Snapshot {
            version: 1,
            virtual_hosts: vec![host("a"), host("b")],
            clusters: vec![cluster("a"), cluster("b")],
            ..Default::default()
        }
    }

    /// `good()` with route `a-default` edited.
    fn with_route(edit: impl FnOnce(&mut HttpRoute)) -> Snapshot {
        let mut s = good();
        edit(&mut s.virtual_hosts[0].routes[0]);
        s
    }

    fn header_match(name: &str) -> RouteMatch {
        RouteMatch {
            headers: [(name.to_string(), StringMatch::Exact("1".into()))].into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_kind_of_field_a_proxy_cannot_use_is_refused() {
        assert_eq!(check_snapshot(&good()), Ok(()));
        // (what is wrong, the snapshot, a word the error must carry)
        let cases: Vec<(&str, Snapshot, &str)> = vec![
            (
                "header match name with spaces",
                with_route(|r| r.matches = vec![header_match("x bad name")]),
                "x bad name",
            ),
            (
                "withoutHeaders name",
                with_route(|r| {
                    r.matches = vec![RouteMatch {
                        without_headers: header_match("a:b").headers,
                        ..Default::default()
                    }]
                }),
                "a:b",
            ),
            (
                "uri regex",
                with_route(|r| {
                    r.matches = vec![RouteMatch {
                        uri: Some(StringMatch::Regex("(".into())),
                        ..Default::default()
                    }]
                }),
                "regex",
            ),
            (
                "query regex",
                with_route(|r| {
                    r.matches = vec![RouteMatch {
                        query_params: [("q".to_string(), StringMatch::Regex("[".into()))].into(),
                        ..Default::default()
                    }]
                }),
                "queryParams.q",
            ),
            (
                "set header name",
                with_route(|r| {
                    r.request_headers.set.insert("x y".into(), "1".into());
                }),
                "x y",
            ),
            (
                "header value control character",
                with_route(|r| {
                    r.response_headers
                        .add
                        .insert("x-city".into(), "Z\u{1}rich".into());
                }),
                "x-city",
            ),
            (
                "header value line break",
                with_route(|r| {
                    r.request_headers
                        .set
                        .insert("x-a".into(), "1\r\nx-b: 2".into());
                }),
                "x-a",
            ),
            (
                "remove header name",
                with_route(|r| r.response_headers.remove = vec!["".into()]),
                "valid HTTP header",
            ),
            (
                "mirror percentage",
                with_route(|r| {
                    r.mirror = Some(Mirror {
                        cluster: "b".into(),
                        percentage: 101.0,
                    })
                }),
                "mirror.percentage",
            ),
            (
                "mirror cluster",
                with_route(|r| {
                    r.mirror = Some(Mirror {
                        cluster: "c".into(),
                        percentage: 1.0,
                    })
                }),
                "\"c\"",
            ),
            (
                "abort status",
                with_route(|r| {
                    r.fault = Some(Fault {
                        delay: None,
                        abort: Some(FaultAbort {
                            http_status: 99,
                            grpc_status: None,
                            percentage: 1.0,
                        }),
                    })
                }),
                "99",
            ),
            (
                "abort gRPC status",
                with_route(|r| {
                    r.fault = Some(Fault {
                        delay: None,
                        abort: Some(FaultAbort {
                            http_status: 200,
                            grpc_status: Some(17),
                            percentage: 1.0,
                        }),
                    })
                }),
                "grpcStatus 17",
            ),
            (
                "delay percentage",
                with_route(|r| {
                    r.fault = Some(Fault {
                        delay: Some(FaultDelay {
                            fixed_delay_ms: 1,
                            percentage: -1.0,
                        }),
                        abort: None,
                    })
                }),
                "fault.delay.percentage",
            ),
            (
                "retryOn",
                with_route(|r| r.retries.retry_on = vec!["bogus".into()]),
                "bogus",
            ),
            (
                "no destination",
                with_route(|r| r.destinations.clear()),
                "no destination",
            ),
            (
                "zero weights",
                with_route(|r| r.destinations[0].weight = 0),
                "weight 0",
            ),
            (
                "unknown cluster",
                with_route(|r| r.destinations[0].cluster = "c".into()),
                "\"c\"",
            ),
            (
                "domain twice",
                {
                    let mut s = good();
                    s.virtual_hosts[1].domains = vec!["A".into()];
                    s
                },
                "two virtual hosts",
            ),
            (
                "cluster twice",
                {
                    let mut s = good();
                    s.clusters[1].name = "a".into();
                    s
                },
                "defined twice",
            ),
            (
                "endpoint without address",
                {
                    let mut s = good();
                    s.clusters[0].endpoints[0].address.clear();
                    s
                },
                "no address",
            ),
        ];
        for (what, snapshot, word) in cases {
            let error = check_snapshot(&snapshot).expect_err(what).to_string();
            assert!(
                error.contains(word),
                "{what}: {error:?} should mention {word:?}"
            );
        }
    }

    #[test]
    fn isolation_keeps_the_last_good_host_and_applies_the_rest() {
        let last_good = good();
        // The new version: a's rule turns bad, b loses its endpoint.
        let mut next = with_route(|r| r.matches = vec![header_match("x bad name")]);
        next.version = 2;
        next.clusters[1].endpoints.clear();
        let (applied, rejected) = isolate(next, Some(&last_good));
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert!(rejected[0].to_string().contains("x bad name"));
        // a keeps its last good rule; b's endpoint change arrived.
        assert_eq!(applied.virtual_hosts[0], last_good.virtual_hosts[0]);
        assert!(applied.clusters[1].endpoints.is_empty());
        assert_eq!(check_snapshot(&applied), Ok(()));

        // With nothing good to keep, the bad host is left out alone.
        let bad = with_route(|r| r.matches = vec![header_match("x bad name")]);
        let (applied, rejected) = isolate(bad, None);
        assert_eq!(rejected.len(), 1);
        let names: Vec<&str> = applied
            .virtual_hosts
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn the_field_checks_match_what_http_accepts() {
        // The proxy parses names and values with the `http` crate; these
        // are the edges where a looser check would let a NACK through.
        for name in ["x-request-id", "X_Y", "a!#$%&'*+.^`|~"] {
            assert!(header_name(name), "{name}");
        }
        for name in ["", "x y", "a:b", "é", "x\ty", "(x)"] {
            assert!(!header_name(name), "{name:?}");
        }
        for value in ["", "a b\tc", "~!\"#", "Zürich"] {
            assert!(header_value(value), "{value:?}");
        }
        for value in ["a\u{7f}", "a\u{1}", "a\nb", "a\0"] {
            assert!(!header_value(value), "{value:?}");
        }
    }
}
