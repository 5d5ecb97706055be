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

pub mod config;
pub mod crd;
pub mod discovery;
mod source;

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
}

impl KubernetesSource {
    /// Serve `namespace` with `client` (a real cluster's, or a mocked one).
    pub fn new(client: kube::Client, namespace: impl Into<String>) -> Self {
        KubernetesSource {
            client,
            namespace: namespace.into(),
            reporter: "mesh-control".to_string(),
        }
    }
}

impl fmt::Debug for KubernetesSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // kube::Client is not Debug (it holds a boxed service stack).
        f.debug_struct("KubernetesSource")
            .field("namespace", &self.namespace)
            .field("reporter", &self.reporter)
            .finish_non_exhaustive()
    }
}
