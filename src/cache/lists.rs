//! First pages of follower and following lists: each list's version first, then the pages at those
//! versions: L1, then L2, then PostgreSQL, coalesced.

use std::{collections::HashMap, future::Future, sync::Arc};

use super::{
    Caches, keys,
    l1::{Ticket, Versioned},
    read::count,
};
use crate::{
    db::follows::{ListEntry, ListKind},
    telemetry::metrics::CACHE_COALESCED,
};

/// A page's key: (kind, owner, list version, rows).
pub(super) type PageKey = (ListKind, i64, i64, i64);

impl Caches {
    /// First pages (`limit` rows) of the `kind` lists of `owners`, versioned so that one bump drops them.
    pub async fn first_pages<E, F, Fut>(
        &self,
        kind: ListKind,
        owners: &[i64],
        limit: i64,
        load: F,
    ) -> Result<HashMap<i64, Arc<Vec<ListEntry>>>, E>
    where
        F: Fn(Vec<i64>) -> Fut,
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
            return Ok(to_arcs(load(owners.to_vec()).await?, owners));
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
                count("lists", "l2", "unavailable", owners.len());
                return Ok(to_arcs(load(owners.to_vec()).await?, owners));
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
        let mut found = HashMap::with_capacity(owners.len());
        let mut pending = Vec::new();
        for &owner in owners {
            let key = (kind, owner, versions[&owner], limit);
            match use_l1.then(|| self.pages.get(&key)).flatten() {
                Some(page) => {
                    found.insert(owner, page);
                }
                None => pending.push(key),
            }
        }
        count("lists", "l1", "hit", found.len());
        count("lists", "l1", "miss", pending.len());
        if pending.is_empty() {
            return Ok(found);
        }
        let load_pages = |keys: Vec<(ListKind, i64, i64, i64)>| {
            let load = &load;
            async move {
                let names: Vec<String> = keys
                    .iter()
                    .map(|(k, o, v, l)| self.names.list_page(*k, *o, *v, *l))
                    .collect();
                let stored = self
                    .l2
                    .get_many(&names)
                    .await
                    .unwrap_or_else(|| vec![None; names.len()]);
                let mut pages = HashMap::with_capacity(keys.len());
                let mut missing = Vec::new();
                for (key, value) in keys.into_iter().zip(stored) {
                    match value.as_deref().and_then(|v| keys::decode_page(key.1, v)) {
                        Some(page) => {
                            pages.insert(key, Arc::new(page));
                        }
                        None => missing.push(key),
                    }
                }
                count("lists", "l2", "hit", names.len() - missing.len());
                count("lists", "l2", "miss", missing.len());
                if !missing.is_empty() {
                    let mut loaded = load(missing.iter().map(|k| k.1).collect()).await?;
                    let mut fills = Vec::with_capacity(missing.len());
                    for key in missing {
                        let page = Arc::new(loaded.remove(&key.1).unwrap_or_default());
                        fills.push((
                            self.names.list_page(key.0, key.1, key.2, key.3),
                            keys::encode_page(&page),
                            self.settings.lists_ttl,
                        ));
                        pages.insert(key, page);
                    }
                    let caches = self.clone();
                    tokio::spawn(async move {
                        caches.l2.set_many(&fills).await;
                    });
                }
                if use_l1 {
                    for (key, page) in &pages {
                        self.pages.insert(*key, page.clone());
                    }
                }
                Ok(pages)
            }
        };
        let (loaded, joined) = self.inflight_pages.load(pending, load_pages).await?;
        if joined > 0 {
            ::metrics::counter!(CACHE_COALESCED, "cache" => "lists").increment(joined as u64);
        }
        found.extend(loaded.into_iter().map(|(key, page)| (key.1, page)));
        Ok(found)
    }
}
