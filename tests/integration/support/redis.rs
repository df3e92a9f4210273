//! Redis for tests: the test server's URL, a proxy in front of it that a test can cut, and raw reads and
//! deletes of keys under a test's prefix.

use std::sync::atomic::Ordering;

use tokio::task::JoinHandle;

/// The test Redis server (`TEST_REDIS_URL`, default `redis://127.0.0.1:6379`).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The Redis Cluster's seed nodes when the suite runs against one (`TEST_REDIS_CLUSTER_URLS`, as
/// `REDIS_CLUSTER_URLS`); empty when it runs against the one server.
pub fn redis_cluster_urls() -> String {
    std::env::var("TEST_REDIS_CLUSTER_URLS").unwrap_or_default()
}

/// Where the tests' Redis is: the cluster when `TEST_REDIS_CLUSTER_URLS` is set, else the one server.
pub fn redis_target() -> follow_service::redis_pool::RedisTarget {
    follow_service::redis_pool::RedisTarget::from_settings(&redis_url(), &redis_cluster_urls())
        .expect("TEST_REDIS_CLUSTER_URLS lists redis:// addresses")
}

/// A connection to the tests' Redis (the server or the cluster), for looking at what the service stored.
pub async fn redis_connection() -> Option<follow_service::redis_pool::Dedicated> {
    follow_service::redis_pool::dedicated(&redis_target(), std::time::Duration::ZERO)
        .await
        .ok()
}

/// A TCP proxy in front of Redis that a test can cut (every connection dropped, new ones refused) and
/// restore, to make Redis unreachable for one instance only.
pub struct RedisProxy {
    pub url: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl RedisProxy {
    /// Starts a proxy to the test Redis on a free local port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!("redis://{}", listener.local_addr().expect("address"));
        let target = redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let acceptor = {
            let (cut, connections) = (cut.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees the connection closed
                    }
                    let target = target.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    if let Ok(mut all) = connections.lock() {
                        all.push(task);
                    }
                }
            })
        };
        Self {
            url,
            cut,
            connections,
            acceptor,
        }
    }

    /// Redis becomes unreachable through the proxy.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Ok(mut all) = self.connections.lock() {
            for task in all.drain(..) {
                task.abort();
            }
        }
    }

    /// Redis is reachable again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        self.cut();
        self.acceptor.abort();
    }
}

/// Deletes every Redis key under `prefix` (SCAN + DEL: other tests share the server, so never
/// FLUSHDB; SCAN, not KEYS, which blocks Redis for every other test while it walks the keyspace): a
/// test's cleanup, or Redis losing its data. Returns how many keys went.
pub async fn redis_forget(prefix: &str) -> usize {
    let mut deleted = 0;
    // A cluster's keys are scanned node by node (the seeds are every master in the tests' cluster).
    for node in redis_target().node_urls() {
        deleted += forget_on_node(node, prefix).await;
    }
    deleted
}

/// Deletes the keys under `prefix` that one server holds (one key per command: on a cluster node the
/// keys it holds span slots).
async fn forget_on_node(url: &str, prefix: &str) -> usize {
    use follow_service::redis_pool::redis;
    let Ok(client) = redis::Client::open(url) else {
        return 0;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return 0;
    };
    let mut deleted = 0;
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)): Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut conn)
            .await
        else {
            break;
        };
        if !keys.is_empty() {
            deleted += keys.len();
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.cmd("UNLINK").arg(key).ignore();
            }
            let _: Result<(), _> = pipe.query_async(&mut conn).await;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    deleted
}

/// Reads a raw Redis key (to look at what the cache stored).
pub async fn redis_get(key: &str) -> Option<String> {
    use follow_service::redis_pool::redis;
    let mut conn = redis_connection().await?;
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .ok()?
}

/// The members of a Redis set, sorted (`None`: no such key).
pub async fn redis_members(key: &str) -> Option<Vec<String>> {
    use follow_service::redis_pool::redis;
    let mut conn = redis_connection().await?;
    let mut members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .ok()?;
    members.sort();
    (!members.is_empty()).then_some(members)
}
