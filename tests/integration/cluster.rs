//! A Redis Cluster losing a node in the middle of a run. It takes down a node that every test on the
//! cluster shares, so it is ignored by default and run alone, after the suite, against the cluster of
//! `scripts/ensure-redis-cluster.sh` (`.ci/run` does so):
//! `TEST_REDIS_CLUSTER_URLS=… cargo test --test integration cluster -- --ignored`.

use std::{
    collections::HashMap,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use follow_service::redis_pool::redis;
use serde_json::json;

use crate::support::{Options, TestApp, eventually, run_on};

/// The directory `scripts/ensure-redis-cluster.sh` gives each node (`FOLLOW_CLUSTER_DIR`).
fn cluster_dir() -> String {
    std::env::var("FOLLOW_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/follow-redis-cluster".to_owned())
}

/// The slot ranges of the cluster and the port of each one's master, asked of the node at `seed`.
async fn slot_ranges(seed: &str) -> Vec<(i64, i64, u16)> {
    let client = redis::Client::open(seed).expect("seed URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("a seed node answers");
    redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async::<Vec<redis::Value>>(&mut conn)
        .await
        .expect("CLUSTER SLOTS")
        .into_iter()
        .filter_map(|range| match range {
            redis::Value::Array(parts) if parts.len() >= 3 => {
                let start = redis::from_redis_value::<i64>(parts[0].clone()).ok()?;
                let end = redis::from_redis_value::<i64>(parts[1].clone()).ok()?;
                let port = match &parts[2] {
                    redis::Value::Array(node) if node.len() >= 2 => {
                        redis::from_redis_value::<u16>(node[1].clone()).ok()?
                    }
                    _ => return None,
                };
                Some((start, end, port))
            }
            _ => None,
        })
        .collect()
}

/// The port of the master that holds `key`'s slot.
async fn owner_of(seed: &str, key: &str) -> u16 {
    let client = redis::Client::open(seed).expect("seed URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("a seed node answers");
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("CLUSTER KEYSLOT");
    slot_ranges(seed)
        .await
        .into_iter()
        .find(|(start, end, _)| (*start..=*end).contains(&slot))
        .map(|(_, _, port)| port)
        .expect("every slot has a master")
}

/// Starts the node on `port` again from its directory: it rejoins with its slots, and with no data
/// (the test cluster keeps nothing on disk).
fn restart_node(port: u16) {
    let dir = format!("{}/{port}", cluster_dir());
    let status = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "yes",
        ])
        .args(["--dir", &dir, "--logfile", &format!("{dir}/redis.log")])
        .args(["--pidfile", &format!("{dir}/redis.pid")])
        .args(["--cluster-enabled", "yes"])
        .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
        .args([
            "--cluster-node-timeout",
            "2000",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .status()
        .expect("redis-server runs");
    assert!(status.success(), "redis-server on {port} did not start");
}

/// Whether the node on `port` reports the cluster healthy.
async fn cluster_ok(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    let info: Result<String, _> = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut conn)
        .await;
    info.is_ok_and(|info| info.contains("cluster_state:ok"))
}

/// Follows and unfollows of six writers, each on pairs of its own, until stopped; they record the
/// last state the service acknowledged per pair.
struct Writers {
    acknowledged: Arc<Mutex<HashMap<(i64, i64), bool>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const USERS: i64 = 30;

impl Writers {
    fn start(app: &TestApp) -> Self {
        let acknowledged: Arc<Mutex<HashMap<(i64, i64), bool>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (1..=6i64)
            .map(|writer| {
                let (app, acknowledged, stop) =
                    (app.app.clone(), acknowledged.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut step = 0i64;
                    while !stop.load(Ordering::SeqCst) {
                        step += 1;
                        let followee = 7 + (step * 7 + writer) % (USERS - 7);
                        let follow = step % 3 != 0;
                        let mutation = if follow { "follow" } else { "unfollow" };
                        let answer = run_on(
                            &app,
                            Some(writer),
                            &format!(
                                "mutation($u: ID!) {{ {mutation}(userId: $u) {{ changed }} }}"
                            ),
                            json!({ "u": followee.to_string() }),
                        )
                        .await;
                        if answer["errors"].is_null()
                            && let Ok(mut acknowledged) = acknowledged.lock()
                        {
                            acknowledged.insert((writer, followee), follow);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Self {
            acknowledged,
            stop,
            tasks,
        }
    }

    /// Stops the writers; the pairs they wrote and the state last acknowledged for each.
    async fn stop(self) -> HashMap<(i64, i64), bool> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("writer");
        }
        self.acknowledged
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }
}

/// Nothing acknowledged is lost, the counters converge on the edges, and the API answers exact counts
/// again through the cluster's caches.
async fn assert_converged(app: &TestApp, acknowledged: &HashMap<(i64, i64), bool>) {
    assert!(
        acknowledged.len() > 20,
        "the writers wrote: {acknowledged:?}"
    );
    app.drained().await;
    for ((follower, followee), follows) in acknowledged {
        let edges = app
            .count(&format!(
                "SELECT count(*) FROM follows WHERE follower_id = {follower} AND followee_id = {followee}"
            ))
            .await;
        assert_eq!(
            edges == 1,
            *follows,
            "{follower} → {followee} as acknowledged"
        );
    }
    app.assert_counts_exact().await;
    for user in 1..=USERS {
        let truth = app
            .count(&format!(
                "SELECT count(*) FROM follows WHERE followee_id = {user}"
            ))
            .await;
        let query = "query($u: ID!) { user(id: $u) { followerCount } }";
        let converged = eventually(Duration::from_secs(30), || async {
            let data = app
                .data(None, query, json!({ "u": user.to_string() }))
                .await;
            data["user"]["followerCount"].as_i64() == Some(truth)
        })
        .await;
        assert!(
            converged,
            "user {user}'s follower count converges on {truth}"
        );
    }
}

/// The first seed of `TEST_REDIS_CLUSTER_URLS`.
fn first_seed() -> String {
    std::env::var("TEST_REDIS_CLUSTER_URLS")
        .unwrap_or_default()
        .split(',')
        .next()
        .filter(|seed| !seed.is_empty())
        .expect("TEST_REDIS_CLUSTER_URLS names the test cluster")
        .to_owned()
}

async fn app_with_users() -> TestApp {
    let app = TestApp::with_options(Options {
        relay_after: Duration::from_millis(500),
        ..Options::default()
    })
    .await;
    app.create_users(1..=USERS).await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kills a node of the shared test cluster: run alone (see the module doc)"]
async fn a_node_killed_mid_run_loses_nothing_acknowledged_and_counts_converge() {
    let app = app_with_users().await;
    // The node that holds the event stream: the worst one to lose.
    let victim = owner_of(&first_seed(), &app.app.stream.first().stream).await;
    let writers = Writers::start(&app);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = Command::new("redis-cli")
        .args(["-p", &victim.to_string(), "shutdown", "nosave"])
        .status();
    tokio::time::sleep(Duration::from_secs(4)).await;
    restart_node(victim);
    assert!(
        eventually(Duration::from_secs(30), || cluster_ok(victim)).await,
        "the cluster is healthy again once the node is back"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acknowledged = writers.stop().await;
    assert_converged(&app, &acknowledged).await;
}

/// The node ids of the masters, by port.
async fn master_ids(seed: &str) -> HashMap<u16, String> {
    let client = redis::Client::open(seed).expect("seed URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("a seed node answers");
    let nodes: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut conn)
        .await
        .expect("CLUSTER NODES");
    nodes
        .lines()
        .filter(|line| line.contains("master"))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let id = fields.next()?.to_owned();
            let port = fields.next()?.split(['@', ':']).nth(1)?.parse().ok()?;
            Some((port, id))
        })
        .collect()
}

/// A plain connection to the node on `port`.
async fn node(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("node URL")
        .get_multiplexed_async_connection()
        .await
        .expect("the node answers")
}

/// Moves `slot`, keys and all, from the master on `from` to the one on `to`, as `redis-cli --cluster
/// reshard` does (IMPORTING, MIGRATING, MIGRATE in batches, then the new owner announced): while it
/// runs, the slot's clients meet ASK and MOVED redirections.
async fn migrate_slot(ids: &HashMap<u16, String>, slot: i64, from: u16, to: u16) {
    let (mut source, mut target) = (node(from).await, node(to).await);
    let setslot = |state: &str, id: &str| {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot).arg(state).arg(id);
        cmd
    };
    let () = setslot("IMPORTING", &ids[&from])
        .query_async(&mut target)
        .await
        .expect("IMPORTING");
    let () = setslot("MIGRATING", &ids[&to])
        .query_async(&mut source)
        .await
        .expect("MIGRATING");
    loop {
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(10)
            .query_async(&mut source)
            .await
            .expect("GETKEYSINSLOT");
        if keys.is_empty() {
            break;
        }
        let _: redis::Value = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to)
            .arg("")
            .arg(0)
            .arg(5_000)
            .arg("KEYS")
            .arg(&keys)
            .query_async(&mut source)
            .await
            .expect("MIGRATE");
        // Slowly, so that the writers meet the slot half moved.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for port in ids.keys() {
        let () = setslot("NODE", &ids[&to])
            .query_async(&mut node(*port).await)
            .await
            .expect("SETSLOT NODE");
    }
}

/// The hash slot of `key`.
async fn slot_of(port: u16, key: &str) -> i64 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut node(port).await)
        .await
        .expect("CLUSTER KEYSLOT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reshards the shared test cluster: run alone (see the module doc)"]
async fn a_resharding_mid_run_loses_nothing_acknowledged_and_counts_converge() {
    let seed = first_seed();
    let app = app_with_users().await;
    let ids = master_ids(&seed).await;
    let any = *ids.keys().next().expect("a master");
    // The stream's slot and the slots of every user's keys move to another master while the writers
    // write, one after another; then they move back, so the cluster ends as it began.
    let mut keys = vec![app.app.stream.first().stream.clone()];
    keys.extend((1..=USERS).map(|user| format!("{{{user}}}")));
    let mut moves = Vec::new();
    for key in &keys {
        let slot = slot_of(any, key).await;
        let from = owner_of(&seed, key).await;
        let to = *ids
            .keys()
            .find(|port| **port != from)
            .expect("another master");
        if !moves.iter().any(|(s, _, _)| *s == slot) {
            moves.push((slot, from, to));
        }
    }
    let writers = Writers::start(&app);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (slot, from, to) in &moves {
        migrate_slot(&ids, *slot, *from, *to).await;
    }
    assert_ne!(
        owner_of(&seed, &app.app.stream.first().stream).await,
        moves[0].1,
        "the stream's slot moved"
    );
    for (slot, from, to) in &moves {
        migrate_slot(&ids, *slot, *to, *from).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acknowledged = writers.stop().await;
    assert_converged(&app, &acknowledged).await;
}
