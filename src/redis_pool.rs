//! Redis connections shared by the event producer, the relay and the cache.
//!
//! deadpool-redis creates the connections, but a checkout from it costs a round trip (it PINGs every
//! connection it hands out), and a multiplexed connection is made to be shared: so `FOLLOW_REDIS_POOL_SIZE`
//! connections are taken out of the pool once and every call pipelines over them, round-robin. A
//! connection that fails is dropped and replaced from the pool on the next call.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use deadpool_redis::{
    Config as PoolConfig, Connection, Pool, PoolConfig as Sizing, Runtime, Timeouts,
};

pub use deadpool_redis::redis;

use self::redis::aio::MultiplexedConnection;

/// Redis connections; cheap to clone.
#[derive(Clone)]
pub struct RedisPool {
    pool: Pool,
    shared: Arc<Vec<Mutex<Option<MultiplexedConnection>>>>,
    next: Arc<AtomicUsize>,
}

/// Builds the pool of `size` shared connections (at least one). Connections open lazily, so a Redis
/// that is down at start does not stop the service.
pub fn build_pool(redis_url: &str, size: usize, timeout: Duration) -> anyhow::Result<RedisPool> {
    let size = size.max(1);
    let mut config = PoolConfig::from_url(redis_url);
    let mut sizing = Sizing::new(size);
    sizing.timeouts = Timeouts {
        wait: Some(timeout),
        create: Some(timeout),
        recycle: Some(timeout),
    };
    config.pool = Some(sizing);
    let pool = config
        .create_pool(Some(Runtime::Tokio1))
        .context("building the Redis pool")?;
    Ok(RedisPool {
        pool,
        shared: Arc::new((0..size).map(|_| Mutex::new(None)).collect()),
        next: Arc::new(AtomicUsize::new(0)),
    })
}

impl RedisPool {
    /// A shared connection (opening one through the pool if its slot is empty), and its slot.
    async fn connection(&self) -> anyhow::Result<(usize, MultiplexedConnection)> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.shared.len();
        if let Some(conn) = self.shared[slot].lock().ok().and_then(|c| c.clone()) {
            return Ok((slot, conn));
        }
        let conn = Connection::take(self.pool.get().await.context("no Redis connection")?);
        if let Ok(mut held) = self.shared[slot].lock() {
            *held = Some(conn.clone());
        }
        Ok((slot, conn))
    }

    fn discard(&self, slot: usize) {
        if let Ok(mut held) = self.shared[slot].lock() {
            *held = None;
        }
    }

    /// Drops the slot's connection when the error says it is broken; returns the error.
    fn failed(&self, slot: usize, err: redis::RedisError) -> anyhow::Error {
        if err.is_unrecoverable_error()
            || err.is_io_error()
            || err.is_timeout()
            || err.is_connection_dropped()
        {
            self.discard(slot);
        }
        err.into()
    }

    /// Runs a pipeline; a connection that fails is replaced for the next call.
    pub async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> anyhow::Result<T> {
        let (slot, mut conn) = self.connection().await?;
        match pipe.query_async::<T>(&mut conn).await {
            Ok(value) => Ok(value),
            Err(err) => Err(self.failed(slot, err)),
        }
    }

    /// Runs one command; as [`Self::query_pipe`].
    pub async fn query_cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> anyhow::Result<T> {
        let (slot, mut conn) = self.connection().await?;
        match cmd.query_async::<T>(&mut conn).await {
            Ok(value) => Ok(value),
            Err(err) => Err(self.failed(slot, err)),
        }
    }

    /// The underlying pool's use, for metrics.
    pub fn status(&self) -> deadpool_redis::Status {
        self.pool.status()
    }
}

/// A connection of its own, outside the pool, for a task that blocks in Redis (XREAD, XREADGROUP): a
/// blocking command would hold up every call pipelined on a shared connection. Replies may take up to
/// `block` plus a margin.
pub async fn dedicated(redis_url: &str, block: Duration) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(redis_url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(block + Duration::from_secs(5)));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// Checks that Redis answers (for `/readyz`).
pub async fn ping(pool: &RedisPool, timeout: Duration) -> anyhow::Result<()> {
    let ping = redis::cmd("PING");
    let call = pool.query_cmd::<String>(&ping);
    tokio::time::timeout(timeout, call)
        .await
        .context("Redis did not answer in time")?
        .map(|_| ())
}
