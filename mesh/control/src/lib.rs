//! micromesh's control plane: the service registry, the config store, the
//! snapshot compiler and the watch API that pushes config to every proxy.
//!
//! It plays istiod's part. Sidecars announce themselves and heartbeat
//! (`registry.rs`), learners apply Istio resources (`config_api.rs`), and
//! every change becomes a new config version that each proxy picks up with a
//! long-poll (`watch.rs`), compiled for it by `compile.rs`. Registry and
//! config survive a restart (`store.rs`).
//!
//! On a cluster (`--source kubernetes`, `kubernetes/`) the same model comes
//! from the API server instead: Services, EndpointSlices and Pods for the
//! workloads, VirtualService, DestinationRule and Gateway custom resources
//! for the config, and admission webhooks that validate the Istio kinds and
//! inject sidecars. Compile, push, telemetry and the dashboard do not know
//! the difference.
//!
//! It also watches what the proxies do: it collects their spans with
//! Zipkin's API (`collector/`), scrapes their Prometheus metrics into a live
//! traffic graph (`scrape.rs`, `graph.rs`), and serves the dashboard that
//! shows both (`dashboard.rs`, on port 15014).
//!
//! ```text
//! sidecar --PUT announce / heartbeat--> registry --\
//! meshctl --POST /v1/config/apply-----> config ----+--> version N --> compile --> GET snapshot (long-poll)
//!                                                         \--> .mesh/state/*.json
//! ```
//!
//! # Running it in-process
//!
//! The binary is a thin wrapper around [`Server::start`]; tests run the same
//! server on a free port:
//!
//! ```no_run
//! # async fn demo() -> Result<(), mesh_control::Error> {
//! use mesh_control::{Server, Settings};
//!
//! let mut settings = Settings::local("/tmp/mesh-state"); // 127.0.0.1:0
//! settings.lease = std::time::Duration::from_millis(300); // expire quickly in tests
//! let control = Server::start(settings).await?;
//! let base = control.url(); // "http://127.0.0.1:PORT"
//! // ... PUT {base}/v1/proxies/{instance}, GET {base}/v1/services ...
//! assert!(control.version() >= 1);
//! control.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! [`Settings`] has public fields (listen address, state dir, lease,
//! forget-after, long-poll cap) and `Default` is what the binary uses.
//! [`ServerHandle`] gives [`addr`](ServerHandle::addr),
//! [`url`](ServerHandle::url), [`version`](ServerHandle::version),
//! [`watching`](ServerHandle::watching),
//! [`state_dir`](ServerHandle::state_dir),
//! [`dashboard_url`](ServerHandle::dashboard_url),
//! [`collector`](ServerHandle::collector) and
//! [`shutdown`](ServerHandle::shutdown); dropping it stops the server
//! without waiting. The HTTP API itself is listed in `api.rs` and typed in
//! `mesh_api::xds` and `mesh_api::config`.

use std::io;
use std::net::SocketAddr;

mod api;
mod args;
pub mod ca;
pub mod collector;
pub mod compile;
mod config_api;
pub mod dashboard;
pub mod graph;
pub mod kubernetes;
pub mod pilot;
pub mod registry;
pub mod scrape;
pub mod secure;
mod server;
mod state;
pub mod store;
pub mod token;
mod watch;

pub use args::{Args, SourceKind};
pub use kubernetes::{KubernetesSource, WebhookSettings};
pub use server::{DEFAULT_STATE_DIR, MAX_WATCH_WAIT, Server, ServerHandle, Settings};
pub use store::StoreError;
pub use token::{TokenError, WriteToken};

/// Why the control plane could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state directory cannot be used (corrupt file, not writable...).
    #[error(transparent)]
    State(#[from] StoreError),

    #[error(
        "cannot listen on {addr}: {error}; is another mesh-control (or `meshctl up`) \
         already running? Choose another address with --listen or MESH_CONTROL_LISTEN"
    )]
    Bind { addr: SocketAddr, error: io::Error },

    #[error(
        "the dashboard cannot listen on {addr}: {error}; is another mesh-control already \
         running? Choose another address with --dashboard-listen or MESH_DASHBOARD_LISTEN \
         (`off` runs without it)"
    )]
    DashboardBind { addr: SocketAddr, error: io::Error },

    #[error("the control plane's HTTP server failed: {0}")]
    Serve(io::Error),

    #[error("a control plane task failed: {0}")]
    Task(tokio::task::JoinError),

    #[error(
        "invalid log filter {filter:?} (--log or MESH_LOG): {message}; \
         write for example `info` or `info,mesh_control=debug`"
    )]
    LogFilter { filter: String, message: String },

    /// The mesh CA could not load or make its root (`ca.rs`).
    #[error(transparent)]
    Ca(#[from] ca::CaError),

    /// The write token could not be made or read (`token.rs`).
    #[error(transparent)]
    Token(#[from] token::TokenError),

    /// The secure port could not start (`secure.rs`).
    #[error(transparent)]
    Secure(#[from] secure::SecureError),

    #[error(
        "cannot listen on {addr} (the secure port): {error}; is another mesh-control already \
         running? Choose another address with --secure-listen or MESH_SECURE_LISTEN"
    )]
    SecureBind { addr: SocketAddr, error: io::Error },

    /// The admission webhook could not start (`kubernetes/webhook.rs`).
    #[error(transparent)]
    Webhook(#[from] kubernetes::webhook::WebhookError),

    #[error("{0}")]
    Usage(String),
}
