//! meshctl against a cluster: the control plane's API reached through the
//! Kubernetes API server, the way istioctl reaches istiod.
//!
//! On a cluster mesh-control runs in a pod (`k8s/base/mesh-control.yaml`)
//! and nothing of it listens on the laptop. istioctl opens a port-forward to
//! istiod for each command; we use the API server's *service proxy*
//! instead, a plain HTTPS request that the API server relays to a port of a
//! Service:
//!
//! ```text
//! meshctl get proxies
//!   -> GET https://API-SERVER/api/v1/namespaces/mesh-system/services/http:mesh-control:http-api/proxy/v1/proxies
//!        (kubeconfig credentials; RBAC: `get` on `services/proxy` in mesh-system)
//!   -> the API server -> a ready mesh-control pod, port 15010 -> GET /v1/proxies
//! ```
//!
//! It needs no local port, no WebSocket and no pod name, and it is one
//! request per call, so the tests check the exact paths on a mocked API
//! server (`tower_test::mock`, as kube-rs documents). `meshctl dashboard`
//! needs a local port for the browser: it serves one on 127.0.0.1 and relays
//! each request through the same service proxy to the dashboard port
//! (`http-dashboard`, 15014) until Ctrl-C, as `istioctl dashboard` blocks
//! while its port-forward is open.
//!
//! Writes are not relayed: on a cluster the Istio resources are Kubernetes
//! objects, applied with `kubectl apply -f` and validated by the control
//! plane's admission webhook with `meshctl validate`'s messages. One way per
//! mode: `meshctl apply` locally, `kubectl apply` on a cluster.
//!
//! Which mode a command runs in is decided in `cli.rs` (`Ctx::control`):
//! a `--context`/`--kubeconfig` flag, else a running `meshctl up`, else the
//! kubeconfig's current context, else the local default port.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::Deserialize;
use tokio::sync::OnceCell;

/// The control plane's namespace and Service (k8s/base/mesh-control.yaml).
pub const NAMESPACE: &str = "mesh-system";
pub const SERVICE: &str = "mesh-control";
/// The Service's port names: the JSON API (15010) and the dashboard (15014).
pub const API_PORT: &str = "http-api";
pub const DASHBOARD_PORT: &str = "http-dashboard";

/// Which kubeconfig and context to use. Both empty: what kubectl would use
/// (`KUBECONFIG`, else `~/.kube/config`, and its current context).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

impl Target {
    /// The context the target names, or the kubeconfig's current one; `None`
    /// when there is no kubeconfig to read (then there is no cluster to use).
    pub fn resolve_context(&self) -> Option<String> {
        if let Some(context) = &self.context {
            return Some(context.clone());
        }
        self.read().ok()?.current_context
    }

    fn read(&self) -> Result<Kubeconfig, kube::config::KubeconfigError> {
        match &self.kubeconfig {
            Some(path) => Kubeconfig::read_from(path),
            None => Kubeconfig::read(),
        }
    }

    /// How the user sees this target in messages: `kube context kind-micromesh`.
    pub fn describe(&self) -> String {
        let context = self
            .resolve_context()
            .unwrap_or_else(|| "(none)".to_string());
        match &self.kubeconfig {
            Some(path) => format!("kube context {context} of {}", path.display()),
            None => format!("kube context {context}"),
        }
    }

    /// A kube Client for this target (reads the kubeconfig, runs an exec
    /// credential plugin if the context has one).
    async fn client(&self) -> Result<kube::Client> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).with_context(|| {
                    format!(
                        "cannot read the kubeconfig {}; pass --kubeconfig a file kubectl can use",
                        path.display()
                    )
                })?;
                kube::Config::from_custom_kubeconfig(file, &options).await
            }
            None => kube::Config::from_kubeconfig(&options).await,
        }
        .with_context(|| {
            format!(
                "cannot load {} (is it in `kubectl config get-contexts`?)",
                self.describe()
            )
        })?;
        kube::Client::try_from(config).context("cannot make a Kubernetes client")
    }
}

/// The control plane behind the API server's service proxy. Cheap to clone;
/// the kube Client is made on first use (reading a kubeconfig is async).
#[derive(Clone)]
pub struct ServiceProxy {
    target: Target,
    client: Arc<OnceCell<kube::Client>>,
}

impl std::fmt::Debug for ServiceProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceProxy")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// A Kubernetes `Status` (what the API server answers for its own errors).
#[derive(Debug, Default, Deserialize)]
struct Status {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    message: String,
}

impl ServiceProxy {
    pub fn new(target: Target) -> ServiceProxy {
        ServiceProxy {
            target,
            client: Arc::new(OnceCell::new()),
        }
    }

    /// Use this client (tests: a kube Client on `tower_test::mock`).
    #[cfg(test)]
    pub fn with_client(target: Target, client: kube::Client) -> ServiceProxy {
        ServiceProxy {
            target,
            client: Arc::new(OnceCell::new_with(Some(client))),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The API server path that reaches `path` (with its query) on the
    /// Service's `port` (a port name).
    pub fn path(port: &str, path: &str) -> String {
        format!("/api/v1/namespaces/{NAMESPACE}/services/http:{SERVICE}:{port}/proxy{path}")
    }

    async fn client(&self) -> Result<&kube::Client> {
        self.client.get_or_try_init(|| self.target.client()).await
    }

    /// One request to the control plane's `port`: its status, content type
    /// and body. The API server's own refusals (no such Service, no ready
    /// pod, RBAC) become errors that say what to do; the control plane's
    /// answers, errors included, are returned as they are.
    pub async fn send(
        &self,
        port: &str,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Option<String>, Vec<u8>)> {
        let client = self.client().await?;
        let uri = Self::path(port, path);
        let request = Request::builder()
            .method(method)
            .uri(&uri)
            .body(kube::client::Body::from(body))
            .expect("a path made of valid parts is a valid URI");
        let response = client.send(request).await.map_err(|e| {
            anyhow!(
                "cannot reach the Kubernetes API server of {}: {e}; is the cluster running \
                 (`kubectl cluster-info`)? For the local mesh, start `meshctl up`",
                self.target.describe()
            )
        })?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow!("the API server closed the connection mid-answer: {e}"))?
            .to_bytes()
            .to_vec();
        if !status.is_success() {
            self.check_api_server_error(status, &bytes)?;
        }
        Ok((status, content_type, bytes))
    }

    /// An answer that is the API server's own `Status` (not the control
    /// plane's JSON) is a reason the request never got to the control plane.
    fn check_api_server_error(&self, status: StatusCode, body: &[u8]) -> Result<()> {
        let Ok(api) = serde_json::from_slice::<Status>(body) else {
            return Ok(());
        };
        if api.kind != "Status" {
            return Ok(());
        }
        let on = self.target.describe();
        let message = api.message;
        match status {
            StatusCode::NOT_FOUND => bail!(
                "the cluster ({on}) has no Service {SERVICE} in namespace {NAMESPACE} \
                 (the API server said: {message}); install micromesh with ./scripts/kind-up.sh \
                 (or minikube-up.sh), or pick the right cluster with --context"
            ),
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => bail!(
                "the API server of {on} refused meshctl: {message}; meshctl needs `get` on \
                 `services/proxy` in {NAMESPACE} (kind's admin has it; for another user, \
                 k8s/base/meshctl-user.yaml grants it to the group meshctl-users)"
            ),
            StatusCode::SERVICE_UNAVAILABLE => bail!(
                "the control plane's pod is not ready on {on} (the API server said: {message}); \
                 see `kubectl -n {NAMESPACE} get pods` and `kubectl -n {NAMESPACE} logs deployment/{SERVICE}`"
            ),
            _ => bail!("the API server of {on} answered {status}: {message}"),
        }
    }
}

#[cfg(test)]
pub mod tests {
    //! The service proxy on a mocked API server: the exact paths meshctl
    //! asks for, and what the user reads when the API server refuses.

    use super::*;
    use http::Response;
    use kube::client::Body;
    use tower_test::mock;

    /// Every request the fake API server saw, as `METHOD path?query`.
    pub type Seen = Arc<std::sync::Mutex<Vec<String>>>;

    /// A kube Client whose API server answers each request with `answer`
    /// (status and body) and records it.
    pub fn fake_cluster(
        answer: impl Fn(&str) -> (StatusCode, String) + Send + 'static,
    ) -> (ServiceProxy, Seen) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let seen: Seen = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let line = format!("{} {}", request.method(), request.uri());
                let (status, body) = answer(&line);
                record.lock().unwrap().push(line);
                send.send_response(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Body::from(body.into_bytes()))
                        .unwrap(),
                );
            }
        });
        let client = kube::Client::new(service, "default");
        let target = Target {
            kubeconfig: None,
            context: Some("kind-micromesh".into()),
        };
        (ServiceProxy::with_client(target, client), seen)
    }

    fn status(code: u16, reason: &str, message: &str) -> String {
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": reason, "message": message, "code": code
        })
        .to_string()
    }

    #[tokio::test]
    async fn a_call_goes_to_the_control_planes_service_through_the_api_server() {
        let (proxy, seen) = fake_cluster(|_| (StatusCode::OK, "[]".into()));
        let (status, _, body) = proxy
            .send(API_PORT, Method::GET, "/api/v1/stat?window=1m", vec![])
            .await
            .unwrap();
        assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"[]"[..]));
        assert_eq!(
            *seen.lock().unwrap(),
            [
                "GET /api/v1/namespaces/mesh-system/services/http:mesh-control:http-api/proxy/api/v1/stat?window=1m"
            ]
        );
    }

    #[tokio::test]
    async fn the_control_planes_own_errors_pass_through() {
        // A 404 from mesh-control (not a Kubernetes Status): the caller
        // decodes it like a local answer.
        let (proxy, _) =
            fake_cluster(|_| (StatusCode::NOT_FOUND, r#"{"error":"no trace abc"}"#.into()));
        let (status, _, body) = proxy
            .send(API_PORT, Method::GET, "/api/v1/traces/abc/analysis", vec![])
            .await
            .unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(String::from_utf8(body).unwrap().contains("no trace abc"));
    }

    #[tokio::test]
    async fn api_server_refusals_say_what_to_do() {
        let cases = [
            (
                StatusCode::NOT_FOUND,
                status(404, "NotFound", "services \"mesh-control\" not found"),
                "kind-up.sh",
            ),
            (
                StatusCode::FORBIDDEN,
                status(403, "Forbidden", "cannot get resource \"services/proxy\""),
                "services/proxy",
            ),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                status(503, "ServiceUnavailable", "no endpoints available"),
                "kubectl -n mesh-system get pods",
            ),
        ];
        for (code, body, hint) in cases {
            let (proxy, _) = fake_cluster(move |_| (code, body.clone()));
            let err = proxy
                .send(API_PORT, Method::GET, "/v1/proxies", vec![])
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(hint), "{code}: {err}");
            assert!(err.contains("kube context kind-micromesh"), "{err}");
        }
    }

    #[test]
    fn the_port_names_are_the_ones_k8s_declares() {
        // The service proxy addresses a port by its name in the Service: a
        // renamed port in k8s/ must fail here, not on a learner's cluster.
        let manifest = include_str!("../../../k8s/base/mesh-control.yaml");
        for port in [API_PORT, DASHBOARD_PORT] {
            assert!(
                manifest.contains(&format!("- name: {port}\n")),
                "k8s/base/mesh-control.yaml has no Service port named {port}"
            );
        }
        assert!(manifest.contains(&format!("name: {SERVICE}\n  namespace: {NAMESPACE}\n")));
    }

    /// An RBAC rule as the checks need it.
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Rule {
        api_groups: Vec<String>,
        resources: Vec<String>,
        #[serde(default)]
        resource_names: Vec<String>,
        verbs: Vec<String>,
    }

    /// Whether `rules` let a user make this recorded call (`GET /api/v1/...`).
    fn allowed(rules: &[Rule], call: &str) -> bool {
        let (method, path) = call.split_once(' ').unwrap();
        let path = path.split('?').next().unwrap();
        let verb = match method {
            "GET" => "get",
            "POST" => "create",
            _ => "update",
        };
        // /api/v1/namespaces/NS/services/NAME/proxy/...
        let parts: Vec<&str> = path.split('/').collect();
        let (namespace, resource, name, sub) = (parts[4], parts[5], parts[6], parts[7]);
        assert_eq!(namespace, NAMESPACE, "{call}");
        let resource = format!("{resource}/{sub}");
        rules.iter().any(|r| {
            r.api_groups.iter().any(|g| g.is_empty())
                && r.resources.contains(&resource)
                && r.verbs.iter().any(|v| v == verb)
                && (r.resource_names.is_empty() || r.resource_names.iter().any(|n| n == name))
        })
    }

    #[tokio::test]
    async fn the_documented_user_role_allows_every_call_meshctl_makes_and_no_other_port() {
        let manifest = include_str!("../../../k8s/base/meshctl-user.yaml");
        let role = serde_yaml::Deserializer::from_str(manifest)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .find(|d| d["kind"] == "Role")
            .expect("k8s/base/meshctl-user.yaml has a Role");
        assert_eq!(role["metadata"]["namespace"].as_str(), Some(NAMESPACE));
        let rules: Vec<Rule> = serde_yaml::from_value(role["rules"].clone()).unwrap();

        // Every call meshctl's commands make: the API port, the dashboard port.
        let (proxy, seen) = fake_cluster(|_| (StatusCode::OK, "{}".into()));
        for (port, path) in [
            (API_PORT, "/v1/services"),
            (API_PORT, "/api/v1/stat?window=1m"),
            (DASHBOARD_PORT, "/"),
        ] {
            proxy.send(port, Method::GET, path, vec![]).await.unwrap();
        }
        let calls = seen.lock().unwrap().clone();
        assert_eq!(calls.len(), 3);
        for call in &calls {
            assert!(
                allowed(&rules, call),
                "k8s/base/meshctl-user.yaml does not allow {call}"
            );
        }
        // Least privilege: the webhook port, another Service, and writes are not granted.
        for call in [
            "GET /api/v1/namespaces/mesh-system/services/https:mesh-control:https-webhook/proxy/",
            "GET /api/v1/namespaces/mesh-system/services/http:other:http/proxy/",
            "POST /api/v1/namespaces/mesh-system/services/http:mesh-control:http-api/proxy/v1/config/apply",
        ] {
            assert!(
                !allowed(&rules, call),
                "the Role grants more than meshctl needs: {call}"
            );
        }
    }
}
