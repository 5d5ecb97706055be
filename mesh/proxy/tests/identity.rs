//! A sidecar gets its workload certificate from the control plane's CA
//! (mesh/proxy/src/identity.rs, mesh/control/src/ca.rs) and shows it on its
//! admin port's `/certs`: its SPIFFE ID, a chain that makes a working mTLS
//! config, and when it will renew. A sidecar without a bootstrap token
//! says why it has none.
//!
//! Run with `cargo test -p mesh-proxy --test identity`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
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

#[tokio::test]
async fn a_token_file_is_read_again_for_each_certificate_request() {
    // On a cluster the kubelet rewrites the projected token before it
    // expires; the worker must send what the file holds now, not what it
    // held at start. Here the file first holds another workload's token
    // (refused), then the right one: the next retry must succeed.
    let mesh = Mesh::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("istio-token");
    let token_of = |service: &str| {
        mesh_api::identity::bootstrap_token(mesh.token(), &Identity::new("default", service))
    };
    std::fs::write(&file, token_of("ratings")).unwrap();

    // The proxy's own reading of the environment gives the file source.
    let config = mesh_proxy::config::Config::from_strings(&std::collections::HashMap::from([
        ("MESH_SERVICE".to_string(), "reviews".to_string()),
        (
            "MESH_IDENTITY_TOKEN_FILE".to_string(),
            file.display().to_string(),
        ),
    ]))
    .unwrap();
    let token = config.identity_token.expect("a token source");
    assert_eq!(
        token,
        mesh_proxy::identity::BootstrapToken::File(file.clone())
    );

    let ca = CountRefusals {
        ca: mesh_proxy::identity::HttpCa {
            http: mesh_testkit::plain_client(),
            base: mesh.control_url(),
            bootstrap_token: token,
        },
        refused: Arc::default(),
    };
    let refused = ca.refused.clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (mut current, _task) =
        mesh_proxy::identity::start(Identity::new("default", "reviews"), ca, shutdown.clone());
    // Refused while the file holds ratings' token: wait for two refusals
    // (the first request and a retry that read the file again).
    mesh_testkit::wait_until("two refused CSRs", Duration::from_secs(20), || {
        let refused = refused.load(Ordering::SeqCst);
        async move { Ok(refused >= 2) }
    })
    .await
    .unwrap();
    assert!(
        current.borrow().is_none(),
        "another workload's token was accepted"
    );

    // The kubelet rotates the file: the next CSR carries the new token.
    std::fs::write(&file, token_of("reviews")).unwrap();
    tokio::time::timeout(Duration::from_secs(20), current.wait_for(|c| c.is_some()))
        .await
        .expect("no certificate after the token file was rewritten")
        .unwrap();
    assert_eq!(
        current.borrow().as_ref().unwrap().identity,
        Identity::new("default", "reviews")
    );
    shutdown.cancel();
}

/// The real CA client, counting the answers that refused a CSR.
struct CountRefusals {
    ca: mesh_proxy::identity::HttpCa,
    refused: Arc<AtomicU32>,
}

impl mesh_proxy::identity::CaClient for CountRefusals {
    async fn sign(
        &self,
        request: mesh_api::identity::CertificateRequest,
    ) -> Result<mesh_api::identity::CertificateResponse, mesh_proxy::identity::IdentityError> {
        let answer = self.ca.sign(request).await;
        if let Err(mesh_proxy::identity::IdentityError::Refused { .. }) = &answer {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        answer
    }
}

#[test]
fn a_token_value_and_a_token_file_together_are_refused() {
    let error = mesh_proxy::config::Config::from_strings(&std::collections::HashMap::from([
        ("MESH_SERVICE".to_string(), "reviews".to_string()),
        ("MESH_IDENTITY_TOKEN".to_string(), "abc123".to_string()),
        (
            "MESH_IDENTITY_TOKEN_FILE".to_string(),
            "/var/run/secrets/tokens/istio-token".to_string(),
        ),
    ]))
    .unwrap_err();
    assert_eq!(error.var, "MESH_IDENTITY_TOKEN_FILE");
    assert!(
        error.reason.contains("keep one of the two"),
        "{}",
        error.reason
    );
}

#[tokio::test]
async fn the_trust_bundle_comes_with_the_snapshot() {
    let mesh = Mesh::start().await.unwrap();
    let reviews = mesh.instance("reviews", "v1").await.unwrap();
    let sidecar = &reviews.sidecar;
    let bundle = mesh_testkit::wait_for(
        "a snapshot with a trust bundle",
        Duration::from_secs(20),
        || async {
            Ok(sidecar
                .current_snapshot()
                .map(|s| s.trust_bundle.clone())
                .filter(|b| !b.is_empty()))
        },
    )
    .await
    .unwrap();
    // The control plane's one root, the same the CA's answer carries.
    let certificate = mesh_testkit::wait_for("a certificate", Duration::from_secs(20), || async {
        Ok(sidecar.identity().borrow().clone())
    })
    .await
    .unwrap();
    assert_eq!(bundle, certificate.trust_bundle_pem);
    assert_eq!(bundle.len(), 1);
    // And it is the one mTLS trusts.
    assert_eq!(sidecar.trust_bundle(), Some(bundle));
}
