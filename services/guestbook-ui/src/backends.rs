//! The UI's two backends, called by plain name through the sidecar:
//!
//! ```text
//! guestbook-ui -> [sidecar] -> helloworld-service  GET  /hello/{name}
//!              -> [sidecar] -> guestbook-service   GET  /messages, POST /messages
//! ```
//!
//! The URLs name services (`http://helloworld-service:8080`). reqwest sends
//! every request to the sidecar given in `HTTP_PROXY`, which routes by the
//! request's authority (`helloworld-service:8080`): the app never resolves
//! those names by DNS. Canary splits, injected faults and retries all happen
//! in the sidecar; this file only sees their outcome, and reports it in words
//! a workshop attendee can match to the lab ("answered 503: fault filter
//! abort", "timed out after 3000 ms").

use std::time::Duration;

use axum::http::HeaderMap;
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub const HELLOWORLD: &str = "helloworld-service";
pub const GUESTBOOK: &str = "guestbook-service";

/// helloworld-service's answer to `GET /hello/{name}`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Greeting {
    pub greeting: String,
    pub version: String,
    pub hostname: String,
}

/// One message from guestbook-service's `GET /messages`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub id: i64,
    pub name: String,
    pub message: String,
    pub sentiment: String,
    pub timestamp: String,
}

/// A backend call that did not give us what we needed. The Display text is
/// shown on the page as it is, so it names the service and what happened.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    #[error("{service} answered {status}: {body}")]
    Status {
        service: &'static str,
        status: u16,
        body: String,
    },
    #[error("{service} timed out after {ms} ms")]
    Timeout { service: &'static str, ms: u128 },
    #[error("{service} could not be reached: {detail}")]
    Unreachable {
        service: &'static str,
        detail: String,
    },
    #[error("{service} answered {status} with a body this page cannot read ({detail}): {body}")]
    BadBody {
        service: &'static str,
        status: u16,
        detail: String,
        body: String,
    },
}

/// An HTTP client and the settings every backend call shares.
#[derive(Clone)]
pub struct Backends {
    pub client: reqwest::Client,
    pub helloworld_url: String,
    pub guestbook_url: String,
    pub timeout: Duration,
}

impl Backends {
    /// `GET {HELLOWORLD_URL}/hello/{name}`.
    pub async fn greeting(&self, name: &str, trace: HeaderMap) -> Result<Greeting, BackendError> {
        let url = format!(
            "{}/hello/{}",
            self.helloworld_url,
            crate::percent_encode(name)
        );
        let request = self.client.get(url).headers(trace);
        let (status, body) = self.exchange(HELLOWORLD, request).await?;
        expect_json(HELLOWORLD, 200, status, &body)
    }

    /// `GET {GUESTBOOK_URL}/messages`.
    pub async fn messages(&self, trace: HeaderMap) -> Result<Vec<Message>, BackendError> {
        let url = format!("{}/messages", self.guestbook_url);
        let request = self.client.get(url).headers(trace);
        let (status, body) = self.exchange(GUESTBOOK, request).await?;
        expect_json(GUESTBOOK, 200, status, &body)
    }

    /// `POST {GUESTBOOK_URL}/messages`; Ok when guestbook-service stored it.
    /// A 400 comes back as `Err(Status)` whose body is guestbook-service's
    /// own error text ("message is empty"), the part a user can act on.
    pub async fn post_message(
        &self,
        name: &str,
        message: &str,
        trace: HeaderMap,
    ) -> Result<(), BackendError> {
        let url = format!("{}/messages", self.guestbook_url);
        let request = self
            .client
            .post(url)
            .headers(trace)
            .json(&serde_json::json!({ "name": name, "message": message }));
        let (status, body) = self.exchange(GUESTBOOK, request).await?;
        if status == 201 {
            return Ok(());
        }
        #[derive(Deserialize)]
        struct ErrorBody {
            error: String,
        }
        let body = match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) if status == 400 => e.error,
            _ => snippet(&body),
        };
        Err(BackendError::Status {
            service: GUESTBOOK,
            status,
            body,
        })
    }

    /// Send `request` and read the whole body within the backend timeout:
    /// like an Envoy route timeout, it bounds the entire exchange, so a
    /// backend that sends headers and then stalls is caught too.
    async fn exchange(
        &self,
        service: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<(u16, String), BackendError> {
        let unreachable = |e: reqwest::Error| BackendError::Unreachable {
            service,
            detail: causes(&e),
        };
        let exchange = async {
            let response = request.send().await.map_err(unreachable)?;
            let status = response.status().as_u16();
            let body = response.text().await.map_err(unreachable)?;
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| BackendError::Timeout {
                service,
                ms: self.timeout.as_millis(),
            })?
    }
}

/// Decode a JSON body if the status is the one expected.
fn expect_json<T: DeserializeOwned>(
    service: &'static str,
    expected: u16,
    status: u16,
    body: &str,
) -> Result<T, BackendError> {
    if status != expected {
        return Err(BackendError::Status {
            service,
            status,
            body: snippet(body),
        });
    }
    serde_json::from_str(body).map_err(|e| BackendError::BadBody {
        service,
        status,
        detail: e.to_string(),
        body: snippet(body),
    })
}

/// The first 200 characters of a body, on one line, for the page. The sidecar's
/// own error bodies ("fault filter abort", "no healthy upstream") are short
/// and tell the learner which mesh feature answered.
fn snippet(body: &str) -> String {
    let one_line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return "(empty body)".to_string();
    }
    match one_line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &one_line[..cut]),
        None => one_line,
    }
}

/// An error and its causes on one line: reqwest's own message ("error sending
/// request") hides the useful part ("Connection refused") in its source chain.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_is_one_line_and_at_most_200_chars() {
        assert_eq!(snippet("fault filter\n abort"), "fault filter abort");
        assert_eq!(snippet("  "), "(empty body)");
        let long = "é".repeat(300);
        assert_eq!(snippet(&long), format!("{}...", "é".repeat(200)));
    }

    #[test]
    fn status_error_reads_like_the_lab() {
        let err = BackendError::Status {
            service: HELLOWORLD,
            status: 503,
            body: "fault filter abort".into(),
        };
        assert_eq!(
            err.to_string(),
            "helloworld-service answered 503: fault filter abort"
        );
        let err = BackendError::Timeout {
            service: GUESTBOOK,
            ms: 3000,
        };
        assert_eq!(err.to_string(), "guestbook-service timed out after 3000 ms");
    }
}
