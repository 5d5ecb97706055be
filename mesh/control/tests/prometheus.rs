//! A real Prometheus reads micromesh the way it reads Istio.
//!
//! ```text
//! test ("guestbook-ui app") --> [guestbook-ui sidecar] --> [helloworld-service v1 sidecar] --> app
//!                                                      \-> [helloworld-service v2 sidecar] --> app (500 on /fail)
//! prometheus (Debian's package) scrapes every sidecar's /stats/prometheus
//! and the control plane's /metrics, once a second
//! ```
//!
//! Istio's Grafana dashboards pick a namespace and a workload or service
//! from template variables and then filter every panel by them
//! (`destination_workload_namespace=~"$namespace"`). A series that lacks
//! the label never matches a selected namespace, so the dashboards go
//! empty; Kiali groups by canonical service, revision, cluster and
//! principal and drops series without them. The queries below are written
//! in the shape of those dashboards' and Kiali's, with the variables filled
//! in as Grafana fills them, and each must return data. A query for a
//! namespace no workload lives in must return none: that is what shows the
//! filters really select.
//!
//! The CI's conformance step (`scripts/prometheus-dashboards.sh`) runs every
//! HTTP panel of Istio's own dashboard files the same way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::anyhow;
use mesh_control::{Server, ServerHandle, Settings};
use mesh_proxy::{Config, Proxy, ProxyHandle};
use mesh_testkit::{retry_until_ok, wait_for, wait_for_endpoints, wait_until};
use serde_json::Value;
use tokio::net::TcpListener;

/// How often Prometheus scrapes here. Grafana's `$__rate_interval` is
/// `max($__interval + scrape interval, 4 * scrape interval)`; with
/// `$__interval` at its floor (the scrape interval) that is 4 s.
const SCRAPE_INTERVAL_S: u64 = 1;
const RATE_INTERVAL: &str = "4s";

// === the mesh ===

struct Mesh {
    control: ServerHandle,
    _state: tempfile::TempDir,
    proxies: Vec<ProxyHandle>,
}

impl Mesh {
    async fn sidecar(&mut self, service: &str, version: &str, app: SocketAddr) -> usize {
        let settings: HashMap<String, String> = [
            ("MESH_SERVICE", service.to_string()),
            ("MESH_VERSION", version.to_string()),
            (
                "MESH_INSTANCE",
                format!("{service}-{version}-{:05x}", fastrand::u32(..0xfffff)),
            ),
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
}

/// helloworld-service: answers with its version; v2 fails `/fail` with 500.
async fn helloworld(version: &'static str) -> SocketAddr {
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| async move {
        if version == "v2" && uri.path() == "/fail" {
            // 500, not 503: the default route retries a 503 elsewhere.
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "failing on purpose",
            )
        } else {
            (axum::http::StatusCode::OK, version)
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

// === Prometheus ===

/// How long the test waits for Prometheus to start and to scrape.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(30);

/// A `prometheus` process, killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Start Debian's `prometheus` scraping `sidecars` (their admin
    /// addresses, at Istio's `/stats/prometheus`) and `control` (at
    /// `/metrics`), as the annotations of Istio's pods ask.
    async fn start(dir: &Path, sidecars: &[SocketAddr], control: SocketAddr) -> Prometheus {
        let quoted = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let config = format!(
            "global:\n  scrape_interval: {SCRAPE_INTERVAL_S}s\n  scrape_timeout: 900ms\n\
             scrape_configs:\n\
             - job_name: envoy-stats\n  metrics_path: /stats/prometheus\n  \
               static_configs: [{{targets: [{}]}}]\n\
             - job_name: pilot\n  metrics_path: /metrics\n  \
               static_configs: [{{targets: [{}]}}]\n",
            quoted(sidecars),
            quoted(&[control]),
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap().port()
        };
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `prometheus` ({e}): this test needs a real Prometheus. Install \
                     Debian's `prometheus` package (apt-get install prometheus), or run \
                     scripts/setup-test-machine.sh"
                )
            });
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        let log = dir.join("prometheus.log");
        // Refused until it listens, 503 until its storage is up: retried.
        retry_until_ok("prometheus to be ready", PROMETHEUS_WAIT, || async {
            let ready = prometheus
                .http
                .get(format!("{}/-/ready", prometheus.url))
                .send()
                .await;
            match ready {
                Ok(r) if r.status().is_success() => Ok(()),
                _ => Err(anyhow!(
                    "its log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )),
            }
        })
        .await
        .unwrap();
        prometheus
    }

    /// The result vector of an instant query.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let response: Value = self
            .http
            .post(format!("{}/api/v1/query", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("query={}", percent_encode(promql)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(response["status"], "success", "{promql}: {response:#}");
        response["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The samples of `promql` that are numbers (a quantile of no requests
    /// is NaN, which a dashboard draws as no data).
    async fn data(&self, promql: &str) -> Vec<Value> {
        self.query(promql)
            .await
            .into_iter()
            .filter(|sample| {
                sample["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| !v.is_nan())
            })
            .collect()
    }
}

/// `application/x-www-form-urlencoded` for one value: everything but
/// unreserved characters as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Fill template variables as Grafana does: `$__rate_interval` from the
/// scrape interval, every other `$name` from `vars` (a single selected
/// value is inserted as it is, also inside `=~"..."`).
fn grafana(query: &str, vars: &[(&str, &str)]) -> String {
    let mut filled = query.replace("$__rate_interval", RATE_INTERVAL);
    // Longest names first: `$srcns` must not be taken as `$src` + `ns`.
    let mut vars = vars.to_vec();
    vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    for (name, value) in vars {
        filled = filled.replace(&format!("${name}"), value);
    }
    assert!(
        !filled.contains('$'),
        "a variable was left unfilled: {filled}"
    );
    filled
}

/// What promtool says of Istio's own pages, and so may say of ours: the
/// sidecar's duration keeps Istio's milliseconds, and istiod's counters
/// keep their names without `_total`.
const ISTIOS_OWN_LINTS: [&str; 3] = [
    "istio_request_duration_milliseconds use base unit \"seconds\" instead of \"milliseconds\"",
    "pilot_xds_pushes counter metrics should have \"_total\" suffix",
    "pilot_total_xds_rejects counter metrics should have \"_total\" suffix",
];

/// `promtool check metrics` on `page`: it must parse, and the only lints
/// are [`ISTIOS_OWN_LINTS`].
fn promtool_check(what: &str, page: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool is needed ({e}): install Debian's `prometheus` package")
        });
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
        .filter(|l| !l.is_empty() && !ISTIOS_OWN_LINTS.contains(l))
        .collect();
    let code = output.status.code();
    assert!(
        (code == Some(0) || code == Some(3)) && problems.is_empty(),
        "promtool check metrics on {what} (exit {code:?}): {said}\n--- page ---\n{page}"
    );
}

// === the test ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istios_dashboard_queries_with_a_namespace_selected_return_data() {
    let state = tempfile::tempdir().unwrap();
    let control = Server::start(Settings::local(state.path()))
        .await
        .expect("control plane starts");
    let mut mesh = Mesh {
        control,
        _state: state,
        proxies: Vec::new(),
    };
    let hw1 = mesh
        .sidecar("helloworld-service", "v1", helloworld("v1").await)
        .await;
    let hw2 = mesh
        .sidecar("helloworld-service", "v2", helloworld("v2").await)
        .await;
    // The test plays guestbook-ui's app: it calls through that sidecar.
    let ui = mesh
        .sidecar("guestbook-ui", "v1", "127.0.0.1:9".parse().unwrap())
        .await;
    // guestbook-ui's sidecar sees both versions.
    wait_for_endpoints(&mesh.proxies[ui], "helloworld-service", 2)
        .await
        .unwrap();

    // Traffic all along: every fifth request asks for `/fail`; round robin
    // alternates the versions and five is odd, so half of those reach v2
    // and fail there, and the error panels have data too.
    let outbound = mesh.proxies[ui].outbound_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let traffic = tokio::spawn({
        let (stop, sent) = (stop.clone(), sent.clone());
        async move {
            let via = reqwest::Client::builder()
                .proxy(reqwest::Proxy::http(format!("http://{outbound}")).unwrap())
                .build()
                .unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let path = if i.is_multiple_of(5) {
                    "/fail"
                } else {
                    "/hello"
                };
                if let Ok(rsp) = via
                    .post(format!("http://helloworld-service:8080{path}"))
                    .body("hello")
                    .send()
                    .await
                {
                    let _ = rsp.bytes().await;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let sidecars: Vec<SocketAddr> = mesh.proxies.iter().map(|p| p.admin_addr()).collect();
    let dir = tempfile::tempdir().unwrap();
    let prometheus = Prometheus::start(dir.path(), &sidecars, mesh.control.addr()).await;

    // A config change while Prometheus watches: istiod's dashboard shows
    // the pushes it causes and how long the proxies took to get it.
    wait_until(
        "the first scrape of the control plane",
        PROMETHEUS_WAIT,
        || async { Ok(!prometheus.data("pilot_xds_pushes").await.is_empty()) },
    )
    .await
    .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let virtual_service = "apiVersion: networking.istio.io/v1\n\
                           kind: VirtualService\n\
                           metadata: {name: helloworld-service}\n\
                           spec:\n  hosts: [helloworld-service]\n  \
                           http:\n  - route:\n    - destination: {host: helloworld-service}\n";
    let applied = http
        .post(format!("{}/v1/config/apply", mesh.control.url()))
        .json(&serde_json::json!({"files": [{"name": "vs.yaml", "content": virtual_service}]}))
        .send()
        .await
        .unwrap();
    assert!(
        applied.status().is_success(),
        "{}",
        applied.text().await.unwrap()
    );

    // The variables as a learner would pick them in Grafana: namespace
    // `default`, the service by its full name, a workload.
    let vars = [
        ("namespace", "default"),
        ("workload", "helloworld-service"),
        ("service", "helloworld-service.default.svc.cluster.local"),
        ("qrep", "source|destination"),
        ("srcns", "default"),
        ("srcwl", "guestbook-ui"),
        ("srccluster", "Kubernetes"),
        ("dstns", "default"),
        ("dstwl", "helloworld-service"),
        ("dstcluster", "Kubernetes"),
        ("dstsvc", "helloworld-service.default.svc.cluster.local"),
    ];
    // (what, query in the dashboards' shape)
    let queries: &[(&str, &str)] = &[
        (
            "mesh dashboard: HTTP workloads",
            r#"label_join(sum by (destination_workload,destination_workload_namespace,destination_service) (rate(istio_requests_total{reporter=~"source|waypoint"}[$__rate_interval])), "destination_workload_var", ".", "destination_workload", "destination_workload_namespace")"#,
        ),
        (
            "mesh dashboard: component versions",
            r#"sum by (component,tag) (istio_build)"#,
        ),
        (
            "service dashboard: $srccluster values",
            r#"sum(istio_requests_total{reporter=~"$qrep", destination_service="$service"}) by (source_cluster)"#,
        ),
        (
            "service dashboard: $dstns values",
            r#"sum(istio_requests_total{reporter="destination", destination_service="$service"}) by (destination_workload_namespace)"#,
        ),
        (
            "service dashboard: client request volume",
            r#"round(sum(irate(istio_requests_total{reporter=~"$qrep",destination_service="$service"}[$__rate_interval])), 0.001)"#,
        ),
        (
            "service dashboard: incoming requests by source and response code",
            r#"round(sum(irate(istio_requests_total{connection_security_policy!="mutual_tls", destination_service="$service", reporter=~"$qrep", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace, response_code), 0.001)"#,
        ),
        (
            "service dashboard: incoming request size by source",
            r#"histogram_quantile(0.90, sum(irate(istio_request_bytes_bucket{reporter=~"$qrep", connection_security_policy!="mutual_tls", destination_service="$service", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace, le))"#,
        ),
        (
            "service dashboard: requests by destination workload",
            r#"round(sum(irate(istio_requests_total{connection_security_policy!="mutual_tls", destination_service=~"$service", reporter=~"$qrep", destination_workload=~"$dstwl", destination_workload_namespace=~"$dstns", destination_cluster=~"$dstcluster"}[$__rate_interval])) by (destination_workload, destination_workload_namespace, response_code), 0.001)"#,
        ),
        (
            "workload dashboard: incoming request duration by source",
            r#"(histogram_quantile(0.99, sum(irate(istio_request_duration_milliseconds_bucket{reporter=~"$qrep", connection_security_policy!="mutual_tls", destination_workload=~"$workload", destination_workload_namespace=~"$namespace", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace, le)) / 1000)"#,
        ),
        (
            "workload dashboard: response size by source",
            r#"histogram_quantile(0.50, sum(irate(istio_response_bytes_bucket{reporter=~"$qrep", connection_security_policy!="mutual_tls", destination_workload=~"$workload", destination_workload_namespace=~"$namespace", source_workload=~"$srcwl", source_workload_namespace=~"$srcns"}[$__rate_interval])) by (source_workload, source_workload_namespace, le))"#,
        ),
        (
            "workload dashboard: outgoing requests by destination",
            r#"round(sum(irate(istio_requests_total{destination_principal!~"spiffe.*", source_workload_namespace=~"$namespace", source_workload=~"guestbook-ui", reporter="source", destination_service=~"$dstsvc"}[$__rate_interval])) by (destination_service, response_code), 0.001)"#,
        ),
        (
            "Kiali: the namespace graph, by canonical service and revision",
            r#"sum(rate(istio_requests_total{reporter="source",source_workload_namespace="default",request_protocol="http"}[$__rate_interval])) by (source_cluster,source_workload_namespace,source_canonical_service,source_canonical_revision,source_principal,destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,destination_canonical_service,destination_canonical_revision,destination_principal,response_code,grpc_response_status,response_flags) > 0"#,
        ),
        (
            "Kiali: 5xx on the edge",
            r#"sum(rate(istio_requests_total{reporter="source",destination_workload_namespace="default",destination_canonical_service="helloworld-service",destination_canonical_revision="v2",response_code=~"5.."}[$__rate_interval])) > 0"#,
        ),
        (
            "pilot dashboard: connected proxies",
            r#"sum(pilot_xds{}) by (version)"#,
        ),
        (
            "pilot dashboard: pushes",
            r#"sum(pilot_xds_pushes) by (type)"#,
        ),
        (
            "pilot dashboard: proxy push time",
            r#"histogram_quantile(0.99, sum(rate(pilot_proxy_convergence_time_bucket[1m])) by (le))"#,
        ),
        (
            "pilot dashboard: pushes per second",
            r#"sum(irate(pilot_xds_pushes[1m])) > 0"#,
        ),
    ];
    for (what, query) in queries {
        let promql = grafana(query, &vars);
        let data = wait_for(
            &format!("data for {promql} ({what})"),
            PROMETHEUS_WAIT,
            || async {
                let data = prometheus.data(&promql).await;
                Ok((!data.is_empty()).then_some(data))
            },
        )
        .await
        .unwrap();
        tracing::info!(what, series = data.len(), "has data");
    }

    // The labels carry Istio's values.
    let by_cluster = prometheus
        .data(&grafana(
            r#"sum(istio_requests_total{destination_service="$service"}) by (source_cluster, destination_cluster, destination_service_name, destination_service_namespace)"#,
            &vars,
        ))
        .await;
    for sample in &by_cluster {
        let m = &sample["metric"];
        assert_eq!(
            (
                m["source_cluster"].as_str(),
                m["destination_cluster"].as_str(),
                m["destination_service_name"].as_str(),
                m["destination_service_namespace"].as_str()
            ),
            (
                Some("Kubernetes"),
                Some("Kubernetes"),
                Some("helloworld-service"),
                Some("default")
            ),
            "{sample:#}"
        );
    }
    let connected = prometheus.data("pilot_xds").await;
    assert_eq!(
        connected[0]["value"][1], "3",
        "three sidecars are connected: {connected:#?}"
    );

    // The same queries with a namespace nothing runs in find nothing: the
    // namespace filters select, they do not match everything.
    let elsewhere: Vec<(&str, &str)> = vars
        .iter()
        .map(|(k, v)| match *k {
            "namespace" | "srcns" | "dstns" => (*k, "guestbook"),
            _ => (*k, *v),
        })
        .collect();
    for (what, query) in &queries[5..11] {
        let promql = grafana(query, &elsewhere);
        assert!(
            prometheus.data(&promql).await.is_empty(),
            "{what} has data in namespace guestbook: {promql}"
        );
    }

    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 0);

    // promtool on a sidecar's page and on the control plane's.
    let page = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    for index in [ui, hw1, hw2] {
        let admin = mesh.proxies[index].admin_addr();
        promtool_check(
            &format!("sidecar {index}"),
            &page(format!("http://{admin}/stats/prometheus")).await,
        );
    }
    promtool_check(
        "the control plane",
        &page(format!("{}/metrics", mesh.control.url())).await,
    );
    drop(prometheus);
    for proxy in mesh.proxies.drain(..) {
        proxy.shutdown().await;
    }
    mesh.control.shutdown().await.unwrap();
}

/// A proxy's NACK shows in `pilot_total_xds_rejects`, as istiod counts a
/// rejected xDS response; an ACK does not.
#[tokio::test]
async fn a_rejected_snapshot_is_counted_as_an_xds_reject() {
    let state = tempfile::tempdir().unwrap();
    let control = Server::start(Settings::local(state.path()))
        .await
        .expect("control plane starts");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let announce = mesh_api::xds::ProxyAnnounce {
        instance: "hw-1".into(),
        service: "helloworld-service".into(),
        version: "v1".into(),
        address: "127.0.0.1:1".into(),
        ready: true,
        ..Default::default()
    };
    let put = http
        .put(format!("{}/v1/proxies/hw-1", control.url()))
        .json(&announce)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let metrics = async || {
        http.get(format!("{}/metrics", control.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let version = control.version();
    for (accepted, rejects) in [(true, 0), (false, 1), (false, 2), (true, 2)] {
        let ack = mesh_api::xds::AckRequest {
            version,
            accepted,
            error: (!accepted).then(|| "bad header value".to_string()),
        };
        let posted = http
            .post(format!("{}/v1/proxies/hw-1/ack", control.url()))
            .json(&ack)
            .send()
            .await
            .unwrap();
        assert!(posted.status().is_success());
        let page = metrics().await;
        assert!(
            page.contains(&format!(
                "pilot_total_xds_rejects{{type=\"snapshot\"}} {rejects}\n"
            )),
            "after accepted={accepted}: {page}"
        );
    }
    assert!(metrics().await.contains("pilot_xds{"), "connected proxies");
    // Also on the dashboard's port, 15014 by default: where Prometheus
    // finds istiod's metrics, and what the cluster manifest's annotations say.
    let dashboard = control.dashboard_url().expect("the dashboard runs");
    let page = http
        .get(format!("{dashboard}metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("pilot_total_xds_rejects{"), "{page}");
    control.shutdown().await.unwrap();
}
