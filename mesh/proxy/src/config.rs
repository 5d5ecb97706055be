//! The proxy's settings, read from the environment.
//!
//! As in linkerd2-proxy, the environment is reached through a tiny trait,
//! [`Strings`], that a `HashMap` implements too: every rule below is
//! unit-tested without touching the process environment. A bad value stops
//! the proxy at start with an error that names the variable.
//!
//! | variable | default |
//! | --- | --- |
//! | `MESH_MODE` | `sidecar` (or `gateway`) |
//! | `MESH_SERVICE` | required for a sidecar; `ingressgateway` for a gateway |
//! | `MESH_VERSION` | `v1` |
//! | `MESH_INSTANCE` | `<service>-<version>-<5 random hex>` |
//! | `MESH_LABELS` | none; `k=v,k=v`; `app` and `version` always added |
//! | `MESH_NAMESPACE` | `default`: the workload's namespace in the metrics' labels (injected from the pod) |
//! | `MESH_CLUSTER` | `Kubernetes`: the cluster name in the metrics' labels (Istio's default `ISTIO_META_CLUSTER_ID`) |
//! | `MESH_CONTROL_URL` | `http://127.0.0.1:15010` |
//! | `MESH_CONTROL_TOKEN` | none; the control plane's write token, sent on announce, ACK and leave (`control.rs`; `meshctl up` sets it) |
//! | `MESH_IDENTITY_TOKEN` | none; the bootstrap token that proves this workload's identity to the control plane's CA: with it the proxy keeps a workload certificate (`identity.rs`; `meshctl up` sets it) |
//! | `MESH_IDENTITY_TOKEN_FILE` | none; a file holding that token, read again at each certificate request: on a cluster the projected service-account token (audience `istio-ca`) the injector mounts, which the kubelet rotates; not with `MESH_IDENTITY_TOKEN` |
//! | `MESH_SERVICE_ACCOUNT` | the service's name: the `sa` of the workload's SPIFFE ID `spiffe://cluster.local/ns/<namespace>/sa/<service account>` |
//! | `MESH_OUTBOUND_ADDR` | `127.0.0.1:15001` |
//! | `MESH_INBOUND_ADDR` | `0.0.0.0:15006` |
//! | `MESH_ADVERTISE_ADDR` | the inbound address, 0.0.0.0 replaced by this host's IP |
//! | `MESH_APP_ADDR` | `127.0.0.1:8080` |
//! | `MESH_ADMIN_ADDR` | `127.0.0.1:15000` |
//! | `MESH_GATEWAY_ADDR` | `0.0.0.0:8080` |
//! | `MESH_LOG` | `info` (a tracing filter) |
//! | `MESH_ACCESS_LOG_ENCODING` | `text`: one short line per request; `json`: every field (Istio's `accessLogEncoding`) |
//! | `MESH_SEED` | none; a number makes every random choice reproducible |
//! | `MESH_TELEMETRY` | `on`; `off` records no spans and no metrics (for benchmarks) |
//! | `MESH_TRACE_SAMPLING` | `100`: percent of new traces recorded (Istio's default is 1) |
//! | `MESH_ZIPKIN_URL` | `{MESH_CONTROL_URL}/api/v2/spans`; none without a control plane |
//! | `MESH_SNAPSHOT_FILE` | none; a JSON `Snapshot` to serve instead of a control plane's |
//! | `MESH_CONCURRENCY` | `2`: worker threads, as Istio's sidecar default (Envoy's `--concurrency`); `1` is one event loop |
//! | `MESH_PATH_NORMALIZATION` | `BASE`: request paths normalized before routing, as Istio's `meshConfig.pathNormalization` (`NONE`, `BASE`, `MERGE_SLASHES`, `DECODE_AND_MERGE_SLASHES`; `normalize.rs`) |
//! | `MESH_XFF_NUM_TRUSTED_HOPS` | `0`: proxies in front of the mesh whose `x-forwarded-for` entries are kept (Envoy's `xff_num_trusted_hops`; `trust.rs`) |
//! | `MESH_TRUST_CLIENT_TRACE` | `0`: a client outside the mesh cannot decide that its trace is recorded; `1` lets it (`trust.rs`) |
//! | `MESH_REQUEST_HEADERS_TIMEOUT` | `60s`: a request's head must arrive whole within this (slowloris); an idle HTTP/1.1 keep-alive connection waits for its next head under the same clock; `0` turns it off |
//! | `MESH_IDLE_TIMEOUT` | `1h`: a connection with no request in flight and no bytes moving is closed (Envoy's `idle_timeout` default, which Istio keeps); `0` turns it off |
//! | `MESH_STREAM_IDLE_TIMEOUT` | `5m`: a connection whose requests in flight move no byte either way for this long is closed (Envoy's `stream_idle_timeout` default); this bounds a stalled body too; `0` turns it off |
//! | `MESH_MAX_CONNECTIONS` | per listener: half the descriptors the process may open (less 64 kept for the proxy's own use), at most 100000; connections beyond it are closed at accept, as Envoy's overload manager does |
//! | `MESH_DRAIN_DURATION` | `5s`: after SIGTERM the listeners keep accepting this long while readiness reports 503 (Istio's `terminationDrainDuration`) |
//! | `MESH_DRAIN_TIMEOUT` | `20s`: then requests in flight get this long to finish; the ones still waiting are answered 503 with `Connection: close` (the two together, 25 s, leave those answers time to go out before Kubernetes' default 30 s grace period ends in SIGKILL) |
//!
//! With `MESH_SNAPSHOT_FILE` the proxy never talks to a control plane for
//! config: it serves that one snapshot until it stops. Spans then go to
//! `MESH_ZIPKIN_URL`, or to `MESH_CONTROL_URL`'s collector if that variable
//! is set explicitly, or nowhere.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use mesh_api::xds::{ProxyMode, ports};

use crate::log::AccessLogEncoding;

/// A source of named string settings: the process environment, or a map.
pub trait Strings {
    /// The value of `key`, or `None` when it is unset (an empty value counts
    /// as unset, so `MESH_LABELS=` in a shell script means "none").
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Env;

impl Strings for Env {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl Strings for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).filter(|v| !v.is_empty()).cloned()
    }
}

impl Strings for HashMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key)
            .filter(|v| !v.is_empty())
            .map(|v| v.to_string())
    }
}

/// A setting has a value the proxy cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

/// Everything the proxy needs to start.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub mode: ProxyMode,
    /// The workload's service name (`app` label), or the gateway's name.
    pub service: String,
    pub version: String,
    /// Unique name of this proxy, like a pod name.
    pub instance: String,
    /// Workload labels; always includes `app` and `version`.
    pub labels: BTreeMap<String, String>,
    /// The workload's namespace (`MESH_NAMESPACE`), for the metrics' labels.
    pub namespace: String,
    /// The cluster's name (`MESH_CLUSTER`), for the metrics' labels.
    pub cluster: String,
    /// `None`: run without a control plane, on snapshots given through
    /// [`ProxyHandle::apply_snapshot`](crate::ProxyHandle::apply_snapshot).
    pub control_url: Option<String>,
    /// The control plane's write token (`MESH_CONTROL_TOKEN`, `control.rs`).
    pub control_token: Option<crate::control::ControlToken>,
    /// Proof of this workload's identity for its certificates
    /// (`MESH_IDENTITY_TOKEN` or `MESH_IDENTITY_TOKEN_FILE`, `identity.rs`);
    /// `None`: no certificate.
    pub identity_token: Option<crate::identity::BootstrapToken>,
    /// The `sa` of the workload's SPIFFE ID (`MESH_SERVICE_ACCOUNT`).
    pub service_account: String,
    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    /// `None`: derived from the bound inbound address at start.
    pub advertise_addr: Option<SocketAddr>,
    pub app_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway_addr: SocketAddr,
    /// tracing filter, for the binary.
    pub log: String,
    /// How the binary prints access lines (`MESH_ACCESS_LOG_ENCODING`).
    pub access_log_encoding: AccessLogEncoding,
    /// Seed for every random choice (`MESH_SEED`); `None`: truly random.
    pub seed: Option<u64>,
    /// Record spans and metrics (`MESH_TELEMETRY`, default on).
    pub telemetry: bool,
    /// Percent of new traces sampled, 0.0..=100.0 (`MESH_TRACE_SAMPLING`).
    pub trace_sampling: f64,
    /// Where spans are POSTed (Zipkin v2 JSON); `None`: spans are not sent.
    pub zipkin_url: Option<String>,
    /// A static snapshot to serve (`MESH_SNAPSHOT_FILE`); when set,
    /// `control_url` is `None`.
    pub snapshot_file: Option<PathBuf>,
    /// Worker threads (`MESH_CONCURRENCY`, Envoy's `--concurrency`). The
    /// binary runs one event loop on the main thread for 1, a
    /// work-stealing pool of this many threads otherwise.
    pub concurrency: usize,
    /// What a request head may carry into the mesh: path normalization,
    /// which headers from outside are trusted (`admit.rs`, `trust.rs`).
    pub edge: crate::admit::EdgeSettings,
    /// How the listeners hold connections: timeouts, the connection cap,
    /// the drain on shutdown (`listener.rs`, `proxy.rs`).
    pub limits: ListenerLimits,
}

/// How each listener holds its connections; Envoy's defaults unless said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerLimits {
    /// A request's head must arrive within this (`MESH_REQUEST_HEADERS_TIMEOUT`).
    pub request_headers_timeout: Option<Duration>,
    /// A connection with nothing in flight closes after this (`MESH_IDLE_TIMEOUT`).
    pub idle_timeout: Option<Duration>,
    /// Requests in flight that move no byte for this long close their
    /// connection (`MESH_STREAM_IDLE_TIMEOUT`).
    pub stream_idle_timeout: Option<Duration>,
    /// Open connections per listener; more are closed at accept
    /// (`MESH_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// How long the listeners keep accepting after SIGTERM (`MESH_DRAIN_DURATION`).
    pub drain_duration: Duration,
    /// How long requests in flight then get to finish (`MESH_DRAIN_TIMEOUT`).
    pub drain_timeout: Duration,
}

/// Envoy's `request_headers_timeout` is off by default; its edge guidance
/// and the slowloris attack want one. A minute is generous for any client.
pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(60);
/// Envoy's HTTP connection manager `idle_timeout` default, which Istio keeps.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// Envoy's `stream_idle_timeout` default.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Istio's `terminationDrainDuration` default.
pub const DEFAULT_DRAIN_DURATION: Duration = Duration::from_secs(5);
/// What in-flight requests get after the drain duration: with it, 25 s,
/// which leaves the 503s of the requests cut time to go out before
/// Kubernetes' default `terminationGracePeriodSeconds` (30 s) ends in SIGKILL.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Descriptors kept out of the connection cap for the proxy's own use
/// (admin port, control plane, span reporter, files).
pub const RESERVED_DESCRIPTORS: u64 = 64;
/// The cap when the descriptor limit is unknown or very large.
pub const MAX_CONNECTIONS_CEILING: usize = 100_000;

impl ListenerLimits {
    /// The default cap: each downstream connection may need one upstream
    /// connection, so half of what the process may open, less a reserve.
    /// With the common soft limit of 1,024 that is 480 per listener.
    pub fn default_max_connections() -> usize {
        let limit = descriptor_limit().unwrap_or(u64::MAX);
        let share = limit.saturating_sub(RESERVED_DESCRIPTORS) / 2;
        (share.max(1) as usize).min(MAX_CONNECTIONS_CEILING)
    }
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            request_headers_timeout: Some(DEFAULT_REQUEST_HEADERS_TIMEOUT),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            stream_idle_timeout: Some(DEFAULT_STREAM_IDLE_TIMEOUT),
            max_connections: ListenerLimits::default_max_connections(),
            drain_duration: DEFAULT_DRAIN_DURATION,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// The soft limit on open descriptors (`ulimit -n`), where the OS says.
#[cfg(unix)]
pub fn descriptor_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit};
    let (soft, _hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    #[allow(clippy::useless_conversion)] // rlim_t is u64 on Linux, not everywhere
    Some(u64::from(soft))
}

#[cfg(not(unix))]
pub fn descriptor_limit() -> Option<u64> {
    None
}

/// The namespace a workload is in when none is configured (Kubernetes').
pub const DEFAULT_NAMESPACE: &str = "default";
/// The cluster name when none is configured: Istio's default cluster ID.
pub const DEFAULT_CLUSTER: &str = "Kubernetes";

/// Istio gives each sidecar's Envoy two worker threads by default.
pub const DEFAULT_CONCURRENCY: usize = 2;

impl Config {
    /// Read the settings from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_strings(&Env)
    }

    /// Read the settings from any [`Strings`].
    pub fn from_strings(strings: &impl Strings) -> Result<Config, ConfigError> {
        let mode = match strings.get("MESH_MODE").as_deref() {
            None | Some("sidecar") => ProxyMode::Sidecar,
            Some("gateway") => ProxyMode::Gateway,
            Some(other) => {
                return Err(ConfigError {
                    var: "MESH_MODE",
                    value: other.to_string(),
                    reason: "expected `sidecar` or `gateway`".into(),
                });
            }
        };
        let service = match (strings.get("MESH_SERVICE"), mode) {
            (Some(service), _) => service,
            (None, ProxyMode::Gateway) => "ingressgateway".to_string(),
            (None, ProxyMode::Sidecar) => {
                return Err(ConfigError {
                    var: "MESH_SERVICE",
                    value: String::new(),
                    reason: "a sidecar needs the name of its workload's service, \
                             for example MESH_SERVICE=helloworld-service"
                        .into(),
                });
            }
        };
        check_name("MESH_SERVICE", &service)?;
        let version = strings.get("MESH_VERSION").unwrap_or_else(|| "v1".into());
        check_name("MESH_VERSION", &version)?;
        let instance = match strings.get("MESH_INSTANCE") {
            Some(instance) => instance,
            None => random_instance(&service, &version),
        };
        check_name("MESH_INSTANCE", &instance)?;

        let mut labels = match strings.get("MESH_LABELS") {
            Some(text) => parse_labels(&text)?,
            None => BTreeMap::new(),
        };
        labels.insert("app".into(), service.clone());
        labels.insert("version".into(), version.clone());
        if mode == ProxyMode::Gateway {
            // Istio's ingress gateway pods carry this label, and Gateway
            // resources select it with `selector: {istio: ingressgateway}`.
            labels.insert("istio".into(), "ingressgateway".into());
        }

        // Istio's labels name the namespace and the cluster. Locally there
        // is neither, so Istio's own defaults: namespace `default`, cluster
        // `Kubernetes`. Injected sidecars get the pod's namespace.
        let namespace = strings
            .get("MESH_NAMESPACE")
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        check_name("MESH_NAMESPACE", &namespace)?;
        let cluster = strings
            .get("MESH_CLUSTER")
            .unwrap_or_else(|| DEFAULT_CLUSTER.into());
        check_name("MESH_CLUSTER", &cluster)?;

        let explicit_control_url = strings.get("MESH_CONTROL_URL");
        let control_url = explicit_control_url
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", ports::CONTROL));
        let control_url = http_url(
            "MESH_CONTROL_URL",
            &control_url,
            "expected a URL like http://127.0.0.1:15010",
        )?;
        let snapshot_file = strings.get("MESH_SNAPSHOT_FILE").map(PathBuf::from);

        let access_log_encoding = match strings.get("MESH_ACCESS_LOG_ENCODING") {
            None => AccessLogEncoding::default(),
            Some(text) => text.parse().map_err(|reason| ConfigError {
                var: "MESH_ACCESS_LOG_ENCODING",
                value: text.clone(),
                reason,
            })?,
        };
        let telemetry = match strings.get("MESH_TELEMETRY").as_deref() {
            None | Some("on") => true,
            Some("off") => false,
            Some(other) => {
                return Err(ConfigError {
                    var: "MESH_TELEMETRY",
                    value: other.to_string(),
                    reason: "expected `on` or `off`".into(),
                });
            }
        };
        let trace_sampling = match strings.get("MESH_TRACE_SAMPLING") {
            None => 100.0,
            Some(text) => match text.trim().trim_end_matches('%').parse::<f64>() {
                Ok(percent) if (0.0..=100.0).contains(&percent) => percent,
                _ => {
                    return Err(ConfigError {
                        var: "MESH_TRACE_SAMPLING",
                        value: text,
                        reason: "expected a percentage from 0 to 100, for example 100 \
                                 (every trace) or 1 (Istio's default)"
                            .into(),
                    });
                }
            },
        };
        // Spans go where the user says, else to the control plane's
        // collector: the one the proxy watches, or (with a snapshot file) the
        // one named explicitly. A real Zipkin or Jaeger takes the same URL.
        let zipkin_url = match strings.get("MESH_ZIPKIN_URL") {
            Some(url) => Some(http_url(
                "MESH_ZIPKIN_URL",
                &url,
                "expected a URL like http://127.0.0.1:9411/api/v2/spans",
            )?),
            None if snapshot_file.is_none() || explicit_control_url.is_some() => {
                Some(format!("{control_url}/api/v2/spans"))
            }
            None => None,
        };

        let concurrency = match strings.get("MESH_CONCURRENCY") {
            None => DEFAULT_CONCURRENCY,
            Some(text) => match text.trim().parse::<usize>() {
                Ok(n @ 1..=256) => n,
                _ => {
                    return Err(ConfigError {
                        var: "MESH_CONCURRENCY",
                        value: text,
                        reason: "expected a number of worker threads from 1 to 256, for \
                                 example 2 (Istio's sidecar default) or 1 (one event loop)"
                            .into(),
                    });
                }
            },
        };

        let seed = match strings.get("MESH_SEED") {
            Some(text) => Some(text.parse::<u64>().map_err(|e| ConfigError {
                var: "MESH_SEED",
                value: text.clone(),
                reason: format!("expected a whole number: {e}"),
            })?),
            None => None,
        };

        let defaults = ListenerLimits::default();
        let limits = ListenerLimits {
            request_headers_timeout: timeout(
                strings,
                "MESH_REQUEST_HEADERS_TIMEOUT",
                defaults.request_headers_timeout,
            )?,
            idle_timeout: timeout(strings, "MESH_IDLE_TIMEOUT", defaults.idle_timeout)?,
            stream_idle_timeout: timeout(
                strings,
                "MESH_STREAM_IDLE_TIMEOUT",
                defaults.stream_idle_timeout,
            )?,
            max_connections: match strings.get("MESH_MAX_CONNECTIONS") {
                None => defaults.max_connections,
                Some(text) => match text.trim().parse::<usize>() {
                    Ok(n) if n >= 1 => n,
                    _ => {
                        return Err(ConfigError {
                            var: "MESH_MAX_CONNECTIONS",
                            value: text,
                            reason: "expected a number of connections per listener, at least 1, \
                                     for example 10000"
                                .into(),
                        });
                    }
                },
            },
            drain_duration: timeout(
                strings,
                "MESH_DRAIN_DURATION",
                Some(defaults.drain_duration),
            )?
            .unwrap_or(Duration::ZERO),
            drain_timeout: timeout(strings, "MESH_DRAIN_TIMEOUT", Some(defaults.drain_timeout))?
                .unwrap_or(Duration::ZERO),
        };

        let service_account = strings
            .get("MESH_SERVICE_ACCOUNT")
            .unwrap_or_else(|| service.clone());
        check_name("MESH_SERVICE_ACCOUNT", &service_account)?;

        Ok(Config {
            limits,
            mode,
            service,
            version,
            instance,
            labels,
            namespace,
            cluster,
            // A snapshot file replaces the control plane.
            control_url: snapshot_file.is_none().then_some(control_url),
            control_token: match strings.get("MESH_CONTROL_TOKEN") {
                None => None,
                Some(text) => Some(crate::control::ControlToken::parse(&text).map_err(
                    |reason| ConfigError {
                        var: "MESH_CONTROL_TOKEN",
                        value: "(hidden)".into(),
                        reason,
                    },
                )?),
            },
            identity_token: identity_token(strings)?,
            service_account,
            outbound_addr: addr(strings, "MESH_OUTBOUND_ADDR", local(ports::OUTBOUND))?,
            inbound_addr: addr(strings, "MESH_INBOUND_ADDR", any(ports::INBOUND))?,
            advertise_addr: match strings.get("MESH_ADVERTISE_ADDR") {
                Some(_) => Some(addr(strings, "MESH_ADVERTISE_ADDR", any(0))?),
                None => None,
            },
            app_addr: addr(strings, "MESH_APP_ADDR", local(ports::SERVICE))?,
            admin_addr: addr(strings, "MESH_ADMIN_ADDR", local(ports::ADMIN))?,
            gateway_addr: addr(strings, "MESH_GATEWAY_ADDR", any(ports::GATEWAY))?,
            log: strings.get("MESH_LOG").unwrap_or_else(|| "info".into()),
            access_log_encoding,
            seed,
            telemetry,
            trace_sampling,
            zipkin_url,
            snapshot_file,
            concurrency,
            edge: crate::admit::EdgeSettings::from_strings(strings)?,
        })
    }

    /// A sidecar for tests: every listener on 127.0.0.1:0, no control plane.
    pub fn local_sidecar(service: &str, app_addr: SocketAddr) -> Config {
        let mut config = Config::from_strings(&HashMap::from([
            ("MESH_SERVICE", service),
            ("MESH_OUTBOUND_ADDR", "127.0.0.1:0"),
            ("MESH_INBOUND_ADDR", "127.0.0.1:0"),
            ("MESH_ADMIN_ADDR", "127.0.0.1:0"),
            ("MESH_GATEWAY_ADDR", "127.0.0.1:0"),
        ]))
        .expect("the test defaults are valid settings");
        config.app_addr = app_addr;
        config.control_url = None;
        config.zipkin_url = None;
        // A test's proxy stops at once: no drain window (requests in
        // flight still finish, within the drain timeout).
        config.limits.drain_duration = Duration::ZERO;
        config
    }

    /// A gateway for tests: every listener on 127.0.0.1:0, no control plane.
    pub fn local_gateway() -> Config {
        let mut config = Config::from_strings(&HashMap::from([
            ("MESH_MODE", "gateway"),
            ("MESH_ADMIN_ADDR", "127.0.0.1:0"),
            ("MESH_GATEWAY_ADDR", "127.0.0.1:0"),
        ]))
        .expect("the test defaults are valid settings");
        config.control_url = None;
        config.zipkin_url = None;
        config.limits.drain_duration = Duration::ZERO;
        config
    }
}

/// An `http://` or `https://` URL, without a trailing `/`.
/// `MESH_IDENTITY_TOKEN` (checked like the write token) or
/// `MESH_IDENTITY_TOKEN_FILE` (read at each CSR, so not here), never both.
fn identity_token(
    strings: &impl Strings,
) -> Result<Option<crate::identity::BootstrapToken>, ConfigError> {
    use crate::identity::BootstrapToken;
    match (
        strings.get("MESH_IDENTITY_TOKEN"),
        strings.get("MESH_IDENTITY_TOKEN_FILE"),
    ) {
        (None, None) => Ok(None),
        (Some(_), Some(path)) => Err(ConfigError {
            var: "MESH_IDENTITY_TOKEN_FILE",
            value: path,
            reason: "MESH_IDENTITY_TOKEN is set too; keep one of the two (the file on a \
                     cluster, the value under meshctl up)"
                .into(),
        }),
        (Some(text), None) => crate::control::ControlToken::parse(&text)
            .map(|token| Some(BootstrapToken::Value(token.secret().to_string())))
            .map_err(|reason| ConfigError {
                var: "MESH_IDENTITY_TOKEN",
                value: "(hidden)".into(),
                reason,
            }),
        (None, Some(path)) if path.trim().is_empty() => Err(ConfigError {
            var: "MESH_IDENTITY_TOKEN_FILE",
            value: path,
            reason: "expected the path of the token file, as \
                     /var/run/secrets/tokens/istio-token"
                .into(),
        }),
        (None, Some(path)) => Ok(Some(BootstrapToken::File(path.trim().into()))),
    }
}

fn http_url(var: &'static str, value: &str, example: &str) -> Result<String, ConfigError> {
    if value.starts_with("http://") || value.starts_with("https://") {
        Ok(value.trim_end_matches('/').to_string())
    } else {
        Err(ConfigError {
            var,
            value: value.to_string(),
            reason: example.to_string(),
        })
    }
}

/// A duration like Istio's (`60s`, `250ms`, `1h`); `0` turns the timeout off.
fn timeout(
    strings: &impl Strings,
    var: &'static str,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    let Some(text) = strings.get(var) else {
        return Ok(default);
    };
    if matches!(text.trim(), "0" | "0s" | "0ms") {
        return Ok(None);
    }
    match mesh_api::config::parse_duration_ms(&text) {
        Ok(ms) => Ok(Some(Duration::from_millis(ms))),
        Err(reason) => Err(ConfigError {
            var,
            value: text,
            reason: format!("{reason} (or `0` to turn it off)"),
        }),
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

fn addr(
    strings: &impl Strings,
    var: &'static str,
    default: SocketAddr,
) -> Result<SocketAddr, ConfigError> {
    match strings.get(var) {
        None => Ok(default),
        Some(text) => text.parse().map_err(|_| ConfigError {
            var,
            value: text.clone(),
            reason: "expected ip:port, for example 127.0.0.1:15001 (port 0 picks a free port)"
                .into(),
        }),
    }
}

fn check_name(var: &'static str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            var,
            value: value.to_string(),
            reason: "use letters, digits, `-`, `_` and `.` only".into(),
        })
    }
}

fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                labels.insert(key.trim().to_string(), value.trim().to_string());
            }
            _ => {
                return Err(ConfigError {
                    var: "MESH_LABELS",
                    value: text.to_string(),
                    reason: format!(
                        "{pair:?} is not key=value; write MESH_LABELS=track=canary,zone=a"
                    ),
                });
            }
        }
    }
    Ok(labels)
}

/// `helloworld-service-v1-7f3c2`: unique enough for a laptop's mesh, and
/// readable in logs like a pod name.
fn random_instance(service: &str, version: &str) -> String {
    format!("{service}-{version}-{:05x}", fastrand::u32(..0x10_0000))
}

/// The address other sidecars dial for this proxy's inbound listener:
/// the bound address, with an unspecified IP replaced by this host's.
pub fn advertise_for(bound: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    SocketAddr::new(
        host_ip().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        bound.port(),
    )
}

/// This host's outward-facing IP, found the classic way: "connect" a UDP
/// socket (no packet is sent) and read which local address the OS chose.
fn host_ip() -> Option<IpAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect((Ipv4Addr::new(10, 255, 255, 255), 9)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &'static str)]) -> HashMap<&'static str, &'static str> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn a_sidecar_gets_istios_ports_by_default() {
        let config = Config::from_strings(&env(&[("MESH_SERVICE", "helloworld-service")])).unwrap();
        assert_eq!(config.mode, ProxyMode::Sidecar);
        assert_eq!(config.version, "v1");
        assert_eq!(config.outbound_addr, "127.0.0.1:15001".parse().unwrap());
        assert_eq!(config.inbound_addr, "0.0.0.0:15006".parse().unwrap());
        assert_eq!(config.admin_addr, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(config.app_addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            config.control_url.as_deref(),
            Some("http://127.0.0.1:15010")
        );
        assert_eq!(config.advertise_addr, None);
        assert!(config.instance.starts_with("helloworld-service-v1-"));
        assert_eq!(config.instance.len(), "helloworld-service-v1-".len() + 5);
        assert_eq!(config.labels["app"], "helloworld-service");
        assert_eq!(config.labels["version"], "v1");
        assert_eq!(config.log, "info");
        assert!(config.telemetry);
        assert_eq!(config.trace_sampling, 100.0);
        assert_eq!(
            config.zipkin_url.as_deref(),
            Some("http://127.0.0.1:15010/api/v2/spans"),
            "spans go to the control plane's collector by default"
        );
        assert_eq!(config.snapshot_file, None);
        assert_eq!(config.namespace, "default", "Istio's local defaults");
        assert_eq!(config.cluster, "Kubernetes");
    }

    #[test]
    fn namespace_and_cluster_come_from_the_pod() {
        let config = Config::from_strings(&env(&[
            ("MESH_SERVICE", "hw"),
            ("MESH_NAMESPACE", "guestbook"),
            ("MESH_CLUSTER", "east-1"),
        ]))
        .unwrap();
        assert_eq!(
            (config.namespace.as_str(), config.cluster.as_str()),
            ("guestbook", "east-1")
        );
        let bad = Config::from_strings(&env(&[("MESH_SERVICE", "hw"), ("MESH_NAMESPACE", "a b")]))
            .unwrap_err();
        assert_eq!(bad.var, "MESH_NAMESPACE");
    }

    #[test]
    fn telemetry_settings_are_read() {
        let config = Config::from_strings(&env(&[
            ("MESH_SERVICE", "hw"),
            ("MESH_TELEMETRY", "off"),
            ("MESH_TRACE_SAMPLING", "12.5"),
            ("MESH_ZIPKIN_URL", "http://zipkin:9411/api/v2/spans"),
        ]))
        .unwrap();
        assert!(!config.telemetry);
        assert_eq!(config.trace_sampling, 12.5);
        assert_eq!(
            config.zipkin_url.as_deref(),
            Some("http://zipkin:9411/api/v2/spans")
        );
        let zero = Config::from_strings(&env(&[
            ("MESH_SERVICE", "hw"),
            ("MESH_TRACE_SAMPLING", "0"),
        ]))
        .unwrap();
        assert_eq!(zero.trace_sampling, 0.0);
    }

    #[test]
    fn a_snapshot_file_replaces_the_control_plane() {
        let config = Config::from_strings(&env(&[
            ("MESH_SERVICE", "hw"),
            ("MESH_SNAPSHOT_FILE", "/tmp/snapshot.json"),
        ]))
        .unwrap();
        assert_eq!(
            config.snapshot_file.as_deref(),
            Some(std::path::Path::new("/tmp/snapshot.json"))
        );
        assert_eq!(config.control_url, None, "no watch, no announce");
        assert_eq!(config.zipkin_url, None, "no collector was named");

        // A control plane named explicitly still collects the spans.
        let named = Config::from_strings(&env(&[
            ("MESH_SERVICE", "hw"),
            ("MESH_SNAPSHOT_FILE", "/tmp/snapshot.json"),
            ("MESH_CONTROL_URL", "http://127.0.0.1:4000"),
        ]))
        .unwrap();
        assert_eq!(named.control_url, None);
        assert_eq!(
            named.zipkin_url.as_deref(),
            Some("http://127.0.0.1:4000/api/v2/spans")
        );
    }

    #[test]
    fn a_gateway_is_named_and_labelled_like_istios() {
        let config = Config::from_strings(&env(&[("MESH_MODE", "gateway")])).unwrap();
        assert_eq!(config.mode, ProxyMode::Gateway);
        assert_eq!(config.service, "ingressgateway");
        assert_eq!(config.labels["istio"], "ingressgateway");
        assert_eq!(config.gateway_addr, "0.0.0.0:8080".parse().unwrap());
    }

    #[test]
    fn labels_are_parsed_and_app_version_win() {
        let config = Config::from_strings(&env(&[
            ("MESH_SERVICE", "hw"),
            ("MESH_VERSION", "v2"),
            ("MESH_LABELS", "track=canary, app=other ,zone=a"),
        ]))
        .unwrap();
        assert_eq!(config.labels["track"], "canary");
        assert_eq!(config.labels["zone"], "a");
        assert_eq!(config.labels["app"], "hw");
        assert_eq!(config.labels["version"], "v2");
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: &[(&[(&'static str, &'static str)], &str)] = &[
            (&[("MESH_MODE", "mesh")], "MESH_MODE"),
            (&[], "MESH_SERVICE"),
            (
                &[("MESH_SERVICE", "hw"), ("MESH_INBOUND_ADDR", "15006")],
                "MESH_INBOUND_ADDR",
            ),
            (
                &[("MESH_SERVICE", "hw"), ("MESH_LABELS", "canary")],
                "MESH_LABELS",
            ),
            (
                &[
                    ("MESH_SERVICE", "hw"),
                    ("MESH_CONTROL_URL", "localhost:15010"),
                ],
                "MESH_CONTROL_URL",
            ),
            (&[("MESH_SERVICE", "hw"), ("MESH_SEED", "abc")], "MESH_SEED"),
            (&[("MESH_SERVICE", "hello world")], "MESH_SERVICE"),
            (
                &[("MESH_SERVICE", "hw"), ("MESH_TELEMETRY", "yes")],
                "MESH_TELEMETRY",
            ),
            (
                &[("MESH_SERVICE", "hw"), ("MESH_ACCESS_LOG_ENCODING", "yaml")],
                "MESH_ACCESS_LOG_ENCODING",
            ),
            (
                &[("MESH_SERVICE", "hw"), ("MESH_TRACE_SAMPLING", "150")],
                "MESH_TRACE_SAMPLING",
            ),
            (
                &[("MESH_SERVICE", "hw"), ("MESH_TRACE_SAMPLING", "all")],
                "MESH_TRACE_SAMPLING",
            ),
            (
                &[("MESH_SERVICE", "hw"), ("MESH_ZIPKIN_URL", "zipkin:9411")],
                "MESH_ZIPKIN_URL",
            ),
            (
                &[("MESH_SERVICE", "hw"), ("MESH_CONCURRENCY", "0")],
                "MESH_CONCURRENCY",
            ),
            (
                &[("MESH_SERVICE", "hw"), ("MESH_CONCURRENCY", "two")],
                "MESH_CONCURRENCY",
            ),
        ];
        for (pairs, var) in cases {
            let err = Config::from_strings(&env(pairs)).unwrap_err();
            assert_eq!(err.var, *var);
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }

    #[test]
    fn concurrency_is_istios_two_unless_set() {
        let default = Config::from_strings(&env(&[("MESH_SERVICE", "hw")])).unwrap();
        assert_eq!(default.concurrency, 2);
        let one = env(&[("MESH_SERVICE", "hw"), ("MESH_CONCURRENCY", "1")]);
        assert_eq!(Config::from_strings(&one).unwrap().concurrency, 1);
    }

    #[test]
    fn explicit_values_and_port_zero_are_taken() {
        let config = Config::from_strings(&env(&[
            ("MESH_SERVICE", "hw"),
            ("MESH_INSTANCE", "hw-1"),
            ("MESH_OUTBOUND_ADDR", "127.0.0.1:0"),
            ("MESH_ADVERTISE_ADDR", "10.0.0.7:15006"),
            ("MESH_CONTROL_URL", "http://cp:15010/"),
            ("MESH_SEED", "42"),
        ]))
        .unwrap();
        assert_eq!(config.instance, "hw-1");
        assert_eq!(config.outbound_addr.port(), 0);
        assert_eq!(
            config.advertise_addr,
            Some("10.0.0.7:15006".parse().unwrap())
        );
        assert_eq!(config.control_url.as_deref(), Some("http://cp:15010"));
        assert_eq!(config.seed, Some(42));
    }

    #[test]
    fn advertise_replaces_only_the_unspecified_ip() {
        let bound: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(advertise_for(bound), bound);
        let any: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let advertised = advertise_for(any);
        assert_eq!(advertised.port(), 4000);
        assert!(!advertised.ip().is_unspecified());
    }
}
