//! Coalesces concurrent loads of the same keys: while one request loads a key from PostgreSQL, others
//! wanting it wait for that answer instead of querying too (no stampede on a cold or expired key).

use std::{collections::HashMap, future::Future, hash::Hash, sync::Mutex};

use tokio::sync::watch;

type Slot<V> = watch::Receiver<Option<V>>;

/// The loads in flight for one kind of key.
pub struct Inflight<K, V> {
    loads: Mutex<HashMap<K, Slot<V>>>,
}

impl<K, V> Default for Inflight<K, V> {
    fn default() -> Self {
        Self {
            loads: Mutex::new(HashMap::new()),
        }
    }
}

/// Removes this load's keys from the map however the load ends (even if its request is dropped).
struct Leader<'a, K: Hash + Eq, V> {
    inflight: &'a Inflight<K, V>,
    keys: Vec<K>,
}

impl<K: Hash + Eq, V> Drop for Leader<'_, K, V> {
    fn drop(&mut self) {
        if let Ok(mut loads) = self.inflight.loads.lock() {
            for key in &self.keys {
                loads.remove(key);
            }
        }
    }
}

impl<K, V> Inflight<K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    /// Loads `keys`: the ones no one is loading through `load`, the others by waiting for their loader.
    /// A key `load` leaves out is not shared: each request waiting for it loads it itself (the list
    /// pages leave out a page too stale to share). Returns the values and how many keys were joined.
    pub async fn load<E, F, Fut>(&self, keys: Vec<K>, load: F) -> Result<(HashMap<K, V>, usize), E>
    where
        F: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>>,
    {
        let mut mine = Vec::new();
        let mut senders = Vec::new();
        let mut joined = Vec::new();
        if let Ok(mut loads) = self.loads.lock() {
            for key in keys {
                match loads.get(&key) {
                    Some(slot) => joined.push((key, slot.clone())),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        loads.insert(key.clone(), rx);
                        senders.push(tx);
                        mine.push(key);
                    }
                }
            }
        } else {
            mine = keys;
        }
        let leader = Leader {
            inflight: self,
            keys: mine.clone(),
        };
        let mut values = if mine.is_empty() {
            HashMap::new()
        } else {
            load(mine.clone()).await?
        };
        for (key, tx) in mine.iter().zip(senders) {
            let _ = tx.send(values.get(key).cloned());
        }
        drop(leader);

        let joined_count = joined.len();
        let mut orphans = Vec::new();
        for (key, mut slot) in joined {
            match slot.wait_for(Option::is_some).await {
                Ok(value) => {
                    if let Some(value) = value.clone() {
                        values.insert(key, value);
                    }
                }
                // The loader went away (its request was cancelled or failed) or left the key out:
                // load it here.
                Err(_) => orphans.push(key),
            }
        }
        if !orphans.is_empty() {
            values.extend(load(orphans).await?);
        }
        Ok((values, joined_count))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn concurrent_loads_of_one_key_query_once() {
        let inflight = Inflight::<i64, i64>::default();
        let calls = AtomicUsize::new(0);
        let load = |keys: Vec<i64>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, ()>(
                    keys.into_iter()
                        .map(|k| (k, k * 10))
                        .collect::<HashMap<_, _>>(),
                )
            }
        };
        let results =
            futures::future::join_all((0..20).map(|_| inflight.load(vec![7], load))).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let joined: usize = results
            .iter()
            .map(|r| r.as_ref().map_or(0, |(_, j)| *j))
            .sum();
        assert_eq!(joined, 19);
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_ok_and(|(v, _)| v.get(&7) == Some(&70)))
        );
    }

    #[tokio::test]
    async fn a_key_the_leader_leaves_out_is_loaded_by_each_waiter() {
        let inflight = Inflight::<i64, i64>::default();
        let calls = AtomicUsize::new(0);
        // The first load (the leader's) leaves the key out; every later one answers it.
        let load = |keys: Vec<i64>| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, ()>(if first {
                    HashMap::new()
                } else {
                    keys.into_iter().map(|k| (k, k * 10)).collect()
                })
            }
        };
        let results = futures::future::join_all((0..3).map(|_| inflight.load(vec![7], load))).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "each waiter loaded the key"
        );
        let answered = results
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|(v, _)| v.get(&7) == Some(&70)))
            .count();
        assert_eq!(
            answered, 2,
            "the waiters got their own loads, the leader none"
        );
    }
}
