//! Percentiles of recorded latencies, and what the kernel says a process costs.
//!
//! Latencies are kept whole (one `u64` of nanoseconds per request) and sorted
//! at the end: a 10-second run at 2,000 req/s is 20,000 numbers, so there is
//! no need for HdrHistogram's bucketing and its rounding.
//!
//! CPU and memory come from `/proc`, the same numbers `top` shows:
//! `/proc/<pid>/stat` fields 14 and 15 (utime, stime: CPU time of every
//! thread of the process, in clock ticks) and `/proc/<pid>/status`
//! (`VmRSS`: resident memory now, `VmHWM`: its peak).

use std::fs;
use std::time::Duration;

use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Percentiles {
    /// Summarise `samples` (nanoseconds); they are sorted in place.
    pub fn of(samples: &mut [u64]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let us = |ns: u64| ns as f64 / 1_000.0;
        let sum: u128 = samples.iter().map(|&s| s as u128).sum();
        Percentiles {
            count: samples.len(),
            p50_us: us(nearest_rank(samples, 50.0)),
            p90_us: us(nearest_rank(samples, 90.0)),
            p99_us: us(nearest_rank(samples, 99.0)),
            p999_us: us(nearest_rank(samples, 99.9)),
            max_us: us(*samples.last().expect("not empty")),
            mean_us: sum as f64 / samples.len() as f64 / 1_000.0,
        }
    }
}

/// The nearest-rank percentile of sorted, non-empty `sorted`: the smallest
/// sample that at least `p`% of the samples are less than or equal to.
pub fn nearest_rank(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// CPU time (user + system, every thread) a process has used so far.
pub fn cpu_time(pid: u32) -> std::io::Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces:
    // count fields from the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| invalid(pid, "no ')' in stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state), so utime (14) is index 11, stime (15) index 12.
    let ticks = |i: usize| -> std::io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| invalid(pid, "utime/stime"))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(
        total as f64 / clock_ticks_per_second(),
    ))
}

/// `VmRSS` and `VmHWM` of a process, in kB.
pub fn memory_kb(pid: u32) -> std::io::Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> std::io::Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| invalid(pid, name))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// `USER_HZ`. Linux has reported CPU times in /proc in units of 1/100 s on
/// every architecture for decades; `getconf CLK_TCK` prints it.
fn clock_ticks_per_second() -> f64 {
    100.0
}

fn invalid(pid: u32, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("cannot read {what} of process {pid} from /proc"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_matches_the_textbook_definition() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&sorted, 50.0), 50);
        assert_eq!(nearest_rank(&sorted, 99.0), 99);
        assert_eq!(nearest_rank(&sorted, 99.9), 100);
        assert_eq!(nearest_rank(&[7], 0.0), 7);
    }

    #[test]
    fn percentiles_are_in_microseconds() {
        let mut samples = vec![3_000, 1_000, 2_000, 4_000];
        let p = Percentiles::of(&mut samples);
        assert_eq!(p.count, 4);
        assert_eq!(p.p50_us, 2.0);
        assert_eq!(p.max_us, 4.0);
        assert_eq!(p.mean_us, 2.5);
    }

    #[test]
    fn this_process_has_memory_and_a_cpu_clock() {
        let pid = std::process::id();
        let (rss, hwm) = memory_kb(pid).unwrap();
        assert!(rss > 0 && hwm >= rss, "rss {rss} kB, peak {hwm} kB");
        // Burn a little CPU so the clock has something to show.
        let before = cpu_time(pid).unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        std::hint::black_box(x);
        assert!(cpu_time(pid).unwrap() > before);
    }
}
