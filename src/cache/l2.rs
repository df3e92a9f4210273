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

/// The script, loaded into Redis once and then called by its hash (EVALSHA): sending and hashing its
/// text on every write costs Redis as much as running it.
static SET_IF_NEWER_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(SET_IF_NEWER));

/// Most keys remembered as dirty; past it the event consumer's refresh is the repair.
const MAX_DIRTY: usize = 100_000;

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
    /// Whether this process has loaded the script since it last failed (Redis may have restarted).
    script_loaded: AtomicBool,
}

impl L2 {
    pub fn new(redis: RedisPool, health: Arc<RedisHealth>, timeout: Duration) -> Self {
        Self {
            redis,
            health,
            timeout,
            dirty: Mutex::new(HashSet::new()),
            dirty_overflowed: AtomicBool::new(false),
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

    /// The probe after an outage: Redis answers, and the keys this instance could not update are gone.
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
                let mut del = redis::cmd("DEL");
                del.arg(chunk);
                let _: i64 = self
                    .redis
                    .query_cmd(&del)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
            }
            Ok::<_, String>(())
        };
        match tokio::time::timeout(
            self.timeout * 4 + Duration::from_millis(keys.len() as u64 / 10),
            call,
        )
        .await
        {
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

    /// Versioned writes (newer wins) and an optional message on `channel`, in one round trip. Keys whose
    /// write may have failed are remembered as dirty when `authoritative` (a write, not a fill).
    pub async fn write_versioned(
        &self,
        writes: &[VersionedWrite],
        publish: Option<(&str, &str)>,
        authoritative: bool,
    ) -> bool {
        if writes.is_empty() && publish.is_none() {
            return true;
        }
        let mut pipe = redis::pipe();
        let needs_script = writes.iter().any(|w| w.version != 0);
        if needs_script && !self.script_loaded.load(Ordering::Relaxed) {
            pipe.cmd("SCRIPT").arg("LOAD").arg(SET_IF_NEWER).ignore();
        }
        for write in writes {
            if write.version == 0 {
                // A value read from PostgreSQL only fills a gap: a plain SET NX, no script.
                pipe.cmd("SET")
                    .arg(&write.key)
                    .arg(format!("0:{}", write.payload))
                    .arg("NX")
                    .arg("EX")
                    .arg(write.ttl.as_secs().max(1))
                    .ignore();
                continue;
            }
            pipe.cmd("EVALSHA")
                .arg(SET_IF_NEWER_SCRIPT.get_hash())
                .arg(1)
                .arg(&write.key)
                .arg(write.version)
                .arg(&write.payload)
                .arg(write.ttl.as_secs().max(1))
                .ignore();
        }
        if let Some((channel, message)) = publish {
            pipe.cmd("PUBLISH").arg(channel).arg(message).ignore();
        }
        let done = self.run::<()>(&pipe).await.is_some();
        // Loaded once a pipeline that carried the script went through; after any failure Redis may have
        // restarted without it, so the next write loads it again. (A successful pipeline of plain fills
        // says nothing about the script, and used to mark it loaded.)
        if !done {
            self.script_loaded.store(false, Ordering::Relaxed);
        } else if needs_script {
            self.script_loaded.store(true, Ordering::Relaxed);
        }
        if !done && authoritative {
            self.mark_dirty(writes.iter().map(|w| w.key.clone()));
        }
        done
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

    /// Bumps list versions, then announces the new versions on `channel`.
    /// Returns the new versions, or `None` (the keys are then remembered as dirty).
    pub async fn bump_versions(
        &self,
        keys: &[String],
        channel: &str,
        message: impl Fn(&[i64]) -> String,
    ) -> Option<Vec<i64>> {
        if keys.is_empty() {
            return Some(Vec::new());
        }
        // No expiry: one key per list (two per user) stays bounded, and a version that never goes away
        // can never bring an old page back.
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("INCR").arg(key);
        }
        let Some(versions) = self.run::<Vec<i64>>(&pipe).await else {
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

    /// Deletes keys and announces it (used when an exact new value is not at hand).
    pub async fn delete(&self, keys: &[String], publish: Option<(&str, &str)>) -> bool {
        let mut pipe = redis::pipe();
        if !keys.is_empty() {
            pipe.cmd("DEL").arg(keys).ignore();
        }
        if let Some((channel, message)) = publish {
            pipe.cmd("PUBLISH").arg(channel).arg(message).ignore();
        }
        let done = self.run::<()>(&pipe).await.is_some();
        if !done {
            self.mark_dirty(keys.iter().cloned());
        }
        done
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
