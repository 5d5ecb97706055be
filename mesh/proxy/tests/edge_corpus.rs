//! The request corpus of issue 15: request heads with two authorities, odd
//! request targets, paths that climb out of their route, and transfer
//! codings, sent byte for byte through the gateway, a sidecar's outbound
//! and its inbound listener. For each, the recording app proves what
//! arrived: every case is refused, normalized, or passed as specified, and
//! routing and the app always see the same authority and path.
//!
//! Each listener is driven with raw sockets, so the test controls every
//! byte (no client library would send two `Host` headers).

mod edge_support;

use std::net::SocketAddr;

use edge_support::{RecordingApp, gateway, raw, sidecar};
use mesh_proxy::normalize::PathNormalization;

/// What must happen to one request.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Answered with this status at every listener; nothing reaches the app.
    Refused(u16),
    /// Reaches the app with this target, `Host` and body. The outbound and
    /// the gateway route by path: a target outside `/public` is 404 there
    /// and reaches nothing; the inbound does not route and passes it on.
    Arrives {
        target: &'static str,
        host: &'static str,
        body: &'static str,
    },
}

use Expect::*;

const fn at(target: &'static str) -> Expect {
    Arrives {
        target,
        host: "hw",
        body: "",
    }
}

/// The corpus: name, the bytes sent, what must happen.
const CORPUS: &[(&str, &str, Expect)] = &[
    // --- the baseline ---
    (
        "origin form",
        "GET /public/x HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        at("/public/x"),
    ),
    // --- Host and authority (RFC 9112 3.2, RFC 9110 7.2) ---
    (
        "absolute form: the target's authority replaces Host",
        "GET http://hw/public/x HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        at("/public/x"),
    ),
    (
        "absolute form without Host",
        "GET http://hw/public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        at("/public/x"),
    ),
    (
        "two Host headers, even equal",
        "GET /public/x HTTP/1.1\r\nHost: hw\r\nHost: hw\r\nConnection: close\r\n\r\n",
        Refused(400),
    ),
    (
        "two different Host headers",
        "GET /public/x HTTP/1.1\r\nHost: hw\r\nHost: admin\r\nConnection: close\r\n\r\n",
        Refused(400),
    ),
    (
        "no Host on HTTP/1.1",
        "GET /public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
        Refused(400),
    ),
    (
        "userinfo in Host",
        "GET /public/x HTTP/1.1\r\nHost: hw@admin\r\nConnection: close\r\n\r\n",
        Refused(400),
    ),
    (
        "userinfo in an absolute target",
        "GET http://admin@hw/public/x HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        Refused(400),
    ),
    (
        "a port that is no port",
        "GET /public/x HTTP/1.1\r\nHost: hw:99999\r\nConnection: close\r\n\r\n",
        Refused(400),
    ),
    (
        "authority form outside CONNECT",
        "GET hw:8080 HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        Refused(400),
    ),
    (
        "a scheme the mesh does not carry",
        "GET ftp://hw/public/x HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        Refused(400),
    ),
    (
        "Connection: host does not remove Host",
        "GET /public/x HTTP/1.1\r\nHost: hw\r\nConnection: close, host\r\n\r\n",
        at("/public/x"),
    ),
    // --- request targets that are not paths ---
    (
        "asterisk form outside OPTIONS",
        "GET * HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        Refused(400),
    ),
    (
        "asterisk form for OPTIONS",
        "OPTIONS * HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        at("*"),
    ),
    (
        "a query without a path",
        "GET ?x=1 HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        Refused(400),
    ),
    // --- paths (Istio's BASE normalization) ---
    (
        "dot-dot out of /public",
        "GET /public/../admin HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        at("/admin"),
    ),
    (
        "encoded dot-dot",
        "GET /public/%2e%2e/admin HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        at("/admin"),
    ),
    (
        "encoded dot-dot, upper case",
        "GET /public/%2E%2E/admin HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        at("/admin"),
    ),
    (
        "backslashes",
        "GET /public\\..\\admin HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        at("/admin"),
    ),
    (
        "dot-dot in an absolute target",
        "GET http://hw/public/../admin HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        at("/admin"),
    ),
    (
        "dot segments that stay inside /public",
        "GET /public/./a/../b HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        at("/public/b"),
    ),
    (
        "an encoded unreserved letter",
        "GET /%70ublic/x HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        at("/public/x"),
    ),
    (
        "double slash inside (kept under BASE)",
        "GET /public//x HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        at("/public//x"),
    ),
    (
        "double slash first (kept under BASE, so no /public route)",
        "GET //public/x HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        at("//public/x"),
    ),
    (
        "an encoded slash is data (kept under BASE)",
        "GET /public/a%2Fb HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        at("/public/a%2Fb"),
    ),
    (
        "an encoded slash after dot-dot is one segment",
        "GET /public/%2e%2e%2Fadmin HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        at("/public/..%2Fadmin"),
    ),
    (
        "the query is never normalized",
        "GET /public/x?next=/../admin HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        at("/public/x?next=/../admin"),
    ),
    (
        "a broken escape",
        "GET /public/%zz HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n",
        Refused(400),
    ),
    // --- transfer codings (RFC 9112 6.1) ---
    (
        "chunked",
        "POST /public/x HTTP/1.1\r\nHost: hw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Arrives {
            target: "/public/x",
            host: "hw",
            body: "hello",
        },
    ),
    (
        "gzip, chunked: the body would lose its gzip meaning",
        "POST /public/x HTTP/1.1\r\nHost: hw\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Refused(501),
    ),
    (
        "an unknown coding before chunked",
        "POST /public/x HTTP/1.1\r\nHost: hw\r\nTransfer-Encoding: x-squash, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Refused(501),
    ),
    (
        "chunked twice",
        "POST /public/x HTTP/1.1\r\nHost: hw\r\nTransfer-Encoding: chunked, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Refused(501),
    ),
    (
        "gzip and chunked on two lines",
        "POST /public/x HTTP/1.1\r\nHost: hw\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Refused(501),
    ),
    // hyper refuses these before the proxy sees them (RFC 9112 6.3: the
    // body's length cannot be known), with 400.
    (
        "a coding that does not end in chunked (hyper)",
        "POST /public/x HTTP/1.1\r\nHost: hw\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\nhello",
        Refused(400),
    ),
    (
        "chunked, then gzip on a later line (hyper)",
        "POST /public/x HTTP/1.1\r\nHost: hw\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Refused(400),
    ),
    (
        "Transfer-Encoding on HTTP/1.0 (hyper)",
        "POST /public/x HTTP/1.0\r\nHost: hw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Refused(400),
    ),
    (
        "Content-Length and chunked: chunked frames it, nothing smuggled",
        "POST /public/x HTTP/1.1\r\nHost: hw\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Arrives {
            target: "/public/x",
            host: "hw",
            body: "hello",
        },
    ),
];

/// Run the whole corpus through one listener; `routes` says whether the
/// listener routes by path (outbound, gateway) or not (inbound).
async fn run_corpus(listener: &str, addr: SocketAddr, routes: bool, app: &RecordingApp) {
    for (name, request, expect) in CORPUS {
        let before = app.count();
        let rsp = raw(addr, request).await;
        let arrived = (app.count() > before).then(|| app.last().unwrap());
        let context = format!("{listener}: {name}: {request:?} -> {rsp:?}");
        match *expect {
            Refused(status) => {
                assert_eq!(rsp.status, status, "{context}");
                assert!(arrived.is_none(), "{context}: reached the app: {arrived:?}");
                // Our refusals say why; hyper's own are bare.
                if status == 501 {
                    assert!(rsp.body.contains("chunked` alone"), "{context}");
                }
            }
            Arrives { target, host, body } => {
                if routes && !target.starts_with("/public") {
                    // Normalized, then matched against the route table:
                    // nothing under /public, so nothing is sent.
                    assert_eq!(rsp.status, 404, "{context}");
                    assert!(
                        rsp.body
                            .contains(&format!("matches {}", target.split('?').next().unwrap())),
                        "the 404 names the normalized path: {context}"
                    );
                    assert!(arrived.is_none(), "{context}: reached the app: {arrived:?}");
                    continue;
                }
                assert_eq!(rsp.status, 200, "{context}");
                let arrived = arrived.unwrap_or_else(|| panic!("{context}: nothing arrived"));
                assert_eq!(arrived.target, target, "{context}");
                assert_eq!(arrived.header("host").as_deref(), Some(host), "{context}");
                assert_eq!(arrived.body, body.as_bytes(), "{context}");
                assert_eq!(
                    arrived.header("transfer-encoding").as_deref(),
                    (!body.is_empty()).then_some("chunked"),
                    "only the proxy's own framing: {context}"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_corpus_through_a_sidecars_outbound() {
    let app = RecordingApp::start().await;
    let proxy = sidecar(&app, |_| {}).await;
    run_corpus("outbound", proxy.outbound_addr().unwrap(), true, &app).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_corpus_through_a_sidecars_inbound() {
    let app = RecordingApp::start().await;
    let proxy = sidecar(&app, |_| {}).await;
    run_corpus("inbound", proxy.inbound_addr().unwrap(), false, &app).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_corpus_through_the_gateway() {
    let app = RecordingApp::start().await;
    let proxy = gateway(app.addr, |_| {}).await;
    run_corpus("gateway", proxy.gateway_addr().unwrap(), true, &app).await;
    proxy.shutdown().await;
}

/// Istio's other normalization choices change what routes and arrives.
#[tokio::test]
async fn path_normalization_follows_the_setting() {
    let app = RecordingApp::start().await;
    let cases: &[(PathNormalization, &str, Option<&str>)] = &[
        // NONE: the old behaviour, routed and sent as written.
        (
            PathNormalization::None,
            "/public/../admin",
            Some("/public/../admin"),
        ),
        (
            PathNormalization::None,
            "/public/%2e%2e/admin",
            Some("/public/%2e%2e/admin"),
        ),
        // MERGE_SLASHES: `//` merged, encoded slashes still data.
        (
            PathNormalization::MergeSlashes,
            "//public//x",
            Some("/public/x"),
        ),
        (
            PathNormalization::MergeSlashes,
            "/public/a%2Fb",
            Some("/public/a%2Fb"),
        ),
        // DECODE_AND_MERGE_SLASHES: `%2F` and `%5C` are slashes too.
        (
            PathNormalization::DecodeAndMergeSlashes,
            "/public/a%2Fb",
            Some("/public/a/b"),
        ),
        (
            PathNormalization::DecodeAndMergeSlashes,
            "/public%2F..%2Fadmin",
            None,
        ),
        (
            PathNormalization::DecodeAndMergeSlashes,
            "/public%5C%2e%2e%5Cadmin",
            None,
        ),
    ];
    for (mode, path, arrives) in cases {
        let proxy = sidecar(&app, |config| config.edge.path_normalization = *mode).await;
        let before = app.count();
        let request = format!("GET {path} HTTP/1.1\r\nHost: hw\r\nConnection: close\r\n\r\n");
        let rsp = raw(proxy.outbound_addr().unwrap(), &request).await;
        match arrives {
            Some(target) => {
                assert_eq!(rsp.status, 200, "{mode} {path}: {rsp:?}");
                assert_eq!(app.last().unwrap().target, *target, "{mode} {path}");
            }
            None => {
                assert_eq!(rsp.status, 404, "{mode} {path}: {rsp:?}");
                assert_eq!(app.count(), before, "{mode} {path}: reached the app");
            }
        }
        proxy.shutdown().await;
    }
}

/// A refusal closes an HTTP/1 connection (the client's framing cannot be
/// trusted), and says so.
#[tokio::test]
async fn a_refusal_closes_the_connection() {
    let app = RecordingApp::start().await;
    let proxy = sidecar(&app, |_| {}).await;
    // No `Connection: close` from the client: the proxy closes after its
    // answer, so `raw` sees the end of the stream.
    let rsp = raw(
        proxy.outbound_addr().unwrap(),
        "GET /public/x HTTP/1.1\r\nHost: hw\r\nHost: admin\r\n\r\n",
    )
    .await;
    assert_eq!(rsp.status, 400);
    assert!(
        rsp.head.to_ascii_lowercase().contains("connection: close"),
        "{rsp:?}"
    );
    assert!(rsp.body.contains("2 Host headers"), "{rsp:?}");
    proxy.shutdown().await;
}

/// HTTP/2: `:authority` and `host` must agree; when they do, the app sees
/// one authority. Paths are normalized as on HTTP/1.
#[tokio::test]
async fn http2_authority_and_host() {
    let app = RecordingApp::start().await;
    let proxy = sidecar(&app, |_| {}).await;
    let tcp = tokio::net::TcpStream::connect(proxy.outbound_addr().unwrap())
        .await
        .unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);

    assert_eq!(
        h2_get(&mut client, "http://hw/public/x", Some("HW:80")).await,
        200,
        "the same authority"
    );
    let arrived = app.last().unwrap();
    assert_eq!(arrived.version, http::Version::HTTP_2);
    assert_eq!(arrived.header("host"), None, "host dropped for :authority");
    assert_eq!(arrived.target, "http://hw/public/x");

    let before = app.count();
    assert_eq!(
        h2_get(&mut client, "http://hw/public/x", Some("admin")).await,
        400,
        "two authorities"
    );
    assert_eq!(
        h2_get(&mut client, "http://hw/public/%2e%2e/admin", None).await,
        404,
        "normalized"
    );
    assert_eq!(app.count(), before, "neither reached the app");
    proxy.shutdown().await;
}

/// One HTTP/2 GET on `client`'s connection; its status.
async fn h2_get(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    uri: &str,
    host: Option<&str>,
) -> u16 {
    let mut req = http::Request::get(uri);
    if let Some(host) = host {
        req = req.header("host", host);
    }
    let mut ready = client.clone().ready().await.unwrap();
    let (rsp, _) = ready.send_request(req.body(()).unwrap(), true).unwrap();
    rsp.await.unwrap().status().as_u16()
}
