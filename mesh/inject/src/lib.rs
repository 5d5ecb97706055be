//! Sidecar injection: how a workload gets its mesh-proxy.
//!
//! Istio adds an Envoy sidecar to every pod of a namespace labelled for
//! injection, either when `istioctl kube-inject` rewrites a manifest or when
//! istiod's mutating admission webhook rewrites the pod on its way into the
//! API server. micromesh does the same in one pure function, [`inject`]: it
//! takes any Kubernetes object as JSON and, when that object carries a pod
//! template, returns it with the sidecar added. `meshctl inject` prints that
//! result; the control plane's webhook answers with [`patch`], the JSON Patch
//! from the same input to the same output, so the two can never disagree.
//!
//! What injection changes in a pod template:
//!
//! - a **native sidecar** (`initContainers` entry with `restartPolicy:
//!   Always`, Kubernetes 1.29+) named `mesh-proxy`, placed first: the kubelet
//!   starts it before the app, waits for its startup probe, and stops it
//!   after the app, as Istio's `holdApplicationUntilProxyStarts` does;
//! - its environment: the workload's name and version read from the pod's
//!   `app` and `version` labels through the downward API, the pod's name,
//!   namespace, service account and IP, and the control plane's address;
//! - **inbound traffic through the sidecar.** Istio redirects the pod's
//!   traffic with iptables; micromesh has no iptables, so the app listens on
//!   127.0.0.1 (`HOST`, which every Guestbook service reads) and the sidecar
//!   takes over the app port's *name*: a Service whose `targetPort` is
//!   `http` reaches the sidecar's inbound port 15006, which forwards to the
//!   app on loopback. The app's own port is renamed `app-http`;
//! - **outbound traffic through the sidecar**: `HTTP_PROXY` on every app
//!   container points at the sidecar's outbound port 15001 (`NO_PROXY` keeps
//!   loopback direct);
//! - Prometheus scrape annotations on the pod for the sidecar's admin port,
//!   which serves Istio's metrics at `/stats/prometheus`;
//! - **the proof of the workload's identity**: a projected service-account
//!   token volume named `istio-token`, as Istio injects it (audience
//!   `istio-ca`, so the token is good for the mesh's CA and nothing else;
//!   it expires after an hour and the kubelet rewrites the file before),
//!   mounted in the sidecar only, at `/var/run/secrets/tokens`, and named by
//!   `MESH_IDENTITY_TOKEN_FILE`. The control plane checks it with a
//!   TokenReview before it signs the sidecar's certificate.
//!
//! A pod template annotated (or labelled) `sidecar.istio.io/inject: "false"`
//! is left as it is, and so is one that already has a `mesh-proxy` container
//! (injecting twice is harmless). A template the mesh cannot serve (no `app` label,
//! `hostNetwork`, no port to send traffic to, an app probe the kubelet could
//! no longer reach) is an [`InjectError`] that says what to change.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

/// The sidecar container's name; a pod that has one is already injected.
pub const SIDECAR_NAME: &str = "mesh-proxy";

/// Istio's per-pod opt-out: `sidecar.istio.io/inject: "false"`.
pub const INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";

/// The sidecar's ports: Istio's, so the knowledge transfers.
pub mod ports {
    /// Admin: `/ready`, `/healthz/ready` (the startup probe), `/config_dump`,
    /// `/stats/prometheus`.
    pub const ADMIN: i32 = 15000;
    /// Where `HTTP_PROXY` sends the app's outbound calls.
    pub const OUTBOUND: i32 = 15001;
    /// Where the pod's inbound traffic arrives (the Service's target).
    pub const INBOUND: i32 = 15006;
    /// Every port the sidecar binds; an app container must not use them.
    pub const RESERVED: [i32; 3] = [ADMIN, OUTBOUND, INBOUND];
}

/// The sidecar's bootstrap token, as Istio's injector mounts it.
pub mod token {
    /// The projected volume's name (Istio's).
    pub const VOLUME: &str = "istio-token";
    /// Where the sidecar finds it.
    pub const MOUNT_PATH: &str = "/var/run/secrets/tokens";
    /// The file inside the mount.
    pub const FILE: &str = "istio-token";
    /// Who the token is for: the control plane's CA refuses any other.
    pub const AUDIENCE: &str = "istio-ca";
    /// An hour; the kubelet rewrites the file when 80% of it has passed.
    pub const EXPIRATION_SECONDS: i64 = 3600;
}

/// The name an app's port must have for injection to find it among several.
pub const APP_PORT_NAME: &str = "http";

/// What injection needs to know about the mesh it injects into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The sidecar's image: `micromesh/mesh-proxy:<version>`, the tag
    /// `scripts/build-images.sh` makes.
    pub image: String,
    /// The control plane's API as a pod reaches it.
    pub control_url: String,
}

impl Default for Settings {
    /// The mesh the manifests in `k8s/` install: images tagged with the
    /// workspace's version, the control plane in `mesh-system`.
    fn default() -> Self {
        Settings {
            image: format!("micromesh/mesh-proxy:{}", env!("CARGO_PKG_VERSION")),
            control_url: "http://mesh-control.mesh-system.svc:15010".into(),
        }
    }
}

/// What [`inject`] did with one object.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The object with the sidecar added.
    Injected(Value),
    /// The object needs no change; print it as it came.
    Unchanged(Unchanged),
}

/// Why an object was left as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unchanged {
    /// A Service, ConfigMap, ...: nothing runs, nothing to inject.
    NotAWorkload { kind: String },
    /// A `mesh-proxy` container is already there.
    AlreadyInjected,
    /// The pod template says `sidecar.istio.io/inject: "false"`.
    OptedOut,
}

/// An object the mesh cannot inject, and which one.
#[derive(Debug, thiserror::Error)]
#[error("{workload}: {problem}")]
pub struct InjectError {
    /// `Deployment guestbook/helloworld-service-v1`, as kubectl names it.
    pub workload: String,
    pub problem: Problem,
}

/// What is wrong with a pod template, and what to do about it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Problem {
    #[error("not a Kubernetes object: expected a mapping with apiVersion, kind and metadata")]
    NotAnObject,
    #[error(
        "the pod template at {path} is not a valid pod template ({message}); \
         fix that field (`kubectl apply --dry-run=client -f FILE` reports the same)"
    )]
    Malformed { path: String, message: String },
    #[error("the pod template has no containers; add the app's container to spec.containers")]
    NoContainers,
    #[error(
        "the pod template has no `app` label: the sidecar names its service after it \
         (and its subset after `version`); add metadata.labels.app (and version) to the pod template"
    )]
    NoAppLabel,
    #[error(
        "the pod uses hostNetwork: its sidecar would bind ports 15000, 15001 and 15006 on the node \
         itself; drop hostNetwork, or opt the pod out with the annotation {INJECT_ANNOTATION}: \"false\""
    )]
    HostNetwork,
    #[error(
        "no container declares a port, so the sidecar would not know where to send inbound \
         traffic; declare the app's port as a containerPort named `{APP_PORT_NAME}`"
    )]
    NoAppPort,
    #[error(
        "containers declare several ports ({ports}) and none is named `{APP_PORT_NAME}`; name \
         the port the Service targets `{APP_PORT_NAME}` so the sidecar knows which one to serve"
    )]
    AmbiguousAppPort { ports: String },
    #[error(
        "container {container} uses port {port}, which the sidecar binds (15000 admin, \
         15001 outbound, 15006 inbound); move the app to another port"
    )]
    PortTaken { container: String, port: i32 },
    #[error(
        "the app port's name {name:?} is too long to keep as `app-{name}` (Kubernetes allows \
         15 characters); shorten it, for example to `{APP_PORT_NAME}`"
    )]
    PortNameTooLong { name: String },
    #[error(
        "the pod already has a volume named {name}, which the sidecar's service-account \
         token volume uses; rename that volume"
    )]
    VolumeTaken { name: &'static str },
    #[error(
        "container {container}'s {probe} probe calls the app's port on the pod IP, but with a \
         sidecar the app listens on 127.0.0.1 only and the kubelet could not reach it; remove \
         that probe (the sidecar's readiness probe already checks the app accepts connections) \
         or make it an exec probe"
    )]
    ProbeOnAppPort {
        container: String,
        probe: &'static str,
    },
}

// === inject ===

/// Adds the sidecar to `object`'s pod template, if it has one (Pod,
/// Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController,
/// Job, CronJob). Everything outside the pod template is kept as it came.
pub fn inject(object: &Value, settings: &Settings) -> Result<Outcome, InjectError> {
    let workload = describe(object);
    let fail = |problem| InjectError {
        workload: workload.clone(),
        problem,
    };
    let map = object
        .as_object()
        .ok_or_else(|| fail(Problem::NotAnObject))?;
    let kind = map
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| fail(Problem::NotAnObject))?;
    let Some(path) = template_path(kind) else {
        return Ok(Outcome::Unchanged(Unchanged::NotAWorkload {
            kind: kind.to_string(),
        }));
    };

    // The template as JSON: `{metadata, spec}` (a Pod is its own template).
    let holder = pointer(object, path).ok_or_else(|| {
        fail(Problem::Malformed {
            path: display_path(path),
            message: "missing".into(),
        })
    })?;
    let template_json = serde_json::json!({
        "metadata": holder.get("metadata").cloned().unwrap_or(Value::Null),
        "spec": holder.get("spec").cloned().unwrap_or(Value::Null),
    });
    let mut template: PodTemplateSpec = serde_json::from_value(template_json).map_err(|e| {
        fail(Problem::Malformed {
            path: display_path(path),
            message: e.to_string(),
        })
    })?;

    if let Some(unchanged) = leave_as_is(&template) {
        return Ok(Outcome::Unchanged(unchanged));
    }
    add_sidecar(&mut template, settings).map_err(fail)?;

    // Write the template back where it came from. Serializing k8s-openapi
    // types to a `Value` cannot fail (plain structs, string keys).
    let mut out = object.clone();
    let holder = pointer_mut(&mut out, path).expect("the path was read above");
    let template = serde_json::to_value(&template).expect("a PodTemplateSpec serializes");
    for field in ["metadata", "spec"] {
        if let Some(value) = template.get(field) {
            holder[field] = value.clone();
        }
    }
    Ok(Outcome::Injected(out))
}

/// The JSON Patch (RFC 6902) that turns `object` into what [`inject`]
/// returns for it: what the mutating webhook answers. Empty when the
/// object is left as it is.
pub fn patch(object: &Value, settings: &Settings) -> Result<json_patch::Patch, InjectError> {
    Ok(match inject(object, settings)? {
        Outcome::Injected(injected) => json_patch::diff(object, &injected),
        Outcome::Unchanged(_) => json_patch::Patch(Vec::new()),
    })
}

/// Where a kind keeps its pod template (JSON object keys from the root).
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn pointer<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

fn pointer_mut<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, key| v.get_mut(key))
}

fn display_path(path: &[&str]) -> String {
    if path.is_empty() {
        "the pod itself".into()
    } else {
        path.join(".")
    }
}

/// `Deployment guestbook/helloworld-service-v1`, or as much as is known.
fn describe(object: &Value) -> String {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("object");
    let metadata = object.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("(no name)");
    match metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(namespace) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Opted out, or injected already.
fn leave_as_is(template: &PodTemplateSpec) -> Option<Unchanged> {
    // Istio reads the opt-out from the annotation and from a label of the
    // same name (the label is what a webhook's objectSelector can see).
    let says_false = |map: Option<&BTreeMap<String, String>>| {
        map.and_then(|m| m.get(INJECT_ANNOTATION))
            .is_some_and(|v| v.eq_ignore_ascii_case("false"))
    };
    let metadata = template.metadata.as_ref();
    let opted_out = says_false(metadata.and_then(|m| m.annotations.as_ref()))
        || says_false(metadata.and_then(|m| m.labels.as_ref()));
    if opted_out {
        return Some(Unchanged::OptedOut);
    }
    let spec = template.spec.as_ref()?;
    let has_sidecar = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == SIDECAR_NAME);
    has_sidecar.then_some(Unchanged::AlreadyInjected)
}

// === the transformation ===

/// Where the app serves: which container, which port.
struct AppPort {
    container: usize,
    port: usize,
    number: i32,
    name: Option<String>,
}

fn add_sidecar(template: &mut PodTemplateSpec, settings: &Settings) -> Result<(), Problem> {
    let has_app_label = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .is_some_and(|l| l.contains_key("app"));
    let spec = template.spec.as_mut().ok_or(Problem::NoContainers)?;
    if spec.containers.is_empty() {
        return Err(Problem::NoContainers);
    }
    if !has_app_label {
        return Err(Problem::NoAppLabel);
    }
    if spec.host_network == Some(true) {
        return Err(Problem::HostNetwork);
    }
    for container in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for port in container.ports.iter().flatten() {
            if ports::RESERVED.contains(&port.container_port) {
                return Err(Problem::PortTaken {
                    container: container.name.clone(),
                    port: port.container_port,
                });
            }
        }
    }
    if spec
        .volumes
        .iter()
        .flatten()
        .any(|v| v.name == token::VOLUME)
    {
        return Err(Problem::VolumeTaken {
            name: token::VOLUME,
        });
    }
    let app = find_app_port(&spec.containers)?;
    check_probes(&spec.containers[app.container], &app)?;

    // The sidecar takes the app port's name, so Services that target it by
    // name reach the sidecar; the app's port keeps its number under `app-NAME`.
    let inbound_name = match &app.name {
        Some(name) => {
            let renamed = format!("app-{name}");
            if renamed.len() > 15 {
                return Err(Problem::PortNameTooLong { name: name.clone() });
            }
            spec.containers[app.container]
                .ports
                .as_mut()
                .expect("find_app_port found a port here")[app.port]
                .name = Some(renamed);
            name.clone()
        }
        None => APP_PORT_NAME.to_string(),
    };

    let proxy_url = format!("http://127.0.0.1:{}", ports::OUTBOUND);
    for (index, container) in spec.containers.iter_mut().enumerate() {
        let env = container.env.get_or_insert_with(Vec::new);
        if index == app.container {
            // No iptables: the app must listen on loopback only, so the
            // sidecar is the one way in (Guestbook services read HOST).
            set_env(env, "HOST", "127.0.0.1");
        }
        set_env(env, "HTTP_PROXY", &proxy_url);
        set_env(env, "NO_PROXY", "localhost,127.0.0.1");
    }

    let sidecar = sidecar_container(settings, app.number, &inbound_name);
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .insert(0, sidecar);
    spec.volumes
        .get_or_insert_with(Vec::new)
        .push(token_volume());

    let annotations = template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(BTreeMap::new);
    annotations.insert("prometheus.io/scrape".into(), "true".into());
    annotations.insert("prometheus.io/port".into(), ports::ADMIN.to_string());
    annotations.insert("prometheus.io/path".into(), "/stats/prometheus".into());
    Ok(())
}

/// The port named `http`, else the one port declared.
fn find_app_port(containers: &[Container]) -> Result<AppPort, Problem> {
    let all: Vec<AppPort> = containers
        .iter()
        .enumerate()
        .flat_map(|(c, container)| {
            container
                .ports
                .iter()
                .flatten()
                .enumerate()
                .map(move |(p, port)| AppPort {
                    container: c,
                    port: p,
                    number: port.container_port,
                    name: port.name.clone(),
                })
        })
        .collect();
    let named: Vec<&AppPort> = all
        .iter()
        .filter(|p| p.name.as_deref() == Some(APP_PORT_NAME))
        .collect();
    let chosen = match (named.len(), all.len()) {
        (1, _) => named[0],
        (0, 0) => return Err(Problem::NoAppPort),
        (0, 1) => &all[0],
        _ => {
            let ports = all
                .iter()
                .map(|p| match &p.name {
                    Some(name) => format!("{} {name}", p.number),
                    None => p.number.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Problem::AmbiguousAppPort { ports });
        }
    };
    Ok(AppPort {
        name: chosen.name.clone(),
        ..*chosen
    })
}

/// An HTTP, TCP or gRPC probe on the app's port would hit the pod IP, where
/// nothing listens once the app is on loopback.
fn check_probes(container: &Container, app: &AppPort) -> Result<(), Problem> {
    let targets_app = |port: &IntOrString| match port {
        IntOrString::Int(n) => *n == app.number,
        IntOrString::String(s) => app.name.as_deref() == Some(s.as_str()),
    };
    let probes = [
        ("startup", &container.startup_probe),
        ("readiness", &container.readiness_probe),
        ("liveness", &container.liveness_probe),
    ];
    for (probe, spec) in probes {
        let Some(spec) = spec else { continue };
        let hits = spec.http_get.as_ref().is_some_and(|h| targets_app(&h.port))
            || spec
                .tcp_socket
                .as_ref()
                .is_some_and(|t| targets_app(&t.port))
            || spec.grpc.as_ref().is_some_and(|g| g.port == app.number);
        if hits {
            return Err(Problem::ProbeOnAppPort {
                container: container.name.clone(),
                probe,
            });
        }
    }
    Ok(())
}

/// Sets `name` to `value`, replacing whatever the manifest said.
fn set_env(env: &mut Vec<EnvVar>, name: &str, value: &str) {
    let var = EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    };
    match env.iter_mut().find(|v| v.name == name) {
        Some(existing) => *existing = var,
        None => env.push(var),
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: path.into(),
            }),
            ..Default::default()
        }),
    }
}

fn literal(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn quantities(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_string(), Quantity(cpu.into())),
        ("memory".to_string(), Quantity(memory.into())),
    ])
}

/// The projected service-account token for the CA (Istio's `istio-token`).
fn token_volume() -> Volume {
    Volume {
        name: token::VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(token::AUDIENCE.into()),
                    expiration_seconds: Some(token::EXPIRATION_SECONDS),
                    path: token::FILE.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The mesh-proxy container, as a native sidecar.
fn sidecar_container(settings: &Settings, app_port: i32, inbound_name: &str) -> Container {
    let admin = IntOrString::Int(ports::ADMIN);
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        // `Always` on an init container makes it a native sidecar: started
        // first, kept running beside the app, stopped after it.
        restart_policy: Some("Always".into()),
        env: Some(vec![
            literal("MESH_MODE", "sidecar"),
            field("MESH_SERVICE", "metadata.labels['app']"),
            field("MESH_VERSION", "metadata.labels['version']"),
            field("MESH_INSTANCE", "metadata.name"),
            // The control plane's Kubernetes source finds the sidecar's pod
            // by name and namespace; the service account is its identity.
            field("MESH_NAMESPACE", "metadata.namespace"),
            field("MESH_SERVICE_ACCOUNT", "spec.serviceAccountName"),
            field("MESH_POD_IP", "status.podIP"),
            // `$(VAR)` is expanded by the kubelet from the variables above.
            literal(
                "MESH_ADVERTISE_ADDR",
                format!("$(MESH_POD_IP):{}", ports::INBOUND),
            ),
            literal("MESH_CONTROL_URL", settings.control_url.clone()),
            literal("MESH_APP_ADDR", format!("127.0.0.1:{app_port}")),
            literal("MESH_INBOUND_ADDR", format!("0.0.0.0:{}", ports::INBOUND)),
            literal(
                "MESH_OUTBOUND_ADDR",
                format!("127.0.0.1:{}", ports::OUTBOUND),
            ),
            // The kubelet's probes and Prometheus come from outside the pod.
            literal("MESH_ADMIN_ADDR", format!("0.0.0.0:{}", ports::ADMIN)),
            // Read again at each certificate request: the kubelet rotates it.
            literal(
                "MESH_IDENTITY_TOKEN_FILE",
                format!("{}/{}", token::MOUNT_PATH, token::FILE),
            ),
        ]),
        volume_mounts: Some(vec![VolumeMount {
            name: token::VOLUME.into(),
            mount_path: token::MOUNT_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ports: Some(vec![
            port(inbound_name, ports::INBOUND),
            port("mesh-admin", ports::ADMIN),
        ]),
        // The startup probe holds the app until the proxy has its first
        // config and its listeners are up: `/healthz/ready`, the proxy alone
        // (Istio's pilot-agent path). It cannot be `/ready`: that also waits
        // for the app to accept connections, and the app only starts once
        // this probe has passed. `/ready` is the readiness probe instead:
        // the pod takes traffic once the proxy has its config and the app
        // answers.
        startup_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz/ready".into()),
                port: admin.clone(),
                ..Default::default()
            }),
            period_seconds: Some(1),
            failure_threshold: Some(60),
            ..Default::default()
        }),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: admin,
                ..Default::default()
            }),
            period_seconds: Some(2),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(quantities("10m", "16Mi")),
            limits: Some(quantities("200m", "32Mi")),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(10001),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(containers: Value) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "hello", "namespace": "guestbook"},
            "spec": {
                "selector": {"matchLabels": {"app": "hello"}},
                "template": {
                    "metadata": {"labels": {"app": "hello", "version": "v1"}},
                    "spec": {"containers": containers}
                }
            }
        })
    }

    fn injected(object: &Value) -> Value {
        match inject(object, &Settings::default()).expect("injects") {
            Outcome::Injected(value) => value,
            other => panic!("expected an injection, got {other:?}"),
        }
    }

    fn problem(object: &Value) -> Problem {
        inject(object, &Settings::default())
            .expect_err("must be refused")
            .problem
    }

    #[test]
    fn the_sidecar_reads_its_identity_token_from_a_projected_volume_for_the_ca() {
        let out = injected(&deployment(json!([{
            "name": "hello", "image": "hello:1",
            "ports": [{"name": "http", "containerPort": 8080}]
        }])));
        let spec = &out["spec"]["template"]["spec"];
        // Istio's istio-token: a token for the CA's audience only, an hour long.
        assert_eq!(
            spec["volumes"],
            json!([{"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": "istio-ca", "expirationSeconds": 3600, "path": "istio-token"
            }}]}}])
        );
        let sidecar = &spec["initContainers"][0];
        assert_eq!(
            sidecar["volumeMounts"],
            json!([{"name": "istio-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true}])
        );
        let env = sidecar["env"].as_array().unwrap();
        assert!(env.contains(&json!({
            "name": "MESH_IDENTITY_TOKEN_FILE",
            "value": "/var/run/secrets/tokens/istio-token"
        })));
        // The app does not get the CA's token.
        assert_eq!(spec["containers"][0].get("volumeMounts"), None);

        // A volume of the same name is the pod's own: refused, not replaced.
        let mut taken = deployment(json!([{
            "name": "hello", "image": "hello:1",
            "ports": [{"name": "http", "containerPort": 8080}]
        }]));
        taken["spec"]["template"]["spec"]["volumes"] =
            json!([{"name": "istio-token", "emptyDir": {}}]);
        assert_eq!(
            problem(&taken),
            Problem::VolumeTaken {
                name: "istio-token"
            }
        );
    }

    #[test]
    fn the_sidecar_takes_the_app_ports_name_and_the_app_moves_to_loopback() {
        let out = injected(&deployment(json!([{
            "name": "hello", "image": "hello:1",
            "ports": [{"name": "http", "containerPort": 8080}]
        }])));
        let spec = &out["spec"]["template"]["spec"];
        let sidecar = &spec["initContainers"][0];
        assert_eq!(sidecar["name"], "mesh-proxy");
        assert_eq!(sidecar["restartPolicy"], "Always");
        assert_eq!(
            sidecar["ports"][0],
            json!({"name": "http", "containerPort": 15006, "protocol": "TCP"})
        );
        assert_eq!(spec["containers"][0]["ports"][0]["name"], "app-http");
        let env = &spec["containers"][0]["env"];
        assert!(
            env.as_array()
                .unwrap()
                .contains(&json!({"name": "HOST", "value": "127.0.0.1"}))
        );
        assert!(
            env.as_array()
                .unwrap()
                .contains(&json!({"name": "HTTP_PROXY", "value": "http://127.0.0.1:15001"}))
        );
        // Everything outside the template is kept.
        assert_eq!(
            out["metadata"],
            json!({"name": "hello", "namespace": "guestbook"})
        );
    }

    #[test]
    fn the_patch_applied_gives_the_injected_object() {
        let original =
            deployment(json!([{"name": "a", "image": "a:1", "ports": [{"containerPort": 9000}]}]));
        let mut patched = original.clone();
        json_patch::patch(
            &mut patched,
            &patch(&original, &Settings::default()).unwrap(),
        )
        .unwrap();
        assert_eq!(patched, injected(&original));
    }

    #[test]
    fn the_webhooks_pod_gets_the_same_sidecar_as_its_deployment() {
        // What the API server sends the webhook: a Pod made from the
        // template, named by generateName only (no name yet).
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "hello-5d8f7-", "namespace": "guestbook",
                         "labels": {"app": "hello", "version": "v1"}},
            "spec": {"containers": [{"name": "hello", "image": "hello:1",
                                     "ports": [{"name": "http", "containerPort": 8080}]}]}
        });
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch(&pod, &Settings::default()).unwrap()).unwrap();
        let from_deployment = injected(&deployment(json!([{
            "name": "hello", "image": "hello:1",
            "ports": [{"name": "http", "containerPort": 8080}]
        }])));
        assert_eq!(patched["spec"], from_deployment["spec"]["template"]["spec"]);
        assert_eq!(
            patched["metadata"]["annotations"],
            from_deployment["spec"]["template"]["metadata"]["annotations"]
        );
    }

    #[test]
    fn refuses_what_it_cannot_serve_with_the_reason() {
        let no_port = deployment(json!([{"name": "a", "image": "a:1"}]));
        assert_eq!(problem(&no_port), Problem::NoAppPort);

        let two = deployment(json!([{"name": "a", "image": "a:1",
            "ports": [{"containerPort": 1}, {"containerPort": 2}]}]));
        assert!(matches!(problem(&two), Problem::AmbiguousAppPort { .. }));

        let taken =
            deployment(json!([{"name": "a", "image": "a:1", "ports": [{"containerPort": 15001}]}]));
        assert_eq!(
            problem(&taken),
            Problem::PortTaken {
                container: "a".into(),
                port: 15001
            }
        );

        let probed = deployment(json!([{"name": "a", "image": "a:1",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}}}]));
        assert_eq!(
            problem(&probed),
            Problem::ProbeOnAppPort {
                container: "a".into(),
                probe: "readiness"
            }
        );

        let mut unlabelled =
            deployment(json!([{"name": "a", "image": "a:1", "ports": [{"containerPort": 1}]}]));
        unlabelled["spec"]["template"]["metadata"]["labels"] = json!({"version": "v1"});
        assert_eq!(problem(&unlabelled), Problem::NoAppLabel);

        let mut host =
            deployment(json!([{"name": "a", "image": "a:1", "ports": [{"containerPort": 1}]}]));
        host["spec"]["template"]["spec"]["hostNetwork"] = json!(true);
        assert_eq!(problem(&host), Problem::HostNetwork);

        let bad = deployment(json!([{"name": "a", "ports": "eighty"}]));
        assert!(matches!(problem(&bad), Problem::Malformed { .. }));
    }

    #[test]
    fn errors_name_the_workload() {
        let err = inject(
            &deployment(json!([{"name": "a", "image": "a:1"}])),
            &Settings::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("Deployment guestbook/hello: no container declares a port"),
            "{err}"
        );
    }

    #[test]
    fn leaves_non_workloads_opted_out_and_injected_pods_alone() {
        let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}});
        assert_eq!(
            inject(&service, &Settings::default()).unwrap(),
            Outcome::Unchanged(Unchanged::NotAWorkload {
                kind: "Service".into()
            })
        );
        let once = injected(&deployment(
            json!([{"name": "a", "image": "a:1", "ports": [{"containerPort": 1}]}]),
        ));
        assert_eq!(
            inject(&once, &Settings::default()).unwrap(),
            Outcome::Unchanged(Unchanged::AlreadyInjected)
        );
        assert!(patch(&once, &Settings::default()).unwrap().0.is_empty());

        let mut opted = deployment(json!([{"name": "a", "image": "a:1"}]));
        opted["spec"]["template"]["metadata"]["annotations"] = json!({INJECT_ANNOTATION: "false"});
        assert_eq!(
            inject(&opted, &Settings::default()).unwrap(),
            Outcome::Unchanged(Unchanged::OptedOut)
        );
        let mut by_label = deployment(json!([{"name": "a", "image": "a:1"}]));
        by_label["spec"]["template"]["metadata"]["labels"][INJECT_ANNOTATION] = json!("false");
        assert_eq!(
            inject(&by_label, &Settings::default()).unwrap(),
            Outcome::Unchanged(Unchanged::OptedOut)
        );
    }
}
