//! AuthorizationPolicy at the ingress gateway, through a real control plane
//! and gateway proxy: Istio applies a policy to the gateway workload its
//! selector picks (`istio: ingressgateway`), from the root namespace
//! `istio-system` where Istio's gateway runs (mesh/control/src/compile.rs
//! `inbound_policy`). The gateway decides before it routes
//! (mesh/proxy/src/outbound.rs, authorize.rs): a denied user gets 403
//! `RBAC: access denied`, nothing reaches the service, the gateway's
//! metrics flag `RBAC`, and every spelling of a denied path is the same
//! path to the decision.
//!
//! Users have no certificate, so at a gateway a policy matches on the
//! request (`to.operation`, `when` on headers) and on addresses:
//! `ipBlocks` is the address that connected, `remoteIpBlocks` the user
//! as `x-forwarded-for` names them after the door (`trust.rs`), so a user
//! cannot write themselves into a block.
//!
//! Run with `cargo test -p mesh-proxy --test authz_gateway`.

use std::time::Duration;

use mesh_testkit::{Mesh, plain_client, retry_until_ok, wait_for_endpoints, wait_for_version};

const POLICIES: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ingress-no-admin, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - to: [{operation: {paths: [\"/admin*\"]}}]
---
# Not the gateway's: a policy of the workloads' namespace (Istio's gateway
# runs in istio-system). Were it applied, every request would be denied.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-for-the-gateway, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{}]
";

/// Only callers from `block` may use the gateway.
fn office_only(block: &str) -> String {
    format!(
        "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: office-only, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  rules:
  - from: [{{source: {{ipBlocks: [\"{block}\"], notRemoteIpBlocks: [\"203.0.113.0/24\"]}}}}]
"
    )
}

#[tokio::test]
async fn the_gateway_enforces_the_policies_that_select_it() {
    let mesh = Mesh::start().await.unwrap();
    let ui = mesh.instance("guestbook-ui", "v1").await.unwrap();
    let gateway = mesh.gateway().await.unwrap();
    wait_for_endpoints(&gateway, "guestbook-ui", 1)
        .await
        .unwrap();
    let base = format!("http://{}", gateway.gateway_addr().unwrap());
    let http = plain_client();
    let status = |path: &'static str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let rsp = http.get(url).send().await.unwrap();
            (rsp.status().as_u16(), rsp.text().await.unwrap())
        }
    };
    // Up and serving before any policy (the gateway's certificate and the
    // UI's endpoint may take a moment).
    retry_until_ok(
        "the gateway serves the UI",
        Duration::from_secs(20),
        || async {
            let (code, body) = status("/admin/users").await;
            anyhow::ensure!(code == 200, "{code} {body}");
            Ok(())
        },
    )
    .await
    .unwrap();

    // What a gateway policy often names: the callers' addresses. Every
    // user here connects from 127.0.0.1, outside 10.0.0.0/8.
    mesh.apply(&office_only("10.0.0.0/8")).await.unwrap();
    wait_for_version(&gateway, mesh.version().unwrap())
        .await
        .unwrap();
    assert_eq!(
        status("/messages").await,
        (403, "RBAC: access denied".into())
    );
    mesh.apply(&office_only("127.0.0.0/8")).await.unwrap();
    wait_for_version(&gateway, mesh.version().unwrap())
        .await
        .unwrap();
    assert_eq!(status("/messages").await.0, 200);
    // A user cannot name themselves the client from a denied block, nor
    // out of one: the door replaced `x-forwarded-for` with the peer.
    let spoofed = http
        .get(format!("{base}/messages"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), 200);
    mesh.apply(POLICIES).await.unwrap();
    wait_for_version(&gateway, mesh.version().unwrap())
        .await
        .unwrap();
    let snapshot = gateway.current_snapshot().unwrap();
    let mut names: Vec<&str> = snapshot
        .inbound
        .authorization_policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["istio-system/ingress-no-admin", "istio-system/office-only"]
    );

    let before = ui.upstream.hits();
    for denied in [
        "/admin",
        "/admin/users",
        "//admin",
        "/%61dmin",
        "/x/../admin",
    ] {
        let (code, body) = status(denied).await;
        assert_eq!(
            (code, body.as_str()),
            (403, "RBAC: access denied"),
            "{denied}"
        );
    }
    assert_eq!(
        ui.upstream.hits(),
        before,
        "a denied request reached the UI"
    );
    let (code, body) = status("/messages").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(ui.upstream.hits(), before + 1);

    // The gateway's metrics say why: code 403, flag RBAC.
    let stats = http
        .get(format!("http://{}/stats/prometheus", gateway.admin_addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let denied: Vec<&str> = stats
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"403\""))
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(
        denied[0].contains("response_flags=\"RBAC\""),
        "{}",
        denied[0]
    );
    assert!(
        denied[0].ends_with(" 6"),
        "five paths and one address denied: {}",
        denied[0]
    );
}
