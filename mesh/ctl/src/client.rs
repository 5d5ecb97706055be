//! HTTP clients for the control plane's API and for the `meshctl up`
//! supervisor, with errors that say what to do.
//!
//! `kubectl` talks to the Kubernetes API server and `istioctl` to istiod; in
//! micromesh everything meshctl reads (services, proxies, applied config)
//! comes from mesh-control's JSON API (see `mesh_api::xds` for its routes).
//! Every client here ignores `HTTP_PROXY`: the user's shell may point it at a
//! corporate proxy that cannot reach our 127.0.0.1.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use mesh_api::config::ConfigErrors;
use mesh_api::xds::ApiError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A client for one base URL.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    /// Who is behind `base`, for error messages.
    what: &'static str,
    /// What the user should do when nothing answers.
    hint: String,
    http: reqwest::Client,
}

/// The outcome of a call whose 400 carries structured validation errors.
#[derive(Debug)]
pub enum Validated<T> {
    Ok(T),
    Rejected(ConfigErrors),
}

impl Client {
    /// The control plane at `base` (`http://127.0.0.1:15010`).
    pub fn control_plane(base: &str) -> Client {
        Client::new(
            base,
            "the control plane",
            "is the mesh running? Start it with `meshctl up` (or point --control-url / MESH_CONTROL_URL at your control plane)",
            Duration::from_secs(15),
        )
    }

    /// The control plane a running `meshctl up` started: when it does not
    /// answer, it died (or was killed in a lab) while the rest runs on.
    pub fn started_control_plane(base: &str) -> Client {
        Client::new(
            base,
            "the control plane",
            "`meshctl up` runs, but its control plane is down (the proxies keep routing with their last config); \
             bring it back with `meshctl restart control-plane`",
            Duration::from_secs(15),
        )
    }

    /// The supervisor of a running `meshctl up` at `addr` (`127.0.0.1:PORT`).
    /// Scaling waits for new instances to be ready, so the timeout is long.
    pub fn supervisor(addr: &str) -> Client {
        Client::new(
            &format!("http://{addr}"),
            "the `meshctl up` supervisor",
            "is `meshctl up` still running? Start it with `meshctl up`",
            Duration::from_secs(180),
        )
    }

    fn new(base: &str, what: &'static str, hint: &str, timeout: Duration) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            what,
            hint: hint.to_string(),
            http: reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(Duration::from_secs(3))
                .timeout(timeout)
                .build()
                .expect("a plain HTTP client builds"),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(path);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.unreachable(&url, e))?;
        self.decode(&url, response).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let url = self.url(path);
        let response = self
            .http
            .post(&url)
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(&url, e))?;
        self.decode(&url, response).await
    }

    /// POST whose HTTP 400 is a `ConfigErrors` document (apply, delete).
    pub async fn post_validated<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Validated<T>> {
        let url = self.url(path);
        let response = self
            .http
            .post(&url)
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(&url, e))?;
        if response.status() == reqwest::StatusCode::BAD_REQUEST {
            let text = response.text().await.unwrap_or_default();
            match serde_json::from_str::<ConfigErrors>(&text) {
                Ok(errors) if !errors.errors.is_empty() => {
                    return Ok(Validated::Rejected(errors));
                }
                _ => {}
            }
            bail!(
                "{} at {url} refused the request: {}",
                self.what,
                error_text(&text)
            );
        }
        self.decode(&url, response).await.map(Validated::Ok)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn unreachable(&self, url: &str, e: reqwest::Error) -> anyhow::Error {
        let why = if e.is_connect() {
            "nothing answers there".to_string()
        } else if e.is_timeout() {
            "it did not answer in time".to_string()
        } else {
            format!("{e}")
        };
        anyhow!("cannot reach {} at {url}: {why}; {}", self.what, self.hint)
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        url: &str,
        response: reqwest::Response,
    ) -> Result<T> {
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("{} at {url} closed the connection mid-answer", self.what))?;
        if !status.is_success() {
            bail!(
                "{} at {url} answered {status}: {}",
                self.what,
                error_text(&text)
            );
        }
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} at {url} answered something this meshctl does not understand \
                 (are meshctl and the mesh built from the same commit?): {}",
                self.what,
                text.chars().take(200).collect::<String>()
            )
        })
    }
}

/// The `error` of an `ApiError` body, or the body itself.
fn error_text(text: &str) -> String {
    match serde_json::from_str::<ApiError>(text) {
        Ok(e) if !e.error.is_empty() => e.error,
        _ if text.trim().is_empty() => "(no details)".to_string(),
        _ => text.trim().chars().take(500).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_prefers_the_api_error_field() {
        assert_eq!(
            error_text(r#"{"error":"no such service"}"#),
            "no such service"
        );
        assert_eq!(error_text("plain words"), "plain words");
        assert_eq!(error_text(""), "(no details)");
    }

    #[tokio::test]
    async fn unreachable_control_plane_names_the_url_and_meshctl_up() {
        // A port that was free a moment ago: nothing listens there.
        let port = crate::supervisor::free_port().unwrap();
        let client = Client::control_plane(&format!("http://127.0.0.1:{port}/"));
        let err = client
            .get::<serde_json::Value>("/v1/services")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("http://127.0.0.1:{port}/v1/services")),
            "{err}"
        );
        assert!(err.contains("meshctl up"), "{err}");
    }
}
