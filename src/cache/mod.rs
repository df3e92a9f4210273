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
//!
//! The modules, one job each: `read` the lookup every per-key kind shares (counts, users), `status`
//! follow statuses (following sets, the viewer's recent changes, pair statuses), `lists` list pages,
//! `peek` L1-only answers, `write` the write path, [`invalidation`] the announcements, [`l1`], [`l2`],
//! [`keys`], [`sets`] (following sets as stored), [`singleflight`], `active` viewers for warm-up,
//! `outage` the repair after Redis trouble.

mod active;
pub mod invalidation;
pub mod keys;
pub mod l1;
pub mod l2;
mod lists;
mod outage;
mod peek;
mod read;
pub mod sets;
pub mod singleflight;
mod status;
mod write;

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use self::{
    keys::KeyNames,
    l1::{Versioned, VersionedCache},
    l2::L2,
    lists::PageKey,
    sets::{Following, SetCache},
    singleflight::Inflight,
};
pub use self::{peek::StatusPeek, status::Source};
use crate::{
    config::CacheSettings,
    db::{follows::ListEntry, follows::ListKind, users::UserRecord},
    domain::Counts,
    redis_health::RedisHealth,
    redis_pool::RedisPool,
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
    /// List pages by (kind, owner, list version, rows), at the list version of their key: immutable.
    pages: VersionedCache<PageKey, Arc<Vec<ListEntry>>>,
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
    inflight_pages: Inflight<PageKey, Versioned<Arc<Vec<ListEntry>>>>,
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
                Box::new(move |keys: &[String]| l2::Repair {
                    epochs: lists::epochs_of(&names, keys),
                    announcement: invalidation::drops_of(&names, keys),
                })
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
            pages: VersionedCache::new(share("pages"), l1_ttl(settings.lists_ttl), |_, page| {
                u32::try_from(64 + page.value.len() * std::mem::size_of::<ListEntry>())
                    .unwrap_or(u32::MAX)
            }),
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
}
