//! L1: a bounded in-process cache (mini-moka) whose entries carry a version, so that a late write of an
//! older value (a slow reader filling after an invalidation) cannot replace a newer one.
//!
//! A drop leaves no version behind to compare with, so loads fill through a [`Ticket`] taken before
//! they read L2: a drop since then (in the key's stripe) turns the fill away. Otherwise a reader that
//! read L2 just before another instance deleted the key and announced the drop would put the old value
//! back after the drop, to stay until the entry's next change.

use std::{
    hash::{BuildHasher, Hash},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
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

/// A load's leave to fill one key: the drops of the key's stripe counted when the load began.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    stripe: usize,
    drops: u64,
}

/// An L1 cache of versioned values.
pub struct VersionedCache<K, V> {
    entries: Cache<K, Versioned<V>>,
    /// Serialises check-then-insert per stripe of keys (mini-moka has no compare-and-set).
    stripes: Vec<Mutex<()>>,
    /// Drops per stripe, for [`Ticket`]s.
    drops: Vec<AtomicU64>,
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
            drops: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: Default::default(),
        }
    }

    pub fn get(&self, key: &K) -> Option<Versioned<V>> {
        self.entries.get(key)
    }

    fn stripe(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) as usize) % STRIPES
    }

    /// Stores `value` unless the cache holds a newer or equal version (version 0 only fills a gap): a
    /// write, whose version is new.
    pub fn put_if_newer(&self, key: K, value: Versioned<V>) {
        let stripe = self.stripe(&key);
        let Ok(_guard) = self.stripes[stripe].lock() else {
            return;
        };
        self.insert_if_newer(key, value);
    }

    /// The leave to fill `key` with what a load about to begin will read.
    pub fn ticket(&self, key: &K) -> Ticket {
        let stripe = self.stripe(key);
        Ticket {
            stripe,
            drops: self.drops[stripe].load(Ordering::SeqCst),
        }
    }

    /// Stores a loaded `value` as [`Self::put_if_newer`] does, unless an entry of the key's stripe was
    /// dropped since `ticket` was taken (the load may have read what the drop removed).
    pub fn fill(&self, key: K, value: Versioned<V>, ticket: Ticket) {
        let Ok(_guard) = self.stripes[ticket.stripe].lock() else {
            return;
        };
        if self.drops[ticket.stripe].load(Ordering::SeqCst) == ticket.drops {
            self.insert_if_newer(key, value);
        }
    }

    fn insert_if_newer(&self, key: K, value: Versioned<V>) {
        match self.entries.get(&key) {
            Some(current) if current.version >= value.version => {}
            _ => self.entries.insert(key, value),
        }
    }

    /// Drops one entry, and turns away the fills of loads begun before.
    pub fn remove(&self, key: &K) {
        let stripe = self.stripe(key);
        let Ok(_guard) = self.stripes[stripe].lock() else {
            self.entries.invalidate(key);
            return;
        };
        self.drops[stripe].fetch_add(1, Ordering::SeqCst);
        self.entries.invalidate(key);
    }

    /// Drops every entry (the instance may have missed invalidations), and turns away the fills of
    /// loads begun before.
    pub fn clear(&self) {
        for drops in &self.drops {
            drops.fetch_add(1, Ordering::SeqCst);
        }
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

    #[test]
    fn a_load_begun_before_a_drop_does_not_put_the_dropped_value_back() {
        let cache = VersionedCache::<i64, &str>::new(1000, Duration::from_secs(60), |_, _| 1);
        let old = |value| Versioned { version: 3, value };
        cache.put_if_newer(1, old("old handle"));
        // A reader takes its ticket and reads L2 (the old value); another instance deletes the key
        // and announces the drop; the reader fills.
        let before = cache.ticket(&1);
        cache.remove(&1);
        cache.fill(1, old("old handle"), before);
        assert_eq!(cache.get(&1), None);
        // A load begun after the drop fills.
        let after = cache.ticket(&1);
        cache.fill(1, old("read again"), after);
        assert_eq!(cache.get(&1).map(|v| v.value), Some("read again"));
        // So does one begun before a clear only if it did not span it.
        let before = cache.ticket(&2);
        cache.clear();
        cache.fill(2, old("from before the clear"), before);
        assert_eq!(cache.get(&2), None);
    }
}
