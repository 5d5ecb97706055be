//! Who was at each end of a hop, in the telemetry: Istio's
//! `source_principal` and `destination_principal` labels and the spans'
//! `source.principal` / `destination.principal` tags (mesh/proxy/src/
//! telemetry.rs, metrics.rs, trace.rs), through two real sidecars that hold
//! certificates from the control plane's CA.
//!
//! - Over mutual TLS both reporters name both SPIFFE IDs, as Istio does:
//!   the destination's sidecar the client's verified certificate and its
//!   own identity, the source's sidecar its own and the server's, over
//!   HTTP/1.1 (the pooled connection) and HTTP/2 (the shared one) alike;
//!   the CLIENT and SERVER spans carry the same two as tags.
//! - Over plain text (the workload's PeerAuthentication says DISABLE) no
//!   identity was proved: both principals are `unknown` on both reporters,
//!   and the spans have no principal tag.
//!
//! Run with `cargo test -p mesh-proxy --test mtls_telemetry`.

mod mtls_support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_testkit::{Instance, Mesh, plain_client, wait_for};
use mtls_support::{HELLO, XFCC, echoed, helloworld_mtls_mode, spiffe, two_sidecars};
use serde_json::Value;

/// A proxy's metrics page.
async fn metrics(instance: &Instance) -> String {
    let admin = instance.sidecar.addrs().admin;
    plain_client()
        .get(format!("http://{admin}/stats/prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The sum of `istio_requests_total` over the series that carry every one
/// of `labels` (`name="value"` pairs).
fn requests(page: &str, labels: &[(&str, &str)]) -> u64 {
    page.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| {
            labels
                .iter()
                .all(|(name, value)| l.contains(&format!("{name}=\"{value}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The requests from test-client to helloworld that `reporter` counted with
/// these principals.
fn hop(page: &str, reporter: &str, source: &str, destination: &str) -> u64 {
    requests(
        page,
        &[
            ("reporter", reporter),
            ("source_workload", "test-client"),
            ("destination_workload", "helloworld-service"),
            ("source_principal", source),
            ("destination_principal", destination),
        ],
    )
}

/// How many requests `instance` counted on `reporter`'s side from
/// test-client to helloworld with these principals, once that is at least
/// `expected`: a sidecar counts a request when its response has ended,
/// which may be a moment after the caller read the last byte.
async fn counted(
    instance: &Instance,
    reporter: &str,
    (source, destination): (&str, &str),
    expected: u64,
) -> (u64, String) {
    let reached = wait_for(
        &format!("{reporter} to count {expected} requests with {source} -> {destination}"),
        Duration::from_secs(10),
        || async {
            let page = metrics(instance).await;
            let n = hop(&page, reporter, source, destination);
            Ok((n >= expected).then_some((n, page)))
        },
    )
    .await;
    match reached {
        Ok(counted) => counted,
        Err(error) => panic!("{error}; the page now: {}", metrics(instance).await),
    }
}

/// One request through the client sidecar over HTTP/2 with prior
/// knowledge (as a gRPC client talks): it goes on over the endpoint's
/// shared HTTP/2 connection (`h2.rs`), not the HTTP/1.1 pool.
async fn h2_request(client: &Instance) {
    let outbound = client.sidecar.outbound_addr().unwrap();
    let tcp = tokio::net::TcpStream::connect(outbound).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let rsp = sender
        .send_request(
            http::Request::get(HELLO)
                .version(http::Version::HTTP_2)
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains(XFCC),
        "the HTTP/2 request went over mTLS: {body:?}"
    );
}

/// The spans of `trace` in the control plane's collector, once both
/// sidecars reported theirs: (CLIENT, SERVER).
async fn client_and_server_spans(mesh: &Mesh, trace: &str) -> (Value, Value) {
    let url = format!("{}/api/v2/trace/{trace}", mesh.control_url());
    wait_for(
        "the CLIENT and SERVER spans of the trace",
        Duration::from_secs(20),
        || {
            let url = url.clone();
            async move {
                let rsp = plain_client().get(&url).send().await?;
                if !rsp.status().is_success() {
                    return Ok(None);
                }
                let spans: Vec<Value> = rsp.json().await?;
                let kind = |k: &str| spans.iter().find(|s| s["kind"] == k).cloned();
                Ok(kind("CLIENT").zip(kind("SERVER")))
            }
        },
    )
    .await
    .unwrap()
}

/// A request in trace `trace` (sampled), from the client app.
async fn traced_request(client: &Instance, trace: &str) -> Value {
    echoed(
        client
            .http()
            .get(HELLO)
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn an_mtls_hop_names_both_identities_on_both_reporters_and_both_spans() {
    let mesh = Mesh::start().await.unwrap();
    let (hw, client) = two_sidecars(&mesh).await;
    let (ui, server) = (spiffe("test-client"), spiffe("helloworld-service"));
    let before = (
        hop(&metrics(&client).await, "source", &ui, &server),
        hop(&metrics(&hw).await, "destination", &ui, &server),
    );

    // HTTP/1.1: the pooled connections.
    const N: u64 = 20;
    for _ in 0..N {
        echoed(client.http().get(HELLO).send().await.unwrap())
            .await
            .unwrap();
    }
    // Every mTLS request names test-client's and helloworld's SPIFFE IDs,
    // on the source's and on the destination's report; exactly N: no
    // request of ours went elsewhere.
    let principals = (ui.as_str(), server.as_str());
    let after = (
        counted(&client, "source", principals, before.0 + N).await.0,
        counted(&hw, "destination", principals, before.1 + N)
            .await
            .0,
    );
    assert_eq!(after, (before.0 + N, before.1 + N));

    // HTTP/2: the endpoint's one shared connection carries its identity too.
    h2_request(&client).await;
    let (source_count, source_page) = counted(&client, "source", principals, after.0 + 1).await;
    let (destination_count, destination_page) =
        counted(&hw, "destination", principals, after.1 + 1).await;
    assert_eq!(source_count, after.0 + 1, "{source_page}");
    assert_eq!(destination_count, after.1 + 1, "{destination_page}");
    // Istio's pairing: the destination says `mutual_tls` exactly where it
    // names principals (the requests before auto mTLS began were plain
    // text, `none`, with `unknown` principals).
    let mutual = requests(
        &destination_page,
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    assert_eq!(
        mutual,
        hop(&destination_page, "destination", &ui, &server),
        "{destination_page}"
    );

    // The spans of one request carry the same two identities.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    traced_request(&client, trace).await;
    let (client_span, server_span) = client_and_server_spans(&mesh, trace).await;
    for span in [&client_span, &server_span] {
        assert_eq!(span["tags"]["source.principal"], ui.as_str(), "{span}");
        assert_eq!(
            span["tags"]["destination.principal"],
            server.as_str(),
            "{span}"
        );
    }
}

#[tokio::test]
async fn a_plain_text_hop_proves_no_identity_so_its_principals_are_unknown() {
    let mesh = Mesh::start().await.unwrap();
    let (hw, client) = two_sidecars(&mesh).await;
    // helloworld takes plain text only: auto mTLS sends it plain text.
    helloworld_mtls_mode(&mesh, "DISABLE", &[&hw, &client]).await;
    let headers = echoed(client.http().get(HELLO).send().await.unwrap())
        .await
        .unwrap();
    assert!(headers.get(XFCC).is_none(), "still mTLS: {headers}");

    let unknown = "unknown";
    let before = (
        hop(&metrics(&client).await, "source", unknown, unknown),
        hop(&metrics(&hw).await, "destination", unknown, unknown),
    );
    const N: u64 = 20;
    for _ in 0..N {
        echoed(client.http().get(HELLO).send().await.unwrap())
            .await
            .unwrap();
    }
    let principals = (unknown, unknown);
    let (source_count, source_page) = counted(&client, "source", principals, before.0 + N).await;
    let (destination_count, destination_page) =
        counted(&hw, "destination", principals, before.1 + N).await;
    assert_eq!(source_count, before.0 + N, "{source_page}");
    assert_eq!(destination_count, before.1 + N, "{destination_page}");
    // And the destination's policy for those: `none`.
    assert!(
        requests(
            &destination_page,
            &[
                ("reporter", "destination"),
                ("source_principal", unknown),
                ("connection_security_policy", "none"),
            ],
        ) >= N,
        "{destination_page}"
    );

    let trace = "5c0a3f8e7d6b4a2918f7e6d5c4b3a291";
    traced_request(&client, trace).await;
    let (client_span, server_span) = client_and_server_spans(&mesh, trace).await;
    for span in [&client_span, &server_span] {
        assert!(span["tags"].get("source.principal").is_none(), "{span}");
        assert!(
            span["tags"].get("destination.principal").is_none(),
            "{span}"
        );
    }
}
