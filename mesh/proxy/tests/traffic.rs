//! Traffic management end to end, in process: real sockets on 127.0.0.1:0,
//! one sidecar on a static snapshot, upstream apps that answer with their
//! name (or fail, or dawdle, as each test needs).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_api::snapshot::*;
use mesh_proxy::{Config, Proxy, ProxyHandle};
use mesh_testkit::assert_binomial;
use support::*;

async fn sidecar(snapshot: Snapshot) -> ProxyHandle {
    let mut config = Config::local_sidecar("client", refused_addr().await);
    config.seed = Some(42);
    let proxy = Proxy::start(config).await.unwrap();
    proxy.apply_snapshot(snapshot).unwrap();
    proxy
}

fn cluster(name: &str, endpoints: Vec<Endpoint>) -> Cluster {
    Cluster {
        name: name.into(),
        service: "hw".into(),
        endpoints,
        ..Default::default()
    }
}

fn host(routes: Vec<HttpRoute>) -> VirtualHost {
    VirtualHost {
        name: "hw".into(),
        domains: vec!["hw".into(), "hw:8080".into()],
        routes,
    }
}

fn to(cluster: &str, weight: u32) -> Destination {
    Destination {
        cluster: cluster.into(),
        weight,
    }
}

fn route(destinations: Vec<Destination>) -> HttpRoute {
    HttpRoute {
        name: "default".into(),
        destinations,
        retries: RetryPolicy::none(),
        ..Default::default()
    }
}

fn snap(virtual_host: VirtualHost, clusters: Vec<Cluster>) -> Snapshot {
    Snapshot {
        version: 1,
        proxy: "client".into(),
        virtual_hosts: vec![virtual_host],
        clusters,
        gateway: None,
        inbound: Default::default(),
        trust_bundle: Vec::new(),
    }
}

#[tokio::test]
async fn a_refused_endpoint_is_retried_onto_a_live_one() {
    let (_guard, logs) = Logs::capture();
    let live = Upstream::start("hw-live").await;
    let dead = Endpoint {
        instance: "hw-dead".into(),
        address: refused_addr().await.to_string(),
        labels: Default::default(),
        identity: None,
        tls_mode: Default::default(),
    };
    let mut default = route(vec![to("hw", 100)]);
    default.retries = RetryPolicy::default(); // Istio's: connect-failure, 503, 2 retries
    let proxy = sidecar(snap(
        host(vec![default]),
        vec![cluster("hw", vec![dead, live.endpoint()])],
    ))
    .await;
    let client = client_via(proxy.outbound_addr().unwrap());
    for _ in 0..20 {
        let reply = get(&client, "http://hw:8080/").await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "hw-live"));
    }
    assert_eq!(live.hits(), 20);
    let lines = logs.access_lines();
    assert!(lines.iter().all(|l| l.contains(" 200 - ")), "{lines:#?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_80_20_canary_split_holds_over_a_thousand_requests() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let proxy = sidecar(snap(
        host(vec![route(vec![to("hw|v1", 80), to("hw|v2", 20)])]),
        vec![
            cluster("hw|v1", vec![v1.endpoint()]),
            cluster("hw|v2", vec![v2.endpoint()]),
        ],
    ))
    .await;
    let client = client_via(proxy.outbound_addr().unwrap());
    let n = 1_000;
    for _ in 0..n {
        assert_eq!(get(&client, "http://hw:8080/").await.status, 200);
    }
    assert_eq!(v1.hits() + v2.hits(), n);
    assert_binomial("requests to v1", v1.hits() as u64, n as u64, 0.8, 4.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_50_percent_abort_fails_half_the_requests() {
    let (_guard, logs) = Logs::capture();
    let v1 = Upstream::start("v1").await;
    let mut faulty = route(vec![to("hw", 100)]);
    faulty.fault = Some(Fault {
        abort: Some(FaultAbort {
            http_status: 500,
            grpc_status: None,
            percentage: 50.0,
        }),
        delay: None,
    });
    let proxy = sidecar(snap(
        host(vec![faulty]),
        vec![cluster("hw", vec![v1.endpoint()])],
    ))
    .await;
    let client = client_via(proxy.outbound_addr().unwrap());
    let n = 1_000;
    let mut aborted = 0;
    for _ in 0..n {
        let reply = get(&client, "http://hw:8080/").await;
        if reply.status == 500 {
            assert_eq!(reply.body, "fault filter abort");
            aborted += 1;
        }
    }
    assert_eq!(
        v1.hits(),
        n - aborted,
        "aborted requests never reach the app"
    );
    assert_binomial("aborted requests", aborted as u64, n as u64, 0.5, 4.0);
    let fi = logs
        .access_lines()
        .iter()
        .filter(|l| l.contains(" 500 FI "))
        .count();
    assert_eq!(fi, aborted);
    proxy.shutdown().await;
}

#[tokio::test]
async fn chrome_users_are_routed_to_v2_by_user_agent() {
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let mut chrome = route(vec![to("hw|v2", 100)]);
    chrome.name = "chrome".into();
    chrome.matches = vec![RouteMatch {
        headers: [(
            "user-agent".to_string(),
            StringMatch::Regex(".*Chrome.*".into()),
        )]
        .into(),
        ..Default::default()
    }];
    let proxy = sidecar(snap(
        host(vec![chrome, route(vec![to("hw|v1", 100)])]),
        vec![
            cluster("hw|v1", vec![v1.endpoint()]),
            cluster("hw|v2", vec![v2.endpoint()]),
        ],
    ))
    .await;
    let client = client_via(proxy.outbound_addr().unwrap());
    let ask = async |agent: &str| {
        client
            .get("http://hw:8080/")
            .header("user-agent", agent)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    for _ in 0..10 {
        assert_eq!(
            ask("Mozilla/5.0 AppleWebKit/537.36 Chrome/120.0.0.0 Safari/537.36").await,
            "v2"
        );
        assert_eq!(ask("Mozilla/5.0 Gecko/20100101 Firefox/121.0").await, "v1");
    }
    assert_eq!((v1.hits(), v2.hits()), (10, 10));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_delay_fault_slows_requests_by_at_least_the_delay() {
    let v1 = Upstream::start("v1").await;
    let delay = Duration::from_millis(60);
    let mut slow = route(vec![to("hw", 100)]);
    slow.fault = Some(Fault {
        delay: Some(FaultDelay {
            fixed_delay_ms: delay.as_millis() as u64,
            percentage: 100.0,
        }),
        abort: None,
    });
    let proxy = sidecar(snap(
        host(vec![slow]),
        vec![cluster("hw", vec![v1.endpoint()])],
    ))
    .await;
    let client = client_via(proxy.outbound_addr().unwrap());
    let mut durations = Vec::new();
    for _ in 0..11 {
        let start = Instant::now();
        assert_eq!(get(&client, "http://hw:8080/").await.status, 200);
        durations.push(start.elapsed());
    }
    durations.sort();
    assert!(
        durations[5] >= delay,
        "p50 {:?} < delay {delay:?}",
        durations[5]
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_route_timeout_answers_504_in_time() {
    let (_guard, logs) = Logs::capture();
    let sleepy = Upstream::with_delay(
        "sleepy",
        Arc::new(|_, _| (200, "late".into())),
        Duration::from_secs(3),
    )
    .await;
    let mut timed = route(vec![to("hw", 100)]);
    let timeout = Duration::from_millis(200);
    timed.timeout_ms = Some(timeout.as_millis() as u64);
    let proxy = sidecar(snap(
        host(vec![timed]),
        vec![cluster("hw", vec![sleepy.endpoint()])],
    ))
    .await;
    let client = client_via(proxy.outbound_addr().unwrap());
    let start = Instant::now();
    let reply = get(&client, "http://hw:8080/").await;
    let took = start.elapsed();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (504, "upstream request timeout")
    );
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(800),
        "took {took:?}"
    );
    assert!(logs.access_lines().iter().any(|l| l.contains(" 504 UT ")));
    proxy.shutdown().await;
}

#[tokio::test]
async fn retries_hide_an_endpoint_that_fails_half_its_requests() {
    let good1 = Upstream::start("good-1").await;
    let good2 = Upstream::start("good-2").await;
    let flaky = Upstream::with(
        "flaky",
        Arc::new(|_, n| {
            if n % 2 == 0 {
                (503, "flaky".into())
            } else {
                (200, "flaky".into())
            }
        }),
    )
    .await;
    let mut retried = route(vec![to("hw", 100)]);
    retried.retries = RetryPolicy {
        attempts: 3,
        per_try_timeout_ms: None,
        retry_on: vec!["5xx".into()],
        retriable_status_codes: vec![],
    };
    let proxy = sidecar(snap(
        host(vec![retried]),
        vec![cluster(
            "hw",
            vec![good1.endpoint(), good2.endpoint(), flaky.endpoint()],
        )],
    ))
    .await;
    let client = client_via(proxy.outbound_addr().unwrap());
    let n = 600;
    let mut ok = 0;
    for _ in 0..n {
        if get(&client, "http://hw:8080/").await.status == 200 {
            ok += 1;
        }
    }
    assert!(flaky.hits() > 0, "the flaky endpoint did take traffic");
    // No chance involved: requests go one at a time and the flaky endpoint
    // fails every other request it sees, so no request meets two failures,
    // let alone the four that would exhaust its tries. Every one succeeds.
    assert_eq!(ok, n, "{ok} of {n} succeeded");
    proxy.shutdown().await;
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint_and_lets_it_back() {
    let good = Upstream::start("good").await;
    let bad = Upstream::with("bad", Arc::new(|_, _| (500, "bad".into()))).await;
    let mut hw = cluster("hw", vec![good.endpoint(), bad.endpoint()]);
    // Long enough that the ten requests below always run inside it (they
    // take milliseconds; the test fails, never skips, if they did not), so
    // every one of them checks the ejection.
    let ejection = Duration::from_secs(2);
    hw.policy.outlier_detection = Some(OutlierDetection {
        consecutive_5xx_errors: 2,
        consecutive_gateway_errors: 0,
        interval_ms: 100,
        base_ejection_time_ms: ejection.as_millis() as u64,
        max_ejection_percent: 100,
    });
    let proxy = sidecar(snap(
        host(vec![route(vec![to("hw", 100)])]),
        vec![hw.clone()],
    ))
    .await;
    let client = client_via(proxy.outbound_addr().unwrap());

    // Round robin: the bad endpoint fails twice within four requests...
    // (taken before the requests, so the ejection is no older than this)
    let ejected_at = Instant::now();
    for _ in 0..4 {
        get(&client, "http://hw:8080/").await;
    }
    assert_eq!(bad.hits(), 2);
    // A new snapshot version keeps the ejection: the endpoint stays.
    let mut next = snap(host(vec![route(vec![to("hw", 100)])]), vec![hw]);
    next.version = 2;
    proxy.apply_snapshot(next).unwrap();
    // ...and is ejected: everything goes to the good one now.
    for i in 0..10 {
        let reply = get(&client, "http://hw:8080/").await;
        assert_eq!(reply.body, "good", "request {i} after the ejection");
    }
    let checked_within = ejected_at.elapsed();
    assert!(
        checked_within < ejection,
        "the checks took {checked_within:?}, past the {ejection:?} ejection: \
         they no longer show that the endpoint was out"
    );
    assert_eq!(bad.hits(), 2, "the ejected endpoint got no request");
    // After its ejection time it gets traffic again.
    wait_until(
        "the ejected endpoint returns",
        Duration::from_secs(5),
        async || {
            get(&client, "http://hw:8080/").await;
            Ok(bad.hits() > 2)
        },
    )
    .await
    .unwrap();
    assert!(ejected_at.elapsed() >= ejection);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_full_connection_pool_overflows_with_503_uo() {
    let (_guard, logs) = Logs::capture();
    let slow = Upstream::with_delay(
        "slow",
        Arc::new(|_, _| (200, "slow".into())),
        Duration::from_millis(800),
    )
    .await;
    let mut hw = cluster("hw", vec![slow.endpoint()]);
    hw.policy.connection_pool = ConnectionPool {
        max_connections: Some(1),
        http1_max_pending_requests: Some(1),
        max_requests_per_connection: None,
        http2_max_requests: None,
    };
    let proxy = sidecar(snap(host(vec![route(vec![to("hw", 100)])]), vec![hw])).await;
    let client = client_via(proxy.outbound_addr().unwrap());

    // Five at once: one gets the connection, one waits in the pending
    // queue, three overflow at once.
    let replies = futures::future::join_all((0..5).map(|_| get(&client, "http://hw:8080/"))).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let overflow: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!((ok, overflow.len()), (2, 3));
    assert!(
        overflow
            .iter()
            .all(|r| r.body.ends_with("reset reason: overflow"))
    );
    let uo = logs
        .access_lines()
        .iter()
        .filter(|l| l.contains(" 503 UO "))
        .count();
    assert_eq!(uo, 3);
    assert_eq!(slow.hits(), 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn http2_max_requests_caps_the_requests_in_flight_across_the_cluster() {
    let (_guard, logs) = Logs::capture();
    let slow = |name: &'static str| {
        Upstream::with_delay(
            name,
            Arc::new(move |_, _| (200, name.to_string())),
            Duration::from_millis(800),
        )
    };
    let (a, b) = (slow("a").await, slow("b").await);
    let mut hw = cluster("hw", vec![a.endpoint(), b.endpoint()]);
    // Istio's meaning: at most this many requests in flight to the
    // destination, whatever the connections (here unlimited).
    hw.policy.connection_pool.http2_max_requests = Some(2);
    let proxy = sidecar(snap(host(vec![route(vec![to("hw", 100)])]), vec![hw])).await;
    let client = client_via(proxy.outbound_addr().unwrap());

    // Five at once over two endpoints: two are in flight, three overflow at
    // once (503 UO), though each endpoint alone is under the limit.
    let replies = futures::future::join_all((0..5).map(|_| get(&client, "http://hw:8080/"))).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let overflow: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!((ok, overflow.len()), (2, 3));
    assert!(
        overflow
            .iter()
            .all(|r| r.body.ends_with("reset reason: overflow"))
    );
    assert_eq!(a.hits() + b.hits(), 2);
    let uo = logs
        .access_lines()
        .iter()
        .filter(|l| l.contains(" 503 UO "))
        .count();
    assert_eq!(uo, 3);
    assert!(
        logs.text().contains("connectionPool.http.http2MaxRequests"),
        "the proxy's log names the limit that tripped"
    );

    // The slots come back when the responses end: two at once pass again.
    let replies = futures::future::join_all((0..2).map(|_| get(&client, "http://hw:8080/"))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_mirror_gets_a_shadow_copy() {
    let v1 = Upstream::start("v1").await;
    let shadow = Upstream::start("shadow").await;
    let mut mirrored = route(vec![to("hw", 100)]);
    mirrored.mirror = Some(Mirror {
        cluster: "shadow".into(),
        percentage: 100.0,
    });
    let proxy = sidecar(snap(
        host(vec![mirrored]),
        vec![
            cluster("hw", vec![v1.endpoint()]),
            cluster("shadow", vec![shadow.endpoint()]),
        ],
    ))
    .await;
    let reply = get(
        &client_via(proxy.outbound_addr().unwrap()),
        "http://hw:8080/x",
    )
    .await;
    assert_eq!(reply.body, "v1", "the caller sees the primary's answer");
    wait_until(
        "the shadow copy arrives",
        Duration::from_secs(5),
        async || Ok(shadow.hits() == 1),
    )
    .await
    .unwrap();
    let parts = shadow.last_request().unwrap();
    assert_eq!(parts.headers["host"], "hw-shadow:8080");
    proxy.shutdown().await;
}

#[tokio::test]
async fn connections_are_kept_alive_and_retired_after_max_requests() {
    let v1 = Upstream::start("v1").await;
    let proxy = sidecar(snap(
        host(vec![route(vec![to("hw", 100)])]),
        vec![cluster("hw", vec![v1.endpoint()])],
    ))
    .await;
    let client = client_via(proxy.outbound_addr().unwrap());
    for _ in 0..10 {
        assert_eq!(get(&client, "http://hw:8080/").await.status, 200);
    }
    assert_eq!(v1.connections(), 1, "one pooled keep-alive connection");
    proxy.shutdown().await;

    let v2 = Upstream::start("v2").await;
    let mut hw = cluster("hw", vec![v2.endpoint()]);
    hw.policy.connection_pool.max_requests_per_connection = Some(2);
    let proxy = sidecar(snap(host(vec![route(vec![to("hw", 100)])]), vec![hw])).await;
    let client = client_via(proxy.outbound_addr().unwrap());
    for _ in 0..10 {
        assert_eq!(get(&client, "http://hw:8080/").await.status, 200);
    }
    assert_eq!(v2.connections(), 5, "maxRequestsPerConnection: 2");
    proxy.shutdown().await;
}
