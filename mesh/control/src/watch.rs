//! The proxy-facing API: announce, leave, watch for snapshots, acknowledge.
//!
//! This is micromesh's xDS. A sidecar's life, seen from here:
//!
//! ```text
//! PUT  /v1/proxies/hw-1                    "I am hw-1, helloworld-service v1, at 127.0.0.1:40001"
//! GET  /v1/proxies/hw-1/snapshot?version=0 -> 200 Snapshot{version: 5}   (anything is newer than 0)
//! POST /v1/proxies/hw-1/ack                {"version": 5, "accepted": true}
//! GET  /v1/proxies/hw-1/snapshot?version=5&waitMs=15000
//!                                          ... waits until version 6 exists -> 200,
//!                                          or 15 s pass -> 304, then polls again
//! PUT  /v1/proxies/hw-1                    every 250 ms: the heartbeat that renews the lease
//! DELETE /v1/proxies/hw-1                  on shutdown: out of everyone's endpoints at once
//! ```
//!
//! Envoy holds one gRPC stream open to istiod and gets pushes on it; a
//! long-poll gives the same "know within milliseconds" with plain HTTP/1.1
//! requests you can replay with curl.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use mesh_api::config::ConfigSet;
use mesh_api::snapshot::{InboundPolicy, Snapshot};
use mesh_api::xds::{
    AckRequest, AnnounceResponse, DEFAULT_WATCH_WAIT_MS, ProxyAnnounce, ProxyMode, ProxyStatus,
    ServiceStatus,
};
use serde::{Deserialize, Serialize};
use serde_json::value::{RawValue, to_raw_value};
use tokio::sync::OnceCell;

use crate::api::{ApiFailure, JsonBody, Pretty, QueryParams};
use crate::compile::{self, Workload};
use crate::registry::Announced;
use crate::state::{Model, Shared};

// === announce and leave ===

/// `PUT /v1/proxies/{instance}`: join, change, or just renew the lease.
pub async fn announce(
    State(shared): State<Arc<Shared>>,
    Path(instance): Path<String>,
    JsonBody(mut announce): JsonBody<ProxyAnnounce>,
) -> Result<Pretty<AnnounceResponse>, ApiFailure> {
    if announce.instance.is_empty() {
        announce.instance = instance.clone();
    }
    validate(&instance, &announce)?;

    let mut model = shared.lock().await;
    let outcome = model.registry.announce(announce.clone(), Instant::now());
    // A renewed lease may bring a stale instance back: refresh decides.
    let health_changed = model.registry.refresh(Instant::now());
    match outcome {
        Announced::Joined => tracing::info!(
            instance,
            service = %announce.service,
            version = %announce.version,
            address = %announce.address,
            ready = announce.ready,
            "proxy joined"
        ),
        Announced::Changed => tracing::info!(instance, ready = announce.ready, "proxy changed"),
        Announced::Renewed => {}
    }
    // A plain heartbeat changes nothing a snapshot shows: no new version,
    // or every heartbeat of every sidecar would wake every proxy.
    if outcome != Announced::Renewed || health_changed {
        shared.registry_changed(&mut model);
    }
    Ok(Pretty(AnnounceResponse {
        version: model.version,
        lease_ms: millis(shared.settings.lease),
        secure: shared.secure.get().cloned(),
    }))
}

/// Reject an announce that could only produce broken endpoints, saying which
/// field to fix.
fn validate(instance: &str, announce: &ProxyAnnounce) -> Result<(), ApiFailure> {
    if announce.instance != instance {
        return Err(ApiFailure::bad_request(format!(
            "the URL names instance {instance:?} but the body names {:?}; they must be the same",
            announce.instance
        )));
    }
    if announce.service.is_empty() {
        return Err(ApiFailure::bad_request(format!(
            "announce of {instance:?}: `service` is empty; a sidecar announces its \
             workload's service (the `app` label, e.g. helloworld-service), a gateway \
             its own name (e.g. ingressgateway)"
        )));
    }
    if announce.mode == ProxyMode::Sidecar && !is_host_port(&announce.address) {
        return Err(ApiFailure::bad_request(format!(
            "announce of {instance:?}: `address` is {:?}; a sidecar announces the \
             host:port where other sidecars reach its inbound listener, e.g. 127.0.0.1:15006",
            announce.address
        )));
    }
    Ok(())
}

/// `host:port` with a numeric port (`127.0.0.1:15006`, `[::1]:15006`,
/// `helloworld-v1:15006` in a container network).
fn is_host_port(address: &str) -> bool {
    match address.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

/// `DELETE /v1/proxies/{instance}`: a graceful leave. The instance drops out
/// of every proxy's endpoints with the next version, without waiting for its
/// lease to run out (Kubernetes does the same when a pod starts terminating).
pub async fn leave(
    State(shared): State<Arc<Shared>>,
    Path(instance): Path<String>,
) -> Result<Pretty<AnnounceResponse>, ApiFailure> {
    let mut model = shared.lock().await;
    if model.registry.leave(&instance).is_none() {
        return Err(unknown_instance(&instance));
    }
    tracing::info!(instance, "proxy left");
    shared.registry_changed(&mut model);
    Ok(Pretty(AnnounceResponse {
        version: model.version,
        lease_ms: millis(shared.settings.lease),
        secure: shared.secure.get().cloned(),
    }))
}

// === watch ===

/// Query of `GET /v1/proxies/{instance}/snapshot`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchQuery {
    /// The version the proxy has; absent: it has none yet.
    version: Option<u64>,
    /// How long to wait for a newer one.
    wait_ms: Option<u64>,
}

/// `GET /v1/proxies/{instance}/snapshot?version=N&waitMs=W`: the long-poll.
pub async fn snapshot(
    State(shared): State<Arc<Shared>>,
    Path(instance): Path<String>,
    QueryParams(query): QueryParams<WatchQuery>,
) -> Result<Response, ApiFailure> {
    // Subscribe before looking at the version: a bump between the look and
    // the wait is then still seen by `changed()`, never lost.
    let mut versions = shared.subscribe();
    let stale = {
        let model = shared.lock().await;
        let inputs = Inputs::of(&model, &instance)?;
        (query.version != Some(model.version)).then_some(inputs)
    };
    let inputs = match stale {
        // The proxy is behind (or has nothing yet): answer at once.
        Some(inputs) => inputs,
        // Up to date: wait for the next version, without holding the lock.
        None => {
            let wait = Duration::from_millis(query.wait_ms.unwrap_or(DEFAULT_WATCH_WAIT_MS))
                .min(shared.settings.max_watch_wait);
            tokio::select! {
                changed = versions.changed() => {
                    if changed.is_err() {
                        return Err(shutting_down());
                    }
                }
                _ = tokio::time::sleep(wait) => {
                    // Nothing new: the proxy keeps what it has and asks again.
                    return Ok(StatusCode::NOT_MODIFIED.into_response());
                }
                _ = shared.shutdown.cancelled() => return Err(shutting_down()),
            }
            let model = shared.lock().await;
            Inputs::of(&model, &instance)?
        }
    };

    // Hand out a version only once it is on disk (see state.rs): usually it
    // already is, at worst this waits for one registry write.
    let mut durable = shared.durable();
    tokio::select! {
        written = durable.wait_for(|durable| *durable >= inputs.version) => {
            if written.is_err() {
                return Err(shutting_down());
            }
        }
        _ = shared.shutdown.cancelled() => return Err(shutting_down()),
    }
    // Compile without the lock. Every sidecar's snapshot of one version is
    // the same but for its `proxy` field, so it is compiled once and shared.
    let started = Instant::now();
    let body = if inputs.proxy.mode == ProxyMode::Sidecar {
        let shared_part = shared
            .snapshots
            .sidecars(inputs.version, || inputs.compile())
            .await?;
        // Its own inbound security (its labels pick the policies) is the
        // one part compiled per sidecar.
        let inbound = compile::inbound_policy(&inputs.config, &inputs.proxy);
        shared_part.for_proxy(&inputs.proxy.instance, &inbound)?
    } else {
        // A gateway's snapshot depends on which Gateways select it: its own.
        serde_json::to_vec(&inputs.compile()).map_err(serialize_failure)?
    };
    let now = Instant::now();
    shared
        .pilot
        .pushed(inputs.version, now.duration_since(started), now);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// What one proxy's snapshot is compiled from, taken under the lock.
struct Inputs {
    config: Arc<ConfigSet>,
    workloads: Arc<Vec<Workload>>,
    /// The CA's roots at this version (`ca.rs`): every proxy gets them.
    trust_bundle: Arc<Vec<String>>,
    proxy: ProxyAnnounce,
    version: u64,
}

impl Inputs {
    fn compile(&self) -> Snapshot {
        let mut snapshot =
            compile::compile(&self.config, &self.workloads, &self.proxy, self.version);
        snapshot.trust_bundle = self.trust_bundle.to_vec();
        snapshot
    }

    fn of(model: &Model, instance: &str) -> Result<Inputs, ApiFailure> {
        let proxy = model
            .registry
            .get(instance)
            .ok_or_else(|| unknown_instance(instance))?;
        Ok(Inputs {
            config: model.config.clone(),
            workloads: model.workloads.clone(),
            trust_bundle: model.trust_bundle.clone(),
            proxy: proxy.announce.clone(),
            version: model.version,
        })
    }
}

// === one compile per version ===

/// The sidecars' snapshot of the latest version, compiled once.
///
/// A mesh's routes and clusters are the same for every sidecar (as in Istio
/// without `Sidecar` resources): only the `proxy` field names who it is for.
/// When a change wakes 100 sidecars' long-polls at once, the first compiles
/// and serializes, the others wait for it and copy its bytes. (Compiling
/// for each one was ~2-4 ms apiece with 1,000 endpoints: most of the
/// benchmark's apply-to-every-proxy time.)
#[derive(Debug, Default)]
pub struct SnapshotCache {
    latest: std::sync::Mutex<Option<(u64, Slot)>>,
}

/// One version's shared part: filled by the first long-poll that needs it.
type Slot = Arc<OnceCell<Arc<SidecarPart>>>;

/// Everything of a sidecar snapshot but its `proxy` and `inbound` fields,
/// as JSON text.
#[derive(Debug)]
pub struct SidecarPart {
    version: u64,
    virtual_hosts: Box<RawValue>,
    clusters: Box<RawValue>,
    trust_bundle: Vec<String>,
}

/// A sidecar's snapshot on the wire: `Snapshot`'s fields, in its order and
/// spelling, with the shared parts pasted in as they are. Compact JSON: it
/// is the proxies' wire format; a person reads a snapshot at the proxy's
/// `/config_dump`, pretty-printed.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SidecarWire<'a> {
    version: u64,
    proxy: &'a str,
    virtual_hosts: &'a RawValue,
    clusters: &'a RawValue,
    #[serde(skip_serializing_if = "InboundPolicy::is_default")]
    inbound: &'a InboundPolicy,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    trust_bundle: &'a [String],
}

impl SnapshotCache {
    /// The shared part of `version`'s sidecar snapshot, compiled by the
    /// first caller that needs it.
    async fn sidecars(
        &self,
        version: u64,
        compile: impl FnOnce() -> Snapshot,
    ) -> Result<Arc<SidecarPart>, ApiFailure> {
        let cell = {
            let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
            match &*latest {
                Some((cached, cell)) if *cached == version => cell.clone(),
                // A long-poll that took its inputs before a newer version
                // arrived: compile for it alone, keep the newer one cached.
                Some((cached, _)) if *cached > version => Arc::new(OnceCell::new()),
                _ => {
                    let cell = Arc::new(OnceCell::new());
                    *latest = Some((version, cell.clone()));
                    cell
                }
            }
        };
        let part = cell
            .get_or_try_init(|| async { SidecarPart::of(&compile()).map(Arc::new) })
            .await?;
        Ok(part.clone())
    }
}

impl SidecarPart {
    fn of(snapshot: &Snapshot) -> Result<SidecarPart, ApiFailure> {
        Ok(SidecarPart {
            version: snapshot.version,
            virtual_hosts: to_raw_value(&snapshot.virtual_hosts).map_err(serialize_failure)?,
            clusters: to_raw_value(&snapshot.clusters).map_err(serialize_failure)?,
            trust_bundle: snapshot.trust_bundle.clone(),
        })
    }

    /// The whole snapshot for one sidecar: a copy of the shared bytes, and
    /// its own inbound policy.
    fn for_proxy(&self, instance: &str, inbound: &InboundPolicy) -> Result<Vec<u8>, ApiFailure> {
        serde_json::to_vec(&SidecarWire {
            version: self.version,
            proxy: instance,
            virtual_hosts: &self.virtual_hosts,
            clusters: &self.clusters,
            inbound,
            trust_bundle: &self.trust_bundle,
        })
        .map_err(serialize_failure)
    }
}

/// Our snapshot types are plain structs with string keys: serializing them
/// does not fail, but if it did the proxy gets a 500 and keeps its snapshot.
fn serialize_failure(error: impl std::fmt::Display) -> ApiFailure {
    ApiFailure::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("could not serialize the snapshot: {error}"),
    )
}

/// `POST /v1/proxies/{instance}/ack`: the proxy's verdict on a version.
pub async fn ack(
    State(shared): State<Arc<Shared>>,
    Path(instance): Path<String>,
    JsonBody(ack): JsonBody<AckRequest>,
) -> Result<Pretty<ProxyStatus>, ApiFailure> {
    let mut model = shared.lock().await;
    if model.registry.ack(&instance, &ack).is_none() {
        return Err(unknown_instance(&instance));
    }
    shared.acks.notify_waiters();
    if ack.accepted {
        tracing::debug!(instance, version = ack.version, "proxy accepted snapshot");
    } else {
        shared.pilot.rejected();
        // The proxy keeps serving its last good snapshot; a human should
        // look at why this one was refused (Envoy logs the same as a NACK).
        tracing::warn!(
            instance,
            version = ack.version,
            error = ack.error.as_deref().unwrap_or("no reason given"),
            "proxy rejected snapshot"
        );
    }
    let status = model
        .registry
        .status(&instance, Instant::now())
        .ok_or_else(|| unknown_instance(&instance))?;
    Ok(Pretty(status))
}

// === read-only views ===

/// `GET /v1/proxies`: every proxy, sidecars and gateways, sorted by instance.
pub async fn proxies(State(shared): State<Arc<Shared>>) -> Pretty<Vec<ProxyStatus>> {
    let model = shared.lock().await;
    Pretty(model.registry.proxies(Instant::now()))
}

/// `GET /v1/services`: the mesh's services and their endpoints.
pub async fn services(State(shared): State<Arc<Shared>>) -> Pretty<Vec<ServiceStatus>> {
    let model = shared.lock().await;
    Pretty(model.registry.services())
}

// === errors ===

fn unknown_instance(instance: &str) -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        format!(
            "no proxy named {instance:?} is registered; announce it first with \
             PUT /v1/proxies/{instance} (a ProxyAnnounce), then watch its snapshot"
        ),
    )
}

fn shutting_down() -> ApiFailure {
    ApiFailure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the control plane is shutting down; keep the last snapshot and poll again",
    )
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(instance: &str, service: &str) -> ProxyAnnounce {
        ProxyAnnounce {
            instance: instance.to_string(),
            mode: ProxyMode::Sidecar,
            service: service.to_string(),
            version: "v1".to_string(),
            address: "127.0.0.1:40001".to_string(),
            ready: true,
            ..ProxyAnnounce::default()
        }
    }

    /// A STRICT PeerAuthentication for the UI only, and a policy for it.
    fn secured() -> ConfigSet {
        let yaml = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ui-strict, namespace: default}
spec:
  selector: {matchLabels: {app: guestbook-ui}}
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ui-get-only, namespace: default}
spec:
  selector: {matchLabels: {app: guestbook-ui}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
"#;
        let files = [mesh_api::config::SourceFile {
            name: "secured.yaml".into(),
            content: yaml.into(),
        }];
        ConfigSet::default()
            .apply(ConfigSet::parse(&files).unwrap())
            .0
    }

    fn snapshot_for(config: &ConfigSet, proxy: &ProxyAnnounce, version: u64) -> Snapshot {
        let workloads = [Workload {
            announce: sidecar("hw-1", "helloworld-service"),
            healthy: true,
        }];
        compile::compile(config, &workloads, proxy, version)
    }

    fn snapshot(version: u64) -> Snapshot {
        let proxy = sidecar("hw-1", "helloworld-service");
        let mut snapshot = snapshot_for(&ConfigSet::default(), &proxy, version);
        // The roots ride in every sidecar's copy.
        snapshot.trust_bundle = vec!["new root".into(), "old root".into()];
        snapshot
    }

    #[tokio::test]
    async fn a_sidecar_gets_exactly_the_compiled_snapshot_with_its_own_name() {
        let cache = SnapshotCache::default();
        let part = cache.sidecars(7, || snapshot(7)).await.unwrap();
        let mut expected = snapshot(7);
        expected.proxy = "ui-1".to_string();
        let body = part.for_proxy("ui-1", &expected.inbound).unwrap();
        let served: Snapshot = serde_json::from_slice(&body).unwrap();
        assert_eq!(served, expected);
        assert!(!expected.clusters.is_empty() && !expected.virtual_hosts.is_empty());
        // Field for field as serde writes a Snapshot itself.
        let as_value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(as_value, serde_json::to_value(&expected).unwrap());
    }

    #[tokio::test]
    async fn each_sidecar_gets_its_own_inbound_policy_beside_the_shared_routes() {
        let config = secured();
        let cache = SnapshotCache::default();
        let hw = sidecar("hw-1", "helloworld-service");
        let ui = sidecar("ui-1", "guestbook-ui");
        // Compiled once, for whichever sidecar asked first (here hw-1)...
        let part = cache
            .sidecars(7, || snapshot_for(&config, &hw, 7))
            .await
            .unwrap();
        // ...and served to the UI with the UI's own inbound part.
        let inbound = compile::inbound_policy(&config, &ui);
        assert_eq!(
            inbound.mtls_for_port(8080),
            mesh_api::config::MtlsMode::Strict
        );
        assert_eq!(inbound.authorization_policies.len(), 1);
        assert_eq!(
            inbound.authorization_policies[0].name,
            "default/ui-get-only"
        );
        let body = part.for_proxy("ui-1", &inbound).unwrap();
        let as_value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let expected = snapshot_for(&config, &ui, 7);
        assert_eq!(as_value, serde_json::to_value(&expected).unwrap());
        // helloworld has neither: Istio's default PERMISSIVE, no policy.
        let own = compile::inbound_policy(&config, &hw);
        assert_eq!(
            own.mtls_for_port(8080),
            mesh_api::config::MtlsMode::Permissive
        );
        assert!(own.authorization_policies.is_empty());
    }

    #[tokio::test]
    async fn each_version_is_compiled_once_and_a_late_poll_does_not_evict_it() {
        let cache = SnapshotCache::default();
        let compiles = std::sync::atomic::AtomicUsize::new(0);
        let counted = |version| {
            compiles.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            snapshot(version)
        };
        for _ in 0..3 {
            cache.sidecars(7, || counted(7)).await.unwrap();
        }
        assert_eq!(compiles.load(std::sync::atomic::Ordering::Relaxed), 1);
        cache.sidecars(8, || counted(8)).await.unwrap();
        // A poll whose inputs are of version 7 gets 7, compiled for it alone...
        let late = cache.sidecars(7, || counted(7)).await.unwrap();
        assert_eq!(late.version, 7);
        // ...and 8 stays cached.
        let current = cache.sidecars(8, || counted(8)).await.unwrap();
        assert_eq!(current.version, 8);
        assert_eq!(compiles.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert!(is_host_port("127.0.0.1:15006"));
        assert!(is_host_port("[::1]:15006"));
        assert!(is_host_port("helloworld-v1:15006"));
        assert!(!is_host_port(""));
        assert!(!is_host_port("127.0.0.1"));
        assert!(!is_host_port(":15006"));
        assert!(!is_host_port("127.0.0.1:0"));
        assert!(!is_host_port("127.0.0.1:http"));
    }
}
