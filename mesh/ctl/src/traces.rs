//! `meshctl traces`: the most recent traces, each as a tree of spans with
//! durations, and where a chain broke.
//!
//! The control plane's collector keeps the spans every sidecar reports
//! (Zipkin's API, `mesh/control/src/collector/`); this reads its analysis
//! of them (`GET /api/v1/traces`, then `/api/v1/traces/{id}/analysis`):
//!
//! ```text
//! trace 4bf92f3577b34da6a3ce929d0e0e4736  10:44:26  12.3ms  6 spans
//!   ingressgateway      CLIENT  guestbook-ui:8080/                 12.3ms  200
//!     guestbook-ui      SERVER  guestbook-ui:8080/                 11.9ms  200
//!       guestbook-ui    CLIENT  helloworld-service:8080/hello/ray   3.1ms  200
//!         helloworld-service  SERVER  ...
//!   ! broken chain: ...
//! ```

use std::collections::BTreeMap;
use std::fmt::Write;
use std::process::ExitCode;

use anyhow::Result;
use serde::Deserialize;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct TracesArgs {
    /// Only traces that crossed this service.
    #[arg(long, value_name = "SERVICE")]
    pub service: Option<String>,
    /// How many traces, newest first.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub limit: usize,
    /// Only traces whose chain broke (an app that did not forward the
    /// trace headers, a missing span).
    #[arg(long)]
    pub broken: bool,
}

/// `GET /api/v1/traces/{id}/analysis`, the fields printed here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    pub trace_id: String,
    pub start: u64,
    pub duration: u64,
    pub span_count: usize,
    pub error: bool,
    pub broken: bool,
    pub settled: bool,
    pub problems: Vec<Problem>,
    #[serde(default)]
    pub spans: Vec<WaterfallSpan>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    pub span_id: String,
    pub pending: bool,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaterfallSpan {
    pub id: String,
    pub depth: usize,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub duration: Option<u64>,
    pub local_endpoint: Option<Endpoint>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub service_name: Option<String>,
}

pub async fn run(ctx: &Ctx, args: TracesArgs) -> Result<ExitCode> {
    let control = ctx.control();
    let mut path = format!("/api/v1/traces?limit={}", args.limit);
    if let Some(service) = &args.service {
        path += &format!("&serviceName={service}");
    }
    if args.broken {
        path += "&broken=true";
    }
    let list: Vec<Analysis> = control.get(&path).await?;
    if list.is_empty() {
        // With --broken, say whether there were traces to judge at all.
        let any = if args.broken {
            let mut all = "/api/v1/traces?limit=1".to_string();
            if let Some(service) = &args.service {
                all += &format!("&serviceName={service}");
            }
            !control.get::<Vec<Analysis>>(&all).await?.is_empty()
        } else {
            false
        };
        Ctx::emit(&empty_message(args.broken, any, args.service.as_deref()))?;
        return Ok(ExitCode::SUCCESS);
    }
    for summary in list {
        let analysis: Analysis = control
            .get(&format!("/api/v1/traces/{}/analysis", summary.trace_id))
            .await?;
        if !Ctx::emit(&render(&analysis))? {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What to print when no trace matched. `broken`: `--broken` was asked;
/// `any_traces`: the collector holds traces (of `service`) that are whole.
pub fn empty_message(broken: bool, any_traces: bool, service: Option<&str>) -> String {
    let of = service.map(|s| format!(" for {s}")).unwrap_or_default();
    if broken && any_traces {
        return format!(
            "No broken traces{of}: every trace the collector holds has its chain whole \
             (each app forwarded the trace headers). Drop --broken to list them.\n"
        );
    }
    let what = if broken { "broken traces" } else { "traces" };
    format!(
        "No {what}{of} yet: no trace{of} has reached the collector. Every request through \
         the mesh records one: try `meshctl load http://localhost:8080/ --rps 5 --duration 5s`.\n"
    )
}

/// One trace as an indented tree, its problems below.
pub fn render(a: &Analysis) -> String {
    let mut out = String::new();
    let mut flags = Vec::new();
    if a.error {
        flags.push("ERROR");
    }
    if a.broken {
        flags.push("BROKEN CHAIN");
    }
    if !a.settled {
        flags.push("in progress");
    }
    let _ = writeln!(
        out,
        "trace {}  {}  {}  {} span{}{}",
        a.trace_id,
        clock(a.start),
        micros(a.duration),
        a.span_count,
        if a.span_count == 1 { "" } else { "s" },
        if flags.is_empty() {
            String::new()
        } else {
            format!("  [{}]", flags.join(", "))
        }
    );
    // Column widths from the widest entries, so the durations line up.
    let label = |s: &WaterfallSpan| {
        format!(
            "{}{}",
            "  ".repeat(s.depth + 1),
            s.local_endpoint
                .as_ref()
                .and_then(|e| e.service_name.as_deref())
                .unwrap_or("?")
        )
    };
    let width = a.spans.iter().map(|s| label(s).len()).max().unwrap_or(0);
    let name_width = a
        .spans
        .iter()
        .map(|s| s.name.as_deref().unwrap_or("").len())
        .max()
        .unwrap_or(0);
    for s in &a.spans {
        let marked = a.problems.iter().any(|p| p.span_id == s.id && !p.pending);
        let _ = writeln!(
            out,
            "{:<width$}  {:<6}  {:<name_width$}  {:>8}  {}{}",
            label(s),
            s.kind.as_deref().unwrap_or(""),
            s.name.as_deref().unwrap_or(""),
            micros(s.duration.unwrap_or(0)),
            s.tags
                .get("http.status_code")
                .map(String::as_str)
                .unwrap_or("-"),
            if marked { "  <- chain broke here" } else { "" },
        );
    }
    for p in &a.problems {
        let _ = writeln!(out, "  {} {}", if p.pending { "?" } else { "!" }, p.message);
    }
    out.push('\n');
    out
}

fn micros(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{us}µs")
    }
}

/// `HH:MM:SS` (UTC) of a Zipkin timestamp.
fn clock(us: u64) -> String {
    let secs = us / 1_000_000;
    format!(
        "{:02}:{:02}:{:02}Z",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, depth: usize, kind: &str, service: &str, duration: u64) -> WaterfallSpan {
        WaterfallSpan {
            id: id.into(),
            depth,
            kind: Some(kind.into()),
            name: Some(format!("{service}:8080/")),
            duration: Some(duration),
            local_endpoint: Some(Endpoint {
                service_name: Some(service.into()),
            }),
            tags: [("http.status_code".to_string(), "200".to_string())].into(),
        }
    }

    #[test]
    fn a_trace_prints_as_an_indented_tree_with_its_breaks() {
        let a = Analysis {
            trace_id: "00000000000000e2".into(),
            start: 3_723_000_000,
            duration: 5_000,
            span_count: 2,
            error: false,
            broken: true,
            settled: true,
            problems: vec![Problem {
                span_id: "b2".into(),
                pending: false,
                message: "guestbook-ui's app did not forward the trace headers".into(),
            }],
            spans: vec![
                span("b2", 0, "CLIENT", "guestbook-ui", 5_000),
                span("c1", 1, "SERVER", "helloworld-service", 1_400_000),
            ],
        };
        let text = render(&a);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("01:02:03Z")
                && lines[0].contains("5.0ms")
                && lines[0].contains("BROKEN CHAIN"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("  guestbook-ui") && lines[1].ends_with("<- chain broke here"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("    helloworld-service") && lines[2].contains("1.40s"),
            "{text}"
        );
        assert!(
            lines[3].contains("! guestbook-ui's app did not forward"),
            "{text}"
        );
    }

    #[test]
    fn an_empty_list_says_which_traces_there_are_none_of() {
        // --broken while whole traces exist: nothing broke, say so.
        let whole = empty_message(true, true, Some("sentiment-service"));
        assert!(
            whole.starts_with("No broken traces for sentiment-service: every trace"),
            "{whole}"
        );
        assert!(!whole.contains("yet"), "{whole}");
        // --broken with no trace at all: the traces are what is missing.
        let none = empty_message(true, false, None);
        assert!(
            none.starts_with("No broken traces yet: no trace has reached the collector"),
            "{none}"
        );
        assert!(none.contains("meshctl load"), "{none}");
        let plain = empty_message(false, false, None);
        assert!(plain.starts_with("No traces yet"), "{plain}");
    }
}
