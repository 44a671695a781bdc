//! The credential lookups' cache: entries live for a TTL (a new or revoked
//! credential takes effect within it), and the map is emptied when it grows
//! past a bound, so a flood of distinct junk credentials cannot grow memory.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

/// Entries kept before the cache is emptied.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug)]
pub(crate) struct TtlCache<V> {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> TtlCache<V> {
    /// A zero `ttl` caches nothing.
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The value stored for `key` less than a TTL ago.
    pub(crate) fn get(&self, key: &str) -> Option<V> {
        lock(&self.entries)
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, value)| value.clone())
    }

    pub(crate) fn insert(&self, key: String, value: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), value));
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_a_zero_ttl_caches_nothing() {
        let cache = TtlCache::new(Duration::from_secs(60));
        cache.insert("a".into(), 1);
        assert_eq!(cache.get("a"), Some(1));
        assert_eq!(cache.get("b"), None);
        let off = TtlCache::new(Duration::ZERO);
        off.insert("a".into(), 1);
        assert_eq!(off.get("a"), None);
    }
}
