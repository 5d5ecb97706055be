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
        println!("{}", format_diagnostic(d));
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

/// `Warning [ReferencedResourceNotFound] (VirtualService default/guestbook-ui spec.http[0].route[1].destination.subset) message`
pub fn format_diagnostic(d: &Diagnostic) -> String {
    let place = match (d.resource.is_empty(), d.field.is_empty()) {
        (false, false) => format!(" ({} {})", d.resource, d.field),
        (false, true) => format!(" ({})", d.resource),
        (true, false) => format!(" ({})", d.field),
        (true, true) => String::new(),
    };
    format!("{} [{}]{place} {}", d.level, d.code, d.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_istioctl() {
        let d = Diagnostic {
            level: "Warning".into(),
            code: "ReferencedResourceNotFound".into(),
            resource: "VirtualService default/helloworld-service".into(),
            field: "spec.http[0].route[0].destination.subset".into(),
            message: "subset v3 is not defined by any DestinationRule".into(),
        };
        assert_eq!(
            format_diagnostic(&d),
            "Warning [ReferencedResourceNotFound] (VirtualService default/helloworld-service \
             spec.http[0].route[0].destination.subset) subset v3 is not defined by any DestinationRule"
        );
        assert!(!is_error(&d));
        let bare = Diagnostic {
            level: "Error".into(),
            code: "X".into(),
            message: "m".into(),
            ..Default::default()
        };
        assert_eq!(format_diagnostic(&bare), "Error [X] m");
        assert!(is_error(&bare));
    }
}
