//! A kubelet made of `docker run`: rendered Kubernetes pod specs run as
//! containers, the way a node would run them.
//!
//! `k8s/` holds what a learner's kind cluster runs. No cluster can run on
//! this project's machines, so this module does the node's part by hand,
//! from the rendered manifests (parsed with k8s-openapi by `k8s-tests`):
//!
//! - **one network namespace per pod.** A kubelet gives it to a `pause`
//!   container; here the pod's first container owns it (a native sidecar
//!   when the pod has one, as it starts first and stops last), with a fixed
//!   IP on the run's Docker network, and every later container joins it
//!   (`--network container:<first>`), so they share one IP and one loopback;
//! - **start order**: `initContainers` in order, a native sidecar
//!   (`restartPolicy: Always`) left running once its startup probe passes,
//!   a plain init container run to completion; then the app containers;
//! - **env as the kubelet builds it**: literal values, downward-API
//!   `fieldRef`s filled in (pod name, namespace, IP, service account,
//!   labels and annotations), `$(VAR)` expanded from the variables above it
//!   (`$$` escapes), `HOSTNAME` the pod's name; `command` and `args` with
//!   the same expansion replacing the image's entrypoint and cmd;
//! - **security and resources**: `runAsUser`, `fsGroup`, dropped
//!   capabilities, `allowPrivilegeEscalation: false`, memory and CPU limits
//!   (so a limit too small for the process shows up here, as an OOM kill);
//! - **volumes**: a projected service-account token becomes a read-only
//!   directory with a token the local control plane checks
//!   ([`Cluster::issue_tokens_for`]); a PersistentVolumeClaim or an `emptyDir` becomes a fresh
//!   host directory of mode 0777 mounted in, as kind's local-path
//!   provisioner makes one (a Docker tmpfs is not the same: SQLite cannot
//!   create its database on one as a non-root user);
//! - **Services**: every Service whose selector matches the pod's labels
//!   puts the pod behind the names `svc`, `svc.ns`, `svc.ns.svc` and
//!   `svc.ns.svc.cluster.local` (Docker network aliases). Docker DNS has no
//!   ClusterIP and no port translation, so a name resolves to the pod's IP
//!   and a caller reaches the Service's `targetPort`: [`Cluster::service_addr`]
//!   does what kube-proxy does for the test.
//!
//! Not emulated: Service environment variables (`enableServiceLinks`),
//! ConfigMap and Secret env sources (the manifests use none: asking for one
//! is an error naming it), readiness gating of Service traffic.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, Probe, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_tests::{Manifests, Workload};

/// Label on every container and network a [`Cluster`] creates.
pub const LABEL: &str = "micromesh.test=kubelet";

/// Why a pod could not run.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("`docker {args}` failed: {stderr}")]
    Docker { args: String, stderr: String },
    #[error("could not run docker: {0}; is the Docker CLI installed and on PATH?")]
    Spawn(std::io::Error),
    #[error(
        "{pod}/{container}: env {name} uses {what}, which this kubelet does not fill in; \
         use a literal value or a supported fieldRef (metadata.name, metadata.namespace, \
         metadata.labels['k'], metadata.annotations['k'], spec.serviceAccountName, status.podIP)"
    )]
    UnsupportedEnv {
        pod: String,
        container: String,
        name: String,
        what: String,
    },
    #[error("{pod}/{container}: probe port {port:?} is no port the container declares")]
    ProbePort {
        pod: String,
        container: String,
        port: String,
    },
    #[error("{pod}/{container}: {kind} probe did not pass within {waited:?}; last answer: {last}")]
    Probe {
        kind: &'static str,
        pod: String,
        container: String,
        waited: Duration,
        last: String,
    },
    #[error("{pod}/{container}: init container exited with {status}; `docker logs {id}` says why")]
    InitFailed {
        pod: String,
        container: String,
        status: String,
        id: String,
    },
    #[error(
        "{pod}: volume {volume} has a source this kubelet does not make (only emptyDir, persistentVolumeClaim, and projected service-account tokens once `issue_tokens_for` is set)"
    )]
    Volume { pod: String, volume: String },
    #[error("could not make the volume directory {dir}: {source}")]
    VolumeDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("no free /24 for the test network in 10.213.0.0/16: {0}")]
    Network(String),
}

/// Runs `docker args...`, returning its trimmed stdout.
pub fn docker(args: &[String]) -> Result<String, KubeletError> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(KubeletError::Spawn)?;
    if !out.status.success() {
        return Err(KubeletError::Docker {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// One running pod.
#[derive(Debug, Clone)]
pub struct RunningPod {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    /// Container name in the pod -> Docker container name.
    pub containers: BTreeMap<String, String>,
    pub spec: PodSpec,
}

impl RunningPod {
    /// The Docker container running `container` of this pod.
    pub fn docker_name(&self, container: &str) -> &str {
        self.containers
            .get(container)
            .unwrap_or_else(|| panic!("pod {} has no container {container}", self.name))
    }

    /// Everything `container` printed so far (`docker logs`, both streams).
    pub fn logs(&self, container: &str) -> String {
        let out = Command::new("docker")
            .args(["logs", self.docker_name(container)])
            .output()
            .expect("docker logs runs");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }
}

/// A Docker network standing in for a node, and the pods run on it.
/// Dropping it removes every container and the network.
pub struct Cluster {
    pub run: String,
    subnet: u8,
    next_ip: u8,
    pub pods: Vec<RunningPod>,
    services: Vec<Service>,
    created: Vec<String>,
    volumes: Vec<std::path::PathBuf>,
    /// The control plane's write token, when the pods' projected
    /// service-account tokens should be ones it can check (see
    /// [`Cluster::issue_tokens_for`]).
    token_key: Option<String>,
}

impl Cluster {
    /// Makes the projected service-account tokens (`istio-token`) ones the
    /// control plane can check. A real kubelet asks the API server for a
    /// token that the control plane checks with a TokenReview; here no API
    /// server runs and the control plane is in local mode, where the proof
    /// of an identity is its bootstrap token (an HMAC of the SPIFFE ID keyed
    /// by the write token, `mesh_api::identity::bootstrap_token`). So this
    /// kubelet writes that for the pod's namespace and service account, and
    /// the sidecars get their certificates as in a cluster.
    pub fn issue_tokens_for(&mut self, write_token: &str) {
        self.token_key = Some(write_token.to_string());
    }

    /// Creates the network for `run` (a unique name), with the manifests'
    /// Services known so that pods get their names.
    pub fn new(run: &str, manifests: &Manifests) -> Result<Cluster, KubeletError> {
        // A /24 no other network on this engine uses: try them in turn.
        let start = (std::process::id() % 200) as u8;
        let mut last = String::new();
        for i in 0..50u8 {
            let subnet = start.wrapping_add(i).max(1);
            let args = strings(&[
                "network",
                "create",
                "--label",
                LABEL,
                "--subnet",
                &format!("10.213.{subnet}.0/24"),
                run,
            ]);
            match docker(&args) {
                Ok(_) => {
                    return Ok(Cluster {
                        run: run.into(),
                        subnet,
                        next_ip: 10,
                        pods: Vec::new(),
                        services: manifests.services.iter().map(|(_, s)| s.clone()).collect(),
                        created: Vec::new(),
                        volumes: Vec::new(),
                        token_key: None,
                    });
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(KubeletError::Network(last))
    }

    /// A running pod by name.
    pub fn pod(&self, name: &str) -> &RunningPod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} is running"))
    }

    /// The pods of a workload (`app` label).
    pub fn pods_of(&self, app: &str) -> Vec<&RunningPod> {
        self.pods
            .iter()
            .filter(|p| p.labels.get("app").map(String::as_str) == Some(app))
            .collect()
    }

    /// Where a connection to `service`'s port named `port` lands, as
    /// kube-proxy would send it: a ready pod behind it, on the target port.
    pub fn service_addr(&self, namespace: &str, service: &str, port: &str) -> SocketAddr {
        let svc = self
            .services
            .iter()
            .find(|s| {
                s.metadata.name.as_deref() == Some(service)
                    && s.metadata.namespace.as_deref() == Some(namespace)
            })
            .unwrap_or_else(|| panic!("no Service {namespace}/{service} in the manifests"));
        let spec = svc.spec.as_ref().expect("a Service has a spec");
        let sp = spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(port))
            .unwrap_or_else(|| panic!("Service {namespace}/{service} has no port {port}"));
        let pod = self
            .pods
            .iter()
            .find(|p| p.namespace == namespace && selects(svc, &p.labels))
            .unwrap_or_else(|| panic!("no running pod behind Service {namespace}/{service}"));
        let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
        let port = container_port(&pod.spec, &target).unwrap_or_else(|| {
            panic!("Service {namespace}/{service}: target port {target:?} is on no container")
        });
        SocketAddr::from((pod.ip, port))
    }

    /// Runs one pod of `workload` as the kubelet would, `tweak` applied to
    /// its spec first (the control plane's source, say). Returns once every
    /// native sidecar passed its startup probe and every app container runs.
    pub async fn run_pod(
        &mut self,
        workload: &Workload<'_>,
        tweak: impl FnOnce(&mut PodSpec),
    ) -> Result<&RunningPod, KubeletError> {
        let mut spec = workload
            .template
            .spec
            .clone()
            .expect("a pod template has a spec");
        tweak(&mut spec);
        let meta = workload.template.metadata.clone().unwrap_or_default();
        let labels: BTreeMap<String, String> = meta.labels.clone().unwrap_or_default();
        let annotations: BTreeMap<String, String> = meta.annotations.clone().unwrap_or_default();
        // A ReplicaSet names its pods `<deployment>-<hash>-<random>`; one
        // pod per workload here, so `-0` keeps the names readable.
        let name = format!("{}-0", workload.object.name);
        let namespace = workload.namespace.clone();
        let ip = Ipv4Addr::new(10, 213, self.subnet, self.next_ip);
        self.next_ip += 1;
        let fields = Fields {
            name: name.clone(),
            namespace: namespace.clone(),
            ip,
            service_account: spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into()),
            labels: labels.clone(),
            annotations,
        };
        let aliases: Vec<String> = self
            .services
            .iter()
            .filter(|s| s.metadata.namespace.as_deref() == Some(namespace.as_str()))
            .filter(|s| selects(s, &labels))
            .filter_map(|s| s.metadata.name.clone())
            .flat_map(|svc| {
                [
                    svc.clone(),
                    format!("{svc}.{namespace}"),
                    format!("{svc}.{namespace}.svc"),
                    format!("{svc}.{namespace}.svc.cluster.local"),
                ]
            })
            .collect();

        let mut pod = RunningPod {
            name: name.clone(),
            namespace,
            labels,
            ip,
            containers: BTreeMap::new(),
            spec: spec.clone(),
        };
        let mut owner: Option<String> = None;
        let inits = spec.init_containers.clone().unwrap_or_default();
        for c in inits.iter().chain(spec.containers.iter()) {
            let is_init = inits.iter().any(|i| std::ptr::eq(i, c));
            let sidecar = is_init && c.restart_policy.as_deref() == Some("Always");
            let docker_name = format!("{}-{}-{}", self.run, name, c.name);
            let mut args = strings(&["run", "--name", &docker_name, "--label", LABEL]);
            if is_init && !sidecar {
                // Run to completion, like a plain init container.
            } else {
                args.push("-d".into());
            }
            match &owner {
                None => {
                    args.extend(strings(&[
                        "--network",
                        &self.run,
                        "--ip",
                        &ip.to_string(),
                        "--hostname",
                        &name,
                    ]));
                    for alias in &aliases {
                        args.extend(strings(&["--network-alias", alias]));
                    }
                }
                Some(first) => args.extend(strings(&["--network", &format!("container:{first}")])),
            }
            args.extend(security_args(&spec, c));
            args.extend(resource_args(c));
            let tokens = self
                .token_key
                .as_deref()
                .map(|key| (key, fields.namespace.as_str()));
            args.extend(volume_args(
                &spec,
                c,
                &docker_name,
                tokens,
                &mut self.volumes,
            )?);
            let env = container_env(&fields, c)?;
            let resolved: BTreeMap<String, String> = env.iter().cloned().collect();
            for (k, v) in &env {
                args.extend(strings(&["--env", &format!("{k}={v}")]));
            }
            args.extend(strings(&["--env", &format!("HOSTNAME={name}")]));
            let image = c.image.clone().expect("every container names its image");
            let command: Vec<String> = c
                .command
                .iter()
                .flatten()
                .map(|s| expand(s, &resolved))
                .collect();
            let cargs: Vec<String> = c
                .args
                .iter()
                .flatten()
                .map(|s| expand(s, &resolved))
                .collect();
            if let Some((entry, rest)) = command.split_first() {
                args.extend(strings(&["--entrypoint", entry]));
                args.push(image);
                args.extend(rest.iter().cloned());
            } else {
                args.push(image);
            }
            args.extend(cargs);
            let result = docker(&args);
            self.created.push(docker_name.clone());
            if is_init && !sidecar {
                if let Err(e) = result {
                    return Err(KubeletError::InitFailed {
                        pod: name,
                        container: c.name.clone(),
                        status: e.to_string(),
                        id: docker_name,
                    });
                }
            } else {
                result?;
            }
            if owner.is_none() {
                owner = Some(docker_name.clone());
            }
            pod.containers.insert(c.name.clone(), docker_name);
            if sidecar && let Some(probe) = &c.startup_probe {
                await_probe_for("startup", &name, c, probe, ip, Duration::ZERO).await?;
            }
        }
        self.pods.push(pod);
        Ok(self.pods.last().expect("pushed just above"))
    }

    /// Waits until every container of every pod with a readiness probe
    /// passes it (within each probe's own budget, at least `at_least`).
    pub async fn await_ready(&self, at_least: Duration) -> Result<(), KubeletError> {
        for pod in &self.pods {
            let all = pod
                .spec
                .init_containers
                .iter()
                .flatten()
                .chain(pod.spec.containers.iter());
            for c in all {
                if let Some(probe) = &c.readiness_probe {
                    await_probe_for("readiness", &pod.name, c, probe, pod.ip, at_least).await?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for pod in &self.pods {
                for (c, id) in &pod.containers {
                    let out = Command::new("docker")
                        .args(["logs", "--tail", "15", id])
                        .output();
                    if let Ok(out) = out {
                        eprintln!("--- {}/{c} ---", pod.name);
                        eprintln!(
                            "{}{}",
                            String::from_utf8_lossy(&out.stdout),
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                }
            }
        }
        // App containers go first, the namespace owner last.
        for id in self.created.iter().rev() {
            let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.run])
            .output();
        for dir in &self.volumes {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Whether `svc`'s selector matches `labels` (an empty selector selects none).
pub fn selects(svc: &Service, labels: &BTreeMap<String, String>) -> bool {
    let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref());
    selector.is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The container port a Service target port or probe port names.
fn container_port(spec: &PodSpec, port: &IntOrString) -> Option<u16> {
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => all
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// What the downward API can tell a container about its pod.
struct Fields {
    name: String,
    namespace: String,
    ip: Ipv4Addr,
    service_account: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

impl Fields {
    fn get(&self, path: &str) -> Option<String> {
        let keyed = |prefix: &str, map: &BTreeMap<String, String>| {
            let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
            Some(map.get(key).cloned().unwrap_or_default())
        };
        match path {
            "metadata.name" => Some(self.name.clone()),
            "metadata.namespace" => Some(self.namespace.clone()),
            "spec.serviceAccountName" => Some(self.service_account.clone()),
            "status.podIP" | "status.podIPs" => Some(self.ip.to_string()),
            "spec.nodeName" => Some("kind-control-plane".into()),
            _ => keyed("metadata.labels['", &self.labels)
                .or_else(|| keyed("metadata.annotations['", &self.annotations)),
        }
    }
}

/// The container's environment in declaration order, as the kubelet builds
/// it: each value expanded against the variables declared before it.
fn container_env(fields: &Fields, c: &Container) -> Result<Vec<(String, String)>, KubeletError> {
    let mut env: Vec<(String, String)> = Vec::new();
    for EnvVar {
        name,
        value,
        value_from,
    } in c.env.iter().flatten()
    {
        let seen: BTreeMap<String, String> = env.iter().cloned().collect();
        let unsupported = |what: String| KubeletError::UnsupportedEnv {
            pod: fields.name.clone(),
            container: c.name.clone(),
            name: name.clone(),
            what,
        };
        let v = match (value, value_from) {
            (Some(v), _) => expand(v, &seen),
            (None, Some(from)) => match &from.field_ref {
                Some(f) => fields
                    .get(&f.field_path)
                    .ok_or_else(|| unsupported(format!("fieldRef {}", f.field_path)))?,
                None => return Err(unsupported("a ConfigMap, Secret or resource source".into())),
            },
            (None, None) => String::new(),
        };
        env.retain(|(k, _)| k != name);
        env.push((name.clone(), v));
    }
    Ok(env)
}

/// Kubernetes' `$(VAR)` expansion: a defined variable is replaced, an
/// undefined reference stays as written, `$$` is a literal `$`.
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(value) = vars.get(&inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn security_args(spec: &PodSpec, c: &Container) -> Vec<String> {
    let pod = spec.security_context.clone().unwrap_or_default();
    let own = c.security_context.clone().unwrap_or_default();
    let mut args = Vec::new();
    if let Some(uid) = own.run_as_user.or(pod.run_as_user) {
        let gid = own.run_as_group.or(pod.run_as_group).unwrap_or(uid);
        args.extend(strings(&["--user", &format!("{uid}:{gid}")]));
    }
    if let Some(fs_group) = pod.fs_group {
        args.extend(strings(&["--group-add", &fs_group.to_string()]));
    }
    if let Some(caps) = &own.capabilities {
        for cap in caps.drop.iter().flatten() {
            args.extend(strings(&["--cap-drop", cap]));
        }
        for cap in caps.add.iter().flatten() {
            args.extend(strings(&["--cap-add", cap]));
        }
    }
    if own.allow_privilege_escalation == Some(false) {
        args.extend(strings(&["--security-opt", "no-new-privileges"]));
    }
    if own.read_only_root_filesystem == Some(true) {
        args.push("--read-only".into());
    }
    args
}

fn resource_args(c: &Container) -> Vec<String> {
    let mut args = Vec::new();
    let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    if let Some(limits) = limits {
        if let Some(mem) = limits.get("memory")
            && let Some(bytes) = k8s_tests::parse_quantity(&mem.0, false)
        {
            args.extend(strings(&["--memory", &bytes.to_string()]));
        }
        if let Some(cpu) = limits.get("cpu")
            && let Some(millis) = k8s_tests::parse_quantity(&cpu.0, true)
        {
            args.extend(strings(&[
                "--cpus",
                &format!("{:.3}", millis as f64 / 1000.0),
            ]));
        }
    }
    args
}

fn volume_args(
    spec: &PodSpec,
    c: &Container,
    pod: &str,
    tokens: Option<(&str, &str)>,
    volumes: &mut Vec<std::path::PathBuf>,
) -> Result<Vec<String>, KubeletError> {
    let mut args = Vec::new();
    for mount in c.volume_mounts.iter().flatten() {
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .ok_or_else(|| KubeletError::Volume {
                pod: pod.into(),
                volume: mount.name.clone(),
            })?;
        // A projected service-account token (the sidecar's istio-token):
        // a read-only directory holding each token file.
        let token_sources: Option<Vec<String>> = volume.projected.as_ref().and_then(|p| {
            p.sources
                .iter()
                .flatten()
                .map(|s| s.service_account_token.as_ref().map(|t| t.path.clone()))
                .collect()
        });
        if let (Some(paths), Some((key, namespace))) = (&token_sources, tokens) {
            let dir = std::env::temp_dir().join(format!("{pod}-{}", mount.name));
            let account = spec.service_account_name.as_deref().unwrap_or("default");
            let identity = mesh_api::identity::Identity::new(namespace, account);
            let token = mesh_api::identity::bootstrap_token(key, &identity);
            let made = std::fs::create_dir_all(&dir).and_then(|()| {
                paths
                    .iter()
                    .try_for_each(|path| std::fs::write(dir.join(path), &token))
            });
            made.map_err(|e| KubeletError::VolumeDir {
                dir: dir.clone(),
                source: e,
            })?;
            args.extend(strings(&[
                "--volume",
                &format!("{}:{}:ro", dir.display(), mount.mount_path),
            ]));
            volumes.push(dir);
            continue;
        }
        if volume.empty_dir.is_none() && volume.persistent_volume_claim.is_none() {
            return Err(KubeletError::Volume {
                pod: pod.into(),
                volume: mount.name.clone(),
            });
        }
        // A fresh host directory, mode 0777, as kind's local-path
        // provisioner makes one for a claim (and the kubelet for an emptyDir).
        let dir = std::env::temp_dir().join(format!("{pod}-{}", mount.name));
        let made = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)));
        made.map_err(|e| KubeletError::VolumeDir {
            dir: dir.clone(),
            source: e,
        })?;
        args.extend(strings(&[
            "--volume",
            &format!("{}:{}", dir.display(), mount.mount_path),
        ]));
        volumes.push(dir);
    }
    Ok(args)
}

/// One probe attempt from the node: `Ok` on success, `Err(answer)` else.
async fn probe_once(probe: &Probe, spec_port: SocketAddr, path: &str) -> Result<(), String> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if probe.http_get.is_some() {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .build()
            .expect("a plain HTTP client builds");
        match client.get(format!("http://{spec_port}{path}")).send().await {
            // The kubelet counts 200-399 as success.
            Ok(r) if (200..400).contains(&r.status().as_u16()) => Ok(()),
            Ok(r) => Err(format!(
                "{} {}",
                r.status(),
                r.text().await.unwrap_or_default().trim()
            )),
            Err(e) => Err(e.to_string()),
        }
    } else {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(spec_port)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }
}

/// Polls `probe` every `periodSeconds` until it passes, for
/// `periodSeconds * failureThreshold` (or `at_least`, the longer).
async fn await_probe_for(
    kind: &'static str,
    pod: &str,
    c: &Container,
    probe: &Probe,
    ip: Ipv4Addr,
    at_least: Duration,
) -> Result<(), KubeletError> {
    let (port, path) = match (&probe.http_get, &probe.tcp_socket) {
        (Some(get), _) => (get.port.clone(), get.path.clone().unwrap_or("/".into())),
        (None, Some(tcp)) => (tcp.port.clone(), String::new()),
        (None, None) => return Ok(()),
    };
    let one = PodSpec {
        containers: vec![c.clone()],
        ..Default::default()
    };
    let port = container_port(&one, &port).ok_or_else(|| KubeletError::ProbePort {
        pod: pod.into(),
        container: c.name.clone(),
        port: format!("{port:?}"),
    })?;
    let period = Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
    let budget = (period * probe.failure_threshold.unwrap_or(3).max(1) as u32).max(at_least);
    let started = Instant::now();
    loop {
        match probe_once(probe, SocketAddr::from((ip, port)), &path).await {
            Ok(()) => return Ok(()),
            Err(last) if started.elapsed() >= budget => {
                return Err(KubeletError::Probe {
                    kind,
                    pod: pod.into(),
                    container: c.name.clone(),
                    waited: started.elapsed(),
                    last,
                });
            }
            // Poll faster than the period: the test waits, not a node.
            Err(_) => tokio::time::sleep(period.min(Duration::from_millis(250))).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_the_kubelet_rules() {
        let vars: BTreeMap<String, String> =
            [("MESH_POD_IP".to_string(), "10.0.0.7".to_string())].into();
        assert_eq!(expand("$(MESH_POD_IP):15006", &vars), "10.0.0.7:15006");
        // Undefined stays as written; `$$` escapes.
        assert_eq!(expand("$(NOPE)/x", &vars), "$(NOPE)/x");
        assert_eq!(expand("$$(MESH_POD_IP)", &vars), "$(MESH_POD_IP)");
        assert_eq!(expand("a$b", &vars), "a$b");
    }

    #[test]
    fn downward_api_fields_come_from_the_pod() {
        let fields = Fields {
            name: "p-0".into(),
            namespace: "guestbook".into(),
            ip: Ipv4Addr::new(10, 1, 2, 3),
            service_account: "sa".into(),
            labels: [("app".to_string(), "hw".to_string())].into(),
            annotations: BTreeMap::new(),
        };
        assert_eq!(fields.get("metadata.labels['app']").as_deref(), Some("hw"));
        assert_eq!(fields.get("metadata.labels['none']").as_deref(), Some(""));
        assert_eq!(fields.get("status.podIP").as_deref(), Some("10.1.2.3"));
        assert_eq!(fields.get("spec.serviceAccountName").as_deref(), Some("sa"));
        assert_eq!(fields.get("metadata.uid"), None);
    }
}
