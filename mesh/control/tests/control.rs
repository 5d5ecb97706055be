//! The control plane over real HTTP, in-process on 127.0.0.1:0: what a
//! sidecar and meshctl see when they announce, watch, acknowledge and apply.
//!
//! Time-dependent checks poll with a deadline; no sleep stands in for a
//! condition.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mesh_api::config::{
    ApplyRequest, ApplyResponse, ConfigErrors, Diagnostic, Resource, SourceFile,
};
use mesh_api::snapshot::Snapshot;
use mesh_api::xds::{
    AckRequest, AnnounceResponse, ApiError, ProxyAnnounce, ProxyMode, ProxyStatus, ServiceStatus,
};
use mesh_control::{Error, Server, ServerHandle, Settings, StoreError};
use mesh_testkit::wait_until;
use reqwest::StatusCode;

// === helpers ===

/// A fresh state directory, removed when the test ends.
struct StateDir(PathBuf);

impl StateDir {
    fn new(tag: &str) -> StateDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mesh-control-it-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        StateDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The control plane and a client for it.
struct Mesh {
    control: ServerHandle,
    http: reqwest::Client,
}

impl Mesh {
    async fn start(settings: Settings) -> Mesh {
        let control = Server::start(settings).await.expect("control plane starts");
        // `.no_proxy()`: reqwest honours HTTP_PROXY, which must not catch
        // requests to 127.0.0.1 in a developer's shell or in CI.
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Mesh { control, http }
    }

    async fn with_defaults(dir: &StateDir) -> Mesh {
        Mesh::start(Settings::local(dir.path())).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.control.url())
    }

    async fn announce(&self, announce: &ProxyAnnounce) -> AnnounceResponse {
        let response = self
            .http
            .put(self.url(&format!("/v1/proxies/{}", announce.instance)))
            .json(announce)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "announce accepted");
        response.json().await.unwrap()
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "GET {path}");
        response.json().await.unwrap()
    }

    async fn services(&self) -> Vec<ServiceStatus> {
        self.get("/v1/services").await
    }

    async fn proxies(&self) -> Vec<ProxyStatus> {
        self.get("/v1/proxies").await
    }

    /// One long-poll: the status, and the snapshot when there is one.
    async fn watch(
        &self,
        instance: &str,
        version: u64,
        wait_ms: u64,
    ) -> (StatusCode, Option<Snapshot>) {
        let response = self
            .http
            .get(self.url(&format!(
                "/v1/proxies/{instance}/snapshot?version={version}&waitMs={wait_ms}"
            )))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let snapshot = match status {
            StatusCode::OK => Some(response.json().await.unwrap()),
            _ => None,
        };
        (status, snapshot)
    }

    async fn post<B: serde::Serialize>(&self, path: &str, body: &B) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

fn sidecar(instance: &str, service: &str, version: &str, port: u16) -> ProxyAnnounce {
    ProxyAnnounce {
        identity: None,
        instance: instance.into(),
        mode: ProxyMode::Sidecar,
        service: service.into(),
        version: version.into(),
        labels: BTreeMap::new(),
        address: format!("127.0.0.1:{port}"),
        ready: true,
        admin_address: String::new(),
    }
}

fn endpoint_instances(snapshot: &Snapshot, cluster: &str) -> Vec<String> {
    snapshot
        .clusters
        .iter()
        .find(|c| c.name == cluster)
        .map(|c| c.endpoints.iter().map(|e| e.instance.clone()).collect())
        .unwrap_or_default()
}

// === discovery ===

#[tokio::test]
async fn an_announced_sidecar_appears_in_services_and_a_gateway_does_not() {
    let dir = StateDir::new("announce");
    let mesh = Mesh::with_defaults(&dir).await;

    let reply = mesh
        .announce(&sidecar("hw-v1-a", "helloworld-service", "v1", 40001))
        .await;
    assert_eq!(reply.lease_ms, mesh_api::xds::LEASE_MS);
    assert_eq!(reply.version, mesh.control.version());
    mesh.announce(&ProxyAnnounce {
        mode: ProxyMode::Gateway,
        address: String::new(),
        ..sidecar("gateway-1", "ingressgateway", "", 0)
    })
    .await;

    let services = mesh.services().await;
    assert_eq!(
        services.len(),
        1,
        "a gateway is not a service: {services:?}"
    );
    let hw = &services[0];
    assert_eq!(hw.name, "helloworld-service");
    assert_eq!(hw.port, 8080);
    assert_eq!(hw.versions, ["v1"]);
    assert_eq!(hw.endpoints[0].instance, "hw-v1-a");
    assert_eq!(hw.endpoints[0].address, "127.0.0.1:40001");
    assert!(hw.endpoints[0].healthy);

    let proxies = mesh.proxies().await;
    let names: Vec<&str> = proxies
        .iter()
        .map(|p| p.announce.instance.as_str())
        .collect();
    assert_eq!(names, ["gateway-1", "hw-v1-a"]);
    assert!(proxies.iter().all(|p| p.live));

    // The gateway's snapshot routes ingress traffic; the sidecar's does not.
    let (status, snapshot) = mesh.watch("gateway-1", 0, 0).await;
    assert_eq!(status, StatusCode::OK);
    assert!(snapshot.unwrap().gateway.is_some());
    mesh.control.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_invalid_announce_is_rejected_with_the_field_to_fix() {
    let dir = StateDir::new("invalid");
    let mesh = Mesh::with_defaults(&dir).await;

    let no_address = ProxyAnnounce {
        address: String::new(),
        ..sidecar("hw-1", "helloworld-service", "v1", 1)
    };
    let response = mesh
        .http
        .put(mesh.url("/v1/proxies/hw-1"))
        .json(&no_address)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: ApiError = response.json().await.unwrap();
    assert!(error.error.contains("`address`"), "{}", error.error);

    let response = mesh
        .http
        .put(mesh.url("/v1/proxies/other-name"))
        .json(&sidecar("hw-1", "helloworld-service", "v1", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    let response = mesh
        .http
        .put(mesh.url("/v1/proxies/hw-1"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: ApiError = response.json().await.unwrap();
    assert!(
        error.error.contains("invalid request body"),
        "{}",
        error.error
    );

    assert!(mesh.proxies().await.is_empty(), "nothing was registered");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let dir = StateDir::new("routes");
    let mesh = Mesh::with_defaults(&dir).await;

    let response = mesh.http.get(mesh.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let error: ApiError = response.json().await.unwrap();
    assert!(error.error.contains("/v2/nothing"), "{}", error.error);

    let response = mesh
        .http
        .delete(mesh.url("/v1/services"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let error: ApiError = response.json().await.unwrap();
    assert!(error.error.contains("DELETE"), "{}", error.error);
}

#[tokio::test]
async fn an_expired_lease_takes_the_instance_out_of_traffic_and_a_heartbeat_brings_it_back() {
    let dir = StateDir::new("lease");
    let lease = Duration::from_millis(300);
    let mesh = Mesh::start(Settings {
        lease,
        ..Settings::local(dir.path())
    })
    .await;

    // hw-1 announces once and then goes silent, like a killed process.
    let hw = sidecar("hw-1", "helloworld-service", "v1", 40001);
    let announced_at = Instant::now();
    let joined = mesh.announce(&hw).await;

    wait_until(
        "hw-1 to become unhealthy",
        Duration::from_secs(5),
        || async { Ok(!mesh.services().await[0].endpoints[0].healthy) },
    )
    .await
    .unwrap();
    assert!(
        announced_at.elapsed() >= lease,
        "not before its lease ran out"
    );
    assert!(
        mesh.control.version() > joined.version,
        "expiry is a new version"
    );
    let proxy = &mesh.proxies().await[0];
    assert!(!proxy.live);
    assert!(proxy.last_seen_ms >= 300);

    // A watcher gets a snapshot without the dead endpoint.
    mesh.announce(&sidecar("ui-1", "guestbook-ui", "v1", 40002))
        .await;
    let (_, snapshot) = mesh.watch("ui-1", 0, 0).await;
    assert!(endpoint_instances(&snapshot.unwrap(), "helloworld-service").is_empty());

    // It comes back with its next heartbeat.
    mesh.announce(&hw).await;
    assert!(
        mesh.services()
            .await
            .iter()
            .any(|s| s.name == "helloworld-service" && s.endpoints[0].healthy)
    );
    mesh.control.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_graceful_leave_removes_the_instance_at_once() {
    let dir = StateDir::new("leave");
    let mesh = Mesh::with_defaults(&dir).await;
    mesh.announce(&sidecar("ui-1", "guestbook-ui", "v1", 40000))
        .await;
    mesh.announce(&sidecar("hw-1", "helloworld-service", "v1", 40001))
        .await;
    let before = mesh
        .announce(&sidecar("hw-2", "helloworld-service", "v2", 40002))
        .await;

    let response = mesh
        .http
        .delete(mesh.url("/v1/proxies/hw-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let after: AnnounceResponse = response.json().await.unwrap();
    assert!(after.version > before.version);

    let hw = mesh
        .services()
        .await
        .into_iter()
        .find(|s| s.name == "helloworld-service")
        .unwrap();
    let instances: Vec<&str> = hw.endpoints.iter().map(|e| e.instance.as_str()).collect();
    assert_eq!(instances, ["hw-2"]);
    let (_, snapshot) = mesh.watch("ui-1", before.version, 0).await;
    assert_eq!(
        endpoint_instances(&snapshot.unwrap(), "helloworld-service"),
        ["hw-2"]
    );

    // It is gone: leaving again, or watching, says so.
    let response = mesh
        .http
        .delete(mesh.url("/v1/proxies/hw-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let (status, _) = mesh.watch("hw-1", 0, 0).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

// === watch ===

#[tokio::test]
async fn an_unknown_instance_is_told_to_announce_first() {
    let dir = StateDir::new("unknown");
    let mesh = Mesh::with_defaults(&dir).await;
    let response = mesh
        .http
        .get(mesh.url("/v1/proxies/nobody/snapshot?version=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let error: ApiError = response.json().await.unwrap();
    assert!(error.error.contains("announce it first"), "{}", error.error);
    assert!(
        error.error.contains("PUT /v1/proxies/nobody"),
        "{}",
        error.error
    );

    let response = mesh
        .post("/v1/proxies/nobody/ack", &AckRequest::default())
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_long_poll_answers_a_stale_version_at_once_and_waits_on_a_current_one() {
    let dir = StateDir::new("longpoll");
    let mesh = Mesh::with_defaults(&dir).await;
    let ui = sidecar("ui-1", "guestbook-ui", "v1", 40000);
    let current = mesh.announce(&ui).await.version;

    // Stale (or no) version: the current snapshot, immediately, even though
    // the proxy offered to wait a long time.
    let started = Instant::now();
    let (status, snapshot) = mesh.watch("ui-1", current - 1, 30_000).await;
    assert_eq!(status, StatusCode::OK);
    let snapshot = snapshot.unwrap();
    assert_eq!(snapshot.version, current);
    assert_eq!(snapshot.proxy, "ui-1");
    assert!(started.elapsed() < Duration::from_secs(10), "did not wait");

    // Current version, nothing changes: 304 after the wait.
    let started = Instant::now();
    let (status, snapshot) = mesh.watch("ui-1", current, 300).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(snapshot.is_none());
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_waiting_long_poll_wakes_when_another_instance_joins() {
    let dir = StateDir::new("wake");
    let mesh = Mesh::with_defaults(&dir).await;
    let current = mesh
        .announce(&sidecar("ui-1", "guestbook-ui", "v1", 40000))
        .await
        .version;

    let watcher = {
        let http = mesh.http.clone();
        let url = mesh.url(&format!(
            "/v1/proxies/ui-1/snapshot?version={current}&waitMs=30000"
        ));
        tokio::spawn(async move {
            let started = Instant::now();
            let response = http.get(url).send().await.unwrap();
            let status = response.status();
            let snapshot: Snapshot = response.json().await.unwrap();
            (status, snapshot, started.elapsed())
        })
    };
    // Make sure the poll is parked before the change, so this tests the wake-up.
    wait_until(
        "the long-poll to be waiting",
        Duration::from_secs(5),
        || async { Ok(mesh.control.watching() == 1) },
    )
    .await
    .unwrap();

    mesh.announce(&sidecar("hw-1", "helloworld-service", "v1", 40001))
        .await;
    let (status, snapshot, waited) = watcher.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(snapshot.version > current);
    assert_eq!(
        endpoint_instances(&snapshot, "helloworld-service"),
        ["hw-1"]
    );
    assert!(
        waited < Duration::from_secs(10),
        "woken by the announce, not the timeout"
    );
}

#[tokio::test]
async fn a_heartbeat_with_the_same_content_keeps_the_version() {
    let dir = StateDir::new("heartbeat");
    let mesh = Mesh::with_defaults(&dir).await;
    let hw = sidecar("hw-1", "helloworld-service", "v1", 40001);
    let first = mesh.announce(&hw).await.version;

    for _ in 0..3 {
        assert_eq!(
            mesh.announce(&hw).await.version,
            first,
            "a heartbeat is not news"
        );
    }
    let (status, _) = mesh.watch("hw-1", first, 200).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);

    // The same instance announcing different content is news.
    let not_ready = ProxyAnnounce {
        ready: false,
        ..hw.clone()
    };
    let changed = mesh.announce(&not_ready).await.version;
    assert!(changed > first);
    assert!(
        !mesh.services().await[0].endpoints[0].healthy,
        "not ready, no traffic"
    );
}

#[tokio::test]
async fn acks_and_nacks_are_recorded_per_proxy() {
    let dir = StateDir::new("ack");
    let mesh = Mesh::with_defaults(&dir).await;
    let version = mesh
        .announce(&sidecar("hw-1", "helloworld-service", "v1", 40001))
        .await
        .version;

    let ack = AckRequest {
        version,
        accepted: true,
        error: None,
    };
    assert_eq!(
        mesh.post("/v1/proxies/hw-1/ack", &ack).await.status(),
        StatusCode::OK
    );
    let proxy = &mesh.proxies().await[0];
    assert_eq!(proxy.acked_version, Some(version));
    assert_eq!(proxy.rejected, None);

    let nack = AckRequest {
        version: version + 1,
        accepted: false,
        error: Some("invalid regex in route helloworld[0]".into()),
    };
    assert_eq!(
        mesh.post("/v1/proxies/hw-1/ack", &nack).await.status(),
        StatusCode::OK
    );
    let proxy = &mesh.proxies().await[0];
    assert_eq!(
        proxy.acked_version,
        Some(version),
        "the last good version stays"
    );
    let rejected = proxy.rejected.as_deref().unwrap();
    assert!(rejected.contains("invalid regex"), "{rejected}");
    assert!(
        rejected.contains(&format!("version {}", version + 1)),
        "{rejected}"
    );
}

#[tokio::test]
async fn shutdown_answers_a_pending_long_poll_instead_of_waiting_it_out() {
    let dir = StateDir::new("shutdown");
    let mesh = Mesh::with_defaults(&dir).await;
    let current = mesh
        .announce(&sidecar("ui-1", "guestbook-ui", "v1", 40000))
        .await
        .version;
    let watcher = {
        let http = mesh.http.clone();
        let url = mesh.url(&format!(
            "/v1/proxies/ui-1/snapshot?version={current}&waitMs=60000"
        ));
        tokio::spawn(async move { http.get(url).send().await.map(|r| r.status()) })
    };
    wait_until(
        "the long-poll to be waiting",
        Duration::from_secs(5),
        || async { Ok(mesh.control.watching() == 1) },
    )
    .await
    .unwrap();

    let Mesh { control, .. } = mesh;
    tokio::time::timeout(Duration::from_secs(10), control.shutdown())
        .await
        .expect("shutdown does not wait for the long-poll's 60 s")
        .unwrap();
    let status = watcher.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

// === config ===

const CANARY: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: helloworld-service
spec:
  hosts:
  - helloworld-service
  http:
  - route:
    - destination:
        host: helloworld-service
        subset: v1
      weight: 80
    - destination:
        host: helloworld-service
        subset: v2
      weight: 20
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: helloworld-service
spec:
  host: helloworld-service
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
";

fn canary() -> ApplyRequest {
    ApplyRequest {
        files: vec![SourceFile {
            name: "canary.yaml".into(),
            content: CANARY.into(),
        }],
    }
}

fn file(name: &str, content: &str) -> ApplyRequest {
    ApplyRequest {
        files: vec![SourceFile {
            name: name.into(),
            content: content.into(),
        }],
    }
}

fn actions(response: &ApplyResponse) -> Vec<&str> {
    response.changes.iter().map(|c| c.action.as_str()).collect()
}

fn names(resources: &[Resource]) -> Vec<String> {
    resources
        .iter()
        .map(|r| format!("{} {}", r.kind, r.metadata.name))
        .collect()
}

#[tokio::test]
async fn config_apply_reports_changes_lists_back_and_deletes() {
    let dir = StateDir::new("apply");
    let mesh = Mesh::with_defaults(&dir).await;
    mesh.announce(&sidecar("hw-1", "helloworld-service", "v1", 40001))
        .await;
    let before = mesh.control.version();

    let response = mesh.post("/v1/config/apply", &canary()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let applied: ApplyResponse = response.json().await.unwrap();
    assert_eq!(actions(&applied), ["created", "created"]);
    let version = mesh.control.version();
    assert!(version > before, "a config change is a new version");

    // Applying the same files again changes nothing, so no new version.
    let again: ApplyResponse = mesh
        .post("/v1/config/apply", &canary())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(actions(&again), ["unchanged", "unchanged"]);
    assert_eq!(mesh.control.version(), version);

    let all: Vec<Resource> = mesh.get("/v1/config").await;
    assert_eq!(
        names(&all),
        [
            "VirtualService helloworld-service",
            "DestinationRule helloworld-service"
        ]
    );
    let services: Vec<Resource> = mesh.get("/v1/config?kind=vs").await;
    assert_eq!(names(&services), ["VirtualService helloworld-service"]);
    let diagnostics: Vec<Diagnostic> = mesh.get("/v1/analyze").await;
    assert_eq!(diagnostics, applied.diagnostics, "analysis is stable");

    let deleted: ApplyResponse = mesh
        .post("/v1/config/delete", &canary())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(actions(&deleted), ["deleted", "deleted"]);
    let left: Vec<Resource> = mesh.get("/v1/config").await;
    assert!(left.is_empty(), "{left:?}");
    assert!(mesh.control.version() > version);
}

#[tokio::test]
async fn an_invalid_apply_changes_nothing_and_names_the_file() {
    let dir = StateDir::new("invalid-apply");
    let mesh = Mesh::with_defaults(&dir).await;
    assert_eq!(
        mesh.post("/v1/config/apply", &canary()).await.status(),
        StatusCode::OK
    );
    let config_before: Vec<Resource> = mesh.get("/v1/config").await;
    let version_before = mesh.control.version();

    // One good document and one in the talk's old shape: all or nothing.
    let broken = file(
        "broken.yaml",
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: guestbook-ui
spec:
  hosts: [guestbook-ui]
  http:
  - route:
    - destination:
        host: guestbook-ui
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: helloworld-service
spec:
  hosts: [helloworld-service]
  http:
  - fault:
      abort:
        percent: 50
        httpStatus: 503
    route:
    - destination:
        host: helloworld-service
",
    );
    let response = mesh.post("/v1/config/apply", &broken).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await.unwrap();
    // Both shapes in one body: ApiError's `error`, ConfigErrors' `errors`.
    let summary = body["error"].as_str().unwrap();
    assert!(summary.contains("nothing was applied"), "{summary}");
    let errors: ConfigErrors = serde_json::from_value(body.clone()).unwrap();
    assert!(!errors.errors.is_empty());
    assert!(
        errors.errors.iter().all(|e| e.file == "broken.yaml"),
        "{errors:?}"
    );
    assert!(
        errors.errors.iter().any(|e| e.field.contains("percent")),
        "{errors:?}"
    );

    let config_after: Vec<Resource> = mesh.get("/v1/config").await;
    assert_eq!(
        config_after, config_before,
        "the good document was not applied either"
    );
    assert_eq!(mesh.control.version(), version_before, "no new version");
}

#[tokio::test]
async fn listing_an_unknown_kind_is_a_typo_not_an_empty_list() {
    let dir = StateDir::new("kind");
    let mesh = Mesh::with_defaults(&dir).await;
    let response = mesh
        .http
        .get(mesh.url("/v1/config?kind=VirtualServce"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: ApiError = response.json().await.unwrap();
    assert!(error.error.contains("VirtualServce"), "{}", error.error);
}

#[tokio::test]
async fn analysis_reports_a_route_to_a_subset_nobody_defined() {
    let dir = StateDir::new("analyze");
    let mesh = Mesh::with_defaults(&dir).await;
    mesh.announce(&sidecar("hw-1", "helloworld-service", "v1", 40001))
        .await;
    // Istio would answer this route with a silent 503: no DestinationRule
    // defines subset v3.
    let dangling = file(
        "dangling.yaml",
        "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: helloworld-service
spec:
  hosts: [helloworld-service]
  http:
  - route:
    - destination:
        host: helloworld-service
        subset: v3
",
    );
    let applied: ApplyResponse = mesh
        .post("/v1/config/apply", &dangling)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        applied
            .diagnostics
            .iter()
            .any(|d| d.field.contains("subset")),
        "{:?}",
        applied.diagnostics
    );
    let diagnostics: Vec<Diagnostic> = mesh.get("/v1/analyze").await;
    assert_eq!(diagnostics, applied.diagnostics);
}

// === persistence ===

#[tokio::test]
async fn a_restart_keeps_registrations_and_config_and_moves_the_version_up() {
    let dir = StateDir::new("restart");
    let mesh = Mesh::with_defaults(&dir).await;
    mesh.announce(&sidecar("hw-1", "helloworld-service", "v1", 40001))
        .await;
    mesh.announce(&sidecar("ui-1", "guestbook-ui", "v1", 40002))
        .await;
    assert_eq!(
        mesh.post("/v1/config/apply", &canary()).await.status(),
        StatusCode::OK
    );
    let config_before: Vec<Resource> = mesh.get("/v1/config").await;
    assert_eq!(config_before.len(), 2);
    let version_before = mesh.control.version();
    mesh.control.shutdown().await.unwrap();

    let mesh = Mesh::with_defaults(&dir).await;
    let version_after = mesh.control.version();
    assert!(
        version_after > version_before,
        "{version_after} > {version_before}"
    );

    // Registrations are back, healthy on their grace lease.
    let proxies = mesh.proxies().await;
    let names: Vec<&str> = proxies
        .iter()
        .map(|p| p.announce.instance.as_str())
        .collect();
    assert_eq!(names, ["hw-1", "ui-1"]);
    let hw = mesh
        .services()
        .await
        .into_iter()
        .find(|s| s.name == "helloworld-service")
        .unwrap();
    assert!(hw.endpoints[0].healthy);
    let config_after: Vec<Resource> = mesh.get("/v1/config").await;
    assert_eq!(config_after, config_before);

    // A proxy still holding the old version resyncs at once.
    let (status, snapshot) = mesh.watch("ui-1", version_before, 30_000).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(snapshot.unwrap().version, version_after);
    mesh.control.shutdown().await.unwrap();

    // Restarting twice without any change still never reuses a version.
    let mesh = Mesh::with_defaults(&dir).await;
    assert!(mesh.control.version() > version_after);
}

#[tokio::test]
async fn a_version_reaches_a_proxy_only_once_it_is_on_disk() {
    let dir = StateDir::new("durable");
    let mesh = Mesh::with_defaults(&dir).await;
    mesh.announce(&sidecar("ui-1", "guestbook-ui", "v1", 40000))
        .await;
    mesh.announce(&sidecar("hw-1", "helloworld-service", "v1", 40001))
        .await;

    // Read the file while the control plane runs, as a crash would leave it.
    let (_, snapshot) = mesh.watch("ui-1", 0, 0).await;
    let version = snapshot.unwrap().version;
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("registry.json")).unwrap()).unwrap();
    assert!(
        on_disk["configVersion"].as_u64().unwrap() >= version,
        "a restart continues above every version a proxy has seen: {on_disk}"
    );
    let instances: Vec<&str> = on_disk["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["instance"].as_str().unwrap())
        .collect();
    assert_eq!(instances, ["hw-1", "ui-1"]);
}

#[tokio::test]
async fn a_corrupt_state_file_stops_the_start_with_a_clear_error() {
    let dir = StateDir::new("corrupt");
    let mesh = Mesh::with_defaults(&dir).await;
    mesh.announce(&sidecar("hw-1", "helloworld-service", "v1", 40001))
        .await;
    mesh.control.shutdown().await.unwrap();

    let file = dir.path().join("registry.json");
    std::fs::write(&file, "{\"configVersion\": 4, \"proxies\": [").unwrap();

    let err = Server::start(Settings::local(dir.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::State(StoreError::Corrupt { .. })),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&*file.to_string_lossy()),
        "names the file: {message}"
    );
    assert!(
        message.contains("delete the file"),
        "says what to do: {message}"
    );
    // Nothing was overwritten: the user can still repair it by hand.
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "{\"configVersion\": 4, \"proxies\": ["
    );
}
