//! Following sets: per user, the ids that user follows, so that "does A follow X?" is a membership test
//! on one cached entry per A, whatever X is. Pairs never repeat on a realistic key distribution; a
//! user's set is asked again and again (every page they look at, every status of theirs).
//!
//! A set is loaded whole (one range scan) or not at all; a user following more than the limit is cached
//! as `Large` and keeps per-pair lookups. Writes change a cached set in place (here before the write
//! returns, elsewhere when the announcement arrives), so a set stays in L1 until it changes.
//!
//! Two races are closed here. A load that read PostgreSQL before a write committed must not store its
//! older set after the write changed the cache: every change bumps a generation of the user's stripe,
//! and a load stores its set in L1 only if the generation it started at is still current (in L2 the same
//! check runs in the fill script, against a generation the write script bumps). And two changes of one
//! pair announced out of order: each change carries its outbox id, and a set remembers the id of the
//! last change applied per followee, so an older change arriving late is ignored.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{Arc, Mutex},
    time::Duration,
};

use mini_moka::sync::{Cache, ConcurrentCacheExt};

/// Redis set member marking a cached set that is complete (so an empty following list is a set too).
pub const COMPLETE: &str = "0";
/// Redis set member marking a user who follows more than the limit (pair lookups instead).
pub const LARGE: &str = "-1";

/// A user's following set as cached.
#[derive(Clone, Debug)]
pub enum Following {
    /// Every id the user follows.
    Members(Arc<Members>),
    /// More than the limit: answered pair by pair.
    Large,
}

impl Following {
    /// Bytes this entry holds, for L1's budget.
    pub fn weight(&self) -> u32 {
        match self {
            Self::Members(members) => members.weight(),
            Self::Large => 16,
        }
    }
}

/// The ids one user follows (sorted, for binary search), and the last change applied per followee.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    ids: Vec<i64>,
    /// (followee, outbox id of the change, follows after it): changes applied since the set was loaded.
    changes: Vec<(i64, i64, bool)>,
}

impl Members {
    /// A set as loaded (from PostgreSQL or L2): no change known yet.
    pub fn new(mut ids: Vec<i64>) -> Self {
        ids.sort_unstable();
        ids.dedup();
        Self {
            ids,
            changes: Vec::new(),
        }
    }

    pub fn contains(&self, id: i64) -> bool {
        self.ids.binary_search(&id).is_ok()
    }

    pub fn ids(&self) -> &[i64] {
        &self.ids
    }

    /// The set after one change, or `None` when a change of this pair at least as new was applied.
    pub fn with_change(&self, followee: i64, version: i64, follows: bool) -> Option<Self> {
        let known = self.changes.iter().position(|c| c.0 == followee);
        if let Some(i) = known
            && self.changes[i].1 >= version
        {
            return None;
        }
        let mut next = self.clone();
        match (next.ids.binary_search(&followee), follows) {
            (Err(at), true) => next.ids.insert(at, followee),
            (Ok(at), false) => {
                next.ids.remove(at);
            }
            _ => {}
        }
        match known {
            Some(i) => next.changes[i] = (followee, version, follows),
            None => next.changes.push((followee, version, follows)),
        }
        Some(next)
    }

    fn weight(&self) -> u32 {
        let bytes = 64 + self.ids.capacity() * 8 + self.changes.capacity() * 24;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// Reads a set from its Redis members (`None`: not cached there).
pub fn decode(members: &[String]) -> Option<Following> {
    if members.iter().any(|m| m == LARGE) {
        return Some(Following::Large);
    }
    if !members.iter().any(|m| m == COMPLETE) {
        return None;
    }
    let ids = members
        .iter()
        .filter(|m| *m != COMPLETE)
        .filter_map(|m| m.parse().ok())
        .collect();
    Some(Following::Members(Arc::new(Members::new(ids))))
}

/// The Redis members that store a set (its marker first).
pub fn encode(set: &Following) -> Vec<String> {
    match set {
        Following::Large => vec![LARGE.to_owned()],
        Following::Members(members) => std::iter::once(COMPLETE.to_owned())
            .chain(members.ids.iter().map(ToString::to_string))
            .collect(),
    }
}

const STRIPES: usize = 1024;

/// L1's following sets, with a change generation per stripe of users.
pub struct SetCache {
    entries: Cache<i64, Following>,
    /// Bumped by every change of a user in the stripe; guards fills against changes made meanwhile.
    generations: Vec<Mutex<u64>>,
    hasher: std::collections::hash_map::RandomState,
}

impl SetCache {
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        Self {
            entries: Cache::builder()
                .weigher(|_: &i64, set: &Following| set.weight())
                .max_capacity(max_bytes.max(1))
                .time_to_live(ttl)
                .build(),
            generations: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
            hasher: Default::default(),
        }
    }

    fn stripe(&self, user: i64) -> &Mutex<u64> {
        &self.generations[(self.hasher.hash_one(user) as usize) % STRIPES]
    }

    pub fn get(&self, user: i64) -> Option<Following> {
        self.entries.get(&user)
    }

    /// The generation to pass to `fill` after loading `user`'s set.
    pub fn generation(&self, user: i64) -> u64 {
        self.stripe(user).lock().map_or(u64::MAX, |g| *g)
    }

    /// Stores a loaded set unless a change of the stripe happened since `generation` was read.
    pub fn fill(&self, user: i64, set: Following, generation: u64) -> bool {
        let Ok(current) = self.stripe(user).lock() else {
            return false;
        };
        if *current != generation {
            return false;
        }
        self.entries.insert(user, set);
        true
    }

    /// Applies one change of `follower`'s set (if cached) and invalidates loads in flight.
    pub fn change(&self, follower: i64, followee: i64, version: i64, follows: bool) {
        let Ok(mut generation) = self.stripe(follower).lock() else {
            return;
        };
        *generation = generation.wrapping_add(1);
        if let Some(Following::Members(members)) = self.entries.get(&follower)
            && let Some(next) = members.with_change(followee, version, follows)
        {
            self.entries
                .insert(follower, Following::Members(Arc::new(next)));
        }
    }

    /// Drops one user's set (it may be wrong: the caller could not apply a change to it).
    pub fn remove(&self, user: i64) {
        if let Ok(mut generation) = self.stripe(user).lock() {
            *generation = generation.wrapping_add(1);
            self.entries.invalidate(&user);
        }
    }

    pub fn clear(&self) {
        for stripe in &self.generations {
            if let Ok(mut generation) = stripe.lock() {
                *generation = generation.wrapping_add(1);
            }
        }
        self.entries.invalidate_all();
    }

    /// Bytes held (as weighed), after pending maintenance.
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Runs pending evictions now (tests and gauges want an exact size).
    pub fn sync(&self) {
        self.entries.sync();
    }
}

/// Records one change in L2, atomically per pair: the follower's recent changes (newer wins; read by
/// the follower's own requests, for read-your-writes on every instance, and bumping the generation that
/// fills check), the cached set if complete, and the pair's status. KEYS: status, set, recent changes.
/// ARGV: version, 1 or 0, followee, status TTL, recent-changes TTL (seconds), a random generation to
/// start from where there is none (never 1: after Redis lost the hash, counting again from 0 could
/// return a generation a load in flight read before the loss, and let it store what it read).
pub const RECORD_CHANGE: &str = r"
local previous = redis.call('HGET', KEYS[3], ARGV[3])
if previous then
  local version = tonumber(string.match(previous, '^(%-?%d+):'))
  if version and version >= tonumber(ARGV[1]) then return 0 end
end
redis.call('HSET', KEYS[3], ARGV[3], ARGV[1] .. ':' .. ARGV[2])
if redis.call('HEXISTS', KEYS[3], '_gen') == 1 then
  redis.call('HINCRBY', KEYS[3], '_gen', 1)
else
  redis.call('HSET', KEYS[3], '_gen', ARGV[6])
end
redis.call('EXPIRE', KEYS[3], ARGV[5])
if redis.call('SISMEMBER', KEYS[2], '0') == 1 then
  if ARGV[2] == '1' then redis.call('SADD', KEYS[2], ARGV[3]) else redis.call('SREM', KEYS[2], ARGV[3]) end
end
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, '^(%-?%d+):'))
  if version and version >= tonumber(ARGV[1]) then return 1 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'EX', ARGV[4])
return 1
";

/// Reads a cached set and the generation its fill must find unchanged. KEYS: set, recent changes.
/// ARGV: a random generation, recent-changes TTL. A missing set with no generation gets the random one,
/// so that the loader's fill is refused if Redis loses the hash meanwhile and counts again from nothing.
pub const READ_SET: &str = r"
local members = redis.call('SMEMBERS', KEYS[1])
local generation = redis.call('HGET', KEYS[2], '_gen')
if #members == 0 and not generation then
  generation = ARGV[1]
  redis.call('HSET', KEYS[2], '_gen', generation)
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return {members, generation or '0'}
";

/// Stores a set loaded from PostgreSQL unless one is cached or a change was recorded since the loader
/// read the generation. KEYS: set, recent changes. ARGV: generation read, TTL, members…
pub const FILL_SET: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local generation = redis.call('HGET', KEYS[2], '_gen') or '0'
if generation ~= ARGV[1] then return 0 end
for i = 3, #ARGV, 1000 do
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
";

/// The recent changes of one follower as stored (`followee -> "<version>:<1|0>"`, plus `_gen`, which is
/// skipped): whether the follower follows each followee after its latest change.
pub fn decode_recent(fields: &[(String, String)]) -> HashMap<i64, bool> {
    fields
        .iter()
        .filter_map(|(field, value)| {
            let followee = field.parse().ok()?;
            let (_, follows) = value.split_once(':')?;
            Some((followee, follows == "1"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(set: &Following) -> Vec<i64> {
        match set {
            Following::Members(m) => m.ids().to_vec(),
            Following::Large => vec![-1],
        }
    }

    #[test]
    fn a_late_older_change_is_ignored() {
        let set = Members::new(vec![5, 3]);
        let set = set.with_change(4, 10, true).expect("newer");
        let set = set.with_change(4, 11, false).expect("newer");
        assert!(
            set.with_change(4, 10, true).is_none(),
            "older change ignored"
        );
        assert_eq!(set.ids(), &[3, 5]);
        let set = set.with_change(3, 12, false).expect("newer");
        assert_eq!(set.ids(), &[5]);
        assert!(!set.contains(3) && set.contains(5));
    }

    #[test]
    fn sets_survive_their_redis_encoding() {
        let set = Following::Members(Arc::new(Members::new(vec![9, 2])));
        let stored = encode(&set);
        assert_eq!(stored[0], COMPLETE);
        assert_eq!(decode(&stored).map(|s| members(&s)), Some(vec![2, 9]));
        assert_eq!(
            decode(&encode(&Following::Large)).map(|s| members(&s)),
            Some(vec![-1])
        );
        assert!(decode(&[]).is_none(), "absent");
        assert!(decode(&["7".to_owned()]).is_none(), "incomplete");
        let empty = decode(&[COMPLETE.to_owned()]).expect("cached");
        assert!(members(&empty).is_empty());
    }

    #[test]
    fn a_fill_that_raced_a_change_is_not_stored() {
        let cache = SetCache::new(1 << 20, Duration::from_secs(60));
        let before = cache.generation(7);
        cache.change(7, 8, 1, true);
        let stale = Following::Members(Arc::new(Members::new(vec![])));
        assert!(!cache.fill(7, stale.clone(), before));
        assert!(cache.get(7).is_none());
        assert!(cache.fill(7, stale, cache.generation(7)));
        cache.change(7, 8, 2, true);
        assert_eq!(cache.get(7).map(|s| members(&s)), Some(vec![8]));
    }

    #[test]
    fn recent_changes_decode() {
        let fields = vec![
            ("_gen".to_owned(), "3".to_owned()),
            ("12".to_owned(), "40:1".to_owned()),
            ("13".to_owned(), "41:0".to_owned()),
        ];
        assert_eq!(
            decode_recent(&fields),
            HashMap::from([(12, true), (13, false)])
        );
    }
}
