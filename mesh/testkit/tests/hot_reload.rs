//! Config changes under load: a rule applied through the control plane
//! reaches every proxy within a second, and switching rules while requests
//! flow fails none of them (the proxy swaps whole snapshots atomically and a
//! request in flight finishes on the snapshot it started with).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use mesh_testkit::{Mesh, plain_client, wait_for_endpoints, wait_for_version};

const SUBSETS: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: guestbook-gateway
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: guestbook-ui
spec:
  host: guestbook-ui
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
"#;

/// A VirtualService splitting guestbook-ui's `v1`/`v2` by these weights: at
/// the gateway (`hosts: ["*"]`), or inside the mesh (`hosts: [guestbook-ui]`).
fn split(at_gateway: bool, v1: u32, v2: u32) -> String {
    let bind = if at_gateway {
        r#"hosts: ["*"]
  gateways: [guestbook-gateway]"#
    } else {
        "hosts: [guestbook-ui]"
    };
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: guestbook-ui
spec:
  {bind}
  http:
  - route:
    - destination: {{host: guestbook-ui, subset: v1}}
      weight: {v1}
    - destination: {{host: guestbook-ui, subset: v2}}
      weight: {v2}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_changes_under_steady_load_fail_no_request() -> Result<()> {
    let mesh = Mesh::start().await?;
    let _v1 = mesh.instance("guestbook-ui", "v1").await?;
    let _v2 = mesh.instance("guestbook-ui", "v2").await?;
    let gateway = mesh.gateway().await?;
    wait_for_endpoints(&gateway, "guestbook-ui", 2).await?;
    // Gateway, subsets and a first route in one request: applied apart,
    // the gateway would serve nothing (404) between the Gateway and its
    // VirtualService, which is the config asking for failures.
    mesh.apply(&format!("{SUBSETS}\n---\n{}", split(true, 100, 0)))
        .await?;
    wait_for_version(&gateway, mesh.version().expect("the control plane runs")).await?;
    let url = format!(
        "http://{}/",
        gateway.gateway_addr().expect("a gateway listener")
    );

    // Steady load: four clients in a loop through the gateway.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, sent, failed, url) = (stop.clone(), sent.clone(), failed.clone(), url.clone());
        load.push(tokio::spawn(async move {
            let http = plain_client();
            while !stop.load(Ordering::Relaxed) {
                let status = http.get(&url).send().await.map(|r| r.status());
                sent.fetch_add(1, Ordering::Relaxed);
                if !matches!(status, Ok(s) if s == 200) {
                    tracing::warn!(?status, "a request failed during a change");
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // Fifty changes, each waited for at the gateway, cycling through
    // all-v1, 50/50, all-v2.
    let weights = [(100, 0), (50, 50), (0, 100)];
    for i in 0..50 {
        let (v1, v2) = weights[i % weights.len()];
        mesh.apply(&split(true, v1, v2)).await?;
        let version = mesh.version().expect("the control plane runs");
        wait_for_version(&gateway, version).await?;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await?;
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    tracing::info!(sent, failed, "requests during 50 config changes");
    assert!(sent >= 100, "the load barely ran: {sent} requests");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the changes"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_every_proxy_within_a_second() -> Result<()> {
    let mesh = Mesh::start().await?;
    let mut pods = Vec::new();
    for i in 0..6 {
        pods.push(
            mesh.instance("guestbook-ui", if i % 2 == 0 { "v1" } else { "v2" })
                .await?,
        );
    }
    for pod in &pods {
        wait_for_endpoints(&pod.sidecar, "guestbook-ui", 6).await?;
    }
    mesh.apply(SUBSETS).await?;
    let applied = Instant::now();
    mesh.apply(&split(false, 80, 20)).await?;
    let version = mesh.version().expect("the control plane runs");
    for pod in &pods {
        wait_for_version(&pod.sidecar, version).await?;
    }
    let took = applied.elapsed();
    println!("a change reached {} proxies in {took:?}", pods.len());
    // The issue's bound; the benchmark measures how far below it we are.
    assert!(took < Duration::from_secs(1), "propagation took {took:?}");
    Ok(())
}
