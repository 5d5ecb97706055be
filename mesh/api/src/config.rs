//! Istio resources as learners write them: parsing, validation, analysis.
//!
//! CONTRACT between the resources work (which owns this module and fills in
//! the bodies) and the control plane / meshctl (which only call what is here):
//!
//! - `SourceFile`, `ApplyRequest`: what meshctl sends to
//!   `POST /v1/config/apply` and `POST /v1/config/delete`.
//! - `ConfigSet::parse(files)`: all-or-nothing parse + validation of every
//!   document in every file; `Err(ConfigErrors)` (HTTP 400 body) names the
//!   file, the resource, the field path and what to write instead.
//! - `ConfigSet::apply` / `delete`: pure, return the new set and the changes.
//! - `ConfigSet::analyze(services)`: cross-reference warnings.
//! - `ConfigSet` is Serialize/Deserialize so the control plane persists it.
//!
//! PLACEHOLDER BODIES below are replaced by the resources work.

use serde::{Deserialize, Serialize};

/// One file as the user wrote it; `name` is used in error messages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    pub name: String,
    pub content: String,
}

/// Body of `POST /v1/config/apply` and `POST /v1/config/delete`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub files: Vec<SourceFile>,
}

/// Reply of apply and delete: what changed, and what analysis now says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub changes: Vec<Change>,
    pub diagnostics: Vec<Diagnostic>,
}

/// `virtualservice.networking.istio.io/guestbook-ui configured`, as kubectl says it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `created`, `configured`, `unchanged`, `deleted`, `not found`.
    pub action: String,
}

/// A cross-reference finding (`meshctl analyze`), like `istioctl analyze`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// `Error`, `Warning` or `Info`.
    pub level: String,
    /// Stable code, for example `ReferencedResourceNotFound`.
    pub code: String,
    /// `VirtualService default/guestbook-ui`.
    pub resource: String,
    /// Field path, for example `spec.http[0].route[1].destination.subset`.
    pub field: String,
    pub message: String,
}

/// Every problem found in a set of files (the body of an HTTP 400).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigError {
    pub file: String,
    /// `VirtualService default/guestbook-ui`, or `document 2` when unnamed.
    pub resource: String,
    /// `spec.http[0].fault.abort.percent`.
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// One applied resource, kept in the user's own shape.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resource {}

/// The applied resources.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigSet {}

impl ConfigSet {
    /// Parse and validate every document of every file, all or nothing.
    pub fn parse(_files: &[SourceFile]) -> Result<Vec<Resource>, ConfigErrors> {
        Ok(Vec::new())
    }

    /// The set with `resources` created or replaced, and what changed.
    pub fn apply(&self, _resources: Vec<Resource>) -> (ConfigSet, Vec<Change>) {
        (self.clone(), Vec::new())
    }

    /// The set without `resources` (matched by kind, namespace, name).
    pub fn delete(&self, _resources: &[Resource]) -> (ConfigSet, Vec<Change>) {
        (self.clone(), Vec::new())
    }

    /// The applied resources of one kind (`VirtualService`, ...), or all.
    pub fn list(&self, _kind: Option<&str>) -> Vec<Resource> {
        Vec::new()
    }

    /// Cross-reference analysis against the services the registry knows.
    pub fn analyze(&self, _services: &[String]) -> Vec<Diagnostic> {
        Vec::new()
    }
}
