//! Conformance of micromesh's field tables with Istio's CRD schema.
//!
//! Each resource module lists, per object, the fields micromesh reads and
//! the ones only Istio has ([`Shape`]). These tests hold those tables against
//! every field path of Istio's own schema (`tests/fixtures/istio-fields.txt`,
//! generated from istio/api's CRD file by `scripts/istio-schema-check.py
//! --list-fields`), so that:
//! - every field Istio has is either read or refused with a reason, never
//!   reported as "unknown" (a learner's valid Istio YAML gets an honest
//!   "not implemented", not "you made a typo");
//! - every field micromesh reads, or says "Istio does: ..." about, really is
//!   Istio's, at that place.

use std::collections::BTreeSet;

use super::decode::{PERCENT, Shape, Unsupported};
use super::{
    authorization_policy as ap, destination_rule as dr, gateway as gw, peer_authentication as pa,
    virtual_service as vs,
};

const ISTIO_FIELDS: &str = include_str!("../../tests/fixtures/istio-fields.txt");

/// Where each shape is used, as schema paths (`[]` for list items, `*` for
/// map values).
fn shapes() -> Vec<(&'static str, String, &'static Shape)> {
    let mut out: Vec<(&'static str, String, &'static Shape)> = Vec::new();
    let mut add = |kind: &'static str, path: &str, shape: &'static Shape| {
        out.push((kind, path.to_string(), shape));
    };

    add("VirtualService", "spec", &vs::SPEC);
    let r = "spec.http[]";
    add("VirtualService", r, &vs::HTTP_ROUTE);
    add("VirtualService", &format!("{r}.match[]"), &vs::MATCH);
    for field in [
        "uri",
        "method",
        "headers.*",
        "withoutHeaders.*",
        "queryParams.*",
    ] {
        add(
            "VirtualService",
            &format!("{r}.match[].{field}"),
            &vs::STRING_MATCH,
        );
    }
    add(
        "VirtualService",
        &format!("{r}.route[]"),
        &vs::ROUTE_DESTINATION,
    );
    add(
        "VirtualService",
        &format!("{r}.route[].destination"),
        &vs::DESTINATION,
    );
    add(
        "VirtualService",
        &format!("{r}.route[].destination.port"),
        &vs::PORT_SELECTOR,
    );
    add("VirtualService", &format!("{r}.mirror"), &vs::DESTINATION);
    add(
        "VirtualService",
        &format!("{r}.mirror.port"),
        &vs::PORT_SELECTOR,
    );
    add("VirtualService", &format!("{r}.mirrorPercentage"), &PERCENT);
    add("VirtualService", &format!("{r}.fault"), &vs::FAULT);
    add("VirtualService", &format!("{r}.fault.delay"), &vs::DELAY);
    add(
        "VirtualService",
        &format!("{r}.fault.delay.percentage"),
        &PERCENT,
    );
    add("VirtualService", &format!("{r}.fault.abort"), &vs::ABORT);
    add(
        "VirtualService",
        &format!("{r}.fault.abort.percentage"),
        &PERCENT,
    );
    add("VirtualService", &format!("{r}.retries"), &vs::RETRIES);
    add("VirtualService", &format!("{r}.headers"), &vs::HEADERS);
    add(
        "VirtualService",
        &format!("{r}.headers.request"),
        &vs::HEADER_OPERATIONS,
    );
    add(
        "VirtualService",
        &format!("{r}.headers.response"),
        &vs::HEADER_OPERATIONS,
    );
    add("VirtualService", &format!("{r}.rewrite"), &vs::REWRITE);

    add("DestinationRule", "spec", &dr::SPEC);
    add("DestinationRule", "spec.subsets[]", &dr::SUBSET);
    for policy in ["spec.trafficPolicy", "spec.subsets[].trafficPolicy"] {
        add("DestinationRule", policy, &dr::TRAFFIC_POLICY);
        add(
            "DestinationRule",
            &format!("{policy}.loadBalancer"),
            &dr::LOAD_BALANCER,
        );
        add(
            "DestinationRule",
            &format!("{policy}.connectionPool"),
            &dr::CONNECTION_POOL,
        );
        add(
            "DestinationRule",
            &format!("{policy}.connectionPool.tcp"),
            &dr::TCP_SETTINGS,
        );
        add(
            "DestinationRule",
            &format!("{policy}.connectionPool.http"),
            &dr::HTTP_SETTINGS,
        );
        add(
            "DestinationRule",
            &format!("{policy}.outlierDetection"),
            &dr::OUTLIER_DETECTION,
        );
        add("DestinationRule", &format!("{policy}.tls"), &dr::CLIENT_TLS);
        let port = format!("{policy}.portLevelSettings[]");
        add("DestinationRule", &port, &dr::PORT_TRAFFIC_POLICY);
        add(
            "DestinationRule",
            &format!("{port}.port"),
            &dr::PORT_SELECTOR,
        );
        add("DestinationRule", &format!("{port}.tls"), &dr::CLIENT_TLS);
    }

    add("PeerAuthentication", "spec", &pa::SPEC);
    add("PeerAuthentication", "spec.selector", &pa::SELECTOR);
    add("PeerAuthentication", "spec.mtls", &pa::MTLS);
    add("PeerAuthentication", "spec.portLevelMtls.*", &pa::MTLS);

    add("AuthorizationPolicy", "spec", &ap::SPEC);
    add("AuthorizationPolicy", "spec.selector", &pa::SELECTOR);
    add("AuthorizationPolicy", "spec.rules[]", &ap::RULE);
    add("AuthorizationPolicy", "spec.rules[].from[]", &ap::FROM);
    add(
        "AuthorizationPolicy",
        "spec.rules[].from[].source",
        &ap::SOURCE,
    );
    add("AuthorizationPolicy", "spec.rules[].to[]", &ap::TO);
    add(
        "AuthorizationPolicy",
        "spec.rules[].to[].operation",
        &ap::OPERATION,
    );
    add("AuthorizationPolicy", "spec.rules[].when[]", &ap::CONDITION);

    add("Gateway", "spec", &gw::SPEC);
    add("Gateway", "spec.servers[]", &gw::SERVER);
    add("Gateway", "spec.servers[].port", &gw::PORT);
    out
}

fn istio_fields() -> BTreeSet<(String, String)> {
    ISTIO_FIELDS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (kind, path) = l.split_once(' ').expect("`Kind path` lines");
            (kind.to_string(), path.to_string())
        })
        .collect()
}

/// `spec.http[].match[].uri` -> (`spec.http[].match[]`, `uri`).
fn split_leaf(path: &str) -> (&str, &str) {
    path.rsplit_once('.').expect("every field is below spec")
}

#[test]
fn every_istio_field_is_read_or_refused_with_a_reason() {
    let shapes = shapes();
    let shape_at = |kind: &str, path: &str| {
        shapes
            .iter()
            .find(|(k, p, _)| *k == kind && p == path)
            .map(|(_, _, s)| *s)
    };
    let mut problems = Vec::new();
    for (kind, path) in istio_fields() {
        let (parent, leaf) = split_leaf(&path);
        let leaf = leaf.trim_end_matches("[]");
        if leaf == "*" {
            continue; // a map value, not a field
        }
        if let Some(shape) = shape_at(&kind, parent) {
            let known =
                shape.fields.contains(&leaf) || shape.istio_only.iter().any(|(n, _)| *n == leaf);
            if !known {
                problems.push(format!(
                    "{kind} {path}: neither read nor refused by {}",
                    shape.what
                ));
            }
            continue;
        }
        // No shape here: some ancestor must be a field micromesh refuses as
        // a whole (everything below `corsPolicy` goes with it).
        let refused_above = shapes.iter().any(|(k, p, shape)| {
            *k == kind
                && path.starts_with(&format!("{p}."))
                && shape.istio_only.iter().any(|(name, _)| {
                    let below = &path[p.len() + 1..];
                    below == *name
                        || below.starts_with(&format!("{name}."))
                        || below.starts_with(&format!("{name}["))
                })
        });
        if !refused_above {
            problems.push(format!("{kind} {path}: no shape describes `{parent}`"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_field_micromesh_names_is_istios() {
    let istio = istio_fields();
    let mut problems = Vec::new();
    for (kind, path, shape) in shapes() {
        let has = |field: &str| {
            let full = format!("{path}.{field}");
            istio.contains(&(kind.to_string(), full.clone()))
                || istio.contains(&(kind.to_string(), format!("{full}[]")))
        };
        for field in shape.fields {
            if !has(field) {
                problems.push(format!(
                    "{kind} {path}.{field}: micromesh reads it, Istio has no such field"
                ));
            }
        }
        for (field, why) in shape.istio_only {
            // "Istio does: it ..." must be about a field Istio has; an old
            // field Istio removed is explained as `Replaced` instead.
            if matches!(why, Unsupported::NotImplemented(_)) && !has(field) {
                problems.push(format!(
                    "{kind} {path}.{field}: said to be Istio's, but Istio has no such field"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
