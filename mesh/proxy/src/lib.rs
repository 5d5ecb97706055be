//! mesh-proxy: micromesh's sidecar and ingress gateway, as a library.
//!
//! A sidecar sits next to one app. The app sends its calls to the sidecar's
//! **outbound** listener (it is the app's `HTTP_PROXY`); the sidecar routes
//! each request by its authority to an instance of the called service, whose
//! own sidecar takes it on its **inbound** listener and hands it to its app.
//! In **gateway** mode the same binary takes users' requests into the mesh.
//! The **admin** listener answers `/ready`, `/config_dump` and
//! `/stats/prometheus`. Every listener records a span (Zipkin v2, sent in
//! batches to the control plane's collector) and Istio's metrics for each
//! request. The routing config comes from the control plane as a versioned
//! snapshot (`mesh_api::snapshot`), or once from `MESH_SNAPSHOT_FILE`; the
//! proxy compiles it and swaps it in atomically.
//!
//! # The request path, one file per step
//!
//! | step | file |
//! | --- | --- |
//! | settings from the environment | `config.rs` |
//! | listeners, graceful shutdown | `listener.rs`, `proxy.rs` |
//! | the door: what a request head may carry in (framing, one authority, normalized path, untrusted headers) | `admit.rs`, `authority.rs`, `normalize.rs`, `trust.rs` |
//! | outbound / gateway request handling, access log | `outbound.rs`, `log.rs` |
//! | route: virtual host, match, header ops, rewrite, mirror | `route.rs` |
//! | fault injection: delay, abort | `fault.rs` |
//! | route timeout | `timeout.rs` |
//! | retries, per-try timeout, backoff | `retry.rs` |
//! | request and response bodies: streaming, the 64 KiB replay buffer; the request's context (log, cluster, endpoint) the layers share | `body.rs` |
//! | weighted split (canary) | `split.rs` |
//! | load balancing | `balance.rs` |
//! | outlier detection | `outlier.rs` |
//! | connection pool, circuit breaker | `pool.rs` |
//! | HTTP/2 to the next hop (gRPC), one shared connection per endpoint | `h2.rs` |
//! | inbound: to the local app | `inbound.rs` |
//! | authorization: AuthorizationPolicy's decision (Istio's order, value forms) | `authz.rs` |
//! | the decision point: policies applied per request, `DECODE_AND_MERGE_SLASHES` paths, 403 `RBAC` | `authorize.rs` |
//! | WebSocket: routed, then spliced as a byte tunnel | `upgrade.rs` |
//! | telemetry of one request: span, source headers, metrics, on body end | `telemetry.rs` |
//! | trace context: W3C / B3 headers, ids, sampling, Zipkin v2 spans | `trace.rs` |
//! | span reporter: bounded queue, batches, POST to the collector | `report.rs` |
//! | Istio's metrics, `/stats/prometheus` | `metrics.rs`, `admin.rs` |
//! | snapshot compilation, NACK reasons | `table.rs`, `cluster.rs` |
//! | control-plane client | `control.rs` |
//! | Envoy's error responses and flags | `error.rs` |
//! | admin: `/ready`, `/config_dump`, `/stats/prometheus` | `admin.rs` |
//!
//! # Library API
//!
//! ```no_run
//! # async fn demo(snapshot: mesh_api::snapshot::Snapshot) -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_proxy::{Config, Proxy};
//!
//! // From the environment (what the binary does)...
//! let config = Config::from_env()?;
//! // ...or for a test: every listener on 127.0.0.1:0, no control plane.
//! let config = Config::local_sidecar("guestbook-ui", "127.0.0.1:8080".parse()?);
//!
//! let proxy = Proxy::start(config).await?;
//! let outbound = proxy.outbound_addr();      // Some(addr) for a sidecar
//! let inbound = proxy.inbound_addr();        // Some(addr) for a sidecar
//! let gateway = proxy.gateway_addr();        // Some(addr) for a gateway
//! let admin = proxy.admin_addr();
//!
//! // Without a control plane, feed snapshots directly: Ok is an ACK,
//! // Err a NACK (each rejected virtual host keeps its last good version).
//! proxy.apply_snapshot(snapshot)?;
//! let in_use = proxy.current_snapshot();     // Option<Arc<Snapshot>>
//!
//! proxy.shutdown().await;                    // DELETE at the control plane, drain
//! # Ok(()) }
//! ```
//!
//! - [`Config`]: every setting; [`Config::from_env`], [`Config::from_strings`]
//!   (anything implementing [`Strings`], including a `HashMap`),
//!   [`Config::local_sidecar`], [`Config::local_gateway`]. Set
//!   `control_url: None` to run on static snapshots, `Some(url)` to announce
//!   to and watch a control plane; `seed: Some(n)` makes every random choice
//!   reproducible. Telemetry: `telemetry` (on/off), `trace_sampling`
//!   (percent), `zipkin_url` (where spans go; `None`: not sent). A
//!   `snapshot_file` is read and applied at start, with no control plane.
//! - [`Proxy::start`]`(Config) -> Result<`[`ProxyHandle`]`, `[`StartError`]`>`.
//! - [`ProxyHandle`]: `addrs()`, `outbound_addr()`, `inbound_addr()`,
//!   `advertise_addr()`, `gateway_addr()`, `admin_addr()`, `instance()`,
//!   `config()`, `metrics()`, `announce(ready)`, `current_snapshot()`,
//!   `apply_snapshot(Snapshot) -> Result<(), CompileError>`,
//!   `last_rejected()`, `shutdown().await`. Dropping the handle also stops
//!   the listeners (without the DELETE and the drain).
//!
//! The layers (`route`, `fault`, `timeout`, `retry`, `split`, `balance`,
//! `outlier`, `pool`) are public so they can be read and tested one by one.

pub mod admin;
pub mod admit;
pub mod authority;
pub mod authorize;
pub mod authz;
pub mod balance;
pub mod body;
pub mod cluster;
pub mod config;
pub mod control;
pub mod error;
pub mod fault;
pub mod h2;
pub mod identity;
pub mod inbound;
pub mod listener;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod normalize;
pub mod outbound;
pub mod outlier;
pub mod pool;
pub mod proxy;
pub mod report;
pub mod retry;
pub mod rng;
pub mod route;
pub mod split;
pub mod table;
pub mod telemetry;
pub mod timeout;
pub mod tls;
pub mod trace;
pub mod trust;
pub mod upgrade;

#[cfg(test)]
mod test_util;

pub use config::{Config, ConfigError, Env, Strings};
pub use error::ProxyError;
pub use log::{Direction, ResponseFlags};
pub use proxy::{Proxy, ProxyAddrs, ProxyHandle, StartError};
pub use table::CompileError;
