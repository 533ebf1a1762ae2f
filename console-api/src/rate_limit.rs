//! Fixed-window rate limits kept in memory: per client address on the authentication
//! endpoints (slows password guessing), per tenant on everything authenticated.
//!
//! In-memory means per console replica; with N replicas the effective limit is N times
//! the configured one. That is acceptable for abuse protection; billing-grade limits
//! would need the database.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `limit` hits per `window` per key. `limit == 0` disables the limiter.
pub struct RateLimiter<K> {
    limit: u32,
    window: Duration,
    windows: Mutex<HashMap<K, (Instant, u32)>>,
}

/// Past this many keys, expired windows are swept on the next hit.
const SWEEP_AT: usize = 10_000;

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// `Ok(())` if allowed, else `Err(seconds until the window resets)`.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    pub fn check_at(&self, key: &K, now: Instant) -> Result<(), u64> {
        if self.limit == 0 {
            return Ok(());
        }
        // A poisoned lock only means another request panicked mid-update; the map is
        // still usable.
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if windows.len() >= SWEEP_AT {
            let window = self.window;
            windows.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = windows.entry(key.clone()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            let reset = self.window.saturating_sub(now.duration_since(entry.0));
            return Err(reset.as_secs().max(1));
        }
        entry.1 += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key_and_resets_after_the_window() {
        let limiter = RateLimiter::new(2, Duration::from_secs(60));
        let start = Instant::now();
        assert!(limiter.check_at(&"a", start).is_ok());
        assert!(limiter.check_at(&"a", start).is_ok());
        let retry = limiter.check_at(&"a", start).unwrap_err();
        assert!((1..=60).contains(&retry));
        assert!(limiter.check_at(&"b", start).is_ok());
        assert!(
            limiter
                .check_at(&"a", start + Duration::from_secs(61))
                .is_ok()
        );
    }

    #[test]
    fn zero_disables() {
        let limiter = RateLimiter::new(0, Duration::from_secs(1));
        for _ in 0..100 {
            assert!(limiter.check(&1).is_ok());
        }
    }
}
