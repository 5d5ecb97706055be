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
use support::{Control, FakeAdmin, SCRAPE_TIMEOUT, calls, series, span};

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

/// The fake guestbook-ui sidecar's count of calls to helloworld-service v1,
/// per second.
const V1_RPS: f64 = 16.0;

/// Where each header's text and the text of the cell under it start and
/// end on screen, per column: `[[header left, right], [cell left, right]]`,
/// measured around the text itself (a cell's box is as wide as its
/// header's whatever the alignment).
const COLUMN_TEXT_EXTENTS: &str = r#"
    const [table, row] = arguments;
    const text = (cell) => {
        const range = document.createRange();
        range.selectNodeContents(cell);
        const r = range.getBoundingClientRect();
        return [r.left, r.right];
    };
    const headers = [...document.querySelectorAll(table + " thead th")];
    const cells = [...document.querySelector(table + " tbody " + row).children];
    return headers.map((th, i) => [text(th), text(cells[i]), cells[i].classList.contains("num")]);
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
    // v2's answers are 503s (a fault the learner should see in red). Each
    // counter is computed when the scrape arrives, so it is exact then:
    // floor(rate x seconds since `started`).
    let started = std::time::Instant::now();
    let n = move |rate: f64| (rate * started.elapsed().as_secs_f64()) as u64;
    gateway.serve_with(move || {
        series(
            "source",
            "ingressgateway@v1",
            "guestbook-ui@v1",
            "200",
            n(20.0),
            4.0,
        )
    });
    ui.serve_with(move || {
        [
            series(
                "source",
                "guestbook-ui@v1",
                "helloworld-service@v1",
                "200",
                n(V1_RPS),
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
        .concat()
    });
    // v1's sidecar received every request over mutual TLS (its
    // `connection_security_policy`); v2's says nothing of it.
    hw1.serve_with(move || {
        series(
            "destination",
            "guestbook-ui@v1",
            "helloworld-service@v1",
            "200",
            n(V1_RPS),
            1.0,
        )
        .replace(
            "response_flags=\"-\"",
            "response_flags=\"-\",connection_security_policy=\"mutual_tls\"",
        )
    });
    hw2.serve_with(move || {
        series(
            "destination",
            "guestbook-ui@v1",
            "helloworld-service@v2",
            "200",
            n(2.0),
            19.0,
        )
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
    let v1 = browser
        .edge_traffic(edge_css, Duration::from_secs(3), PAGE_TIMEOUT)
        .await;
    // The counters are exact when scraped: the window's increase is
    // V1_RPS x (time between the two scrapes' answers) +/- 1 (whole
    // requests). The graph divides by the time between the scrapes'
    // arrivals, E, which differs from that by at most the scrape timeout.
    let window = v1.window.as_secs_f64();
    let tolerance = (V1_RPS * SCRAPE_TIMEOUT.as_secs_f64() + 1.0) / window;
    assert!(
        (v1.rps - V1_RPS).abs() <= tolerance,
        "{V1_RPS} rps go to v1; the page says {} over {window:.2}s (+/- {tolerance:.2})",
        v1.rps
    );
    // v2 fails half the time: its edge is drawn as failing, and says so.
    // Its 200s and 503s grow at the same rate, so exactly half.
    let v2 = r#"g.edge.bad[data-source="guestbook-ui@v1"][data-target="helloworld-service@v2"]"#;
    let v2 = browser
        .edge_traffic(v2, Duration::from_secs(3), PAGE_TIMEOUT)
        .await;
    assert_eq!(v2.error_rate, 0.5, "{v2:?}");
    // The mutual-TLS edge carries a lock (Kiali's), and only that one.
    browser
        .element(&format!(r#"{edge_css}[data-security="mutual_tls"]"#))
        .await;
    browser.element(r#"#graph [data-lock="mutual_tls"]"#).await;
    let locks = browser
        .client()
        .find_all(Locator::Css("#graph [data-lock]"))
        .await
        .unwrap();
    assert_eq!(locks.len(), 1, "one lock, on guestbook-ui -> helloworld v1");
    browser.element("#graph-legend .lock").await;
    // The gateway's node says what it is, not its version.
    let gateway_kind = browser
        .element(r#"g.node.gateway[data-node="ingressgateway@v1"] text.version"#)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(gateway_kind, "gateway");
    let labels = browser.element("#graph").await.text().await.unwrap();
    assert!(
        labels.contains("rps") && labels.contains("% err") && labels.contains("p99"),
        "{labels}"
    );
    let shot = browser.screenshot("dashboard.png").await;

    // --- Services: every version with its numbers, each under its own
    // header: numbers and their headers right-aligned, names left-aligned.
    browser.goto(&format!("{dashboard}#services")).await;
    let v1_row = r#"tr[data-service="helloworld-service"][data-version="v1"]"#;
    browser.element(&format!("#services-table {v1_row}")).await;
    let shot_services = browser.screenshot("dashboard-services.png").await;
    let columns = browser
        .client()
        .execute(
            COLUMN_TEXT_EXTENTS,
            vec![json!("#services-table"), json!(v1_row)],
        )
        .await
        .unwrap();
    let columns: Vec<([f64; 2], [f64; 2], bool)> = serde_json::from_value(columns).unwrap();
    assert_eq!(columns.len(), 7, "{columns:?}");
    for (i, (header, cell, numeric)) in columns.iter().enumerate() {
        let (edge, side) = if *numeric { (1, "right") } else { (0, "left") };
        assert!(
            (header[edge] - cell[edge]).abs() <= 1.0,
            "column {i}: the header's text and the cell's do not share their {side} edge: \
             header {header:?}, cell {cell:?}"
        );
    }

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
    // Every name is written out in the legend, and nothing written inside
    // the bar is cut off by its part.
    let legend = browser
        .element(r#"[data-virtual-service="helloworld-service"] .split-legend"#)
        .await
        .text()
        .await
        .unwrap();
    for part in ["helloworld-service v1: 80%", "helloworld-service v2: 20%"] {
        assert!(legend.contains(part), "{part} in the legend: {legend}");
    }
    let clipped = browser
        .client()
        .execute(
            r#"return [...document.querySelectorAll(".split > div > span")]
                 .filter((s) => !s.hidden && s.getBoundingClientRect().right > s.parentElement.getBoundingClientRect().right + 0.5)
                 .map((s) => s.textContent);"#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        clipped,
        json!([]),
        "labels cut off by their part of the bar"
    );
    let shot_routes = browser.screenshot("dashboard-routes.png").await;

    // --- Traces: the list gives the services a trace crossed as a set,
    // not as an arrow chain (the order is only first appearance).
    browser.goto(&format!("{dashboard}#traces")).await;
    let services_cell = browser
        .element(&format!(
            r#"#trace-list tr[data-trace="{whole}"] td.services"#
        ))
        .await;
    let chips = services_cell.find_all(Locator::Css(".chip")).await.unwrap();
    let mut crossed = Vec::new();
    for chip in chips {
        crossed.push(chip.text().await.unwrap());
    }
    crossed.sort();
    assert_eq!(
        crossed,
        ["guestbook-ui", "helloworld-service", "ingressgateway"]
    );
    let cell_text = services_cell.text().await.unwrap();
    assert!(!cell_text.contains('→'), "{cell_text}");
    let shot_traces = browser.screenshot("dashboard-traces.png").await;

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
    // The legend says which bar is which side of a call.
    let legend = browser
        .element("#waterfall-legend")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        legend.contains("CLIENT: the caller's sidecar")
            && legend.contains("SERVER: the callee's sidecar"),
        "{legend}"
    );
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

    browser.close().await;
    for path in [
        shot,
        shot_services,
        shot_routes,
        shot_traces,
        waterfall_shot,
    ] {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 10_000,
            "{} is {size} bytes: not a real screenshot",
            path.display()
        );
    }
}
