//! Certificate rotation never drops a connection or fails a request
//! (mesh/proxy/src/identity.rs renews, tls.rs's `MeshTls` makes new
//! configs for new handshakes, open connections keep their session).
//!
//! The control plane issues certificates that live 2 s (`MESH_CERT_TTL`'s
//! shortest), so each sidecar renews about every second; a steady load
//! runs through two sidecars over mutual TLS for a minute, on connections
//! that close after 10 requests (new handshakes throughout).
//!
//! "No request failed" alone proves little: Istio's default retries (two
//! attempts on `connect-failure`) would hide a handshake that failed after a
//! rotation, and a certificate that outlives the run needs no rotation at
//! all. So the test asserts at the proxies, from what the server side saw:
//! - every request reached helloworld on its first attempt
//!   (`x-envoy-attempt-count: 1`, which the client sidecar sets on each
//!   attempt): no handshake failed and was retried;
//! - the client certificates the server sidecar verified (the `Hash` of
//!   `x-forwarded-client-cert`) are the client worker's own, and new
//!   handshakes used the newer ones: at least 30 different certificates;
//! - each certificate the CA issued really expires within `MESH_CERT_TTL`
//!   of its issue (read from the X.509 itself), so an old one cannot serve.
//!
//! The suite's one slow test (a minute). Run with
//! `cargo test -p mesh-proxy --test mtls_rotation`.

mod mtls_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_proxy::identity::{CertifiedKey, Current};
use mesh_proxy::tls::PeerCertificate;
use mesh_testkit::Mesh;
use rustls::pki_types::CertificateDer;

const RUN: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(2);

/// What the test learnt of one certificate a sidecar held.
#[derive(Debug)]
struct Seen {
    /// When the test first saw it as the sidecar's current one.
    at: SystemTime,
    /// The leaf's notAfter, from the X.509 itself.
    not_after: SystemTime,
}

/// The SHA-256 (as in XFCC's `Hash`) and notAfter of a certificate's leaf.
fn leaf_of(certified: &CertifiedKey) -> (String, SystemTime) {
    let (_, pem) = x509_parser::pem::parse_x509_pem(certified.chain_pem[0].as_bytes())
        .expect("the leaf is PEM");
    let x509 = pem.parse_x509().expect("the leaf is X.509");
    let not_after = UNIX_EPOCH + Duration::from_secs(x509.validity().not_after.timestamp() as u64);
    let der = [CertificateDer::from(pem.contents.clone())];
    let peer = PeerCertificate::of(Some(&der)).expect("the leaf names a SPIFFE identity");
    (peer.hash, not_after)
}

/// Follows a sidecar's identity worker: every certificate it publishes.
fn follow(mut current: Current) -> Arc<Mutex<BTreeMap<String, Seen>>> {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let certified = current.borrow_and_update().clone();
            if let Some(certified) = certified {
                let (hash, not_after) = leaf_of(&certified);
                record.lock().unwrap().entry(hash).or_insert(Seen {
                    at: SystemTime::now(),
                    not_after,
                });
            }
            if current.changed().await.is_err() {
                return;
            }
        }
    });
    seen
}

/// What the server side saw of each request, or why it failed.
#[derive(Default)]
struct Observed {
    sent: usize,
    failures: Vec<String>,
    /// `x-envoy-attempt-count` values other than 1 (or missing).
    retried: Vec<String>,
    /// The client certificate hash of each request, as XFCC carried it.
    client_hashes: BTreeMap<String, usize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_used_by_new_handshakes_and_no_attempt_fails() {
    let mesh = Mesh::start_with(|settings| settings.cert_ttl = TTL)
        .await
        .unwrap();
    let hw = mesh.instance("helloworld-service", "v1").await.unwrap();
    let client = mesh.client().await.unwrap();
    let url = "http://helloworld-service:8080/hello";
    // mTLS between the sidecars, and new connections all the time (a
    // connection closes after 10 requests), so handshakes keep happening
    // across every rotation.
    mtls_support::mtls_with_short_connections(&mesh, &client, url, Duration::from_secs(20)).await;

    // Watch both sidecars' certificates change while the load runs.
    let client_certs = follow(client.sidecar.identity());
    let server_certs = follow(hw.sidecar.identity());
    // A steady load of four callers; each answer is helloworld's echo of
    // the request as the server sidecar forwarded it.
    let observed = Arc::new(Mutex::new(Observed::default()));
    let stop = tokio::time::Instant::now() + RUN;
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (http, observed) = (client.http(), observed.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < stop {
                    let answer = async {
                        let response = http.get(url).send().await?.error_for_status()?;
                        anyhow::Ok(response.json::<serde_json::Value>().await?)
                    }
                    .await;
                    let mut observed = observed.lock().unwrap();
                    observed.sent += 1;
                    let answer = match answer {
                        Ok(answer) => answer,
                        Err(e) => {
                            observed.failures.push(format!("{e:#}"));
                            continue;
                        }
                    };
                    let headers = &answer["headers"];
                    let attempts = headers["x-envoy-attempt-count"].as_str().unwrap_or("none");
                    if attempts != "1" {
                        observed.retried.push(attempts.to_string());
                    }
                    let hash = headers["x-forwarded-client-cert"]
                        .as_str()
                        .and_then(|xfcc| xfcc.split(';').find_map(|p| p.strip_prefix("Hash=")))
                        .unwrap_or("no mTLS")
                        .to_string();
                    *observed.client_hashes.entry(hash).or_default() += 1;
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let observed = std::mem::take(&mut *observed.lock().unwrap());
    let client_certs = std::mem::take(&mut *client_certs.lock().unwrap());
    let server_certs = std::mem::take(&mut *server_certs.lock().unwrap());
    tracing::info!(
        sent = observed.sent,
        client_certificates = client_certs.len(),
        server_certificates = server_certs.len(),
        client_certificates_seen_by_server = observed.client_hashes.len(),
        "rotation under load"
    );

    // Not one request failed, and not one needed a second attempt.
    assert!(
        observed.failures.is_empty(),
        "{} of {} requests failed during rotation: {:?}",
        observed.failures.len(),
        observed.sent,
        &observed.failures[..observed.failures.len().min(5)]
    );
    assert!(
        observed.retried.is_empty(),
        "{} of {} requests reached helloworld only after a retry \
         (x-envoy-attempt-count): a handshake or connection failed; {:?}",
        observed.retried.len(),
        observed.sent,
        &observed.retried[..observed.retried.len().min(5)]
    );
    assert!(
        observed.sent >= 1_000,
        "too little load to mean anything: {}",
        observed.sent
    );
    // Both sidecars renewed about once a second; at least half of that seen.
    for (who, certs) in [("client", &client_certs), ("server", &server_certs)] {
        assert!(
            certs.len() >= 30,
            "the {who} sidecar held only {} certificates in {RUN:?}",
            certs.len()
        );
        // X.509 times have whole seconds: one more second of slack.
        for (hash, seen) in certs {
            let life = seen.not_after.duration_since(seen.at).unwrap_or_default();
            assert!(
                life <= TTL + Duration::from_secs(1),
                "the {who} sidecar's certificate {hash} outlives MESH_CERT_TTL ({TTL:?}): \
                 {life:?} left when first seen",
            );
        }
    }
    // Every request was mutual TLS with one of the client's own
    // certificates, and new handshakes used the newer ones.
    for hash in observed.client_hashes.keys() {
        assert!(
            client_certs.contains_key(hash),
            "the server sidecar saw a client certificate the client's worker never held: \
             {hash} (in {:?})",
            observed.client_hashes
        );
    }
    assert!(
        observed.client_hashes.len() >= 30,
        "new handshakes did not follow the rotation: the server sidecar saw only {} \
         different client certificates while the client held {}",
        observed.client_hashes.len(),
        client_certs.len()
    );
    drop(hw);
}
