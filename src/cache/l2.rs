//! L2: Redis, behind the circuit breaker and a short time budget per call. Every call answers `None`
//! when Redis is unavailable, and the caller goes on without it. Writes that could not reach Redis leave
//! their keys in a dirty set, deleted before this instance reads Redis again (so a value cached before
//! an outage is not served after it).

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use super::sets;
use crate::{
    redis_health::{Permit, RedisHealth},
    redis_pool::{RedisPool, redis},
};

/// Stores `ARGV[2]` as `<ARGV[1]>:<ARGV[2]>` with TTL `ARGV[3]` seconds, unless the key holds a version at
/// least as new. Version 0 (a value read from PostgreSQL without a version) therefore only fills a gap.
const SET_IF_NEWER: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local version = tonumber(string.match(current, '^(%-?%d+):'))
  if version and version >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'EX', ARGV[3])
return 1
";

/// Bumps each list version in KEYS to the larger of its value + 1 and Redis's clock in microseconds;
/// returns the new versions. A version therefore never repeats, even after Redis lost the keys (the
/// clock is past every version handed out before), so a page cached under an old version anywhere can
/// never be taken for the list's current page.
const BUMP_VERSIONS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local v = (tonumber(redis.call('GET', key)) or 0) + 1
  if v < now then v = now end
  redis.call('SET', key, string.format('%d', v))
  out[i] = v
end
return out
";

/// Reads the list versions in KEYS but the last, all of one hash slot; a missing one (never bumped, or
/// lost with Redis's data) starts at Redis's clock in microseconds rather than at 0, for the same reason
/// as [`BUMP_VERSIONS`]. The last key is the slot's epoch: when its data began, set if missing. Returns
/// the versions, which of them this call created (1) and the epoch.
const READ_VERSIONS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local epoch_key = KEYS[#KEYS]
redis.call('SET', epoch_key, string.format('%d', now), 'NX')
local epoch = tonumber(redis.call('GET', epoch_key))
local versions, created = {}, {}
for i = 1, #KEYS - 1 do
  local v = tonumber(redis.call('GET', KEYS[i]))
  created[i] = 0
  if not v then
    v = now
    redis.call('SET', KEYS[i], string.format('%d', v))
    created[i] = 1
  end
  versions[i] = v
end
return {versions, created, epoch}
";

/// The script, loaded into Redis once and then called by its hash (EVALSHA): sending and hashing its
/// text on every write costs Redis as much as running it.
static SET_IF_NEWER_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(SET_IF_NEWER));
static RECORD_CHANGE_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(sets::RECORD_CHANGE));
static FILL_SET_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(sets::FILL_SET));

static READ_SET_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(sets::READ_SET));
static BUMP_VERSIONS_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(BUMP_VERSIONS));
static READ_VERSIONS_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(READ_VERSIONS));

/// Every script the cache calls by hash, loaded together.
/// A script of another part of the service carried in a cache write's round trip (the event stream's
/// append rides with the statuses of the same edge changes). Loaded with the cache's own scripts.
pub struct Rider<'a> {
    pub script: &'a redis::Script,
    /// The script's text, sent when Redis may not know it (as the cache's own scripts are).
    pub text: &'a str,
    pub keys: Vec<String>,
    pub args: Vec<String>,
}

/// What deleting a chunk of dirty keys takes beside the delete (see [`L2::recover`]).
pub struct Repair {
    /// The epoch keys of the slots of deleted list versions, moved to Redis's clock before the delete: a
    /// version created afterwards must not pass for one older than the write whose bump failed.
    pub epochs: Vec<String>,
    /// The announcement that tells every instance to drop the L1 entries of the deleted keys:
    /// `(channel, message)`, or `None` for keys that need none.
    pub announcement: Option<(String, String)>,
}

/// Finds the [`Repair`] of a chunk of dirty keys (the key names are the cache's, not L2's).
pub type Repairs = Box<dyn Fn(&[String]) -> Repair + Send + Sync>;

/// Moves a slot's epoch (`KEYS[1]`, see `READ_VERSIONS`) to Redis's clock, never back. One key: on a
/// Redis Cluster it goes wherever the slot is, as a single-key command, even while the slot moves.
const ADVANCE_EPOCH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local old = tonumber(redis.call('GET', KEYS[1]))
if not old or old < now then
  redis.call('SET', KEYS[1], string.format('%d', now))
end
return 1
";

const SCRIPTS: [&str; 6] = [
    SET_IF_NEWER,
    sets::RECORD_CHANGE,
    sets::FILL_SET,
    sets::READ_SET,
    BUMP_VERSIONS,
    READ_VERSIONS,
];

/// A generation for a follower's recent changes that has none: random (an integer, which `HINCRBY`
/// counts on from), so that it repeats none handed out before Redis lost the hash (fills compare
/// generations for equality only).
fn random_generation() -> i64 {
    (rand::random::<u64>() >> 2) as i64
}

/// Queues one versioned write (newer wins) through the loaded script.
fn push_versioned(pipe: &mut redis::Pipeline, write: &VersionedWrite) {
    pipe.cmd("EVALSHA")
        .arg(SET_IF_NEWER_SCRIPT.get_hash())
        .arg(1)
        .arg(&write.key)
        .arg(write.version)
        .arg(&write.payload)
        .arg(write.ttl.as_secs().max(1))
        .ignore();
}

/// Most keys remembered as dirty; past it the event consumer's refresh is the repair.
const MAX_DIRTY: usize = 100_000;

/// One change of a pair, for `record_changes`.
pub struct ChangeWrite {
    pub status_key: String,
    pub set_key: String,
    pub recent_key: String,
    pub followee: i64,
    pub version: i64,
    pub follows: bool,
    pub status_ttl: Duration,
}

/// Cache changes written in one round trip by `write_batch`.
#[derive(Default)]
pub struct Batch {
    /// Follows and unfollows: status, cached set, recent changes.
    pub changes: Vec<ChangeWrite>,
    /// Versioned values (newer wins).
    pub versioned: Vec<VersionedWrite>,
    /// Following sets to drop (set key, recent-changes key): a change too old to apply in place.
    pub dropped_sets: Vec<(String, String)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.versioned.is_empty() && self.dropped_sets.is_empty()
    }
}

/// How long a follower's changes (and the generation that set fills check) stay in L2: far longer than
/// any announcement takes to reach every instance, or any load takes; short enough that reading them
/// stays one small hash.
pub const RECENT_TTL: Duration = Duration::from_secs(60);

/// A set loaded from PostgreSQL, to store unless a change raced its load.
pub struct SetFill {
    pub set_key: String,
    pub recent_key: String,
    /// The generation the loader read before going to PostgreSQL.
    pub generation: String,
    pub members: Vec<String>,
    pub ttl: Duration,
}

/// A follower's recent changes as L2 holds them.
pub struct RecentChanges {
    pub fields: Vec<(String, String)>,
    /// How long Redis has held its data (its epoch key's age): recent changes are complete only once it
    /// is older than the slowest load in flight when the data was lost.
    pub data_age_ms: i64,
}

/// A list's version as read, and what a page cached under it must hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListVersion {
    pub version: i64,
    /// Every commit made before this instant (Redis's clock, µs) must be in a page cached under the
    /// version: its own instant, taken after the writes it follows; or, for a version this read
    /// created, its slot's epoch, since the only bumps a missing version can stand for were lost with
    /// the data before it.
    pub must_hold: i64,
}

/// One versioned write.
pub struct VersionedWrite {
    pub key: String,
    pub version: i64,
    pub payload: String,
    pub ttl: Duration,
}

/// The Redis side of the cache.
pub struct L2 {
    redis: RedisPool,
    health: Arc<RedisHealth>,
    timeout: Duration,
    dirty: Mutex<HashSet<String>>,
    dirty_overflowed: AtomicBool,
    /// What deleting dirty keys takes beside the delete: the announcement goes in the same round trip
    /// as the delete, since no announcement of the writes that failed reached the others.
    repairs: Repairs,
    /// Whether this process has loaded the script since it last failed (Redis may have restarted).
    script_loaded: AtomicBool,
}

impl L2 {
    pub fn new(
        redis: RedisPool,
        health: Arc<RedisHealth>,
        timeout: Duration,
        repairs: Repairs,
    ) -> Self {
        Self {
            redis,
            health,
            timeout,
            dirty: Mutex::new(HashSet::new()),
            dirty_overflowed: AtomicBool::new(false),
            repairs,
            script_loaded: AtomicBool::new(false),
        }
    }

    /// Runs `pipe` if the breaker allows, within the time budget; `None` when Redis is unavailable.
    async fn run<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Option<T> {
        match self.health.permit() {
            Permit::Skip => return None,
            Permit::Probe => {
                if !self.recover().await {
                    self.health.failure();
                    return None;
                }
                self.health.success();
            }
            Permit::Go => {}
        }
        let call = async {
            self.redis
                .query_pipe::<T>(pipe)
                .await
                .map_err(|e| format!("{e:#}"))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => {
                self.health.success();
                Some(value)
            }
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "Redis cache call failed");
                self.health.failure();
                None
            }
            Err(_) => {
                tracing::debug!("Redis cache call timed out");
                self.health.failure();
                None
            }
        }
    }

    /// The probe after an outage: Redis answers, and the keys this instance could not update are gone
    /// (the epochs of their list versions' slots moved past them first).
    async fn recover(&self) -> bool {
        let keys: Vec<String> = self
            .dirty
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        let call = async {
            let _: String = self
                .redis
                .query_cmd(&redis::cmd("PING"))
                .await
                .map_err(|e| format!("{e:#}"))?;
            for chunk in keys.chunks(1_000) {
                let repair = (self.repairs)(chunk);
                if !repair.epochs.is_empty() {
                    // Before the delete: a version read between the two is still the old one. EVAL,
                    // not EVALSHA: a Redis back from an outage may have lost its scripts.
                    let mut epochs = redis::pipe();
                    for epoch in &repair.epochs {
                        epochs
                            .cmd("EVAL")
                            .arg(ADVANCE_EPOCH)
                            .arg(1)
                            .arg(epoch)
                            .ignore();
                    }
                    let () = self
                        .redis
                        .query_pipe(&epochs)
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                }
                let mut pipe = redis::pipe();
                pipe.cmd("DEL").arg(chunk).ignore();
                if let Some((channel, message)) = repair.announcement {
                    pipe.cmd("PUBLISH").arg(channel).arg(message).ignore();
                }
                let () = self
                    .redis
                    .query_pipe(&pipe)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
            }
            Ok::<_, String>(())
        };
        let budget = self.timeout * 4 + Duration::from_millis(keys.len() as u64 / 10);
        match tokio::time::timeout(budget, call).await {
            Ok(Ok(())) => {
                if let Ok(mut dirty) = self.dirty.lock() {
                    for key in &keys {
                        dirty.remove(key);
                    }
                }
                if self.dirty_overflowed.swap(false, Ordering::SeqCst) {
                    tracing::warn!(
                        "more writes failed to reach Redis than remembered; the event consumer repairs the rest"
                    );
                }
                tracing::info!(
                    keys = keys.len(),
                    "Redis is back: dropped the cache entries written during the outage"
                );
                true
            }
            _ => false,
        }
    }

    fn mark_dirty(&self, keys: impl IntoIterator<Item = String>) {
        if let Ok(mut dirty) = self.dirty.lock() {
            for key in keys {
                if dirty.len() >= MAX_DIRTY {
                    self.dirty_overflowed.store(true, Ordering::SeqCst);
                    break;
                }
                dirty.insert(key);
            }
        }
    }

    /// MGET: one answer per key (`None` per key when absent), or `None` when Redis is unavailable.
    pub async fn get_many(&self, keys: &[String]) -> Option<Vec<Option<String>>> {
        if keys.is_empty() {
            return Some(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("MGET").arg(keys);
        self.run::<(Vec<Option<String>>,)>(&pipe)
            .await
            .map(|(values,)| values)
    }

    /// Fills of values read from PostgreSQL (newer wins; a value without a version only fills a gap),
    /// in one round trip. Not a write: nothing becomes dirty when it fails.
    pub async fn fill_versioned(&self, fills: &[VersionedWrite]) {
        if fills.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        let needs_script = fills.iter().any(|w| w.version != 0);
        if needs_script {
            self.load_scripts(&mut pipe);
        }
        for fill in fills {
            if fill.version == 0 {
                // A value read from PostgreSQL only fills a gap: a plain SET NX, no script.
                pipe.cmd("SET")
                    .arg(&fill.key)
                    .arg(format!("0:{}", fill.payload))
                    .arg("NX")
                    .arg("EX")
                    .arg(fill.ttl.as_secs().max(1))
                    .ignore();
                continue;
            }
            push_versioned(&mut pipe, fill);
        }
        let done = self.run::<()>(&pipe).await.is_some();
        self.scripts_ran(done, needs_script);
    }

    /// Adds the scripts to `pipe` unless this process loaded them since Redis last failed.
    fn load_scripts(&self, pipe: &mut redis::Pipeline) {
        if !self.script_loaded.load(Ordering::Relaxed) {
            for script in SCRIPTS {
                pipe.cmd("SCRIPT").arg("LOAD").arg(script).ignore();
            }
        }
    }

    /// Scripts are loaded once a pipeline that carried them went through; after any failure Redis may
    /// have restarted without them, so the next pipeline loads them again.
    fn scripts_ran(&self, done: bool, carried_scripts: bool) {
        if !done {
            self.script_loaded.store(false, Ordering::Relaxed);
        } else if carried_scripts {
            self.script_loaded.store(true, Ordering::Relaxed);
        }
    }

    /// Writes a batch of cache changes, an optional message on `channel` and an optional rider (another
    /// part's script), in one round trip. Keys of a failed call become dirty (deleted before this instance
    /// reads Redis again); the rider's owner learns the outcome from the result.
    pub async fn write_batch(
        &self,
        batch: &Batch,
        publish: Option<(&str, &str)>,
        rider: Option<&Rider<'_>>,
    ) -> bool {
        if batch.is_empty() && publish.is_none() && rider.is_none() {
            return true;
        }
        let mut pipe = redis::pipe();
        self.load_scripts(&mut pipe);
        if let Some(rider) = rider
            && !self.script_loaded.load(Ordering::Relaxed)
        {
            pipe.cmd("SCRIPT").arg("LOAD").arg(rider.text).ignore();
        }
        for change in &batch.changes {
            pipe.cmd("EVALSHA")
                .arg(RECORD_CHANGE_SCRIPT.get_hash())
                .arg(3)
                .arg(&change.status_key)
                .arg(&change.set_key)
                .arg(&change.recent_key)
                .arg(change.version)
                .arg(u8::from(change.follows))
                .arg(change.followee)
                .arg(change.status_ttl.as_secs().max(1))
                .arg(RECENT_TTL.as_secs())
                .arg(random_generation())
                .ignore();
        }
        for write in &batch.versioned {
            push_versioned(&mut pipe, write);
        }
        for (set_key, recent_key) in &batch.dropped_sets {
            // The generation bump makes fills that loaded before this drop stand down; a missing one
            // starts at random first, as in `sets::RECORD_CHANGE` (never counting again from 0).
            pipe.cmd("DEL").arg(set_key).ignore();
            pipe.cmd("HSETNX")
                .arg(recent_key)
                .arg("_gen")
                .arg(random_generation())
                .ignore();
            pipe.cmd("HINCRBY")
                .arg(recent_key)
                .arg("_gen")
                .arg(1)
                .ignore();
            pipe.cmd("EXPIRE")
                .arg(recent_key)
                .arg(RECENT_TTL.as_secs())
                .ignore();
        }
        if let Some((channel, message)) = publish {
            pipe.cmd("PUBLISH").arg(channel).arg(message).ignore();
        }
        if let Some(rider) = rider {
            pipe.cmd("EVALSHA")
                .arg(rider.script.get_hash())
                .arg(rider.keys.len())
                .arg(&rider.keys)
                .arg(&rider.args)
                .ignore();
        }
        let done = self.run::<()>(&pipe).await.is_some();
        self.scripts_ran(done, true);
        if !done {
            self.mark_dirty(batch.changes.iter().flat_map(|c| {
                [
                    c.status_key.clone(),
                    c.set_key.clone(),
                    c.recent_key.clone(),
                ]
            }));
            self.mark_dirty(batch.versioned.iter().map(|w| w.key.clone()));
            self.mark_dirty(batch.dropped_sets.iter().map(|d| d.0.clone()));
        }
        done
    }

    /// Cached following sets and the generations their fills must match: per user, the set's members
    /// (empty: not cached) and the generation. `None` when Redis is unavailable.
    pub async fn read_sets(&self, keys: &[(String, String)]) -> Option<Vec<(Vec<String>, String)>> {
        if keys.is_empty() {
            return Some(Vec::new());
        }
        let mut pipe = redis::pipe();
        self.load_scripts(&mut pipe);
        for (set_key, recent_key) in keys {
            pipe.cmd("EVALSHA")
                .arg(READ_SET_SCRIPT.get_hash())
                .arg(2)
                .arg(set_key)
                .arg(recent_key)
                .arg(random_generation())
                .arg(RECENT_TTL.as_secs());
        }
        let values = self.run::<Vec<(Vec<String>, String)>>(&pipe).await;
        self.scripts_ran(values.is_some(), true);
        values.filter(|values| values.len() == keys.len())
    }

    /// Stores sets loaded from PostgreSQL (see `sets::FILL_SET`); not on any answer's path.
    pub async fn fill_sets(&self, fills: &[SetFill]) {
        if fills.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        self.load_scripts(&mut pipe);
        for fill in fills {
            pipe.cmd("EVALSHA")
                .arg(FILL_SET_SCRIPT.get_hash())
                .arg(2)
                .arg(&fill.set_key)
                .arg(&fill.recent_key)
                .arg(&fill.generation)
                .arg(fill.ttl.as_secs().max(1))
                .arg(&fill.members)
                .ignore();
        }
        let done = self.run::<()>(&pipe).await.is_some();
        self.scripts_ran(done, true);
    }

    /// A follower's follows and unfollows of the last minute (`field -> value`, with `_gen`), and how
    /// long ago (ms, by `now_ms`) Redis's data began (see [`RecentChanges`]), or `None` when Redis is
    /// unavailable. The epoch key is created where missing, in the same round trip.
    pub async fn recent_changes(
        &self,
        key: &str,
        epoch_key: &str,
        now_ms: i64,
    ) -> Option<RecentChanges> {
        let mut pipe = redis::pipe();
        // SET … NX GET: the epoch as it was (nil: there was none, and now is the epoch).
        pipe.cmd("SET")
            .arg(epoch_key)
            .arg(now_ms)
            .arg("NX")
            .arg("GET");
        pipe.cmd("HGETALL").arg(key);
        self.run::<(Option<i64>, Vec<(String, String)>)>(&pipe)
            .await
            .map(|(epoch, fields)| RecentChanges {
                fields,
                data_age_ms: epoch.map_or(0, |epoch| now_ms - epoch),
            })
    }

    /// Sets each epoch key to `now` unless it exists (an epoch marks when the data it speaks for
    /// began), in chunks (each one round trip per node). Off the breaker and the request budget: the
    /// slots' epochs are one large write at start, which nothing waits for, and a slow moment of it must
    /// not open the breaker for every request. Stops at the first failure.
    pub async fn start_epochs(&self, keys: &[String], now: i64) {
        if !self.available() {
            return;
        }
        for chunk in keys.chunks(1_024) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("SET").arg(key).arg(now).arg("NX").ignore();
            }
            let call = self.redis.query_pipe::<()>(&pipe);
            match tokio::time::timeout(self.timeout * 20, call).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "could not start the slots' epochs");
                    return;
                }
                Err(_) => {
                    tracing::debug!("starting the slots' epochs timed out");
                    return;
                }
            }
        }
    }

    /// Adds members with scores to a sorted set and keeps its `keep` highest (active viewers).
    pub async fn record_active(&self, key: &str, members: &[(f64, i64)], keep: usize) {
        if members.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD").arg(key);
        for (score, member) in members {
            pipe.arg(*score).arg(*member);
        }
        pipe.ignore();
        pipe.cmd("ZREMRANGEBYRANK")
            .arg(key)
            .arg(0)
            .arg(-(keep as i64) - 1)
            .ignore();
        let _ = self.run::<()>(&pipe).await;
    }

    /// The `n` highest-scored members of a sorted set (most recently active viewers).
    pub async fn top_members(&self, key: &str, n: usize) -> Option<Vec<i64>> {
        if n == 0 {
            return Some(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("ZREVRANGE").arg(key).arg(0).arg(n as i64 - 1);
        self.run::<(Vec<i64>,)>(&pipe).await.map(|(ids,)| ids)
    }

    /// Plain `SET … EX` of immutable values (list pages under a versioned key).
    pub async fn set_many(&self, items: &[(String, String, Duration)]) -> bool {
        if items.is_empty() {
            return true;
        }
        let mut pipe = redis::pipe();
        for (key, value, ttl) in items {
            pipe.cmd("SET")
                .arg(key)
                .arg(value)
                .arg("EX")
                .arg(ttl.as_secs().max(1))
                .ignore();
        }
        self.run::<()>(&pipe).await.is_some()
    }

    /// Bumps list versions (never to a version used before, see `BUMP_VERSIONS`), then announces the
    /// new versions on `channel`. Returns them, or `None` (the keys are then remembered as dirty).
    pub async fn bump_versions(
        &self,
        keys: &[String],
        channel: &str,
        message: impl Fn(&[i64]) -> String,
    ) -> Option<Vec<i64>> {
        if keys.is_empty() {
            return Some(Vec::new());
        }
        // No expiry: one key per list (two per user) stays bounded.
        let Some(versions) = self.bump(keys).await else {
            self.mark_dirty(keys.iter().cloned());
            return None;
        };
        let mut announce = redis::pipe();
        announce
            .cmd("PUBLISH")
            .arg(channel)
            .arg(message(&versions))
            .ignore();
        let _ = self.run::<()>(&announce).await;
        Some(versions)
    }

    /// The current versions of lists (see `READ_VERSIONS`; `slot_epoch` names a slot's epoch key), or
    /// `None` when Redis is unavailable.
    pub async fn read_versions(
        &self,
        keys: &[String],
        slot_epoch: impl Fn(u16) -> String,
    ) -> Option<Vec<ListVersion>> {
        let answers = self
            .per_slot::<(Vec<i64>, Vec<i64>, i64)>(&READ_VERSIONS_SCRIPT, keys, |slot| {
                Some(slot_epoch(slot))
            })
            .await?;
        let mut versions = vec![ListVersion::default(); keys.len()];
        for (group, (read, created, epoch)) in answers {
            if read.len() != group.len() || created.len() != group.len() {
                return None;
            }
            for ((index, version), created) in group.into_iter().zip(read).zip(created) {
                let must_hold = if created == 1 { epoch } else { version };
                versions[index] = ListVersion { version, must_hold };
            }
        }
        Some(versions)
    }

    /// Bumps list versions (see `BUMP_VERSIONS`).
    async fn bump(&self, keys: &[String]) -> Option<Vec<i64>> {
        let answers = self
            .per_slot::<Vec<i64>>(&BUMP_VERSIONS_SCRIPT, keys, |_| None)
            .await?;
        let mut versions = vec![0; keys.len()];
        for (group, answer) in answers {
            if answer.len() != group.len() {
                return None;
            }
            for (index, version) in group.into_iter().zip(answer) {
                versions[index] = version;
            }
        }
        Some(versions)
    }

    /// Calls `script` once per hash slot of `keys` (a script may only touch keys of one slot on a Redis
    /// Cluster; the keys of one user share one), with `extra(slot)` as a last key of that slot, in one
    /// round trip. Each slot's key indices with its answer; `None` when Redis is unavailable.
    async fn per_slot<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[String],
        extra: impl Fn(u16) -> Option<String>,
    ) -> Option<Vec<(Vec<usize>, T)>> {
        if keys.is_empty() {
            return Some(Vec::new());
        }
        let groups = crate::redis_pool::by_slot(keys);
        let mut pipe = redis::pipe();
        self.load_scripts(&mut pipe);
        for group in &groups {
            let extra = extra(crate::redis_pool::key_slot(keys[group[0]].as_bytes()));
            pipe.cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(group.len() + usize::from(extra.is_some()));
            for &index in group {
                pipe.arg(&keys[index]);
            }
            if let Some(extra) = extra {
                pipe.arg(extra);
            }
        }
        let answers = self.run::<Vec<T>>(&pipe).await;
        self.scripts_ran(answers.is_some(), true);
        let answers = answers.filter(|answers| answers.len() == groups.len())?;
        Some(groups.into_iter().zip(answers).collect())
    }

    /// Deletes the keys that writes could not update while the breaker stayed closed (a single failed
    /// call does not open it, so the probe's repair would not run).
    pub async fn repair_dirty(&self) {
        let empty = self.dirty.lock().map(|d| d.is_empty()).unwrap_or(true);
        if !empty && self.available() && self.recover().await {
            self.health.success();
        }
    }

    /// A PING through the breaker: after an outage this is the probe that repairs and closes it.
    pub async fn ping(&self) -> bool {
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        self.run::<(String,)>(&pipe).await.is_some()
    }

    /// Whether the breaker lets calls through now.
    pub fn available(&self) -> bool {
        self.health.is_closed()
    }
}
