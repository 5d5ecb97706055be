//! The dashboard: one page, served by the control plane on its own port
//! (127.0.0.1:15014 by default), that shows what the mesh is doing.
//!
//! ```text
//! Services  every service, its versions and instances      GET /v1/services
//! Traffic   the live graph: rps, error %, p99 per edge,     GET /api/v1/graph   (every second)
//!           a lock on each mutual-TLS edge (as Kiali)
//! Routes    VirtualServices with their effective split,     GET /api/v1/routes
//!           DestinationRules and analyze warnings
//! Traces    recent traces, a waterfall per trace,           GET /api/v1/traces, /api/v1/traces/{id}/analysis
//!           broken chains highlighted
//! ```
//!
//! It is the talk's visualizer, Kiali's graph and Zipkin's UI in one small
//! page: plain HTML, CSS, JavaScript and SVG, compiled into the binary with
//! `include_str!` (no npm, no build step, nothing fetched from the
//! internet, so it works offline in a classroom). The page calls the same
//! JSON API as meshctl; the dashboard port serves that API too, so the page
//! needs no CORS: everything is same-origin.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use mesh_api::config::virtual_service::{HttpRoute, RouteDestination};
use mesh_api::config::{ConfigSet, Diagnostic};
use mesh_api::snapshot::{RouteMatch, StringMatch};
use serde::Serialize;

use crate::api::Pretty;
use crate::state::Shared;

const INDEX_HTML: &str = include_str!("../dashboard/index.html");
const DASHBOARD_CSS: &str = include_str!("../dashboard/dashboard.css");
const DASHBOARD_JS: &str = include_str!("../dashboard/dashboard.js");

/// Where the dashboard listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DashboardListen {
    /// No dashboard.
    Off,
    /// Listen here or fail to start (an address the user asked for).
    Required(SocketAddr),
    /// Listen here if the port is free; otherwise run without a dashboard
    /// and say so. This is the default (127.0.0.1:15014): a second control
    /// plane on the same machine (a test, a benchmark) must not fail just
    /// because the first one holds the dashboard port.
    Preferred(SocketAddr),
}

impl DashboardListen {
    /// Parse `--dashboard-listen`: `off`, or an address.
    pub fn parse(text: &str) -> Result<DashboardListen, String> {
        match text.trim() {
            "off" | "none" | "" => Ok(DashboardListen::Off),
            addr => addr.parse().map(DashboardListen::Required).map_err(|e| {
                format!(
                    "--dashboard-listen (MESH_DASHBOARD_LISTEN) {addr:?}: {e}; write ip:port, \
                     for example 127.0.0.1:15014 (port 0 picks a free one), or `off`"
                )
            }),
        }
    }
}

/// What `GET /api/v1/dashboard` says: where the page is, or why there is none.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DashboardInfo {
    /// `http://127.0.0.1:15014/`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Why the dashboard is not running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl DashboardInfo {
    pub fn running(addr: SocketAddr) -> DashboardInfo {
        DashboardInfo {
            url: Some(format!("http://{addr}/")),
            error: None,
        }
    }
}

#[derive(Clone, Debug)]
struct DashboardApi {
    shared: Arc<Shared>,
    info: Arc<DashboardInfo>,
}

/// The JSON the page needs beyond the rest of the API; mounted on both ports.
pub(crate) fn api_router(shared: Arc<Shared>, info: DashboardInfo) -> Router {
    Router::new()
        .route("/api/v1/dashboard", get(dashboard_info))
        .route("/api/v1/routes", get(routes))
        .with_state(DashboardApi {
            shared,
            info: Arc::new(info),
        })
}

/// The page and its assets; only on the dashboard's port.
pub fn assets_router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/index.html",
            get(|| async { page("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/dashboard.css",
            get(|| async { page("text/css; charset=utf-8", DASHBOARD_CSS) }),
        )
        .route(
            "/dashboard.js",
            get(|| async { page("text/javascript; charset=utf-8", DASHBOARD_JS) }),
        )
}

fn page(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    // No caching: after an upgrade the page is the binary's, not a stale copy.
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

async fn dashboard_info(State(api): State<DashboardApi>) -> Pretty<DashboardInfo> {
    Pretty((*api.info).clone())
}

// === routes: what the Routes view shows ===

/// `GET /api/v1/routes`: each VirtualService rule with its effective split,
/// each DestinationRule with its subsets, and what analysis says of each.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutesView {
    pub virtual_services: Vec<VirtualServiceView>,
    pub destination_rules: Vec<DestinationRuleView>,
    /// Every finding of `GET /v1/analyze`.
    pub diagnostics: Vec<Diagnostic>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceView {
    pub name: String,
    pub namespace: String,
    pub hosts: Vec<String>,
    pub gateways: Vec<String>,
    pub rules: Vec<RuleView>,
    /// How it combines with the other VirtualServices of its hosts:
    /// `gateway *: 2 of 2 (a-messages + b-hello)` (`ConfigSet::merges`).
    pub merged: Vec<String>,
    pub diagnostics: Vec<Diagnostic>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleView {
    pub name: Option<String>,
    /// `uri prefix /api`, `header end-user exact jason`; empty: every request.
    pub matches: Vec<String>,
    pub destinations: Vec<SplitView>,
    pub fault: Option<String>,
    pub timeout_ms: Option<u64>,
    pub retries: Option<String>,
    pub mirror: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SplitView {
    pub host: String,
    pub subset: Option<String>,
    /// As written (`None`: not set).
    pub weight: Option<u32>,
    /// The share of the rule's requests it gets, 0-100.
    pub percent: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleView {
    pub name: String,
    pub namespace: String,
    pub host: String,
    /// `v1 (version=v1)`.
    pub subsets: Vec<String>,
    /// The other DestinationRules of its host it is merged with.
    pub merged: Vec<String>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Istio's rule for a rule's split: one destination takes everything
/// whatever its weight; with several, an unset weight is 0 and the others
/// are relative shares (80 and 20, or 4 and 1, are both 80/20).
pub fn effective_split(route: &[RouteDestination]) -> Vec<SplitView> {
    let single = route.len() == 1;
    let weights: Vec<u32> = route
        .iter()
        .map(|d| if single { 100 } else { d.weight.unwrap_or(0) })
        .collect();
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    route
        .iter()
        .zip(weights)
        .map(|(d, w)| SplitView {
            host: d.destination.host.clone(),
            subset: d.destination.subset.clone(),
            weight: d.weight,
            percent: if total == 0 {
                0.0
            } else {
                f64::from(w) * 100.0 / total as f64
            },
        })
        .collect()
}

fn describe_rule(rule: &HttpRoute) -> RuleView {
    RuleView {
        name: rule.name.clone(),
        matches: rule.matches.iter().map(describe_match).collect(),
        destinations: effective_split(&rule.route),
        fault: rule.fault.as_ref().map(|f| {
            let mut parts = Vec::new();
            if let Some(d) = &f.delay {
                parts.push(format!(
                    "delay {} ms for {}",
                    d.fixed_delay_ms,
                    percent(d.percentage)
                ));
            }
            if let Some(a) = &f.abort {
                parts.push(format!(
                    "abort {} for {}",
                    a.describe_status(),
                    percent(a.percentage)
                ));
            }
            parts.join(", ")
        }),
        timeout_ms: rule.timeout_ms,
        retries: rule.retries.as_ref().map(|r| {
            let mut text = format!("{} attempts", r.attempts.unwrap_or(0));
            if let Some(ms) = r.per_try_timeout_ms {
                text += &format!(", {ms} ms per try");
            }
            if let Some(on) = &r.retry_on {
                let mut all = on.conditions.clone();
                all.extend(on.status_codes.iter().map(u16::to_string));
                text += &format!(", on {}", all.join(","));
            }
            text
        }),
        mirror: rule.mirror.as_ref().map(|m| {
            let d = &m.destination;
            format!(
                "{}{} ({})",
                d.host,
                d.subset
                    .as_deref()
                    .map(|s| format!(" subset {s}"))
                    .unwrap_or_default(),
                percent(m.percentage.or(Some(100.0)))
            )
        }),
    }
}

/// A fault's or mirror's percentage; Istio injects nothing when unset.
fn percent(p: Option<f64>) -> String {
    match p {
        Some(p) => format!("{p}% of requests"),
        None => "no requests (no percentage set)".into(),
    }
}

fn describe_match(m: &RouteMatch) -> String {
    let text = |s: &StringMatch| match s {
        StringMatch::Exact(v) => format!("= {v}"),
        StringMatch::Prefix(v) => format!("prefix {v}"),
        StringMatch::Regex(v) => format!("~ {v}"),
    };
    let mut parts = Vec::new();
    if let Some(uri) = &m.uri {
        parts.push(format!("uri {}", text(uri)));
    }
    if let Some(method) = &m.method {
        parts.push(format!("method {}", text(method)));
    }
    for (name, value) in &m.headers {
        parts.push(format!("header {name} {}", text(value)));
    }
    for (name, value) in &m.without_headers {
        parts.push(format!("without header {name} {}", text(value)));
    }
    for (name, value) in &m.query_params {
        parts.push(format!("query {name} {}", text(value)));
    }
    if parts.is_empty() {
        "every request".into()
    } else {
        parts.join(" and ")
    }
}

async fn routes(State(api): State<DashboardApi>) -> Pretty<RoutesView> {
    let model = api.shared.lock().await;
    let diagnostics = model
        .config
        .analyze_proxies(&model.registry.live_announces());
    Pretty(routes_view(&model.config, diagnostics))
}

/// The Routes view of `config`, with analysis' `diagnostics`.
fn routes_view(config: &ConfigSet, diagnostics: Vec<Diagnostic>) -> RoutesView {
    let merges = config.merges();
    let merged = |id: &str| merges.get(id).cloned().unwrap_or_default();
    let about = |id: &str| -> Vec<Diagnostic> {
        diagnostics
            .iter()
            .filter(|d| d.resource == id)
            .cloned()
            .collect()
    };
    let virtual_services = config
        .virtual_services()
        .map(|(resource, vs)| VirtualServiceView {
            name: resource.metadata.name.clone(),
            namespace: resource.metadata.namespace.clone(),
            hosts: vs.hosts.clone(),
            gateways: vs.gateways.clone(),
            rules: vs.http.iter().map(describe_rule).collect(),
            merged: merged(&resource.id()),
            diagnostics: about(&resource.id()),
        })
        .collect();
    let destination_rules = config
        .destination_rules()
        .map(|(resource, dr)| DestinationRuleView {
            name: resource.metadata.name.clone(),
            namespace: resource.metadata.namespace.clone(),
            host: dr.host.clone(),
            subsets: dr
                .subsets
                .iter()
                .map(|s| {
                    let labels: Vec<String> =
                        s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("{} ({})", s.name, labels.join(", "))
                })
                .collect(),
            merged: merged(&resource.id()),
            diagnostics: about(&resource.id()),
        })
        .collect();
    RoutesView {
        virtual_services,
        destination_rules,
        diagnostics,
    }
}

#[cfg(test)]
mod tests {
    use mesh_api::config::virtual_service::Destination;

    use super::*;

    fn to(subset: &str, weight: Option<u32>) -> RouteDestination {
        RouteDestination {
            destination: Destination {
                host: "helloworld-service".into(),
                subset: Some(subset.into()),
                port: None,
            },
            weight,
        }
    }

    #[test]
    fn weights_are_relative_and_normalised_to_percent() {
        let split = effective_split(&[to("v1", Some(4)), to("v2", Some(1))]);
        assert_eq!((split[0].percent, split[1].percent), (80.0, 20.0));
        // A single destination takes everything, whatever it says.
        assert_eq!(effective_split(&[to("v1", Some(7))])[0].percent, 100.0);
        // With several, an unset weight is 0.
        let split = effective_split(&[to("v1", None), to("v2", Some(50))]);
        assert_eq!((split[0].percent, split[1].percent), (0.0, 100.0));
        assert_eq!(
            effective_split(&[to("v1", None), to("v2", None)])[0].percent,
            0.0
        );
    }

    #[test]
    fn the_routes_view_says_what_is_merged() {
        let texts = [
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: hw-v1}\nspec:\n  host: helloworld-service\n  subsets: [{name: v1, labels: {version: v1}}]\n",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: hw-v2}\nspec:\n  host: helloworld-service\n  subsets: [{name: v2, labels: {version: v2}}]\n",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: hw}\nspec:\n  hosts: [helloworld-service]\n  http: [{route: [{destination: {host: helloworld-service, subset: v2}}]}]\n",
        ];
        let config = texts.iter().fold(ConfigSet::default(), |set, text| {
            let parsed = ConfigSet::parse(&[mesh_api::config::SourceFile {
                name: "t.yaml".into(),
                content: text.to_string(),
            }])
            .expect("valid test YAML");
            set.apply(parsed).0
        });
        let view = routes_view(&config, Vec::new());
        let merged: Vec<(&str, &Vec<String>)> = view
            .destination_rules
            .iter()
            .map(|d| (d.name.as_str(), &d.merged))
            .collect();
        assert_eq!(
            merged,
            vec![
                (
                    "hw-v1",
                    &vec!["helloworld-service: 1 of 2 (hw-v1 + hw-v2)".to_string()]
                ),
                (
                    "hw-v2",
                    &vec!["helloworld-service: 2 of 2 (hw-v1 + hw-v2)".to_string()]
                ),
            ]
        );
        // A VirtualService alone for its host: nothing merged.
        assert!(view.virtual_services[0].merged.is_empty());
    }

    #[test]
    fn matches_read_like_the_yaml() {
        let m = RouteMatch {
            uri: Some(StringMatch::Prefix("/api".into())),
            headers: [(
                "user-agent".to_string(),
                StringMatch::Regex(".*Chrome.*".into()),
            )]
            .into(),
            ..RouteMatch::default()
        };
        assert_eq!(
            describe_match(&m),
            "uri prefix /api and header user-agent ~ .*Chrome.*"
        );
        assert_eq!(describe_match(&RouteMatch::default()), "every request");
    }

    #[test]
    fn the_dashboard_address_is_an_address_or_off() {
        assert_eq!(DashboardListen::parse("off"), Ok(DashboardListen::Off));
        assert_eq!(
            DashboardListen::parse("127.0.0.1:0"),
            Ok(DashboardListen::Required("127.0.0.1:0".parse().unwrap()))
        );
        let e = DashboardListen::parse("localhost").unwrap_err();
        assert!(
            e.contains("MESH_DASHBOARD_LISTEN") && e.contains("ip:port"),
            "{e}"
        );
    }

    #[test]
    fn the_page_is_self_contained() {
        // Offline in a classroom: nothing may be loaded from another origin.
        // The only absolute URLs allowed are the SVG namespace (a name, never
        // fetched) and the Guestbook's address in a hint to the reader.
        let allowed = ["http://www.w3.org/2000/svg", "http://localhost:8080/"];
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("dashboard.js", DASHBOARD_JS),
            ("dashboard.css", DASHBOARD_CSS),
        ] {
            let mut rest = text.to_string();
            for ok in allowed {
                rest = rest.replace(ok, "");
            }
            for needle in [
                "http://",
                "https://",
                "src=\"//",
                "href=\"//",
                "@import",
                "url(http",
                "url(//",
            ] {
                assert!(
                    !rest.contains(needle),
                    "{name} refers to another origin ({needle})"
                );
            }
        }
        assert!(INDEX_HTML.contains("dashboard.js") && INDEX_HTML.contains("dashboard.css"));
    }
}
