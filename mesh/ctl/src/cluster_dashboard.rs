//! `meshctl dashboard` on a cluster: the control plane's dashboard on a
//! local port, each request relayed through the API server's service proxy.
//!
//! A browser needs an address it can open. `istioctl dashboard kiali` opens
//! a port-forward to the pod and blocks until Ctrl-C; we do the same with a
//! small HTTP server on 127.0.0.1 that sends every request it gets to the
//! Service's dashboard port (`http-dashboard`, 15014) through the API server
//! (`cluster.rs`), so no WebSocket or pod name is needed and the paths are
//! the ones the page asks for (`/`, `/dashboard.js`, `/api/v1/graph`...).
//!
//! The API server rewrites absolute links in HTML it relays so that they
//! point back into the proxy (`href="/x"` becomes
//! `href="/api/v1/namespaces/mesh-system/services/.../proxy/x"`); a request
//! for such a path is taken back to `/x` here.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::cluster::{self, ServiceProxy};

/// The largest request body relayed (the dashboard only sends GETs).
const MAX_BODY: usize = 1 << 20;

/// The relay as an axum app (tests call it on a port of their own).
pub fn app(proxy: ServiceProxy) -> axum::Router {
    axum::Router::new().fallback(relay).with_state(proxy)
}

/// Bind `listen` (a busy port is an error that says how to pick another)
/// and serve until Ctrl-C.
pub async fn serve(
    proxy: ServiceProxy,
    listen: SocketAddr,
    on_ready: impl FnOnce(String),
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {listen} for the dashboard (is another `meshctl dashboard` or \
             `meshctl up` using it?); pick another port with --port, 0 for any free one"
            )
        })?;
    let addr = listener.local_addr()?;
    on_ready(format!("http://{addr}/"));
    axum::serve(listener, app(proxy))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("the dashboard relay stopped")
}

/// The path the control plane should see: the request's own, with the
/// service proxy's prefix taken off if the API server's link rewriting put
/// it there.
pub fn upstream_path(path_and_query: &str) -> String {
    let prefix = ServiceProxy::path(cluster::DASHBOARD_PORT, "");
    match path_and_query.strip_prefix(&prefix) {
        Some("") => "/".to_string(),
        Some(rest) if rest.starts_with('/') || rest.starts_with('?') => {
            if rest.starts_with('?') {
                format!("/{rest}")
            } else {
                rest.to_string()
            }
        }
        _ => path_and_query.to_string(),
    }
}

async fn relay(State(proxy): State<ServiceProxy>, request: Request) -> Response {
    let method = request.method().clone();
    let path = upstream_path(request.uri().path_and_query().map_or("/", |p| p.as_str()));
    let body = match to_bytes(request.into_body(), MAX_BODY).await {
        Ok(body) => body.to_vec(),
        Err(e) => return (StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response(),
    };
    match proxy
        .send(cluster::DASHBOARD_PORT, method, &path, body)
        .await
    {
        Ok((status, content_type, bytes)) => {
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            if let Some(value) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
                response.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            response
        }
        // The API server's refusal, already worded for the user: show it in
        // the browser and in the terminal.
        Err(e) => {
            eprintln!("{path}: {e:#}");
            (StatusCode::BAD_GATEWAY, format!("{e:#}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::fake_cluster;

    #[test]
    fn the_api_servers_rewritten_links_come_back_to_the_page_paths() {
        let prefix = ServiceProxy::path(cluster::DASHBOARD_PORT, "");
        assert_eq!(
            upstream_path(&format!("{prefix}/dashboard.js")),
            "/dashboard.js"
        );
        assert_eq!(upstream_path(&prefix), "/");
        assert_eq!(upstream_path(&format!("{prefix}?x=1")), "/?x=1");
        assert_eq!(
            upstream_path("/api/v1/graph?window=1m"),
            "/api/v1/graph?window=1m"
        );
        // Not the prefix, only something that starts like it.
        assert_eq!(
            upstream_path(&format!("{prefix}x/y")),
            format!("{prefix}x/y")
        );
    }

    #[tokio::test]
    async fn a_browser_request_reaches_the_dashboard_port_through_the_api_server() {
        let (proxy, seen) = fake_cluster(|line| {
            if line.ends_with("/proxy/") {
                (StatusCode::OK, "<html>dashboard</html>".into())
            } else {
                (StatusCode::OK, r#"{"edges":[]}"#.into())
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, app(proxy)).into_future());
        let http = reqwest::Client::builder().no_proxy().build().unwrap();

        let page = http.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.text().await.unwrap(), "<html>dashboard</html>");
        let graph = http
            .get(format!("http://{addr}/api/v1/graph?window=5m"))
            .send()
            .await
            .unwrap();
        assert_eq!(graph.text().await.unwrap(), r#"{"edges":[]}"#);

        let base =
            "GET /api/v1/namespaces/mesh-system/services/http:mesh-control:http-dashboard/proxy";
        assert_eq!(
            *seen.lock().unwrap(),
            [format!("{base}/"), format!("{base}/api/v1/graph?window=5m")]
        );
    }

    #[tokio::test]
    async fn an_api_server_refusal_is_shown_in_the_browser() {
        let (proxy, _) = fake_cluster(|_| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"kind":"Status","message":"no endpoints available for service"}"#.into(),
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, app(proxy)).into_future());
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let page = http.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::BAD_GATEWAY);
        let text = page.text().await.unwrap();
        assert!(text.contains("pod is not ready"), "{text}");
    }
}
