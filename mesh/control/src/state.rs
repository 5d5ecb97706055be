//! The control plane's shared state: the registry, the applied config and
//! the config version, behind one lock, plus the channels that wake every
//! proxy's long-poll when the version moves.
//!
//! The version is the heart of the push protocol. Whatever a snapshot is
//! compiled from (the registry's healthy set, an announce's content, the
//! applied config) changes only together with a version bump, so "version N"
//! names exactly one snapshot per proxy. A proxy that already has N is told
//! "304 Not Modified"; anything else gets the current snapshot. istiod does
//! the same with xDS `version_info`.
//!
//! A version is only ever handed to a proxy once it is on disk (see
//! [`Shared::durable`]): after a crash and restart the counter continues
//! above it, so no proxy's `version=N` can look current by accident.
//! The config is written before its version exists at all (an apply answers
//! 200 only once it is safe). Registry changes are written by a background
//! task that coalesces them: at start-up a thousand sidecars may announce
//! within a second, and one file write per announce would be a thousand
//! fsyncs of an ever larger file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_api::config::ConfigSet;
use tokio::sync::{Mutex, MutexGuard, Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::Settings;
use crate::compile::Workload;
use crate::pilot::PilotMetrics;
use crate::registry::Registry;
use crate::store::{ConfigFile, RegistryFile, Store, StoreError};
use crate::token::ControlToken;
use crate::watch::SnapshotCache;

/// Everything a snapshot is compiled from, at one version.
#[derive(Debug)]
pub struct Model {
    pub registry: Registry,
    /// Shared with in-flight compiles, which run without the lock.
    pub config: Arc<ConfigSet>,
    /// The compiler's view of the registry, rebuilt only when the registry
    /// changes (not on every heartbeat and not on every compile).
    pub workloads: Arc<Vec<Workload>>,
    /// With the Kubernetes source (`kubernetes/`): the workloads its
    /// EndpointSlices say. They then decide endpoints, not the registry,
    /// which keeps tracking the proxies themselves (ACKs, admin addresses).
    pub discovered: Option<Arc<Vec<Workload>>>,
    /// The CA's roots, PEM, newest first (`ca.rs`): every snapshot carries
    /// them, and a change of roots is a new version like any other change.
    pub trust_bundle: Arc<Vec<String>>,
    pub version: u64,
}

/// Shared by every request handler and the background tasks.
#[derive(Debug)]
pub struct Shared {
    model: Mutex<Model>,
    /// The current version; long-polls wait on a receiver of this.
    versions: watch::Sender<u64>,
    /// The highest version known to be on disk.
    durable: watch::Sender<u64>,
    /// Wakes the registry writer.
    registry_dirty: Notify,
    /// Wakes whoever waits for proxies to ACK a version (a root rotation):
    /// an ACK moves no version, so `versions` does not tell.
    pub acks: Notify,
    store: Store,
    pub settings: Settings,
    /// Cancelled on shutdown: long-polls return at once instead of holding
    /// the server open for their full wait.
    pub shutdown: CancellationToken,
    /// The latest version's sidecar snapshot, compiled once for all.
    pub snapshots: SnapshotCache,
    /// Pushes, rejects and convergence, for `GET /metrics` (`pilot.rs`).
    pub pilot: PilotMetrics,
    /// The token every write must carry (`token.rs`); `None`: writes open.
    pub token: Option<ControlToken>,
    /// The mesh CA (`ca.rs`): there whenever a write token is, since the
    /// proxies' bootstrap tokens derive from it.
    pub ca: Option<crate::ca::Ca>,
    /// The secure port and the identity it proves, once bound
    /// (`secure.rs`): what an announce's answer tells proxies.
    pub secure: std::sync::OnceLock<mesh_api::xds::SecureControl>,
}

// === impl Shared ===

impl Shared {
    /// Load what a previous run persisted and continue from it.
    pub fn load(
        settings: Settings,
        shutdown: CancellationToken,
        token: Option<ControlToken>,
        ca: Option<crate::ca::Ca>,
    ) -> Result<Shared, StoreError> {
        let store = Store::open(&settings.state_dir)?;
        let loaded = store.load()?;

        let mut registry = Registry::new(settings.lease, settings.forget_after);
        registry.restore(loaded.registry.proxies.clone(), Instant::now());
        // One above anything handed out before: every proxy's `version=N`
        // is now stale, so each one resyncs on its next poll.
        let mut version = loaded.last_version() + 1;
        // With the Kubernetes source the state directory is scratch space,
        // lost with the pod: a restarted control plane would count 1, 2, 3
        // again and could hand a proxy holding "3" another "3", which the
        // proxy would take for "up to date". Milliseconds since 1970 are
        // above any number an earlier run handed out (unless it made more
        // than a thousand versions a second for its whole life).
        if settings.kubernetes.is_some() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            version = version.max(now);
        }
        // Persist the new version before serving: if we restart again before
        // any change, we must still not hand out this number twice. This
        // also proves the state directory is writable, before anyone relies
        // on it. (A blocking write on start-up, before any request, is fine.)
        store.save_registry(&RegistryFile {
            config_version: version,
            proxies: registry.announces(),
        })?;

        let (versions, _) = watch::channel(version);
        let (durable, _) = watch::channel(version);
        Ok(Shared {
            model: Mutex::new(Model {
                workloads: served_workloads(settings.kubernetes.is_some(), None, &registry),
                discovered: None,
                trust_bundle: Arc::new(ca.as_ref().map(|ca| ca.trust_bundle()).unwrap_or_default()),
                registry,
                config: Arc::new(loaded.config.config),
                version,
            }),
            versions,
            durable,
            registry_dirty: Notify::new(),
            acks: Notify::new(),
            store,
            settings,
            shutdown,
            snapshots: SnapshotCache::default(),
            pilot: {
                let pilot = PilotMetrics::default();
                pilot.version_made(version, Instant::now());
                pilot
            },
            token,
            ca,
            secure: std::sync::OnceLock::new(),
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
            self.registry_changed(&mut model);
        }
        model
    }

    /// The registry changed in a way snapshots can see: new version, wake
    /// the watchers, and have the writer persist it.
    pub fn registry_changed(&self, model: &mut Model) {
        model.version += 1;
        model.workloads = served_workloads(
            self.settings.kubernetes.is_some(),
            model.discovered.as_ref(),
            &model.registry,
        );
        self.registry_dirty.notify_one();
        self.publish(model.version);
    }

    /// The CA's roots changed (a rotation, `ca.rs`): every proxy gets them
    /// in a new version, persisted by the registry writer like a registry
    /// change. Returns that version.
    pub fn trust_bundle_changed(&self, model: &mut Model, bundle: Vec<String>) -> u64 {
        model.trust_bundle = Arc::new(bundle);
        model.version += 1;
        self.registry_dirty.notify_one();
        self.publish(model.version);
        model.version
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
        model.config = Arc::new(file.config);
        model.version = version;
        self.made_durable(version);
        self.publish(version);
        Ok(())
    }

    /// The Kubernetes source's model: serve these workloads and this config
    /// from a new version, if either differs from what is served. Nothing is
    /// written to disk: the API server is the store. Returns whether a new
    /// version was published.
    pub fn replace_discovered(
        &self,
        model: &mut Model,
        workloads: Vec<Workload>,
        config: ConfigSet,
    ) -> bool {
        let same_workloads = model.discovered.as_ref().is_some_and(|served| {
            served.len() == workloads.len()
                && served
                    .iter()
                    .zip(&workloads)
                    .all(|(a, b)| a.healthy == b.healthy && a.announce == b.announce)
        });
        if same_workloads && *model.config == config {
            return false;
        }
        let workloads = Arc::new(workloads);
        model.discovered = Some(workloads.clone());
        model.workloads = workloads;
        model.config = Arc::new(config);
        model.version += 1;
        self.made_durable(model.version);
        self.publish(model.version);
        true
    }

    /// A receiver that sees every version published from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.versions.subscribe()
    }

    /// A receiver of the highest version on disk: the watch API waits on it
    /// before answering with a version.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
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
        self.pilot.version_made(version, Instant::now());
        // `send_replace` stores the value even when nobody is watching.
        self.versions.send_replace(version);
    }

    fn made_durable(&self, version: u64) {
        self.durable.send_if_modified(|durable| {
            let newer = version > *durable;
            if newer {
                *durable = version;
            }
            newer
        });
    }

    // === background tasks ===

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

    /// Persist the registry whenever it changed, coalescing changes that
    /// arrive while a write is in progress; a last write on shutdown.
    pub async fn write_registry(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = self.registry_dirty.notified() => self.flush_registry().await,
            }
        }
        self.flush_registry().await;
    }

    async fn flush_registry(&self) {
        let file = {
            let model = self.model.lock().await;
            RegistryFile {
                config_version: model.version,
                proxies: model.registry.announces(),
            }
        };
        let version = file.config_version;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.save_registry(&file)).await {
            Ok(Ok(())) => {}
            // The registry is a cache of what the sidecars keep telling us,
            // so we keep serving; but a restart may now reuse this version.
            Ok(Err(e)) => tracing::error!("{e}; the registry will be rebuilt from heartbeats"),
            // The runtime is shutting down (a test ending, Ctrl-C): the
            // write is abandoned, and the next start rebuilds the registry
            // from heartbeats as after any restart.
            Err(e) if e.is_cancelled() => tracing::debug!("registry write cancelled at shutdown"),
            Err(e) => tracing::error!("writing the registry failed: {e}"),
        }
        // Even after a failed write: holding every proxy back until the disk
        // recovers would turn a persistence problem into an outage.
        self.made_durable(version);
    }
}

/// Check a few times per lease: an expiry is noticed at most one tick late.
fn tick_for(lease: Duration) -> Duration {
    (lease / 8).clamp(Duration::from_millis(5), Duration::from_millis(100))
}

/// The workloads snapshots are compiled from. Locally the announces are the
/// registry. With the Kubernetes source endpoints come only from
/// EndpointSlices (`discovered`), never from announcements, which any pod
/// able to reach the API could send (issue 15 item 10): before the first
/// sync there are none, even if the registry restored announces from disk.
/// Announces are still taken there, for ACKs and admin addresses.
fn served_workloads(
    kubernetes: bool,
    discovered: Option<&Arc<Vec<Workload>>>,
    registry: &Registry,
) -> Arc<Vec<Workload>> {
    match discovered {
        Some(discovered) => discovered.clone(),
        None if kubernetes => Arc::new(Vec::new()),
        None => Arc::new(registry.workloads()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::xds::ProxyAnnounce;

    #[test]
    fn on_kubernetes_an_announce_never_becomes_an_endpoint() {
        let mut registry = Registry::new(Duration::from_secs(5), Duration::from_secs(60));
        registry.announce(
            ProxyAnnounce {
                instance: "rogue-1".into(),
                service: "reviews".into(),
                address: "10.0.0.66:15006".into(),
                ready: true,
                ..Default::default()
            },
            Instant::now(),
        );
        // Locally the announce is the endpoint.
        assert_eq!(served_workloads(false, None, &registry).len(), 1);
        // On Kubernetes, before and after the first EndpointSlice sync,
        // only what the EndpointSlices say is served.
        assert!(served_workloads(true, None, &registry).is_empty());
        let sliced = Arc::new(Vec::new());
        assert!(served_workloads(true, Some(&sliced), &registry).is_empty());
    }
}
