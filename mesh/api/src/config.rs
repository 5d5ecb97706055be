//! Istio resources as learners write them: parsing, validation, analysis.
//!
//! CONTRACT (owned by the resources work; the control plane calls only this):
//! - `SourceFile`, `ApplyRequest`: what meshctl sends.
//! - `ConfigSet`: the validated set of applied resources; serializable so the
//!   control plane can persist it; pure functions to apply, delete and analyse.

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

/// The applied resources.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigSet {}
