//! `meshctl stat`: per workload and version, the traffic it received over
//! the last seconds: success rate, requests per second, p50 and p99
//! latency. `linkerd viz stat deploy` prints the same columns.
//!
//! The numbers come from the control plane (`GET /api/v1/stat`), which
//! scrapes every sidecar's Istio metrics once a second (see
//! `mesh/control/src/graph.rs` for how rates and quantiles are computed).

use std::process::ExitCode;

use anyhow::Result;
use serde::Deserialize;

use crate::cli::Ctx;
use crate::table::Table;

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    /// Window in seconds: rates are increases over this long (1 to 60).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub window: u32,
}

/// One row of `GET /api/v1/stat`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatRow {
    pub workload: String,
    pub version: String,
    pub instances: usize,
    pub rps: f64,
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

pub async fn run(ctx: &Ctx, args: StatArgs) -> Result<ExitCode> {
    let rows: Vec<StatRow> = ctx
        .control()
        .get(&format!("/api/v1/stat?window={}", args.window))
        .await?;
    Ctx::emit(&render(&rows, args.window))?;
    Ok(ExitCode::SUCCESS)
}

pub fn render(rows: &[StatRow], window: u32) -> String {
    if rows.is_empty() {
        return "No workloads yet: start the mesh with `meshctl up`.\n".into();
    }
    let mut table = Table::new([
        "WORKLOAD",
        "VERSION",
        "INSTANCES",
        "SUCCESS",
        "RPS",
        "P50",
        "P99",
    ]);
    let mut service_rows = false;
    for r in rows {
        // Version "": requests to a service with several versions that
        // reached none of its endpoints (graph.rs puts them on the service).
        let version = if r.version.is_empty() {
            service_rows = true;
            "(service)".to_string()
        } else {
            r.version.clone()
        };
        table.row([
            r.workload.clone(),
            version,
            r.instances.to_string(),
            r.success_rate
                .map(|s| format!("{:.2}%", s * 100.0))
                .unwrap_or_else(|| "-".into()),
            format!("{:.1}", r.rps),
            ms(r.p50_ms),
            ms(r.p99_ms),
        ]);
    }
    let mut out = table.render();
    out += &format!(
        "\nOver the last {window}s, as the callers' sidecars saw it (reporter=source); `-`: no requests.\n"
    );
    if service_rows {
        out += "(service): requests that reached none of the service's endpoints (a fault abort, \
                no healthy endpoint, an overflow), so no version answered them.\n";
    }
    out
}

fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v >= 100.0 => format!("{v:.0}ms"),
        Some(v) => format!("{v:.1}ms"),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_linkerd_viz_stat() {
        let rows = vec![
            StatRow {
                workload: "helloworld-service".into(),
                version: "v1".into(),
                instances: 2,
                rps: 8.04,
                success_rate: Some(1.0),
                p50_ms: Some(2.5),
                p99_ms: Some(180.2),
            },
            StatRow {
                workload: "helloworld-service".into(),
                version: "v2".into(),
                instances: 1,
                rps: 0.0,
                success_rate: None,
                p50_ms: None,
                p99_ms: None,
            },
        ];
        let text = render(&rows, 10);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("WORKLOAD"), "{text}");
        assert!(
            lines[1].contains("100.00%") && lines[1].contains("8.0") && lines[1].contains("180ms"),
            "{text}"
        );
        assert!(lines[2].contains(" - "), "{text}");
        assert!(text.contains("last 10s"));
        assert!(!text.contains("(service)"), "{text}");
    }

    #[test]
    fn requests_that_reached_no_version_are_the_services_row() {
        let rows = vec![StatRow {
            workload: "helloworld-service".into(),
            version: String::new(),
            instances: 0,
            rps: 2.0,
            success_rate: Some(0.0),
            p50_ms: Some(0.5),
            p99_ms: Some(1.0),
        }];
        let text = render(&rows, 10);
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.starts_with("helloworld-service") && row.contains("(service)"),
            "{text}"
        );
        assert!(
            text.contains("(service): requests that reached none of the service's endpoints"),
            "{text}"
        );
    }
}
