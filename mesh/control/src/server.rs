//! Starting and stopping the control plane: settings, the listening sockets
//! (the API, its secure port, and the dashboard's), and the background tasks
//! (lease ticker, registry writer, metrics scraper).
//!
//! Two API ports, as istiod has:
//!
//! ```text
//! 15010 plaintext   reads (the dashboard, meshctl get, curl), CSRs with a bootstrap
//!                   token (ca.rs), writes with the write token (meshctl apply; the
//!                   announces of proxies that hold no certificate yet)
//! 15012 mutual TLS  the API again; a proxy's client certificate proves who it is
//!                   and the proxy announces, watches and ACKs only as itself (secure.rs)
//! ```
//!
//! What stays allowed on 15010 once identities exist: everything a human
//! or a bootstrapping proxy needs (as on istiod's 15010, which serves xDS
//! without authentication), but nothing for an instance that proved its
//! identity on 15012: its announces, watches and ACKs are refused there
//! (403), so a holder of the write token cannot take over a proxy that
//! moved to mutual TLS. Removing such an instance with the write token
//! stays allowed (an operator's act: `meshctl up` clears a killed run's
//! leftovers so); that token can already apply any routing rule. An identity claimed on 15010 is never shown.
//!
//! The binary (`args.rs`) and the tests use the same entry point,
//! [`Server::start`], so what the tests exercise is what `meshctl up` runs.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_api::xds::{LEASE_MS, ports};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::api;
use crate::collector::{self, Collector, CollectorSettings};
use crate::dashboard::{self, DashboardInfo, DashboardListen};
use crate::graph::{self, Graph, GraphSettings};
use crate::kubernetes::{self, KubernetesSource, WebhookInfo};
use crate::scrape::{self, ScrapeSettings};
use crate::state::Shared;
use crate::token::{ControlToken, WriteToken};

/// Where the control plane keeps its state unless told otherwise (relative
/// to the working directory, next to the project a learner runs it in).
pub const DEFAULT_STATE_DIR: &str = ".mesh/state";

/// The longest a long-poll may wait, whatever `waitMs` asks for: a proxy
/// whose connection died silently is noticed within this time.
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(60);

/// How the control plane runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Address of the HTTP API; port 0 picks a free one (see [`ServerHandle::addr`]).
    pub listen: SocketAddr,
    /// Where `registry.json` and `config.json` live; created if missing.
    pub state_dir: PathBuf,
    /// How long an announce keeps an instance live (`xds::LEASE_MS`).
    pub lease: Duration,
    /// How long an instance whose lease ran out stays listed (as not live)
    /// before it is dropped from the registry.
    pub forget_after: Duration,
    /// Cap on a long-poll's `waitMs`.
    pub max_watch_wait: Duration,
    /// Where the dashboard listens (`dashboard.rs`).
    pub dashboard: DashboardListen,
    /// How many traces the collector keeps (`collector/`).
    pub collector: CollectorSettings,
    /// How often proxies' metrics are scraped (`scrape.rs`).
    pub scrape: ScrapeSettings,
    /// The traffic graph's window and history (`graph.rs`).
    pub graph: GraphSettings,
    /// Where services, endpoints and Istio config come from: `None` is the
    /// local registry and `meshctl apply`; `Some` the Kubernetes API
    /// (`kubernetes/`).
    pub kubernetes: Option<KubernetesSource>,
    /// What a write (apply, announce, ACK...) must prove (`token.rs`): the
    /// binary keeps a token in the state directory; `Settings::local` is
    /// open, for in-process tests on a private loopback port.
    pub write_token: WriteToken,
    /// How long the workload certificates the CA signs live (`ca.rs`).
    pub cert_ttl: Duration,
    /// Where the secure (mutual TLS) API listens (`secure.rs`); only with
    /// a CA. `None`: plaintext only.
    pub secure_listen: Option<SocketAddr>,
}

impl Default for Settings {
    /// What the binary runs with: port 15010 (istiod's), `.mesh/state`,
    /// the protocol's lease.
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], ports::CONTROL)),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            lease: Duration::from_millis(LEASE_MS),
            forget_after: Duration::from_secs(60),
            max_watch_wait: MAX_WATCH_WAIT,
            dashboard: DashboardListen::Preferred(SocketAddr::from((
                [127, 0, 0, 1],
                ports::DASHBOARD,
            ))),
            collector: CollectorSettings::default(),
            scrape: ScrapeSettings::default(),
            graph: GraphSettings::default(),
            kubernetes: None,
            write_token: WriteToken::StateFile,
            cert_ttl: crate::ca::DEFAULT_CERT_TTL,
            secure_listen: Some(SocketAddr::from(([127, 0, 0, 1], ports::SECURE_CONTROL))),
        }
    }
}

impl Settings {
    /// For tests and embedding: a free port on 127.0.0.1 (and another for
    /// the dashboard), state in `state_dir`, writes open (no token: set
    /// `write_token` to test with one), every other setting at its default.
    pub fn local(state_dir: impl Into<PathBuf>) -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            dashboard: DashboardListen::Required(SocketAddr::from(([127, 0, 0, 1], 0))),
            state_dir: state_dir.into(),
            write_token: WriteToken::Open,
            secure_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..Settings::default()
        }
    }
}

/// The control plane. See [`Server::start`].
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Load the state directory, bind `settings.listen` and serve the API on
    /// the current Tokio runtime until [`ServerHandle::shutdown`].
    ///
    /// Fails with [`Error::State`] when a state file is corrupt or the
    /// directory is not writable, and with [`Error::Bind`] when the address
    /// is taken.
    pub async fn start(settings: Settings) -> Result<ServerHandle, Error> {
        let shutdown = CancellationToken::new();
        let listen = settings.listen;
        // Bind first: a second control plane started by mistake on the same
        // port then fails before it touches the first one's state files.
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|error| Error::Bind {
                addr: listen,
                error,
            })?;
        let addr = listener.local_addr().map_err(|error| Error::Bind {
            addr: listen,
            error,
        })?;

        let (dashboard_listener, dashboard_info) = bind_dashboard(&settings.dashboard).await?;
        let dashboard_addr = dashboard_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok());

        let collector = Arc::new(Collector::new(settings.collector.clone()));
        let graph = Arc::new(Graph::new(settings.graph.clone()));
        let scrape_settings = settings.scrape.clone();
        let kubernetes_source = settings.kubernetes.clone();
        let webhook = match &kubernetes_source {
            Some(source) => kubernetes::start_webhook(source, shutdown.clone()).await?,
            None => None,
        };
        let (webhook, webhook_task) = webhook.unzip();
        // The token file lives in the state directory: make it exist first.
        crate::store::Store::open(&settings.state_dir)?;
        let token = ControlToken::resolve(&settings.write_token, &settings.state_dir)?;
        // The CA bootstraps identities from the write token locally, from
        // service-account tokens (TokenReview) on a cluster: with neither
        // it could prove no one, so there is none.
        let ca = if let Some(source) = &kubernetes_source {
            // On a cluster the root lives in a Secret: a pod's state
            // directory dies with the pod (kubernetes/ca_root.rs).
            Some(
                kubernetes::ca_root::load_or_create(
                    source.client.clone(),
                    &source.control_namespace,
                    mesh_api::identity::DEFAULT_TRUST_DOMAIN,
                    settings.cert_ttl,
                )
                .await?,
            )
        } else if token.is_some() {
            Some(crate::ca::Ca::load_or_create(
                &settings.state_dir,
                mesh_api::identity::DEFAULT_TRUST_DOMAIN,
                settings.cert_ttl,
            )?)
        } else {
            None
        };
        let secure_listen = settings.secure_listen.filter(|_| ca.is_some());
        let control_identity = mesh_api::identity::Identity::new(
            kubernetes_source
                .as_ref()
                .map_or("default", |source| source.namespace.as_str()),
            crate::secure::CONTROL_SERVICE_ACCOUNT,
        );
        let shared = Arc::new(Shared::load(settings, shutdown.clone(), token, ca)?);
        // One API, on both ports: the dashboard's page calls it same-origin.
        let app = api::router(shared.clone())
            .merge(crate::ca::router(shared.clone()))
            .merge(collector::router(collector.clone()))
            .merge(graph::router(shared.clone(), graph.clone()))
            .merge(dashboard::api_router(shared.clone(), dashboard_info));
        // Graceful: stop accepting, let in-flight requests finish. Long-polls
        // watch the same token and answer at once, so this is quick.
        let serve = axum::serve(listener, app.clone())
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let server = tokio::spawn(async move { serve.await });
        // The secure port: the same API, each request carrying the identity
        // its client certificate proved (`secure.rs`).
        let secure = match secure_listen {
            Some(listen) => {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|error| Error::SecureBind {
                        addr: listen,
                        error,
                    })?;
                let local = listener.local_addr().map_err(|error| Error::SecureBind {
                    addr: listen,
                    error,
                })?;
                let acceptor = crate::secure::acceptor(shared.clone(), control_identity.clone())?;
                // Set once, here, before any request can be served.
                let _ = shared
                    .secure
                    .set(crate::secure::advertised(local, control_identity.clone()));
                tracing::info!(addr = %local, identity = %control_identity, "secure API (mutual TLS)");
                Some(tokio::spawn(crate::secure::serve(
                    listener,
                    acceptor,
                    app.clone(),
                    control_identity.trust_domain.clone(),
                    shutdown.clone(),
                )))
            }
            None => None,
        };
        let dashboard = dashboard_listener.map(|listener| {
            let page = app.merge(dashboard::assets_router());
            let serve = axum::serve(listener, page)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned());
            tokio::spawn(async move { serve.await })
        });
        let ticker = tokio::spawn(shared.clone().expire_leases());
        let writer = tokio::spawn(shared.clone().write_registry());
        // Retired roots leave the trust bundle when their last leaf expires.
        tokio::spawn(crate::ca::retire_roots(shared.clone()));
        let scraper = tokio::spawn(scrape::run(
            shared.clone(),
            graph.clone(),
            scrape_settings,
            shutdown.clone(),
        ));
        let source =
            kubernetes_source.map(|source| tokio::spawn(kubernetes::run(shared.clone(), source)));

        Ok(ServerHandle {
            addr,
            webhook,
            dashboard_addr,
            shared,
            collector,
            shutdown,
            tasks: Some(Tasks {
                server,
                dashboard,
                ticker,
                writer,
                scraper,
                source,
                webhook: webhook_task,
                secure,
            }),
        })
    }
}

/// A running control plane. Dropping it stops the server too (without
/// waiting); call [`ServerHandle::shutdown`] to wait until it has stopped.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    /// The admission webhook, with `--source kubernetes`.
    webhook: Option<WebhookInfo>,
    dashboard_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    collector: Arc<Collector>,
    shutdown: CancellationToken,
    tasks: Option<Tasks>,
}

/// The control plane's tasks, awaited on shutdown.
#[derive(Debug)]
struct Tasks {
    server: JoinHandle<io::Result<()>>,
    dashboard: Option<JoinHandle<io::Result<()>>>,
    ticker: JoinHandle<()>,
    writer: JoinHandle<()>,
    scraper: JoinHandle<()>,
    /// The Kubernetes watch loop, with `--source kubernetes`.
    source: Option<JoinHandle<()>>,
    /// The admission webhook's server and caBundle publisher.
    webhook: Option<JoinHandle<()>>,
    /// The secure port's server (`secure.rs`), with a CA.
    secure: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The address the API listens on (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the base URL of the API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The secure (mutual TLS) port and the identity it proves, if it runs.
    pub fn secure(&self) -> Option<&mesh_api::xds::SecureControl> {
        self.shared.secure.get()
    }

    /// The mesh's signing root certificate (PEM), if the control plane runs
    /// a CA.
    pub fn root_pem(&self) -> Option<String> {
        self.shared.ca.as_ref().map(|ca| ca.root_pem())
    }

    /// The admission webhook (address, CA), if it runs.
    pub fn webhook(&self) -> Option<&WebhookInfo> {
        self.webhook.as_ref()
    }

    /// Where the dashboard listens, if it runs.
    pub fn dashboard_addr(&self) -> Option<SocketAddr> {
        self.dashboard_addr
    }

    /// `http://127.0.0.1:PORT/`, the dashboard's page, if it runs.
    pub fn dashboard_url(&self) -> Option<String> {
        self.dashboard_addr.map(|addr| format!("http://{addr}/"))
    }

    /// The trace collector (tests read it directly).
    pub fn collector(&self) -> &Arc<Collector> {
        &self.collector
    }

    /// The current config version.
    pub fn version(&self) -> u64 {
        self.shared.version()
    }

    /// How many proxy long-polls are open right now: a dashboard number,
    /// and how a test knows a watch is parked before it changes something.
    pub fn watching(&self) -> usize {
        self.shared.watching()
    }

    /// The state directory in use.
    pub fn state_dir(&self) -> &Path {
        &self.shared.settings.state_dir
    }

    /// Where the write token lives (a file path, or the variable it came
    /// from); `None` when writes are open (`token.rs`).
    pub fn token_origin(&self) -> Option<&str> {
        self.shared.token.as_ref().map(|t| t.origin())
    }

    /// Stop accepting requests, answer pending long-polls, and wait until
    /// the server and the background tasks have stopped. Applied config is
    /// on disk before an apply is answered; the registry writer makes its
    /// last write before this returns.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.shutdown.cancel();
        if let Some(tasks) = self.tasks.take() {
            let served = tasks.server.await.map_err(Error::Task)?;
            let dashboard_served = match tasks.dashboard {
                Some(dashboard) => dashboard.await.map_err(Error::Task)?,
                None => Ok(()),
            };
            tasks.ticker.await.map_err(Error::Task)?;
            tasks.scraper.await.map_err(Error::Task)?;
            if let Some(source) = tasks.source {
                source.await.map_err(Error::Task)?;
            }
            if let Some(webhook) = tasks.webhook {
                webhook.await.map_err(Error::Task)?;
            }
            if let Some(secure) = tasks.secure {
                secure.await.map_err(Error::Task)?;
            }
            // The writer makes its last registry write before it returns.
            tasks.writer.await.map_err(Error::Task)?;
            served.map_err(Error::Serve)?;
            dashboard_served.map_err(Error::Serve)?;
        }
        tracing::info!(addr = %self.addr, "control plane stopped");
        Ok(())
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        // A test that panics drops its handle: do not leave a server behind.
        self.shutdown.cancel();
    }
}

/// Bind the dashboard's port as `listen` says. A preferred address that is
/// taken is not fatal: the control plane's real job is the proxies' config.
async fn bind_dashboard(
    listen: &DashboardListen,
) -> Result<(Option<tokio::net::TcpListener>, DashboardInfo), Error> {
    let (addr, required) = match listen {
        DashboardListen::Off => {
            let info = DashboardInfo {
                url: None,
                error: Some(
                    "the dashboard is off (--dashboard-listen off); start mesh-control with \
                     --dashboard-listen 127.0.0.1:15014 to have it"
                        .into(),
                ),
            };
            return Ok((None, info));
        }
        DashboardListen::Required(addr) => (*addr, true),
        DashboardListen::Preferred(addr) => (*addr, false),
    };
    let bound = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener.local_addr().map(|local| (listener, local)),
        Err(error) => Err(error),
    };
    match bound {
        Ok((listener, local)) => Ok((Some(listener), DashboardInfo::running(local))),
        Err(error) if required => Err(Error::DashboardBind { addr, error }),
        Err(error) => {
            let message = format!(
                "the dashboard could not listen on {addr} ({error}), so it is not running; \
                 is another mesh-control using that port? Choose another with \
                 --dashboard-listen or MESH_DASHBOARD_LISTEN"
            );
            tracing::warn!("{message}");
            Ok((
                None,
                DashboardInfo {
                    url: None,
                    error: Some(message),
                },
            ))
        }
    }
}
