//! The control plane's secure port (mesh/control/src/secure.rs): real
//! sidecars move their announces and watch to mutual TLS once they hold a
//! certificate, a proxy may only announce and watch as its own identity, and
//! a control-plane restart keeps the root, so proxies reconnect with the
//! certificates they hold and no request fails.
//!
//! Run with `cargo test -p mesh-control --test secure`.

use std::time::Duration;

use mesh_api::identity::{Identity, bootstrap_token};
use mesh_api::xds::{ProxyAnnounce, ProxyStatus, SecureControl};
use mesh_proxy::control::Link;
use mesh_proxy::identity::{Current, HttpCa};
use mesh_testkit::{Load, Mesh, wait_for, wait_until};
use reqwest::Method;
use tokio_util::sync::CancellationToken;

const CONVERGE: Duration = Duration::from_secs(20);

fn identity(service: &str) -> Identity {
    Identity::new("default", service)
}

/// The proxies as the control plane lists them, by instance.
async fn status_of(mesh: &Mesh, instance: &str) -> Option<ProxyStatus> {
    mesh.proxies()
        .await
        .ok()?
        .into_iter()
        .find(|p| p.announce.instance == instance)
}

/// Wait until the control plane shows `instance` with the identity its
/// certificate proved on the secure port.
async fn wait_proven(mesh: &Mesh, instance: &str, service: &str) {
    wait_until(
        &format!("{instance} to announce over mutual TLS as {service}"),
        CONVERGE,
        || async {
            Ok(status_of(mesh, instance)
                .await
                .is_some_and(|p| p.announce.identity == Some(identity(service))))
        },
    )
    .await
    .unwrap();
}

/// A certificate for `service`'s identity from the mesh CA, as a proxy's
/// identity worker keeps it, and a [`Link`] that uses it on the secure port.
async fn link_as(mesh: &Mesh, service: &str, shutdown: &CancellationToken) -> Link {
    let ca = HttpCa {
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        base: mesh.control_url(),
        bootstrap_token: bootstrap_token(mesh.token(), &identity(service)).into(),
    };
    let (mut current, _task): (Current, _) =
        mesh_proxy::identity::start(identity(service), ca, shutdown.clone());
    current.wait_for(|c| c.is_some()).await.unwrap();
    let plain = mesh_proxy::control::client(None).unwrap();
    let link = Link::new(plain, mesh.control_url(), current);
    let secure: SecureControl = mesh.control().unwrap().secure().unwrap().clone();
    link.learn(Some(secure));
    link
}

fn announce(instance: &str, service: &str) -> Vec<u8> {
    serde_json::to_vec(&ProxyAnnounce {
        instance: instance.into(),
        service: service.into(),
        version: "v1".into(),
        address: "127.0.0.1:9".into(),
        ready: true,
        ..Default::default()
    })
    .unwrap()
}

async fn body_of<B: AsRef<[u8]>>(answer: (u16, B)) -> (u16, String) {
    (
        answer.0,
        String::from_utf8_lossy(answer.1.as_ref()).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_watch_and_announce_over_mutual_tls_as_their_identity() {
    let mesh = Mesh::start().await.unwrap();
    let reviews = mesh.instance("reviews", "v1").await.unwrap();
    let client = mesh.client().await.unwrap();

    // Each sidecar got its certificate, learned the secure port from an
    // announce's answer, and now announces there: the control plane shows
    // the identity the certificate proved (a plaintext claim is never shown).
    wait_proven(&mesh, &reviews.name, "reviews").await;
    wait_proven(&mesh, &client.name, "test-client").await;

    // The watch runs over mutual TLS too: a config change reaches the
    // sidecar, which ACKs it there.
    let applied = mesh
        .apply(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\n\
             spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}\n",
        )
        .await
        .unwrap();
    tracing::info!(?applied, "applied a DestinationRule");
    let version = mesh.version().unwrap();
    mesh_testkit::wait_for_version(&client.sidecar, version)
        .await
        .unwrap();
    wait_until("the ACK of that version", CONVERGE, || async {
        Ok(status_of(&mesh, &client.name)
            .await
            .is_some_and(|p| p.acked_version >= Some(version)))
    })
    .await
    .unwrap();

    // And traffic flows between them.
    let answer = client
        .http()
        .get("http://reviews:8080/hello")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_with_identity_a_cannot_announce_or_watch_as_b() {
    let mesh = Mesh::start().await.unwrap();
    let ratings = mesh.instance("ratings", "v1").await.unwrap();
    wait_proven(&mesh, &ratings.name, "ratings").await;
    let shutdown = CancellationToken::new();
    let reviews = link_as(&mesh, "reviews", &shutdown).await;

    // As itself: an announce of a reviews instance is accepted.
    let (status, body) = body_of(
        reviews
            .call(
                Method::PUT,
                "/v1/proxies/reviews-v1-abcde",
                Some(announce("reviews-v1-abcde", "reviews")),
                Duration::from_secs(5),
            )
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    wait_proven(&mesh, "reviews-v1-abcde", "reviews").await;

    // An instance of another service: 403, with the reason.
    let (status, body) = body_of(
        reviews
            .call(
                Method::PUT,
                "/v1/proxies/ratings-v1-zzzzz",
                Some(announce("ratings-v1-zzzzz", "ratings")),
                Duration::from_secs(5),
            )
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("may not announce an instance of service"),
        "{body}"
    );
    assert!(
        status_of(&mesh, "ratings-v1-zzzzz").await.is_none(),
        "nothing was registered"
    );

    // The real ratings sidecar's instance: its announce, watch, ACK and
    // leave are refused to reviews' certificate.
    let instance = &ratings.name;
    for (method, path, body) in [
        (
            Method::PUT,
            format!("/v1/proxies/{instance}"),
            Some(announce(instance, "reviews")),
        ),
        (
            Method::GET,
            format!("/v1/proxies/{instance}/snapshot?version=0&waitMs=0"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/proxies/{instance}/ack"),
            Some(br#"{"version": 1, "accepted": true}"#.to_vec()),
        ),
        (Method::DELETE, format!("/v1/proxies/{instance}"), None),
    ] {
        let (status, text) = body_of(
            reviews
                .call(method.clone(), &path, body, Duration::from_secs(5))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 403, "{method} {path}: {text}");
        assert!(
            text.contains(&format!("belongs to {}", identity("ratings"))),
            "{method} {path}: {text}"
        );
    }

    // On the plaintext port even the write token does not reach an
    // instance that proved its identity over mutual TLS.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let refused = http
        .get(format!(
            "{}/v1/proxies/{instance}/snapshot?version=0&waitMs=0",
            mesh.control_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let refused = http
        .put(format!("{}/v1/proxies/{instance}", mesh.control_url()))
        .bearer_auth(mesh.token())
        .header("content-type", "application/json")
        .body(announce(instance, "ratings"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let text = refused.text().await.unwrap();
    assert!(text.contains("secure port"), "{text}");

    // The ratings sidecar itself is still registered and live.
    let status = status_of(&mesh, instance).await.unwrap();
    assert!(status.live, "{status:?}");
    assert_eq!(status.announce.identity, Some(identity("ratings")));

    // Removing it on the plaintext port is an operator's act (meshctl up
    // clears a killed run's leftovers so): it takes the write token, and
    // with it succeeds.
    let url = format!("{}/v1/proxies/{instance}", mesh.control_url());
    let refused = http.delete(&url).send().await.unwrap();
    assert_eq!(refused.status(), 401, "a removal without the write token");
    let removed = http
        .delete(&url)
        .bearer_auth(mesh.token())
        .send()
        .await
        .unwrap();
    assert!(
        removed.status().is_success(),
        "a removal with the write token: {}",
        removed.status()
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_restart_keeps_the_root_and_fails_no_request() {
    let mut mesh = Mesh::start().await.unwrap();
    let reviews = mesh.instance("reviews", "v1").await.unwrap();
    let client = mesh.client().await.unwrap();
    wait_proven(&mesh, &reviews.name, "reviews").await;
    wait_proven(&mesh, &client.name, "test-client").await;
    let root_before = mesh.control().unwrap().root_pem().unwrap().to_string();

    let load = Load::start(client.http(), "http://reviews:8080/hello", 2);
    load.send_at_least(50).await.unwrap();

    mesh.restart_control().await.unwrap();
    assert_eq!(
        mesh.control().unwrap().root_pem().unwrap(),
        root_before,
        "the root is read back from the state directory"
    );
    // The sidecars reconnect to the secure port with the certificates they
    // hold (the new server certificate chains to the same root) and take
    // the new control plane's version there.
    let version = mesh.version().unwrap();
    for proxy in [&reviews.sidecar, &client.sidecar] {
        mesh_testkit::wait_for_version(proxy, version)
            .await
            .unwrap();
    }
    let acked = wait_for("both ACKs over mutual TLS", CONVERGE, || async {
        let proxies = mesh.proxies().await?;
        let done = [&reviews.name, &client.name].iter().all(|name| {
            proxies.iter().any(|p| {
                &&p.announce.instance == name
                    && p.acked_version >= Some(version)
                    && p.announce.identity.is_some()
            })
        });
        Ok(done.then_some(proxies))
    })
    .await
    .unwrap();
    tracing::info!(proxies = acked.len(), "resynced after the restart");

    load.send_at_least(50).await.unwrap();
    let report = load.stop().await.unwrap();
    assert!(report.sent >= 100, "{report:?}");
    assert!(
        report.failures.is_empty(),
        "no request fails across the restart: {:?}",
        report.failures
    );
}
