//! `meshctl reset`: remove every applied Istio resource, and nothing else.
//!
//! Applied config outlives the processes: the control plane keeps it in
//! `.mesh/state/config.json`, so a VirtualService applied in one lab is
//! still routing after `meshctl down` and the next `meshctl up`, the way a
//! VirtualService stays in a cluster's etcd while pods come and go. A learner
//! who skipped a lab's clean-up needs one command back to a known state:
//!
//! ```text
//! $ meshctl reset
//! virtualservice.networking.istio.io/helloworld-service deleted
//! destinationrule.networking.istio.io/helloworld-service deleted
//! Removed 2 resources: every VirtualService, DestinationRule, Gateway, PeerAuthentication and AuthorizationPolicy.
//! Services, instances, sidecars and the gateway keep running as they are.
//! ```
//!
//! On Kubernetes the same is `kubectl delete virtualservices,destinationrules,gateways,peerauthentications,authorizationpolicies --all`
//! in each namespace. Here it is two calls to the control plane: list what is
//! applied (`GET /v1/config`), then delete exactly that (`POST
//! /v1/config/delete`, the endpoint `meshctl delete` uses), so the control
//! plane's own answer, one kubectl-style line per resource, is what the
//! learner reads. Instances and replica counts (`meshctl scale`) are the
//! supervisor's, not config: reset does not touch them.

use std::process::ExitCode;

use anyhow::{Result, bail};
use mesh_api::config::{ApplyRequest, ApplyResponse, Kind, Resource, SourceFile};

use crate::cli::Ctx;
use crate::client::Validated;

pub async fn run(ctx: &Ctx) -> Result<ExitCode> {
    let control = ctx.control();
    let applied: Vec<Resource> = control.get("/v1/config").await?;
    if applied.is_empty() {
        println!(
            "Nothing to reset: no VirtualService, DestinationRule, Gateway, PeerAuthentication or AuthorizationPolicy is applied."
        );
        return Ok(ExitCode::SUCCESS);
    }
    let request = ApplyRequest {
        files: vec![references(&applied)?],
    };
    let response = match control
        .post_validated::<_, ApplyResponse>("/v1/config/delete", &request)
        .await?
    {
        Validated::Ok(response) => response,
        // Names the control plane itself listed are valid names; a refusal
        // means meshctl and mesh-control disagree on the format.
        Validated::Rejected(errors) => bail!(
            "the control plane refused to delete what it listed ({}); \
             are meshctl and mesh-control built from the same commit? \
             `meshctl delete KIND NAME` deletes one resource at a time",
            errors
                .errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    for change in &response.changes {
        println!("{change}");
    }
    let removed = response
        .changes
        .iter()
        .filter(|c| c.action == "deleted")
        .count();
    println!("{}", summary(removed));
    Ok(ExitCode::SUCCESS)
}

/// One document per applied resource with only apiVersion, kind and
/// metadata: all `POST /v1/config/delete` reads (like `kubectl delete -f`).
fn references(applied: &[Resource]) -> Result<SourceFile> {
    let mut documents = Vec::with_capacity(applied.len());
    for resource in applied {
        let kind = Kind::parse(&resource.kind)?;
        let reference =
            Resource::reference(kind, &resource.metadata.namespace, &resource.metadata.name);
        documents.push(serde_yaml::to_string(&reference)?);
    }
    Ok(SourceFile {
        name: "<meshctl reset>".to_string(),
        content: documents.join("---\n"),
    })
}

/// The last lines: how many went, and what stayed.
fn summary(removed: usize) -> String {
    format!(
        "Removed {removed} resource{}: every VirtualService, DestinationRule, Gateway, PeerAuthentication and AuthorizationPolicy.\n\
         Services, instances, sidecars and the gateway keep running as they are.",
        if removed == 1 { "" } else { "s" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::config::ConfigSet;

    #[test]
    fn references_name_every_resource_in_its_namespace() {
        let applied = vec![
            Resource::reference(Kind::VirtualService, "default", "helloworld-service"),
            Resource::reference(Kind::DestinationRule, "default", "helloworld-service"),
            Resource::reference(Kind::Gateway, "istio-system", "guestbook-gateway"),
        ];
        let file = references(&applied).unwrap();
        // The control plane reads the file with the parser `delete` uses.
        let parsed = ConfigSet::parse_identities(&[file]).unwrap();
        let ids: Vec<String> = parsed.iter().map(Resource::id).collect();
        assert_eq!(
            ids,
            [
                "VirtualService default/helloworld-service",
                "DestinationRule default/helloworld-service",
                "Gateway istio-system/guestbook-gateway",
            ]
        );
    }

    #[test]
    fn the_summary_counts_and_says_what_stays() {
        assert!(summary(1).starts_with("Removed 1 resource:"));
        assert!(summary(3).starts_with("Removed 3 resources:"));
        assert!(summary(3).contains("keep running"));
    }
}
