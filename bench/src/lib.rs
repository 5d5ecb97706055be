//! micromesh's benchmark helpers, driven by `bench/bench.py` (run it through
//! `scripts/bench.sh`).
//!
//! The harness compares the sidecar with no proxy, nginx, HAProxy and Envoy.
//! Throughput comes from wrk; everything that needs precise timing lives here:
//!
//! - [`load`]: an open-loop load generator that charges stalls to every
//!   request they delay (coordinated-omission correction, as wrk2 does);
//! - [`control`]: 100 simulated sidecars long-polling the control plane, and
//!   the time from `apply` until each of them holds the new snapshot;
//! - [`http`]: the few lines of HTTP/1.1 both need;
//! - [`stats`]: percentiles, and CPU and memory from /proc.

pub mod control;
pub mod http;
pub mod load;
pub mod stats;
