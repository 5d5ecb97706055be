//! The client side of sentiment-service: `POST {SENTIMENT_URL}/sentiment`.
//!
//! guestbook-service -> [its sidecar] -> sentiment-service. The URL names the
//! service (`http://sentiment-service:8080`); reqwest sends the request to the
//! sidecar given in `HTTP_PROXY`, which routes by the request's authority.
//! No DNS lookup of `sentiment-service` happens in the app.

use std::time::Duration;

use axum::http::HeaderMap;
use serde::Deserialize;

/// Why a message got no sentiment. The Display text goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum SentimentError {
    #[error("sentiment-service timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("sentiment-service could not be reached at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("sentiment-service answered {status}: {body}")]
    Status {
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("sentiment-service answered with an unexpected body ({detail}): {body}")]
    BadAnswer { detail: String, body: String },
}

#[derive(Deserialize)]
struct Answer {
    sentiment: String,
}

/// Ask sentiment-service about `text`, within `timeout` for the whole exchange
/// (like an Envoy route timeout: connect, send and read the body).
pub async fn classify(
    client: &reqwest::Client,
    base_url: &str,
    timeout: Duration,
    text: &str,
    trace_headers: HeaderMap,
) -> Result<String, SentimentError> {
    let url = format!("{base_url}/sentiment");
    let exchange = async {
        let response = client
            .post(&url)
            .headers(trace_headers)
            .json(&serde_json::json!({ "text": text }))
            .send()
            .await
            .map_err(|e| SentimentError::Unreachable {
                url: url.clone(),
                detail: causes(&e),
            })?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| SentimentError::Unreachable {
                url: url.clone(),
                detail: causes(&e),
            })?;
        Ok::<_, SentimentError>((status, body))
    };
    let (status, body) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| SentimentError::Timeout(timeout))??;

    if !status.is_success() {
        return Err(SentimentError::Status {
            status,
            body: snippet(&body),
        });
    }
    let answer: Answer = serde_json::from_str(&body).map_err(|e| SentimentError::BadAnswer {
        detail: e.to_string(),
        body: snippet(&body),
    })?;
    // Only the labels the UI knows; anything else would be shown as-is to users.
    match answer.sentiment.as_str() {
        "positive" | "neutral" | "negative" => Ok(answer.sentiment),
        other => Err(SentimentError::BadAnswer {
            detail: format!("unknown sentiment {other:?}"),
            body: snippet(&body),
        }),
    }
}

/// An error and its causes on one line. reqwest's own message ("error
/// sending request") hides the useful part ("Connection refused") in its
/// source chain.
fn causes(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// The first 200 characters of a body, on one line, for a log message.
fn snippet(body: &str) -> String {
    let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &one_line[..cut]),
        None => one_line,
    }
}
