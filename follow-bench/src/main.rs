//! follow-bench: seeds a Zipf social graph, starts the service (or targets a running one), drives it
//! over HTTP scenario by scenario, and reports throughput, latency percentiles, errors, cache hit rates,
//! count convergence after writes, and the server's peak RSS, as Markdown and JSON.
//!
//! ```sh
//! cargo run --release -p follow-bench            # default size: 100,000 users, ~2,000,000 edges
//! cargo run --release -p follow-bench -- --quick # a small graph and short runs (CI smoke)
//! cargo run --release -p follow-bench -- --abuse # legitimate load beside each hostile class (abuse.rs)
//! cargo run --release -p follow-bench -- --writes # follows at 1, 16, 64 connections: cost per follow (writes.rs)
//! cargo run -p follow-bench -- --quick --writes   # the same, small and short, exact counts checked (CI smoke)
//! cargo run --release -p follow-bench -- --scenarios consent_mix # blocks, removals, requests (consent.rs)
//! ```

mod abuse;
mod consent;
mod drill;
mod graph;
mod load;
mod metrics;
mod pipeline;
mod process;
mod replicas;
mod report;
mod scenarios;
mod steady;
mod subscriptions;
mod writes;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use follow_service::auth::JwtKeys;

use crate::{
    graph::GraphPlan,
    process::{ServeSettings, Server},
    report::scenarios::{RunReport, ScenarioReport},
    scenarios::{Scenario, Shared},
};

/// The secret the benchmark's server signs tokens with.
const BENCH_SECRET: &str = "follow-bench-secret-not-for-production";

#[derive(Parser, Debug)]
#[command(
    name = "follow-bench",
    about = "Load benchmark of follow-service over a Zipf social graph"
)]
struct Args {
    /// A small graph and short runs, for a smoke test (2,000 users, 1 s per scenario).
    #[arg(long)]
    quick: bool,
    /// Users in the graph.
    #[arg(long)]
    users: Option<i64>,
    /// Edges to aim at (the mean following count is edges / users).
    #[arg(long)]
    edges: Option<i64>,
    /// Zipf exponent of follower counts.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// RNG seed of the graph and the load.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Concurrent keep-alive connections.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Seconds measured per scenario.
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of unrecorded warm-up per scenario (with --steady: of the scenarios it does not warm).
    #[arg(long)]
    warmup: Option<f64>,
    /// Steady state: warm each scenario that reads through the caches up by running it until its L1
    /// hit rates stop rising (scraped every 5 s: no cache's rate rose by 0.5 points or more over the
    /// last 5 s, and at least 10 s passed), at most --steady-max seconds; then measure --duration.
    #[arg(long)]
    steady: bool,
    /// The longest --steady warm-up, in seconds.
    #[arg(long, default_value_t = 120.0)]
    steady_max: f64,
    /// Scenarios to run (comma-separated names; default all).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// The benchmark's database (created, migrated and seeded if needed); default
    /// postgres://postgres@127.0.0.1:5432/follow_bench, or follow_bench_quick with --quick.
    #[arg(long)]
    database_url: Option<String>,
    /// Redis for the started server (with --writes also the one whose `INFO stats` is read).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The Redis key prefix of the server the scenarios start (cleared before and after), so that two
    /// scenario runs on one Redis keep apart (--writes, --abuse and the other modes have their own).
    #[arg(long, default_value = SERVER_PREFIX)]
    redis_prefix: String,
    /// Target a running server (e.g. http://127.0.0.1:8080) instead of starting one; it must use
    /// --database-url and sign tokens with FOLLOW_JWT_SECRET as given to this command.
    #[arg(long)]
    url: Option<String>,
    /// Extra environment for the started server, KEY=VALUE (repeatable), e.g. FOLLOW_LOADER_DELAY_US=500.
    #[arg(long = "server-env")]
    server_env: Vec<String>,
    /// Run the fault drill instead of the scenarios (its own Redis, two instances and a worker, killed and
    /// restarted under a write load; then checks nothing was lost).
    #[arg(long)]
    drill: bool,
    /// Measure the event pipeline instead: events applied per second by one consumer per stream
    /// partition at batch sizes 1, 100, 1,000, and commit-to-count time under 1,000 writes/s.
    #[arg(long)]
    pipeline: bool,
    /// Stream partitions (FOLLOW_STREAM_PARTITIONS) of --pipeline: one consumer per partition in the
    /// applied-per-second table, max(FOLLOW_CONSUMERS, P) consumers in the commit-to-count run.
    #[arg(long)]
    partitions: Option<usize>,
    /// Measure subscription fan-out instead: websocket subscribers split over two instances, a
    /// follow/unfollow load, delivery latency and the servers' memory (--duration defaults to 20 s here).
    #[arg(long)]
    subscriptions: bool,
    /// Subscribers of --subscriptions, one run per count (comma-separated, e.g. 100,1000).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    subscribers: Vec<usize>,
    /// Follows + unfollows per second of the --subscriptions write load.
    #[arg(long, default_value_t = 500.0)]
    write_rate: f64,
    /// Operations of the drill's write load.
    #[arg(long, default_value_t = 20_000)]
    drill_operations: u64,
    /// Measure abuse instead (issue 10): the legitimate mix at a fixed offered rate (--rate, over
    /// --concurrency connections, 16 by default) while one client sends each hostile class flat out, one
    /// phase each, beside a phase without it. The server gets FOLLOW_TRUSTED_PROXIES=127.0.0.1/32 and
    /// FOLLOW_RATE_LIMIT=on before --server-env. Reports go to target/bench-abuse unless --out.
    #[arg(long)]
    abuse: bool,
    /// Legitimate requests per second --abuse offers, over all its connections (default 500; 20 with
    /// --quick, for a debug build).
    #[arg(long)]
    rate: Option<f64>,
    /// Connections of the --abuse attacker (one client).
    #[arg(long, default_value_t = 4)]
    attacker_connections: usize,
    /// Hostile classes of --abuse, one phase each (comma-separated; default all): fragments, entities,
    /// known_followers, persisted, follow_flood, slowloris, flood.
    #[arg(long, value_delimiter = ',')]
    attacks: Vec<String>,
    /// Levels of the --abuse fragments class (default 24; 20 with --quick, where 24 would keep a debug
    /// server busy for minutes).
    #[arg(long)]
    fragment_depth: Option<usize>,
    /// Connections of the --abuse slowloris class that never finish their headers (default 2,000; 500
    /// with --quick); a quarter as many idle keep-alive ones besides. Capped by the open-file limit.
    #[arg(long)]
    slow_connections: Option<usize>,
    /// Measure the write path instead (issue 13, writes.rs): follows by viewers uniform over all users
    /// of Zipf-chosen users, at each --write-concurrency; throughput, latency, time until the counts are
    /// exact, and PostgreSQL statements, transactions, WAL bytes and Redis commands per follow. The graph
    /// is put back through the API after each level. Reports go to target/bench-writes unless --out.
    #[arg(long)]
    writes: bool,
    /// Connections of --writes, one level each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    write_concurrency: Vec<usize>,
    /// Read replicas of the started server's database (its `DATABASE_REPLICA_URLS`, comma-separated,
    /// e.g. postgres://postgres@127.0.0.1:5433/follow_bench): each scenario then reports its reads per
    /// target (primary, replica) from `follow_db_reads_total`.
    #[arg(long)]
    replica_urls: Option<String>,
    /// After the scenarios, this many read-your-writes checks (replicas.rs): a writer follows, then at
    /// once reads its status, following list and count back; stale answers are counted.
    #[arg(long, default_value_t = 0)]
    read_your_writes: usize,
    /// Where to write latest.md and latest.json (default bench-results; target/bench-abuse with --abuse,
    /// target/bench-writes with --writes).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The service's allocator: `--pipeline` runs the consumer in this process, and glibc's malloc took most
/// of the extra CPU the Redis Cluster seemed to cost there (its slow path, on the stream replies'
/// copies); the worker that runs the consumer in production has jemalloc.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(urls) = &args.replica_urls {
        args.server_env
            .push(format!("DATABASE_REPLICA_URLS={urls}"));
    }
    if args.drill {
        follow_service::telemetry::init(false);
        let plan = drill::DrillPlan {
            operations: args.drill_operations,
            clients: args.concurrency.unwrap_or(40),
            chaos_every: Duration::from_millis(1_500),
            database_url: args
                .database_url
                .clone()
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/follow_drill".to_owned()),
        };
        return drill::run(plan, process::server_binary()?).await;
    }
    if args.subscriptions {
        follow_service::telemetry::init(false);
        let plan = subscriptions::SubscriptionPlan {
            sizes: args.subscribers.clone(),
            write_rate: args.write_rate,
            duration: Duration::from_secs_f64(args.duration.unwrap_or(20.0)),
            lanes: args.concurrency.unwrap_or(32),
            database_url: args.database_url.clone().unwrap_or_else(|| {
                "postgres://postgres@127.0.0.1:5432/follow_subscriptions".to_owned()
            }),
            redis_url: args.redis_url.clone(),
            server_env: args.server_env.clone(),
            out: args.out.clone().unwrap_or_else(default_out),
        };
        return subscriptions::run(plan, process::server_binary()?).await;
    }
    if args.pipeline {
        follow_service::telemetry::init(false);
        let url = args
            .database_url
            .clone()
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/follow_pipeline".to_owned());
        return pipeline::run(url, args.redis_url.clone(), args.partitions).await;
    }
    if args.abuse {
        follow_service::telemetry::init(false);
        return abuse::run(abuse_plan(&args)?, process::server_binary()?).await;
    }
    let database = if args.quick {
        "follow_bench_quick"
    } else {
        "follow_bench"
    };
    let database_url = args
        .database_url
        .take()
        .unwrap_or_else(|| format!("postgres://postgres@127.0.0.1:5432/{database}"));
    args.database_url = Some(database_url.clone());
    follow_service::telemetry::init(false);
    let quick = args.quick;
    let plan = GraphPlan {
        users: args.users.unwrap_or(if quick { 2_000 } else { 100_000 }),
        edges: args.edges.unwrap_or(if quick { 40_000 } else { 2_000_000 }),
        writers: if quick { 100 } else { 1_000 },
        exponent: args.zipf,
        rng_seed: args.seed,
    };
    anyhow::ensure!(
        plan.users >= 10 && plan.edges >= plan.users,
        "--users must be ≥ 10 and --edges ≥ --users"
    );
    let concurrency = args.concurrency.unwrap_or(if quick { 8 } else { 32 });
    let duration = Duration::from_secs_f64(args.duration.unwrap_or(if quick { 1.0 } else { 10.0 }));
    let warmup = Duration::from_secs_f64(args.warmup.unwrap_or(if quick { 0.5 } else { 3.0 }));
    if args.writes {
        let plan = writes::WritesPlan {
            graph: plan,
            database_url,
            levels: args.write_concurrency.clone(),
            warmup,
            duration,
            quick,
            rng_seed: args.seed,
            out: args
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("target/bench-writes")),
        };
        return writes::run(args, plan).await;
    }
    let steady_max = args
        .steady
        .then(|| Duration::from_secs_f64(args.steady_max));
    let scenarios: Vec<Scenario> = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios
            .iter()
            .map(|name| Scenario::parse(name).with_context(|| format!("unknown scenario {name:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    let started_at = report::started_at();

    let seeding = seed_graph(&database_url, plan).await?;
    let deep_cursors = graph::deep_cursors(&database_url, 10).await?;

    let secret = jwt_secret();
    let mut server = start_server(&args, &secret, &args.redis_prefix).await?;
    let addr = server.addr();

    let keys = JwtKeys::new(&secret);
    let shared = Arc::new(Shared::new(
        &plan,
        &keys,
        plan.users + 1..=plan.users + plan.writers,
        deep_cursors,
    )?);
    anyhow::ensure!(
        shared.writer_tokens.len() >= concurrency,
        "need at least as many writers as connections"
    );
    let checks = graph::client(&database_url).await?;

    let mut reports = Vec::new();
    for scenario in scenarios {
        let steady = steady_max.filter(|_| scenario.warms_caches());
        if steady.is_some() {
            println!(
                "{}: warming up until the cache hit rates settle…",
                scenario.name()
            );
        }
        let warm_up = async {
            let warmed = match steady {
                Some(max) => Some(steady::settle(addr, scenario.name(), max).await?),
                None => {
                    tokio::time::sleep(warmup).await;
                    None
                }
            };
            // The hit rates are those of the measured window only.
            let before = metrics::scrape(addr).await.unwrap_or_default();
            anyhow::Ok((before, warmed))
        };
        let mut consent_mix = None;
        let (result, (before, warmed)) = if scenario == Scenario::ConsentMix {
            consent_mix
                .insert(
                    consent::ConsentMix::prepare(addr, shared.clone(), &checks, concurrency)
                        .await?,
                )
                .load(addr, concurrency, warm_up, duration, args.seed)
                .await?
        } else {
            load::run(
                addr,
                scenario,
                shared.clone(),
                concurrency,
                warm_up,
                duration,
                args.seed,
            )
            .await?
        };
        print!("{:<22} ", scenario.name());
        let after = metrics::scrape(addr).await.unwrap_or_default();
        let (converged_ms, count_mismatches) = if scenario.writes() {
            let since = Instant::now();
            loop {
                if graph::outbox_backlog(&checks).await? == 0 {
                    break;
                }
                if since.elapsed() > Duration::from_secs(120) {
                    bail!(
                        "events still unapplied two minutes after {}",
                        scenario.name()
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let converged = since.elapsed().as_secs_f64() * 1000.0;
            (
                Some(converged),
                Some(graph::count_mismatches(&checks).await?),
            )
        } else {
            (None, None)
        };
        let h = &result.latency_us;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let mut report = ScenarioReport {
            name: scenario.name(),
            description: scenario.describe(),
            requests: result.requests,
            errors: result.errors,
            first_error: result.first_error,
            throughput_per_s: result.requests as f64 / result.measured.as_secs_f64(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: h.max() as f64 / 1000.0,
            cache_hit_rates: metrics::cache_hit_rates(&before, &after),
            reads: metrics::read_targets(&before, &after),
            converged_ms,
            count_mismatches,
            warmup: warmed,
            typename_ratio: None,
            consent: None,
        };
        println!(
            "{:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}{}{}{}",
            report.throughput_per_s,
            report.p50_ms,
            report.p99_ms,
            report.errors,
            report.reads.as_ref().map_or(String::new(), |r| format!(
                "  reads: primary {:.0}, replica {:.0} ({:.1} % primary)",
                r.primary,
                r.replica,
                r.primary_share * 100.0
            )),
            report.converged_ms.map_or(String::new(), |c| format!(
                "  converged in {c:.0} ms, mismatches {}",
                report.count_mismatches.unwrap_or(-1)
            )),
            report.warmup.as_ref().map_or(String::new(), |w| format!(
                "  (warmed up {:.0} s{})",
                w.seconds,
                if w.settled {
                    ""
                } else {
                    ", hit rates still rising"
                }
            ))
        );
        if let Some(mix) = consent_mix {
            // After the figures: it checks the models and the API's counts, then puts the graph back.
            report.consent = Some(mix.finish(addr, &checks).await?);
        }
        reports.push(report);
    }
    report::scenarios::set_typename_ratios(&mut reports);
    let read_your_writes = if args.read_your_writes > 0 {
        let found = replicas::run(
            addr,
            shared.clone(),
            args.read_your_writes,
            concurrency,
            args.seed,
        )
        .await?;
        print!("{}", found.markdown());
        Some(found)
    } else {
        None
    };

    let server_peak_rss_mib = server.peak_rss_mib();
    server.stop().await;
    if args.url.is_none() {
        // The warm caches are hundreds of thousands of keys: left behind, they slow every test that
        // scans Redis afterwards.
        clear_redis_prefix(&args.redis_url, &args.redis_prefix).await?;
    }

    let run = RunReport {
        started_at,
        command: report::command_line(),
        commit: report::git_commit(),
        machine: report::machine(),
        graph: plan,
        seeding,
        concurrency,
        warmup_s: warmup.as_secs_f64(),
        steady_max_s: steady_max.map(|max| max.as_secs_f64()),
        duration_s: duration.as_secs_f64(),
        server_env: args.server_env.clone(),
        scenarios: reports,
        server_peak_rss_mib,
        read_your_writes,
    };
    let markdown = report::scenarios::markdown(&run);
    report::save(
        &args.out.clone().unwrap_or_else(default_out),
        &markdown,
        &run,
    )?;
    let errors: u64 = run.scenarios.iter().map(|s| s.errors).sum();
    let mismatches: i64 = run
        .scenarios
        .iter()
        .filter_map(|s| s.count_mismatches)
        .sum();
    let faults: Vec<&String> = run
        .scenarios
        .iter()
        .filter_map(|s| s.consent.as_ref())
        .flat_map(|c| &c.faults)
        .collect();
    if errors > 0 || mismatches > 0 || !faults.is_empty() {
        bail!(
            "{errors} request errors and {mismatches} count mismatches{}",
            faults
                .iter()
                .map(|f| format!("; consent_mix: {f}"))
                .collect::<String>()
        );
    }
    Ok(())
}

/// Makes sure the database holds `plan`'s graph (see `graph::ensure_graph`), saying what it did.
async fn seed_graph(database_url: &str, plan: GraphPlan) -> anyhow::Result<graph::GraphReport> {
    println!("seeding {} users, about {} edges…", plan.users, plan.edges);
    let seeding = graph::ensure_graph(database_url, plan).await?;
    println!(
        "graph {} in {:.1} s: {} edges, top follower counts {:?}",
        if seeding.reused { "reused" } else { "seeded" },
        seeding.seconds,
        seeding.edges,
        seeding.top_follower_counts
    );
    Ok(seeding)
}

/// The secret tokens are signed with: `FOLLOW_JWT_SECRET`, or the benchmark's own.
fn jwt_secret() -> String {
    std::env::var("FOLLOW_JWT_SECRET").unwrap_or_else(|_| BENCH_SECRET.to_owned())
}

/// The server under test, healthy and ready: started here (Redis keys under `prefix`), or the one at
/// `--url`.
async fn start_server(args: &Args, secret: &str, prefix: &str) -> anyhow::Result<Server> {
    let server = match &args.url {
        Some(url) => Server::external(process::parse_addr(url)?),
        None => {
            // The binary beside this one (built first when run through cargo), its Redis keys under
            // `prefix` (cleared first), its log in `<temp>/<prefix>-server.log`.
            let binary = process::server_binary()?;
            clear_redis_prefix(&args.redis_url, prefix).await?;
            Server::spawn_announced(
                &binary,
                ServeSettings {
                    database_url: args.database_url.as_deref().unwrap_or_default(),
                    redis_url: &args.redis_url,
                    listen: process::free_local_addr()?,
                    redis_prefix: prefix,
                    secret,
                    log: &std::env::temp_dir().join(format!("{prefix}-server.log")),
                    extra_env: &args.server_env,
                },
            )?
        }
    };
    let addr = server.addr();
    process::wait_healthy(addr).await?;
    let warming = Instant::now();
    process::wait_ready(addr).await?;
    eprintln!(
        "follow-bench: server ready (its cache warm-up included) after {:.1} s",
        warming.elapsed().as_secs_f64()
    );
    Ok(server)
}

fn default_out() -> PathBuf {
    PathBuf::from("bench-results")
}

/// The `--abuse` run the arguments ask for; its own database (`follow_bench_abuse`, or
/// `follow_bench_abuse_quick`), so that it never disturbs another run's graph.
fn abuse_plan(args: &Args) -> anyhow::Result<abuse::AbusePlan> {
    anyhow::ensure!(
        args.url.is_none(),
        "--abuse starts its own server (it sets the attacker up in the database first): drop --url"
    );
    let quick = args.quick;
    let database = if quick {
        "follow_bench_abuse_quick"
    } else {
        "follow_bench_abuse"
    };
    let attacks = if args.attacks.is_empty() {
        abuse::Attack::ALL.to_vec()
    } else {
        args.attacks
            .iter()
            .map(|name| {
                abuse::Attack::parse(name).with_context(|| format!("unknown attack {name:?}"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let slow_connections = args
        .slow_connections
        .unwrap_or(if quick { 500 } else { 2_000 });
    let seconds = |value: Option<f64>, quick_default: f64, default: f64| {
        Duration::from_secs_f64(value.unwrap_or(if quick { quick_default } else { default }))
    };
    Ok(abuse::AbusePlan {
        graph: GraphPlan {
            users: args.users.unwrap_or(if quick { 2_000 } else { 100_000 }),
            edges: args.edges.unwrap_or(if quick { 40_000 } else { 2_000_000 }),
            writers: if quick { 100 } else { 1_000 },
            exponent: args.zipf,
            rng_seed: args.seed,
        },
        database_url: args
            .database_url
            .clone()
            .unwrap_or_else(|| format!("postgres://postgres@127.0.0.1:5432/{database}")),
        redis_url: args.redis_url.clone(),
        server_env: abuse::SERVER_ENV
            .iter()
            .map(|pair| (*pair).to_owned())
            .chain(args.server_env.iter().cloned())
            .collect(),
        out: args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("target/bench-abuse")),
        attacks,
        rate: args.rate.unwrap_or(if quick {
            abuse::QUICK_RATE
        } else {
            abuse::DEFAULT_RATE
        }),
        connections: args.concurrency.unwrap_or(16),
        attacker_connections: args.attacker_connections,
        initial_warmup: seconds(None, 1.0, 20.0),
        warmup: seconds(args.warmup, 0.5, 3.0),
        duration: seconds(args.duration, 2.0, 10.0),
        grace: seconds(None, 3.0, 10.0),
        recovery_limit: seconds(None, 30.0, 180.0),
        fragment_depth: args.fragment_depth.unwrap_or(if quick { 20 } else { 24 }),
        slow_connections,
        idle_connections: slow_connections / 4,
        rng_seed: args.seed,
    })
}

/// The Redis key prefix of the server the scenarios run against.
const SERVER_PREFIX: &str = "follow-bench";

/// Deletes every key under a Redis prefix, so each run starts with cold caches and an empty stream, and
/// runs do not pile keys up.
pub(crate) async fn clear_redis_prefix(redis_url: &str, prefix: &str) -> anyhow::Result<()> {
    // On a Redis Cluster (REDIS_CLUSTER_URLS, which the service under test reads too) every seed node is
    // scanned: a node's SCAN sees only its own keys.
    let cluster = std::env::var("REDIS_CLUSTER_URLS").unwrap_or_default();
    let nodes: Vec<&str> = cluster
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if nodes.is_empty() {
        return clear_prefix_on(redis_url, prefix).await;
    }
    for node in nodes {
        clear_prefix_on(node, prefix).await?;
    }
    Ok(())
}

/// Deletes one server's keys under `prefix`, one key per command (a cluster node's keys span slots).
async fn clear_prefix_on(redis_url: &str, prefix: &str) -> anyhow::Result<()> {
    use follow_service::redis_pool::redis;
    let client = redis::Client::open(redis_url)?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("UNLINK").arg(key).ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
