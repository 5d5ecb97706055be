//! The watch loop: six watchers (Services, EndpointSlices, Pods and the three
//! Istio kinds) in the served namespace, each feeding a reflector store; on
//! every change the whole model is rebuilt from the stores and handed to
//! `state.rs`, which bumps the version only when something a snapshot sees
//! changed. Verdicts on Istio objects go back to the API server as
//! `status.conditions` and, for a rejected object, a Warning Event.
//!
//! Rebuilding everything on every event is istiod's "full push" without the
//! debounce: the mesh of a workshop has tens of objects, and one function of
//! the whole state is far easier to reason about than incremental updates.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::FutureExt;
use futures::stream::{BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_kind};
use mesh_api::config::{Diagnostic, Kind};
use mesh_api::xds::{ProxyAnnounce, ProxyMode};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::KubernetesSource;
use super::config::{self, IstioConfig, Judged, ObjectKey, Verdict};
use super::discovery;
use crate::state::Shared;

/// The Istio API version watched. The CRDs serve v1, v1beta1 and v1alpha3
/// with one schema (`crd.rs`), so a watch of v1 sees every object whatever
/// version it was applied with.
pub const ISTIO_VERSION: &str = "v1";

/// The condition type written in an Istio object's status.
pub const ACCEPTED: &str = "Accepted";

/// How the API server names an Istio kind (`virtualservices` in
/// `networking.istio.io/v1`).
pub fn istio_resource(kind: Kind) -> ApiResource {
    let gvk = GroupVersionKind::gvk(kind.group(), ISTIO_VERSION, kind.as_str());
    ApiResource::from_gvk_with_plural(&gvk, kind.plural())
}

/// What one watcher watches; also how its errors are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Watched {
    Services,
    EndpointSlices,
    Pods,
    Istio(Kind),
}

impl Watched {
    fn describe(self) -> String {
        match self {
            Watched::Services => "services".into(),
            Watched::EndpointSlices => "endpointslices.discovery.k8s.io".into(),
            Watched::Pods => "pods".into(),
            Watched::Istio(kind) => format!("{}.{}", kind.plural(), kind.group()),
        }
    }
}

/// One item of the merged watch streams: which watcher, and whether the
/// event completed a (re)list.
type Tick = (Watched, Result<bool, watcher::Error>);

fn watch<K>(api: Api<K>, writer: Writer<K>, what: Watched) -> BoxStream<'static, Tick>
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    watch_kind(api, watcher::Config::default())
        // Retry with growing pauses while the API server is away.
        .default_backoff()
        .reflect(writer)
        .map(move |event| (what, event.map(|e| matches!(e, Event::InitDone))))
        .boxed()
}

/// Run until shutdown: keep the model equal to what the API server says.
pub(crate) async fn run(shared: Arc<Shared>, source: KubernetesSource) {
    let ns = source.namespace.as_str();
    let client = source.client.clone();
    let (services, services_w) = reflector::store::<Service>();
    let (slices, slices_w) = reflector::store::<EndpointSlice>();
    let (pods, pods_w) = reflector::store::<Pod>();
    let mut streams = vec![
        watch(
            Api::namespaced(client.clone(), ns),
            services_w,
            Watched::Services,
        ),
        watch(
            Api::namespaced(client.clone(), ns),
            slices_w,
            Watched::EndpointSlices,
        ),
        watch(Api::namespaced(client.clone(), ns), pods_w, Watched::Pods),
    ];
    let mut istio_stores: Vec<(Kind, Store<DynamicObject>)> = Vec::new();
    for kind in Kind::ALL {
        let resource = istio_resource(kind);
        let writer = Writer::new(resource.clone());
        istio_stores.push((kind, writer.as_reader()));
        let api = Api::namespaced_with(client.clone(), ns, &resource);
        streams.push(watch(api, writer, Watched::Istio(kind)));
    }
    let watchers = streams.len();
    let mut streams = futures::stream::select_all(streams);

    let mut listed = BTreeSet::new();
    let mut istio = IstioConfig::new(ns);
    let mut status = StatusWriter::new(&source);
    tracing::info!(namespace = ns, "watching the Kubernetes API");
    loop {
        let tick = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            tick = streams.next() => tick,
        };
        // A watcher with backoff retries for ever; the merged stream ends
        // only if every watcher did, which they do not.
        let Some(first) = tick else { return };
        // Everything the watchers already hold becomes one rebuild, so one
        // new version instead of one per object (a relist delivers dozens at
        // once): istiod's push debounce, without waiting for more.
        let mut changed = false;
        let mut next = Some(first);
        while let Some((what, result)) = next.take() {
            match result {
                Ok(init_done) => {
                    changed = true;
                    if init_done && listed.insert(what) && listed.len() == watchers {
                        tracing::info!(namespace = ns, "listed every watched kind");
                    }
                }
                Err(error) => tracing::warn!(
                    "cannot watch {} in namespace {ns}: {error}; every proxy keeps its last \
                     snapshot, retrying with backoff{}",
                    what.describe(),
                    hint(&error)
                ),
            }
            next = streams.next().now_or_never().flatten();
        }
        if !changed {
            continue;
        }
        // Until every kind has been listed once, the picture is partial:
        // serving it would empty routes that are merely not read yet.
        if listed.len() < watchers {
            continue;
        }

        let services = services.state();
        let slices = slices.state();
        let pods = pods.state();
        let workloads = discovery::workloads(
            &services.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            &slices.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
            &pods.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
        );
        let objects: Vec<(Kind, Arc<DynamicObject>)> = istio_stores
            .iter()
            .flat_map(|(kind, store)| store.state().into_iter().map(|o| (*kind, o)))
            .collect();
        let borrowed: Vec<(Kind, &DynamicObject)> =
            objects.iter().map(|(k, o)| (*k, o.as_ref())).collect();
        let (config, mut judged) = istio.update(&borrowed);
        {
            let mut model = shared.lock().await;
            // What analysis sees as running: the endpoints, and the gateway
            // proxies that announced themselves (a Gateway selects them).
            let mut proxies: Vec<ProxyAnnounce> =
                workloads.iter().map(|w| w.announce.clone()).collect();
            proxies.extend(
                model
                    .registry
                    .live_announces()
                    .into_iter()
                    .filter(|a| a.mode == ProxyMode::Gateway),
            );
            config::attach(&mut judged, &config.analyze_proxies(&proxies));
            if shared.replace_discovered(&mut model, workloads, config) {
                tracing::info!(version = model.version, "the cluster changed the mesh");
            }
        }
        status.report(&judged).await;
    }
}

/// What to do about an error the user can fix.
fn hint(error: &watcher::Error) -> &'static str {
    let text = error.to_string();
    if text.contains("403") || text.contains("forbidden") {
        " (forbidden: the control plane's ServiceAccount needs get, list and watch on it; \
         see its Role in k8s/)"
    } else if text.contains("404") || text.contains("the server could not find") {
        " (not found: are the Istio CRDs installed? kubectl apply -f k8s/crds/)"
    } else {
        ""
    }
}

// === status and Events ===

/// Writes each verdict once per object version: a status condition on every
/// Istio object, and a Warning Event on a rejected one (`kubectl describe vs
/// NAME` shows it, `kubectl get events` lists it).
/// (uid, generation, verdict, findings): what one status write said.
type Written = (String, Option<i64>, Verdict, Vec<Diagnostic>);

struct StatusWriter {
    client: kube::Client,
    recorder: Recorder,
    /// What was last written for each object.
    written: BTreeMap<ObjectKey, Written>,
}

impl StatusWriter {
    fn new(source: &KubernetesSource) -> Self {
        let reporter = Reporter {
            controller: source.reporter.clone(),
            instance: std::env::var("POD_NAME").ok(),
        };
        StatusWriter {
            client: source.client.clone(),
            recorder: Recorder::new(source.client.clone(), reporter),
            written: BTreeMap::new(),
        }
    }

    async fn report(&mut self, judged: &[Judged]) {
        let present: BTreeSet<&ObjectKey> = judged.iter().map(|j| &j.key).collect();
        self.written.retain(|key, _| present.contains(key));
        for judged in judged {
            let current = (
                judged.uid.clone(),
                judged.generation,
                judged.verdict.clone(),
                judged.diagnostics.clone(),
            );
            if self.written.get(&judged.key) == Some(&current) {
                continue;
            }
            match self.write(judged).await {
                Ok(()) => {
                    self.written.insert(judged.key.clone(), current);
                }
                // Tried again on the next change of anything.
                Err(error) => tracing::warn!(
                    "cannot write the status of {}: {error}{}",
                    judged.key.id(),
                    if error.to_string().contains("403") {
                        " (the control plane's Role needs patch on the status subresource and \
                         create on events)"
                    } else {
                        ""
                    }
                ),
            }
        }
    }

    async fn write(&self, judged: &Judged) -> Result<(), kube::Error> {
        let key = &judged.key;
        let (accepted, reason, message) = match &judged.verdict {
            Verdict::Accepted => (
                "True",
                "Valid",
                "valid; part of the mesh's config".to_string(),
            ),
            Verdict::Rejected {
                errors,
                kept_last_good,
            } => {
                let consequence = if *kept_last_good {
                    "the last good version of this resource keeps serving"
                } else {
                    "it is not part of the mesh's config until fixed"
                };
                (
                    "False",
                    "Invalid",
                    format!("rejected by micromesh: {errors}\n({consequence})"),
                )
            }
        };
        if matches!(judged.verdict, Verdict::Rejected { .. }) {
            tracing::warn!("{}: {message}", key.id());
            let reference = ObjectReference {
                api_version: Some(format!("{}/{ISTIO_VERSION}", key.kind.group())),
                kind: Some(key.kind.as_str().to_string()),
                name: Some(key.name.clone()),
                namespace: Some(key.namespace.clone()),
                uid: Some(judged.uid.clone()).filter(|u| !u.is_empty()),
                ..ObjectReference::default()
            };
            let event = KubeEvent {
                type_: EventType::Warning,
                reason: "Rejected".into(),
                // The Events API caps a note at 1 kB.
                note: Some(truncate(&message, 1000)),
                action: "Validate".into(),
                secondary: None,
            };
            self.recorder.publish(&event, &reference).await?;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &key.namespace,
            &istio_resource(key.kind),
        );
        // Istio's shape: `validationMessages` next to the conditions, one
        // per finding of `istioctl analyze` (ours: `meshctl analyze`).
        let messages: Vec<_> = judged
            .diagnostics
            .iter()
            .map(|d| {
                json!({
                    "level": d.level.to_ascii_uppercase(),
                    "type": {"name": d.code},
                    "field": d.field,
                    "message": d.message,
                })
            })
            .collect();
        let patch = json!({
            "status": {
                "observedGeneration": judged.generation,
                "validationMessages": messages,
                "conditions": [{
                    "type": ACCEPTED,
                    "status": accepted,
                    "reason": reason,
                    "message": message,
                    "observedGeneration": judged.generation,
                }]
            }
        });
        api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}
