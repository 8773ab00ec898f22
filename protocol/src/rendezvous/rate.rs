//! Per-peer rate limits (token buckets) and a throttle for logging bad input.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use super::Millis;

/// A rate: up to `burst` at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub burst: u32,
    pub per_second: u32,
}

impl RateLimit {
    pub const fn new(burst: u32, per_second: u32) -> Self {
        Self { burst, per_second }
    }
}

/// A token bucket in thousandths of a token, so refills need no floating point. 16 bytes: one per
/// connected peer is cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    milli_tokens: u64,
    updated: Millis,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: RateLimit, now: Millis) -> Self {
        Self {
            milli_tokens: u64::from(limit.burst) * 1000,
            updated: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, limit: RateLimit, now: Millis) -> bool {
        let elapsed = now.saturating_sub(self.updated);
        // Tokens per ms × 1000 = per_second: one millisecond refills `per_second` milli-tokens.
        let refill = elapsed.saturating_mul(u64::from(limit.per_second));
        let cap = u64::from(limit.burst) * 1000;
        self.milli_tokens = self.milli_tokens.saturating_add(refill).min(cap);
        self.updated = self.updated.max(now);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

/// Says yes to a key at most once per interval: "logged at most once per peer per minute".
#[derive(Debug, Clone)]
pub struct LogThrottle<K> {
    interval: Millis,
    last: HashMap<K, Millis>,
    max_keys: usize,
}

impl<K: Eq + Hash + Clone> LogThrottle<K> {
    /// Remembers at most `max_keys` keys; beyond that, stale keys are dropped first and, failing
    /// that, the key is simply not logged (bounded memory under a flood of distinct peers).
    pub fn new(interval: Duration, max_keys: usize) -> Self {
        Self {
            interval: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            last: HashMap::new(),
            max_keys,
        }
    }

    /// True if `key` has not been allowed within the interval (and records it now).
    pub fn allow(&mut self, key: &K, now: Millis) -> bool {
        if let Some(last) = self.last.get_mut(key) {
            if now.saturating_sub(*last) < self.interval {
                return false;
            }
            *last = now;
            return true;
        }
        if self.last.len() >= self.max_keys {
            self.prune(now);
            if self.last.len() >= self.max_keys {
                return false;
            }
        }
        self.last.insert(key.clone(), now);
        true
    }

    /// Forgets keys whose interval has passed.
    pub fn prune(&mut self, now: Millis) {
        let interval = self.interval;
        self.last
            .retain(|_, last| now.saturating_sub(*last) < interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limit = RateLimit::new(3, 10);
        let mut bucket = TokenBucket::new(limit, 0);
        assert!((0..3).all(|_| bucket.try_take(limit, 0)));
        assert!(!bucket.try_take(limit, 0));
        // 10 per second: one token every 100 ms.
        assert!(!bucket.try_take(limit, 99));
        assert!(bucket.try_take(limit, 100));
        assert!(!bucket.try_take(limit, 100));
        // A long pause refills only up to the burst.
        assert!((0..3).all(|_| bucket.try_take(limit, 60_000)));
        assert!(!bucket.try_take(limit, 60_000));
    }

    #[test]
    fn a_clock_stepping_back_does_not_mint_tokens() {
        let limit = RateLimit::new(1, 1);
        let mut bucket = TokenBucket::new(limit, 10_000);
        assert!(bucket.try_take(limit, 10_000));
        assert!(!bucket.try_take(limit, 5_000));
        assert!(!bucket.try_take(limit, 10_500));
        assert!(bucket.try_take(limit, 11_000));
    }

    #[test]
    fn the_log_throttle_allows_once_per_interval_per_key_with_bounded_memory() {
        let mut t = LogThrottle::new(Duration::from_secs(60), 2);
        assert!(t.allow(&"a", 0));
        assert!(!t.allow(&"a", 59_999));
        assert!(t.allow(&"a", 60_000));
        assert!(t.allow(&"b", 60_000));
        // Full, and nobody is stale yet: a third peer is not logged.
        assert!(!t.allow(&"c", 60_001));
        // Once the others are stale they make room.
        assert!(t.allow(&"c", 200_000));
    }
}
