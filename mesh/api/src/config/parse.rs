//! From the files a user applies to validated [`Resource`]s, all or nothing.
//!
//! ```text
//! file --split at `---`--> YAML documents --serde_yaml--> Value
//!      --envelope: apiVersion, kind, metadata--> which kind? (kinds.rs)
//!      --spec decoder (virtual_service.rs, ...)--> typed spec, or errors
//! ```
//!
//! Every error of every document is collected; one bad document rejects the
//! whole request, so a lab never ends up half-applied (`kubectl apply`
//! applies the good documents and reports the bad ones; Istio's webhook
//! rejects per object: micromesh is stricter on purpose).

use std::collections::BTreeMap;

use serde_yaml::Value;

use super::decode::{Decoder, FieldError, Path, Shape, Unsupported};
use super::host::{ROUTED_NAMESPACE, is_dns_label, is_dns_subdomain};
use super::kinds::{Kind, classify};
use super::{
    ConfigError, ConfigErrors, ObjectMeta, Resource, SourceFile, Spec, authorization_policy,
    destination_rule, gateway, peer_authentication, virtual_service,
};

/// How much of each document to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Depth {
    /// Everything (apply).
    Full,
    /// Only what identifies the resource (delete): kind, namespace, name.
    Identity,
}

const ENVELOPE: Shape = Shape {
    what: "a resource (apiVersion, kind, metadata, spec)",
    fields: &["apiVersion", "kind", "metadata", "spec"],
    istio_only: &[(
        "status",
        Unsupported::Replaced("`status` is written by the control plane, not by you; remove it"),
    )],
};

const SERVER_SET: &str = "is set by the Kubernetes API server, not by you (copied from `kubectl get -o yaml`?); keep only name, namespace, labels and annotations";

const METADATA: Shape = Shape {
    what: "metadata",
    fields: &["name", "namespace", "labels", "annotations"],
    istio_only: &[
        ("uid", Unsupported::Replaced(SERVER_SET)),
        ("resourceVersion", Unsupported::Replaced(SERVER_SET)),
        ("generation", Unsupported::Replaced(SERVER_SET)),
        ("creationTimestamp", Unsupported::Replaced(SERVER_SET)),
        ("deletionTimestamp", Unsupported::Replaced(SERVER_SET)),
        (
            "deletionGracePeriodSeconds",
            Unsupported::Replaced(SERVER_SET),
        ),
        ("managedFields", Unsupported::Replaced(SERVER_SET)),
        ("selfLink", Unsupported::Replaced(SERVER_SET)),
        (
            "generateName",
            Unsupported::NotImplemented("names the resource with a random suffix; write `name`"),
        ),
        (
            "ownerReferences",
            Unsupported::NotImplemented("deletes the resource with its owner"),
        ),
        (
            "finalizers",
            Unsupported::NotImplemented("delays deletion until controllers clean up"),
        ),
    ],
};

/// One YAML document of a file.
struct Document {
    /// 1-based position among the file's non-empty documents.
    index: usize,
    /// 1-based line where its text starts.
    start_line: usize,
    text: String,
}

/// Split at `---` lines. Done by hand (instead of serde_yaml's multi-document
/// deserializer) so one broken document does not hide the others, and each
/// document's errors still carry the file's line numbers. A `---` at the
/// start of a line always ends a document in YAML, even inside a quoted or
/// block string, so this split is exact.
fn split_documents(content: &str) -> Vec<Document> {
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    let mut documents = Vec::new();
    let mut current = Document {
        index: 0,
        start_line: 1,
        text: String::new(),
    };
    for (number, line) in content.lines().enumerate() {
        let marker = ["---", "..."].into_iter().find(|m| {
            line.strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        });
        match marker {
            Some(marker) => {
                // Content after `---` on the same line belongs to the new
                // document; blank out the marker so columns stay right.
                let next = Document {
                    index: 0,
                    start_line: number + 1,
                    text: format!("{}{}\n", " ".repeat(marker.len()), &line[marker.len()..]),
                };
                documents.push(std::mem::replace(&mut current, next));
            }
            None => {
                current.text.push_str(line);
                current.text.push('\n');
            }
        }
    }
    documents.push(current);

    // Number only documents with content, the way a reader counts them.
    let mut documents: Vec<Document> = documents
        .into_iter()
        .filter(|d| {
            d.text
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect();
    for (i, document) in documents.iter_mut().enumerate() {
        document.index = i + 1;
    }
    documents
}

/// Parse every document of every file; see [`super::ConfigSet::parse`].
pub(crate) fn parse_files(
    files: &[SourceFile],
    depth: Depth,
) -> Result<Vec<Resource>, ConfigErrors> {
    let mut errors = Vec::new();
    let mut resources: Vec<(Resource, String, usize)> = Vec::new();

    for file in files {
        for document in split_documents(&file.content) {
            let label = format!("document {} (line {})", document.index, document.start_line);
            let push = |errors: &mut Vec<ConfigError>, resource: &str, e: FieldError| {
                errors.push(ConfigError {
                    file: file.name.clone(),
                    resource: resource.to_string(),
                    field: e.path,
                    message: e.message,
                });
            };
            // Pad with blank lines so serde_yaml's line numbers are the file's.
            let padded = format!("{}{}", "\n".repeat(document.start_line - 1), document.text);
            let value: Value = match serde_yaml::from_str(&padded) {
                Ok(value) => value,
                Err(e) => {
                    push(
                        &mut errors,
                        &label,
                        FieldError {
                            path: String::new(),
                            message: format!("YAML syntax error: {e}"),
                        },
                    );
                    continue;
                }
            };
            if value.is_null() {
                continue; // an empty document (`---` twice, or only comments)
            }
            let mut d = Decoder::default();
            let parsed = decode_document(&mut d, &value, depth);
            let resource_label = parsed
                .as_ref()
                .map(|r| r.id())
                .or_else(|| name_of(&value))
                .unwrap_or(label);
            let failed = !d.errors.is_empty();
            for e in d.errors {
                push(&mut errors, &resource_label, e);
            }
            if let (Some(resource), false) = (parsed, failed) {
                resources.push((resource, file.name.clone(), document.index));
            }
        }
    }

    // The same resource twice in one apply is almost always a copy-paste
    // slip; kubectl would apply both and keep the last, silently. Deleting
    // a folder that holds several versions of one rule (as a lab's does)
    // deletes it once, like `kubectl delete -f DIR`.
    if depth == Depth::Identity {
        let mut seen = std::collections::BTreeSet::new();
        resources.retain(|(resource, _, _)| {
            seen.insert((
                resource.kind.clone(),
                resource.metadata.namespace.clone(),
                resource.metadata.name.clone(),
            ))
        });
    }
    let mut seen: BTreeMap<(String, String, String), (String, usize)> = BTreeMap::new();
    for (resource, file, index) in &resources {
        let key = (
            resource.kind.clone(),
            resource.metadata.namespace.clone(),
            resource.metadata.name.clone(),
        );
        if let Some((first_file, first_index)) = seen.get(&key) {
            errors.push(ConfigError {
                file: file.clone(),
                resource: resource.id(),
                field: "metadata.name".to_string(),
                message: format!(
                    "{} is defined twice in this request (first in {first_file}, document {first_index}); give each resource its own name",
                    resource.id()
                ),
            });
        } else {
            seen.insert(key, (file.clone(), *index));
        }
    }

    if resources.is_empty() && errors.is_empty() {
        errors.push(ConfigError {
            file: files
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            resource: String::new(),
            field: String::new(),
            message: "no resources found: the files are empty (or hold only comments)".into(),
        });
    }

    if errors.is_empty() {
        Ok(resources.into_iter().map(|(r, _, _)| r).collect())
    } else {
        Err(ConfigErrors { errors })
    }
}

/// `VirtualService default/name` from a document that failed early, if
/// its envelope says that much.
fn name_of(value: &Value) -> Option<String> {
    let kind = value.get("kind")?.as_str()?;
    let metadata = value.get("metadata")?;
    let name = metadata.get("name")?.as_str()?;
    let namespace = metadata
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or(ROUTED_NAMESPACE);
    Some(format!("{kind} {namespace}/{name}"))
}

fn decode_document(d: &mut Decoder, value: &Value, depth: Depth) -> Option<Resource> {
    if let Value::Sequence(_) = value {
        d.error(
            &Path::default(),
            "a document is one resource, not a list; separate resources with `---` lines",
        );
        return None;
    }
    let root = Path::default();
    let object = d.object(&root, value, &ENVELOPE)?;
    let api_version = object
        .required(d, "apiVersion", "networking.istio.io/v1")
        .and_then(|(p, v)| d.string(&p, v));
    let kind_text = object
        .required(d, "kind", "VirtualService")
        .and_then(|(p, v)| d.string(&p, v));
    let (api_version, kind_text) = (api_version?, kind_text?);
    let kind = match classify(&api_version, &kind_text) {
        Ok(kind) => kind,
        Err((field, message)) => {
            d.error(&Path::root(field), message);
            return None;
        }
    };

    let metadata = object
        .required(d, "metadata", "{name: guestbook-ui}")
        .and_then(|(p, v)| decode_metadata(d, &p, v));

    let spec = match object.get("spec") {
        Some((_, spec)) => spec.clone(),
        None if depth == Depth::Identity => Value::Null,
        None => {
            d.error(
                &Path::root("spec"),
                format!("missing required field `spec`: a {kind} needs one"),
            );
            return None;
        }
    };
    // The spec is checked even when the metadata was wrong: every error of
    // the document in one go.
    if depth == Depth::Full {
        decode_spec(d, kind, &spec)?;
    }
    Some(Resource {
        api_version,
        kind: kind.as_str().to_string(),
        metadata: metadata?,
        spec,
    })
}

/// Decode a spec of a known kind (also used to re-check stored resources).
pub(crate) fn decode_spec(d: &mut Decoder, kind: Kind, spec: &Value) -> Option<Spec> {
    let before = d.errors.len();
    let spec = match kind {
        Kind::VirtualService => virtual_service::decode(d, spec).map(Spec::VirtualService),
        Kind::DestinationRule => destination_rule::decode(d, spec).map(Spec::DestinationRule),
        Kind::Gateway => gateway::decode(d, spec).map(Spec::Gateway),
        Kind::PeerAuthentication => {
            peer_authentication::decode(d, spec).map(Spec::PeerAuthentication)
        }
        Kind::AuthorizationPolicy => {
            authorization_policy::decode(d, spec).map(Spec::AuthorizationPolicy)
        }
    };
    if d.errors.len() != before {
        return None;
    }
    spec
}

fn decode_metadata(d: &mut Decoder, path: &Path, value: &Value) -> Option<ObjectMeta> {
    let object = d.object(path, value, &METADATA)?;
    let name = object.required(d, "name", "guestbook-ui").and_then(|(p, v)| {
        let name = d.string(&p, v)?;
        if !is_dns_subdomain(&name) {
            d.error(
                &p,
                format!("`{name}` is not a valid name: use lower-case letters, digits, `-` and `.`, starting and ending with a letter or digit (like `guestbook-ui`)"),
            );
            return None;
        }
        Some(name)
    });
    let namespace = match object.get("namespace") {
        Some((p, v)) => d.string(&p, v).and_then(|ns| {
            if is_dns_label(&ns) {
                Some(ns)
            } else {
                d.error(
                    &p,
                    format!("`{ns}` is not a valid namespace name (a DNS label, like `default`)"),
                );
                None
            }
        }),
        None => Some(ROUTED_NAMESPACE.to_string()),
    };
    let labels = object
        .get("labels")
        .and_then(|(p, v)| d.string_map(&p, v))
        .unwrap_or_default();
    let annotations = object
        .get("annotations")
        .and_then(|(p, v)| d.string_map(&p, v))
        .unwrap_or_default();
    Some(ObjectMeta {
        name: name?,
        namespace: namespace?,
        labels,
        annotations,
    })
}
