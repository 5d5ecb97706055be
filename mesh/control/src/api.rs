//! The control plane's HTTP API: the route table and the small pieces every
//! handler shares (JSON in, pretty JSON out, one error type).
//!
//! Istio's proxies reach istiod over gRPC (xDS) on port 15010; micromesh
//! serves the same role as JSON over HTTP on the same port, so a learner can
//! watch a proxy's config with `curl`. Every reply is pretty-printed JSON,
//! every error is an `ApiError` (`{"error": "..."}`) that says what to do.
//!
//! ```text
//! PUT    /v1/proxies/{instance}            announce / heartbeat   (watch.rs)
//! DELETE /v1/proxies/{instance}            leave                  (watch.rs)
//! GET    /v1/proxies/{instance}/snapshot   long-poll a snapshot   (watch.rs)
//! POST   /v1/proxies/{instance}/ack        ACK / NACK             (watch.rs)
//! GET    /v1/proxies                       every proxy            (watch.rs)
//! GET    /v1/services                      discovery              (watch.rs)
//! POST   /v1/certificates                  sign a workload CSR    (ca.rs)
//! POST   /v1/config/apply                  apply Istio YAML       (config_api.rs)
//! POST   /v1/config/delete                 delete Istio YAML      (config_api.rs)
//! GET    /v1/config?kind=K                 list applied resources (config_api.rs)
//! GET    /v1/analyze                       cross-reference check  (config_api.rs)
//! GET    /v1/merges                        rules merged per host  (config_api.rs)
//! GET    /metrics                          istiod's own metrics   (pilot.rs)
//! POST   /api/v2/spans, GET /api/v2/...    Zipkin's API           (collector/)
//! GET    /api/v1/traces[/{id}/analysis]    traces, broken chains  (collector/)
//! GET    /api/v1/graph, /api/v1/stat       traffic graph, stat    (graph.rs)
//! GET    /api/v1/routes, /api/v1/dashboard routes view, page URL  (dashboard.rs)
//! ```
//!
//! Every write here (PUT, POST, DELETE) needs `Authorization: Bearer
//! <token>` (`token.rs`); reads are open. The same API is served over
//! mutual TLS on the secure port (15012, `secure.rs`), where a proxy's
//! client certificate stands in for the token on its own
//! `/v1/proxies/{instance}` routes and binds the instance to its identity. The telemetry intake (spans) is not
//! guarded: see `token.rs` for why.
//!
//! `server.rs` merges the telemetry routers into this one, and serves the
//! result on both the API port and the dashboard's.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use mesh_api::config::{ConfigError, ConfigErrors};
use mesh_api::xds::ApiError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state::Shared;
use crate::{config_api, watch};

/// The whole API, ready to serve.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/v1/proxies/{instance}",
            put(watch::announce).delete(watch::leave),
        )
        .route("/v1/proxies/{instance}/snapshot", get(watch::snapshot))
        .route("/v1/proxies/{instance}/ack", post(watch::ack))
        .route("/v1/proxies", get(watch::proxies))
        .route("/v1/services", get(watch::services))
        .route("/v1/config/apply", post(config_api::apply))
        .route("/v1/config/delete", post(config_api::delete))
        .route("/v1/config", get(config_api::list))
        .route("/v1/analyze", get(config_api::analyze))
        .route("/v1/merges", get(config_api::merges))
        .route("/metrics", get(pilot_metrics))
        // Each proxy instance is held to the identity its certificate
        // proved, on both ports (`secure.rs`).
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            crate::secure::guard,
        ))
        // Every write above needs the control plane's token (`token.rs`);
        // a route layer, so an unknown path is still a plain 404.
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            crate::token::require_for_writes,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

/// `GET /metrics`: pushes, rejects, convergence and the proxies whose
/// lease is live, in Prometheus' text format (`pilot.rs`).
async fn pilot_metrics(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
) -> Response {
    let connected = {
        let model = shared.lock().await;
        model
            .registry
            .proxies(std::time::Instant::now())
            .iter()
            .filter(|p| p.live)
            .count()
    };
    (
        [(header::CONTENT_TYPE, crate::pilot::CONTENT_TYPE)],
        shared.pilot.render(connected),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such API route: {}; the routes are under /v1/proxies, /v1/services, \
             /v1/config, /v1/analyze, /api/v1 (graph, stat, traces, routes) and /api/v2 (Zipkin)",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> ApiFailure {
    ApiFailure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not supported on {}; see the route table in mesh/control/src/api.rs",
            uri.path()
        ),
    )
}

// === Pretty ===

/// A `200 OK` with pretty-printed JSON, so `curl` output is readable.
pub struct Pretty<T>(pub T);

impl<T: Serialize> IntoResponse for Pretty<T> {
    fn into_response(self) -> Response {
        pretty(StatusCode::OK, &self.0)
    }
}

fn pretty<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(mut body) => {
            body.push(b'\n');
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        // Our types are plain structs with string keys; this does not happen,
        // but if it did the caller still gets JSON.
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            format!("{{\"error\":\"cannot encode the response: {e}\"}}\n"),
        )
            .into_response(),
    }
}

// === ApiFailure ===

/// Every error a handler returns. It always renders as JSON with an `error`
/// field (`mesh_api::xds::ApiError`); an invalid config also lists every
/// problem under `errors` (`mesh_api::config::ConfigErrors`), so meshctl
/// can print each one with its file, resource and field.
#[derive(Debug)]
pub enum ApiFailure {
    Message { status: StatusCode, message: String },
    InvalidConfig(ConfigErrors),
}

/// The body of a 400 for invalid config: both shapes at once.
#[derive(Serialize)]
struct InvalidConfigBody<'a> {
    error: String,
    errors: &'a [ConfigError],
}

impl ApiFailure {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiFailure::Message {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        match self {
            ApiFailure::Message { status, message } => pretty(status, &ApiError { error: message }),
            ApiFailure::InvalidConfig(errors) => {
                let summary = match errors.errors.first() {
                    Some(first) => format!(
                        "{} problem(s) in the config, nothing was applied; first: {}: {}: {}: {}",
                        errors.errors.len(),
                        first.file,
                        first.resource,
                        first.field,
                        first.message
                    ),
                    None => "the config is invalid, nothing was applied".to_string(),
                };
                let body = InvalidConfigBody {
                    error: summary,
                    errors: &errors.errors,
                };
                pretty(StatusCode::BAD_REQUEST, &body)
            }
        }
    }
}

// === JsonBody ===

/// Like `axum::Json`, but a malformed body is an `ApiFailure` (JSON) rather
/// than axum's plain-text rejection.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(ApiFailure::new(
                rejection.status(),
                format!(
                    "invalid request body: {}; send JSON with `Content-Type: application/json`",
                    rejection.body_text()
                ),
            )),
        }
    }
}

// === QueryParams ===

/// Like `axum::extract::Query`, with JSON errors.
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(QueryParams(value)),
            Err(rejection) => Err(ApiFailure::bad_request(format!(
                "invalid query string: {}",
                rejection.body_text()
            ))),
        }
    }
}
