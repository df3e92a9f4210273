//! Redis connections shared by the event producer, the relay and the cache: one server, or a Redis
//! Cluster (`REDIS_CLUSTER_URLS`), behind one interface.
//!
//! One server: deadpool-redis creates the connections, but a checkout from it costs a round trip (it
//! PINGs every connection it hands out), and a multiplexed connection is made to be shared: so
//! `FOLLOW_REDIS_POOL_SIZE` connections are taken out of the pool once and every call pipelines over
//! them, round-robin. A connection that fails is dropped and replaced from the pool on the next call.
//!
//! A cluster: one cluster connection (the redis crate's, multiplexed per node, following redirections
//! and topology changes itself), opened lazily and shared. A cluster refuses a pipeline whose keys span
//! slots, so [`cluster::SlotRouter`] splits each pipeline by slot and keeps its order where order matters.

mod cluster;

pub use cluster::{SLOTS, by_slot, key_slot, slot_tag};

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

use self::redis::{
    aio::{ConnectionLike, MultiplexedConnection},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
};
pub use crate::config::RedisTarget;

/// Redis connections; cheap to clone.
#[derive(Clone)]
pub struct RedisPool {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Node(NodePool),
    Cluster(ClusterPool),
}

/// One server's shared multiplexed connections.
#[derive(Clone)]
struct NodePool {
    pool: Pool,
    shared: Arc<Vec<Mutex<Option<MultiplexedConnection>>>>,
    next: Arc<AtomicUsize>,
}

/// A cluster's one shared connection, opened on first use (and again after it broke).
#[derive(Clone)]
struct ClusterPool {
    seeds: Arc<Vec<String>>,
    timeout: Duration,
    /// The connection's state; callers wait on its changes while a connect runs.
    state: Arc<tokio::sync::watch::Sender<ClusterState>>,
    /// Whether a connect is running (only one at a time).
    connecting: Arc<std::sync::atomic::AtomicBool>,
    /// Which master serves which slot, for grouping pipelines by node.
    owners: Arc<cluster::OwnerCache>,
}

/// Where the shared cluster connection stands.
#[derive(Clone)]
enum ClusterState {
    /// None yet, or the last one broke.
    Closed,
    Open(ClusterConnection),
    /// The last connect failed, for this reason; the next call tries again.
    Failed(String),
}

/// Use of the connections, for metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStatus {
    /// Connections open.
    pub size: usize,
    /// Of those, idle.
    pub available: usize,
    /// Callers waiting for one.
    pub waiting: usize,
}

/// Builds the connections to `target`: for one server a pool of `size` shared connections (at least
/// one), for a cluster one cluster connection. Connections open lazily, so a Redis that is down at start
/// does not stop the service.
pub fn build_pool(
    target: &RedisTarget,
    size: usize,
    timeout: Duration,
) -> anyhow::Result<RedisPool> {
    let backend = match target {
        RedisTarget::Node(url) => Backend::Node(NodePool::new(url, size, timeout)?),
        RedisTarget::Cluster(seeds) => {
            let cluster = ClusterPool {
                seeds: Arc::new(seeds.clone()),
                timeout,
                state: Arc::new(tokio::sync::watch::Sender::new(ClusterState::Closed)),
                connecting: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                owners: Arc::default(),
            };
            // Learning the cluster's layout takes several round trips: begin now, off any request.
            if tokio::runtime::Handle::try_current().is_ok() {
                cluster.start_connecting();
            }
            Backend::Cluster(cluster)
        }
    };
    Ok(RedisPool { backend })
}

impl NodePool {
    fn new(url: &str, size: usize, timeout: Duration) -> anyhow::Result<Self> {
        let size = size.max(1);
        let mut config = PoolConfig::from_url(url);
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
        Ok(Self {
            pool,
            shared: Arc::new((0..size).map(|_| Mutex::new(None)).collect()),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

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
}

impl ClusterPool {
    /// The shared cluster connection. When there is none, a connect starts in a task of its own and the
    /// caller waits for it: a caller that gives up (its time budget) does not cancel the connect, which
    /// learns the whole cluster's layout and may take longer than one call's budget.
    async fn connection(&self) -> anyhow::Result<ClusterConnection> {
        let mut state = self.state.subscribe();
        let mut started = false;
        loop {
            match state.borrow_and_update().clone() {
                ClusterState::Open(conn) => return Ok(conn),
                ClusterState::Failed(reason) if started => {
                    anyhow::bail!("no Redis Cluster connection: {reason}")
                }
                ClusterState::Closed | ClusterState::Failed(_) => {}
            }
            if !started {
                self.start_connecting();
                started = true;
            }
            state
                .changed()
                .await
                .context("the Redis Cluster connection was dropped")?;
        }
    }

    /// Starts a connect unless one is running; its outcome is announced through `state`.
    fn start_connecting(&self) {
        if self.connecting.swap(true, Ordering::SeqCst) {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            let outcome = open_cluster(
                &pool.seeds,
                pool.timeout.max(Duration::from_secs(1)),
                pool.timeout,
            )
            .await;
            pool.connecting.store(false, Ordering::SeqCst);
            pool.state.send_replace(match outcome {
                Ok(conn) => ClusterState::Open(conn),
                Err(err) => ClusterState::Failed(format!("{err:#}")),
            });
        });
    }

    /// Drops the shared connection, so the next call opens a new one from the seeds.
    fn discard(&self) {
        self.state.send_if_modified(|state| {
            let open = matches!(state, ClusterState::Open(_));
            if open {
                *state = ClusterState::Closed;
            }
            open
        });
    }
}

/// Opens a cluster connection from the seed nodes (the rest of the cluster is learnt from them).
async fn open_cluster(
    seeds: &[String],
    connect: Duration,
    response: Duration,
) -> anyhow::Result<ClusterConnection> {
    let client = ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(connect)
        .response_timeout(response)
        .build()
        .context("building the Redis Cluster client")?;
    tokio::time::timeout(connect * 4, client.get_async_connection())
        .await
        .context("the Redis Cluster did not answer in time")?
        .context("no Redis Cluster connection")
}

/// Whether an error says the connection is broken (rather than one command failing).
fn is_broken(err: &redis::RedisError) -> bool {
    err.is_unrecoverable_error()
        || err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
}

/// Whether an error says the cluster connection itself is gone. A node's failure or a slow answer is
/// not: the client reconnects nodes and follows the layout by itself, and opening a new cluster
/// connection (several round trips) on every timeout would turn a slow moment into an outage.
fn is_cluster_gone(err: &redis::RedisError) -> bool {
    err.is_unrecoverable_error() || err.is_connection_dropped()
}

impl RedisPool {
    /// Runs a pipeline (on a cluster, split by slot); a connection that fails is replaced for the next
    /// call.
    pub async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> anyhow::Result<T> {
        match &self.backend {
            Backend::Node(node) => {
                let (slot, mut conn) = node.connection().await?;
                pipe.query_async::<T>(&mut conn).await.map_err(|err| {
                    if is_broken(&err) {
                        node.discard(slot);
                    }
                    err.into()
                })
            }
            Backend::Cluster(cluster) => {
                let mut router = cluster.owners.router(cluster.connection().await?).await;
                match pipe.query_async::<T>(&mut router).await {
                    Ok(value) => Ok(value),
                    Err(err) => {
                        if is_cluster_gone(&err) {
                            cluster.discard();
                        }
                        Err(err.into())
                    }
                }
            }
        }
    }

    /// Runs one command; as [`Self::query_pipe`]. On a cluster a multi-key command (MGET, DEL) is split
    /// by slot and its answers joined by the cluster client.
    pub async fn query_cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> anyhow::Result<T> {
        match &self.backend {
            Backend::Node(node) => {
                let (slot, mut conn) = node.connection().await?;
                cmd.query_async::<T>(&mut conn).await.map_err(|err| {
                    if is_broken(&err) {
                        node.discard(slot);
                    }
                    err.into()
                })
            }
            Backend::Cluster(cluster) => {
                let mut conn = cluster.connection().await?;
                match cmd.query_async::<T>(&mut conn).await {
                    Ok(value) => Ok(value),
                    Err(err) => {
                        if is_cluster_gone(&err) {
                            cluster.discard();
                        }
                        Err(err.into())
                    }
                }
            }
        }
    }

    /// The sum of a numeric `INFO` field over every server (one, or each node of a cluster).
    pub async fn info_sum(&self, section: &str, field: &str) -> anyhow::Result<f64> {
        let mut info = redis::cmd("INFO");
        info.arg(section);
        let texts: Vec<String> = match &self.backend {
            Backend::Node(_) => vec![self.query_cmd::<String>(&info).await?],
            Backend::Cluster(cluster) => {
                use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
                let mut conn = cluster.connection().await?;
                let all = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let reply = conn.route_command(info, all).await?;
                redis::from_redis_value::<std::collections::HashMap<String, String>>(reply)?
                    .into_values()
                    .collect()
            }
        };
        Ok(texts
            .iter()
            .filter_map(|text| info_field(text, field))
            .sum())
    }

    /// The connections' use, for metrics (a cluster connection counts as one, never waited for).
    pub fn status(&self) -> PoolStatus {
        match &self.backend {
            Backend::Node(node) => {
                let status = node.pool.status();
                PoolStatus {
                    size: status.size,
                    available: status.available,
                    waiting: status.waiting,
                }
            }
            Backend::Cluster(cluster) => {
                let open = matches!(*cluster.state.borrow(), ClusterState::Open(_));
                PoolStatus {
                    size: usize::from(open),
                    available: usize::from(open),
                    waiting: 0,
                }
            }
        }
    }
}

/// A numeric field of Redis's `INFO` text (`name:value` lines).
pub fn info_field(info: &str, name: &str) -> Option<f64> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|value| value.trim().parse().ok())
}

/// A connection of its own, outside the pool, for a task that blocks in Redis (XREAD, XREADGROUP): a
/// blocking command would hold up every call pipelined on a shared connection. On a cluster it is a
/// cluster connection of its own, so a blocked read holds up nothing else either.
pub struct Dedicated(DedicatedInner);

enum DedicatedInner {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection, Arc<cluster::OwnerCache>),
}

/// Opens a [`Dedicated`] connection whose replies may take up to `block` plus a margin.
pub async fn dedicated(target: &RedisTarget, block: Duration) -> anyhow::Result<Dedicated> {
    let response = block + Duration::from_secs(5);
    let inner = match target {
        RedisTarget::Node(url) => {
            let client = redis::Client::open(url.as_str())?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(response));
            DedicatedInner::Node(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            )
        }
        RedisTarget::Cluster(seeds) => DedicatedInner::Cluster(
            open_cluster(seeds, Duration::from_secs(2), response).await?,
            Arc::default(),
        ),
    };
    Ok(Dedicated(inner))
}

impl ConnectionLike for Dedicated {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match &mut self.0 {
            DedicatedInner::Node(conn) => conn.req_packed_command(cmd),
            DedicatedInner::Cluster(conn, _) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match &mut self.0 {
            DedicatedInner::Node(conn) => conn.req_packed_commands(pipeline, offset, count),
            DedicatedInner::Cluster(conn, owners) => {
                let (conn, owners) = (conn.clone(), owners.clone());
                Box::pin(async move {
                    let mut router = owners.router(conn).await;
                    router.req_packed_commands(pipeline, offset, count).await
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// Checks that Redis answers (for `/readyz`).
pub async fn ping(pool: &RedisPool, timeout: Duration) -> anyhow::Result<()> {
    let ping = redis::cmd("PING");
    let call = pool.query_cmd::<redis::Value>(&ping);
    tokio::time::timeout(timeout, call)
        .await
        .context("Redis did not answer in time")?
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_info_fields_are_read_by_name() {
        let info = "# Stats\r\ntotal_connections_received:7\r\ntotal_commands_processed:12345\r\n";
        assert_eq!(info_field(info, "total_commands_processed"), Some(12345.0));
        assert_eq!(info_field(info, "total_connections_received"), Some(7.0));
        assert_eq!(info_field(info, "total_commands"), None);
    }

    #[test]
    fn cluster_urls_replace_the_server_url() {
        let one = RedisTarget::from_settings("redis://a:1", "").expect("one server");
        assert_eq!(one, RedisTarget::Node("redis://a:1".into()));
        let cluster = RedisTarget::from_settings("redis://a:1", " redis://b:2, redis://c:3 ,")
            .expect("a cluster");
        assert_eq!(
            cluster,
            RedisTarget::Cluster(vec!["redis://b:2".into(), "redis://c:3".into()])
        );
        assert_eq!(cluster.node_urls().len(), 2);
        assert!(RedisTarget::from_settings("redis://a:1", "b:2").is_err());
    }
}
