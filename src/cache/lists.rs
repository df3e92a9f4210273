//! First pages of follower and following lists: each list's version first, then the pages at those
//! versions through the shared lookup (a [`CachedKind`] whose key names the version).

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

use super::{
    Caches, CachesInner,
    keys::{self, KeyNames},
    l1::{Ticket, Versioned, VersionedCache},
    read::{CachedKind, Fill, count},
    singleflight::Inflight,
};
use crate::{
    config::CacheSettings,
    db::follows::{ListEntry, ListKind},
    telemetry::metrics::CACHE_FILLS_SKIPPED,
};

/// A page's key: (kind, owner, list version, rows).
pub(super) type PageKey = (ListKind, i64, i64, i64);

/// Allowed difference between Redis's clock (list versions) and this host's (how fresh a read is), in
/// microseconds: a page is cached under a list version only if it holds every commit made before the
/// version's instant plus this margin.
const CLOCK_ALLOWANCE_US: i64 = 20_000;

/// Whether a page read with every commit made before `as_of` (this host's clock, µs) may be cached
/// under a list version whose page must hold every commit before `needed` (Redis's clock, µs; see
/// [`super::l2::ListVersion`]).
fn holds(as_of: i64, needed: i64) -> bool {
    as_of >= needed.saturating_add(CLOCK_ALLOWANCE_US)
}

impl Caches {
    /// Starts the epoch of every hash slot that has none, at this instant: else each slot's would start
    /// at the first read of a list in it, and for the replica's lag after that, no cold list of the
    /// slot could be cached from a replica. Any instant after Redis's data began is a right epoch.
    pub(super) async fn start_slot_epochs(&self) {
        let now_us = crate::db::replicas::now_micros();
        let keys: Vec<String> = (0..crate::redis_pool::SLOTS as u16)
            .map(|slot| self.names.slot_epoch(slot))
            .collect();
        self.l2.start_epochs(&keys, now_us).await;
    }

    /// First pages (`limit` rows) of the `kind` lists of `owners`, versioned so that one bump drops them.
    /// `load` answers the pages of the owners it is given and how fresh they are: every commit made
    /// before that instant (µs since the epoch, this host's clock) is in them. A page not fresh enough
    /// for its list version (read from a replica that has not replayed the version's instant, or for a
    /// version this read created, its slot's epoch) is answered but neither cached nor shared with a
    /// request waiting for the same page, which reads its own: a later read fills the cache once a
    /// replica has caught up. So no fill needs the primary.
    pub async fn first_pages<E, F, Fut>(
        &self,
        kind: ListKind,
        owners: &[i64],
        limit: i64,
        load: F,
    ) -> Result<HashMap<i64, Arc<Vec<ListEntry>>>, E>
    where
        F: Fn(Vec<i64>) -> Fut,
        Fut: Future<Output = Result<(HashMap<i64, Vec<ListEntry>>, i64), E>>,
    {
        let to_arcs = |pages: HashMap<i64, Vec<ListEntry>>,
                       owners: &[i64]|
         -> HashMap<i64, Arc<Vec<ListEntry>>> {
            let mut pages = pages;
            owners
                .iter()
                .map(|o| (*o, Arc::new(pages.remove(o).unwrap_or_default())))
                .collect()
        };
        if !self.settings.enabled {
            return Ok(to_arcs(load(owners.to_vec()).await?.0, owners));
        }
        let use_l1 = self.l1_active();

        // 1. Each list's version: L1, else one script call (a missing version key starts a new one).
        // With each, the instant a page cached under it must hold every commit before.
        let mut versions: HashMap<i64, i64> = HashMap::new();
        let mut must_hold: HashMap<i64, i64> = HashMap::new();
        let mut unknown = Vec::new();
        for &owner in owners {
            match use_l1
                .then(|| self.list_versions.get(&(kind, owner)))
                .flatten()
            {
                Some(v) => {
                    versions.insert(owner, v.version);
                }
                None => unknown.push(owner),
            }
        }
        if !unknown.is_empty() {
            let tickets: Vec<Ticket> = unknown
                .iter()
                .map(|o| self.list_versions.ticket(&(kind, *o)))
                .collect();
            let names: Vec<String> = unknown
                .iter()
                .map(|o| self.names.list_version(kind, *o))
                .collect();
            let slot_epoch = |slot| self.names.slot_epoch(slot);
            let Some(values) = self.l2.read_versions(&names, slot_epoch).await else {
                // Without versions nothing cached can be trusted: straight to PostgreSQL.
                count(ListPages::LABEL, "l2", "unavailable", owners.len());
                return Ok(to_arcs(load(owners.to_vec()).await?.0, owners));
            };
            for ((owner, read), ticket) in unknown.into_iter().zip(values).zip(tickets) {
                if use_l1 {
                    let version = Versioned {
                        version: read.version,
                        value: (),
                    };
                    self.list_versions.fill((kind, owner), version, ticket);
                }
                versions.insert(owner, read.version);
                must_hold.insert(owner, read.must_hold);
            }
        }

        // 2. The pages at those versions: L1, then L2, then PostgreSQL.
        let keys: Vec<PageKey> = owners
            .iter()
            .map(|&owner| (kind, owner, versions[&owner], limit))
            .collect();
        // Pages too stale for their version, answered past the shared lookup (which caches and shares
        // what its load answers, and lets a waiting request load a page it leaves out by itself).
        let unfit: Mutex<HashMap<i64, Arc<Vec<ListEntry>>>> = Mutex::default();
        let load = |keys: Vec<PageKey>| {
            let pages = load(keys.iter().map(|key| key.1).collect());
            let (unfit, must_hold) = (&unfit, &must_hold);
            async move {
                let (mut pages, as_of) = pages.await?;
                let mut fit = HashMap::with_capacity(keys.len());
                let mut skipped = 0;
                for key in keys {
                    let page = Arc::new(pages.remove(&key.1).unwrap_or_default());
                    // A version read from L1 (or by another request) must be held up to itself.
                    let needed = must_hold.get(&key.1).copied().unwrap_or(key.2);
                    if holds(as_of, needed) {
                        let page = Versioned {
                            version: key.2,
                            value: page,
                        };
                        fit.insert(key, page);
                    } else {
                        skipped += 1;
                        unfit
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(key.1, page);
                    }
                }
                if skipped > 0 {
                    ::metrics::counter!(CACHE_FILLS_SKIPPED, "cache" => ListPages::LABEL)
                        .increment(skipped);
                }
                Ok(fit)
            }
        };
        let mut found: HashMap<i64, Arc<Vec<ListEntry>>> = self
            .lookup(&ListPages, &keys, load)
            .await?
            .into_iter()
            .map(|(key, page)| (key.1, page))
            .collect();
        let mut unfit = unfit.into_inner().unwrap_or_else(PoisonError::into_inner);
        for owner in owners {
            if !found.contains_key(owner) {
                let page = unfit.remove(owner).unwrap_or_default();
                found.insert(*owner, page);
            }
        }
        Ok(found)
    }
}

/// The epoch keys of the hash slots of the list versions among `keys` (dirty keys about to be
/// deleted), each once: a version created after the delete asks the replica for the epoch's instant.
pub(super) fn epochs_of(names: &KeyNames, keys: &[String]) -> Vec<String> {
    let mut slots: Vec<u16> = keys
        .iter()
        .filter(|key| matches!(names.parse(key), Some(keys::Named::ListVersion { .. })))
        .map(|key| crate::redis_pool::key_slot(key.as_bytes()))
        .collect();
    slots.sort_unstable();
    slots.dedup();
    slots
        .into_iter()
        .map(|slot| names.slot_epoch(slot))
        .collect()
}

/// A list's first page. Its key names the list version it was read at (immutable: a bump makes new
/// keys, and the old ones expire), so in Redis it is stored bare, without a version of its own.
pub(super) struct ListPages;

impl CachedKind for ListPages {
    type Key = PageKey;
    type Value = Arc<Vec<ListEntry>>;
    const LABEL: &'static str = "lists";
    const DEGRADED_AS_MISS: bool = true;

    fn l1<'c>(&self, caches: &'c CachesInner) -> &'c VersionedCache<PageKey, Arc<Vec<ListEntry>>> {
        &caches.pages
    }

    fn inflight<'c>(
        &self,
        caches: &'c CachesInner,
    ) -> &'c Inflight<PageKey, Versioned<Arc<Vec<ListEntry>>>> {
        &caches.inflight_pages
    }

    fn l2_key(&self, names: &KeyNames, &(kind, owner, version, limit): &PageKey) -> String {
        names.list_page(kind, owner, version, limit)
    }

    fn decode(&self, key: &PageKey, stored: &str) -> Option<Versioned<Arc<Vec<ListEntry>>>> {
        let page = keys::decode_page(key.1, stored)?;
        Some(Versioned {
            version: key.2,
            value: Arc::new(page),
        })
    }

    fn fill(
        &self,
        settings: &CacheSettings,
        name: String,
        page: &Versioned<Arc<Vec<ListEntry>>>,
    ) -> Fill {
        Fill::Immutable {
            key: name,
            payload: keys::encode_page(&page.value),
            ttl: settings.lists_ttl,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis_pool::key_slot;

    #[test]
    fn a_repair_moves_the_epoch_of_each_slot_of_its_list_versions_once() {
        let names = KeyNames::new("p");
        let keys = [
            names.list_version(ListKind::Followers, 5),
            names.list_version(ListKind::Following, 5),
            names.counts(5),
            names.user(9),
            names.list_version(ListKind::Followers, 7),
        ];
        let slot = |key: &String| key_slot(key.as_bytes());
        let mut expected = vec![
            names.slot_epoch(slot(&keys[0])),
            names.slot_epoch(slot(&keys[4])),
        ];
        expected.sort_by_key(|epoch| key_slot(epoch.as_bytes()));
        assert_ne!(expected[0], expected[1], "users 5 and 7 are in two slots");
        assert_eq!(epochs_of(&names, &keys), expected);
        assert!(epochs_of(&names, &keys[2..4]).is_empty(), "no list version");
    }
}
