//! Follow statuses: the viewer's own recent changes (read-your-writes), each follower's following set,
//! and pair by pair (a [`CachedKind`]) for followers over the set limit.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::Arc,
    time::Duration,
};

use super::{
    Caches, CachesInner,
    keys::{self, KeyNames},
    l1::{Versioned, VersionedCache},
    l2::SetFill,
    read::{CachedKind, Fill, count, split_versioned},
    sets::{self, Following, Members},
    singleflight::Inflight,
};
use crate::{config::CacheSettings, telemetry::metrics::CACHE_COALESCED};

/// How long after Redis's data began (or was lost) the viewer's recent changes are trusted: longer than
/// any set load takes (a load in flight at the loss may carry a state from before a lost change).
const RECENT_TRUSTED_AFTER: Duration = Duration::from_secs(10);

/// Where a following set was found, for the hit-rate counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    L1,
    L2,
    Store,
}

impl Caches {
    /// Marks when Redis's cache data began, unless it is marked already: the epoch of the recent
    /// changes (see `RECENT_TRUSTED_AFTER`) and every hash slot's, for list versions (see `lists`).
    pub async fn start_epoch(&self) {
        if self.settings.enabled {
            let now = chrono::Utc::now().timestamp_millis();
            self.l2.start_epochs(&[self.names.epoch()], now).await;
            self.start_slot_epochs().await;
        }
    }

    /// Loads the following sets of `users` into the caches (warm-up), as a status lookup would.
    pub async fn load_following_sets<E, F, Fut>(&self, users: &[i64], load: F) -> Result<usize, E>
    where
        F: Fn(Vec<i64>) -> Fut,
        Fut: Future<Output = Result<HashMap<i64, Vec<i64>>, E>>,
    {
        if !self.settings.enabled {
            return Ok(0);
        }
        Ok(self.following_sets(users, load).await?.len())
    }

    /// Follow status of each pair (every pair answered), from the followers' following sets; pairs of
    /// a follower over the set limit by pair lookups. `viewer`'s own pairs also read the viewer's recent
    /// changes from L2, so that a write is seen at once on every instance (read-your-writes), and go to
    /// PostgreSQL when Redis is unavailable.
    pub async fn statuses<E, FS, FSF, FP, FPF>(
        &self,
        pairs: &[(i64, i64)],
        viewer: Option<i64>,
        load_sets: FS,
        load_pairs: FP,
    ) -> Result<HashMap<(i64, i64), bool>, E>
    where
        FS: Fn(Vec<i64>) -> FSF,
        FSF: Future<Output = Result<HashMap<i64, Vec<i64>>, E>>,
        FP: Fn(Vec<(i64, i64)>) -> FPF,
        FPF: Future<Output = Result<HashSet<(i64, i64)>, E>>,
    {
        let mut answers = HashMap::with_capacity(pairs.len());
        if !self.settings.enabled {
            let edges = load_pairs(pairs.to_vec()).await?;
            answers.extend(pairs.iter().map(|p| (*p, edges.contains(p))));
            return Ok(answers);
        }
        // The viewer's own changes of the last minute: newer than any set an instance may hold. Unless
        // Redis lost its data a moment ago (taking recent changes along, while a set load that read
        // PostgreSQL before one of them may still be in flight): then, as with Redis unavailable, the
        // viewer's own pairs are read from PostgreSQL.
        let recent: Option<HashMap<i64, bool>> = match viewer {
            Some(viewer) if pairs.iter().any(|p| p.0 == viewer) => self
                .l2
                .recent_changes(
                    &self.names.recent_changes(viewer),
                    &self.names.epoch(),
                    chrono::Utc::now().timestamp_millis(),
                )
                .await
                .filter(|recent| recent.data_age_ms >= RECENT_TRUSTED_AFTER.as_millis() as i64)
                .map(|recent| sets::decode_recent(&recent.fields)),
            _ => None,
        };
        let mut direct = Vec::new();
        let mut by_set = Vec::with_capacity(pairs.len());
        for &pair in pairs {
            if Some(pair.0) == viewer {
                match recent.as_ref() {
                    // Redis unavailable: the viewer's own pairs as PostgreSQL has them.
                    None => {
                        direct.push(pair);
                        continue;
                    }
                    Some(recent) => {
                        if let Some(&follows) = recent.get(&pair.1) {
                            answers.insert(pair, follows);
                            count("status", "l2", "hit", 1);
                            continue;
                        }
                    }
                }
            }
            by_set.push(pair);
        }

        // The viewer's own pairs read from PostgreSQL, concurrently with the others' sets.
        let direct_edges = async {
            if direct.is_empty() {
                Ok(HashSet::new())
            } else {
                load_pairs(direct.clone()).await
            }
        };
        let (direct_edges, from_sets) = futures::try_join!(
            direct_edges,
            self.statuses_from_sets(by_set, viewer, load_sets, &load_pairs)
        )?;
        answers.extend(from_sets);
        answers.extend(direct.into_iter().map(|p| (p, direct_edges.contains(&p))));
        Ok(answers)
    }

    /// Statuses from the followers' sets (pair lookups for followers over the set limit).
    async fn statuses_from_sets<E, FS, FSF, FP, FPF>(
        &self,
        pairs: Vec<(i64, i64)>,
        viewer: Option<i64>,
        load_sets: FS,
        load_pairs: &FP,
    ) -> Result<HashMap<(i64, i64), bool>, E>
    where
        FS: Fn(Vec<i64>) -> FSF,
        FSF: Future<Output = Result<HashMap<i64, Vec<i64>>, E>>,
        FP: Fn(Vec<(i64, i64)>) -> FPF,
        FPF: Future<Output = Result<HashSet<(i64, i64)>, E>>,
    {
        let mut answers = HashMap::with_capacity(pairs.len());
        if pairs.is_empty() {
            return Ok(answers);
        }
        let mut followers: Vec<i64> = pairs.iter().map(|p| p.0).collect();
        followers.sort_unstable();
        followers.dedup();
        let sets = self.following_sets(&followers, load_sets).await?;
        let mut large = Vec::new();
        let (mut from_l1, mut from_l2, mut from_store) = (0, 0, 0);
        for pair in pairs {
            match sets.get(&pair.0) {
                Some((Following::Members(members), source)) => {
                    answers.insert(pair, members.contains(pair.1));
                    match source {
                        Source::L1 => from_l1 += 1,
                        Source::L2 => from_l2 += 1,
                        Source::Store => from_store += 1,
                    }
                }
                _ => large.push(pair),
            }
        }
        count("status", "l1", "hit", from_l1);
        count("status", "l1", "miss", from_l2 + from_store);
        count("status", "l2", "hit", from_l2);
        count("status", "l2", "miss", from_store);
        if !large.is_empty() {
            answers.extend(self.pair_statuses(&large, viewer, load_pairs).await?);
        }
        Ok(answers)
    }

    /// Following sets of `users`: L1, then L2 (one pipeline), then PostgreSQL (one statement, each set
    /// cut at the limit + 1), coalesced with loads in flight; loaded sets fill both levels unless a
    /// change raced their load.
    ///
    /// Not a [`CachedKind`], because a set's races are closed by generations, not versions: its L2 read
    /// returns the generation that the L2 fill script must find unchanged (and sets none to fill with
    /// when Redis is unavailable), its L1 fill checks a generation of the user's stripe instead of a
    /// ticket, and each set answers with where it was found (the status counters count by it).
    async fn following_sets<E, F, Fut>(
        &self,
        users: &[i64],
        load: F,
    ) -> Result<HashMap<i64, (Following, Source)>, E>
    where
        F: Fn(Vec<i64>) -> Fut,
        Fut: Future<Output = Result<HashMap<i64, Vec<i64>>, E>>,
    {
        let use_l1 = self.l1_active();
        let mut found = HashMap::with_capacity(users.len());
        let mut pending = Vec::new();
        for &user in users {
            match use_l1.then(|| self.sets.get(user)).flatten() {
                Some(set) => {
                    found.insert(user, (set, Source::L1));
                }
                None => pending.push(user),
            }
        }
        count("sets", "l1", "hit", found.len());
        count("sets", "l1", "miss", pending.len());
        if pending.is_empty() {
            return Ok(found);
        }
        let load_missing = |users: Vec<i64>| {
            let load = &load;
            async move {
                // Read before L2 and PostgreSQL: a change after this point makes the fills stand down.
                let generations: Vec<u64> =
                    users.iter().map(|u| self.sets.generation(*u)).collect();
                let keys: Vec<(String, String)> = users
                    .iter()
                    .map(|u| (self.names.following_set(*u), self.names.recent_changes(*u)))
                    .collect();
                let stored = self.l2.read_sets(&keys).await;
                let mut values = HashMap::with_capacity(users.len());
                let mut missing = Vec::new();
                match stored {
                    Some(stored) => {
                        for ((user, generation), (members, l2_generation)) in
                            users.iter().zip(&generations).zip(stored)
                        {
                            match sets::decode(&members) {
                                Some(set) => {
                                    values.insert(*user, (set, Source::L2, *generation));
                                }
                                None => missing.push((*user, *generation, Some(l2_generation))),
                            }
                        }
                        count("sets", "l2", "hit", values.len());
                        count("sets", "l2", "miss", missing.len());
                    }
                    None => {
                        count("sets", "l2", "unavailable", users.len());
                        missing = users
                            .iter()
                            .zip(&generations)
                            .map(|(u, g)| (*u, *g, None))
                            .collect();
                    }
                }
                if !missing.is_empty() {
                    let mut loaded = load(missing.iter().map(|m| m.0).collect()).await?;
                    let mut fills = Vec::new();
                    for (user, generation, l2_generation) in missing {
                        let ids = loaded.remove(&user).unwrap_or_default();
                        let set = if ids.len() > self.settings.set_limit {
                            Following::Large
                        } else {
                            Following::Members(Arc::new(Members::new(ids)))
                        };
                        if let Some(l2_generation) = l2_generation {
                            fills.push(SetFill {
                                set_key: self.names.following_set(user),
                                recent_key: self.names.recent_changes(user),
                                generation: l2_generation,
                                members: sets::encode(&set),
                                ttl: self.settings.sets_ttl,
                            });
                        }
                        values.insert(user, (set, Source::Store, generation));
                    }
                    // Filling L2 is not on the answer's path.
                    if !fills.is_empty() {
                        let caches = self.clone();
                        tokio::spawn(async move { caches.l2.fill_sets(&fills).await });
                    }
                }
                Ok(values
                    .into_iter()
                    .map(|(user, (set, source, generation))| {
                        if use_l1 {
                            self.sets.fill(user, set.clone(), generation);
                        }
                        (user, (set, source))
                    })
                    .collect())
            }
        };
        let (loaded, joined) = self.inflight_sets.load(pending, load_missing).await?;
        if joined > 0 {
            ::metrics::counter!(CACHE_COALESCED, "cache" => "sets").increment(joined as u64);
        }
        found.extend(loaded);
        Ok(found)
    }

    /// Pair statuses of followers over the set limit: L1 (not for the viewer's own pairs), L2, then
    /// PostgreSQL, pair by pair.
    async fn pair_statuses<E, F, Fut>(
        &self,
        pairs: &[(i64, i64)],
        viewer: Option<i64>,
        load: &F,
    ) -> Result<HashMap<(i64, i64), bool>, E>
    where
        F: Fn(Vec<(i64, i64)>) -> Fut,
        Fut: Future<Output = Result<HashSet<(i64, i64)>, E>>,
    {
        let load = |pairs: Vec<(i64, i64)>| {
            let edges = load(pairs.clone());
            async move {
                let edges = edges.await?;
                Ok(pairs
                    .into_iter()
                    .map(|p| {
                        (
                            p,
                            Versioned {
                                version: 0,
                                value: edges.contains(&p),
                            },
                        )
                    })
                    .collect())
            }
        };
        self.lookup(&PairStatuses { viewer }, pairs, load).await
    }
}

/// The status of one pair whose follower is over the set limit, versioned by the outbox id of the
/// change that set it. The viewer's own pairs skip L1 (read-your-writes on every instance).
pub(super) struct PairStatuses {
    pub viewer: Option<i64>,
}

impl CachedKind for PairStatuses {
    type Key = (i64, i64);
    type Value = bool;
    const LABEL: &'static str = "status_pairs";

    fn l1<'c>(&self, caches: &'c CachesInner) -> &'c VersionedCache<(i64, i64), bool> {
        &caches.status
    }

    fn inflight<'c>(&self, caches: &'c CachesInner) -> &'c Inflight<(i64, i64), Versioned<bool>> {
        &caches.inflight_status
    }

    fn skip_l1(&self, (follower, _): &(i64, i64)) -> bool {
        Some(*follower) == self.viewer
    }

    fn l2_key(&self, names: &KeyNames, (follower, followee): &(i64, i64)) -> String {
        names.status(*follower, *followee)
    }

    fn decode(&self, _: &(i64, i64), stored: &str) -> Option<Versioned<bool>> {
        split_versioned(stored, |_, payload| keys::decode_status(payload))
    }

    fn fill(&self, settings: &CacheSettings, name: String, status: &Versioned<bool>) -> Fill {
        let payload = keys::encode_status(status.value).to_owned();
        Fill::versioned(name, status.version, payload, settings.status_ttl)
    }
}
