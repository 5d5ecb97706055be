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
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mesh_api::config::ConfigSet;
use mesh_api::xds::{
    AckRequest, AnnounceResponse, DEFAULT_WATCH_WAIT_MS, ProxyAnnounce, ProxyMode, ProxyStatus,
    ServiceStatus,
};
use serde::Deserialize;

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
    // Compile without the lock: with hundreds of proxies waking on the same
    // version, each compiles its own snapshot in parallel.
    let snapshot = compile::compile(
        &inputs.config,
        &inputs.workloads,
        &inputs.proxy,
        inputs.version,
    );
    Ok(Pretty(snapshot).into_response())
}

/// What one proxy's snapshot is compiled from, taken under the lock.
struct Inputs {
    config: Arc<ConfigSet>,
    workloads: Arc<Vec<Workload>>,
    proxy: ProxyAnnounce,
    version: u64,
}

impl Inputs {
    fn of(model: &Model, instance: &str) -> Result<Inputs, ApiFailure> {
        let proxy = model
            .registry
            .get(instance)
            .ok_or_else(|| unknown_instance(instance))?;
        Ok(Inputs {
            config: model.config.clone(),
            workloads: model.workloads.clone(),
            proxy: proxy.announce.clone(),
            version: model.version,
        })
    }
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
    if ack.accepted {
        tracing::debug!(instance, version = ack.version, "proxy accepted snapshot");
    } else {
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
        .proxies(Instant::now())
        .into_iter()
        .find(|p| p.announce.instance == instance)
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
