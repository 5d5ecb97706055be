//! `mesh-bench`: the timing-sensitive half of micromesh's benchmark harness.
//!
//! ```text
//! mesh-bench load --addr 127.0.0.1:15001 --host upstream:8080 --rate 1000 --duration 10
//! mesh-bench control --control 127.0.0.1:15010 --pid 1234 --proxies 100 --endpoints 1000
//! mesh-bench snapshot --upstream 127.0.0.1:8081 > snapshot.json
//! ```
//!
//! Each prints one JSON report on stdout; `bench/bench.py` runs them and
//! builds the table. See the module docs in `load.rs` and `control.rs` for
//! what is measured and why.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mesh_bench::{control, load};

#[derive(Parser)]
#[command(
    version,
    about = "micromesh benchmark helpers (driven by bench/bench.py)"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open-loop load at a fixed rate with coordinated-omission correction.
    Load {
        /// Where to send (a proxy's listener or the upstream itself).
        #[arg(long)]
        addr: SocketAddr,
        /// Host header; a sidecar routes by it.
        #[arg(long, default_value = "upstream:8080")]
        host: String,
        #[arg(long, default_value = "/")]
        path: String,
        /// Requests per second, over all connections.
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Seconds sent but not recorded, first.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Seconds recorded.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Microseconds to spin before each send instead of sleeping.
        #[arg(long, default_value_t = 50)]
        spin_us: u64,
    },
    /// Print a static proxy snapshot (JSON) that routes `upstream:8080` to
    /// `--upstream`: what mesh-proxy reads from MESH_SNAPSHOT_FILE when it
    /// runs without a control plane.
    Snapshot {
        /// The upstream's address, `127.0.0.1:PORT`.
        #[arg(long)]
        upstream: SocketAddr,
        /// The proxy instance the snapshot is for.
        #[arg(long, default_value = "bench-client-1")]
        instance: String,
    },
    /// Config propagation from `apply` to simulated proxies.
    Control {
        /// mesh-control's API address.
        #[arg(long)]
        control: SocketAddr,
        /// mesh-control's process id, for CPU and memory.
        #[arg(long)]
        pid: Option<u32>,
        #[arg(long, default_value_t = 100)]
        proxies: usize,
        #[arg(long, default_value_t = 1000)]
        endpoints: usize,
        #[arg(long, default_value_t = 100)]
        services: usize,
        #[arg(long, default_value_t = 20)]
        applies: usize,
        #[arg(long, default_value_t = mesh_api::xds::HEARTBEAT_INTERVAL_MS)]
        heartbeat_ms: u64,
        #[arg(long, default_value_t = 15_000)]
        wait_ms: u64,
        /// Seconds of idle (heartbeats only) to measure.
        #[arg(long, default_value_t = 3.0)]
        idle: f64,
        /// Seconds a change may take to reach every proxy before we give up.
        #[arg(long, default_value_t = 30.0)]
        deadline: f64,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Load {
            addr,
            host,
            path,
            rate,
            connections,
            warmup,
            duration,
            spin_us,
        } => {
            anyhow::ensure!(rate > 0.0, "--rate must be positive");
            anyhow::ensure!(connections > 0, "--connections must be at least 1");
            let report = load::run(&load::LoadConfig {
                addr,
                host,
                path,
                rate,
                connections,
                warmup: Duration::from_secs_f64(warmup),
                duration: Duration::from_secs_f64(duration),
                spin: Duration::from_micros(spin_us),
                timeout: Duration::from_secs(5),
            });
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Snapshot { upstream, instance } => {
            let snapshot = control::static_snapshot(&instance, upstream);
            println!("{}", serde_json::to_string_pretty(&snapshot)?);
        }
        Command::Control {
            control,
            pid,
            proxies,
            endpoints,
            services,
            applies,
            heartbeat_ms,
            wait_ms,
            idle,
            deadline,
        } => {
            let report = control::run(&control::ControlConfig {
                control,
                pid,
                proxies,
                endpoints,
                services,
                applies,
                heartbeat: Duration::from_millis(heartbeat_ms),
                wait: Duration::from_millis(wait_ms),
                idle: Duration::from_secs_f64(idle),
                deadline: Duration::from_secs_f64(deadline),
            })
            .with_context(|| format!("control-plane benchmark against {control}"))?;
            println!("{}", serde_json::to_string(&report)?);
        }
    }
    Ok(())
}
