//! The whole Guestbook and its dashboard, in a real browser, on the real
//! binaries: `meshctl up` starts the control plane, every service with its
//! sidecar (Rust, Python, Java) and the gateway; `meshctl load` sends
//! traffic; headless chromium (Debian's `chromium` + `chromium-driver`)
//! signs the guestbook and then watches the dashboard.
//!
//! This is what a workshop attendee does in the tracing lab:
//!
//! 1. open the Guestbook, post a message: one trace crosses guestbook-ui,
//!    guestbook-service and sentiment-service (checked through the
//!    collector's Zipkin API, parent links and all);
//! 2. open the dashboard while load runs: the guestbook-ui ->
//!    helloworld-service edge carries a rate;
//! 3. open a trace and read its waterfall;
//! 4. the same in the terminal (`meshctl stat`, `traces`, `load`), and one
//!    page is exactly one call to helloworld-service, by the sidecar's count;
//! 5. lab 08 with lab 05's `guestbook-abort-50.yaml`: the guestbook-ui ->
//!    guestbook-service v1 edge turns red with about half failing (a
//!    binomial tolerance on the window's count), and no "unknown" node.
//!
//! Screenshots go to `target/test-output/` (guestbook.png,
//! guestbook-dashboard.png, guestbook-trace.png, guestbook-fault.png).
//!
//! It needs every binary of the workspace built (`cargo build --workspace
//! --bins`; ./scripts/test.sh does), python3 and a JDK, like `meshctl up`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::Locator;
use serde_json::Value;

use anyhow::anyhow;
use mesh_testkit::{assert_binomial, retry_until_ok, wait_for};
use support::browser::{Browser, PAGE_TIMEOUT, free_port};

/// Starting the JVM on a busy two-core machine is the slow part of `up`.
const START_TIMEOUT: Duration = Duration::from_secs(240);

/// `target/debug`: where cargo put every binary of the workspace.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/guestbook_browser-HASH -> target/debug
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let missing: Vec<&str> = [
        "meshctl",
        "mesh-control",
        "mesh-proxy",
        "guestbook-ui",
        "guestbook-service",
    ]
    .into_iter()
    .filter(|name| !dir.join(name).is_file())
    .collect();
    assert!(
        missing.is_empty(),
        "{missing:?} not built in {}: this test runs the real binaries; run \
         `cargo build --workspace --bins` first (./scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// A child process this test started, stopped when the test ends.
struct Started {
    name: &'static str,
    child: Child,
}

impl Drop for Started {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SIGTERM first: `meshctl up` then stops everything it started.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("{} did not stop on SIGTERM; killing it", self.name);
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_signs_the_book_and_the_dashboard_shows_the_traffic_and_the_trace() {
    let bin = bin_dir();
    let workdir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("guestbook-browser-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&workdir);
    std::fs::create_dir_all(&workdir).unwrap();
    let (control_port, gateway_port) = (free_port(), free_port());
    let control = format!("http://127.0.0.1:{control_port}");
    let guestbook = format!("http://127.0.0.1:{gateway_port}/");
    let stdout = workdir.with_extension("stdout");
    let stderr = workdir.with_extension("stderr");

    // Every port free, the dashboard's too, so this test never collides
    // with a mesh a developer (or another test) is running.
    let mut up = Started {
        name: "meshctl up",
        child: Command::new(bin.join("meshctl"))
            .args(["up", "--control-port", &control_port.to_string()])
            .args(["--gateway-port", &gateway_port.to_string()])
            .arg("--workdir")
            .arg(&workdir)
            .args(["--dashboard-port", &free_port().to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("meshctl starts"),
    };
    retry_until_ok("meshctl up to report the mesh is up", START_TIMEOUT, || {
        let exited = up.child.try_wait().unwrap();
        let printed = std::fs::read_to_string(&stdout).unwrap_or_default();
        let log = std::fs::read_to_string(&stderr).unwrap_or_default();
        async move {
            if let Some(status) = exited {
                panic!("meshctl up exited ({status}):\n{log}");
            }
            if printed.contains("micromesh is up") {
                Ok(printed)
            } else {
                Err(anyhow!("its log so far:\n{log}"))
            }
        }
    })
    .await
    .unwrap();
    let summary = std::fs::read_to_string(&stdout).unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let info: Value = http
        .get(format!("{control}/api/v1/dashboard"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dashboard = info["url"]
        .as_str()
        .unwrap_or_else(|| panic!("no dashboard: {info}"))
        .to_string();
    assert!(
        summary.contains(&format!("Dashboard:          {dashboard}")),
        "meshctl up prints the dashboard:\n{summary}"
    );

    let browser = Browser::start().await;

    // --- 1. A guest signs the book, in the browser.
    browser.goto(&guestbook).await;
    let message = format!("What a wonderful mesh {}", fastrand::u32(..));
    let name = browser.element(r#"form input[name="name"]"#).await;
    name.clear().await.unwrap();
    name.send_keys("Ray").await.unwrap();
    browser
        .element(r#"form textarea[name="message"]"#)
        .await
        .send_keys(&message)
        .await
        .unwrap();
    browser
        .element(r#"form button[type="submit"]"#)
        .await
        .click()
        .await
        .unwrap();
    retry_until_ok("the page to list the message", PAGE_TIMEOUT, || async {
        let list = browser.element("body").await.text().await?;
        if list.contains(&message) {
            Ok(())
        } else {
            Err(anyhow!("the page reads:\n{list}"))
        }
    })
    .await
    .unwrap();
    browser.screenshot("guestbook.png").await;

    // That request's trace crossed the UI, the store and the classifier,
    // each span's parent in the trace.
    let trace: Value = retry_until_ok(
        "the message's trace in the collector",
        PAGE_TIMEOUT,
        || async {
            let url = format!("{control}/api/v2/traces?serviceName=sentiment-service&limit=1");
            let traces: Value = http.get(&url).send().await?.json().await?;
            let spans = traces[0].clone();
            let services: Vec<&str> = spans
                .as_array()
                .map(|s| {
                    s.iter()
                        .filter_map(|s| s["localEndpoint"]["serviceName"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            let all = [
                "ingressgateway",
                "guestbook-ui",
                "guestbook-service",
                "sentiment-service",
            ];
            if all.iter().all(|s| services.contains(s)) {
                Ok(spans)
            } else {
                Err(anyhow!("spans of {services:?}"))
            }
        },
    )
    .await
    .unwrap();
    let ids: Vec<&str> = trace
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    for span in trace.as_array().unwrap() {
        if let Some(parent) = span["parentId"].as_str() {
            assert!(
                ids.contains(&parent),
                "span {} names a parent outside its trace: {trace:#}",
                span["id"]
            );
        }
    }
    let roots = trace
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s.get("parentId").is_none())
        .count();
    assert_eq!(roots, 1, "one root, the gateway's span: {trace:#}");

    // --- 2. Load through the gateway with meshctl load, the dashboard open.
    let background = Started {
        name: "meshctl load",
        child: Command::new(bin.join("meshctl"))
            .args(["load", &guestbook, "--rps", "5", "--duration", "120s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("meshctl load starts"),
    };
    browser.goto(&format!("{dashboard}#traffic")).await;
    let edge = r#"g.edge[data-source^="guestbook-ui@"][data-target^="helloworld-service@"]"#;
    browser
        .edge_traffic(edge, Duration::ZERO, Duration::from_secs(60))
        .await;
    browser.screenshot("guestbook-dashboard.png").await;

    // --- 3. A trace's waterfall, across every service the page asked.
    browser.goto(&format!("{dashboard}#traces")).await;
    let row = retry_until_ok("a page view's trace in the list", PAGE_TIMEOUT, || async {
        let rows = browser
            .client()
            .find_all(Locator::Css("#trace-list tbody tr[data-trace]"))
            .await?;
        for row in rows {
            let text = row.text().await?;
            if text.contains("helloworld-service") && text.contains("guestbook-service") {
                return Ok(row);
            }
        }
        Err(anyhow!(
            "no trace through helloworld-service and guestbook-service yet"
        ))
    })
    .await
    .unwrap();
    row.click().await.unwrap();
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
    for service in [
        "ingressgateway",
        "guestbook-ui",
        "helloworld-service",
        "guestbook-service",
    ] {
        assert!(
            services.iter().any(|s| s == service),
            "{service} in the waterfall: {services:?}"
        );
    }
    let broken = browser
        .client()
        .find_all(Locator::Css("#waterfall .span-row.broken"))
        .await
        .unwrap();
    assert!(
        broken.is_empty(),
        "every Guestbook service forwards the trace headers"
    );
    browser.screenshot("guestbook-trace.png").await;

    // --- 4. The same, in the terminal: meshctl dashboard, stat, traces, load.
    let meshctl = |args: &[&str]| {
        let out = Command::new(bin.join("meshctl"))
            .args(args)
            .args(["--control-url", &control])
            // The run's state directory holds the write token apply needs.
            .arg("--workdir")
            .arg(&workdir)
            .stdin(Stdio::null())
            .output()
            .expect("meshctl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "meshctl {args:?}: {}\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    assert_eq!(meshctl(&["dashboard"]).trim(), dashboard);
    let stat = meshctl(&["stat", "--window", "30"]);
    let row = stat
        .lines()
        .find(|l| l.starts_with("helloworld-service"))
        .unwrap_or_else(|| panic!("no helloworld-service row:\n{stat}"));
    assert!(row.contains("100.00%"), "{stat}");
    let traces = meshctl(&["traces", "--service", "sentiment-service", "--limit", "1"]);
    for service in [
        "ingressgateway",
        "guestbook-ui",
        "guestbook-service",
        "sentiment-service",
    ] {
        assert!(traces.contains(service), "{service} in:\n{traces}");
    }
    assert!(!traces.contains("BROKEN"), "{traces}");
    let load = meshctl(&["load", &guestbook, "--rps", "10", "--duration", "2s"]);
    assert!(load.contains("20 requests"), "{load}");
    assert!(
        load.contains("guestbook-ui v1, Hello, helloworld-service v1"),
        "which versions answered:\n{load}"
    );
    // Stop the background load and wait until its last pages are counted:
    // the count no longer moves between two scrapes.
    drop(background);
    let calls = |page: &str| istio_requests(page, "helloworld-service");
    let admin = admin_address(&meshctl(&["get", "proxies", "-o", "json"]), "guestbook-ui");
    let last = std::cell::Cell::new(calls(&scrape(&http, &admin).await));
    let before = wait_for(
        "guestbook-ui's call count to stop moving after the background load",
        Duration::from_secs(10),
        async || {
            // Two scrapes 300 ms apart that agree.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = calls(&scrape(&http, &admin).await);
            Ok((last.replace(now) == now).then_some(now))
        },
    )
    .await
    .unwrap();

    // Each page asks helloworld-service for one greeting: 20 pages are
    // exactly 20 more calls counted by guestbook-ui's sidecar.
    let load = meshctl(&["load", &guestbook, "--rps", "10", "--duration", "2s"]);
    assert!(load.contains("20 requests"), "{load}");
    let after = calls(&scrape(&http, &admin).await);
    assert_eq!(
        after - before,
        20,
        "guestbook-ui's sidecar counts one call to helloworld-service per page"
    );

    // --- 5. Lab 08 with lab 05's fault: the guestbook-service edge turns
    // red, about half fail, and no "unknown" node appears.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fault = root.join("labs/05-fault-injection/guestbook-abort-50.yaml");
    meshctl(&["apply", "-f", fault.to_str().unwrap()]);
    let _fault_load = Started {
        name: "meshctl load (fault)",
        child: Command::new(bin.join("meshctl"))
            .args(["load", &guestbook, "--rps", "20", "--duration", "120s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("meshctl load starts"),
    };
    browser.goto(&format!("{dashboard}#traffic")).await;
    let edge = r#"g.edge.bad[data-source="guestbook-ui@v1"][data-target="guestbook-service@v1"]"#;
    // Wait for the first aborts, then one whole window more, so that the
    // window holds only requests made under the fault.
    browser
        .edge_traffic(edge, Duration::ZERO, Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let faulted = browser
        .edge_traffic(edge, Duration::from_secs(3), PAGE_TIMEOUT)
        .await;
    browser.screenshot("guestbook-fault.png").await;
    // Each call is aborted with probability 0.5, independently: the
    // failures in the window are binomial.
    assert_binomial(
        "guestbook-ui -> guestbook-service calls aborted",
        faulted.errors(),
        faulted.requests as u64,
        0.5,
        4.0,
    );
    let nodes = browser
        .client()
        .execute(
            r#"return [...document.querySelectorAll("g.node")].map((n) => n.dataset.node);"#,
            vec![],
        )
        .await
        .unwrap();
    let nodes: Vec<String> = serde_json::from_value(nodes).unwrap();
    assert!(
        nodes.contains(&"guestbook-service@v1".to_string())
            && !nodes.iter().any(|n| n.ends_with("@unknown")
                || (n.starts_with("guestbook-service") && n != "guestbook-service@v1")),
        "the aborts are drawn on guestbook-service v1, with no phantom node: {nodes:?}"
    );
    let stat = meshctl(&["stat", "--window", "5"]);
    let rows: Vec<&str> = stat
        .lines()
        .filter(|l| l.starts_with("guestbook-service"))
        .collect();
    assert!(
        rows.len() == 1
            && rows[0].split_whitespace().nth(1) == Some("v1")
            && !rows[0].contains("100.00%"),
        "meshctl stat shows the failures on guestbook-service v1 alone:\n{stat}"
    );
    meshctl(&["delete", "-f", fault.to_str().unwrap()]);
    browser.close().await;
}

/// The admin address of `service`'s proxy, from `meshctl get proxies -o json`.
fn admin_address(json: &str, service: &str) -> String {
    let proxies: Value = serde_json::from_str(json).unwrap();
    proxies
        .as_array()
        .and_then(|all| all.iter().find(|p| p["service"] == service))
        .and_then(|p| p["adminAddress"].as_str())
        .unwrap_or_else(|| panic!("no proxy of {service} with an admin address in {json}"))
        .to_string()
}

async fn scrape(http: &reqwest::Client, admin: &str) -> String {
    http.get(format!("http://{admin}/stats/prometheus"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("scrape {admin}: {e}"))
        .text()
        .await
        .unwrap()
}

/// The caller's count (`reporter="source"`) of requests to `workload`, over
/// every version and code.
fn istio_requests(page: &str, workload: &str) -> u64 {
    let wanted = format!("destination_workload=\"{workload}\"");
    page.lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| l.contains("reporter=\"source\"") && l.contains(&wanted))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
