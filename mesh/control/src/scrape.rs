//! The scraper: once a second, read every live proxy's
//! `/stats/prometheus` and hand the numbers to the traffic graph.
//!
//! This is the part a Prometheus server plays in an Istio install: it
//! scrapes each Envoy's `:15090/stats/prometheus` every 15 s or so, and Kiali
//! draws its graph from `rate(istio_requests_total[1m])`. We scrape faster
//! (every second) and keep only a minute, so a canary shift or an injected
//! fault shows on the dashboard within seconds.
//!
//! The proxies come from the registry (each announce carries the proxy's
//! `adminAddress`). A scrape is bounded in time and size; a proxy that does
//! not answer is skipped and reported, never waited for: all proxies are
//! scraped concurrently and a tick lasts at most one timeout.
//!
//! The parser reads the subset of the Prometheus text format (and of
//! OpenMetrics, which the prometheus-client crate writes) that samples
//! need: `name{label="value",...} value [timestamp] [# exemplar]`. Comment,
//! `# HELP`, `# TYPE` and `# EOF` lines are skipped: the graph needs only
//! the series names, which are Istio's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_api::xds::ProxyAnnounce;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::graph::Graph;
use crate::state::Shared;

/// How often and how patiently to scrape.
#[derive(Clone, Debug)]
pub struct ScrapeSettings {
    /// Time between two scrapes of every proxy.
    pub interval: Duration,
    /// Longest wait for one proxy's page.
    pub timeout: Duration,
    /// Largest page read; a bigger one is refused (a runaway label set).
    pub max_body: usize,
}

impl Default for ScrapeSettings {
    fn default() -> Self {
        ScrapeSettings {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(800),
            max_body: 8 * 1024 * 1024,
        }
    }
}

// === parser ===

/// One sample line: `istio_requests_total{reporter="source",...} 42`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A line the parser cannot read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
    pub text: String,
}

/// Parse Prometheus text (0.0.4) or OpenMetrics text into samples.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut samples = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let sample = parse_line(line).map_err(|message| ParseError {
            line: index + 1,
            message,
            text: raw.chars().take(200).collect(),
        })?;
        samples.push(sample);
    }
    Ok(samples)
}

fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("expected a metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    // The value, then an optional timestamp and an optional OpenMetrics
    // exemplar (`# {trace_id="..."} 1.0`): only the value matters here.
    let value = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| "missing the sample value".to_string())?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value: parse_value(value)?,
    })
}

/// Parse `k="v",k2="v2"}` (after the `{`); returns what follows the `}`.
fn parse_labels<'a>(
    mut rest: &'a str,
    labels: &mut Vec<(String, String)>,
) -> Result<&'a str, String> {
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let eq = rest
            .find('=')
            .ok_or_else(|| "expected label=\"value\"".to_string())?;
        let key = rest[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {key:?}"));
        }
        rest = rest[eq + 1..].trim_start();
        rest = rest
            .strip_prefix('"')
            .ok_or_else(|| format!("the value of label {key} must be in double quotes"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("the value of label {key} is not closed")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("the value of label {key} is not closed")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key.to_string(), value));
        rest = rest[end + 1..].trim_start();
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

fn parse_value(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" | "nan" => Ok(f64::NAN),
        _ => text
            .parse::<f64>()
            .map_err(|_| format!("{text:?} is not a number")),
    }
}

// === the scrape loop ===

/// Where to reach a proxy's admin port. A proxy that listens on 0.0.0.0
/// (a container) is reached at the host of its inbound address, else on
/// 127.0.0.1.
pub fn admin_target(announce: &ProxyAnnounce) -> Option<SocketAddr> {
    let mut admin: SocketAddr = announce.admin_address.parse().ok()?;
    if admin.ip().is_unspecified() {
        let host = announce
            .address
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .ok()
            .filter(|ip| !ip.is_unspecified())
            .unwrap_or_else(|| [127, 0, 0, 1].into());
        admin.set_ip(host);
    }
    Some(admin)
}

/// Scrape until shutdown.
pub async fn run(
    shared: Arc<Shared>,
    graph: Arc<Graph>,
    settings: ScrapeSettings,
    shutdown: CancellationToken,
) {
    // Never through an HTTP_PROXY: the admin ports are on this host or in
    // the mesh's own network.
    let http = match reqwest::Client::builder()
        .no_proxy()
        .timeout(settings.timeout)
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(
                "cannot build the scraper's HTTP client ({e}); the traffic graph stays empty"
            );
            return;
        }
    };
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let proxies = shared.lock().await.registry.live_announces();
        scrape_all(&http, &graph, proxies, &settings).await;
    }
}

/// One round: every proxy at once, each bounded by the timeout.
pub async fn scrape_all(
    http: &reqwest::Client,
    graph: &Graph,
    proxies: Vec<ProxyAnnounce>,
    settings: &ScrapeSettings,
) {
    let mut round = JoinSet::new();
    for announce in proxies {
        let http = http.clone();
        let settings = settings.clone();
        round.spawn(async move {
            let result = match admin_target(&announce) {
                Some(admin) => {
                    let fetch = fetch(&http, admin, settings.max_body);
                    match tokio::time::timeout(settings.timeout, fetch).await {
                        Ok(result) => result,
                        Err(_) => Err(format!(
                            "no answer from {admin}/stats/prometheus within {:?}",
                            settings.timeout
                        )),
                    }
                }
                None => Err(format!(
                    "adminAddress {:?} is not ip:port; the proxy cannot be scraped",
                    announce.admin_address
                )),
            };
            (announce, Instant::now(), result)
        });
    }
    let mut live = Vec::new();
    while let Some(joined) = round.join_next().await {
        let Ok((announce, at, result)) = joined else {
            continue;
        };
        live.push(announce.instance.clone());
        match result {
            Ok(samples) => graph.record(&announce, at, &samples),
            Err(error) => {
                tracing::debug!(instance = %announce.instance, "scrape failed: {error}");
                graph.record_failure(&announce, error);
            }
        }
    }
    graph.retain(&live);
}

async fn fetch(
    http: &reqwest::Client,
    admin: SocketAddr,
    max_body: usize,
) -> Result<Vec<Sample>, String> {
    let url = format!("http://{admin}/stats/prometheus");
    let mut response = http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("GET {url}: reading the body: {e}"))?
    {
        body.extend_from_slice(&chunk);
        if body.len() > max_body {
            return Err(format!(
                "GET {url}: the page is larger than {max_body} bytes"
            ));
        }
    }
    let text = String::from_utf8_lossy(&body);
    parse(&text).map_err(|e| format!("GET {url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_classic_text_with_escapes_and_timestamps() {
        let text = r#"
# HELP istio_requests_total Total requests.
# TYPE istio_requests_total counter
istio_requests_total{reporter="source",source_workload="guestbook-ui",response_code="200"} 42
istio_requests_total{reporter="destination" , path="a\"b\\c\nd",} 7 1718000000000
istio_request_duration_milliseconds_bucket{le="+Inf"} 3
process_up 1e0
"#;
        let samples = parse(text).unwrap();
        assert_eq!(samples.len(), 4);
        assert_eq!(samples[0].label("source_workload"), Some("guestbook-ui"));
        assert_eq!(samples[0].value, 42.0);
        assert_eq!(samples[1].label("path"), Some("a\"b\\c\nd"));
        assert_eq!(samples[1].value, 7.0);
        assert_eq!(samples[2].label("le"), Some("+Inf"));
        assert_eq!(samples[3].labels, []);
    }

    #[test]
    fn reads_openmetrics_as_prometheus_client_writes_it() {
        let text = "# HELP istio_requests Total requests.\n\
                    # TYPE istio_requests counter\n\
                    istio_requests_total{reporter=\"source\"} 5 # {trace_id=\"abc\"} 1.0 1718000000.0\n\
                    istio_requests_created{reporter=\"source\"} 1718000000.0\n\
                    # EOF\n";
        let samples = parse(text).unwrap();
        assert_eq!(samples[0].name, "istio_requests_total");
        assert_eq!(samples[0].value, 5.0);
    }

    #[test]
    fn a_bad_line_is_reported_with_its_number() {
        let e = parse("ok 1\nbroken{le=\"1\" 2\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains(", or }"), "{e}");
        assert!(
            parse("x{a=1} 2")
                .unwrap_err()
                .message
                .contains("double quotes")
        );
        assert!(parse("x two").unwrap_err().message.contains("not a number"));
    }

    #[test]
    fn an_unspecified_admin_address_is_reached_through_the_inbound_host() {
        let mut announce = ProxyAnnounce {
            admin_address: "0.0.0.0:15000".into(),
            address: "10.1.2.3:15006".into(),
            ..ProxyAnnounce::default()
        };
        assert_eq!(
            admin_target(&announce),
            Some("10.1.2.3:15000".parse().unwrap())
        );
        announce.address.clear();
        assert_eq!(
            admin_target(&announce),
            Some("127.0.0.1:15000".parse().unwrap())
        );
        announce.admin_address = "127.0.0.1:4000".into();
        assert_eq!(
            admin_target(&announce),
            Some("127.0.0.1:4000".parse().unwrap())
        );
        announce.admin_address.clear();
        assert_eq!(admin_target(&announce), None);
    }
}
