//! guestbook-ui binary: read the config, serve the page.
//!
//! Run it next to the other services (see services/README.md), then open
//! http://localhost:8080/ :
//!
//! ```text
//! HELLOWORLD_URL=http://127.0.0.1:8081 GUESTBOOK_URL=http://127.0.0.1:8082 \
//!     cargo run -p guestbook-ui
//! VERSION=v2 PORT=8090 cargo run -p guestbook-ui    # the green v2 look
//! ```
//!
//! See `lib.rs` for the endpoints and `config.rs` for every variable.

use anyhow::Context;
use guestbook_ui::{AppState, Config, app, config::Env};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Colours only on a terminal: meshctl and containers write logs to files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    let config = Config::from_strings(&Env).context("guestbook-ui: bad configuration")?;
    // reqwest's default client reads HTTP_PROXY, which points at our sidecar's
    // outbound port; do not add `.no_proxy()` here. The sidecar routes by the
    // request's authority (`helloworld-service:8080`): the app never resolves
    // that name by DNS.
    let client = reqwest::Client::builder()
        .build()
        .context("guestbook-ui: cannot build the HTTP client")?;

    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| {
            format!(
                "guestbook-ui: cannot listen on {}:{}; is another process using the port? set PORT to another one",
                config.host, config.port
            )
        })?;
    tracing::info!(
        "guestbook-ui {} listening on http://{} (hostname={}, helloworld={}, guestbook={}, timeout={} ms, outbound via {})",
        config.version,
        listener.local_addr()?,
        config.hostname,
        config.helloworld_url,
        config.guestbook_url,
        config.backend_timeout.as_millis(),
        std::env::var("HTTP_PROXY")
            .unwrap_or_else(|_| "direct connections (HTTP_PROXY unset)".into()),
    );

    axum::serve(listener, app(AppState::new(config, client)))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("guestbook-ui: server failed")
}

/// Resolve on Ctrl-C or SIGTERM (what `docker stop`, Kubernetes and meshctl send).
async fn shutdown_signal() {
    let ctrl_c = async {
        // If installing the handler fails we cannot be interrupted by Ctrl-C;
        // wait forever on this branch and let SIGTERM do the job.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("guestbook-ui shutting down");
}
