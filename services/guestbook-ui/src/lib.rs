//! guestbook-ui: the Guestbook's web page (Rust, axum, server-side HTML).
//!
//! Where it sits in the request path: the first app behind the gateway.
//!
//! ```text
//! user -> gateway -> [sidecar] -> guestbook-ui (this crate)
//!                                   -> [sidecar] -> helloworld-service   the greeting
//!                                   -> [sidecar] -> guestbook-service    the messages
//! ```
//!
//! - `GET /`: the page. It asks helloworld-service for a greeting for the last
//!   name used (cookie `name`, default "world") and guestbook-service for the
//!   messages, both at once, each with its own timeout (`BACKEND_TIMEOUT_MS`).
//!   A failed backend never fails the page: its box says which service failed
//!   and how, which is what the fault-injection and timeout labs look at.
//! - `POST /greet` (form `name`, `message`): posts the message to
//!   guestbook-service, remembers the name in a cookie, and redirects (303) to
//!   `/`; if the post fails, to `/?error=...` so the page says why.
//! - `GET /health`: `ok` (the sidecar probes it).
//!
//! The router is built by [`app`] so tests drive it with
//! `app(state).oneshot(request)`, without a server (the axum examples' way).

pub mod backends;
pub mod config;
pub mod page;
pub mod trace;

use std::sync::Arc;

use axum::{
    Form, Router,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

use crate::backends::Backends;
pub use crate::config::Config;

/// The greeting's name when no cookie says otherwise.
pub const DEFAULT_NAME: &str = "world";
/// Names longer than this (guestbook-service's own limit) are cut in the cookie.
pub const MAX_NAME_CHARS: usize = 64;

/// What every handler shares. Cloning is cheap (an `Arc` and client handles).
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub backends: Backends,
}

impl AppState {
    /// `client` is reqwest's default client in `main` (it honours
    /// `HTTP_PROXY`, the sidecar); tests pass one built with `.no_proxy()`.
    pub fn new(config: Config, client: reqwest::Client) -> AppState {
        let backends = Backends {
            client,
            helloworld_url: config.helloworld_url.clone(),
            guestbook_url: config.guestbook_url.clone(),
            timeout: config.backend_timeout,
        };
        AppState {
            config: Arc::new(config),
            backends,
        }
    }
}

/// The guestbook-ui router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/greet", post(greet))
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "no such page; the Guestbook is at /\n",
            )
        })
        .with_state(state)
}

// === Handlers ===

#[derive(Deserialize)]
struct IndexQuery {
    error: Option<String>,
}

async fn index(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<IndexQuery>,
) -> Response {
    let name = name_from_cookie(&headers).unwrap_or_else(|| DEFAULT_NAME.to_string());

    // Both backends at once: the page waits for the slower one, not the sum.
    // Each call carries the trace headers we received (see `trace.rs`).
    let (greeting, messages) = tokio::join!(
        state.backends.greeting(&name, trace::forwarded(&headers)),
        state.backends.messages(trace::forwarded(&headers)),
    );
    for err in [greeting.as_ref().err(), messages.as_ref().err()]
        .into_iter()
        .flatten()
    {
        tracing::warn!("rendering the page without a backend: {err}");
    }

    let html = page::Page {
        version: &state.config.version,
        hostname: &state.config.hostname,
        name: &name,
        greeting: &greeting,
        messages: &messages,
        post_error: query.error.as_deref(),
    }
    .render();
    // no-store: every reload asks the backends again, so a canary split shows
    // up as the greeting changing between reloads, not as a cached page.
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

#[derive(Deserialize)]
struct GreetForm {
    // Missing fields become "" and reach guestbook-service, whose validation
    // error ("name is empty") is then shown on the page: one place decides.
    #[serde(default)]
    name: String,
    #[serde(default)]
    message: String,
}

async fn greet(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<GreetForm>,
) -> Response {
    // Forwarded as typed: guestbook-service trims and validates.
    let result = state
        .backends
        .post_message(&form.name, &form.message, trace::forwarded(&headers))
        .await;

    // 303 See Other: the browser follows with a GET, so reloading the page
    // afterwards does not post the message again (Post/Redirect/Get).
    let location = match &result {
        Ok(()) => "/".to_string(),
        Err(err) => {
            tracing::warn!("could not post a message: {err}");
            format!("/?error={}", percent_encode(&err.to_string()))
        }
    };
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
    let name: String = form.name.trim().chars().take(MAX_NAME_CHARS).collect();
    if !name.is_empty() {
        // The greeting follows the last name used, even if the post failed.
        let cookie = format!(
            "name={}; Path=/; Max-Age=31536000; SameSite=Lax; HttpOnly",
            percent_encode(&name)
        );
        // percent_encode leaves only ASCII letters, digits and `-._~%`, all valid in a header.
        let value =
            HeaderValue::from_str(&cookie).expect("percent-encoded cookie is a valid header value");
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

// === Cookies and percent-encoding ===

/// The `name` cookie's value, decoded; `None` if absent or empty.
fn name_from_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == "name")
        .map(|(_, value)| {
            percent_decode(value)
                .trim()
                .chars()
                .take(MAX_NAME_CHARS)
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
}

/// Percent-encode everything but RFC 3986's unreserved characters, so the
/// result is safe in a URL path segment, a query value and a cookie value.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Undo [`percent_encode`]. A `%` not followed by two hex digits stays as it
/// is; bytes that are not UTF-8 become U+FFFD (a cookie is user-controlled).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_round_trip() {
        for text in ["ray", "José & <b>Ana</b>; x=1", "100%", "😀 emoji", ""] {
            let encoded = percent_encode(text);
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b))
            );
            assert_eq!(percent_decode(&encoded), text);
        }
        assert_eq!(percent_decode("50%zz%4"), "50%zz%4");
    }

    #[test]
    fn name_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; name=Mary%20Ann; x=y"),
        );
        assert_eq!(name_from_cookie(&headers).as_deref(), Some("Mary Ann"));
        headers.insert(header::COOKIE, HeaderValue::from_static("name=%20"));
        assert_eq!(name_from_cookie(&headers), None);
        assert_eq!(name_from_cookie(&HeaderMap::new()), None);
    }
}
