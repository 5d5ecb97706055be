//! Command-line arguments of the `mesh-control` binary; each one can also be
//! set from the environment, which is how `meshctl up`, a container and a
//! Kubernetes Deployment configure it.
//!
//! ```text
//! mesh-control --listen 127.0.0.1:15010 --state-dir .mesh/state
//! MESH_CONTROL_LISTEN=0.0.0.0:15010 MESH_LOG=debug mesh-control
//! mesh-control --dashboard-listen 127.0.0.1:0   # the dashboard on a free port
//! mesh-control --source kubernetes --namespace guestbook   # on a cluster (see kubernetes/)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mesh_api::xds::LEASE_MS;
use tracing_subscriber::EnvFilter;

use crate::collector::CollectorSettings;
use crate::dashboard::DashboardListen;
use crate::kubernetes::{KubernetesSource, WebhookSettings, webhook};
use crate::server::DEFAULT_STATE_DIR;
use crate::token::WriteToken;
use crate::{Error, Server, Settings};

/// micromesh control plane: service registry, config store, and the watch
/// API that pushes a config snapshot to every sidecar.
#[derive(Clone, Debug, Parser)]
#[command(name = "mesh-control", version)]
pub struct Args {
    /// Address of the HTTP API (proxies, meshctl, curl). Port 0 picks a free port.
    #[arg(long, env = "MESH_CONTROL_LISTEN", default_value = "127.0.0.1:15010")]
    pub listen: SocketAddr,

    /// Address of the secure API (mutual TLS, istiod's 15012): proxies that
    /// hold a certificate announce and watch there as their identity. `off`
    /// serves plaintext only. Only with a CA (a write token).
    #[arg(
        long,
        env = "MESH_SECURE_LISTEN",
        default_value = "127.0.0.1:15012",
        value_name = "ADDR|off"
    )]
    pub secure_listen: String,

    /// Directory for the registry and the applied config (created if missing).
    #[arg(long, env = "MESH_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// How long an announce keeps an instance in traffic without a heartbeat.
    #[arg(long, env = "MESH_LEASE_MS", default_value_t = LEASE_MS)]
    pub lease_ms: u64,

    /// Address of the dashboard (a web page, and the same API). Default:
    /// 127.0.0.1:15014 if that port is free; `off` to run without it.
    #[arg(long, env = "MESH_DASHBOARD_LISTEN", value_name = "ADDR|off")]
    pub dashboard_listen: Option<String>,

    /// How many recent traces the embedded Zipkin collector keeps.
    #[arg(long, env = "MESH_MAX_TRACES", default_value_t = CollectorSettings::default().max_traces)]
    pub max_traces: usize,

    /// Where services, endpoints and Istio config come from: `local`
    /// (sidecars announce, `meshctl apply`) or `kubernetes` (the API
    /// server). Default: `kubernetes` inside a pod (KUBERNETES_SERVICE_HOST
    /// is set), `local` elsewhere.
    #[arg(long, env = "MESH_SOURCE", value_enum)]
    pub source: Option<SourceKind>,

    /// With `--source kubernetes`: the namespace whose Services and Istio
    /// resources make the mesh.
    #[arg(long, env = "MESH_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// With `--source kubernetes`: where the validating admission webhook
    /// serves HTTPS (`off` runs without it).
    #[arg(
        long,
        env = "MESH_WEBHOOK_LISTEN",
        default_value = "0.0.0.0:15017",
        value_name = "ADDR|off"
    )]
    pub webhook_listen: String,

    /// The Service (`NAME.NAMESPACE`) the API server calls the webhook
    /// through: the names its certificate is made for.
    #[arg(
        long,
        env = "MESH_WEBHOOK_SERVICE",
        default_value = "mesh-control.mesh-system"
    )]
    pub webhook_service: String,

    /// The write token (`token.rs`), for a control plane whose proxies are
    /// started elsewhere (containers). Give it in the environment, not on
    /// the command line, where `ps` shows it. Default: the token in
    /// `STATE_DIR/control-token`, made at the first start.
    #[arg(
        long,
        env = "MESH_CONTROL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub control_token: Option<String>,

    /// How long workload certificates live (`ca.rs`): `24h` (Istio's
    /// default), `90m`, down to `2s` for rotation tests.
    #[arg(long, env = "MESH_CERT_TTL", default_value = "24h", value_parser = crate::ca::parse_ttl)]
    pub cert_ttl: Duration,

    /// Log filter, in tracing's EnvFilter syntax: `info`, `debug`,
    /// `info,mesh_control=debug`.
    #[arg(long = "log", env = "MESH_LOG", default_value = "info")]
    pub log: String,
}

/// `--source`: where the model comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    Local,
    Kubernetes,
}

impl SourceKind {
    /// `--source` as given, or detected: a pod always has
    /// KUBERNETES_SERVICE_HOST in its environment.
    pub fn resolve(given: Option<SourceKind>, in_cluster: bool) -> SourceKind {
        given.unwrap_or(if in_cluster {
            SourceKind::Kubernetes
        } else {
            SourceKind::Local
        })
    }
}

impl Args {
    /// Parse the command line (and environment), then run until Ctrl-C or
    /// SIGTERM.
    pub async fn parse_and_run() -> Result<(), Error> {
        Args::parse().run().await
    }

    pub async fn run(self) -> Result<(), Error> {
        let filter = EnvFilter::try_new(&self.log).map_err(|e| Error::LogFilter {
            filter: self.log.clone(),
            message: e.to_string(),
        })?;
        tracing_subscriber::fmt().with_env_filter(filter).init();

        if self.lease_ms == 0 {
            return Err(Error::Usage(
                "--lease-ms (MESH_LEASE_MS) is 0: every instance would expire at once; \
                 use at least a few heartbeats' worth, e.g. 1500"
                    .into(),
            ));
        }
        if self.max_traces == 0 {
            return Err(Error::Usage(
                "--max-traces (MESH_MAX_TRACES) is 0: the collector would keep nothing; \
                 use for example 1000"
                    .into(),
            ));
        }
        let defaults = Settings::default();
        let dashboard = match &self.dashboard_listen {
            None => defaults.dashboard.clone(),
            Some(text) => DashboardListen::parse(text).map_err(Error::Usage)?,
        };
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let kubernetes = match SourceKind::resolve(self.source, in_cluster) {
            SourceKind::Local => None,
            SourceKind::Kubernetes => {
                // In a pod: its ServiceAccount token; elsewhere: ~/.kube/config.
                let client = kube::Client::try_default().await.map_err(|e| {
                    Error::Usage(format!(
                        "--source kubernetes: cannot reach the Kubernetes API ({e}); run \
                         mesh-control in a pod, or point KUBECONFIG at a cluster, or use \
                         --source local"
                    ))
                })?;
                tracing::info!(namespace = %self.namespace, "source: the Kubernetes API");
                let mut source = KubernetesSource::new(client, self.namespace.clone());
                source.webhook = self.webhook()?;
                Some(source)
            }
        };
        // On a cluster the state directory only caches the sidecars'
        // announces (the config lives in the API server). The relative
        // default would land in the image's working directory, which a
        // non-root container may not write: use the temp dir instead.
        let state_dir =
            if kubernetes.is_some() && self.state_dir == std::path::Path::new(DEFAULT_STATE_DIR) {
                std::env::temp_dir().join("mesh-control-state")
            } else {
                self.state_dir
            };
        // On Kubernetes an announce cannot become an endpoint and config
        // comes from the API server, so there is nothing a token would guard
        // (`token.rs`); locally every write needs one.
        let write_token = match (&kubernetes, self.control_token) {
            (Some(_), _) => WriteToken::Open,
            (None, Some(token)) => WriteToken::Given(token),
            (None, None) => WriteToken::StateFile,
        };
        let secure_listen = match self.secure_listen.as_str() {
            "off" => None,
            text => Some(text.parse().map_err(|e| {
                Error::Usage(format!(
                    "--secure-listen (MESH_SECURE_LISTEN) {text:?}: {e}; write an address like \
                     127.0.0.1:15012, or `off`"
                ))
            })?),
        };
        let settings = Settings {
            secure_listen,
            kubernetes,
            write_token,
            cert_ttl: self.cert_ttl,
            state_dir,
            listen: self.listen,
            lease: Duration::from_millis(self.lease_ms),
            dashboard,
            collector: CollectorSettings {
                max_traces: self.max_traces,
                ..CollectorSettings::default()
            },
            ..defaults
        };
        let server = Server::start(settings).await?;
        tracing::info!(
            "mesh-control listening on {}, state in {}",
            server.url(),
            server.state_dir().display()
        );
        match server.token_origin() {
            Some(origin) => tracing::info!("writes need the control plane's token, in {origin}"),
            None => tracing::info!("writes need no token (see mesh/control/src/token.rs)"),
        }
        match server.dashboard_url() {
            Some(url) => tracing::info!("dashboard: {url}"),
            None => tracing::info!("no dashboard (see GET /api/v1/dashboard for why)"),
        }

        shutdown_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await
    }
}

impl Args {
    /// `--webhook-listen` and `--webhook-service`, checked.
    fn webhook(&self) -> Result<Option<WebhookSettings>, Error> {
        if self.webhook_listen == "off" {
            return Ok(None);
        }
        let listen = self.webhook_listen.parse().map_err(|e| {
            Error::Usage(format!(
                "--webhook-listen (MESH_WEBHOOK_LISTEN) {:?}: {e}; write an address like \
                 0.0.0.0:15017, or `off`",
                self.webhook_listen
            ))
        })?;
        let Some((service, namespace)) = self.webhook_service.split_once('.') else {
            return Err(Error::Usage(format!(
                "--webhook-service (MESH_WEBHOOK_SERVICE) {:?}: write the Service as \
                 NAME.NAMESPACE, like mesh-control.mesh-system",
                self.webhook_service
            )));
        };
        Ok(Some(WebhookSettings {
            listen,
            dns_names: webhook::service_dns_names(service, namespace),
            inject: mesh_inject::Settings::default(),
        }))
    }
}

/// Ctrl-C, or SIGTERM from `meshctl down`, docker or the kubelet.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                return;
            }
            Err(e) => tracing::warn!("cannot listen for SIGTERM ({e}); stop with Ctrl-C"),
        }
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::warn!("cannot listen for Ctrl-C ({e}); stop by killing the process");
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_istiods_port_and_the_local_state_dir() {
        let args = Args::try_parse_from(["mesh-control"]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:15010".parse().unwrap());
        assert_eq!(args.state_dir, PathBuf::from(".mesh/state"));
        assert_eq!(args.lease_ms, LEASE_MS);
        assert_eq!(args.dashboard_listen, None);
        assert_eq!(args.max_traces, 1_000);
        assert_eq!(args.source, None);
        assert_eq!(args.namespace, "default");
    }

    #[test]
    fn the_source_is_kubernetes_in_a_pod_unless_told_otherwise() {
        assert_eq!(SourceKind::resolve(None, false), SourceKind::Local);
        assert_eq!(SourceKind::resolve(None, true), SourceKind::Kubernetes);
        assert_eq!(
            SourceKind::resolve(Some(SourceKind::Local), true),
            SourceKind::Local
        );
        let args = Args::try_parse_from([
            "mesh-control",
            "--source",
            "kubernetes",
            "--namespace",
            "guestbook",
        ])
        .unwrap();
        assert_eq!(args.source, Some(SourceKind::Kubernetes));
        assert_eq!(args.namespace, "guestbook");
        let webhook = args.webhook().unwrap().unwrap();
        assert_eq!(webhook.listen.port(), 15017);
        assert_eq!(webhook.dns_names[0], "mesh-control.mesh-system.svc");

        let off = Args::try_parse_from(["mesh-control", "--webhook-listen", "off"]).unwrap();
        assert!(off.webhook().unwrap().is_none());
        let bad = Args::try_parse_from(["mesh-control", "--webhook-service", "nodot"]).unwrap();
        let message = bad.webhook().unwrap_err().to_string();
        assert!(message.contains("NAME.NAMESPACE"), "{message}");
    }

    #[test]
    fn flags_override_defaults() {
        let args = Args::try_parse_from([
            "mesh-control",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            "/tmp/x",
            "--lease-ms",
            "300",
            "--log",
            "debug",
        ])
        .unwrap();
        assert_eq!(args.listen.port(), 0);
        assert_eq!(args.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(args.lease_ms, 300);
        assert_eq!(args.log, "debug");
    }
}
