//! DataLoaders: every per-user and per-pair field of a response is gathered into one batched lookup
//! per kind, so a page of 100 users costs a handful of queries, not hundreds.

use std::{collections::HashMap, time::Duration};

use async_graphql::dataloader::{DataLoader, Loader};

use super::to_graphql_error;
use crate::{
    db::{
        follows::{Keyset, ListEntry, ListKind},
        stats::Counts,
        users::UserRecord,
    },
    graph::FollowGraph,
};

/// The loaders of one request (created per request, so nothing leaks between viewers).
pub struct Loaders {
    pub users: DataLoader<UserLoader>,
    pub counts: DataLoader<CountsLoader>,
    pub statuses: DataLoader<StatusLoader>,
    pub lists: DataLoader<ListLoader>,
}

impl Loaders {
    /// Fresh loaders over `graph`; `delay` is how long each waits to gather keys into one batch.
    pub fn new(graph: &FollowGraph, delay: Duration) -> Self {
        Self {
            users: DataLoader::new(UserLoader(graph.clone()), spawn_in_span).delay(delay),
            counts: DataLoader::new(CountsLoader(graph.clone()), spawn_in_span).delay(delay),
            statuses: DataLoader::new(StatusLoader(graph.clone()), spawn_in_span).delay(delay),
            lists: DataLoader::new(ListLoader(graph.clone()), spawn_in_span).delay(delay),
        }
    }
}

/// Runs a loader's batch in the span of the request that started it, so its log lines carry the request id.
fn spawn_in_span(batch: futures::future::BoxFuture<'static, ()>) -> tokio::task::JoinHandle<()> {
    use tracing::Instrument;
    tokio::spawn(batch.in_current_span())
}

/// Records how many keys one batch of `loader` carried.
fn record_batch(loader: &'static str, keys: usize) {
    ::metrics::histogram!(crate::telemetry::metrics::LOADER_BATCH, "loader" => loader)
        .record(keys as f64);
}

/// User records by id.
pub struct UserLoader(FollowGraph);

impl Loader<i64> for UserLoader {
    type Value = UserRecord;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, UserRecord>, Self::Error> {
        record_batch("users", keys.len());
        self.0.users(keys).await.map_err(to_graphql_error)
    }
}

/// Follower and following counts by user id (absent: zero).
pub struct CountsLoader(FollowGraph);

impl Loader<i64> for CountsLoader {
    type Value = Counts;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[i64]) -> Result<HashMap<i64, Counts>, Self::Error> {
        record_batch("counts", keys.len());
        self.0.counts(keys).await.map_err(to_graphql_error)
    }
}

/// Follow status by (follower, followee) pair: every pair asked gets an answer, true or false.
pub struct StatusLoader(FollowGraph);

impl Loader<(i64, i64)> for StatusLoader {
    type Value = bool;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[(i64, i64)]) -> Result<HashMap<(i64, i64), bool>, Self::Error> {
        record_batch("statuses", keys.len());
        let edges = self.0.statuses(keys).await.map_err(to_graphql_error)?;
        Ok(keys
            .iter()
            .map(|pair| (*pair, edges.contains(pair)))
            .collect())
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
pub struct ListLoader(FollowGraph);

impl Loader<ListKey> for ListLoader {
    type Value = Vec<ListEntry>;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[ListKey],
    ) -> Result<HashMap<ListKey, Vec<ListEntry>>, Self::Error> {
        record_batch("lists", keys.len());
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
                .list_pages(kind, &owners, after, limit)
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
