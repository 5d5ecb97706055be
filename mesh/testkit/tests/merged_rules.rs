//! Several rules for one host, through a real control plane and real
//! proxies in-process: what a learner sees when they split a VirtualService
//! or a DestinationRule into several files, as Istio's best practices
//! recommend.
//!
//! - At the gateway, the VirtualServices for one host are merged (Istio:
//!   "merging of virtual services that are attached to the ingress
//!   gateways"), so `/messages` and `/hello` written in two files both route,
//!   and `/config_dump` names the VirtualService behind each route.
//! - A weighted split keeps its weights beside another file's plain route.
//! - When two files match the same requests, the older one wins.
//! - Two DestinationRules for one service: the subsets of both route.
//!
//! The order and caveats are written out in mesh-control's compile.rs.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use mesh_proxy::ProxyHandle;
use mesh_testkit::{
    Answer, Mesh, assert_binomial, plain_client, wait_for_endpoints, wait_for_version,
};

/// Two Gateway resources that select the same ingress (our gateway proxy
/// announces `istio: ingressgateway`), as two teams would each write one.
const GATEWAYS: &str = "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: messages-gateway}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: hello-gateway}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*']}]
";

/// A gateway VirtualService for `*` with one rule: `prefix` -> `route`
/// (the YAML of a `route:` list).
fn gateway_vs(name: &str, gateway: &str, prefix: &str, route: &str) -> String {
    format!(
        "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: ['*']
  gateways: [{gateway}]
  http:
  - match: [{{uri: {{prefix: {prefix}}}}}]
    route: {route}
"
    )
}

/// Wait until `proxy` runs the control plane's current version.
async fn converged(mesh: &Mesh, proxy: &ProxyHandle) -> Result<()> {
    wait_for_version(proxy, mesh.version().context("the control plane runs")?).await
}

/// GET `path` at the gateway: the status, and who answered when it is 200.
async fn through(gateway: &ProxyHandle, path: &str) -> Result<(u16, Option<Answer>)> {
    let url = format!(
        "http://{}{path}",
        gateway.gateway_addr().context("a gateway listener")?
    );
    let response = plain_client().get(url).send().await?;
    let status = response.status().as_u16();
    let answer = if status == 200 {
        Some(response.json().await?)
    } else {
        None
    };
    Ok((status, answer))
}

/// The service (`helloworld-service-v1-…` -> `helloworld-service`) and
/// version that answered a 200, failing with what came back otherwise.
async fn served_by(gateway: &ProxyHandle, path: &str) -> Result<(String, String)> {
    match through(gateway, path).await? {
        (200, Some(answer)) => {
            let service = answer
                .instance
                .rsplitn(3, '-')
                .nth(2)
                .unwrap_or_default()
                .to_string();
            ensure!(answer.path == path, "{path} arrived as {}", answer.path);
            Ok((service, answer.version))
        }
        (status, _) => anyhow::bail!("GET {path} at the gateway answered {status}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateway_virtual_services_for_one_host_both_route() -> Result<()> {
    let mesh = Mesh::start().await?;
    let _messages = mesh.instance("guestbook-service", "v1").await?;
    let _hello = mesh.instance("helloworld-service", "v1").await?;
    let gateway = mesh.gateway().await?;
    wait_for_endpoints(&gateway, "helloworld-service", 1).await?;

    // The case, applied as a learner does: file after file.
    mesh.apply(GATEWAYS).await?;
    mesh.apply(&gateway_vs(
        "a-messages",
        "messages-gateway",
        "/messages",
        "[{destination: {host: guestbook-service}}]",
    ))
    .await?;
    let applied = mesh
        .apply(&gateway_vs(
            "b-hello",
            "hello-gateway",
            "/hello",
            "[{destination: {host: helloworld-service}}]",
        ))
        .await?;
    converged(&mesh, &gateway).await?;

    // Before the merge, /hello/x answered 404 "no route of `* (a-messages)`".
    assert_eq!(
        served_by(&gateway, "/messages/x").await?.0,
        "guestbook-service"
    );
    assert_eq!(
        served_by(&gateway, "/hello/x").await?.0,
        "helloworld-service"
    );
    assert_eq!(
        through(&gateway, "/elsewhere").await?.0,
        404,
        "no catch-all was written, so nothing else routes"
    );

    // Analysis, answered with the apply, says what was merged, in order.
    let merged = applied
        .diagnostics
        .iter()
        .find(|d| d.code == "GatewayVirtualServicesMerged")
        .context("apply reports the merge")?;
    assert_eq!(merged.resource, "VirtualService default/b-hello");
    assert!(
        merged
            .message
            .contains("merges the rules of default/a-messages, default/b-hello"),
        "{}",
        merged.message
    );

    // /config_dump shows the merged list with each rule's origin.
    let dump: serde_json::Value = plain_client()
        .get(format!("http://{}/config_dump", gateway.admin_addr()))
        .send()
        .await?
        .json()
        .await?;
    let hosts = dump["snapshot"]["gateway"]["virtualHosts"]
        .as_array()
        .context("a gateway section in /config_dump")?;
    assert_eq!(hosts.len(), 1, "{hosts:#?}");
    let routes: Vec<(&str, &str)> = hosts[0]["routes"]
        .as_array()
        .context("routes")?
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default(),
                r["origin"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        vec![
            ("a-messages[0]", "default/a-messages"),
            ("b-hello[0]", "default/b-hello"),
        ]
    );
    assert_eq!(hosts[0]["name"], "* (a-messages + b-hello)");

    // `meshctl get virtualservices` reads its MERGED column here.
    let merges: BTreeMap<String, Vec<String>> = plain_client()
        .get(format!("{}/v1/merges", mesh.control_url()))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(
        merges["VirtualService default/b-hello"],
        vec!["gateway *: 2 of 2 (a-messages + b-hello)"]
    );
    Ok(())
}

const HELLO_SUBSETS: &str = "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld-service}
spec:
  host: helloworld-service
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_beside_another_virtual_services_plain_route_holds() -> Result<()> {
    let mesh = Mesh::start().await?;
    let _messages = mesh.instance("guestbook-service", "v1").await?;
    let _v1 = mesh.instance("helloworld-service", "v1").await?;
    let _v2 = mesh.instance("helloworld-service", "v2").await?;
    let gateway = mesh.gateway().await?;
    wait_for_endpoints(&gateway, "helloworld-service", 2).await?;

    mesh.apply(GATEWAYS).await?;
    mesh.apply(HELLO_SUBSETS).await?;
    mesh.apply(&gateway_vs(
        "a-messages",
        "messages-gateway",
        "/messages",
        "[{destination: {host: guestbook-service}}]",
    ))
    .await?;
    // The newer VirtualService, on the other Gateway, carries the split.
    mesh.apply(&gateway_vs(
        "b-hello-canary",
        "hello-gateway",
        "/hello",
        "[{destination: {host: helloworld-service, subset: v1}, weight: 80},
           {destination: {host: helloworld-service, subset: v2}, weight: 20}]",
    ))
    .await?;
    converged(&mesh, &gateway).await?;

    // 1,000 requests: the count that reaches v2 is binomial(1000, 0.2).
    let n = 1_000u64;
    let mut versions: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..n {
        let (service, version) = served_by(&gateway, "/hello/ray").await?;
        assert_eq!(service, "helloworld-service");
        *versions.entry(version).or_default() += 1;
    }
    tracing::info!(?versions, "the split through the merged gateway host");
    let v2 = versions.get("v2").copied().unwrap_or(0);
    assert_eq!(versions.get("v1").copied().unwrap_or(0) + v2, n);
    assert_binomial("requests to v2", v2, n, 0.2, 4.0);
    // And the older file's plain route still takes its own prefix.
    for _ in 0..20 {
        assert_eq!(
            served_by(&gateway, "/messages").await?.0,
            "guestbook-service"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_older_virtual_service_wins_overlapping_matches_at_the_gateway() -> Result<()> {
    let mesh = Mesh::start().await?;
    let _ui = mesh.instance("guestbook-ui", "v1").await?;
    let _hello = mesh.instance("helloworld-service", "v1").await?;
    let gateway = mesh.gateway().await?;
    wait_for_endpoints(&gateway, "helloworld-service", 1).await?;
    mesh.apply(GATEWAYS).await?;

    // `z-hello` is applied first, so it is older although its name sorts
    // last: Istio orders by creation time and uses the name only for ties.
    let older = gateway_vs(
        "z-hello",
        "hello-gateway",
        "/hello",
        "[{destination: {host: helloworld-service}}]",
    );
    let newer = gateway_vs(
        "a-hello-ui",
        "hello-gateway",
        "/hello",
        "[{destination: {host: guestbook-ui}}]",
    );
    mesh.apply(&older).await?;
    mesh.apply(&newer).await?;
    converged(&mesh, &gateway).await?;
    for _ in 0..10 {
        assert_eq!(
            served_by(&gateway, "/hello/x").await?.0,
            "helloworld-service"
        );
    }

    // Re-applying the older one changes its rule but not its age.
    mesh.apply(&older.replace("helloworld-service", "guestbook-ui"))
        .await?;
    mesh.apply(&older).await?;
    converged(&mesh, &gateway).await?;
    assert_eq!(
        served_by(&gateway, "/hello/x").await?.0,
        "helloworld-service"
    );

    // Deleted, the older one stops shadowing the newer one.
    mesh.delete(&older).await?;
    converged(&mesh, &gateway).await?;
    assert_eq!(served_by(&gateway, "/hello/x").await?.0, "guestbook-ui");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_destination_rules_with_different_subsets_both_route() -> Result<()> {
    let mesh = Mesh::start().await?;
    let client = mesh.client().await?;
    let _v1 = mesh.instance("helloworld-service", "v1").await?;
    let _v2 = mesh.instance("helloworld-service", "v2").await?;
    wait_for_endpoints(&client.sidecar, "helloworld-service", 2).await?;

    // One file per subset, and a route that uses both.
    let applied = mesh
        .apply(
            "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld-v1}
spec:
  host: helloworld-service
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld-v2}
spec:
  host: helloworld-service.default.svc.cluster.local
  subsets: [{name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld-service}
spec:
  hosts: [helloworld-service]
  http:
  - match: [{headers: {x-canary: {exact: 'yes'}}}]
    route: [{destination: {host: helloworld-service, subset: v2}}]
  - route: [{destination: {host: helloworld-service, subset: v1}}]
",
        )
        .await?;
    assert!(
        !applied
            .diagnostics
            .iter()
            .any(|d| d.code == "ReferencedResourceNotFound"),
        "both subsets are defined: {:#?}",
        applied.diagnostics
    );
    wait_for_endpoints(&client.sidecar, "helloworld-service|v2", 1).await?;
    wait_for_endpoints(&client.sidecar, "helloworld-service|v1", 1).await?;

    let http = client.http();
    let version = |canary: bool| {
        let http = http.clone();
        async move {
            let mut request = http.get("http://helloworld-service:8080/hello/ray");
            if canary {
                request = request.header("x-canary", "yes");
            }
            let response = request.send().await?;
            ensure!(response.status() == 200, "status {}", response.status());
            Ok(response.json::<Answer>().await?.version)
        }
    };
    for _ in 0..10 {
        assert_eq!(version(false).await?, "v1", "subset v1, from helloworld-v1");
        assert_eq!(version(true).await?, "v2", "subset v2, from helloworld-v2");
    }
    Ok(())
}
