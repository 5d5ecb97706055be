//! meshctl's command line: the commands, their flags, and what they share.
//!
//! meshctl plays the parts of three tools a mesh user knows: `kubectl` for the
//! workloads (`up`, `scale`, `get services`, `logs`), `kubectl apply` for the
//! Istio resources (`apply`, `delete`, `get virtualservices`), and `istioctl`
//! for the checks (`analyze`, `validate`). Each command lives in its own module.
//!
//! The same words work on a cluster (`get`, `analyze`, `stat`, `traces`,
//! `dashboard`): `Ctx::control` picks the control plane by the rule in
//! [`MODE_HELP`], and `cluster.rs` reaches it through the API server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use mesh_api::xds::ports;

use crate::client::Client;
use crate::cluster::ServiceProxy;
use crate::exec;
use crate::runfile::RunState;
use crate::{
    analyze, apply, cluster, dashboard, get, inject, load, locate, logs, process, reset, scale,
    stat, traces, up,
};

/// Which control plane a command talks to: `meshctl --help` prints this.
pub const MODE_HELP: &str = "\
Local or cluster: which control plane a command talks to, in this order:
  1. --control-url (MESH_CONTROL_URL): that URL.
  2. --context or --kubeconfig: that cluster, through its API server.
  3. a running `meshctl up` (its run file in the work dir): the local mesh.
  4. a kubeconfig (KUBECONFIG, else ~/.kube/config) with a current context:
     that cluster, as kubectl and istioctl would pick it.
  5. otherwise the last `meshctl up`'s control plane, or
     http://127.0.0.1:15010 (`meshctl up`'s default).
On a cluster, get, analyze, stat, traces and dashboard read the control plane
through the Kubernetes API server's service proxy (RBAC: `get` on
services/proxy in mesh-system; see k8s/base/meshctl-user.yaml); `meshctl dashboard`
serves it on a local port until Ctrl-C. Istio resources on a cluster are
Kubernetes objects: `kubectl apply -f` and `kubectl delete -f` them (the
admission webhook validates them as `meshctl validate` does); meshctl apply,
delete, reset, up, down, scale, restart, logs, exec and identity act on the local
mesh only (they reach processes and admin ports on this machine).";

/// micromesh's command line.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about, long_about = None, after_help = MODE_HELP)]
pub struct Args {
    #[command(flatten)]
    pub global: Ctx,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Ctx {
    /// The control plane's API; default: the one `meshctl up` started, else
    /// http://127.0.0.1:15010.
    #[arg(long, global = true, env = "MESH_CONTROL_URL", value_name = "URL")]
    pub control_url: Option<String>,
    /// Where `meshctl up` keeps state, logs and its run file; default: .mesh/
    /// in the repository.
    #[arg(long, global = true, env = "MESH_WORKDIR", value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// The micromesh repository (for the Python and Java services); default:
    /// found above the current directory or above meshctl.
    #[arg(long, global = true, env = "MESH_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Talk to the control plane of this kube context's cluster (as
    /// `kubectl --context`), even if `meshctl up` runs.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The kubeconfig to read (as `kubectl --kubeconfig`); implies cluster
    /// mode. Without it, KUBECONFIG or ~/.kube/config.
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

/// Where a command's control plane is, by the rule in [`MODE_HELP`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `--control-url`, or a running/previous `meshctl up`, or the default.
    Local { url: String, started: bool },
    /// A cluster's control plane, through its API server.
    Cluster(cluster::Target),
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the mesh locally: control plane, every service with its sidecar,
    /// and the gateway, until Ctrl-C or `meshctl down`.
    Up(up::UpArgs),
    /// Stop what `meshctl up` started (from another shell).
    Down,
    /// Start or stop instances of a running service: SERVICE[@VERSION]=N.
    Scale(scale::ScaleArgs),
    /// Restart a process of the running mesh: control-plane, ingressgateway,
    /// or an instance name.
    Restart(scale::RestartArgs),
    /// Show services, endpoints, proxies, or applied Istio resources.
    Get(get::GetArgs),
    /// Apply Istio resources (VirtualService, DestinationRule, Gateway) to the mesh.
    #[command(after_long_help = apply::APPLY_HELP)]
    Apply(apply::FileArgs),
    /// Delete Istio resources: those defined in files (-f), or KIND NAME...
    Delete(apply::DeleteArgs),
    /// Delete every applied VirtualService, DestinationRule and Gateway, and
    /// list each one deleted; services and instances are not touched.
    Reset,
    /// Check files offline, without a control plane (for CI and editors).
    #[command(after_long_help = apply::VALIDATE_HELP)]
    Validate(apply::FileArgs),
    /// Report problems in the applied configuration, like `istioctl analyze`.
    Analyze,
    /// Print (or follow) the logs of the processes `meshctl up` started.
    Logs(logs::LogsArgs),
    /// Print the dashboard's URL (and open it with --open).
    Dashboard(dashboard::DashboardArgs),
    /// Per workload and version: success rate, requests/s, p50 and p99.
    Stat(stat::StatArgs),
    /// The most recent traces as trees, broken chains flagged.
    Traces(traces::TracesArgs),
    /// Send requests at a fixed rate and report statuses, latency and which
    /// versions answered.
    Load(load::LoadArgs),
    /// Run a command as an instance's app would, its calls through that
    /// instance's sidecar (like `kubectl exec`): meshctl exec INSTANCE -- CMD...
    Exec(exec::ExecArgs),
    /// Print Kubernetes workloads with the mesh-proxy sidecar added, like
    /// `istioctl kube-inject` (`-f -` reads stdin).
    Inject(inject::InjectArgs),
    /// A workload's identity: its SPIFFE ID, certificate chain, validity and
    /// next rotation, from each of its sidecars (like `istioctl proxy-config secret`).
    Identity(crate::identity::IdentityArgs),
    /// Rotate the mesh's root CA without dropping a request: trusted by every
    /// proxy first, then signing; the old root is dropped when its last
    /// certificate expires (docs/root-rotation.md).
    RotateRoot,
}

impl Args {
    /// Parse the command line, run the command, and turn an error into a
    /// message on stderr and exit status 1.
    pub async fn parse_and_run() -> ExitCode {
        let args = Args::parse();
        match args.run().await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }

    async fn run(self) -> Result<ExitCode> {
        let ctx = self.global;
        match self.command {
            Command::Up(args) => up::run(&ctx, args).await,
            Command::Down => up::down(&ctx).await,
            Command::Scale(args) => scale::scale(&ctx, args).await,
            Command::Restart(args) => scale::restart(&ctx, args).await,
            Command::Get(args) => get::run(&ctx, args).await,
            Command::Apply(args) => apply::apply(&ctx, args).await,
            Command::Delete(args) => apply::delete(&ctx, args).await,
            Command::Reset => reset::run(&ctx).await,
            Command::Validate(args) => apply::validate(args),
            Command::Analyze => analyze::run(&ctx).await,
            Command::Logs(args) => logs::run(&ctx, args).await,
            Command::Dashboard(args) => dashboard::run(&ctx, args).await,
            Command::Stat(args) => stat::run(&ctx, args).await,
            Command::Traces(args) => traces::run(&ctx, args).await,
            Command::Load(args) => load::run(args).await,
            Command::Inject(args) => inject::run(args),
            Command::Identity(args) => crate::identity::run(&ctx, args).await,
            Command::RotateRoot => crate::identity::rotate_root(&ctx).await,
            Command::Exec(args) => exec::run(&ctx, args).await,
        }
    }
}

impl Ctx {
    /// The repository root (an error says how to point at it).
    pub fn root(&self) -> Result<PathBuf> {
        locate::repo_root(self.root.as_deref())
    }

    pub fn workdir(&self) -> PathBuf {
        let root = if self.workdir.is_some() {
            None
        } else {
            self.root().ok()
        };
        locate::workdir(self.workdir.as_deref(), root.as_deref())
    }

    /// The run file of a `meshctl up` using this work dir, if any.
    pub fn run_state(&self) -> Result<Option<RunState>> {
        RunState::load(&self.workdir())
    }

    /// The control plane, by the rule in [`MODE_HELP`].
    pub fn control(&self) -> Client {
        match self.mode() {
            Mode::Local { url, started } => {
                let client = if started {
                    Client::started_control_plane(&url)
                } else {
                    Client::control_plane(&url)
                };
                // Writes need the control plane's token (`token.rs`).
                client.with_token(crate::token::for_control_plane(&url, &self.workdir()))
            }
            Mode::Cluster(target) => Client::cluster_control_plane(ServiceProxy::new(target)),
        }
    }

    /// Local or cluster, and where (see [`MODE_HELP`]).
    pub fn mode(&self) -> Mode {
        let running = self
            .run_state()
            .ok()
            .flatten()
            .map(|state| (process::runs_program(state.pid, "meshctl"), state));
        decide(self, running, cluster::Target::default().resolve_context())
    }

    /// Print to stdout. A reader that goes away (`meshctl logs | head`) is
    /// not an error: it returns `Ok(false)`, and the command stops printing.
    pub fn emit(text: &str) -> Result<bool> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The work dir as a user would type it (relative when under the cwd).
    pub fn show(path: &Path) -> String {
        let cwd = std::env::current_dir().ok();
        match cwd.as_deref().and_then(|cwd| path.strip_prefix(cwd).ok()) {
            Some(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
            _ => path.display().to_string(),
        }
    }
}

/// The rule of [`MODE_HELP`], given what `meshctl up` left in the work dir
/// (whether its process still runs) and the kubeconfig's current context.
fn decide(ctx: &Ctx, run: Option<(bool, RunState)>, current_context: Option<String>) -> Mode {
    if let Some(url) = &ctx.control_url {
        return Mode::Local {
            url: url.clone(),
            started: false,
        };
    }
    let explicit = cluster::Target {
        kubeconfig: ctx.kubeconfig.clone(),
        context: ctx.context.clone(),
    };
    if explicit != cluster::Target::default() {
        return Mode::Cluster(explicit);
    }
    match run {
        Some((true, state)) => {
            return Mode::Local {
                url: state.control_url,
                started: true,
            };
        }
        Some((false, stale)) if current_context.is_none() => {
            return Mode::Local {
                url: stale.control_url,
                started: false,
            };
        }
        _ => {}
    }
    match current_context {
        Some(_) => Mode::Cluster(cluster::Target::default()),
        None => Mode::Local {
            url: format!("http://127.0.0.1:{}", ports::CONTROL),
            started: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Replicas;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("meshctl").chain(args.iter().copied()))
    }

    #[test]
    fn up_takes_repeated_with_and_replicas() {
        let args = parse(&[
            "up",
            "--with",
            "helloworld-service@v2",
            "--with",
            "guestbook-ui@v2",
            "--replicas",
            "helloworld-service=3",
            "--replicas",
            "guestbook-ui@v2=2",
            "--gateway-port",
            "9090",
            "--follow",
        ])
        .unwrap();
        let Command::Up(up) = args.command else {
            panic!("not up")
        };
        let with: Vec<_> = up.with.iter().map(|w| w.to_string()).collect();
        assert_eq!(with, ["helloworld-service@v2", "guestbook-ui@v2"]);
        assert_eq!(
            up.replicas[1],
            Replicas {
                service: "guestbook-ui".into(),
                version: Some("v2".into()),
                count: 2
            }
        );
        assert_eq!(up.gateway_port, 9090);
        assert_eq!(up.control_port, 15010);
        assert!(up.follow);
    }

    #[test]
    fn up_rejects_unknown_services_with_the_catalog() {
        let err = parse(&["up", "--with", "reviews@v2"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown service \"reviews\""), "{err}");
        assert!(err.contains("helloworld-service"), "{err}");
        let err = parse(&["up", "--replicas", "helloworld-service"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("SERVICE[@VERSION]=N"), "{err}");
    }

    #[test]
    fn scale_takes_service_version_and_count() {
        let args = parse(&["scale", "helloworld-service@v2=0"]).unwrap();
        let Command::Scale(scale) = args.command else {
            panic!("not scale")
        };
        assert_eq!(scale.target.version.as_deref(), Some("v2"));
        assert_eq!(scale.target.count, 0);
        assert!(parse(&["scale", "helloworld-service"]).is_err());
    }

    #[test]
    fn global_flags_go_anywhere() {
        let args = parse(&["get", "svc", "--control-url", "http://127.0.0.1:1"]).unwrap();
        assert_eq!(
            args.global.control_url.as_deref(),
            Some("http://127.0.0.1:1")
        );
        let args = parse(&["--workdir", "/tmp/w", "down"]).unwrap();
        assert_eq!(args.global.workdir.as_deref(), Some(Path::new("/tmp/w")));
    }

    #[test]
    fn apply_takes_repeated_files_and_stdin() {
        let args = parse(&["apply", "-f", "a.yaml", "-f", "labs/03", "-f", "-"]).unwrap();
        let Command::Apply(files) = args.command else {
            panic!("not apply")
        };
        assert_eq!(files.files, ["a.yaml", "labs/03", "-"].map(PathBuf::from));
        assert!(parse(&["apply"]).is_err(), "-f is required");
    }

    fn run_file(live: bool) -> Option<(bool, RunState)> {
        let state = RunState {
            control_url: "http://127.0.0.1:25010".into(),
            ..Default::default()
        };
        Some((live, state))
    }

    #[test]
    fn the_mode_follows_the_documented_order() {
        let kind = || Some("kind-micromesh".to_string());
        let local = |url: &str, started| Mode::Local {
            url: url.into(),
            started,
        };
        let ctx = |args: &[&str]| parse(&[args, &["analyze"]].concat()).unwrap().global;
        // 1. An explicit URL wins over everything.
        let url = ctx(&[
            "--control-url",
            "http://10.0.0.1:15010",
            "--context",
            "kind-x",
        ]);
        assert_eq!(
            decide(&url, run_file(true), kind()),
            local("http://10.0.0.1:15010", false)
        );
        // 2. --context / --kubeconfig: the cluster, even with `meshctl up` running.
        let explicit = ctx(&["--context", "kind-x"]);
        assert_eq!(
            decide(&explicit, run_file(true), None),
            Mode::Cluster(cluster::Target {
                kubeconfig: None,
                context: Some("kind-x".into())
            })
        );
        let file = ctx(&["--kubeconfig", "/tmp/k"]);
        assert!(matches!(decide(&file, None, None), Mode::Cluster(t) if t.kubeconfig.is_some()));
        // 3. A running `meshctl up` beats the kubeconfig's current context.
        let plain = ctx(&[]);
        assert_eq!(
            decide(&plain, run_file(true), kind()),
            local("http://127.0.0.1:25010", true)
        );
        // 4. No mesh runs here, a kubeconfig has a current context: the cluster.
        assert_eq!(
            decide(&plain, None, kind()),
            Mode::Cluster(cluster::Target::default())
        );
        assert_eq!(
            decide(&plain, run_file(false), kind()),
            Mode::Cluster(cluster::Target::default())
        );
        // 5. Neither: the last run's URL, else the well-known port.
        assert_eq!(
            decide(&plain, run_file(false), None),
            local("http://127.0.0.1:25010", false)
        );
        assert_eq!(
            decide(&plain, None, None),
            local("http://127.0.0.1:15010", false)
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
