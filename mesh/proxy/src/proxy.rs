//! Starting and stopping a proxy: bind the listeners, start the control-plane
//! client, hold the snapshot in use, shut down cleanly.
//!
//! A sidecar runs three listeners (outbound, inbound, admin), a gateway two
//! (gateway, admin). All of them share one [`Shared`]: the config, the
//! compiled snapshot behind an `ArcSwapOption` (a request loads it once, with
//! no lock), the state that outlives snapshots, and telemetry (metrics and
//! the span queue). Besides the listeners, a proxy runs the span reporter
//! (`report.rs`) and either the control-plane client or, with
//! `MESH_SNAPSHOT_FILE`, one static snapshot read at start.
//!
//! Shutdown drains as Istio's sidecar does on SIGTERM
//! ([`ProxyHandle::shutdown`]): readiness turns 503 at once and the proxy
//! leaves the control plane, the listeners keep accepting for
//! `MESH_DRAIN_DURATION` (Istio's `terminationDrainDuration`, 5 s) while
//! every response tells its client to go elsewhere (`Connection: close`,
//! HTTP/2 GOAWAY), then stop accepting; requests in flight get
//! `MESH_DRAIN_TIMEOUT` to finish, and the ones still waiting are answered
//! 503 with `Connection: close` (`listener.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use mesh_api::snapshot::{Cluster, Snapshot};
use mesh_api::xds::{ProxyAnnounce, ProxyMode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{ClusterRt, EndpointRt, StateStore};
use crate::config::{Config, advertise_for};
use crate::listener::Drain;
use crate::log::Direction;
use crate::report::{QUEUE_CAPACITY, ZipkinHttp};
use crate::rng::Rng;
use crate::table::{CompileError, Compiled};
use crate::telemetry::Telemetry;

/// How long shutdown waits for the reporter to send the last spans.
pub const REPORT_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// After the drain timeout, how long the 503s of the requests cut get to be
/// written before the proxy stops.
pub const CUT_GRACE: Duration = Duration::from_secs(1);

/// The proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot listen on {addr} for the {listener} listener ({var}): {source}. \
         Is another proxy using the port? Set {var} to another address, or port 0 for any free port."
    )]
    Bind {
        listener: &'static str,
        var: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the control-plane client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot build the HTTP client that sends spans (MESH_ZIPKIN_URL): {0}")]
    ReporterClient(#[source] reqwest::Error),
    #[error(
        "cannot read the snapshot file {path} (MESH_SNAPSHOT_FILE): {error}. \
         It must hold one JSON Snapshot, as `curl $CONTROL/v1/proxies/NAME/snapshot` prints it."
    )]
    SnapshotFile { path: PathBuf, error: String },
    #[error("the snapshot in {path} (MESH_SNAPSHOT_FILE) was rejected: {source}")]
    SnapshotRejected {
        path: PathBuf,
        #[source]
        source: CompileError,
    },
}

/// The inbound listener's PeerAuthentication, asked per connection: the
/// mode of the snapshot in use for the workload port (Istio's default
/// PERMISSIVE before the first snapshot) and the current certificate's
/// server config.
fn inbound_admission(shared: Arc<Shared>) -> crate::listener::Admit {
    Arc::new(move || {
        let mode = shared.current.load().as_deref().map_or(
            mesh_api::config::MtlsMode::Permissive,
            |table| {
                table
                    .snapshot
                    .inbound
                    .mtls_for_port(mesh_api::xds::ports::SERVICE)
            },
        );
        let tls = shared.mesh_tls.server().unwrap_or_else(|error| {
            tracing::warn!(%error, "no mutual TLS on the inbound listener");
            None
        });
        crate::listener::Admission { mode, tls }
    })
}

/// Everything the listeners and the control-plane client share.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    /// The snapshot in use; `None` until the first one is accepted.
    pub current: ArcSwapOption<Compiled>,
    pub rng: Rng,
    /// The inbound listener's target: the app, as a one-endpoint cluster.
    pub app: (Arc<ClusterRt>, Arc<EndpointRt>),
    pub advertise: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// Metrics, the span queue, and what every span says about this proxy.
    pub telemetry: Telemetry,
    /// The drain's phases; `/ready` reports 503 once it began.
    pub drain: Drain,
    /// The workload certificate, renewed by `identity.rs`'s worker when the
    /// proxy has a bootstrap token; always `None` otherwise.
    pub identity: crate::identity::Current,
    /// mTLS configs made from that certificate (`tls.rs`): the inbound
    /// listener's and one per server identity for the outbound pools.
    pub mesh_tls: Arc<crate::tls::MeshTls>,
    store: StateStore,
    status: Mutex<ApplyStatus>,
}

/// What `/config_dump` reports besides the snapshot.
#[derive(Clone, Debug, Default)]
pub struct ApplyStatus {
    pub last_rejected: Option<(u64, String)>,
}

impl Shared {
    /// Compile `snapshot` and swap it in.
    ///
    /// A snapshot that fails the shared check (`mesh_api::check`) is not
    /// thrown away whole: [`mesh_api::check::isolate`] keeps the last good
    /// version of each rejected virtual host, leaves out a bad endpoint, and
    /// the rest (endpoints above all) is applied. The version is still
    /// NACKed with every reason, as Envoy NACKs a resource type while it
    /// keeps applying the others, so the control plane shows what was held
    /// back. Only a snapshot that fails even after isolation is rejected
    /// whole, and the current one keeps serving.
    pub fn apply(&self, snapshot: Snapshot) -> Result<(), CompileError> {
        // One snapshot at a time: the state store is reconciled against the
        // snapshot that wins.
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let version = snapshot.version;
        let (snapshot, held_back) = match mesh_api::check::check_snapshot(&snapshot) {
            Ok(()) => (snapshot, Vec::new()),
            Err(_) => {
                let current = self.current.load();
                let last_good = current.as_ref().map(|c| c.snapshot.as_ref());
                mesh_api::check::isolate(snapshot, last_good)
            }
        };
        match Compiled::compile(snapshot, &self.store) {
            Ok(compiled) => {
                let compiled = Arc::new(compiled);
                // The roots mTLS trusts come with the snapshot (`tls.rs`).
                if let Err(error) = self
                    .mesh_tls
                    .set_trust_bundle(&compiled.snapshot.trust_bundle)
                {
                    tracing::warn!(version, %error, "snapshot's trust bundle refused; keeping the last one");
                }
                self.current.store(Some(compiled.clone()));
                self.store
                    .retain(compiled.clusters.values().map(|c| c.as_ref()));
                if held_back.is_empty() {
                    tracing::info!(version, "snapshot accepted");
                    return Ok(());
                }
                let error = CompileError::PartlyApplied {
                    reasons: held_back
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                };
                tracing::warn!(version, %error, "snapshot applied in part");
                status.last_rejected = Some((version, error.to_string()));
                Err(error)
            }
            Err(error) => {
                tracing::warn!(version, %error, "snapshot rejected; keeping the last good one");
                status.last_rejected = Some((version, error.to_string()));
                Err(error)
            }
        }
    }

    /// Record a snapshot that could not even be read.
    pub fn reject(&self, version: u64, reason: &str) {
        tracing::warn!(
            version,
            reason,
            "snapshot rejected; keeping the last good one"
        );
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_rejected = Some((version, reason.to_string()));
    }

    pub fn status(&self) -> ApplyStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The actual addresses a started proxy listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyAddrs {
    /// Sidecar only: the app's HTTP proxy.
    pub outbound: Option<SocketAddr>,
    /// Sidecar only: where other sidecars send this workload's traffic.
    pub inbound: Option<SocketAddr>,
    /// What other sidecars dial for `inbound` (announced to the control plane).
    pub advertise: Option<SocketAddr>,
    /// Gateway only: where users connect.
    pub gateway: Option<SocketAddr>,
    pub admin: SocketAddr,
}

/// Starts proxies; see the crate docs.
pub struct Proxy;

impl Proxy {
    /// Bind every listener, start serving, and (with a `control_url`) start
    /// the control-plane client. Returns once the listeners are bound.
    pub async fn start(config: Config) -> Result<ProxyHandle, StartError> {
        let shutdown = CancellationToken::new();
        let drain = Drain::default();
        let tasks = TaskTracker::new();

        let admin = bind("admin", "MESH_ADMIN_ADDR", config.admin_addr).await?;
        let (outbound, inbound, gateway) = match config.mode {
            ProxyMode::Sidecar => (
                Some(bind("outbound", "MESH_OUTBOUND_ADDR", config.outbound_addr).await?),
                Some(bind("inbound", "MESH_INBOUND_ADDR", config.inbound_addr).await?),
                None,
            ),
            ProxyMode::Gateway => (
                None,
                None,
                Some(bind("gateway", "MESH_GATEWAY_ADDR", config.gateway_addr).await?),
            ),
        };
        let local = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        let inbound_addr = local(&inbound);
        let addrs = ProxyAddrs {
            outbound: local(&outbound),
            inbound: inbound_addr,
            advertise: config.advertise_addr.or(inbound_addr.map(advertise_for)),
            gateway: local(&gateway),
            admin: admin.local_addr().unwrap_or(config.admin_addr),
        };

        // Read the static snapshot before serving anything: a bad file stops
        // the proxy here, naming the file.
        let static_snapshot = match &config.snapshot_file {
            Some(path) => Some((path.clone(), read_snapshot(path)?)),
            None => None,
        };

        // Spans leave through a bounded queue to the reporter task.
        let stop_reporter = CancellationToken::new();
        let ip = crate::telemetry::local_ip(config.mode, addrs.advertise, addrs.gateway);
        let mut telemetry = Telemetry::new(&config, ip);
        let reporter = match (&config.zipkin_url, config.telemetry) {
            (Some(url), true) => {
                let sink = ZipkinHttp::new(url.clone()).map_err(StartError::ReporterClient)?;
                let counters = telemetry.counters();
                let (queue, rx) = crate::report::queue(QUEUE_CAPACITY, &counters);
                telemetry.spans = Some(queue);
                Some(tokio::spawn(crate::report::run(
                    rx,
                    sink,
                    counters,
                    stop_reporter.clone(),
                )))
            }
            _ => None,
        };

        // The workload certificate: only with a control plane that runs a
        // CA and a bootstrap token for it (`identity.rs`).
        let identity = match (&config.control_url, &config.identity_token) {
            (Some(base), Some(token)) => {
                let ca = crate::identity::HttpCa {
                    http: crate::control::client(None)?,
                    base: base.clone(),
                    bootstrap_token: token.clone(),
                };
                let who =
                    mesh_api::identity::Identity::new(&config.namespace, &config.service_account);
                crate::identity::start(who, ca, shutdown.clone()).0
            }
            _ => crate::identity::none(),
        };
        let mesh_tls = Arc::new(crate::tls::MeshTls::new(
            identity.clone(),
            mesh_api::identity::DEFAULT_TRUST_DOMAIN,
        ));
        let shared = Arc::new(Shared {
            identity,
            mesh_tls: mesh_tls.clone(),
            rng: Rng::from_seed(config.seed),
            app: app_target(&config),
            advertise: addrs.advertise,
            admin_addr: addrs.admin,
            telemetry,
            current: ArcSwapOption::empty(),
            store: StateStore::with_tls(mesh_tls.clone()),
            status: Mutex::new(ApplyStatus::default()),
            drain: drain.clone(),
            config,
        });
        if let Some((path, snapshot)) = static_snapshot {
            shared
                .apply(snapshot)
                .map_err(|source| StartError::SnapshotRejected { path, source })?;
        }

        let limits = shared.config.limits;
        let s = shared.clone();
        crate::listener::serve(
            "admin",
            admin,
            limits,
            drain.clone(),
            tasks.clone(),
            move |_, req| crate::admin::handle(s.clone(), req),
        );
        if let Some(listener) = outbound {
            let s = shared.clone();
            crate::listener::serve(
                "outbound",
                listener,
                limits,
                drain.clone(),
                tasks.clone(),
                move |peer: crate::listener::Peer, req| {
                    crate::outbound::handle(s.clone(), Direction::Outbound, peer.address, req)
                },
            );
        }
        if let Some(listener) = inbound {
            let s = shared.clone();
            crate::listener::serve_admitting(
                "inbound",
                listener,
                limits,
                drain.clone(),
                tasks.clone(),
                Some(inbound_admission(shared.clone())),
                move |peer, req| crate::inbound::handle(s.clone(), peer, req),
            );
        }
        if let Some(listener) = gateway {
            let s = shared.clone();
            crate::listener::serve(
                "gateway",
                listener,
                limits,
                drain.clone(),
                tasks.clone(),
                move |peer: crate::listener::Peer, req| {
                    crate::outbound::handle(s.clone(), Direction::Gateway, peer.address, req)
                },
            );
        }

        let control = match shared.config.control_url.clone() {
            Some(base) => {
                let client = crate::control::client(shared.config.control_token.as_ref())?;
                // Plaintext first, mutual TLS once it holds a certificate.
                let link = Arc::new(
                    crate::control::Link::new(client, base, shared.identity.clone())
                        .trusting(shared.mesh_tls.clone()),
                );
                tasks.spawn(crate::control::run(
                    shared.clone(),
                    link.clone(),
                    shutdown.clone(),
                ));
                Some(link)
            }
            None => None,
        };
        tracing::info!(
            instance = %shared.config.instance,
            mode = ?shared.config.mode,
            ?addrs,
            control_plane = shared.config.control_url.as_deref().unwrap_or("none (static snapshots)"),
            spans_to = shared.config.zipkin_url.as_deref().filter(|_| shared.config.telemetry).unwrap_or("nowhere"),
            telemetry = shared.config.telemetry,
            "proxy started"
        );
        Ok(ProxyHandle {
            shared,
            addrs,
            shutdown,
            drain,
            tasks,
            control,
            reporter: reporter.map(|task| (task, stop_reporter)),
        })
    }
}

async fn bind(
    listener: &'static str,
    var: &'static str,
    addr: SocketAddr,
) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            listener,
            var,
            addr,
            source,
        })
}

/// Read a `Snapshot` from a JSON file (`MESH_SNAPSHOT_FILE`).
fn read_snapshot(path: &std::path::Path) -> Result<Snapshot, StartError> {
    let error = |error: String| StartError::SnapshotFile {
        path: path.to_path_buf(),
        error,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| error(format!("invalid JSON: {e}")))
}

/// The inbound side's one destination: the local app.
fn app_target(config: &Config) -> (Arc<ClusterRt>, Arc<EndpointRt>) {
    let name = format!("inbound|{}", Cluster::name_for(&config.service, None));
    let endpoint = Arc::new(EndpointRt::new(
        &config.app_addr.to_string(),
        &config.instance,
        config.labels.clone(),
        &config.service,
        Default::default(),
    ));
    let cluster = Arc::new(ClusterRt {
        name: name.into(),
        service: config.service.as_str().into(),
        subset: None,
        load_balancer: Default::default(),
        connection_pool: Default::default(),
        outlier_detection: None,
        endpoints: vec![endpoint.clone()],
        state: Default::default(),
    });
    (cluster, endpoint)
}

/// A running proxy.
pub struct ProxyHandle {
    shared: Arc<Shared>,
    addrs: ProxyAddrs,
    /// Stops the control-plane client.
    shutdown: CancellationToken,
    drain: Drain,
    tasks: TaskTracker,
    control: Option<Arc<crate::control::Link>>,
    /// The span reporter task and the token that makes it send its last
    /// batch and stop.
    reporter: Option<(tokio::task::JoinHandle<()>, CancellationToken)>,
}

impl ProxyHandle {
    pub fn addrs(&self) -> ProxyAddrs {
        self.addrs
    }

    /// The workload certificate as the identity worker keeps it
    /// (`identity.rs`): `None` until issued, or without a bootstrap token.
    pub fn identity(&self) -> crate::identity::Current {
        self.shared.identity.clone()
    }

    /// The roots mutual TLS trusts now (`tls.rs`): the last snapshot's
    /// trust bundle, else the certificate's.
    pub fn trust_bundle(&self) -> Option<Vec<String>> {
        self.shared.mesh_tls.trust_bundle()
    }

    /// The outbound listener (sidecar): point the app's `HTTP_PROXY` here.
    pub fn outbound_addr(&self) -> Option<SocketAddr> {
        self.addrs.outbound
    }

    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.addrs.inbound
    }

    /// The address announced for the inbound listener.
    pub fn advertise_addr(&self) -> Option<SocketAddr> {
        self.addrs.advertise
    }

    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.addrs.gateway
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.addrs.admin
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn instance(&self) -> &str {
        &self.shared.config.instance
    }

    /// What this proxy announces to the control plane (with `ready` as
    /// given): handy for building a `Snapshot` endpoint in tests.
    pub fn announce(&self, ready: bool) -> ProxyAnnounce {
        crate::control::announce_of(&self.shared, ready)
    }

    /// The snapshot in use, if any.
    pub fn current_snapshot(&self) -> Option<Arc<Snapshot>> {
        self.shared
            .current
            .load()
            .as_ref()
            .map(|c| c.snapshot.clone())
    }

    /// Compile and swap in `snapshot`, as if the control plane had pushed it:
    /// `Ok` is an ACK; `Err` a NACK. A NACKed snapshot is applied in part if
    /// it can be (`PartlyApplied`: each rejected virtual host keeps its last
    /// good version); otherwise the previous snapshot stays in use.
    pub fn apply_snapshot(&self, snapshot: Snapshot) -> Result<(), CompileError> {
        self.shared.apply(snapshot)
    }

    /// The last rejected version and why, if any.
    pub fn last_rejected(&self) -> Option<(u64, String)> {
        self.shared.status().last_rejected
    }

    /// The proxy's metrics, as `/stats/prometheus` serves them.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.shared.telemetry.metrics
    }

    /// Drain, as Istio's sidecar does on SIGTERM: readiness 503 and leave
    /// the mesh (`DELETE` at the control plane) at once; keep accepting for
    /// the drain duration, every response saying `Connection: close` (HTTP/2:
    /// GOAWAY); stop accepting; let requests in flight finish within the
    /// drain timeout, then answer the ones still waiting 503; then send the
    /// spans still queued (for up to [`REPORT_FLUSH_TIMEOUT`]).
    pub async fn shutdown(mut self) {
        let limits = self.shared.config.limits;
        let began = tokio::time::Instant::now();
        self.drain.draining.cancel();
        self.shutdown.cancel();
        tracing::info!(
            drain_duration = ?limits.drain_duration,
            drain_timeout = ?limits.drain_timeout,
            "draining: not ready, still accepting for the drain duration (MESH_DRAIN_DURATION)"
        );
        if let Some(link) = &self.control {
            crate::control::leave(&self.shared, link).await;
        }
        // Clients (and Kubernetes' endpoints controller) need this long to
        // see that the proxy is leaving; until then new connections are
        // still served, each told to close after its response.
        tokio::time::sleep_until(began + limits.drain_duration).await;
        self.drain.closing.cancel();
        self.tasks.close();
        if tokio::time::timeout(limits.drain_timeout, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                drain_timeout = ?limits.drain_timeout,
                "drain timeout (MESH_DRAIN_TIMEOUT): answering the requests still in flight with 503"
            );
            self.drain.cut.cancel();
            let _ = tokio::time::timeout(CUT_GRACE, self.tasks.wait()).await;
        }
        if let Some((task, stop)) = self.reporter.take() {
            stop.cancel();
            if tokio::time::timeout(REPORT_FLUSH_TIMEOUT, task)
                .await
                .is_err()
            {
                tracing::warn!("the last spans could not be sent in time");
            }
        }
    }
}

impl Drop for ProxyHandle {
    /// A handle dropped without `shutdown()` still stops its listeners.
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.drain.closing.cancel();
        if let Some((_, stop)) = &self.reporter {
            stop.cancel();
        }
    }
}
