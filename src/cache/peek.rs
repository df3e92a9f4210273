//! L1-only answers that never wait: resolvers try them before their loaders, so an L1 hit skips the
//! batch. Each counts its hits; a miss is counted by the lookup that follows.

use std::{collections::HashMap, sync::Arc};

use super::{Caches, read::count, sets::Following};
use crate::{
    db::{
        follows::{ListEntry, ListKind},
        users::UserRecord,
    },
    domain::Counts,
};

/// Statuses answered from L1, and the pairs still to load (in the order asked).
pub type StatusPeek = (HashMap<(i64, i64), bool>, Vec<(i64, i64)>);

impl Caches {
    /// L1 only, no waiting: the status of a pair if this instance holds it (never for the viewer's own
    /// pairs). Resolvers try this before their loader, so an L1 hit skips the batch.
    pub fn peek_status(&self, pair: (i64, i64), viewer: Option<i64>) -> Option<bool> {
        if Some(pair.0) == viewer {
            return None;
        }
        self.peek("status", || {
            let set = self.sets.get(pair.0);
            // Hits only: a miss is counted by the lookup that follows, as for every peek.
            count("sets", "l1", "hit", usize::from(set.is_some()));
            self.status_in(set.as_ref(), pair)
        })
    }

    /// A pair's status as L1 holds it: from the follower's set, or the pair's own entry when the
    /// follower is over the set limit.
    fn status_in(&self, set: Option<&Following>, pair: (i64, i64)) -> Option<bool> {
        match set? {
            Following::Members(members) => Some(members.contains(pair.1)),
            Following::Large => self.status.get(&pair).map(|v| v.value),
        }
    }

    /// L1 only: the following set of `user`, if this instance holds it (warm-up and tests).
    pub fn peek_following(&self, user: i64) -> Option<Following> {
        self.l1_active().then(|| self.sets.get(user)).flatten()
    }

    /// L1 only, no waiting: the statuses of the pairs this instance can answer (never the viewer's own),
    /// and the pairs it cannot, in order. One lookup per follower, not per pair.
    pub fn peek_statuses(&self, pairs: &[(i64, i64)], viewer: Option<i64>) -> StatusPeek {
        let mut found = HashMap::with_capacity(pairs.len());
        if !self.l1_active() {
            return (found, pairs.to_vec());
        }
        let mut missing = Vec::new();
        let mut sets: HashMap<i64, Option<Following>> = HashMap::new();
        for &pair in pairs {
            if Some(pair.0) == viewer {
                missing.push(pair);
                continue;
            }
            let set = sets.entry(pair.0).or_insert_with(|| self.sets.get(pair.0));
            match self.status_in(set.as_ref(), pair) {
                Some(follows) => {
                    found.insert(pair, follows);
                }
                None => missing.push(pair),
            }
        }
        count(
            "sets",
            "l1",
            "hit",
            sets.values().filter(|set| set.is_some()).count(),
        );
        count("status", "l1", "hit", found.len());
        (found, missing)
    }

    /// L1 only: a user's counts if this instance holds them.
    pub fn peek_counts(&self, user: i64) -> Option<Counts> {
        self.peek("counts", || self.counts.get(&user).map(|v| v.value))
    }

    /// L1 only: a user's record (`Some(None)`: known not to exist) if this instance holds it.
    pub fn peek_user(&self, user: i64) -> Option<Option<UserRecord>> {
        self.peek("users", || self.users.get(&user).map(|v| v.value))
    }

    /// L1 only: the first page (`limit` rows) of a list if this instance holds it at the list's version.
    pub fn peek_first_page(
        &self,
        kind: ListKind,
        owner: i64,
        limit: i64,
    ) -> Option<Arc<Vec<ListEntry>>> {
        self.peek("lists", || {
            let version = self.list_versions.get(&(kind, owner))?.version;
            self.pages
                .get(&(kind, owner, version, limit))
                .map(|page| page.value)
        })
    }

    /// An L1 lookup while L1 is in use, counting its hit (a miss is counted by the lookup that follows).
    fn peek<T>(&self, cache: &'static str, lookup: impl FnOnce() -> Option<T>) -> Option<T> {
        if !self.l1_active() {
            return None;
        }
        let hit = lookup();
        if hit.is_some() {
            count(cache, "l1", "hit", 1);
        }
        hit
    }
}
