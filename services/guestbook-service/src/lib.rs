//! guestbook-service: the Guestbook's message store (Rust, axum, SQLite).
//!
//! Where it sits in the request path:
//!
//! ```text
//! user -> gateway -> guestbook-ui -> [sidecar] -> guestbook-service (this crate)
//!                                                  -> [sidecar] -> sentiment-service
//! ```
//!
//! - `GET /messages`: the newest 50 messages, newest first, as JSON
//!   `[{"id","name","message","sentiment","timestamp"}]`.
//! - `POST /messages` with JSON `{"name","message"}`: validate, ask
//!   sentiment-service for the message's sentiment, store, answer 201 with the
//!   stored message. Invalid input answers 400 `{"error": "...", "field": "name"}`.
//! - `GET /health`: `ok` (the sidecar probes it).
//!
//! Design decision: when sentiment-service fails (down, slow, 5xx), the
//! message is still stored, with sentiment `"unknown"`, and a warning is
//! logged. Sentiment is decoration; losing a guest's message because the
//! decoration failed would be the worse outcome. This is graceful degradation,
//! the app-side half of resilience: the fault-injection lab aborts calls to
//! sentiment-service and the Guestbook keeps working, tagging messages
//! "unknown".
//!
//! The router is built by [`app`] so tests drive it with
//! `app(state).oneshot(request)`, without a server (the axum examples' way).

pub mod config;
pub mod sentiment;
pub mod store;
pub mod trace;

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;
use serde_json::Value;

pub use config::Config;
pub use store::{Message, Store};

/// How many messages `GET /messages` returns.
pub const LIST_LIMIT: u32 = 50;
/// Longest name, in characters, after trimming.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest message, in characters, after trimming.
pub const MAX_MESSAGE_CHARS: usize = 500;

/// What every handler shares. Cloning is cheap (handles and an `Arc`).
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    /// The HTTP client for sentiment-service. In `main` it is built with
    /// reqwest's defaults, which honour `HTTP_PROXY` (the sidecar); tests
    /// pass one built with `.no_proxy()` to reach their fake directly.
    pub client: reqwest::Client,
}

/// The guestbook-service router.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/messages", get(list_messages).post(post_message))
        .route("/health", get(|| async { "ok" }))
        .fallback(not_found)
        // A message is at most 500 characters; 64 KiB is generous and keeps a
        // runaway client from making us buffer megabytes.
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

// === Handlers ===

async fn list_messages(State(state): State<AppState>) -> Result<Json<Vec<Message>>, AppError> {
    let store = state.store.clone();
    // rusqlite blocks; run it on tokio's blocking pool, not an async worker.
    let messages = tokio::task::spawn_blocking(move || store.list(LIST_LIMIT)).await??;
    Ok(Json(messages))
}

async fn post_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Message>), AppError> {
    // 1. Validate everything before doing anything else.
    let new = NewMessage::parse(&body)?;

    // 2. Classify. The trace headers of the request we serve go along on the
    //    request we make: see `trace.rs` for why the sidecar needs that.
    let sentiment = match sentiment::classify(
        &state.client,
        &state.config.sentiment_url,
        state.config.sentiment_timeout,
        &new.message,
        trace::forwarded(&headers),
    )
    .await
    {
        Ok(sentiment) => sentiment,
        Err(err) => {
            tracing::warn!(error = %err, "storing the message with sentiment \"unknown\"");
            "unknown".to_string()
        }
    };

    // 3. Store: one INSERT, so a message is stored whole or not at all.
    let store = state.store.clone();
    let stored =
        tokio::task::spawn_blocking(move || store.insert(&new.name, &new.message, &sentiment))
            .await??;
    tracing::info!(id = stored.id, name = %stored.name, sentiment = %stored.sentiment, "stored message");
    Ok((StatusCode::CREATED, Json(stored)))
}

async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::NotFound(uri.path().to_string())
}

// === Validation ===

/// A `POST /messages` body that passed validation: trimmed, within limits.
#[derive(Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub name: String,
    pub message: String,
}

impl NewMessage {
    /// Parse and validate a body. We read a `serde_json::Value` and check each
    /// field by hand (rather than axum's `Json<T>` extractor) so every error
    /// names the field and says what to send, in our JSON error format. The
    /// content type is not checked: `curl -d` sends a form type by default,
    /// and the body is what matters.
    pub fn parse(body: &[u8]) -> Result<NewMessage, AppError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| AppError::Invalid {
            field: None,
            message: format!(
                "the body is not valid JSON ({e}); send {{\"name\": \"...\", \"message\": \"...\"}}"
            ),
        })?;
        let Value::Object(object) = value else {
            return Err(AppError::Invalid {
                field: None,
                message:
                    "the body must be a JSON object like {\"name\": \"...\", \"message\": \"...\"}"
                        .into(),
            });
        };
        let text = |field: &'static str, max: usize| -> Result<String, AppError> {
            let invalid = |message: String| AppError::Invalid {
                field: Some(field),
                message,
            };
            let value = match object.get(field) {
                None | Some(Value::Null) => return Err(invalid(format!("{field} is missing"))),
                Some(Value::String(s)) => s.trim(),
                Some(_) => return Err(invalid(format!("{field} must be a JSON string"))),
            };
            // Characters, not bytes: "José" is 4 characters however it is encoded.
            let chars = value.chars().count();
            if chars == 0 {
                return Err(invalid(format!("{field} is empty")));
            }
            if chars > max {
                return Err(invalid(format!(
                    "{field} is {chars} characters long; at most {max} are allowed"
                )));
            }
            Ok(value.to_string())
        };
        Ok(NewMessage {
            name: text("name", MAX_NAME_CHARS)?,
            message: text("message", MAX_MESSAGE_CHARS)?,
        })
    }
}

// === AppError ===

/// Every way a request can fail, turned into a JSON response in one place.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the client sent something we refuse; `field` names the culprit.
    #[error("{message}")]
    Invalid {
        field: Option<&'static str>,
        message: String,
    },
    /// 404: no such route.
    #[error("no route for {0}; try GET /messages, POST /messages or GET /health")]
    NotFound(String),
    /// 500: the database failed.
    #[error("guestbook-service could not use its database: {0}; check DATABASE_PATH and the disk")]
    Store(#[from] store::StoreError),
    /// 500: the blocking task running the database call panicked.
    #[error("guestbook-service failed inside a database call: {0}")]
    Task(#[from] tokio::task::JoinError),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, field) = match &self {
            AppError::Invalid { field, .. } => (StatusCode::BAD_REQUEST, *field),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, None),
            AppError::Store(_) | AppError::Task(_) => {
                tracing::error!(error = %self, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
        };
        let body = ErrorBody {
            error: self.to_string(),
            field,
        };
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> Option<&'static str> {
        match NewMessage::parse(body.as_bytes()) {
            Err(AppError::Invalid { field, .. }) => field,
            other => panic!("{body}: expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn valid_input_is_trimmed() {
        let m = NewMessage::parse(br#"{"name": "  Ray ", "message": "\thi there\n", "extra": 1}"#)
            .unwrap();
        assert_eq!(
            m,
            NewMessage {
                name: "Ray".into(),
                message: "hi there".into()
            }
        );
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        let name = "é".repeat(MAX_NAME_CHARS); // 128 bytes, 64 characters
        let body = serde_json::json!({"name": name, "message": "x"}).to_string();
        assert_eq!(NewMessage::parse(body.as_bytes()).unwrap().name, name);
        let body = serde_json::json!({"name": format!("{name}é"), "message": "x"}).to_string();
        assert_eq!(field_of(&body), Some("name"));
    }

    #[test]
    fn each_error_names_its_field() {
        assert_eq!(field_of(r#"{"message": "hi"}"#), Some("name"));
        assert_eq!(field_of(r#"{"name": null, "message": "hi"}"#), Some("name"));
        assert_eq!(
            field_of(r#"{"name": "   ", "message": "hi"}"#),
            Some("name")
        );
        assert_eq!(field_of(r#"{"name": 7, "message": "hi"}"#), Some("name"));
        assert_eq!(field_of(r#"{"name": "ray"}"#), Some("message"));
        assert_eq!(
            field_of(r#"{"name": "ray", "message": ["hi"]}"#),
            Some("message")
        );
        let long = serde_json::json!({"name": "ray", "message": "x".repeat(MAX_MESSAGE_CHARS + 1)});
        assert_eq!(field_of(&long.to_string()), Some("message"));
        assert_eq!(field_of("{not json"), None);
        assert_eq!(field_of(r#"["ray", "hi"]"#), None);
    }
}
