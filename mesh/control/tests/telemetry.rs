//! The control plane's telemetry over real HTTP, in-process on 127.0.0.1:0:
//! the Zipkin collector, the metrics scraper and traffic graph, and the
//! dashboard's port.
//!
//! The proxies here are fakes: spans are POSTed by the test the way a
//! sidecar's reporter does, and each "proxy" is a small axum server that
//! serves hand-written Prometheus text on `/stats/prometheus`, announced to
//! the registry with its `adminAddress` like a real sidecar. That pins the
//! consumer side of `docs/telemetry-contract.md` without needing the proxy.

mod support;

use std::time::Duration;

use mesh_api::xds::ProxyMode;
use mesh_control::graph::StatRow;
use reqwest::StatusCode;
use serde_json::{Value, json};

use anyhow::anyhow;
use mesh_testkit::{CONVERGE, retry_until_ok, wait_for};
use support::{
    Control, FakeAdmin, gateway_calls_ui, hanging_admin, series, span, ui_calls_helloworld,
};

// === the collector ===

#[tokio::test]
async fn the_collector_speaks_zipkins_api() {
    let control = Control::start().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let spans = Value::Array(
        [
            gateway_calls_ui(trace),
            ui_calls_helloworld(trace, Some("00000000000000b1")),
        ]
        .concat(),
    );
    let response = control.post_spans(spans).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    assert_eq!(
        control.get("/api/v2/services").await,
        json!(["guestbook-ui", "helloworld-service", "ingressgateway"])
    );
    assert_eq!(
        control
            .get("/api/v2/spans?serviceName=helloworld-service")
            .await,
        json!(["helloworld-service:8080/"])
    );
    assert_eq!(
        control
            .get("/api/v2/remoteServices?serviceName=guestbook-ui")
            .await,
        json!(["helloworld-service"])
    );
    let traces = control
        .get("/api/v2/traces?serviceName=helloworld-service&limit=5")
        .await;
    assert_eq!(traces.as_array().unwrap().len(), 1);
    assert_eq!(traces[0].as_array().unwrap().len(), 4);
    assert_eq!(
        traces[0][0]["id"], "00000000000000a1",
        "spans in start order"
    );
    let none = control
        .get("/api/v2/traces?serviceName=sentiment-service")
        .await;
    assert_eq!(none, json!([]));
    // Zipkin's endTs/lookback are milliseconds: the spans started at 1 s.
    let old = control.get("/api/v2/traces?endTs=500&lookback=500").await;
    assert_eq!(old, json!([]));
    // (Zipkin's id rules, uppercase refused among them: tests/zipkin_api.rs.)
    let one = control.get(&format!("/api/v2/trace/{trace}")).await;
    assert_eq!(one.as_array().unwrap().len(), 4);

    // The waterfall, with the tree's depths.
    let waterfall = control
        .get(&format!("/api/v1/traces/{trace}/analysis"))
        .await;
    let depths: Vec<u64> = waterfall["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["depth"].as_u64().unwrap())
        .collect();
    assert_eq!(depths, [0, 1, 2, 3]);
    assert_eq!(waterfall["broken"], false);
    assert_eq!(
        waterfall["services"],
        json!(["ingressgateway", "guestbook-ui", "helloworld-service"])
    );

    // Errors a reporter can act on.
    let response = control
        .post_spans(json!([{"traceId": "zz", "id": "1"}]))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("span 0") && error.contains("traceId"),
        "{error}"
    );
    let response = control
        .http
        .get(control.url("/api/v2/trace/abcdef"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = control
        .http
        .get(control.url("/api/v2/spans"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_trace_split_by_an_app_that_did_not_forward_headers_is_reported_broken() {
    let control = Control::start().await;
    // guestbook-ui's app dropped the headers: its call to helloworld-service
    // started trace 2 while its sidecar's SERVER span of trace 1 was open.
    let (t1, t2) = (
        "a00000000000000000000000000000e1",
        "a00000000000000000000000000000e2",
    );
    control
        .post_spans(Value::Array(
            [ui_calls_helloworld(t2, None), gateway_calls_ui(t1)].concat(),
        ))
        .await;
    // The verdict waits until the traces settle (2 s without a new span).
    let broken: Vec<Value> =
        retry_until_ok("both traces to be reported broken", CONVERGE, || async {
            let list = control.get("/api/v1/traces?broken=true").await;
            let list = list.as_array().unwrap().clone();
            if list.len() == 2 {
                Ok(list)
            } else {
                Err(anyhow!("{} broken so far", list.len()))
            }
        })
        .await
        .unwrap();
    let new_trace = broken.iter().find(|t| t["traceId"] == t2).unwrap();
    let problem = &new_trace["problems"][0];
    assert_eq!(problem["kind"], "headersNotForwarded");
    assert_eq!(problem["relatedTraceId"], t1);
    let message = problem["message"].as_str().unwrap();
    assert!(
        message.contains("guestbook-ui's app did not forward the trace headers")
            && message.contains("between guestbook-ui and helloworld-service"),
        "{message}"
    );
    let old_trace = broken.iter().find(|t| t["traceId"] == t1).unwrap();
    assert_eq!(old_trace["problems"][0]["kind"], "brokenDownstream");
    // The waterfall marks the span where it broke.
    let waterfall = control.get(&format!("/api/v1/traces/{t2}/analysis")).await;
    assert_eq!(
        waterfall["spans"][0]["problems"],
        json!(["headersNotForwarded"])
    );
}

#[tokio::test]
async fn the_collector_keeps_a_bounded_number_of_traces_and_spans() {
    let control = Control::start().await;
    // 80 traces into a collector that keeps 50, then 30 spans into one
    // trace that keeps 20.
    for i in 0..80u64 {
        let trace = format!("{:032x}", i + 1);
        control
            .post_spans(json!([span(
                &trace,
                "0000000000000001",
                None,
                "SERVER",
                "a",
                1_000_000 + i,
                10
            )]))
            .await;
    }
    let big: Vec<Value> = (1..=30u64)
        .map(|i| {
            span(
                &format!("{:032x}", 999),
                &format!("{i:016x}"),
                None,
                "SERVER",
                "a",
                2_000_000 + i,
                10,
            )
        })
        .collect();
    control.post_spans(Value::Array(big)).await;
    let stats = control.get("/api/v1/collector").await;
    assert_eq!(stats["traces"], 50);
    assert_eq!(stats["tracesEvicted"], 31);
    assert_eq!(stats["spansDropped"], 10);
    // The newest traces are the ones kept.
    let kept = control.get("/api/v2/traces?limit=1000").await;
    assert_eq!(kept.as_array().unwrap().len(), 50);
    assert_eq!(kept[0].as_array().unwrap().len(), 20);
    let response = control
        .http
        .get(control.url(&format!("/api/v2/trace/{:032x}", 1)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "the oldest trace was evicted"
    );
}

// === the scraper and the graph ===

#[tokio::test]
async fn the_graph_follows_the_proxies_metrics_and_skips_one_that_hangs() {
    let control = Control::start().await;
    let gateway = FakeAdmin::start().await;
    let ui = FakeAdmin::start().await;
    let stuck = hanging_admin().await;
    control
        .announce(
            "gw-1",
            "ingressgateway",
            "v1",
            ProxyMode::Gateway,
            &gateway.addr,
        )
        .await;
    control
        .announce("ui-1", "guestbook-ui", "v1", ProxyMode::Sidecar, &ui.addr)
        .await;
    control
        .announce(
            "hw-1",
            "helloworld-service",
            "v1",
            ProxyMode::Sidecar,
            &stuck,
        )
        .await;
    control
        .announce(
            "hw-2",
            "helloworld-service",
            "v2",
            ProxyMode::Sidecar,
            "127.0.0.1:1",
        )
        .await;

    // The counters grow at a steady pace while the test watches: 50 rps
    // from the gateway, 40 rps to v1 and 10 rps (half of them 503s) to v2.
    // Each scrape reads counters computed from the clock as it arrives.
    let started = std::time::Instant::now();
    gateway.serve_with(move || {
        let n = |rate: f64| (rate * started.elapsed().as_secs_f64()) as u64;
        series(
            "source",
            "ingressgateway@v1",
            "guestbook-ui@v1",
            "200",
            n(50.0),
            3.0,
        )
    });
    ui.serve_with(move || {
        // One reading of the clock for every series of the page, as a
        // real proxy's page is one consistent snapshot of its counters.
        let t = started.elapsed().as_secs_f64();
        let n = |rate: f64| (rate * t) as u64;
        [
            series(
                "source",
                "guestbook-ui@v1",
                "helloworld-service@v1",
                "200",
                n(40.0),
                3.0,
            ),
            series(
                "source",
                "guestbook-ui@v1",
                "helloworld-service@v2",
                "200",
                n(5.0),
                30.0,
            ),
            series(
                "source",
                "guestbook-ui@v1",
                "helloworld-service@v2",
                "503",
                n(5.0),
                30.0,
            ),
            series(
                "destination",
                "ingressgateway@v1",
                "guestbook-ui@v1",
                "200",
                n(50.0),
                2.0,
            ),
        ]
        .concat()
    });

    // Wait (retried) only for the data to be there: three edges, each with
    // requests, once the scrapes span a full window (the first scrapes give
    // rates over less than the window). The rates are then measured once,
    // below: a rate retried until a fresh sample passes would hide a wrong one.
    let graph = wait_for(
        "the graph to show all three edges over a full window",
        CONVERGE,
        || async {
            let full = started.elapsed()
                >= Duration::from_secs(WINDOW_S) + SCRAPE_INTERVAL + support::SCRAPE_TIMEOUT;
            let graph = control
                .get(&format!("/api/v1/graph?window={WINDOW_S}"))
                .await;
            let edges = graph["edges"].as_array().unwrap();
            let all_busy =
                edges.len() == 3 && edges.iter().all(|e| e["requests"].as_f64() > Some(0.0));
            Ok((full && all_busy).then_some(graph))
        },
    )
    .await
    .unwrap();

    let rps = |target: &str| {
        graph["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["target"] == target)
            .and_then(|e| e["rps"].as_f64())
            .unwrap()
    };
    assert_rate("guestbook-ui@v1's rps", rps("guestbook-ui@v1"), 50.0);
    assert_rate(
        "helloworld-service@v1's rps",
        rps("helloworld-service@v1"),
        40.0,
    );
    assert_rate(
        "helloworld-service@v2's rps",
        rps("helloworld-service@v2"),
        10.0,
    );

    let edges = graph["edges"].as_array().unwrap();
    let edge = |target: &str| edges.iter().find(|e| e["target"] == target).unwrap();
    // The gateway reports its own edge; the destination's copy is not doubled.
    assert_eq!(edge("guestbook-ui@v1")["reporter"], "source");
    let v2 = edge("helloworld-service@v2");
    // Both of v2's counters come from one reading of the clock, so their
    // increases over any window are equal: exactly half are errors.
    let error_rate = v2["errorRate"].as_f64().unwrap();
    assert_eq!(error_rate, 0.5, "half of v2's answers are 503");
    // 30 ms requests: p99 inside (25, 50].
    let p99 = v2["p99Ms"].as_f64().unwrap();
    assert!(p99 > 25.0 && p99 <= 50.0, "{p99}");
    assert!(edge("helloworld-service@v1")["p99Ms"].as_f64().unwrap() <= 5.0);

    // Every live proxy is a node, idle or not; the gateway is marked.
    let nodes = graph["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4, "{nodes:#?}");
    let gateway_node = nodes
        .iter()
        .find(|n| n["workload"] == "ingressgateway")
        .unwrap();
    assert_eq!(gateway_node["kind"], "gateway");
    // The proxy that hangs and the one nobody listens for are reported, and
    // did not hold the others back.
    let failing: Vec<&str> = graph["scrapes"]["failing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["instance"].as_str().unwrap())
        .collect();
    assert_eq!(failing, ["hw-1", "hw-2"]);

    // `meshctl stat`'s numbers: one row per workload and version.
    let rows: Vec<StatRow> = serde_json::from_value(
        control
            .get(&format!("/api/v1/stat?window={WINDOW_S}"))
            .await,
    )
    .unwrap();
    let row = |w: &str, v: &str| {
        rows.iter()
            .find(|r| r.workload == w && r.version == v)
            .unwrap()
    };
    assert_eq!(row("helloworld-service", "v2").success_rate, Some(0.5));
    assert_eq!(row("helloworld-service", "v1").success_rate, Some(1.0));
    assert_eq!(row("helloworld-service", "v1").instances, 1);
    assert_rate(
        "meshctl stat's rps of guestbook-ui v1",
        row("guestbook-ui", "v1").rps,
        50.0,
    );
}

/// The graph's window in these tests, in seconds.
const WINDOW_S: u64 = 2;

/// How often `support::Control` scrapes the proxies (its settings).
const SCRAPE_INTERVAL: Duration = Duration::from_millis(100);

/// Check once that a rate the graph measured from the fakes' clock-driven
/// counters is `rps`, within what the measurement itself allows.
///
/// Nothing here is random (the fakes' counters are `rps * elapsed`, whole),
/// so the bound is not statistical; it comes from how a rate over a window is
/// taken. The graph divides a counter's increase (the edge's request count)
/// by the time between the two scrapes that bound the window: at most the
/// window, at least the window less one scrape interval and one scrape
/// timeout (a slower scrape fails). The count is off by under one request
/// (counters are whole), and each counter was read up to one scrape timeout
/// before its scrape was timestamped, which is up to `rps * timeout` more
/// or fewer requests. Dividing by the shortest span:
/// |measured - rps| <= (1 + rps * timeout) / (window - interval - timeout).
/// With a 2 s window, a 100 ms interval and the support's 300 ms scrape
/// timeout that is 10 rps at 50 rps and 2.5 rps at 10 rps: the timeout term
/// dominates, and a rate off by a third is still caught.
fn assert_rate(what: &str, measured: f64, rps: f64) {
    let timeout = support::SCRAPE_TIMEOUT.as_secs_f64();
    let shortest = WINDOW_S as f64 - SCRAPE_INTERVAL.as_secs_f64() - timeout;
    let bound = (1.0 + rps * timeout) / shortest;
    assert!(
        (measured - rps).abs() <= bound,
        "{what}: measured {measured:.3}, expected {rps} +/- {bound:.3} \
         (window {WINDOW_S} s, scrape interval {SCRAPE_INTERVAL:?}, timeout {:?})",
        support::SCRAPE_TIMEOUT
    );
}

// === the dashboard's port ===

#[tokio::test]
async fn the_dashboard_serves_its_page_and_the_same_api() {
    let control = Control::start().await;
    let url = control
        .handle
        .dashboard_url()
        .expect("Settings::local runs a dashboard");
    let info = control.get("/api/v1/dashboard").await;
    assert_eq!(info["url"], url.as_str());

    let page = control.http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("micromesh") && html.contains("dashboard.js"));
    for asset in ["dashboard.js", "dashboard.css"] {
        let response = control
            .http
            .get(format!("{url}{asset}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
    }
    // Same-origin API: what the page fetches is on its own port.
    for path in [
        "api/v1/graph",
        "api/v1/stat",
        "api/v1/routes",
        "api/v1/traces",
        "v1/services",
        "v1/analyze",
        "api/v2/services",
    ] {
        let response = control
            .http
            .get(format!("{url}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{path} on the dashboard port"
        );
    }
    // The page is not on the API port.
    let response = control
        .http
        .get(control.url("/dashboard.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_routes_view_shows_the_effective_split_and_the_analysis() {
    let control = Control::start().await;
    control
        .announce(
            "hw-1",
            "helloworld-service",
            "v1",
            ProxyMode::Sidecar,
            "127.0.0.1:1",
        )
        .await;
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld-service}
spec:
  hosts: [helloworld-service]
  http:
  - route:
    - destination: {host: helloworld-service, subset: v1}
      weight: 4
    - destination: {host: helloworld-service, subset: v2}
      weight: 1
"#;
    let response = control
        .http
        .post(control.url("/v1/config/apply"))
        .json(&json!({"files": [{"name": "canary.yaml", "content": yaml}]}))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
    let routes = control.get("/api/v1/routes").await;
    let split = &routes["virtualServices"][0]["rules"][0]["destinations"];
    assert_eq!(split[0]["percent"], 80.0);
    assert_eq!(split[1]["percent"], 20.0);
    // No DestinationRule defines the subsets: analysis says so, on the VS.
    let diagnostics = routes["virtualServices"][0]["diagnostics"]
        .as_array()
        .unwrap();
    assert!(!diagnostics.is_empty(), "{routes:#}");
}
