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
//!
//! **Moving to mutual TLS.** Once the identity worker holds a certificate
//! and the control plane has named its secure port in an announce's answer
//! (`AnnounceResponse::secure`, istiod's 15012), every call goes there
//! instead ([`Link`]): TLS 1.3 with this proxy's certificate, the control
//! plane's own certificate checked against the mesh root and the SPIFFE ID
//! it was announced with (`tls::client_config`), one HTTP/2 connection
//! for the announces, the long-poll and the ACKs. A renewed certificate
//! opens a new connection; the plaintext port is not used again, since the
//! control plane refuses it for an instance that proved its identity
//! (mesh/control/src/secure.rs).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mesh_api::snapshot::Snapshot;
use mesh_api::xds::{
    AckRequest, AnnounceResponse, DEFAULT_WATCH_WAIT_MS, HEARTBEAT_INTERVAL_MS, ProxyAnnounce,
    ProxyMode, SecureControl,
};
use reqwest::Method;
use tokio_util::sync::CancellationToken;

use crate::identity::CertifiedKey;

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
        // The identity of the certificate it holds now, if any: what
        // `meshctl get proxies` shows, and what the secure port checks.
        identity: shared
            .identity
            .borrow()
            .as_ref()
            .map(|certified| certified.identity.clone()),
    }
}

/// Run both loops until `shutdown`.
pub async fn run(shared: Arc<Shared>, link: Arc<Link>, shutdown: CancellationToken) {
    // The watch starts after the first announce succeeds: before it, the
    // control plane does not know this instance and would answer 404.
    let (announced_tx, announced_rx) = tokio::sync::watch::channel(false);
    tokio::join!(
        announce_loop(&shared, &link, &shutdown, announced_tx),
        watch_loop(&shared, &link, &shutdown, announced_rx),
    );
}

/// Leave the mesh: `DELETE /v1/proxies/{instance}`, best effort.
pub async fn leave(shared: &Shared, link: &Link) {
    let path = format!("/v1/proxies/{}", shared.config.instance);
    match link
        .call(Method::DELETE, &path, None, Duration::from_secs(1))
        .await
    {
        Ok((status, _)) => tracing::info!(status, "left the mesh"),
        Err(error) => tracing::warn!(%error, "could not tell the control plane we are leaving"),
    }
}

async fn announce_loop(
    shared: &Shared,
    link: &Link,
    shutdown: &CancellationToken,
    announced: tokio::sync::watch::Sender<bool>,
) {
    let path = format!("/v1/proxies/{}", shared.config.instance);
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
        let body = serde_json::to_vec(&announce).unwrap_or_default();
        let result = match link
            .call(Method::PUT, &path, Some(body), Duration::from_secs(2))
            .await
        {
            Ok((status, body)) if (200..300).contains(&status) => {
                // The answer names the secure port once there is one.
                if let Ok(answer) = serde_json::from_slice::<AnnounceResponse>(&body) {
                    link.learn(answer.secure);
                }
                Ok(())
            }
            // A refusal says why (a 401 names where the token lives): log
            // the control plane's words, not only the status.
            Ok((status, body)) => Err(format!(
                "{}{path}: {status}: {}",
                link.base(),
                String::from_utf8_lossy(&body).trim()
            )),
            Err(error) => Err(error),
        };
        let base = &link.base();
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
    link: &Link,
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
        let path = format!(
            "/v1/proxies/{instance}/snapshot?version={version}&waitMs={DEFAULT_WATCH_WAIT_MS}"
        );
        let request = link.call(
            Method::GET,
            &path,
            None,
            Duration::from_millis(DEFAULT_WATCH_WAIT_MS) + Duration::from_secs(5),
        );
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = request => result,
        };
        let base = &link.base();
        let error = match result {
            Ok((304, _)) => {
                backoff.succeeded(base);
                continue;
            }
            Ok((status, bytes)) if (200..300).contains(&status) => {
                backoff.succeeded(base);
                version = receive(shared, link, &bytes).await.unwrap_or(version);
                continue;
            }
            Ok((status, body)) => format!(
                "{base}{path}: {status}: {}",
                String::from_utf8_lossy(&body).trim()
            ),
            Err(error) => error,
        };
        let delay = backoff.failed(base, &error);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Apply a snapshot body, ACK or NACK it; returns its version if it had one.
async fn receive(shared: &Shared, link: &Link, body: &[u8]) -> Option<u64> {
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
    let path = format!("/v1/proxies/{}/ack", shared.config.instance);
    let body = serde_json::to_vec(&ack).unwrap_or_default();
    match link
        .call(Method::POST, &path, Some(body), Duration::from_secs(2))
        .await
    {
        Ok((status, _)) if (200..300).contains(&status) => {}
        Ok((status, body)) => tracing::warn!(
            status,
            error = %String::from_utf8_lossy(&body).trim(),
            version,
            "the control plane refused the ack"
        ),
        Err(error) => tracing::warn!(%error, version, "could not send the ack"),
    }
    Some(version)
}

// === Link ===

/// How this proxy reaches the control plane: plaintext (`MESH_CONTROL_URL`)
/// until it holds a certificate and knows the secure port, mutual TLS on
/// that port from then on.
pub struct Link {
    plain: reqwest::Client,
    /// `http://host:15010`
    base: String,
    /// The identity worker's current certificate (`identity.rs`).
    certificate: crate::identity::Current,
    /// The secure port and the identity the control plane must prove, as
    /// the last announce's answer named them.
    secure: std::sync::Mutex<Option<SecureControl>>,
    /// The mutual-TLS connection, made for one certificate and one port.
    mtls: tokio::sync::Mutex<Option<Mtls>>,
    /// The roots the sidecars trust now (the snapshot's bundle), which a
    /// new connection to the control plane trusts too: after a root
    /// rotation the control plane's certificate is of the new root before
    /// this proxy's own certificate is. `None`: its certificate's bundle.
    trust: Option<Arc<crate::tls::MeshTls>>,
}

/// One HTTP/2 connection over mutual TLS, and what it was made with.
struct Mtls {
    certificate: Arc<CertifiedKey>,
    secure: SecureControl,
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

impl Link {
    pub fn new(
        plain: reqwest::Client,
        base: String,
        certificate: crate::identity::Current,
    ) -> Link {
        Link {
            plain,
            base,
            certificate,
            secure: std::sync::Mutex::new(None),
            mtls: tokio::sync::Mutex::new(None),
            trust: None,
        }
    }

    /// Trust what `tls` trusts (the snapshot's bundle) when connecting.
    pub fn trusting(mut self, tls: Arc<crate::tls::MeshTls>) -> Link {
        self.trust = Some(tls);
        self
    }

    /// Where calls go now, for log lines.
    pub fn base(&self) -> String {
        match (self.current_secure(), self.certificate.borrow().is_some()) {
            (Some(secure), true) => format!("https://{}:{}", self.host(), secure.port),
            _ => self.base.clone(),
        }
    }

    /// Remember what an announce's answer said of the secure port.
    pub fn learn(&self, secure: Option<SecureControl>) {
        let mut current = self.secure.lock().unwrap_or_else(|e| e.into_inner());
        if *current != secure {
            if let Some(secure) = &secure {
                tracing::info!(
                    port = secure.port,
                    identity = %secure.identity,
                    "the control plane serves mutual TLS; moving there once this proxy holds a certificate"
                );
            }
            *current = secure;
        }
    }

    fn current_secure(&self) -> Option<SecureControl> {
        self.secure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn host(&self) -> String {
        reqwest::Url::parse(&self.base)
            .ok()
            .and_then(|url| url.host_str().map(str::to_string))
            .unwrap_or_else(|| "127.0.0.1".into())
    }

    /// One request; the status and the body, or why there is none.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        let certificate = self.certificate.borrow().clone();
        match (certificate, self.current_secure()) {
            (Some(certificate), Some(secure)) => {
                self.call_mtls(certificate, secure, method, path, body, timeout)
                    .await
            }
            _ => self.call_plain(method, path, body, timeout).await,
        }
    }

    async fn call_plain(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        let mut request = self
            .plain
            .request(method, format!("{}{path}", self.base))
            .timeout(timeout);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        Ok((status, bytes))
    }

    async fn call_mtls(
        &self,
        certificate: Arc<CertifiedKey>,
        secure: SecureControl,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        let host = self.host();
        let url = format!("https://{host}:{}{path}", secure.port);
        let mut sender = {
            let mut mtls = self.mtls.lock().await;
            let usable = mtls.as_ref().is_some_and(|m| {
                Arc::ptr_eq(&m.certificate, &certificate)
                    && m.secure == secure
                    && !m.sender.is_closed()
            });
            if !usable {
                let sender = tokio::time::timeout(
                    Duration::from_secs(2),
                    connect(&host, &certificate, &secure, self.trust.as_deref()),
                )
                .await
                .map_err(|_| format!("{url}: the TLS connection timed out"))?
                .map_err(|e| format!("{url}: {e}"))?;
                *mtls = Some(Mtls {
                    certificate,
                    secure,
                    sender,
                });
            }
            // Set just above when it was not usable.
            mtls.as_ref()
                .map(|m| m.sender.clone())
                .expect("a connection")
        };
        let mut request = http::Request::builder().method(method).uri(&url);
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| format!("{url}: {e}"))?;
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, bytes))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(format!("{url}: {error}")),
            Err(_) => Err(format!("{url}: no answer within {timeout:?}")),
        }
    }
}

/// A TLS 1.3 connection to the secure port with this proxy's certificate,
/// accepting only the control plane's identity; HTTP/2 over it.
async fn connect(
    host: &str,
    certificate: &CertifiedKey,
    secure: &SecureControl,
    trust: Option<&crate::tls::MeshTls>,
) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>, String> {
    let bundle = trust
        .and_then(crate::tls::MeshTls::trust_bundle)
        .unwrap_or_else(|| certificate.trust_bundle_pem.clone());
    let config = crate::tls::client_config_trusting(certificate, &bundle, secure.identity.clone())
        .map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect((host, secure.port))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    // The verifier checks the SPIFFE ID, not this name; rustls wants one.
    let name =
        rustls::pki_types::ServerName::try_from("mesh-control.mesh").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "control plane connection ended");
        }
    });
    Ok(sender)
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
