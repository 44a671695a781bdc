//! Abuse limits enforced by the security layer: a token bucket per caller
//! (requests per second with a burst) and a bound on concurrent streams per
//! caller. Keys are caller names, or the peer address for anonymous callers
//! in open mode. Both maps are bounded: idle entries are dropped when they
//! grow large.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Entries kept before idle ones are pruned.
const MAX_KEYS: usize = 10_000;

/// Per-key token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl RateLimiter {
    /// `per_second` requests on average, up to `burst` at once.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `key`'s bucket; false when it is empty.
    pub fn try_acquire(&self, key: &str) -> bool {
        self.try_acquire_at(key, Instant::now())
    }

    /// Whether `key` could take a token now, without taking it.
    pub fn has_capacity(&self, key: &str) -> bool {
        let now = Instant::now();
        let buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        buckets
            .get(key)
            .is_none_or(|b| refill(*b, now, self.per_second, self.burst).tokens >= 1.0)
    }

    fn try_acquire_at(&self, key: &str, now: Instant) -> bool {
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| refill(*b, now, per_second, burst).tokens < burst);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            refilled_at: now,
        });
        *bucket = refill(*bucket, now, self.per_second, self.burst);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn refill(bucket: Bucket, now: Instant, per_second: f64, burst: f64) -> Bucket {
    let elapsed = now
        .saturating_duration_since(bucket.refilled_at)
        .as_secs_f64();
    Bucket {
        tokens: (bucket.tokens + elapsed * per_second).min(burst),
        refilled_at: now,
    }
}

/// Per-key bound on concurrent streams. A permit is held for the life of a
/// stream (inside its response body) and released when that is dropped.
#[derive(Debug)]
pub struct StreamLimiter {
    max_per_key: usize,
    semaphores: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl StreamLimiter {
    pub fn new(max_per_key: usize) -> Self {
        Self {
            max_per_key,
            semaphores: Mutex::new(HashMap::new()),
        }
    }

    /// The bound per key.
    pub fn limit(&self) -> usize {
        self.max_per_key
    }

    /// A permit for one more stream of `key`, or None at the bound.
    pub fn try_acquire(&self, key: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut semaphores = self
                .semaphores
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if semaphores.len() >= MAX_KEYS && !semaphores.contains_key(key) {
                let max = self.max_per_key;
                semaphores.retain(|_, s| s.available_permits() < max);
            }
            semaphores
                .entry(key.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.max_per_key)))
                .clone()
        };
        semaphore.try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn buckets_allow_a_burst_then_refill_at_the_rate() {
        let limiter = RateLimiter::new(10.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.try_acquire_at("a", t0));
        }
        assert!(!limiter.try_acquire_at("a", t0));
        assert!(
            limiter.try_acquire_at("b", t0),
            "keys have their own bucket"
        );
        let later = t0 + Duration::from_millis(100);
        assert!(limiter.try_acquire_at("a", later));
        assert!(!limiter.try_acquire_at("a", later));
    }

    #[test]
    fn stream_permits_come_back_when_dropped() {
        let limiter = StreamLimiter::new(2);
        let a = limiter.try_acquire("x").unwrap();
        let _b = limiter.try_acquire("x").unwrap();
        assert!(limiter.try_acquire("x").is_none());
        assert!(limiter.try_acquire("y").is_some());
        drop(a);
        assert!(limiter.try_acquire("x").is_some());
    }
}
