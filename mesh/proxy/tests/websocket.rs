//! WebSockets cross the mesh: routed at the gateway and the client's
//! sidecar like any request, then spliced as a byte tunnel through the
//! gateway, sidecar A (outbound) and sidecar B (inbound) to an echo app. A
//! rule change while the tunnel is open does not cut it (new WebSockets
//! follow the new rules); each proxy logs the tunnel's duration and bytes
//! when it closes. `CONNECT` is still refused, saying what to do instead.

mod support;

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use mesh_api::snapshot::*;
use mesh_proxy::{Config, Proxy, ProxyHandle};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const HOST: &str = "chat.example.com";

/// A WebSocket app that echoes every text message.
async fn echo_app() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

fn route_to(domains: &[&str], cluster: &str) -> VirtualHost {
    VirtualHost {
        name: cluster.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes: vec![HttpRoute {
            name: "default".into(),
            destinations: vec![Destination {
                cluster: cluster.into(),
                weight: 100,
            }],
            ..Default::default()
        }],
    }
}

fn one_endpoint(name: &str, address: SocketAddr) -> Cluster {
    Cluster {
        name: name.into(),
        service: name.into(),
        endpoints: vec![Endpoint {
            instance: format!("{name}-1"),
            address: address.to_string(),
            labels: Default::default(),
            identity: None,
            tls_mode: Default::default(),
        }],
        ..Default::default()
    }
}

/// The gateway's snapshot: `HOST` to sidecar A's outbound listener, or,
/// with `to` = `None`, to a cluster with no endpoint (a rule that would
/// refuse a new WebSocket with 503 UH).
fn gateway_snapshot(version: u64, to: Option<SocketAddr>) -> Snapshot {
    let mut snap = snapshot(version, vec![]);
    snap.clusters.push(match to {
        Some(addr) => one_endpoint("chat", addr),
        None => Cluster {
            name: "chat".into(),
            service: "chat".into(),
            ..Default::default()
        },
    });
    snap.gateway = Some(GatewayConfig {
        gateways: vec!["default/chat".into()],
        virtual_hosts: vec![route_to(&[HOST], "chat")],
    });
    snap
}

/// Open a WebSocket to `HOST` through the gateway at `gateway`.
async fn open(
    gateway: &ProxyHandle,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    tokio_tungstenite::tungstenite::Error,
> {
    let addr = gateway.gateway_addr().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (ws, rsp) = tokio_tungstenite::client_async(format!("ws://{HOST}/echo"), tcp).await?;
    assert_eq!(rsp.status(), 101);
    Ok(ws)
}

async fn echo(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let reply = ws.next().await.expect("a reply").unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), text);
}

#[tokio::test]
async fn a_websocket_echoes_through_gateway_and_two_sidecars_and_outlives_a_rule_change() {
    let (_guard, logs) = Logs::capture();
    let (app, _app_task) = echo_app().await;
    let b = Proxy::start(Config::local_sidecar("chat", app))
        .await
        .unwrap();
    let a = Proxy::start(Config::local_sidecar("client", app))
        .await
        .unwrap();
    let mut a_snapshot = snapshot(1, vec![]);
    a_snapshot.virtual_hosts.push(route_to(&[HOST], "chat"));
    a_snapshot
        .clusters
        .push(one_endpoint("chat", b.advertise_addr().unwrap()));
    a.apply_snapshot(a_snapshot).unwrap();
    let gateway = Proxy::start(Config::local_gateway()).await.unwrap();
    gateway
        .apply_snapshot(gateway_snapshot(1, a.outbound_addr()))
        .unwrap();

    let mut ws = open(&gateway).await.expect("the WebSocket opens");
    echo(&mut ws, "hello through three proxies").await;

    // The rule changes: new WebSockets for HOST find no endpoint...
    gateway.apply_snapshot(gateway_snapshot(2, None)).unwrap();
    match open(&gateway).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(rsp)) => {
            assert_eq!(rsp.status(), 503, "the new rule applies to new requests")
        }
        other => panic!("a new WebSocket should be refused with 503, got {other:?}"),
    }
    // ...and the open one carries on: it is a tunnel now, not a request.
    echo(&mut ws, "still here after the rule change").await;
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);

    // One tunnel line per proxy, with the bytes each way.
    let tunnels = || {
        logs.access_lines()
            .into_iter()
            .filter(|l| l.contains(" tunnel "))
            .collect::<Vec<_>>()
    };
    wait_until(
        "every proxy logged its closed tunnel",
        std::time::Duration::from_secs(10),
        async || Ok(tunnels().len() >= 3),
    )
    .await
    .unwrap();
    let lines = tunnels();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    for direction in ["gateway", "outbound", "inbound"] {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("{direction} tunnel {HOST}/echo closed after")))
            .unwrap_or_else(|| panic!("no {direction} tunnel line in {lines:#?}"));
        let up: u64 = line
            .split_once("bytes_sent=")
            .and_then(|(_, rest)| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("bytes_sent in {line}"));
        // Two text frames (27 and 32 bytes of text, masked: 6-byte
        // headers) and a close frame went up.
        assert!(up >= 27 + 32 + 12, "{line}");
    }
    // The upgrade requests themselves were logged as 101s.
    assert!(
        logs.access_lines()
            .iter()
            .any(|l| l.contains(&format!("gateway GET {HOST}/echo 101 -"))),
        "{:#?}",
        logs.access_lines()
    );
    gateway.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn connect_is_still_refused_with_what_to_do_instead() {
    let sidecar = Proxy::start(Config::local_sidecar("client", refused_addr().await))
        .await
        .unwrap();
    sidecar.apply_snapshot(snapshot(1, vec![])).unwrap();
    let mut tcp = tokio::net::TcpStream::connect(sidecar.outbound_addr().unwrap())
        .await
        .unwrap();
    tcp.write_all(b"CONNECT hw:443 HTTP/1.1\r\nhost: hw:443\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("call the service as http://hw:443"),
        "{answer}"
    );
    sidecar.shutdown().await;
}
