//! A fake Kubernetes API server behind `tower_test::mock::pair`, the way
//! kube-rs's controller-rs tests a controller without a cluster, grown a
//! little: instead of a fixed script of request/response pairs it keeps a
//! small world of objects and answers lists, watches, status patches and
//! Event creations the way the API server does, because six watchers ask
//! concurrently and in no fixed order.
//!
//! Every call is recorded as `verb group/resource` (what an RBAC rule
//! grants), with its body for writes, so a scenario can assert the exact
//! calls made and an RBAC test can compare them with the rendered Role.
//!
//! Knobs a scenario turns: `failing` (every request answers 503, as an API
//! server restarting), `compact` (watches from an older resourceVersion
//! answer 410 Gone, as after etcd compaction).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::Notify;

pub const NAMESPACE: &str = "guestbook";

/// One recorded API call.
#[derive(Clone, Debug)]
pub struct Call {
    /// `list`, `watch`, `patch`, `create`...
    pub verb: String,
    /// `""` for the core group.
    pub group: String,
    /// `services`, `virtualservices/status`, `events`.
    pub resource: String,
    /// `""` for a cluster-scoped resource.
    pub namespace: String,
    /// The object named in the path, if any (RBAC's resourceNames).
    pub name: Option<String>,
    pub body: Option<Value>,
}

impl Call {
    /// `watch discovery.k8s.io/endpointslices`, `patch networking.istio.io/virtualservices/status`.
    pub fn rule(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!("{} {group}/{}", self.verb, self.resource)
    }
}

#[derive(Default)]
struct Collection {
    objects: BTreeMap<String, Value>,
    /// (resourceVersion, ADDED/MODIFIED/DELETED, object)
    log: Vec<(u64, &'static str, Value)>,
}

#[derive(Default)]
struct World {
    rv: u64,
    /// By `group/resource`.
    collections: BTreeMap<String, Collection>,
    calls: Vec<Call>,
    failing: bool,
    /// Watches from a resourceVersion below this answer 410 Gone.
    compacted_below: u64,
    /// Service-account tokens a TokenReview knows: token -> (username,
    /// the audiences it was minted for).
    tokens: BTreeMap<String, (String, Vec<String>)>,
}

/// The fake API server. Cheap to clone.
#[derive(Clone, Default)]
pub struct FakeApi {
    world: Arc<Mutex<World>>,
    changed: Arc<Notify>,
}

/// Where an object lives: (group, version, resource, kind).
pub fn type_of(kind: &str) -> (&'static str, &'static str, &'static str) {
    match kind {
        "Service" => ("", "v1", "services"),
        "Pod" => ("", "v1", "pods"),
        "EndpointSlice" => ("discovery.k8s.io", "v1", "endpointslices"),
        "VirtualService" => ("networking.istio.io", "v1", "virtualservices"),
        "DestinationRule" => ("networking.istio.io", "v1", "destinationrules"),
        "Gateway" => ("networking.istio.io", "v1", "gateways"),
        "PeerAuthentication" => ("security.istio.io", "v1", "peerauthentications"),
        "AuthorizationPolicy" => ("security.istio.io", "v1", "authorizationpolicies"),
        "ValidatingWebhookConfiguration" => (
            "admissionregistration.k8s.io",
            "v1",
            "validatingwebhookconfigurations",
        ),
        "MutatingWebhookConfiguration" => (
            "admissionregistration.k8s.io",
            "v1",
            "mutatingwebhookconfigurations",
        ),
        "Secret" => ("", "v1", "secrets"),
        other => panic!("the fake API server does not know kind {other}"),
    }
}

impl FakeApi {
    /// A kube Client on this fake, answering in the background.
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let api = api.clone();
                tokio::spawn(async move { send.send_response(api.answer(request).await) });
            }
        });
        kube::Client::new(service, NAMESPACE)
    }

    // === the world, as a scenario changes it ===

    /// Create or replace an object (`kubectl apply`): a new resourceVersion,
    /// generation + 1 when the spec changed, and a watch event.
    pub fn apply(&self, mut object: Value) {
        let kind = object["kind"]
            .as_str()
            .expect("an object has a kind")
            .to_string();
        let (group, version, resource) = type_of(&kind);
        object["apiVersion"] = json!(if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        });
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let mut world = self.world.lock().unwrap();
        world.rv += 1;
        let rv = world.rv;
        let collection = world
            .collections
            .entry(format!("{group}/{resource}"))
            .or_default();
        let (event, generation, uid, created) = match collection.objects.get(&name) {
            Some(old) => {
                let generation = old["metadata"]["generation"].as_i64().unwrap_or(1)
                    + i64::from(old["spec"] != object["spec"]);
                (
                    "MODIFIED",
                    generation,
                    old["metadata"]["uid"].clone(),
                    old["metadata"]["creationTimestamp"].clone(),
                )
            }
            None => (
                "ADDED",
                1,
                json!(format!("uid-{name}-{rv}")),
                json!(format!("2026-12-01T00:00:{:02}Z", rv % 60)),
            ),
        };
        let meta = &mut object["metadata"];
        // A Secret keeps the namespace it names (the CA root's is the
        // control plane's own, mesh-system).
        let keeps_namespace = kind.ends_with("WebhookConfiguration")
            || (kind == "Secret" && meta["namespace"].is_string());
        if !keeps_namespace {
            meta["namespace"] = json!(NAMESPACE);
        }
        meta["resourceVersion"] = json!(rv.to_string());
        meta["generation"] = json!(generation);
        meta["uid"] = uid;
        meta["creationTimestamp"] = created;
        collection.objects.insert(name, object.clone());
        collection.log.push((rv, event, object));
        drop(world);
        self.changed.notify_waiters();
    }

    /// Delete an object (`kubectl delete`).
    pub fn delete(&self, kind: &str, name: &str) {
        let (group, _, resource) = type_of(kind);
        let mut world = self.world.lock().unwrap();
        world.rv += 1;
        let rv = world.rv;
        let collection = world
            .collections
            .entry(format!("{group}/{resource}"))
            .or_default();
        let mut object = collection
            .objects
            .remove(name)
            .unwrap_or_else(|| panic!("{kind} {name} does not exist"));
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        collection.log.push((rv, "DELETED", object));
        drop(world);
        self.changed.notify_waiters();
    }

    /// An object as the API server holds it now (status included).
    pub fn get(&self, kind: &str, name: &str) -> Option<Value> {
        let (group, _, resource) = type_of(kind);
        let world = self.world.lock().unwrap();
        world
            .collections
            .get(&format!("{group}/{resource}"))?
            .objects
            .get(name)
            .cloned()
    }

    /// While true, every request answers 503 Service Unavailable.
    pub fn set_failing(&self, failing: bool) {
        self.world.lock().unwrap().failing = failing;
        self.changed.notify_waiters();
    }

    /// etcd compaction: every watch from a resourceVersion older than now
    /// answers 410 Gone, so the watchers must list again.
    pub fn compact(&self) {
        let mut world = self.world.lock().unwrap();
        world.compacted_below = world.rv + 1;
        drop(world);
        self.changed.notify_waiters();
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.world.lock().unwrap().calls.clone()
    }

    /// A token the API server will vouch for in a TokenReview, as a pod's
    /// projected service-account token (`audiences`: what it was minted for).
    pub fn issue_token(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
    ) {
        self.world.lock().unwrap().tokens.insert(
            token.to_string(),
            (
                format!("system:serviceaccount:{namespace}:{service_account}"),
                audiences.iter().map(|a| a.to_string()).collect(),
            ),
        );
    }

    /// `authentication.k8s.io/v1` TokenReview, as the API server answers
    /// it: authenticated if the token is known and shares an audience with
    /// the request; the answer names the audiences they share.
    fn token_review(&self, review: Value) -> Response<Body> {
        let world = self.world.lock().unwrap();
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        let asked: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut answer = review.clone();
        answer["status"] = match world.tokens.get(token) {
            Some((username, audiences)) => {
                let shared: Vec<&String> = asked.iter().filter(|a| audiences.contains(a)).collect();
                if shared.is_empty() {
                    json!({"authenticated": false, "error": "token audiences are invalid"})
                } else {
                    json!({"authenticated": true, "user": {"username": username}, "audiences": shared})
                }
            }
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        json_response(StatusCode::CREATED, &answer)
    }

    // === answering ===

    async fn answer(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query: BTreeMap<String, String> = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body = http_body_util::BodyExt::collect(request.into_body())
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let body: Option<Value> = serde_json::from_slice(&body).ok();

        // /api/v1/namespaces/NS/RESOURCE[/NAME[/SUB]] or /apis/GROUP/VERSION/namespaces/NS/...
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (group, rest) = match parts.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => panic!("unexpected path {path}"),
        };
        let (namespace, resource, name, sub) = match rest {
            [resource] => ("", *resource, None, None),
            [resource, name] => ("", *resource, Some(*name), None),
            ["namespaces", ns, resource] => (*ns, *resource, None, None),
            ["namespaces", ns, resource, name] => (*ns, *resource, Some(*name), None),
            ["namespaces", ns, resource, name, sub] => (*ns, *resource, Some(*name), Some(*sub)),
            _ => panic!("unexpected path {path}"),
        };
        let verb = match (
            method.as_str(),
            name,
            query.get("watch").map(String::as_str),
        ) {
            ("GET", None, Some("true")) => "watch",
            ("GET", None, _) => "list",
            ("GET", Some(_), _) => "get",
            ("POST", _, _) => "create",
            ("PATCH", _, _) => "patch",
            ("PUT", _, _) => "update",
            ("DELETE", _, _) => "delete",
            (other, _, _) => panic!("unexpected method {other}"),
        };
        let full_resource = match sub {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        };
        {
            let mut world = self.world.lock().unwrap();
            world.calls.push(Call {
                verb: verb.to_string(),
                group: group.to_string(),
                resource: full_resource.clone(),
                namespace: namespace.to_string(),
                name: name.map(str::to_string),
                body: body.clone(),
            });
            if world.failing {
                return status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the API server is restarting",
                );
            }
        }
        let key = format!("{group}/{resource}");
        match verb {
            "list" => self.list(&key),
            "watch" => {
                let from = query
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                self.watch(&key, from).await
            }
            "patch" if sub == Some("status") => self.patch_status(&key, name.unwrap(), body),
            "get" => match self.get_key(&key, name.unwrap()) {
                Some(object) => json_response(StatusCode::OK, &object),
                None => status(StatusCode::NOT_FOUND, "not found"),
            },
            "patch" if resource.ends_with("webhookconfigurations") => {
                self.patch_webhooks(&key, name.unwrap(), body.expect("a patch body"))
            }
            // The Event recorder's series update: a repeat of the same Event.
            "patch" if resource == "events" => {
                json_response(StatusCode::OK, &body.expect("an Event patch"))
            }
            // Create of a named object: 409 AlreadyExists when the name is
            // taken, as the API server answers (the CA root's create race).
            "create" if resource == "secrets" => {
                let mut secret = body.expect("a Secret");
                let name = secret["metadata"]["name"].as_str().unwrap().to_string();
                if self.get_key(&key, &name).is_some() {
                    return json_response(
                        StatusCode::CONFLICT,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                "status": "Failure", "reason": "AlreadyExists", "code": 409,
                                "message": format!("secrets \"{name}\" already exists")}),
                    );
                }
                secret["kind"] = json!("Secret");
                self.apply(secret);
                json_response(StatusCode::CREATED, &self.get_key(&key, &name).unwrap())
            }
            "create" if resource == "tokenreviews" => {
                self.token_review(body.expect("a TokenReview"))
            }
            "create" if resource == "events" => {
                let mut event = body.expect("an Event body");
                if event["metadata"]["name"].is_null() {
                    event["metadata"]["name"] = json!("generated");
                }
                json_response(StatusCode::CREATED, &event)
            }
            _ => panic!("the fake API server does not answer {verb} {key}"),
        }
    }

    fn get_key(&self, key: &str, name: &str) -> Option<Value> {
        let world = self.world.lock().unwrap();
        world.collections.get(key)?.objects.get(name).cloned()
    }

    /// A strategic merge patch of `webhooks`, merged by webhook name as the
    /// API server merges it (the only patch mesh-control sends there).
    fn patch_webhooks(&self, key: &str, name: &str, patch: Value) -> Response<Body> {
        let mut world = self.world.lock().unwrap();
        let Some(object) = world
            .collections
            .get_mut(key)
            .and_then(|c| c.objects.get_mut(name))
        else {
            return status(StatusCode::NOT_FOUND, "not found");
        };
        for change in patch["webhooks"].as_array().expect("a webhooks list") {
            let webhook = object["webhooks"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .find(|w| w["name"] == change["name"])
                .expect("a strategic merge patch of an existing webhook");
            webhook["clientConfig"]["caBundle"] = change["clientConfig"]["caBundle"].clone();
        }
        json_response(StatusCode::OK, object)
    }

    fn list(&self, key: &str) -> Response<Body> {
        let world = self.world.lock().unwrap();
        let items: Vec<Value> = world
            .collections
            .get(key)
            .map(|c| c.objects.values().cloned().collect())
            .unwrap_or_default();
        json_response(
            StatusCode::OK,
            &json!({"metadata": {"resourceVersion": world.rv.to_string()}, "items": items}),
        )
    }

    /// The events after `from`, as soon as there is one; an empty answer
    /// after a while (a real watch times out too, and is re-issued).
    async fn watch(&self, key: &str, from: u64) -> Response<Body> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let world = self.world.lock().unwrap();
                if world.failing {
                    return status(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the API server is restarting",
                    );
                }
                if from < world.compacted_below {
                    let gone = json!({"type": "ERROR", "object": {
                        "kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "Expired", "code": 410,
                        "message": format!("too old resource version: {from}")}});
                    return lines(&[gone]);
                }
                let events: Vec<Value> = world
                    .collections
                    .get(key)
                    .map(|c| {
                        c.log
                            .iter()
                            .filter(|(rv, _, _)| *rv > from)
                            .map(|(_, kind, object)| json!({"type": kind, "object": object}))
                            .collect()
                    })
                    .unwrap_or_default();
                if !events.is_empty() {
                    return lines(&events);
                }
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(deadline) => return lines(&[]),
            }
        }
    }

    fn patch_status(&self, key: &str, name: &str, body: Option<Value>) -> Response<Body> {
        let mut world = self.world.lock().unwrap();
        world.rv += 1;
        let rv = world.rv;
        let collection = world.collections.entry(key.to_string()).or_default();
        let Some(object) = collection.objects.get_mut(name) else {
            return status(StatusCode::NOT_FOUND, "not found");
        };
        object["status"] = body.expect("a patch body")["status"].clone();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let object = object.clone();
        collection.log.push((rv, "MODIFIED", object.clone()));
        drop(world);
        self.changed.notify_waiters();
        json_response(StatusCode::OK, &object)
    }
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(value).unwrap()))
        .unwrap()
}

fn lines(events: &[Value]) -> Response<Body> {
    let mut out = Vec::new();
    for event in events {
        serde_json::to_writer(&mut out, event).unwrap();
        out.push(b'\n');
    }
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from(out))
        .unwrap()
}

fn status(code: StatusCode, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "code": code.as_u16(),
                // kube's get_opt reads a missing object from this reason.
                "reason": if code == StatusCode::NOT_FOUND { "NotFound" } else { "ServiceUnavailable" }}),
    )
}
