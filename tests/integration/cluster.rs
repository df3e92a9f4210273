//! A Redis Cluster losing a node in the middle of a run. It takes down a node that every test on the
//! cluster shares, so it is ignored by default and run alone, after the suite, against the cluster of
//! `scripts/ensure-redis-cluster.sh` (`.ci/run` does so):
//! `TEST_REDIS_CLUSTER_URLS=… cargo test --test integration cluster -- --ignored`.

use std::{
    collections::HashMap,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use follow_service::redis_pool::redis;
use serde_json::json;

use crate::support::{Options, TestApp, eventually, run_on};

/// The directory `scripts/ensure-redis-cluster.sh` gives each node (`FOLLOW_CLUSTER_DIR`).
fn cluster_dir() -> String {
    std::env::var("FOLLOW_CLUSTER_DIR").unwrap_or_else(|_| "/tmp/follow-redis-cluster".to_owned())
}

/// The port of the master that holds `key`'s slot, asked of the node at `seed`.
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
    let slots: Vec<(i64, i64, (String, u16))> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async::<Vec<redis::Value>>(&mut conn)
        .await
        .expect("CLUSTER SLOTS")
        .into_iter()
        .filter_map(|range| match range {
            redis::Value::Array(parts) if parts.len() >= 3 => {
                let start = redis::from_redis_value::<i64>(parts[0].clone()).ok()?;
                let end = redis::from_redis_value::<i64>(parts[1].clone()).ok()?;
                let master = match &parts[2] {
                    redis::Value::Array(node) if node.len() >= 2 => (
                        redis::from_redis_value::<String>(node[0].clone()).ok()?,
                        redis::from_redis_value::<u16>(node[1].clone()).ok()?,
                    ),
                    _ => return None,
                };
                Some((start, end, master))
            }
            _ => None,
        })
        .collect();
    slots
        .into_iter()
        .find(|(start, end, _)| (*start..=*end).contains(&slot))
        .map(|(_, _, (_, port))| port)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kills a node of the shared test cluster: run alone (see the module doc)"]
async fn a_node_killed_mid_run_loses_nothing_acknowledged_and_counts_converge() {
    let seeds = std::env::var("TEST_REDIS_CLUSTER_URLS").unwrap_or_default();
    let seed = seeds
        .split(',')
        .next()
        .filter(|seed| !seed.is_empty())
        .expect("TEST_REDIS_CLUSTER_URLS names the test cluster")
        .to_owned();
    let app = TestApp::with_options(Options {
        relay_after: Duration::from_millis(500),
        ..Options::default()
    })
    .await;
    const USERS: i64 = 30;
    app.create_users(1..=USERS).await;
    // The node that holds the event stream: the worst one to lose.
    let victim = owner_of(&seed, &app.app.stream.stream).await;

    // Writers, each on pairs of its own, record the last answer the service acknowledged per pair.
    let acknowledged: Arc<Mutex<HashMap<(i64, i64), bool>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (1..=6i64)
        .map(|writer| {
            let (app, acknowledged, stop) = (app.app.clone(), acknowledged.clone(), stop.clone());
            tokio::spawn(async move {
                let mut step = 0i64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    step += 1;
                    let follower = writer;
                    let followee = 7 + (step * 7 + writer) % (USERS - 7);
                    let follow = step % 3 != 0;
                    let mutation = if follow { "follow" } else { "unfollow" };
                    let answer = run_on(
                        &app,
                        Some(follower),
                        &format!("mutation($u: ID!) {{ {mutation}(userId: $u) {{ changed }} }}"),
                        json!({ "u": followee.to_string() }),
                    )
                    .await;
                    if answer["errors"].is_null()
                        && let Ok(mut acknowledged) = acknowledged.lock()
                    {
                        acknowledged.insert((follower, followee), follow);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();

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
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for writer in writers {
        writer.await.expect("writer");
    }

    // Nothing acknowledged is lost, and the counters converge on the edges.
    let acknowledged = acknowledged.lock().map(|a| a.clone()).unwrap_or_default();
    assert!(
        acknowledged.len() > 20,
        "the writers wrote: {acknowledged:?}"
    );
    let started = Instant::now();
    app.drained().await;
    for ((follower, followee), follows) in &acknowledged {
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
    // And the API answers the exact counts again, through the cluster's caches.
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
    println!(
        "killed the master on port {victim}; {} pairs acknowledged; converged {:?} after the writes",
        acknowledged.len(),
        started.elapsed()
    );
}
