//! Giving memory back after a crowd of connections has left.
//!
//! Every open client connection holds about 22 KB of the proxy's memory,
//! nearly all of it hyper's (measured with valgrind's massif on a release
//! build, 500 idle keep-alive connections): the HTTP/1.1 read buffer (8 KiB,
//! re-reserved as 16 KiB once the first request's head is split off it), the
//! write buffer (8 KiB), the connection's state (5 KiB), and the task that
//! runs it (3 KiB). hyper 1 has no server option to shrink them while a
//! connection idles (its `max_buf_size` is a ceiling, `listener.rs`), so the
//! idle connections themselves are bounded by the connection cap and the
//! idle timeout.
//!
//! What this file fixes is the memory *after* they close. Rust frees all of
//! it, but glibc's malloc keeps freed memory for the next allocation and
//! returns to the kernel only a free top of its heap. The buffers of a
//! thousand connections sit between longer-lived allocations, so the top is
//! rarely free: 2,000 idle connections took a sidecar from 7 to 51 MB, and it
//! stayed at 51 MB after every client had gone (glibc's
//! `M_TRIM_THRESHOLD` and `M_ARENA_MAX` tunables changed nothing; a second
//! crowd grew it to 66 MB). `malloc_trim(0)` walks the free memory of every
//! heap and hands each whole free page back to the kernel (`madvise`), which
//! took the same sidecar back to within a megabyte of where it started
//! (8.2 MB before, 55.9 MB held, 8.7 MB after).
//!
//! [`ConnectionCount`] decides when: each time the open connections (all
//! listeners together) have fallen to half of their high-water mark since
//! the last trim, with at least [`TRIM_AFTER`] gone, and once more when the
//! last one closes after at least [`TRIM_WHEN_ALL_GONE`] were open at once.
//! A crowd of 2,000 leaving costs six trims (2,000 -> 1,000 -> 500 ... ->
//! 61 -> 0), each under a millisecond on a release build; a sidecar whose
//! few keep-alive connections come and go never trims. Envoy does the same
//! with tcmalloc (`ReleaseFreeMemory`, its overload manager's `shrink_heap`
//! action). The trim runs on the task of the connection that closed, once
//! its socket is closed.
//!
//! On other platforms (macOS, musl) there is no `malloc_trim`; the count is
//! kept and nothing is trimmed.

use std::sync::{Mutex, MutexGuard};

/// Fewer connections than this gone since the high-water mark are not
/// worth a trim: at about 22 KB each, 64 connections hold 1.4 MB, and a
/// sidecar's everyday keep-alive connections come and go in smaller numbers.
pub const TRIM_AFTER: usize = 64;

/// When the last connection closes, a trim if at least this many were open
/// at once since the last one: a burst of large uploads holds far more per
/// connection (64 KiB buffers each way, `listener.rs` and `body.rs`) than
/// an idle one, and fifty of them left 8 MB behind.
pub const TRIM_WHEN_ALL_GONE: usize = 32;

// === impl ConnectionCount ===

/// The open connections and their high-water mark since the last trim.
#[derive(Debug, Default)]
pub struct ConnectionCount {
    open: usize,
    high: usize,
}

impl ConnectionCount {
    /// A connection was accepted.
    pub fn opened(&mut self) {
        self.open += 1;
        self.high = self.high.max(self.open);
    }

    /// A connection closed: `true` when its memory and that of the others
    /// gone since the high-water mark should be given back now.
    pub fn closed(&mut self) -> bool {
        self.open = self.open.saturating_sub(1);
        let gone = self.high - self.open;
        let crowd_halved = gone >= TRIM_AFTER && self.open <= self.high / 2;
        let all_gone = self.open == 0 && self.high >= TRIM_WHEN_ALL_GONE;
        if crowd_halved || all_gone {
            // Start over from here: the next trim waits for half of what
            // is open now to go.
            self.high = self.open;
            true
        } else {
            false
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open
    }
}

/// The process's one count, shared by every listener.
static CONNECTIONS: Mutex<ConnectionCount> = Mutex::new(ConnectionCount { open: 0, high: 0 });

fn connections() -> MutexGuard<'static, ConnectionCount> {
    // The count stays consistent even if a holder panicked (it only adds
    // and subtracts), so a poisoned lock is used as it is.
    CONNECTIONS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// === impl Connection ===

/// One open client connection, counted while it lives; held by the
/// connection's task (`listener.rs`), and when it drops the count may call
/// for a trim.
#[derive(Debug)]
pub struct Connection(());

impl Connection {
    /// Count a connection just accepted.
    pub fn open() -> Connection {
        connections().opened();
        Connection(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let (trim, open) = {
            let mut count = connections();
            (count.closed(), count.open())
        };
        if trim {
            let start = std::time::Instant::now();
            let released = release_free_memory();
            tracing::debug!(open, released, took = ?start.elapsed(), "connections closed: malloc_trim");
        }
    }
}

// === release_free_memory ===

/// Hand the allocator's free pages back to the kernel; `true` when some
/// memory was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    unsafe extern "C" {
        // glibc's <malloc.h>: int malloc_trim(size_t pad);
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointer and has no precondition; glibc
    // locks each arena while it walks it, so it is safe to call from any
    // thread while others allocate (glibc's manual marks it MT-Safe). A pad
    // of 0 keeps nothing spare at the top of the heap.
    unsafe { malloc_trim(0) == 1 }
}

/// No `malloc_trim` outside glibc: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crowd_leaving_trims_at_each_halving_and_a_few_connections_never_do() {
        let mut count = ConnectionCount::default();
        for _ in 0..2_000 {
            count.opened();
        }
        let mut trims_at = Vec::new();
        for _ in 0..2_000 {
            if count.closed() {
                trims_at.push(count.open());
            }
        }
        // Halvings from 2,000 (the one after 125 waits for TRIM_AFTER, 64,
        // to have gone), and the last when every connection has gone.
        assert_eq!(
            trims_at,
            vec![1_000, 500, 250, 125, 61, 0],
            "trims as the crowd leaves"
        );

        // A burst of fifty (uploads, say): one trim once all have gone.
        for _ in 0..50 {
            count.opened();
        }
        let trims: Vec<bool> = (0..50).map(|_| count.closed()).collect();
        assert_eq!(trims.iter().filter(|t| **t).count(), 1);
        assert!(trims[49], "the trim comes with the last to close");
        assert_eq!(count.open(), 0);

        // Everyday churn: a handful of keep-alive connections come and go.
        for _ in 0..10_000 {
            for _ in 0..20 {
                count.opened();
            }
            for _ in 0..20 {
                assert!(!count.closed(), "20 connections are not worth a trim");
            }
        }
    }

    #[test]
    fn the_high_water_mark_restarts_after_a_trim() {
        let mut count = ConnectionCount::default();
        for _ in 0..600 {
            count.opened();
        }
        let trims = (0..300).filter(|_| count.closed()).count();
        assert_eq!(trims, 1, "600 -> 300 is one halving");
        // 300 open; 300 more come and go: 600 -> 300 again, one more trim.
        for _ in 0..300 {
            count.opened();
        }
        let trims = (0..300).filter(|_| count.closed()).count();
        assert_eq!(trims, 1, "a second crowd is trimmed too");
    }

    #[test]
    fn trimming_is_safe_to_call_at_any_time() {
        // Whatever it finds to give back; it must not crash or corrupt the
        // heap that this test's own allocations still use.
        let kept: Vec<Vec<u8>> = (0..1_000).map(|i| vec![i as u8; 4096]).collect();
        drop(kept[..500].to_vec());
        release_free_memory();
        assert!(kept.iter().enumerate().all(|(i, v)| v[4095] == i as u8));
    }
}
