//! The control-plane client: announce, watch, ACK/NACK, leave.
//!
//! Istio's sidecars hold a gRPC xDS stream to istiod; micromesh uses JSON over
//! plain HTTP (the API in `mesh_api::xds`) so a learner can replay it with
//! curl. Two loops run side by side:
//!
//! - **announce**: every `HEARTBEAT_INTERVAL_MS`, `PUT /v1/proxies/{instance}`
//!   with the workload's labels, its inbound address and whether the app
//!   answers. The control plane drops an instance whose heartbeats stop.
//! - **watch**: `GET /v1/proxies/{instance}/snapshot?version=N&waitMs=15000`,
//!   a long poll: 200 with a snapshot when the control plane's version differs
//!   from N, 304 when the wait ends. Each snapshot is compiled; a good one is
//!   swapped in and ACKed, a bad one NACKed with the reason; of a bad one
//!   the proxy still applies what passes (endpoints above all) and keeps the
//!   last good version of each rejected virtual host, as Envoy NACKs one
//!   resource type and applies the others (`Shared::apply` in proxy.rs).
//!
//! When the control plane is away, both loops retry with capped exponential
//! backoff and log at the first failure and then each time the failure count
//! doubles, not every attempt. Meanwhile the listeners keep serving the last
//! good snapshot (or 503 "no config" before the first one).
//!
//! Announce, ACK and leave change the mesh, so they carry the control
//! plane's write token (`MESH_CONTROL_TOKEN`, which `meshctl up` hands each
//! proxy it starts) as `Authorization: Bearer`; the control plane answers a
//! write without it 401 (mesh/control/src/token.rs). The long-poll is a
//! read and needs none, but carries it too: one client, one header.
//!
//! The HTTP client is built with `no_proxy()`: the sidecar's own environment
//! may carry the `HTTP_PROXY` meant for its app, which points at itself.

use std::sync::Arc;
use std::time::Duration;

use mesh_api::snapshot::Snapshot;
use mesh_api::xds::{
    AckRequest, DEFAULT_WATCH_WAIT_MS, HEARTBEAT_INTERVAL_MS, ProxyAnnounce, ProxyMode,
};
use tokio_util::sync::CancellationToken;

use crate::proxy::Shared;

/// First retry delay after a failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The control plane's write token, as the proxy holds it: never printed
/// (the config is logged at debug level).
#[derive(Clone, PartialEq, Eq)]
pub struct ControlToken(String);

impl ControlToken {
    /// A token fit for an HTTP header (letters and digits, as the control
    /// plane makes them).
    pub fn parse(text: &str) -> Result<ControlToken, String> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err("expected the control plane's token: letters and digits, as in                  .mesh/state/control-token"
                .into());
        }
        Ok(ControlToken(text.to_string()))
    }

    /// The token itself (the identity worker sends its own header).
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// The `Authorization` header value.
    fn bearer(&self) -> reqwest::header::HeaderValue {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.0))
            // `parse` let only letters and digits through.
            .expect("a token of letters and digits is a valid header value");
        value.set_sensitive(true);
        value
    }
}

impl std::fmt::Debug for ControlToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlToken(hidden)")
    }
}

/// The HTTP client for the control plane; with a token, every request
/// carries it.
pub fn client(token: Option<&ControlToken>) -> Result<reqwest::Client, reqwest::Error> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(reqwest::header::AUTHORIZATION, token.bearer());
    }
    reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .connect_timeout(Duration::from_secs(2))
        .build()
}

/// What this proxy tells the control plane about itself.
pub fn announce_of(shared: &Shared, ready: bool) -> ProxyAnnounce {
    let config = &shared.config;
    ProxyAnnounce {
        instance: config.instance.clone(),
        mode: config.mode,
        service: config.service.clone(),
        version: config.version.clone(),
        labels: config.labels.clone(),
        address: shared.advertise.map(|a| a.to_string()).unwrap_or_default(),
        ready,
        admin_address: shared.admin_addr.to_string(),
    }
}

/// Run both loops until `shutdown`.
pub async fn run(
    shared: Arc<Shared>,
    client: reqwest::Client,
    base: String,
    shutdown: CancellationToken,
) {
    // The watch starts after the first announce succeeds: before it, the
    // control plane does not know this instance and would answer 404.
    let (announced_tx, announced_rx) = tokio::sync::watch::channel(false);
    tokio::join!(
        announce_loop(&shared, &client, &base, &shutdown, announced_tx),
        watch_loop(&shared, &client, &base, &shutdown, announced_rx),
    );
}

/// Leave the mesh: `DELETE /v1/proxies/{instance}`, best effort.
pub async fn leave(shared: &Shared, client: &reqwest::Client, base: &str) {
    let url = format!("{base}/v1/proxies/{}", shared.config.instance);
    match client
        .delete(&url)
        .timeout(Duration::from_secs(1))
        .send()
        .await
    {
        Ok(rsp) => tracing::info!(status = rsp.status().as_u16(), "left the mesh"),
        Err(error) => tracing::warn!(%error, "could not tell the control plane we are leaving"),
    }
}

async fn announce_loop(
    shared: &Shared,
    client: &reqwest::Client,
    base: &str,
    shutdown: &CancellationToken,
    announced: tokio::sync::watch::Sender<bool>,
) {
    let url = format!("{base}/v1/proxies/{}", shared.config.instance);
    let mut backoff = Backoff::new("announce");
    let mut last_ready = None;
    loop {
        let ready = match shared.config.mode {
            ProxyMode::Gateway => true,
            ProxyMode::Sidecar => crate::admin::probe_app(shared.config.app_addr).await,
        };
        if last_ready != Some(ready) {
            tracing::info!(ready, app = %shared.config.app_addr, "app readiness");
            last_ready = Some(ready);
        }
        let announce = announce_of(shared, ready);
        let result = match client
            .put(&url)
            .json(&announce)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(rsp) if rsp.status().is_success() => Ok(()),
            // A refusal says why (a 401 names where the token lives): log
            // the control plane's words, not only the status.
            Ok(rsp) => {
                let status = rsp.status();
                let body = rsp.text().await.unwrap_or_default();
                Err(format!("{url}: {status}: {}", body.trim()))
            }
            Err(error) => Err(error.to_string()),
        };
        let delay = match result {
            Ok(()) => {
                backoff.succeeded(base);
                announced.send_replace(true);
                Duration::from_millis(HEARTBEAT_INTERVAL_MS)
            }
            Err(error) => backoff.failed(base, &error),
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn watch_loop(
    shared: &Shared,
    client: &reqwest::Client,
    base: &str,
    shutdown: &CancellationToken,
    mut announced: tokio::sync::watch::Receiver<bool>,
) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        // Err only if the announce loop ended, which it does on shutdown.
        _ = announced.wait_for(|done| *done) => {}
    }
    let instance = &shared.config.instance;
    let mut backoff = Backoff::new("watch");
    // The last version seen, accepted or not: asking again with a rejected
    // version waits for the next one instead of receiving it again.
    let mut version = 0u64;
    loop {
        let url = format!(
            "{base}/v1/proxies/{instance}/snapshot?version={version}&waitMs={DEFAULT_WATCH_WAIT_MS}"
        );
        let request = client
            .get(&url)
            .timeout(Duration::from_millis(DEFAULT_WATCH_WAIT_MS) + Duration::from_secs(5))
            .send();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = request => result,
        };
        let error = match result {
            Ok(rsp) if rsp.status() == reqwest::StatusCode::NOT_MODIFIED => {
                backoff.succeeded(base);
                continue;
            }
            Ok(rsp) if rsp.status().is_success() => match rsp.bytes().await {
                Ok(bytes) => {
                    backoff.succeeded(base);
                    version = receive(shared, client, base, &bytes)
                        .await
                        .unwrap_or(version);
                    continue;
                }
                Err(error) => error.to_string(),
            },
            Ok(rsp) => {
                let status = rsp.status();
                let body = rsp.text().await.unwrap_or_default();
                format!("{url}: {status}: {}", body.trim())
            }
            Err(error) => error.to_string(),
        };
        let delay = backoff.failed(base, &error);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Apply a snapshot body, ACK or NACK it; returns its version if it had one.
async fn receive(
    shared: &Shared,
    client: &reqwest::Client,
    base: &str,
    body: &[u8],
) -> Option<u64> {
    let (version, verdict) = match serde_json::from_slice::<Snapshot>(body) {
        Ok(snapshot) => {
            let version = snapshot.version;
            (version, shared.apply(snapshot).map_err(|e| e.to_string()))
        }
        Err(error) => {
            // Still NACK it, with the version if one can be read, so the
            // control plane sees why this proxy is stuck on an old version.
            let version = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("version")?.as_u64())?;
            let reason = format!("snapshot is not valid JSON for this proxy: {error}");
            shared.reject(version, &reason);
            (version, Err(reason))
        }
    };
    let ack = match verdict {
        Ok(()) => AckRequest {
            version,
            accepted: true,
            error: None,
        },
        Err(error) => AckRequest {
            version,
            accepted: false,
            error: Some(error),
        },
    };
    let url = format!("{base}/v1/proxies/{}/ack", shared.config.instance);
    if let Err(error) = client
        .post(&url)
        .json(&ack)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .and_then(|rsp| rsp.error_for_status())
    {
        tracing::warn!(%error, version, "could not send the ack");
    }
    Some(version)
}

/// Capped exponential backoff that logs sparingly.
struct Backoff {
    what: &'static str,
    failures: u32,
}

impl Backoff {
    fn new(what: &'static str) -> Self {
        Backoff { what, failures: 0 }
    }

    fn failed(&mut self, base: &str, error: &dyn std::fmt::Display) -> Duration {
        self.failures += 1;
        let delay = BACKOFF_MIN
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(BACKOFF_MAX);
        // Log the 1st, 2nd, 4th, 8th... failure: the first one is news, the
        // rest only show it is still going on.
        if self.failures.is_power_of_two() {
            tracing::warn!(
                control_plane = base,
                failures = self.failures,
                retry_in_ms = delay.as_millis() as u64,
                "{}: control plane unreachable: {error}. Is mesh-control running at \
                 MESH_CONTROL_URL? Serving the last good config meanwhile.",
                self.what,
            );
        }
        delay
    }

    fn succeeded(&mut self, base: &str) {
        if self.failures > 0 {
            tracing::info!(
                control_plane = base,
                failures = self.failures,
                "{}: control plane reachable again",
                self.what
            );
            self.failures = 0;
        }
    }
}
