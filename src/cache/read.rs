//! The read path every per-key kind shares: L1, then the loads in flight, then one L2 read, then the
//! loader, filling both levels on the way back; generic over [`CachedKind`], one impl per kind.

use std::{collections::HashMap, future::Future, hash::Hash, time::Duration};

use super::{
    Caches, CachesInner, keys,
    keys::KeyNames,
    l1::{Ticket, Versioned, VersionedCache},
    l2::VersionedWrite,
    singleflight::Inflight,
};
use crate::{
    config::CacheSettings,
    db::users::UserRecord,
    domain::{Counts, UserId},
    telemetry::metrics::{CACHE_COALESCED, CACHE_REQUESTS},
};

/// Adds `n` to the lookups of `cache` at `level` with `result`. The counter handles are kept per
/// thread: building and hashing the labelled key on every call showed in profiles of cache hits.
pub(super) fn count(cache: &'static str, level: &'static str, result: &'static str, n: usize) {
    type Handles = HashMap<(&'static str, &'static str, &'static str), ::metrics::Counter>;
    thread_local! {
        static HANDLES: std::cell::RefCell<Handles> = std::cell::RefCell::new(HashMap::new());
    }
    if n == 0 {
        return;
    }
    HANDLES.with(|handles| {
        let mut handles = handles.borrow_mut();
        let counter = handles.entry((cache, level, result)).or_insert_with(|| {
            // A handle taken before the recorder exists would count nowhere, for good.
            crate::telemetry::metrics::install();
            ::metrics::counter!(CACHE_REQUESTS, "cache" => cache, "level" => level, "result" => result)
        });
        counter.increment(n as u64);
    });
}

/// A value loaded from PostgreSQL, as it goes to L2 (off the answer's path).
pub(super) enum Fill {
    /// Stored as `<version>:<payload>`, newer wins ([`super::l2::L2::fill_versioned`]).
    Versioned(VersionedWrite),
    /// A value that never changes under its key (the key names its version): plain `SET … EX`
    /// ([`super::l2::L2::set_many`]).
    Immutable {
        key: String,
        payload: String,
        ttl: Duration,
    },
}

impl Fill {
    /// The `<version>:<payload>` fill of a versioned kind.
    pub(super) fn versioned(key: String, version: i64, payload: String, ttl: Duration) -> Self {
        Self::Versioned(VersionedWrite {
            key,
            version,
            payload,
            ttl,
        })
    }
}

/// What the shared lookup needs to know of one kind of cached value: where it sits in L1, which loads
/// of it are in flight, its Redis key and encoding, and its metrics label. A kind is a value, so that a
/// request's context (the viewer, for status pairs) can decide which keys skip L1.
pub(super) trait CachedKind {
    type Key: Hash + Eq + Clone + Send + Sync + 'static;
    type Value: Clone + Send + Sync + 'static;

    /// The `cache` label of the kind's metrics.
    const LABEL: &'static str;

    /// Whether a lookup while L1 is suspended, or one whose L2 read went unanswered, counts as an L1
    /// `miss` and an L2 `miss` (list pages, as the following sets count theirs) rather than as `bypass`
    /// and `unavailable` (every other kind).
    const DEGRADED_AS_MISS: bool = false;

    /// The kind's L1 entries.
    fn l1<'c>(&self, caches: &'c CachesInner) -> &'c VersionedCache<Self::Key, Self::Value>;

    /// The kind's loads in flight.
    fn inflight<'c>(
        &self,
        caches: &'c CachesInner,
    ) -> &'c Inflight<Self::Key, Versioned<Self::Value>>;

    /// Whether `key` is read past L1 even while L1 is in use.
    fn skip_l1(&self, _key: &Self::Key) -> bool {
        false
    }

    /// The key's name in Redis.
    fn l2_key(&self, names: &KeyNames, key: &Self::Key) -> String;

    /// A value as Redis stores it (`None`: unreadable, a miss).
    fn decode(&self, key: &Self::Key, stored: &str) -> Option<Versioned<Self::Value>>;

    /// The L2 write of a value loaded from PostgreSQL under the Redis key `name`.
    fn fill(&self, settings: &CacheSettings, name: String, value: &Versioned<Self::Value>) -> Fill;
}

impl Caches {
    /// The layered lookup of `keys` of one kind: L1 (unless the kind skips it for a key), then, coalesced
    /// with loads of the same keys in flight, one L2 read and one `load` of what is still missing (which
    /// must answer every key it is given). Loaded values fill L2 in the background and L1 before the
    /// load is marked done.
    pub(super) async fn lookup<C, E, F, Fut>(
        &self,
        kind: &C,
        keys: &[C::Key],
        load: F,
    ) -> Result<HashMap<C::Key, C::Value>, E>
    where
        C: CachedKind,
        F: Fn(Vec<C::Key>) -> Fut,
        Fut: Future<Output = Result<HashMap<C::Key, Versioned<C::Value>>, E>>,
    {
        let label = C::LABEL;
        let mut found = HashMap::with_capacity(keys.len());
        if !self.settings.enabled {
            let loaded = load(keys.to_vec()).await?;
            return Ok(loaded.into_iter().map(|(k, v)| (k, v.value)).collect());
        }
        let use_l1 = self.l1_active();
        let l1 = kind.l1(self);
        let mut pending = Vec::new();
        let (mut l1_hits, mut bypass) = (0, 0);
        for key in keys {
            if !use_l1 && C::DEGRADED_AS_MISS {
                pending.push(key.clone());
            } else if !use_l1 || kind.skip_l1(key) {
                bypass += 1;
                pending.push(key.clone());
            } else if let Some(hit) = l1.get(key) {
                l1_hits += 1;
                found.insert(key.clone(), hit.value);
            } else {
                pending.push(key.clone());
            }
        }
        count(label, "l1", "hit", l1_hits);
        count(label, "l1", "bypass", bypass);
        count(label, "l1", "miss", pending.len() - bypass);
        if pending.is_empty() {
            return Ok(found);
        }

        // L2 then PostgreSQL, coalesced: a request wanting a key already being loaded waits for it.
        let load_missing = |keys: Vec<C::Key>| {
            let load = &load;
            async move {
                // Taken before L2 is read: a drop announced meanwhile turns the L1 fill away.
                let tickets: HashMap<C::Key, Ticket> = keys
                    .iter()
                    .map(|key| (key.clone(), l1.ticket(key)))
                    .collect();
                let names: Vec<String> = keys
                    .iter()
                    .map(|key| kind.l2_key(&self.names, key))
                    .collect();
                let mut values = HashMap::with_capacity(keys.len());
                let mut missing = Vec::new();
                match self.l2.get_many(&names).await {
                    Some(stored) => {
                        for (key, stored) in keys.into_iter().zip(stored) {
                            match stored.as_deref().and_then(|s| kind.decode(&key, s)) {
                                Some(hit) => {
                                    values.insert(key, hit);
                                }
                                None => missing.push(key),
                            }
                        }
                        count(label, "l2", "hit", names.len() - missing.len());
                        count(label, "l2", "miss", missing.len());
                    }
                    None => {
                        let result = if C::DEGRADED_AS_MISS {
                            "miss"
                        } else {
                            "unavailable"
                        };
                        count(label, "l2", result, keys.len());
                        missing = keys;
                    }
                }
                if !missing.is_empty() {
                    let loaded = load(missing).await?;
                    let (mut versioned, mut immutable) = (Vec::new(), Vec::new());
                    for (key, value) in &loaded {
                        let name = kind.l2_key(&self.names, key);
                        match kind.fill(&self.settings, name, value) {
                            Fill::Versioned(write) => versioned.push(write),
                            Fill::Immutable { key, payload, ttl } => {
                                immutable.push((key, payload, ttl));
                            }
                        }
                    }
                    // Filling L2 is not on the answer's path.
                    let caches = self.clone();
                    tokio::spawn(async move {
                        caches.l2.fill_versioned(&versioned).await;
                        caches.l2.set_many(&immutable).await;
                    });
                    values.extend(loaded);
                }
                // L1 before the load is marked done, so a request arriving later finds it there.
                if use_l1 {
                    for (key, value) in &values {
                        if let Some(ticket) = tickets.get(key) {
                            l1.fill(key.clone(), value.clone(), *ticket);
                        }
                    }
                }
                Ok(values)
            }
        };
        let (loaded, joined) = kind.inflight(self).load(pending, load_missing).await?;
        if joined > 0 {
            ::metrics::counter!(CACHE_COALESCED, "cache" => label).increment(joined as u64);
        }
        found.extend(loaded.into_iter().map(|(key, value)| (key, value.value)));
        Ok(found)
    }

    /// Counts of each user (every user answered; zeros without a row).
    pub async fn counts<E, F, Fut>(&self, users: &[i64], load: F) -> Result<HashMap<i64, Counts>, E>
    where
        F: Fn(Vec<i64>) -> Fut,
        Fut: Future<Output = Result<HashMap<i64, Counts>, E>>,
    {
        let load = |ids: Vec<i64>| {
            let rows = load(ids.clone());
            async move {
                let rows = rows.await?;
                Ok(ids
                    .into_iter()
                    .map(|id| {
                        let counts = rows.get(&id).copied().unwrap_or(Counts {
                            user_id: UserId(id),
                            ..Counts::default()
                        });
                        (
                            id,
                            Versioned {
                                version: counts.version,
                                value: counts,
                            },
                        )
                    })
                    .collect())
            }
        };
        self.lookup(&UserCounts, users, load).await
    }

    /// User records (absent: no such user; the absence is cached too).
    pub async fn users<E, F, Fut>(
        &self,
        ids: &[i64],
        load: F,
    ) -> Result<HashMap<i64, UserRecord>, E>
    where
        F: Fn(Vec<i64>) -> Fut,
        Fut: Future<Output = Result<HashMap<i64, UserRecord>, E>>,
    {
        let load = |ids: Vec<i64>| {
            let rows = load(ids.clone());
            async move {
                let mut rows = rows.await?;
                Ok(ids
                    .into_iter()
                    .map(|id| {
                        let record = rows.remove(&id);
                        let version = record
                            .as_ref()
                            .map_or(0, |r| r.updated_at.timestamp_micros());
                        (
                            id,
                            Versioned {
                                version,
                                value: record,
                            },
                        )
                    })
                    .collect())
            }
        };
        let found = self.lookup(&UserRecords, ids, load).await?;
        Ok(found
            .into_iter()
            .filter_map(|(id, record)| record.map(|r| (id, r)))
            .collect())
    }
}

/// Reads a stored `<version>:<payload>` through `decode`.
pub(super) fn split_versioned<V>(
    stored: &str,
    decode: impl FnOnce(i64, &str) -> Option<V>,
) -> Option<Versioned<V>> {
    let (version, payload) = keys::split_versioned(stored)?;
    decode(version, payload).map(|value| Versioned { version, value })
}

/// A user's follower and following counts, versioned by `user_stats.version`.
pub(super) struct UserCounts;

impl CachedKind for UserCounts {
    type Key = i64;
    type Value = Counts;
    const LABEL: &'static str = "counts";

    fn l1<'c>(&self, caches: &'c CachesInner) -> &'c VersionedCache<i64, Counts> {
        &caches.counts
    }

    fn inflight<'c>(&self, caches: &'c CachesInner) -> &'c Inflight<i64, Versioned<Counts>> {
        &caches.inflight_counts
    }

    fn l2_key(&self, names: &KeyNames, user: &i64) -> String {
        names.counts(*user)
    }

    fn decode(&self, user: &i64, stored: &str) -> Option<Versioned<Counts>> {
        split_versioned(stored, |version, payload| {
            keys::decode_counts(*user, version, payload)
        })
    }

    fn fill(&self, settings: &CacheSettings, name: String, counts: &Versioned<Counts>) -> Fill {
        let payload = keys::encode_counts(&counts.value);
        Fill::versioned(name, counts.version, payload, settings.counts_ttl)
    }
}

/// A user's record (`None`: no such user), versioned by its `updated_at`.
pub(super) struct UserRecords;

impl CachedKind for UserRecords {
    type Key = i64;
    type Value = Option<UserRecord>;
    const LABEL: &'static str = "users";

    fn l1<'c>(&self, caches: &'c CachesInner) -> &'c VersionedCache<i64, Option<UserRecord>> {
        &caches.users
    }

    fn inflight<'c>(
        &self,
        caches: &'c CachesInner,
    ) -> &'c Inflight<i64, Versioned<Option<UserRecord>>> {
        &caches.inflight_users
    }

    fn l2_key(&self, names: &KeyNames, user: &i64) -> String {
        names.user(*user)
    }

    fn decode(&self, _: &i64, stored: &str) -> Option<Versioned<Option<UserRecord>>> {
        split_versioned(stored, |_, payload| keys::decode_user(payload))
    }

    fn fill(
        &self,
        settings: &CacheSettings,
        name: String,
        record: &Versioned<Option<UserRecord>>,
    ) -> Fill {
        let payload = keys::encode_user(record.value.as_ref());
        Fill::versioned(name, record.version, payload, settings.users_ttl)
    }
}
