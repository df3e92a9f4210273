//! The read path every per-key kind shares: L1, then the loads in flight, then one L2 read, then the
//! loader, filling both levels on the way back; and the kinds read through it alone (counts, users).

use std::{collections::HashMap, future::Future, hash::Hash, time::Duration};

use super::{
    Caches, keys,
    l1::{Ticket, Versioned, VersionedCache},
    l2::VersionedWrite,
    singleflight::Inflight,
};
use crate::{
    db::{stats::Counts, users::UserRecord},
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

impl Caches {
    /// The layered lookup shared by every per-key cache.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn lookup<K, V, E, F, Fut>(
        &self,
        cache: &'static str,
        keys: &[K],
        l1: &VersionedCache<K, V>,
        skip_l1: impl Fn(&K) -> bool,
        l2_key: impl Fn(&K) -> String,
        decode: impl Fn(&K, i64, &str) -> Option<V>,
        encode: impl Fn(&V) -> String,
        ttl: Duration,
        inflight: &Inflight<K, Versioned<V>>,
        load: F,
    ) -> Result<HashMap<K, V>, E>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
        F: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, Versioned<V>>, E>>,
    {
        let mut found = HashMap::with_capacity(keys.len());
        if !self.settings.enabled {
            let loaded = load(keys.to_vec()).await?;
            return Ok(loaded.into_iter().map(|(k, v)| (k, v.value)).collect());
        }
        let use_l1 = self.l1_active();
        let mut pending = Vec::new();
        let (mut l1_hits, mut bypass) = (0, 0);
        for key in keys {
            if !use_l1 || skip_l1(key) {
                bypass += 1;
                pending.push(key.clone());
            } else if let Some(hit) = l1.get(key) {
                l1_hits += 1;
                found.insert(key.clone(), hit.value);
            } else {
                pending.push(key.clone());
            }
        }
        count(cache, "l1", "hit", l1_hits);
        count(cache, "l1", "bypass", bypass);
        count(cache, "l1", "miss", pending.len() - bypass);
        if pending.is_empty() {
            return Ok(found);
        }

        // L2 then PostgreSQL, coalesced: a request wanting a key already being loaded waits for it.
        let load_missing = |keys: Vec<K>| {
            let (l2_key, decode, encode, load) = (&l2_key, &decode, &encode, &load);
            async move {
                // Taken before L2 is read: a drop announced meanwhile turns the L1 fill away.
                let tickets: HashMap<K, Ticket> = keys
                    .iter()
                    .map(|key| (key.clone(), l1.ticket(key)))
                    .collect();
                let names: Vec<String> = keys.iter().map(l2_key).collect();
                let mut values = HashMap::with_capacity(keys.len());
                let mut missing = Vec::new();
                match self.l2.get_many(&names).await {
                    Some(stored) => {
                        for (key, stored) in keys.into_iter().zip(stored) {
                            let decoded = stored
                                .as_deref()
                                .and_then(keys::split_versioned)
                                .and_then(|(version, payload)| {
                                    decode(&key, version, payload)
                                        .map(|value| Versioned { version, value })
                                });
                            match decoded {
                                Some(hit) => {
                                    values.insert(key, hit);
                                }
                                None => missing.push(key),
                            }
                        }
                        count(cache, "l2", "hit", names.len() - missing.len());
                        count(cache, "l2", "miss", missing.len());
                    }
                    None => {
                        count(cache, "l2", "unavailable", keys.len());
                        missing = keys;
                    }
                }
                if !missing.is_empty() {
                    let loaded = load(missing).await?;
                    let fills: Vec<VersionedWrite> = loaded
                        .iter()
                        .map(|(key, value)| VersionedWrite {
                            key: l2_key(key),
                            version: value.version,
                            payload: encode(&value.value),
                            ttl,
                        })
                        .collect();
                    // Filling L2 is not on the answer's path.
                    let caches = self.clone();
                    tokio::spawn(async move {
                        caches.l2.fill_versioned(&fills).await;
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
        let (loaded, joined) = inflight.load(pending, load_missing).await?;
        if joined > 0 {
            ::metrics::counter!(CACHE_COALESCED, "cache" => cache).increment(joined as u64);
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
                            user_id: id,
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
        self.lookup(
            "counts",
            users,
            &self.counts,
            |_| false,
            |id| self.names.counts(*id),
            |id, version, payload| keys::decode_counts(*id, version, payload),
            keys::encode_counts,
            self.settings.counts_ttl,
            &self.inflight_counts,
            load,
        )
        .await
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
        let found = self
            .lookup(
                "users",
                ids,
                &self.users,
                |_| false,
                |id| self.names.user(*id),
                |_, _, payload| keys::decode_user(payload),
                |record| keys::encode_user(record.as_ref()),
                self.settings.users_ttl,
                &self.inflight_users,
                load,
            )
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|(id, record)| record.map(|r| (id, r)))
            .collect())
    }
}
