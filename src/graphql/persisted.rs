//! Automatic persisted queries: operation texts stored by their SHA-256, in process and in Redis, so a
//! hash registered through one instance is known to all of them.
//!
//! Entries are content-addressed: a hash always names the same text, so nothing is ever invalidated
//! and a stale copy cannot exist. Redis is optional here: while it is down a hash this instance has not
//! seen answers "not found" and the client sends the text again, as the protocol intends.

use std::{sync::Arc, time::Duration};

use mini_moka::sync::Cache as MokaCache;
use sha2::{Digest, Sha256};

use crate::{
    redis_health::RedisHealth,
    redis_pool::{RedisPool, redis},
};

/// Persisted operation texts by hash.
pub struct PersistedQueries {
    redis: RedisPool,
    health: Arc<RedisHealth>,
    timeout: Duration,
    ttl: Duration,
    prefix: String,
    local: MokaCache<String, Arc<str>>,
}

/// The lowercase hex SHA-256 of an operation's text, as APQ names it.
pub fn sha256_hex(text: &str) -> String {
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

impl PersistedQueries {
    /// A store keeping up to `local_bytes` of text in process and each text `ttl` in Redis.
    pub fn new(
        redis: RedisPool,
        health: Arc<RedisHealth>,
        timeout: Duration,
        ttl: Duration,
        prefix: &str,
        local_bytes: u64,
    ) -> Self {
        Self {
            redis,
            health,
            timeout,
            ttl,
            prefix: prefix.to_owned(),
            local: MokaCache::builder()
                .weigher(|hash: &String, text: &Arc<str>| {
                    u32::try_from(hash.len() + text.len()).unwrap_or(u32::MAX)
                })
                .max_capacity(local_bytes)
                .build(),
        }
    }

    fn key(&self, hash: &str) -> String {
        format!("{}:apq:v1:{hash}", self.prefix)
    }

    /// The text registered under `hash`, if this instance or Redis has it (and it matches the hash).
    pub async fn get(&self, hash: &str) -> Option<Arc<str>> {
        if let Some(text) = self.local.get(&hash.to_owned()) {
            return Some(text);
        }
        let mut get = redis::cmd("GET");
        get.arg(self.key(hash));
        let text: String = self.call::<Option<String>>(&get).await.flatten()?;
        // Whoever can write to Redis could store anything: only a text with this hash is trusted.
        if sha256_hex(&text) != hash {
            tracing::warn!(%hash, "a persisted query in Redis does not match its hash; ignored");
            return None;
        }
        let text: Arc<str> = text.into();
        self.local.insert(hash.to_owned(), text.clone());
        Some(text)
    }

    /// Registers `text` under its `hash` (the caller has checked that they match).
    pub async fn put(&self, hash: &str, text: &str) {
        self.local.insert(hash.to_owned(), Arc::from(text));
        let mut set = redis::cmd("SET");
        set.arg(self.key(hash))
            .arg(text)
            .arg("EX")
            .arg(self.ttl.as_secs().max(1));
        let _: Option<()> = self.call(&set).await;
    }

    /// Runs a command while the shared breaker is closed, within the time budget; `None` otherwise.
    /// It never takes the breaker's half-open probe: that belongs to the cache, which must clean up
    /// before Redis is trusted again.
    async fn call<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        if !self.health.is_closed() {
            return None;
        }
        match tokio::time::timeout(self.timeout, self.redis.query_cmd::<T>(cmd)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(err)) => {
                tracing::debug!(error = %format!("{err:#}"), "persisted query store call failed");
                self.health.failure();
                None
            }
            Err(_) => {
                self.health.failure();
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sha256_hex;

    #[test]
    fn the_hash_is_apollos() {
        // Lowercase hex of the SHA-256 of the exact text, as Apollo's persisted-queries link sends it.
        assert_eq!(
            sha256_hex("{ __typename }"),
            "7f56e67dd21ab3f30d1ff8b7bed08893f0a0db86449836189b361dd1e56ddb4b"
        );
    }
}
