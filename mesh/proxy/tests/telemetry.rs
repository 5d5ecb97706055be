//! Telemetry end to end, in process: a gateway and sidecars on 127.0.0.1:0
//! with static snapshots, fake apps, and a stand-in Zipkin collector (axum)
//! that records the spans the proxies POST. Checks the trace tree a request
//! leaves, the headers apps receive, and the metrics pages (with promtool).

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use mesh_api::snapshot::*;
use mesh_proxy::{Config, Proxy, ProxyHandle};
use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(10);

// === a Zipkin collector stand-in ===

/// `POST /api/v2/spans` with a JSON array, answered 202 like Zipkin.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Collector {
        async fn collect(
            State(spans): State<Arc<Mutex<Vec<Value>>>>,
            axum::Json(batch): axum::Json<Vec<Value>>,
        ) -> StatusCode {
            spans.lock().unwrap().extend(batch);
            StatusCode::ACCEPTED
        }
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = axum::Router::new()
            .route("/api/v2/spans", axum::routing::post(collect))
            .with_state(spans.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector { addr, spans, task }
    }

    fn url(&self) -> String {
        format!("http://{}/api/v2/spans", self.addr)
    }

    fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans whose `guid:x-request-id` tag is `id`, once there are `n`.
    async fn spans_of_request(&self, id: &str, n: usize) -> Vec<Value> {
        let of_request = || -> Vec<Value> {
            self.spans()
                .into_iter()
                .filter(|s| s["tags"]["guid:x-request-id"] == id)
                .collect()
        };
        wait_until(&format!("{n} spans of request {id}"), WAIT, async || {
            Ok(of_request().len() >= n)
        })
        .await
        .unwrap();
        of_request()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === the mesh around the tests ===

/// A sidecar for `service`/`version` in front of the app at `app`.
async fn sidecar(service: &str, version: &str, app: SocketAddr, spans: &Collector) -> ProxyHandle {
    let mut config = Config::local_sidecar(service, app);
    config.version = version.into();
    config.instance = format!("{service}-{version}-test");
    config.labels.insert("version".into(), version.into());
    config.zipkin_url = Some(spans.url());
    Proxy::start(config).await.unwrap()
}

/// The snapshot endpoint for a started sidecar, with its labels.
fn endpoint(proxy: &ProxyHandle) -> Endpoint {
    let announce = proxy.announce(true);
    Endpoint {
        instance: announce.instance,
        address: announce.address,
        labels: announce.labels,
        identity: None,
        tls_mode: Default::default(),
    }
}

fn cluster(service: &str, subset: Option<&str>, endpoints: Vec<Endpoint>) -> Cluster {
    Cluster {
        name: Cluster::name_for(service, subset),
        service: service.into(),
        subset: subset.map(str::to_string),
        endpoints,
        ..Default::default()
    }
}

fn route(name: &str, matches: Vec<RouteMatch>, cluster: &str) -> HttpRoute {
    HttpRoute {
        name: name.into(),
        matches,
        destinations: vec![Destination {
            cluster: cluster.into(),
            weight: 100,
        }],
        retries: RetryPolicy::none(),
        ..Default::default()
    }
}

fn host(service: &str, routes: Vec<HttpRoute>) -> VirtualHost {
    VirtualHost {
        name: service.into(),
        domains: vec![service.into(), format!("{service}:8080")],
        routes,
    }
}

/// guestbook-ui's app: calls helloworld-service through its sidecar and
/// answers with what it got. It copies the trace headers onto its call only
/// when the request says `x-forward: yes`, so a test can break the chain.
async fn ui_app(listener: tokio::net::TcpListener, outbound: SocketAddr) {
    let client = client_via(outbound);
    let app = axum::Router::new().fallback(async move |headers: HeaderMap| {
        let mut call = client.get("http://helloworld-service:8080/hello/ray");
        if headers.get("x-forward").is_some_and(|v| v == "yes") {
            // What every Guestbook service does: the sidecar cannot tell
            // which outgoing call belongs to which incoming request.
            for name in [
                "x-request-id",
                "traceparent",
                "tracestate",
                "x-b3-traceid",
                "x-b3-spanid",
                "x-b3-parentspanid",
                "x-b3-sampled",
                "x-b3-flags",
            ] {
                if let Some(value) = headers.get(name) {
                    call = call.header(name, value.as_bytes());
                }
            }
        }
        match call.send().await {
            Ok(rsp) => (StatusCode::OK, rsp.text().await.unwrap_or_default()),
            Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
}

fn str_of<'a>(span: &'a Value, field: &str) -> &'a str {
    span[field].as_str().unwrap_or_default()
}

fn find<'a>(spans: &'a [Value], service: &str, kind: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["localEndpoint"]["serviceName"] == service && s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} span of {service} in {spans:#?}"))
}

fn header<'a>(parts: &'a http::request::Parts, name: &str) -> &'a str {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("the app got no {name} header: {:?}", parts.headers))
}

/// The start and end of a span, microseconds.
fn interval(span: &Value) -> (u64, u64) {
    let start = span["timestamp"].as_u64().unwrap();
    (start, start + span["duration"].as_u64().unwrap())
}

// === tracing ===

#[tokio::test]
async fn a_trace_crosses_the_gateway_and_two_sidecars_as_one_tree() {
    let collector = Collector::start().await;

    // helloworld-service v2: a fake app and its sidecar.
    let hw_app = Upstream::start("helloworld-v2").await;
    let hw = sidecar("helloworld-service", "v2", hw_app.addr, &collector).await;

    // guestbook-ui: an app that calls helloworld-service, and its sidecar.
    let ui_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ui = sidecar(
        "guestbook-ui",
        "v1",
        ui_listener.local_addr().unwrap(),
        &collector,
    )
    .await;
    ui.apply_snapshot(Snapshot {
        version: 1,
        proxy: ui.instance().into(),
        virtual_hosts: vec![host(
            "helloworld-service",
            vec![route("v2", vec![], "helloworld-service|v2")],
        )],
        clusters: vec![cluster(
            "helloworld-service",
            Some("v2"),
            vec![endpoint(&hw)],
        )],
        gateway: None,
        inbound: Default::default(),
        trust_bundle: Vec::new(),
    })
    .unwrap();
    ui_app(ui_listener, ui.outbound_addr().unwrap()).await;

    // The gateway sends every host to guestbook-ui.
    let mut config = Config::local_gateway();
    config.zipkin_url = Some(collector.url());
    let gateway = Proxy::start(config).await.unwrap();
    gateway
        .apply_snapshot(Snapshot {
            version: 1,
            proxy: gateway.instance().into(),
            clusters: vec![cluster("guestbook-ui", None, vec![endpoint(&ui)])],
            gateway: Some(GatewayConfig {
                gateways: vec!["default/guestbook-gateway".into()],
                virtual_hosts: vec![VirtualHost {
                    name: "guestbook".into(),
                    domains: vec!["*".into()],
                    routes: vec![route("ui", vec![], "guestbook-ui")],
                }],
            }),
            ..Default::default()
        })
        .unwrap();

    // A user's request, with no trace headers: the gateway starts the trace.
    let user = direct_client();
    let rsp = user
        .get(format!("http://{}/", gateway.gateway_addr().unwrap()))
        .header("x-forward", "yes")
        .header("x-request-id", "req-forwarded")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.text().await.unwrap(), "helloworld-v2");

    let spans = collector.spans_of_request("req-forwarded", 4).await;
    assert_eq!(spans.len(), 4, "one span per listener: {spans:#?}");
    let gw = find(&spans, "ingressgateway", "CLIENT");
    let ui_server = find(&spans, "guestbook-ui", "SERVER");
    let ui_client = find(&spans, "guestbook-ui", "CLIENT");
    let hw_server = find(&spans, "helloworld-service", "SERVER");

    // One trace, a 128-bit id started at the gateway...
    let trace = str_of(gw, "traceId");
    assert_eq!(trace.len(), 32);
    for span in &spans {
        assert_eq!(str_of(span, "traceId"), trace, "{span:#}");
        assert_eq!(str_of(span, "id").len(), 16);
    }
    // ...and a plain tree: each span's parent is the span before it.
    assert!(
        gw.get("parentId").is_none(),
        "the gateway's span is the root"
    );
    assert_eq!(str_of(ui_server, "parentId"), str_of(gw, "id"));
    assert_eq!(str_of(ui_client, "parentId"), str_of(ui_server, "id"));
    assert_eq!(str_of(hw_server, "parentId"), str_of(ui_client, "id"));

    // The client span of guestbook-ui lies inside its server span: what the
    // control plane's broken-chain analysis relies on.
    let (server_start, server_end) = interval(ui_server);
    let (client_start, client_end) = interval(ui_client);
    assert!(
        server_start <= client_start && client_end <= server_end,
        "client {client_start}..{client_end} inside server {server_start}..{server_end}"
    );

    // Tags, per the contract.
    let tags = &ui_client["tags"];
    assert_eq!(tags["istio.canonical_service"], "guestbook-ui");
    assert_eq!(tags["istio.canonical_revision"], "v1");
    assert_eq!(tags["instance"], "guestbook-ui-v1-test");
    assert_eq!(tags["http.method"], "GET");
    assert_eq!(tags["http.url"], "http://helloworld-service:8080/hello/ray");
    assert_eq!(tags["http.path"], "/hello/ray");
    assert_eq!(tags["http.status_code"], "200");
    assert_eq!(tags["response_flags"], "-");
    assert_eq!(
        tags["upstream_cluster"],
        "outbound|8080|v2|helloworld-service"
    );
    assert_eq!(tags["upstream_address"], endpoint(&hw).address.as_str());
    assert!(
        tags["peer.address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(tags.get("error").is_none());
    assert_eq!(
        str_of(ui_client, "name"),
        "helloworld-service:8080/hello/ray"
    );
    assert_eq!(
        ui_client["remoteEndpoint"]["serviceName"],
        "helloworld-service"
    );
    assert_eq!(
        ui_client["remoteEndpoint"]["port"],
        hw.inbound_addr().unwrap().port()
    );
    assert_eq!(
        hw_server["tags"]["upstream_cluster"],
        format!("inbound|{}||helloworld-service", hw_app.addr.port()).as_str()
    );
    assert_eq!(hw_server["tags"]["istio.canonical_revision"], "v2");
    assert_eq!(
        hw_server["remoteEndpoint"]["serviceName"], "guestbook-ui",
        "the inbound side knows its caller from the source headers"
    );
    // The user called the gateway's own address: its port names the cluster.
    assert_eq!(
        gw["tags"]["upstream_cluster"],
        format!(
            "outbound|{}||guestbook-ui",
            gateway.gateway_addr().unwrap().port()
        )
        .as_str()
    );

    // The app got the trace with the SERVER span of its sidecar as parent,
    // and not the sidecars' own source headers.
    let parts = hw_app.last_request().unwrap();
    let hw_id = str_of(hw_server, "id");
    assert_eq!(header(&parts, "x-b3-traceid"), trace);
    assert_eq!(header(&parts, "x-b3-spanid"), hw_id);
    assert_eq!(header(&parts, "x-b3-parentspanid"), str_of(ui_client, "id"));
    assert_eq!(header(&parts, "x-b3-sampled"), "1");
    assert_eq!(
        header(&parts, "traceparent"),
        format!("00-{trace}-{hw_id}-01")
    );
    assert_eq!(header(&parts, "x-request-id"), "req-forwarded");
    assert!(!parts.headers.contains_key("x-mesh-peer-metadata"));

    // Now an app that does not forward the headers: its call starts a new
    // trace, a CLIENT root, while it serves the gateway's trace.
    let rsp = user
        .get(format!("http://{}/", gateway.gateway_addr().unwrap()))
        .header("x-request-id", "req-dropped")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let spans = collector.spans_of_request("req-dropped", 2).await;
    let ui_server = find(&spans, "guestbook-ui", "SERVER");
    assert!(
        spans
            .iter()
            .all(|s| s["localEndpoint"]["serviceName"] != "helloworld-service"),
        "the app's call lost the request id too"
    );
    let orphans: Vec<Value> = collector
        .spans()
        .into_iter()
        .filter(|s| {
            s["kind"] == "CLIENT"
                && s["localEndpoint"]["serviceName"] == "guestbook-ui"
                && s.get("parentId").is_none()
        })
        .collect();
    assert_eq!(orphans.len(), 1, "{orphans:#?}");
    assert_ne!(str_of(&orphans[0], "traceId"), str_of(ui_server, "traceId"));
    assert_eq!(
        orphans[0]["tags"]["instance"],
        ui_server["tags"]["instance"]
    );
    let (server_start, server_end) = interval(ui_server);
    let (client_start, client_end) = interval(&orphans[0]);
    assert!(server_start <= client_start && client_end <= server_end);

    gateway.shutdown().await;
    ui.shutdown().await;
    hw.shutdown().await;
}

/// A sidecar pair: `client` (guestbook-ui v1) routes helloworld-service to
/// `server` (helloworld-service v1) in front of `app`.
struct Pair {
    client: ProxyHandle,
    server: ProxyHandle,
    app: Upstream,
}

/// `proxy`'s snapshot with one route: every request for `service` goes to
/// the whole service's cluster of `endpoints`.
fn one_route(proxy: &ProxyHandle, service: &str, endpoints: Vec<Endpoint>) -> Snapshot {
    Snapshot {
        version: 1,
        proxy: proxy.instance().into(),
        virtual_hosts: vec![host(service, vec![route("default", vec![], service)])],
        clusters: vec![cluster(service, None, endpoints)],
        gateway: None,
        inbound: Default::default(),
        trust_bundle: Vec::new(),
    }
}

async fn pair(collector: &Collector) -> Pair {
    let app = Upstream::start("helloworld-v1").await;
    let server = sidecar("helloworld-service", "v1", app.addr, collector).await;
    let client = sidecar("guestbook-ui", "v1", refused_addr().await, collector).await;
    client
        .apply_snapshot(one_route(
            &client,
            "helloworld-service",
            vec![endpoint(&server)],
        ))
        .unwrap();
    Pair {
        client,
        server,
        app,
    }
}

#[tokio::test]
async fn an_incoming_trace_is_continued_in_whichever_format_it_came() {
    let collector = Collector::start().await;
    let Pair {
        client,
        server,
        app,
    } = pair(&collector).await;
    let via = client_via(client.outbound_addr().unwrap());
    let url = "http://helloworld-service:8080/hello/ray";

    // W3C, with vendor state that must pass through untouched.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let rsp = via
        .get(url)
        .header("x-request-id", "w3c")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("tracestate", "congo=t61rcWkgMzE")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let spans = collector.spans_of_request("w3c", 2).await;
    let client_span = find(&spans, "guestbook-ui", "CLIENT");
    let server_span = find(&spans, "helloworld-service", "SERVER");
    assert_eq!(str_of(client_span, "traceId"), trace);
    assert_eq!(str_of(client_span, "parentId"), "00f067aa0ba902b7");
    assert_eq!(str_of(server_span, "parentId"), str_of(client_span, "id"));
    let parts = app.last_request().unwrap();
    assert_eq!(header(&parts, "tracestate"), "congo=t61rcWkgMzE");

    // B3 multi with a 64-bit trace id: kept as 16 hex digits on every span.
    let rsp = via
        .get(url)
        .header("x-request-id", "b3-64")
        .header("x-b3-traceid", "a2fb4a1d1a96d312")
        .header("x-b3-spanid", "0020000000000001")
        .header("x-b3-sampled", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let spans = collector.spans_of_request("b3-64", 2).await;
    for span in &spans {
        assert_eq!(str_of(span, "traceId"), "a2fb4a1d1a96d312", "{span:#}");
    }
    let parts = app.last_request().unwrap();
    assert_eq!(header(&parts, "x-b3-traceid"), "a2fb4a1d1a96d312");

    // B3 single.
    let rsp = via
        .get(url)
        .header("x-request-id", "b3-single")
        .header("b3", format!("{trace}-00f067aa0ba902b7-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let spans = collector.spans_of_request("b3-single", 2).await;
    assert_eq!(
        str_of(find(&spans, "guestbook-ui", "CLIENT"), "parentId"),
        "00f067aa0ba902b7"
    );
    let parts = app.last_request().unwrap();
    assert!(
        !parts.headers.contains_key("b3"),
        "replaced by the B3 multi headers"
    );

    // Malformed headers are ignored: a new trace starts.
    let rsp = via
        .get(url)
        .header("x-request-id", "malformed")
        .header("traceparent", "00-not-a-trace-01")
        .header("x-b3-traceid", "xyz")
        .header("b3", "nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let spans = collector.spans_of_request("malformed", 2).await;
    let root = find(&spans, "guestbook-ui", "CLIENT");
    assert!(root.get("parentId").is_none());
    assert_eq!(str_of(root, "traceId").len(), 32);

    // Not sampled at the root: no spans anywhere, but the decision travels.
    let rsp = via
        .get(url)
        .header("x-request-id", "unsampled")
        .header("x-b3-traceid", trace)
        .header("x-b3-spanid", "00f067aa0ba902b7")
        .header("x-b3-sampled", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let parts = app.last_request().unwrap();
    assert_eq!(header(&parts, "x-b3-sampled"), "0");
    assert_eq!(header(&parts, "x-b3-traceid"), trace);
    assert!(header(&parts, "traceparent").ends_with("-00"));
    // Everything sent before was reported; the unsampled request adds nothing.
    client.shutdown().await;
    server.shutdown().await;
    assert!(
        collector
            .spans()
            .iter()
            .all(|s| s["tags"]["guid:x-request-id"] != "unsampled")
    );
    assert_eq!(collector.spans().len(), 8);
}

#[tokio::test]
async fn a_failed_request_is_a_span_with_error_and_flags() {
    let collector = Collector::start().await;
    let client = sidecar("guestbook-ui", "v1", refused_addr().await, &collector).await;
    client
        .apply_snapshot(one_route(
            &client,
            "helloworld-service",
            vec![Endpoint {
                instance: "gone-1".into(),
                address: refused_addr().await.to_string(),
                labels: BTreeMap::from([("version".into(), "v1".into())]),
                identity: None,
                tls_mode: Default::default(),
            }],
        ))
        .unwrap();
    let via = client_via(client.outbound_addr().unwrap());
    let rsp = via
        .get("http://helloworld-service:8080/")
        .header("x-request-id", "refused")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 503);
    let spans = collector.spans_of_request("refused", 1).await;
    let tags = &spans[0]["tags"];
    assert_eq!(tags["http.status_code"], "503");
    assert_eq!(tags["response_flags"], "UF");
    assert_eq!(tags["error"], "true");
    client.shutdown().await;
}

// === metrics ===

/// `istio_requests_total` samples of a `/stats/prometheus` page.
fn request_counts(page: &str) -> Vec<(BTreeMap<String, String>, u64)> {
    page.lines()
        .filter_map(|line| line.strip_prefix("istio_requests_total{"))
        .map(|rest| {
            let (labels, value) = rest.rsplit_once("} ").unwrap();
            let labels = labels
                .split("\",")
                .map(|pair| {
                    let (k, v) = pair.split_once("=\"").unwrap();
                    (k.to_string(), v.trim_end_matches('"').to_string())
                })
                .collect();
            (labels, value.trim().parse().unwrap())
        })
        .collect()
}

/// The count of the series whose labels include all of `wanted`.
fn count(page: &str, wanted: &[(&str, &str)]) -> u64 {
    request_counts(page)
        .into_iter()
        .filter(|(labels, _)| {
            wanted
                .iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, n)| n)
        .sum()
}

async fn stats(proxy: &ProxyHandle) -> String {
    let rsp = direct_client()
        .get(format!("http://{}/stats/prometheus", proxy.admin_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert!(
        rsp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    rsp.text().await.unwrap()
}

/// The one lint promtool reports on Istio's own metric names: Prometheus
/// prefers seconds, Istio (and so every Istio dashboard) uses
/// `istio_request_duration_milliseconds`. A real Istio sidecar's page gets
/// the same line; the contract keeps Istio's name.
const ISTIO_NAME_LINT: &str =
    "istio_request_duration_milliseconds use base unit \"seconds\" instead of \"milliseconds\"";

/// Run `promtool check metrics` on `page`; a missing promtool fails.
///
/// promtool exits 1 when the page does not parse and 3 when it parses with
/// lint problems. The page must parse, and the only lint allowed is
/// [`ISTIO_NAME_LINT`].
fn promtool_check(page: &str) {
    use std::io::Write;
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!(
            "promtool is needed to check the metrics page ({e}). Install Debian's `prometheus` \
             package (apt-get install prometheus), or run scripts/setup-test-machine.sh"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let problems: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && *line != ISTIO_NAME_LINT)
        .collect();
    let code = output.status.code();
    assert!(
        (code == Some(0) || code == Some(3)) && problems.is_empty(),
        "promtool check metrics (exit {code:?}): {said}\n--- page ---\n{page}"
    );
}

#[tokio::test]
async fn metrics_count_every_request_by_version_and_code_and_pass_promtool() {
    let collector = Collector::start().await;
    // helloworld-service v1 always answers 200; v2 answers 503 on /fail.
    let v1_app = Upstream::start("hw-v1").await;
    let v2_app = Upstream::with(
        "hw-v2",
        Arc::new(|parts, _| match parts.uri.path() {
            "/fail" => (503, "failing on purpose".into()),
            _ => (200, "hw-v2".into()),
        }),
    )
    .await;
    let v1 = sidecar("helloworld-service", "v1", v1_app.addr, &collector).await;
    let v2 = sidecar("helloworld-service", "v2", v2_app.addr, &collector).await;
    let ui = sidecar("guestbook-ui", "v1", refused_addr().await, &collector).await;
    // `x-version: v2` goes to v2, everything else to v1.
    let to_v2 = RouteMatch {
        headers: BTreeMap::from([("x-version".into(), StringMatch::Exact("v2".into()))]),
        ..Default::default()
    };
    ui.apply_snapshot(Snapshot {
        version: 1,
        proxy: ui.instance().into(),
        virtual_hosts: vec![host(
            "helloworld-service",
            vec![
                route("v2", vec![to_v2], "helloworld-service|v2"),
                route("v1", vec![], "helloworld-service|v1"),
            ],
        )],
        clusters: vec![
            cluster("helloworld-service", Some("v1"), vec![endpoint(&v1)]),
            cluster("helloworld-service", Some("v2"), vec![endpoint(&v2)]),
        ],
        gateway: None,
        inbound: Default::default(),
        trust_bundle: Vec::new(),
    })
    .unwrap();

    let via = client_via(ui.outbound_addr().unwrap());
    let send = async |path: &str, v2: bool| {
        let mut req = via.get(format!("http://helloworld-service:8080{path}"));
        if v2 {
            req = req.header("x-version", "v2");
        }
        let rsp = req.send().await.unwrap();
        let status = rsp.status().as_u16();
        let _ = rsp.bytes().await.unwrap();
        status
    };
    for _ in 0..7 {
        assert_eq!(send("/hello", false).await, 200);
    }
    for _ in 0..3 {
        assert_eq!(send("/hello", true).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(send("/fail", true).await, 503);
    }
    // A host no route knows: 503 NR, destination unknown.
    let rsp = via.get("http://nowhere:8080/").send().await.unwrap();
    assert_eq!(rsp.status(), 503);
    let _ = rsp.bytes().await;

    // The caller's sidecar reports as the source (requests are counted when
    // their response ends, so poll).
    let source = [
        ("reporter", "source"),
        ("source_workload", "guestbook-ui"),
        ("source_version", "v1"),
    ];
    let expected: &[(&[(&str, &str)], u64)] = &[
        (
            &[
                ("destination_workload", "helloworld-service"),
                ("destination_version", "v1"),
                (
                    "destination_service",
                    "helloworld-service.default.svc.cluster.local",
                ),
                ("destination_service_name", "helloworld-service"),
                ("destination_workload_namespace", "default"),
                ("destination_cluster", "Kubernetes"),
                ("connection_security_policy", "unknown"),
                ("response_code", "200"),
                ("response_flags", "-"),
            ],
            7,
        ),
        (
            &[("destination_version", "v2"), ("response_code", "200")],
            3,
        ),
        (
            &[("destination_version", "v2"), ("response_code", "503")],
            2,
        ),
        (
            &[
                ("destination_workload", "unknown"),
                ("destination_version", "unknown"),
                // No route: the host as called, read as Kubernetes' DNS
                // would (a bare name is in the caller's namespace).
                ("destination_service", "nowhere.default.svc.cluster.local"),
                ("destination_service_name", "nowhere"),
                ("destination_workload_namespace", "unknown"),
                ("response_code", "503"),
                ("response_flags", "NR"),
            ],
            1,
        ),
    ];
    wait_until("the source counts", WAIT, async || {
        let page = stats(&ui).await;
        Ok(expected.iter().all(|(labels, n)| {
            let labels: Vec<_> = source.iter().chain(labels.iter()).copied().collect();
            count(&page, &labels) == *n
        }))
    })
    .await
    .unwrap();
    let page = stats(&ui).await;
    assert_eq!(count(&page, &source), 13, "{page}");
    promtool_check(&page);

    // Each callee's sidecar reports as the destination, and knows its caller.
    let destination = [
        ("reporter", "destination"),
        ("source_workload", "guestbook-ui"),
        ("source_version", "v1"),
        ("destination_workload", "helloworld-service"),
        (
            "destination_service",
            "helloworld-service.default.svc.cluster.local",
        ),
        // What the caller's sidecar said about itself, in the header.
        ("source_workload_namespace", "default"),
        ("source_canonical_service", "guestbook-ui"),
        ("source_canonical_revision", "v1"),
        ("source_cluster", "Kubernetes"),
        ("source_principal", "unknown"),
        // A destination knows its own policy: plain text until mTLS.
        ("connection_security_policy", "none"),
        ("request_protocol", "http"),
    ];
    wait_until("the destination counts", WAIT, async || {
        let v1_page = stats(&v1).await;
        let v2_page = stats(&v2).await;
        let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
            destination.iter().chain(extra.iter()).copied().collect()
        };
        Ok(count(
            &v1_page,
            &with(&[("destination_version", "v1"), ("response_code", "200")]),
        ) == 7
            && count(
                &v2_page,
                &with(&[("destination_version", "v2"), ("response_code", "200")]),
            ) == 3
            && count(
                &v2_page,
                &with(&[("destination_version", "v2"), ("response_code", "503")]),
            ) == 2)
    })
    .await
    .unwrap();
    promtool_check(&stats(&v1).await);
    promtool_check(&stats(&v2).await);

    // Durations went into the histogram, one observation per request.
    assert!(page.contains("istio_request_duration_milliseconds_bucket{"));
    let durations: u64 = page
        .lines()
        .filter(|l| {
            l.starts_with("istio_request_duration_milliseconds_count{")
                && l.contains("reporter=\"source\"")
        })
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(durations, 13);
    // Response sizes: "hw-v1" is 5 bytes, seven times.
    let v1_bytes = page
        .lines()
        .find(|l| {
            l.starts_with("istio_response_bytes_sum{") && l.contains("destination_version=\"v1\"")
        })
        .unwrap();
    let sum: f64 = v1_bytes.rsplit_once(' ').unwrap().1.parse().unwrap();
    assert_eq!(sum, 35.0, "{v1_bytes}");

    ui.shutdown().await;
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn telemetry_off_records_nothing_and_adds_no_headers() {
    let collector = Collector::start().await;
    let app = Upstream::start("hw").await;
    let mut config = Config::local_sidecar("helloworld-service", app.addr);
    config.zipkin_url = Some(collector.url());
    config.telemetry = false;
    let server = Proxy::start(config).await.unwrap();
    let mut config = Config::local_sidecar("guestbook-ui", refused_addr().await);
    config.zipkin_url = Some(collector.url());
    config.telemetry = false;
    let client = Proxy::start(config).await.unwrap();
    client
        .apply_snapshot(one_route(
            &client,
            "helloworld-service",
            vec![endpoint(&server)],
        ))
        .unwrap();
    let via = client_via(client.outbound_addr().unwrap());
    for _ in 0..5 {
        let rsp = via
            .get("http://helloworld-service:8080/")
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        let _ = rsp.bytes().await;
    }
    let parts = app.last_request().unwrap();
    for name in ["traceparent", "x-b3-traceid", "x-mesh-peer-metadata"] {
        assert!(!parts.headers.contains_key(name), "{name} was added");
    }
    assert!(parts.headers.contains_key("x-request-id"), "still added");
    for page in [stats(&client).await, stats(&server).await] {
        assert_eq!(request_counts(&page).len(), 0, "{page}");
    }
    client.shutdown().await;
    server.shutdown().await;
    assert!(collector.spans().is_empty());
}

#[tokio::test]
async fn a_collector_that_refuses_spans_costs_nothing_but_a_count() {
    // A collector that answers 400, as one does for a bad field.
    let app = axum::Router::new().route(
        "/api/v2/spans",
        axum::routing::post(async || (StatusCode::BAD_REQUEST, "span 0: traceId")),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/v2/spans", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let upstream = Upstream::start("hw").await;
    let mut config = Config::local_sidecar("guestbook-ui", refused_addr().await);
    config.zipkin_url = Some(url);
    let proxy = Proxy::start(config).await.unwrap();
    proxy
        .apply_snapshot(snapshot(1, vec![service("hw", vec![upstream.endpoint()])]))
        .unwrap();
    let via = client_via(proxy.outbound_addr().unwrap());
    for _ in 0..3 {
        assert_eq!(get(&via, "http://hw:8080/").await.status, 200);
    }
    wait_until("the refused spans are counted", WAIT, async || {
        Ok(stats(&proxy)
            .await
            .contains("micromesh_spans_failed_total 3"))
    })
    .await
    .unwrap();
    let page = stats(&proxy).await;
    assert!(page.contains("micromesh_spans_sent_total 0"), "{page}");
    assert!(page.contains("micromesh_spans_dropped_total 0"), "{page}");
    proxy.shutdown().await;
    server.abort();
}

#[tokio::test]
async fn aborts_and_callers_that_hang_up_are_counted_with_their_flags() {
    let collector = Collector::start().await;
    let slow = Upstream::with_delay(
        "hw-slow",
        Arc::new(|_, _| (200, "late".into())),
        Duration::from_secs(3),
    )
    .await;
    let ui = sidecar("guestbook-ui", "v1", refused_addr().await, &collector).await;
    let mut abort = route("abort", vec![], "helloworld-service|v1");
    abort.fault = Some(Fault {
        delay: None,
        abort: Some(FaultAbort {
            http_status: 503,
            grpc_status: None,
            percentage: 100.0,
        }),
    });
    ui.apply_snapshot(Snapshot {
        version: 1,
        proxy: ui.instance().into(),
        virtual_hosts: vec![
            host("helloworld-service", vec![abort]),
            host("slow", vec![route("slow", vec![], "slow")]),
        ],
        clusters: vec![
            cluster("helloworld-service", Some("v1"), vec![]),
            cluster("slow", None, vec![slow.endpoint()]),
        ],
        gateway: None,
        inbound: Default::default(),
        trust_bundle: Vec::new(),
    })
    .unwrap();
    let via = client_via(ui.outbound_addr().unwrap());

    // An injected abort: before any subset or endpoint is chosen.
    let rsp = via
        .get("http://helloworld-service:8080/")
        .header("x-request-id", "aborted")
        .send()
        .await
        .unwrap();
    assert_eq!(rsp.status(), 503);
    let _ = rsp.bytes().await;
    let spans = collector.spans_of_request("aborted", 1).await;
    assert_eq!(spans[0]["tags"]["response_flags"], "FI");
    assert_eq!(
        spans[0]["tags"]["upstream_cluster"],
        "outbound|8080|v1|helloworld-service"
    );

    // A caller that gives up before the answer: code 0, flag DC.
    let impatient = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{}", ui.outbound_addr().unwrap())).unwrap())
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let gave_up = impatient
        .get("http://slow:8080/")
        .header("x-request-id", "gave-up")
        .send()
        .await;
    assert!(gave_up.is_err(), "the client timed out");
    drop(impatient);

    // An abort reached no workload: Istio's labels, the service known and
    // the workload `unknown`.
    let aborted = [
        ("reporter", "source"),
        ("destination_workload", "unknown"),
        ("destination_version", "unknown"),
        (
            "destination_service",
            "helloworld-service.default.svc.cluster.local",
        ),
        ("response_code", "503"),
        ("response_flags", "FI"),
    ];
    let hung_up = [
        ("destination_workload", "slow"),
        ("response_code", "0"),
        ("response_flags", "DC"),
    ];
    wait_until("the abort and the hang-up are counted", WAIT, async || {
        let page = stats(&ui).await;
        Ok(count(&page, &aborted) == 1 && count(&page, &hung_up) == 1)
    })
    .await
    .unwrap();
    let spans = collector.spans_of_request("gave-up", 1).await;
    assert_eq!(spans[0]["tags"]["http.status_code"], "0");
    assert_eq!(spans[0]["tags"]["error"], "true");
    promtool_check(&stats(&ui).await);
    ui.shutdown().await;
}
