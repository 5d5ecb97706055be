//! Mutual TLS between sidecars, through real listeners (mesh/proxy/src/
//! listener.rs, tls.rs, pool.rs): a control plane with its CA, sidecars
//! that hold certificates, and PeerAuthentication applied as a learner
//! would.
//!
//! - With no PeerAuthentication at all (Istio's default, PERMISSIVE with
//!   auto mTLS) sidecars talk mTLS: the app behind the server sidecar gets
//!   `x-forwarded-client-cert` naming its caller, a forged one never
//!   reaches it, and the destination's metrics say `mutual_tls`.
//! - PERMISSIVE also serves plaintext on the same port, without XFCC.
//! - STRICT refuses every plaintext connection, and still serves mTLS.
//! - A server that is not the identity expected is refused in the handshake.
//!
//! Run with `cargo test -p mesh-proxy --test mtls`.

mod mtls_support;

use std::sync::Arc;

use mesh_api::identity::Identity;
use mesh_testkit::{Mesh, plain_client};
use mtls_support::{XFCC, echoed, helloworld_mtls_mode, spiffe, two_sidecars};
use serde_json::Value;

const FORGED: &str = "By=spiffe://cluster.local/ns/default/sa/helloworld-service;\
                      Hash=00;URI=spiffe://cluster.local/ns/default/sa/admin";

/// The XFCC the server sidecar writes for `caller` calling `server`.
fn xfcc_names(headers: &Value) -> Option<(String, String)> {
    let value = headers.get(XFCC)?.as_str()?;
    let field = |key: &str| {
        value
            .split(';')
            .find_map(|part| part.strip_prefix(key))
            .map(str::to_string)
    };
    Some((field("By=")?, field("URI=")?))
}

#[tokio::test]
async fn by_default_sidecars_talk_mtls_and_the_app_learns_its_caller_never_a_forged_one() {
    let mesh = Mesh::start().await.unwrap();
    let (hw, client) = two_sidecars(&mesh).await;
    // Every request goes over mTLS, and each carries a forged XFCC from
    // the client app: none of them reaches helloworld's app.
    const N: usize = 200;
    let http = client.http();
    let mut forged_seen = 0;
    for _ in 0..N {
        let headers = echoed(
            http.get("http://helloworld-service:8080/hello")
                .header(XFCC, FORGED)
                .send()
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        if headers.to_string().contains("sa/admin") {
            forged_seen += 1;
        }
        assert_eq!(
            xfcc_names(&headers),
            Some((spiffe("helloworld-service"), spiffe("test-client"))),
            "By is the server's identity, URI the caller's: {headers}"
        );
    }
    assert_eq!(forged_seen, 0, "a forged XFCC reached the app");
    // The hash is of the caller's certificate, as Envoy writes it: 64 hex.
    let last = hw.upstream.last_request().unwrap();
    let xfcc = last
        .headers
        .get(XFCC)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let hash = xfcc
        .split(';')
        .find_map(|p| p.strip_prefix("Hash="))
        .unwrap();
    assert_eq!(hash.len(), 64, "{xfcc}");
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{xfcc}");
    // Istio's metric label: the destination saw mutual TLS.
    let admin = hw.sidecar.addrs().admin;
    let page = plain_client()
        .get(format!("http://{admin}/stats/prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mtls_series = page
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{reporter=\"destination\""))
        .filter(|l| l.contains("source_workload=\"test-client\""))
        .collect::<Vec<_>>();
    // (Requests before auto mTLS began were plaintext: `none`, apart.)
    let counted_mtls: u64 = mtls_series
        .iter()
        .filter(|l| l.contains("connection_security_policy=\"mutual_tls\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(counted_mtls >= N as u64, "{page}");
}

#[tokio::test]
async fn permissive_serves_plaintext_on_the_same_port_without_a_client_certificate() {
    let mesh = Mesh::start().await.unwrap();
    let (hw, _client) = two_sidecars(&mesh).await;
    let inbound = hw.sidecar.inbound_addr().unwrap();
    // Straight at the inbound port in plaintext, claiming to be a sidecar
    // and forging XFCC: served (PERMISSIVE), but the app gets no XFCC.
    for _ in 0..50 {
        let headers = echoed(
            plain_client()
                .get(format!("http://{inbound}/hello"))
                .header("host", "helloworld-service:8080")
                .header("x-mesh-peer-metadata", "workload=admin")
                .header(XFCC, FORGED)
                .send()
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert!(headers.get(XFCC).is_none(), "plaintext got XFCC: {headers}");
    }
}

#[tokio::test]
async fn strict_refuses_every_plaintext_connection_and_keeps_serving_mtls() {
    let mesh = Mesh::start().await.unwrap();
    let (hw, client) = two_sidecars(&mesh).await;
    helloworld_mtls_mode(&mesh, "STRICT", &[&hw]).await;
    let inbound = hw.sidecar.inbound_addr().unwrap();
    const N: usize = 100;
    let mut served = 0;
    for _ in 0..N {
        // A new connection each time: each one is refused.
        let attempt = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
            .get(format!("http://{inbound}/hello"))
            .header("host", "helloworld-service:8080")
            .send()
            .await;
        if attempt.is_ok() {
            served += 1;
        }
    }
    assert_eq!(
        served, 0,
        "STRICT served {served} of {N} plaintext connections"
    );
    // The mesh's own traffic goes on, over mTLS.
    let headers = echoed(
        client
            .http()
            .get("http://helloworld-service:8080/hello")
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(xfcc_names(&headers).is_some());
}

#[tokio::test]
async fn a_server_that_is_not_the_identity_expected_is_refused_in_the_handshake() {
    let mesh = Mesh::start().await.unwrap();
    let (hw, client) = two_sidecars(&mesh).await;
    let inbound = hw.sidecar.inbound_addr().unwrap();
    let certified = client.sidecar.identity().borrow().clone().unwrap();
    let handshake = |expected: Identity| {
        let config = mesh_proxy::tls::client_config(&certified, expected).unwrap();
        async move {
            let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
            mesh_proxy::tls::connect(Arc::new(config), tcp).await
        }
    };
    // The client's own certificate, toward helloworld's listener: the
    // identity helloworld proves is accepted, any other refused.
    assert!(
        handshake(Identity::new("default", "helloworld-service"))
            .await
            .is_ok()
    );
    assert!(
        handshake(Identity::new("default", "ratings"))
            .await
            .is_err(),
        "a server proving helloworld-service passed as ratings"
    );
}
