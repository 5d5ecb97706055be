//! gRPC through two sidecars: HTTP/2 from the client app to its sidecar,
//! between the sidecars, and to the server apps. Calls on one client
//! connection spread over three endpoints (per request, within binomial
//! tolerance); unary and server-streaming responses arrive whole, with
//! their trailers (`grpc-status`, `grpc-message`) intact; the metrics name
//! the gRPC status.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::snapshot::{Endpoint, LoadBalancer};
use mesh_proxy::{Config, Proxy, ProxyHandle};
use mesh_testkit::assert_binomial;
use support::*;

/// One gRPC message on the wire: not compressed, 4-byte length, payload.
fn grpc_message(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u8(0);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out.freeze()
}

/// Split a gRPC response body into its messages' payloads.
fn grpc_messages(mut body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push(String::from_utf8_lossy(&body[5..5 + len]).into_owned());
        body = &body[5 + len..];
    }
    out
}

/// A gRPC server app named `name`: `/demo.Greeter/Hello` answers one
/// message (its name), `/demo.Greeter/Count` streams three, both with
/// `grpc-status: 0` in the trailers; `/demo.Greeter/Fail` answers status 5
/// (NOT_FOUND) with a message, in trailers too.
async fn grpc_app(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        assert_eq!(req.version(), http::Version::HTTP_2, "gRPC is HTTP/2");
                        let path = req.uri().path().to_string();
                        let _ = req.into_body().collect().await;
                        let (messages, status, message): (Vec<String>, &str, Option<&str>) =
                            match path.as_str() {
                                "/demo.Greeter/Hello" => (vec![name.to_string()], "0", None),
                                "/demo.Greeter/Count" => {
                                    ((1..=3).map(|i| format!("{name} {i}")).collect(), "0", None)
                                }
                                _ => (vec![], "5", Some("no such greeting")),
                            };
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", status.parse().unwrap());
                        if let Some(message) = message {
                            trailers.insert("grpc-message", message.parse().unwrap());
                        }
                        let frames: Vec<Result<Frame<Bytes>, Infallible>> = messages
                            .iter()
                            .map(|m| Ok(Frame::data(grpc_message(m.as_bytes()))))
                            .chain(std::iter::once(Ok(Frame::trailers(trailers))))
                            .collect();
                        let mut rsp =
                            http::Response::new(StreamBody::new(futures::stream::iter(frames)));
                        rsp.headers_mut()
                            .insert("content-type", "application/grpc".parse().unwrap());
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

/// A call's result: the messages and the trailers.
struct Call {
    messages: Vec<String>,
    trailers: http::HeaderMap,
}

async fn call(h2: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>, method: &str) -> Call {
    let req = http::Request::post(format!("http://greeter:8080/demo.Greeter/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_message(b"ray")))
        .unwrap();
    h2.ready().await.unwrap();
    let rsp = h2.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.headers()["content-type"], "application/grpc");
    let collected = rsp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    Call {
        messages: grpc_messages(&collected.to_bytes()),
        trailers,
    }
}

#[tokio::test]
async fn grpc_calls_on_one_connection_spread_over_three_endpoints_with_trailers_intact() {
    let names = ["greeter-1", "greeter-2", "greeter-3"];
    let mut servers: Vec<ProxyHandle> = Vec::new();
    let mut endpoints = Vec::new();
    for name in names {
        let app = grpc_app(name).await;
        let sidecar = Proxy::start(Config::local_sidecar("greeter", app))
            .await
            .unwrap();
        endpoints.push(Endpoint {
            instance: name.into(),
            address: sidecar.advertise_addr().unwrap().to_string(),
            labels: Default::default(),
            identity: None,
            tls_mode: Default::default(),
        });
        servers.push(sidecar);
    }
    let (vh, mut cluster) = service("greeter", endpoints);
    cluster.policy.load_balancer = LoadBalancer::Random;
    let client = Proxy::start(Config::local_sidecar("client", refused_addr().await))
        .await
        .unwrap();
    client
        .apply_snapshot(snapshot(1, vec![(vh, cluster)]))
        .unwrap();

    // One HTTP/2 connection from the client app, as a gRPC channel keeps.
    let tcp = tokio::net::TcpStream::connect(client.outbound_addr().unwrap())
        .await
        .unwrap();
    // As gRPC clients do: no Nagle delay between HEADERS and DATA.
    tcp.set_nodelay(true).unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);

    const N: u64 = 300;
    let mut answered_by: HashMap<String, u64> = HashMap::new();
    for _ in 0..N {
        let hello = call(&mut h2, "Hello").await;
        assert_eq!(hello.trailers["grpc-status"], "0");
        assert_eq!(hello.messages.len(), 1);
        *answered_by.entry(hello.messages[0].clone()).or_default() += 1;
    }
    for name in names {
        let count = answered_by.get(name).copied().unwrap_or(0);
        assert_binomial(
            &format!("calls answered by {name}"),
            count,
            N,
            1.0 / 3.0,
            4.0,
        );
    }

    // Server streaming: three messages, then the trailers.
    let counted = call(&mut h2, "Count").await;
    assert_eq!(counted.messages.len(), 3, "{:?}", counted.messages);
    assert!(
        counted.messages[2].ends_with(" 3"),
        "{:?}",
        counted.messages
    );
    assert_eq!(counted.trailers["grpc-status"], "0");

    // A failed call keeps its status and message.
    let failed = call(&mut h2, "Fail").await;
    assert!(failed.messages.is_empty());
    assert_eq!(failed.trailers["grpc-status"], "5");
    assert_eq!(failed.trailers["grpc-message"], "no such greeting");
    assert!(!h2.is_closed(), "every call rode the one connection");

    // The client sidecar's metrics name the gRPC status of each call.
    let stats = get(
        &direct_client(),
        &format!("http://{}/stats/prometheus", client.admin_addr()),
    )
    .await
    .body;
    assert!(
        stats.contains("grpc_response_status=\"5\""),
        "the failed call's status is counted: {stats}"
    );
    assert!(stats.contains("grpc_response_status=\"0\""), "{stats}");

    client.shutdown().await;
    for server in servers {
        server.shutdown().await;
    }
}
