//! Drain on SIGTERM, as Istio's sidecars do (`proxy.rs`, `listener.rs`):
//! readiness turns 503 at once, the listeners keep serving for
//! `MESH_DRAIN_DURATION` with every response saying `Connection: close`,
//! then stop accepting; requests in flight finish, and the ones the drain
//! timeout cuts are answered 503 with `Connection: close`.
//!
//! Each test runs the real binary and sends it SIGTERM, as a kubelet does.

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// An app that answers with its name after `delay`.
async fn slow(delay: Duration) -> Upstream {
    Upstream::with_delay("hw-1", Arc::new(|_, _| (200, "hw-1".to_string())), delay).await
}

async fn start(upstream: &Upstream, env: &[(&str, &str)]) -> ProxyBinary {
    let snapshot = snapshot(1, vec![service("hw", vec![upstream.endpoint()])]);
    let app = upstream.addr.to_string();
    let mut all = vec![("MESH_SERVICE", "client"), ("MESH_APP_ADDR", app.as_str())];
    all.extend_from_slice(env);
    ProxyBinary::start(&snapshot, &all, Stdio::null()).await
}

async fn status_of(url: &str) -> Option<u16> {
    let rsp = direct_client().get(url).send().await.ok()?;
    Some(rsp.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_requests_in_flight_at_sigterm_all_complete_within_a_5s_drain() {
    const IN_FLIGHT: usize = 50;
    let upstream = slow(Duration::from_secs(3)).await;
    let mut proxy = start(&upstream, &[("MESH_DRAIN_DURATION", "5s")]).await;

    // Fifty requests, each on its own connection, each 3 s at the app.
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let client = client_via(proxy.outbound);
            tokio::spawn(async move {
                let rsp = client.get("http://hw:8080/slow").send().await?;
                let status = rsp.status().as_u16();
                let body = rsp.text().await?;
                Ok::<_, reqwest::Error>((status, body))
            })
        })
        .collect();
    wait_until(
        "all fifty requests to reach the app",
        Duration::from_secs(10),
        async || Ok(upstream.hits() == IN_FLIGHT),
    )
    .await
    .unwrap();

    let terminated = Instant::now();
    proxy.sigterm();

    // At once: not ready, so Kubernetes takes the pod out of rotation...
    let ready = format!("http://{}/ready", proxy.admin);
    wait_until(
        "/ready to answer 503 after SIGTERM",
        Duration::from_secs(2),
        async || Ok(status_of(&ready).await == Some(503)),
    )
    .await
    .unwrap();
    // ...while a client that has not noticed yet is still served, and told
    // to close its connection.
    let late = client_via(proxy.outbound)
        .get("http://hw:8080/late")
        .send()
        .await
        .expect("a new connection during the drain duration is served");
    assert_eq!(late.status(), 200);
    assert_eq!(
        late.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "a response during the drain asks the client to close"
    );
    assert!(
        terminated.elapsed() < Duration::from_secs(5),
        "the late request was sent within the drain duration"
    );

    let mut completed = 0;
    for request in requests {
        let (status, body) = request.await.unwrap().expect("no request was cut");
        assert_eq!((status, body.as_str()), (200, "hw-1"));
        completed += 1;
    }
    assert_eq!(completed, IN_FLIGHT, "every request in flight completed");
    let status = proxy.exit_status().await;
    assert!(status.success(), "{status}");
    assert!(
        terminated.elapsed() >= Duration::from_secs(5),
        "the proxy exited after {:?}, before its drain duration",
        terminated.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(proxy.outbound)
            .await
            .is_err(),
        "after the drain the port refuses"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_by_the_drain_timeout_is_answered_503_with_connection_close() {
    // The app would take a minute; the drain allows 0.5 s + 1 s.
    let upstream = slow(Duration::from_secs(60)).await;
    let mut proxy = start(
        &upstream,
        &[
            ("MESH_DRAIN_DURATION", "500ms"),
            ("MESH_DRAIN_TIMEOUT", "1s"),
        ],
    )
    .await;
    let client = client_via(proxy.outbound);
    let request = tokio::spawn(async move { client.get("http://hw:8080/forever").send().await });
    wait_until(
        "the request to reach the app",
        Duration::from_secs(10),
        async || Ok(upstream.hits() == 1),
    )
    .await
    .unwrap();

    proxy.sigterm();
    let rsp = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("answered once the drain timeout passed")
        .unwrap()
        .expect("a status, not a reset connection");
    assert_eq!(rsp.status(), 503);
    assert_eq!(
        rsp.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let body = rsp.text().await.unwrap();
    assert!(body.contains("MESH_DRAIN_TIMEOUT"), "{body}");
    assert!(proxy.exit_status().await.success());
}
