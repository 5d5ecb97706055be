//! Test helpers: a whole mesh in one test process, on 127.0.0.1:0.
//!
//! linkerd2-proxy tests its proxy by starting it in-process next to fake
//! upstreams and clients; micromesh does the same with every part:
//!
//! ```text
//! test client --HTTP proxy--> [client sidecar] --> [sidecar] --> Upstream (fake app)
//!                                   ^                  ^
//!                                   '--- Mesh: mesh-control in-process ---'
//! ```
//!
//! - [`Mesh::start`]: a control plane with its state in a temp dir.
//! - [`Mesh::instance`]: one "pod": a fake app ([`Upstream`]) and its sidecar,
//!   announced to the control plane exactly as a real one is.
//! - [`Mesh::client`]: a sidecar for the test to send requests through.
//! - [`Mesh::apply`]: Istio YAML, through the same API meshctl uses.
//! - [`Upstream`]: the one fake app of the suite (the proxy's tests run it
//!   bare, next to a sidecar they configure by hand).
//! - [`wait_until`] / [`wait_for`]: poll a condition with a deadline (never
//!   a bare sleep; an error ends the wait); [`retry_until_ok`]: retry an
//!   action that may fail while the mesh converges.
//! - [`binomial_tolerance`]: how far a count may stray from its expectation.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::config::{ApplyRequest, ApplyResponse, ConfigErrors, SourceFile};
use mesh_api::xds::{ProxyStatus, ServiceStatus};
use mesh_control::{Server, ServerHandle, Settings};
use mesh_proxy::{Config, Proxy, ProxyHandle};
use serde_json::json;
use tokio::net::TcpListener;

/// How long the helpers wait for the mesh to converge before failing.
pub const CONVERGE: Duration = Duration::from_secs(10);

/// Log to the test's output (`cargo test -- --nocapture` shows it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

// === impl Mesh ===

/// A control plane plus the proxies and apps a test starts around it.
pub struct Mesh {
    control: Option<ServerHandle>,
    control_addr: SocketAddr,
    /// The secure (mutual TLS) port, kept across restarts as `meshctl up`
    /// keeps it: proxies that moved there find it again.
    secure_addr: Option<SocketAddr>,
    state: tempfile::TempDir,
    lease: Duration,
    http: reqwest::Client,
    /// The control plane's write token (mesh/control/src/token.rs): its
    /// sidecars announce with it and `apply` sends it, as under `meshctl up`.
    token: String,
}

impl Mesh {
    /// A control plane on a free port, state in a fresh temp dir, with a
    /// short lease so a killed instance leaves quickly.
    pub async fn start() -> Result<Mesh> {
        Self::start_with_lease(Duration::from_millis(1_000)).await
    }

    pub async fn start_with_lease(lease: Duration) -> Result<Mesh> {
        Self::start_with(|settings| settings.lease = lease).await
    }

    /// [`Mesh::start`], with the control plane's settings changed first
    /// (a short certificate lifetime for a rotation test, say).
    pub async fn start_with(edit: impl FnOnce(&mut Settings)) -> Result<Mesh> {
        init_tracing();
        let state = tempfile::tempdir().context("creating a temp state dir")?;
        let token = mesh_control::token::random_hex(32)?;
        let mut settings = Settings::local(state.path());
        settings.lease = Duration::from_millis(1_000);
        edit(&mut settings);
        let lease = settings.lease;
        settings.write_token = mesh_control::WriteToken::Given(token.clone());
        let control = Server::start(settings).await?;
        Ok(Mesh {
            control_addr: control.addr(),
            secure_addr: control
                .secure()
                .map(|secure| SocketAddr::from(([127, 0, 0, 1], secure.port))),
            control: Some(control),
            state,
            lease,
            http: plain_client(),
            token,
        })
    }

    pub fn control_url(&self) -> String {
        format!("http://{}", self.control_addr)
    }

    /// The control plane's write token (for tests that make their own
    /// proxies' bootstrap tokens, `mesh_api::identity::bootstrap_token`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The running control plane.
    pub fn control(&self) -> Option<&ServerHandle> {
        self.control.as_ref()
    }

    /// Stop the control plane (proxies keep their last snapshot).
    pub async fn stop_control(&mut self) -> Result<()> {
        if let Some(control) = self.control.take() {
            control.shutdown().await?;
        }
        Ok(())
    }

    /// Start the control plane again, same address, same state dir.
    pub async fn restart_control(&mut self) -> Result<()> {
        self.stop_control().await?;
        let mut settings = Settings::local(self.state.path());
        settings.listen = self.control_addr;
        settings.secure_listen = self.secure_addr;
        settings.lease = self.lease;
        settings.write_token = mesh_control::WriteToken::Given(self.token.clone());
        self.control = Some(Server::start(settings).await?);
        Ok(())
    }

    /// One pod: a fake app answering as `service`/`version`, and its sidecar.
    pub async fn instance(&self, service: &str, version: &str) -> Result<Instance> {
        let name = format!("{service}-{version}-{:05x}", fastrand::u32(..0xfffff));
        let upstream = Upstream::echo(&name, version).await;
        let sidecar = self.sidecar(service, version, &name, upstream.addr).await?;
        Ok(Instance {
            name,
            upstream,
            sidecar,
        })
    }

    /// A sidecar for the test's own requests (it is an instance of
    /// `test-client`, whose app is a fake that nobody calls).
    pub async fn client(&self) -> Result<Instance> {
        self.instance("test-client", "v1").await
    }

    /// A gateway proxy on a free port.
    pub async fn gateway(&self) -> Result<ProxyHandle> {
        let settings = HashMap::from([
            ("MESH_MODE", "gateway".to_string()),
            ("MESH_CONTROL_URL", self.control_url()),
            ("MESH_CONTROL_TOKEN", self.token.clone()),
            // The gateway holds a workload identity too (its service account
            // is its name, `ingressgateway`), as Istio's ingress gateway does.
            (
                "MESH_IDENTITY_TOKEN",
                mesh_api::identity::bootstrap_token(
                    &self.token,
                    &mesh_api::identity::Identity::new("default", "ingressgateway"),
                ),
            ),
            ("MESH_ADMIN_ADDR", "127.0.0.1:0".to_string()),
            ("MESH_GATEWAY_ADDR", "127.0.0.1:0".to_string()),
        ]);
        Ok(Proxy::start(config_from(settings)?).await?)
    }

    async fn sidecar(
        &self,
        service: &str,
        version: &str,
        instance: &str,
        app: SocketAddr,
    ) -> Result<ProxyHandle> {
        let settings = HashMap::from([
            ("MESH_SERVICE", service.to_string()),
            ("MESH_VERSION", version.to_string()),
            ("MESH_INSTANCE", instance.to_string()),
            ("MESH_CONTROL_URL", self.control_url()),
            ("MESH_CONTROL_TOKEN", self.token.clone()),
            // Its own identity's bootstrap token: it keeps a workload
            // certificate from the control plane's CA, as under `meshctl up`.
            (
                "MESH_IDENTITY_TOKEN",
                mesh_api::identity::bootstrap_token(
                    &self.token,
                    &mesh_api::identity::Identity::new("default", service),
                ),
            ),
            ("MESH_APP_ADDR", app.to_string()),
            ("MESH_OUTBOUND_ADDR", "127.0.0.1:0".to_string()),
            ("MESH_INBOUND_ADDR", "127.0.0.1:0".to_string()),
            ("MESH_ADMIN_ADDR", "127.0.0.1:0".to_string()),
        ]);
        Ok(Proxy::start(config_from(settings)?).await?)
    }

    /// Apply Istio YAML through the control plane's API (as `meshctl apply`).
    pub async fn apply(&self, yaml: &str) -> Result<ApplyResponse> {
        self.config_call("apply", yaml).await
    }

    /// Delete the resources named in `yaml` (as `meshctl delete -f`).
    pub async fn delete(&self, yaml: &str) -> Result<ApplyResponse> {
        self.config_call("delete", yaml).await
    }

    async fn config_call(&self, verb: &str, yaml: &str) -> Result<ApplyResponse> {
        let request = ApplyRequest {
            files: vec![SourceFile {
                name: "test.yaml".into(),
                content: yaml.into(),
            }],
        };
        let response = self
            .http
            .post(format!("{}/v1/config/{verb}", self.control_url()))
            .bearer_auth(&self.token)
            .json(&request)
            .send()
            .await?;
        if response.status().is_success() {
            return Ok(response.json().await?);
        }
        let status = response.status();
        let body = response.text().await?;
        match serde_json::from_str::<ConfigErrors>(&body) {
            Ok(errors) if !errors.errors.is_empty() => Err(anyhow!(
                "{verb} rejected ({status}): {}",
                errors
                    .errors
                    .iter()
                    .map(|e| format!("{} {} {}: {}", e.file, e.resource, e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            _ => Err(anyhow!("{verb} failed ({status}): {body}")),
        }
    }

    /// The registry as `meshctl get services` shows it.
    pub async fn services(&self) -> Result<Vec<ServiceStatus>> {
        Ok(self
            .http
            .get(format!("{}/v1/services", self.control_url()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Every proxy the control plane knows, with what it ACKed or NACKed,
    /// as `meshctl get proxies` shows them.
    pub async fn proxies(&self) -> Result<Vec<ProxyStatus>> {
        Ok(self
            .http
            .get(format!("{}/v1/proxies", self.control_url()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// The control plane's current config version.
    pub fn version(&self) -> Option<u64> {
        self.control.as_ref().map(|c| c.version())
    }
}

/// Proxy settings from `(variable, value)` pairs, as the environment would give them.
///
/// A test's proxy stops at once, as `Config::local_sidecar`'s do: without a
/// `MESH_DRAIN_DURATION` of its own it keeps no drain window (the proxy's
/// default, 5 s, would add 5 s to every `shutdown()`); requests in flight
/// still get the drain timeout to finish.
fn config_from(mut settings: HashMap<&str, String>) -> Result<Config> {
    settings
        .entry("MESH_DRAIN_DURATION")
        .or_insert_with(|| "0".to_string());
    let settings: HashMap<String, String> = settings
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    Ok(Config::from_strings(&settings)?)
}

/// Wait until `proxy` runs a snapshot whose cluster `cluster` has
/// `endpoints` endpoints.
pub async fn wait_for_endpoints(
    proxy: &ProxyHandle,
    cluster: &str,
    endpoints: usize,
) -> Result<()> {
    let count = || {
        proxy.current_snapshot().map(|snapshot| {
            let found = snapshot
                .clusters
                .iter()
                .find(|c| c.name == cluster)
                .map(|c| c.endpoints.len())
                .unwrap_or(0);
            (found, snapshot.version)
        })
    };
    let what = format!(
        "{} to see {endpoints} endpoint(s) of {cluster}",
        proxy.instance()
    );
    wait_until(&what, CONVERGE, || async {
        Ok(matches!(count(), Some((found, _)) if found == endpoints))
    })
    .await
    .with_context(|| match count() {
        Some((found, version)) => format!("it has {found} endpoint(s) at version {version}"),
        None => "it has no snapshot yet".to_string(),
    })
}

/// Wait until `proxy` runs snapshot `version` or newer.
pub async fn wait_for_version(proxy: &ProxyHandle, version: u64) -> Result<()> {
    let running = || proxy.current_snapshot().map(|s| s.version);
    wait_until(
        &format!("{} to run version {version}", proxy.instance()),
        CONVERGE,
        || async { Ok(running().is_some_and(|v| v >= version)) },
    )
    .await
    .with_context(|| format!("it runs version {:?}", running()))
}

// === impl Instance ===

/// A fake app and its sidecar, registered like a pod.
pub struct Instance {
    pub name: String,
    pub upstream: Upstream,
    pub sidecar: ProxyHandle,
}

impl Instance {
    /// A client that sends every request through this sidecar's outbound
    /// listener, the way the app's `HTTP_PROXY` does.
    pub fn http(&self) -> reqwest::Client {
        client_via(
            self.sidecar
                .outbound_addr()
                .expect("a sidecar has an outbound listener"),
        )
    }
}

// === impl Upstream ===

/// What a fake app answers: status and body, given the request's head and
/// how many requests it answered before this one.
pub type Behaviour = Arc<dyn Fn(&http::request::Parts, usize) -> (u16, String) + Send + Sync>;

/// A fake app on 127.0.0.1:0, the one every test uses: it answers HTTP/1.1
/// and HTTP/2 (prior knowledge) with what its [`Behaviour`] says, counts
/// requests and TCP connections, keeps the last request's head, and has
/// knobs to fail or slow down like helloworld-service's FAILURE_RATE and
/// DELAY_MS. [`Upstream::echo`] is the app [`Mesh::instance`] runs; the
/// proxy's own tests use [`Upstream::start`] and [`Upstream::with`].
///
/// Clones share one app; it stops when the last clone is dropped, or at
/// [`Upstream::stop`].
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// The instance name it answers as (its endpoint's `instance`).
    pub name: String,
    state: Arc<UpstreamState>,
    server: Arc<AbortOnDrop>,
}

struct UpstreamState {
    behaviour: Behaviour,
    /// Answers carry `content-type: application/json`.
    json: bool,
    hits: AtomicUsize,
    connections: AtomicUsize,
    /// Share of requests answered 503, in millionths.
    failure_ppm: AtomicU64,
    delay_ms: AtomicU64,
    last_request: std::sync::Mutex<Option<http::request::Parts>>,
}

/// The accept loop's task, aborted when the last [`Upstream`] clone goes.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Upstream {
    /// Answers 200 with its own name as the body.
    pub async fn start(name: &str) -> Upstream {
        let body = name.to_string();
        Upstream::with(name, Arc::new(move |_, _| (200, body.clone()))).await
    }

    /// Answers what `behaviour` says.
    pub async fn with(name: &str, behaviour: Behaviour) -> Upstream {
        Upstream::serve(name, behaviour, false).await
    }

    /// Answers what `behaviour` says, each answer `delay` after the request
    /// arrived (the request is counted at once).
    pub async fn with_delay(name: &str, behaviour: Behaviour, delay: Duration) -> Upstream {
        let upstream = Upstream::with(name, behaviour).await;
        upstream.set_delay(delay);
        upstream
    }

    /// Answers 200 with JSON naming its instance and version and echoing the
    /// path and headers it received (an [`Answer`]).
    pub async fn echo(instance: &str, version: &str) -> Upstream {
        let (name, version) = (instance.to_string(), version.to_string());
        let behaviour: Behaviour = Arc::new(move |parts: &http::request::Parts, _| {
            let headers: BTreeMap<String, String> = parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = json!({
                "instance": name,
                "version": version,
                "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                "headers": headers,
            });
            (200, body.to_string())
        });
        Upstream::serve(instance, behaviour, true).await
    }

    async fn serve(name: &str, behaviour: Behaviour, json: bool) -> Upstream {
        // Binding 127.0.0.1:0 fails only on a broken machine; a test
        // cannot do anything better than stop there.
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a fake app binds 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let state = Arc::new(UpstreamState {
            behaviour,
            json,
            hits: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            failure_ppm: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            last_request: std::sync::Mutex::new(None),
        });
        let accepting = state.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepting.connections.fetch_add(1, Ordering::SeqCst);
                let state = accepting.clone();
                // A connection outlives the accept loop: `stop` refuses
                // new connections, the ones open finish their requests.
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req: http::Request<Incoming>| answer(state.clone(), req));
                    let mut builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    // hyper's defence against rapid reset (GOAWAY
                    // `too_many_resets` once more than 20 streams were reset
                    // before the app took them; `None` would keep h2's 20)
                    // is off: a fake app that cut its connection when a
                    // sidecar forwards its client's resets would make the
                    // sidecar look like it opened extra connections. The
                    // sidecar's own listeners keep the defence.
                    builder.http2().max_pending_accept_reset_streams(usize::MAX);
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            state,
            server: Arc::new(AbortOnDrop(server.abort_handle())),
        }
    }

    /// Requests answered (or being answered) so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The head of the last request that arrived, if any did.
    pub fn last_request(&self) -> Option<http::request::Parts> {
        self.state
            .last_request
            .lock()
            .expect("the last request is not poisoned")
            .clone()
    }

    /// This app as an endpoint of a snapshot's cluster.
    pub fn endpoint(&self) -> mesh_api::snapshot::Endpoint {
        mesh_api::snapshot::Endpoint {
            instance: self.name.clone(),
            address: self.addr.to_string(),
            labels: BTreeMap::new(),
            identity: None,
            tls_mode: Default::default(),
        }
    }

    /// Answer this share (0.0..=1.0) of requests with 503.
    pub fn set_failure_rate(&self, rate: f64) {
        let ppm = (rate.clamp(0.0, 1.0) * 1_000_000.0) as u64;
        self.state.failure_ppm.store(ppm, Ordering::Relaxed);
    }

    /// Answer every request `delay` after it arrived.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Stop answering: the port refuses connections from now on.
    pub fn stop(&self) {
        self.server.0.abort();
    }
}

async fn answer(
    state: Arc<UpstreamState>,
    req: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
    let n = state.hits.fetch_add(1, Ordering::SeqCst);
    let (mut status, text) = (state.behaviour)(&parts, n);
    *state
        .last_request
        .lock()
        .expect("the last request is not poisoned") = Some(parts);
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let failure = state.failure_ppm.load(Ordering::Relaxed);
    if failure > 0 && fastrand::u64(0..1_000_000) < failure {
        status = 503;
    }
    let mut rsp = http::Response::new(Full::new(Bytes::from(text)));
    *rsp.status_mut() =
        http::StatusCode::from_u16(status).expect("a behaviour answers a valid status");
    if state.json {
        rsp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
    }
    Ok(rsp)
}

// === clients ===

/// A client that talks straight to its target (ignoring any HTTP_PROXY the
/// test runner's environment may carry).
pub fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a plain reqwest client builds")
}

/// A client whose every request goes through the proxy at `proxy`, as an
/// app's does with `HTTP_PROXY`.
pub fn client_via(proxy: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{proxy}")).expect("a valid proxy URL"))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a proxied reqwest client builds")
}

/// What the fake app answered: which instance and version took the request.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Answer {
    pub instance: String,
    pub version: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
}

// === impl Load ===

/// Steady load: `clients` loops each sending `GET url` back to back until
/// [`Load::stop`], recording every failure (an error or a status other than
/// 200) and which instance answered each success. Nothing is retried here:
/// whatever the mesh lets through is counted.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    record: Arc<std::sync::Mutex<LoadReport>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a [`Load`] saw.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub sent: u64,
    /// One line per failed request: the error or the status.
    pub failures: Vec<String>,
    /// Successful answers per instance (from the fake app's JSON body).
    pub answered_by: BTreeMap<String, u64>,
}

impl Load {
    pub fn start(http: reqwest::Client, url: &str, clients: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let record = Arc::new(std::sync::Mutex::new(LoadReport::default()));
        let tasks = (0..clients)
            .map(|_| {
                let (stop, record, http, url) =
                    (stop.clone(), record.clone(), http.clone(), url.to_string());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = one_request(&http, &url).await;
                        // The lock is never held across an await, and a
                        // panic while holding it is a test failure anyway.
                        let mut record = record.lock().expect("the load record is not poisoned");
                        record.sent += 1;
                        match outcome {
                            Ok(instance) => *record.answered_by.entry(instance).or_insert(0) += 1,
                            Err(failure) => {
                                tracing::warn!(%failure, "a request under load failed");
                                record.failures.push(failure);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            record,
            tasks,
        }
    }

    /// Requests sent so far.
    pub fn sent(&self) -> u64 {
        self.record
            .lock()
            .expect("the load record is not poisoned")
            .sent
    }

    /// A copy of what the load saw so far.
    pub fn report(&self) -> LoadReport {
        self.record
            .lock()
            .expect("the load record is not poisoned")
            .clone()
    }

    /// Wait until `more` further requests have been sent (so the load
    /// demonstrably ran across whatever happened before this call).
    pub async fn send_at_least(&self, more: u64) -> Result<()> {
        let target = self.sent() + more;
        wait_until(
            &format!("{more} more requests under load"),
            CONVERGE,
            || async { Ok(self.sent() >= target) },
        )
        .await
    }

    /// Stop the clients and return what they saw.
    pub async fn stop(self) -> Result<LoadReport> {
        self.stop.store(true, Ordering::Relaxed);
        let report = self.record.clone();
        for task in self.tasks {
            task.await.context("a load client panicked")?;
        }
        let report = report.lock().expect("the load record is not poisoned");
        Ok(report.clone())
    }
}

/// One request: the answering instance, or why it failed.
async fn one_request(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let response = http.get(url).send().await.map_err(|e| format!("{e:#}"))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| format!("{e:#}"))?;
    if status.as_u16() != 200 {
        return Err(format!("{status}: {}", body.trim()));
    }
    Ok(serde_json::from_str::<Answer>(&body)
        .map(|answer| answer.instance)
        .unwrap_or_default())
}

// === waiting and statistics ===
//
// The suite's one pair of pollers, named for what they do with an error:
//
// - [`wait_until`] polls a *condition* ("the proxy runs version 7"). The
//   check answers `Ok(true)` (there), `Ok(false)` (not yet) or `Err` (broken),
//   and an `Err` ends the wait at once: nothing is retried away.
//   [`wait_for`] is the same wait for a condition that yields a value
//   (`Ok(Some(value))` there, `Ok(None)` not yet).
// - [`retry_until_ok`] retries an *action* that may fail while the mesh
//   converges ("the control plane answers"). Every `Err` means "try again".
//   Never use it for the property a test is about: a request that fails and
//   is retried until one succeeds proves nothing about failures.
//
// All three take a closure returning a future: `|| async { .. }`, or an
// async closure `async || { .. }` that only borrows what it uses (one that
// mutates its captures is an `AsyncFnMut` only; such a bound would make
// every caller's future lose `Send`, which the container tests' runner
// needs). They poll every 20 ms, work on paused time, and return an error
// saying what was awaited (and, for `retry_until_ok`, the last error): a
// test `.unwrap()`s or `?`s it.

/// How often the waiting helpers poll.
const POLL: Duration = Duration::from_millis(20);

/// Poll the condition `check` until it returns `Ok(true)`, or fail when
/// `deadline` passes. An `Err` from `check` is returned at once: it is a
/// failure, not a "not yet".
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    wait_for(what, deadline, || {
        let checked = check();
        async move { Ok(checked.await?.then_some(())) }
    })
    .await
}

/// Poll `check` until it returns `Ok(Some(value))`, and return the value;
/// fail when `deadline` passes. As in [`wait_until`], an `Err` ends the
/// wait at once.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check()
            .await
            .with_context(|| format!("while waiting for {what}"))?
        {
            return Ok(value);
        }
        if start.elapsed() >= deadline {
            bail!("gave up after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Retry `action` until it returns `Ok`, or fail when `deadline` passes with
/// the last error. Each `Err` counts as "not yet": use it to wait for
/// something to come up, never to measure whether requests fail.
pub async fn retry_until_ok<T, F, Fut>(what: &str, deadline: Duration, mut action: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        match action().await {
            Ok(value) => return Ok(value),
            Err(error) if start.elapsed() >= deadline => {
                bail!("gave up after {deadline:?} retrying {what}: {error:#}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// The tolerance for a count of successes in `n` trials of probability `p`:
/// `sigmas` standard deviations of the binomial distribution,
/// `sigmas * sqrt(n p (1 - p))`. Four sigmas fail a correct proxy about once
/// in 16,000 runs.
pub fn binomial_tolerance(n: u64, p: f64, sigmas: f64) -> f64 {
    sigmas * (n as f64 * p * (1.0 - p)).sqrt()
}

/// Assert that `count` of `n` is within `sigmas` binomial deviations of `p`.
pub fn assert_binomial(what: &str, count: u64, n: u64, p: f64, sigmas: f64) {
    let expected = n as f64 * p;
    let tolerance = binomial_tolerance(n, p, sigmas);
    assert!(
        (count as f64 - expected).abs() <= tolerance,
        "{what}: {count} of {n}, expected {expected:.0} +/- {tolerance:.1} ({sigmas} sigma, p = {p})"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_is_the_binomial_spread() {
        // 1,000 trials at 80%: sd = sqrt(1000 * 0.8 * 0.2) = 12.65
        let t = binomial_tolerance(1000, 0.8, 4.0);
        assert!((t - 50.596).abs() < 0.01, "{t}");
        assert_eq!(binomial_tolerance(1000, 1.0, 4.0), 0.0);
    }

    #[test]
    #[should_panic(expected = "expected 800")]
    fn a_count_far_from_expectation_fails() {
        assert_binomial("split", 700, 1000, 0.8, 4.0);
    }

    #[tokio::test]
    async fn retry_until_ok_reports_what_it_retried_and_the_last_error() {
        let error = retry_until_ok("the impossible", Duration::from_millis(50), || async {
            Err::<(), _>(anyhow!("not yet"))
        })
        .await
        .unwrap_err();
        let text = format!("{error:#}");
        assert!(
            text.contains("the impossible") && text.contains("not yet"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn wait_until_stops_at_the_first_error_instead_of_retrying_it() {
        let mut calls = 0;
        let error = wait_until("a condition", Duration::from_secs(5), || {
            calls += 1;
            async { Err(anyhow!("a request failed")) }
        })
        .await
        .unwrap_err();
        assert_eq!(calls, 1, "an error is not retried");
        let text = format!("{error:#}");
        assert!(
            text.contains("a condition") && text.contains("a request failed"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn wait_for_returns_what_the_condition_found_and_stops_at_an_error() {
        let mut polls = 0;
        let found = wait_for("the third poll", Duration::from_secs(5), || {
            polls += 1;
            let found = (polls == 3).then_some(polls);
            async move { Ok(found) }
        })
        .await
        .unwrap();
        assert_eq!(found, 3, "the value of the poll that found it");

        let mut calls = 0;
        let error = wait_for("a value", Duration::from_secs(5), || {
            calls += 1;
            async { Err::<Option<()>, _>(anyhow!("the probe broke")) }
        })
        .await
        .unwrap_err();
        assert_eq!(calls, 1, "an error is not retried");
        assert!(format!("{error:#}").contains("the probe broke"));
    }

    #[tokio::test]
    async fn the_fake_app_counts_answers_and_keeps_the_last_request() {
        let app = Upstream::with(
            "hw-1",
            Arc::new(|parts: &http::request::Parts, n| {
                (200 + n as u16, parts.uri.path().to_string())
            }),
        )
        .await;
        let http = plain_client();
        let status = async |path: &str| {
            let url = format!("http://{}{path}", app.addr);
            http.get(url).send().await.map(|r| r.status().as_u16())
        };
        assert_eq!(status("/first").await.unwrap(), 200);
        assert_eq!(
            status("/second").await.unwrap(),
            201,
            "it counts what came before"
        );
        assert_eq!(app.hits(), 2);
        assert_eq!(app.connections(), 1, "one keep-alive connection");
        assert_eq!(app.last_request().unwrap().uri.path(), "/second");

        app.set_failure_rate(1.0);
        assert_eq!(
            status("/").await.unwrap(),
            503,
            "the failure knob overrides the behaviour"
        );

        app.stop();
        let refused = plain_client()
            .get(format!("http://{}/", app.addr))
            .send()
            .await;
        assert!(refused.is_err(), "a stopped app refuses new connections");
    }

    #[tokio::test]
    async fn wait_until_polls_a_false_condition_until_the_deadline() {
        let mut calls = 0;
        let error = wait_until("never", Duration::from_millis(100), || {
            calls += 1;
            async { Ok(false) }
        })
        .await
        .unwrap_err();
        assert!(calls > 1, "polled {calls} time(s)");
        assert!(format!("{error:#}").contains("never"));
    }
}
