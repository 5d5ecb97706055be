//! The admin listener (Envoy's admin port, 15000): what the proxy is doing.
//!
//! - `GET /ready`: 200 once a snapshot is in use and, for a sidecar, the app
//!   accepts connections; 503 with the reason otherwise. meshctl, Kubernetes
//!   readiness probes and the tests wait on it.
//! - `GET /healthz/ready`: the proxy alone, never the app: 200 once a
//!   snapshot is in use (the listeners are bound before this port answers
//!   at all), 503 otherwise. Istio's pilot-agent serves the same path on
//!   15021 and reports only Envoy's own readiness (first config received,
//!   listeners up). A native sidecar's startup probe needs exactly this:
//!   Kubernetes starts the app only after the sidecar's startup probe
//!   passes, so a probe that waited for the app (`/ready`) would wait forever.
//! - Both readiness paths answer 503 from the moment shutdown begins (the
//!   drain, `proxy.rs`), as Istio's pilot-agent does on SIGTERM: Kubernetes
//!   takes the pod out of its Service's endpoints while the listeners still
//!   serve whoever has not noticed yet.
//! - `GET /config_dump`: the snapshot in use as pretty JSON, its version,
//!   and the last rejected version and why (Envoy's `/config_dump`).
//! - `GET /certs`: the workload certificate (SPIFFE ID, chain, validity,
//!   next rotation) the identity worker keeps (`identity.rs`).
//! - `GET /stats/prometheus`: Istio's request metrics and the span
//!   reporter's counters in Prometheus text (`metrics.rs`); Envoy serves the
//!   same page on its admin port, and Istio's Prometheus scrapes it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use hyper::body::Incoming;
use mesh_api::xds::ProxyMode;

use crate::body::{Rsp, full, text_response};
use crate::proxy::Shared;

/// How long `/ready` waits for the app to accept a connection.
pub const APP_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

pub async fn handle(shared: Arc<Shared>, req: http::Request<Incoming>) -> Result<Rsp, Infallible> {
    if req.method() != http::Method::GET {
        return Ok(text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "the admin port only answers GET\n",
        ));
    }
    Ok(match req.uri().path() {
        "/ready" => ready(&shared).await,
        "/healthz/ready" => proxy_ready(&shared),
        "/config_dump" => config_dump(&shared),
        "/stats/prometheus" => stats(&shared),
        "/certs" => certs(&shared),
        _ => text_response(
            StatusCode::NOT_FOUND,
            "admin endpoints: GET /ready, GET /healthz/ready, GET /config_dump, \
             GET /stats/prometheus, GET /certs\n",
        ),
    })
}

/// Whether the proxy itself can serve: it has a snapshot. Its listeners were
/// all bound in `Proxy::start` before the admin port began to answer.
fn proxy_ready(shared: &Shared) -> Rsp {
    if shared.drain.is_draining() {
        return text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: draining, the proxy is shutting down\n",
        );
    }
    if shared.current.load().is_none() {
        return text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no config from the control plane yet\n",
        );
    }
    text_response(StatusCode::OK, "proxy ready\n")
}

async fn ready(shared: &Shared) -> Rsp {
    let proxy = proxy_ready(shared);
    if proxy.status() != StatusCode::OK {
        return proxy;
    }
    if shared.config.mode == ProxyMode::Sidecar && !probe_app(shared.config.app_addr).await {
        return text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the app does not accept connections at {} (MESH_APP_ADDR)\n",
                shared.config.app_addr
            ),
        );
    }
    text_response(StatusCode::OK, "ready\n")
}

/// Whether the app accepts a TCP connection (a Kubernetes `tcpSocket` probe).
pub async fn probe_app(addr: std::net::SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(APP_PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

fn stats(shared: &Shared) -> Rsp {
    let mut rsp = http::Response::new(full(shared.telemetry.metrics.render()));
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    rsp
}

/// `GET /certs`: the workload certificate chain, its validity and the next
/// rotation (`identity.rs`), as JSON (Envoy's admin has `/certs` too).
fn certs(shared: &Shared) -> Rsp {
    let certs = crate::identity::describe(&shared.identity, shared.config.identity_token.is_some());
    let body = serde_json::to_string_pretty(&certs).unwrap_or_default() + "\n";
    let mut rsp = http::Response::new(full(body));
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    rsp
}

fn config_dump(shared: &Shared) -> Rsp {
    let current = shared.current.load_full();
    let status = shared.status();
    let dump = serde_json::json!({
        "instance": shared.config.instance,
        "mode": shared.config.mode,
        "version": current.as_ref().map(|c| c.snapshot.version),
        "snapshot": current.as_ref().map(|c| c.snapshot.as_ref()),
        "lastRejected": status.last_rejected.as_ref().map(|(version, error)| {
            serde_json::json!({ "version": version, "error": error })
        }),
    });
    // Serializing a `serde_json::Value` cannot fail.
    let body = serde_json::to_string_pretty(&dump).unwrap_or_default() + "\n";
    let mut rsp = http::Response::new(full(body));
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    rsp
}
