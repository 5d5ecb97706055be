//! The config API: apply, delete, list and analyse Istio resources.
//!
//! `meshctl apply -f canary.yaml` ends up here, the way `kubectl apply` ends
//! up at the Kubernetes API server, which validates the resource against the
//! CRD schema before etcd stores it. Our order is the same:
//!
//! ```text
//! POST /v1/config/apply  {files}
//!   -> ConfigSet::parse      every document of every file, all or nothing
//!                            (invalid: 400 with every error, nothing changes)
//!   -> ConfigSet::apply      the new set and what changed
//!   -> persist config.json   on disk before anyone sees it
//!   -> new version           every proxy's long-poll wakes and gets a snapshot
//!   -> 200 {changes, diagnostics}   diagnostics: `istioctl analyze` for free
//! ```
//!
//! Parsing, validation and analysis live in `mesh_api::config`; this file
//! only decides when a change is committed.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use mesh_api::config::{ApplyRequest, ApplyResponse, Change, ConfigSet, Diagnostic, Resource};
use serde::Deserialize;

use crate::api::{ApiFailure, JsonBody, Pretty, QueryParams};
use crate::state::Shared;

/// `POST /v1/config/apply`: create or replace every resource in the files.
pub async fn apply(
    State(shared): State<Arc<Shared>>,
    JsonBody(request): JsonBody<ApplyRequest>,
) -> Result<Pretty<ApplyResponse>, ApiFailure> {
    change(&shared, "apply", &request, |config, resources| {
        config.apply(resources)
    })
    .await
}

/// `POST /v1/config/delete`: delete every resource named in the files.
pub async fn delete(
    State(shared): State<Arc<Shared>>,
    JsonBody(request): JsonBody<ApplyRequest>,
) -> Result<Pretty<ApplyResponse>, ApiFailure> {
    change(&shared, "delete", &request, |config, resources| {
        config.delete(&resources)
    })
    .await
}

/// The shared path of apply and delete: parse everything first, then change
/// the set under the lock, persist, and publish, or change nothing at all.
async fn change(
    shared: &Shared,
    verb: &str,
    request: &ApplyRequest,
    edit: impl FnOnce(&ConfigSet, Vec<Resource>) -> (ConfigSet, Vec<Change>),
) -> Result<Pretty<ApplyResponse>, ApiFailure> {
    let files: Vec<&str> = request.files.iter().map(|f| f.name.as_str()).collect();
    // Parsing is pure and may be slow on big files: do it before the lock.
    let resources = ConfigSet::parse(&request.files).map_err(|errors| {
        tracing::info!(
            ?files,
            problems = errors.errors.len(),
            "{verb} rejected: invalid config, the last good config keeps serving"
        );
        ApiFailure::InvalidConfig(errors)
    })?;

    let mut model = shared.lock().await;
    let (config, changes) = edit(&model.config, resources);
    if config != *model.config {
        shared
            .replace_config(&mut model, config)
            .await
            .map_err(|e| {
                tracing::error!("{verb} not applied: {e}");
                ApiFailure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{e}; nothing was changed, the last good config keeps serving"),
                )
            })?;
        tracing::info!(
            ?files,
            version = model.version,
            "config {verb}: {}",
            summary(&changes)
        );
    } else {
        // Applying the same YAML twice is normal (`kubectl apply` is
        // idempotent): report "unchanged", wake nobody.
        tracing::debug!(?files, "config {verb}: nothing changed");
    }
    let diagnostics = model.config.analyze(&model.registry.service_names());
    Ok(Pretty(ApplyResponse {
        changes,
        diagnostics,
    }))
}

fn summary(changes: &[Change]) -> String {
    let lines: Vec<String> = changes
        .iter()
        .map(|c| format!("{} {}/{} {}", c.kind, c.namespace, c.name, c.action))
        .collect();
    lines.join(", ")
}

/// Query of `GET /v1/config`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// `VirtualService`, `DestinationRule`, ...; absent: every kind.
    kind: Option<String>,
}

/// `GET /v1/config?kind=K`: the applied resources, as the user wrote them.
pub async fn list(
    State(shared): State<Arc<Shared>>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Pretty<Vec<Resource>> {
    let model = shared.lock().await;
    Pretty(model.config.list(query.kind.as_deref()))
}

/// `GET /v1/analyze`: cross-reference findings against the live registry
/// (a route to a subset no DestinationRule defines, a host nobody serves...).
pub async fn analyze(State(shared): State<Arc<Shared>>) -> Pretty<Vec<Diagnostic>> {
    let model = shared.lock().await;
    Pretty(model.config.analyze(&model.registry.service_names()))
}
