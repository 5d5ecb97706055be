//! In-process tests of the walking skeleton: real sockets on 127.0.0.1:0,
//! proxies on static snapshots (no control plane), upstream apps that answer
//! with their name.

mod support;

use std::time::Duration;

use mesh_api::snapshot::*;
use mesh_proxy::{Config, Proxy};
use support::*;

async fn sidecar(snapshot: Option<Snapshot>) -> mesh_proxy::ProxyHandle {
    let app = refused_addr().await;
    let proxy = Proxy::start(Config::local_sidecar("client", app))
        .await
        .unwrap();
    if let Some(snapshot) = snapshot {
        proxy.apply_snapshot(snapshot).unwrap();
    }
    proxy
}

#[tokio::test]
async fn round_robin_takes_turns_over_three_upstreams() {
    let upstreams = [
        Upstream::start("hw-1").await,
        Upstream::start("hw-2").await,
        Upstream::start("hw-3").await,
    ];
    let endpoints = upstreams.iter().map(Upstream::endpoint).collect();
    let proxy = sidecar(Some(snapshot(1, vec![service("hw", endpoints)]))).await;
    let client = client_via(proxy.outbound_addr().unwrap());

    let mut order = Vec::new();
    for _ in 0..30 {
        let reply = get(&client, "http://hw:8080/hello").await;
        assert_eq!(reply.status, 200);
        order.push(reply.body);
    }
    for u in &upstreams {
        assert_eq!(u.hits(), 10, "{} got its turn every third request", u.name);
    }
    // Strict turns: every window of three requests saw all three upstreams.
    for window in order.chunks(3) {
        let mut names = window.to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 3, "{window:?}");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn requests_go_upstream_in_origin_form_with_the_apps_host_and_envoy_headers() {
    let upstream = Upstream::start("hw-1").await;
    let proxy = sidecar(Some(snapshot(
        1,
        vec![service("hw", vec![upstream.endpoint()])],
    )))
    .await;
    let client = client_via(proxy.outbound_addr().unwrap());

    let reply = get(&client, "http://hw:8080/hello/ray?x=1").await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers.contains_key("x-envoy-upstream-service-time"));
    let parts = upstream.last_request().unwrap();
    assert_eq!(
        parts.uri.to_string(),
        "/hello/ray?x=1",
        "origin form upstream"
    );
    assert_eq!(parts.headers["host"], "hw:8080", "the Host the app wrote");
    let id = parts.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID request id was added: {id}");
    assert!(!parts.headers.contains_key("proxy-connection"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn origin_form_with_a_host_header_is_routed_too() {
    let upstream = Upstream::start("hw-1").await;
    let proxy = sidecar(Some(snapshot(
        1,
        vec![service("hw", vec![upstream.endpoint()])],
    )))
    .await;
    let outbound = proxy.outbound_addr().unwrap();
    let reply = direct_client()
        .get(format!("http://{outbound}/hi"))
        .header("host", "hw")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.text().await.unwrap(), "hw-1");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_unknown_service_gets_503_nr_naming_it() {
    let (_guard, logs) = Logs::capture();
    let proxy = sidecar(Some(snapshot(1, vec![service("hw", vec![])]))).await;
    let client = client_via(proxy.outbound_addr().unwrap());
    let reply = get(&client, "http://helloworld-servic:8080/hello").await;
    assert_eq!(reply.status, 503);
    assert!(reply.body.contains("helloworld-servic"), "{}", reply.body);
    assert!(
        reply.body.contains("meshctl get services"),
        "{}",
        reply.body
    );
    let lines = logs.access_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("outbound GET helloworld-servic:8080/hello 503 NR")),
        "{lines:#?}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn before_any_snapshot_outbound_says_so() {
    let proxy = sidecar(None).await;
    let client = client_via(proxy.outbound_addr().unwrap());
    let reply = get(&client, "http://hw:8080/").await;
    assert_eq!(reply.status, 503);
    assert!(reply.body.contains("no config from the control plane yet"));
    let ready = get(
        &direct_client(),
        &format!("http://{}/ready", proxy.admin_addr()),
    )
    .await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("no config"), "{}", ready.body);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_refusing_endpoint_gives_503_uf_and_an_empty_cluster_503_uh() {
    let (_guard, logs) = Logs::capture();
    let refused = refused_addr().await;
    let dead = Endpoint {
        instance: "hw-dead".into(),
        address: refused.to_string(),
        labels: Default::default(),
        identity: None,
        tls_mode: Default::default(),
    };
    let proxy = sidecar(Some(snapshot(
        1,
        vec![service("hw", vec![dead]), service("empty", vec![])],
    )))
    .await;
    let client = client_via(proxy.outbound_addr().unwrap());

    let reply = get(&client, "http://hw:8080/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.body,
        "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
    );
    let reply = get(&client, "http://empty:8080/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, "no healthy upstream");

    let lines = logs.access_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" 503 UF ") && l.contains("hw-dead")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("empty:8080/ 503 UH ")),
        "{lines:#?}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_request_crosses_two_sidecars_to_the_app() {
    let (_guard, logs) = Logs::capture();
    let app = Upstream::start("hw-app").await;
    let server = Proxy::start(Config::local_sidecar("hw", app.addr))
        .await
        .unwrap();
    let endpoint = Endpoint {
        instance: server.instance().to_string(),
        address: server.advertise_addr().unwrap().to_string(),
        labels: Default::default(),
        identity: None,
        tls_mode: Default::default(),
    };
    // The server sidecar's own snapshot does not matter for inbound traffic,
    // but its /ready waits for one.
    server.apply_snapshot(snapshot(1, vec![])).unwrap();
    let client_side = sidecar(Some(snapshot(1, vec![service("hw", vec![endpoint])]))).await;

    let reply = get(
        &client_via(client_side.outbound_addr().unwrap()),
        "http://hw:8080/hello",
    )
    .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "hw-app"));
    let parts = app.last_request().unwrap();
    assert_eq!(parts.headers["host"], "hw:8080");

    let ready = get(
        &direct_client(),
        &format!("http://{}/ready", server.admin_addr()),
    )
    .await;
    assert_eq!(ready.status, 200, "{}", ready.body);

    let lines = logs.access_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("outbound GET hw:8080/hello 200 -")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("inbound GET hw:8080/hello 200 -")),
        "{lines:#?}"
    );
    client_side.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_sidecar_whose_app_is_down_is_not_ready() {
    let proxy = sidecar(Some(snapshot(1, vec![]))).await;
    let ready = get(
        &direct_client(),
        &format!("http://{}/ready", proxy.admin_addr()),
    )
    .await;
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains("MESH_APP_ADDR"), "{}", ready.body);
    // Its inbound listener answers like Envoy's inbound cluster would.
    let reply = direct_client()
        .get(format!("http://{}/", proxy.inbound_addr().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 503);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_bad_snapshot_is_rejected_and_the_last_good_one_stays() {
    let upstream = Upstream::start("hw-1").await;
    let proxy = sidecar(Some(snapshot(
        1,
        vec![service("hw", vec![upstream.endpoint()])],
    )))
    .await;

    let mut bad = snapshot(2, vec![service("hw", vec![upstream.endpoint()])]);
    bad.virtual_hosts[0].routes[0].destinations[0].cluster = "hw|v2".into();
    let err = proxy.apply_snapshot(bad).unwrap_err();
    assert!(err.to_string().contains("hw|v2"), "{err}");
    // Version 2 is applied in part (issue 15): its only virtual host is
    // rejected, so hw keeps version 1's route; everything else is version 2.
    let current = proxy.current_snapshot().unwrap();
    assert_eq!(current.version, 2);
    assert_eq!(
        current.virtual_hosts[0].routes[0].destinations[0].cluster,
        "hw"
    );

    let client = client_via(proxy.outbound_addr().unwrap());
    assert_eq!(get(&client, "http://hw:8080/").await.status, 200);

    let dump = get(
        &direct_client(),
        &format!("http://{}/config_dump", proxy.admin_addr()),
    )
    .await;
    let dump: serde_json::Value = serde_json::from_str(&dump.body).unwrap();
    assert_eq!(dump["version"], 2);
    assert_eq!(dump["lastRejected"]["version"], 2);
    assert!(
        dump["lastRejected"]["error"]
            .as_str()
            .unwrap()
            .contains("hw|v2")
    );
    assert_eq!(dump["snapshot"]["clusters"][0]["name"], "hw");
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_gateway_routes_users_by_host_and_404s_the_rest() {
    let (_guard, logs) = Logs::capture();
    let ui = Upstream::start("ui-1").await;
    let gateway = Proxy::start(Config::local_gateway()).await.unwrap();
    let (_, cluster) = service("guestbook-ui", vec![ui.endpoint()]);
    let mut snap = snapshot(1, vec![]);
    snap.clusters.push(cluster);
    snap.gateway = Some(GatewayConfig {
        gateways: vec!["default/guestbook".into()],
        virtual_hosts: vec![VirtualHost {
            name: "guestbook".into(),
            domains: vec!["guestbook.example.com".into()],
            routes: vec![HttpRoute {
                name: "ui".into(),
                destinations: vec![Destination {
                    cluster: "guestbook-ui".into(),
                    weight: 100,
                }],
                ..Default::default()
            }],
        }],
    });
    gateway.apply_snapshot(snap).unwrap();
    let addr = gateway.gateway_addr().unwrap();
    let client = direct_client();

    let ok = client
        .get(format!("http://{addr}/"))
        .header("host", "guestbook.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "ui-1");

    let missing = client
        .get(format!("http://{addr}/"))
        .header("host", "other.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let lines = logs.access_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("gateway GET other.example.com/ 404 NR")),
        "{lines:#?}"
    );

    let ready = get(&client, &format!("http://{}/ready", gateway.admin_addr())).await;
    assert_eq!(ready.status, 200, "a gateway has no app to wait for");
    gateway.shutdown().await;
}

#[tokio::test]
async fn endpoint_state_survives_a_snapshot_swap() {
    let upstreams = [Upstream::start("hw-1").await, Upstream::start("hw-2").await];
    let endpoints: Vec<_> = upstreams.iter().map(Upstream::endpoint).collect();
    let proxy = sidecar(Some(snapshot(1, vec![service("hw", endpoints.clone())]))).await;
    let client = client_via(proxy.outbound_addr().unwrap());

    // Odd number of requests, then a new version: round robin continues
    // where it was instead of starting over.
    for _ in 0..3 {
        assert_eq!(get(&client, "http://hw:8080/").await.status, 200);
    }
    proxy
        .apply_snapshot(snapshot(2, vec![service("hw", endpoints)]))
        .unwrap();
    for _ in 0..3 {
        assert_eq!(get(&client, "http://hw:8080/").await.status, 200);
    }
    assert_eq!(upstreams[0].hits(), 3);
    assert_eq!(upstreams[1].hits(), 3);
    tokio::time::timeout(Duration::from_secs(5), proxy.shutdown())
        .await
        .unwrap();
}
