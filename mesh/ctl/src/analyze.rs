//! `meshctl analyze`: the control plane's cross-reference checks of the
//! applied configuration, printed like `istioctl analyze`.
//!
//! Validation (at apply time) checks each resource alone; analysis checks how
//! they fit together and with the running services: a route to a subset no
//! DestinationRule defines, a host no service has. Istio accepts such config
//! and answers 503 at request time; the analyzers are how you find out before.

use std::process::ExitCode;

use anyhow::Result;
use mesh_api::config::Diagnostic;

use crate::cli::Ctx;

pub async fn run(ctx: &Ctx) -> Result<ExitCode> {
    let diagnostics: Vec<Diagnostic> = ctx.control().get("/v1/analyze").await?;
    if diagnostics.is_empty() {
        println!("✔ No validation issues found when analyzing the mesh.");
        return Ok(ExitCode::SUCCESS);
    }
    for d in &diagnostics {
        println!("{d}");
    }
    let errors = diagnostics.iter().filter(|d| is_error(d)).count();
    if errors > 0 {
        eprintln!(
            "Error: analysis found {errors} error(s) among {} issue(s)",
            diagnostics.len()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn is_error(d: &Diagnostic) -> bool {
    d.level.eq_ignore_ascii_case("error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_error_level_fails_the_command() {
        let level = |level: &str| Diagnostic {
            level: level.into(),
            ..Default::default()
        };
        assert!(is_error(&level("Error")));
        assert!(!is_error(&level("Warning")));
        assert!(!is_error(&level("Info")));
    }
}
