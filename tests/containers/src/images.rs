//! The images the pod tests run: built once per test run, offline, by
//! `scripts/build-offline-images.sh`.
//!
//! The script does the work and the caching (bases reused by tag, app images
//! skipped when their content hash is unchanged), so a second run costs a
//! no-op `cargo build` and a few `docker images` queries. Its progress and
//! the image sizes go straight to the terminal: a first run takes minutes,
//! and whoever waits should see why.

use std::path::PathBuf;
use std::process::Command;

use crate::workspace::repo_root;

/// The tag every app image is built and run with.
pub const TAG: &str = "dev";

/// Why the images could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("could not run {script}: {source}; is bash installed?")]
    Spawn {
        script: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{script} failed ({status}); its output above says why. Run it by hand to retry: \
         it rebuilds only what is missing"
    )]
    Failed {
        script: PathBuf,
        status: std::process::ExitStatus,
    },
}

/// Builds (or finds) every `micromesh/<name>:dev` image.
pub fn build_offline() -> Result<(), ImagesError> {
    let script = repo_root().join("scripts/build-offline-images.sh");
    let status = Command::new("bash")
        .arg(&script)
        .env("MESH_IMAGE_TAG", TAG)
        .current_dir(repo_root())
        .status()
        .map_err(|source| ImagesError::Spawn {
            script: script.clone(),
            source,
        })?;
    if !status.success() {
        return Err(ImagesError::Failed { script, status });
    }
    Ok(())
}
