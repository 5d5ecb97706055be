//! The proxy's config snapshot: everything one sidecar needs to route a request.
//!
//! The control plane compiles Istio's resources (VirtualService, DestinationRule,
//! Gateway) and the registry of running instances into one `Snapshot` per proxy,
//! and pushes it over the watch API. The proxy compiles it once more into its
//! own lookup tables (regexes, hash maps) and swaps it in atomically: the
//! request path never parses config.
//!
//! The shape follows Envoy's, so what you learn here transfers:
//!
//! ```text
//! request authority --> VirtualHost (by domain) --> HttpRoute (first match wins)
//!                   --> weighted Destination --> Cluster (service + subset)
//!                   --> Endpoint (an instance's sidecar inbound address)
//! ```
//!
//! Security rides along (issue 17), in the same two places Envoy keeps it:
//!
//! ```text
//! inbound   this sidecar's own PeerAuthentication mode (per port) and the
//!           AuthorizationPolicies that select it    -> Envoy's inbound listener
//! endpoint  mTLS or plaintext toward it, and the SPIFFE identity its
//!           certificate must carry                   -> Envoy's transport socket
//!                                                       and its SAN match
//! ```
//!
//! And one part every proxy shares: the **trust bundle**, the mesh's root
//! certificates (PEM) a peer's chain must end at, as istiod pushes its
//! root cert to every Envoy (SDS's `ROOTCA`). It rides in the snapshot so
//! that a change of roots (a rotation, `mesh/control/src/ca.rs`) reaches
//! every proxy with the next push, before any workload holds a leaf of the
//! new root. The CA's answer to a CSR carries the bundle too; a proxy uses
//! that one only until its first snapshot brings one (`tls.rs`).
//!
//! All durations are milliseconds, all percentages are 0.0..=100.0, as in Istio.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{AuthorizationPolicy, EffectiveMtls, MtlsMode};
use crate::identity::Identity;

/// Everything one proxy needs, at one version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Increases with every change the control plane makes; the proxy
    /// acknowledges (or rejects) each version it receives.
    pub version: u64,
    /// The proxy instance this snapshot was compiled for.
    pub proxy: String,
    /// Outbound routing: the services this proxy's app may call.
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHost>,
    /// Every cluster a route may send to: one per service, plus one per subset.
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    /// Set for a proxy in gateway mode: what the ingress serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayConfig>,
    /// What this proxy's inbound listener enforces: compiled for this proxy
    /// alone (its labels pick the policies), unlike the routes above. A
    /// gateway gets the AuthorizationPolicies that select it here (its
    /// users' requests are its inbound), and no mTLS mode.
    #[serde(default, skip_serializing_if = "InboundPolicy::is_default")]
    pub inbound: InboundPolicy,
    /// The roots (PEM, one certificate each) this proxy's mutual TLS
    /// trusts, newest first: one root, or two while a rotation is under
    /// way. Empty when the control plane runs no CA.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_bundle: Vec<String>,
}

/// The inbound side's security for one sidecar: the PeerAuthentication mode
/// in effect for it (workload over namespace over mesh, Istio's default
/// PERMISSIVE) and the AuthorizationPolicies that select it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundPolicy {
    /// `mode` for every port, `ports` where `portLevelMtls` differs. `UNSET`
    /// (a snapshot written by hand without it) means Istio's default,
    /// PERMISSIVE: see [`InboundPolicy::mtls_for_port`].
    #[serde(default)]
    pub mtls: EffectiveMtls,
    /// Oldest first: the root namespace's (mesh-wide) and the workload
    /// namespace's policies whose selector matches this workload (or that
    /// have none). The proxy evaluates them (`authz.rs`) in Istio's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_policies: Vec<AppliedAuthorizationPolicy>,
}

impl InboundPolicy {
    /// The mode the inbound listener runs on `port` (the workload's port).
    pub fn mtls_for_port(&self, port: u16) -> MtlsMode {
        match self.mtls.for_port(port) {
            MtlsMode::Unset => MtlsMode::Permissive,
            mode => mode,
        }
    }

    /// Nothing set: the snapshot leaves the field out.
    pub fn is_default(&self) -> bool {
        *self == InboundPolicy::default()
    }
}

/// One AuthorizationPolicy as applied, named for logs and `/config_dump`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedAuthorizationPolicy {
    /// `namespace/name`, as Envoy's RBAC filter names a policy.
    pub name: String,
    pub spec: AuthorizationPolicy,
}

/// Routes for one set of domains (Envoy's virtual host; Istio makes one per
/// VirtualService host, or one per service when no VirtualService exists).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualHost {
    /// Human name, for example `helloworld-service` or the VirtualService's name.
    pub name: String,
    /// Authorities this virtual host answers, with and without port:
    /// `helloworld-service`, `helloworld-service:8080`,
    /// `helloworld-service.default.svc.cluster.local`, ... `*` matches any.
    pub domains: Vec<String>,
    /// Tried in order; the first route whose match succeeds wins.
    pub routes: Vec<HttpRoute>,
}

/// One `http[]` rule of a VirtualService, resolved.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// The rule's `name`, or `<virtualservice>[<index>]`.
    pub name: String,
    /// The VirtualService the rule comes from, `namespace/name` (`None` for
    /// a route micromesh made up, such as a service's default route). At a
    /// gateway one host merges the rules of several VirtualServices, so
    /// `/config_dump` shows where each rule was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Any one of these must match (OR); an empty list matches every request.
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    /// Weighted destinations; weights are relative (Istio normalises them).
    pub destinations: Vec<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Whole-request timeout (all attempts). `None`: no timeout, as Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub retries: RetryPolicy,
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub request_headers: HeaderOps,
    #[serde(default, skip_serializing_if = "HeaderOps::is_empty")]
    pub response_headers: HeaderOps,
    /// Replace the matched path prefix (or the whole path for exact/regex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite_uri: Option<String>,
    /// Shadow a copy of the traffic to another cluster, fire and forget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
}

/// One entry of `match[]`: every condition present must hold (AND).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Header names are lower case.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// The request must NOT carry a header matching these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
}

impl RouteMatch {
    /// Whether this match takes every request, as Envoy's (and istiod's)
    /// `IsCatchAllRoute` decides: path prefix `/` (or none) or regex `.*`,
    /// and no other condition (a method match is a header match in Envoy).
    /// At a gateway istiod moves such routes after all others.
    pub fn is_catch_all(&self) -> bool {
        let path_matches_all = match &self.uri {
            None => true,
            Some(StringMatch::Prefix(p)) => p == "/" || p.is_empty(),
            Some(StringMatch::Regex(r)) => r == ".*",
            Some(StringMatch::Exact(_)) => false,
        };
        path_matches_all
            && self.method.is_none()
            && self.headers.is_empty()
            && self.without_headers.is_empty()
            && self.query_params.is_empty()
    }
}

/// Istio's StringMatch: exactly one of `exact`, `prefix`, `regex` (RE2 syntax,
/// matched against the whole value as Envoy does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// Where a share of a route's traffic goes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// Name of a `Cluster` in the same snapshot.
    pub cluster: String,
    /// Relative weight. Istio: a single destination with no weight gets 100.
    pub weight: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    pub fixed_delay_ms: u64,
    /// Share of requests delayed, 0..=100. Istio: no percentage, no fault.
    pub percentage: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    /// The HTTP status of the answer. For a `grpcStatus` abort it is 200,
    /// as Envoy's fault filter writes it.
    pub http_status: u16,
    /// `grpcStatus` as its wire number (`UNAVAILABLE` is 14): a gRPC caller
    /// gets this in `grpc-status`. `None` for an `httpStatus` abort, whose
    /// gRPC code is the one Envoy maps the HTTP status to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u16>,
    /// Share of requests aborted, 0..=100.
    pub percentage: f64,
}

/// When and how often to try again. `attempts` counts retries, not the first try.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout_ms: Option<u64>,
    /// Envoy retry conditions: `5xx`, `gateway-error`, `connect-failure`,
    /// `refused-stream`, `reset`, `unavailable`, `cancelled`,
    /// `retriable-status-codes`.
    #[serde(default)]
    pub retry_on: Vec<String>,
    /// Status codes retried under `retriable-status-codes` (plain codes in
    /// Istio's `retryOn` land here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
}

impl Default for RetryPolicy {
    /// Istio's default for every HTTP route: 2 retries on connection
    /// failures, refused streams, gRPC unavailable/cancelled, and 503.
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            per_try_timeout_ms: None,
            retry_on: [
                "connect-failure",
                "refused-stream",
                "unavailable",
                "cancelled",
                "retriable-status-codes",
            ]
            .map(String::from)
            .to_vec(),
            retriable_status_codes: vec![503],
        }
    }
}

impl RetryPolicy {
    /// No retries at all (Istio: `attempts: 0`, or a route with a fault).
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 0,
            per_try_timeout_ms: None,
            retry_on: Vec::new(),
            retriable_status_codes: Vec::new(),
        }
    }
}

/// Header manipulation (Istio's `headers.request` / `headers.response`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOps {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    pub cluster: String,
    /// Share of requests mirrored, 0..=100 (Istio default: 100).
    pub percentage: f64,
}

/// A set of endpoints and how to talk to them: one service, or one subset of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// `helloworld-service` for the whole service, `helloworld-service|v2`
    /// for a subset (Envoy writes `outbound|8080|v2|helloworld-service...`).
    pub name: String,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default)]
    pub policy: TrafficPolicy,
    /// Healthy, registered instances whose labels match the subset.
    pub endpoints: Vec<Endpoint>,
}

impl Cluster {
    /// The cluster name for a service and an optional subset.
    pub fn name_for(service: &str, subset: Option<&str>) -> String {
        match subset {
            Some(subset) => format!("{service}|{subset}"),
            None => service.to_string(),
        }
    }
}

/// One instance of a workload, reached at its sidecar's inbound address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Instance name, like a pod name: `helloworld-service-v1-7f3c2`.
    pub instance: String,
    /// `ip:port` of the instance's sidecar inbound listener.
    pub address: String,
    /// Workload labels, at least `app` and `version`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The workload's SPIFFE identity, when the control plane knows it: the
    /// one its certificate must carry for a client to go on with mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Mutual TLS or plaintext toward this endpoint, decided by the control
    /// plane: the DestinationRule's `tls.mode` when it sets one, else auto
    /// mTLS (ISTIO_MUTUAL when the endpoint's sidecar holds a certificate
    /// and its own PeerAuthentication is not DISABLE).
    #[serde(default, skip_serializing_if = "TlsMode::is_disable")]
    pub tls_mode: TlsMode,
}

/// How a client sidecar talks to an endpoint (Istio's `ClientTLSSettings`
/// modes that exist between sidecars).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    /// Plaintext: the endpoint has no certificate, or the rules say so.
    #[default]
    Disable,
    /// Mutual TLS with the mesh's certificates; the server must present
    /// `Endpoint::identity`.
    IstioMutual,
}

impl TlsMode {
    pub fn is_disable(&self) -> bool {
        *self == TlsMode::Disable
    }
}

/// DestinationRule `trafficPolicy`, merged (subset over service over defaults).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    #[serde(default)]
    pub connection_pool: ConnectionPool,
    /// `None`: no outlier detection, as Istio without a DestinationRule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancer {
    /// Istio's default since 1.14 is LEAST_REQUEST; we keep ROUND_ROBIN as the
    /// default because a workshop wants to *see* requests take turns.
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
}

/// Limits per cluster (Envoy's circuit breaker thresholds). `None`: unlimited.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http1_max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_max_requests: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Eject after this many consecutive 5xx (0: off).
    pub consecutive_5xx_errors: u32,
    /// Eject after this many consecutive 502/503/504 or connect failures (0: off).
    pub consecutive_gateway_errors: u32,
    pub interval_ms: u64,
    /// Ejection time grows: base * number of times ejected.
    pub base_ejection_time_ms: u64,
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    /// Istio's defaults for the fields a DestinationRule leaves out.
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: 0,
            interval_ms: 10_000,
            base_ejection_time_ms: 30_000,
            max_ejection_percent: 10,
        }
    }
}

/// What a proxy in gateway mode serves (compiled from Gateway resources and
/// the VirtualServices bound to them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayConfig {
    /// The Gateway resources that selected this proxy, `namespace/name`.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Virtual hosts served to users; a request no domain matches gets 404.
    pub virtual_hosts: Vec<VirtualHost>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_match_uses_istio_shape() {
        let m: StringMatch = serde_json::from_str(r#"{"prefix":"/hello"}"#).unwrap();
        assert_eq!(m, StringMatch::Prefix("/hello".into()));
        assert_eq!(
            serde_json::to_string(&StringMatch::Regex(".*Chrome.*".into())).unwrap(),
            r#"{"regex":".*Chrome.*"}"#
        );
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let snapshot = Snapshot {
            version: 7,
            proxy: "guestbook-ui-v1-abc".into(),
            virtual_hosts: vec![VirtualHost {
                name: "helloworld-service".into(),
                domains: vec![
                    "helloworld-service".into(),
                    "helloworld-service:8080".into(),
                ],
                routes: vec![HttpRoute {
                    name: "default".into(),
                    destinations: vec![Destination {
                        cluster: "helloworld-service".into(),
                        weight: 100,
                    }],
                    ..Default::default()
                }],
            }],
            clusters: vec![Cluster {
                name: "helloworld-service".into(),
                service: "helloworld-service".into(),
                endpoints: vec![Endpoint {
                    instance: "helloworld-service-v1-1".into(),
                    address: "127.0.0.1:40001".into(),
                    labels: [("version".to_string(), "v1".to_string())].into(),
                    identity: None,
                    tls_mode: Default::default(),
                }],
                ..Default::default()
            }],
            gateway: None,
            inbound: Default::default(),
            trust_bundle: vec!["-----BEGIN CERTIFICATE-----\n...".into()],
        };
        let json = serde_json::to_string(&snapshot).unwrap();
        assert_eq!(serde_json::from_str::<Snapshot>(&json).unwrap(), snapshot);
    }

    #[test]
    fn default_retries_are_istios() {
        let retries = RetryPolicy::default();
        assert_eq!(retries.attempts, 2);
        assert!(retries.retry_on.iter().any(|c| c == "connect-failure"));
        assert_eq!(retries.retriable_status_codes, vec![503]);
    }
}
