//! HTTP/2 reset amplification: a client that opens streams and resets them
//! a moment later (HEADERS, then RST_STREAM: the "rapid reset" pattern) must
//! not make the sidecar open upstream connections. Each endpoint has one
//! shared HTTP/2 connection (`h2.rs`); a reset stream cancels its request,
//! never the handshake every request waits for, and never starts another.
//!
//! The client is the `h2` crate itself, so the test controls each frame; the
//! upstream counts the TCP connections it accepts.

mod support;

use std::time::Duration;

use bytes::Bytes;
use mesh_proxy::{Config, Proxy};
use support::*;

/// Streams opened and reset, as in the report (3,000 in a second
/// made 578 upstream connections).
const STREAMS: usize = 3_000;
/// Streams opened together before they are reset.
const BATCH: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_after_their_headers_open_no_upstream_connections() {
    // The app takes a while, so every reset stream is still waiting for it
    // (or for the connection to it) when its client gives up.
    let upstream = Upstream::with_delay(
        "hw-1",
        std::sync::Arc::new(|_, _| (200, "hw-1".to_string())),
        Duration::from_millis(200),
    )
    .await;
    let sidecar = Proxy::start(Config::local_sidecar("client", refused_addr().await))
        .await
        .unwrap();
    sidecar
        .apply_snapshot(snapshot(1, vec![service("hw", vec![upstream.endpoint()])]))
        .unwrap();
    let outbound = sidecar.outbound_addr().unwrap();

    let mut client = h2_client(outbound).await;
    let mut opened = 0;
    while opened < STREAMS {
        let mut batch = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            let req = http::Request::get("http://hw:8080/slow").body(()).unwrap();
            // The server may have refused more streams (GOAWAY after many
            // resets is a fair defence): carry on over a new connection.
            client = match client.ready().await {
                Ok(client) => client,
                Err(_) => h2_client(outbound).await,
            };
            match client.send_request(req, false) {
                Ok((_response, stream)) => batch.push(stream),
                Err(_) => client = h2_client(outbound).await,
            }
            opened += 1;
        }
        // A few milliseconds after their HEADERS: the requests are in the
        // sidecar, waiting for the app or for a connection to it.
        tokio::time::sleep(Duration::from_millis(3)).await;
        for mut stream in batch {
            stream.send_reset(h2::Reason::CANCEL);
        }
    }
    tracing::info!(
        opened,
        reached_the_app = upstream.hits(),
        "every stream was opened and reset"
    );

    // A normal request afterwards is answered over the same one connection.
    let mut client = h2_client(outbound).await;
    let req = http::Request::get("http://hw:8080/hello").body(()).unwrap();
    client = client.ready().await.unwrap();
    let (response, _) = client.send_request(req, true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered within 10 s")
        .unwrap();
    let status = response.status();
    if status != 200 {
        let mut body = response.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            text.extend_from_slice(&chunk.unwrap_or_default());
        }
        panic!(
            "the request after the resets got {status}: {}",
            String::from_utf8_lossy(&text)
        );
    }

    assert_eq!(
        upstream.connections(),
        1,
        "{STREAMS} reset streams and one request reached the app over {} connections; \
         one shared HTTP/2 connection per endpoint was expected",
        upstream.connections()
    );
    sidecar.shutdown().await;
}

/// A raw HTTP/2 client (prior knowledge) to `addr`.
async fn h2_client(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp)
        .await
        .expect("the outbound listener speaks HTTP/2 with prior knowledge");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}
