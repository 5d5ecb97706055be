//! The config API: apply, delete, list and analyse Istio resources.
//!
//! `meshctl apply -f canary.yaml` ends up here, the way `kubectl apply` ends
//! up at the Kubernetes API server, which validates the resource against the
//! CRD schema before etcd stores it. Our order is the same:
//!
//! ```text
//! POST /v1/config/apply  {files}
//!   -> ConfigSet::parse      every document of every file, all or nothing
//!                            (delete: parse_identities, the spec is not checked)
//!                            (invalid: 400 with every error, nothing changes)
//!   -> ConfigSet::apply      the new set and what changed
//!   -> check_snapshot        the snapshots it compiles to pass the proxy's
//!                            own check (400 if not: nothing changes)
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
use mesh_api::config::{
    ApplyRequest, ApplyResponse, Change, ConfigErrors, ConfigSet, Diagnostic, Kind, Resource,
    SourceFile,
};
use mesh_api::xds::{ProxyAnnounce, ProxyMode};
use serde::Deserialize;

use crate::api::{ApiFailure, JsonBody, Pretty, QueryParams};
use crate::state::Shared;

/// `POST /v1/config/apply`: create or replace every resource in the files.
pub async fn apply(
    State(shared): State<Arc<Shared>>,
    JsonBody(request): JsonBody<ApplyRequest>,
) -> Result<Pretty<ApplyResponse>, ApiFailure> {
    let resources = parse(&request, "apply", ConfigSet::parse)?;
    change(&shared, "apply", &request, |config| config.apply(resources)).await
}

/// `POST /v1/config/delete`: delete every resource named in the files.
pub async fn delete(
    State(shared): State<Arc<Shared>>,
    JsonBody(request): JsonBody<ApplyRequest>,
) -> Result<Pretty<ApplyResponse>, ApiFailure> {
    // Like `kubectl delete -f`: only apiVersion, kind and metadata have to
    // be right; a spec that no longer validates must not block its removal.
    let resources = parse(&request, "delete", ConfigSet::parse_identities)?;
    change(&shared, "delete", &request, |config| {
        config.delete(&resources)
    })
    .await
}

/// Parse every document of every file, all or nothing. This is pure and may
/// be slow on big files, so it runs before the lock is taken.
fn parse(
    request: &ApplyRequest,
    verb: &str,
    parse: impl FnOnce(&[SourceFile]) -> Result<Vec<Resource>, ConfigErrors>,
) -> Result<Vec<Resource>, ApiFailure> {
    parse(&request.files).map_err(|errors| {
        tracing::info!(
            files = ?file_names(request),
            problems = errors.errors.len(),
            "{verb} rejected: invalid config, the last good config keeps serving"
        );
        ApiFailure::InvalidConfig(errors)
    })
}

fn file_names(request: &ApplyRequest) -> Vec<&str> {
    request.files.iter().map(|f| f.name.as_str()).collect()
}

/// The shared path of apply and delete: change the set under the lock,
/// persist, and publish, or change nothing at all.
async fn change(
    shared: &Shared,
    verb: &str,
    request: &ApplyRequest,
    edit: impl FnOnce(&ConfigSet) -> (ConfigSet, Vec<Change>),
) -> Result<Pretty<ApplyResponse>, ApiFailure> {
    let files = file_names(request);
    if let Some(source) = &shared.settings.kubernetes {
        // One way per mode: on a cluster the API server is the config store,
        // so a change made here would be undone by the next watch event.
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            format!(
                "this control plane reads its config from the Kubernetes API (namespace {}); \
                 use `kubectl {verb} -f FILE -n {}` instead of meshctl {verb}",
                source.namespace, source.namespace
            ),
        ));
    }
    let mut model = shared.lock().await;
    let (config, changes) = edit(&model.config);
    if config != *model.config {
        refuse_what_a_proxy_would(&config, &model, verb)?;
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
    let diagnostics = model
        .config
        .analyze_proxies(&model.registry.live_announces());
    Ok(Pretty(ApplyResponse {
        changes,
        diagnostics,
    }))
}

/// The last gate before a change is committed: compile the snapshots the
/// new config makes (a sidecar's, and every registered gateway's) and run
/// the proxy's own check on them (`mesh_api::check`). The parser already
/// refuses every field a proxy rejects; this catches what only the compiled
/// whole shows, so no proxy is ever sent a snapshot it would NACK.
fn refuse_what_a_proxy_would(
    config: &ConfigSet,
    model: &crate::state::Model,
    verb: &str,
) -> Result<(), ApiFailure> {
    let workloads = model.discovered.as_ref().unwrap_or(&model.workloads);
    let sidecar = ProxyAnnounce {
        instance: format!("{verb}-check"),
        ..Default::default()
    };
    let gateways = workloads
        .iter()
        .map(|w| &w.announce)
        .filter(|a| a.mode == ProxyMode::Gateway);
    for proxy in std::iter::once(&sidecar).chain(gateways) {
        let snapshot = crate::compile::compile(config, workloads, proxy, model.version + 1);
        if let Err(error) = mesh_api::check::check_snapshot(&snapshot) {
            tracing::info!(%error, proxy = proxy.instance, "{verb} rejected: a proxy would reject the snapshot");
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "{verb} refused: the snapshot it makes for proxy {:?} would be rejected \
                     by the proxy: {error}; nothing was changed, fix the resource and {verb} again",
                    proxy.instance
                ),
            ));
        }
    }
    Ok(())
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
/// `K` is what a user types: `vs`, `VirtualService`, `destinationrules`...
pub async fn list(
    State(shared): State<Arc<Shared>>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Pretty<Vec<Resource>>, ApiFailure> {
    if let Some(kind) = &query.kind {
        // An unknown kind is a typo, not an empty list.
        Kind::parse(kind).map_err(|e| ApiFailure::bad_request(e.to_string()))?;
    }
    let model = shared.lock().await;
    Ok(Pretty(model.config.list(query.kind.as_deref())))
}

/// `GET /v1/merges`: per resource id, how it combines with the other
/// VirtualServices or DestinationRules of its host (merged at a gateway,
/// used or not used by the sidecars): `meshctl get`'s MERGED column.
pub async fn merges(
    State(shared): State<Arc<Shared>>,
) -> Pretty<std::collections::BTreeMap<String, Vec<String>>> {
    let model = shared.lock().await;
    Pretty(model.config.merges())
}

/// `GET /v1/analyze`: cross-reference findings against the live registry
/// (a route to a subset no DestinationRule defines, a host nobody serves, a
/// subset no running instance matches...).
pub async fn analyze(State(shared): State<Arc<Shared>>) -> Pretty<Vec<Diagnostic>> {
    let model = shared.lock().await;
    Pretty(
        model
            .config
            .analyze_proxies(&model.registry.live_announces()),
    )
}
