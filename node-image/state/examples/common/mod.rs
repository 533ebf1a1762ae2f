//! What the ledger examples share.

use std::time::Instant;

/// This thread's CPU time (wall time where `/proc` has no schedstat), so that a busy
/// shared machine skews a measured rate less than wall-clock time would.
pub struct Clock(Instant, Option<u64>);

fn cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Clock {
    pub fn start() -> Self {
        Self(Instant::now(), cpu_ns())
    }

    pub fn seconds(&self) -> f64 {
        match (self.1, cpu_ns()) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9,
            _ => self.0.elapsed().as_secs_f64(),
        }
    }
}
