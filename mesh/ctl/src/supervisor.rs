//! The supervisor inside `meshctl up`: it starts and stops the mesh's
//! processes, and serves a tiny HTTP API on 127.0.0.1 so that `meshctl scale`,
//! `restart` and `down`, run from another shell, can ask it to.
//!
//! In Kubernetes this is the kubelet plus the Deployment controller: it turns
//! "helloworld-service v1, 3 replicas" into running pods, each pod being an
//! app container and an `istio-proxy` sidecar container. Here an instance is
//! two processes: the app, listening on a free port on 127.0.0.1, and its
//! mesh-proxy sidecar, with an outbound port the app uses as `HTTP_PROXY`,
//! an inbound port other sidecars send to, and an admin port.
//!
//! ```text
//! GET  /v1/status     RunState: every process, its pid and ports
//! POST /v1/scale      {"service", "version"?, "replicas"} -> ScaleReply
//! POST /v1/restart    {"name"}: control-plane, the gateway, or an instance
//! POST /v1/shutdown   stop everything (what `meshctl down` asks)
//! ```

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mesh_api::xds::{ApiError, ServiceStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tokio::time::Instant;

use crate::catalog::{self, EnvOverride, Launch, Workload};
use crate::process::{self, Exited, Proc, Spec};
use crate::runfile::{GatewayRecord, InstanceRecord, ProcessRecord, RunState};
use crate::runtime::Runtimes;

/// How long a process gets between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);
/// `MESH_DRAIN_DURATION` of every proxy `meshctl up` starts. The proxy's
/// default, 5 s (Istio's `terminationDrainDuration`), is sized for
/// Kubernetes, where a leaving pod's address takes seconds to leave every
/// sidecar's endpoints (kubelet -> EndpointSlice -> istiod -> each Envoy).
/// Here a sidecar leaves the registry on SIGTERM and the control plane
/// pushes the new snapshot within tens of milliseconds, so 1 s of still
/// accepting covers the callers that picked it just before.
pub const LOCAL_DRAIN_DURATION: Duration = Duration::from_secs(1);
/// `MESH_DRAIN_TIMEOUT` of every proxy `meshctl up` starts: what requests in
/// flight then get (the default, 20 s, fits Kubernetes' 30 s grace period).
/// Both together must end before [`GRACE`] does, or every sidecar would be
/// SIGKILLed at `meshctl down`, scale-down and restart: 1 s + 2 s, plus the
/// proxy's second for the 503s of the requests cut (mesh-proxy's
/// `CUT_GRACE`), leaves a second for the last spans to reach the control
/// plane on 127.0.0.1.
pub const LOCAL_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
const _: () = assert!(
    LOCAL_DRAIN_DURATION.as_secs() + LOCAL_DRAIN_TIMEOUT.as_secs() + 1 < GRACE.as_secs(),
    "a local proxy's drain must end before the supervisor's SIGKILL"
);
/// How long a new instance may take to become ready (the JVM compiling
/// Sentiment.java on a busy two-core laptop is the slow one).
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The name the ingress gateway registers under, and its `istio` label, which
/// Gateway resources select (`selector: {istio: ingressgateway}`), as in Istio.
pub const GATEWAY_SERVICE: &str = "ingressgateway";
/// The name `meshctl restart` and the run file use for the control plane.
pub const CONTROL_PLANE: &str = "control-plane";

/// Everything needed to start the mesh's processes.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    pub root: PathBuf,
    pub workdir: PathBuf,
    pub control_binary: PathBuf,
    pub proxy_binary: PathBuf,
    /// Directory of the Guestbook's Rust binaries (beside meshctl).
    pub bin_dir: PathBuf,
    pub runtimes: Runtimes,
    pub control_port: u16,
    /// The control plane's mutual-TLS port (`--secure-listen`), where the
    /// proxies move once they hold a certificate.
    pub secure_port: u16,
    /// `None`: mesh-control's default (15014 if free).
    pub dashboard_port: Option<u16>,
    pub gateway_port: u16,
    pub env: Vec<EnvOverride>,
    /// `MESH_LOG` for the control plane and the proxies.
    pub log_level: String,
    /// `MESH_ACCESS_LOG_ENCODING` for the proxies: `text` or `json`.
    pub access_log_encoding: String,
}

impl MeshConfig {
    pub fn control_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.control_port)
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.workdir.join("logs")
    }
    fn log(&self, name: &str) -> PathBuf {
        self.logs_dir().join(format!("{name}.log"))
    }
}

/// The ports of one instance, all on 127.0.0.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub app: u16,
    pub outbound: u16,
    pub inbound: u16,
    pub admin: u16,
}

/// One instance: app + sidecar.
#[derive(Debug)]
pub struct Instance {
    pub workload: Workload,
    pub name: String,
    pub ports: Ports,
    pub app: Proc,
    pub sidecar: Proc,
}

#[derive(Debug)]
struct Gateway {
    instance: String,
    ports: Ports,
    proc: Proc,
}

/// What to wait for before calling something ready.
#[derive(Clone, Debug)]
pub struct Probe {
    pub name: String,
    /// `GET` must answer 2xx: the app's `/health`, the sidecar's `/ready`...
    pub urls: Vec<String>,
    /// For an instance: the control plane must list it as a healthy
    /// endpoint, which is when other sidecars start sending it traffic
    /// (Kubernetes: the pod's address appears in the EndpointSlice).
    pub registered: Option<Registration>,
    /// If any of these exits, the instance will never be ready.
    pub exits: Vec<(String, watch::Receiver<Option<String>>, PathBuf)>,
}

/// Where an instance must show up as a healthy endpoint.
#[derive(Clone, Debug)]
pub struct Registration {
    pub control_url: String,
    pub service: String,
}

/// The running mesh. Lives behind a mutex in `Supervisor`.
#[derive(Debug)]
pub struct Mesh {
    config: MeshConfig,
    supervisor_addr: String,
    control: Option<Proc>,
    gateway: Option<Gateway>,
    /// In start order; scaling down stops the newest.
    instances: Vec<Instance>,
    /// Ports handed out in this run, so two instances never get the same one.
    ports_used: HashSet<u16>,
    exits: mpsc::UnboundedSender<Exited>,
}

impl Mesh {
    pub fn new(
        config: MeshConfig,
        supervisor_addr: String,
        exits: mpsc::UnboundedSender<Exited>,
    ) -> Self {
        let ports_used = [config.control_port, config.secure_port, config.gateway_port].into();
        Mesh {
            config,
            supervisor_addr,
            control: None,
            gateway: None,
            instances: Vec::new(),
            ports_used,
            exits,
        }
    }

    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    // === control plane ===

    pub fn start_control_plane(&mut self) -> Result<Probe> {
        let log = self.config.log("mesh-control");
        let mut spec = Spec {
            name: "mesh-control".into(),
            program: self.config.control_binary.clone(),
            args: vec![
                "--listen".into(),
                format!("127.0.0.1:{}", self.config.control_port).into(),
                "--secure-listen".into(),
                format!("127.0.0.1:{}", self.config.secure_port).into(),
                "--state-dir".into(),
                self.config.workdir.join("state").into(),
            ],
            env: vec![("MESH_LOG".into(), self.config.log_level.clone())],
            cwd: Some(self.config.workdir.clone()),
            log: log.clone(),
        };
        if let Some(port) = self.config.dashboard_port {
            spec.args.push("--dashboard-listen".into());
            spec.args.push(format!("127.0.0.1:{port}").into());
        }
        let proc = Proc::spawn(spec, self.exits.clone())?;
        let probe = Probe {
            name: "mesh-control".into(),
            urls: vec![format!("{}/v1/services", self.config.control_url())],
            registered: None,
            exits: vec![("mesh-control".into(), proc.exit_watch(), log)],
        };
        self.control = Some(proc);
        self.save()?;
        Ok(probe)
    }

    // === workloads ===

    /// Start one new instance of `workload`; returns how to tell it is ready.
    pub fn start_instance(&mut self, workload: &Workload) -> Result<Probe> {
        let name = self.new_instance_name(&workload.service, Some(&workload.version));
        let ports = Ports {
            app: self.free_port()?,
            outbound: self.free_port()?,
            inbound: self.free_port()?,
            admin: self.free_port()?,
        };
        let instance = self.spawn_instance(workload.clone(), name, ports)?;
        let probe = instance_probe(&instance, &self.config.control_url());
        self.instances.push(instance);
        self.save()?;
        Ok(probe)
    }

    fn spawn_instance(&self, workload: Workload, name: String, ports: Ports) -> Result<Instance> {
        let (service, version) = workload.spec().map_err(anyhow::Error::msg)?;

        // The app: where to listen, who it is, and its sidecar as HTTP proxy,
        // which is how every call it makes to `http://NAME:8080` enters the mesh.
        let proxy_url = format!("http://127.0.0.1:{}", ports.outbound);
        let mut env: Vec<(String, String)> = vec![
            ("HOST".into(), "127.0.0.1".into()),
            ("PORT".into(), ports.app.to_string()),
            ("VERSION".into(), workload.version.clone()),
            ("HOSTNAME".into(), name.clone()),
            ("HTTP_PROXY".into(), proxy_url.clone()),
            // Python's urllib and curl prefer the lower-case spelling.
            ("http_proxy".into(), proxy_url),
        ];
        env.extend(
            version
                .env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        env.extend(service.workdir_files.iter().map(|(k, file)| {
            (
                k.to_string(),
                self.config.workdir.join(file).display().to_string(),
            )
        }));
        env.extend(
            self.config
                .env
                .iter()
                .filter(|e| e.applies_to(&workload))
                .map(|e| (e.name.clone(), e.value.clone())),
        );

        let (program, args) = match service.launch {
            Launch::Binary(binary) => {
                (crate::locate::binary(&self.config.bin_dir, binary)?, vec![])
            }
            Launch::Python(script) => {
                // Without this, Python buffers stdout when it is a file and
                // the log shows nothing until the buffer fills.
                env.push(("PYTHONUNBUFFERED".into(), "1".into()));
                let python = self
                    .config
                    .runtimes
                    .python
                    .clone()
                    .context("python3 was not checked")?;
                (python, vec![self.config.root.join(script).into()])
            }
            Launch::Java(source) => {
                let java = self
                    .config
                    .runtimes
                    .java
                    .clone()
                    .context("java was not checked")?;
                // A small service on a laptop: the serial collector and the
                // first JIT tier start fastest and use the least memory.
                let args = vec![
                    "-XX:+UseSerialGC".into(),
                    "-XX:TieredStopAtLevel=1".into(),
                    self.config.root.join(source).into(),
                ];
                (java, args)
            }
        };
        let app = Proc::spawn(
            Spec {
                name: name.clone(),
                program,
                args,
                env,
                cwd: Some(self.config.root.clone()),
                log: self.config.log(&name),
            },
            self.exits.clone(),
        )?;

        // The sidecar: the same identity, announced to the control plane.
        let sidecar_name = format!("{name}.sidecar");
        let labels = format!("app={},version={}", workload.service, workload.version);
        let sidecar_env = self.proxy_env(
            "sidecar",
            &workload.service,
            &workload.version,
            &name,
            &labels,
            ports,
            vec![
                ("MESH_APP_ADDR".into(), format!("127.0.0.1:{}", ports.app)),
                (
                    "MESH_ADVERTISE_ADDR".into(),
                    format!("127.0.0.1:{}", ports.inbound),
                ),
            ],
        );
        let sidecar = Proc::spawn(
            Spec {
                name: sidecar_name.clone(),
                program: self.config.proxy_binary.clone(),
                args: vec![],
                env: sidecar_env,
                cwd: Some(self.config.workdir.clone()),
                log: self.config.log(&sidecar_name),
            },
            self.exits.clone(),
        );
        let sidecar = match sidecar {
            Ok(sidecar) => sidecar,
            Err(e) => {
                // Never leave half an instance running.
                app.kill_now();
                return Err(e);
            }
        };
        Ok(Instance {
            workload,
            name,
            ports,
            app,
            sidecar,
        })
    }

    /// The environment of a mesh-proxy process (sidecar or gateway).
    #[allow(clippy::too_many_arguments)]
    fn proxy_env(
        &self,
        mode: &str,
        service: &str,
        version: &str,
        instance: &str,
        labels: &str,
        ports: Ports,
        extra: Vec<(String, String)>,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("MESH_MODE".into(), mode.into()),
            ("MESH_SERVICE".into(), service.into()),
            ("MESH_VERSION".into(), version.into()),
            ("MESH_INSTANCE".into(), instance.into()),
            ("MESH_LABELS".into(), labels.into()),
            ("MESH_CONTROL_URL".into(), self.config.control_url()),
            (
                "MESH_OUTBOUND_ADDR".into(),
                format!("127.0.0.1:{}", ports.outbound),
            ),
            (
                "MESH_INBOUND_ADDR".into(),
                format!("127.0.0.1:{}", ports.inbound),
            ),
            (
                "MESH_ADMIN_ADDR".into(),
                format!("127.0.0.1:{}", ports.admin),
            ),
            ("MESH_LOG".into(), self.config.log_level.clone()),
            (
                "MESH_ACCESS_LOG_ENCODING".into(),
                self.config.access_log_encoding.clone(),
            ),
            // Drained before GRACE ends in SIGKILL (see LOCAL_DRAIN_DURATION).
            (
                "MESH_DRAIN_DURATION".into(),
                format!("{}ms", LOCAL_DRAIN_DURATION.as_millis()),
            ),
            (
                "MESH_DRAIN_TIMEOUT".into(),
                format!("{}ms", LOCAL_DRAIN_TIMEOUT.as_millis()),
            ),
        ];
        env.extend(extra);
        // The control plane's write token, without which the announces are
        // refused (`token.rs`). The control plane made it at its first start,
        // before any proxy is started; if it cannot be read the proxy's log
        // shows the 401 and where the token lives.
        match crate::token::read(&self.config.workdir.join("state")) {
            Ok(token) => {
                // Its own identity's bootstrap token, for its first
                // certificate (mesh/control/src/ca.rs): locally the service
                // account is the service's name, in namespace `default`.
                let identity = mesh_api::identity::Identity::new("default", service);
                env.push((
                    "MESH_IDENTITY_TOKEN".into(),
                    mesh_api::identity::bootstrap_token(&token, &identity),
                ));
                env.push((crate::token::TOKEN_ENV.into(), token));
            }
            Err(e) => tracing::warn!("{e}; {instance} will not be able to announce itself"),
        }
        env
    }

    // === gateway ===

    pub fn start_gateway(&mut self) -> Result<Probe> {
        let instance = match &self.gateway {
            Some(gw) => gw.instance.clone(),
            None => self.new_instance_name(GATEWAY_SERVICE, None),
        };
        let ports = Ports {
            app: self.config.gateway_port,
            outbound: self.free_port()?,
            inbound: self.free_port()?,
            admin: self.free_port()?,
        };
        let labels = format!("app={GATEWAY_SERVICE},istio={GATEWAY_SERVICE}");
        let env = self.proxy_env(
            "gateway",
            GATEWAY_SERVICE,
            "",
            &instance,
            &labels,
            ports,
            vec![(
                "MESH_GATEWAY_ADDR".into(),
                format!("127.0.0.1:{}", self.config.gateway_port),
            )],
        );
        let log = self.config.log(&instance);
        let proc = Proc::spawn(
            Spec {
                name: instance.clone(),
                program: self.config.proxy_binary.clone(),
                args: vec![],
                env,
                cwd: Some(self.config.workdir.clone()),
                log: log.clone(),
            },
            self.exits.clone(),
        )?;
        let probe = Probe {
            name: instance.clone(),
            urls: vec![format!("http://127.0.0.1:{}/ready", ports.admin)],
            registered: None,
            exits: vec![(instance.clone(), proc.exit_watch(), log)],
        };
        self.gateway = Some(Gateway {
            instance,
            ports,
            proc,
        });
        self.save()?;
        Ok(probe)
    }

    // === scale and restart ===

    /// Start or stop instances so `workload` has `replicas`. Returns the
    /// probes of the started ones and the stopped instances (already out of
    /// the mesh's books; the caller stops them without holding the lock).
    pub fn scale(
        &mut self,
        service: &str,
        version: Option<&str>,
        replicas: u32,
    ) -> Result<(Workload, Vec<Probe>, Vec<Instance>), String> {
        let spec = catalog::service(service)?;
        let version = match version {
            Some(v) => spec.version(v)?.name.to_string(),
            None => {
                let mut running: Vec<&str> = self
                    .instances
                    .iter()
                    .filter(|i| i.workload.service == service)
                    .map(|i| i.workload.version.as_str())
                    .collect();
                running.sort();
                running.dedup();
                match running.as_slice() {
                    [] => spec.default_version().name.to_string(),
                    [one] => one.to_string(),
                    many => {
                        return Err(format!(
                            "{service} runs versions {}; say which one to scale, for example {service}@{}={replicas}",
                            many.join(" and "),
                            many[0]
                        ));
                    }
                }
            }
        };
        let workload = Workload {
            service: service.to_string(),
            version,
        };
        let current = self
            .instances
            .iter()
            .filter(|i| i.workload == workload)
            .count();
        let wanted = replicas as usize;
        let mut probes = Vec::new();
        let mut stopped = Vec::new();
        if wanted > current {
            for _ in current..wanted {
                probes.push(
                    self.start_instance(&workload)
                        .map_err(|e| format!("{e:#}"))?,
                );
            }
        } else {
            for _ in wanted..current {
                // The newest first, as a ReplicaSet scaling down prefers the
                // youngest pods.
                let newest = self
                    .instances
                    .iter()
                    .rposition(|i| i.workload == workload)
                    .expect("counted above");
                stopped.push(self.instances.remove(newest));
            }
            if !stopped.is_empty() {
                self.save().map_err(|e| format!("{e:#}"))?;
            }
        }
        Ok((workload, probes, stopped))
    }

    /// Take a process out to restart it: the control plane, the gateway, or
    /// an instance (same name, same ports: a container restart, not a new pod).
    pub fn take_for_restart(&mut self, name: &str) -> Result<Restart, String> {
        if name == CONTROL_PLANE || name == "mesh-control" {
            return Ok(Restart::ControlPlane(self.control.take()));
        }
        if name == GATEWAY_SERVICE || self.gateway.as_ref().is_some_and(|g| g.instance == name) {
            return Ok(Restart::Gateway);
        }
        match self.instances.iter().position(|i| i.name == name) {
            Some(index) => Ok(Restart::Instance(self.instances.remove(index))),
            None => {
                let mut names: Vec<&str> = vec![CONTROL_PLANE, GATEWAY_SERVICE];
                names.extend(self.instances.iter().map(|i| i.name.as_str()));
                Err(format!(
                    "nothing called {name:?} runs; restart one of: {}",
                    names.join(", ")
                ))
            }
        }
    }

    /// Start an instance again after `take_for_restart` stopped it.
    pub fn restart_instance(&mut self, old: Instance) -> Result<Probe> {
        let instance = self.spawn_instance(old.workload, old.name, old.ports)?;
        let probe = instance_probe(&instance, &self.config.control_url());
        self.instances.push(instance);
        self.save()?;
        Ok(probe)
    }

    /// Stop the gateway (to restart it on the same ports).
    pub async fn stop_gateway(&mut self) {
        if let Some(gw) = &self.gateway {
            gw.proc.stop(GRACE).await;
        }
    }

    // === shutdown ===

    /// Stop everything: gateway first (no new requests), then the workloads
    /// (each sidecar before its app, so it leaves the registry first), then
    /// the control plane.
    pub async fn shutdown(&mut self) {
        if let Some(gw) = self.gateway.take() {
            gw.proc.stop(GRACE).await;
        }
        let instances = std::mem::take(&mut self.instances);
        futures::future::join_all(instances.iter().map(stop_instance)).await;
        if let Some(control) = self.control.take() {
            control.stop(GRACE).await;
        }
        RunState::remove(&self.config.workdir);
    }

    // === bookkeeping ===

    pub fn run_state(&self) -> RunState {
        let record = |p: &Proc| ProcessRecord {
            pid: p.pid,
            program: p.program.clone(),
            log: p.log.clone(),
        };
        RunState {
            pid: std::process::id(),
            supervisor: self.supervisor_addr.clone(),
            workdir: self.config.workdir.clone(),
            control_url: self.config.control_url(),
            gateway_url: format!("http://localhost:{}", self.config.gateway_port),
            control_plane: self.control.as_ref().map(record),
            gateway: self.gateway.as_ref().map(|g| GatewayRecord {
                instance: g.instance.clone(),
                port: g.ports.app,
                admin_port: g.ports.admin,
                process: record(&g.proc),
            }),
            instances: self
                .instances
                .iter()
                .map(|i| InstanceRecord {
                    service: i.workload.service.clone(),
                    version: i.workload.version.clone(),
                    instance: i.name.clone(),
                    app_port: i.ports.app,
                    outbound_port: i.ports.outbound,
                    inbound_port: i.ports.inbound,
                    admin_port: i.ports.admin,
                    app: record(&i.app),
                    sidecar: record(&i.sidecar),
                })
                .collect(),
        }
    }

    pub fn save(&self) -> Result<()> {
        self.run_state().save(&self.config.workdir)
    }

    /// `helloworld-service-v1-7f3c2`: like a pod name, 5 random hex digits.
    fn new_instance_name(&self, service: &str, version: Option<&str>) -> String {
        loop {
            let suffix = format!("{:05x}", fastrand::u32(..0x10_0000));
            let name = match version {
                Some(v) => format!("{service}-{v}-{suffix}"),
                None => format!("{service}-{suffix}"),
            };
            let taken = self.instances.iter().any(|i| i.name == name)
                || self.gateway.as_ref().is_some_and(|g| g.instance == name);
            if !taken {
                return name;
            }
        }
    }

    /// A port nothing listens on now, never handed out before in this run.
    fn free_port(&mut self) -> Result<u16> {
        for _ in 0..100 {
            let port = free_port()?;
            if self.ports_used.insert(port) {
                return Ok(port);
            }
        }
        bail!("the OS keeps handing out ports this mesh already uses; is 127.0.0.1 out of ports?")
    }
}

/// A free port on 127.0.0.1: bind port 0, read which one the OS chose, close.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .context("cannot bind any port on 127.0.0.1 (is the loopback interface up?)")?;
    Ok(listener.local_addr()?.port())
}

fn instance_probe(i: &Instance, control_url: &str) -> Probe {
    Probe {
        name: i.name.clone(),
        registered: Some(Registration {
            control_url: control_url.to_string(),
            service: i.workload.service.clone(),
        }),
        urls: vec![
            app_probe_url(i),
            format!("http://127.0.0.1:{}/ready", i.ports.admin),
        ],
        exits: vec![
            (
                format!("{} app", i.name),
                i.app.exit_watch(),
                i.app.log.clone(),
            ),
            (
                format!("{} sidecar", i.name),
                i.sidecar.exit_watch(),
                i.sidecar.log.clone(),
            ),
        ],
    }
}

/// How to ask an instance's app whether it is ready (`catalog::Health`):
/// `GET /health`, or for a gRPC server `tcp://` (its port accepts).
fn app_probe_url(i: &Instance) -> String {
    match i.workload.spec().map(|(service, _)| service.health) {
        Ok(catalog::Health::Tcp) => format!("tcp://127.0.0.1:{}", i.ports.app),
        _ => format!("http://127.0.0.1:{}/health", i.ports.app),
    }
}

/// Sidecar first: it deregisters (so other sidecars stop sending here) and
/// drains its in-flight requests, which still need the app; then the app.
pub async fn stop_instance(instance: &Instance) {
    instance.sidecar.stop(GRACE).await;
    instance.app.stop(GRACE).await;
}

/// What `take_for_restart` took out.
#[derive(Debug)]
pub enum Restart {
    ControlPlane(Option<Proc>),
    Gateway,
    Instance(Instance),
}

// === waiting for readiness ===

/// Why something did not become ready.
#[derive(Debug)]
pub struct NotReady {
    pub message: String,
}

/// Poll `probes` until all answer, one exits, or `deadline` passes.
/// `progress` is told the names still not ready after every round.
pub async fn wait_ready(
    http: &reqwest::Client,
    probes: &[Probe],
    deadline: Instant,
    mut progress: impl FnMut(&[&str]),
) -> Result<(), NotReady> {
    let mut ready = vec![false; probes.len()];
    loop {
        for probe in probes {
            for (what, exit, log) in &probe.exits {
                if let Some(status) = exit.borrow().clone() {
                    return Err(NotReady {
                        message: format!(
                            "{what} exited while starting ({status}). Last lines of {}:\n{}",
                            log.display(),
                            indent(&process::tail(log, 20))
                        ),
                    });
                }
            }
        }
        let mut endpoints: Option<Vec<ServiceStatus>> = None;
        for (probe, ready) in probes.iter().zip(ready.iter_mut()) {
            if *ready || !all_answer(http, &probe.urls).await {
                continue;
            }
            *ready = match &probe.registered {
                None => true,
                Some(registration) => {
                    // One registry read per round serves every probe.
                    if endpoints.is_none() {
                        endpoints = Some(registry(http, &registration.control_url).await);
                    }
                    let services = endpoints.as_deref().unwrap_or_default();
                    services.iter().any(|s| {
                        s.name == registration.service
                            && s.endpoints
                                .iter()
                                .any(|e| e.instance == probe.name && e.healthy)
                    })
                }
            };
        }
        let waiting: Vec<&str> = probes
            .iter()
            .zip(&ready)
            .filter(|(_, ready)| !**ready)
            .map(|(p, _)| p.name.as_str())
            .collect();
        progress(&waiting);
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut message = String::new();
            for probe in probes
                .iter()
                .zip(&ready)
                .filter(|(_, r)| !**r)
                .map(|(p, _)| p)
            {
                message.push_str(&format!(
                    "{} is not ready: no 2xx from {}{}\n",
                    probe.name,
                    probe.urls.join(" and "),
                    match &probe.registered {
                        Some(r) => format!(
                            ", or not a healthy endpoint at {}/v1/services",
                            r.control_url
                        ),
                        None => String::new(),
                    }
                ));
                for (what, _, log) in &probe.exits {
                    message.push_str(&format!(
                        "  last lines of {what} ({}):\n{}\n",
                        log.display(),
                        indent(&process::tail(log, 15))
                    ));
                }
            }
            return Err(NotReady { message });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The control plane's services, or none while it does not answer.
async fn registry(http: &reqwest::Client, control_url: &str) -> Vec<ServiceStatus> {
    let url = format!("{control_url}/v1/services");
    match http.get(&url).send().await {
        Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
        _ => Vec::new(),
    }
}

async fn all_answer(http: &reqwest::Client, urls: &[String]) -> bool {
    for url in urls {
        if let Some(addr) = url.strip_prefix("tcp://") {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                return false;
            }
            continue;
        }
        match http.get(url).send().await {
            Ok(r) if r.status().is_success() => {}
            _ => return false,
        }
    }
    true
}

pub fn indent(text: &str) -> String {
    if text.is_empty() {
        return "    (empty)".into();
    }
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// An HTTP client for probes and local APIs: short timeouts, and never the
/// user's HTTP_PROXY (a corporate proxy cannot reach our 127.0.0.1).
pub fn local_http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("a plain HTTP client builds")
}

// === the HTTP API ===

/// Shared by the API handlers and `meshctl up`'s main loop.
#[derive(Debug)]
pub struct Supervisor {
    pub mesh: Mutex<Mesh>,
    pub shutdown: Notify,
    pub http: reqwest::Client,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub service: String,
    #[serde(default)]
    pub version: Option<String>,
    pub replicas: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleReply {
    pub service: String,
    pub version: String,
    pub replicas: u32,
    pub started: Vec<String>,
    pub stopped: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RestartRequest {
    pub name: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RestartReply {
    pub name: String,
    pub pids: Vec<u32>,
}

pub fn router(supervisor: Arc<Supervisor>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/scale", post(scale))
        .route("/v1/restart", post(restart))
        .route("/v1/shutdown", post(shutdown))
        .with_state(supervisor)
}

fn api_error(status: StatusCode, error: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: error.into(),
        }),
    )
        .into_response()
}

async fn status(State(sup): State<Arc<Supervisor>>) -> Json<RunState> {
    Json(sup.mesh.lock().await.run_state())
}

async fn shutdown(State(sup): State<Arc<Supervisor>>) -> impl IntoResponse {
    // notify_one keeps the permit if `up` is not waiting right now (it is
    // still starting), so the request is never lost.
    sup.shutdown.notify_one();
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "stopping": true })),
    )
}

async fn scale(State(sup): State<Arc<Supervisor>>, Json(req): Json<ScaleRequest>) -> Response {
    if req.replicas > catalog::MAX_REPLICAS {
        return api_error(
            StatusCode::BAD_REQUEST,
            format!(
                "{} replicas is more than a laptop needs (at most {})",
                req.replicas,
                catalog::MAX_REPLICAS
            ),
        );
    }
    let result = sup
        .mesh
        .lock()
        .await
        .scale(&req.service, req.version.as_deref(), req.replicas);
    let (workload, probes, stopped) = match result {
        Ok(done) => done,
        Err(message) => return api_error(StatusCode::BAD_REQUEST, message),
    };
    eprintln!(
        "scaling {workload} to {}: starting {}, stopping {}",
        req.replicas,
        probes.len(),
        stopped.len()
    );
    // Stop and wait outside the lock: `status` and `down` stay responsive.
    futures::future::join_all(stopped.iter().map(stop_instance)).await;
    let deadline = Instant::now() + READY_TIMEOUT;
    if let Err(e) = wait_ready(&sup.http, &probes, deadline, |_| {}).await {
        return api_error(StatusCode::INTERNAL_SERVER_ERROR, e.message);
    }
    Json(ScaleReply {
        service: workload.service,
        version: workload.version,
        replicas: req.replicas,
        started: probes.into_iter().map(|p| p.name).collect(),
        stopped: stopped.into_iter().map(|i| i.name).collect(),
    })
    .into_response()
}

async fn restart(State(sup): State<Arc<Supervisor>>, Json(req): Json<RestartRequest>) -> Response {
    match restart_one(&sup, &req.name).await {
        Ok(reply) => Json(reply).into_response(),
        Err(RestartError::Unknown(message)) => api_error(StatusCode::NOT_FOUND, message),
        Err(RestartError::Failed(message)) => api_error(StatusCode::INTERNAL_SERVER_ERROR, message),
    }
}

enum RestartError {
    Unknown(String),
    Failed(String),
}

async fn restart_one(sup: &Supervisor, name: &str) -> Result<RestartReply, RestartError> {
    let failed = |e: anyhow::Error| RestartError::Failed(format!("{e:#}"));
    let mut mesh = sup.mesh.lock().await;
    let taken = mesh.take_for_restart(name).map_err(RestartError::Unknown)?;
    eprintln!("restarting {name}");
    let (probe, pids) = match taken {
        Restart::ControlPlane(old) => {
            if let Some(old) = old {
                old.stop(GRACE).await;
            }
            let probe = mesh.start_control_plane().map_err(failed)?;
            let pid = mesh.control.as_ref().map(|c| c.pid);
            (probe, pid.into_iter().collect())
        }
        Restart::Gateway => {
            mesh.stop_gateway().await;
            let probe = mesh.start_gateway().map_err(failed)?;
            let pid = mesh.gateway.as_ref().map(|g| g.proc.pid);
            (probe, pid.into_iter().collect())
        }
        Restart::Instance(old) => {
            stop_instance(&old).await;
            let probe = mesh.restart_instance(old).map_err(failed)?;
            let i = mesh.instances.last().expect("just pushed");
            (probe, vec![i.app.pid, i.sidecar.pid])
        }
    };
    drop(mesh);
    let deadline = Instant::now() + READY_TIMEOUT;
    wait_ready(&sup.http, std::slice::from_ref(&probe), deadline, |_| {})
        .await
        .map_err(|e| RestartError::Failed(e.message))?;
    Ok(RestartReply {
        name: probe.name,
        pids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_config() -> MeshConfig {
        MeshConfig {
            root: "/r".into(),
            workdir: "/w".into(),
            control_binary: "/b/mesh-control".into(),
            proxy_binary: "/b/mesh-proxy".into(),
            bin_dir: "/b".into(),
            runtimes: Runtimes::default(),
            control_port: 15010,
            secure_port: 15012,
            dashboard_port: None,
            gateway_port: 8080,
            env: vec![],
            log_level: "info".into(),
            access_log_encoding: "text".into(),
        }
    }

    #[test]
    fn free_ports_are_distinct_within_a_run() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut mesh = Mesh::new(test_config(), "127.0.0.1:1".into(), tx);
        let ports: Vec<u16> = (0..50).map(|_| mesh.free_port().unwrap()).collect();
        let distinct: HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(!ports.contains(&15010) && !ports.contains(&8080));
    }

    #[test]
    fn instance_names_look_like_pod_names() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let mesh = Mesh::new(test_config(), "127.0.0.1:1".into(), tx);
        let name = mesh.new_instance_name("helloworld-service", Some("v1"));
        let suffix = name.strip_prefix("helloworld-service-v1-").unwrap();
        assert_eq!(suffix.len(), 5);
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()));
        let gw = mesh.new_instance_name(GATEWAY_SERVICE, None);
        assert!(gw.starts_with("ingressgateway-") && gw.len() == "ingressgateway-".len() + 5);
    }

    #[test]
    fn proxies_get_the_access_log_encoding() {
        // meshctl scrubs MESH_* from what children inherit (`process.rs`),
        // so `meshctl up --access-log-encoding json` must pass it on itself.
        let (tx, _rx) = mpsc::unbounded_channel();
        let config = MeshConfig {
            access_log_encoding: "json".into(),
            ..test_config()
        };
        let mut mesh = Mesh::new(config, "127.0.0.1:1".into(), tx);
        let ports = Ports {
            app: mesh.free_port().unwrap(),
            outbound: mesh.free_port().unwrap(),
            inbound: mesh.free_port().unwrap(),
            admin: mesh.free_port().unwrap(),
        };
        let env = mesh.proxy_env("sidecar", "hw", "v1", "hw-v1-aaaaa", "", ports, vec![]);
        assert!(
            env.contains(&("MESH_ACCESS_LOG_ENCODING".into(), "json".into())),
            "{env:?}"
        );
    }

    #[test]
    fn scale_needs_a_version_when_several_run() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut mesh = Mesh::new(test_config(), "127.0.0.1:1".into(), tx);
        // Unknown names are refused before anything starts.
        let err = mesh.scale("reviews", None, 2).unwrap_err();
        assert!(err.contains("unknown service"), "{err}");
        let err = mesh.scale("helloworld-service", Some("v7"), 2).unwrap_err();
        assert!(err.contains("has no version"), "{err}");
        // Scaling a workload with no instance to 0 changes nothing.
        let (workload, started, stopped) = mesh.scale("helloworld-service", None, 0).unwrap();
        assert_eq!(workload.to_string(), "helloworld-service@v1");
        assert!(started.is_empty() && stopped.is_empty());
    }
}
