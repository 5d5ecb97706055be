//! The Cargo workspace as the Dockerfile checks see it: its root, its members
//! (as directories relative to the root) and every package's binaries.
//!
//! The facts come from `cargo metadata --no-deps`, not from reading
//! Cargo.toml files by hand: cargo alone knows the implicit targets
//! (`src/main.rs` is a binary named after the package, `src/bin/*.rs` are
//! binaries too), and it is the same cargo that the Dockerfiles run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One package of the workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    /// The member's directory, relative to the workspace root (`mesh/proxy`).
    pub dir: PathBuf,
    /// Names of its binary targets.
    pub bins: BTreeSet<String>,
}

/// The workspace's root and packages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workspace {
    pub root: PathBuf,
    pub packages: BTreeMap<String, Package>,
}

/// Why the workspace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("could not run `{cargo} metadata` in {root}: {source}; is cargo on PATH?")]
    Spawn {
        cargo: String,
        root: PathBuf,
        source: std::io::Error,
    },
    #[error("`cargo metadata` failed in {root}: {stderr}")]
    Failed { root: PathBuf, stderr: String },
    #[error("`cargo metadata` printed something that is not its JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("`cargo metadata` output lacks {0}")]
    Missing(&'static str),
}

impl Workspace {
    /// The workspace this crate belongs to (two levels above its manifest).
    pub fn this() -> Result<Workspace, WorkspaceError> {
        Workspace::load(&repo_root())
    }

    /// Reads the workspace rooted at `root`.
    pub fn load(root: &Path) -> Result<Workspace, WorkspaceError> {
        // `cargo test` tells its test binaries which cargo runs them.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let output = Command::new(&cargo)
            .args([
                "metadata",
                "--no-deps",
                "--format-version",
                "1",
                "--offline",
            ])
            .current_dir(root)
            .output()
            .map_err(|source| WorkspaceError::Spawn {
                cargo: cargo.clone(),
                root: root.to_path_buf(),
                source,
            })?;
        if !output.status.success() {
            return Err(WorkspaceError::Failed {
                root: root.to_path_buf(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        Workspace::from_metadata(&json)
    }

    /// Builds the model from `cargo metadata` JSON.
    pub fn from_metadata(json: &serde_json::Value) -> Result<Workspace, WorkspaceError> {
        let root = PathBuf::from(
            json["workspace_root"]
                .as_str()
                .ok_or(WorkspaceError::Missing("workspace_root"))?,
        );
        let mut packages = BTreeMap::new();
        for pkg in json["packages"]
            .as_array()
            .ok_or(WorkspaceError::Missing("packages"))?
        {
            let name = pkg["name"]
                .as_str()
                .ok_or(WorkspaceError::Missing("packages[].name"))?
                .to_string();
            let manifest = Path::new(
                pkg["manifest_path"]
                    .as_str()
                    .ok_or(WorkspaceError::Missing("packages[].manifest_path"))?,
            );
            let dir = manifest
                .parent()
                .and_then(|d| d.strip_prefix(&root).ok())
                .unwrap_or(Path::new(""))
                .to_path_buf();
            let bins = pkg["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|k| k.iter().any(|k| k == "bin"))
                })
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect();
            packages.insert(name.clone(), Package { name, dir, bins });
        }
        Ok(Workspace { root, packages })
    }

    /// The package that has a binary called `bin`, if any.
    pub fn package_with_bin(&self, bin: &str) -> Option<&Package> {
        self.packages.values().find(|p| p.bins.contains(bin))
    }
}

/// The repository root: this crate lives in `tests/containers/`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/containers has two parents")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_packages_and_their_binaries_from_metadata() {
        let json = serde_json::json!({
            "workspace_root": "/w",
            "packages": [
                {"name": "mesh-proxy", "manifest_path": "/w/mesh/proxy/Cargo.toml",
                 "targets": [{"name": "mesh_proxy", "kind": ["lib"]},
                             {"name": "mesh-proxy", "kind": ["bin"]}]},
                {"name": "mesh-api", "manifest_path": "/w/mesh/api/Cargo.toml",
                 "targets": [{"name": "mesh_api", "kind": ["lib"]}]}
            ]
        });
        let ws = Workspace::from_metadata(&json).unwrap();
        assert_eq!(ws.packages["mesh-proxy"].dir, Path::new("mesh/proxy"));
        assert!(ws.packages["mesh-proxy"].bins.contains("mesh-proxy"));
        assert!(ws.packages["mesh-api"].bins.is_empty());
        assert_eq!(
            ws.package_with_bin("mesh-proxy").unwrap().name,
            "mesh-proxy"
        );
        assert!(ws.package_with_bin("mesh_proxy").is_none());
    }

    #[test]
    fn reads_this_workspace() {
        let ws = Workspace::this().unwrap();
        let me = &ws.packages["containers-tests"];
        assert_eq!(me.dir, Path::new("tests/containers"));
    }
}
