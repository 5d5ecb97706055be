//! Pods as containers: the mesh the container tests run.
//!
//! A Kubernetes pod is a few containers sharing one network namespace, so
//! the sidecar reaches its app on 127.0.0.1. Docker can build the same
//! thing: start the sidecar container on a network, then the app with
//! `--network container:<sidecar>` (`NetworkMode` in the API), and the two
//! share one IP and one loopback. The sidecar owns the namespace because a
//! kubelet gives it to the pod's `pause` container, which outlives every
//! app container: when an app dies, its pod keeps its IP and its sidecar
//! keeps answering for it (503, which callers retry elsewhere). Had the app
//! owned it, `docker kill` on the app would take the IP off the network
//! with it: the sidecar would run on with loopback only, and callers'
//! connections to the pod would hang until their timeouts, which no
//! Kubernetes pod does. Around the pods:
//!
//! ```text
//!   test (127.0.0.1) -> gateway container (published 8080)
//!                         -> [ui app | ui sidecar]  -> [helloworld app | sidecar] ...
//!   test (127.0.0.1) -> control-plane container (published 15010): apply, services
//! ```
//!
//! Every sidecar announces its workload to the control plane as it connects
//! (the local registry), so nothing here keeps a list of endpoints: the test
//! asks the control plane, or a sidecar's `/config_dump`, like a user would.
//!
//! All containers and the network are created through testcontainers and
//! removed when the [`Mesh`] is dropped, also when a test panics. They are
//! named `<run>-<pod>` and labelled `micromesh.test=containers-tests`, so
//! anything left by a killed run can be found with `docker ps -a --filter
//! label=micromesh.test`. Only 127.0.0.1 ports are published: the test talks
//! to the gateway, the control plane and the sidecars' admin ports, nothing
//! else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_api::config::{ApplyRequest, ApplyResponse, Resource, SourceFile};
use mesh_api::snapshot::{HttpRoute, Snapshot};
use mesh_api::xds::{ServiceStatus, ports};
use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::core::IntoContainerPort;
use testcontainers::core::logs::LogFrame;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

use crate::images::TAG;

/// Label on everything the tests create.
pub const LABEL: &str = "micromesh.test";

/// How long a condition may take before a test gives up. Containers start
/// in about a second each; the rest is the mesh reacting (leases of 1.5 s,
/// long-polls answered at once), so this is generous on a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Retry `action` until it succeeds, for up to [`PATIENCE`]: testkit's
/// `retry_until_ok` (every error is a "not yet": containers start, ports
/// open, the mesh converges), panicking with `what` and the last error. For
/// waiting on the mesh, never for the property a test checks.
pub async fn retry_until_ok<T, Fut>(what: &str, action: impl FnMut() -> Fut) -> T
where
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    mesh_testkit::retry_until_ok(what, PATIENCE, action)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// One app container and its sidecar.
pub struct Pod {
    /// `helloworld-service-v2`: the instance name the sidecar announces.
    pub name: String,
    pub service: String,
    pub version: String,
    /// The sidecar's admin port (15000) as published on 127.0.0.1.
    pub admin_port: u16,
    // Field order is drop order: the app lives in the sidecar's network
    // namespace, so it goes first.
    app: ContainerAsync<GenericImage>,
    sidecar: ContainerAsync<GenericImage>,
}

impl Pod {
    /// The app container's id, for messages.
    pub fn app_id(&self) -> &str {
        self.app.id()
    }

    /// The sidecar container's id, for messages.
    pub fn sidecar_id(&self) -> &str {
        self.sidecar.id()
    }
}

/// What a pod runs: which image, which workload labels, what environment.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub service: String,
    pub version: String,
    /// The image name without `micromesh/` and tag: `helloworld-service`.
    pub image: String,
    pub env: Vec<(String, String)>,
}

impl PodSpec {
    /// A pod of `service` at `version`, running the service's own image.
    pub fn new(service: &str, version: &str) -> PodSpec {
        PodSpec {
            service: service.into(),
            version: version.into(),
            image: service.into(),
            env: Vec::new(),
        }
    }

    /// One more environment variable for the app.
    pub fn env(mut self, key: &str, value: &str) -> PodSpec {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The pod's name: `<service>-<version>`.
    pub fn name(&self) -> String {
        format!("{}-{}", self.service, self.version)
    }
}

/// A control plane, a gateway and pods on a Docker network of their own.
pub struct Mesh {
    /// Unique prefix of every container and of the network.
    pub run: String,
    // Field order is drop order: pods, then the gateway, then the control
    // plane; the network goes with the last container that uses it.
    pods: Vec<Pod>,
    // Held, never read: the gateway container lives as long as the mesh.
    _gateway: ContainerAsync<GenericImage>,
    control: ContainerAsync<GenericImage>,
    control_port: u16,
    gateway_port: u16,
    logs: Logs,
    http: reqwest::Client,
}

impl Mesh {
    /// Starts the network, the control plane and the gateway; pods come
    /// with [`Mesh::add_pod`]. `name` says which test this is, in names.
    pub async fn start(name: &str) -> Mesh {
        let run = unique_run(name);
        let logs = Logs::default();
        let http = reqwest::Client::builder()
            // The test's own environment may name a proxy; the mesh is on 127.0.0.1.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a plain HTTP client builds");

        let control = start(
            image("mesh-control")
                .with_exposed_port(ports::CONTROL.tcp())
                .with_env_var("MESH_CONTROL_TOKEN", CONTROL_TOKEN)
                .with_container_name(format!("{run}-mesh-control"))
                .with_network(run.clone())
                .with_label(LABEL, "containers-tests")
                .with_log_consumer(logs.consumer("mesh-control"))
                .with_host_config_modifier(publish_on_loopback(&[ports::CONTROL])),
            "mesh-control",
        )
        .await;
        let control_port = host_port(&control, ports::CONTROL).await;

        let gateway = start(
            image("mesh-proxy")
                .with_exposed_port(ports::GATEWAY.tcp())
                .with_exposed_port(ports::ADMIN.tcp())
                .with_container_name(format!("{run}-ingressgateway"))
                .with_network(run.clone())
                .with_label(LABEL, "containers-tests")
                .with_env_var("MESH_MODE", "gateway")
                .with_env_var("MESH_INSTANCE", "ingressgateway")
                .with_env_var("MESH_CONTROL_URL", control_url(&run))
                .with_env_var("MESH_CONTROL_TOKEN", CONTROL_TOKEN)
                .with_env_var("MESH_IDENTITY_TOKEN", identity_token("ingressgateway"))
                .with_log_consumer(logs.consumer("ingressgateway"))
                .with_host_config_modifier(publish_on_loopback(&[ports::GATEWAY, ports::ADMIN])),
            "ingressgateway",
        )
        .await;
        let gateway_port = host_port(&gateway, ports::GATEWAY).await;

        let mesh = Mesh {
            run,
            pods: Vec::new(),
            _gateway: gateway,
            control,
            control_port,
            gateway_port,
            logs,
            http,
        };
        retry_until_ok("the control plane's API", async || {
            Ok(mesh.services().await?)
        })
        .await;
        mesh
    }

    /// Starts a pod: the sidecar container, owner of the pod's network
    /// namespace (the `pause` container's part), then the app in it.
    pub async fn add_pod(&mut self, spec: PodSpec) -> &Pod {
        let name = spec.name();
        let container = format!("{}-{name}", self.run);
        let sidecar = start(
            image("mesh-proxy")
                .with_exposed_port(ports::ADMIN.tcp())
                .with_container_name(format!("{container}-sidecar"))
                .with_hostname(name.clone())
                .with_network(self.run.clone())
                .with_label(LABEL, "containers-tests")
                .with_env_var("MESH_SERVICE", spec.service.clone())
                .with_env_var("MESH_VERSION", spec.version.clone())
                .with_env_var("MESH_INSTANCE", name.clone())
                .with_env_var("MESH_CONTROL_URL", control_url(&self.run))
                .with_env_var("MESH_CONTROL_TOKEN", CONTROL_TOKEN)
                .with_env_var("MESH_IDENTITY_TOKEN", identity_token(&spec.service))
                .with_log_consumer(self.logs.consumer(&format!("{name}/sidecar")))
                // Ports are published by the container that owns the
                // network namespace: the admin port, here.
                .with_host_config_modifier(publish_on_loopback(&[ports::ADMIN])),
            &format!("{name}/sidecar"),
        )
        .await;

        // The app listens on 127.0.0.1 only: the sidecar, in the same network
        // namespace, is the one way in, as iptables makes it in an Istio pod.
        // Its calls to other services go through the sidecar's outbound port.
        let sidecar_id = sidecar.id().to_string();
        let mut app = image(&spec.image)
            .with_container_name(container.clone())
            .with_label(LABEL, "containers-tests")
            .with_env_var("HOST", "127.0.0.1")
            .with_env_var("PORT", ports::SERVICE.to_string())
            .with_env_var("VERSION", spec.version.clone())
            .with_env_var("HOSTNAME", name.clone())
            .with_env_var(
                "HTTP_PROXY",
                format!("http://127.0.0.1:{}", ports::OUTBOUND),
            )
            .with_log_consumer(self.logs.consumer(&name))
            .with_host_config_modifier(move |config: &mut HostConfig| {
                // `docker run --network container:<sidecar>`: one network
                // namespace for the pod. Such a container can publish
                // nothing itself (the sidecar's container does).
                config.network_mode = Some(format!("container:{sidecar_id}"));
                config.publish_all_ports = Some(false);
                config.port_bindings = None;
            });
        for (key, value) in &spec.env {
            app = app.with_env_var(key.clone(), value.clone());
        }
        let app = start(app, &name).await;
        let admin_port = host_port(&sidecar, ports::ADMIN).await;
        self.pods.push(Pod {
            name,
            service: spec.service,
            version: spec.version,
            admin_port,
            sidecar,
            app,
        });
        self.pods.last().expect("pushed just above")
    }

    /// A pod by name (`helloworld-service-v1`).
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in this mesh"))
    }

    // === talking to the mesh ===

    /// `http://127.0.0.1:<port>`: the gateway, as a user's browser reaches it.
    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    fn control_api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.control_port)
    }

    /// `GET` through the gateway: status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String), reqwest::Error> {
        let response = self
            .http
            .get(format!("{}{path}", self.gateway_url()))
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    /// `POST` a form through the gateway (already URL-encoded): the status.
    pub async fn post_form(&self, path: &str, form: &str) -> Result<u16, reqwest::Error> {
        let response = self
            .http
            .post(format!("{}{path}", self.gateway_url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_string())
            .send()
            .await?;
        Ok(response.status().as_u16())
    }

    /// The control plane's view of the services (`GET /v1/services`).
    pub async fn services(&self) -> Result<Vec<ServiceStatus>, reqwest::Error> {
        self.http
            .get(self.control_api("/v1/services"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }

    /// The applied config (`GET /v1/config`).
    pub async fn config(&self) -> Result<Vec<Resource>, reqwest::Error> {
        self.http
            .get(self.control_api("/v1/config"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }

    /// `meshctl apply -f <name>`: `POST /v1/config/apply`. Panics with the
    /// control plane's answer if it rejects the YAML.
    pub async fn apply(&self, name: &str, yaml: &str) -> ApplyResponse {
        self.change("/v1/config/apply", name, yaml).await
    }

    /// `meshctl delete -f <name>`: `POST /v1/config/delete`.
    pub async fn delete(&self, name: &str, yaml: &str) -> ApplyResponse {
        self.change("/v1/config/delete", name, yaml).await
    }

    async fn change(&self, path: &str, name: &str, yaml: &str) -> ApplyResponse {
        let request = ApplyRequest {
            files: vec![SourceFile {
                name: name.into(),
                content: yaml.into(),
            }],
        };
        let response = self
            .http
            .post(self.control_api(path))
            .bearer_auth(CONTROL_TOKEN)
            .json(&request)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path} of {name}: the control plane did not answer: {e}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "{path} of {name} answered {status}: {body}"
        );
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} answered {body}: {e}"))
    }

    /// The snapshot a pod's sidecar serves right now (its `/config_dump`).
    pub async fn snapshot(&self, pod: &str) -> Result<Snapshot, String> {
        let port = self.pod(pod).admin_port;
        let dump: serde_json::Value = self
            .http
            .get(format!("http://127.0.0.1:{port}/config_dump"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_value(dump["snapshot"].clone()).map_err(|e| format!("{e}: {dump}"))
    }

    /// Waits until `pod`'s sidecar serves a snapshot for which `check` holds.
    pub async fn wait_for_snapshot(
        &self,
        pod: &str,
        what: &str,
        check: impl Fn(&Snapshot) -> bool,
    ) {
        // The admin port may not answer yet (a restarting sidecar): retried.
        retry_until_ok(&format!("{pod}'s sidecar to serve {what}"), async || {
            let snapshot = self.snapshot(pod).await.map_err(anyhow::Error::msg)?;
            anyhow::ensure!(check(&snapshot), "it serves version {}", snapshot.version);
            Ok(())
        })
        .await
    }

    /// Waits until the control plane lists `count` healthy endpoints for each service.
    pub async fn wait_for_endpoints(&self, expected: &[(&str, usize)]) {
        retry_until_ok(&format!("healthy endpoints {expected:?}"), async || {
            let services = self.services().await?;
            let healthy = |name: &str| {
                services
                    .iter()
                    .find(|s| s.name == name)
                    .map_or(0, |s| s.endpoints.iter().filter(|e| e.healthy).count())
            };
            let counts: Vec<(&str, usize)> = expected
                .iter()
                .map(|(name, _)| (*name, healthy(name)))
                .collect();
            anyhow::ensure!(counts == expected, "the control plane lists {counts:?}");
            Ok(())
        })
        .await
    }

    // === failures ===

    /// `docker stop` on the control-plane container.
    pub async fn stop_control_plane(&self) {
        self.control
            .stop()
            .await
            .unwrap_or_else(|e| panic!("could not stop the control plane: {e}"));
    }

    /// `docker start` on the stopped control-plane container. Docker may
    /// publish its port on another host port; the API is looked up again.
    pub async fn start_control_plane(&mut self) {
        self.control
            .start()
            .await
            .unwrap_or_else(|e| panic!("could not start the control plane again: {e}"));
        self.control_port = host_port(&self.control, ports::CONTROL).await;
        retry_until_ok("the restarted control plane's API", async || {
            Ok(self.services().await?)
        })
        .await;
    }

    /// Kills a pod's app container (SIGKILL, no grace period): the app's
    /// process dies at once; its pod, network namespace and sidecar stay,
    /// as when an app container crashes in Kubernetes.
    pub async fn kill_app(&self, pod: &str) {
        let pod = self.pod(pod);
        pod.app
            .stop_with_timeout(Some(0))
            .await
            .unwrap_or_else(|e| panic!("could not kill {}'s app: {e}", pod.name));
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // A failing test gets the containers' last words before they go.
        if std::thread::panicking() {
            eprintln!("--- last log lines of {} ---", self.run);
            for line in self.logs.tail_per_container(12) {
                eprintln!("{line}");
            }
            eprintln!("--- end of {} logs ---", self.run);
        }
    }
}

// === pages and routes ===

/// The helloworld-service version named on a Guestbook page:
/// `from helloworld-service <strong>v2</strong>`.
pub fn greeting_version(page: &str) -> Option<&str> {
    let start =
        page.find("from helloworld-service <strong>")? + "from helloworld-service <strong>".len();
    let len = page[start..].find("</strong>")?;
    Some(&page[start..start + len])
}

/// The routes a snapshot has for calls to `host`.
pub fn routes_for<'a>(snapshot: &'a Snapshot, host: &str) -> Option<&'a [HttpRoute]> {
    snapshot
        .virtual_hosts
        .iter()
        .find(|vh| vh.domains.iter().any(|d| d == host))
        .map(|vh| vh.routes.as_slice())
}

/// The instances behind a snapshot's cluster (`helloworld-service`, `helloworld-service|v2`).
pub fn endpoints_of(snapshot: &Snapshot, cluster: &str) -> Vec<String> {
    snapshot
        .clusters
        .iter()
        .filter(|c| c.name == cluster)
        .flat_map(|c| c.endpoints.iter().map(|e| e.instance.clone()))
        .collect()
}

// === helpers ===

fn image(name: &str) -> GenericImage {
    GenericImage::new(format!("micromesh/{name}"), TAG.to_string())
}

/// The control plane's write token (mesh/control/src/token.rs), given to
/// it and to every proxy in the environment, as a container platform would
/// from a secret; apply and delete send it.
const CONTROL_TOKEN: &str = "podstestcontroltoken0123456789abcdefghij";

/// The bootstrap token of `service`'s identity (its service account is its
/// name, in `default`, as under `meshctl up`): with it each proxy asks the
/// control plane's CA for its workload certificate (mesh/control/src/ca.rs).
fn identity_token(service: &str) -> String {
    mesh_api::identity::bootstrap_token(
        CONTROL_TOKEN,
        &mesh_api::identity::Identity::new("default", service),
    )
}

fn control_url(run: &str) -> String {
    format!("http://{run}-mesh-control:{}", ports::CONTROL)
}

/// `-p 127.0.0.1::<port>` for each port: a free host port on loopback only.
fn publish_on_loopback(
    container_ports: &[u16],
) -> impl Fn(&mut HostConfig) + Send + Sync + 'static {
    let container_ports = container_ports.to_vec();
    move |config: &mut HostConfig| {
        config.publish_all_ports = Some(false);
        let bindings: HashMap<String, Option<Vec<PortBinding>>> = container_ports
            .iter()
            .map(|port| {
                (
                    format!("{port}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                )
            })
            .collect();
        config.port_bindings = Some(bindings);
    }
}

async fn start(
    request: ContainerRequest<GenericImage>,
    what: &str,
) -> ContainerAsync<GenericImage> {
    request.start().await.unwrap_or_else(|e| {
        panic!(
            "could not start the {what} container: {e}. Are the images built \
             (scripts/build-offline-images.sh) and the Docker Engine running?"
        )
    })
}

async fn host_port(container: &ContainerAsync<GenericImage>, port: u16) -> u16 {
    container
        .get_host_port_ipv4(port)
        .await
        .unwrap_or_else(|e| panic!("container {} publishes no port {port}: {e}", container.id()))
}

/// `mm-<test>-<pid>-<n>-<time>`: unique across concurrent tests, test
/// processes and earlier runs whose leftovers may still exist.
fn unique_run(name: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "mm-{name}-{}-{}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Log lines of every container of a mesh, by container, in arrival order.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<(String, String)>>>);

impl Logs {
    /// Keeps this many lines in all; older ones are dropped.
    const KEEP: usize = 8000;

    fn consumer(&self, name: &str) -> impl Fn(&LogFrame) + Send + Sync + 'static {
        let lines = self.0.clone();
        let name = name.to_string();
        move |frame: &LogFrame| {
            let bytes = match frame {
                LogFrame::StdOut(b) | LogFrame::StdErr(b) => b,
            };
            let text = String::from_utf8_lossy(bytes);
            // A poisoned lock means another consumer panicked mid-push; the
            // lines are still usable.
            let mut lines = lines.lock().unwrap_or_else(|e| e.into_inner());
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                lines.push((name.clone(), line.to_string()));
            }
            let excess = lines.len().saturating_sub(Self::KEEP);
            lines.drain(..excess);
        }
    }

    /// The last `n` lines of each container: a quiet container's start-up
    /// error must not drown under a busy one's access log.
    fn tail_per_container(&self, n: usize) -> Vec<String> {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&String> = lines.iter().map(|(name, _)| name).collect();
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            let own: Vec<&String> = lines
                .iter()
                .filter(|(c, _)| c == name)
                .map(|(_, l)| l)
                .collect();
            for line in &own[own.len().saturating_sub(n)..] {
                out.push(format!("[{name}] {line}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_greeting_version_off_a_page() {
        let page = r#"<p class="hello">Hola world</p><p class="from">from helloworld-service <strong>v2</strong> on <strong>hw</strong></p>"#;
        assert_eq!(greeting_version(page), Some("v2"));
        assert_eq!(greeting_version("<p>No greeting</p>"), None);
    }

    #[test]
    fn run_names_are_unique() {
        assert_ne!(unique_run("a"), unique_run("a"));
    }
}
