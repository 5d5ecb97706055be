//! A sidecar gets its workload certificate from the control plane's CA
//! (mesh/proxy/src/identity.rs, mesh/control/src/ca.rs) and shows it on its
//! admin port's `/certs`: its SPIFFE ID, a chain that makes a working mTLS
//! config, and when it will renew. A sidecar without a bootstrap token
//! says why it has none.
//!
//! Run with `cargo test -p mesh-proxy --test identity`.

use std::time::Duration;

use mesh_api::identity::{Identity, WorkloadCerts};
use mesh_testkit::Mesh;

async fn certs(admin: std::net::SocketAddr) -> WorkloadCerts {
    mesh_testkit::plain_client()
        .get(format!("http://{admin}/certs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_sidecar_keeps_a_certificate_for_its_own_identity() {
    let mesh = Mesh::start().await.unwrap();
    let reviews = mesh.instance("reviews", "v1").await.unwrap();
    let admin = reviews.sidecar.addrs().admin;

    // The worker asks at start; poll until the answer is in.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let certs = loop {
        let certs = certs(admin).await;
        if certs.identity.is_some() {
            break certs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate: {:?}",
            certs.reason
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(certs.identity, Some(Identity::new("default", "reviews")));
    assert_eq!(certs.cert_chain.len(), 2, "leaf and root");
    assert_eq!(certs.cert_chain[1], certs.trust_bundle[0]);
    // Issued for 24 hours (Istio's default), renewed at about half of it.
    let life = certs.not_after_ms - certs.not_before_ms;
    assert_eq!(life, (24 * 3600 + 60) * 1000);
    let until_renewal = certs.renew_at_ms.saturating_sub(certs.not_before_ms);
    assert!(
        until_renewal > life / 3 && until_renewal < life * 2 / 3,
        "renews at half-life: {until_renewal} of {life} ms"
    );
    // And the chain makes the mTLS configs the next round will use.
    let current = reviews.sidecar.identity().borrow().clone().unwrap();
    mesh_proxy::tls::server_config(&current, "cluster.local").unwrap();
    mesh_proxy::tls::client_config(&current, Identity::new("default", "ratings")).unwrap();
}

#[tokio::test]
async fn a_sidecar_without_a_bootstrap_token_says_why_it_has_no_certificate() {
    // A static-snapshot proxy: no control plane, no token.
    let config = mesh_proxy::config::Config::from_strings(&std::collections::HashMap::from([
        ("MESH_SERVICE".to_string(), "reviews".to_string()),
        ("MESH_OUTBOUND_ADDR".to_string(), "127.0.0.1:0".to_string()),
        ("MESH_INBOUND_ADDR".to_string(), "127.0.0.1:0".to_string()),
        ("MESH_ADMIN_ADDR".to_string(), "127.0.0.1:0".to_string()),
    ]))
    .unwrap();
    let proxy = mesh_proxy::proxy::Proxy::start(config).await.unwrap();
    let certs = certs(proxy.addrs().admin).await;
    assert_eq!(certs.identity, None);
    assert!(
        certs.reason.unwrap().contains("MESH_IDENTITY_TOKEN"),
        "the reason names what is missing"
    );
}
