//! `meshctl up` and `meshctl down`: the whole mesh on a laptop, as child
//! processes, with no Kubernetes and no Docker.
//!
//! `up` checks what it needs (binaries, python3, java, free ports), then
//! starts, in order, what a cluster would run:
//!
//! ```text
//! mesh-control              127.0.0.1:15010   (istiod), dashboard on 127.0.0.1:15014
//! for each service instance (a pod):
//!   the app                 127.0.0.1:<free>  HTTP_PROXY=its sidecar's outbound port
//!   its mesh-proxy sidecar  outbound, inbound, admin on 127.0.0.1:<free>
//! the ingress gateway       http://localhost:8080   (istio-ingressgateway)
//! ```
//!
//! The control plane keeps the applied Istio config and its registry across
//! runs (`<workdir>/state/`); a fresh `up` keeps the config and removes any
//! instance a previous run left in the registry (see
//! `forget_previous_instances`), so its endpoints are live ones only.
//!
//! It waits until the Guestbook page answers through the gateway, prints what
//! runs where, then supervises: it reports a process that dies, serves
//! `meshctl scale`/`restart`/`down` (see `supervisor.rs`), and on Ctrl-C stops
//! everything, control plane last.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use mesh_api::xds::ports;
use tokio::sync::{Mutex, Notify, mpsc};
use tokio::time::Instant;

use crate::catalog::{self, EnvOverride, Launch, Replicas, Workload};
use crate::cli::Ctx;
use crate::client::Client;
use crate::process::{self, Exited};
use crate::runfile::RunState;
use crate::supervisor::{self, Mesh, MeshConfig, Probe, Supervisor};
use crate::{locate, logs, runtime};

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Also run this version of a service (repeatable), for example
    /// helloworld-service@v2 for the canary labs.
    #[arg(long = "with", value_name = "SERVICE@VERSION")]
    pub with: Vec<Workload>,
    /// Run N instances (repeatable). Without @VERSION it applies to every
    /// version of the service that runs.
    #[arg(long = "replicas", value_name = "SERVICE[@VERSION]=N")]
    pub replicas: Vec<Replicas>,
    /// Set an environment variable in a service's instances (repeatable), for
    /// example helloworld-service@v2:FAILURE_RATE=0.5.
    #[arg(long = "env", value_name = "SERVICE[@VERSION]:NAME=VALUE")]
    pub env: Vec<EnvOverride>,
    /// Also run the gRPC demo of lab 09: three hello-grpc servers and a
    /// hello-grpc-client instance to `meshctl exec` into.
    #[arg(long)]
    pub grpc_demo: bool,
    /// Port of the control plane's API on 127.0.0.1.
    #[arg(long, default_value_t = ports::CONTROL, value_name = "PORT")]
    pub control_port: u16,
    /// Port of the ingress gateway: the Guestbook is http://localhost:PORT.
    #[arg(long, default_value_t = ports::GATEWAY, value_name = "PORT")]
    pub gateway_port: u16,
    /// Port of the dashboard on 127.0.0.1 (0: any free port). Default: 15014
    /// if it is free; if not, the mesh runs without a dashboard and says so.
    #[arg(long, value_name = "PORT")]
    pub dashboard_port: Option<u16>,
    /// Also stream every process's log here, each line prefixed with
    /// [instance] (the sidecars' access logs show every hop).
    #[arg(short, long)]
    pub follow: bool,
    /// Seconds to wait for the Guestbook to answer before giving up.
    #[arg(long, default_value_t = 180, value_name = "SECONDS")]
    pub timeout: u64,
    /// Log level of the control plane and the proxies (MESH_LOG).
    #[arg(long, default_value = "info", value_name = "FILTER")]
    pub log_level: String,
    /// How the sidecars and the gateway print their access logs
    /// (MESH_ACCESS_LOG_ENCODING, Istio's accessLogEncoding): `text`, one
    /// short line per request, or `json`, one object with every field.
    #[arg(long, default_value = "text", value_parser = ["text", "json"], value_name = "text|json")]
    pub access_log_encoding: String,
}

/// How many instances of each workload to start, in start order.
pub fn plan(args: &UpArgs) -> Vec<(Workload, u32)> {
    let mut counts: BTreeMap<Workload, u32> = BTreeMap::new();
    for workload in catalog::default_workloads()
        .into_iter()
        .chain(args.with.iter().cloned())
    {
        counts.insert(workload, 1);
    }
    if args.grpc_demo {
        for (service, version, count) in catalog::GRPC_DEMO {
            let workload = Workload {
                service: service.to_string(),
                version: version.to_string(),
            };
            counts.insert(workload, *count);
        }
    }
    for r in &args.replicas {
        match &r.version {
            Some(version) => {
                counts.insert(
                    Workload {
                        service: r.service.clone(),
                        version: version.clone(),
                    },
                    r.count,
                );
            }
            None => {
                for (workload, count) in counts.iter_mut() {
                    if workload.service == r.service {
                        *count = r.count;
                    }
                }
            }
        }
    }
    // Catalog order: callees start before their callers.
    let position = |w: &Workload| catalog::CATALOG.iter().position(|s| s.name == w.service);
    let mut plan: Vec<_> = counts.into_iter().collect();
    plan.sort_by_key(|(w, _)| (position(w), w.version.clone()));
    plan
}

pub async fn run(ctx: &Ctx, args: UpArgs) -> Result<ExitCode> {
    // === preflight: everything that can be wrong before anything starts ===
    let root = ctx.root()?;
    let workdir = locate::workdir(ctx.workdir.as_deref(), Some(&root));
    let bin_dir = locate::bin_dir()?;
    let control_binary = locate::binary(&bin_dir, "mesh-control")?;
    let proxy_binary = locate::binary(&bin_dir, "mesh-proxy")?;
    let mut need_python = false;
    let mut need_java = false;
    for service in catalog::CATALOG {
        match service.launch {
            Launch::Binary(name) => {
                locate::binary(&bin_dir, name)?;
            }
            Launch::Python(script) | Launch::Java(script) => {
                let path = root.join(script);
                if !path.is_file() {
                    bail!(
                        "{} is missing from {}; is your clone complete (`git status`)?",
                        script,
                        root.display()
                    );
                }
                need_python |= matches!(service.launch, Launch::Python(_));
                need_java |= matches!(service.launch, Launch::Java(_));
            }
        }
    }
    let runtimes = runtime::check(need_python, need_java)?;
    let plan = plan(&args);
    if plan
        .iter()
        .any(|(w, n)| *n > 0 && w.service.starts_with("hello-grpc"))
        && let Some(python) = &runtimes.python
    {
        check_grpcio(python)?;
    }

    stop_previous_run(&workdir).await?;
    if args.control_port == args.gateway_port {
        bail!(
            "--control-port and --gateway-port are both {}; give them different ports",
            args.control_port
        );
    }
    ensure_free(args.control_port, "the control plane", "--control-port")?;
    ensure_free(args.gateway_port, "the gateway", "--gateway-port")?;
    // The control plane's secure port (mutual TLS, mesh/control/src/secure.rs):
    // istiod's 15012 beside the default 15010, else a free port, kept for
    // the whole run so proxies find it again after a control-plane restart.
    let secure_port = if args.control_port == mesh_api::xds::ports::CONTROL {
        let port = mesh_api::xds::ports::SECURE_CONTROL;
        ensure_free(port, "the control plane's secure API", "--control-port")?;
        port
    } else {
        supervisor::free_port()?
    };
    if let Some(port) = args.dashboard_port.filter(|p| *p != 0) {
        if port == args.control_port || port == args.gateway_port {
            bail!("--dashboard-port {port} is also the control plane's or the gateway's port");
        }
        ensure_free(port, "the dashboard", "--dashboard-port")?;
    }

    for dir in ["state", "logs", "run"] {
        let dir = workdir.join(dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    clear_logs(&workdir.join("logs"))?;

    // === the supervisor API, up first so `meshctl down` works even while
    // everything else is still starting ===
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the supervisor API on 127.0.0.1")?;
    let supervisor_addr = listener.local_addr()?.to_string();
    let config = MeshConfig {
        root: root.clone(),
        workdir: workdir.clone(),
        control_binary,
        proxy_binary,
        bin_dir,
        runtimes,
        control_port: args.control_port,
        secure_port,
        dashboard_port: args.dashboard_port,
        gateway_port: args.gateway_port,
        env: args.env.clone(),
        log_level: args.log_level.clone(),
        access_log_encoding: args.access_log_encoding.clone(),
    };
    let (exit_tx, mut exits) = mpsc::unbounded_channel();
    let sup = Arc::new(Supervisor {
        mesh: Mutex::new(Mesh::new(config, supervisor_addr, exit_tx)),
        shutdown: Notify::new(),
        http: supervisor::local_http(),
    });
    let api = axum::serve(listener, supervisor::router(sup.clone()));
    tokio::spawn(async move {
        if let Err(e) = api.await {
            eprintln!(
                "meshctl up: the supervisor API stopped: {e}; `meshctl down` will stop the recorded processes instead"
            );
        }
    });

    eprintln!(
        "Starting micromesh (work dir {}, logs in {})",
        Ctx::show(&workdir),
        Ctx::show(&workdir.join("logs"))
    );
    let started = tokio::select! {
        result = start(&sup, &plan, &args) => result,
        () = shutdown_requested(&sup) => Err(anyhow!("interrupted while starting")),
    };
    if let Err(e) = started {
        eprintln!("\nerror: {e:#}\n\nStopping what was started...");
        sup.mesh.lock().await.shutdown().await;
        eprintln!(
            "Stopped. Logs stay in {}.",
            Ctx::show(&workdir.join("logs"))
        );
        return Ok(ExitCode::FAILURE);
    }

    let state = sup.mesh.lock().await.run_state();
    let dashboard =
        crate::dashboard::summary_line(&Client::control_plane(&state.control_url)).await;
    print_summary(&state, &dashboard);
    if args.follow {
        let dir = workdir.join("logs");
        tokio::spawn(async move { logs::follow_dir(&dir).await });
    }

    // === supervise until Ctrl-C or `meshctl down` ===
    loop {
        tokio::select! {
            Some(exited) = exits.recv() => eprintln!("{}", exit_notice(&exited)),
            () = shutdown_requested(&sup) => break,
        }
    }
    eprintln!("\nStopping micromesh: gateway, workloads, then the control plane...");
    sup.mesh.lock().await.shutdown().await;
    eprintln!(
        "Stopped. Logs stay in {}.",
        Ctx::show(&workdir.join("logs"))
    );
    Ok(ExitCode::SUCCESS)
}

/// Start everything in `plan`, then wait for the page to answer.
async fn start(sup: &Supervisor, plan: &[(Workload, u32)], args: &UpArgs) -> Result<()> {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(args.timeout);

    let probe = sup.mesh.lock().await.start_control_plane()?;
    let control_url = sup.mesh.lock().await.config().control_url();
    wait(sup, &[probe], deadline, "control plane").await?;
    eprintln!("  control plane ready at {control_url}");
    let state_dir = sup.mesh.lock().await.config().workdir.join("state");
    let token = crate::token::read(&state_dir).map_err(anyhow::Error::msg)?;
    let forgotten = forget_previous_instances(&sup.http, &control_url, &state_dir, &token).await?;
    if forgotten > 0 {
        eprintln!(
            "  removed {forgotten} instance(s) of a previous run from the registry \
             (it ended without `meshctl down`)"
        );
    }

    let mut probes: Vec<Probe> = Vec::new();
    {
        let mut mesh = sup.mesh.lock().await;
        for (workload, count) in plan {
            for _ in 0..*count {
                probes.push(mesh.start_instance(workload)?);
            }
        }
        probes.push(mesh.start_gateway()?);
    }
    wait(sup, &probes, deadline, "instances").await?;
    eprintln!("  {} instances and the gateway ready", probes.len() - 1);

    let url = format!("http://127.0.0.1:{}/", args.gateway_port);
    wait_for_page(&sup.http, &url, deadline).await?;
    eprintln!(
        "  the Guestbook answers through the gateway ({:.1}s)",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A fresh `up` starts from the instances it starts itself.
///
/// The control plane persists its registry in `state/`, so that `meshctl
/// restart control-plane` finds every running sidecar again and keeps it in
/// traffic (Kubernetes keeps its Endpoints in etcd for the same reason).
/// After a run that ended without `meshctl down` (`kill -9`, a closed
/// laptop lid), that file still lists the previous run's instances: their
/// processes are gone, but each would get a fresh lease on restore and stay
/// an endpoint until the lease and the grace period ran out, about a minute.
/// No instance of this run has started yet, so every proxy the registry
/// holds now is such a leftover; each is removed the way a sidecar leaves
/// on shutdown (`DELETE /v1/proxies/{instance}`). Returns how many.
async fn forget_previous_instances(
    http: &reqwest::Client,
    control_url: &str,
    state_dir: &Path,
    token: &str,
) -> Result<usize> {
    let url = format!("{control_url}/v1/proxies");
    let proxies: Vec<mesh_api::xds::ProxyStatus> = http
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("cannot list the registered proxies at {url}"))?
        .json()
        .await
        .with_context(|| format!("{url} did not answer a list of proxies"))?;
    for proxy in &proxies {
        let instance = &proxy.announce.instance;
        let response = http
            .delete(format!("{url}/{instance}"))
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("cannot remove {instance} from the registry at {url}"))?;
        // 404: it left by itself in the meantime, which is just as good.
        if !response.status().is_success() && response.status() != reqwest::StatusCode::NOT_FOUND {
            bail!(
                "the control plane refused to remove {instance}, an instance of a previous run ({}); \
                 stop the mesh (`meshctl down`) and delete {} (the applied config, config.json, can stay)",
                response.status(),
                state_dir.join("registry.json").display()
            );
        }
    }
    Ok(proxies.len())
}

/// The gRPC demo runs on PyPI's grpcio: say so before starting anything,
/// rather than let three servers die on an ImportError.
fn check_grpcio(python: &Path) -> Result<()> {
    let found = std::process::Command::new(python)
        .args(["-c", "import grpc"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        bail!(
            "the gRPC demo needs the Python package grpcio, which {} cannot import; \
             install it (`{} -m pip install grpcio`; ./scripts/test.sh does) and run again",
            python.display(),
            python.display()
        );
    }
    Ok(())
}

/// `wait_ready` with a progress line on stderr.
async fn wait(sup: &Supervisor, probes: &[Probe], deadline: Instant, what: &str) -> Result<()> {
    let tty = std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let total = probes.len();
    let mut last = usize::MAX;
    let result = supervisor::wait_ready(&sup.http, probes, deadline, |waiting| {
        let line = format!(
            "  waiting for {what}: {}/{total} ready{} ({}s)",
            total - waiting.len(),
            if waiting.is_empty() {
                String::new()
            } else {
                format!(", not yet: {}", waiting.join(", "))
            },
            t0.elapsed().as_secs()
        );
        if tty {
            // Rewrite one line in place.
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else if waiting.len() != last {
            eprintln!("{line}");
        }
        last = waiting.len();
    })
    .await;
    if tty {
        eprint!("\r\x1b[2K");
    }
    result.map_err(|e| anyhow!("{what} did not become ready:\n{}", e.message))
}

/// Poll the Guestbook through the gateway until it answers 200.
async fn wait_for_page(http: &reqwest::Client, url: &str, deadline: Instant) -> Result<()> {
    loop {
        let last = match http.get(url).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                format!(
                    "{status}: {}",
                    body.chars().take(300).collect::<String>().trim()
                )
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            bail!(
                "every instance is ready, but the Guestbook at {url} does not answer 200 (last: {last}). \
                 Look at the gateway's and guestbook-ui's logs (`meshctl logs`), and at `meshctl get endpoints`"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Resolves on Ctrl-C, SIGTERM, SIGHUP (terminal closed) or `meshctl down`.
async fn shutdown_requested(sup: &Supervisor) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("can listen for SIGTERM");
    let mut hup = signal(SignalKind::hangup()).expect("can listen for SIGHUP");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
        () = sup.shutdown.notified() => {}
    }
}

fn print_summary(state: &RunState, dashboard: &str) {
    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let logs = state.workdir.join("logs");
    let _ = writeln!(out, "\nmicromesh is up.\n");
    let _ = write!(out, "{}", state.table().render());
    let _ = writeln!(out);
    let _ = writeln!(out, "Guestbook:          {}", state.gateway_url);
    let _ = writeln!(out, "Control plane API:  {}/v1/services", state.control_url);
    let _ = writeln!(out, "Dashboard:          {dashboard}");
    let _ = writeln!(
        out,
        "Logs:               {}/  (meshctl logs INSTANCE [-c sidecar] [-f])",
        Ctx::show(&logs)
    );
    let _ = writeln!(
        out,
        "Stop:               {}`meshctl down` from another shell",
        if tty { "Ctrl-C here, or " } else { "" }
    );
    let _ = out.flush();
}

/// What to tell the user when a process dies on its own.
fn exit_notice(e: &Exited) -> String {
    let log = Ctx::show(&e.log);
    if e.name == "mesh-control" {
        format!(
            "! mesh-control (pid {}) exited: {}. The proxies keep routing with their last snapshot; \
             nothing new is pushed until it is back: `meshctl restart control-plane`. Log: {log}",
            e.pid, e.status
        )
    } else if let Some(instance) = e.name.strip_suffix(".sidecar") {
        format!(
            "! the sidecar of {instance} (pid {}) exited: {}. {instance} leaves the other proxies' \
             endpoints when its lease ends; `meshctl restart {instance}` brings it back. Log: {log}",
            e.pid, e.status
        )
    } else if e.name.starts_with(supervisor::GATEWAY_SERVICE) {
        format!(
            "! the gateway {} (pid {}) exited: {}; the Guestbook is unreachable until \
             `meshctl restart ingressgateway`. Log: {log}",
            e.name, e.pid, e.status
        )
    } else {
        format!(
            "! {} (pid {}) exited: {}. Its sidecar now reports it not ready, so it gets no traffic; \
             `meshctl restart {}` brings it back. Log: {log}",
            e.name, e.pid, e.status, e.name
        )
    }
}

/// Refuse a busy fixed port with what to do about it.
fn ensure_free(port: u16, what: &str, flag: &str) -> Result<()> {
    TcpListener::bind(("127.0.0.1", port)).map(drop).map_err(|e| {
        anyhow!(
            "127.0.0.1:{port}, the port of {what}, is busy ({e}). Is another `meshctl up` running? \
             Stop it with `meshctl down`. Otherwise find what holds the port (`lsof -i :{port}`) \
             or choose another port with {flag} PORT"
        )
    })
}

fn clear_logs(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// A run file left by an earlier `up`: refuse if it still runs, otherwise
/// stop what it left behind (it was killed without a chance to clean up).
async fn stop_previous_run(workdir: &Path) -> Result<()> {
    let Some(previous) = RunState::load(workdir)? else {
        return Ok(());
    };
    if process::runs_program(previous.pid, "meshctl") {
        bail!(
            "meshctl up is already running (pid {}, work dir {}); open the Guestbook at {}, \
             or stop it first with `meshctl down`",
            previous.pid,
            Ctx::show(workdir),
            previous.gateway_url
        );
    }
    let stopped = stop_recorded(&previous).await;
    if stopped > 0 {
        eprintln!("Stopped {stopped} processes an earlier `meshctl up` left behind.");
    }
    RunState::remove(workdir);
    Ok(())
}

/// SIGTERM every recorded process that still runs its program, SIGKILL those
/// still there after the grace period. Returns how many there were.
pub async fn stop_recorded(state: &RunState) -> usize {
    use nix::sys::signal::Signal;
    let mut targets: Vec<(String, u32, String)> = Vec::new();
    if process::runs_program(state.pid, "meshctl") {
        targets.push(("meshctl up".into(), state.pid, "meshctl".into()));
    }
    for (name, record) in state.processes() {
        if process::runs_program(record.pid, &record.program) {
            targets.push((name, record.pid, record.program.clone()));
        }
    }
    for (_, pid, _) in &targets {
        process::signal(*pid, Signal::SIGTERM);
    }
    let alive = |t: &(String, u32, String)| process::runs_program(t.1, &t.2);
    let deadline = Instant::now() + supervisor::GRACE;
    while targets.iter().any(alive) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for target in targets.iter().filter(|t| alive(t)) {
        eprintln!(
            "{} (pid {}) ignored SIGTERM; killing it",
            target.0, target.1
        );
        process::signal(target.1, Signal::SIGKILL);
    }
    targets.len()
}

/// `meshctl down`: ask the running `up` to stop everything; if it does not
/// answer, stop the processes its run file records.
pub async fn down(ctx: &Ctx) -> Result<ExitCode> {
    let workdir = ctx.workdir();
    let Some(state) = RunState::load(&workdir)? else {
        println!(
            "Nothing to stop: no `meshctl up` runs with work dir {} (no run/up.json).",
            Ctx::show(&workdir)
        );
        return Ok(ExitCode::SUCCESS);
    };
    let client = Client::supervisor(&state.supervisor);
    match client
        .post::<_, serde_json::Value>("/v1/shutdown", &serde_json::json!({}))
        .await
    {
        Ok(_) => {
            println!("Asked meshctl up (pid {}) to stop the mesh...", state.pid);
            // Each process gets its grace period; they stop mostly in parallel.
            let deadline = Instant::now() + supervisor::GRACE * 4;
            while process::runs_program(state.pid, "meshctl") && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(_) => eprintln!(
            "meshctl up (pid {}) does not answer at {} (was it killed?); \
             stopping the processes it recorded instead.",
            state.pid, state.supervisor
        ),
    }
    // Whatever happened above, nothing recorded may be left running.
    let leftover = stop_recorded(&state).await;
    if leftover > 0 {
        println!("Stopped {leftover} processes that were still running.");
    }
    RunState::remove(&workdir);
    println!("micromesh is down.");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn up_args(args: &[&str]) -> UpArgs {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            up: UpArgs,
        }
        Wrapper::try_parse_from(std::iter::once("up").chain(args.iter().copied()))
            .unwrap()
            .up
    }

    fn show(plan: &[(Workload, u32)]) -> Vec<String> {
        plan.iter().map(|(w, n)| format!("{w}={n}")).collect()
    }

    #[test]
    fn default_plan_runs_one_of_each() {
        assert_eq!(
            show(&plan(&up_args(&[]))),
            [
                "sentiment-service@v1=1",
                "guestbook-service@v1=1",
                "helloworld-service@v1=1",
                "guestbook-ui@v1=1"
            ]
        );
    }

    #[test]
    fn with_and_replicas_shape_the_plan() {
        let plan = plan(&up_args(&[
            "--with",
            "helloworld-service@v2",
            "--replicas",
            "helloworld-service=3",
            "--replicas",
            "guestbook-ui@v2=2",
            "--replicas",
            "sentiment-service=0",
        ]));
        assert_eq!(
            show(&plan),
            [
                "sentiment-service@v1=0",
                "guestbook-service@v1=1",
                "helloworld-service@v1=3",
                "helloworld-service@v2=3",
                "guestbook-ui@v1=1",
                "guestbook-ui@v2=2"
            ]
        );
    }

    #[test]
    fn the_grpc_demo_adds_three_servers_and_a_client() {
        let shown = show(&plan_of(&["--grpc-demo"]));
        assert!(shown.contains(&"hello-grpc@v1=3".to_string()), "{shown:?}");
        assert!(
            shown.contains(&"hello-grpc-client@v1=1".to_string()),
            "{shown:?}"
        );
        let scaled = plan_of(&["--grpc-demo", "--replicas", "hello-grpc=5"]);
        assert!(show(&scaled).contains(&"hello-grpc@v1=5".to_string()));
        assert!(
            !show(&plan_of(&[]))
                .iter()
                .any(|w| w.starts_with("hello-grpc"))
        );
    }

    #[test]
    fn the_grpc_demo_without_grpcio_says_what_to_install() {
        // `false` stands in for a python3 that cannot import grpc.
        let err = check_grpcio(Path::new("false")).unwrap_err().to_string();
        assert!(err.contains("pip install grpcio"), "{err}");
    }

    fn plan_of(args: &[&str]) -> Vec<(Workload, u32)> {
        plan(&up_args(args))
    }

    #[test]
    fn a_busy_port_says_what_to_do() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = ensure_free(port, "the gateway", "--gateway-port")
            .unwrap_err()
            .to_string();
        assert!(err.contains("meshctl down"), "{err}");
        assert!(err.contains("--gateway-port"), "{err}");
        drop(taken);
        ensure_free(port, "the gateway", "--gateway-port").unwrap();
    }

    #[tokio::test]
    async fn without_a_supervisor_only_recorded_programs_are_stopped() {
        use crate::runfile::{GatewayRecord, ProcessRecord};
        use std::os::unix::process::ExitStatusExt;
        let mut recorded = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Its pid is recorded for another program: as if the pid had been
        // reused since. It must survive.
        let mut reused = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let record = |pid, program: &str| ProcessRecord {
            pid,
            program: program.into(),
            log: "/dev/null".into(),
        };
        let state = RunState {
            // No such process: `meshctl up` itself is gone.
            pid: u32::MAX,
            control_plane: Some(record(recorded.id(), "sleep")),
            gateway: Some(GatewayRecord {
                process: record(reused.id(), "mesh-proxy"),
                ..Default::default()
            }),
            ..Default::default()
        };

        // Wait until the kernel shows `sleep` as its command line (it may
        // not yet, right after exec).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !process::runs_program(recorded.id(), "sleep") {
            assert!(
                Instant::now() < deadline,
                "sleep never showed up as running"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stop_recorded(&state).await, 1);
        assert_eq!(recorded.wait().unwrap().signal(), Some(15), "SIGTERM");
        assert!(
            reused.try_wait().unwrap().is_none(),
            "an unrelated process is left alone"
        );
        reused.kill().unwrap();
        reused.wait().unwrap();
    }

    #[test]
    fn exit_notices_say_how_to_recover() {
        let exited = |name: &str| Exited {
            name: name.into(),
            pid: 42,
            status: "killed by signal 9 (SIGKILL)".into(),
            log: "/w/logs/x.log".into(),
        };
        assert!(exit_notice(&exited("mesh-control")).contains("meshctl restart control-plane"));
        let sidecar = exit_notice(&exited("helloworld-service-v1-abcde.sidecar"));
        assert!(
            sidecar.contains("meshctl restart helloworld-service-v1-abcde`"),
            "{sidecar}"
        );
        assert!(exit_notice(&exited("ingressgateway-12345")).contains("restart ingressgateway"));
        assert!(exit_notice(&exited("guestbook-ui-v1-abcde")).contains("no traffic"));
    }
}
