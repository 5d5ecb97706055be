//! `meshctl inject -f FILE`: print Kubernetes workloads with their sidecar
//! added, like `istioctl kube-inject`.
//!
//! ```text
//! meshctl inject -f k8s/guestbook/source.yaml | kubectl apply -f -
//! kubectl get deployment helloworld-service-v1 -o yaml | meshctl inject -f -
//! ```
//!
//! The transformation itself is `mesh_inject::inject`, the same function the
//! control plane's mutating webhook calls, so a manifest injected here and a
//! pod injected on admission get the same sidecar. This file only reads YAML
//! documents, hands each one over, and prints the results in order. Objects
//! without a pod template (Services, ConfigMaps...), opted-out pods and
//! already injected ones pass through unchanged. One document that cannot be
//! injected fails the whole command and prints nothing, so a pipe into
//! `kubectl apply` never applies half a file.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use mesh_inject::{Outcome, Settings};
use serde::Deserialize;

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// The manifest to inject: a file of one or more YAML documents, or `-`
    /// for stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
    pub file: PathBuf,
}

/// Why a manifest could not be injected: which document, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum InjectFailure {
    #[error(
        "{source_name}: document {index} is not valid YAML: {message}; fix it (a linter or \
         `kubectl apply --dry-run=client -f` points at the same place)"
    )]
    Yaml {
        source_name: String,
        index: usize,
        message: String,
    },
    #[error("{source_name}: document {index}: {error}")]
    Inject {
        source_name: String,
        index: usize,
        error: mesh_inject::InjectError,
    },
}

pub fn run(args: InjectArgs) -> Result<ExitCode> {
    let (name, text) = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the manifest from stdin")?;
        ("stdin".to_string(), text)
    } else {
        let text = std::fs::read_to_string(&args.file).with_context(|| {
            format!(
                "cannot read {}; give a manifest file, or `-f -` to read stdin",
                args.file.display()
            )
        })?;
        (args.file.display().to_string(), text)
    };
    let out = inject_documents(&text, &name, &Settings::default())?;
    Ctx::emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Injects every document of `text` and returns them as one YAML stream,
/// documents separated by `---`. Empty documents are dropped.
pub fn inject_documents(
    text: &str,
    source_name: &str,
    settings: &Settings,
) -> Result<String, InjectFailure> {
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = serde_json::Value::deserialize(document).map_err(|e| InjectFailure::Yaml {
            source_name: source_name.into(),
            index,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let value = match mesh_inject::inject(&value, settings) {
            Ok(Outcome::Injected(injected)) => injected,
            Ok(Outcome::Unchanged(_)) => value,
            Err(error) => {
                return Err(InjectFailure::Inject {
                    source_name: source_name.into(),
                    index,
                    error,
                });
            }
        };
        // A `serde_json::Value` always serializes to YAML.
        out.push(serde_yaml::to_string(&value).expect("JSON values serialize to YAML"));
    }
    Ok(out.join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_order_and_empty_ones_go() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n";
        let out = inject_documents(text, "t.yaml", &Settings::default()).unwrap();
        assert_eq!(
            out,
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n"
        );
    }

    #[test]
    fn a_bad_document_is_named_by_its_position() {
        let text = "kind: Service\n---\nkind: [unclosed\n";
        let err = inject_documents(text, "t.yaml", &Settings::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("t.yaml: document 2 is not valid YAML"),
            "{err}"
        );
    }
}
