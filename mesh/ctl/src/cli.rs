//! meshctl's command line: the commands, their flags, and what they share.
//!
//! meshctl plays the parts of three tools a mesh user knows: `kubectl` for the
//! workloads (`up`, `scale`, `get services`, `logs`), `kubectl apply` for the
//! Istio resources (`apply`, `delete`, `get virtualservices`), and `istioctl`
//! for the checks (`analyze`, `validate`). Each command lives in its own module.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use mesh_api::xds::ports;

use crate::client::Client;
use crate::runfile::RunState;
use crate::{
    analyze, apply, dashboard, get, inject, load, locate, logs, process, reset, scale, stat,
    traces, up,
};

/// micromesh's command line.
#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about, long_about = None)]
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
    /// Print Kubernetes workloads with the mesh-proxy sidecar added, like
    /// `istioctl kube-inject` (`-f -` reads stdin).
    Inject(inject::InjectArgs),
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

    /// The control plane: `--control-url`, else the one `meshctl up` runs,
    /// else the well-known port.
    pub fn control(&self) -> Client {
        if let Some(url) = &self.control_url {
            return Client::control_plane(url);
        }
        match self.run_state().ok().flatten() {
            Some(state) if process::runs_program(state.pid, "meshctl") => {
                Client::started_control_plane(&state.control_url)
            }
            Some(stale) => Client::control_plane(&stale.control_url),
            None => Client::control_plane(&format!("http://127.0.0.1:{}", ports::CONTROL)),
        }
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

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
