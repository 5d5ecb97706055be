//! The control plane's shared state: the registry, the applied config and
//! the config version, behind one lock, plus the channel that wakes every
//! proxy's long-poll when the version moves.
//!
//! The version is the heart of the push protocol. Whatever a snapshot is
//! compiled from (the registry's healthy set, an announce's content, the
//! applied config) changes only together with a version bump, so "version N"
//! names exactly one snapshot per proxy. A proxy that already has N is told
//! "304 Not Modified"; anything else gets the current snapshot. istiod does
//! the same with xDS nonces and version_info.
//!
//! The lock is a `tokio::sync::Mutex` because we hold it across the file
//! write that persists a change: that keeps the files written in version
//! order, and it means no proxy ever receives a config that a crash could
//! take back (the config is on disk before the new version is published).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_api::config::ConfigSet;
use tokio::sync::{Mutex, MutexGuard, watch};
use tokio_util::sync::CancellationToken;

use crate::Settings;
use crate::registry::Registry;
use crate::store::{ConfigFile, RegistryFile, Store, StoreError};

/// Everything a snapshot is compiled from, at one version.
#[derive(Debug)]
pub struct Model {
    pub registry: Registry,
    pub config: ConfigSet,
    pub version: u64,
}

/// Shared by every request handler and the lease ticker.
#[derive(Debug)]
pub struct Shared {
    model: Mutex<Model>,
    /// The current version; long-polls wait on a receiver of this.
    versions: watch::Sender<u64>,
    store: Store,
    pub settings: Settings,
    /// Cancelled on shutdown: long-polls return at once instead of holding
    /// the server open for their full wait.
    pub shutdown: CancellationToken,
}

// === impl Shared ===

impl Shared {
    /// Load what a previous run persisted and continue from it.
    pub fn load(settings: Settings, shutdown: CancellationToken) -> Result<Shared, StoreError> {
        let store = Store::open(&settings.state_dir)?;
        let loaded = store.load()?;

        let mut registry = Registry::new(settings.lease, settings.forget_after);
        registry.restore(loaded.registry.proxies.clone(), Instant::now());
        // One above anything handed out before: every proxy's `version=N`
        // is now stale, so each one resyncs on its next poll.
        let version = loaded.last_version() + 1;
        // Persist the new version before serving: if we restart again before
        // any change, we must still not hand out this number twice. This
        // also proves the state directory is writable, before anyone relies
        // on it. (A blocking write on start-up, before any request, is fine.)
        store.save_registry(&RegistryFile {
            config_version: version,
            proxies: registry.announces(),
        })?;

        let (versions, _) = watch::channel(version);
        Ok(Shared {
            model: Mutex::new(Model {
                registry,
                config: loaded.config.config,
                version,
            }),
            versions,
            store,
            settings,
            shutdown,
        })
    }

    /// Lock the model with every lease evaluated as of now.
    ///
    /// The ticker below expires leases within a fraction of the lease time;
    /// checking here as well means nobody ever reads a registry that is
    /// behind the clock.
    pub async fn lock(&self) -> MutexGuard<'_, Model> {
        let mut model = self.model.lock().await;
        if model.registry.refresh(Instant::now()) {
            self.registry_changed(&mut model).await;
        }
        model
    }

    /// The registry changed in a way snapshots can see: new version, persist,
    /// wake the watchers.
    ///
    /// A failed write is logged and not returned: the registry is a cache of
    /// what the sidecars keep telling us, and they will tell us again.
    pub async fn registry_changed(&self, model: &mut Model) {
        model.version += 1;
        let file = RegistryFile {
            config_version: model.version,
            proxies: model.registry.announces(),
        };
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.save_registry(&file)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("{e}; the registry will be rebuilt from heartbeats"),
            Err(e) => tracing::error!("writing the registry failed: {e}"),
        }
        self.publish(model.version);
    }

    /// Replace the applied config: persisted first, then served. If the write
    /// fails nothing changes and the last good config keeps serving.
    pub async fn replace_config(
        &self,
        model: &mut Model,
        config: ConfigSet,
    ) -> Result<(), StoreError> {
        let version = model.version + 1;
        let file = ConfigFile {
            config_version: version,
            config,
        };
        let store = self.store.clone();
        let file = tokio::task::spawn_blocking(move || store.save_config(&file).map(|()| file))
            .await
            // The closure does not panic (it only does I/O and returns its
            // errors), so a JoinError here is a bug worth crashing on.
            .expect("the config write task panicked")?;
        model.config = file.config;
        model.version = version;
        self.publish(version);
        Ok(())
    }

    /// A receiver that sees every version published from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.versions.subscribe()
    }

    /// The current version, without taking the lock.
    pub fn version(&self) -> u64 {
        *self.versions.borrow()
    }

    /// How many long-polls are waiting right now (each holds a receiver).
    pub fn watching(&self) -> usize {
        self.versions.receiver_count()
    }

    fn publish(&self, version: u64) {
        tracing::debug!(version, "new config version");
        // `send_replace` stores the value even when nobody is watching.
        self.versions.send_replace(version);
    }

    /// Expire leases in the background, so a killed instance leaves every
    /// proxy's endpoints within about one lease even if no request comes in.
    pub async fn expire_leases(self: Arc<Self>) {
        let mut tick = tokio::time::interval(tick_for(self.settings.lease));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => drop(self.lock().await),
            }
        }
    }
}

/// Check a few times per lease: an expiry is noticed at most one tick late.
fn tick_for(lease: Duration) -> Duration {
    (lease / 8).clamp(Duration::from_millis(5), Duration::from_millis(100))
}
