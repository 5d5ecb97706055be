//! An open-loop load generator with coordinated-omission correction (wrk2's model).
//!
//! A closed-loop client (wrk, ab, hey) sends the next request when the
//! previous answer arrives. If the proxy stalls for 50 ms, the client stalls
//! with it and simply does not send the requests a real user population
//! would have sent meanwhile: the stall shows up as *one* slow sample instead
//! of the fifty that real users would have seen. Gil Tene named this
//! "coordinated omission".
//!
//! Here every request has an *intended* send time fixed in advance
//! (`rate` requests per second, spread over `connections` keep-alive
//! connections), and its latency is measured from that intended time, not
//! from when it actually left. A request that had to wait behind a stalled
//! one is charged for the wait, exactly as wrk2 and oha's
//! `--latency-correction` do. The uncorrected service time is reported next
//! to it, so the size of the correction is visible.
//!
//! Each connection gets its own thread with blocking I/O. Timers matter at
//! this scale: `thread::sleep` wakes up to ~50 µs late (the kernel's default
//! timer slack, which we lower to 1 ns) plus the scheduler's wake-up latency
//! (~20 µs in a VM), so the thread sleeps until `spin` before the intended
//! time and spins the rest. That costs a little CPU on the load generator's
//! core (~30 µs a request) and keeps the send times honest: the report's
//! `send_lag` says how late requests actually left (measured here on a
//! 2-core VM: p50 21 µs without the spin, 0.07 µs with 50 µs of it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::http::{Conn, request};
use crate::stats::Percentiles;

/// What to send, how fast, for how long.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub addr: SocketAddr,
    /// `Host` header: `upstream:8080` routes through a sidecar's outbound listener.
    pub host: String,
    pub path: String,
    /// Requests per second, over all connections.
    pub rate: f64,
    pub connections: usize,
    /// Requests before this are sent but not recorded (connections and
    /// pools warm up, caches fill).
    pub warmup: Duration,
    /// How long the recorded part lasts.
    pub duration: Duration,
    /// Spin this long before each send instead of sleeping (see module docs).
    pub spin: Duration,
    /// A request that takes longer than this fails.
    pub timeout: Duration,
}

/// The outcome of one run; printed as JSON for the harness.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub target_rate: f64,
    /// Recorded responses per second of recorded time.
    pub achieved_rate: f64,
    /// Latency from the intended send time: what a user would see.
    pub corrected: Percentiles,
    /// Latency from the actual send time: the server's service time only.
    pub uncorrected: Percentiles,
    /// How late requests left compared with their intended time: the
    /// client's own timer error plus queueing behind slow responses. Its p50
    /// should be a few microseconds; if not, the load generator's core is
    /// too busy for the numbers to mean much.
    pub send_lag: Percentiles,
    /// Responses that were not 2xx.
    pub non_2xx: u64,
    /// Connect, read and write failures (each also costs a reconnect).
    pub errors: u64,
    /// Requests the schedule asked for but that could not be sent before the
    /// end: the target rate was more than the server could take.
    pub unsent: u64,
    /// New connections opened after the first (servers that close
    /// keep-alive connections, or errors).
    pub reconnects: u64,
    /// First error seen, to say what went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// What one connection's thread measured.
#[derive(Default)]
struct ConnOutcome {
    corrected: Vec<u64>,
    uncorrected: Vec<u64>,
    send_lag: Vec<u64>,
    non_2xx: u64,
    errors: u64,
    unsent: u64,
    reconnects: u64,
    first_error: Option<String>,
}

/// How far past the end a connection may still catch up on requests that
/// were due before it. A thread woken a little late for its last request
/// should send it (and be charged the lateness); only a real backlog is
/// reported as `unsent`.
const END_GRACE: Duration = Duration::from_millis(200);

/// Run the schedule and report; blocks for `warmup + duration`.
pub fn run(config: &LoadConfig) -> LoadReport {
    assert!(config.rate > 0.0 && config.connections > 0);
    let config = Arc::new(config.clone());
    let request = Arc::new(request("GET", &config.path, &config.host, None));
    // Linux lets a sleeping thread wake up to `timerslack_ns` (50 µs by
    // default) late, to batch wake-ups and save power. Ask for 1 ns: threads
    // inherit it from their creator, so every connection thread gets it.
    // Best effort: an old kernel without the file keeps the default and the
    // spin below covers the difference.
    let _ = std::fs::write("/proc/self/timerslack_ns", "1");
    // Every connection counts from the same instant, so their schedules
    // interleave: connection c sends at start + (c + k * connections) / rate.
    let start = Instant::now() + Duration::from_millis(20);
    let threads: Vec<_> = (0..config.connections)
        .map(|index| {
            let config = config.clone();
            let request = request.clone();
            thread::spawn(move || run_connection(&config, &request, index, start))
        })
        .collect();

    let mut all = ConnOutcome::default();
    for thread in threads {
        // A connection thread only panics on a bug in this file.
        let outcome = thread.join().expect("load thread panicked");
        all.corrected.extend(outcome.corrected);
        all.uncorrected.extend(outcome.uncorrected);
        all.send_lag.extend(outcome.send_lag);
        all.non_2xx += outcome.non_2xx;
        all.errors += outcome.errors;
        all.unsent += outcome.unsent;
        all.reconnects += outcome.reconnects;
        all.first_error = all.first_error.or(outcome.first_error);
    }
    LoadReport {
        target_rate: config.rate,
        achieved_rate: all.corrected.len() as f64 / config.duration.as_secs_f64(),
        corrected: Percentiles::of(&mut all.corrected),
        uncorrected: Percentiles::of(&mut all.uncorrected),
        send_lag: Percentiles::of(&mut all.send_lag),
        non_2xx: all.non_2xx,
        errors: all.errors,
        unsent: all.unsent,
        reconnects: all.reconnects,
        first_error: all.first_error,
    }
}

/// The intended send time of request `k` on connection `index`.
pub fn intended(start: Instant, rate: f64, connections: usize, index: usize, k: u64) -> Instant {
    let slot = index as f64 + k as f64 * connections as f64;
    start + Duration::from_secs_f64(slot / rate)
}

fn run_connection(
    config: &LoadConfig,
    request: &[u8],
    index: usize,
    start: Instant,
) -> ConnOutcome {
    let record_from = start + config.warmup;
    let end = record_from + config.duration;
    let mut out = ConnOutcome::default();
    let mut conn: Option<Conn> = None;
    let mut opened = 0u64;

    for k in 0.. {
        let due = intended(start, config.rate, config.connections, index, k);
        if due >= end {
            break;
        }
        let now = Instant::now();
        if now >= end + END_GRACE {
            // Still behind schedule well after the run is over: the server
            // cannot take this rate, and the rest are never sent (wrk2 drops
            // them the same way); the report says how many.
            let remaining = (end - due).as_secs_f64() * config.rate / config.connections as f64;
            out.unsent += remaining.ceil() as u64;
            break;
        }
        wait_until(due, config.spin);

        let sent = Instant::now();
        let result = match conn.as_mut() {
            Some(c) => c.round_trip(request),
            None => Conn::connect(config.addr, config.timeout).and_then(|mut c| {
                opened += 1;
                let response = c.round_trip(request);
                conn = Some(c);
                response
            }),
        };
        let done = Instant::now();
        let recorded = due >= record_from;
        match result {
            Ok(response) => {
                if recorded {
                    out.corrected.push(nanos(done - due));
                    out.uncorrected.push(nanos(done - sent));
                    out.send_lag
                        .push(nanos(sent.saturating_duration_since(due)));
                    if !(200..300).contains(&response.status) {
                        out.non_2xx += 1;
                        out.first_error.get_or_insert_with(|| {
                            format!(
                                "HTTP {} from {}: {}",
                                response.status,
                                config.addr,
                                String::from_utf8_lossy(&response.body).trim()
                            )
                        });
                    }
                }
                if response.close {
                    conn = None;
                }
            }
            Err(e) => {
                if recorded {
                    out.errors += 1;
                }
                out.first_error
                    .get_or_insert_with(|| format!("request to {} failed: {e}", config.addr));
                conn = None;
            }
        }
    }
    out.reconnects = opened.saturating_sub(1);
    out
}

/// Sleep until shortly before `due`, then spin until it.
fn wait_until(due: Instant, spin: Duration) {
    let now = Instant::now();
    if due <= now {
        return;
    }
    let left = due - now;
    if left > spin {
        thread::sleep(left - spin);
    }
    while Instant::now() < due {
        std::hint::spin_loop();
    }
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A keep-alive server that answers every request with 200, except that
    /// it freezes once for `stall` on request number `stall_at`.
    fn server(stall_at: u64, stall: Duration) -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        thread::spawn(move || {
            for socket in listener.incoming() {
                let mut socket = socket.unwrap();
                let counter = counter.clone();
                thread::spawn(move || {
                    socket.set_nodelay(true).unwrap();
                    let mut buf = [0u8; 4096];
                    let mut pending = Vec::new();
                    loop {
                        let n = match socket.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        pending.extend_from_slice(&buf[..n]);
                        // Requests have no body: each ends with a blank line.
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            let number = counter.fetch_add(1, Ordering::SeqCst);
                            if number == stall_at {
                                thread::sleep(stall);
                            }
                            if socket
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, served)
    }

    fn config(addr: SocketAddr, rate: f64, connections: usize) -> LoadConfig {
        LoadConfig {
            addr,
            host: "upstream:8080".into(),
            path: "/".into(),
            rate,
            connections,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(1_000),
            spin: Duration::from_micros(20),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_schedule_interleaves_connections_evenly() {
        let start = Instant::now();
        let t = |index, k| intended(start, 1_000.0, 4, index, k) - start;
        assert_eq!(t(0, 0), Duration::ZERO);
        assert_eq!(t(1, 0), Duration::from_millis(1));
        assert_eq!(t(3, 0), Duration::from_millis(3));
        assert_eq!(t(0, 1), Duration::from_millis(4));
        assert_eq!(t(2, 5), Duration::from_millis(22));
    }

    #[test]
    fn it_sends_the_scheduled_number_of_requests() {
        let (addr, served) = server(u64::MAX, Duration::ZERO);
        let report = run(&config(addr, 500.0, 4));
        // 0.1 s warmup + 1 s recorded at 500/s: 550 requests, 500 recorded.
        // Every one is either sent or reported unsent (which only a machine
        // too busy to run the client for 200 ms would cause).
        assert_eq!(served.load(Ordering::SeqCst) + report.unsent, 550);
        assert_eq!(report.corrected.count as u64 + report.unsent, 500);
        assert!(report.unsent < 50, "{report:?}");
        assert_eq!(report.errors + report.non_2xx, 0);
        assert_eq!(report.reconnects, 0, "keep-alive connections are reused");
    }

    #[test]
    fn a_stall_is_charged_to_every_request_scheduled_during_it() {
        // One connection at 200 req/s (one request every 5 ms). The server
        // freezes for 200 ms on a recorded request: about 40 requests were
        // due during the freeze. A closed-loop client would record one slow
        // request; the corrected latency must show that about 40 of them,
        // 8% of the run, waited, while the service time shows one.
        let stall = Duration::from_millis(200);
        let (addr, _) = server(100, stall);
        let report = run(&config(addr, 200.0, 1));
        assert_eq!(report.corrected.count, 200);
        assert!(
            report.corrected.p90_us > 50_000.0,
            "corrected p90 should include the stall: {:?}",
            report.corrected
        );
        assert!(report.corrected.max_us >= stall.as_micros() as f64);
        assert!(
            report.uncorrected.p90_us < 50_000.0,
            "the service time of all but one request is short: {:?}",
            report.uncorrected
        );
    }

    #[test]
    fn a_refused_connection_counts_as_errors_with_a_reason() {
        // Bind and drop: nothing listens on this port any more.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut config = config(addr, 100.0, 1);
        config.duration = Duration::from_millis(200);
        let report = run(&config);
        assert!(report.errors > 0);
        assert!(report.first_error.unwrap().contains("failed"));
    }
}
