//! Istio custom resources (VirtualService, DestinationRule, Gateway) read
//! from the API server -> the config set the snapshot compiler reads.
//!
//! Each object is checked by exactly the code `meshctl validate` and
//! `meshctl apply` run (`ConfigSet::parse`), on the object as the user wrote
//! it: apiVersion, kind, metadata (name, namespace, labels, annotations) and
//! spec. What the API server adds (uid, resourceVersion, managedFields,
//! status, kubectl's last-applied annotation) is not the user's and is left
//! out first.
//!
//! A resource that fails validation never replaces the last good version of
//! itself: istiod does the same (an invalid resource is skipped and reported,
//! the mesh keeps its last good config). The learner sees why on the object,
//! as `status.conditions` and a Kubernetes Event (`source.rs` writes both).
//!
//! micromesh routes one namespace (`mesh_api::config::ROUTED_NAMESPACE`,
//! `default`); on a cluster that part is played by the namespace the control
//! plane serves (`--namespace`), so its resources are read as if written in
//! `default`, and every message names the object's real namespace. Hosts
//! keep their meaning on the cluster: the config set is built for the served
//! namespace, so `reviews`, `reviews.guestbook` and
//! `reviews.guestbook.svc.cluster.local` all name `reviews`
//! (`ConfigSet::service_of_host`).

use std::collections::BTreeMap;

use kube::api::DynamicObject;
use mesh_api::config::{
    ConfigErrors, ConfigSet, Diagnostic, Kind, ROUTED_NAMESPACE, Resource, SourceFile,
};
use serde_json::{Map, Value, json};

/// kubectl's own bookkeeping, never part of the resource.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One Istio object's identity on the cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// `VirtualService guestbook/helloworld`, the way errors name it.
    pub fn id(&self) -> String {
        format!("{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// What the control plane thinks of one object at one generation.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Valid: it is part of the config.
    Accepted,
    /// Invalid: every error, one per line, as `meshctl validate` prints
    /// them. `kept_last_good` says whether an older valid version still serves.
    Rejected {
        errors: ConfigErrors,
        kept_last_good: bool,
    },
}

/// An object's verdict, with what identifies the version judged.
#[derive(Clone, Debug, PartialEq)]
pub struct Judged {
    pub key: ObjectKey,
    pub uid: String,
    pub generation: Option<i64>,
    pub verdict: Verdict,
    /// What analysis (`meshctl analyze`, Istio's `istioctl analyze`) says
    /// about the version that serves: shown in status, never blocking, as
    /// `meshctl apply` applies such config and prints the findings.
    pub diagnostics: Vec<Diagnostic>,
}

/// The Istio objects read so far, with the last good version of each.
#[derive(Debug)]
pub struct IstioConfig {
    /// The last version of each object that validated, with its creation
    /// time (which orders the set: the oldest VirtualService of a host wins).
    last_good: BTreeMap<ObjectKey, (String, Resource)>,
    /// The served namespace: hosts like `reviews.guestbook` name its services.
    namespace: String,
}

impl Default for IstioConfig {
    /// Serving `default`, as the local mesh does.
    fn default() -> Self {
        IstioConfig::new(ROUTED_NAMESPACE)
    }
}

// === impl IstioConfig ===

impl IstioConfig {
    /// The Istio objects of the served `namespace` (none read yet).
    pub fn new(namespace: impl Into<String>) -> Self {
        IstioConfig {
            last_good: BTreeMap::new(),
            namespace: namespace.into(),
        }
    }

    /// Judge every object that exists now and build the config set from the
    /// valid ones (and the last good version of the invalid ones). Objects
    /// that no longer exist are forgotten, last good version included.
    pub fn update(&mut self, objects: &[(Kind, &DynamicObject)]) -> (ConfigSet, Vec<Judged>) {
        let mut judged = Vec::new();
        let mut present = BTreeMap::new();
        for (kind, object) in objects {
            let Some(key) = key_of(*kind, object) else {
                continue;
            };
            let created = object
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            present.insert(key.clone(), ());
            let verdict = match validate(&key, object) {
                Ok(resource) => {
                    self.last_good.insert(key.clone(), (created, resource));
                    Verdict::Accepted
                }
                Err(errors) => Verdict::Rejected {
                    errors,
                    kept_last_good: self.last_good.contains_key(&key),
                },
            };
            judged.push(Judged {
                key,
                uid: object.metadata.uid.clone().unwrap_or_default(),
                generation: object.metadata.generation,
                verdict,
                diagnostics: Vec::new(),
            });
        }
        self.last_good.retain(|key, _| present.contains_key(key));

        let mut ordered: Vec<(&String, &ObjectKey, &Resource)> = self
            .last_good
            .iter()
            .map(|(key, (created, resource))| (created, key, resource))
            .collect();
        // RFC 3339 timestamps of one API server sort as text; ties by name.
        ordered.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let resources = ordered.into_iter().map(|(_, _, r)| r.clone()).collect();
        let (config, _changes) = ConfigSet::for_namespace(&self.namespace).apply(resources);
        (config, judged)
    }
}

/// Hand each object the findings about it. Analysis names resources as
/// micromesh holds them (in the routed namespace); the message is about the
/// object in its real namespace.
pub fn attach(judged: &mut [Judged], diagnostics: &[Diagnostic]) {
    for judged in judged.iter_mut() {
        let id = format!(
            "{} {ROUTED_NAMESPACE}/{}",
            judged.key.kind.as_str(),
            judged.key.name
        );
        judged.diagnostics = diagnostics
            .iter()
            .filter(|d| d.resource == id)
            .map(|d| Diagnostic {
                resource: judged.key.id(),
                ..d.clone()
            })
            .collect();
    }
}

fn key_of(kind: Kind, object: &DynamicObject) -> Option<ObjectKey> {
    Some(ObjectKey {
        kind,
        namespace: object.metadata.namespace.clone()?,
        name: object.metadata.name.clone()?,
    })
}

/// The object as its author wrote it, validated as `meshctl validate`
/// validates a file; the resource is placed in micromesh's routed namespace.
pub fn validate(key: &ObjectKey, object: &DynamicObject) -> Result<Resource, ConfigErrors> {
    let document = authored(key, object);
    // serde_json's Value serializes to YAML losslessly: YAML is a superset.
    let content = serde_yaml::to_string(&document).expect("a JSON value is always valid YAML");
    let file = SourceFile {
        name: format!("{}/{}", key.kind.qualified_name(), key.name),
        content,
    };
    match ConfigSet::parse(&[file]) {
        Ok(mut resources) if resources.len() == 1 => Ok(resources.remove(0)),
        Ok(resources) => unreachable!("one document parsed into {} resources", resources.len()),
        Err(mut errors) => {
            // The message names the object where it lives on the cluster.
            for error in &mut errors.errors {
                error.file = String::new();
                error.resource = key.id();
            }
            Err(errors)
        }
    }
}

/// apiVersion, kind, metadata (the user's part) and every other top-level
/// field but status: an unknown one (`spec` misspelled) must be refused by
/// name, not dropped.
fn authored(key: &ObjectKey, object: &DynamicObject) -> Value {
    let meta = &object.metadata;
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(key.name));
    metadata.insert("namespace".into(), json!(ROUTED_NAMESPACE));
    if let Some(labels) = meta.labels.as_ref().filter(|l| !l.is_empty()) {
        metadata.insert("labels".into(), json!(labels));
    }
    let annotations: BTreeMap<&String, &String> = meta
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != LAST_APPLIED)
        .collect();
    if !annotations.is_empty() {
        metadata.insert("annotations".into(), json!(annotations));
    }
    let api_version = object
        .types
        .as_ref()
        .map(|t| t.api_version.clone())
        .unwrap_or_else(|| key.kind.api_version());
    let mut document = Map::new();
    document.insert("apiVersion".into(), json!(api_version));
    document.insert("kind".into(), json!(key.kind.as_str()));
    document.insert("metadata".into(), Value::Object(metadata));
    if let Value::Object(data) = &object.data {
        for (field, value) in data {
            if field != "status" {
                document.insert(field.clone(), value.clone());
            }
        }
    }
    Value::Object(document)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: Kind, name: &str, created: &str, spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": kind.as_str(),
            "metadata": {
                "name": name, "namespace": "guestbook", "uid": format!("uid-{name}"),
                "generation": 1, "resourceVersion": "42",
                "creationTimestamp": created,
                "annotations": {LAST_APPLIED: "{\"kind\":\"VirtualService\"}"},
                "managedFields": [{"manager": "kubectl"}]
            },
            "spec": spec,
            "status": {"conditions": []}
        }))
        .unwrap()
    }

    fn canary(weight_v1: u32) -> Value {
        json!({"hosts": ["helloworld-service"], "http": [{"route": [
            {"destination": {"host": "helloworld-service", "subset": "v1"}, "weight": weight_v1},
            {"destination": {"host": "helloworld-service", "subset": "v2"}, "weight": 100 - weight_v1}
        ]}]})
    }

    #[test]
    fn server_fields_are_ignored_and_the_resource_lands_in_the_routed_namespace() {
        let vs = object(
            Kind::VirtualService,
            "hw",
            "2026-01-01T00:00:00Z",
            canary(80),
        );
        let (config, judged) = IstioConfig::default().update(&[(Kind::VirtualService, &vs)]);
        assert_eq!(judged[0].verdict, Verdict::Accepted);
        assert_eq!(judged[0].uid, "uid-hw");
        let listed = config.list(None);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].metadata.namespace, "default");
        assert!(listed[0].metadata.annotations.is_empty(), "{listed:?}");
    }

    #[test]
    fn an_invalid_update_keeps_the_last_good_version_and_says_why_as_meshctl_does() {
        let mut istio = IstioConfig::default();
        let good = object(
            Kind::VirtualService,
            "hw",
            "2026-01-01T00:00:00Z",
            canary(80),
        );
        let (before, _) = istio.update(&[(Kind::VirtualService, &good)]);

        // The talk's era wrote `percent`; Istio today writes `weight`.
        let mut spec = canary(80);
        spec["http"][0]["route"][0]["percent"] = json!(80);
        let bad = object(Kind::VirtualService, "hw", "2026-01-01T00:00:00Z", spec);
        let (after, judged) = istio.update(&[(Kind::VirtualService, &bad)]);
        assert_eq!(after, before, "the last good version keeps serving");
        let Verdict::Rejected {
            errors,
            kept_last_good,
        } = &judged[0].verdict
        else {
            panic!("{judged:?}")
        };
        assert!(kept_last_good);

        // The same words `meshctl validate` prints for the same YAML file.
        let file = SourceFile {
            name: "x.yaml".into(),
            content: serde_yaml::to_string(&authored(&judged[0].key, &bad)).unwrap(),
        };
        let meshctl = ConfigSet::parse(&[file]).unwrap_err();
        assert_eq!(errors.errors.len(), meshctl.errors.len());
        for (ours, theirs) in errors.errors.iter().zip(&meshctl.errors) {
            assert_eq!(
                (&ours.field, &ours.message),
                (&theirs.field, &theirs.message)
            );
            assert_eq!(ours.resource, "VirtualService guestbook/hw");
        }
        assert!(errors.to_string().contains("percent"), "{errors}");

        // Deleted: forgotten, last good version included.
        let (empty, judged) = istio.update(&[]);
        assert!(empty.is_empty() && judged.is_empty());
    }

    #[test]
    fn an_invalid_first_version_is_not_in_the_config() {
        let bad = object(
            Kind::DestinationRule,
            "hw",
            "2026-01-01T00:00:00Z",
            json!({"host": 7}),
        );
        let (config, judged) = IstioConfig::default().update(&[(Kind::DestinationRule, &bad)]);
        assert!(config.is_empty());
        assert!(matches!(
            judged[0].verdict,
            Verdict::Rejected {
                kept_last_good: false,
                ..
            }
        ));
    }

    #[test]
    fn the_oldest_object_comes_first_as_istiod_orders_them() {
        let newer = object(
            Kind::VirtualService,
            "a-new",
            "2026-02-01T00:00:00Z",
            canary(50),
        );
        let older = object(
            Kind::VirtualService,
            "z-old",
            "2026-01-01T00:00:00Z",
            canary(90),
        );
        let (config, _) = IstioConfig::default().update(&[
            (Kind::VirtualService, &newer),
            (Kind::VirtualService, &older),
        ]);
        let order: Vec<&str> = config
            .entries()
            .map(|(r, _)| r.metadata.name.as_str())
            .collect();
        assert_eq!(order, ["z-old", "a-new"]);
    }
}
