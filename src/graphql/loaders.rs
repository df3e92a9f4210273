//! Loaders (batched by `batch.rs`): every per-user and per-pair field of a response is gathered into
//! one batched lookup per kind, so a page of 100 users costs a handful of queries, not hundreds.

use std::{collections::HashMap, hash::Hash, sync::Arc, time::Duration};

use async_graphql::dataloader::Loader;

use super::{batch::Batched, to_graphql_error};
use crate::graph::{
    Counts, FollowGraph, Keyset, KnownPage, ListEntry, ListKind, Reader, UserRecord, ViewerList,
};

/// The loaders of one request (created per request, so nothing leaks between viewers).
///
/// Resolvers call the methods, not the loaders: each first asks this instance's L1, which answers at
/// once, and only a miss waits for the loader's batching window.
pub struct Loaders {
    users: Batched<i64, UserLoader>,
    counts: Batched<i64, CountsLoader>,
    counts_now: Batched<i64, CountsNowLoader>,
    /// Counts this request has read: a node's followerCount and followingCount are one lookup.
    counts_seen: std::sync::Mutex<HashMap<i64, Counts>>,
    /// Users whose edges this request changed: their counts are read as they stand now, not from the
    /// caches, so a mutation's payload shows its own effect.
    written: std::sync::Mutex<std::collections::HashSet<i64>>,
    /// Pairs whose edge this request changed on behalf of their other user (a removal, an approval):
    /// read from PostgreSQL, since a cache load that began before the write may still answer for them.
    written_pairs: std::sync::Mutex<std::collections::HashSet<(i64, i64)>>,
    statuses: Batched<(i64, i64), StatusLoader>,
    lists: Batched<ListKey, ListLoader>,
    known_followers: Batched<KnownKey, KnownFollowersLoader>,
    known_counts: Batched<KnownCountKey, KnownCountLoader>,
    blocks: Batched<(i64, i64), PairFactLoader>,
    requests: Batched<(i64, i64), PairFactLoader>,
    /// Pages of the viewer's own lists (blocks, requests) this request has read: every occurrence of
    /// one page shares one read.
    viewer_pages: Memo<ViewerPageKey, Arc<Vec<ListEntry>>>,
    /// Lengths of the viewer's own lists this request has read, one read per list.
    viewer_counts: Memo<(ViewerList, i64), i64>,
    graph: FollowGraph,
    viewer_id: Option<i64>,
    /// Who reads, shared with the loaders: the viewer, and whether the request is a mutation (then
    /// every read goes to the primary).
    reader: Arc<ReaderCell>,
}

/// A request's [`Reader`], turned to a writer's once the request is known to be a mutation.
#[derive(Debug, Default)]
pub struct ReaderCell {
    viewer_id: Option<i64>,
    writes: std::sync::atomic::AtomicBool,
}

impl ReaderCell {
    fn get(&self) -> Reader {
        Reader {
            viewer_id: self.viewer_id,
            writes: self.writes.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl Loaders {
    /// Fresh loaders over `graph`; `delay` is how long each waits to gather keys into one batch.
    pub fn new(graph: &FollowGraph, delay: Duration, viewer_id: Option<i64>) -> Self {
        let reader = Arc::new(ReaderCell {
            viewer_id,
            writes: Default::default(),
        });
        Self {
            users: Batched::new("users", UserLoader(graph.clone(), reader.clone()), delay),
            counts: Batched::new("counts", CountsLoader(graph.clone(), reader.clone()), delay),
            counts_now: Batched::new("counts_now", CountsNowLoader(graph.clone()), delay),
            counts_seen: std::sync::Mutex::default(),
            written: std::sync::Mutex::default(),
            written_pairs: std::sync::Mutex::default(),
            statuses: Batched::new("statuses", StatusLoader(graph.clone(), viewer_id), delay),
            lists: Batched::new("lists", ListLoader(graph.clone(), reader.clone()), delay),
            known_followers: Batched::new(
                "known_followers",
                KnownFollowersLoader(graph.clone(), reader.clone()),
                delay,
            ),
            known_counts: Batched::new(
                "known_counts",
                KnownCountLoader(graph.clone(), reader.clone()),
                delay,
            ),
            blocks: Batched::new(
                "blocks",
                PairFactLoader(graph.clone(), PairFact::Block),
                delay,
            ),
            requests: Batched::new(
                "requests",
                PairFactLoader(graph.clone(), PairFact::Request),
                delay,
            ),
            viewer_pages: Memo::default(),
            viewer_counts: Memo::default(),
            graph: graph.clone(),
            viewer_id,
            reader,
        }
    }

    /// Who this request reads as (where its lag-tolerant reads may go).
    pub fn reader(&self) -> Reader {
        self.reader.get()
    }

    /// Notes that the request is a mutation: everything it reads from now on, its payload included,
    /// comes from the primary.
    pub fn mark_mutation(&self) {
        self.reader
            .writes
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    // Slow paths are boxed: a resolver's future holds the largest future it may await, and every
    // field's future is as large as its type's largest (async-graphql resolves them through one match),
    // so an inline loader future made every field of a page cost a multi-kilobyte copy.

    /// A user's record, if the user exists.
    pub async fn user(&self, id: i64) -> async_graphql::Result<Option<UserRecord>> {
        match self.graph.peek_user(id) {
            Some(hit) => Ok(hit),
            None => Ok(Box::pin(self.users.load_one(id)).await?),
        }
    }

    /// Records of the users that exist among `ids`.
    pub async fn users(&self, ids: &[i64]) -> async_graphql::Result<HashMap<i64, UserRecord>> {
        let mut found = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        for &id in ids {
            match self.graph.peek_user(id) {
                Some(Some(user)) => {
                    found.insert(id, user);
                }
                Some(None) => {}
                None => missing.push(id),
            }
        }
        if !missing.is_empty() {
            found.extend(Box::pin(self.users.load_many(missing)).await?);
        }
        Ok(found)
    }

    /// A user's counts (zeros for a user with no edges yet).
    pub async fn counts(&self, id: i64) -> async_graphql::Result<Counts> {
        if self.was_written(id) {
            return Ok(Box::pin(self.counts_now.load_one(id))
                .await?
                .unwrap_or_default());
        }
        if let Some(seen) = self
            .counts_seen
            .lock()
            .ok()
            .and_then(|c| c.get(&id).copied())
        {
            return Ok(seen);
        }
        let counts = match self.graph.peek_counts(id) {
            Some(hit) => hit,
            None => Box::pin(self.counts.load_one(id))
                .await?
                .unwrap_or_default(),
        };
        if let Ok(mut seen) = self.counts_seen.lock() {
            seen.insert(id, counts);
        }
        Ok(counts)
    }

    /// Notes that this request changed these users' edges (read their counts as they stand now).
    pub fn mark_written(&self, ids: impl IntoIterator<Item = i64>) {
        if let Ok(mut written) = self.written.lock() {
            written.extend(ids);
        }
    }

    fn was_written(&self, id: i64) -> bool {
        self.written.lock().is_ok_and(|w| w.contains(&id))
    }

    /// Notes that this request changed these pairs' edges for their other user: their status is read
    /// from PostgreSQL (see `written_pairs`).
    pub fn mark_pairs_written(&self, pairs: impl IntoIterator<Item = (i64, i64)>) {
        if let Ok(mut written) = self.written_pairs.lock() {
            written.extend(pairs);
        }
    }

    fn pair_was_written(&self, pair: (i64, i64)) -> bool {
        self.written_pairs.lock().is_ok_and(|w| w.contains(&pair))
    }

    /// Whether `pair.0` follows `pair.1`.
    pub async fn status(&self, pair: (i64, i64)) -> async_graphql::Result<bool> {
        if self.pair_was_written(pair) {
            let edges = Box::pin(self.graph.statuses_now(&[pair]))
                .await
                .map_err(to_graphql_error)?;
            return Ok(edges.contains(&pair));
        }
        match self.graph.peek_status(pair, self.viewer_id) {
            Some(hit) => Ok(hit),
            None => Ok(Box::pin(self.statuses.load_one(pair))
                .await?
                .unwrap_or(false)),
        }
    }

    /// Whether each pair is an edge.
    pub async fn statuses(
        &self,
        pairs: &[(i64, i64)],
    ) -> async_graphql::Result<HashMap<(i64, i64), bool>> {
        let (mut found, missing) = self.graph.peek_statuses(pairs, self.viewer_id);
        if !missing.is_empty() {
            found.extend(Box::pin(self.statuses.load_many(missing)).await?);
        }
        Ok(found)
    }

    /// One list page (`key.limit` rows at most).
    pub async fn list(&self, key: ListKey) -> async_graphql::Result<Arc<Vec<ListEntry>>> {
        if key.after.is_none()
            && let Some(page) = self
                .graph
                .peek_first_page(key.kind, key.owner_id, key.limit)
        {
            return Ok(page);
        }
        Ok(Box::pin(self.lists.load_one(key))
            .await?
            .unwrap_or_default())
    }

    /// One known-followers page (`key.page.limit` rows at most). Not cached: it goes to PostgreSQL with
    /// every other known-followers page of the request, in one statement.
    pub async fn known_followers(
        &self,
        key: KnownKey,
    ) -> async_graphql::Result<Arc<Vec<ListEntry>>> {
        Ok(self
            .known_followers
            .load_one(key)
            .await?
            .unwrap_or_default())
    }

    /// How many followers of `key.owner_id` the viewer follows, batched with the request's other
    /// known-followers counts into one statement.
    pub async fn known_followers_count(&self, key: KnownCountKey) -> async_graphql::Result<i64> {
        Ok(self.known_counts.load_one(key).await?.unwrap_or(0))
    }

    /// Whether `pair.0` blocks `pair.1` (the request's pairs in one statement; not cached).
    pub async fn block(&self, pair: (i64, i64)) -> async_graphql::Result<bool> {
        Ok(Box::pin(self.blocks.load_one(pair)).await?.unwrap_or(false))
    }

    /// A page of one of the viewer's own lists (`key.limit` rows at most). Consent data: read from the
    /// primary by each request, never cached across requests; but one read per distinct page within a
    /// request, shared by all its occurrences (an alias flood of `blocking` was one statement each).
    pub async fn viewer_list_page(
        &self,
        key: ViewerPageKey,
    ) -> async_graphql::Result<Arc<Vec<ListEntry>>> {
        let graph = &self.graph;
        Box::pin(self.viewer_pages.get_or_load(key, || async move {
            graph
                .viewer_list_page(key.list, key.viewer_id, key.after, key.limit)
                .await
                .map(Arc::new)
                .map_err(to_graphql_error)
        }))
        .await
    }

    /// How long one of the viewer's own lists is: read once per request, as its pages.
    pub async fn viewer_list_count(
        &self,
        list: ViewerList,
        viewer_id: i64,
    ) -> async_graphql::Result<i64> {
        let graph = &self.graph;
        Box::pin(
            self.viewer_counts
                .get_or_load((list, viewer_id), || async move {
                    graph
                        .viewer_list_count(list, viewer_id)
                        .await
                        .map_err(to_graphql_error)
                }),
        )
        .await
    }

    /// Whether `pair.0` has a request pending to follow `pair.1` (batched as blocks; not cached).
    pub async fn request(&self, pair: (i64, i64)) -> async_graphql::Result<bool> {
        Ok(Box::pin(self.requests.load_one(pair))
            .await?
            .unwrap_or(false))
    }
}

/// Which fact about a pair a [`PairFactLoader`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairFact {
    /// `pair.0` blocks `pair.1`.
    Block,
    /// `pair.0` has a request pending to follow `pair.1`.
    Request,
}

/// A fact about pairs, read from PostgreSQL (not cached): every pair asked gets an answer.
pub struct PairFactLoader(FollowGraph, PairFact);

impl Loader<(i64, i64)> for PairFactLoader {
    type Value = bool;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[(i64, i64)]) -> Result<HashMap<(i64, i64), bool>, Self::Error> {
        let found = match self.1 {
            PairFact::Block => self.0.blocks_between(keys).await,
            PairFact::Request => self.0.requests_between(keys).await,
        }
        .map_err(to_graphql_error)?;
        Ok(keys.iter().map(|k| (*k, found.contains(k))).collect())
    }
}

/// One page of one of a viewer's own lists. The viewer is part of the key, as in [`KnownKey`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ViewerPageKey {
    pub list: ViewerList,
    pub viewer_id: i64,
    pub after: Option<Keyset>,
    /// Rows to fetch: the page size plus one, to learn whether a next page exists.
    pub limit: i64,
}

/// Values read once per request and key: the first caller reads, callers meanwhile wait for its read,
/// later callers take it. No batching window: a [`Batched`] leader gathers only the keys asked while it
/// yields, and fields that reach their key at different wakeups (each `totalCount` of an alias flood
/// of the viewer's lists, once its page came) each ended up loading alone. A failed read is not kept:
/// the next caller reads again.
struct Memo<K, V> {
    cells: std::sync::Mutex<HashMap<K, Arc<tokio::sync::OnceCell<V>>>>,
}

impl<K, V> Default for Memo<K, V> {
    fn default() -> Self {
        Self {
            cells: std::sync::Mutex::default(),
        }
    }
}

impl<K: Hash + Eq, V: Clone> Memo<K, V> {
    async fn get_or_load<F, Fut>(&self, key: K, load: F) -> async_graphql::Result<V>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = async_graphql::Result<V>>,
    {
        let cell = self
            .cells
            .lock()
            .ok()
            .map(|mut cells| cells.entry(key).or_default().clone());
        match cell {
            Some(cell) => cell.get_or_try_init(load).await.cloned(),
            None => load().await,
        }
    }
}

/// User records by id.
pub struct UserLoader(FollowGraph, Arc<ReaderCell>);

impl Loader<i64> for UserLoader {
    type Value = UserRecord;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, UserRecord>, Self::Error> {
        self.0
            .users(keys, self.1.get())
            .await
            .map_err(to_graphql_error)
    }
}

/// Follower and following counts by user id (absent: zero).
pub struct CountsLoader(FollowGraph, Arc<ReaderCell>);

impl Loader<i64> for CountsLoader {
    type Value = Counts;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, Counts>, Self::Error> {
        self.0
            .counts(keys, self.1.get())
            .await
            .map_err(to_graphql_error)
    }
}

/// Counts as the edges stand now, for users the request wrote.
pub struct CountsNowLoader(FollowGraph);

impl Loader<i64> for CountsNowLoader {
    type Value = Counts;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, Counts>, Self::Error> {
        self.0.counts_now(keys).await.map_err(to_graphql_error)
    }
}

/// Follow status by (follower, followee) pair: every pair asked gets an answer, true or false.
pub struct StatusLoader(FollowGraph, Option<i64>);

impl Loader<(i64, i64)> for StatusLoader {
    type Value = bool;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[(i64, i64)]) -> Result<HashMap<(i64, i64), bool>, Self::Error> {
        self.0
            .statuses(keys, self.1)
            .await
            .map_err(to_graphql_error)
    }
}

/// One page of a follower or following list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListKey {
    pub kind: ListKind,
    pub owner_id: i64,
    pub after: Option<Keyset>,
    /// Rows to fetch: the page size plus one, to learn whether a next page exists.
    pub limit: i64,
}

/// List pages; keys that share kind, cursor and size are fetched together in one query.
pub struct ListLoader(FollowGraph, Arc<ReaderCell>);

impl Loader<ListKey> for ListLoader {
    type Value = Arc<Vec<ListEntry>>;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[ListKey],
    ) -> Result<HashMap<ListKey, Arc<Vec<ListEntry>>>, Self::Error> {
        let mut groups: HashMap<(ListKind, Option<Keyset>, i64), Vec<i64>> = HashMap::new();
        for key in keys {
            groups
                .entry((key.kind, key.after, key.limit))
                .or_default()
                .push(key.owner_id);
        }
        let mut pages = HashMap::with_capacity(keys.len());
        for ((kind, after, limit), owners) in groups {
            let mut found = self
                .0
                .list_pages(kind, &owners, after, limit, self.1.get())
                .await
                .map_err(to_graphql_error)?;
            for owner_id in owners {
                let page = found.remove(&owner_id).unwrap_or_default();
                pages.insert(
                    ListKey {
                        kind,
                        owner_id,
                        after,
                        limit,
                    },
                    page,
                );
            }
        }
        Ok(pages)
    }
}

/// One page of the followers of `page.owner_id` whom `viewer_id` follows. The viewer is part of the key
/// (rather than of the loader) so that a batch can never mix one viewer's answers into another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KnownKey {
    pub viewer_id: i64,
    /// Owner, cursor and rows to fetch (the page size plus one, to learn whether a next page exists).
    pub page: KnownPage,
}

/// Known-followers pages: every key of a batch (all of one viewer, as keys of one request are) is
/// fetched in one statement, whatever their owners, cursors and sizes.
pub struct KnownFollowersLoader(FollowGraph, Arc<ReaderCell>);

impl Loader<KnownKey> for KnownFollowersLoader {
    type Value = Arc<Vec<ListEntry>>;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[KnownKey],
    ) -> Result<HashMap<KnownKey, Arc<Vec<ListEntry>>>, Self::Error> {
        let mut by_viewer: HashMap<i64, Vec<KnownPage>> = HashMap::new();
        for key in keys {
            by_viewer.entry(key.viewer_id).or_default().push(key.page);
        }
        let mut pages = HashMap::with_capacity(keys.len());
        for (viewer_id, asked) in by_viewer {
            let found = self
                .0
                .known_followers_pages(viewer_id, &asked, self.1.get())
                .await
                .map_err(to_graphql_error)?;
            for (page, entries) in asked.into_iter().zip(found) {
                pages.insert(KnownKey { viewer_id, page }, Arc::new(entries));
            }
        }
        Ok(pages)
    }
}

/// How many followers of `owner_id` the viewer `viewer_id` follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KnownCountKey {
    pub viewer_id: i64,
    pub owner_id: i64,
}

/// Known-followers counts: every owner of a batch (per viewer: one per request) in one GROUP BY
/// statement; every key gets an answer, zero included.
pub struct KnownCountLoader(FollowGraph, Arc<ReaderCell>);

impl Loader<KnownCountKey> for KnownCountLoader {
    type Value = i64;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[KnownCountKey],
    ) -> Result<HashMap<KnownCountKey, i64>, Self::Error> {
        let mut by_viewer: HashMap<i64, Vec<i64>> = HashMap::new();
        for key in keys {
            by_viewer
                .entry(key.viewer_id)
                .or_default()
                .push(key.owner_id);
        }
        let mut counts = HashMap::with_capacity(keys.len());
        for (viewer_id, owners) in by_viewer {
            let found = self
                .0
                .known_followers_counts(viewer_id, &owners, self.1.get())
                .await
                .map_err(to_graphql_error)?;
            for owner_id in owners {
                let n = found.get(&owner_id).copied().unwrap_or(0);
                counts.insert(
                    KnownCountKey {
                        viewer_id,
                        owner_id,
                    },
                    n,
                );
            }
        }
        Ok(counts)
    }
}
