//! Persistence: the registry and the applied config, as JSON files in the
//! state directory (`.mesh/state` by default).
//!
//! ```text
//! .mesh/state/registry.json   every announced proxy, and the config version
//! .mesh/state/config.json     the applied Istio resources, and the config version
//! ```
//!
//! istiod keeps nothing on disk: Kubernetes' etcd is its store. Locally we
//! are our own etcd, so a restart of the control plane must not lose an
//! applied VirtualService or a registration. Every write goes to a temporary
//! file that is flushed to disk (`fsync`) and then renamed over the real one:
//! a rename is atomic, so a crash leaves either the old file or the new one,
//! never half of each. A file that is damaged anyway (edited by hand, a full
//! disk) stops the start-up with an error naming it; silently starting empty
//! would throw away the user's config without a word.
//!
//! Both files carry the config version they were written at. On start the
//! control plane continues above the highest one, so a proxy that asks for
//! "anything newer than N" after a restart never gets a stale "up to date".

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use mesh_api::config::ConfigSet;
use mesh_api::xds::ProxyAnnounce;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const REGISTRY_FILE: &str = "registry.json";
pub const CONFIG_FILE: &str = "config.json";

/// Something went wrong with the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot create the state directory {dir}: {error}; \
         choose another one with --state-dir or MESH_STATE_DIR"
    )]
    CreateDir { dir: PathBuf, error: io::Error },

    #[error("cannot read state file {path}: {error}")]
    Read { path: PathBuf, error: io::Error },

    #[error(
        "state file {path} is corrupt: {error}. mesh-control replaces this file \
         atomically, so it was damaged from outside (edited by hand, disk full?) or \
         written by another micromesh version. Fix it, or delete the file to start \
         over: {consequence}"
    )]
    Corrupt {
        path: PathBuf,
        error: serde_json::Error,
        /// What deleting the file costs, so the user can decide.
        consequence: &'static str,
    },

    #[error("cannot write state file {path}: {error}")]
    Write { path: PathBuf, error: io::Error },

    #[error("cannot encode state for {path}: {error}")]
    Encode {
        path: PathBuf,
        error: serde_json::Error,
    },
}

/// The contents of `registry.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryFile {
    /// The config version when this file was written.
    pub config_version: u64,
    pub proxies: Vec<ProxyAnnounce>,
}

/// The contents of `config.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigFile {
    /// The config version when this file was written.
    pub config_version: u64,
    pub config: ConfigSet,
}

/// Everything a previous run left behind (empty on a first start).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Loaded {
    pub registry: RegistryFile,
    pub config: ConfigFile,
}

impl Loaded {
    /// The highest version either file was written at.
    pub fn last_version(&self) -> u64 {
        self.registry.config_version.max(self.config.config_version)
    }
}

/// The state directory. Cheap to clone: writes run on a blocking thread.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

// === impl Store ===

impl Store {
    /// Use `dir`, creating it if needed.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|error| StoreError::CreateDir {
            dir: dir.clone(),
            error,
        })?;
        Ok(Store { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Read both files; a missing file is a first start, not an error.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let registry = self
            .read(
                REGISTRY_FILE,
                "the sidecars re-announce within a heartbeat, so little is lost",
            )?
            .unwrap_or_default();
        let config = self
            .read(
                CONFIG_FILE,
                "every applied resource is lost and must be applied again with `meshctl apply`",
            )?
            .unwrap_or_default();
        Ok(Loaded { registry, config })
    }

    pub fn save_registry(&self, file: &RegistryFile) -> Result<(), StoreError> {
        self.write(REGISTRY_FILE, file)
    }

    pub fn save_config(&self, file: &ConfigFile) -> Result<(), StoreError> {
        self.write(CONFIG_FILE, file)
    }

    fn read<T: DeserializeOwned>(
        &self,
        name: &str,
        consequence: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let path = self.dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(StoreError::Read { path, error }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| StoreError::Corrupt {
                path,
                error,
                consequence,
            })
    }

    /// Write `value` to `name` atomically: temp file, fsync, rename, then
    /// fsync the directory so the rename itself survives a power cut.
    fn write<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|error| StoreError::Encode {
            path: path.clone(),
            error,
        })?;
        bytes.push(b'\n');

        let tmp = self.dir.join(format!(".{name}.tmp"));
        let write_err = |error| StoreError::Write {
            path: path.clone(),
            error,
        };
        let mut file = File::create(&tmp).map_err(write_err)?;
        file.write_all(&bytes).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        drop(file);
        fs::rename(&tmp, &path).map_err(write_err)?;
        sync_dir(&self.dir).map_err(write_err)?;
        Ok(())
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Windows cannot open a directory as a file; its rename is durable enough
/// for a workshop.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::xds::ProxyMode;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir().join(format!(
                "mesh-control-store-{tag}-{}-{nanos}",
                std::process::id()
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn announce(instance: &str) -> ProxyAnnounce {
        ProxyAnnounce {
            instance: instance.into(),
            mode: ProxyMode::Sidecar,
            service: "helloworld-service".into(),
            version: "v1".into(),
            address: "127.0.0.1:40001".into(),
            ready: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_first_start_loads_nothing() {
        let dir = TempDir::new("empty");
        let store = Store::open(dir.0.join("nested/state")).unwrap();
        assert_eq!(store.load().unwrap(), Loaded::default());
    }

    #[test]
    fn what_is_saved_is_loaded_back_and_no_temp_file_remains() {
        let dir = TempDir::new("roundtrip");
        let store = Store::open(&dir.0).unwrap();
        let registry = RegistryFile {
            config_version: 7,
            proxies: vec![announce("hw-1"), announce("hw-2")],
        };
        store.save_registry(&registry).unwrap();
        store
            .save_config(&ConfigFile {
                config_version: 9,
                config: ConfigSet::default(),
            })
            .unwrap();

        let loaded = store.load().unwrap();
        assert_eq!(loaded.registry, registry);
        assert_eq!(loaded.last_version(), 9);
        let leftovers: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_corrupt_file_is_an_error_that_names_it_and_says_what_to_do() {
        let dir = TempDir::new("corrupt");
        let store = Store::open(&dir.0).unwrap();
        fs::write(dir.0.join(CONFIG_FILE), b"{\"configVersion\": 3, \"conf").unwrap();

        let err = store.load().unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&*dir.0.join(CONFIG_FILE).to_string_lossy()));
        assert!(message.contains("delete the file"), "{message}");
        assert!(message.contains("meshctl apply"), "{message}");
    }
}
