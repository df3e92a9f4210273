//! The two-level cache behind the loaders: L1 in process (mini-moka), L2 in Redis, PostgreSQL last.
//!
//! What is cached: each user's following set (every follow status, negative answers too; pair statuses
//! for users over the set limit), counts per user, user records, and the first pages of follower and
//! following lists. A lookup tries L1, then one MGET for the rest, then one
//! query for what is still missing (coalesced with any load of the same keys in flight), and fills both
//! levels on the way back.
//!
//! Freshness rests on versions. Every cached value carries one: a status the outbox id of the change that
//! set it, counts `user_stats.version`, a user record its `updated_at`, a list its version counter
//! (bumped by the event consumer; page keys include it, so one bump drops every cached page of the list).
//! Both levels keep the highest version they have seen, so a slow reader filling an old value after a
//! write cannot undo it (values read from PostgreSQL carry their row's version; where no row dates them,
//! version 0, which only fills a gap). List versions never repeat, even after Redis lost its data.
//!
//! Who updates what: a follow or unfollow writes the pair's status to L1 and L2 before it returns and
//! announces it on pub/sub (every instance applies it to its L1); the event consumer, after applying a
//! batch, writes the statuses and new counts it applied and bumps the lists' versions, announced the
//! same way. That second path repairs anything the first missed (a write whose Redis call failed).
//! A viewer's own pairs are read with the viewer's recent changes from L2, so that read-your-writes holds
//! on every instance the moment a write returns; other readers see it as soon as the announcement
//! arrives (well under a millisecond here).
//!
//! Redis trouble never fails a read: calls have a short budget, a circuit breaker stops calling Redis
//! for a moment after repeated failures, L1 is suspended while the invalidation subscription is down,
//! and writes that could not reach Redis leave their keys dirty, deleted before Redis is read again.

pub mod invalidation;
pub mod keys;
pub mod l1;
pub mod l2;
pub mod sets;
pub mod singleflight;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    hash::Hash,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mini_moka::sync::{Cache as MokaCache, ConcurrentCacheExt};

use self::{
    invalidation::{Announcement, message},
    keys::KeyNames,
    l1::{Ticket, Versioned, VersionedCache},
    l2::{Batch, ChangeWrite, L2, SetFill, VersionedWrite},
    sets::{Following, Members, SetCache},
    singleflight::Inflight,
};
use crate::{
    config::CacheSettings,
    db::{
        follows::{ListEntry, ListKind},
        stats::{AppliedBatch, Counts},
        users::UserRecord,
    },
    redis_health::RedisHealth,
    redis_pool::RedisPool,
    telemetry::metrics::{CACHE_COALESCED, CACHE_REQUESTS},
};

/// The caches of one process; cheap to clone.
#[derive(Clone)]
pub struct Caches(Arc<CachesInner>);

/// The parts of the cache.
pub struct CachesInner {
    settings: CacheSettings,
    names: KeyNames,
    l2: L2,
    /// Following sets: the status of most pairs.
    sets: SetCache,
    /// Pair statuses of users whose following set is over the limit.
    status: VersionedCache<(i64, i64), bool>,
    counts: VersionedCache<i64, Counts>,
    users: VersionedCache<i64, Option<UserRecord>>,
    /// The version of each list, as last read or announced.
    list_versions: VersionedCache<(ListKind, i64), ()>,
    /// List pages by (kind, owner, list version, rows): immutable, so unversioned.
    pages: MokaCache<(ListKind, i64, i64, i64), Arc<Vec<ListEntry>>>,
    /// Whether the invalidation subscription is up (L1 is used only then).
    l1_live: AtomicBool,
    /// This instance's name on the invalidation channel: a message it sent with this name (a write's
    /// statuses, already in its L1) it skips when it comes back.
    origin: String,
    /// Viewers seen since the last flush to Redis's active-viewers set (for the next warm-up).
    active: std::sync::Mutex<HashSet<i64>>,
    inflight_sets: Inflight<i64, (Following, Source)>,
    inflight_status: Inflight<(i64, i64), Versioned<bool>>,
    inflight_counts: Inflight<i64, Versioned<Counts>>,
    inflight_users: Inflight<i64, Versioned<Option<UserRecord>>>,
    inflight_pages: Inflight<(ListKind, i64, i64, i64), Arc<Vec<ListEntry>>>,
}

impl std::ops::Deref for Caches {
    type Target = CachesInner;

    fn deref(&self) -> &CachesInner {
        &self.0
    }
}

/// Each kind's share of `FOLLOW_L1_MAX_BYTES`, in percent: sets are the biggest and most reused.
pub const L1_SHARES: [(&str, u64); 6] = [
    ("sets", 40),
    ("pages", 25),
    ("users", 15),
    ("status", 10),
    ("counts", 5),
    ("list_versions", 5),
];

use l2::RECENT_TTL;

/// How long after Redis's data began (or was lost) the viewer's recent changes are trusted: longer than
/// any set load takes (a load in flight at the loss may carry a state from before a lost change).
const RECENT_TRUSTED_AFTER: Duration = Duration::from_secs(10);

/// Statuses answered from L1, and the pairs still to load (in the order asked).
pub type StatusPeek = (HashMap<(i64, i64), bool>, Vec<(i64, i64)>);

/// Most viewers remembered as recently active.
const ACTIVE_KEPT: usize = 10_000;

/// Where a following set was found, for the hit-rate counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    L1,
    L2,
    Store,
}

/// Adds `n` to the lookups of `cache` at `level` with `result`. The counter handles are kept per
/// thread: building and hashing the labelled key on every call showed in profiles of cache hits.
fn count(cache: &'static str, level: &'static str, result: &'static str, n: usize) {
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

/// The announcement that drops, on every instance, the L1 entries of these deleted dirty keys, one
/// line per entry (a failed write dirties a pair's status, set and recent changes together). Their
/// changes reached no other instance (a renamed user, say, has no event for the consumer to repair it).
fn drops_of(names: &KeyNames, keys: &[String]) -> Option<(String, String)> {
    let mut lines: Vec<String> = keys
        .iter()
        .filter_map(|key| {
            let drop = match names.parse(key)? {
                keys::Named::Status { follower, followee } => {
                    Announcement::DropStatus { follower, followee }
                }
                keys::Named::Counts { user } => Announcement::DropCounts { user },
                keys::Named::User { user } => Announcement::DropUser { user },
                keys::Named::ListVersion { kind, owner } => {
                    Announcement::DropListVersion { kind, owner }
                }
                keys::Named::FollowingSet { user } | keys::Named::RecentChanges { user } => {
                    Announcement::DropSet { user }
                }
            };
            Some(drop.encode())
        })
        .collect();
    lines.sort_unstable();
    lines.dedup();
    (!lines.is_empty()).then(|| (names.channel(), lines.join("\n")))
}

impl Caches {
    pub fn new(
        settings: CacheSettings,
        redis: RedisPool,
        health: Arc<RedisHealth>,
        prefix: &str,
    ) -> Self {
        let l1_ttl = |ttl: Duration| settings.l1_ttl.min(ttl).max(Duration::from_millis(1));
        let share = |kind: &str| {
            let percent = L1_SHARES
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or(0, |(_, p)| *p);
            settings.l1_max_bytes / 100 * percent
        };
        Self(Arc::new(CachesInner {
            origin: uuid::Uuid::new_v4().simple().to_string(),
            names: KeyNames::new(prefix),
            l2: L2::new(redis, health, settings.redis_timeout, {
                let names = KeyNames::new(prefix);
                Box::new(move |keys: &[String]| drops_of(&names, keys))
            }),
            sets: SetCache::new(share("sets"), l1_ttl(settings.sets_ttl)),
            status: VersionedCache::new(share("status"), l1_ttl(settings.status_ttl), |_, _| 48),
            counts: VersionedCache::new(share("counts"), l1_ttl(settings.counts_ttl), |_, _| 64),
            users: VersionedCache::new(share("users"), l1_ttl(settings.users_ttl), |_, user| {
                let text = user.value.as_ref().map_or(0, |u| {
                    u.handle.len() + u.display_name.as_ref().map_or(0, String::len)
                });
                u32::try_from(96 + text).unwrap_or(u32::MAX)
            }),
            list_versions: VersionedCache::new(
                share("list_versions"),
                l1_ttl(settings.lists_ttl),
                |_, _| 48,
            ),
            pages: MokaCache::builder()
                .weigher(|_, page: &Arc<Vec<ListEntry>>| {
                    u32::try_from(64 + page.len() * std::mem::size_of::<ListEntry>())
                        .unwrap_or(u32::MAX)
                })
                .max_capacity(share("pages").max(1))
                .time_to_live(l1_ttl(settings.lists_ttl))
                .build(),
            l1_live: AtomicBool::new(false),
            active: Default::default(),
            inflight_sets: Inflight::default(),
            inflight_status: Inflight::default(),
            inflight_counts: Inflight::default(),
            inflight_users: Inflight::default(),
            inflight_pages: Inflight::default(),
            settings,
        }))
    }

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

    /// Bytes L1 holds per kind, as weighed (after pending evictions ran).
    pub fn l1_bytes(&self) -> Vec<(&'static str, u64)> {
        self.sets.sync();
        self.status.sync();
        self.counts.sync();
        self.users.sync();
        self.list_versions.sync();
        self.pages.sync();
        vec![
            ("sets", self.sets.weighted_size()),
            ("status", self.status.weighted_size()),
            ("counts", self.counts.weighted_size()),
            ("users", self.users.weighted_size()),
            ("list_versions", self.list_versions.weighted_size()),
            ("pages", self.pages.weighted_size()),
        ]
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
            self.pages.get(&(kind, owner, version, limit))
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

    /// Lets an open breaker probe Redis even when no request does, and repairs keys that writes could not
    /// update (called every second by the invalidation subscriber and by the metrics sampler).
    pub async fn probe(&self) {
        if !self.settings.enabled {
            // No cache to repair, but the breaker is shared (the rate limiter and the producer open it
            // too): without this probe nothing would close it again.
            if !self.l2.available() {
                self.l2.ping().await;
            }
            return;
        }
        if self.l2.available() {
            self.l2.repair_dirty().await;
        } else {
            self.l2.ping().await;
        }
    }

    /// Marks when Redis's cache data began, unless it is marked already (see `RECENT_TRUSTED_AFTER`).
    pub async fn start_epoch(&self) {
        if self.settings.enabled {
            let now = chrono::Utc::now().timestamp_millis();
            self.l2.start_epoch(&self.names.epoch(), now).await;
        }
    }

    /// Notes a viewer as active (remembered in Redis every few seconds, for warm-up).
    pub fn note_active(&self, viewer: i64) {
        if !self.settings.enabled {
            return;
        }
        if let Ok(mut active) = self.active.lock()
            && active.len() < ACTIVE_KEPT
        {
            active.insert(viewer);
        }
    }

    /// Adds the viewers noted since the last call to Redis's active-viewers set, which keeps the
    /// `ACTIVE_KEPT` most recent.
    pub async fn flush_active(&self) {
        let seen: Vec<i64> = match self.active.lock() {
            Ok(mut active) => active.drain().collect(),
            Err(_) => return,
        };
        if seen.is_empty() {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let scored: Vec<(f64, i64)> = seen.into_iter().map(|v| (now, v)).collect();
        self.l2
            .record_active(&self.names.active_viewers(), &scored, ACTIVE_KEPT)
            .await;
    }

    /// The `n` viewers active most recently (any instance), for warm-up; empty when Redis is unavailable.
    pub async fn active_viewers(&self, n: usize) -> Vec<i64> {
        self.l2
            .top_members(&self.names.active_viewers(), n.min(ACTIVE_KEPT))
            .await
            .unwrap_or_default()
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

    /// Whether caching is on.
    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// Most ids of a following set kept whole.
    pub fn set_limit(&self) -> usize {
        self.settings.set_limit
    }

    /// Whether the breaker lets Redis calls through.
    pub fn l2_available(&self) -> bool {
        self.l2.available()
    }

    /// Whether L1 is in use: caching on and the invalidation subscription up.
    pub fn l1_active(&self) -> bool {
        self.settings.enabled && self.l1_live.load(Ordering::SeqCst)
    }

    /// The layered lookup shared by every per-key cache.
    #[allow(clippy::too_many_arguments)]
    async fn lookup<K, V, E, F, Fut>(
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
        self.lookup(
            "status_pairs",
            pairs,
            &self.status,
            |(follower, _)| Some(*follower) == viewer,
            |(a, b)| self.names.status(*a, *b),
            |_, _, payload| keys::decode_status(payload),
            |follows| keys::encode_status(*follows).to_owned(),
            self.settings.status_ttl,
            &self.inflight_status,
            load,
        )
        .await
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

    /// After a group commit: the pairs' changes, versioned by their outbox ids, into L1 (the follower's
    /// set in place) and L2 and announced to the other instances, before the writes return, with
    /// another part's script (the stream append) in the same round trip. Returns whether the round trip
    /// went through (false, without calling Redis, when the cache is off).
    pub async fn record_statuses(
        &self,
        changes: &[(i64, i64, bool, i64)],
        rider: Option<&l2::Rider<'_>>,
    ) -> bool {
        if !self.settings.enabled {
            return false;
        }
        if changes.is_empty() && rider.is_none() {
            return true;
        }
        let mut batch = Batch::default();
        let mut announcements = Vec::with_capacity(changes.len());
        for &(follower, followee, follows, version) in changes {
            self.stage_change(
                follower,
                followee,
                follows,
                version,
                &mut batch,
                &mut announcements,
            );
        }
        let channel = self.names.channel();
        // Every change is in this instance's L1 already: its subscriber skips the message.
        let message = invalidation::from_origin(&self.origin, &announcements);
        let publish = (!announcements.is_empty()).then_some((channel.as_str(), message.as_str()));
        self.l2.write_batch(&batch, publish, rider).await
    }

    /// A follow or unfollow: into L1 now, and queued for L2 and the announcement.
    fn stage_change(
        &self,
        follower: i64,
        followee: i64,
        follows: bool,
        version: i64,
        batch: &mut Batch,
        announcements: &mut Vec<Announcement>,
    ) {
        self.sets.change(follower, followee, version, follows);
        self.note_status(follower, followee, follows, version, announcements);
        batch.changes.push(ChangeWrite {
            status_key: self.names.status(follower, followee),
            set_key: self.names.following_set(follower),
            recent_key: self.names.recent_changes(follower),
            followee,
            version,
            follows,
            status_ttl: self.settings.status_ttl,
        });
    }

    /// A pair's new status in this instance's L1, and its announcement to the others.
    fn note_status(
        &self,
        follower: i64,
        followee: i64,
        follows: bool,
        version: i64,
        announcements: &mut Vec<Announcement>,
    ) {
        self.status.put_if_newer(
            (follower, followee),
            Versioned {
                version,
                value: follows,
            },
        );
        announcements.push(Announcement::Status {
            follower,
            followee,
            version,
            follows,
        });
    }

    /// After the consumer applied a batch: statuses and counts it applied, and the versions of the lists
    /// it changed, in L1 and L2 and announced. This repairs whatever a write could not update. A change
    /// older than half the recent-changes window is not applied to sets in place (a newer change whose
    /// record expired could be undone): the follower's set is dropped instead, everywhere.
    ///
    /// Events in `recorded` (outbox ids) had their status recorded and announced by the writer's round
    /// trip, together with their append: only their counts and lists are refreshed here.
    pub async fn record_applied(&self, batch: &AppliedBatch, recorded: &HashSet<i64>) {
        if !self.settings.enabled || (batch.events.is_empty() && batch.counts.is_empty()) {
            return;
        }
        let mut writes = Batch::default();
        let mut announcements = Vec::new();
        let mut dropped = HashSet::new();
        for event in &batch.events {
            if recorded.contains(&event.id) {
                continue;
            }
            let (follower, followee) = (event.follower_id, event.followee_id);
            if event.lag_seconds < RECENT_TTL.as_secs_f64() / 2.0 {
                self.stage_change(
                    follower,
                    followee,
                    event.follows,
                    event.id,
                    &mut writes,
                    &mut announcements,
                );
                continue;
            }
            self.note_status(
                follower,
                followee,
                event.follows,
                event.id,
                &mut announcements,
            );
            writes.versioned.push(VersionedWrite {
                key: self.names.status(follower, followee),
                version: event.id,
                payload: keys::encode_status(event.follows).to_owned(),
                ttl: self.settings.status_ttl,
            });
            if dropped.insert(follower) {
                self.sets.remove(follower);
                writes.dropped_sets.push((
                    self.names.following_set(follower),
                    self.names.recent_changes(follower),
                ));
                announcements.push(Announcement::DropSet { user: follower });
            }
        }
        for counts in &batch.counts {
            self.counts.put_if_newer(
                counts.user_id,
                Versioned {
                    version: counts.version,
                    value: *counts,
                },
            );
            writes.versioned.push(VersionedWrite {
                key: self.names.counts(counts.user_id),
                version: counts.version,
                payload: keys::encode_counts(counts),
                ttl: self.settings.counts_ttl,
            });
            announcements.push(Announcement::Counts {
                user: counts.user_id,
                version: counts.version,
                followers: counts.follower_count,
                following: counts.following_count,
            });
        }
        let channel = self.names.channel();
        self.l2
            .write_batch(&writes, Some((&channel, &message(&announcements))), None)
            .await;

        let mut lists: Vec<(ListKind, i64)> = batch
            .events
            .iter()
            .flat_map(|e| {
                [
                    (ListKind::Followers, e.followee_id),
                    (ListKind::Following, e.follower_id),
                ]
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        lists.sort_by_key(|(kind, owner)| (*owner, keys::kind_tag(*kind)));
        let names: Vec<String> = lists
            .iter()
            .map(|(kind, owner)| self.names.list_version(*kind, *owner))
            .collect();
        let announce = |versions: &[i64]| {
            message(
                &lists
                    .iter()
                    .zip(versions)
                    .map(|((kind, owner), version)| Announcement::ListVersion {
                        kind: *kind,
                        owner: *owner,
                        version: *version,
                    })
                    .collect::<Vec<_>>(),
            )
        };
        if let Some(versions) = self.l2.bump_versions(&names, &channel, announce).await {
            for ((kind, owner), version) in lists.iter().zip(versions) {
                self.list_versions
                    .put_if_newer((*kind, *owner), Versioned { version, value: () });
            }
        }
    }

    /// After `upsertUser` (or a stale absence found): the records everywhere, in one round trip.
    pub async fn record_users(&self, users: &[UserRecord]) {
        if !self.settings.enabled || users.is_empty() {
            return;
        }
        let mut writes = Vec::with_capacity(users.len());
        let mut announcements = Vec::with_capacity(users.len());
        for user in users {
            let version = user.updated_at.timestamp_micros();
            self.users.put_if_newer(
                user.id,
                Versioned {
                    version,
                    value: Some(user.clone()),
                },
            );
            let payload = keys::encode_user(Some(user));
            writes.push(VersionedWrite {
                key: self.names.user(user.id),
                version,
                payload: payload.clone(),
                ttl: self.settings.users_ttl,
            });
            announcements.push(Announcement::User {
                user: user.id,
                version,
                payload,
            });
        }
        let channel = self.names.channel();
        let batch = Batch {
            versioned: writes,
            ..Batch::default()
        };
        self.l2
            .write_batch(&batch, Some((&channel, &message(&announcements))), None)
            .await;
    }

    /// Forgets the counts of these users everywhere (after `reconcile --fix`).
    pub async fn forget_counts(&self, users: &[i64]) {
        if !self.settings.enabled || users.is_empty() {
            return;
        }
        for user in users {
            self.counts.remove(user);
        }
        let keys: Vec<String> = users.iter().map(|u| self.names.counts(*u)).collect();
        let announcements: Vec<Announcement> = users
            .iter()
            .map(|&user| Announcement::DropCounts { user })
            .collect();
        let channel = self.names.channel();
        self.l2
            .delete(&keys, Some((&channel, &message(&announcements))))
            .await;
    }
}
