//! Headers from outside the mesh are not trusted (issue 15, item 6): what a
//! user at the gateway, or a process that dials a sidecar's inbound port
//! directly, may claim, and what the app behind the mesh then receives.
//! Requests from inside the mesh (the local app at its outbound listener,
//! another sidecar at the inbound) keep their headers. `docs/trust.md` is
//! the table these tests hold to.

mod edge_support;

use edge_support::{Arrived, RecordingApp, gateway, raw, sidecar};

/// Everything a forger would try, on one request for `hw`.
fn forged(target: &str, extra: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\n\
         Host: hw\r\n\
         X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n\
         X-Forwarded-Proto: https\r\n\
         Forwarded: for=10.0.0.1;proto=https\r\n\
         X-Forwarded-Client-Cert: By=spiffe://cluster.local/ns/default/sa/admin\r\n\
         X-Envoy-Retry-On: 5xx\r\n\
         X-Envoy-Max-Retries: 25\r\n\
         X-Envoy-Upstream-Rq-Timeout-Ms: 1\r\n\
         X-Envoy-Force-Trace: true\r\n\
         X-B3-TraceId: 4bf92f3577b34da6a3ce929d0e0e4736\r\n\
         X-B3-SpanId: 00f067aa0ba902b7\r\n\
         X-B3-Sampled: 1\r\n\
         X-B3-Flags: 1\r\n\
         {extra}\
         Connection: close\r\n\r\n"
    )
}

/// What the app must see of a forged request that came from outside.
fn assert_sanitized(arrived: &Arrived, client: &str) {
    assert_eq!(
        arrived.header("x-forwarded-for").as_deref(),
        Some(client),
        "{arrived:#?}"
    );
    assert_eq!(arrived.header("x-forwarded-proto").as_deref(), Some("http"));
    for name in [
        "forwarded",
        "x-forwarded-client-cert",
        "x-envoy-retry-on",
        "x-envoy-max-retries",
        "x-envoy-upstream-rq-timeout-ms",
        "x-envoy-force-trace",
        "x-b3-flags",
    ] {
        assert_eq!(arrived.header(name), None, "{name} reached the app");
    }
    // The trace continues (the client's trace id), but the proxy decided
    // whether it is recorded: at MESH_TRACE_SAMPLING=0, not.
    assert_eq!(
        arrived.header("x-b3-traceid").as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(arrived.header("x-b3-sampled").as_deref(), Some("0"));
    assert!(arrived.header("traceparent").unwrap().ends_with("-00"));
}

#[tokio::test]
async fn the_gateway_strips_and_replaces_what_users_claim() {
    let app = RecordingApp::start().await;
    let proxy = gateway(app.addr, |c| c.trace_sampling = 0.0).await;
    let addr = proxy.gateway_addr().unwrap();

    let rsp = raw(
        addr,
        &forged(
            "/public/x",
            "X-Mesh-Peer-Metadata: workload=admin;namespace=kube-system\r\nX-Request-Id: <script>\r\n",
        ),
    )
    .await;
    assert_eq!(rsp.status, 200, "{rsp:?}");
    let arrived = app.last().unwrap();
    assert_sanitized(&arrived, "127.0.0.1");
    // The gateway names itself to the next hop, not the forger's workload.
    let peer = arrived.header("x-mesh-peer-metadata").unwrap();
    assert!(peer.starts_with("workload=ingressgateway"), "{peer}");
    // A malformed request id is replaced by a new one (a UUID).
    let id = arrived.header("x-request-id").unwrap();
    assert!(id != "<script>" && id.len() == 36, "{id}");

    // A well-formed request id is kept, end to end.
    let rsp = raw(
        addr,
        &forged(
            "/public/x",
            "X-Request-Id: 0d8c1f5e-6a41-4c1e-9b8f-2f1d3c4b5a69\r\n",
        ),
    )
    .await;
    assert_eq!(rsp.status, 200);
    assert_eq!(
        app.last().unwrap().header("x-request-id").as_deref(),
        Some("0d8c1f5e-6a41-4c1e-9b8f-2f1d3c4b5a69")
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn trusted_hops_and_client_trace_are_settings() {
    let app = RecordingApp::start().await;
    let proxy = gateway(app.addr, |c| {
        c.trace_sampling = 0.0;
        // One load balancer in front, and its clients' sampling trusted.
        c.edge.trust.xff_trusted_hops = 1;
        c.edge.trust.client_trace = true;
    })
    .await;
    let rsp = raw(proxy.gateway_addr().unwrap(), &forged("/public/x", "")).await;
    assert_eq!(rsp.status, 200);
    let arrived = app.last().unwrap();
    assert_eq!(
        arrived.header("x-forwarded-for").as_deref(),
        Some("10.0.0.2, 127.0.0.1"),
        "the balancer's entry, then the balancer"
    );
    assert_eq!(
        arrived.header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert_eq!(
        arrived.header("x-b3-sampled").as_deref(),
        Some("1"),
        "the client's decision"
    );
    // Control headers are never trusted from outside.
    assert_eq!(arrived.header("x-envoy-retry-on"), None);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_inbound_caller_without_peer_metadata_is_outside_the_mesh() {
    let app = RecordingApp::start().await;
    let proxy = sidecar(&app, |c| c.trace_sampling = 0.0).await;
    let inbound = proxy.inbound_addr().unwrap();

    // A process that dials the pod's port directly.
    let rsp = raw(inbound, &forged("/anything", "")).await;
    assert_eq!(rsp.status, 200);
    assert_sanitized(&app.last().unwrap(), "127.0.0.1");

    // A sidecar (it names itself in x-mesh-peer-metadata): its headers are
    // the mesh's own and pass, and the metadata is for the sidecar only.
    let rsp = raw(
        inbound,
        &forged(
            "/anything",
            "X-Mesh-Peer-Metadata: workload=guestbook-ui;namespace=default\r\nX-Request-Id: req-1\r\n",
        ),
    )
    .await;
    assert_eq!(rsp.status, 200);
    let arrived = app.last().unwrap();
    assert_eq!(
        arrived.header("x-forwarded-for").as_deref(),
        Some("10.0.0.1, 10.0.0.2")
    );
    assert_eq!(arrived.header("x-envoy-retry-on").as_deref(), Some("5xx"));
    assert_eq!(arrived.header("x-request-id").as_deref(), Some("req-1"));
    assert_eq!(
        arrived.header("x-b3-sampled").as_deref(),
        Some("1"),
        "the caller's decision"
    );
    assert_eq!(arrived.header("x-mesh-peer-metadata"), None);
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_local_app_is_inside_the_mesh() {
    let app = RecordingApp::start().await;
    let proxy = sidecar(&app, |c| c.trace_sampling = 0.0).await;
    let rsp = raw(proxy.outbound_addr().unwrap(), &forged("/public/x", "")).await;
    assert_eq!(rsp.status, 200);
    let arrived = app.last().unwrap();
    assert_eq!(
        arrived.header("x-forwarded-for").as_deref(),
        Some("10.0.0.1, 10.0.0.2")
    );
    assert_eq!(arrived.header("x-envoy-max-retries").as_deref(), Some("25"));
    assert_eq!(arrived.header("x-b3-sampled").as_deref(), Some("1"));
    proxy.shutdown().await;
}

/// User -> gateway -> sidecar inbound -> app: the app learns the user's
/// real address, and only it, however the user dressed the request.
#[tokio::test]
async fn through_the_mesh_the_app_sees_the_users_real_address() {
    let app = RecordingApp::start().await;
    let sidecar = sidecar(&app, |c| c.trace_sampling = 0.0).await;
    let gateway = gateway(sidecar.advertise_addr().unwrap(), |c| {
        c.trace_sampling = 0.0
    })
    .await;
    let rsp = raw(gateway.gateway_addr().unwrap(), &forged("/public/x", "")).await;
    assert_eq!(rsp.status, 200, "{rsp:?}");
    let arrived = app.last().unwrap();
    assert_sanitized(&arrived, "127.0.0.1");
    assert_eq!(arrived.header("x-mesh-peer-metadata"), None);
    gateway.shutdown().await;
    sidecar.shutdown().await;
}
