//! Rotating the mesh's root CA under load (mesh/control/src/ca.rs's
//! `POST /v1/ca/rotate`; the trust bundle rides in every snapshot,
//! mesh/proxy/src/tls.rs trusts exactly it).
//!
//! Two sidecars talk mutual TLS under a steady load, on connections that
//! close after 10 requests (new handshakes throughout), with certificates
//! that live 4 s (renewed about every 2 s). The root is rotated in the
//! middle; the test then waits until both sidecars hold leaves of the new
//! root, and until the old root has left the trust bundle (its last leaf
//! expired). Then:
//! - not one request failed, and not one needed a second attempt
//!   (`x-envoy-attempt-count: 1` at helloworld: Istio's default retries
//!   would otherwise hide a handshake that failed);
//! - a leaf of the old root, otherwise valid for an hour, is refused by
//!   helloworld's sidecar, while one of the new root is served.
//!
//! Run with `cargo test -p mesh-proxy --test root_rotation`.

mod mtls_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use mesh_api::identity::Identity;
use mesh_proxy::identity::{CertifiedKey, Current};
use mesh_testkit::{Mesh, wait_until};
use rcgen::{Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TTL: Duration = Duration::from_secs(4);
const STEP: Duration = Duration::from_secs(30);
const URL: &str = "http://helloworld-service:8080/hello";

/// What the load saw: requests, failures, and answers that took a retry.
#[derive(Default)]
struct Observed {
    sent: u64,
    failures: Vec<String>,
    retried: Vec<String>,
}

/// The root that signed a sidecar's current leaf (its chain's last PEM).
fn signing_root(current: &Current) -> Option<String> {
    current
        .borrow()
        .as_ref()
        .and_then(|c| c.chain_pem.last().cloned())
}

/// A leaf for `identity` signed by the root in `dir`'s files now, valid
/// for an hour: what a workload of that root would present.
fn leaf_from(dir: &std::path::Path, identity: &Identity, trusting: &str) -> CertifiedKey {
    let root = std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap();
    let root_key =
        KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca-key.pem")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&root, root_key).unwrap();
    let now = SystemTime::now();
    mtls_support::workload_leaf(
        &issuer,
        &root,
        trusting,
        &identity.spiffe_id(),
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    )
}

/// One request over mutual TLS, straight at a sidecar's inbound port, as a
/// workload holding `certified`: the response's status line, or why none.
async fn call_inbound(
    inbound: std::net::SocketAddr,
    certified: &CertifiedKey,
) -> Result<String, String> {
    let config =
        mesh_proxy::tls::client_config(certified, Identity::new("default", "helloworld-service"))
            .map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(inbound)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = mesh_proxy::tls::connect(Arc::new(config), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    // In TLS 1.3 the server checks the client's certificate after the
    // client finished: a refusal shows as a failed read.
    let request =
        "GET /hello HTTP/1.1\r\nHost: helloworld-service:8080\r\nConnection: close\r\n\r\n";
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    text.lines()
        .next()
        .filter(|l| l.starts_with("HTTP/"))
        .map(str::to_string)
        .ok_or_else(|| format!("no HTTP response: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_fails_no_request_and_the_old_root_is_refused_after() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_path_buf();
    let mesh = Mesh::start_with(|settings| {
        settings.cert_ttl = TTL;
        settings.state_dir = state_dir.clone();
    })
    .await
    .unwrap();
    let hw = mesh.instance("helloworld-service", "v1").await.unwrap();
    let client = mesh.client().await.unwrap();
    mtls_support::mtls_with_short_connections(&mesh, &client, URL, STEP).await;
    let old_root = std::fs::read_to_string(state.path().join("ca-cert.pem")).unwrap();
    // A leaf of the old root, made while its key is still on disk.
    let old_leaf = leaf_from(state.path(), &Identity::new("default", "test-client"), "");

    // A steady load of four callers through the client sidecar.
    let observed = Arc::new(Mutex::new(Observed::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (http, observed, stop) = (client.http(), observed.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let answer = async {
                        let response = http.get(URL).send().await?.error_for_status()?;
                        anyhow::Ok(response.json::<serde_json::Value>().await?)
                    }
                    .await;
                    let mut observed = observed.lock().unwrap();
                    observed.sent += 1;
                    match answer {
                        Ok(answer) => {
                            let attempts = answer["headers"]["x-envoy-attempt-count"]
                                .as_str()
                                .unwrap_or("none")
                                .to_string();
                            if attempts != "1" {
                                observed.retried.push(attempts);
                            }
                        }
                        Err(e) => observed.failures.push(format!("{e:#}")),
                    }
                }
            })
        })
        .collect();
    let sent = || observed.lock().unwrap().sent;
    let more = |n: u64| {
        let target = sent() + n;
        let observed = observed.clone();
        async move {
            wait_until("more requests under load", STEP, || {
                let done = observed.lock().unwrap().sent >= target;
                async move { Ok(done) }
            })
            .await
            .unwrap();
        }
    };
    more(100).await;

    // Rotating takes the write token.
    let anonymous = reqwest::Client::new()
        .post(format!("{}/v1/ca/rotate", mesh.control_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // Rotate, as an operator would (meshctl keeps the token in its state).
    let rotation: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/ca/rotate", mesh.control_url()))
        .bearer_auth(mesh.token())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_root = rotation["root"].as_str().unwrap().to_string();
    assert_ne!(new_root, old_root);
    assert_eq!(
        rotation["lateProxies"].as_array().unwrap().len(),
        0,
        "every proxy ACKed the bundle with the new root first: {rotation}"
    );
    more(100).await;

    // Both sidecars move to leaves of the new root as they renew.
    for sidecar in [&client.sidecar, &hw.sidecar] {
        let current = sidecar.identity();
        wait_until("a leaf of the new root", STEP, || {
            let moved = signing_root(&current).as_deref() == Some(new_root.as_str());
            async move { Ok(moved) }
        })
        .await
        .unwrap();
    }
    more(100).await;

    // The old root's last leaf expires: it leaves every proxy's bundle.
    for sidecar in [&client.sidecar, &hw.sidecar] {
        wait_until("the old root retired", STEP, || {
            let bundle = sidecar.current_snapshot().map(|s| s.trust_bundle.clone());
            let retired = bundle.as_deref() == Some(std::slice::from_ref(&new_root));
            async move { Ok(retired) }
        })
        .await
        .unwrap();
        assert_eq!(
            sidecar.trust_bundle(),
            Some(vec![new_root.clone()]),
            "what mTLS trusts"
        );
    }
    more(100).await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    let observed = std::mem::take(&mut *observed.lock().unwrap());
    tracing::info!(sent = observed.sent, "root rotation under load");
    assert!(
        observed.failures.is_empty(),
        "{} of {} requests failed across the rotation: {:?}",
        observed.failures.len(),
        observed.sent,
        &observed.failures[..observed.failures.len().min(5)]
    );
    assert!(
        observed.retried.is_empty(),
        "{} of {} requests reached helloworld only after a retry: {:?}",
        observed.retried.len(),
        observed.sent,
        &observed.retried[..observed.retried.len().min(5)]
    );

    // After retirement: a leaf of the old root is refused at helloworld's
    // inbound, a leaf of the new root is served.
    let inbound = hw.sidecar.advertise_addr().unwrap();
    let mut old_leaf = old_leaf;
    old_leaf.trust_bundle_pem = vec![new_root.clone()];
    let refused = call_inbound(inbound, &old_leaf).await;
    assert!(
        refused.is_err(),
        "a leaf of the retired root was served: {refused:?}"
    );
    let new_leaf = leaf_from(
        state.path(),
        &Identity::new("default", "test-client"),
        &new_root,
    );
    let served = call_inbound(inbound, &new_leaf).await;
    assert!(
        served.as_deref().is_ok_and(|l| l.contains(" 200")),
        "a leaf of the new root: {served:?}"
    );
}
