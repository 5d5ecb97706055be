//! Analysis of the security kinds: policies that are valid YAML but lock
//! callers out, or ask for something nobody can enforce. Part of
//! `meshctl analyze` (see `analyze.rs` for the others):
//!
//! | code | level | finding |
//! | --- | --- | --- |
//! | `AuthorizationPolicyAllowsNothing` | Warning | an ALLOW policy without rules (`spec: {}`): every request to the workloads it selects is denied |
//! | `AuthorizationPolicyRuleNeverMatches` | Warning | a rule of an ALLOW policy that no request can match: it asks for a peer identity where mTLS is DISABLE, or lists a value both in a field and in its `notX` twin |
//! | `StrictMtlsWithoutSidecar` | Warning | a STRICT PeerAuthentication whose selector selects no running instance with a sidecar: nobody enforces it there |
//!
//! `spec: {}` is Istio's documented "allow-nothing" policy, often written on
//! purpose as the first step of a zero-trust rollout; the warning says what
//! it does and how to open what should stay open, so that whoever wrote it
//! by mistake sees the outage coming before the 403s do.

use std::collections::BTreeMap;

use super::analyze::Registry;
use super::authorization_policy::{Action, Rule};
use super::peer_authentication::{MtlsMode, ROOT_NAMESPACE};
use super::{ConfigSet, Diagnostic};

pub(crate) fn analyze(set: &ConfigSet, registry: &Registry, out: &mut Vec<Diagnostic>) {
    let mut add =
        |level: &str, code: &str, resource: &super::Resource, field: &str, message: String| {
            out.push(Diagnostic {
                level: level.into(),
                code: code.into(),
                resource: resource.id(),
                field: field.into(),
                message,
            });
        };
    let scope = |namespace: &str, selector: &Option<BTreeMap<String, String>>| match selector {
        Some(labels) => format!(
            "the workloads labelled {}",
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
        None if namespace == ROOT_NAMESPACE => "every workload of the mesh".to_string(),
        None => format!("every workload of namespace `{namespace}`"),
    };

    for (resource, policy) in set.authorization_policies() {
        if policy.action != Action::Allow {
            continue;
        }
        let namespace = resource.metadata.namespace.as_str();
        if policy.rules.is_empty() {
            add(
                "Warning",
                "AuthorizationPolicyAllowsNothing",
                resource,
                "spec.rules",
                format!(
                    "an ALLOW policy with no rules matches no request, so it denies every request to {} (403 `RBAC: access denied`); this is Istio's \"allow-nothing\" policy. If that is what you want, add ALLOW policies for the callers that must get through; to allow everything instead write `rules: [{{}}]`",
                    scope(namespace, &policy.selector)
                ),
            );
            continue;
        }
        for (i, rule) in policy.rules.iter().enumerate() {
            let field = format!("spec.rules[{i}]");
            if let Some(why) = contradiction(rule) {
                add(
                    "Warning",
                    "AuthorizationPolicyRuleNeverMatches",
                    resource,
                    &field,
                    why,
                );
                continue;
            }
            // A rule that needs a peer identity, on workloads that accept
            // only plaintext: no request ever carries one there.
            let needs_identity = !rule.from.is_empty()
                && rule
                    .from
                    .iter()
                    .all(|s| !s.principals.is_empty() || !s.namespaces.is_empty());
            if !needs_identity {
                continue;
            }
            let disabled = registry_workloads(registry)
                .filter(|labels| policy.selects(labels))
                .any(|labels| set.effective_mtls(labels).mode == MtlsMode::Disable);
            let mesh_disabled = set.effective_mtls(&BTreeMap::new()).mode == MtlsMode::Disable
                && policy.selector.is_none();
            if disabled || mesh_disabled {
                add(
                    "Warning",
                    "AuthorizationPolicyRuleNeverMatches",
                    resource,
                    &format!("{field}.from"),
                    "every source of this rule names `principals` or `namespaces`, which come from the caller's mTLS certificate, but a PeerAuthentication sets mTLS to DISABLE for workloads this policy selects: plaintext requests carry no identity, so the rule never matches there. Use mTLS (PERMISSIVE or STRICT) or match on `to`/`when` instead".to_string(),
                );
            }
        }
    }

    // STRICT where no sidecar enforces it.
    let Some(instances) = registry.instances() else {
        return;
    };
    for (resource, policy) in set.peer_authentications() {
        let Some(selector) = &policy.selector else {
            continue;
        };
        let strict = policy.mode == MtlsMode::Strict
            || policy
                .port_level_mtls
                .values()
                .any(|m| *m == MtlsMode::Strict);
        if !strict {
            continue;
        }
        let selected = instances
            .values()
            .flatten()
            .any(|labels| selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
        if !selected {
            add(
                "Warning",
                "StrictMtlsWithoutSidecar",
                resource,
                "spec.selector",
                format!(
                    "STRICT is enforced by the sidecar of the workload it selects, and no running instance with a sidecar has the labels {}. A workload without a sidecar takes plaintext whatever this says, and callers whose sidecars send mTLS to it fail: run it with a sidecar (`meshctl up` does; on a cluster, label the namespace for injection) or fix the selector",
                    selector
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            );
        }
    }
}

/// The labels of every running sidecar instance, when known.
fn registry_workloads(registry: &Registry) -> impl Iterator<Item = &BTreeMap<String, String>> {
    registry
        .instances()
        .into_iter()
        .flat_map(|i| i.values().flatten())
}

/// A value both in a field and in its `notX` twin: that source or
/// operation can never match, and neither can the rule if it has no other.
fn contradiction(rule: &Rule) -> Option<String> {
    let clash = |field: &str, values: &[String], not: &[String]| {
        values.iter().find(|v| not.contains(v)).map(|v| {
            format!(
                "`{v}` is in both `{field}` and `not{}{}`",
                field[..1].to_uppercase(),
                &field[1..]
            )
        })
    };
    let sources: Vec<Option<String>> = rule
        .from
        .iter()
        .map(|s| {
            clash("principals", &s.principals, &s.not_principals)
                .or_else(|| clash("namespaces", &s.namespaces, &s.not_namespaces))
        })
        .collect();
    let operations: Vec<Option<String>> = rule
        .to
        .iter()
        .map(|o| {
            clash("methods", &o.methods, &o.not_methods)
                .or_else(|| clash("paths", &o.paths, &o.not_paths))
                .or_else(|| clash("hosts", &o.hosts, &o.not_hosts))
        })
        .collect();
    for (what, list) in [("source", sources), ("operation", operations)] {
        if !list.is_empty() && list.iter().all(Option::is_some) {
            let first = list.into_iter().flatten().next()?;
            return Some(format!(
                "this rule never matches: {first}, so no {what} of it can match a request"
            ));
        }
    }
    None
}
