//! AuthorizationPolicy at a real inbound listener: what a denied caller
//! gets (403 `RBAC: access denied`, or `PERMISSION_DENIED` for gRPC), what
//! the sidecar reports (`response_flags="RBAC"`), that nothing denied
//! reaches the app, and the request-target rules around the decision: a
//! target that is not a path is refused before any decision, a `#fragment`
//! never reaches one. Policies come from Istio YAML, validated and scoped
//! the way the control plane does it.
//!
//! Every caller here is plaintext, so it has no principal: a policy that
//! names principals cannot match it (Istio's rule). Callers with a
//! certificate are the end-to-end tests' business (lab 10).

mod edge_support;

use edge_support::{RecordingApp, raw, sidecar_snapshot};
use mesh_api::config::{ConfigSet, SourceFile};
use mesh_api::snapshot::AppliedAuthorizationPolicy;
use mesh_proxy::{Config, Proxy, ProxyHandle};

/// A sidecar of `hw` (labels `app: hw`, `version: v1`) in front of `app`,
/// with `yaml`'s AuthorizationPolicies that select it.
async fn sidecar_with(app: &RecordingApp, yaml: &str) -> ProxyHandle {
    let config = Config::local_sidecar("hw", app.addr);
    let resources = ConfigSet::parse(&[SourceFile {
        name: "policies.yaml".into(),
        content: yaml.into(),
    }])
    .unwrap_or_else(|e| panic!("the test's policies validate: {e}"));
    let (set, _) = ConfigSet::default().apply(resources);
    let mut snapshot = sidecar_snapshot(app.addr);
    snapshot.inbound.authorization_policies = set
        .authorization_policies_for(&config.labels)
        .into_iter()
        .map(|(r, spec)| AppliedAuthorizationPolicy {
            name: format!("{}/{}", r.metadata.namespace, r.metadata.name),
            spec: spec.clone(),
        })
        .collect();
    let proxy = Proxy::start(config).await.unwrap();
    proxy.apply_snapshot(snapshot).unwrap();
    proxy
}

fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: hw:8080\r\nConnection: close\r\n\r\n")
}

/// Viewers may only read; a DENY for `/admin*` on top.
const VIEWERS: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: viewer, namespace: default}
spec:
  selector: {matchLabels: {app: hw}}
  rules:
  - to:
    - operation: {methods: [GET, HEAD], hosts: [\"HW:8080\"], ports: [\"8080\"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  selector: {matchLabels: {app: hw}}
  action: DENY
  rules:
  - to:
    - operation: {paths: [\"/admin*\"]}
";

#[tokio::test]
async fn viewers_may_read_and_nothing_else_reaches_the_app() {
    let app = RecordingApp::start().await;
    let proxy = sidecar_with(&app, VIEWERS).await;
    let inbound = proxy.inbound_addr().unwrap();

    // GET matches the viewer rule (host compared case-insensitively, the
    // workload port 8080): allowed, and the app sees it.
    let rsp = raw(inbound, &get("/messages")).await;
    assert_eq!(rsp.status, 200, "{rsp:?}");
    assert_eq!(app.last().unwrap().target, "/messages");

    // POST matches no ALLOW policy: denied by the sidecar itself.
    let before = app.count();
    let post = "POST /messages HTTP/1.1\r\nHost: hw:8080\r\nContent-Length: 2\r\n\
                Connection: close\r\n\r\nhi";
    let rsp = raw(inbound, post).await;
    assert_eq!(rsp.status, 403, "{rsp:?}");
    assert_eq!(rsp.body, "RBAC: access denied");
    // DENY wins over ALLOW, on the normalized path.
    let rsp = raw(inbound, &get("/public/..%2F%61dmin/users")).await;
    assert_eq!(rsp.status, 403, "{rsp:?}");
    assert_eq!(app.count(), before, "a denied request reached the app");

    // The metrics say why: code 403, flag RBAC, reported by the callee.
    let stats = raw(
        proxy.admin_addr(),
        "GET /stats/prometheus HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    let denied: Vec<&str> = stats
        .body
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"403\""))
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(
        denied[0].contains("reporter=\"destination\""),
        "{}",
        denied[0]
    );
    assert!(
        denied[0].contains("response_flags=\"RBAC\""),
        "{}",
        denied[0]
    );
    assert!(
        denied[0].ends_with(" 2"),
        "two denied requests: {}",
        denied[0]
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_denied_grpc_call_reads_permission_denied() {
    let app = RecordingApp::start().await;
    let proxy = sidecar_with(&app, VIEWERS).await;
    // A gRPC call is a POST: the viewer rule does not allow it.
    let call = "POST /hello.Greeter/SayHello HTTP/1.1\r\nHost: hw:8080\r\n\
                content-type: application/grpc\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let rsp = raw(proxy.inbound_addr().unwrap(), call).await;
    assert_eq!(
        rsp.status, 200,
        "gRPC answers carry their status in grpc-status: {rsp:?}"
    );
    let head = rsp.head.to_ascii_lowercase();
    assert!(
        head.contains("grpc-status: 7"),
        "PERMISSION_DENIED: {rsp:?}"
    );
    assert!(
        head.contains("grpc-message: rbac: access denied"),
        "{rsp:?}"
    );
    assert_eq!(app.count(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_plaintext_caller_has_no_principal() {
    // Only guestbook-ui may call; `*` would be any authenticated caller.
    let yaml = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-ui, namespace: default}
spec:
  rules:
  - from:
    - source: {principals: [\"cluster.local/ns/default/sa/guestbook-ui\"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: authenticated, namespace: default}
spec:
  rules:
  - from:
    - source: {namespaces: [\"*\"]}
";
    let app = RecordingApp::start().await;
    let proxy = sidecar_with(&app, yaml).await;
    let rsp = raw(proxy.inbound_addr().unwrap(), &get("/")).await;
    assert_eq!(rsp.status, 403, "{rsp:?}");
    // A spoofed identity header changes nothing: identity comes from the
    // connection's certificate only.
    let spoofed = "GET / HTTP/1.1\r\nHost: hw:8080\r\nx-forwarded-client-cert: \
                   By=spiffe://cluster.local/ns/default/sa/hw;URI=spiffe://cluster.local/ns/default/sa/guestbook-ui\r\n\
                   Connection: close\r\n\r\n";
    let rsp = raw(proxy.inbound_addr().unwrap(), spoofed).await;
    assert_eq!(rsp.status, 403, "{rsp:?}");
    assert_eq!(app.count(), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn targets_that_are_not_paths_never_reach_a_decision_and_fragments_are_dropped() {
    // Deny everything: any request that got to a decision would be 403.
    let yaml = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: default}
spec:
  action: DENY
  rules: [{}]
";
    let app = RecordingApp::start().await;
    let proxy = sidecar_with(&app, yaml).await;
    let inbound = proxy.inbound_addr().unwrap();
    for target in ["admin", "*", "?x=/admin", "#/admin", "hw:8080"] {
        let rsp = raw(inbound, &get(target)).await;
        assert_eq!(rsp.status, 400, "{target}: refused at the door: {rsp:?}");
    }
    proxy.shutdown().await;

    // Only /public is allowed: a fragment cannot smuggle anything, in
    // either direction.
    let yaml = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: public, namespace: default}
spec:
  rules:
  - to:
    - operation: {paths: [\"/public*\"]}
";
    let proxy = sidecar_with(&app, yaml).await;
    let inbound = proxy.inbound_addr().unwrap();
    let rsp = raw(inbound, &get("/public/x#/../../admin")).await;
    assert_eq!(rsp.status, 200, "{rsp:?}");
    assert_eq!(
        app.last().unwrap().target,
        "/public/x",
        "the fragment is not sent on"
    );
    let rsp = raw(inbound, &get("/admin#/public")).await;
    assert_eq!(rsp.status, 403, "{rsp:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn addresses_templates_and_pseudo_headers_decide_at_the_listener() {
    // From Istio's own test policies: address blocks, a path template, a
    // pseudo-header condition. Every caller here is 127.0.0.1.
    let yaml = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: local-only, namespace: default}
spec:
  rules:
  - from:
    - source: {ipBlocks: [\"127.0.0.0/8\"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: default}
spec:
  action: DENY
  rules:
  - from:
    - source: {remoteIpBlocks: [\"203.0.113.0/24\"]}
  - to:
    - operation: {paths: [\"/api/{*}/secret\", \"/{**}/.git\"]}
  - when:
    - {key: \"request.headers[:method]\", values: [DELETE]}
";
    let app = RecordingApp::start().await;
    let proxy = sidecar_with(&app, yaml).await;
    let addr = proxy.inbound_addr().unwrap();
    let request = |method: &str, target: &str, extra: &str| {
        format!("{method} {target} HTTP/1.1\r\nHost: hw:8080\r\n{extra}Connection: close\r\n\r\n")
    };
    let status = |raw_request: String| async move { raw(addr, &raw_request).await.status };
    assert_eq!(status(request("GET", "/", "")).await, 200);
    // An outside caller cannot move `remote.ip` with a forged header: the
    // door replaced it with the peer's address before the decision.
    assert_eq!(
        status(request("GET", "/", "X-Forwarded-For: 203.0.113.7\r\n")).await,
        200
    );
    assert_eq!(status(request("GET", "/api/v1/secret", "")).await, 403);
    assert_eq!(status(request("GET", "/api/v1/x/secret", "")).await, 200);
    assert_eq!(status(request("GET", "/a/b/.git", "")).await, 403);
    assert_eq!(status(request("DELETE", "/", "")).await, 403);
    assert_eq!(app.count(), 3, "only the allowed requests reach the app");
    proxy.shutdown().await;

    // A peer outside the allowed block is denied.
    let yaml = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: pods-only, namespace: default}
spec:
  rules:
  - from:
    - source: {ipBlocks: [\"10.0.0.0/8\"]}
";
    let app = RecordingApp::start().await;
    let proxy = sidecar_with(&app, yaml).await;
    let rsp = raw(proxy.inbound_addr().unwrap(), &get("/")).await;
    assert_eq!(rsp.status, 403, "{rsp:?}");
    assert_eq!(app.count(), 0);
    proxy.shutdown().await;
}
