//! DestinationRule: what happens to traffic *after* routing chose a service
//! (Istio's `networking.istio.io` DestinationRule, the part micromesh
//! implements).
//!
//! A DestinationRule names the subsets of a service (`v1` = instances
//! labelled `version: v1`) that VirtualService routes refer to, and sets the
//! traffic policy of its clusters: load balancing, connection-pool limits
//! (Envoy's circuit breaker thresholds) and outlier detection (ejecting an
//! instance that keeps failing). A subset's own `trafficPolicy` replaces the
//! rule's `loadBalancer`, `connectionPool` or `outlierDetection` as a whole,
//! field by field, exactly as istiod's `MergeTrafficPolicy` does.
//!
//! `trafficPolicy.tls` says how the calling sidecar talks to the service:
//! `ISTIO_MUTUAL` (mutual TLS with the mesh's own certificates) or
//! `DISABLE` (plaintext). Left out, the sidecar decides per endpoint (Istio's
//! auto mTLS: mutual TLS to instances that have a sidecar, plaintext to the
//! others). `SIMPLE` and `MUTUAL` (TLS with certificates you provide, for
//! calls leaving the mesh) are refused until egress TLS exists. The TLS of
//! one port is set in `portLevelSettings[].tls`; micromesh reads only `port`
//! and `tls` there (its services have one port, so per-port load balancing
//! and limits mean nothing yet).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use super::decode::{Decoder, Path, Shape, Unsupported};
use super::host::{check_host, is_dns_label};
use crate::snapshot;

/// A validated DestinationRule spec.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRule {
    pub host: String,
    pub traffic_policy: Option<TrafficPolicy>,
    pub subsets: Vec<Subset>,
}

impl DestinationRule {
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }

    /// The policy a cluster of this rule runs with: the subset's merged over
    /// the rule's, with micromesh's defaults for whatever neither sets.
    pub fn policy_for(&self, subset: Option<&str>) -> snapshot::TrafficPolicy {
        let rule = self.traffic_policy.clone().unwrap_or_default();
        let merged = match subset.and_then(|name| self.subset(name)) {
            Some(Subset {
                traffic_policy: Some(own),
                ..
            }) => rule.merge(own),
            _ => rule,
        };
        merged.resolve()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    pub name: String,
    /// An instance belongs to the subset when it has all these labels
    /// (no labels: every instance of the service).
    pub labels: BTreeMap<String, String>,
    pub traffic_policy: Option<TrafficPolicy>,
}

impl Subset {
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A traffic policy as written: `None` means "not set here".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    pub load_balancer: Option<snapshot::LoadBalancer>,
    pub connection_pool: Option<snapshot::ConnectionPool>,
    /// Fields the user left out already hold Istio's defaults.
    pub outlier_detection: Option<snapshot::OutlierDetection>,
    /// `tls.mode`; `None`: auto mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsMode>,
    /// `portLevelSettings[].tls.mode`, by port number.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_tls: BTreeMap<u16, ClientTlsMode>,
}

/// `ClientTLSSettings.TLSmode`, the modes micromesh implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    /// Plaintext to the service.
    Disable,
    /// Mutual TLS with the mesh's certificates (the SPIFFE identities).
    IstioMutual,
}

impl TrafficPolicy {
    /// istiod's `MergeTrafficPolicy`: each setting the subset has replaces
    /// the rule's setting as a whole (a subset `connectionPool` with only
    /// `http` drops the rule's `tcp` limits, as in Istio).
    pub fn merge(&self, subset: &TrafficPolicy) -> TrafficPolicy {
        TrafficPolicy {
            load_balancer: subset.load_balancer.or(self.load_balancer),
            connection_pool: subset
                .connection_pool
                .clone()
                .or_else(|| self.connection_pool.clone()),
            outlier_detection: subset
                .outlier_detection
                .clone()
                .or_else(|| self.outlier_detection.clone()),
            tls: subset.tls.or(self.tls),
            // A subset's portLevelSettings replace the rule's as a whole.
            port_level_tls: if subset.port_level_tls.is_empty() {
                self.port_level_tls.clone()
            } else {
                subset.port_level_tls.clone()
            },
        }
    }

    /// The TLS mode toward `port`: its port-level setting, else the
    /// policy's; `None` means auto mTLS.
    pub fn tls_for_port(&self, port: u16) -> Option<ClientTlsMode> {
        self.port_level_tls.get(&port).copied().or(self.tls)
    }

    /// What the proxy runs: round robin, no limits and no outlier
    /// detection unless set.
    pub fn resolve(&self) -> snapshot::TrafficPolicy {
        snapshot::TrafficPolicy {
            load_balancer: self.load_balancer.unwrap_or_default(),
            connection_pool: self.connection_pool.clone().unwrap_or_default(),
            outlier_detection: self.outlier_detection.clone(),
        }
    }
}

// === shapes ===

pub(crate) const SPEC: Shape = Shape {
    what: "a DestinationRule spec",
    fields: &["host", "trafficPolicy", "subsets"],
    istio_only: &[
        (
            "exportTo",
            Unsupported::NotImplemented(
                "limits which namespaces see this DestinationRule; micromesh has one namespace",
            ),
        ),
        (
            "workloadSelector",
            Unsupported::NotImplemented("applies the rule only to some client workloads"),
        ),
    ],
};

pub(crate) const SUBSET: Shape = Shape {
    what: "a subset",
    fields: &["name", "labels", "trafficPolicy"],
    istio_only: &[],
};

pub(crate) const TRAFFIC_POLICY: Shape = Shape {
    what: "a traffic policy",
    fields: &[
        "loadBalancer",
        "connectionPool",
        "outlierDetection",
        "tls",
        "portLevelSettings",
    ],
    istio_only: &[
        (
            "proxyProtocol",
            Unsupported::NotImplemented("sends the PROXY protocol header upstream"),
        ),
        (
            "tunnel",
            Unsupported::NotImplemented("tunnels TCP through an HTTP CONNECT proxy"),
        ),
        (
            "retryBudget",
            Unsupported::NotImplemented("caps concurrent retries as a share of active requests"),
        ),
    ],
};

const ONE_PORT: &str = "sets this per service port; micromesh services have one port, so set it in the traffic policy itself (portLevelSettings reads only `port` and `tls`)";

pub(crate) const PORT_TRAFFIC_POLICY: Shape = Shape {
    what: "a port-level traffic policy",
    fields: &["port", "tls"],
    istio_only: &[
        ("loadBalancer", Unsupported::NotImplemented(ONE_PORT)),
        ("connectionPool", Unsupported::NotImplemented(ONE_PORT)),
        ("outlierDetection", Unsupported::NotImplemented(ONE_PORT)),
    ],
};

pub(crate) const PORT_SELECTOR: Shape = Shape {
    what: "a port selector",
    fields: &["number"],
    istio_only: &[],
};

const NO_EGRESS_TLS: &str = "until egress TLS exists micromesh only speaks the mesh's own mutual TLS; use `mode: ISTIO_MUTUAL` (or `DISABLE`)";

pub(crate) const CLIENT_TLS: Shape = Shape {
    what: "client TLS settings",
    fields: &["mode"],
    istio_only: &[
        (
            "clientCertificate",
            Unsupported::NotImplemented(
                "presents a certificate file of yours (mode MUTUAL); until egress TLS exists micromesh only speaks the mesh's own mutual TLS",
            ),
        ),
        (
            "privateKey",
            Unsupported::NotImplemented(
                "reads the key of `clientCertificate` (mode MUTUAL); until egress TLS exists micromesh only speaks the mesh's own mutual TLS",
            ),
        ),
        (
            "caCertificates",
            Unsupported::NotImplemented(
                "verifies the server with CA certificates of yours (SIMPLE/MUTUAL); until egress TLS exists micromesh only speaks the mesh's own mutual TLS",
            ),
        ),
        (
            "caCrl",
            Unsupported::NotImplemented(
                "checks a certificate revocation list (SIMPLE/MUTUAL); until egress TLS exists micromesh only speaks the mesh's own mutual TLS",
            ),
        ),
        (
            "credentialName",
            Unsupported::NotImplemented(
                "reads certificates from a Secret (SIMPLE/MUTUAL); until egress TLS exists micromesh only speaks the mesh's own mutual TLS",
            ),
        ),
        (
            "insecureSkipVerify",
            Unsupported::NotImplemented(
                "skips verifying the server (SIMPLE/MUTUAL); until egress TLS exists micromesh only speaks the mesh's own mutual TLS",
            ),
        ),
        (
            "sni",
            Unsupported::NotImplemented(
                "sets the TLS server name (SIMPLE/MUTUAL); with ISTIO_MUTUAL micromesh checks the SPIFFE identity instead",
            ),
        ),
        (
            "subjectAltNames",
            Unsupported::NotImplemented(
                "lists the server identities to accept; with ISTIO_MUTUAL micromesh expects the identity of the endpoint it chose",
            ),
        ),
    ],
};

pub(crate) const LOAD_BALANCER: Shape = Shape {
    what: "load balancer settings",
    fields: &["simple"],
    istio_only: &[
        (
            "consistentHash",
            Unsupported::NotImplemented(
                "picks the instance by hashing a header, cookie or the source IP (session affinity)",
            ),
        ),
        (
            "localityLbSetting",
            Unsupported::NotImplemented("prefers instances in the caller's zone or region"),
        ),
        (
            "zoneAwareLbSetting",
            Unsupported::NotImplemented("prefers instances in the caller's zone"),
        ),
        (
            "warmup",
            Unsupported::NotImplemented("ramps traffic up slowly to new instances"),
        ),
        (
            "warmupDurationSecs",
            Unsupported::NotImplemented("ramps traffic up slowly to new instances"),
        ),
    ],
};

pub(crate) const CONNECTION_POOL: Shape = Shape {
    what: "connection pool settings",
    fields: &["tcp", "http"],
    istio_only: &[],
};

pub(crate) const TCP_SETTINGS: Shape = Shape {
    what: "TCP connection pool settings",
    fields: &["maxConnections"],
    istio_only: &[
        (
            "connectTimeout",
            Unsupported::NotImplemented("sets the TCP connect timeout"),
        ),
        (
            "idleTimeout",
            Unsupported::NotImplemented("closes idle TCP connections"),
        ),
        (
            "maxConnectionDuration",
            Unsupported::NotImplemented("closes connections after a maximum age"),
        ),
        (
            "tcpKeepalive",
            Unsupported::NotImplemented("turns on TCP keepalive probes"),
        ),
    ],
};

pub(crate) const HTTP_SETTINGS: Shape = Shape {
    what: "HTTP connection pool settings",
    fields: &[
        "http1MaxPendingRequests",
        "maxRequestsPerConnection",
        "http2MaxRequests",
    ],
    istio_only: &[
        (
            "h2UpgradePolicy",
            Unsupported::NotImplemented("upgrades HTTP/1.1 connections to HTTP/2"),
        ),
        (
            "http2KeepAlive",
            Unsupported::NotImplemented("sends HTTP/2 PING frames"),
        ),
        (
            "idleTimeout",
            Unsupported::NotImplemented("closes idle upstream connections"),
        ),
        (
            "maxConcurrentStreams",
            Unsupported::NotImplemented("limits streams per HTTP/2 connection"),
        ),
        (
            "maxRetries",
            Unsupported::NotImplemented("limits retries outstanding to the whole cluster"),
        ),
        (
            "useClientProtocol",
            Unsupported::NotImplemented("keeps the caller's HTTP version upstream"),
        ),
    ],
};

const CONSECUTIVE_ERRORS: &str = "`consecutiveErrors` is deprecated and its meaning changed over time: Istio 1.0 counted every 5xx, later releases (istio/api#617) only 502, 503 and 504 (Envoy's consecutive_gateway_failure). Write `consecutive5xxErrors: N` to eject an instance after N consecutive 5xx responses (what the talk's circuit breaker meant), or `consecutiveGatewayErrors: N` for 502/503/504 only";

pub(crate) const OUTLIER_DETECTION: Shape = Shape {
    what: "outlier detection settings",
    fields: &[
        "consecutive5xxErrors",
        "consecutiveGatewayErrors",
        "interval",
        "baseEjectionTime",
        "maxEjectionPercent",
    ],
    istio_only: &[
        (
            "consecutiveErrors",
            Unsupported::Replaced(CONSECUTIVE_ERRORS),
        ),
        (
            "http",
            Unsupported::Replaced(
                "the `http` level of outlierDetection is from Istio 0.8's v1alpha3; Istio 1.0 moved its fields up one level. Write `outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m}` (`consecutiveErrors` became `consecutive5xxErrors`)",
            ),
        ),
        (
            "consecutiveLocalOriginFailures",
            Unsupported::NotImplemented("counts connection failures separately from responses"),
        ),
        (
            "splitExternalLocalOriginErrors",
            Unsupported::NotImplemented("counts connection failures separately from responses"),
        ),
        (
            "minHealthPercent",
            Unsupported::NotImplemented(
                "turns outlier detection off when too few instances are healthy",
            ),
        ),
        (
            "outlierDetectionHttpErrorCodes",
            Unsupported::NotImplemented("chooses which status codes count as errors"),
        ),
    ],
};

// === decode ===

pub(crate) fn decode(d: &mut Decoder, spec: &Value) -> Option<DestinationRule> {
    let path = Path::root("spec");
    let object = d.object(&path, spec, &SPEC)?;
    let host = object
        .required(d, "host", "guestbook-ui")
        .and_then(|(p, v)| {
            let host = d.string(&p, v)?;
            check_host(&host, true).map_err(|m| d.error(&p, m)).ok()?;
            Some(host)
        })
        .unwrap_or_default();
    let traffic_policy = object
        .get("trafficPolicy")
        .and_then(|(p, v)| decode_traffic_policy(d, &p, v));
    let subsets = object
        .get("subsets")
        .and_then(|(p, v)| d.list(&p, v, decode_subset))
        .unwrap_or_default();
    if let Some((p, _)) = object.get("subsets") {
        for (i, subset) in subsets.iter().enumerate() {
            if subsets[..i].iter().any(|s| s.name == subset.name) {
                d.error(
                    &p.index(i).field("name"),
                    format!("subset `{}` is defined twice; subset names are unique within a DestinationRule", subset.name),
                );
            }
        }
    }
    Some(DestinationRule {
        host,
        traffic_policy,
        subsets,
    })
}

fn decode_subset(d: &mut Decoder, path: &Path, value: &Value) -> Option<Subset> {
    let object = d.object(path, value, &SUBSET)?;
    let name = object.required(d, "name", "v1").and_then(|(p, v)| {
        let name = d.string(&p, v)?;
        if !is_dns_label(&name) {
            d.error(
                &p,
                format!("`{name}` is not a subset name: use a DNS label (lower-case letters, digits, `-`), like `v1`"),
            );
            return None;
        }
        Some(name)
    });
    let labels = object
        .get("labels")
        .and_then(|(p, v)| d.string_map(&p, v))
        .unwrap_or_default();
    let traffic_policy = object
        .get("trafficPolicy")
        .and_then(|(p, v)| decode_traffic_policy(d, &p, v));
    Some(Subset {
        name: name?,
        labels,
        traffic_policy,
    })
}

fn decode_traffic_policy(d: &mut Decoder, path: &Path, value: &Value) -> Option<TrafficPolicy> {
    let object = d.object(path, value, &TRAFFIC_POLICY)?;
    let mut policy = TrafficPolicy::default();

    if let Some((p, v)) = object.get("loadBalancer")
        && let Some(lb) = d.object(&p, v, &LOAD_BALANCER)
        && let Some((p, v)) = lb.get("simple")
    {
        policy.load_balancer = decode_simple(d, &p, v);
    }

    if let Some((p, v)) = object.get("connectionPool")
        && let Some(pool) = d.object(&p, v, &CONNECTION_POOL)
    {
        let mut limits = snapshot::ConnectionPool::default();
        if let Some((p, v)) = pool.get("tcp")
            && let Some(tcp) = d.object(&p, v, &TCP_SETTINGS)
        {
            limits.max_connections = tcp.get("maxConnections").and_then(|(p, v)| d.u32(&p, v, 1));
        }
        if let Some((p, v)) = pool.get("http")
            && let Some(http) = d.object(&p, v, &HTTP_SETTINGS)
        {
            limits.http1_max_pending_requests = http
                .get("http1MaxPendingRequests")
                .and_then(|(p, v)| d.u32(&p, v, 1));
            limits.http2_max_requests = http
                .get("http2MaxRequests")
                .and_then(|(p, v)| d.u32(&p, v, 1));
            // Istio: 0 means unlimited, the same as not setting it.
            limits.max_requests_per_connection = http
                .get("maxRequestsPerConnection")
                .and_then(|(p, v)| d.u32(&p, v, 0))
                .filter(|n| *n > 0);
        }
        policy.connection_pool = Some(limits);
    }

    if let Some((p, v)) = object.get("outlierDetection")
        && let Some(outlier) = d.object(&p, v, &OUTLIER_DETECTION)
    {
        let mut od = snapshot::OutlierDetection::default();
        if let Some((p, v)) = outlier.get("consecutive5xxErrors") {
            od.consecutive_5xx_errors = d.u32(&p, v, 0).unwrap_or(od.consecutive_5xx_errors);
        }
        if let Some((p, v)) = outlier.get("consecutiveGatewayErrors") {
            od.consecutive_gateway_errors =
                d.u32(&p, v, 0).unwrap_or(od.consecutive_gateway_errors);
        }
        if let Some((p, v)) = outlier.get("interval") {
            od.interval_ms = d.duration_ms(&p, v).unwrap_or(od.interval_ms);
        }
        if let Some((p, v)) = outlier.get("baseEjectionTime") {
            od.base_ejection_time_ms = d.duration_ms(&p, v).unwrap_or(od.base_ejection_time_ms);
        }
        if let Some((p, v)) = outlier.get("maxEjectionPercent") {
            od.max_ejection_percent = d
                .integer(&p, v, 0, 100)
                .map_or(od.max_ejection_percent, |n| n as u32);
        }
        policy.outlier_detection = Some(od);
    }

    if let Some((p, v)) = object.get("tls") {
        policy.tls = decode_client_tls(d, &p, v);
    }
    if let Some((p, v)) = object.get("portLevelSettings")
        && let Some(ports) = d.list(&p, v, |d, p, v| {
            let settings = d.object(p, v, &PORT_TRAFFIC_POLICY)?;
            let port = settings
                .required(d, "port", "{number: 8080}")
                .and_then(|(p, v)| {
                    let port = d.object(&p, v, &PORT_SELECTOR)?;
                    let (p, v) = port.required(d, "number", "8080")?;
                    d.integer(&p, v, 1, 65535).map(|n| n as u16)
                });
            let tls = settings
                .get("tls")
                .and_then(|(p, v)| decode_client_tls(d, &p, v));
            Some((p.clone(), port?, tls))
        })
    {
        for (i, (path, port, tls)) in ports.iter().enumerate() {
            if ports[..i].iter().any(|(_, other, _)| other == port) {
                d.error(
                    &path.field("port"),
                    format!("port {port} has two portLevelSettings; merge them into one"),
                );
            }
            if let Some(tls) = tls {
                policy.port_level_tls.insert(*port, *tls);
            }
        }
    }
    Some(policy)
}

fn decode_client_tls(d: &mut Decoder, path: &Path, value: &Value) -> Option<ClientTlsMode> {
    let tls = d.object(path, value, &CLIENT_TLS)?;
    let (p, v) = tls.required(d, "mode", "ISTIO_MUTUAL")?;
    let mode = d.string(&p, v)?;
    match mode.as_str() {
        "ISTIO_MUTUAL" => Some(ClientTlsMode::IstioMutual),
        "DISABLE" => Some(ClientTlsMode::Disable),
        "SIMPLE" | "MUTUAL" => {
            let what = if mode == "SIMPLE" {
                "originates TLS to the service, verifying it with certificates you provide"
            } else {
                "originates mutual TLS with a client certificate you provide"
            };
            d.error(
                &p,
                format!(
                    "micromesh does not implement `{mode}` (Istio does: it {what}); {NO_EGRESS_TLS}"
                ),
            );
            None
        }
        other => {
            let upper = other.to_ascii_uppercase().replace('-', "_");
            let hint = if ["ISTIO_MUTUAL", "DISABLE"].contains(&upper.as_str()) {
                format!("; write `{upper}`")
            } else {
                String::new()
            };
            d.error(
                &p,
                format!("`{other}` is not a TLS mode; use ISTIO_MUTUAL or DISABLE{hint}"),
            );
            None
        }
    }
}

fn decode_simple(d: &mut Decoder, path: &Path, value: &Value) -> Option<snapshot::LoadBalancer> {
    use snapshot::LoadBalancer;
    let name = d.string(path, value)?;
    match name.as_str() {
        "ROUND_ROBIN" => Some(LoadBalancer::RoundRobin),
        "LEAST_REQUEST" => Some(LoadBalancer::LeastRequest),
        // Istio's old name for LEAST_REQUEST; it still maps it the same way.
        // Accepted (analysis adds a note).
        "LEAST_CONN" => Some(LoadBalancer::LeastRequest),
        "RANDOM" => Some(LoadBalancer::Random),
        // Istio: "unset", i.e. the default.
        "UNSPECIFIED" => None,
        "PASSTHROUGH" => {
            d.error(
                path,
                "micromesh does not implement `PASSTHROUGH` (Istio does: it forwards to the address the caller dialled, without load balancing); use ROUND_ROBIN, LEAST_REQUEST or RANDOM",
            );
            None
        }
        other => {
            let hint = match other.to_ascii_uppercase().replace('-', "_").as_str() {
                upper @ ("ROUND_ROBIN" | "LEAST_REQUEST" | "LEAST_CONN" | "RANDOM") => {
                    format!("; write `{upper}`")
                }
                _ => String::new(),
            };
            d.error(
                path,
                format!("`{other}` is not a load balancer; use ROUND_ROBIN, LEAST_REQUEST or RANDOM{hint}"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::LoadBalancer;

    fn decode_yaml(text: &str) -> (Option<DestinationRule>, Vec<(String, String)>) {
        let value: Value = serde_yaml::from_str(text).unwrap();
        let mut d = Decoder::default();
        let dr = decode(&mut d, &value);
        (
            dr,
            d.errors.into_iter().map(|e| (e.path, e.message)).collect(),
        )
    }

    #[test]
    fn subset_policy_replaces_whole_settings() {
        let (dr, errors) = decode_yaml(
            r#"
host: helloworld-service
trafficPolicy:
  loadBalancer: {simple: RANDOM}
  connectionPool: {tcp: {maxConnections: 100}, http: {http1MaxPendingRequests: 10}}
  outlierDetection: {consecutive5xxErrors: 3, interval: 1s}
subsets:
- name: v1
  labels: {version: v1}
- name: v2
  labels: {version: v2}
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 5}}
"#,
        );
        assert_eq!(errors, vec![]);
        let dr = dr.unwrap();
        let v1 = dr.policy_for(Some("v1"));
        assert_eq!(v1.load_balancer, LoadBalancer::Random);
        assert_eq!(v1.connection_pool.max_connections, Some(100));
        let outlier = v1.outlier_detection.unwrap();
        assert_eq!(outlier.consecutive_5xx_errors, 3);
        assert_eq!(outlier.interval_ms, 1_000);
        assert_eq!(outlier.base_ejection_time_ms, 30_000, "Istio's default");

        let v2 = dr.policy_for(Some("v2"));
        assert_eq!(v2.load_balancer, LoadBalancer::Random, "inherited");
        assert_eq!(
            v2.connection_pool.max_connections, None,
            "replaced as a whole"
        );
        assert_eq!(v2.connection_pool.http2_max_requests, Some(5));
        assert!(v2.outlier_detection.is_some(), "inherited");
    }

    #[test]
    fn no_policy_resolves_to_defaults() {
        let (dr, _) = decode_yaml("host: a\n");
        let policy = dr.unwrap().policy_for(None);
        assert_eq!(policy, snapshot::TrafficPolicy::default());
    }

    #[test]
    fn talk_era_fields_are_explained() {
        let (_, errors) = decode_yaml(
            r#"
host: guestbook-service
trafficPolicy:
  loadBalancer: {simple: round_robin}
  outlierDetection:
    http: {consecutiveErrors: 7}
    consecutiveErrors: 7
subsets:
- {name: v1}
- {name: v1}
"#,
        );
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.trafficPolicy.loadBalancer.simple",
                "spec.trafficPolicy.outlierDetection.http",
                "spec.trafficPolicy.outlierDetection.consecutiveErrors",
                "spec.subsets[1].name",
            ]
        );
        assert!(errors[0].1.contains("write `ROUND_ROBIN`"));
        assert!(errors[1].1.contains("consecutive5xxErrors"));
        assert!(errors[2].1.contains("consecutiveGatewayErrors"));
    }

    #[test]
    fn tls_istio_mutual_and_disable_at_policy_and_port_level() {
        let (dr, errors) = decode_yaml(
            r#"
host: guestbook-service
trafficPolicy:
  tls: {mode: ISTIO_MUTUAL}
  portLevelSettings:
  - port: {number: 9090}
    tls: {mode: DISABLE}
subsets:
- name: legacy
  labels: {version: v0}
  trafficPolicy: {tls: {mode: DISABLE}}
"#,
        );
        assert_eq!(errors, vec![]);
        let dr = dr.unwrap();
        let rule = dr.traffic_policy.clone().unwrap();
        assert_eq!(rule.tls_for_port(8080), Some(ClientTlsMode::IstioMutual));
        assert_eq!(rule.tls_for_port(9090), Some(ClientTlsMode::Disable));
        let legacy = rule.merge(
            dr.subset("legacy")
                .unwrap()
                .traffic_policy
                .as_ref()
                .unwrap(),
        );
        assert_eq!(legacy.tls_for_port(8080), Some(ClientTlsMode::Disable));
        assert_eq!(
            legacy.tls_for_port(9090),
            Some(ClientTlsMode::Disable),
            "inherited port level"
        );
        let (none, _) = decode_yaml("host: a\n");
        assert_eq!(none.unwrap().traffic_policy, None, "no tls: auto mTLS");
    }

    #[test]
    fn egress_tls_modes_and_fields_are_refused_by_name() {
        let (_, errors) = decode_yaml(
            r#"
host: api.example.com
trafficPolicy:
  tls: {mode: SIMPLE, sni: api.example.com}
  portLevelSettings:
  - port: {number: 443}
    tls: {mode: MUTUAL, credentialName: client-cert}
    loadBalancer: {simple: RANDOM}
  - port: {number: 443}
    tls: {mode: istio_mutual}
"#,
        );
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.trafficPolicy.tls.sni",
                "spec.trafficPolicy.tls.mode",
                "spec.trafficPolicy.portLevelSettings[0].loadBalancer",
                "spec.trafficPolicy.portLevelSettings[0].tls.credentialName",
                "spec.trafficPolicy.portLevelSettings[0].tls.mode",
                "spec.trafficPolicy.portLevelSettings[1].tls.mode",
                "spec.trafficPolicy.portLevelSettings[1].port",
            ],
            "{errors:#?}"
        );
        assert!(errors[1].1.contains("until egress TLS exists"));
        assert!(errors[5].1.contains("write `ISTIO_MUTUAL`"));
    }

    #[test]
    fn least_conn_is_istios_old_name_for_least_request() {
        let (dr, errors) =
            decode_yaml("host: a\ntrafficPolicy: {loadBalancer: {simple: LEAST_CONN}}\n");
        assert_eq!(errors, vec![]);
        assert_eq!(
            dr.unwrap().policy_for(None).load_balancer,
            LoadBalancer::LeastRequest
        );
    }
}
