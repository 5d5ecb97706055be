//! Helpers shared by the control plane's telemetry tests: an in-process
//! control plane that scrapes fast, fake proxy admin ports serving
//! hand-written Prometheus text, and hand-made Zipkin spans.
//!
//! Each test file uses a different subset of these.
#![allow(dead_code)]

pub mod browser;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use mesh_api::xds::{ProxyAnnounce, ProxyMode};
use mesh_control::{Server, ServerHandle, Settings};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The scrape timeout of [`Control::start`]'s control plane. A scrape is
/// time-stamped when its answer arrived, at most this long after the proxy
/// wrote its counters: the timing uncertainty of every rate it computes.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_millis(300);

pub struct Control {
    pub handle: ServerHandle,
    pub http: reqwest::Client,
    _state: tempfile::TempDir,
}

impl Control {
    /// A control plane that scrapes every 100 ms, with a lease long enough
    /// that one announce keeps a fake proxy live for the whole test.
    pub async fn start() -> Control {
        let state = tempfile::tempdir().unwrap();
        let mut settings = Settings::local(state.path());
        settings.lease = Duration::from_secs(60);
        settings.scrape.interval = Duration::from_millis(100);
        settings.scrape.timeout = SCRAPE_TIMEOUT;
        settings.collector.max_traces = 50;
        settings.collector.max_spans_per_trace = 20;
        let handle = Server::start(settings).await.expect("control plane starts");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Control {
            handle,
            http,
            _state: state,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.url())
    }

    pub async fn get(&self, path: &str) -> Value {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    pub async fn post_spans(&self, spans: Value) -> reqwest::Response {
        self.http
            .post(self.url("/api/v2/spans"))
            .json(&spans)
            .send()
            .await
            .unwrap()
    }

    /// Apply Istio YAML, as `meshctl apply` does.
    pub async fn apply(&self, yaml: &str) {
        let response = self
            .http
            .post(self.url("/v1/config/apply"))
            .json(&json!({"files": [{"name": "test.yaml", "content": yaml}]}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(
            status.is_success(),
            "apply: {status}: {}",
            response.text().await.unwrap()
        );
    }

    pub async fn announce(
        &self,
        instance: &str,
        service: &str,
        version: &str,
        mode: ProxyMode,
        admin: &str,
    ) {
        let announce = ProxyAnnounce {
            instance: instance.into(),
            mode,
            service: service.into(),
            version: version.into(),
            address: if mode == ProxyMode::Sidecar {
                "127.0.0.1:1".into()
            } else {
                String::new()
            },
            ready: true,
            admin_address: admin.into(),
            ..ProxyAnnounce::default()
        };
        let response = self
            .http
            .put(self.url(&format!("/v1/proxies/{instance}")))
            .json(&announce)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "announce {instance}: {}",
            response.status()
        );
    }
}

pub fn span(
    trace: &str,
    id: &str,
    parent: Option<&str>,
    kind: &str,
    service: &str,
    start: u64,
    duration: u64,
) -> Value {
    let mut span = json!({
        "traceId": trace, "id": id, "kind": kind,
        "name": format!("{service}:8080/"),
        "timestamp": start, "duration": duration,
        "localEndpoint": {"serviceName": service},
        "tags": {"instance": format!("{service}-v1-00001"), "http.status_code": "200"}
    });
    if let Some(parent) = parent {
        span["parentId"] = json!(parent);
    }
    span
}

pub fn calls(mut span: Value, remote: &str) -> Value {
    span["remoteEndpoint"] = json!({"serviceName": remote});
    span
}

/// A page's first hop: the gateway's CLIENT span `a1` calling
/// guestbook-ui, and guestbook-ui's SERVER span `b1` under it.
pub fn gateway_calls_ui(trace: &str) -> [Value; 2] {
    hop(
        trace,
        None,
        ("00000000000000a1", "00000000000000b1"),
        "ingressgateway",
        "guestbook-ui",
        1_000_000,
        9_000,
    )
}

/// guestbook-ui's CLIENT span `b2` (under `parent`, its SERVER span `b1`
/// when the app forwarded the trace headers) calling helloworld-service,
/// and helloworld-service's SERVER span `c1` under it.
pub fn ui_calls_helloworld(trace: &str, parent: Option<&str>) -> [Value; 2] {
    hop(
        trace,
        parent,
        ("00000000000000b2", "00000000000000c1"),
        "guestbook-ui",
        "helloworld-service",
        1_001_000,
        5_000,
    )
}

/// One call through two sidecars, as both report it: the caller's CLIENT
/// span `ids.0` (under `parent`) calling `callee`, and the callee's SERVER
/// span `ids.1` under it, starting 500 µs later and ending 500 µs sooner.
pub fn hop(
    trace: &str,
    parent: Option<&str>,
    ids: (&str, &str),
    caller: &str,
    callee: &str,
    start: u64,
    duration: u64,
) -> [Value; 2] {
    let (client, server) = ids;
    [
        calls(
            span(trace, client, parent, "CLIENT", caller, start, duration),
            callee,
        ),
        span(
            trace,
            server,
            Some(client),
            "SERVER",
            callee,
            start + 500,
            duration - 1_000,
        ),
    ]
}

/// What a fake admin port answers: computed when the scrape arrives.
type Page = Arc<dyn Fn() -> String + Send + Sync>;

/// A fake proxy admin port: serves whatever text the test puts in it, or
/// text computed at the moment of each scrape ([`FakeAdmin::serve_with`]).
#[derive(Clone)]
pub struct FakeAdmin {
    pub addr: String,
    page: Arc<Mutex<Page>>,
}

impl FakeAdmin {
    pub async fn start() -> FakeAdmin {
        let page: Arc<Mutex<Page>> = Arc::new(Mutex::new(Arc::new(String::new)));
        let app = axum::Router::new()
            .route(
                "/stats/prometheus",
                axum::routing::get(|State(page): State<Arc<Mutex<Page>>>| async move {
                    let page = page.lock().unwrap().clone();
                    page()
                }),
            )
            .with_state(page.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeAdmin { addr, page }
    }

    pub fn set(&self, text: String) {
        *self.page.lock().unwrap() = Arc::new(move || text.clone());
    }

    /// Answer every scrape with `page()`, called as the scrape arrives: a
    /// counter computed from the clock then is exact at that instant.
    pub fn serve_with(&self, page: impl Fn() -> String + Send + Sync + 'static) {
        *self.page.lock().unwrap() = Arc::new(page);
    }
}

/// An admin port that accepts connections and never answers.
pub async fn hanging_admin() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = axum::Router::new().route(
        "/stats/prometheus",
        axum::routing::get(std::future::pending::<String>),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Istio's series for one edge: `count` requests with `code`, each taking
/// `ms` milliseconds.
pub fn series(reporter: &str, src: &str, dst: &str, code: &str, count: u64, ms: f64) -> String {
    let (sw, sv) = src.split_once('@').unwrap();
    let (dw, dv) = dst.split_once('@').unwrap();
    let labels = format!(
        "reporter=\"{reporter}\",source_workload=\"{sw}\",source_version=\"{sv}\",\
         destination_workload=\"{dw}\",destination_version=\"{dv}\",destination_service=\"{dw}\",\
         response_code=\"{code}\",response_flags=\"-\""
    );
    let mut text =
        format!("# TYPE istio_requests counter\nistio_requests_total{{{labels}}} {count}\n");
    for le in [0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0] {
        let n = if ms <= le { count } else { 0 };
        text +=
            &format!("istio_request_duration_milliseconds_bucket{{{labels},le=\"{le}\"}} {n}\n");
    }
    text +=
        &format!("istio_request_duration_milliseconds_bucket{{{labels},le=\"+Inf\"}} {count}\n");
    text
}
