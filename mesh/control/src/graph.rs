//! The traffic graph: who calls whom, how often, how well, how fast.
//!
//! The scraper (`scrape.rs`) hands every proxy's metrics here once a
//! second. We keep a minute of them per proxy and answer, for a window of a
//! few seconds, what Kiali and Linkerd's `viz stat` compute with PromQL:
//!
//! ```text
//! rps         sum(rate(istio_requests_total[5s]))                       by edge
//! error rate  sum(rate(istio_requests_total{response_code=~"5..|0"}[5s])) / rps
//! p50, p99    histogram_quantile(0.99, sum(rate(istio_request_duration_milliseconds_bucket[5s])) by (le))
//! ```
//!
//! An **edge** is `source_workload@source_version -> destination_workload@destination_version`.
//! Both ends of a call count it: the caller's sidecar with
//! `reporter="source"`, the callee's with `reporter="destination"`. We take
//! the **source** side, because only the caller sees the requests that never
//! reached the callee: no route (NR), no healthy endpoint (UH), connection
//! failures (UF), timeouts (UT) and aborts the fault filter injected (FI).
//! That is what makes a fault turn its edge red. For a pair no source
//! reports (the caller is not scraped: a client outside the mesh, a gateway
//! without an admin port), the destination's series stand in.
//!
//! A request that **reached no endpoint** (a fault abort, no healthy
//! endpoint, an overflow) has no destination workload: the caller's sidecar
//! labels it as Istio does, `destination_workload="unknown"` with
//! `destination_service_name` naming the service (`destination_service` is
//! its full name, `helloworld-service.default.svc.cluster.local`). It still belongs to the
//! caller's edge to that service, so that the edge turns red (Kiali draws
//! these on the service node). When the service runs one version, that is
//! the edge to its only workload node; with several versions no single
//! version failed, so the requests go to a node for the service itself
//! ([`NodeKind::Service`]). They never make an "unknown" node.
//!
//! **Which edges are mutual TLS** is read as Kiali reads it: from the
//! destination's series, since only the sidecar that terminated the
//! connection knows (a source always says
//! `connection_security_policy="unknown"`). An edge's `mtlsPercent` is the
//! share of the requests its destination received in the window with
//! `connection_security_policy="mutual_tls"` (Kiali's `isMTLS`), and
//! `security` says it in a word: `mutual_tls` (all of them), `none` (none
//! of them), `mixed`, or `unknown` (no destination reported the pair in the
//! window: an idle edge, a callee that is not scraped). The dashboard
//! draws a lock on a `mutual_tls` edge.
//!
//! ```text
//! GET /api/v1/graph?window=5   nodes and edges, as the dashboard draws them
//! GET /api/v1/stat?window=5    per workload and version: success rate, rps, p50, p99
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use mesh_api::xds::{ProxyAnnounce, ProxyMode};
use serde::{Deserialize, Serialize};

use crate::api::{Pretty, QueryParams};
use crate::scrape::Sample;
use crate::state::Shared;

/// The counter of requests, with Istio's name.
pub const REQUESTS: &str = "istio_requests_total";
/// The request duration histogram's buckets, with Istio's name.
pub const DURATION_BUCKET: &str = "istio_request_duration_milliseconds_bucket";

/// How much history the graph keeps and how wide its default window is.
#[derive(Clone, Debug)]
pub struct GraphSettings {
    /// Rates are increases over this window (`rate(x[5s])`).
    pub window: Duration,
    /// Scrapes older than this are forgotten; also the widest window.
    pub history: Duration,
}

impl Default for GraphSettings {
    fn default() -> Self {
        GraphSettings {
            window: Duration::from_secs(5),
            history: Duration::from_secs(60),
        }
    }
}

// === Counts: what one scrape says about one edge ===

/// A workload at a version: a node of the graph.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    pub workload: String,
    pub version: String,
}

impl Workload {
    pub fn new(workload: &str, version: &str) -> Workload {
        Workload {
            workload: workload.to_string(),
            version: version.to_string(),
        }
    }

    /// The service itself, no version: where requests that reached no
    /// endpoint of a service with several versions are drawn.
    pub fn service(service: &str) -> Workload {
        Workload::new(service, SERVICE_ONLY)
    }

    /// `helloworld-service@v2`, the way meshctl writes a workload; the
    /// service alone for [`Workload::service`].
    pub fn id(&self) -> String {
        if self.is_service() {
            self.workload.clone()
        } else {
            format!("{}@{}", self.workload, self.version)
        }
    }

    fn is_service(&self) -> bool {
        self.version == SERVICE_ONLY
    }
}

/// The version of a [`Workload::service`] node: none.
const SERVICE_ONLY: &str = "";

/// Istio's label value for what a proxy could not know.
const UNKNOWN: &str = "unknown";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    Source,
    Destination,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    pub reporter: Reporter,
    pub source: Workload,
    pub destination: Workload,
}

/// Cumulative counts of one edge as one proxy reported them (or, after
/// [`Counts::since`], their increase over a window).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub requests: f64,
    /// 5xx, and `0` (no response at all).
    pub errors: f64,
    /// Requests a destination reported as received over mutual TLS
    /// (`connection_security_policy="mutual_tls"`), and as plain text
    /// (`"none"`). A source reports neither (`"unknown"`).
    pub mtls: f64,
    pub plaintext: f64,
    pub codes: BTreeMap<String, f64>,
    /// Cumulative histogram buckets: upper bound (`le`, as f64 bits so it
    /// can be a map key; bounds are >= 0, whose bit order is numeric) ->
    /// count of requests at or below it.
    pub buckets: BTreeMap<u64, f64>,
}

impl Counts {
    /// The increase from `older` to `self`. A counter that went down was
    /// reset (the proxy restarted): all of its current value is new, as
    /// Prometheus' `rate()` assumes.
    pub fn since(&self, older: Option<&Counts>) -> Counts {
        let Some(older) = older else {
            return self.clone();
        };
        if self.requests < older.requests {
            return self.clone();
        }
        Counts {
            requests: self.requests - older.requests,
            errors: (self.errors - older.errors).max(0.0),
            mtls: (self.mtls - older.mtls).max(0.0),
            plaintext: (self.plaintext - older.plaintext).max(0.0),
            codes: minus(&self.codes, &older.codes),
            buckets: minus(&self.buckets, &older.buckets),
        }
    }

    fn add(&mut self, other: &Counts, scale: f64) {
        self.requests += other.requests * scale;
        self.errors += other.errors * scale;
        self.mtls += other.mtls * scale;
        self.plaintext += other.plaintext * scale;
        for (code, n) in &other.codes {
            *self.codes.entry(code.clone()).or_default() += n * scale;
        }
        for (le, n) in &other.buckets {
            *self.buckets.entry(*le).or_default() += n * scale;
        }
    }

    /// `histogram_quantile(q, ...)` over this edge's buckets.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let buckets: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .map(|(le, n)| (f64::from_bits(*le), *n))
            .collect();
        histogram_quantile(q, &buckets)
    }
}

/// `new - old` per key, never below zero.
fn minus<K: Ord + Clone>(new: &BTreeMap<K, f64>, old: &BTreeMap<K, f64>) -> BTreeMap<K, f64> {
    new.iter()
        .map(|(k, v)| (k.clone(), (v - old.get(k).copied().unwrap_or(0.0)).max(0.0)))
        .collect()
}

/// Prometheus' `histogram_quantile`: find the bucket where the q-th request
/// falls and interpolate linearly inside it, assuming requests spread
/// evenly between its lower and upper bound. `buckets`: (upper bound,
/// cumulative count), sorted by bound, the last one `+Inf`.
///
/// As in Prometheus: no data gives `None`; a quantile that falls in the
/// `+Inf` bucket returns the highest finite bound; the first bucket's lower
/// bound is 0.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) || buckets.len() < 2 {
        return None;
    }
    let (last_le, total) = *buckets.last()?;
    if last_le != f64::INFINITY || total <= 0.0 {
        return None;
    }
    // Cumulative counts must not go down; summed rates can, by rounding.
    let mut monotonic = Vec::with_capacity(buckets.len());
    let mut max = 0.0f64;
    for (le, n) in buckets {
        max = max.max(*n);
        monotonic.push((*le, max));
    }
    let rank = q * total;
    let at = monotonic.iter().position(|(_, n)| *n >= rank)?;
    if at == monotonic.len() - 1 {
        return Some(monotonic[at - 1].0);
    }
    let (upper, count) = monotonic[at];
    let (lower, below) = if at == 0 {
        (0.0, 0.0)
    } else {
        monotonic[at - 1]
    };
    if at == 0 && upper <= 0.0 {
        return Some(upper);
    }
    let in_bucket = count - below;
    if in_bucket <= 0.0 {
        return Some(upper);
    }
    Some(lower + (upper - lower) * ((rank - below) / in_bucket))
}

/// Boil one scrape down to counts per edge, from Istio's series.
pub fn reduce(samples: &[Sample]) -> HashMap<EdgeKey, Counts> {
    let mut edges: HashMap<EdgeKey, Counts> = HashMap::new();
    for sample in samples {
        let is_requests = sample.name == REQUESTS;
        if !is_requests && sample.name != DURATION_BUCKET {
            continue;
        }
        if !sample.value.is_finite() || sample.value < 0.0 {
            continue;
        }
        let Some(key) = edge_key(sample) else {
            continue;
        };
        let counts = edges.entry(key).or_default();
        if is_requests {
            let code = sample.label("response_code").unwrap_or("0");
            counts.requests += sample.value;
            // A failed gRPC call is an HTTP 200 with a non-zero
            // `grpc_response_status` (Kiali counts it as an error too).
            let grpc_failed = sample
                .label("grpc_response_status")
                .is_some_and(|s| !s.is_empty() && s != "0");
            // A request an AuthorizationPolicy denied (403, flag `RBAC`) is
            // an error of the edge too: the caller did not get its answer.
            let denied = sample
                .label("response_flags")
                .is_some_and(|f| f.split(',').any(|f| f == "RBAC"));
            if code == "0" || code.starts_with('5') || grpc_failed || denied {
                counts.errors += sample.value;
            }
            match sample.label("connection_security_policy") {
                Some("mutual_tls") => counts.mtls += sample.value,
                Some("none") => counts.plaintext += sample.value,
                _ => {}
            }
            *counts.codes.entry(code.to_string()).or_default() += sample.value;
        } else {
            let le = sample.label("le").and_then(|le| match le {
                "+Inf" | "Inf" | "inf" => Some(f64::INFINITY),
                _ => le.parse::<f64>().ok(),
            });
            if let Some(le) = le.filter(|le| *le >= 0.0) {
                *counts.buckets.entry(le.to_bits()).or_default() += sample.value;
            }
        }
    }
    edges
}

fn edge_key(sample: &Sample) -> Option<EdgeKey> {
    let reporter = match sample.label("reporter")? {
        "source" => Reporter::Source,
        "destination" => Reporter::Destination,
        _ => return None,
    };
    let label = |name| {
        sample
            .label(name)
            .filter(|v| !v.is_empty())
            .unwrap_or(UNKNOWN)
    };
    // `destination_service_name` is the service's short name; a sidecar
    // older than Istio's full label set only wrote `destination_service`.
    let service = sample
        .label("destination_service_name")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| label("destination_service"));
    let destination = match (reporter, label("destination_workload"), service) {
        // Reached no endpoint, but the caller knows which service it
        // called: the service's edge (a version is picked in `view`).
        (Reporter::Source, UNKNOWN, service) if service != UNKNOWN => Workload::service(service),
        (_, workload, _) => Workload::new(workload, label("destination_version")),
    };
    Some(EdgeKey {
        reporter,
        source: Workload::new(label("source_workload"), label("source_version")),
        destination,
    })
}

/// Where the requests that reached no endpoint of a service are drawn: the
/// service's only version if it has one, else the service's own node.
/// `versions`: every version of each service that a live proxy runs or a
/// request reached in the window.
fn resolve(destination: &Workload, versions: &HashMap<String, BTreeSet<String>>) -> Workload {
    if !destination.is_service() {
        return destination.clone();
    }
    match versions.get(&destination.workload) {
        Some(set) if set.len() == 1 => {
            Workload::new(&destination.workload, set.iter().next().expect("len 1"))
        }
        _ => destination.clone(),
    }
}

// === Graph: a minute of scrapes per proxy ===

#[derive(Debug)]
struct ProxyHistory {
    announce: ProxyAnnounce,
    scrapes: VecDeque<(Instant, Arc<HashMap<EdgeKey, Counts>>)>,
    last_error: Option<String>,
}

/// The scraped history of every live proxy.
#[derive(Debug)]
pub struct Graph {
    settings: GraphSettings,
    proxies: Mutex<BTreeMap<String, ProxyHistory>>,
}

impl Graph {
    pub fn new(settings: GraphSettings) -> Graph {
        Graph {
            settings,
            proxies: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn settings(&self) -> &GraphSettings {
        &self.settings
    }

    fn proxies(&self) -> MutexGuard<'_, BTreeMap<String, ProxyHistory>> {
        // Plain data, no invariant a panic could break half-way.
        self.proxies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A successful scrape of `announce`'s proxy, taken at `at`.
    pub fn record(&self, announce: &ProxyAnnounce, at: Instant, samples: &[Sample]) {
        let edges = Arc::new(reduce(samples));
        let history = self.settings.history;
        let mut proxies = self.proxies();
        let entry = proxies
            .entry(announce.instance.clone())
            .or_insert_with(|| ProxyHistory {
                announce: announce.clone(),
                scrapes: VecDeque::new(),
                last_error: None,
            });
        entry.announce = announce.clone();
        entry.last_error = None;
        entry.scrapes.push_back((at, edges));
        while entry
            .scrapes
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > history)
        {
            entry.scrapes.pop_front();
        }
    }

    /// A failed scrape: keep what we had (it ages out of the window).
    pub fn record_failure(&self, announce: &ProxyAnnounce, error: String) {
        let mut proxies = self.proxies();
        let entry = proxies
            .entry(announce.instance.clone())
            .or_insert_with(|| ProxyHistory {
                announce: announce.clone(),
                scrapes: VecDeque::new(),
                last_error: None,
            });
        entry.last_error = Some(error);
    }

    /// Forget every proxy not in `live` (it left or its lease ran out).
    pub fn retain(&self, live: &[String]) {
        let live: HashSet<&str> = live.iter().map(String::as_str).collect();
        self.proxies()
            .retain(|instance, _| live.contains(instance.as_str()));
    }

    /// The graph over `window`, as of `now`. `proxies`: the live proxies,
    /// which are nodes even while idle.
    pub fn view(&self, window: Duration, now: Instant, proxies: &[ProxyAnnounce]) -> GraphView {
        // Keyed as the proxies labelled them; resolved below.
        let mut raw: BTreeMap<EdgeKey, EdgeRates> = BTreeMap::new();
        let mut scrape_status = ScrapeStatus::default();
        {
            let histories = self.proxies();
            for (instance, history) in histories.iter() {
                scrape_status.proxies += 1;
                if let Some(error) = &history.last_error {
                    scrape_status.failing.push(ScrapeFailure {
                        instance: instance.clone(),
                        error: error.clone(),
                    });
                }
                let Some((latest_at, latest)) = history.scrapes.back() else {
                    continue;
                };
                // A proxy we have not heard from within the window says
                // nothing about it.
                if now.saturating_duration_since(*latest_at) > window {
                    continue;
                }
                // The oldest scrape inside the window is the base.
                let Some((base_at, base)) = history
                    .scrapes
                    .iter()
                    .find(|(t, _)| latest_at.saturating_duration_since(*t) <= window)
                else {
                    continue;
                };
                let elapsed = latest_at.saturating_duration_since(*base_at).as_secs_f64();
                for (key, counts) in latest.iter() {
                    let entry = raw.entry(key.clone()).or_default();
                    if elapsed <= 0.0 {
                        // One scrape only: the edge exists, its rate is unknown yet.
                        continue;
                    }
                    let increase = counts.since(base.get(key));
                    entry.per_second.add(&increase, 1.0 / elapsed);
                    entry.increase.add(&increase, 1.0);
                }
            }
        }

        // Requests that reached no endpoint join their service's edge.
        let mut versions: HashMap<String, BTreeSet<String>> = HashMap::new();
        let reached = raw.keys().map(|k| &k.destination);
        let running = proxies
            .iter()
            .filter(|a| a.mode == ProxyMode::Sidecar)
            .map(|a| Workload::new(&a.service, &a.version));
        for w in reached.cloned().chain(running) {
            if !w.is_service() && w.workload != UNKNOWN && w.version != UNKNOWN {
                versions.entry(w.workload).or_default().insert(w.version);
            }
        }
        let mut rates: BTreeMap<EdgeKey, EdgeRates> = BTreeMap::new();
        let mut source_reported: HashSet<(Workload, Workload)> = HashSet::new();
        for (key, edge_rates) in raw {
            let key = EdgeKey {
                destination: resolve(&key.destination, &versions),
                ..key
            };
            if key.reporter == Reporter::Source {
                source_reported.insert((key.source.clone(), key.destination.clone()));
            }
            let entry = rates.entry(key).or_default();
            entry.per_second.add(&edge_rates.per_second, 1.0);
            entry.increase.add(&edge_rates.increase, 1.0);
        }

        // One series per pair: the source's if it reports, else the destination's.
        let mut edges = Vec::new();
        for (key, edge_rates) in &rates {
            let pair = (key.source.clone(), key.destination.clone());
            let use_it = match key.reporter {
                Reporter::Source => true,
                Reporter::Destination => !source_reported.contains(&pair),
            };
            if use_it {
                // The security policy only the destination knows.
                let received = rates.get(&EdgeKey {
                    reporter: Reporter::Destination,
                    ..key.clone()
                });
                edges.push(Edge::new(key, edge_rates, received));
            }
        }

        let mut nodes: BTreeMap<Workload, Node> = BTreeMap::new();
        for announce in proxies {
            let w = Workload::new(&announce.service, &announce.version);
            let node = nodes
                .entry(w.clone())
                .or_insert_with(|| Node::new(&w, NodeKind::of(announce.mode)));
            node.instances += 1;
        }
        for edge in &edges {
            for (workload, version) in [
                (&edge.source_workload, &edge.source_version),
                (&edge.destination_workload, &edge.destination_version),
            ] {
                let w = Workload::new(workload, version);
                let kind = if w.is_service() {
                    NodeKind::Service
                } else {
                    NodeKind::External
                };
                nodes
                    .entry(w.clone())
                    .or_insert_with(|| Node::new(&w, kind));
            }
            if let Some(node) = nodes.get_mut(&Workload::new(
                &edge.destination_workload,
                &edge.destination_version,
            )) {
                node.rps_in += edge.rps;
            }
        }
        scrape_status
            .failing
            .sort_by(|a, b| a.instance.cmp(&b.instance));
        GraphView {
            window_seconds: window.as_secs_f64(),
            nodes: nodes.into_values().collect(),
            edges,
            scrapes: scrape_status,
        }
    }

    /// Per workload and version, the traffic it received (summed over the
    /// edges into it): what `meshctl stat` prints.
    pub fn stat(&self, window: Duration, now: Instant, proxies: &[ProxyAnnounce]) -> Vec<StatRow> {
        let view = self.view(window, now, proxies);
        let mut rows: BTreeMap<Workload, (Counts, Counts, usize)> = BTreeMap::new();
        for node in &view.nodes {
            // Every sidecar workload gets a row, busy or not; the gateway
            // and outsiders only if something calls them.
            if node.kind == NodeKind::Sidecar {
                rows.insert(
                    Workload::new(&node.workload, &node.version),
                    (Counts::default(), Counts::default(), node.instances),
                );
            }
        }
        for edge in &view.edges {
            let w = Workload::new(&edge.destination_workload, &edge.destination_version);
            let instances = view
                .nodes
                .iter()
                .find(|n| n.workload == w.workload && n.version == w.version)
                .map(|n| n.instances)
                .unwrap_or(0);
            let row = rows
                .entry(w)
                .or_insert_with(|| (Counts::default(), Counts::default(), instances));
            row.0.add(&edge.rates.per_second, 1.0);
            row.1.add(&edge.rates.increase, 1.0);
        }
        rows.into_iter()
            .map(|(w, (per_second, increase, instances))| StatRow {
                workload: w.workload,
                version: w.version,
                instances,
                rps: per_second.requests,
                success_rate: success_rate(&per_second),
                p50_ms: increase.quantile(0.5),
                p99_ms: increase.quantile(0.99),
                requests: increase.requests,
            })
            .collect()
    }
}

fn success_rate(per_second: &Counts) -> Option<f64> {
    (per_second.requests > 0.0).then(|| 1.0 - per_second.errors / per_second.requests)
}

/// Per-second rates and raw increases of one series over the window.
#[derive(Clone, Debug, Default)]
struct EdgeRates {
    per_second: Counts,
    increase: Counts,
}

// === what the API returns ===

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphView {
    pub window_seconds: f64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub scrapes: ScrapeStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Sidecar,
    Gateway,
    /// Seen only in metrics (`unknown`, a caller outside the mesh).
    External,
    /// A service whose requests reached none of its endpoints while it has
    /// several versions (or none running): the requests failed at the
    /// service, not at a version. Its `version` is empty.
    Service,
}

impl NodeKind {
    fn of(mode: ProxyMode) -> NodeKind {
        match mode {
            ProxyMode::Sidecar => NodeKind::Sidecar,
            ProxyMode::Gateway => NodeKind::Gateway,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// `helloworld-service@v2`.
    pub id: String,
    pub workload: String,
    pub version: String,
    pub kind: NodeKind,
    /// Live proxies of this workload and version.
    pub instances: usize,
    /// Requests per second it receives.
    pub rps_in: f64,
}

impl Node {
    fn new(w: &Workload, kind: NodeKind) -> Node {
        Node {
            id: w.id(),
            workload: w.workload.clone(),
            version: w.version.clone(),
            kind,
            instances: 0,
            rps_in: 0.0,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    /// Node ids.
    pub source: String,
    pub target: String,
    pub source_workload: String,
    pub source_version: String,
    pub destination_workload: String,
    pub destination_version: String,
    /// Whose series this edge shows.
    pub reporter: Reporter,
    pub rps: f64,
    /// Share of 5xx (and no-response) answers; `None` when idle.
    pub error_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Requests in the window.
    pub requests: f64,
    /// Requests per second by response code.
    pub codes: BTreeMap<String, f64>,
    /// Kiali's `isMTLS`: the percent of the requests the destination's
    /// sidecar received over mutual TLS in the window; `None` when no
    /// destination reported this edge's requests in the window.
    pub mtls_percent: Option<f64>,
    /// The same, in a word (see the module docs).
    pub security: EdgeSecurity,
    #[serde(skip)]
    rates: EdgeRates,
}

/// Whether an edge's requests arrived over mutual TLS, as the
/// destination's `connection_security_policy` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeSecurity {
    /// Every request in the window.
    MutualTls,
    /// Some requests, not all (auto mTLS turning on, PERMISSIVE with a
    /// plain-text caller).
    Mixed,
    /// No request: plain text.
    None,
    /// No destination reported the edge in the window.
    Unknown,
}

impl EdgeSecurity {
    /// From the requests a destination received: over mTLS, in plain text.
    fn of(mtls: f64, plaintext: f64) -> EdgeSecurity {
        match (mtls > 0.0, plaintext > 0.0) {
            (true, false) => EdgeSecurity::MutualTls,
            (true, true) => EdgeSecurity::Mixed,
            (false, true) => EdgeSecurity::None,
            (false, false) => EdgeSecurity::Unknown,
        }
    }
}

impl Edge {
    /// The edge `key` with `rates`; `received`: the destination's own
    /// report of the same pair (the security policy), if any.
    fn new(key: &EdgeKey, rates: &EdgeRates, received: Option<&EdgeRates>) -> Edge {
        let (mtls, plaintext) =
            received.map_or((0.0, 0.0), |r| (r.increase.mtls, r.increase.plaintext));
        let per_second = &rates.per_second;
        Edge {
            source: key.source.id(),
            target: key.destination.id(),
            source_workload: key.source.workload.clone(),
            source_version: key.source.version.clone(),
            destination_workload: key.destination.workload.clone(),
            destination_version: key.destination.version.clone(),
            reporter: key.reporter,
            rps: per_second.requests,
            error_rate: (per_second.requests > 0.0)
                .then(|| per_second.errors / per_second.requests),
            p50_ms: rates.increase.quantile(0.5),
            p99_ms: rates.increase.quantile(0.99),
            requests: rates.increase.requests,
            codes: per_second.codes.clone(),
            mtls_percent: (mtls + plaintext > 0.0).then(|| 100.0 * mtls / (mtls + plaintext)),
            security: EdgeSecurity::of(mtls, plaintext),
            rates: rates.clone(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScrapeStatus {
    /// Proxies scraped (or tried).
    pub proxies: usize,
    pub failing: Vec<ScrapeFailure>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScrapeFailure {
    pub instance: String,
    pub error: String,
}

/// One line of `meshctl stat`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatRow {
    pub workload: String,
    pub version: String,
    pub instances: usize,
    pub rps: f64,
    /// `None` when it received nothing in the window.
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub requests: f64,
}

// === HTTP ===

#[derive(Clone, Debug)]
struct GraphApi {
    shared: Arc<Shared>,
    graph: Arc<Graph>,
}

#[derive(Debug, Deserialize)]
struct WindowQuery {
    /// Seconds; default the graph's window, at most its history.
    window: Option<f64>,
}

impl GraphApi {
    fn window(&self, query: &WindowQuery) -> Duration {
        let settings = self.graph.settings();
        match query.window {
            Some(seconds) if seconds.is_finite() && seconds > 0.0 => {
                Duration::from_secs_f64(seconds.clamp(1.0, settings.history.as_secs_f64()))
            }
            _ => settings.window,
        }
    }

    async fn live(&self) -> Vec<ProxyAnnounce> {
        self.shared.lock().await.registry.live_announces()
    }
}

/// `GET /api/v1/graph` and `GET /api/v1/stat`.
pub fn router(shared: Arc<Shared>, graph: Arc<Graph>) -> Router {
    Router::new()
        .route("/api/v1/graph", get(graph_view))
        .route("/api/v1/stat", get(stat))
        .with_state(GraphApi { shared, graph })
}

async fn graph_view(
    State(api): State<GraphApi>,
    QueryParams(query): QueryParams<WindowQuery>,
) -> Pretty<GraphView> {
    let live = api.live().await;
    Pretty(api.graph.view(api.window(&query), Instant::now(), &live))
}

async fn stat(
    State(api): State<GraphApi>,
    QueryParams(query): QueryParams<WindowQuery>,
) -> Pretty<Vec<StatRow>> {
    let live = api.live().await;
    Pretty(api.graph.stat(api.window(&query), Instant::now(), &live))
}

/// Distinct workloads in a view, for tests and the dashboard's legend.
pub fn workloads(view: &GraphView) -> BTreeSet<String> {
    view.nodes.iter().map(|n| n.workload.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::parse;

    const BUCKETS: [f64; 6] = [1.0, 5.0, 10.0, 25.0, 50.0, 100.0];

    /// Prometheus text for one series set, as a sidecar writes it.
    fn series(
        reporter: &str,
        src: (&str, &str),
        dst: (&str, &str),
        code: &str,
        count: u64,
        latency_ms: f64,
    ) -> String {
        let labels = format!(
            "reporter=\"{reporter}\",source_workload=\"{}\",source_version=\"{}\",destination_workload=\"{}\",\
             destination_version=\"{}\",destination_service=\"{}\",response_code=\"{code}\",response_flags=\"-\"",
            src.0, src.1, dst.0, dst.1, dst.0
        );
        let mut text = format!("istio_requests_total{{{labels}}} {count}\n");
        for le in BUCKETS {
            let n = if latency_ms <= le { count } else { 0 };
            text += &format!(
                "istio_request_duration_milliseconds_bucket{{{labels},le=\"{le}\"}} {n}\n"
            );
        }
        text += &format!(
            "istio_request_duration_milliseconds_bucket{{{labels},le=\"+Inf\"}} {count}\n"
        );
        text += &format!(
            "istio_request_duration_milliseconds_sum{{{labels}}} {}\n",
            latency_ms * count as f64
        );
        text += &format!("istio_request_duration_milliseconds_count{{{labels}}} {count}\n");
        text
    }

    fn announce(instance: &str, service: &str, version: &str, mode: ProxyMode) -> ProxyAnnounce {
        ProxyAnnounce {
            instance: instance.into(),
            service: service.into(),
            version: version.into(),
            mode,
            ..ProxyAnnounce::default()
        }
    }

    const UI: (&str, &str) = ("guestbook-ui", "v1");
    const HW1: (&str, &str) = ("helloworld-service", "v1");
    const HW2: (&str, &str) = ("helloworld-service", "v2");
    const GW: (&str, &str) = ("ingressgateway", "v1");

    #[test]
    fn histogram_quantile_interpolates_like_prometheus() {
        let b = [
            (1.0, 10.0),
            (5.0, 50.0),
            (10.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        // The 50th of 100 requests is the last in (1, 5]: 5.
        assert_eq!(histogram_quantile(0.5, &b), Some(5.0));
        // The 75th: 25 of the 50 in (5, 10], halfway: 7.5.
        assert_eq!(histogram_quantile(0.75, &b), Some(7.5));
        // The 5th: half of the first bucket, from 0: 0.5.
        assert_eq!(histogram_quantile(0.05, &b), Some(0.5));
        // In +Inf: the highest finite bound.
        let slow = [(1.0, 0.0), (5.0, 0.0), (f64::INFINITY, 10.0)];
        assert_eq!(histogram_quantile(0.99, &slow), Some(5.0));
        // No data, no answer.
        assert_eq!(
            histogram_quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
        assert_eq!(histogram_quantile(0.5, &[(f64::INFINITY, 3.0)]), None);
    }

    #[test]
    fn a_failed_grpc_call_is_an_error_though_its_http_status_is_200() {
        let labels = "reporter=\"source\",source_workload=\"hello-grpc-client\",\
                      destination_workload=\"hello-grpc\",destination_service=\"hello-grpc\",\
                      response_code=\"200\"";
        let text = format!(
            "istio_requests_total{{{labels},grpc_response_status=\"0\"}} 6\n\
             istio_requests_total{{{labels},grpc_response_status=\"14\"}} 4\n"
        );
        let edges = reduce(&parse(&text).unwrap());
        let counts = edges.values().next().expect("one edge");
        assert_eq!((counts.requests, counts.errors), (10.0, 4.0));
    }

    #[test]
    fn a_request_denied_by_authorization_is_an_error() {
        // What guestbook-service's sidecar reports after lab 10's policy:
        // 6 allowed, 4 denied (403 RBAC); a 404 of the app is no error.
        let labels = "reporter=\"destination\",source_workload=\"helloworld-service\",\
                      destination_workload=\"guestbook-service\",destination_service=\"guestbook-service\"";
        let text = format!(
            "istio_requests_total{{{labels},response_code=\"200\",response_flags=\"-\"}} 6\n\
             istio_requests_total{{{labels},response_code=\"403\",response_flags=\"RBAC\"}} 4\n\
             istio_requests_total{{{labels},response_code=\"404\",response_flags=\"-\"}} 1\n"
        );
        let edges = reduce(&parse(&text).unwrap());
        let counts = edges.values().next().expect("one edge");
        assert_eq!((counts.requests, counts.errors), (11.0, 4.0));
        assert_eq!(counts.codes["403"], 4.0);
    }

    #[test]
    fn rates_come_from_the_increase_over_the_window() {
        let graph = Graph::new(GraphSettings::default());
        let ui = announce("ui-1", "guestbook-ui", "v1", ProxyMode::Sidecar);
        let t0 = Instant::now();
        let scrape = |count_v1: u64, count_v2: u64, errors: u64| {
            parse(
                &[
                    series("source", UI, HW1, "200", count_v1, 3.0),
                    series("source", UI, HW2, "200", count_v2, 30.0),
                    series("source", UI, HW2, "503", errors, 30.0),
                ]
                .concat(),
            )
            .unwrap()
        };
        graph.record(&ui, t0, &scrape(100, 100, 0));
        graph.record(&ui, t0 + Duration::from_secs(2), &scrape(180, 120, 0));
        graph.record(&ui, t0 + Duration::from_secs(4), &scrape(260, 140, 20));
        let now = t0 + Duration::from_secs(4);
        let view = graph.view(Duration::from_secs(5), now, std::slice::from_ref(&ui));

        let edge = |target: &str| view.edges.iter().find(|e| e.target == target).unwrap();
        let v1 = edge("helloworld-service@v1");
        // 160 requests in 4 s: 80/20 shows as 40 rps vs 10.
        assert_eq!((v1.rps, v1.error_rate), (40.0, Some(0.0)));
        assert_eq!(v1.reporter, Reporter::Source);
        let v2 = edge("helloworld-service@v2");
        assert_eq!(v2.rps, 15.0);
        assert_eq!(v2.error_rate, Some(20.0 / 60.0));
        assert_eq!(v2.codes.get("503"), Some(&5.0));
        // Every request took 3 ms: bucket (1, 5] -> p50 = 1 + 4 * 0.5 = 3.
        assert_eq!(v1.p50_ms, Some(3.0));
        // 30 ms falls in (25, 50]; p99 = 25 + 25 * 0.99 = 49.75.
        assert_eq!(v2.p99_ms, Some(49.75));

        // A 2 s window starts at the second scrape.
        let short = graph.view(Duration::from_secs(2), now, &[]);
        assert_eq!(
            short
                .edges
                .iter()
                .find(|e| e.target == "helloworld-service@v1")
                .unwrap()
                .rps,
            40.0
        );

        // Stat rows sum the edges into each workload.
        let stat = graph.stat(Duration::from_secs(5), now, std::slice::from_ref(&ui));
        let row = |v: &str| {
            stat.iter()
                .find(|r| r.workload == "helloworld-service" && r.version == v)
                .unwrap()
        };
        assert_eq!(row("v1").success_rate, Some(1.0));
        assert_eq!(row("v2").success_rate, Some(1.0 - 20.0 / 60.0));
        assert_eq!(row("v1").requests, 160.0);
        // guestbook-ui is a sidecar nobody calls here: a row without traffic.
        let ui_row = stat.iter().find(|r| r.workload == "guestbook-ui").unwrap();
        assert_eq!(
            (ui_row.rps, ui_row.success_rate, ui_row.instances),
            (0.0, None, 1)
        );
    }

    /// `istio_requests_total` of `reporter` with this security policy.
    fn secured(
        reporter: &str,
        src: (&str, &str),
        dst: (&str, &str),
        policy: &str,
        n: u64,
    ) -> String {
        format!(
            "istio_requests_total{{reporter=\"{reporter}\",source_workload=\"{}\",\
             source_version=\"{}\",destination_workload=\"{}\",destination_version=\"{}\",\
             destination_service_name=\"{}\",response_code=\"200\",response_flags=\"-\",\
             connection_security_policy=\"{policy}\"}} {n}\n",
            src.0, src.1, dst.0, dst.1, dst.0
        )
    }

    #[test]
    fn an_edge_is_mutual_tls_as_its_destination_reports_it() {
        // Kiali's reading: the source says `unknown` (a client cannot know
        // the server's policy), the destination says what it terminated.
        let graph = Graph::new(GraphSettings::default());
        let ui = announce("ui-1", "guestbook-ui", "v1", ProxyMode::Sidecar);
        let hw = announce("hw-1", "helloworld-service", "v1", ProxyMode::Sidecar);
        let gw = announce("gw-1", "ingressgateway", "v1", ProxyMode::Gateway);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let ui_text = |n| {
            [
                secured("source", UI, HW1, "unknown", n),
                secured("source", UI, HW2, "unknown", n),
            ]
            .concat()
        };
        // helloworld v1 received everything over mTLS; v2 (in the window)
        // 30 over mTLS and 10 in plain text (auto mTLS turning on); the
        // gateway's calls to guestbook-ui came in plain text, and only
        // guestbook-ui reports them (the gateway is not scraped).
        let hw_text = |mtls, v2_mtls, v2_plain, gw_plain| {
            [
                secured("destination", UI, HW1, "mutual_tls", mtls),
                secured("destination", UI, HW2, "mutual_tls", v2_mtls),
                secured("destination", UI, HW2, "none", v2_plain),
                secured("destination", GW, UI, "none", gw_plain),
            ]
            .concat()
        };
        graph.record(&ui, t0, &parse(&ui_text(100)).unwrap());
        graph.record(&hw, t0, &parse(&hw_text(100, 100, 5, 0)).unwrap());
        graph.record(&ui, t1, &parse(&ui_text(140)).unwrap());
        graph.record(&hw, t1, &parse(&hw_text(140, 130, 15, 8)).unwrap());
        let live = [ui.clone(), hw.clone(), gw.clone()];
        let view = graph.view(Duration::from_secs(5), t1, &live);
        let edge = |source: &str, target: &str| {
            view.edges
                .iter()
                .find(|e| e.source == source && e.target == target)
                .unwrap_or_else(|| panic!("no edge {source} -> {target}: {:#?}", view.edges))
        };

        let v1 = edge("guestbook-ui@v1", "helloworld-service@v1");
        assert_eq!(
            v1.reporter,
            Reporter::Source,
            "the source's series still win"
        );
        assert_eq!(
            (v1.security, v1.mtls_percent),
            (EdgeSecurity::MutualTls, Some(100.0))
        );
        let v2 = edge("guestbook-ui@v1", "helloworld-service@v2");
        assert_eq!(
            (v2.security, v2.mtls_percent),
            (EdgeSecurity::Mixed, Some(75.0))
        );
        let gw_ui = edge("ingressgateway@v1", "guestbook-ui@v1");
        assert_eq!(
            (gw_ui.security, gw_ui.mtls_percent),
            (EdgeSecurity::None, Some(0.0))
        );

        // The JSON the dashboard reads: additive fields on each edge.
        let json = serde_json::to_value(v1).unwrap();
        assert_eq!(json["security"], "mutual_tls");
        assert_eq!(json["mtlsPercent"], 100.0);

        // Nothing from the destination in the window: unknown, no lock.
        let quiet = Graph::new(GraphSettings::default());
        quiet.record(&ui, t0, &parse(&ui_text(100)).unwrap());
        quiet.record(&ui, t1, &parse(&ui_text(140)).unwrap());
        let view = quiet.view(Duration::from_secs(5), t1, &live);
        let v1 = view
            .edges
            .iter()
            .find(|e| e.target == "helloworld-service@v1")
            .unwrap();
        assert_eq!(
            (v1.security, v1.mtls_percent),
            (EdgeSecurity::Unknown, None)
        );
    }

    #[test]
    fn the_source_side_wins_and_the_destination_fills_in() {
        let graph = Graph::new(GraphSettings::default());
        let ui = announce("ui-1", "guestbook-ui", "v1", ProxyMode::Sidecar);
        let hw = announce("hw-1", "helloworld-service", "v1", ProxyMode::Sidecar);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        // The caller saw 10 aborts (FI) that the callee never did.
        let ui_text = |ok, aborted| {
            [
                series("source", UI, HW1, "200", ok, 2.0),
                series("source", UI, HW1, "503", aborted, 0.5),
            ]
            .concat()
        };
        // The callee also reports its caller, and the gateway's requests
        // (the gateway itself is not scraped here).
        let hw_text = |from_ui, from_gw| {
            [
                series("destination", UI, HW1, "200", from_ui, 1.0),
                series("destination", GW, UI, "200", from_gw, 1.0),
            ]
            .concat()
        };
        graph.record(&ui, t0, &parse(&ui_text(0, 0)).unwrap());
        graph.record(&hw, t0, &parse(&hw_text(0, 0)).unwrap());
        graph.record(&ui, t1, &parse(&ui_text(30, 10)).unwrap());
        graph.record(&hw, t1, &parse(&hw_text(30, 7)).unwrap());
        let view = graph.view(Duration::from_secs(5), t1, &[ui.clone(), hw.clone()]);

        assert_eq!(view.edges.len(), 2, "{:#?}", view.edges);
        let ui_hw = view
            .edges
            .iter()
            .find(|e| e.source == "guestbook-ui@v1")
            .unwrap();
        assert_eq!(ui_hw.reporter, Reporter::Source);
        assert_eq!((ui_hw.rps, ui_hw.error_rate), (40.0, Some(0.25)));
        let gw_ui = view
            .edges
            .iter()
            .find(|e| e.source == "ingressgateway@v1")
            .unwrap();
        assert_eq!(gw_ui.reporter, Reporter::Destination);
        assert_eq!(gw_ui.rps, 7.0);
        let gateway = view
            .nodes
            .iter()
            .find(|n| n.workload == "ingressgateway")
            .unwrap();
        assert_eq!(gateway.kind, NodeKind::External);
    }

    /// What a caller's sidecar writes for requests that reached no endpoint
    /// of `service` (Istio's labels: the service known by its full and its
    /// short name, no workload).
    fn unreached(src: (&str, &str), service: &str, flags: &str, count: u64) -> String {
        let labels = format!(
            "reporter=\"source\",source_workload=\"{}\",source_version=\"{}\",\
             destination_workload=\"unknown\",destination_version=\"unknown\",\
             destination_service=\"{service}.default.svc.cluster.local\",\
             destination_service_name=\"{service}\",destination_service_namespace=\"default\",\
             response_code=\"503\",response_flags=\"{flags}\"",
            src.0, src.1
        );
        format!(
            "istio_requests_total{{{labels}}} {count}\n\
             istio_request_duration_milliseconds_bucket{{{labels},le=\"1\"}} {count}\n\
             istio_request_duration_milliseconds_bucket{{{labels},le=\"+Inf\"}} {count}\n"
        )
    }

    const GS: (&str, &str) = ("guestbook-service", "v1");

    #[test]
    fn an_injected_abort_turns_the_service_edge_red_with_no_unknown_node() {
        // Lab 05's guestbook-abort-50 seen by guestbook-ui's sidecar: half
        // of its calls reach guestbook-service v1, half are aborted (FI)
        // before any endpoint is chosen.
        let graph = Graph::new(GraphSettings::default());
        let ui = announce("ui-1", "guestbook-ui", "v1", ProxyMode::Sidecar);
        let gs = announce("gs-1", "guestbook-service", "v1", ProxyMode::Sidecar);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let ui_text = |ok, aborted| {
            [
                series("source", UI, GS, "200", ok, 2.0),
                unreached(UI, "guestbook-service", "FI", aborted),
            ]
            .concat()
        };
        graph.record(&ui, t0, &parse(&ui_text(0, 0)).unwrap());
        graph.record(&ui, t1, &parse(&ui_text(20, 20)).unwrap());
        let live = [ui.clone(), gs.clone()];
        let view = graph.view(Duration::from_secs(5), t1, &live);

        // One edge, the real one, with the aborts on it.
        assert_eq!(view.edges.len(), 1, "{:#?}", view.edges);
        let edge = &view.edges[0];
        assert_eq!(
            (edge.source.as_str(), edge.target.as_str()),
            ("guestbook-ui@v1", "guestbook-service@v1")
        );
        assert_eq!((edge.rps, edge.error_rate), (20.0, Some(0.5)));
        assert_eq!(edge.codes.get("503"), Some(&10.0));
        let ids: Vec<&str> = view.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["guestbook-service@v1", "guestbook-ui@v1"]);

        // meshctl stat: the same half, on guestbook-service v1's row.
        let stat = graph.stat(Duration::from_secs(5), t1, &live);
        assert_eq!(stat.len(), 2, "{stat:#?}");
        let row = stat
            .iter()
            .find(|r| r.workload == "guestbook-service")
            .unwrap();
        assert_eq!(
            (row.version.as_str(), row.success_rate, row.requests),
            ("v1", Some(0.5), 40.0)
        );
    }

    #[test]
    fn with_several_versions_unreached_requests_go_to_the_service_node() {
        // A `503 UH` while helloworld-service runs v1 and v2: no version
        // failed, the service did. No version's edge takes the blame, and
        // no "unknown" node appears.
        let graph = Graph::new(GraphSettings::default());
        let ui = announce("ui-1", "guestbook-ui", "v1", ProxyMode::Sidecar);
        let hw1 = announce("hw-1", "helloworld-service", "v1", ProxyMode::Sidecar);
        let hw2 = announce("hw-2", "helloworld-service", "v2", ProxyMode::Sidecar);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let ui_text = |ok, uh| {
            [
                series("source", UI, HW1, "200", ok, 2.0),
                series("source", UI, HW2, "200", ok, 2.0),
                unreached(UI, "helloworld-service", "UH", uh),
            ]
            .concat()
        };
        graph.record(&ui, t0, &parse(&ui_text(0, 0)).unwrap());
        graph.record(&ui, t1, &parse(&ui_text(5, 3)).unwrap());
        let live = [ui.clone(), hw1, hw2];
        let view = graph.view(Duration::from_secs(5), t1, &live);

        let edge = |target: &str| view.edges.iter().find(|e| e.target == target).unwrap();
        assert_eq!(edge("helloworld-service@v1").error_rate, Some(0.0));
        assert_eq!(edge("helloworld-service@v2").error_rate, Some(0.0));
        let service = edge("helloworld-service");
        assert_eq!((service.rps, service.error_rate), (3.0, Some(1.0)));
        let node = view
            .nodes
            .iter()
            .find(|n| n.id == "helloworld-service")
            .unwrap();
        assert_eq!((node.kind, node.version.as_str()), (NodeKind::Service, ""));
        assert!(
            view.nodes.iter().all(|n| n.workload != "unknown"),
            "{:#?}",
            view.nodes
        );
    }

    #[test]
    fn a_restarted_proxy_is_a_counter_reset_not_a_negative_rate() {
        let graph = Graph::new(GraphSettings::default());
        let ui = announce("ui-1", "guestbook-ui", "v1", ProxyMode::Sidecar);
        let t0 = Instant::now();
        graph.record(
            &ui,
            t0,
            &parse(&series("source", UI, HW1, "200", 500, 2.0)).unwrap(),
        );
        graph.record(
            &ui,
            t0 + Duration::from_secs(2),
            &parse(&series("source", UI, HW1, "200", 8, 2.0)).unwrap(),
        );
        let view = graph.view(Duration::from_secs(5), t0 + Duration::from_secs(2), &[]);
        assert_eq!(view.edges[0].rps, 4.0);
    }

    #[test]
    fn stale_and_departed_proxies_drop_out() {
        let graph = Graph::new(GraphSettings::default());
        let ui = announce("ui-1", "guestbook-ui", "v1", ProxyMode::Sidecar);
        let t0 = Instant::now();
        graph.record(
            &ui,
            t0,
            &parse(&series("source", UI, HW1, "200", 1, 2.0)).unwrap(),
        );
        graph.record(
            &ui,
            t0 + Duration::from_secs(1),
            &parse(&series("source", UI, HW1, "200", 5, 2.0)).unwrap(),
        );
        graph.record_failure(&ui, "no answer".into());
        // Ten seconds later nothing new came: no edge, and the failure shows.
        let view = graph.view(Duration::from_secs(5), t0 + Duration::from_secs(11), &[]);
        assert!(view.edges.is_empty());
        assert_eq!(view.scrapes.failing[0].error, "no answer");
        graph.retain(&[]);
        assert_eq!(
            graph.view(Duration::from_secs(5), t0, &[]).scrapes.proxies,
            0
        );
    }

    #[test]
    fn a_gateway_is_a_node_and_idle_edges_stay_with_zero_rps() {
        let graph = Graph::new(GraphSettings::default());
        let gw = announce("gw-1", "ingressgateway", "v1", ProxyMode::Gateway);
        let t0 = Instant::now();
        let text = series("source", GW, UI, "200", 9, 2.0);
        graph.record(&gw, t0, &parse(&text).unwrap());
        graph.record(&gw, t0 + Duration::from_secs(1), &parse(&text).unwrap());
        let view = graph.view(
            Duration::from_secs(5),
            t0 + Duration::from_secs(1),
            std::slice::from_ref(&gw),
        );
        assert_eq!(view.edges[0].rps, 0.0);
        assert_eq!(view.edges[0].error_rate, None);
        assert_eq!(view.edges[0].p99_ms, None);
        assert_eq!(
            workloads(&view),
            BTreeSet::from(["guestbook-ui".to_string(), "ingressgateway".to_string()])
        );
        let node = view
            .nodes
            .iter()
            .find(|n| n.workload == "ingressgateway")
            .unwrap();
        assert_eq!((node.kind, node.instances), (NodeKind::Gateway, 1));
    }
}
