//! Certificate rotation never drops a connection or fails a request
//! (mesh/proxy/src/identity.rs renews, tls.rs's `MeshTls` makes new
//! configs for new handshakes, open connections keep their session).
//!
//! The control plane issues certificates that live 2 s (`MESH_CERT_TTL`'s
//! shortest), so each sidecar renews about every second; a steady load
//! runs through two sidecars over mutual TLS for a minute, on connections
//! that close after 10 requests (new handshakes throughout). Not one request
//! may fail, and both sidecars must have rotated many times meanwhile.
//! The suite's one slow test (a minute).
//!
//! Run with `cargo test -p mesh-proxy --test mtls_rotation`.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use mesh_testkit::{Load, Mesh, retry_until_ok};

const RUN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotated_every_second_for_a_minute_fail_no_request() {
    let mesh = Mesh::start_with(|settings| settings.cert_ttl = Duration::from_secs(2))
        .await
        .unwrap();
    let hw = mesh.instance("helloworld-service", "v1").await.unwrap();
    let client = mesh.client().await.unwrap();
    let url = "http://helloworld-service:8080/hello";
    // Wait until the client's sidecar talks mTLS to helloworld's.
    retry_until_ok("mTLS between the sidecars", Duration::from_secs(20), || {
        let http = client.http();
        async move {
            let answer: serde_json::Value = http.get(url).send().await?.json().await?;
            anyhow::ensure!(
                answer["headers"].get("x-forwarded-client-cert").is_some(),
                "not mTLS yet: {answer}"
            );
            Ok(())
        }
    })
    .await
    .unwrap();

    // New connections all the time (a connection closes after 10
    // requests), so handshakes keep happening across every rotation.
    mesh.apply(
        "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld-service}
spec:
  host: helloworld-service
  trafficPolicy:
    connectionPool: {http: {maxRequestsPerConnection: 10}}
",
    )
    .await
    .unwrap();
    let version = mesh.version().expect("the control plane runs");
    mesh_testkit::wait_for_version(&client.sidecar, version)
        .await
        .unwrap();
    let load = Load::start(client.http(), url, 4);
    // Watch both sidecars' certificates change while the load runs.
    let (mut client_certs, mut server_certs) = (BTreeSet::new(), BTreeSet::new());
    let seen = |set: &mut BTreeSet<SystemTime>, current: &mesh_proxy::identity::Current| {
        if let Some(certified) = current.borrow().as_ref() {
            set.insert(certified.not_before);
        }
    };
    let started = tokio::time::Instant::now();
    while started.elapsed() < RUN {
        seen(&mut client_certs, &client.sidecar.identity());
        seen(&mut server_certs, &hw.sidecar.identity());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = load.stop().await.unwrap();
    tracing::info!(
        sent = report.sent,
        client_certificates = client_certs.len(),
        server_certificates = server_certs.len(),
        "rotation under load"
    );
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed during rotation: {:?}",
        report.failures.len(),
        report.sent,
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(
        report.sent >= 1_000,
        "too little load to mean anything: {}",
        report.sent
    );
    // About one renewal a second each; at least half of that seen.
    for (who, certs) in [("client", &client_certs), ("server", &server_certs)] {
        assert!(
            certs.len() >= 30,
            "the {who} sidecar held only {} certificates in {RUN:?}",
            certs.len()
        );
    }
    // And the traffic was mutual TLS to the end.
    let last = hw.upstream.last_request().unwrap();
    assert!(last.headers.contains_key("x-forwarded-client-cert"));
}
