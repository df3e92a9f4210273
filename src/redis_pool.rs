//! The Redis connection pool shared by the event producer, the relay and (later) the cache.

use std::time::Duration;

use anyhow::Context;
use deadpool_redis::{Config as PoolConfig, Pool, PoolConfig as Sizing, Runtime, Timeouts};

pub use deadpool_redis::redis;

/// A pool of multiplexed Redis connections.
pub type RedisPool = Pool;

/// Builds the pool. Connections open lazily, so a Redis that is down at start does not stop the service.
pub fn build_pool(redis_url: &str, size: usize, timeout: Duration) -> anyhow::Result<RedisPool> {
    let mut config = PoolConfig::from_url(redis_url);
    let mut sizing = Sizing::new(size);
    sizing.timeouts = Timeouts {
        wait: Some(timeout),
        create: Some(timeout),
        recycle: Some(timeout),
    };
    config.pool = Some(sizing);
    config
        .create_pool(Some(Runtime::Tokio1))
        .context("building the Redis pool")
}

/// Checks that Redis answers (for `/readyz`).
pub async fn ping(pool: &RedisPool, timeout: Duration) -> anyhow::Result<()> {
    let call = async {
        let mut conn = pool.get().await?;
        let _: String = redis::cmd("PING").query_async(&mut *conn).await?;
        anyhow::Ok(())
    };
    tokio::time::timeout(timeout, call)
        .await
        .context("Redis did not answer in time")?
}
