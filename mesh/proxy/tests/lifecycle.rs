//! The proxy's life at its edges: a shutdown drains the requests in flight
//! (in process and as the binary on SIGTERM), and `MESH_CONCURRENCY=1` runs
//! the binary on one event loop that still serves requests concurrently.

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_proxy::{Config, Proxy};
use support::*;

/// An upstream that takes `delay` to answer with its name.
async fn slow(name: &'static str, delay: Duration) -> Upstream {
    Upstream::with_delay(name, Arc::new(move |_, _| (200, name.to_string())), delay).await
}

#[tokio::test]
async fn shutdown_waits_for_the_request_in_flight_and_refuses_new_ones() {
    let upstream = slow("hw-1", Duration::from_millis(800)).await;
    let config = Config::local_sidecar("client", refused_addr().await);
    let proxy = Proxy::start(config).await.unwrap();
    proxy
        .apply_snapshot(snapshot(1, vec![service("hw", vec![upstream.endpoint()])]))
        .unwrap();
    let outbound = proxy.outbound_addr().unwrap();
    let client = client_via(outbound);

    let in_flight = tokio::spawn(async move { get(&client, "http://hw:8080/").await });
    wait_until(
        "the request to reach the app",
        Duration::from_secs(10),
        async || Ok(upstream.hits() == 1),
    )
    .await
    .unwrap();

    // Shut down while the app is still answering (it has about 800 ms to
    // go): shutdown returns only once the response went out, so it takes
    // most of that, and the response is whole. Without the drain it would
    // return in a few milliseconds.
    let shutting_down = Instant::now();
    proxy.shutdown().await;
    let took = shutting_down.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "shutdown returned after {took:?}, before the request in flight was answered"
    );
    let reply = in_flight.await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "hw-1"));
    // The listener is closed: a new connection is refused.
    assert!(
        tokio::net::TcpStream::connect(outbound).await.is_err(),
        "the outbound port refuses after shutdown"
    );
}

/// The binary on a static snapshot routing `hw` to `upstream`, with
/// `MESH_CONCURRENCY=concurrency`, once it is ready.
async fn start_binary(upstream: &Upstream, concurrency: &str) -> ProxyBinary {
    let snapshot = snapshot(1, vec![service("hw", vec![upstream.endpoint()])]);
    let app = upstream.addr.to_string();
    ProxyBinary::start(
        &snapshot,
        &[
            ("MESH_SERVICE", "client"),
            ("MESH_APP_ADDR", &app),
            ("MESH_CONCURRENCY", concurrency),
        ],
        Stdio::null(),
    )
    .await
}

/// The runtime's worker threads of process `pid`: tokio names them
/// `tokio-rt-worker` (older releases `tokio-runtime-worker`, which Linux
/// cuts to 15 characters).
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("Linux /proc: this test reads the proxy's threads from it")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| matches!(name.trim(), "tokio-rt-worker" | "tokio-runtime-w"))
        .count()
}

#[tokio::test]
async fn one_event_loop_serves_concurrent_requests_and_drains_on_sigterm() {
    let delay = Duration::from_millis(500);
    let upstream = slow("hw-1", delay).await;

    // The default (Istio's 2) runs two workers; MESH_CONCURRENCY=1 none: the
    // whole proxy is one event loop on the main thread.
    let two = start_binary(&upstream, "2").await;
    assert_eq!(worker_threads(two.child.id().unwrap()), 2);
    drop(two);
    let mut one = start_binary(&upstream, "1").await;
    assert_eq!(worker_threads(one.child.id().unwrap()), 0);
    let outbound = one.outbound;

    // Ten requests at once each wait 500 ms at the app: one loop serves them
    // side by side, so together they take about 500 ms, far below the 5 s
    // they would take one after another.
    let client = client_via(outbound);
    let started = Instant::now();
    let replies = futures::future::join_all((0..10).map(|_| get(&client, "http://hw:8080/"))).await;
    let took = started.elapsed();
    assert!(replies.iter().all(|r| r.status == 200 && r.body == "hw-1"));
    assert!(
        took < delay * 5,
        "ten requests took {took:?}: served one after another?"
    );

    // SIGTERM with a request in flight: it is answered, then the binary exits 0.
    let before = upstream.hits();
    let in_flight = tokio::spawn(async move { get(&client, "http://hw:8080/").await });
    wait_until(
        "the request to reach the app",
        Duration::from_secs(10),
        async || Ok(upstream.hits() == before + 1),
    )
    .await
    .unwrap();
    one.sigterm();
    let reply = in_flight.await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "hw-1"));
    let status = one.exit_status().await;
    assert!(status.success(), "{status}");
}
