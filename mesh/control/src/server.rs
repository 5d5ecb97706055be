//! Starting and stopping the control plane: settings, the listening socket,
//! and the background tasks (lease ticker, registry writer).
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
use crate::state::Shared;

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
        }
    }
}

impl Settings {
    /// For tests and embedding: a free port on 127.0.0.1, state in
    /// `state_dir`, every other setting at its default.
    pub fn local(state_dir: impl Into<PathBuf>) -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir: state_dir.into(),
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

        let shared = Arc::new(Shared::load(settings, shutdown.clone())?);
        let app = api::router(shared.clone());
        // Graceful: stop accepting, let in-flight requests finish. Long-polls
        // watch the same token and answer at once, so this is quick.
        let serve =
            axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let server = tokio::spawn(async move { serve.await });
        let ticker = tokio::spawn(shared.clone().expire_leases());
        let writer = tokio::spawn(shared.clone().write_registry());

        Ok(ServerHandle {
            addr,
            shared,
            shutdown,
            tasks: Some(Tasks {
                server,
                ticker,
                writer,
            }),
        })
    }
}

/// A running control plane. Dropping it stops the server too (without
/// waiting); call [`ServerHandle::shutdown`] to wait until it has stopped.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tasks: Option<Tasks>,
}

/// The control plane's tasks, awaited on shutdown.
#[derive(Debug)]
struct Tasks {
    server: JoinHandle<io::Result<()>>,
    ticker: JoinHandle<()>,
    writer: JoinHandle<()>,
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

    /// Stop accepting requests, answer pending long-polls, and wait until
    /// the server and the background tasks have stopped. Applied config is
    /// on disk before an apply is answered; the registry writer makes its
    /// last write before this returns.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.shutdown.cancel();
        if let Some(tasks) = self.tasks.take() {
            let served = tasks.server.await.map_err(Error::Task)?;
            tasks.ticker.await.map_err(Error::Task)?;
            // The writer makes its last registry write before it returns.
            tasks.writer.await.map_err(Error::Task)?;
            served.map_err(Error::Serve)?;
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
