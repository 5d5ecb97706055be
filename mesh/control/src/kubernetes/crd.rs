//! The CustomResourceDefinitions of Istio's networking kinds, as micromesh
//! serves them: generated from the Rust types by `mesh-crdgen` into
//! `k8s/crds/istio-networking.yaml`, never written by hand (a test fails
//! when the committed file is stale).
//!
//! What comes from where:
//! - group, kinds, plurals, short names and served versions: `mesh_api::config::Kind`
//!   (`group()`, `versions()`), the same lists `meshctl validate` accepts;
//!   the security kinds (PeerAuthentication, AuthorizationPolicy) are in
//!   `security.istio.io`, served at v1 and v1beta1, in the same file;
//! - `status`: [`IstioStatus`] below, through schemars;
//! - `spec`: an object whose fields the API server keeps as written
//!   (`x-kubernetes-preserve-unknown-fields`). This is on purpose. A schema
//!   listing the fields would make the API server prune or refuse an unknown
//!   field with its own terse message before micromesh sees it; micromesh
//!   wants to refuse it by name and say what to write instead (the talk's
//!   `percent` -> `weight`), as `meshctl validate` does. So validation of the
//!   spec is micromesh's: the admission webhook refuses an invalid object,
//!   and the control plane ignores one that got in anyway (Event + status).
//!   The schema is still structural: every node has a type.
//!
//! v1 is the storage version; v1beta1 and v1alpha3 are served with the
//! same schema, so no conversion is needed (Istio's CRDs do the same).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceSubresources,
    CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_api::config::Kind;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::source::{ACCEPTED, ISTIO_VERSION};

/// Where the generated CRDs are committed, relative to the repository root.
pub const CRD_FILE: &str = "k8s/crds/istio-networking.yaml";

/// What mesh-control writes in an Istio object's `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default)]
    pub observed_generation: i64,
    /// `Accepted`: whether micromesh serves this version of the resource.
    #[serde(default)]
    pub conditions: Vec<IstioCondition>,
    /// What `meshctl analyze` finds about it, in Istio's shape
    /// (`istioctl analyze` messages appear in an Istio object's status).
    #[serde(default)]
    pub validation_messages: Vec<ValidationMessage>,
}

/// One analysis finding.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationMessage {
    /// `ERROR`, `WARNING` or `INFO`.
    pub level: String,
    #[serde(rename = "type")]
    pub type_: MessageType,
    /// The field it is about: `spec.http[0].route[0].destination.subset`.
    #[serde(default)]
    pub field: String,
    /// What is wrong and what to do.
    #[serde(default)]
    pub message: String,
}

/// Which finding: `ReferencedResourceNotFound`, ...
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageType {
    pub name: String,
}

/// One condition, in Kubernetes' usual shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioCondition {
    /// `Accepted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// `Valid` or `Invalid`.
    #[serde(default)]
    pub reason: String,
    /// What is wrong and what to write instead, as `meshctl validate` says it.
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub observed_generation: i64,
}

/// The CRD of one kind.
pub fn definition(kind: Kind) -> CustomResourceDefinition {
    let plural = kind.plural();
    let versions = kind
        .versions()
        .iter()
        .map(|version| CustomResourceDefinitionVersion {
            name: version.to_string(),
            served: true,
            storage: *version == ISTIO_VERSION,
            schema: Some(CustomResourceValidation {
                open_api_v3_schema: Some(schema(kind)),
            }),
            subresources: Some(CustomResourceSubresources {
                status: Some(Default::default()),
                scale: None,
            }),
            additional_printer_columns: Some(columns(kind)),
            ..Default::default()
        })
        .collect();
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{plural}.{}", kind.group())),
            labels: Some(
                [(
                    "app.kubernetes.io/part-of".to_string(),
                    "micromesh".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: kind.group().to_string(),
            names: CustomResourceDefinitionNames {
                kind: kind.as_str().to_string(),
                list_kind: Some(format!("{}List", kind.as_str())),
                plural: plural.to_string(),
                singular: Some(kind.as_str().to_ascii_lowercase()),
                short_names: Some(vec![kind.short_name().to_string()]),
                categories: Some(vec!["istio-io".into(), kind.group().replace('.', "-")]),
            },
            scope: "Namespaced".to_string(),
            versions,
            ..Default::default()
        },
        status: None,
    }
}

/// Every CRD, as the multi-document YAML `mesh-crdgen` writes.
pub fn render() -> String {
    let mut out = String::from(
        "# Generated by `cargo run -p mesh-control --bin mesh-crdgen` from the Rust types\n\
         # (mesh/control/src/kubernetes/crd.rs). Do not edit: change the types and regenerate.\n",
    );
    for kind in Kind::ALL {
        out.push_str("---\n");
        out.push_str(
            &serde_yaml::to_string(&definition(kind)).expect("a CRD always serializes to YAML"),
        );
    }
    out
}

fn schema(kind: Kind) -> JSONSchemaProps {
    let status = schemars::generate::SchemaSettings::openapi3()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<IstioStatus>();
    let mut status = status.to_value();
    if let Some(object) = status.as_object_mut() {
        // Root-only keywords that a CRD schema does not take.
        object.remove("$schema");
        object.remove("title");
    }
    let status: JSONSchemaProps =
        serde_json::from_value(status).expect("schemars' OpenAPI 3 output is a JSONSchemaProps");
    let spec = JSONSchemaProps {
        type_: Some("object".into()),
        description: Some(format!(
            "The {} as Istio defines it. micromesh validates it itself (as `meshctl validate` \
             does), so that an unknown field is refused by name instead of being pruned.",
            kind.as_str()
        )),
        x_kubernetes_preserve_unknown_fields: Some(true),
        ..Default::default()
    };
    JSONSchemaProps {
        type_: Some("object".into()),
        properties: Some([("spec".to_string(), spec), ("status".to_string(), status)].into()),
        ..Default::default()
    }
}

fn columns(kind: Kind) -> Vec<CustomResourceColumnDefinition> {
    let mut columns = Vec::new();
    let column = |name: &str, type_: &str, path: &str| CustomResourceColumnDefinition {
        name: name.into(),
        type_: type_.into(),
        json_path: path.into(),
        ..Default::default()
    };
    match kind {
        Kind::VirtualService => {
            columns.push(column("Gateways", "string", ".spec.gateways"));
            columns.push(column("Hosts", "string", ".spec.hosts"));
        }
        Kind::DestinationRule => columns.push(column("Host", "string", ".spec.host")),
        Kind::Gateway => {}
        // Istio's own columns for the security kinds.
        Kind::PeerAuthentication => columns.push(column("Mode", "string", ".spec.mtls.mode")),
        Kind::AuthorizationPolicy => columns.push(column("Action", "string", ".spec.action")),
    }
    columns.push(column(
        ACCEPTED,
        "string",
        &format!(".status.conditions[?(@.type==\"{ACCEPTED}\")].status"),
    ));
    columns.push(column("Age", "date", ".metadata.creationTimestamp"));
    columns
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kubernetes' structural-schema rule, checked the way the API server
    /// does: every node says its type, unless it preserves unknown fields
    /// (then an object) or is int-or-string; and no `$ref`.
    fn assert_structural(path: &str, schema: &JSONSchemaProps) {
        assert!(
            schema.type_.is_some() || schema.x_kubernetes_int_or_string == Some(true),
            "{path} has no type: {schema:?}"
        );
        assert!(schema.ref_path.is_none(), "{path} uses $ref");
        for (name, property) in schema.properties.iter().flatten() {
            assert_structural(&format!("{path}.{name}"), property);
        }
        if let Some(items) = &schema.items {
            let k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items) = items else {
                panic!("{path}.items is a tuple");
            };
            assert_structural(&format!("{path}[]"), items);
        }
    }

    #[test]
    fn every_kind_serves_every_version_meshctl_accepts_with_a_structural_schema() {
        for kind in Kind::ALL {
            let crd = definition(kind);
            let versions: Vec<&str> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
            assert_eq!(versions, kind.versions());
            let storage: Vec<&str> = crd
                .spec
                .versions
                .iter()
                .filter(|v| v.storage)
                .map(|v| v.name.as_str())
                .collect();
            assert_eq!(storage, ["v1"], "exactly one storage version");
            for version in &crd.spec.versions {
                let schema = version.schema.as_ref().unwrap().open_api_v3_schema.as_ref();
                assert_structural(
                    &format!("{}/{}", kind.as_str(), version.name),
                    schema.unwrap(),
                );
                assert!(version.subresources.as_ref().unwrap().status.is_some());
            }
        }
    }
}
