//! `meshctl load URL --rps N --duration D`: a small open-loop load
//! generator for demos and labs.
//!
//! **Open loop** means requests leave on a fixed schedule (request *i* at
//! `start + i / rps`) whether or not earlier ones have answered, the way
//! real users arrive. A closed-loop tool (send, wait, send) slows down when
//! the service does and hides the latency a slow service causes
//! ("coordinated omission"); here a slow service piles up requests in flight
//! and its latency shows. Latency is measured from the *scheduled* send
//! time for the same reason. `--concurrency` caps the requests in flight so
//! a dead service cannot exhaust the machine; a request that would exceed
//! it is not sent and is counted as such.
//!
//! At the end it prints the status codes, p50/p99 latency, and **which
//! versions answered**, read from each response by one rule:
//!
//! 1. an `x-version` response header, if present;
//! 2. else, a JSON body's top-level `version` (helloworld-service answers
//!    `{"greeting": ..., "version": "v2", "hostname": ...}`);
//! 3. else, in an HTML page, the Guestbook's markers: the guestbook-ui
//!    version badge, the greeting's first word (`Hello` from v1, `Hola`
//!    from v2) and the helloworld-service version under it; for any other
//!    page, its `<title>`.
//!
//! So `meshctl load http://localhost:8080/ --rps 20 --duration 30s` during
//! the canary lab shows the 80/20 split as it happens.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::Ctx;
use crate::table::Table;

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// What to request, e.g. http://localhost:8080/ (the Guestbook through the gateway).
    pub url: String,
    /// Requests per second, sent on a fixed schedule.
    #[arg(long, default_value_t = 10.0, value_name = "N")]
    pub rps: f64,
    /// How long: 30s, 2m, 500ms, or plain seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "D")]
    pub duration: Duration,
    /// A request header, K:V (repeatable), e.g. "user-agent: Chrome" for the
    /// header-routing lab.
    #[arg(long = "header", short = 'H', value_parser = parse_header, value_name = "K:V")]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Most requests in flight at once; beyond it, requests are not sent
    /// (and counted).
    #[arg(long, default_value_t = 256, value_name = "C")]
    pub concurrency: usize,
    /// Give up on a request after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "D")]
    pub timeout: Duration,
}

/// `30s`, `2m`, `500ms`, `1.5s` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write 30s, 2m, 500ms or 1.5s"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use ms, s, m or h"
            ));
        }
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("{text:?} must be more than zero"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `K:V` or `K: V`.
pub fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text.split_once(':').ok_or_else(|| {
        format!("{text:?}: write a header as NAME:VALUE, e.g. \"user-agent: Chrome\"")
    })?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|e| format!("{text:?}: bad header name: {e}"))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|e| format!("{text:?}: bad header value: {e}"))?;
    Ok((name, value))
}

/// What one request came to.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// `200`, or `error: connect` / `error: timeout` / ...
    pub status: String,
    /// From the scheduled send time to the end of the body.
    pub latency: Duration,
    /// Who answered, by the rule in the module docs.
    pub answered_by: Option<String>,
}

/// The whole run.
#[derive(Debug, Default)]
pub struct Report {
    pub planned: u64,
    /// Not sent: `--concurrency` requests were already in flight.
    pub not_sent: u64,
    pub outcomes: Vec<Outcome>,
    pub elapsed: Duration,
}

pub async fn run(args: LoadArgs) -> Result<ExitCode> {
    if !(args.rps.is_finite() && args.rps > 0.0) {
        bail!("--rps {} must be more than zero", args.rps);
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    reqwest::Url::parse(&args.url).with_context(|| {
        format!(
            "{:?} is not a URL; write for example http://localhost:8080/",
            args.url
        )
    })?;
    eprintln!(
        "meshctl load: {} at {} requests/s for {:.1}s (open loop)...",
        args.url,
        args.rps,
        args.duration.as_secs_f64()
    );
    let report = generate(&args).await?;
    Ctx::emit(&render(&report, &args))?;
    let failed = report
        .outcomes
        .iter()
        .all(|o| o.status.starts_with("error"));
    Ok(if failed && !report.outcomes.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Send `rps * duration` requests on schedule and collect what came back.
pub async fn generate(args: &LoadArgs) -> Result<Report> {
    let mut headers = HeaderMap::new();
    for (name, value) in &args.headers {
        headers.append(name.clone(), value.clone());
    }
    // Straight to the target: a shell's HTTP_PROXY must not swallow a
    // load test of localhost.
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(args.timeout)
        .default_headers(headers)
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .context("building the HTTP client")?;
    let planned = (args.rps * args.duration.as_secs_f64()).round().max(1.0) as u64;
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let mut in_flight = JoinSet::new();
    let mut report = Report {
        planned,
        ..Report::default()
    };
    let start = Instant::now();
    for i in 0..planned {
        let due = start + Duration::from_secs_f64(i as f64 / args.rps);
        tokio::time::sleep_until(due).await;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            report.not_sent += 1;
            continue;
        };
        let (http, url) = (http.clone(), args.url.clone());
        in_flight.spawn(async move {
            let outcome = request(&http, &url, due).await;
            drop(slot);
            outcome
        });
        // Collect finished ones as we go, so memory holds only outcomes.
        while let Some(done) = in_flight.try_join_next() {
            report.outcomes.extend(done.ok());
        }
    }
    while let Some(done) = in_flight.join_next().await {
        report.outcomes.extend(done.ok());
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

async fn request(http: &reqwest::Client, url: &str, due: Instant) -> Outcome {
    let failed = |e: reqwest::Error| Outcome {
        status: format!(
            "error: {}",
            if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "connection dropped"
            }
        ),
        latency: due.elapsed(),
        answered_by: None,
    };
    let response = match http.get(url).send().await {
        Ok(response) => response,
        Err(e) => return failed(e),
    };
    let status = response.status().as_u16().to_string();
    let header = response
        .headers()
        .get("x-version")
        .and_then(|v| v.to_str().ok())
        .map(|v| format!("version {v}"));
    let body = match response.text().await {
        Ok(body) => body,
        Err(e) => return failed(e),
    };
    Outcome {
        status,
        latency: due.elapsed(),
        answered_by: header.or_else(|| who_answered(&body)),
    }
}

/// Steps 2 and 3 of the rule in the module docs.
pub fn who_answered(body: &str) -> Option<String> {
    let trimmed = body.trim_start();
    if trimmed.starts_with('{') {
        let json: serde_json::Value = serde_json::from_str(trimmed).ok()?;
        return json
            .get("version")
            .and_then(|v| v.as_str())
            .map(|v| format!("version {v}"));
    }
    if !trimmed.starts_with('<') {
        return None;
    }
    let mut parts = Vec::new();
    if let Some(ui) = text_after(body, "title=\"guestbook-ui version\">") {
        parts.push(format!("guestbook-ui {ui}"));
    }
    if let Some(hello) = text_after(body, "class=\"hello\">") {
        let word = hello.split_whitespace().next().unwrap_or("").to_string();
        if !word.is_empty() {
            parts.push(word);
        }
    }
    if let Some(hw) = text_after(body, "from helloworld-service <strong>") {
        parts.push(format!("helloworld-service {hw}"));
    }
    if parts.is_empty() {
        parts.extend(text_after(body, "<title>"));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The text between `marker` and the next `<`, unescaped a little.
fn text_after(body: &str, marker: &str) -> Option<String> {
    let start = body.find(marker)? + marker.len();
    let rest = &body[start..];
    let text = &rest[..rest.find('<').unwrap_or(rest.len())];
    let text = text
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// The nearest-rank percentile of sorted latencies.
fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

pub fn render(report: &Report, args: &LoadArgs) -> String {
    let sent = report.outcomes.len() as u64;
    let mut out = format!(
        "\n{sent} requests to {} in {:.1}s ({:.1}/s achieved, {}/s asked)\n",
        args.url,
        report.elapsed.as_secs_f64(),
        sent as f64 / report.elapsed.as_secs_f64().max(1e-9),
        args.rps
    );
    if report.not_sent > 0 {
        out += &format!(
            "{} of {} planned requests were NOT sent: {} were already in flight (--concurrency); \
             the target is slower than the rate asked\n",
            report.not_sent, report.planned, args.concurrency
        );
    }
    let share = |n: u64| format!("{:.1}%", 100.0 * n as f64 / sent.max(1) as f64);

    let mut statuses: BTreeMap<&str, u64> = BTreeMap::new();
    let mut versions: BTreeMap<&str, u64> = BTreeMap::new();
    for o in &report.outcomes {
        *statuses.entry(o.status.as_str()).or_default() += 1;
        if let Some(who) = &o.answered_by {
            *versions.entry(who.as_str()).or_default() += 1;
        }
    }
    let mut table = Table::new(["STATUS", "COUNT", "SHARE"]);
    for (status, n) in &statuses {
        table.row([status.to_string(), n.to_string(), share(*n)]);
    }
    out += "\n";
    out += &table.render();

    let mut latencies: Vec<Duration> = report.outcomes.iter().map(|o| o.latency).collect();
    latencies.sort();
    let ms = |d: Option<Duration>| {
        d.map(|d| format!("{:.1}ms", d.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    out += &format!(
        "\nlatency  p50 {}  p99 {}  max {}\n",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied())
    );

    out += "\n";
    if versions.is_empty() {
        out += "answered by: no version seen (no x-version header, JSON `version` or Guestbook page)\n";
    } else {
        let mut table = Table::new(["ANSWERED BY", "COUNT", "SHARE"]);
        for (who, n) in &versions {
            table.row([who.to_string(), n.to_string(), share(*n)]);
        }
        out += &table.render();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn durations_and_headers_parse_as_written_in_the_labs() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").unwrap_err().contains("more than zero"));
        assert!(
            parse_duration("3 days")
                .unwrap_err()
                .contains("unknown unit")
        );
        let (name, value) = parse_header("User-Agent: Chrome").unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("user-agent", "Chrome")
        );
        assert!(parse_header("nocolon").unwrap_err().contains("NAME:VALUE"));
    }

    #[test]
    fn who_answered_reads_json_then_the_guestbook_page() {
        assert_eq!(
            who_answered(r#"{"greeting": "Hola ray", "version": "v2", "hostname": "h"}"#)
                .as_deref(),
            Some("version v2")
        );
        let page = r#"<html><head><title>Guestbook (v1)</title></head><body>
            <header><h1>Guestbook</h1><span class="badge" title="guestbook-ui version">v1</span></header>
            <section class="greeting"><p class="hello">Hola ray</p>
            <p class="from">from helloworld-service <strong>v2</strong> on <strong>hw-2</strong></p></section>"#;
        assert_eq!(
            who_answered(page).as_deref(),
            Some("guestbook-ui v1, Hola, helloworld-service v2")
        );
        assert_eq!(
            who_answered("<html><title>Other &amp; page</title></html>").as_deref(),
            Some("Other & page")
        );
        assert_eq!(who_answered("plain text"), None);
        assert_eq!(who_answered(r#"{"no": "version"}"#), None);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&ms, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&ms, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    /// Against a local server whose answers alternate between two versions
    /// and which takes 300 ms per request: an open loop keeps its schedule
    /// (20 requests in about a second), where a closed loop would send 4.
    #[tokio::test]
    async fn the_schedule_holds_while_the_target_is_slow() {
        let hits = Arc::new(AtomicU64::new(0));
        let app = axum::Router::new()
            .route(
                "/",
                axum::routing::get(
                    |axum::extract::State(hits): axum::extract::State<Arc<AtomicU64>>| async move {
                        let n = hits.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let version = if n % 2 == 0 { "v1" } else { "v2" };
                        ([("x-version", version)], "ok")
                    },
                ),
            )
            .with_state(hits.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let args = LoadArgs {
            url,
            rps: 20.0,
            duration: Duration::from_secs(1),
            headers: vec![parse_header("x-test: 1").unwrap()],
            concurrency: 64,
            timeout: Duration::from_secs(5),
        };
        let report = generate(&args).await.unwrap();
        assert_eq!((report.planned, report.not_sent), (20, 0));
        assert_eq!(report.outcomes.len(), 20);
        assert!(report.outcomes.iter().all(|o| o.status == "200"));
        // The last request was due at 0.95 s and took 0.3 s: the whole run
        // ends near 1.25 s, far from the 6 s a closed loop would take.
        assert!(
            report.elapsed < Duration::from_secs(3),
            "{:?}",
            report.elapsed
        );
        assert!(
            report
                .outcomes
                .iter()
                .all(|o| o.latency >= Duration::from_millis(300))
        );
        let text = render(&report, &args);
        assert!(
            text.contains("version v1") && text.contains("version v2"),
            "{text}"
        );
        assert!(text.contains("200") && text.contains("100.0%"), "{text}");
    }

    #[tokio::test]
    async fn requests_beyond_the_concurrency_cap_are_counted_not_queued() {
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "slow"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let args = LoadArgs {
            url,
            rps: 50.0,
            duration: Duration::from_millis(200),
            headers: Vec::new(),
            concurrency: 3,
            timeout: Duration::from_secs(5),
        };
        let report = generate(&args).await.unwrap();
        assert_eq!(
            (
                report.planned,
                report.not_sent,
                report.outcomes.len() as u64
            ),
            (10, 7, 3)
        );
        assert!(render(&report, &args).contains("7 of 10 planned requests were NOT sent"));
    }
}
