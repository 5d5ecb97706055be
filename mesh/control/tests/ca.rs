//! The mesh CA through its API (`POST /v1/certificates`, mesh/control/src/ca.rs):
//! a proxy proves its identity with its bootstrap token and gets a short-lived
//! leaf whose only name is its SPIFFE ID; a CSR for another identity is
//! refused, one asking for CA rights gets a plain leaf, and the root
//! survives a restart.
//!
//! Run with `cargo test -p mesh-control --test ca`.

use std::time::Duration;

use mesh_api::identity::{CertificateRequest, CertificateResponse, Identity, bootstrap_token};
use mesh_control::token::WriteToken;
use mesh_control::{Server, ServerHandle, Settings};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const WRITE_TOKEN: &str = "catestwritetoken0123456789abcdefghijklmn";

async fn control(state: &std::path::Path, ttl: Duration) -> ServerHandle {
    let mut settings = Settings::local(state);
    settings.write_token = WriteToken::Given(WRITE_TOKEN.into());
    settings.cert_ttl = ttl;
    Server::start(settings).await.unwrap()
}

/// A CSR as a proxy makes it: its own key, its SPIFFE ID as the one URI SAN.
fn csr_for(names: &[&str], is_ca: bool) -> (KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = names
        .iter()
        .map(|n| SanType::URI(n.to_string().try_into().unwrap()))
        .collect();
    if is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    }
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

async fn ask(
    control: &ServerHandle,
    identity: &Identity,
    bearer: &str,
    csr: String,
) -> reqwest::Response {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/v1/certificates", control.url()))
        .bearer_auth(bearer)
        .json(&CertificateRequest {
            identity: identity.clone(),
            csr,
        })
        .send()
        .await
        .unwrap()
}

fn der(pem_text: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
    pem.contents
}

/// The leaf's URI SANs, whether it is a CA, its validity and whether the
/// root's key signed it.
fn inspect(response: &CertificateResponse) -> (Vec<String>, usize, bool, Duration, bool) {
    let leaf_der = der(&response.cert_chain[0]);
    let root_der = der(&response.trust_bundle[0]);
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let (_, root) = X509Certificate::from_der(&root_der).unwrap();
    let sans = leaf
        .subject_alternative_name()
        .unwrap()
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    let uris = sans
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect();
    let is_ca = leaf
        .basic_constraints()
        .unwrap()
        .is_some_and(|bc| bc.value.ca);
    let validity = leaf.validity();
    let lifetime = Duration::from_secs(
        (validity.not_after.timestamp() - validity.not_before.timestamp()) as u64,
    );
    let signed_by_root = leaf.verify_signature(Some(root.public_key())).is_ok();
    (uris, sans.len(), is_ca, lifetime, signed_by_root)
}

#[tokio::test]
async fn a_proxy_gets_a_short_lived_leaf_with_exactly_its_spiffe_id() {
    let state = tempfile::tempdir().unwrap();
    let control = control(state.path(), Duration::from_secs(30)).await;
    let reviews = Identity::new("default", "reviews");
    let (_key, csr) = csr_for(&[&reviews.spiffe_id()], false);

    let response = ask(
        &control,
        &reviews,
        &bootstrap_token(WRITE_TOKEN, &reviews),
        csr,
    )
    .await;
    assert_eq!(response.status(), 200);
    let issued: CertificateResponse = response.json().await.unwrap();
    assert_eq!(issued.cert_chain.len(), 2, "leaf, then root");
    assert_eq!(issued.cert_chain[1], issued.trust_bundle[0]);

    let (uris, names, is_ca, lifetime, signed_by_root) = inspect(&issued);
    assert_eq!(uris, vec![reviews.spiffe_id()]);
    assert_eq!(names, 1, "exactly one SAN, the URI");
    assert!(!is_ca);
    assert!(signed_by_root, "the leaf verifies with the root's key");
    // MESH_CERT_TTL (30 s here), plus the minute its validity starts early.
    assert_eq!(lifetime, Duration::from_secs(30 + 60));
    assert_eq!(
        issued.not_after_ms - issued.not_before_ms,
        90_000,
        "the answer's validity is the certificate's"
    );
}

#[tokio::test]
async fn a_csr_for_another_identity_is_refused() {
    let state = tempfile::tempdir().unwrap();
    let control = control(state.path(), Duration::from_secs(60)).await;
    let reviews = Identity::new("default", "reviews");
    let token = bootstrap_token(WRITE_TOKEN, &reviews);

    // Proven as reviews, asking for ratings' name (alone, or alongside its own).
    for names in [
        vec!["spiffe://cluster.local/ns/default/sa/ratings"],
        vec![
            "spiffe://cluster.local/ns/default/sa/reviews",
            "spiffe://cluster.local/ns/default/sa/ratings",
        ],
    ] {
        let (_key, csr) = csr_for(&names, false);
        let response = ask(&control, &reviews, &token, csr).await;
        assert_eq!(response.status(), 403, "{names:?}");
        let message = response.text().await.unwrap();
        assert!(message.contains("its own identity only"), "{message}");
    }

    // Claiming ratings with reviews' bootstrap token: not proven.
    let ratings = Identity::new("default", "ratings");
    let (_key, csr) = csr_for(&[&ratings.spiffe_id()], false);
    let response = ask(&control, &ratings, &token, csr.clone()).await;
    assert_eq!(response.status(), 401);
    // Nor with no token at all, nor with the write token itself.
    assert_eq!(ask(&control, &ratings, "", csr.clone()).await.status(), 401);
    assert_eq!(
        ask(&control, &ratings, WRITE_TOKEN, csr).await.status(),
        401
    );
}

#[tokio::test]
async fn a_csr_asking_for_ca_rights_gets_a_plain_leaf() {
    let state = tempfile::tempdir().unwrap();
    let control = control(state.path(), Duration::from_secs(60)).await;
    let reviews = Identity::new("default", "reviews");
    let (_key, csr) = csr_for(&[&reviews.spiffe_id()], true);
    let response = ask(
        &control,
        &reviews,
        &bootstrap_token(WRITE_TOKEN, &reviews),
        csr,
    )
    .await;
    assert_eq!(response.status(), 200);
    let (uris, names, is_ca, _, _) = inspect(&response.json().await.unwrap());
    assert!(!is_ca, "the CA decides basic constraints, not the CSR");
    assert_eq!((uris.len(), names), (1, 1));
}

#[tokio::test]
async fn a_malformed_csr_is_refused_with_what_to_send() {
    let state = tempfile::tempdir().unwrap();
    let control = control(state.path(), Duration::from_secs(60)).await;
    let reviews = Identity::new("default", "reviews");
    let (_key, csr) = csr_for(&[&reviews.spiffe_id()], false);
    // One byte of its DER changed: no longer a request this CA can read.
    let tampered = csr.replacen("MII", "MIJ", 1);
    let token = bootstrap_token(WRITE_TOKEN, &reviews);
    for bad in ["not a csr".to_string(), tampered] {
        let response = ask(&control, &reviews, &token, bad).await;
        assert_eq!(response.status(), 400);
        assert!(response.text().await.unwrap().contains("PKCS#10"));
    }
}

#[tokio::test]
async fn the_root_survives_a_restart_and_its_key_is_private() {
    let state = tempfile::tempdir().unwrap();
    let reviews = Identity::new("default", "reviews");
    let token = bootstrap_token(WRITE_TOKEN, &reviews);
    let first = control(state.path(), Duration::from_secs(60)).await;
    let (_key, csr) = csr_for(&[&reviews.spiffe_id()], false);
    let before: CertificateResponse = ask(&first, &reviews, &token, csr.clone())
        .await
        .json()
        .await
        .unwrap();
    first.shutdown().await.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.path().join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "ca-key.pem mode {:o}", mode & 0o777);
    }

    let second = control(state.path(), Duration::from_secs(60)).await;
    let after: CertificateResponse = ask(&second, &reviews, &token, csr)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(before.trust_bundle, after.trust_bundle, "the same root");
    // A leaf issued before the restart still verifies against the root after it.
    let (_, _, _, _, signed) = inspect(&CertificateResponse {
        cert_chain: before.cert_chain.clone(),
        trust_bundle: after.trust_bundle.clone(),
        ..before
    });
    assert!(signed);
}
