//! The registry: which proxies exist, where they listen, and which of them
//! may receive traffic right now.
//!
//! It sits at the very start of the control plane's pipeline: sidecars
//! announce themselves here (`PUT /v1/proxies/{instance}`), the snapshot
//! compiler reads the result, and every proxy's endpoints follow from it.
//!
//! Kubernetes splits the same job between the kubelet (readiness probes) and
//! the EndpointSlice controller (which pods back a Service); Consul and Eureka
//! do it with a lease that the client renews. We take the lease: an instance
//! stays *live* while it renews its announce within `lease`, and it is
//! *healthy* (it gets traffic) while it is live and its app answers (`ready`).
//!
//! The registry is a plain data structure with the clock passed in, so every
//! rule below is unit-tested without a server or a sleep. The server (see
//! `state.rs`) wraps it in a lock and turns "something changed" into a new
//! config version.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use mesh_api::xds::{
    AckRequest, EndpointStatus, ProxyAnnounce, ProxyMode, ProxyStatus, ServiceStatus, ports,
};

use crate::compile::Workload;

/// Every known proxy instance, by instance name.
#[derive(Debug)]
pub struct Registry {
    instances: BTreeMap<String, Instance>,
    lease: Duration,
    forget_after: Duration,
    /// The earliest moment any instance's lease state can change by itself
    /// (a lease running out, a stale instance to forget). `refresh` runs on
    /// every request that takes the lock, hundreds per second with 100
    /// sidecars heartbeating; before this moment it has nothing to look at.
    next_check: Option<Instant>,
}

/// One proxy instance, as last announced.
#[derive(Clone, Debug)]
pub struct Instance {
    pub announce: ProxyAnnounce,
    /// When the last announce (or heartbeat) arrived.
    pub last_seen: Instant,
    /// The lease state as of the last `refresh`: what the current config
    /// version was compiled from. We do not read the clock when compiling, so
    /// a snapshot's content is a function of its version number alone.
    pub live: bool,
    /// `live && announce.ready`, as of the last `refresh`.
    pub healthy: bool,
    /// Last version the proxy accepted (Envoy's ACK).
    pub acked_version: Option<u64>,
    /// Why the proxy rejected its latest version (Envoy's NACK), if it did.
    pub rejected: Option<String>,
}

impl Instance {
    fn status(&self, now: Instant) -> ProxyStatus {
        ProxyStatus {
            announce: self.announce.clone(),
            acked_version: self.acked_version,
            rejected: self.rejected.clone(),
            last_seen_ms: millis(now.saturating_duration_since(self.last_seen)),
            live: self.live,
        }
    }
}

/// What an announce did to the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announced {
    /// A new instance joined.
    Joined,
    /// A known instance announced different content (address, labels, ready...).
    Changed,
    /// A heartbeat: same content, lease renewed. No new version for this.
    Renewed,
}

// === impl Registry ===

impl Registry {
    /// An empty registry. `lease`: how long an announce keeps an instance
    /// live; `forget_after`: how long an instance whose lease ran out stays
    /// listed (as not live) before it is dropped altogether.
    pub fn new(lease: Duration, forget_after: Duration) -> Self {
        Registry {
            instances: BTreeMap::new(),
            lease,
            forget_after,
            next_check: None,
        }
    }

    /// Load instances persisted by a previous run. Each gets a fresh lease:
    /// its sidecar is most likely still running and heartbeating, and will
    /// confirm within a heartbeat or two; if it is gone, the lease runs out
    /// and it leaves everyone's endpoints as if it had just died.
    ///
    /// That guess holds for a restarted control plane (`meshctl restart
    /// control-plane`). A fresh `meshctl up` knows better: none of its
    /// instances has started yet, so it removes every restored one at once
    /// (`DELETE /v1/proxies/{instance}`, see `mesh/ctl/src/up.rs`) rather
    /// than list a killed run's instances for a lease and a grace period.
    pub fn restore(&mut self, announces: Vec<ProxyAnnounce>, now: Instant) {
        self.next_check = None;
        for announce in announces {
            let healthy = announce.ready;
            self.instances.insert(
                announce.instance.clone(),
                Instance {
                    announce,
                    last_seen: now,
                    live: true,
                    healthy,
                    acked_version: None,
                    rejected: None,
                },
            );
        }
    }

    /// Record an announce (or a heartbeat) and renew the instance's lease.
    ///
    /// The caller runs [`Registry::refresh`] afterwards: a renewed lease can
    /// make a stale instance live again.
    pub fn announce(&mut self, announce: ProxyAnnounce, now: Instant) -> Announced {
        match self.instances.get_mut(&announce.instance) {
            Some(instance) => {
                instance.last_seen = now;
                // A renewed lease of a live instance only moves its own
                // deadline later; anything else is for `refresh` to judge.
                if instance.announce == announce {
                    if !instance.live {
                        self.next_check = None;
                    }
                    Announced::Renewed
                } else {
                    instance.announce = announce;
                    self.next_check = None;
                    Announced::Changed
                }
            }
            None => {
                // Not live until `refresh` says so: that is where health
                // changes are detected, whatever caused them.
                self.next_check = None;
                self.instances.insert(
                    announce.instance.clone(),
                    Instance {
                        announce,
                        last_seen: now,
                        live: false,
                        healthy: false,
                        acked_version: None,
                        rejected: None,
                    },
                );
                Announced::Joined
            }
        }
    }

    /// A graceful leave: the instance is gone at once, no lease to wait out.
    pub fn leave(&mut self, instance: &str) -> Option<Instance> {
        self.instances.remove(instance)
    }

    /// Re-evaluate every lease against `now`. Returns true when anything a
    /// snapshot is compiled from changed: an instance became healthy or
    /// unhealthy, or a long-dead one was forgotten.
    pub fn refresh(&mut self, now: Instant) -> bool {
        if self.next_check.is_some_and(|at| now < at) {
            return false;
        }
        let mut changed = false;
        let mut next_check: Option<Instant> = None;
        let (lease, forget_after) = (self.lease, self.forget_after);
        self.instances.retain(|name, instance| {
            let silent_for = now.saturating_duration_since(instance.last_seen);
            if silent_for >= lease + forget_after {
                tracing::info!(instance = %name, "forgetting instance: silent for {silent_for:?}");
                changed = true;
                return false;
            }
            let live = silent_for < lease;
            let healthy = live && instance.announce.ready;
            if live != instance.live {
                if live {
                    tracing::info!(instance = %name, "lease current: instance is live");
                } else {
                    tracing::info!(
                        instance = %name,
                        "lease expired: no announce for {silent_for:?}, removing it from endpoints"
                    );
                }
            }
            changed |= healthy != instance.healthy;
            instance.live = live;
            instance.healthy = healthy;
            let deadline = instance.last_seen + if live { lease } else { lease + forget_after };
            next_check = Some(next_check.map_or(deadline, |at| at.min(deadline)));
            true
        });
        self.next_check = next_check;
        changed
    }

    /// Record a proxy's ACK or NACK. `None` when the instance is unknown.
    pub fn ack(&mut self, instance: &str, ack: &AckRequest) -> Option<&Instance> {
        let entry = self.instances.get_mut(instance)?;
        if ack.accepted {
            entry.acked_version = Some(ack.version);
            entry.rejected = None;
        } else {
            // Envoy keeps serving its last accepted config after a NACK; so
            // does our proxy. We keep `acked_version` as it was.
            let why = ack.error.as_deref().unwrap_or("no reason given");
            entry.rejected = Some(format!("version {}: {why}", ack.version));
        }
        Some(entry)
    }

    pub fn get(&self, instance: &str) -> Option<&Instance> {
        self.instances.get(instance)
    }

    pub fn contains(&self, instance: &str) -> bool {
        self.instances.contains_key(instance)
    }

    /// The snapshot compiler's input: every instance with its health as of
    /// the last `refresh`.
    pub fn workloads(&self) -> Vec<Workload> {
        self.instances
            .values()
            .map(|instance| Workload {
                announce: instance.announce.clone(),
                healthy: instance.healthy,
            })
            .collect()
    }

    /// What gets persisted: the announces, not the leases (a restart gives
    /// every instance a fresh one).
    pub fn announces(&self) -> Vec<ProxyAnnounce> {
        self.instances
            .values()
            .map(|instance| instance.announce.clone())
            .collect()
    }

    /// `GET /v1/proxies`: every proxy, sorted by instance name.
    pub fn proxies(&self, now: Instant) -> Vec<ProxyStatus> {
        self.instances
            .values()
            .map(|instance| instance.status(now))
            .collect()
    }

    /// One proxy's status (what an ACK answers), without building everyone's.
    pub fn status(&self, instance: &str, now: Instant) -> Option<ProxyStatus> {
        self.instances.get(instance).map(|i| i.status(now))
    }

    /// `GET /v1/services`: sidecar workloads grouped by service, sorted by
    /// name. A gateway is not a service: nothing in the mesh routes to it.
    pub fn services(&self) -> Vec<ServiceStatus> {
        let mut services: BTreeMap<&str, ServiceStatus> = BTreeMap::new();
        let mut versions: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for instance in self.sidecars() {
            let a = &instance.announce;
            let service = services
                .entry(a.service.as_str())
                .or_insert_with(|| ServiceStatus {
                    name: a.service.clone(),
                    port: ports::SERVICE,
                    versions: Vec::new(),
                    endpoints: Vec::new(),
                });
            // Instances iterate in name order, so endpoints come out sorted.
            service.endpoints.push(EndpointStatus {
                instance: a.instance.clone(),
                version: a.version.clone(),
                address: a.address.clone(),
                healthy: instance.healthy,
            });
            versions
                .entry(a.service.as_str())
                .or_default()
                .insert(a.version.as_str());
        }
        for (name, service) in services.iter_mut() {
            service.versions = versions[name]
                .iter()
                .filter(|v| !v.is_empty())
                .map(|v| v.to_string())
                .collect();
        }
        services.into_values().collect()
    }

    /// The announces of every live proxy (sidecars and gateways): what
    /// `istioctl analyze` would see as running pods.
    pub fn live_announces(&self) -> Vec<ProxyAnnounce> {
        self.instances
            .values()
            .filter(|instance| instance.live)
            .map(|instance| instance.announce.clone())
            .collect()
    }

    /// Names of the services that have at least one sidecar, sorted.
    pub fn service_names(&self) -> Vec<String> {
        let names: BTreeSet<&str> = self
            .sidecars()
            .map(|instance| instance.announce.service.as_str())
            .collect();
        names.into_iter().map(String::from).collect()
    }

    fn sidecars(&self) -> impl Iterator<Item = &Instance> {
        self.instances
            .values()
            .filter(|instance| instance.announce.mode == ProxyMode::Sidecar)
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(1_000);
    const FORGET: Duration = Duration::from_millis(10_000);

    fn sidecar(instance: &str, service: &str, version: &str) -> ProxyAnnounce {
        ProxyAnnounce {
            identity: None,
            instance: instance.into(),
            mode: ProxyMode::Sidecar,
            service: service.into(),
            version: version.into(),
            labels: BTreeMap::new(),
            address: "127.0.0.1:40000".into(),
            ready: true,
            admin_address: String::new(),
        }
    }

    fn healthy(registry: &Registry, instance: &str) -> bool {
        registry.get(instance).unwrap().healthy
    }

    #[test]
    fn a_new_instance_becomes_healthy_on_refresh() {
        let t0 = Instant::now();
        let mut registry = Registry::new(LEASE, FORGET);
        assert_eq!(
            registry.announce(sidecar("hw-1", "hw", "v1"), t0),
            Announced::Joined
        );
        assert!(registry.refresh(t0), "a new healthy endpoint is a change");
        assert!(healthy(&registry, "hw-1"));
        assert!(!registry.refresh(t0), "nothing changed since");
    }

    #[test]
    fn a_heartbeat_with_the_same_content_changes_nothing() {
        let t0 = Instant::now();
        let mut registry = Registry::new(LEASE, FORGET);
        registry.announce(sidecar("hw-1", "hw", "v1"), t0);
        registry.refresh(t0);

        let t1 = t0 + Duration::from_millis(250);
        assert_eq!(
            registry.announce(sidecar("hw-1", "hw", "v1"), t1),
            Announced::Renewed
        );
        assert!(!registry.refresh(t1));
        assert_eq!(registry.get("hw-1").unwrap().last_seen, t1);
    }

    #[test]
    fn an_announce_with_new_content_is_a_change() {
        let t0 = Instant::now();
        let mut registry = Registry::new(LEASE, FORGET);
        registry.announce(sidecar("hw-1", "hw", "v1"), t0);
        registry.refresh(t0);

        let not_ready = ProxyAnnounce {
            ready: false,
            ..sidecar("hw-1", "hw", "v1")
        };
        assert_eq!(registry.announce(not_ready, t0), Announced::Changed);
        assert!(registry.refresh(t0), "the app stopped answering");
        assert!(!healthy(&registry, "hw-1"));
        assert!(registry.get("hw-1").unwrap().live, "still heartbeating");
    }

    #[test]
    fn an_expired_lease_takes_the_instance_out_of_traffic_then_out_of_the_registry() {
        let t0 = Instant::now();
        let mut registry = Registry::new(LEASE, FORGET);
        registry.announce(sidecar("hw-1", "hw", "v1"), t0);
        registry.refresh(t0);

        assert!(!registry.refresh(t0 + LEASE - Duration::from_millis(1)));
        assert!(healthy(&registry, "hw-1"));

        assert!(registry.refresh(t0 + LEASE), "lease ran out");
        assert!(!healthy(&registry, "hw-1"));
        assert!(!registry.get("hw-1").unwrap().live);
        assert_eq!(
            registry.services()[0].endpoints.len(),
            1,
            "listed, unhealthy"
        );

        assert!(registry.refresh(t0 + LEASE + FORGET), "forgotten");
        assert!(!registry.contains("hw-1"));
    }

    #[test]
    fn a_heartbeat_after_expiry_brings_the_instance_back() {
        let t0 = Instant::now();
        let mut registry = Registry::new(LEASE, FORGET);
        registry.announce(sidecar("hw-1", "hw", "v1"), t0);
        registry.refresh(t0);
        registry.refresh(t0 + LEASE * 2);
        assert!(!healthy(&registry, "hw-1"));

        let back = t0 + LEASE * 3;
        assert_eq!(
            registry.announce(sidecar("hw-1", "hw", "v1"), back),
            Announced::Renewed
        );
        assert!(registry.refresh(back));
        assert!(healthy(&registry, "hw-1"));
    }

    #[test]
    fn restored_instances_get_a_fresh_grace_lease() {
        let t0 = Instant::now();
        let mut registry = Registry::new(LEASE, FORGET);
        registry.restore(vec![sidecar("hw-1", "hw", "v1")], t0);
        assert!(healthy(&registry, "hw-1"));
        assert!(!registry.refresh(t0));
        assert!(registry.refresh(t0 + LEASE), "nobody confirmed it");
    }

    #[test]
    fn services_group_sidecars_and_skip_gateways() {
        let t0 = Instant::now();
        let mut registry = Registry::new(LEASE, FORGET);
        registry.announce(sidecar("hw-2", "helloworld-service", "v2"), t0);
        registry.announce(sidecar("hw-1", "helloworld-service", "v1"), t0);
        registry.announce(sidecar("ui-1", "guestbook-ui", "v1"), t0);
        registry.announce(
            ProxyAnnounce {
                mode: ProxyMode::Gateway,
                address: String::new(),
                ..sidecar("gw", "ingressgateway", "")
            },
            t0,
        );
        registry.refresh(t0);

        let services = registry.services();
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["guestbook-ui", "helloworld-service"]);
        let hw = &services[1];
        assert_eq!(hw.port, 8080);
        assert_eq!(hw.versions, ["v1", "v2"]);
        let instances: Vec<&str> = hw.endpoints.iter().map(|e| e.instance.as_str()).collect();
        assert_eq!(instances, ["hw-1", "hw-2"]);
        assert_eq!(
            registry.service_names(),
            ["guestbook-ui", "helloworld-service"]
        );
        assert_eq!(registry.proxies(t0).len(), 4, "the gateway is a proxy");
    }

    #[test]
    fn a_nack_is_kept_until_a_later_ack() {
        let t0 = Instant::now();
        let mut registry = Registry::new(LEASE, FORGET);
        registry.announce(sidecar("hw-1", "hw", "v1"), t0);
        registry.ack(
            "hw-1",
            &AckRequest {
                version: 3,
                accepted: true,
                error: None,
            },
        );
        let nack = AckRequest {
            version: 4,
            accepted: false,
            error: Some("bad regex".into()),
        };
        let entry = registry.ack("hw-1", &nack).unwrap();
        assert_eq!(entry.acked_version, Some(3), "the last good version stays");
        assert_eq!(entry.rejected.as_deref(), Some("version 4: bad regex"));

        let ack = AckRequest {
            version: 5,
            accepted: true,
            error: None,
        };
        let entry = registry.ack("hw-1", &ack).unwrap();
        assert_eq!(entry.acked_version, Some(5));
        assert_eq!(entry.rejected, None);
        assert!(registry.ack("nobody", &ack).is_none());
    }
}
