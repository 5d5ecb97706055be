//! The control plane's HTTP API, as types: what a sidecar announces, how it
//! watches for snapshots, and what meshctl reads back.
//!
//! Istio's proxies speak xDS (gRPC streams of protobuf) to istiod. micromesh
//! keeps the same idea in JSON over plain HTTP so a learner can follow it
//! with curl:
//!
//! ```text
//! PUT  /v1/proxies/{instance}                 announce (and heartbeat) a proxy: ProxyAnnounce
//! DELETE /v1/proxies/{instance}               leave the mesh (graceful shutdown)
//! GET  /v1/proxies/{instance}/snapshot?version=N&waitMs=15000
//!                                             long-poll: 200 + Snapshot once the version
//!                                             differs from N, 304 when the wait ends first
//! POST /v1/proxies/{instance}/ack             AckRequest: the proxy accepted or rejected a version
//! GET  /v1/proxies                            Vec<ProxyStatus>
//! GET  /v1/services                           Vec<ServiceStatus> (discovery, as meshctl shows it)
//! ```
//!
//! The announce doubles as a heartbeat: a sidecar repeats it every
//! `HEARTBEAT_INTERVAL_MS`, and an instance that misses its lease leaves every
//! other proxy's endpoints (like a pod that fails its readiness probe).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How often a proxy repeats its announce.
pub const HEARTBEAT_INTERVAL_MS: u64 = 250;
/// How long an announce keeps an instance in the registry without a new one.
pub const LEASE_MS: u64 = 1_500;
/// Default long-poll wait for a snapshot.
pub const DEFAULT_WATCH_WAIT_MS: u64 = 15_000;

/// Istio's well-known ports, kept so the knowledge transfers.
pub mod ports {
    pub const ADMIN: u16 = 15000;
    pub const OUTBOUND: u16 = 15001;
    pub const INBOUND: u16 = 15006;
    pub const CONTROL: u16 = 15010;
    /// The control plane's mutual-TLS port (istiod's 15012): proxies that
    /// hold a certificate watch and announce here, as their identity.
    pub const SECURE_CONTROL: u16 = 15012;
    pub const DASHBOARD: u16 = 15014;
    pub const GATEWAY: u16 = 8080;
    /// The port every Guestbook service is called on: `http://NAME:8080/...`.
    pub const SERVICE: u16 = 8080;
}

/// Whether a proxy is an app's sidecar or the mesh's ingress gateway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    #[default]
    Sidecar,
    Gateway,
}

/// What a proxy tells the control plane about itself (Istio learns the same
/// from the pod: its labels and IP).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyAnnounce {
    /// Unique instance name, like a pod name: `helloworld-service-v1-7f3c2`.
    pub instance: String,
    pub mode: ProxyMode,
    /// The workload's service name (`app` label): `helloworld-service`.
    /// For a gateway: the gateway's name, `ingressgateway` by default.
    pub service: String,
    /// `version` label: `v1`.
    pub version: String,
    /// Every label of the workload; `app` and `version` are added if missing.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `ip:port` where other sidecars reach this one's inbound listener.
    /// Empty for a gateway (nobody routes to it from inside the mesh).
    #[serde(default)]
    pub address: String,
    /// Whether the app behind the sidecar answers (the sidecar probes it);
    /// only ready instances receive traffic.
    pub ready: bool,
    /// Where this proxy's admin port listens (for meshctl and the dashboard).
    #[serde(default)]
    pub admin_address: String,
    /// The workload identity whose certificate this proxy holds
    /// (`spiffe://cluster.local/ns/<ns>/sa/<sa>`), once it has one. On the
    /// secure port the control plane takes it from the client certificate
    /// and refuses an announce naming any other (mesh/control/src/secure.rs);
    /// `meshctl get proxies` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::identity::Identity>,
}

/// The reply to an announce.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnnounceResponse {
    /// The control plane's current config version.
    pub version: u64,
    pub lease_ms: u64,
    /// Where this control plane serves mutual TLS, when it runs a CA: a
    /// proxy that holds a certificate moves its watch and announces there
    /// (mesh/proxy/src/control.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure: Option<SecureControl>,
}

/// The control plane's secure port, and the identity its certificate
/// proves (the proxy checks it, as an Envoy checks istiod's name).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecureControl {
    /// On the same host as the plaintext API (`MESH_CONTROL_URL`).
    pub port: u16,
    /// `spiffe://cluster.local/ns/<ns>/sa/mesh-control`.
    pub identity: crate::identity::Identity,
}

/// A proxy's verdict on a snapshot (Envoy's ACK / NACK in xDS).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckRequest {
    pub version: u64,
    pub accepted: bool,
    /// Why the snapshot was rejected; the proxy keeps its last good one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One proxy, as the control plane sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    #[serde(flatten)]
    pub announce: ProxyAnnounce,
    /// Last version the proxy accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_version: Option<u64>,
    /// Last rejection, if the latest version was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
    /// Milliseconds since the last announce.
    pub last_seen_ms: u64,
    /// Whether the lease is current (a stale instance gets no traffic).
    pub live: bool,
}

/// One service and its instances, as `meshctl get services|endpoints` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub name: String,
    /// `http://NAME:8080`: how apps call it.
    pub port: u16,
    pub versions: Vec<String>,
    pub endpoints: Vec<EndpointStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    pub instance: String,
    pub version: String,
    pub address: String,
    /// Receiving traffic: live lease and app ready.
    pub healthy: bool,
}

/// An error from the control plane's API, always JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    pub error: String,
}
