//! Offline checks of the cluster manifests in `k8s/`.
//!
//! No cluster runs on the project's machines, so what a cluster would refuse
//! or get wrong is checked here instead, on the objects `kubectl kustomize`
//! renders from an overlay, parsed into k8s-openapi's types:
//!
//! - every Deployment's selector matches its own pod labels, and every
//!   Service selects some pod (a typo there is a Service with no endpoints:
//!   the mesh then has nowhere to send a request);
//! - every Service port's `targetPort` is a port a selected container
//!   declares, by name or number (else connections are refused);
//! - every image is one `scripts/build-images.sh` builds, tagged with the
//!   workspace's version and pulled `IfNotPresent` (kind has only the images
//!   the script loaded; a pull would fail);
//! - every ServiceAccount, ConfigMap, Secret and PersistentVolumeClaim a pod
//!   refers to exists (else the pod stays Pending);
//! - every container has requests and limits, and the requests of the whole
//!   install fit a laptop's kind cluster: under 1 CPU and 1 GiB;
//! - every sidecar is native (`initContainers`, `restartPolicy: Always`)
//!   with a startup probe, so the app never starts before its proxy.
//!
//! Each check returns the problems it found as sentences naming the object;
//! an empty list means the check passed. The unit tests feed each check a
//! broken object, so none of them can pass by looking at nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::Value;

/// The sidecar container's name, as `mesh-inject` writes it.
pub const SIDECAR: &str = "mesh-proxy";

/// What the whole install may request: a laptop kind cluster's share.
pub const CPU_BUDGET_MILLIS: u64 = 1000;
pub const MEMORY_BUDGET_BYTES: u64 = 1 << 30;

/// The overlays the scripts apply.
pub const OVERLAYS: [&str; 2] = ["kind", "minikube"];

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Why the manifests could not be rendered or read.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(
        "kubectl is not installed (running it failed: {0}); the k8s tests render the overlays \
         with `kubectl kustomize`. Install kubectl (https://kubernetes.io/docs/tasks/tools/; \
         not in Debian's apt) or run scripts/setup-test-machine.sh, which says how"
    )]
    NoKubectl(std::io::Error),
    #[error("`kubectl kustomize {overlay}` failed: {stderr}")]
    Kustomize { overlay: String, stderr: String },
    #[error("document {index} of the rendered {overlay} overlay is not valid YAML: {message}")]
    Yaml {
        overlay: String,
        index: usize,
        message: String,
    },
    #[error("{what} in {overlay} does not parse as a Kubernetes {kind}: {message}")]
    Typed {
        overlay: String,
        what: String,
        kind: &'static str,
        message: String,
    },
}

/// `kubectl kustomize k8s/overlays/<overlay>`: the YAML an `apply -k` sends.
pub fn render(overlay: &str) -> Result<String, RenderError> {
    let dir = repo_root().join("k8s/overlays").join(overlay);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .map_err(RenderError::NoKubectl)?;
    if !out.status.success() {
        return Err(RenderError::Kustomize {
            overlay: overlay.into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into())
}

/// The Kubernetes versions every rendered object must validate against:
/// 1.29, the oldest with native sidecars on by default, and
/// kubernetes-validate's newest (kind's current node image is between).
pub const KUBERNETES_VERSIONS: [&str; 2] = ["1.29.0", "1.37.0"];

/// `kubernetes-validate --strict` of the YAML rendered from `overlay`
/// (written to a file in `dir`) against each of [`KUBERNETES_VERSIONS`]:
/// the problems it reports, as one message per version that refused it.
/// A missing kubernetes-validate is a panic that says how to install it.
pub fn validate_strictly(dir: &Path, overlay: &str, yaml: &str) -> Vec<String> {
    let path = dir.join(format!("{overlay}.yaml"));
    std::fs::write(&path, yaml).expect("rendered YAML written");
    let mut problems = Vec::new();
    for version in KUBERNETES_VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "kubernetes-validate could not run ({e}); install it with \
                     `python3 -m pip install kubernetes-validate` or run \
                     scripts/setup-test-machine.sh"
                )
            });
        if !out.status.success() {
            problems.push(format!(
                "k8s/overlays/{overlay} does not validate against Kubernetes {version}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    problems
}

// === the objects ===

/// One rendered object: its kind, namespace and name, and its JSON.
#[derive(Clone, Debug)]
pub struct Object {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub json: Value,
}

impl Object {
    /// `Deployment guestbook/helloworld-service-v1`, as kubectl names it.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// The rendered objects of an overlay, with the typed views the checks use.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub objects: Vec<Object>,
    pub deployments: Vec<(Object, Deployment)>,
    pub services: Vec<(Object, Service)>,
}

/// A workload's pod template and where it lives.
pub struct Workload<'a> {
    pub object: &'a Object,
    pub namespace: String,
    pub replicas: u64,
    pub template: &'a PodTemplateSpec,
}

impl Manifests {
    /// Parses a YAML stream (`overlay` only names it in errors).
    pub fn parse(overlay: &str, yaml: &str) -> Result<Manifests, RenderError> {
        let mut manifests = Manifests::default();
        for (i, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
            let json = Value::deserialize(document).map_err(|e| RenderError::Yaml {
                overlay: overlay.into(),
                index: i + 1,
                message: e.to_string(),
            })?;
            if json.is_null() {
                continue;
            }
            let text = |pointer: &str| {
                json.pointer(pointer)
                    .and_then(Value::as_str)
                    .map(String::from)
            };
            let object = Object {
                kind: text("/kind").unwrap_or_default(),
                namespace: text("/metadata/namespace"),
                name: text("/metadata/name").unwrap_or_default(),
                json: json.clone(),
            };
            let typed = |kind: &'static str, e: serde_json::Error| RenderError::Typed {
                overlay: overlay.into(),
                what: object.describe(),
                kind,
                message: e.to_string(),
            };
            match object.kind.as_str() {
                "Deployment" => {
                    let d =
                        serde_json::from_value(json.clone()).map_err(|e| typed("Deployment", e))?;
                    manifests.deployments.push((object.clone(), d));
                }
                "Service" => {
                    let s =
                        serde_json::from_value(json.clone()).map_err(|e| typed("Service", e))?;
                    manifests.services.push((object.clone(), s));
                }
                _ => {}
            }
            manifests.objects.push(object);
        }
        Ok(manifests)
    }

    /// Whether an object of `kind` called `name` exists in `namespace`.
    pub fn has(&self, kind: &str, namespace: &str, name: &str) -> bool {
        self.objects.iter().any(|o| {
            o.kind == kind
                && o.name == name
                && o.namespace.as_deref().unwrap_or("default") == namespace
        })
    }

    /// Every pod template, with its namespace and replica count.
    pub fn workloads(&self) -> Vec<Workload<'_>> {
        self.deployments
            .iter()
            .map(|(object, d)| {
                let spec = &d.spec;
                Workload {
                    object,
                    namespace: object.namespace.clone().unwrap_or_else(|| "default".into()),
                    replicas: spec.replicas.unwrap_or(1).max(0) as u64,
                    template: &spec.template,
                }
            })
            .collect()
    }
}

fn pod_labels(template: &PodTemplateSpec) -> BTreeMap<String, String> {
    template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The containers that run for the pod's lifetime: app containers and
/// native sidecars (init containers with `restartPolicy: Always`).
fn long_running(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers.iter().chain(
        spec.init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always")),
    )
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
}

// === the checks ===

/// Each Deployment's selector matches its pod labels; each Service with a
/// selector selects some pod in its namespace.
pub fn check_selectors(m: &Manifests) -> Vec<String> {
    let mut problems = Vec::new();
    for w in m.workloads() {
        let Some(spec) = w.object.json.get("spec") else {
            continue;
        };
        let selector: BTreeMap<String, String> = spec
            .pointer("/selector/matchLabels")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        if selector.is_empty() {
            problems.push(format!(
                "{}: spec.selector.matchLabels is empty",
                w.object.describe()
            ));
        } else if !selects(&selector, &pod_labels(w.template)) {
            problems.push(format!(
                "{}: selector {selector:?} does not match its pod labels {:?}",
                w.object.describe(),
                pod_labels(w.template)
            ));
        }
    }
    for (object, service) in &m.services {
        let Some(selector) = service.spec.as_ref().and_then(|s| s.selector.clone()) else {
            continue;
        };
        let ns = object.namespace.as_deref().unwrap_or("default");
        let any = m
            .workloads()
            .iter()
            .any(|w| w.namespace == ns && selects(&selector, &pod_labels(w.template)));
        if !any {
            problems.push(format!(
                "{}: selector {selector:?} matches no pod in namespace {ns}; it would have no endpoints",
                object.describe()
            ));
        }
    }
    problems
}

/// Each Service port's targetPort is declared by every pod it selects.
pub fn check_ports(m: &Manifests) -> Vec<String> {
    let mut problems = Vec::new();
    for (object, service) in &m.services {
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        let Some(selector) = spec.selector.as_ref() else {
            continue;
        };
        let ns = object.namespace.as_deref().unwrap_or("default");
        for w in m.workloads() {
            if w.namespace != ns || !selects(selector, &pod_labels(w.template)) {
                continue;
            }
            let Some(pod) = w.template.spec.as_ref() else {
                continue;
            };
            let ports: Vec<(Option<&str>, i32)> = long_running(pod)
                .flat_map(|c| c.ports.iter().flatten())
                .map(|p| (p.name.as_deref(), p.container_port))
                .collect();
            for port in spec.ports.iter().flatten() {
                let target = port
                    .target_port
                    .clone()
                    .unwrap_or(IntOrString::Int(port.port));
                let found = match &target {
                    IntOrString::Int(n) => ports.iter().any(|(_, p)| p == n),
                    IntOrString::String(name) => {
                        ports.iter().any(|(n, _)| *n == Some(name.as_str()))
                    }
                };
                if !found {
                    problems.push(format!(
                        "{} port {}: targetPort {target:?} is no port of {}'s containers (they declare {ports:?})",
                        object.describe(),
                        port.name.as_deref().unwrap_or("(unnamed)"),
                        w.object.describe()
                    ));
                }
            }
        }
    }
    problems
}

/// The image names `scripts/build-images.sh` builds (its `ALL=(...)` list).
pub fn built_images(script: &str) -> BTreeSet<String> {
    script
        .lines()
        .find_map(|l| l.trim().strip_prefix("ALL=("))
        .map(|rest| {
            rest.trim_end_matches(')')
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Every image is `micromesh/<built name>:<version>`, pulled IfNotPresent.
pub fn check_images(m: &Manifests, built: &BTreeSet<String>, version: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if built.is_empty() {
        problems.push("no image list found in scripts/build-images.sh (ALL=(...))".into());
    }
    for w in m.workloads() {
        let Some(pod) = w.template.spec.as_ref() else {
            continue;
        };
        for c in all_containers(pod) {
            let where_ = format!("{} container {}", w.object.describe(), c.name);
            let image = c.image.as_deref().unwrap_or("");
            let ok = image
                .strip_prefix("micromesh/")
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(name, tag)| built.contains(name) && tag == version);
            if !ok {
                problems.push(format!(
                    "{where_}: image {image:?} is not one scripts/build-images.sh makes \
                     (micromesh/{{{}}}:{version})",
                    built.iter().cloned().collect::<Vec<_>>().join(",")
                ));
            }
            if c.image_pull_policy.as_deref() != Some("IfNotPresent") {
                problems.push(format!(
                    "{where_}: imagePullPolicy is {:?}; use IfNotPresent (the images are loaded, not pulled)",
                    c.image_pull_policy
                ));
            }
        }
    }
    problems
}

/// ServiceAccounts, ConfigMaps, Secrets and PersistentVolumeClaims a pod
/// refers to exist in its namespace; RoleBinding subjects exist too.
pub fn check_references(m: &Manifests) -> Vec<String> {
    let mut problems = Vec::new();
    // (who refers, kind, namespace, name)
    let mut refs: Vec<(String, &str, String, String)> = Vec::new();
    for w in m.workloads() {
        let Some(pod) = w.template.spec.as_ref() else {
            continue;
        };
        let what = w.object.describe();
        let ns = w.namespace.as_str();
        refs.push((
            what.clone(),
            "ServiceAccount",
            ns.to_string(),
            pod.service_account_name
                .as_deref()
                .unwrap_or("default")
                .to_string(),
        ));
        for v in pod.volumes.iter().flatten() {
            // An optional ConfigMap may be missing: the kubelet starts the
            // pod with an empty volume (Grafana's dashboards, loaded later
            // by scripts/addons-up.sh).
            if let Some(cm) = v.config_map.as_ref().filter(|cm| cm.optional != Some(true)) {
                refs.push((
                    what.clone(),
                    "ConfigMap",
                    ns.to_string(),
                    cm.name.to_string(),
                ));
            }
            if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) {
                refs.push((what.clone(), "Secret", ns.to_string(), s.to_string()));
            }
            if let Some(pvc) = &v.persistent_volume_claim {
                refs.push((
                    what.clone(),
                    "PersistentVolumeClaim",
                    ns.to_string(),
                    pvc.claim_name.to_string(),
                ));
            }
        }
        for c in all_containers(pod) {
            for from in c.env_from.iter().flatten() {
                if let Some(cm) = &from.config_map_ref {
                    refs.push((
                        what.clone(),
                        "ConfigMap",
                        ns.to_string(),
                        cm.name.to_string(),
                    ));
                }
                if let Some(s) = &from.secret_ref {
                    refs.push((what.clone(), "Secret", ns.to_string(), s.name.to_string()));
                }
            }
            for var in c.env.iter().flatten() {
                let Some(source) = &var.value_from else {
                    continue;
                };
                if let Some(cm) = &source.config_map_key_ref {
                    refs.push((
                        what.clone(),
                        "ConfigMap",
                        ns.to_string(),
                        cm.name.to_string(),
                    ));
                }
                if let Some(s) = &source.secret_key_ref {
                    refs.push((what.clone(), "Secret", ns.to_string(), s.name.to_string()));
                }
            }
        }
    }
    for binding in m.objects.iter().filter(|o| o.kind.ends_with("RoleBinding")) {
        let what = binding.describe();
        for subject in binding.json["subjects"].as_array().into_iter().flatten() {
            if subject["kind"] == "ServiceAccount" {
                let ns = subject["namespace"]
                    .as_str()
                    .or(binding.namespace.as_deref())
                    .unwrap_or("default");
                refs.push((
                    what.clone(),
                    "ServiceAccount",
                    ns.to_string(),
                    subject["name"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
        let role_kind = binding.json["roleRef"]["kind"].as_str().unwrap_or("");
        let role = binding.json["roleRef"]["name"].as_str().unwrap_or("");
        let exists = m
            .objects
            .iter()
            .any(|o| o.kind == role_kind && o.name == role);
        if !exists {
            problems.push(format!(
                "{what} binds {role_kind} {role}, which the manifests do not create"
            ));
        }
    }
    for (what, kind, ns, name) in refs {
        if !m.has(kind, &ns, &name) {
            problems.push(format!(
                "{what} refers to {kind} {ns}/{name}, which the manifests do not create"
            ));
        }
    }
    problems
}

/// Parses a Kubernetes quantity into millicores (`cpu`) or bytes (other).
pub fn parse_quantity(text: &str, cpu: bool) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let value = number * factor;
    Some(if cpu {
        (value * 1000.0).round() as u64
    } else {
        value.round() as u64
    })
}

/// Totals of requests, for the report and the budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Memory limits too must fit: a node that grants every container its
    /// limit at once still has room. (CPU limits only throttle, so they are
    /// not held to the budget: a JVM starting on 100m would take minutes.)
    pub memory_limit_bytes: u64,
}

/// Every container has requests and limits (limits at least the requests);
/// the requests of all replicas stay under the budget. Returns the totals.
pub fn check_resources(m: &Manifests) -> (Requests, Vec<String>) {
    let mut problems = Vec::new();
    let mut total = Requests::default();
    for w in m.workloads() {
        let Some(pod) = w.template.spec.as_ref() else {
            continue;
        };
        for c in all_containers(pod) {
            let where_ = format!("{} container {}", w.object.describe(), c.name);
            let resources = c.resources.clone().unwrap_or_default();
            for (resource, cpu) in [("cpu", true), ("memory", false)] {
                let get = |map: &Option<
                    BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
                >| {
                    map.as_ref()
                        .and_then(|m| m.get(resource))
                        .and_then(|q| parse_quantity(&q.0, cpu))
                };
                match (get(&resources.requests), get(&resources.limits)) {
                    (Some(request), Some(limit)) => {
                        if limit < request {
                            problems
                                .push(format!("{where_}: {resource} limit is below its request"));
                        }
                        if cpu {
                            total.cpu_millis += request * w.replicas;
                        } else {
                            total.memory_bytes += request * w.replicas;
                            total.memory_limit_bytes += limit * w.replicas;
                        }
                    }
                    _ => problems.push(format!(
                        "{where_}: no {resource} request and limit; every container needs both \
                         so the install fits a laptop cluster"
                    )),
                }
            }
        }
    }
    if total.cpu_millis >= CPU_BUDGET_MILLIS {
        problems.push(format!(
            "the install requests {}m CPU in total; the budget is under {CPU_BUDGET_MILLIS}m",
            total.cpu_millis
        ));
    }
    if total.memory_bytes >= MEMORY_BUDGET_BYTES {
        problems.push(format!(
            "the install requests {} MiB in total; the budget is under 1024 MiB",
            total.memory_bytes >> 20
        ));
    }
    if total.memory_limit_bytes >= MEMORY_BUDGET_BYTES {
        problems.push(format!(
            "the install's memory limits add up to {} MiB; keep them under 1024 MiB",
            total.memory_limit_bytes >> 20
        ));
    }
    (total, problems)
}

/// Every pod in a namespace labelled for injection has a native mesh-proxy
/// sidecar with a startup probe that does not wait for the app (not `/ready`),
/// and no mesh-proxy runs as a plain container.
pub fn check_sidecars(m: &Manifests) -> Vec<String> {
    let injected: BTreeSet<&str> = m
        .objects
        .iter()
        .filter(|o| {
            o.kind == "Namespace"
                && o.json.pointer("/metadata/labels/istio-injection")
                    == Some(&Value::from("enabled"))
        })
        .map(|o| o.name.as_str())
        .collect();
    let mut problems = Vec::new();
    for w in m.workloads() {
        let Some(pod) = w.template.spec.as_ref() else {
            continue;
        };
        let what = w.object.describe();
        if pod.containers.iter().any(|c| c.name == SIDECAR)
            && injected.contains(w.namespace.as_str())
        {
            problems.push(format!(
                "{what}: {SIDECAR} is a plain container; a sidecar must be a native one (an \
                 initContainer with restartPolicy: Always) so it starts before the app"
            ));
            continue;
        }
        let sidecar = pod
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == SIDECAR);
        match sidecar {
            None if injected.contains(w.namespace.as_str()) => problems.push(format!(
                "{what}: no {SIDECAR} sidecar, but namespace {} is labelled for injection; \
                 regenerate with `meshctl inject`",
                w.namespace
            )),
            None => {}
            Some(c) => {
                if c.restart_policy.as_deref() != Some("Always") {
                    problems.push(format!("{what}: {SIDECAR} has no restartPolicy: Always, so it is an init container that must exit, not a sidecar"));
                }
                if c.startup_probe.is_none() {
                    problems.push(format!("{what}: {SIDECAR} has no startupProbe, so the app may start before its proxy"));
                }
                let startup_path = c
                    .startup_probe
                    .as_ref()
                    .and_then(|p| p.http_get.as_ref())
                    .and_then(|g| g.path.as_deref());
                if startup_path == Some("/ready") {
                    problems.push(format!(
                        "{what}: {SIDECAR}'s startupProbe is /ready, which waits for the app; the app \
                         starts only after this probe passes, so the pod never starts. Probe the \
                         proxy alone: /healthz/ready"
                    ));
                }
            }
        }
    }
    if injected.is_empty() {
        problems.push("no namespace is labelled istio-injection: enabled".into());
    }
    problems
}

/// Every check at once, for one rendered overlay.
pub fn check_all(m: &Manifests, built: &BTreeSet<String>, version: &str) -> Vec<String> {
    let mut problems = check_selectors(m);
    problems.extend(check_ports(m));
    problems.extend(check_images(m, built, version));
    problems.extend(check_references(m));
    problems.extend(check_resources(m).1);
    problems.extend(check_sidecars(m));
    problems
}

#[cfg(test)]
mod tests {
    //! Each check, fed a small install that is right, then broken one way.

    use super::*;

    const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: app}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-v1, namespace: app}
spec:
  replicas: 2
  selector: {matchLabels: {app: web, version: v1}}
  template:
    metadata: {labels: {app: web, version: v1}}
    spec:
      serviceAccountName: web
      initContainers:
      - name: mesh-proxy
        image: micromesh/mesh-proxy:1.0.0
        imagePullPolicy: IfNotPresent
        restartPolicy: Always
        ports: [{name: http, containerPort: 15006}]
        startupProbe: {tcpSocket: {port: 15000}}
        resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {cpu: 100m, memory: 64Mi}}
      containers:
      - name: web
        image: micromesh/guestbook-ui:1.0.0
        imagePullPolicy: IfNotPresent
        ports: [{name: app-http, containerPort: 8080}]
        resources: {requests: {cpu: 20m, memory: 32Mi}, limits: {cpu: 200m, memory: 64Mi}}
"#;

    fn built() -> BTreeSet<String> {
        built_images("ALL=(mesh-proxy guestbook-ui)\n")
    }

    fn parse(yaml: &str) -> Manifests {
        Manifests::parse("test", yaml).expect("the fixture parses")
    }

    /// GOOD with one text replaced (which must be there).
    fn broken(from: &str, to: &str) -> Manifests {
        assert!(GOOD.contains(from), "fixture has no {from:?}");
        parse(&GOOD.replacen(from, to, 1))
    }

    #[test]
    fn the_good_install_passes_every_check() {
        assert_eq!(
            check_all(&parse(GOOD), &built(), "1.0.0"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_selector_that_misses_its_pods_is_found() {
        let m = broken(
            "selector: {matchLabels: {app: web, version: v1}}",
            "selector: {matchLabels: {app: web, version: v2}}",
        );
        assert!(check_selectors(&m)[0].contains("does not match its pod labels"));
        let m = broken("selector: {app: web}", "selector: {app: webb}");
        assert!(check_selectors(&m)[0].contains("matches no pod"));
    }

    #[test]
    fn a_target_port_no_container_declares_is_found() {
        let m = broken("targetPort: http", "targetPort: web");
        assert!(
            check_ports(&m)[0].contains("targetPort String(\"web\")"),
            "{:?}",
            check_ports(&m)
        );
        let m = broken("targetPort: http", "targetPort: 9999");
        assert_eq!(check_ports(&m).len(), 1);
        // A port only a plain init container declares does not count.
        let m = broken("restartPolicy: Always", "restartPolicy: Never");
        assert_eq!(check_ports(&m).len(), 1);
    }

    #[test]
    fn wrong_images_tags_and_pull_policies_are_found() {
        assert!(
            check_images(
                &broken("guestbook-ui:1.0.0", "guestbook-ui:latest"),
                &built(),
                "1.0.0"
            )[0]
            .contains("not one scripts/build-images.sh makes")
        );
        assert_eq!(
            check_images(
                &broken("micromesh/guestbook-ui", "micromesh/guestbook"),
                &built(),
                "1.0.0"
            )
            .len(),
            1
        );
        assert!(
            check_images(
                &broken("imagePullPolicy: IfNotPresent", "imagePullPolicy: Always"),
                &built(),
                "1.0.0"
            )[0]
            .contains("IfNotPresent")
        );
        assert!(!check_images(&parse(GOOD), &BTreeSet::new(), "1.0.0").is_empty());
    }

    #[test]
    fn missing_service_accounts_claims_and_roles_are_found() {
        let m = broken("serviceAccountName: web", "serviceAccountName: webb");
        assert!(check_references(&m)[0].contains("ServiceAccount app/webb"));
        let with_claim = GOOD.to_string()
            + "      volumes: [{name: d, persistentVolumeClaim: {claimName: data}}, {name: c, configMap: {name: settings}}]\n";
        let problems = check_references(&parse(&with_claim));
        assert_eq!(problems.len(), 2, "{problems:?}");
        let binding = GOOD.to_string()
            + "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: b}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: r}\nsubjects: [{kind: ServiceAccount, name: ghost, namespace: app}]\n";
        assert_eq!(check_references(&parse(&binding)).len(), 2);
    }

    #[test]
    fn requests_are_summed_over_replicas_and_held_to_the_budget() {
        let (total, problems) = check_resources(&parse(GOOD));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            total,
            Requests {
                cpu_millis: 60,
                memory_bytes: 96 << 20,
                memory_limit_bytes: 256 << 20,
            }
        );
        let (_, problems) = check_resources(&broken("replicas: 2", "replicas: 40"));
        assert!(
            problems.iter().any(|p| p.contains("1200m CPU")),
            "{problems:?}"
        );
        let (_, problems) = check_resources(&broken("memory: 32Mi}", "memory: 1Gi}"));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("budget is under 1024 MiB")),
            "{problems:?}"
        );
        let (_, problems) = check_resources(&broken("memory: 64Mi}}", "memory: 600Mi}}"));
        assert_eq!(
            problems,
            ["the install's memory limits add up to 1328 MiB; keep them under 1024 MiB"]
        );
        let (_, problems) = check_resources(&broken(", limits: {cpu: 200m, memory: 64Mi}", ""));
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_quantity("10m", true), Some(10));
        assert_eq!(parse_quantity("0.5", true), Some(500));
        assert_eq!(parse_quantity("2", true), Some(2000));
        assert_eq!(parse_quantity("16Mi", false), Some(16 << 20));
        assert_eq!(parse_quantity("1G", false), Some(1_000_000_000));
        assert_eq!(parse_quantity("lots", false), None);
    }

    #[test]
    fn a_sidecar_that_is_not_native_or_has_no_startup_probe_is_found() {
        assert!(
            check_sidecars(&broken("restartPolicy: Always", "restartPolicy: OnFailure"))[0]
                .contains("restartPolicy: Always")
        );
        assert!(
            check_sidecars(&broken(
                "startupProbe: {tcpSocket: {port: 15000}}",
                "readinessProbe: {tcpSocket: {port: 15000}}"
            ))[0]
                .contains("no startupProbe")
        );
        assert!(
            check_sidecars(&broken(
                "startupProbe: {tcpSocket: {port: 15000}}",
                "startupProbe: {httpGet: {path: /ready, port: 15000}}"
            ))[0]
                .contains("/healthz/ready")
        );
        assert!(
            check_sidecars(&broken("name: mesh-proxy", "name: proxy"))[0]
                .contains("no mesh-proxy sidecar")
        );
        assert!(
            check_sidecars(&broken("istio-injection: enabled", "team: web"))[0]
                .contains("no namespace is labelled")
        );
    }
}
