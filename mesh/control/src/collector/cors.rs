//! CORS on the collector's routes, as Zipkin's server allows it, so a
//! Zipkin UI (or a browser app reporting its own spans) served from another
//! origin can read and post.
//!
//! A browser sends a *preflight* `OPTIONS` before a cross-origin request
//! with a JSON body, asking whether the method and headers are allowed; it
//! then reads the answer only if `Access-Control-Allow-Origin` permits its
//! origin. Zipkin's default (`zipkin.query.allowed-origins: "*"`) allows any
//! origin, the methods GET and POST (POST "accidentally" once, kept since
//! browser tracers rely on it), and the request headers `content-type` and
//! `x-grpc-web`; it never allows credentials. Istio leaves this to whatever
//! tracing backend you install; micromesh's collector does what Zipkin does.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The methods a cross-origin caller may use.
pub const ALLOWED_METHODS: &str = "GET,POST";
/// The request headers a cross-origin caller may send.
pub const ALLOWED_HEADERS: &str = "content-type,x-grpc-web";

/// The middleware: answers preflights itself, and marks every answer to a
/// request that came with an `Origin` as readable from any origin.
pub async fn cors(request: Request, next: Next) -> Response {
    let Some(origin) = request.headers().get(header::ORIGIN).cloned() else {
        // Same-origin or not a browser: nothing to add.
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        return match preflight_refusal(request.headers()) {
            None => {
                let mut response = StatusCode::OK.into_response();
                allow(response.headers_mut());
                response.headers_mut().insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    HeaderValue::from_static(ALLOWED_METHODS),
                );
                response
            }
            Some(why) => {
                tracing::debug!(?origin, "CORS preflight refused: {why}");
                (StatusCode::FORBIDDEN, why).into_response()
            }
        };
    }
    let mut response = next.run(request).await;
    allow(response.headers_mut());
    response
}

fn allow(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

/// Why a preflight is refused, or `None` when its method and every header
/// it asks for are allowed.
fn preflight_refusal(headers: &HeaderMap) -> Option<String> {
    let method = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ALLOWED_METHODS.split(',').any(|m| m == method) {
        return Some(format!(
            "CORS: method {method:?} is not allowed cross-origin; the collector allows \
             {ALLOWED_METHODS}"
        ));
    }
    let asked = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    asked
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .find(|h| !h.is_empty() && !ALLOWED_HEADERS.split(',').any(|a| a == h))
        .map(|h| {
            format!(
                "CORS: request header {h:?} is not allowed cross-origin; the collector allows \
                 {ALLOWED_HEADERS}"
            )
        })
}
