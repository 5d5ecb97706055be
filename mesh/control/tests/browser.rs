//! The dashboard in a real browser: Debian's `chromium`, driven through
//! `chromedriver` (package `chromium-driver`) over WebDriver with the
//! fantoccini crate.
//!
//! The control plane runs in-process; the proxies it watches are fakes
//! whose `/stats/prometheus` counters grow at known rates, and the traces
//! are posted by the test the way sidecars report them (Zipkin v2 JSON).
//! The page must show what a learner looks for: the guestbook-ui ->
//! helloworld-service edge with a live rate, v2's failures in red, the
//! 80/20 split of the routes, and a trace's waterfall, with a broken chain
//! highlighted. Screenshots land in `target/test-output/`.
//!
//! Missing chromium or chromedriver fails the test with the packages to
//! install: a browser test that skips itself would prove nothing.

mod support;

use std::time::Duration;

use fantoccini::Locator;
use mesh_api::xds::ProxyMode;
use serde_json::json;

use support::browser::{Browser, PAGE_TIMEOUT};
use support::{Control, FakeAdmin, calls, series, span};

// === the test ===

const CANARY: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: helloworld-service}
spec:
  host: helloworld-service
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: helloworld-service}
spec:
  hosts: [helloworld-service]
  http:
  - route:
    - destination: {host: helloworld-service, subset: v1}
      weight: 80
    - destination: {host: helloworld-service, subset: v2}
      weight: 20
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_graph_routes_and_a_trace_waterfall() {
    let control = Control::start().await;
    let dashboard = control
        .handle
        .dashboard_url()
        .expect("a dashboard on a free port");

    // Four fake proxies: the gateway, guestbook-ui, helloworld v1 and v2.
    let (gateway, ui) = (FakeAdmin::start().await, FakeAdmin::start().await);
    let (hw1, hw2) = (FakeAdmin::start().await, FakeAdmin::start().await);
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
            "hw-v1-1",
            "helloworld-service",
            "v1",
            ProxyMode::Sidecar,
            &hw1.addr,
        )
        .await;
    control
        .announce(
            "hw-v2-1",
            "helloworld-service",
            "v2",
            ProxyMode::Sidecar,
            &hw2.addr,
        )
        .await;
    control.apply(CANARY).await;

    // Load, as the counters show it: 20 rps in, split 80/20, and half of
    // v2's answers are 503s (a fault the learner should see in red).
    let started = std::time::Instant::now();
    let pump = tokio::spawn(async move {
        loop {
            let n = |rate: f64| (rate * started.elapsed().as_secs_f64()) as u64;
            gateway.set(series(
                "source",
                "ingressgateway@v1",
                "guestbook-ui@v1",
                "200",
                n(20.0),
                4.0,
            ));
            ui.set(
                [
                    series(
                        "source",
                        "guestbook-ui@v1",
                        "helloworld-service@v1",
                        "200",
                        n(16.0),
                        2.0,
                    ),
                    series(
                        "source",
                        "guestbook-ui@v1",
                        "helloworld-service@v2",
                        "200",
                        n(2.0),
                        20.0,
                    ),
                    series(
                        "source",
                        "guestbook-ui@v1",
                        "helloworld-service@v2",
                        "503",
                        n(2.0),
                        20.0,
                    ),
                ]
                .concat(),
            );
            hw1.set(series(
                "destination",
                "guestbook-ui@v1",
                "helloworld-service@v1",
                "200",
                n(16.0),
                1.0,
            ));
            hw2.set(series(
                "destination",
                "guestbook-ui@v1",
                "helloworld-service@v2",
                "200",
                n(2.0),
                19.0,
            ));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // Traces: one whole request, and one an app split by not forwarding
    // the trace headers.
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let whole = "0af7651916cd43dd8448eb211c80319c";
    let (before, after) = (
        "000000000000000000000000000000b1",
        "000000000000000000000000000000b2",
    );
    let t = now_us - 2_000_000;
    let response = control
        .post_spans(json!([
            calls(
                span(
                    whole,
                    "00000000000000a1",
                    None,
                    "CLIENT",
                    "ingressgateway",
                    t,
                    9_000
                ),
                "guestbook-ui"
            ),
            span(
                whole,
                "00000000000000a2",
                Some("00000000000000a1"),
                "SERVER",
                "guestbook-ui",
                t + 300,
                8_400
            ),
            calls(
                span(
                    whole,
                    "00000000000000a3",
                    Some("00000000000000a2"),
                    "CLIENT",
                    "guestbook-ui",
                    t + 800,
                    5_000
                ),
                "helloworld-service"
            ),
            span(
                whole,
                "00000000000000a4",
                Some("00000000000000a3"),
                "SERVER",
                "helloworld-service",
                t + 1_100,
                4_400
            ),
            calls(
                span(
                    before,
                    "00000000000000c1",
                    None,
                    "CLIENT",
                    "ingressgateway",
                    t + 50_000,
                    9_000
                ),
                "guestbook-ui"
            ),
            span(
                before,
                "00000000000000c2",
                Some("00000000000000c1"),
                "SERVER",
                "guestbook-ui",
                t + 50_300,
                8_400
            ),
            calls(
                span(
                    after,
                    "00000000000000c3",
                    None,
                    "CLIENT",
                    "guestbook-ui",
                    t + 50_800,
                    5_000
                ),
                "helloworld-service"
            ),
            span(
                after,
                "00000000000000c4",
                Some("00000000000000c3"),
                "SERVER",
                "helloworld-service",
                t + 51_100,
                4_400
            ),
        ]))
        .await;
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);

    let browser = Browser::start().await;

    // --- Traffic: the edge from guestbook-ui to helloworld v1 is live.
    browser.goto(&format!("{dashboard}#traffic")).await;
    let edge_css = r#"g.edge[data-source="guestbook-ui@v1"][data-target="helloworld-service@v1"]"#;
    let rps = browser.edge_rps(edge_css, PAGE_TIMEOUT).await;
    assert!(
        rps > 5.0 && rps < 30.0,
        "16 rps go to v1; the page says {rps}"
    );
    // v2 fails half the time: its edge is drawn as failing, and says so.
    let v2 = r#"g.edge.bad[data-source="guestbook-ui@v1"][data-target="helloworld-service@v2"]"#;
    browser.element(v2).await;
    let labels = browser.element("#graph").await.text().await.unwrap();
    assert!(
        labels.contains("rps") && labels.contains("% err") && labels.contains("p99"),
        "{labels}"
    );
    let shot = browser.screenshot("dashboard.png").await;

    // --- Services: every version with its numbers.
    browser.goto(&format!("{dashboard}#services")).await;
    browser
        .element(r#"#services-table tr[data-service="helloworld-service"][data-version="v2"]"#)
        .await;

    // --- Routes: the 80/20 split, normalised to percent.
    browser.goto(&format!("{dashboard}#routes")).await;
    let split = browser
        .element(r#"[data-virtual-service="helloworld-service"] .split"#)
        .await;
    let parts = split
        .find_all(Locator::Css("div[data-percent]"))
        .await
        .unwrap();
    let mut percents = Vec::new();
    for part in parts {
        percents.push(part.attr("data-percent").await.unwrap().unwrap());
    }
    assert_eq!(percents, ["80.0", "20.0"]);

    // --- Traces: open the whole trace from the list; its waterfall has
    // every hop, indented by depth.
    browser.goto(&format!("{dashboard}#traces")).await;
    browser
        .element(&format!(r#"#trace-list tr[data-trace="{whole}"]"#))
        .await
        .click()
        .await
        .unwrap();
    browser.element("#waterfall .span-row").await;
    let rows = browser
        .client()
        .find_all(Locator::Css("#waterfall .span-row"))
        .await
        .unwrap();
    let mut services = Vec::new();
    for row in &rows {
        services.push(row.attr("data-service").await.unwrap().unwrap_or_default());
    }
    assert_eq!(
        services,
        [
            "ingressgateway",
            "guestbook-ui",
            "guestbook-ui",
            "helloworld-service"
        ]
    );
    let waterfall_shot = browser.screenshot("dashboard-trace.png").await;

    // --- A broken chain is highlighted, with what to fix.
    browser.goto(&format!("{dashboard}#trace/{after}")).await;
    browser
        .element(r#"#waterfall .span-row.broken[data-service="guestbook-ui"]"#)
        .await;
    let problems = browser
        .element("#trace-problems")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        problems.contains("guestbook-ui's app did not forward the trace headers"),
        "{problems}"
    );

    pump.abort();
    browser.close().await;
    for path in [shot, waterfall_shot] {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 10_000,
            "{} is {size} bytes: not a real screenshot",
            path.display()
        );
    }
}
