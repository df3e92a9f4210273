//! The fault drill: a write load from many clients while service instances, a worker and Redis are
//! killed and restarted; then, once the pipeline has drained, the proof that nothing was lost.
//!
//! It runs its own Redis (a `redis-server` child on a free port, so restarting it harms nothing else),
//! two `serve` instances and one `worker` over the database `follow_drill`. Each client owns a few writer
//! users and follows or unfollows Zipf-chosen users through either instance; an operation that fails
//! (its instance was killed mid-request) is retried on the other until acknowledged. follow and unfollow
//! are idempotent, so the last acknowledged operation of each pair is its state. At the end it checks:
//! every pair's edge matches that state (no acknowledged write lost), every count equals its edges, and
//! the outbox is empty.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use bytes::Bytes;
use follow_service::{auth::JwtKeys, seed::ZipfSampler};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

use crate::{
    graph, load,
    process::{self, Process, ServeSettings},
    scenarios::Request,
};

/// How big the drill is.
pub struct DrillPlan {
    pub operations: u64,
    pub clients: usize,
    pub chaos_every: Duration,
    pub database_url: String,
}

/// Where a process of the drill logs: `<temp>/follow-drill-<name>.log`, appended to across restarts.
fn log_of(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("follow-drill-{name}.log"))
}

/// How long a restarted instance may take to answer `/healthz`, and how often it is asked.
const HEALTHY_WITHIN: Duration = Duration::from_secs(30);
const HEALTH_POLL: Duration = Duration::from_millis(50);

/// Runs the drill and prints its figures; fails if anything was lost or drifted.
pub async fn run(plan: DrillPlan, server_binary: std::path::PathBuf) -> anyhow::Result<()> {
    let graph_plan = graph::GraphPlan {
        users: 2_000,
        edges: 20_000,
        writers: 400,
        exponent: 1.0,
        rng_seed: 7,
    };
    anyhow::ensure!(
        plan.clients as i64 <= graph_plan.writers,
        "at most {} clients",
        graph_plan.writers
    );
    println!("drill: seeding {} users…", graph_plan.users);
    graph::ensure_graph(&plan.database_url, graph_plan).await?;
    let checks = graph::client(&plan.database_url).await?;

    let redis_port = process::free_port()?;
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let mut redis = Process::new(
        "redis-server",
        [
            "--port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        log_of("redis"),
    )
    .appending_log();
    redis.start()?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let secret = "follow-drill-secret-not-for-production";
    // Set after the usual settings of a started server: two consumers, and a relay and claims quick
    // enough to recover within the drill; logs at `warn` whatever BENCH_SERVER_LOG says.
    let drill_env = [
        "FOLLOW_CONSUMERS=2",
        "FOLLOW_RELAY_AFTER_MS=2000",
        "FOLLOW_CLAIM_IDLE_MS=3000",
        "RUST_LOG=warn",
    ]
    .map(str::to_owned);
    // 40 clients write from one address: the drill measures durability, not the limits (the settings
    // turn them off).
    let child = |role: &str, listen: SocketAddr, name: &str| {
        let log = log_of(name);
        let settings = ServeSettings {
            database_url: &plan.database_url,
            redis_url: &redis_url,
            listen,
            redis_prefix: "follow-drill",
            secret,
            log: &log,
            extra_env: &drill_env,
        };
        anyhow::Ok(settings.process(&server_binary, role)?.appending_log())
    };
    let addrs: Vec<SocketAddr> = vec![process::free_local_addr()?, process::free_local_addr()?];
    let mut services = vec![
        child("serve", addrs[0], "serve-a")?,
        child("serve", addrs[1], "serve-b")?,
    ];
    let mut worker = child("worker", ([127, 0, 0, 1], 0).into(), "worker")?;
    for service in &mut services {
        service.start()?;
    }
    worker.start()?;
    for addr in &addrs {
        process::wait_for(*addr, "/healthz", HEALTHY_WITHIN, HEALTH_POLL).await?;
    }

    // The load: each client owns writers and keeps the last acknowledged state of each of its pairs.
    let keys = JwtKeys::new(secret);
    let writers: Vec<(i64, Arc<str>)> = (graph_plan.users + 1
        ..=graph_plan.users + graph_plan.writers)
        .map(|id| Ok((id, Arc::from(keys.issue(id, false, 3600)?))))
        .collect::<anyhow::Result<_>>()?;
    let writers = Arc::new(writers);
    let zipf = Arc::new(ZipfSampler::new(graph_plan.users as usize, 1.0));
    let retries = Arc::new(AtomicU64::new(0));
    let per_client = plan.operations.div_ceil(plan.clients as u64);
    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..plan.clients {
        let (writers, zipf, retries, addrs) = (
            writers.clone(),
            zipf.clone(),
            retries.clone(),
            addrs.clone(),
        );
        let clients_total = plan.clients;
        clients.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(client as u64 + 1);
            let owned: Vec<usize> = (client..writers.len()).step_by(clients_total).collect();
            let mut conns: Vec<Option<load::Connection>> = addrs.iter().map(|_| None).collect();
            let mut state: HashMap<(i64, i64), bool> = HashMap::new();
            for n in 0..per_client {
                let (writer, token) = writers[owned[n as usize % owned.len()]].clone();
                let target = zipf.sample(&mut rng) as i64;
                let op = if rng.random_bool(0.5) {
                    "follow"
                } else {
                    "unfollow"
                };
                let body = json!({
                    "query": format!("mutation($u: ID!) {{ {op}(userId: $u) {{ following }} }}"),
                    "variables": { "u": target.to_string() },
                });
                let request = Request {
                    body: Bytes::from(body.to_string()),
                    token: Some(token),
                };
                let mut instance = (client + n as usize) % addrs.len();
                let mut attempts = 0;
                let following = loop {
                    attempts += 1;
                    if attempts > 600 {
                        bail!(
                            "client {client}: no instance acknowledged {op} of {target} by {writer}"
                        );
                    }
                    let conn = match conns[instance].take() {
                        Some(conn) => Ok(conn),
                        None => load::connect(addrs[instance]).await,
                    };
                    let answer = match conn {
                        Ok(mut conn) => {
                            let sent = load::send(&mut conn, addrs[instance], &request).await;
                            if sent.is_ok() {
                                conns[instance] = Some(conn);
                            }
                            sent.ok()
                        }
                        Err(_) => None,
                    };
                    let acknowledged =
                        answer
                            .filter(|(status, _)| *status == 200)
                            .and_then(|(_, body)| {
                                let value: serde_json::Value =
                                    serde_json::from_slice(&body).ok()?;
                                value["data"][op]["following"].as_bool()
                            });
                    match acknowledged {
                        Some(following) => break following,
                        None => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            instance = (instance + 1) % addrs.len();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                };
                state.insert((writer, target), following);
            }
            anyhow::Ok(state)
        }));
    }

    // Chaos while the load runs: crash an instance, the worker, or Redis, in turn, and bring it back.
    let mut actions = Vec::new();
    let mut round = 0;
    while clients.iter().any(|c| !c.is_finished()) {
        tokio::time::sleep(plan.chaos_every).await;
        if clients.iter().all(|c| c.is_finished()) {
            break;
        }
        let action = match round % 4 {
            0 => {
                services[0].kill().await;
                services[0].start()?;
                "killed and restarted serve-a"
            }
            1 => {
                redis.kill().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                redis.start()?;
                "killed and restarted Redis (its data lost)"
            }
            2 => {
                services[1].kill().await;
                services[1].start()?;
                "killed and restarted serve-b"
            }
            _ => {
                worker.kill().await;
                worker.start()?;
                "killed and restarted the worker"
            }
        };
        println!(
            "drill: {:>5.1} s  {action}",
            started.elapsed().as_secs_f64()
        );
        actions.push(action);
        round += 1;
    }
    let mut expected: HashMap<(i64, i64), bool> = HashMap::new();
    for client in clients {
        expected.extend(client.await??);
    }
    let load_seconds = started.elapsed().as_secs_f64();

    // Drain: everything up, then wait for the outbox to empty.
    for addr in &addrs {
        process::wait_for(*addr, "/healthz", HEALTHY_WITHIN, HEALTH_POLL).await?;
    }
    let drain_started = Instant::now();
    loop {
        let backlog = graph::outbox_backlog(&checks).await?;
        if backlog == 0 {
            break;
        }
        if drain_started.elapsed() > Duration::from_secs(180) {
            bail!("{backlog} events still unapplied three minutes after the load");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();

    // The proof.
    let rows = checks
        .query(
            "SELECT follower_id, followee_id FROM follows WHERE follower_id > $1",
            &[&graph_plan.users],
        )
        .await?;
    let edges: std::collections::HashSet<(i64, i64)> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let lost = expected
        .iter()
        .filter(|(pair, following)| edges.contains(pair) != **following)
        .count();
    let unexpected = edges
        .iter()
        .filter(|pair| !expected.contains_key(pair))
        .count();
    let mismatches = graph::count_mismatches(&checks).await?;
    let backlog = graph::outbox_backlog(&checks).await?;
    let dead: i64 = {
        let client = follow_service::redis_pool::redis::Client::open(redis_url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        follow_service::redis_pool::redis::cmd("XLEN")
            .arg("follow-drill:{events}:follow:v1:dead")
            .query_async(&mut conn)
            .await
            .unwrap_or(0)
    };

    for service in &mut services {
        service.kill().await;
    }
    worker.kill().await;
    redis.kill().await;

    println!(
        "\ndrill: {} acknowledged operations from {} clients in {load_seconds:.1} s ({} retried after a crash); {} faults: {}",
        plan.operations,
        plan.clients,
        retries.load(Ordering::Relaxed),
        actions.len(),
        actions.join("; ")
    );
    println!("drill: pipeline drained {drain_seconds:.1} s after the load; dead letters: {dead}");
    println!(
        "drill: pairs checked {}; acknowledged writes lost: {lost}; edges no operation made: {unexpected}",
        expected.len()
    );
    println!(
        "drill: users whose counts differ from their edges: {mismatches}; events left in the outbox: {backlog}"
    );
    if lost > 0 || unexpected > 0 || mismatches > 0 || backlog > 0 {
        bail!("the drill found lost writes or drift");
    }
    println!("drill: passed");
    Ok(())
}
