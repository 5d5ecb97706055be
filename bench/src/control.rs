//! The control-plane benchmark: how long a config change takes to reach
//! every proxy, and what the control plane spends on it.
//!
//! Istio's istiod pushes Envoy config over xDS; the number operators watch is
//! `pilot_proxy_convergence_time`, the time from a config change until a
//! proxy has it. micromesh's proxies long-poll
//! `GET /v1/proxies/{instance}/snapshot?version=N&waitMs=...` instead (see
//! mesh/api/src/xds.rs), so this benchmark plays the proxies' part:
//!
//! 1. register `endpoints` instances (`PUT /v1/proxies/{instance}`), spread
//!    over `services` services, half `v1` and half `v2`; the first `proxies`
//!    of them are "live" sidecars, the rest are announced once (the control
//!    plane must run with a lease longer than the benchmark, or the silent
//!    ones expire: a harness heartbeating 1,000 instances every 250 ms would
//!    itself be the load it measures);
//! 2. apply a DestinationRule and a VirtualService that splits `bench-svc-0`
//!    between v1 and v2;
//! 3. run `proxies` watcher threads that long-poll, parse and ack every
//!    snapshot, exactly as a sidecar does, while the live sidecars heartbeat
//!    every 250 ms;
//! 4. `applies` times: change the split's weights with `POST /v1/config/apply`
//!    and time, for every watcher, the moment it received the snapshot that
//!    carries the new weights.
//!
//! The weights are the marker: apply k sets v1's weight to a value no
//! neighbouring apply uses, so a watcher knows a snapshot carries *this*
//! change and not an unrelated version bump.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mesh_api::config::{ApplyRequest, SourceFile};
use mesh_api::snapshot::{Cluster, Destination, Endpoint, HttpRoute, Snapshot, VirtualHost};
use mesh_api::xds::{AckRequest, ProxyAnnounce, ProxyMode, ports};
use serde::{Deserialize, Serialize};

use crate::http::{Conn, Response, request};
use crate::stats::{self, Percentiles};

/// The service whose routing every apply changes.
pub const CANARY_SERVICE: &str = "bench-svc-0";

#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// mesh-control's API address.
    pub control: SocketAddr,
    /// mesh-control's process id, to read its CPU time and memory.
    pub pid: Option<u32>,
    /// Watching sidecars.
    pub proxies: usize,
    /// Registered instances in all (the watchers are among them).
    pub endpoints: usize,
    pub services: usize,
    /// Measured config changes.
    pub applies: usize,
    /// How often a live sidecar re-announces itself.
    pub heartbeat: Duration,
    /// `waitMs` of each long-poll.
    pub wait: Duration,
    /// How long to watch the idle control plane (heartbeats only).
    pub idle: Duration,
    /// Give up on a change that has not reached every proxy by then.
    pub deadline: Duration,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ControlReport {
    pub proxies: usize,
    pub endpoints: usize,
    pub services: usize,
    pub applies: usize,
    /// Size of one snapshot as served (compact JSON).
    pub snapshot_bytes: usize,
    /// Time to announce every instance once.
    pub register_ms: f64,
    /// Apply -> one proxy holds the new snapshot, every (apply, proxy) pair.
    pub propagation: Percentiles,
    /// Apply -> the *last* proxy holds it, one sample per apply.
    pub all_proxies: Percentiles,
    /// How long `POST /v1/config/apply` itself took to answer.
    pub apply_call: Percentiles,
    /// New versions the watchers saw while nothing changed (heartbeats must
    /// not bump the version; expiring leases do).
    pub versions_while_idle: u64,
    /// Watcher errors (bad status, bad JSON, broken connection).
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessReport>,
}

/// The control plane's own cost, from /proc.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessReport {
    /// CPU share (100 = one core) with every sidecar watching and heartbeating.
    pub idle_cpu_percent: f64,
    /// CPU per apply, with the idle share over the same time taken out.
    pub cpu_ms_per_apply: f64,
    /// CPU per apply, everything the process spent while the applies ran
    /// (heartbeats, acks and re-polls included).
    pub cpu_ms_per_apply_gross: f64,
    /// CPU share while the applies ran (100 = one core).
    pub applies_cpu_percent: f64,
    pub rss_kb_registered: u64,
    pub rss_kb_watched: u64,
    pub rss_kb_max_during_applies: u64,
    pub hwm_kb: u64,
}

// === the watchers' shared board ===

/// What every watcher last received, guarded by one mutex; the main thread
/// sleeps on the condvar until every watcher holds the change it applied.
struct Board {
    state: Mutex<BoardState>,
    changed: Condvar,
}

#[derive(Default)]
struct BoardState {
    /// Per watcher: the v1 weight of the canary route in its newest snapshot.
    marker: Vec<Option<u32>>,
    /// Per watcher: when each snapshot arrived, its version and marker.
    seen: Vec<Vec<(Instant, u64, Option<u32>)>>,
    snapshot_bytes: usize,
    errors: u64,
    first_error: Option<String>,
}

impl Board {
    fn new(watchers: usize) -> Board {
        Board {
            state: Mutex::new(BoardState {
                marker: vec![None; watchers],
                seen: vec![Vec::new(); watchers],
                ..Default::default()
            }),
            changed: Condvar::new(),
        }
    }

    // A poisoned mutex means a watcher panicked, which is a bug in this
    // file; propagating the panic is the right answer, hence `unwrap`.
    fn record(&self, watcher: usize, at: Instant, version: u64, marker: Option<u32>, bytes: usize) {
        let mut state = self.state.lock().unwrap();
        state.marker[watcher] = marker;
        state.seen[watcher].push((at, version, marker));
        state.snapshot_bytes = bytes;
        self.changed.notify_all();
    }

    fn error(&self, message: String) {
        let mut state = self.state.lock().unwrap();
        state.errors += 1;
        state.first_error.get_or_insert(message);
    }

    /// Block until every watcher's newest snapshot carries `marker`.
    fn wait_for(&self, marker: u32, deadline: Instant) -> anyhow::Result<()> {
        let mut state = self.state.lock().unwrap();
        loop {
            let behind = state.marker.iter().filter(|m| **m != Some(marker)).count();
            if behind == 0 {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                let held: std::collections::BTreeSet<String> = state
                    .marker
                    .iter()
                    .map(|m| {
                        m.map_or("no weighted route".to_string(), |w| {
                            format!("v1 weight {w}")
                        })
                    })
                    .collect();
                bail!(
                    "{behind} of {} simulated proxies never received the snapshot with the \
                     new weights (v1 weight {marker}) for {CANARY_SERVICE}; they hold: {}. \
                     Does mesh-control compile the applied VirtualService into the snapshots? \
                     First watcher error: {}",
                    state.marker.len(),
                    held.into_iter().collect::<Vec<_>>().join(", "),
                    state.first_error.as_deref().unwrap_or("none")
                );
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }
}

// === the benchmark ===

pub fn run(config: &ControlConfig) -> anyhow::Result<ControlReport> {
    anyhow::ensure!(
        config.proxies <= config.endpoints && config.services > 0 && config.proxies > 0,
        "need 0 < proxies <= endpoints and at least one service"
    );
    let host = config.control.to_string();
    let mut api = Conn::connect(config.control, Duration::from_secs(5)).with_context(|| {
        format!(
            "cannot reach mesh-control at {}: is it running?",
            config.control
        )
    })?;

    // 1. Register every instance once.
    let started = Instant::now();
    for i in 0..config.endpoints {
        let body = serde_json::to_vec(&announce(i, config.services))?;
        let response = api.round_trip(&request(
            "PUT",
            &format!("/v1/proxies/{}", instance(i)),
            &host,
            Some(("application/json", &body)),
        ))?;
        expect_2xx(&response, "announce")?;
    }
    let register_ms = started.elapsed().as_secs_f64() * 1e3;
    let rss_kb_registered = config
        .pid
        .map(|pid| stats::memory_kb(pid).map(|m| m.0))
        .transpose()?;

    // 2. The first split, before anyone watches.
    apply(&mut api, &host, marker(0))?;

    // 3. Watchers and heartbeats.
    let board = Arc::new(Board::new(config.proxies));
    let stop = Arc::new(AtomicBool::new(false));
    for watcher in 0..config.proxies {
        let (board, config) = (board.clone(), config.clone());
        thread::spawn(move || watch(&config, watcher, &board));
    }
    let heartbeat = {
        let (config, stop, board) = (config.clone(), stop.clone(), board.clone());
        thread::spawn(move || heartbeat(&config, &stop, &board))
    };
    board
        .wait_for(marker(0), Instant::now() + config.deadline)
        .context("while waiting for the simulated proxies' first snapshot")?;

    // Idle: only heartbeats. Any new version now is a spurious push.
    let seen_before: usize = board.state.lock().unwrap().seen.iter().map(Vec::len).sum();
    let cpu_before = config.pid.map(stats::cpu_time).transpose()?;
    let idle_started = Instant::now();
    thread::sleep(config.idle);
    let idle_elapsed = idle_started.elapsed();
    let cpu_idle = config
        .pid
        .map(stats::cpu_time)
        .transpose()?
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    let seen_after: usize = board.state.lock().unwrap().seen.iter().map(Vec::len).sum();
    let versions_while_idle = ((seen_after - seen_before) / config.proxies) as u64;
    let rss_kb_watched = config
        .pid
        .map(|pid| stats::memory_kb(pid).map(|m| m.0))
        .transpose()?;

    // 4. The measured changes.
    let mut propagation = Vec::new();
    let mut all_proxies = Vec::new();
    let mut apply_call = Vec::new();
    let mut rss_max = 0;
    let cpu_before = config.pid.map(stats::cpu_time).transpose()?;
    let applies_started = Instant::now();
    for k in 1..=config.applies {
        let t0 = Instant::now();
        apply(&mut api, &host, marker(k))?;
        apply_call.push(nanos(t0.elapsed()));
        board
            .wait_for(marker(k), t0 + config.deadline)
            .with_context(|| format!("apply {k} of {}", config.applies))?;
        let state = board.state.lock().unwrap();
        let mut last = 0;
        for seen in &state.seen {
            // The first snapshot after the apply that carries its weights.
            let (at, _, _) = seen
                .iter()
                .find(|(at, _, m)| *at >= t0 && *m == Some(marker(k)))
                .expect("wait_for saw every watcher hold this marker");
            let delay = nanos(*at - t0);
            propagation.push(delay);
            last = last.max(delay);
        }
        all_proxies.push(last);
        drop(state);
        if let Some(pid) = config.pid {
            rss_max = rss_max.max(stats::memory_kb(pid)?.0);
        }
    }
    let applies_elapsed = applies_started.elapsed();
    let process = match (config.pid, cpu_before, cpu_idle) {
        (Some(pid), Some(before), Some(idle)) => {
            let spent = stats::cpu_time(pid)?.saturating_sub(before);
            let idle_share = idle.as_secs_f64() / idle_elapsed.as_secs_f64();
            let net = spent.as_secs_f64() - idle_share * applies_elapsed.as_secs_f64();
            Some(ProcessReport {
                idle_cpu_percent: idle_share * 100.0,
                cpu_ms_per_apply: (net.max(0.0) * 1e3) / config.applies.max(1) as f64,
                cpu_ms_per_apply_gross: spent.as_secs_f64() * 1e3 / config.applies.max(1) as f64,
                applies_cpu_percent: spent.as_secs_f64() / applies_elapsed.as_secs_f64() * 100.0,
                rss_kb_registered: rss_kb_registered.unwrap_or(0),
                rss_kb_watched: rss_kb_watched.unwrap_or(0),
                rss_kb_max_during_applies: rss_max,
                hwm_kb: stats::memory_kb(pid)?.1,
            })
        }
        _ => None,
    };

    stop.store(true, Ordering::SeqCst);
    // The heartbeat thread stops within one interval. The watchers are
    // parked in long-polls; they end with the process, which closes their
    // connections (the control plane sees them go, as it would a crash).
    let _ = heartbeat.join();
    let state = board.state.lock().unwrap();
    Ok(ControlReport {
        proxies: config.proxies,
        endpoints: config.endpoints,
        services: config.services,
        applies: config.applies,
        snapshot_bytes: state.snapshot_bytes,
        register_ms,
        propagation: Percentiles::of(&mut propagation),
        all_proxies: Percentiles::of(&mut all_proxies),
        apply_call: Percentiles::of(&mut apply_call),
        versions_while_idle,
        errors: state.errors,
        first_error: state.first_error.clone(),
        process,
    })
}

/// A snapshot that routes `upstream` / `upstream:8080` straight to `upstream`:
/// what mesh-control would compile for a sidecar whose app calls `upstream`,
/// with the upstream registered without a sidecar of its own. Built from the
/// real `mesh_api` types, so it cannot drift from the contract.
pub fn static_snapshot(instance: &str, upstream: SocketAddr) -> Snapshot {
    Snapshot {
        version: 1,
        proxy: instance.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: "upstream".into(),
            domains: vec!["upstream".into(), format!("upstream:{}", ports::SERVICE)],
            routes: vec![HttpRoute {
                name: "default".into(),
                destinations: vec![Destination {
                    cluster: "upstream".into(),
                    weight: 100,
                }],
                ..Default::default()
            }],
        }],
        clusters: vec![Cluster {
            name: "upstream".into(),
            service: "upstream".into(),
            endpoints: vec![Endpoint {
                instance: "upstream-1".into(),
                address: upstream.to_string(),
                labels: [("app", "upstream"), ("version", "v1")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
                identity: None,
                tls_mode: Default::default(),
            }],
            ..Default::default()
        }],
        gateway: None,
        inbound: Default::default(),
        trust_bundle: Vec::new(),
    }
}

/// The v1 weight apply `k` sets: 1..=98, never the same as the previous apply's.
pub fn marker(k: usize) -> u32 {
    1 + (k % 98) as u32
}

pub fn instance(i: usize) -> String {
    format!("bench-{i}")
}

/// Instance `i`: service `i % services`, version alternating per round of
/// services, so every service has both v1 and v2 endpoints.
pub fn announce(i: usize, services: usize) -> ProxyAnnounce {
    ProxyAnnounce {
        identity: None,
        instance: instance(i),
        mode: ProxyMode::Sidecar,
        service: format!("bench-svc-{}", i % services),
        version: format!("v{}", 1 + (i / services) % 2),
        labels: Default::default(),
        // Nothing listens there: no request is ever routed in this benchmark.
        address: format!("127.0.0.1:{}", 20_000 + i % 40_000),
        ready: true,
        admin_address: String::new(),
    }
}

/// The Istio YAML of apply `k`: subsets v1 and v2, and a weighted split.
pub fn canary_yaml(v1_weight: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: {CANARY_SERVICE}
spec:
  host: {CANARY_SERVICE}
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {CANARY_SERVICE}
spec:
  hosts:
  - {CANARY_SERVICE}
  http:
  - route:
    - destination:
        host: {CANARY_SERVICE}
        subset: v1
      weight: {v1_weight}
    - destination:
        host: {CANARY_SERVICE}
        subset: v2
      weight: {}
",
        100 - v1_weight
    )
}

fn apply(api: &mut Conn, host: &str, v1_weight: u32) -> anyhow::Result<()> {
    let body = serde_json::to_vec(&ApplyRequest {
        files: vec![SourceFile {
            name: "bench-canary.yaml".into(),
            content: canary_yaml(v1_weight),
        }],
    })?;
    let response = api.round_trip(&request(
        "POST",
        "/v1/config/apply",
        host,
        Some(("application/json", &body)),
    ))?;
    expect_2xx(&response, "POST /v1/config/apply")
}

/// The parts of a snapshot a watcher looks at; serde skips the rest.
///
/// Borrowed from the response body rather than copied into `String`s: the
/// 100 simulated sidecars share one core, and allocating every domain of
/// every snapshot made the harness itself a visible part of the time it
/// measures. (A real sidecar parses on its own core.)
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Watched<'a> {
    version: u64,
    #[serde(default, borrow)]
    virtual_hosts: Vec<WatchedHost<'a>>,
}

#[derive(Deserialize)]
struct WatchedHost<'a> {
    #[serde(borrow)]
    domains: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    routes: Vec<WatchedRoute<'a>>,
}

#[derive(Deserialize)]
struct WatchedRoute<'a> {
    #[serde(borrow)]
    destinations: Vec<WatchedDestination<'a>>,
}

#[derive(Deserialize)]
struct WatchedDestination<'a> {
    #[serde(borrow)]
    cluster: Cow<'a, str>,
    weight: u32,
}

/// The v1 weight of the canary route in a snapshot, if it has one.
fn canary_marker(snapshot: &Watched) -> Option<u32> {
    let v1 = Cluster::name_for(CANARY_SERVICE, Some("v1"));
    snapshot
        .virtual_hosts
        .iter()
        .find(|vh| vh.domains.iter().any(|d| d == CANARY_SERVICE))?
        .routes
        .first()?
        .destinations
        .iter()
        .find(|d| d.cluster == v1)
        .map(|d| d.weight)
}

/// One simulated sidecar: long-poll, parse, ack, repeat.
fn watch(config: &ControlConfig, watcher: usize, board: &Board) {
    let host = config.control.to_string();
    let name = instance(watcher);
    let mut version = 0u64;
    let mut conn: Option<Conn> = None;
    loop {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(config.control, Duration::from_secs(5)) {
                Ok(c) => {
                    // The control plane may hold the poll for `wait`.
                    let _ = c.set_read_timeout(config.wait + Duration::from_secs(5));
                    conn.insert(c)
                }
                Err(e) => {
                    board.error(format!("{name}: connect: {e}"));
                    // Back off before retrying a refused connection.
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        let path = format!(
            "/v1/proxies/{name}/snapshot?version={version}&waitMs={}",
            config.wait.as_millis()
        );
        let response = match c.round_trip(&request("GET", &path, &host, None)) {
            Ok(r) => r,
            Err(e) => {
                board.error(format!("{name}: long-poll: {e}"));
                conn = None;
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let arrived = Instant::now();
        match response.status {
            304 => continue,
            200 => {}
            status => {
                board.error(format!(
                    "{name}: long-poll answered {status}: {}",
                    String::from_utf8_lossy(&response.body).trim()
                ));
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        match serde_json::from_slice::<Watched>(&response.body) {
            Ok(snapshot) => {
                board.record(
                    watcher,
                    arrived,
                    snapshot.version,
                    canary_marker(&snapshot),
                    response.body.len(),
                );
                version = snapshot.version;
                let ack = AckRequest {
                    version,
                    accepted: true,
                    error: None,
                };
                let body = serde_json::to_vec(&ack).expect("AckRequest serializes");
                let path = format!("/v1/proxies/{name}/ack");
                match c.round_trip(&request(
                    "POST",
                    &path,
                    &host,
                    Some(("application/json", &body)),
                )) {
                    Ok(r) if (200..300).contains(&r.status) => {}
                    Ok(r) => board.error(format!("{name}: ack answered {}", r.status)),
                    Err(e) => {
                        board.error(format!("{name}: ack: {e}"));
                        conn = None;
                    }
                }
            }
            Err(e) => board.error(format!("{name}: snapshot is not valid JSON: {e}")),
        }
    }
}

/// Re-announce every live sidecar each `heartbeat`, as mesh-proxy does.
fn heartbeat(config: &ControlConfig, stop: &AtomicBool, board: &Board) {
    let host = config.control.to_string();
    let bodies: Vec<(String, Vec<u8>)> = (0..config.proxies)
        .map(|i| {
            let body = serde_json::to_vec(&announce(i, config.services)).expect("serializes");
            (format!("/v1/proxies/{}", instance(i)), body)
        })
        .collect();
    let mut conn: Option<Conn> = None;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        for (path, body) in &bodies {
            let result = match conn.as_mut() {
                Some(c) => c.round_trip(&request(
                    "PUT",
                    path,
                    &host,
                    Some(("application/json", body)),
                )),
                None => Conn::connect(config.control, Duration::from_secs(5)).and_then(|mut c| {
                    let r = c.round_trip(&request(
                        "PUT",
                        path,
                        &host,
                        Some(("application/json", body)),
                    ));
                    conn = Some(c);
                    r
                }),
            };
            match result {
                Ok(r) if (200..300).contains(&r.status) => {}
                Ok(r) => board.error(format!("heartbeat {path} answered {}", r.status)),
                Err(e) => {
                    board.error(format!("heartbeat {path}: {e}"));
                    conn = None;
                }
            }
        }
        next += config.heartbeat;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
    }
}

fn expect_2xx(response: &Response, what: &str) -> anyhow::Result<()> {
    if (200..300).contains(&response.status) {
        return Ok(());
    }
    bail!(
        "{what} answered HTTP {}: {}",
        response.status,
        String::from_utf8_lossy(&response.body).trim()
    )
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_static_snapshot_routes_upstream_8080_to_the_upstream() {
        let snapshot = static_snapshot("c-1", "127.0.0.1:9999".parse().unwrap());
        let json = serde_json::to_string(&snapshot).unwrap();
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert!(
            back.virtual_hosts[0]
                .domains
                .contains(&"upstream:8080".to_string())
        );
        assert_eq!(back.clusters[0].endpoints[0].address, "127.0.0.1:9999");
        assert_eq!(
            back.virtual_hosts[0].routes[0].destinations[0].cluster,
            back.clusters[0].name
        );
    }

    #[test]
    fn neighbouring_applies_never_share_a_marker_and_weights_sum_to_100() {
        for k in 0..500 {
            assert_ne!(marker(k), marker(k + 1));
            let w = marker(k);
            assert!((1..=98).contains(&w));
            assert!(canary_yaml(w).contains(&format!("weight: {}", 100 - w)));
        }
    }

    #[test]
    fn every_service_gets_both_versions() {
        let services = 10;
        let versions: Vec<String> = (0..40)
            .map(|i| announce(i, services))
            .filter(|a| a.service == "bench-svc-3")
            .map(|a| a.version)
            .collect();
        assert_eq!(versions, ["v1", "v2", "v1", "v2"]);
    }

    #[test]
    fn the_marker_is_read_from_the_canary_route() {
        let route = |cluster: &str, weight| Destination {
            cluster: cluster.into(),
            weight,
        };
        let snapshot = Snapshot {
            version: 3,
            virtual_hosts: vec![
                VirtualHost {
                    name: "other".into(),
                    domains: vec!["bench-svc-1".into()],
                    routes: vec![HttpRoute {
                        destinations: vec![route("bench-svc-1|v1", 7)],
                        ..Default::default()
                    }],
                },
                VirtualHost {
                    name: "canary".into(),
                    domains: vec!["bench-svc-0".into(), "bench-svc-0:8080".into()],
                    routes: vec![HttpRoute {
                        destinations: vec![
                            route("bench-svc-0|v2", 60),
                            route("bench-svc-0|v1", 40),
                        ],
                        ..Default::default()
                    }],
                },
            ],
            ..Default::default()
        };
        // As a watcher gets it: the JSON the control plane serves.
        let body = serde_json::to_vec(&snapshot).unwrap();
        let watched: Watched = serde_json::from_slice(&body).unwrap();
        assert_eq!(watched.version, 3);
        assert_eq!(canary_marker(&watched), Some(40));
        let body = serde_json::to_vec(&Snapshot::default()).unwrap();
        let without: Watched = serde_json::from_slice(&body).unwrap();
        assert_eq!(canary_marker(&without), None);
    }
}
