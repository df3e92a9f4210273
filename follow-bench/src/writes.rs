//! `--writes`: the write path under load (issue 13).
//!
//! At each concurrency of `--write-concurrency`, every request is one follow,
//! `mutation($u: ID!) { follow(userId: $u) { changed } }`, by a viewer uniform over all users of the graph
//! (a token signed per request) of a Zipf-chosen user other than the viewer, so most follows create an
//! edge. After an unrecorded warm-up, `--duration` is measured: follows per second, latency, the share
//! that changed an edge, errors. Then the time until the counts converge: from the end of the load,
//! PostgreSQL is polled every 10 ms until the outbox is empty and every user the level touched has
//! `user_stats` counts equal to its edges (60 s at most, or the run fails). Per follow request of the
//! window, from just before it to just after convergence (so the consumer's share counts, the cleanup's
//! does not): PostgreSQL statements (the service's `follow_db_queries_total`), transactions
//! (`pg_stat_database`, the bench database), write transactions (transaction ids assigned), WAL bytes,
//! Redis commands (`INFO stats`), and the mean group-commit and consumer batch sizes
//! (`follow_write_batch_size`, `follow_consumer_batch_size`).
//!
//! Each level then puts the graph back: every edge it created is unfollowed through the API
//! (`unfollowMany` with the viewer's own token, 100 ids a call; deleting rows in SQL would leave the
//! counters wrong), and the counts must converge again.
//!
//! A PostgreSQL backend publishes its counts to `pg_stat_database` at most once a second, at the end of a
//! transaction, and an idle one keeps what it held back for as long as it stays idle (PostgreSQL 15 here:
//! still unpublished after 25 s). So a snapshot first waits until every backend of the bench database
//! has ended a transaction a second or more after the quiet began (15 s at most, else the figure is
//! marked approximate), and the server this process starts samples its gauges every 100 ms: the
//! sampler's statement cycles through the idle pool and makes each connection publish within about two
//! seconds (it also makes the snapshot of `follow_db_queries_total`, which that sampler sets, fresh at
//! once). Write transactions, from the transaction id counter (`pg_snapshot_xmax(pg_current_snapshot())`),
//! need no wait but are the whole cluster's.
//!
//! Without `--quick`, the service's background work (relay, gauge sampler, idle consumers), which every
//! delta includes, is measured once over an idle window first.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet, VecDeque},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use follow_service::{
    auth::JwtKeys,
    redis_pool::redis,
    telemetry::metrics::{CONSUMER_BATCH, DB_QUERIES},
};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

use crate::{
    Args,
    graph::GraphPlan,
    load::{self, Connection},
    metrics,
    process::Server,
    report::{
        self,
        writes::{Cleanup, Deltas, LevelReport, WritesReport, markdown},
    },
    scenarios::{Request, Shared},
};

/// The Redis key prefix of the server this mode starts: its own, so that it never clears the keys of a
/// scenario run's server (`follow-bench`) going on beside it.
const PREFIX: &str = "follow-bench-writes";

/// The request of every follow.
pub const FOLLOW: &str = "mutation($u: ID!) { follow(userId: $u) { changed } }";

/// The request that puts a viewer's follows back.
const UNFOLLOW_MANY: &str = "mutation($ids: [ID!]!) { unfollowMany(userIds: $ids) { changed } }";

/// Ids `unfollowMany` accepts in one call.
const UNFOLLOW_BATCH: usize = 100;

/// Connections the cleanup unfollows over.
const CLEANUP_LANES: usize = 16;

/// The group-commit batch histogram (the service adds it with its write batching).
pub const WRITE_BATCH: &str = "follow_write_batch_size";

/// Server settings the report shows when this process starts the server and they are set.
const SHOWN_SETTINGS: [&str; 2] = ["FOLLOW_WRITE_WINDOW_US", "FOLLOW_WRITE_CONCURRENCY"];

/// How often convergence is polled, and how long it may take.
pub const POLL_EVERY: Duration = Duration::from_millis(10);
const CONVERGE_LIMIT: Duration = Duration::from_secs(60);

/// The idle window the service's background work is measured over (not with `--quick`).
pub const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// The gauge sample period of the server this process starts, in ms: its sampler's statement then cycles
/// through the idle pool quickly, which publishes the connections' held-back transaction counts.
const SAMPLE_MS: u64 = 100;

/// How long a snapshot waits for every backend of the bench database to publish its counts.
pub const PUBLISH_WAIT: Duration = Duration::from_secs(15);

/// How long a snapshot waits for the server's next sample of `follow_db_queries_total`.
const SAMPLE_WAIT: Duration = Duration::from_secs(10);

/// What `--writes` measures.
pub struct WritesPlan {
    pub graph: GraphPlan,
    pub database_url: String,
    /// Connections, one level each.
    pub levels: Vec<usize>,
    pub warmup: Duration,
    pub duration: Duration,
    /// Skip the waits for `pg_stat_database` (CI smoke).
    pub quick: bool,
    pub rng_seed: u64,
    pub out: PathBuf,
}

impl Deltas {
    /// Every count divided by the span's seconds (the means kept).
    fn per_second(&self) -> Self {
        let s = self.seconds.max(f64::MIN_POSITIVE);
        Self {
            seconds: 1.0,
            statements: self.statements.map(|n| n / s),
            transactions: self.transactions / s,
            transactions_exact: self.transactions_exact,
            other_db_transactions: self.other_db_transactions / s,
            write_transactions: self.write_transactions / s,
            wal_bytes: self.wal_bytes / s,
            redis_commands: self.redis_commands / s,
            write_batch_mean: self.write_batch_mean,
            write_batches: self.write_batches.map(|n| n / s),
            consumer_batch_mean: self.consumer_batch_mean,
            consumer_batches: self.consumer_batches.map(|n| n / s),
        }
    }
}

/// Runs every level, writes `latest.md` and `latest.json` into `plan.out`, and fails on any error, a
/// count that did not converge, or a graph not put back.
pub async fn run(mut args: Args, plan: WritesPlan) -> anyhow::Result<()> {
    anyhow::ensure!(
        !plan.levels.is_empty() && plan.levels.iter().all(|&c| c > 0),
        "--write-concurrency needs positive connection counts"
    );
    let started_at = report::started_at();
    let seeding = crate::seed_graph(&plan.database_url, plan.graph).await?;
    if args.url.is_none() {
        // First, so that `--server-env` overrides it.
        args.server_env
            .insert(0, format!("FOLLOW_METRICS_SAMPLE_MS={SAMPLE_MS}"));
    }
    let server_settings = server_settings(&args);
    let secret = crate::jwt_secret();
    let mut server = crate::start_server(&args, &secret, PREFIX).await?;
    let outcome = measure(&args, &plan, &server, &secret).await;
    let server_peak_rss_mib = server.peak_rss_mib();
    server.stop().await;
    if args.url.is_none() {
        crate::clear_redis_prefix(&args.redis_url, PREFIX).await?;
    }
    let measured = outcome?;

    let run = WritesReport {
        started_at,
        command: report::command_line(),
        commit: report::git_commit(),
        machine: report::machine(),
        graph: plan.graph,
        seeding,
        server: args.url.clone().unwrap_or_else(|| "started".to_owned()),
        server_settings,
        warmup_s: plan.warmup.as_secs_f64(),
        duration_s: plan.duration.as_secs_f64(),
        background_per_s: measured.background_per_s,
        levels: measured.levels,
        edges_before: measured.edges_before,
        edges_after: measured.edges_after,
        server_peak_rss_mib,
    };
    let markdown = markdown(&run);
    report::save(&plan.out, &markdown, &run)?;

    let mut faults = Vec::new();
    for level in &run.levels {
        let (errors, cleanup) = (level.errors + level.warmup_errors, &level.cleanup);
        if errors > 0 {
            faults.push(format!(
                "{} connections: {errors} follow errors",
                level.concurrency
            ));
        }
        if cleanup.errors > 0 || cleanup.already_gone > 0 {
            faults.push(format!(
                "{} connections: cleanup had {} errors and {} edges already gone",
                level.concurrency, cleanup.errors, cleanup.already_gone
            ));
        }
    }
    if run.edges_after != run.edges_before {
        faults.push(format!(
            "the graph has {} edges after the run, {} before",
            run.edges_after, run.edges_before
        ));
    }
    if !faults.is_empty() {
        bail!("write benchmark faults: {}", faults.join("; "));
    }
    Ok(())
}

/// The settings of the server this process started that it can see: the ones it sets, `--server-env`,
/// and [`SHOWN_SETTINGS`] as inherited from this process's environment.
fn server_settings(args: &Args) -> Vec<String> {
    if args.url.is_some() {
        return Vec::new();
    }
    let mut settings = vec!["FOLLOW_RATE_LIMIT=off".to_owned()];
    for name in SHOWN_SETTINGS {
        let given = args
            .server_env
            .iter()
            .any(|pair| pair.split_once('=').is_some_and(|(key, _)| key == name));
        if !given {
            settings.push(match std::env::var(name) {
                Ok(value) => format!("{name}={value}"),
                Err(_) => format!("{name} unset (the service's default)"),
            });
        }
    }
    settings.extend(args.server_env.iter().cloned());
    settings
}

/// What the levels measured, before the report is put together.
struct Measured {
    background_per_s: Option<Deltas>,
    levels: Vec<LevelReport>,
    edges_before: i64,
    edges_after: i64,
}

/// Everything a level uses: the server, the load's shared samplers, the checks and counter sources.
struct Bench {
    addr: SocketAddr,
    shared: Arc<Shared>,
    checks: Checks,
    counters: CounterSources,
    warmup: Duration,
    duration: Duration,
    rng_seed: u64,
}

async fn measure(
    args: &Args,
    plan: &WritesPlan,
    server: &Server,
    secret: &str,
) -> anyhow::Result<Measured> {
    let keys = JwtKeys::new(secret);
    let shared = Arc::new(Shared::new(
        &plan.graph,
        &keys,
        std::iter::empty(),
        Vec::new(),
    )?);
    let checks = Checks::connect(&plan.database_url).await?;
    let counters =
        CounterSources::connect(&plan.database_url, &args.redis_url, checks.database.clone())
            .await?;
    let mut bench = Bench {
        addr: server.addr(),
        shared,
        checks,
        counters,
        warmup: plan.warmup,
        duration: plan.duration,
        rng_seed: plan.rng_seed,
    };
    let edges_before = bench.checks.edges().await?;

    let background_per_s = if plan.quick {
        None
    } else {
        println!(
            "writes: measuring the service's idle work over {} s…",
            IDLE_WINDOW.as_secs()
        );
        let before = bench.snapshot().await?;
        tokio::time::sleep(IDLE_WINDOW).await;
        let after = bench.snapshot().await?;
        Some(Deltas::between(&before, &after).per_second())
    };

    let mut levels = Vec::new();
    for &concurrency in &plan.levels {
        let mut created = Vec::new();
        let mut touched = BTreeSet::new();
        let measured = bench
            .level(concurrency, &mut created, &mut touched)
            .await
            .with_context(|| format!("{concurrency} connections"));
        // The graph goes back even when the level failed.
        let cleanup = bench
            .clean_up(&created, &touched)
            .await
            .with_context(|| format!("putting the graph back after {concurrency} connections"));
        let mut level = measured?;
        level.cleanup = cleanup?;
        level.rss_mib = server.memory_mib("VmRSS");
        println!(
            "writes: {:>3} connections: {:>7.0} follows/s, {:.0} % changed, p50 {:.2} ms, p99 {:.2} ms, \
             errors {}, counts converged after {:.0} ms; {} statements, {:.2} transactions, {:.0} WAL bytes, \
             {:.1} Redis commands per follow; cleanup: {} edges unfollowed in {} calls",
            level.concurrency,
            level.follows_per_s,
            level.changed_share * 100.0,
            level.p50_ms,
            level.p99_ms,
            level.errors,
            level.converged_ms,
            level
                .statements_per_follow
                .map_or("n/a".to_owned(), |n| format!("{n:.2}")),
            level.transactions_per_follow,
            level.wal_bytes_per_follow,
            level.redis_commands_per_follow,
            level.cleanup.unfollowed,
            level.cleanup.calls,
        );
        levels.push(level);
    }
    let edges_after = bench.checks.edges().await?;
    Ok(Measured {
        background_per_s,
        levels,
        edges_before,
        edges_after,
    })
}

impl Bench {
    /// Warm-up, measured window, convergence, snapshots; `created` and `touched` collect the edges the
    /// level made and the users whose counts it changed, for the cleanup (also when this fails).
    async fn level(
        &mut self,
        concurrency: usize,
        created: &mut Vec<(i64, i64)>,
        touched: &mut BTreeSet<i64>,
    ) -> anyhow::Result<LevelReport> {
        let level_start = self.checks.now().await?;
        let seed = self.rng_seed ^ ((concurrency as u64) << 32);
        let warmup = drive(
            self.addr,
            &self.shared,
            concurrency,
            self.warmup,
            seed ^ 0x5741_524D,
        )
        .await?;
        self.collect(&warmup, level_start, created, touched).await?;
        converge(&mut self.checks, touched, Instant::now())
            .await
            .context("after the warm-up")?;

        let before = self.snapshot().await?;
        let phase = drive(self.addr, &self.shared, concurrency, self.duration, seed).await?;
        self.collect(&phase, level_start, created, touched).await?;
        let converged = converge(&mut self.checks, touched, phase.ended).await?;
        let after = self.snapshot().await?;

        let deltas = Deltas::between(&before, &after);
        let follows = phase.requests;
        let per_follow = |n: f64| n / follows.max(1) as f64;
        let h = &phase.latency_us;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Ok(LevelReport {
            concurrency,
            follows,
            changed: phase.changed,
            errors: phase.errors,
            first_error: phase.first_error.or(warmup.first_error),
            warmup_follows: warmup.requests,
            warmup_errors: warmup.errors,
            follows_per_s: follows as f64 / phase.elapsed.as_secs_f64(),
            changed_share: phase.changed as f64 / follows.max(1) as f64,
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            max_ms: h.max() as f64 / 1000.0,
            converged_ms: converged.as_secs_f64() * 1000.0,
            touched_users: touched.len(),
            statements_per_follow: deltas.statements.map(per_follow),
            transactions_per_follow: per_follow(deltas.transactions),
            write_transactions_per_follow: per_follow(deltas.write_transactions),
            wal_bytes_per_follow: per_follow(deltas.wal_bytes),
            redis_commands_per_follow: per_follow(deltas.redis_commands),
            deltas,
            rss_mib: None,
            cleanup: Cleanup::default(),
        })
    }

    /// Adds a phase's created edges (and those of its failed follows that committed anyway) to `created`
    /// and their users to `touched`.
    async fn collect(
        &mut self,
        phase: &Phase,
        level_start: SystemTime,
        created: &mut Vec<(i64, i64)>,
        touched: &mut BTreeSet<i64>,
    ) -> anyhow::Result<()> {
        let mut edges = phase.created.clone();
        if !phase.uncertain.is_empty() {
            // A follow that failed may have committed: its edge, if new since the level began, is ours.
            edges.extend(
                self.checks
                    .committed_since(&phase.uncertain, level_start)
                    .await?,
            );
            touched.extend(phase.uncertain.iter().flat_map(|&(a, b)| [a, b]));
        }
        let mut known: HashSet<(i64, i64)> = created.iter().copied().collect();
        for edge in edges {
            // The same pair may have failed twice, or failed once and succeeded once.
            if known.insert(edge) {
                created.push(edge);
                touched.extend([edge.0, edge.1]);
            }
        }
        Ok(())
    }

    /// Every counter, read now: once every backend of the bench database published the transaction
    /// counts it held back, and `follow_db_queries_total` from the server's next gauge sample.
    async fn snapshot(&mut self) -> anyhow::Result<Counters> {
        let quiet_since = self.counters.clock().await?;
        self.checks.publish_own_stats().await;
        let published = self
            .counters
            .await_published(self.checks.pid, quiet_since)
            .await?;
        let metrics = fresh_metrics(self.addr).await;
        let mut counters = self.counters.read(&metrics).await?;
        counters.own_transactions = self.checks.transactions;
        counters.published = published;
        Ok(counters)
    }

    /// Unfollows every edge in `created` through the API (each viewer's own token, `unfollowMany` of at
    /// most 100 ids), then waits until the counts of `touched` are exact again.
    async fn clean_up(
        &mut self,
        created: &[(i64, i64)],
        touched: &BTreeSet<i64>,
    ) -> anyhow::Result<Cleanup> {
        let started = Instant::now();
        let mut by_viewer: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for &(viewer, followee) in created {
            by_viewer.entry(viewer).or_default().push(followee);
        }
        let calls: VecDeque<(i64, Vec<i64>)> = by_viewer
            .into_iter()
            .flat_map(|(viewer, followees)| {
                followees
                    .chunks(UNFOLLOW_BATCH)
                    .map(|ids| (viewer, ids.to_vec()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let lanes = CLEANUP_LANES.min(calls.len());
        let queue = Arc::new(Mutex::new(calls));
        let mut workers = Vec::with_capacity(lanes);
        for _ in 0..lanes {
            let conn = load::connect(self.addr).await?;
            workers.push(tokio::spawn(unfollow_lane(
                self.addr,
                self.shared.clone(),
                conn,
                queue.clone(),
            )));
        }
        let mut cleanup = Cleanup {
            edges: created.len(),
            ..Cleanup::default()
        };
        for worker in workers {
            let lane = worker.await.context("a cleanup lane panicked")?;
            cleanup.calls += lane.calls;
            cleanup.unfollowed += lane.unfollowed;
            cleanup.already_gone += lane.already_gone;
            cleanup.errors += lane.errors;
            cleanup.first_error = cleanup.first_error.take().or(lane.first_error);
        }
        cleanup.seconds = started.elapsed().as_secs_f64();
        cleanup.converged_ms = converge(&mut self.checks, touched, Instant::now())
            .await?
            .as_secs_f64()
            * 1000.0;
        Ok(cleanup)
    }
}

/// What one load phase (or one of its workers) produced.
struct Phase {
    requests: u64,
    changed: u64,
    errors: u64,
    first_error: Option<String>,
    latency_us: Histogram<u64>,
    elapsed: Duration,
    /// When the last answer came.
    ended: Instant,
    /// (viewer, followee) of every follow answered `changed: true`.
    created: Vec<(i64, i64)>,
    /// (viewer, followee) of every follow that failed: it may or may not have committed.
    uncertain: Vec<(i64, i64)>,
}

impl Phase {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            requests: 0,
            changed: 0,
            errors: 0,
            first_error: None,
            latency_us: crate::load::latency_histogram()?,
            elapsed: Duration::ZERO,
            ended: Instant::now(),
            created: Vec::new(),
            uncertain: Vec::new(),
        })
    }

    fn fail(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }
}

/// Follows over `connections` keep-alive connections for `duration`, one request at a time each.
async fn drive(
    addr: SocketAddr,
    shared: &Arc<Shared>,
    connections: usize,
    duration: Duration,
    rng_seed: u64,
) -> anyhow::Result<Phase> {
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(load::connect(addr).await?);
    }
    let start = Instant::now();
    let end = start + duration;
    let mut workers = Vec::with_capacity(connections);
    for (worker, conn) in conns.into_iter().enumerate() {
        let rng = StdRng::seed_from_u64(rng_seed ^ ((worker as u64 + 1) * 0x9E37_79B9));
        workers.push(tokio::spawn(follow_lane(
            addr,
            shared.clone(),
            conn,
            rng,
            end,
            Phase::new()?,
        )));
    }
    let mut total = Phase::new()?;
    for worker in workers {
        let part = worker.await.context("a load worker panicked")?;
        total.requests += part.requests;
        total.changed += part.changed;
        total.errors += part.errors;
        total.first_error = total.first_error.take().or(part.first_error);
        total.latency_us.add(part.latency_us)?;
        total.created.extend(part.created);
        total.uncertain.extend(part.uncertain);
    }
    total.ended = Instant::now();
    total.elapsed = total.ended - start;
    Ok(total)
}

/// One connection's follows until `end`.
async fn follow_lane(
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut conn: Connection,
    mut rng: StdRng,
    end: Instant,
    mut part: Phase,
) -> Phase {
    while Instant::now() < end {
        let viewer = rng.random_range(1..=shared.users);
        let followee = loop {
            let user = shared.zipf.sample(&mut rng) as i64;
            if user != viewer {
                break user;
            }
        };
        let token = match shared.sign(viewer) {
            Ok(token) => token,
            Err(err) => {
                part.fail(format!("signing a token: {err:#}"));
                break;
            }
        };
        let request = Request {
            body: Bytes::from(
                json!({ "query": FOLLOW, "variables": { "u": followee.to_string() } }).to_string(),
            ),
            token: Some(token),
        };
        let sent = Instant::now();
        let answer = load::send(&mut conn, addr, &request).await;
        part.latency_us
            .saturating_record(sent.elapsed().as_micros().max(1) as u64);
        part.requests += 1;
        let outcome = match answer {
            Ok((status, body)) => follow_changed(status, &body),
            Err(err) => {
                let error = format!("{err:#}");
                match load::connect(addr).await {
                    Ok(fresh) => conn = fresh,
                    Err(reconnect) => {
                        part.fail(format!("{error}; reconnecting: {reconnect:#}"));
                        part.uncertain.push((viewer, followee));
                        break;
                    }
                }
                Err(error)
            }
        };
        match outcome {
            Ok(true) => {
                part.changed += 1;
                part.created.push((viewer, followee));
            }
            Ok(false) => {}
            Err(error) => {
                part.fail(error);
                part.uncertain.push((viewer, followee));
            }
        }
    }
    part
}

/// `changed` of a follow's answer, or what was wrong with it.
fn follow_changed(status: u16, body: &[u8]) -> Result<bool, String> {
    let shown = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    if load::is_error(status, body) {
        return Err(format!("HTTP {status}: {}", shown()));
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|answer| answer.pointer("/data/follow/changed")?.as_bool())
        .ok_or_else(|| format!("no data.follow.changed in {}", shown()))
}

/// What one cleanup connection did.
#[derive(Default)]
struct Lane {
    calls: u64,
    unfollowed: u64,
    already_gone: u64,
    errors: u64,
    first_error: Option<String>,
}

/// The `unfollowMany` calls still to make: (viewer, followees).
type CallQueue = Arc<Mutex<VecDeque<(i64, Vec<i64>)>>>;

/// Takes `unfollowMany` calls off `queue` until it is empty.
async fn unfollow_lane(
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut conn: Connection,
    queue: CallQueue,
) -> Lane {
    let mut lane = Lane::default();
    loop {
        let next = match queue.lock() {
            Ok(mut calls) => calls.pop_front(),
            Err(_) => None,
        };
        let Some((viewer, followees)) = next else {
            return lane;
        };
        lane.calls += 1;
        let outcome = async {
            let ids: Vec<String> = followees.iter().map(i64::to_string).collect();
            let request = Request {
                body: Bytes::from(
                    json!({ "query": UNFOLLOW_MANY, "variables": { "ids": ids } }).to_string(),
                ),
                token: Some(shared.sign(viewer)?),
            };
            let (status, body) = load::send(&mut conn, addr, &request).await?;
            anyhow::ensure!(
                !load::is_error(status, &body),
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
            let answer: serde_json::Value = serde_json::from_slice(&body)?;
            let changed: Vec<bool> = answer
                .pointer("/data/unfollowMany")
                .and_then(|list| list.as_array())
                .context("no data.unfollowMany in the answer")?
                .iter()
                .map(|payload| payload.get("changed").and_then(|c| c.as_bool()))
                .collect::<Option<_>>()
                .context("an unfollowMany payload without changed")?;
            anyhow::ensure!(
                changed.len() == followees.len(),
                "{} payloads for {} ids",
                changed.len(),
                followees.len()
            );
            anyhow::Ok(changed)
        }
        .await;
        match outcome {
            Ok(changed) => {
                let unfollowed = changed.iter().filter(|&&c| c).count() as u64;
                lane.unfollowed += unfollowed;
                lane.already_gone += changed.len() as u64 - unfollowed;
            }
            Err(err) => {
                lane.errors += 1;
                lane.first_error
                    .get_or_insert(format!("unfollowMany of user {viewer}: {err:#}"));
                if let Ok(fresh) = load::connect(addr).await {
                    conn = fresh;
                }
            }
        }
    }
}

/// Waits until the outbox is empty and every user of `touched` has exact counts, polling every 10 ms;
/// returns the time since `since` at which the outbox was found empty with the counts then exact (the
/// check of the counts is a dear query over every touched user's edges, so its own duration is not
/// counted), or fails after 60 s.
async fn converge(
    checks: &mut Checks,
    touched: &BTreeSet<i64>,
    since: Instant,
) -> anyhow::Result<Duration> {
    let ids: Vec<i64> = touched.iter().copied().collect();
    let mut ticker = tokio::time::interval(POLL_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let backlog = checks.backlog().await?;
        let drained = since.elapsed();
        // The counts can only be exact once the outbox is drained; the edge counts are the dearer query.
        let mismatches = if backlog == 0 {
            checks.mismatches(&ids).await?
        } else {
            -1
        };
        if mismatches == 0 {
            return Ok(drained);
        }
        if since.elapsed() > CONVERGE_LIMIT {
            bail!(
                "the counts did not converge within {} s: {backlog} events in the outbox{}",
                CONVERGE_LIMIT.as_secs(),
                if mismatches > 0 {
                    format!(
                        ", {mismatches} of {} touched users with wrong counts",
                        ids.len()
                    )
                } else {
                    String::new()
                }
            );
        }
    }
}

/// The benchmark's own connection to the bench database; counts the transactions it runs there (one per
/// prepared statement executed), to take them off `pg_stat_database`.
struct Checks {
    client: tokio_postgres::Client,
    database: String,
    /// Its backend's process id.
    pid: i32,
    backlog: tokio_postgres::Statement,
    mismatches: tokio_postgres::Statement,
    edges: tokio_postgres::Statement,
    committed_since: tokio_postgres::Statement,
    now: tokio_postgres::Statement,
    transactions: u64,
}

impl Checks {
    async fn connect(database_url: &str) -> anyhow::Result<Self> {
        let client = crate::graph::client(database_url).await?;
        let row = client
            .query_one("SELECT current_database()::text, pg_backend_pid()", &[])
            .await?;
        let (database, pid): (String, i32) = (row.get(0), row.get(1));
        let backlog = client.prepare("SELECT count(*) FROM outbox").await?;
        // Users without a user_stats row count as zero.
        let mismatches = client
            .prepare(
                "SELECT count(*) FROM unnest($1::int8[]) AS t(id) \
                 LEFT JOIN user_stats s ON s.user_id = t.id \
                 WHERE COALESCE(s.follower_count, 0) <> (SELECT count(*) FROM follows f WHERE f.followee_id = t.id) \
                    OR COALESCE(s.following_count, 0) <> (SELECT count(*) FROM follows f WHERE f.follower_id = t.id)",
            )
            .await?;
        let edges = client.prepare("SELECT count(*) FROM follows").await?;
        let committed_since = client
            .prepare(
                "SELECT f.follower_id, f.followee_id FROM unnest($1::int8[], $2::int8[]) AS p(a, b) \
                 JOIN follows f ON f.follower_id = p.a AND f.followee_id = p.b WHERE f.created_at >= $3",
            )
            .await?;
        let now = client.prepare("SELECT now()").await?;
        Ok(Self {
            client,
            database,
            pid,
            backlog,
            mismatches,
            edges,
            committed_since,
            now,
            transactions: 0,
        })
    }

    async fn backlog(&mut self) -> anyhow::Result<i64> {
        self.transactions += 1;
        Ok(self.client.query_one(&self.backlog, &[]).await?.get(0))
    }

    /// Users of `ids` whose stored counts differ from their edges.
    async fn mismatches(&mut self, ids: &[i64]) -> anyhow::Result<i64> {
        self.transactions += 1;
        Ok(self
            .client
            .query_one(&self.mismatches, &[&ids])
            .await?
            .get(0))
    }

    async fn edges(&mut self) -> anyhow::Result<i64> {
        self.transactions += 1;
        Ok(self.client.query_one(&self.edges, &[]).await?.get(0))
    }

    /// The edges of `pairs` created at or after `since`.
    async fn committed_since(
        &mut self,
        pairs: &[(i64, i64)],
        since: SystemTime,
    ) -> anyhow::Result<Vec<(i64, i64)>> {
        self.transactions += 1;
        let (followers, followees): (Vec<i64>, Vec<i64>) = pairs.iter().copied().unzip();
        Ok(self
            .client
            .query(&self.committed_since, &[&followers, &followees, &since])
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }

    /// Has this connection publish its transaction counts at the end of this call's transaction
    /// (`pg_stat_force_next_flush()`, PostgreSQL 15 or later; without it the counts stay approximate).
    async fn publish_own_stats(&mut self) {
        self.transactions += 1;
        let _ = self
            .client
            .batch_execute("SELECT pg_stat_force_next_flush()")
            .await;
    }

    /// PostgreSQL's clock.
    async fn now(&mut self) -> anyhow::Result<SystemTime> {
        self.transactions += 1;
        Ok(self.client.query_one(&self.now, &[]).await?.get(0))
    }
}

/// Counter readings at one moment.
#[derive(Clone, Debug)]
struct Counters {
    at: Instant,
    statements: Option<f64>,
    /// (sum, count) of the histograms.
    write_batch: Option<(f64, f64)>,
    consumer_batch: Option<(f64, f64)>,
    transactions: f64,
    other_transactions: f64,
    /// The next transaction id.
    next_xid: f64,
    wal_bytes: f64,
    redis_commands: f64,
    /// The benchmark's own transactions in the bench database so far.
    own_transactions: u64,
    /// Whether every backend of the bench database had published its transaction counts.
    published: bool,
}

impl Deltas {
    fn between(before: &Counters, after: &Counters) -> Self {
        // A histogram not exported yet had no sample: zero.
        let mean = |b: Option<(f64, f64)>, a: Option<(f64, f64)>| {
            let Some((a_sum, a_count)) = a else {
                return (None, None);
            };
            let (b_sum, b_count) = b.unwrap_or((0.0, 0.0));
            let batches = a_count - b_count;
            (
                (batches > 0.0).then(|| (a_sum - b_sum) / batches),
                Some(batches),
            )
        };
        let (write_batch_mean, write_batches) = mean(before.write_batch, after.write_batch);
        let (consumer_batch_mean, consumer_batches) =
            mean(before.consumer_batch, after.consumer_batch);
        Self {
            seconds: (after.at - before.at).as_secs_f64(),
            statements: after.statements.zip(before.statements).map(|(a, b)| a - b),
            transactions: after.transactions
                - before.transactions
                - (after.own_transactions - before.own_transactions) as f64,
            transactions_exact: before.published && after.published,
            other_db_transactions: after.other_transactions - before.other_transactions,
            write_transactions: after.next_xid - before.next_xid,
            wal_bytes: after.wal_bytes - before.wal_bytes,
            // The `INFO` of the first reading counts in the second.
            redis_commands: after.redis_commands - before.redis_commands - 1.0,
            write_batch_mean,
            write_batches,
            consumer_batch_mean,
            consumer_batches,
        }
    }
}

/// Where the counters are read: PostgreSQL's statistics (from the `postgres` database, so that reading
/// them adds no transaction to the bench database) and Redis `INFO`.
struct CounterSources {
    stats: tokio_postgres::Client,
    redis: redis::aio::MultiplexedConnection,
    database: String,
}

impl CounterSources {
    async fn connect(
        database_url: &str,
        redis_url: &str,
        database: String,
    ) -> anyhow::Result<Self> {
        let mut config: tokio_postgres::Config =
            database_url.parse().context("parsing the database URL")?;
        config.dbname("postgres");
        let (stats, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .context("connecting to the postgres database for pg_stat_database")?;
        tokio::spawn(connection);
        let redis = redis::Client::open(redis_url)?
            .get_multiplexed_async_connection()
            .await
            .context("connecting to Redis")?;
        Ok(Self {
            stats,
            redis,
            database,
        })
    }

    /// PostgreSQL's clock.
    async fn clock(&mut self) -> anyhow::Result<SystemTime> {
        Ok(self
            .stats
            .query_one("SELECT clock_timestamp()", &[])
            .await?
            .get(0))
    }

    /// Waits until every backend of the bench database but `own_pid` has ended a transaction a second
    /// or more after `quiet_since` (PostgreSQL's clock): PostgreSQL publishes what a backend held back at
    /// the end of its first transaction a second after its last publication, so every count of the
    /// time before `quiet_since` is then in `pg_stat_database`. False when that took longer than
    /// [`PUBLISH_WAIT`] (an idle connection nothing uses, say).
    async fn await_published(
        &mut self,
        own_pid: i32,
        quiet_since: SystemTime,
    ) -> anyhow::Result<bool> {
        let since = Instant::now();
        loop {
            let waiting: i64 = self
                .stats
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname::text = $1 AND pid <> $2 AND backend_type = 'client backend' \
                       AND NOT (state = 'idle' AND state_change >= $3::timestamptz + interval '1 second')",
                    &[&self.database, &own_pid, &quiet_since],
                )
                .await
                .context("reading pg_stat_activity")?
                .get(0);
            if waiting == 0 {
                return Ok(true);
            }
            if since.elapsed() > PUBLISH_WAIT {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// PostgreSQL and Redis counters now, and the ones of `metrics` (a `/metrics` text).
    async fn read(&mut self, metrics: &str) -> anyhow::Result<Counters> {
        let row = self
            .stats
            .query_one(
                "SELECT \
                   COALESCE(sum(xact_commit + xact_rollback) FILTER (WHERE datname::text = $1), 0)::float8, \
                   COALESCE(sum(xact_commit + xact_rollback) \
                     FILTER (WHERE datname::text <> $1 AND datname <> current_database()), 0)::float8, \
                   pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::float8, \
                   pg_snapshot_xmax(pg_current_snapshot())::text::float8 \
                 FROM pg_stat_database",
                &[&self.database],
            )
            .await
            .context("reading pg_stat_database")?;
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut self.redis)
            .await
            .context("Redis INFO stats")?;
        let redis_commands = info
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse::<f64>().ok())
            .context("no total_commands_processed in Redis INFO stats")?;
        let histogram = |name: &str| {
            metrics::sum(metrics, &format!("{name}_sum"))
                .zip(metrics::sum(metrics, &format!("{name}_count")))
        };
        Ok(Counters {
            at: Instant::now(),
            statements: metrics::sum(metrics, DB_QUERIES),
            write_batch: histogram(WRITE_BATCH),
            consumer_batch: histogram(CONSUMER_BATCH),
            transactions: row.get(0),
            other_transactions: row.get(1),
            wal_bytes: row.get(2),
            next_xid: row.get(3),
            redis_commands,
            own_transactions: 0,
            published: false,
        })
    }
}

/// `/metrics` once the server has sampled `follow_db_queries_total` again (its gauge sampler sets it,
/// every `FOLLOW_METRICS_SAMPLE_MS`; the sampler's own statements move it each time), so that it counts
/// every statement until now. Empty when `/metrics` does not answer.
async fn fresh_metrics(addr: SocketAddr) -> String {
    let first = metrics::scrape(addr).await.unwrap_or_default();
    let Some(seen) = metrics::sum(&first, DB_QUERIES) else {
        return first;
    };
    let since = Instant::now();
    while since.elapsed() < SAMPLE_WAIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let text = metrics::scrape(addr).await.unwrap_or_default();
        if metrics::sum(&text, DB_QUERIES).is_some_and(|now| now != seen) {
            return text;
        }
    }
    eprintln!(
        "follow-bench: {DB_QUERIES} did not move in {} s; its delta may miss statements",
        SAMPLE_WAIT.as_secs()
    );
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::GraphReport;

    fn counters(statements: f64, batch: Option<(f64, f64)>, own: u64) -> Counters {
        Counters {
            at: Instant::now(),
            statements: Some(statements),
            write_batch: batch,
            consumer_batch: Some((10.0, 5.0)),
            transactions: 100.0 + own as f64 * 3.0,
            other_transactions: 0.0,
            next_xid: 500.0 + statements,
            wal_bytes: 1_000.0,
            redis_commands: 50.0,
            own_transactions: own,
            published: true,
        }
    }

    #[test]
    fn deltas_take_the_benchmarks_own_work_off() {
        let before = counters(100.0, None, 10);
        let after = counters(400.0, Some((60.0, 20.0)), 30);
        let d = Deltas::between(&before, &after);
        assert_eq!(d.statements, Some(300.0));
        // 60 more transactions, 20 of them the benchmark's checks.
        assert_eq!(d.transactions, 40.0);
        assert_eq!(d.write_transactions, 300.0);
        assert_eq!(d.redis_commands, -1.0);
        assert_eq!(d.write_batch_mean, Some(3.0), "absent before: zero then");
        assert_eq!(d.write_batches, Some(20.0));
        assert_eq!(d.consumer_batch_mean, None, "no consumer batch in between");
    }

    #[test]
    fn a_follows_answer_says_whether_it_changed_an_edge() {
        assert_eq!(
            follow_changed(200, br#"{"data":{"follow":{"changed":true}}}"#),
            Ok(true)
        );
        assert_eq!(
            follow_changed(200, br#"{"data":{"follow":{"changed":false}}}"#),
            Ok(false)
        );
        assert!(follow_changed(200, br#"{"data":null,"errors":[{"message":"x"}]}"#).is_err());
        assert!(follow_changed(503, b"busy").is_err());
    }

    #[test]
    fn a_level_is_one_row_with_missing_figures_marked() {
        let mut deltas = Deltas::between(
            &counters(100.0, None, 10),
            &counters(400.0, Some((60.0, 20.0)), 30),
        );
        deltas.write_batch_mean = None;
        deltas.transactions_exact = false;
        let level = LevelReport {
            concurrency: 16,
            follows: 200,
            changed: 150,
            errors: 0,
            first_error: None,
            warmup_follows: 100,
            warmup_errors: 0,
            follows_per_s: 400.0,
            changed_share: 0.75,
            p50_ms: 1.0,
            p90_ms: 2.0,
            p99_ms: 3.0,
            max_ms: 4.0,
            converged_ms: 12.0,
            touched_users: 300,
            statements_per_follow: None,
            transactions_per_follow: 1.5,
            write_transactions_per_follow: 1.25,
            wal_bytes_per_follow: 900.0,
            redis_commands_per_follow: 20.0,
            deltas,
            rss_mib: None,
            cleanup: Cleanup::default(),
        };
        let run = WritesReport {
            started_at: "2026-01-01T00:00:00Z".into(),
            command: "follow-bench --writes".into(),
            commit: "abc1234".into(),
            machine: BTreeMap::new(),
            graph: GraphPlan {
                users: 10,
                edges: 10,
                writers: 1,
                exponent: 1.0,
                rng_seed: 1,
            },
            seeding: GraphReport {
                reused: true,
                seconds: 0.0,
                edges: 10,
                top_follower_counts: vec![],
            },
            server: "started".into(),
            server_settings: vec![],
            warmup_s: 1.0,
            duration_s: 1.0,
            background_per_s: None,
            levels: vec![level],
            edges_before: 10,
            edges_after: 10,
            server_peak_rss_mib: None,
        };
        let markdown = markdown(&run);
        assert!(
            markdown.contains(
                "| 16 | 200 | 400 | 75.0 % | 0 | 1.00 | 2.00 | 3.00 | 4.00 | 12 ms | n/a | ≈1.50 | 1.25 | 900 | 20.0 | n/a | n/a | n/a |"
            ),
            "{markdown}"
        );
    }
}
