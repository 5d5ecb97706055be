//! When the proxy itself answers a gRPC call, it answers in gRPC.
//!
//! A gRPC client (here tonic's, as a real app would use) reads no HTTP
//! status and no text body: it reads `grpc-status` and `grpc-message`. So
//! every error the sidecar answers itself (no route `NR`, no healthy
//! upstream `UH`, a fault abort `FI`, a route timeout `UT`) reaches a gRPC
//! caller as gRPC's trailers-only answer with the code Envoy picks for the
//! HTTP status it would have sent (503 and 504 -> UNAVAILABLE), the status
//! in the access log (`grpc_status=14`) and in the metrics
//! (`grpc_response_status="14"`). An HTTP/1.1 caller still gets the text.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::snapshot::{Endpoint, Fault, FaultAbort};
use mesh_proxy::{Config, Proxy, ProxyHandle};
use support::*;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint as ChannelEndpoint};
use tonic::{Code, Status};

// === a gRPC client with no codegen ===

/// Messages as raw bytes: tonic frames them, we need no protobuf here.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A gRPC channel to `service` through the sidecar's outbound listener:
/// the TCP connection goes to the sidecar, the `:authority` names the
/// service, which is how an app in explicit mode reaches the mesh with gRPC.
async fn channel_via(sidecar: SocketAddr, service: &str) -> Channel {
    ChannelEndpoint::from_shared(format!("http://{sidecar}"))
        .unwrap()
        .origin(format!("http://{service}:8080").parse().unwrap())
        .connect()
        .await
        .expect("the sidecar accepts HTTP/2")
}

/// One unary call of `/demo.Greeter/Hello`.
async fn hello(channel: &Channel) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let path = http::uri::PathAndQuery::from_static("/demo.Greeter/Hello");
    grpc.unary(
        tonic::Request::new(Bytes::from_static(b"ray")),
        path,
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

// === a gRPC server app ===

/// Answers every call with one message, its `name`, after `delay`.
async fn grpc_app(name: &'static str, delay: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        tokio::time::sleep(delay).await;
                        let mut message = Vec::with_capacity(5 + name.len());
                        message.push(0);
                        message.extend_from_slice(&(name.len() as u32).to_be_bytes());
                        message.extend_from_slice(name.as_bytes());
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let body = Full::new(Bytes::from(message))
                            .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
                        let mut rsp = http::Response::new(body);
                        rsp.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/grpc"),
                        );
                        Ok::<_, Infallible>(rsp)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A server sidecar in front of a gRPC app; its endpoint for snapshots.
async fn meshed_app(name: &'static str, delay: Duration) -> (ProxyHandle, Endpoint) {
    let app = grpc_app(name, delay).await;
    let sidecar = Proxy::start(Config::local_sidecar("greeter", app))
        .await
        .unwrap();
    let endpoint = Endpoint {
        instance: name.into(),
        address: sidecar.advertise_addr().unwrap().to_string(),
        labels: Default::default(),
        identity: None,
        tls_mode: Default::default(),
    };
    (sidecar, endpoint)
}

async fn client_sidecar() -> ProxyHandle {
    Proxy::start(Config::local_sidecar("client", refused_addr().await))
        .await
        .unwrap()
}

/// The access lines, the one for `greeter` asserted to exist.
fn line_for<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("an access line with {needle:?} in {lines:#?}"))
}

// === the tests ===

#[tokio::test]
async fn no_route_and_no_healthy_upstream_reach_a_grpc_client_as_unavailable() {
    let (_guard, logs) = Logs::capture();
    let client = client_sidecar().await;
    // The greeter is known but has no endpoint at all: UH.
    client
        .apply_snapshot(snapshot(1, vec![service("greeter", vec![])]))
        .unwrap();
    let channel = channel_via(client.outbound_addr().unwrap(), "greeter").await;

    let status = hello(&channel).await.expect_err("no endpoint, no answer");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "no healthy upstream");

    // A service the sidecar does not know: NR, UNAVAILABLE too (503 in HTTP).
    let unknown = channel_via(client.outbound_addr().unwrap(), "nobody").await;
    let status = hello(&unknown).await.expect_err("no route");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with("no route to \"nobody:8080\""),
        "the message says why: {status:?}"
    );

    // The access log: Envoy's flags, HTTP 200 as a gRPC answer is, and the
    // gRPC status at the end of the line.
    let lines = logs.access_lines();
    let uh = line_for(&lines, "greeter:8080/demo.Greeter/Hello");
    assert!(uh.contains(" 200 UH "), "{uh}");
    assert!(uh.ends_with(" grpc_status=14"), "{uh}");
    let nr = line_for(&lines, "nobody:8080/demo.Greeter/Hello");
    assert!(
        nr.contains(" 200 NR ") && nr.ends_with(" grpc_status=14"),
        "{nr}"
    );

    // Istio's metrics say the same: response_code 200, gRPC status 14.
    let stats = get(
        &direct_client(),
        &format!("http://{}/stats/prometheus", client.admin_addr()),
    )
    .await
    .body;
    assert!(
        stats.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("response_code=\"200\"")
            && l.contains("grpc_response_status=\"14\"")
            && l.contains("response_flags=\"UH\"")),
        "{stats}"
    );

    // An HTTP/1.1 caller of the same service still gets Envoy's text and 503.
    let plain = get(
        &client_via(client.outbound_addr().unwrap()),
        "http://greeter:8080/",
    )
    .await;
    assert_eq!(
        (plain.status, plain.body.as_str()),
        (503, "no healthy upstream")
    );
    client.shutdown().await;
}

#[tokio::test]
async fn a_fault_abort_reaches_a_grpc_client_as_its_grpc_code() {
    let (_guard, logs) = Logs::capture();
    let (server, endpoint) = meshed_app("greeter-1", Duration::ZERO).await;
    let client = client_sidecar().await;
    let (mut vh, cluster) = service("greeter", vec![endpoint]);
    vh.routes[0].fault = Some(Fault {
        abort: Some(FaultAbort {
            http_status: 503,
            grpc_status: None,
            percentage: 100.0,
        }),
        delay: None,
    });
    client
        .apply_snapshot(snapshot(1, vec![(vh.clone(), cluster.clone())]))
        .unwrap();
    let channel = channel_via(client.outbound_addr().unwrap(), "greeter").await;

    let status = hello(&channel).await.expect_err("every call is aborted");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "fault filter abort");
    let lines = logs.access_lines();
    let line = line_for(&lines, "greeter:8080/demo.Greeter/Hello");
    assert!(
        line.contains(" 200 FI ") && line.ends_with(" grpc_status=14"),
        "{line}"
    );

    // 403 maps to PERMISSION_DENIED, as in Envoy.
    vh.routes[0]
        .fault
        .as_mut()
        .unwrap()
        .abort
        .as_mut()
        .unwrap()
        .http_status = 403;
    client
        .apply_snapshot(snapshot(2, vec![(vh.clone(), cluster.clone())]))
        .unwrap();
    let status = hello(&channel).await.expect_err("still aborted");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Without the fault the same channel gets the server's answer.
    vh.routes[0].fault = None;
    client
        .apply_snapshot(snapshot(3, vec![(vh, cluster)]))
        .unwrap();
    let answer = hello(&channel).await.expect("the call goes through");
    assert_eq!(&answer[..], b"greeter-1");
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_route_timeout_reaches_a_grpc_client_as_unavailable() {
    let (_guard, logs) = Logs::capture();
    let (server, endpoint) = meshed_app("slow-greeter", Duration::from_secs(5)).await;
    let client = client_sidecar().await;
    let (mut vh, cluster) = service("greeter", vec![endpoint]);
    vh.routes[0].timeout_ms = Some(100);
    client
        .apply_snapshot(snapshot(1, vec![(vh, cluster)]))
        .unwrap();
    let channel = channel_via(client.outbound_addr().unwrap(), "greeter").await;

    let status = hello(&channel)
        .await
        .expect_err("the route times out first");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "upstream request timeout");
    let lines = logs.access_lines();
    let line = line_for(&lines, "outbound POST greeter:8080/demo.Greeter/Hello");
    assert!(
        line.contains(" 200 UT ") && line.ends_with(" grpc_status=14"),
        "{line}"
    );
    client.shutdown().await;
    server.shutdown().await;
}

/// The access lines of both sidecars, once both have been written: each is
/// written when its response's trailers have gone, which for the client's
/// sidecar may be a moment after tonic has read them.
async fn lines_once_both(logs: &Logs, needles: [&str; 2]) -> Vec<String> {
    for _ in 0..1_000 {
        let lines = logs.access_lines();
        if needles.iter().all(|n| lines.iter().any(|l| l.contains(n))) {
            return lines;
        }
        tokio::task::yield_now().await;
    }
    logs.access_lines()
}

#[tokio::test]
async fn an_ok_call_logs_the_grpc_status_its_trailers_carry() {
    // An OK gRPC call answers 200 with no `grpc-status` in its headers: the
    // status comes last, in the trailers. Envoy writes its access log at the
    // end of the stream, so %GRPC_STATUS% shows it; so must ours, on both
    // sidecars, with telemetry on (the default) and off.
    for telemetry in [true, false] {
        tracing::info!(telemetry, "one OK call through two sidecars");
        let (_guard, logs) = Logs::capture();
        let app = grpc_app("greeter-1", Duration::ZERO).await;
        let mut server_config = Config::local_sidecar("greeter", app);
        server_config.telemetry = telemetry;
        let server = Proxy::start(server_config).await.unwrap();
        let endpoint = Endpoint {
            instance: "greeter-1".into(),
            address: server.advertise_addr().unwrap().to_string(),
            labels: Default::default(),
            identity: None,
            tls_mode: Default::default(),
        };
        let mut client_config = Config::local_sidecar("client", refused_addr().await);
        client_config.telemetry = telemetry;
        let client = Proxy::start(client_config).await.unwrap();
        client
            .apply_snapshot(snapshot(1, vec![service("greeter", vec![endpoint])]))
            .unwrap();
        let channel = channel_via(client.outbound_addr().unwrap(), "greeter").await;

        let answer = hello(&channel).await.expect("the call goes through");
        assert_eq!(&answer[..], b"greeter-1");

        let outbound = "outbound POST greeter:8080/demo.Greeter/Hello";
        let inbound = "inbound POST greeter:8080/demo.Greeter/Hello";
        let lines = lines_once_both(&logs, [outbound, inbound]).await;
        for needle in [outbound, inbound] {
            let line = line_for(&lines, needle);
            assert!(
                line.contains(" 200 - ") && line.ends_with(" grpc_status=0"),
                "telemetry {telemetry}: {line}"
            );
        }
        client.shutdown().await;
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_grpc_status_abort_reaches_a_grpc_client_as_written() {
    let (_guard, logs) = Logs::capture();
    let (server, endpoint) = meshed_app("greeter-1", Duration::ZERO).await;
    let client = client_sidecar().await;
    let (mut vh, cluster) = service("greeter", vec![endpoint]);
    // `fault: {abort: {grpcStatus: RESOURCE_EXHAUSTED, percentage: {value: 100}}}`
    // as mesh-control compiles it: the code's number and HTTP 200.
    vh.routes[0].fault = Some(Fault {
        abort: Some(FaultAbort {
            http_status: 200,
            grpc_status: Some(8),
            percentage: 100.0,
        }),
        delay: None,
    });
    client
        .apply_snapshot(snapshot(1, vec![(vh, cluster)]))
        .unwrap();
    let channel = channel_via(client.outbound_addr().unwrap(), "greeter").await;

    // The code written in the VirtualService, not one mapped from HTTP.
    let status = hello(&channel).await.expect_err("every call is aborted");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "fault filter abort");
    let lines = logs.access_lines();
    let line = line_for(&lines, "outbound POST greeter:8080/demo.Greeter/Hello");
    assert!(
        line.contains(" 200 FI ") && line.ends_with(" grpc_status=8"),
        "{line}"
    );
    let stats = get(
        &direct_client(),
        &format!("http://{}/stats/prometheus", client.admin_addr()),
    )
    .await
    .body;
    assert!(
        stats.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("response_code=\"200\"")
            && l.contains("grpc_response_status=\"8\"")
            && l.contains("response_flags=\"FI\"")),
        "{stats}"
    );

    // An HTTP/1.1 caller of the same route gets what Envoy's fault filter
    // answers a non-gRPC request with a gRPC abort: HTTP 200 and the text;
    // only the access log's FI tells it from the app's answer.
    let plain = get(
        &client_via(client.outbound_addr().unwrap()),
        "http://greeter:8080/plain",
    )
    .await;
    assert_eq!(
        (plain.status, plain.body.as_str()),
        (200, "fault filter abort")
    );
    let lines = logs.access_lines();
    let line = line_for(&lines, "outbound GET greeter:8080/plain");
    assert!(
        line.contains(" 200 FI ") && !line.contains("grpc_status=8"),
        "{line}"
    );
    client.shutdown().await;
    server.shutdown().await;
}
