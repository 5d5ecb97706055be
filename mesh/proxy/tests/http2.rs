//! Apps may speak HTTP/2 to their sidecar with prior knowledge (cleartext,
//! no upgrade dance, what gRPC clients do), and the sidecar balances each
//! request, not each connection: many requests on one long-lived client
//! connection spread over every endpoint. Kubernetes' Service balances
//! connections, so without a mesh that one connection would pin every call
//! to a single pod: this is the reason meshes exist for gRPC.

mod support;

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::snapshot::LoadBalancer;
use mesh_proxy::{Config, Proxy};
use mesh_testkit::assert_binomial;
use support::*;

#[tokio::test]
async fn one_http2_client_connection_is_balanced_per_request_over_three_endpoints() {
    let upstreams = [
        Upstream::start("hw-1").await,
        Upstream::start("hw-2").await,
        Upstream::start("hw-3").await,
    ];
    let (vh, mut cluster) = service("hw", upstreams.iter().map(Upstream::endpoint).collect());
    // Random picks, so the spread is a statistical fact to check, not a
    // rotation to count.
    cluster.policy.load_balancer = LoadBalancer::Random;
    let sidecar = Proxy::start(Config::local_sidecar("client", refused_addr().await))
        .await
        .unwrap();
    sidecar
        .apply_snapshot(snapshot(1, vec![(vh, cluster)]))
        .unwrap();

    // One TCP connection, HTTP/2 from its first byte (prior knowledge).
    let tcp = tokio::net::TcpStream::connect(sidecar.outbound_addr().unwrap())
        .await
        .unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("the outbound listener speaks HTTP/2 with prior knowledge");
    tokio::spawn(conn);

    const N: u64 = 300;
    let mut answered_by: HashMap<String, u64> = HashMap::new();
    for _ in 0..N {
        let req = http::Request::get("http://hw:8080/hello")
            .body(Empty::<Bytes>::new())
            .unwrap();
        h2.ready().await.unwrap();
        let rsp = h2.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), 200);
        assert_eq!(rsp.version(), http::Version::HTTP_2);
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        *answered_by
            .entry(String::from_utf8_lossy(&body).into_owned())
            .or_default() += 1;
    }
    assert!(!h2.is_closed(), "every request rode the one connection");
    for upstream in &upstreams {
        let count = answered_by.get(&upstream.name).copied().unwrap_or(0);
        assert_binomial(
            &format!("requests answered by {}", upstream.name),
            count,
            N,
            1.0 / 3.0,
            4.0,
        );
    }
    sidecar.shutdown().await;
}
