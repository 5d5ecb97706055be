//! The Kubernetes source: on a cluster the model (workloads and Istio
//! config) comes from the API server instead of sidecar announces and
//! `meshctl apply`; everything after it (compile, push, telemetry,
//! dashboard) is the same code.
//!
//! ```text
//! API server --watch Services, EndpointSlices, Pods----> discovery.rs --> workloads --\
//!            --watch VirtualService, DestinationRule,--> config.rs ----> config -------+--> Shared (state.rs): version N+1
//!                    Gateway (networking.istio.io/v1)          \--> status + Event on a rejected object
//! ```
//!
//! istiod does the same with client-go informers; we use kube-rs's runtime:
//! one `watcher` per kind feeding a `reflector` store (an informer's cache).
//! A watcher lists, then watches from the list's resourceVersion; when the
//! API server answers 410 Gone (the version was compacted away) it lists
//! again and the store swaps the new list in atomically, so no update is
//! lost and nothing is served half-listed. When the API server is away the
//! watchers retry with backoff and the model keeps its last state, so every
//! proxy keeps its last good snapshot; when it is back they relist.
//!
//! Nothing is written to the state directory's config file in this mode:
//! the API server is the store, and a restarted control plane rebuilds the
//! whole model from it. Sidecars still announce themselves and long-poll
//! exactly as locally (the instance name is their pod's name), which is how
//! the control plane knows which proxy asks and what it has acknowledged.

pub mod ca_root;
pub mod config;
pub mod crd;
pub mod discovery;
mod source;
pub mod token_review;
pub mod webhook;
pub mod workload_identity;

use std::fmt;

pub(crate) use source::run;

/// Which namespace to serve, and the client to read it with.
#[derive(Clone)]
pub struct KubernetesSource {
    pub client: kube::Client,
    /// The namespace whose Services and Istio resources make the mesh.
    pub namespace: String,
    /// Who writes Events and status (`reportingController` in an Event).
    pub reporter: String,
    /// The validating admission webhook (`webhook.rs`), if it runs.
    pub webhook: Option<WebhookSettings>,
    /// The control plane's own namespace, where the CA root's Secret is
    /// (`ca_root.rs`): the client's default namespace, which in a pod is the
    /// pod's own (read from its service-account mount).
    pub control_namespace: String,
}

/// Where the admission webhook listens and what its certificate names.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// `0.0.0.0:15017` in a pod; port 0 picks a free one.
    pub listen: std::net::SocketAddr,
    /// The names the API server calls it by (`webhook::service_dns_names`).
    pub dns_names: Vec<String>,
    /// What the injected sidecar is: its image, the control plane's URL.
    pub inject: mesh_inject::Settings,
}

impl KubernetesSource {
    /// Serve `namespace` with `client` (a real cluster's, or a mocked one).
    pub fn new(client: kube::Client, namespace: impl Into<String>) -> Self {
        KubernetesSource {
            control_namespace: client.default_namespace().to_string(),
            client,
            namespace: namespace.into(),
            reporter: "mesh-control".to_string(),
            webhook: None,
        }
    }
}

impl fmt::Debug for KubernetesSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // kube::Client is not Debug (it holds a boxed service stack).
        f.debug_struct("KubernetesSource")
            .field("namespace", &self.namespace)
            .field("reporter", &self.reporter)
            .field("webhook", &self.webhook)
            .finish_non_exhaustive()
    }
}

/// A running webhook: where it listens, the CA its certificate chains to.
#[derive(Clone, Debug)]
pub struct WebhookInfo {
    pub addr: std::net::SocketAddr,
    pub ca_pem: String,
}

/// Start the webhook if `source` asks for one: make the certificate, bind,
/// serve, and publish the CA in the background (retrying until the
/// configuration exists and may be patched: `kubectl apply -k` creates it
/// alongside the control plane, in no guaranteed order).
pub(crate) async fn start_webhook(
    source: &KubernetesSource,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<Option<(WebhookInfo, tokio::task::JoinHandle<()>)>, webhook::WebhookError> {
    let Some(settings) = &source.webhook else {
        return Ok(None);
    };
    let certificate = webhook::ServingCertificate::generate(&settings.dns_names)?;
    let listener = webhook::bind(settings.listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|error| webhook::WebhookError::Bind {
            addr: settings.listen,
            error,
        })?;
    let info = WebhookInfo {
        addr,
        ca_pem: certificate.ca_pem.clone(),
    };
    let client = source.client.clone();
    let inject = settings.inject.clone();
    let task = tokio::spawn(async move {
        let publish = async {
            let mut pause = std::time::Duration::from_millis(500);
            loop {
                match webhook::publish_ca_bundle(client.clone(), &certificate.ca_pem).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!("{e}; retrying in {pause:?}"),
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(30));
            }
        };
        let serve = webhook::serve(listener, &certificate, inject, shutdown.clone());
        let (served, ()) = tokio::join!(serve, async {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = publish => {}
            }
        });
        if let Err(e) = served {
            tracing::error!("the admission webhook stopped: {e}");
        }
    });
    Ok(Some((info, task)))
}
