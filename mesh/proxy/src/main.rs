//! The `mesh-proxy` binary: read the settings from the environment (see
//! `config.rs`), run the sidecar or gateway until SIGTERM or Ctrl-C, then
//! leave the mesh and drain.
//!
//! ```text
//! MESH_SERVICE=helloworld-service MESH_APP_ADDR=127.0.0.1:8081 mesh-proxy
//! ```

use std::io::IsTerminal;

use anyhow::Context;
use mesh_proxy::{Config, Proxy};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> anyhow::Result<()> {
    let config = Config::from_env().context("invalid proxy settings")?;
    // Envoy's model: `--concurrency` workers, each an event loop. With one,
    // everything runs on this thread (no work stealing, no cross-thread
    // wake-ups: the cheapest per request); with more, tokio's pool shares
    // connections between them.
    let runtime = if config.concurrency == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut pool = tokio::runtime::Builder::new_multi_thread();
        pool.worker_threads(config.concurrency);
        pool
    }
    .enable_all()
    .build()
    .context("could not start the async runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log)
        .with_context(|| format!("MESH_LOG={:?} is not a valid tracing filter", config.log))?;
    // Logs go to stderr, like Envoy's; stdout stays free for the app's own
    // output when both share a terminal under meshctl. Access lines are
    // short text or JSON (MESH_ACCESS_LOG_ENCODING, see `log.rs`).
    let ansi = std::io::stderr().is_terminal();
    mesh_proxy::log::subscriber(filter, config.access_log_encoding, ansi, std::io::stderr).init();

    let proxy = Proxy::start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    proxy.shutdown().await;
    Ok(())
}

/// Ctrl-C anywhere, SIGTERM on Unix (what `docker stop` and Kubernetes send).
async fn shutdown_signal() {
    let ctrl_c = async {
        // If the handler cannot be installed we only lose this one way out.
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
