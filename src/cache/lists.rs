//! First pages of follower and following lists: each list's version first, then the pages at those
//! versions through the shared lookup (a [`CachedKind`] whose key names the version).

use std::{collections::HashMap, future::Future, sync::Arc};

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
};

/// A page's key: (kind, owner, list version, rows).
pub(super) type PageKey = (ListKind, i64, i64, i64);

impl Caches {
    /// First pages (`limit` rows) of the `kind` lists of `owners`, versioned so that one bump drops them.
    /// `load` is told the newest list version its pages will be cached under (a Redis clock reading in
    /// microseconds, taken after the writes it follows), or `None` when nothing is cached: a read from a
    /// replica must have replayed that far.
    pub async fn first_pages<E, F, Fut>(
        &self,
        kind: ListKind,
        owners: &[i64],
        limit: i64,
        load: F,
    ) -> Result<HashMap<i64, Arc<Vec<ListEntry>>>, E>
    where
        F: Fn(Vec<i64>, Option<i64>) -> Fut,
        Fut: Future<Output = Result<HashMap<i64, Vec<ListEntry>>, E>>,
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
            return Ok(to_arcs(load(owners.to_vec(), None).await?, owners));
        }
        let use_l1 = self.l1_active();

        // 1. Each list's version: L1, else one script call (a missing version key starts a new one).
        let mut versions: HashMap<i64, i64> = HashMap::new();
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
            let Some(values) = self.l2.read_versions(&names).await else {
                // Without versions nothing cached can be trusted: straight to PostgreSQL.
                count(ListPages::LABEL, "l2", "unavailable", owners.len());
                return Ok(to_arcs(load(owners.to_vec(), None).await?, owners));
            };
            for ((owner, version), ticket) in unknown.into_iter().zip(values).zip(tickets) {
                if use_l1 {
                    let read = Versioned { version, value: () };
                    self.list_versions.fill((kind, owner), read, ticket);
                }
                versions.insert(owner, version);
            }
        }

        // 2. The pages at those versions: L1, then L2, then PostgreSQL.
        let keys: Vec<PageKey> = owners
            .iter()
            .map(|&owner| (kind, owner, versions[&owner], limit))
            .collect();
        let load = |keys: Vec<PageKey>| {
            let newest = keys.iter().map(|key| key.2).max();
            let pages = load(keys.iter().map(|key| key.1).collect(), newest);
            async move {
                let mut pages = pages.await?;
                Ok(keys
                    .into_iter()
                    .map(|key| {
                        let page = Arc::new(pages.remove(&key.1).unwrap_or_default());
                        (
                            key,
                            Versioned {
                                version: key.2,
                                value: page,
                            },
                        )
                    })
                    .collect())
            }
        };
        let found = self.lookup(&ListPages, &keys, load).await?;
        Ok(found.into_iter().map(|(key, page)| (key.1, page)).collect())
    }
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
