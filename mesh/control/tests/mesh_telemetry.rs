//! Telemetry end to end, in-process: real sidecars (mesh-proxy) report to
//! the control plane's collector and are scraped into its traffic graph.
//!
//! ```text
//! test --> [test-client sidecar] --> [guestbook-ui sidecar] --> guestbook-ui app
//!                                      guestbook-ui app --HTTP_PROXY--> [its sidecar]
//!                                        --> [helloworld-service sidecar] --> helloworld app
//! ```
//!
//! The guestbook-ui app here is a few lines that call helloworld-service
//! and either forward the trace headers (as every Guestbook service does)
//! or drop them, which is how a learner breaks a trace. The checks are the
//! issue's: one trace holds every hop with correct parent links; an app
//! that drops the headers is reported; the counters match the requests sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::anyhow;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use mesh_control::collector::Kind;
use mesh_control::graph::{Reporter, reduce};
use mesh_control::scrape::parse;
use mesh_control::{Server, ServerHandle, Settings};
use mesh_proxy::{Config, Proxy, ProxyHandle};
use mesh_testkit::retry_until_ok;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The headers an app must copy from its request onto the calls it makes,
/// for the trace to continue (W3C, B3 multi and single, Envoy's request id).
const TRACE_HEADERS: [&str; 9] = [
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
];

// === the mesh ===

struct Mesh {
    control: ServerHandle,
    http: reqwest::Client,
    _state: tempfile::TempDir,
    proxies: Vec<ProxyHandle>,
}

impl Mesh {
    async fn start() -> Mesh {
        let state = tempfile::tempdir().unwrap();
        let mut settings = Settings::local(state.path());
        settings.scrape.interval = Duration::from_millis(200);
        let control = Server::start(settings).await.expect("control plane starts");
        Mesh {
            control,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            _state: state,
            proxies: Vec::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.control.url())
    }

    async fn get(&self, path: &str) -> Value {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// A sidecar for `service` whose app listens at `app`.
    async fn sidecar(&mut self, service: &str, version: &str, app: SocketAddr) -> usize {
        let instance = format!("{service}-{version}-{:05x}", fastrand::u32(..0xfffff));
        let settings: HashMap<String, String> = [
            ("MESH_SERVICE", service.to_string()),
            ("MESH_VERSION", version.to_string()),
            ("MESH_INSTANCE", instance),
            ("MESH_CONTROL_URL", self.control.url()),
            ("MESH_APP_ADDR", app.to_string()),
            ("MESH_OUTBOUND_ADDR", "127.0.0.1:0".to_string()),
            ("MESH_INBOUND_ADDR", "127.0.0.1:0".to_string()),
            ("MESH_ADMIN_ADDR", "127.0.0.1:0".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let config = Config::from_strings(&settings).expect("valid sidecar settings");
        self.proxies
            .push(Proxy::start(config).await.expect("sidecar starts"));
        self.proxies.len() - 1
    }

    fn proxy(&self, index: usize) -> &ProxyHandle {
        &self.proxies[index]
    }

    /// Wait until `proxy` has `count` endpoints for `service`.
    async fn wait_for_endpoints(&self, proxy: usize, service: &str, count: usize) {
        mesh_testkit::wait_for_endpoints(self.proxy(proxy), service, count)
            .await
            .unwrap();
    }
}

/// How long the tests wait for traces, scrapes and the graph to settle.
const SETTLE: Duration = Duration::from_secs(15);

// === the apps ===

/// helloworld-service: answers with its version.
async fn helloworld(version: &'static str) -> SocketAddr {
    let app = axum::Router::new()
        .fallback(move || async move { axum::Json(json!({"version": version})) });
    serve(app).await
}

/// guestbook-ui: calls helloworld-service through its sidecar, forwarding
/// the trace headers or not.
struct Frontend {
    addr: SocketAddr,
    /// Its sidecar's outbound address, known once the sidecar runs.
    outbound: Arc<OnceLock<SocketAddr>>,
}

async fn frontend(forward: bool) -> Frontend {
    let outbound: Arc<OnceLock<SocketAddr>> = Arc::new(OnceLock::new());
    let state = (outbound.clone(), forward);
    let app = axum::Router::new()
        .fallback(
            |State((outbound, forward)): State<(Arc<OnceLock<SocketAddr>>, bool)>,
             headers: HeaderMap| async move {
                let Some(proxy) = outbound.get() else {
                    return (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "no sidecar yet".to_string(),
                    )
                        .into_response();
                };
                // The app calls the service by name; its sidecar routes it.
                let http = reqwest::Client::builder()
                    .proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
                    .build()
                    .unwrap();
                let mut call = http.get("http://helloworld-service:8080/hello/ray");
                if forward {
                    for name in TRACE_HEADERS {
                        if let Some(value) = headers.get(name) {
                            call = call.header(name, value);
                        }
                    }
                }
                match call.send().await {
                    Ok(r) => (
                        axum::http::StatusCode::OK,
                        r.text().await.unwrap_or_default(),
                    )
                        .into_response(),
                    Err(e) => (axum::http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
                }
            },
        )
        .with_state(state);
    Frontend {
        addr: serve(app).await,
        outbound,
    }
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The mesh of the diagram above; returns it and the test client's sidecar.
async fn guestbook(forward: bool) -> (Mesh, usize) {
    let mut mesh = Mesh::start().await;
    let hw = helloworld("v1").await;
    mesh.sidecar("helloworld-service", "v1", hw).await;
    let ui = frontend(forward).await;
    let ui_sidecar = mesh.sidecar("guestbook-ui", "v1", ui.addr).await;
    ui.outbound
        .set(mesh.proxy(ui_sidecar).outbound_addr().unwrap())
        .unwrap();
    // The test's own sidecar; its "app" is never called.
    let client = mesh
        .sidecar("test-client", "v1", "127.0.0.1:9".parse().unwrap())
        .await;
    mesh.wait_for_endpoints(ui_sidecar, "helloworld-service", 1)
        .await;
    mesh.wait_for_endpoints(client, "guestbook-ui", 1).await;
    (mesh, client)
}

fn via(mesh: &Mesh, client: usize) -> reqwest::Client {
    let proxy = mesh.proxy(client).outbound_addr().unwrap();
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
        .build()
        .unwrap()
}

// === the tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_across_every_hop_and_the_counters_match() {
    let (mesh, client) = guestbook(true).await;
    // Let the scraper see every proxy once before any traffic, so the
    // graph's increase counts every request below.
    retry_until_ok("the first scrape of every proxy", SETTLE, || async {
        let graph = mesh.get("/api/v1/graph").await;
        let scraped = graph["scrapes"]["proxies"].as_u64().unwrap_or(0);
        if scraped == 3 {
            Ok(())
        } else {
            Err(anyhow!("{scraped} proxies scraped"))
        }
    })
    .await
    .unwrap();

    let http = via(&mesh, client);
    const N: u64 = 20;
    for _ in 0..N {
        let response = http.get("http://guestbook-ui:8080/").send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }

    // --- The trace: test-client CLIENT -> guestbook-ui SERVER -> guestbook-ui
    // CLIENT -> helloworld-service SERVER, each the parent of the next.
    let spans: Vec<Value> = retry_until_ok("a trace with all four spans", SETTLE, || async {
        let traces = mesh
            .get("/api/v2/traces?serviceName=helloworld-service&limit=1")
            .await;
        let spans = traces[0].as_array().cloned().unwrap_or_default();
        if spans.len() == 4 {
            Ok(spans)
        } else {
            Err(anyhow!("{} spans: {spans:#?}", spans.len()))
        }
    })
    .await
    .unwrap();
    let find = |service: &str, kind: Kind| {
        let kind = serde_json::to_value(kind).unwrap();
        spans
            .iter()
            .find(|s| s["localEndpoint"]["serviceName"] == service && s["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} span of {service} in {spans:#?}"))
    };
    let root = find("test-client", Kind::Client);
    let ui_server = find("guestbook-ui", Kind::Server);
    let ui_client = find("guestbook-ui", Kind::Client);
    let hw_server = find("helloworld-service", Kind::Server);
    assert!(
        root.get("parentId").is_none(),
        "the client's span is the root"
    );
    assert_eq!(ui_server["parentId"], root["id"]);
    assert_eq!(ui_client["parentId"], ui_server["id"]);
    assert_eq!(hw_server["parentId"], ui_client["id"]);
    assert_eq!(hw_server["tags"]["istio.canonical_revision"], "v1");
    let trace_id = root["traceId"].as_str().unwrap().to_string();
    let analysis = retry_until_ok("the trace to settle", SETTLE, || async {
        let a = mesh
            .get(&format!("/api/v1/traces/{trace_id}/analysis"))
            .await;
        if a["settled"] == true {
            Ok(a)
        } else {
            Err(anyhow!("still receiving spans"))
        }
    })
    .await
    .unwrap();
    assert_eq!(analysis["broken"], false, "{analysis:#}");
    let depths: Vec<u64> = analysis["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["depth"].as_u64().unwrap())
        .collect();
    assert_eq!(depths, [0, 1, 2, 3]);

    // --- The counters: the real /stats/prometheus pages, read with the
    // control plane's own parser, count exactly the requests sent.
    let ui_admin = mesh.proxy(1).admin_addr();
    let page = mesh
        .http
        .get(format!("http://{ui_admin}/stats/prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let edges = reduce(&parse(&page).expect("the sidecar's page parses"));
    let outbound = edges
        .iter()
        .find(|(k, _)| {
            k.reporter == Reporter::Source && k.destination.workload == "helloworld-service"
        })
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("no source series to helloworld-service in:\n{page}"));
    assert_eq!(outbound.requests, N as f64);
    assert_eq!(outbound.codes.get("200"), Some(&(N as f64)));
    let inbound = edges
        .iter()
        .find(|(k, _)| k.reporter == Reporter::Destination && k.source.workload == "test-client")
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("no destination series from test-client in:\n{page}"));
    assert_eq!(inbound.requests, N as f64);

    // --- The graph: both edges, each counting all N requests.
    retry_until_ok(
        "the graph's edges to count every request",
        SETTLE,
        || async {
            let graph = mesh.get("/api/v1/graph?window=60").await;
            let count = |src: &str, dst: &str| {
                graph["edges"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["source"] == src && e["target"] == dst)
                    .and_then(|e| e["requests"].as_f64())
            };
            let hops = (
                count("test-client@v1", "guestbook-ui@v1"),
                count("guestbook-ui@v1", "helloworld-service@v1"),
            );
            if hops == (Some(N as f64), Some(N as f64)) {
                Ok(())
            } else {
                Err(anyhow!("{hops:?}: {graph:#}"))
            }
        },
    )
    .await
    .unwrap();
    let stat = mesh.get("/api/v1/stat?window=60").await;
    let row = stat
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["workload"] == "helloworld-service")
        .unwrap();
    assert_eq!(row["successRate"], 1.0);
    assert!(row["p99Ms"].as_f64().is_some(), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_drops_the_trace_headers_is_named_where_the_chain_broke() {
    let (mesh, client) = guestbook(false).await;
    let http = via(&mesh, client);
    for _ in 0..3 {
        let response = http.get("http://guestbook-ui:8080/").send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let broken = retry_until_ok("the broken chain to be reported", SETTLE, || async {
        let list = mesh.get("/api/v1/traces?broken=true&limit=50").await;
        let found = list.as_array().unwrap().iter().find(|t| {
            t["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["kind"] == "headersNotForwarded")
        });
        found.cloned().ok_or_else(|| anyhow!("{list:#}"))
    })
    .await
    .unwrap();
    let problem = broken["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "headersNotForwarded")
        .unwrap();
    assert_eq!(problem["service"], "guestbook-ui");
    let message = problem["message"].as_str().unwrap();
    assert!(
        message.contains("guestbook-ui's app did not forward the trace headers")
            && message.contains("between guestbook-ui and helloworld-service"),
        "{message}"
    );
    // The trace it came from is flagged as well.
    let upstream = problem["relatedTraceId"].as_str().unwrap();
    // Judged once its spans have settled: before that, its chain may still
    // look merely incomplete (`missingParent`).
    let analysis = retry_until_ok("the related trace to settle", SETTLE, || async {
        let a = mesh
            .get(&format!("/api/v1/traces/{upstream}/analysis"))
            .await;
        if a["settled"] == true {
            Ok(a)
        } else {
            Err(anyhow!("still receiving spans"))
        }
    })
    .await
    .unwrap();
    assert_eq!(analysis["broken"], true);
    assert_eq!(analysis["problems"][0]["kind"], "brokenDownstream");
}
