//! The Kubernetes source against a fake API server (`kubernetes/fake_api.rs`,
//! a kube Client on `tower_test::mock`): scenarios a learner would cause
//! with kubectl, each asserting the snapshot a sidecar then receives and the
//! exact API calls the control plane made.
//!
//! ```text
//! cargo test -p mesh-control --test kubernetes
//! ```

#[path = "kubernetes/fake_api.rs"]
mod fake_api;

use std::collections::BTreeSet;
use std::time::Duration;

use fake_api::{FakeApi, NAMESPACE};
use mesh_api::snapshot::Snapshot;
use mesh_api::xds::{ProxyAnnounce, ProxyMode};
use mesh_control::kubernetes::webhook;
use mesh_control::{KubernetesSource, Server, ServerHandle, Settings, WebhookSettings};
use mesh_testkit::{wait_for, wait_until};
use serde_json::{Value, json};

/// How long a test waits for the control plane to react to the API.
const WAIT: Duration = Duration::from_secs(20);

/// Every kind of call the control plane may make, as RBAC names it. The
/// Role in k8s/ must grant these and nothing more (see the RBAC test).
const READS: [&str; 8] = [
    "core/services",
    "discovery.k8s.io/endpointslices",
    "core/pods",
    "networking.istio.io/virtualservices",
    "networking.istio.io/destinationrules",
    "networking.istio.io/gateways",
    "security.istio.io/peerauthentications",
    "security.istio.io/authorizationpolicies",
];

// === the world, in kubectl's words ===

fn service(name: &str) -> Value {
    json!({"kind": "Service", "metadata": {"name": name},
           "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 8080}]}})
}

fn pod(name: &str, app: &str, version: &str) -> Value {
    json!({"kind": "Pod", "metadata": {"name": name, "labels": {"app": app, "version": version}},
           "spec": {"serviceAccountName": app, "containers": [{"name": "app", "image": "x"}]}})
}

/// The EndpointSlice controller's view of `service`: (pod, ip, ready, terminating).
fn slice(service: &str, endpoints: &[(&str, &str, bool, bool)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(pod, ip, ready, terminating)| {
            json!({"addresses": [ip],
                   "conditions": {"ready": ready, "serving": true, "terminating": terminating},
                   "targetRef": {"kind": "Pod", "name": pod, "namespace": NAMESPACE}})
        })
        .collect();
    json!({"kind": "EndpointSlice",
           "metadata": {"name": format!("{service}-x1"),
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4", "endpoints": endpoints,
           "ports": [{"name": "http", "port": 8080}]})
}

fn istio(kind: &str, name: &str, spec: Value) -> Value {
    json!({"kind": kind, "metadata": {"name": name}, "spec": spec})
}

fn subsets() -> Value {
    json!({"host": "helloworld-service", "subsets": [
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"}}]})
}

fn canary(v1: u32) -> Value {
    json!({"hosts": ["helloworld-service"], "http": [{"route": [
        {"destination": {"host": "helloworld-service", "subset": "v1"}, "weight": v1},
        {"destination": {"host": "helloworld-service", "subset": "v2"}, "weight": 100 - v1}]}]})
}

/// helloworld-service with a v1 and a v2 pod, both ready.
fn helloworld(api: &FakeApi) {
    api.apply(service("helloworld-service"));
    api.apply(pod("hw-v1-a", "helloworld-service", "v1"));
    api.apply(pod("hw-v2-a", "helloworld-service", "v2"));
    api.apply(slice(
        "helloworld-service",
        &[
            ("hw-v1-a", "10.0.0.1", true, false),
            ("hw-v2-a", "10.0.0.2", true, false),
        ],
    ));
}

// === the control plane, seen from a sidecar ===

struct Mesh {
    api: FakeApi,
    control: ServerHandle,
    http: reqwest::Client,
    _state: tempfile::TempDir,
}

impl Mesh {
    /// A control plane with `--source kubernetes` on the fake API server,
    /// and one sidecar ("probe") connected to it as a pod's sidecar would.
    async fn start(api: FakeApi) -> Mesh {
        Mesh::start_with(api, false).await
    }

    /// The same, with the admission webhooks on a free port.
    async fn start_with(api: FakeApi, webhooks: bool) -> Mesh {
        let state = tempfile::tempdir().unwrap();
        let mut settings = Settings::local(state.path());
        settings.lease = Duration::from_secs(60);
        let mut source = KubernetesSource::new(api.client(), NAMESPACE);
        // The CA root's Secret is in the control plane's namespace, as in k8s/.
        source.control_namespace = "mesh-system".into();
        if webhooks {
            source.webhook = Some(WebhookSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                dns_names: webhook::service_dns_names("mesh-control", "mesh-system"),
                inject: mesh_inject::Settings::default(),
            });
        }
        settings.kubernetes = Some(source);
        let control = Server::start(settings).await.expect("control plane starts");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let probe = ProxyAnnounce {
            instance: "probe".into(),
            mode: ProxyMode::Sidecar,
            service: "probe".into(),
            address: "127.0.0.1:15006".into(),
            ready: true,
            ..Default::default()
        };
        let response = http
            .put(format!("{}/v1/proxies/probe", control.url()))
            .json(&probe)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
        Mesh {
            api,
            control,
            http,
            _state: state,
        }
    }

    async fn snapshot(&self) -> Snapshot {
        let url = format!("{}/v1/proxies/probe/snapshot?version=0", self.control.url());
        let response = self.http.get(url).send().await.unwrap();
        assert!(response.status().is_success(), "{response:?}");
        response.json().await.unwrap()
    }

    /// Wait until the probe's snapshot satisfies `check`; on timeout, fail
    /// with the last snapshot.
    async fn wait_until(&self, what: &str, check: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let found = wait_for(what, WAIT, async || {
            let snapshot = self.snapshot().await;
            Ok(check(&snapshot).then_some(snapshot))
        })
        .await;
        match found {
            Ok(snapshot) => snapshot,
            Err(error) => panic!("{error:#}\nlast snapshot: {:#?}", self.snapshot().await),
        }
    }

    /// The set of `verb group/resource` calls made so far, but the CA
    /// root's read (and first create) of its Secret at start, which every
    /// start makes (kubernetes/ca_root.rs).
    fn rules(&self) -> BTreeSet<String> {
        mesh_calls(&self.api).iter().map(|c| c.rule()).collect()
    }
}

/// `instance@address` of a cluster's endpoints, sorted; None when there is
/// no such cluster.
fn endpoints(snapshot: &Snapshot, cluster: &str) -> Option<Vec<String>> {
    let cluster = snapshot.clusters.iter().find(|c| c.name == cluster)?;
    let mut out: Vec<String> = cluster
        .endpoints
        .iter()
        .map(|e| format!("{}@{}", e.instance, e.address))
        .collect();
    out.sort();
    Some(out)
}

/// The weights of the first route of a virtual host, by cluster.
fn weights(snapshot: &Snapshot, host: &str) -> Vec<(String, u32)> {
    let vhost = snapshot.virtual_hosts.iter().find(|v| v.name == host);
    vhost
        .and_then(|v| v.routes.first())
        .map(|r| {
            r.destinations
                .iter()
                .map(|d| (d.cluster.clone(), d.weight))
                .collect()
        })
        .unwrap_or_default()
}

fn reads_only() -> BTreeSet<String> {
    READS
        .iter()
        .flat_map(|r| [format!("list {r}"), format!("watch {r}")])
        .collect()
}

// === scenarios ===

#[tokio::test]
async fn endpoints_follow_scaling_readiness_and_deletion() {
    let api = FakeApi::default();
    helloworld(&api);
    let mesh = Mesh::start(api.clone()).await;

    // Listed at start: both ready pods, on their sidecar's inbound port.
    mesh.wait_until("two endpoints", |s| {
        endpoints(s, "helloworld-service")
            == Some(vec![
                "hw-v1-a@10.0.0.1:15006".into(),
                "hw-v2-a@10.0.0.2:15006".into(),
            ])
    })
    .await;

    // kubectl scale deployment helloworld-service-v1 --replicas=2
    api.apply(pod("hw-v1-b", "helloworld-service", "v1"));
    api.apply(slice(
        "helloworld-service",
        &[
            ("hw-v1-a", "10.0.0.1", true, false),
            ("hw-v1-b", "10.0.0.3", true, false),
            ("hw-v2-a", "10.0.0.2", true, false),
        ],
    ));
    mesh.wait_until("scaled to three", |s| {
        endpoints(s, "helloworld-service").is_some_and(|e| e.len() == 3)
    })
    .await;

    // A readiness probe fails on hw-v1-b; hw-v2-a is being deleted
    // (terminating): both leave the rotation at once.
    api.apply(slice(
        "helloworld-service",
        &[
            ("hw-v1-a", "10.0.0.1", true, false),
            ("hw-v1-b", "10.0.0.3", false, false),
            ("hw-v2-a", "10.0.0.2", false, true),
        ],
    ));
    mesh.wait_until("only the ready pod", |s| {
        endpoints(s, "helloworld-service") == Some(vec!["hw-v1-a@10.0.0.1:15006".into()])
    })
    .await;

    // kubectl delete service helloworld-service (and its slices go too).
    api.delete("EndpointSlice", "helloworld-service-x1");
    api.delete("Service", "helloworld-service");
    mesh.wait_until("the service is gone", |s| {
        endpoints(s, "helloworld-service").is_none()
    })
    .await;

    // Reading the cluster took lists and watches of the six kinds, and
    // nothing else: no Istio object, so no status and no Event to write.
    assert_eq!(mesh.rules(), reads_only());
    assert!(
        mesh_calls(&mesh.api)
            .iter()
            .all(|c| c.namespace == NAMESPACE),
        "every call stays in the served namespace (the CA root's Secret is in mesh-system)"
    );
}

#[tokio::test]
async fn pod_labels_make_subsets_and_virtual_services_route_them() {
    let api = FakeApi::default();
    helloworld(&api);
    let mesh = Mesh::start(api.clone()).await;

    // kubectl apply -f destination-rule.yaml: one cluster per subset,
    // selected by the pods' `version` label.
    api.apply(istio("DestinationRule", "helloworld-service", subsets()));
    mesh.wait_until("subset clusters", |s| {
        endpoints(s, "helloworld-service|v1") == Some(vec!["hw-v1-a@10.0.0.1:15006".into()])
            && endpoints(s, "helloworld-service|v2") == Some(vec!["hw-v2-a@10.0.0.2:15006".into()])
    })
    .await;

    // kubectl apply -f canary.yaml (80/20), then edit it to 50/50.
    api.apply(istio("VirtualService", "helloworld-service", canary(80)));
    mesh.wait_until("80/20", |s| {
        weights(s, "helloworld-service")
            == [
                ("helloworld-service|v1".to_string(), 80),
                ("helloworld-service|v2".to_string(), 20),
            ]
    })
    .await;
    api.apply(istio("VirtualService", "helloworld-service", canary(50)));
    mesh.wait_until("50/50", |s| {
        weights(s, "helloworld-service")
            == [
                ("helloworld-service|v1".to_string(), 50),
                ("helloworld-service|v2".to_string(), 50),
            ]
    })
    .await;

    // kubectl delete vs helloworld-service: back to the default route.
    api.delete("VirtualService", "helloworld-service");
    mesh.wait_until("default route", |s| {
        weights(s, "helloworld-service") == [("helloworld-service".to_string(), 100)]
    })
    .await;

    // Each accepted version got its status condition once: the DR at
    // generation 1, the VS at generations 1 and 2.
    let patches: Vec<(String, i64, String)> = mesh
        .api
        .calls()
        .iter()
        .filter(|c| c.verb == "patch")
        .map(|c| {
            let body = c.body.as_ref().unwrap();
            let condition = &body["status"]["conditions"][0];
            (
                c.resource.clone(),
                condition["observedGeneration"].as_i64().unwrap(),
                condition["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        patches,
        [
            ("destinationrules/status".to_string(), 1, "True".to_string()),
            ("virtualservices/status".to_string(), 1, "True".to_string()),
            ("virtualservices/status".to_string(), 2, "True".to_string()),
        ]
    );
    let mut expected = reads_only();
    expected.insert("patch networking.istio.io/destinationrules/status".into());
    expected.insert("patch networking.istio.io/virtualservices/status".into());
    assert_eq!(mesh.rules(), expected);
}

#[tokio::test]
async fn an_invalid_resource_gets_an_event_and_a_status_and_the_last_good_config_keeps_serving() {
    let api = FakeApi::default();
    helloworld(&api);
    api.apply(istio("DestinationRule", "helloworld-service", subsets()));
    api.apply(istio("VirtualService", "helloworld-service", canary(80)));
    let mesh = Mesh::start(api.clone()).await;
    let good = mesh
        .wait_until("80/20", |s| weights(s, "helloworld-service").len() == 2)
        .await;

    // The talk's YAML: `percent`, which Istio replaced with `weight`. (With
    // the admission webhook in place the API server refuses it; this is
    // the object that got in anyway, for example before the webhook ran.)
    let mut spec = canary(50);
    spec["http"][0]["route"][0]["percent"] = json!(50);
    api.apply(istio("VirtualService", "helloworld-service", spec));

    // The learner sees why where they look: a Warning Event, and the status.
    let event = wait_for("an Event to be created", WAIT, async || {
        Ok(mesh
            .api
            .calls()
            .into_iter()
            .find(|c| c.verb == "create" && c.resource == "events"))
    })
    .await
    .unwrap()
    .body
    .unwrap();
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "Rejected");
    assert_eq!(event["regarding"]["kind"], "VirtualService");
    assert_eq!(event["regarding"]["name"], "helloworld-service");
    let note = event["note"].as_str().unwrap();
    assert!(note.contains("spec.http[0].route[0].percent"), "{note}");
    assert!(note.contains("weight"), "says what to write today: {note}");
    assert!(note.contains("last good version"), "{note}");

    let status = wait_for("the status of generation 2", WAIT, async || {
        let vs = mesh
            .api
            .get("VirtualService", "helloworld-service")
            .unwrap();
        Ok((vs["status"]["observedGeneration"] == 2).then(|| vs["status"].clone()))
    })
    .await
    .unwrap();
    let condition = &status["conditions"][0];
    assert_eq!(condition["type"], "Accepted");
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "Invalid");

    // The last good config keeps serving: still 80/20, same version.
    let now = mesh.snapshot().await;
    assert_eq!(
        weights(&now, "helloworld-service"),
        weights(&good, "helloworld-service")
    );
    assert_eq!(now.version, good.version, "nothing changed for the proxies");

    // The status patch itself came back as a watch event: no second write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = |verb: &str| {
        mesh_calls(&mesh.api)
            .iter()
            .filter(|c| c.verb == verb)
            .count()
    };
    assert_eq!(writes("create"), 1, "one Event");
    assert_eq!(writes("patch"), 3, "DR and VS accepted, VS rejected");
}

#[tokio::test]
async fn a_watch_answering_410_gone_relists_without_losing_an_update() {
    let api = FakeApi::default();
    helloworld(&api);
    let mesh = Mesh::start(api.clone()).await;
    mesh.wait_until("two endpoints", |s| {
        endpoints(s, "helloworld-service").is_some_and(|e| e.len() == 2)
    })
    .await;
    let lists_before = api.calls().iter().filter(|c| c.verb == "list").count();

    // etcd compacts, and an update happens that no watch delivers: every
    // watch answers 410 Gone, and only a fresh list can show the change.
    api.compact();
    api.apply(pod("hw-v2-b", "helloworld-service", "v2"));
    api.apply(slice(
        "helloworld-service",
        &[
            ("hw-v1-a", "10.0.0.1", true, false),
            ("hw-v2-a", "10.0.0.2", true, false),
            ("hw-v2-b", "10.0.0.4", true, false),
        ],
    ));
    // (The fake's watches answer only events after their resourceVersion;
    // compacting hides the two updates from every watch opened before.)
    mesh.wait_until("the update seen through the relist", |s| {
        endpoints(s, "helloworld-service")
            .is_some_and(|e| e.contains(&"hw-v2-b@10.0.0.4:15006".to_string()))
    })
    .await;
    let lists_after = api.calls().iter().filter(|c| c.verb == "list").count();
    assert!(
        lists_after > lists_before,
        "the watchers listed again ({lists_before} -> {lists_after})"
    );
}

#[tokio::test]
async fn an_api_server_away_leaves_the_last_snapshot_then_resyncs() {
    let api = FakeApi::default();
    helloworld(&api);
    let mesh = Mesh::start(api.clone()).await;
    let before = mesh
        .wait_until("two endpoints", |s| {
            endpoints(s, "helloworld-service").is_some_and(|e| e.len() == 2)
        })
        .await;

    // The API server goes away (a control-plane node restarting).
    api.set_failing(true);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let during = mesh.snapshot().await;
    assert_eq!(
        during.version, before.version,
        "nothing changed while it was away"
    );
    assert_eq!(
        endpoints(&during, "helloworld-service"),
        endpoints(&before, "helloworld-service"),
        "every proxy keeps its last good snapshot"
    );
    let failed = api.calls().len();

    // Meanwhile the cluster changed; when the API server is back the
    // watchers (retrying with backoff) list again and catch up.
    api.set_failing(false);
    api.apply(slice(
        "helloworld-service",
        &[("hw-v2-a", "10.0.0.2", true, false)],
    ));
    mesh.wait_until("resynced after the outage", |s| {
        endpoints(s, "helloworld-service") == Some(vec!["hw-v2-a@10.0.0.2:15006".into()])
    })
    .await;
    assert!(api.calls().len() > failed, "the watchers came back");
}

#[tokio::test]
async fn meshctl_apply_is_refused_with_the_kubectl_command_to_use_instead() {
    let api = FakeApi::default();
    let mesh = Mesh::start(api.clone()).await;
    let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
                metadata: {name: hw}\nspec: {hosts: [hw], http: [{route: [{destination: {host: hw}}]}]}\n";
    let response = mesh
        .http
        .post(format!("{}/v1/config/apply", mesh.control.url()))
        .json(&json!({"files": [{"name": "hw.yaml", "content": yaml}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("kubectl apply -f FILE -n guestbook"),
        "says what to run instead: {text}"
    );
    // Nothing was written anywhere: the API server is the only store.
    assert!(
        mesh_calls(&api)
            .iter()
            .all(|c| c.verb == "list" || c.verb == "watch")
    );
}

// === RBAC: the rendered Role allows exactly what the control plane does ===

/// One RBAC grant: (apiGroup, resource, verb), and the namespace it holds
/// in (`None`: cluster-wide), and the resourceNames it is limited to.
#[derive(Debug)]
struct Grant {
    group: String,
    resource: String,
    verb: String,
    namespace: Option<String>,
    names: Vec<String>,
}

/// Every grant of the Roles and ClusterRoles bound to mesh-control's
/// ServiceAccount in the rendered overlay.
fn granted(rendered: &str) -> Vec<Grant> {
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(rendered)
        .map(|d| serde_yaml::with::singleton_map_recursive::deserialize(d).unwrap_or(Value::Null))
        .filter(|d: &Value| !d.is_null())
        .collect();
    let bound_to_us = |binding: &Value| {
        binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == "mesh-control"
                    && s["namespace"] == "mesh-system"
            })
    };
    let mut grants = Vec::new();
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
        .filter(|d| bound_to_us(d))
    {
        // A RoleBinding grants in its own namespace, whatever it refers to.
        let namespace = (binding["kind"] == "RoleBinding").then(|| {
            binding["metadata"]["namespace"]
                .as_str()
                .unwrap()
                .to_string()
        });
        let role_ref = &binding["roleRef"];
        let role = docs
            .iter()
            .find(|d| {
                d["kind"] == role_ref["kind"]
                    && d["metadata"]["name"] == role_ref["name"]
                    && (d["kind"] == "ClusterRole"
                        || d["metadata"]["namespace"] == binding["metadata"]["namespace"])
            })
            .unwrap_or_else(|| panic!("{} refers to a missing role", binding["metadata"]["name"]));
        for rule in role["rules"].as_array().into_iter().flatten() {
            let list = |field: &str| -> Vec<String> {
                rule[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect()
            };
            for group in list("apiGroups") {
                for resource in list("resources") {
                    for verb in list("verbs") {
                        grants.push(Grant {
                            group: group.clone(),
                            resource: resource.clone(),
                            verb,
                            namespace: namespace.clone(),
                            names: list("resourceNames"),
                        });
                    }
                }
            }
        }
    }
    grants
}

fn render_overlay(overlay: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(root.join("k8s/overlays").join(overlay))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubectl could not run ({e}); it renders k8s/ (kubectl kustomize): install \
                 kubectl or run scripts/setup-test-machine.sh"
            )
        });
    assert!(
        out.status.success(),
        "kubectl kustomize k8s/overlays/{overlay} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn the_rendered_role_allows_every_call_the_control_plane_makes_and_nothing_more() {
    // Make every kind of call: read everything, accept and reject (twice,
    // so the Event recorder patches its series) Istio objects of each kind.
    let api = FakeApi::default();
    helloworld(&api);
    api.apply(istio("DestinationRule", "helloworld-service", subsets()));
    api.apply(istio(
        "Gateway",
        "guestbook-gateway",
        json!({"selector": {"istio": "ingressgateway"},
               "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"},
                            "hosts": ["*"]}]}),
    ));
    api.apply(istio("VirtualService", "helloworld-service", canary(80)));
    // The security kinds get their status written too.
    api.apply(istio(
        "PeerAuthentication",
        "default",
        json!({"mtls": {"mode": "PERMISSIVE"}}),
    ));
    api.apply(istio(
        "AuthorizationPolicy",
        "allow-all",
        json!({"rules": [{}]}),
    ));
    webhook_configurations(&api);
    let mesh = Mesh::start_with(api.clone(), true).await;
    mesh.wait_until("80/20", |s| weights(s, "helloworld-service").len() == 2)
        .await;
    ca_bundles_published(&mesh).await;
    // A sidecar's first certificate: its service-account token (audience
    // istio-ca) is checked with a TokenReview (kubernetes/token_review.rs).
    api.issue_token("probe-token", NAMESPACE, "probe", &["istio-ca"]);
    let identity = mesh_api::identity::Identity::new(NAMESPACE, "probe");
    let mut csr = rcgen::CertificateParams::default();
    csr.subject_alt_names = vec![rcgen::SanType::URI(
        identity.spiffe_id().try_into().unwrap(),
    )];
    let key = rcgen::KeyPair::generate().unwrap();
    let signed = mesh
        .http
        .post(format!("{}/v1/certificates", mesh.control.url()))
        .bearer_auth("probe-token")
        .json(&mesh_api::identity::CertificateRequest {
            identity,
            csr: csr.serialize_request(&key).unwrap().pem().unwrap(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 200, "{:?}", signed.text().await);
    for weight in [60, 40] {
        let mut spec = canary(weight);
        spec["http"][0]["route"][0]["percent"] = json!(weight);
        api.apply(istio("VirtualService", "helloworld-service", spec));
        let generation =
            api.get("VirtualService", "helloworld-service").unwrap()["metadata"]["generation"]
                .clone();
        wait_until("the status of the new generation", WAIT, async || {
            let vs = api.get("VirtualService", "helloworld-service").unwrap();
            Ok(vs["status"]["observedGeneration"] == generation)
        })
        .await
        .unwrap();
    }
    let calls = api.calls();
    let made: BTreeSet<String> = calls.iter().map(|c| c.rule()).collect();
    assert!(made.contains("patch events.k8s.io/events"), "{made:#?}");
    assert!(
        made.contains("create authentication.k8s.io/tokenreviews"),
        "{made:#?}"
    );
    assert!(
        made.contains("patch networking.istio.io/gateways/status"),
        "{made:#?}"
    );
    assert!(
        made.contains("patch admissionregistration.k8s.io/mutatingwebhookconfigurations"),
        "{made:#?}"
    );

    for overlay in ["kind", "minikube"] {
        let grants = granted(&render_overlay(overlay));
        let allows = |call: &fake_api::Call, g: &Grant| {
            g.group == call.group
                && g.resource == call.resource
                && g.verb == call.verb
                && (g.names.is_empty() || call.name.as_ref().is_some_and(|n| g.names.contains(n)))
                && g.namespace.as_ref().is_none_or(|ns| *ns == call.namespace)
        };
        // Every call the control plane made is allowed...
        let denied: BTreeSet<String> = calls
            .iter()
            .filter(|c| !grants.iter().any(|g| allows(c, g)))
            .map(|c| format!("{} {:?} in namespace {:?}", c.rule(), c.name, c.namespace))
            .collect();
        assert!(
            denied.is_empty(),
            "k8s/overlays/{overlay}: mesh-control's roles do not allow {denied:#?}"
        );
        // ...and nothing is granted that no call needs.
        let unused: Vec<String> = grants
            .iter()
            .filter(|g| !calls.iter().any(|c| allows(c, g)))
            .map(|g| {
                format!(
                    "{} {}/{} {:?} {:?}",
                    g.verb, g.group, g.resource, g.names, g.namespace
                )
            })
            .collect();
        assert!(
            unused.is_empty(),
            "k8s/overlays/{overlay}: mesh-control's roles grant what it never uses: {unused:#?}"
        );
    }
}

/// The calls the control plane made, but those for the CA root's Secret.
fn mesh_calls(api: &FakeApi) -> Vec<fake_api::Call> {
    api.calls()
        .into_iter()
        .filter(|c| c.resource != "secrets")
        .collect()
}

// === the admission webhooks, over HTTPS ===

/// The two webhook configurations of k8s/, as applied before mesh-control
/// has made its certificate (no caBundle yet).
fn webhook_configurations(api: &FakeApi) {
    let webhook = |name: &str, path: &str| {
        json!({"name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
               "clientConfig": {"service": {"name": "mesh-control", "namespace": "mesh-system",
                                            "path": path, "port": 443}}})
    };
    api.apply(json!({"kind": "ValidatingWebhookConfiguration",
                     "metadata": {"name": webhook::VALIDATING_CONFIGURATION},
                     "webhooks": [webhook("validation.micromesh.dev", "/validate")]}));
    api.apply(json!({"kind": "MutatingWebhookConfiguration",
                     "metadata": {"name": webhook::MUTATING_CONFIGURATION},
                     "webhooks": [webhook("sidecar-injector.micromesh.dev", "/inject")]}));
}

/// Wait until both configurations carry the control plane's CA.
async fn ca_bundles_published(mesh: &Mesh) {
    let ca = mesh
        .control
        .webhook()
        .expect("the webhooks run")
        .ca_pem
        .clone();
    for (kind, name) in [
        (
            "ValidatingWebhookConfiguration",
            webhook::VALIDATING_CONFIGURATION,
        ),
        (
            "MutatingWebhookConfiguration",
            webhook::MUTATING_CONFIGURATION,
        ),
    ] {
        let bundle = wait_for(&format!("{kind}'s caBundle"), WAIT, async || {
            let object = mesh.api.get(kind, name).unwrap();
            let bundle = &object["webhooks"][0]["clientConfig"]["caBundle"];
            Ok((!bundle.is_null()).then(|| bundle.clone()))
        })
        .await
        .unwrap();
        let pem: k8s_openapi::ByteString = serde_json::from_value(bundle).unwrap();
        assert_eq!(
            String::from_utf8(pem.0).unwrap(),
            ca,
            "{kind}: the caBundle is our CA"
        );
    }
}

/// POST `body` to the webhook over TLS, trusting only the published CA and
/// checking the certificate's name as the API server does.
async fn post_tls(mesh: &Mesh, path: &str, body: &Value) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject};

    let info = mesh.control.webhook().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(info.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(info.addr).await.unwrap();
    let server_name = "mesh-control.mesh-system.svc".try_into().unwrap();
    let mut tls = connector
        .connect(server_name, tcp)
        .await
        .expect("the serving certificate is valid for the Service's name");
    let body = serde_json::to_vec(body).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: mesh-control.mesh-system.svc\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body).await.unwrap();
    let mut response = Vec::new();
    // The server closes after answering (Connection: close); whether a TLS
    // close_notify comes first does not matter here.
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn the_webhooks_serve_https_with_a_certificate_whose_ca_they_publish() {
    let api = FakeApi::default();
    webhook_configurations(&api);
    let mesh = Mesh::start_with(api.clone(), true).await;
    ca_bundles_published(&mesh).await;

    // kubectl apply -f of the talk's `percent`: refused, with meshctl's words.
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u-1", "operation": "CREATE", "userInfo": {"username": "learner"},
            "kind": {"group": "networking.istio.io", "version": "v1alpha3", "kind": "VirtualService"},
            "resource": {"group": "networking.istio.io", "version": "v1alpha3",
                         "resource": "virtualservices"},
            "name": "helloworld-service", "namespace": NAMESPACE,
            "object": {"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
                       "metadata": {"name": "helloworld-service", "namespace": NAMESPACE},
                       "spec": {"hosts": ["helloworld-service"], "http": [{"route": [
                           {"destination": {"host": "helloworld-service"}, "percent": 100}]}]}}
        }
    });
    let answer = post_tls(&mesh, "/validate", &review).await;
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], "u-1");
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("spec.http[0].route[0].percent"),
        "{message}"
    );

    // With `weight` instead, it is allowed.
    let mut valid = review.clone();
    valid["request"]["object"]["spec"]["http"][0]["route"][0] =
        json!({"destination": {"host": "helloworld-service"}, "weight": 100});
    let answer = post_tls(&mesh, "/validate", &valid).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer:#}");

    // A pod created in an injected namespace gets its sidecar as a JSON Patch.
    let pod = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u-2", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": NAMESPACE,
            "object": {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"generateName": "hw-v1-", "namespace": NAMESPACE,
                                    "labels": {"app": "helloworld-service", "version": "v1"}},
                       "spec": {"containers": [{"name": "helloworld",
                                                "image": "micromesh/helloworld:0.1.0",
                                                "ports": [{"name": "http", "containerPort": 8080}]}]}}
        }
    });
    let answer = post_tls(&mesh, "/inject", &pod).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer:#}");
    assert_eq!(answer["response"]["patchType"], "JSONPatch", "{answer:#}");
}

#[tokio::test]
async fn a_restarted_control_plane_never_reuses_a_version_a_proxy_may_hold() {
    // On a cluster the state directory is lost with the pod, so versions
    // start from the clock: above anything a previous run handed out.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let api = FakeApi::default();
    helloworld(&api);
    let first = Mesh::start(api.clone()).await;
    let first_version = first
        .wait_until("two endpoints", |s| {
            endpoints(s, "helloworld-service").is_some_and(|e| e.len() == 2)
        })
        .await
        .version;
    assert!(first_version >= before, "{first_version} < {before}");
    first.control.shutdown().await.unwrap();

    // A new pod: a fresh state directory, the same cluster.
    let second = Mesh::start(api.clone()).await;
    let rebuilt = second
        .wait_until("rebuilt from the API alone", |s| {
            endpoints(s, "helloworld-service").is_some_and(|e| e.len() == 2)
        })
        .await;
    assert!(
        rebuilt.version > first_version,
        "{} after {first_version}: a proxy holding {first_version} resyncs",
        rebuilt.version
    );
}

#[tokio::test]
async fn analysis_findings_appear_in_status_as_istio_shows_them() {
    let api = FakeApi::default();
    helloworld(&api);
    api.apply(istio("DestinationRule", "helloworld-service", subsets()));
    let mesh = Mesh::start(api.clone()).await;

    // A route to subset v3, which no DestinationRule defines: valid, so it
    // is accepted and serves (as `meshctl apply` applies it), but analysis
    // says what is wrong, in the object's status.
    let mut spec = canary(50);
    spec["http"][0]["route"][1]["destination"]["subset"] = json!("v3");
    api.apply(istio("VirtualService", "helloworld-service", spec));
    let status =
        |api: &FakeApi| api.get("VirtualService", "helloworld-service").unwrap()["status"].clone();
    wait_until("a validation message in the status", WAIT, async || {
        Ok(status(&api)["validationMessages"]
            .as_array()
            .is_some_and(|m| !m.is_empty()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}: {:#}", status(&api)));
    let written = status(&api);
    assert_eq!(written["conditions"][0]["status"], "True", "{written:#}");
    let finding = &written["validationMessages"][0];
    assert_eq!(finding["level"], "ERROR", "{written:#}");
    assert_eq!(finding["type"]["name"], "ReferencedResourceNotFound");
    assert_eq!(finding["field"], "spec.http[0].route[1].destination.subset");
    mesh.wait_until("the accepted route serves", |s| {
        weights(s, "helloworld-service")
            .iter()
            .any(|(cluster, _)| cluster == "helloworld-service|v3")
    })
    .await;

    // Defining v3 (and giving it a pod) clears the finding, without any
    // change to the VirtualService itself.
    api.apply(pod("hw-v3-a", "helloworld-service", "v3"));
    let mut dr = subsets();
    dr["subsets"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "v3", "labels": {"version": "v3"}}));
    api.apply(istio("DestinationRule", "helloworld-service", dr));
    api.apply(slice(
        "helloworld-service",
        &[
            ("hw-v1-a", "10.0.0.1", true, false),
            ("hw-v2-a", "10.0.0.2", true, false),
            ("hw-v3-a", "10.0.0.3", true, false),
        ],
    ));
    wait_until("the validation message to clear", WAIT, async || {
        Ok(status(&api)["validationMessages"]
            .as_array()
            .is_none_or(Vec::is_empty))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}: {:#}", status(&api)));
}

#[tokio::test]
async fn every_kubernetes_name_of_a_service_reaches_it_from_a_sidecar() {
    let api = FakeApi::default();
    helloworld(&api);
    let mesh = Mesh::start(api.clone()).await;

    // Before any rule: the default virtual host answers to the service's
    // names in the served namespace (`guestbook`), not in `default`.
    let before = mesh
        .wait_until("helloworld-service discovered", |s| {
            s.virtual_hosts
                .iter()
                .any(|v| v.name == "helloworld-service")
        })
        .await;
    let vhost = before
        .virtual_hosts
        .iter()
        .find(|v| v.name == "helloworld-service")
        .unwrap();
    for name in [
        "helloworld-service:8080",
        "helloworld-service.guestbook:8080",
        "helloworld-service.guestbook.svc.cluster.local:8080",
    ] {
        assert!(vhost.domains.iter().any(|d| d == name), "{name}: {vhost:?}");
    }
    assert!(
        vhost.domains.iter().all(|d| !d.contains(".default")),
        "{vhost:?}"
    );

    // kubectl apply: the rules name the service three ways. The short host
    // in the DestinationRule is in the rule's namespace; the VirtualService
    // uses the FQDN and routes to `helloworld-service.guestbook`.
    api.apply(istio("DestinationRule", "helloworld-service", subsets()));
    api.apply(istio(
        "VirtualService",
        "helloworld-service",
        json!({"hosts": ["helloworld-service.guestbook.svc.cluster.local"],
               "http": [{"route": [
                   {"destination": {"host": "helloworld-service.guestbook", "subset": "v1"},
                    "weight": 80},
                   {"destination": {"host": "helloworld-service.guestbook.svc", "subset": "v2"},
                    "weight": 20}]}]}),
    ));
    let snapshot = mesh
        .wait_until("the canary by its Kubernetes names", |s| {
            weights(s, "helloworld-service")
                == [
                    ("helloworld-service|v1".to_string(), 80),
                    ("helloworld-service|v2".to_string(), 20),
                ]
        })
        .await;
    // One virtual host serves every form (the rule replaced the default
    // one rather than standing beside it), and its subsets have endpoints.
    let hosts: Vec<&str> = snapshot
        .virtual_hosts
        .iter()
        .filter(|v| {
            v.domains
                .iter()
                .any(|d| d == "helloworld-service.guestbook")
        })
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(hosts, ["helloworld-service"]);
    assert_eq!(
        endpoints(&snapshot, "helloworld-service|v2"),
        Some(vec!["hw-v2-a@10.0.0.2:15006".into()])
    );
}
