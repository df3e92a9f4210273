//! Drives async-graphql `Loader`s the way its `DataLoader` does (the keys a request asks of one loader
//! while it resolves one level become one batch), without the DataLoader's costs on the hot path: it
//! spawns a task per batch and waits on a timer thread (futures-timer) even with a zero delay, a thread
//! hop and several wakeups per request that asks one key.
//!
//! Here the first caller leads the batch in its own task: it yields to the executor (so that the
//! sibling fields and list items polled in the same pass add their keys), until a pass adds none, then
//! loads everything asked and hands each joiner its share. With a delay set, it waits that long instead.
//! A joiner whose leader went away (its request was dropped) loads its own keys.

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_graphql::dataloader::Loader;
use tokio::sync::watch;

/// The outcome of one batch, shared by its callers.
type Outcome<K, V> = Option<Result<Arc<HashMap<K, V>>, async_graphql::Error>>;

/// Passes the leader yields at most, waiting for keys.
const MAX_YIELDS: usize = 4;

/// One loader and the batch it is gathering.
pub struct Batched<K, L: Loader<K>>
where
    K: Send + Sync + Hash + Eq + Clone + 'static,
{
    loader: L,
    /// The loader's name in the batch-size histogram.
    name: &'static str,
    delay: Duration,
    open: Mutex<Option<Open<K, L::Value>>>,
    batches: std::sync::atomic::AtomicU64,
}

/// A batch still taking keys.
struct Open<K, V> {
    id: u64,
    keys: Vec<K>,
    done: watch::Sender<Outcome<K, V>>,
}

/// Closes the leader's batch if the leader is dropped before taking it, so its joiners are not left
/// waiting for a sender kept alive in the open slot.
struct Lead<'a, K, V> {
    open: &'a Mutex<Option<Open<K, V>>>,
    id: u64,
}

impl<K, V> Drop for Lead<'_, K, V> {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock()
            && open.as_ref().is_some_and(|o| o.id == self.id)
        {
            *open = None;
        }
    }
}

impl<K, L> Batched<K, L>
where
    K: Send + Sync + Hash + Eq + Clone + 'static,
    L: Loader<K, Error = async_graphql::Error>,
{
    /// `delay` zero: a batch is what one scheduling pass asks; else how long a batch gathers keys.
    pub fn new(name: &'static str, loader: L, delay: Duration) -> Self {
        Self {
            loader,
            name,
            delay,
            open: Mutex::new(None),
            batches: Default::default(),
        }
    }

    /// The value of one key, if the loader has one.
    pub async fn load_one(&self, key: K) -> async_graphql::Result<Option<L::Value>> {
        let mut values = self.load_many(vec![key.clone()]).await?;
        Ok(values.remove(&key))
    }

    /// The values of `keys` that the loader has.
    pub async fn load_many(&self, keys: Vec<K>) -> async_graphql::Result<HashMap<K, L::Value>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let joined = {
            let Ok(mut open) = self.open.lock() else {
                return self.loader.load(&keys).await;
            };
            match open.as_mut() {
                Some(batch) => {
                    batch.keys.extend(keys.iter().cloned());
                    Err(batch.done.subscribe())
                }
                None => {
                    let id = self
                        .batches
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    *open = Some(Open {
                        id,
                        keys: keys.clone(),
                        done: watch::channel(None).0,
                    });
                    Ok(id)
                }
            }
        };
        match joined {
            Ok(id) => self.lead(id, keys).await,
            Err(mut done) => {
                let outcome = done
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|outcome| outcome.clone());
                match outcome {
                    Some(Ok(values)) => Ok(pick(&values, &keys)),
                    Some(Err(err)) => Err(err),
                    // The leader went away before answering: load these keys here.
                    None => self.loader.load(&keys).await,
                }
            }
        }
    }

    /// Gathers keys for batch `id`, then loads the batch and answers its joiners.
    async fn lead(&self, id: u64, keys: Vec<K>) -> async_graphql::Result<HashMap<K, L::Value>> {
        let lead = Lead {
            open: &self.open,
            id,
        };
        if self.delay.is_zero() {
            let mut asked = self.asked(id);
            for _ in 0..MAX_YIELDS {
                tokio::task::yield_now().await;
                let now = self.asked(id);
                if now == asked {
                    break;
                }
                asked = now;
            }
        } else {
            tokio::time::sleep(self.delay).await;
        }
        let batch = self
            .open
            .lock()
            .ok()
            .and_then(|mut open| open.take_if(|o| o.id == id));
        drop(lead);
        let Some(batch) = batch else {
            return self.loader.load(&keys).await;
        };
        let mut seen = HashSet::with_capacity(batch.keys.len());
        let unique: Vec<K> = batch
            .keys
            .into_iter()
            .filter(|k| seen.insert(k.clone()))
            .collect();
        ::metrics::histogram!(crate::telemetry::metrics::LOADER_BATCH, "loader" => self.name)
            .record(unique.len() as f64);
        let outcome = self.loader.load(&unique).await.map(Arc::new);
        let _ = batch.done.send(Some(outcome.clone()));
        outcome.map(|values| pick(&values, &keys))
    }

    /// Keys batch `id` holds so far (0 once taken).
    fn asked(&self, id: u64) -> usize {
        self.open
            .lock()
            .ok()
            .and_then(|open| open.as_ref().filter(|o| o.id == id).map(|o| o.keys.len()))
            .unwrap_or(0)
    }
}

fn pick<K: Hash + Eq + Clone, V: Clone>(values: &HashMap<K, V>, keys: &[K]) -> HashMap<K, V> {
    keys.iter()
        .filter_map(|k| values.get(k).map(|v| (k.clone(), v.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Doubler(Arc<AtomicUsize>);

    impl Loader<i64> for Doubler {
        type Value = i64;
        type Error = async_graphql::Error;

        async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, i64>, Self::Error> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(keys.iter().map(|k| (*k, k * 2)).collect())
        }
    }

    #[tokio::test]
    async fn keys_asked_in_one_pass_are_one_batch() {
        let calls = Arc::new(AtomicUsize::new(0));
        let batched = Batched::new("test", Doubler(calls.clone()), Duration::ZERO);
        let results = futures::future::join_all((1..=20).map(|k| batched.load_one(k))).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one batch");
        for (k, result) in (1..=20).zip(results) {
            assert_eq!(result.expect("loaded"), Some(k * 2));
        }
        // A later pass is a new batch.
        assert_eq!(batched.load_one(5).await.expect("loaded"), Some(10));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn joiners_of_a_dropped_leader_load_their_own_keys() {
        let calls = Arc::new(AtomicUsize::new(0));
        let batched = Batched::new("test", Doubler(calls.clone()), Duration::from_millis(50));
        let mut leader = Box::pin(batched.load_one(1));
        let mut joiner = Box::pin(batched.load_one(2));
        // The leader opens the batch, the joiner joins it; then the leader's request goes away.
        assert!(futures::poll!(leader.as_mut()).is_pending());
        assert!(futures::poll!(joiner.as_mut()).is_pending());
        drop(leader);
        let answered = tokio::time::timeout(Duration::from_secs(1), joiner)
            .await
            .expect("the joiner answers instead of waiting for a leader that is gone");
        assert_eq!(answered.expect("loaded"), Some(4));
    }
}
