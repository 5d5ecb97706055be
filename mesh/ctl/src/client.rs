//! HTTP clients for the control plane's API and for the `meshctl up`
//! supervisor, with errors that say what to do.
//!
//! `kubectl` talks to the Kubernetes API server and `istioctl` to istiod; in
//! micromesh everything meshctl reads (services, proxies, applied config)
//! comes from mesh-control's JSON API (see `mesh_api::xds` for its routes).
//! Every client here ignores `HTTP_PROXY`: the user's shell may point it at a
//! corporate proxy that cannot reach our 127.0.0.1.
//!
//! On a cluster the same calls go through the Kubernetes API server's
//! service proxy (`cluster.rs`): the commands do not know the difference,
//! only the transport below does. Writes (`post`) are refused there: the
//! Istio resources of a cluster are applied with `kubectl apply`.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use mesh_api::config::ConfigErrors;
use mesh_api::xds::ApiError;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cluster::{self, ServiceProxy};

/// A client for one base URL.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    /// Who is behind `base`, for error messages.
    what: &'static str,
    /// What the user should do when nothing answers.
    hint: String,
    transport: Transport,
    /// The control plane's write token, sent with every request
    /// (`token.rs`); `None` for reads-only clients.
    token: Option<reqwest::header::HeaderValue>,
}

/// How a request gets there: straight to a URL, or through the API server.
#[derive(Clone, Debug)]
enum Transport {
    Http(reqwest::Client),
    Cluster(ServiceProxy),
}

/// What meshctl tells a user who tries to change a cluster's config with it.
pub const CLUSTER_WRITES: &str = "on a cluster the Istio resources are Kubernetes objects: \
     use `kubectl apply -f FILE` and `kubectl delete -f FILE` (the control plane's admission \
     webhook checks them with `meshctl validate`'s messages). meshctl apply, delete and reset \
     change the local mesh of `meshctl up`";

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

    /// The control plane of a cluster, through its API server.
    pub fn cluster_control_plane(proxy: ServiceProxy) -> Client {
        Client {
            base: format!(
                "{} ({})",
                ServiceProxy::path(cluster::API_PORT, ""),
                proxy.target().describe()
            ),
            what: "the control plane",
            hint: String::new(),
            transport: Transport::Cluster(proxy),
            token: None,
        }
    }

    fn new(base: &str, what: &'static str, hint: &str, timeout: Duration) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            what,
            hint: hint.to_string(),
            transport: Transport::Http(
                reqwest::Client::builder()
                    .no_proxy()
                    .connect_timeout(Duration::from_secs(3))
                    .timeout(timeout)
                    .build()
                    .expect("a plain HTTP client builds"),
            ),
            token: None,
        }
    }

    /// Send the control plane's write token (`token.rs`) with each request;
    /// writes without it are answered 401.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token
            .and_then(|t| reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).ok())
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        self
    }

    /// The cluster behind this client, if it reaches one.
    pub fn cluster(&self) -> Option<&ServiceProxy> {
        match &self.transport {
            Transport::Cluster(proxy) => Some(proxy),
            Transport::Http(_) => None,
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (url, status, text) = self.call(Method::GET, path, None).await?;
        self.decode(&url, status, text)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let (url, status, text) = self.call(Method::POST, path, Some(to_json(body)?)).await?;
        self.decode(&url, status, text)
    }

    /// Send one request; the URL (for messages), status and body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(String, StatusCode, String)> {
        let url = self.url(path);
        match &self.transport {
            Transport::Http(http) => {
                let mut request = http.request(method, &url);
                if let Some(token) = &self.token {
                    request = request.header(reqwest::header::AUTHORIZATION, token.clone());
                }
                if let Some(body) = body {
                    request = request
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body);
                }
                let response = request
                    .send()
                    .await
                    .map_err(|e| self.unreachable(&url, e))?;
                let status = response.status();
                let text = response.text().await.with_context(|| {
                    format!("{} at {url} closed the connection mid-answer", self.what)
                })?;
                Ok((url, status, text))
            }
            Transport::Cluster(proxy) => {
                if method != Method::GET {
                    bail!("{CLUSTER_WRITES}");
                }
                let (status, _, bytes) = proxy
                    .send(cluster::API_PORT, method, path, body.unwrap_or_default())
                    .await?;
                let url = ServiceProxy::path(cluster::API_PORT, path);
                Ok((url, status, String::from_utf8_lossy(&bytes).into_owned()))
            }
        }
    }

    /// POST whose HTTP 400 is a `ConfigErrors` document (apply, delete).
    pub async fn post_validated<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Validated<T>> {
        let (url, status, text) = self.call(Method::POST, path, Some(to_json(body)?)).await?;
        if status == StatusCode::BAD_REQUEST {
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
        self.decode(&url, status, text).map(Validated::Ok)
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

    fn decode<T: DeserializeOwned>(
        &self,
        url: &str,
        status: StatusCode,
        text: String,
    ) -> Result<T> {
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

fn to_json<B: Serialize>(body: &B) -> Result<Vec<u8>> {
    serde_json::to_vec(body).context("cannot encode the request as JSON")
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
    async fn on_a_cluster_reads_go_through_the_api_server_and_writes_are_refused() {
        let (proxy, seen) = crate::cluster::tests::fake_cluster(|_| {
            (
                StatusCode::OK,
                r#"[{"name":"helloworld-service","port":8080,"versions":["v1"],"endpoints":[]}]"#
                    .into(),
            )
        });
        let client = Client::cluster_control_plane(proxy);
        let services: Vec<mesh_api::xds::ServiceStatus> = client.get("/v1/services").await.unwrap();
        assert_eq!(services[0].name, "helloworld-service");
        let err = client
            .post_validated::<_, serde_json::Value>("/v1/config/apply", &serde_json::json!({}))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("kubectl apply -f"), "{err}");
        // Only the read reached the API server.
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "GET /api/v1/namespaces/mesh-system/services/http:mesh-control:http-api/proxy/v1/services"
            ]
        );
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
