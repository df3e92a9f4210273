//! L1: a bounded in-process cache (mini-moka) whose entries carry a version, so that a late write of an
//! older value (a slow reader filling after an invalidation) cannot replace a newer one.

use std::{
    hash::{BuildHasher, Hash},
    sync::Mutex,
    time::Duration,
};

use mini_moka::sync::{Cache, ConcurrentCacheExt};

/// A value and the version it was read or written at (0: read from PostgreSQL with no version known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<V> {
    pub version: i64,
    pub value: V,
}

const STRIPES: usize = 64;

/// An L1 cache of versioned values.
pub struct VersionedCache<K, V> {
    entries: Cache<K, Versioned<V>>,
    /// Serialises check-then-insert per stripe of keys (mini-moka has no compare-and-set).
    stripes: Vec<Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl<K, V> VersionedCache<K, V>
where
    K: Hash + Eq + Send + Sync + Clone + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache of at most `max_bytes` as `weigh` counts them, each entry kept at most `ttl`.
    pub fn new(max_bytes: u64, ttl: Duration, weigh: fn(&K, &Versioned<V>) -> u32) -> Self {
        Self {
            entries: Cache::builder()
                .weigher(weigh)
                .max_capacity(max_bytes.max(1))
                .time_to_live(ttl)
                .build(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: Default::default(),
        }
    }

    pub fn get(&self, key: &K) -> Option<Versioned<V>> {
        self.entries.get(key)
    }

    /// Stores `value` unless the cache holds a newer or equal version (version 0 only fills a gap).
    pub fn put_if_newer(&self, key: K, value: Versioned<V>) {
        let stripe = (self.hasher.hash_one(&key) as usize) % STRIPES;
        let Ok(_guard) = self.stripes[stripe].lock() else {
            return;
        };
        match self.entries.get(&key) {
            Some(current) if current.version >= value.version => {}
            _ => self.entries.insert(key, value),
        }
    }

    /// Drops one entry.
    pub fn remove(&self, key: &K) {
        self.entries.invalidate(key);
    }

    /// Drops every entry (the instance may have missed invalidations).
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }

    /// Bytes held, as weighed (after `sync`, exact).
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Runs pending evictions now.
    pub fn sync(&self) {
        self.entries.sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let cache = VersionedCache::<i64, &str>::new(1000, Duration::from_secs(60), |_, _| 1);
        cache.put_if_newer(
            1,
            Versioned {
                version: 0,
                value: "read",
            },
        );
        cache.put_if_newer(
            1,
            Versioned {
                version: 7,
                value: "written",
            },
        );
        cache.put_if_newer(
            1,
            Versioned {
                version: 0,
                value: "late read",
            },
        );
        cache.put_if_newer(
            1,
            Versioned {
                version: 5,
                value: "late write",
            },
        );
        assert_eq!(cache.get(&1).map(|v| v.value), Some("written"));
        cache.put_if_newer(
            1,
            Versioned {
                version: 8,
                value: "newer",
            },
        );
        assert_eq!(cache.get(&1).map(|v| v.value), Some("newer"));
        cache.clear();
        assert_eq!(cache.get(&1), None);
    }
}
