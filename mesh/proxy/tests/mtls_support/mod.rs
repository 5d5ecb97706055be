//! What the mutual-TLS tests (`mtls.rs`, `mtls_telemetry.rs`,
//! `mtls_rotation.rs`, `root_rotation.rs`, `tls.rs`) set up alike: a client
//! sidecar and helloworld-service's, waited on until the hop is mutual TLS;
//! helloworld's PeerAuthentication mode; what the echo app saw of a
//! request; and workload certificates made by the test itself (apart from
//! the CA's code, so a test does not lean on what it checks).

#![allow(dead_code)] // each test file uses its own share

use std::time::{Duration, SystemTime};

use mesh_api::identity::Identity;
use mesh_proxy::identity::CertifiedKey;
use mesh_testkit::{Instance, Mesh, retry_until_ok, wait_for_version};
use serde_json::Value;

pub const XFCC: &str = "x-forwarded-client-cert";
pub const HELLO: &str = "http://helloworld-service:8080/hello";

/// `spiffe://cluster.local/ns/default/sa/<service>`.
pub fn spiffe(service: &str) -> String {
    Identity::new("default", service).to_string()
}

/// The headers the echo app saw of one request.
pub async fn echoed(response: reqwest::Response) -> anyhow::Result<Value> {
    anyhow::ensure!(
        response.status().is_success(),
        "status {}",
        response.status()
    );
    let body: Value = response.json().await?;
    Ok(body["headers"].clone())
}

/// Wait until `client`'s sidecar reaches `url` over mutual TLS: the server
/// sidecar writes `x-forwarded-client-cert` only for a TLS peer.
pub async fn until_mtls(client: &Instance, url: &str, wait: Duration) {
    retry_until_ok("the client sidecar talks mTLS to helloworld", wait, || {
        let http = client.http();
        async move {
            let headers = echoed(http.get(url).send().await?).await?;
            anyhow::ensure!(headers.get(XFCC).is_some(), "no XFCC yet: {headers}");
            Ok(())
        }
    })
    .await
    .unwrap();
}

/// A helloworld instance and a client sidecar, both certified; returns
/// once the client's requests reach helloworld over mutual TLS (auto mTLS
/// starts once helloworld's sidecar announced its certificate's identity).
pub async fn two_sidecars(mesh: &Mesh) -> (Instance, Instance) {
    let hw = mesh.instance("helloworld-service", "v1").await.unwrap();
    let client = mesh.client().await.unwrap();
    until_mtls(&client, HELLO, Duration::from_secs(20)).await;
    (hw, client)
}

/// [`until_mtls`], then every connection to helloworld-service closes
/// after 10 requests, so new handshakes keep happening under a load (the
/// rotation tests).
pub async fn mtls_with_short_connections(
    mesh: &Mesh,
    client: &Instance,
    url: &str,
    wait: Duration,
) {
    until_mtls(client, url, wait).await;
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
    wait_for_version(
        &client.sidecar,
        mesh.version().expect("the control plane runs"),
    )
    .await
    .unwrap();
}

/// A PeerAuthentication for helloworld-service's workload in `mode`
/// (`STRICT`, `PERMISSIVE`, `DISABLE`), applied and then held by each of
/// `sidecars`.
pub async fn helloworld_mtls_mode(mesh: &Mesh, mode: &str, sidecars: &[&Instance]) {
    mesh.apply(&format!(
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: hw-{}, namespace: default}}
spec:
  selector: {{matchLabels: {{app: helloworld-service}}}}
  mtls: {{mode: {mode}}}
",
        mode.to_ascii_lowercase()
    ))
    .await
    .unwrap();
    let version = mesh.version().expect("the control plane runs");
    for instance in sidecars {
        wait_for_version(&instance.sidecar, version).await.unwrap();
    }
}

/// A workload certificate for `uri` (a SPIFFE ID, or anything else a test
/// wants refused), valid from `not_before` to `not_after`, signed by
/// `issuer` (whose certificate is `issuer_pem`) and trusting `trusted_pem`:
/// what a sidecar holds after the CA signed its CSR, made by the test.
pub fn workload_leaf(
    issuer: &rcgen::Issuer<'_, impl rcgen::SigningKey>,
    issuer_pem: &str,
    trusted_pem: &str,
    uri: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> CertifiedKey {
    use rcgen::{
        CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(uri.to_string().try_into().unwrap())];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let leaf = params.signed_by(&key, issuer).unwrap();
    CertifiedKey {
        identity: uri.parse().unwrap_or_else(|_| Identity::new("x", "x")),
        key_der: key.serialize_der(),
        chain_pem: vec![leaf.pem(), issuer_pem.to_string()],
        trust_bundle_pem: vec![trusted_pem.to_string()],
        not_before,
        not_after,
        renew_at: not_after,
    }
}
