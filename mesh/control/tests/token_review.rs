//! The CA's bootstrap on a cluster (mesh/control/src/kubernetes/token_review.rs):
//! with `--source kubernetes` a sidecar proves its identity with its
//! projected service-account token, minted for audience `istio-ca`; the
//! control plane asks the API server (here the fake one of
//! tests/kubernetes/fake_api.rs) with a TokenReview and signs only for the
//! service account the review names.
//!
//! Run with `cargo test -p mesh-control --test token_review`.

#[path = "kubernetes/fake_api.rs"]
#[allow(dead_code)]
mod fake_api;

use std::time::Duration;

use fake_api::{FakeApi, NAMESPACE};
use mesh_api::identity::{CertificateRequest, CertificateResponse, Identity};
use mesh_control::{KubernetesSource, Server, ServerHandle, Settings};
use rcgen::{CertificateParams, KeyPair, SanType};

async fn control(api: &FakeApi, state: &std::path::Path) -> ServerHandle {
    let mut settings = Settings::local(state);
    settings.lease = Duration::from_secs(60);
    settings.kubernetes = Some(KubernetesSource::new(api.client(), NAMESPACE));
    Server::start(settings).await.expect("control plane starts")
}

fn csr_for(identity: &Identity) -> String {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.spiffe_id().try_into().unwrap())];
    params.serialize_request(&key).unwrap().pem().unwrap()
}

async fn ask(control: &ServerHandle, identity: &Identity, token: &str) -> (u16, String) {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/v1/certificates", control.url()))
        .bearer_auth(token)
        .json(&CertificateRequest {
            identity: identity.clone(),
            csr: csr_for(identity),
        })
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_for_istio_ca_gets_that_identity_and_no_other() {
    let api = FakeApi::default();
    let ui = Identity::new(NAMESPACE, "guestbook-ui");
    let service = Identity::new(NAMESPACE, "guestbook-service");
    // What the injector's projected volume holds: audience istio-ca.
    api.issue_token(
        "ui-projected-token",
        NAMESPACE,
        "guestbook-ui",
        &["istio-ca"],
    );
    // The pod's default token: for the API server, not for the CA.
    api.issue_token(
        "ui-default-token",
        NAMESPACE,
        "guestbook-ui",
        &["https://kubernetes.default.svc.cluster.local"],
    );
    let state = tempfile::tempdir().unwrap();
    let control = control(&api, state.path()).await;

    // Its own identity: a certificate whose one URI SAN is that SPIFFE ID.
    let (status, body) = ask(&control, &ui, "ui-projected-token").await;
    assert_eq!(status, 200, "{body}");
    let issued: CertificateResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(issued.cert_chain.len(), 2);
    let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_chain[0].as_bytes()).unwrap();
    let leaf = pem.parse_x509().unwrap();
    let sans = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", sans.value.general_names),
        format!("[URI(\"{}\")]", ui.spiffe_id())
    );

    // The same token asking for another workload: 403, naming both.
    let (status, body) = ask(&control, &service, "ui-projected-token").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(&ui.spiffe_id()) && body.contains(&service.spiffe_id()),
        "{body}"
    );

    // A token of the wrong audience, and one the API server does not know.
    let (status, body) = ask(&control, &ui, "ui-default-token").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token audiences are invalid"), "{body}");
    let (status, body) = ask(&control, &ui, "forged").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid bearer token"), "{body}");

    // Each proof was a TokenReview for audience istio-ca, cluster-wide.
    let reviews: Vec<_> = api
        .calls()
        .into_iter()
        .filter(|c| c.rule() == "create authentication.k8s.io/tokenreviews")
        .collect();
    assert_eq!(reviews.len(), 4, "{reviews:#?}");
    for review in &reviews {
        assert_eq!(review.namespace, "");
        let body = review.body.as_ref().unwrap();
        assert_eq!(body["spec"]["audiences"], serde_json::json!(["istio-ca"]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_lives_in_a_secret_and_a_restart_keeps_it() {
    // A pod's state directory dies with the pod: the root must not.
    let api = FakeApi::default();
    api.issue_token("probe-token", NAMESPACE, "probe", &["istio-ca"]);
    let probe = Identity::new(NAMESPACE, "probe");
    async fn root_of(control: &ServerHandle, probe: &Identity) -> String {
        let (status, body) = ask(control, probe, "probe-token").await;
        assert_eq!(status, 200, "{body}");
        let signed: CertificateResponse = serde_json::from_str(&body).unwrap();
        signed.trust_bundle[0].clone()
    }
    let first = control(&api, tempfile::tempdir().unwrap().path()).await;
    let root = root_of(&first, &probe).await;
    let secret = api
        .get("Secret", "mesh-ca-root")
        .expect("the root was stored in a Secret");
    assert!(
        secret["data"]["ca-key.pem"].is_string(),
        "the key is kept too"
    );
    first.shutdown().await.unwrap();

    // A new pod, a new empty state directory: the same root.
    let second = control(&api, tempfile::tempdir().unwrap().path()).await;
    assert_eq!(
        root_of(&second, &probe).await,
        root,
        "a restart made a new root"
    );
    assert_eq!(api.get("Secret", "mesh-ca-root").unwrap(), secret);
    let creates = api
        .calls()
        .iter()
        .filter(|c| c.verb == "create" && c.resource == "secrets")
        .count();
    assert_eq!(creates, 1, "the second start read the Secret, made none");
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_control_planes_starting_together_agree_on_one_root() {
    // Both find no Secret, both make a root, one create wins: the loser
    // must read the winner's root (409 AlreadyExists), not keep its own.
    let api = FakeApi::default();
    let (a, b) = tokio::join!(
        mesh_control::kubernetes::ca_root::load_or_create(
            api.client(),
            NAMESPACE,
            "cluster.local",
            Duration::from_secs(3600)
        ),
        mesh_control::kubernetes::ca_root::load_or_create(
            api.client(),
            NAMESPACE,
            "cluster.local",
            Duration::from_secs(3600)
        ),
    );
    assert_eq!(a.unwrap().root_pem(), b.unwrap().root_pem());
}
