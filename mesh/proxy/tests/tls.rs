//! Mutual TLS handshakes between two sidecars' configs (mesh/proxy/src/tls.rs),
//! in memory over a `tokio::io::duplex` pipe: a good pair sees each other's
//! SPIFFE identity; a wrong trust domain, an unknown CA with the same
//! subject, an expired or not-yet-valid certificate and a server other than
//! the one expected are each refused. The tests assert that the handshake
//! failed, not which alert was sent.
//!
//! Run with `cargo test -p mesh-proxy --test tls`.

mod mtls_support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_api::identity::Identity;
use mesh_proxy::identity::CertifiedKey;
use mesh_proxy::tls;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const HOUR: Duration = Duration::from_secs(3600);

/// A root CA; every one made here has the same subject, so "unknown CA"
/// cannot be told apart by name.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "cluster.local");
    name.push(DnType::CommonName, "micromesh root CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

/// A workload certificate from `issuer` for `uri`, valid between the two
/// times, trusting `trusted`'s root.
fn workload(
    issuer: &Ca,
    trusted: &Ca,
    uri: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> CertifiedKey {
    let signer = Issuer::from_params(&issuer.params, &issuer.key);
    mtls_support::workload_leaf(
        &signer,
        &issuer.pem,
        &trusted.pem,
        uri,
        not_before,
        not_after,
    )
}

fn valid(issuer: &Ca, trusted: &Ca, uri: &str) -> CertifiedKey {
    let now = SystemTime::now();
    workload(issuer, trusted, uri, now - HOUR, now + HOUR)
}

const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";
const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/default/sa/productpage";

/// One handshake: the identity each side sees of the other, or why it failed.
async fn handshake(
    server: &CertifiedKey,
    client: &CertifiedKey,
    expected: &str,
) -> Result<(Option<Identity>, Option<Identity>), String> {
    let acceptor = TlsAcceptor::from(Arc::new(
        tls::server_config(server, "cluster.local").map_err(|e| e.to_string())?,
    ));
    let connector = TlsConnector::from(Arc::new(
        tls::client_config(client, expected.parse().unwrap()).map_err(|e| e.to_string())?,
    ));
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("mesh.invalid").unwrap();
    let both = async {
        tokio::join!(
            acceptor.accept(server_io),
            connector.connect(name, client_io)
        )
    };
    // A guard against a hung handshake, not a speed check.
    let (accepted, connected) = tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .map_err(|_| "the handshake hung".to_string())?;
    // In TLS 1.3 the client finishes before the server has checked the
    // client's certificate: either side failing is a failed handshake.
    let accepted = accepted.map_err(|e| format!("server: {e}"))?;
    let connected = connected.map_err(|e| format!("client: {e}"))?;
    let seen_by_server = tls::peer_identity(accepted.get_ref().1.peer_certificates());
    let seen_by_client = tls::peer_identity(connected.get_ref().1.peer_certificates());
    Ok((seen_by_server, seen_by_client))
}

#[tokio::test]
async fn a_good_pair_sees_each_others_identity() {
    let root = ca();
    let server = valid(&root, &root, REVIEWS);
    let client = valid(&root, &root, PRODUCTPAGE);
    let (seen_by_server, seen_by_client) = handshake(&server, &client, REVIEWS).await.unwrap();
    assert_eq!(seen_by_server, Some(PRODUCTPAGE.parse().unwrap()));
    assert_eq!(seen_by_client, Some(REVIEWS.parse().unwrap()));
}

#[tokio::test]
async fn a_server_other_than_the_one_expected_is_refused() {
    let root = ca();
    let ratings = valid(&root, &root, "spiffe://cluster.local/ns/default/sa/ratings");
    let client = valid(&root, &root, PRODUCTPAGE);
    let result = handshake(&ratings, &client, REVIEWS).await;
    assert!(result.is_err(), "expected reviews, got ratings: {result:?}");
}

#[tokio::test]
async fn a_client_of_another_trust_domain_is_refused() {
    let root = ca();
    let server = valid(&root, &root, REVIEWS);
    let client = valid(
        &root,
        &root,
        "spiffe://other.example/ns/default/sa/productpage",
    );
    let result = handshake(&server, &client, REVIEWS).await;
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn an_unknown_ca_with_the_same_subject_is_refused_both_ways() {
    let root = ca();
    let impostor = ca();
    // A server certified by the impostor, toward a client that trusts the mesh root.
    let server = valid(&impostor, &root, REVIEWS);
    let client = valid(&root, &root, PRODUCTPAGE);
    let result = handshake(&server, &client, REVIEWS).await;
    assert!(result.is_err(), "impostor server: {result:?}");
    // A client certified by the impostor, toward a server that trusts the mesh root.
    let server = valid(&root, &root, REVIEWS);
    let client = valid(&impostor, &root, PRODUCTPAGE);
    let result = handshake(&server, &client, REVIEWS).await;
    assert!(result.is_err(), "impostor client: {result:?}");
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    let root = ca();
    let now = SystemTime::now();
    let expired = workload(&root, &root, REVIEWS, now - 3 * HOUR, now - HOUR);
    let early = workload(&root, &root, REVIEWS, now + HOUR, now + 3 * HOUR);
    let client = valid(&root, &root, PRODUCTPAGE);
    for (what, server) in [("expired", &expired), ("not yet valid", &early)] {
        let result = handshake(server, &client, REVIEWS).await;
        assert!(result.is_err(), "{what} server: {result:?}");
    }
    // The same for a client's certificate.
    let server = valid(&root, &root, REVIEWS);
    let expired_client = workload(&root, &root, PRODUCTPAGE, now - 3 * HOUR, now - HOUR);
    let early_client = workload(&root, &root, PRODUCTPAGE, now + HOUR, now + 3 * HOUR);
    for (what, client) in [
        ("expired", &expired_client),
        ("not yet valid", &early_client),
    ] {
        let result = handshake(&server, client, REVIEWS).await;
        assert!(result.is_err(), "{what} client: {result:?}");
    }
}

// === the snapshot's trust bundle (MeshTls) ===

/// A handshake between two proxies' `MeshTls` (what the listeners and
/// pools use), each holding `certified`, the client trusting what its
/// `MeshTls` trusts now.
async fn mesh_handshake(
    server: &tls::MeshTls,
    client: &tls::MeshTls,
    expected: &str,
) -> Result<(), String> {
    let server = server.server().map_err(|e| e.to_string())?.unwrap();
    let client = client
        .client(&expected.parse().unwrap(), tls::Alpn::Http1)
        .map_err(|e| e.to_string())?
        .unwrap();
    let (server_io, client_io) = tokio::io::duplex(64 * 1024);
    let both = async {
        tokio::join!(
            TlsAcceptor::from(server).accept(server_io),
            tls::connect(client, client_io)
        )
    };
    let (accepted, connected) = tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .map_err(|_| "the handshake hung".to_string())?;
    accepted.map_err(|e| format!("server: {e}"))?;
    connected.map_err(|e| format!("client: {e}"))?;
    Ok(())
}

fn mesh_tls(certified: CertifiedKey) -> tls::MeshTls {
    let (_tx, current) = tokio::sync::watch::channel(Some(Arc::new(certified)));
    // The receiver keeps the last value after the sender is gone.
    tls::MeshTls::new(current, "cluster.local")
}

#[tokio::test]
async fn the_snapshots_trust_bundle_decides_which_roots_are_trusted() {
    // A rotation in the middle: reviews already holds a leaf of the new
    // root; productpage's certificate came with the old root only.
    let old = ca();
    let new = ca();
    let reviews = mesh_tls(valid(&new, &new, REVIEWS));
    let productpage = mesh_tls(valid(&old, &old, PRODUCTPAGE));
    reviews
        .set_trust_bundle(&[new.pem.clone(), old.pem.clone()])
        .unwrap();

    // Before a snapshot brings a bundle: the certificate's own (old only),
    // so the new root's leaf is refused.
    let before = mesh_handshake(&reviews, &productpage, REVIEWS).await;
    assert!(
        before.is_err(),
        "the new root is not trusted yet: {before:?}"
    );

    // The snapshot's bundle carries both roots: trusted from the next
    // handshake on (this fails if the proxy ignores the snapshot's bundle).
    productpage
        .set_trust_bundle(&[new.pem.clone(), old.pem.clone()])
        .unwrap();
    mesh_handshake(&reviews, &productpage, REVIEWS)
        .await
        .expect("both roots trusted");

    // Exactly the snapshot's bundle: once it drops the old root, a leaf of
    // the old root is refused, though the certificate's own bundle names it.
    let old_server = mesh_tls(valid(&old, &old, REVIEWS));
    old_server
        .set_trust_bundle(&[new.pem.clone(), old.pem.clone()])
        .unwrap();
    productpage
        .set_trust_bundle(std::slice::from_ref(&new.pem))
        .unwrap();
    let after = mesh_handshake(&old_server, &productpage, REVIEWS).await;
    assert!(
        after.is_err(),
        "the retired root is still trusted: {after:?}"
    );
    mesh_handshake(&reviews, &productpage, REVIEWS)
        .await
        .expect("the new root's leaf still is");

    // An empty bundle (a control plane without a CA) falls back to the
    // certificate's; a bundle with no root is refused and the last kept.
    assert!(productpage.set_trust_bundle(&["not a PEM".into()]).is_err());
    assert_eq!(productpage.trust_bundle(), Some(vec![new.pem.clone()]));
    productpage.set_trust_bundle(&[]).unwrap();
    assert_eq!(productpage.trust_bundle(), Some(vec![old.pem.clone()]));
}
