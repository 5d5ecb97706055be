//! Discovery and load balancing through a real control plane, in-process:
//! sidecars announce their workloads, every other sidecar learns the
//! endpoints, round-robin spreads requests, and an instance that dies
//! leaves the rotation without failing requests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use mesh_testkit::{Answer, Load, Mesh, wait_for_endpoints};

const HELLO: &str = "http://helloworld-service:8080/hello/ray";

/// Send `n` requests through `client` and count answers per instance.
async fn spread(client: &reqwest::Client, n: usize) -> Result<BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let response = client.get(HELLO).send().await?;
        anyhow::ensure!(response.status() == 200, "status {}", response.status());
        let answer: Answer = response.json().await?;
        *seen.entry(answer.instance).or_insert(0) += 1;
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaled_instances_all_take_traffic_and_a_dead_one_leaves() -> Result<()> {
    let mesh = Mesh::start().await?;
    let client = mesh.client().await?;
    let first = mesh.instance("helloworld-service", "v1").await?;
    wait_for_endpoints(&client.sidecar, "helloworld-service", 1).await?;
    let http = client.http();
    assert_eq!(spread(&http, 3).await?.len(), 1);

    // "meshctl scale helloworld-service=3": two more pods announce themselves.
    let started = Instant::now();
    let second = mesh.instance("helloworld-service", "v1").await?;
    let third = mesh.instance("helloworld-service", "v1").await?;
    wait_for_endpoints(&client.sidecar, "helloworld-service", 3).await?;
    let converged = started.elapsed();
    tracing::info!(?converged, "the client sidecar sees three endpoints");
    assert!(
        converged < Duration::from_secs(1),
        "discovery took {converged:?}"
    );

    // Round-robin: 30 requests reach every instance, 10 each.
    let seen = spread(&http, 30).await?;
    assert_eq!(seen.len(), 3, "{seen:?}");
    for name in [&first.name, &second.name, &third.name] {
        assert_eq!(seen.get(name.as_str()), Some(&10), "{seen:?}");
    }

    // Kill one pod without a goodbye while two clients keep sending: app and
    // sidecar stop answering, and the instance stays in every snapshot until
    // its lease runs out. Nothing in this test retries: each failure the
    // mesh lets through is counted. A request that meets the dead instance
    // (connection refused) must be retried onto a live one by the default
    // retry policy (connect-failure). The one thing that policy does not
    // cover, in Istio too (its default `retryOn` has no `reset`), is a
    // request already on the wire to the instance as it goes: that fails
    // with "connection termination". Each client has one request in flight
    // at a time, so at most one such failure per client.
    const CLIENTS: usize = 2;
    let load = Load::start(http.clone(), HELLO, CLIENTS);
    load.send_at_least(20).await?;
    let before_kill = load.report();
    third.upstream.stop();
    drop(third.sidecar);
    wait_for_endpoints(&client.sidecar, "helloworld-service", 2).await?;
    let at_removal = load.sent();
    load.send_at_least(20).await?;
    let report = load.stop().await?;
    tracing::info!(?report, "requests around the kill");
    assert!(
        before_kill.answered_by.contains_key(&third.name),
        "the killed instance took traffic before the kill: {before_kill:?}"
    );
    assert!(
        at_removal > before_kill.sent,
        "the load ran while the dead instance was still in the snapshot"
    );
    let (in_flight, others): (Vec<&String>, Vec<&String>) = report
        .failures
        .iter()
        .partition(|f| f.ends_with("reset reason: connection termination"));
    assert!(
        others.is_empty(),
        "{} of {} requests failed around the kill: {others:#?}",
        others.len(),
        report.sent
    );
    assert!(
        in_flight.len() <= CLIENTS,
        "more requests cut in flight than clients had in flight: {in_flight:#?}"
    );

    // Once it left, only the two live instances answer.
    let seen = spread(&http, 20).await?;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(!seen.contains_key(&third.name), "{seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_keeps_serving_without_its_control_plane_and_resyncs() -> Result<()> {
    let mut mesh = Mesh::start().await?;
    let client = mesh.client().await?;
    let _v1 = mesh.instance("helloworld-service", "v1").await?;
    wait_for_endpoints(&client.sidecar, "helloworld-service", 1).await?;
    let http = client.http();

    mesh.stop_control().await?;
    // The sidecars keep their last good snapshot.
    for _ in 0..20 {
        let response = http.get(HELLO).send().await?;
        assert_eq!(response.status(), 200);
    }

    // Back again, from the same state dir: nothing registered was lost, and
    // a pod started now is seen by the sidecars that were already running.
    mesh.restart_control().await?;
    let names: Vec<String> = mesh.services().await?.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"helloworld-service".to_string()),
        "{names:?}"
    );
    let _v2 = mesh.instance("helloworld-service", "v2").await?;
    wait_for_endpoints(&client.sidecar, "helloworld-service", 2).await?;
    let seen = spread(&http, 10).await?;
    assert_eq!(seen.len(), 2, "{seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_service_gets_a_503_that_names_it() -> Result<()> {
    let mesh = Mesh::start().await?;
    let client = mesh.client().await?;
    let _hw = mesh.instance("helloworld-service", "v1").await?;
    wait_for_endpoints(&client.sidecar, "helloworld-service", 1).await?;
    let response = client
        .http()
        .get("http://no-such-service:8080/")
        .send()
        .await?;
    assert_eq!(response.status(), 503);
    let body = response.text().await?;
    assert!(body.contains("no-such-service"), "{body}");
    Ok(())
}
