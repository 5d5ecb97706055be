//! The sidecar's startup probe, `/healthz/ready` on the admin port: the proxy
//! alone, never its app.
//!
//! Kubernetes starts a pod's app containers only once its native sidecar's
//! startup probe passes. If that probe were `/ready`, which also waits for
//! the app to accept connections, the pod would never start: the proxy waits
//! for the app, the app waits for the proxy. Istio's pilot-agent answers its
//! startup probe (`/healthz/ready` on 15021) from Envoy's own state only, and
//! so does ours: ready once the proxy holds a snapshot, with its listeners
//! already bound.

mod support;

use std::time::Duration;

use mesh_proxy::{Config, Proxy};
use support::*;

#[tokio::test]
async fn a_proxy_without_its_app_passes_the_startup_probe_but_not_readiness() {
    // The app's port refuses connections: the app has not started yet, as in
    // a pod whose app containers wait for the sidecar.
    let app_addr = refused_addr().await;
    let proxy = Proxy::start(Config::local_sidecar("guestbook", app_addr))
        .await
        .unwrap();
    let admin = proxy.admin_addr();
    let client = direct_client();
    let startup = format!("http://{admin}/healthz/ready");
    let ready = format!("http://{admin}/ready");

    // No config yet: neither passes, and both say why.
    let before = get(&client, &startup).await;
    assert_eq!(before.status, 503, "{}", before.body);
    assert!(before.body.contains("no config"), "{}", before.body);
    assert_eq!(get(&client, &ready).await.status, 503);

    // With its first snapshot the proxy is ready for traffic, though its app
    // is not: the startup probe passes, readiness still fails and names the
    // app's address.
    proxy.apply_snapshot(snapshot(1, vec![])).unwrap();
    let started = get(&client, &startup).await;
    assert_eq!(started.status, 200, "{}", started.body);
    let not_ready = get(&client, &ready).await;
    assert_eq!(not_ready.status, 503, "{}", not_ready.body);
    assert!(
        not_ready.body.contains("MESH_APP_ADDR"),
        "{}",
        not_ready.body
    );

    // "Listeners up" is true, not only claimed: both traffic ports accept a
    // connection at the moment the probe passes.
    for (name, addr) in [
        ("outbound", proxy.outbound_addr().unwrap()),
        ("inbound", proxy.inbound_addr().unwrap()),
    ] {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_ok(),
            "the {name} listener at {addr} refused after /healthz/ready said 200"
        );
    }

    // Now the app starts on its port: readiness follows.
    let app = tokio::net::TcpListener::bind(app_addr).await.unwrap();
    wait_until(
        "/ready to pass once the app listens",
        Duration::from_secs(5),
        async || Ok(get(&client, &ready).await.status == 200),
    )
    .await
    .unwrap();
    assert_eq!(get(&client, &startup).await.status, 200);
    drop(app);
    proxy.shutdown().await;
}
