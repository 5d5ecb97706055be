//! guestbook-service binary: read the config, open the database, serve.
//!
//! Run it (sentiment-service is optional; without it messages are stored with
//! sentiment "unknown"):
//!
//! ```text
//! DATABASE_PATH=/tmp/guestbook.db SENTIMENT_URL=http://127.0.0.1:8082 PORT=8081 \
//!     cargo run -p guestbook-service
//! curl -s localhost:8081/messages -d '{"name":"ray","message":"great talk"}'
//! curl -s localhost:8081/messages
//! ```
//!
//! See `lib.rs` for the endpoints and `config.rs` for every variable.

use anyhow::Context;
use guestbook_service::{AppState, Config, Store, app, config::Env};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // Colours only on a terminal: meshctl and containers write logs to files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();

    let config = Config::from_strings(&Env).context("guestbook-service: bad configuration")?;
    let store = Store::open(&config.database_path)?;
    // reqwest's default client reads HTTP_PROXY, which points at our sidecar's
    // outbound port; do not add `.no_proxy()` here. The sidecar routes by the
    // request's authority (`sentiment-service:8080`): the app never resolves
    // that name by DNS.
    let client = reqwest::Client::builder()
        .build()
        .context("guestbook-service: cannot build the HTTP client")?;

    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| {
            format!(
                "guestbook-service: cannot listen on {}:{}; is another process using the port? set PORT to another one",
                config.host, config.port
            )
        })?;
    tracing::info!(
        "guestbook-service {} listening on http://{} (hostname={}, database={}, sentiment={}, outbound via {})",
        config.version,
        listener.local_addr()?,
        config.hostname,
        config.database_path,
        config.sentiment_url,
        std::env::var("HTTP_PROXY")
            .unwrap_or_else(|_| "direct connections (HTTP_PROXY unset)".into()),
    );

    let state = AppState {
        config: config.into(),
        store,
        client,
    };
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("guestbook-service: server failed")
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
    tracing::info!("guestbook-service shutting down");
}
