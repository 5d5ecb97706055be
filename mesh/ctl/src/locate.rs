//! Where things are on disk: the workspace binaries, the repository (for the
//! Python and Java services), and the work dir (`.mesh/`) where `meshctl up`
//! keeps state, logs and its run file.
//!
//! `meshctl up` is run from a clone (`cargo run --release -p meshctl -- up` or
//! `./target/release/meshctl up`), so both the executable and the current
//! directory usually sit inside the repository; we walk up from each.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A file only the micromesh repository has: it marks the root.
const ROOT_MARKER: &str = "services/helloworld-service/helloworld.py";

/// The repository root: `--root`/`MESH_ROOT` if given (checked), otherwise the
/// first directory above the current directory or the executable that holds
/// the workspace's `Cargo.toml` and `services/`.
pub fn repo_root(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(root) = explicit {
        if !root.join(ROOT_MARKER).is_file() {
            bail!(
                "{} is not a micromesh repository (it has no {ROOT_MARKER}); \
                 pass --root (or MESH_ROOT) the directory of your clone",
                root.display()
            );
        }
        return Ok(root.to_path_buf());
    }
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    let starts = [cwd.as_deref(), exe.as_deref().and_then(Path::parent)];
    starts
        .into_iter()
        .flatten()
        .find_map(find_root_above)
        .with_context(|| {
            format!(
                "cannot find the micromesh repository (a directory with Cargo.toml and {ROOT_MARKER}) \
                 above the current directory or above meshctl; run meshctl from inside your clone, \
                 or pass --root (or MESH_ROOT)"
            )
        })
}

/// The nearest ancestor of `start` (itself included) that is the repository root.
pub fn find_root_above(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| dir.join("Cargo.toml").is_file() && dir.join(ROOT_MARKER).is_file())
        .map(Path::to_path_buf)
}

/// The work dir: `--workdir`/`MESH_WORKDIR`, else `.mesh/` in the repository,
/// else `.mesh/` in the current directory (commands like `meshctl down` work
/// from anywhere in the clone).
pub fn workdir(explicit: Option<&Path>, root: Option<&Path>) -> PathBuf {
    match (explicit, root) {
        (Some(dir), _) => absolute(dir),
        (None, Some(root)) => root.join(".mesh"),
        (None, None) => absolute(Path::new(".mesh")),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The directory `meshctl` runs from; `cargo build` puts every binary of the
/// workspace there (target/debug or target/release).
pub fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find where meshctl itself is")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    Ok(exe
        .parent()
        .context("meshctl's own path has no directory")?
        .to_path_buf())
}

/// The path of workspace binary `name` in `dir`, or an error saying how to build it.
pub fn binary(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "{name} is not built: {} does not exist. meshctl up runs the binaries that sit beside it; \
             build them all with `cargo build --release` (or `cargo build --workspace --bins` for a debug build), \
             or simply run ./scripts/up.sh",
            path.display()
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "meshctl-locate-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn finds_the_root_from_a_nested_directory() {
        let root = scratch("root");
        std::fs::create_dir_all(root.join("services/helloworld-service")).unwrap();
        std::fs::write(root.join(ROOT_MARKER), "").unwrap();
        std::fs::write(root.join("Cargo.toml"), "").unwrap();
        let nested = root.join("target/release");
        std::fs::create_dir_all(&nested).unwrap();

        assert_eq!(find_root_above(&nested), Some(root.clone()));
        assert_eq!(repo_root(Some(&root)).unwrap(), root);
        let err = repo_root(Some(&nested)).unwrap_err().to_string();
        assert!(err.contains("is not a micromesh repository"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn workdir_defaults_to_dot_mesh_in_the_root() {
        let root = Path::new("/src/micromesh");
        assert_eq!(workdir(None, Some(root)), root.join(".mesh"));
        assert_eq!(
            workdir(Some(Path::new("/tmp/w")), Some(root)),
            Path::new("/tmp/w")
        );
        assert!(workdir(None, None).ends_with(".mesh"));
        assert!(workdir(None, None).is_absolute());
    }

    #[test]
    fn missing_binary_says_how_to_build_it() {
        let dir = scratch("bin");
        let err = binary(&dir, "mesh-proxy").unwrap_err().to_string();
        assert!(err.contains("cargo build --release"), "{err}");
        assert!(err.contains("mesh-proxy is not built"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
