//! Abuse (issue 10): the legitimate mixed load runs at a fixed offered rate while one client sends a
//! hostile class of requests flat out; one phase per class, between a phase without the attacker first
//! and another last (did the service come back?). For each phase: the legitimate traffic's throughput,
//! p50, p99 and errors, held against the better of the two quiet phases, and what the attacker got.
//!
//! How it measures, and why:
//! - **Fixed offered load.** Each legitimate connection sends the `mix` scenario on its own schedule
//!   (rate / connections requests per second, the connections' schedules interleaved). A closed loop at
//!   full speed would lose throughput to any attacker on two shared cores just because the attacker
//!   takes CPU; a fixed rate the service sustains comfortably shows whether the legitimate traffic is
//!   still *served*. Latency runs from each request's scheduled time, not from when it was sent, so a
//!   connection held up by a stalled server counts its wait (no coordinated omission); a connection
//!   behind schedule sends at once, in schedule order, until it catches up. The window counts what
//!   happens in it: throughput is the clean answers (200 without `errors`) received during the window,
//!   whenever they were scheduled, and the percentiles take every answer from the window's start on.
//!   Nothing is sent after the window: what a connection still behind schedule had not sent by then is
//!   reported as not sent, the time it had waited entering the percentiles as a lower bound. A 429, a
//!   200 with `errors`, any other status, a broken connection, or no answer within the grace after the
//!   window is a legitimate error.
//! - **Identities.** The server runs with `FOLLOW_TRUSTED_PROXIES=127.0.0.1/32` and `FOLLOW_RATE_LIMIT=on`
//!   (then `--server-env`, which may override them). Every legitimate request
//!   comes from one of 1,024 addresses drawn at random (`X-Forwarded-For: 2001:db8:<n>::1`, IPv6
//!   documentation /64s: only header strings) and, where it has a token, from one of the graph's active
//!   viewers drawn uniformly, or a writer: many people at a human pace each; the attacker is one client, `198.51.100.7`, with one
//!   token of its own (the last writer user, whom no legitimate request uses), on a few connections
//!   driven from a thread of its own, so that its work as a client does not delay the legitimate
//!   client's thread (it still competes for the machine's cores, as a real attacker's traffic does).
//! - **Between phases** the attacker's connections are dropped and the run waits until the server
//!   answers `/healthz` promptly again and the outbox is drained (work it accepted may outlive the
//!   attacker's connections: a validation that never yields is not cancelled by a closed socket), and
//!   reports how long that took.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use follow_service::{auth::JwtKeys, graphql::persisted::sha256_hex};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    task::JoinHandle,
};

use crate::{
    graph::{self, GraphPlan, GraphReport},
    load,
    scenarios::{Generator, Request, Scenario, Shared},
};

/// The Redis key prefix of the benchmark's server.
const PREFIX: &str = "follow-bench-abuse";

/// Addresses the legitimate requests come from, one drawn per request: many people at a human pace each,
/// as a per-client limit sees real traffic.
const LEGIT_ADDRESSES: u32 = 1_024;

/// Legitimate address `n`: a /64 of its own in the IPv6 documentation prefix (only a header string;
/// the rate limits key an IPv6 client by its /64).
fn legit_address(n: u32) -> String {
    format!("2001:db8:{n:x}::1")
}

/// The attacker's address, as its `X-Forwarded-For` says (TEST-NET-2).
pub const ATTACKER_ADDRESS: &str = "198.51.100.7";

/// Settings every run gives the server, before `--server-env` (a later KEY=VALUE wins).
pub const SERVER_ENV: [&str; 2] = [
    "FOLLOW_TRUSTED_PROXIES=127.0.0.1/32",
    "FOLLOW_RATE_LIMIT=on",
];

/// Legitimate requests per second offered by default: about half of what the mix reaches at full
/// speed on this machine (release build, 100,000 users), so the baseline has room.
pub const DEFAULT_RATE: f64 = 500.0;
/// The same for `--quick`: a debug build serves the mix at about 50 requests/s at full speed.
pub const QUICK_RATE: f64 = 20.0;

/// Representations in one `_entities` request.
const ENTITY_REPRESENTATIONS: usize = 2_000;
/// Distinct users those representations name (ids 1..=99, so that 2,000 of them fit the default
/// 64 KiB body limit: 2,000 representations of ids up to 2,000 take 67 KB and would be refused with
/// 413 before any parsing, which is not the class under test).
const ENTITY_IDS: usize = 99;
/// `user { followers { nodes { knownFollowers } } }` aliases in one request.
const KNOWN_FOLLOWERS_ALIASES: usize = 60;
/// Bytes of junk text in one persisted-query registration.
const JUNK_BYTES: usize = 10 * 1024;
/// follow + unfollow pairs in one flood mutation (1,500 aliases).
const FOLLOW_PAIRS: usize = 750;
/// Users the attacker follows (the most followed ones), so that its `knownFollowers` have something to
/// intersect.
const ATTACKER_FOLLOWS: i64 = 1_000;
/// At most this many connections of the slowloris class are being opened at once.
const CONNECTS_IN_FLIGHT: usize = 64;
/// How often a slowloris connection sends one more byte of its headers.
const DRIP: Duration = Duration::from_secs(1);
/// `/healthz` answers this fast, this many times in a row: the server is back.
const QUIET_PROBE: Duration = Duration::from_millis(100);
const QUIET_PROBES: usize = 5;

/// One hostile class: one client sending it flat out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attack {
    /// Fragments spreading the next one twice, 24 levels deep: 2^24 spreads for a validator that
    /// expands them.
    Fragments,
    /// `_entities` with 2,000 representations.
    Entities,
    /// 60 aliases of 100 followers' `knownFollowers(first: 100)`, with a viewer.
    KnownFollowers,
    /// APQ registrations of 10 KiB of junk, a new text each time.
    Persisted,
    /// One viewer's mutation of 1,500 follow/unfollow aliases.
    FollowFlood,
    /// Many connections sending a request's headers a byte at a time and never finishing, and idle
    /// keep-alive connections.
    Slowloris,
    /// `{ __typename }` as fast as the attacker's connections go.
    Flood,
}

impl Attack {
    pub const ALL: [Attack; 7] = [
        Self::Fragments,
        Self::Entities,
        Self::KnownFollowers,
        Self::Persisted,
        Self::FollowFlood,
        Self::Slowloris,
        Self::Flood,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Fragments => "fragments",
            Self::Entities => "entities",
            Self::KnownFollowers => "known_followers",
            Self::Persisted => "persisted",
            Self::FollowFlood => "follow_flood",
            Self::Slowloris => "slowloris",
            Self::Flood => "flood",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    fn describe(self, plan: &AbusePlan, setup: &AttackerSetup) -> String {
        match self {
            Self::Fragments => format!(
                "anonymous `{{ user(id: \"1\") {{ ...F1 }} }}` with `fragment Fi on User {{ ...Fi+1 ...Fi+1 }}`, \
                 {} levels, the last `{{ id }}`",
                plan.fragment_depth
            ),
            Self::Entities => format!(
                "anonymous `_entities(representations: $r) {{ ... on User {{ id followerCount }} }}` with \
                 {ENTITY_REPRESENTATIONS} representations (ids 1 to {ENTITY_IDS} in turn, to fit the default \
                 64 KiB body limit)"
            ),
            Self::KnownFollowers => format!(
                "{KNOWN_FOLLOWERS_ALIASES} aliases of `user(id: X) {{ followers(first: 100) {{ nodes {{ \
                 knownFollowers(first: 100) {{ totalCount nodes {{ id }} }} }} }} }}` (X = 1 to \
                 {KNOWN_FOLLOWERS_ALIASES}), with the attacker's token (it follows users 1 to {})",
                setup.follows
            ),
            Self::Persisted => format!(
                "anonymous APQ registrations: {JUNK_BYTES} bytes of random junk as `query`, its SHA-256 as \
                 `persistedQuery.sha256Hash`, a new text each time"
            ),
            Self::FollowFlood => format!(
                "the attacker's token, `mutation {{ a0: follow(userId: ..) {{ changed }} b0: unfollow(..) .. }}`: \
                 {} aliases, follow then unfollow of {} users it does not follow",
                2 * setup.flood_targets.len(),
                setup.flood_targets.len()
            ),
            Self::Slowloris => format!(
                "{} connections sending `POST /graphql` headers one byte per {} s, never finishing, and {} idle \
                 keep-alive connections (one `{{ __typename }}` answered, then silence)",
                plan.slow_connections,
                DRIP.as_secs(),
                plan.idle_connections
            ),
            Self::Flood => {
                "anonymous `{ __typename }`, as fast as the attacker's connections go".to_owned()
            }
        }
    }
}

/// What to run.
pub struct AbusePlan {
    pub graph: GraphPlan,
    pub database_url: String,
    pub redis_url: String,
    /// The server's settings: [`SERVER_ENV`], then `--server-env`.
    pub server_env: Vec<String>,
    pub out: PathBuf,
    pub attacks: Vec<Attack>,
    /// Legitimate requests per second offered, over all the legitimate connections.
    pub rate: f64,
    pub connections: usize,
    pub attacker_connections: usize,
    /// Legitimate load before the first phase, unrecorded (the caches warm up).
    pub initial_warmup: Duration,
    /// Unrecorded start of each phase (the attacker is already at work).
    pub warmup: Duration,
    pub duration: Duration,
    /// How long a legitimate request in flight at the end of the window may still take.
    pub grace: Duration,
    /// The longest wait for the server to be quiet again after a phase.
    pub recovery_limit: Duration,
    pub fragment_depth: usize,
    pub slow_connections: usize,
    pub idle_connections: usize,
    pub rng_seed: u64,
}

/// The attacker's identity and targets.
struct AttackerSetup {
    token: Arc<str>,
    /// It follows users 1..=follows.
    follows: i64,
    /// Users it does not follow, for the follow flood.
    flood_targets: Vec<i64>,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct AbuseReport {
    pub started_at: String,
    pub command: String,
    pub commit: String,
    pub machine: BTreeMap<String, String>,
    pub graph: GraphPlan,
    pub seeding: GraphReport,
    pub rate: f64,
    pub connections: usize,
    pub attacker_connections: usize,
    pub attacker_user: i64,
    pub initial_warmup_s: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub grace_s: f64,
    pub fragment_depth: usize,
    pub slow_connections: usize,
    pub idle_connections: usize,
    /// Why the slowloris class opens fewer connections than asked, if it does.
    pub socket_note: Option<String>,
    pub server_env: Vec<String>,
    /// What one legitimate identity sends: requests per second per address and per viewer token, and
    /// writes per minute per writer token.
    pub per_address_per_s: f64,
    pub per_viewer_per_s: f64,
    pub writes_per_writer_per_min: f64,
    /// What the phases with an attacker are held against: the higher throughput and the lower p99
    /// of the two phases without it (the first and the last). The machine is shared: other work can
    /// disturb one quiet phase, and judging the attacks against a disturbed one would flatter them.
    pub reference_throughput_per_s: f64,
    pub reference_p99_ms: f64,
    pub phases: Vec<PhaseReport>,
    pub server_peak_rss_mib: Option<f64>,
    /// After the last phase: users whose counts differ from their edges (`None`: events were left in
    /// the outbox, so not checked).
    pub count_mismatches: Option<i64>,
}

/// One phase's figures.
#[derive(Debug, Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub attack: Option<Attack>,
    pub description: String,
    pub legit: LegitReport,
    /// Throughput and p99 over the reference's (see [`AbuseReport::reference_throughput_per_s`]).
    pub throughput_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
    /// At least 0.8× the throughput, p99 at most 2×, no legitimate errors.
    pub aims_met: Option<bool>,
    pub attacker: Option<AttackerReport>,
    /// The server's resident memory at the end of the window.
    pub server_rss_mib: Option<f64>,
    /// Persisted queries registered in Redis under the server's prefix, after the phase.
    pub apq_keys: u64,
    /// Seconds from the attacker's stop until the server answered promptly and the outbox was empty;
    /// `None`: not within the limit.
    pub quiet_after_s: Option<f64>,
}

/// The legitimate traffic of one phase's measured window.
#[derive(Debug, Serialize)]
pub struct LegitReport {
    /// Requests the schedule offered within the window (rate × window).
    pub scheduled: u64,
    /// Answered 200 without `errors` during the window.
    pub ok: u64,
    /// Failed answers received from the window's start on, and requests without an answer.
    pub errors: u64,
    /// Outcomes that are not a clean 200, by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// The first error of each kind.
    pub error_samples: BTreeMap<String, String>,
    /// Requests not sent by the window's end because their connection was still behind schedule
    /// (scheduled during the warm-up or the window).
    pub unsent: u64,
    pub throughput_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The furthest behind its schedule a request was sent.
    pub max_behind_ms: f64,
}

/// What the attacker got during the phase (warm-up included).
#[derive(Debug, Serialize)]
pub struct AttackerReport {
    pub seconds: f64,
    /// Requests answered (or connections ended), by outcome: HTTP status, `200 with errors`,
    /// `transport error`, slowloris connection fates.
    pub outcomes: BTreeMap<String, u64>,
    /// The first answer of each outcome, shortened.
    pub samples: BTreeMap<String, String>,
    /// Requests still unanswered (or slowloris connections still open) when the phase ended.
    pub open_at_end: u64,
    /// Time each request took (for slowloris: until the server closed the connection).
    pub p50_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// Runs the baseline, one phase per attack and the closing baseline against one server; writes
/// `latest.md` and `latest.json` into `plan.out`. Fails only when the run itself cannot be made or
/// the counts differ from the edges afterwards: unmet aims are figures, not failures.
pub async fn run(mut plan: AbusePlan, server_binary: PathBuf) -> anyhow::Result<()> {
    anyhow::ensure!(
        plan.rate > 0.0 && plan.connections > 0 && plan.attacker_connections > 0,
        "--rate, --concurrency and --attacker-connections must be positive"
    );
    anyhow::ensure!(
        plan.graph.users >= 200 && plan.graph.writers > plan.connections as i64,
        "--abuse needs at least 200 users and more writers than connections (one is the attacker)"
    );
    let socket_note = fit_sockets(&mut plan);
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    println!(
        "abuse: seeding or reusing {} users, about {} edges…",
        plan.graph.users, plan.graph.edges
    );
    let seeding = graph::ensure_graph(&plan.database_url, plan.graph).await?;
    println!(
        "abuse: graph {} in {:.1} s: {} edges",
        if seeding.reused { "reused" } else { "seeded" },
        seeding.seconds,
        seeding.edges
    );
    let checks = graph::client(&plan.database_url).await?;
    let keys = JwtKeys::new(crate::BENCH_SECRET);
    // The attacker is the last writer: legitimate writes use the others, legitimate viewers are graph
    // users, so its token is its own. Writers follow nobody in the seed (and their edges are removed
    // when the graph is reused): give it follows here, before the server starts.
    let attacker_user = plan.graph.users + plan.graph.writers;
    let follows = ATTACKER_FOLLOWS.min(plan.graph.users / 2);
    give_follows(&checks, attacker_user, follows).await?;
    let setup = Arc::new(AttackerSetup {
        token: Arc::from(keys.issue(attacker_user, false, 24 * 3600)?),
        follows,
        flood_targets: (follows + 1..=plan.graph.users)
            .take(FOLLOW_PAIRS)
            .collect(),
    });
    let shared = Arc::new(Shared::new(
        &plan.graph,
        &keys,
        plan.graph.users + 1..attacker_user,
        Vec::new(),
    )?);

    crate::clear_redis_prefix(&plan.redis_url, PREFIX).await?;
    let mut server = crate::Server::spawn(
        &server_binary,
        crate::ServeSettings {
            database_url: &plan.database_url,
            redis_url: &plan.redis_url,
            listen: crate::free_local_addr()?,
            redis_prefix: PREFIX,
            secret: crate::BENCH_SECRET,
            log: &std::env::temp_dir().join("follow-bench-abuse-server.log"),
            extra_env: &plan.server_env,
        },
    )?;
    let outcome = phases(&plan, &server, &checks, &shared, &setup).await;
    let server_peak_rss_mib = server.peak_rss_mib();
    server.stop().await;
    // The run leaves hundreds of thousands of keys (statuses, the attacker's junk): a shared Redis
    // is slower for everyone with them (KEYS, SCAN), so they go now rather than when they expire.
    if let Err(err) = crate::clear_redis_prefix(&plan.redis_url, PREFIX).await {
        println!("abuse: could not delete the run's Redis keys ({PREFIX}:*): {err:#}");
    }
    let mut phases = outcome?;
    let (reference_throughput_per_s, reference_p99_ms) = compare(&mut phases);

    // Every write the run made (legitimate and the flood's) must be in the counts: checked when every
    // event was applied (each phase ends by waiting for an empty outbox).
    let count_mismatches = if graph::outbox_backlog(&checks).await? == 0 {
        Some(graph::count_mismatches(&checks).await?)
    } else {
        None
    };

    let (per_address_per_s, per_viewer_per_s, writes_per_writer_per_min) =
        identity_rates(&plan, &shared);
    let run = AbuseReport {
        started_at,
        command: std::iter::once("follow-bench".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        commit: crate::git_commit(),
        machine: crate::report::machine(),
        graph: plan.graph,
        seeding,
        rate: plan.rate,
        connections: plan.connections,
        attacker_connections: plan.attacker_connections,
        attacker_user,
        initial_warmup_s: plan.initial_warmup.as_secs_f64(),
        warmup_s: plan.warmup.as_secs_f64(),
        duration_s: plan.duration.as_secs_f64(),
        grace_s: plan.grace.as_secs_f64(),
        fragment_depth: plan.fragment_depth,
        slow_connections: plan.slow_connections,
        idle_connections: plan.idle_connections,
        socket_note,
        server_env: plan.server_env.clone(),
        per_address_per_s,
        per_viewer_per_s,
        writes_per_writer_per_min,
        reference_throughput_per_s,
        reference_p99_ms,
        phases,
        server_peak_rss_mib,
        count_mismatches,
    };
    let markdown = markdown(&run);
    crate::report::save(&plan.out, &markdown, &run)?;
    if let Some(mismatches) = run.count_mismatches.filter(|&n| n > 0) {
        bail!("{mismatches} users' counts differ from their edges after the run");
    }
    Ok(())
}

/// Caps the slowloris class's sockets to what the open-file limit leaves (this process's, which the
/// server inherits); returns why, when it had to.
fn fit_sockets(plan: &mut AbusePlan) -> Option<String> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())?;
    // The legitimate and attacking connections, the server's pools and files, and room to spare.
    let reserve = plan.connections + plan.attacker_connections + 512;
    let available = soft.saturating_sub(reserve);
    let wanted = plan.slow_connections + plan.idle_connections;
    if wanted <= available {
        return None;
    }
    let scale = available as f64 / wanted as f64;
    let (slow, idle) = (plan.slow_connections, plan.idle_connections);
    plan.slow_connections = (slow as f64 * scale) as usize;
    plan.idle_connections = (idle as f64 * scale) as usize;
    let note = format!(
        "the open-file limit is {soft}: slowloris opens {} + {} connections instead of {slow} + {idle} \
         (raise `ulimit -n` for more)",
        plan.slow_connections, plan.idle_connections
    );
    println!("abuse: {note}");
    Some(note)
}

/// Makes `user` follow users 1..=count, counts included (the server is not running yet).
async fn give_follows(
    client: &tokio_postgres::Client,
    user: i64,
    count: i64,
) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "BEGIN; \
             DELETE FROM follows WHERE follower_id = {user}; \
             INSERT INTO follows (follower_id, followee_id, created_at) \
                 SELECT {user}, id, now() FROM users WHERE id BETWEEN 1 AND {count}; \
             UPDATE user_stats s SET \
                 follower_count = (SELECT count(*) FROM follows f WHERE f.followee_id = s.user_id), \
                 following_count = (SELECT count(*) FROM follows f WHERE f.follower_id = s.user_id), \
                 version = s.version + 1 \
             WHERE s.user_id BETWEEN 1 AND {count} OR s.user_id = {user}; \
             COMMIT;"
        ))
        .await
        .context("giving the attacker its follows")
}

/// Requests per second one legitimate address sends, requests per second one viewer token carries,
/// writes per minute per writer: what a per-identity rate limit sees from the legitimate load.
fn identity_rates(plan: &AbusePlan, shared: &Shared) -> (f64, f64, f64) {
    // The mix: 50 % list pages with a viewer token (drawn uniformly), 15 % writes with a writer token,
    // every request from one of the addresses drawn uniformly.
    let per_viewer = plan.rate * 0.50 / shared.viewer_tokens.len().max(1) as f64;
    let per_writer = plan.rate * 0.15 * 60.0 / shared.writer_tokens.len().max(1) as f64;
    (
        plan.rate / f64::from(LEGIT_ADDRESSES),
        per_viewer,
        per_writer,
    )
}

/// The first warm-up, then every phase in turn.
async fn phases(
    plan: &AbusePlan,
    server: &crate::Server,
    checks: &tokio_postgres::Client,
    shared: &Arc<Shared>,
    setup: &Arc<AttackerSetup>,
) -> anyhow::Result<Vec<PhaseReport>> {
    let addr = server.addr();
    crate::wait_healthy(addr).await?;
    if !plan.initial_warmup.is_zero() {
        println!(
            "abuse: {:.0} s of legitimate load to warm up",
            plan.initial_warmup.as_secs_f64()
        );
        legit_load(
            addr,
            shared.clone(),
            plan,
            plan.initial_warmup,
            Duration::ZERO,
            plan.rng_seed,
        )
        .await?;
    }
    let mut steps: Vec<Option<Attack>> = vec![None];
    steps.extend(plan.attacks.iter().copied().map(Some));
    steps.push(None);
    let mut reports: Vec<PhaseReport> = Vec::new();
    for (index, attack) in steps.into_iter().enumerate() {
        let name = match attack {
            Some(attack) => attack.name().to_owned(),
            None if index == 0 => "baseline".to_owned(),
            None => "baseline_again".to_owned(),
        };
        print!("{name:<16} ");
        let seed = plan.rng_seed ^ (index as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
        let tally = Arc::new(Mutex::new(Tally::new()));
        let phase_start = Instant::now();
        let attacker = match attack {
            Some(attack) => Some(AttackerThread::start(
                attack,
                addr,
                plan,
                setup.clone(),
                tally.clone(),
                seed,
            )?),
            None => None,
        };
        let legit =
            legit_load(addr, shared.clone(), plan, plan.warmup, plan.duration, seed).await?;
        let server_rss_mib = server.memory_mib("VmRSS");
        if let Some(attacker) = attacker {
            attacker.stop().await;
        }
        let attack_seconds = phase_start.elapsed().as_secs_f64();
        let attacker = attack.map(|_| {
            tally
                .lock()
                .expect("the tally's lock")
                .report(attack_seconds)
        });
        let quiet_after_s = quiet(addr, checks, plan.recovery_limit).await?;
        let apq_keys = count_keys(&plan.redis_url, &format!("{PREFIX}:apq:*"))
            .await
            .unwrap_or(0);
        let description = match attack {
            Some(attack) => attack.describe(plan, setup),
            None if index == 0 => "no attacker".to_owned(),
            None => "no attacker, after all the attacks".to_owned(),
        };
        let report = PhaseReport {
            name,
            attack,
            description,
            legit,
            // Set once both phases without the attacker have run: see `compare`.
            throughput_ratio: None,
            p99_ratio: None,
            aims_met: None,
            attacker,
            server_rss_mib,
            apq_keys,
            quiet_after_s,
        };
        println!("{}", summary_line(&report));
        reports.push(report);
    }
    Ok(reports)
}

/// Holds every phase against the reference (the better throughput and the better p99 of the phases
/// without the attacker) and says whether each attack phase met the aims: at least 0.8× the
/// throughput, p99 at most 2×, no legitimate errors. Returns the reference.
fn compare(phases: &mut [PhaseReport]) -> (f64, f64) {
    let quiet = phases.iter().filter(|p| p.attack.is_none());
    let throughput = quiet
        .clone()
        .map(|p| p.legit.throughput_per_s)
        .fold(0.0, f64::max);
    let p99 = quiet.map(|p| p.legit.p99_ms).fold(f64::INFINITY, f64::min);
    for phase in phases.iter_mut() {
        phase.throughput_ratio =
            (throughput > 0.0).then(|| phase.legit.throughput_per_s / throughput);
        phase.p99_ratio = (p99.is_finite() && p99 > 0.0).then(|| phase.legit.p99_ms / p99);
        phase.aims_met = match (phase.attack, phase.throughput_ratio, phase.p99_ratio) {
            (Some(_), Some(t), Some(p)) => Some(t >= 0.8 && p <= 2.0 && phase.legit.errors == 0),
            _ => None,
        };
    }
    (throughput, if p99.is_finite() { p99 } else { 0.0 })
}

/// One phase on one line, for the console.
fn summary_line(phase: &PhaseReport) -> String {
    let l = &phase.legit;
    let mut line = format!(
        "legit {:>6.0} req/s{}  p50 {:>7.2} ms  p99 {:>8.2} ms{}  errors {}  unsent {}",
        l.throughput_per_s,
        phase
            .throughput_ratio
            .map_or(String::new(), |r| format!(" ({r:.2}×)")),
        l.p50_ms,
        l.p99_ms,
        phase
            .p99_ratio
            .map_or(String::new(), |r| format!(" ({r:.2}×)")),
        l.errors,
        l.unsent
    );
    if let Some(attacker) = &phase.attacker {
        let _ = write!(
            line,
            "  | attacker {}, p50 {}",
            outcomes_text(attacker),
            attacker
                .p50_ms
                .map_or("n/a".to_owned(), |ms| format!("{ms:.1} ms"))
        );
    }
    let _ = write!(
        line,
        "  | quiet after {}",
        phase
            .quiet_after_s
            .map_or("(not within the limit)".to_owned(), |s| format!("{s:.1} s"))
    );
    line
}

fn outcomes_text(attacker: &AttackerReport) -> String {
    let mut parts: Vec<String> = attacker
        .outcomes
        .iter()
        .map(|(outcome, n)| format!("{outcome}: {n}"))
        .collect();
    if attacker.open_at_end > 0 {
        parts.push(format!("open at the end: {}", attacker.open_at_end));
    }
    if parts.is_empty() {
        "nothing answered".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Waits until the server answers `/healthz` within [`QUIET_PROBE`] [`QUIET_PROBES`] times in a row and
/// the outbox is empty; returns how long that took, or `None` past `limit`.
async fn quiet(
    addr: SocketAddr,
    checks: &tokio_postgres::Client,
    limit: Duration,
) -> anyhow::Result<Option<f64>> {
    let since = Instant::now();
    let mut prompt = 0;
    while since.elapsed() < limit {
        let probe = Instant::now();
        let answered = tokio::time::timeout(QUIET_PROBE, load::get(addr, "/healthz"))
            .await
            .is_ok_and(|r| r.is_ok());
        prompt = if answered && probe.elapsed() <= QUIET_PROBE {
            prompt + 1
        } else {
            0
        };
        if prompt >= QUIET_PROBES && graph::outbox_backlog(checks).await? == 0 {
            return Ok(Some(since.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(None)
}

/// Keys matching `pattern` in Redis.
async fn count_keys(redis_url: &str, pattern: &str) -> anyhow::Result<u64> {
    use follow_service::redis_pool::redis;
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let (mut cursor, mut count) = (0u64, 0u64);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        count += keys.len() as u64;
        if next == 0 {
            return Ok(count);
        }
        cursor = next;
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// One legitimate connection's figures.
struct LegitTally {
    scheduled: u64,
    ok: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    error_samples: BTreeMap<String, String>,
    unsent: u64,
    latency_us: Histogram<u64>,
    max_behind: Duration,
}

impl LegitTally {
    fn new() -> Self {
        Self {
            scheduled: 0,
            ok: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            error_samples: BTreeMap::new(),
            unsent: 0,
            latency_us: histogram(),
            max_behind: Duration::ZERO,
        }
    }

    fn latency(&mut self, latency: Duration) {
        self.latency_us
            .saturating_record(latency.as_micros().max(1) as u64);
    }

    fn error(&mut self, kind: String, detail: impl FnOnce() -> String) {
        self.errors += 1;
        if !self.error_samples.contains_key(&kind) {
            self.error_samples.insert(kind.clone(), detail());
        }
        *self.error_kinds.entry(kind).or_insert(0) += 1;
    }

    fn add(&mut self, other: LegitTally) -> anyhow::Result<()> {
        self.scheduled += other.scheduled;
        self.ok += other.ok;
        self.errors += other.errors;
        for (kind, n) in other.error_kinds {
            *self.error_kinds.entry(kind).or_insert(0) += n;
        }
        for (kind, sample) in other.error_samples {
            self.error_samples.entry(kind).or_insert(sample);
        }
        self.unsent += other.unsent;
        self.latency_us.add(other.latency_us)?;
        self.max_behind = self.max_behind.max(other.max_behind);
        Ok(())
    }
}

/// The mix at `plan.rate` over `plan.connections` connections, each its own client: `warmup`
/// unrecorded, then `duration` recorded.
async fn legit_load(
    addr: SocketAddr,
    shared: Arc<Shared>,
    plan: &AbusePlan,
    warmup: Duration,
    duration: Duration,
    seed: u64,
) -> anyhow::Result<LegitReport> {
    let connections = plan.connections;
    let start = Instant::now();
    let start_measure = start + warmup;
    let end = start_measure + duration;
    let deadline = end + plan.grace;
    let interval = Duration::from_secs_f64(connections as f64 / plan.rate);
    let mut workers = Vec::with_capacity(connections);
    for worker in 0..connections {
        let shared = shared.clone();
        workers.push(tokio::spawn(async move {
            let rng = StdRng::seed_from_u64(seed ^ ((worker as u64 + 1) * 0x9E37_79B9));
            let mut generator = Generator::new(worker, connections, rng);
            generator.uniform_viewers = true;
            let mut tally = LegitTally::new();
            // The connections' schedules interleave evenly.
            let offset = interval.mul_f64(worker as f64 / connections as f64);
            let scheduled_at = |k: u32| start + offset + interval * k;
            tally.scheduled = (0..)
                .map(scheduled_at)
                .take_while(|&at| at < end)
                .filter(|&at| at >= start_measure)
                .count() as u64;
            let mut conn: Option<load::Connection> = None;
            let mut k = 0u32;
            loop {
                let scheduled = scheduled_at(k);
                let now = Instant::now();
                // Nothing is sent once the window has closed.
                if scheduled >= end || now >= end {
                    break;
                }
                if scheduled > now {
                    tokio::time::sleep_until(scheduled.into()).await;
                } else if now >= start_measure {
                    tally.max_behind = tally.max_behind.max(now - scheduled);
                }
                k += 1;
                let request = generator.next(Scenario::Mix, &shared);
                let client = legit_address(generator.rng.random_range(0..LEGIT_ADDRESSES));
                let outcome = tokio::time::timeout_at(deadline.into(), async {
                    let conn = match &mut conn {
                        Some(conn) => conn,
                        None => conn.insert(load::connect(addr).await?),
                    };
                    load::send_from(conn, addr, &request, Some(&client)).await
                })
                .await;
                let answered = Instant::now();
                if !matches!(outcome, Ok(Ok(_))) {
                    conn = None;
                }
                // Answers before the window are the warm-up; any later one counts, whenever it was
                // scheduled (a connection behind schedule sends warm-up requests in the window).
                if answered < start_measure {
                    continue;
                }
                tally.latency(answered - scheduled);
                match outcome {
                    Ok(Ok((status, body))) if !load::is_error(status, &body) => {
                        if answered < end {
                            tally.ok += 1;
                        }
                    }
                    Ok(Ok((status, body))) => {
                        let kind = if status == 200 {
                            "200 with errors".to_owned()
                        } else {
                            status.to_string()
                        };
                        tally.error(kind, || {
                            format!(
                                "HTTP {status}: {}",
                                String::from_utf8_lossy(&body[..body.len().min(300)])
                            )
                        });
                    }
                    Ok(Err(err)) => {
                        tally.error("transport error".to_owned(), || format!("{err:#}"));
                    }
                    Err(_) => {
                        tally.error("no answer".to_owned(), || {
                            format!(
                                "no answer {:.1} s after the window",
                                (deadline - end).as_secs_f64()
                            )
                        });
                    }
                }
            }
            // What the connection, still behind schedule, never sent before the window closed: each
            // had waited at least until then.
            let mut unsent = scheduled_at(k);
            while unsent < end {
                tally.unsent += 1;
                tally.latency(end - unsent);
                k += 1;
                unsent = scheduled_at(k);
            }
            // Undo an outstanding follow so the graph ends as it began (best effort).
            if let Some(request) = generator.cleanup(&shared) {
                let client = legit_address(0);
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut conn = match conn {
                        Some(conn) => conn,
                        None => load::connect(addr).await?,
                    };
                    load::send_from(&mut conn, addr, &request, Some(&client)).await
                })
                .await;
            }
            tally
        }));
    }
    let mut total = LegitTally::new();
    for worker in workers {
        total.add(worker.await?)?;
    }
    let h = &total.latency_us;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let empty = h.is_empty();
    Ok(LegitReport {
        scheduled: total.scheduled,
        ok: total.ok,
        errors: total.errors,
        error_kinds: total.error_kinds,
        error_samples: total.error_samples,
        unsent: total.unsent,
        throughput_per_s: if duration.is_zero() {
            0.0
        } else {
            total.ok as f64 / duration.as_secs_f64()
        },
        p50_ms: if empty { 0.0 } else { ms(0.5) },
        p90_ms: if empty { 0.0 } else { ms(0.9) },
        p99_ms: if empty { 0.0 } else { ms(0.99) },
        max_ms: h.max() as f64 / 1000.0,
        max_behind_ms: total.max_behind.as_secs_f64() * 1000.0,
    })
}

/// What the attacker's tasks record (shared: they are aborted at the phase's end).
struct Tally {
    outcomes: BTreeMap<String, u64>,
    samples: BTreeMap<String, String>,
    latency_us: Histogram<u64>,
    /// Requests sent and not answered yet, or slowloris connections open.
    open: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            outcomes: BTreeMap::new(),
            samples: BTreeMap::new(),
            latency_us: histogram(),
            open: 0,
        }
    }

    fn record(&mut self, outcome: String, took: Option<Duration>, sample: impl FnOnce() -> String) {
        if let Some(took) = took {
            self.latency_us
                .saturating_record(took.as_micros().max(1) as u64);
        }
        if !self.samples.contains_key(&outcome) {
            let mut text = sample();
            if text.len() > 200 {
                let mut cut = 200;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push('…');
            }
            self.samples.insert(outcome.clone(), text);
        }
        *self.outcomes.entry(outcome).or_insert(0) += 1;
    }

    fn report(&self, seconds: f64) -> AttackerReport {
        let h = &self.latency_us;
        let timed = !h.is_empty();
        AttackerReport {
            seconds,
            outcomes: self.outcomes.clone(),
            samples: self.samples.clone(),
            open_at_end: self.open,
            p50_ms: timed.then(|| h.value_at_quantile(0.5) as f64 / 1000.0),
            max_ms: timed.then(|| h.max() as f64 / 1000.0),
        }
    }
}

type SharedTally = Arc<Mutex<Tally>>;

fn with<T>(tally: &SharedTally, f: impl FnOnce(&mut Tally) -> T) -> T {
    f(&mut tally.lock().expect("the tally's lock"))
}

/// What the attacker's tasks need of the plan.
#[derive(Clone, Copy)]
struct AttackSettings {
    fragment_depth: usize,
    connections: usize,
    slow_connections: usize,
    idle_connections: usize,
}

/// The attacker on a thread (and runtime) of its own: it is a client apart from the legitimate ones,
/// and its own work as a client must not delay theirs on the benchmark's thread.
struct AttackerThread {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl AttackerThread {
    fn start(
        attack: Attack,
        addr: SocketAddr,
        plan: &AbusePlan,
        setup: Arc<AttackerSetup>,
        tally: SharedTally,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let settings = AttackSettings {
            fragment_depth: plan.fragment_depth,
            connections: plan.attacker_connections,
            slow_connections: plan.slow_connections,
            idle_connections: plan.idle_connections,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("attacker".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let tasks = start_attack(attack, addr, settings, &setup, &tally, seed);
                    let _ = stopped.await;
                    for task in &tasks {
                        task.abort();
                    }
                    for task in tasks {
                        let _ = task.await;
                    }
                });
                // Dropping the runtime ends what is left: the connections' own tasks.
            })?;
        Ok(Self { stop, thread })
    }

    /// Stops every task of the attacker and closes its connections.
    async fn stop(self) {
        let _ = self.stop.send(());
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Starts the attacker's tasks for `attack`; they run until aborted.
fn start_attack(
    attack: Attack,
    addr: SocketAddr,
    settings: AttackSettings,
    setup: &Arc<AttackerSetup>,
    tally: &SharedTally,
    seed: u64,
) -> Vec<JoinHandle<()>> {
    if attack == Attack::Slowloris {
        return start_slowloris(addr, settings, tally);
    }
    let fixed = match attack {
        Attack::Fragments => Some(anonymous(fragments_body(settings.fragment_depth))),
        Attack::Entities => Some(anonymous(entities_body())),
        Attack::KnownFollowers => Some(Request {
            body: known_followers_body(),
            token: Some(setup.token.clone()),
        }),
        Attack::FollowFlood => Some(Request {
            body: follow_flood_body(&setup.flood_targets),
            token: Some(setup.token.clone()),
        }),
        Attack::Flood => Some(anonymous(Bytes::from_static(
            br#"{"query":"{ __typename }"}"#,
        ))),
        Attack::Persisted | Attack::Slowloris => None,
    };
    let fixed = fixed.map(Arc::new);
    (0..settings.connections)
        .map(|connection| {
            let (fixed, tally) = (fixed.clone(), tally.clone());
            let mut rng = StdRng::seed_from_u64(seed ^ (connection as u64 + 1));
            tokio::spawn(async move {
                let mut conn: Option<load::Connection> = None;
                loop {
                    let request = match &fixed {
                        Some(request) => Request {
                            body: request.body.clone(),
                            token: request.token.clone(),
                        },
                        None => anonymous(persisted_junk_body(&mut rng)),
                    };
                    let conn_ref = match &mut conn {
                        Some(conn) => conn,
                        None => match load::connect(addr).await {
                            Ok(fresh) => conn.insert(fresh),
                            Err(err) => {
                                with(&tally, |t| {
                                    t.record("connect error".to_owned(), None, || {
                                        format!("{err:#}")
                                    })
                                });
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        },
                    };
                    with(&tally, |t| t.open += 1);
                    let sent = Instant::now();
                    let outcome =
                        load::send_from(conn_ref, addr, &request, Some(ATTACKER_ADDRESS)).await;
                    let took = sent.elapsed();
                    with(&tally, |t| {
                        t.open -= 1;
                        match &outcome {
                            Ok((status, body)) => {
                                let kind = if *status == 200 && load::is_error(*status, body) {
                                    "200 with errors".to_owned()
                                } else {
                                    status.to_string()
                                };
                                t.record(kind, Some(took), || {
                                    String::from_utf8_lossy(&body[..body.len().min(400)])
                                        .into_owned()
                                });
                            }
                            Err(err) => {
                                t.record("transport error".to_owned(), Some(took), || {
                                    format!("{err:#}")
                                });
                            }
                        }
                    });
                    if outcome.is_err() {
                        conn = None;
                    }
                }
            })
        })
        .collect()
}

fn anonymous(body: Bytes) -> Request {
    Request { body, token: None }
}

/// `{ user(id: "1") { ...F1 } }` with `fragment Fi on User { ...Fi+1 ...Fi+1 }` down to `depth`.
fn fragments_body(depth: usize) -> Bytes {
    let mut query = String::from("{ user(id: \"1\") { ...F1 } }");
    for i in 1..depth {
        let _ = write!(
            query,
            " fragment F{i} on User {{ ...F{next} ...F{next} }}",
            next = i + 1
        );
    }
    let _ = write!(query, " fragment F{depth} on User {{ id }}");
    Bytes::from(json!({ "query": query }).to_string())
}

fn entities_body() -> Bytes {
    let representations: Vec<serde_json::Value> = (0..ENTITY_REPRESENTATIONS)
        .map(|n| json!({ "__typename": "User", "id": (1 + n % ENTITY_IDS).to_string() }))
        .collect();
    Bytes::from(
        json!({
            "query": "query($r:[_Any!]!){ _entities(representations:$r){ ... on User { id followerCount } } }",
            "variables": { "r": representations },
        })
        .to_string(),
    )
}

fn known_followers_body() -> Bytes {
    let mut query = String::from("{");
    for i in 0..KNOWN_FOLLOWERS_ALIASES {
        let _ = write!(
            query,
            " a{i}: user(id: \"{}\") {{ followers(first: 100) {{ nodes {{ knownFollowers(first: 100) {{ totalCount nodes {{ id }} }} }} }} }}",
            i + 1
        );
    }
    query.push_str(" }");
    Bytes::from(json!({ "query": query }).to_string())
}

/// Follow then unfollow of each target, compactly (1,500 aliases fit the default body limit).
fn follow_flood_body(targets: &[i64]) -> Bytes {
    let mut query = String::from("mutation{");
    for (i, target) in targets.iter().enumerate() {
        let _ = write!(
            query,
            "a{i}:follow(userId:\"{target}\"){{changed}} b{i}:unfollow(userId:\"{target}\"){{changed}} "
        );
    }
    query.push('}');
    Bytes::from(json!({ "query": query }).to_string())
}

/// A new registration: random junk (no quotes or backslashes) and its SHA-256.
fn persisted_junk_body(rng: &mut StdRng) -> Bytes {
    const ALPHABET: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 {}()[]:!$@.,";
    let junk: String = (0..JUNK_BYTES)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    let hash = sha256_hex(&junk);
    Bytes::from(
        json!({
            "query": junk,
            "extensions": { "persistedQuery": { "version": 1, "sha256Hash": hash } },
        })
        .to_string(),
    )
}

/// Opens the slowloris class's connections: `slow_connections` that send a request's headers a byte at
/// a time and never finish, `idle_connections` that make one request and then stay silent.
fn start_slowloris(
    addr: SocketAddr,
    settings: AttackSettings,
    tally: &SharedTally,
) -> Vec<JoinHandle<()>> {
    let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECTS_IN_FLIGHT));
    let slow = (0..settings.slow_connections).map(|_| true);
    let idle = (0..settings.idle_connections).map(|_| false);
    slow.chain(idle)
        .map(|slow| {
            let (tally, connecting) = (tally.clone(), connecting.clone());
            tokio::spawn(async move {
                let kind = if slow { "slow" } else { "idle" };
                let stream = {
                    let _permit = connecting.acquire().await;
                    tokio::net::TcpStream::connect(addr).await
                };
                let mut stream = match stream {
                    Ok(stream) => stream,
                    Err(err) => {
                        with(&tally, |t| {
                            t.record(format!("{kind}: connect error"), None, || format!("{err}"))
                        });
                        return;
                    }
                };
                with(&tally, |t| t.open += 1);
                let opened = Instant::now();
                let fate = if slow {
                    drip(&mut stream, addr).await
                } else {
                    idle_after_one(&mut stream, addr).await
                };
                with(&tally, |t| {
                    t.open -= 1;
                    let (outcome, sample) = fate;
                    t.record(format!("{kind}: {outcome}"), Some(opened.elapsed()), || {
                        sample
                    });
                });
            })
        })
        .collect()
}

/// Sends a request line and headers a byte per [`DRIP`], never ending them; returns how the server
/// ended it (an answer's status, or closing) and what it sent.
async fn drip(stream: &mut tokio::net::TcpStream, addr: SocketAddr) -> (String, String) {
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {addr}\r\nX-Forwarded-For: {ATTACKER_ADDRESS}\r\nContent-Type: application/json\r\n"
    );
    let (mut reader, mut writer) = stream.split();
    if let Err(err) = writer.write_all(head.as_bytes()).await {
        return ("closed by the server".to_owned(), err.to_string());
    }
    let header = b"X-Slow: abcdefghijklmnopqrstuvwxyz\r\n";
    let mut buf = [0u8; 1024];
    let mut position = 0;
    loop {
        tokio::select! {
            read = reader.read(&mut buf) => return ended(read, &buf),
            () = tokio::time::sleep(DRIP) => {
                if let Err(err) = writer.write_all(&header[position % header.len()..][..1]).await {
                    return ("closed by the server".to_owned(), err.to_string());
                }
                position += 1;
            }
        }
    }
}

/// Makes one `{ __typename }` request with keep-alive, reads its answer, then stays silent until the
/// server closes the connection.
async fn idle_after_one(stream: &mut tokio::net::TcpStream, addr: SocketAddr) -> (String, String) {
    let body = br#"{"query":"{ __typename }"}"#;
    let request = format!(
        "POST /graphql HTTP/1.1\r\nHost: {addr}\r\nX-Forwarded-For: {ATTACKER_ADDRESS}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut message = request.into_bytes();
    message.extend_from_slice(body);
    if let Err(err) = stream.write_all(&message).await {
        return ("closed by the server".to_owned(), err.to_string());
    }
    // The answer: headers, then Content-Length bytes of body.
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                return (
                    "closed by the server before answering".to_owned(),
                    String::new(),
                );
            }
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                break;
            }
        }
    }
    let read = stream.read(&mut buf).await;
    ended(read, &buf)
}

/// How a connection the attacker holds ended: the server closed it, or answered (its status line).
fn ended(read: std::io::Result<usize>, buf: &[u8]) -> (String, String) {
    match read {
        Ok(0) => ("closed by the server".to_owned(), String::new()),
        Err(err) => ("closed by the server".to_owned(), err.to_string()),
        Ok(n) => {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let status = text
                .strip_prefix("HTTP/1.1 ")
                .and_then(|rest| rest.get(..3))
                .map_or("data".to_owned(), |code| format!("HTTP {code}"));
            (format!("answered {status}"), text)
        }
    }
}

/// The run as Markdown: the header, the settings, one table of the legitimate traffic per phase, then
/// what the attacker got.
pub fn markdown(run: &AbuseReport) -> String {
    let mut out = crate::report::header(&run.started_at, &run.commit, &run.command, &run.machine);
    let _ = writeln!(
        out,
        "Graph: {} users ({} writers besides), {} edges (Zipf s = {}); {} in {:.1} s.",
        run.graph.users,
        run.graph.writers,
        run.seeding.edges,
        run.graph.exponent,
        if run.seeding.reused {
            "reused from a previous run"
        } else {
            "seeded"
        },
        run.seeding.seconds
    );
    let _ = writeln!(
        out,
        "Legitimate load: the `mix` scenario ({}) offered at {:.0} requests/s over {} keep-alive connections, \
         every request from one of 1,024 client addresses (`X-Forwarded-For: 2001:db8:<n>::1`) and, where it has a token, one of the active viewers drawn uniformly, or a writer; \
         latency from each request's scheduled time. {:.0} s of warm-up before the first phase; each phase \
         {:.1} s of warm-up (the attacker already at work) then {:.1} s measured.",
        Scenario::Mix.describe(),
        run.rate,
        run.connections,
        run.initial_warmup_s,
        run.warmup_s,
        run.duration_s
    );
    let _ = writeln!(
        out,
        "Per legitimate identity: {:.2} requests/s per address, {:.2} requests/s per viewer token, \
         {:.1} writes/min per writer token.",
        run.per_address_per_s, run.per_viewer_per_s, run.writes_per_writer_per_min
    );
    let _ = writeln!(
        out,
        "Attacker: one client, `X-Forwarded-For: {ATTACKER_ADDRESS}` and user {}'s token, on {} connections \
         flat out (slowloris: its own sockets).{}",
        run.attacker_user,
        run.attacker_connections,
        run.socket_note
            .as_ref()
            .map_or(String::new(), |n| format!(" Note: {n}."))
    );
    let _ = writeln!(out, "Server settings: `{}`.\n", run.server_env.join(" "));

    out.push_str(
        "| phase | legit req/s | × reference | p50 ms | p99 ms | p99 × reference | legit errors | not sent | aims met | attacker's outcomes | attacker p50 ms | quiet after |\n",
    );
    out.push_str(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |\n",
    );
    for phase in &run.phases {
        let l = &phase.legit;
        let ratio = |r: Option<f64>| r.map_or("—".to_owned(), |r| format!("{r:.2}"));
        let aims = match phase.aims_met {
            None => "—".to_owned(),
            Some(true) => "yes".to_owned(),
            Some(false) => "no".to_owned(),
        };
        let (outcomes, attacker_p50) = match &phase.attacker {
            Some(a) => (
                outcomes_text(a),
                a.p50_ms.map_or("—".to_owned(), |ms| format!("{ms:.1}")),
            ),
            None => ("—".to_owned(), "—".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
            phase.name,
            l.throughput_per_s,
            ratio(phase.throughput_ratio),
            l.p50_ms,
            l.p99_ms,
            ratio(phase.p99_ratio),
            l.errors,
            l.unsent,
            aims,
            outcomes,
            attacker_p50,
            phase
                .quiet_after_s
                .map_or("not within the limit".to_owned(), |s| format!("{s:.1} s")),
        );
    }
    let _ = writeln!(
        out,
        "\nReference: {:.0} requests/s and p99 {:.2} ms, the better throughput and the better p99 of the two \
         phases without the attacker (the machine is shared: other work can disturb one of them). Aims \
         (issue 10), against it: legitimate throughput at least 0.8×, p99 at most 2×, no legitimate \
         errors. Throughput counts the clean answers (200 without `errors`) received during the \
         window; latency runs from each request's scheduled time; an error is any other answer (a 429 \
         included), a broken connection, or no answer {:.0} s after the window. \"Not sent\": requests a \
         connection behind schedule had not sent when the window closed (the time they had waited counts \
         in the percentiles). \"Quiet after\": from the attacker's stop until `/healthz` answered within \
         {} ms {} times in a row and the outbox was empty.",
        run.reference_throughput_per_s,
        run.reference_p99_ms,
        run.grace_s,
        QUIET_PROBE.as_millis(),
        QUIET_PROBES
    );
    let _ = writeln!(
        out,
        "\nServer peak RSS: {}. Counts after the run: {}.",
        run.server_peak_rss_mib
            .map_or("n/a".to_owned(), |m| format!("{m:.0} MiB")),
        match run.count_mismatches {
            Some(0) => "exact".to_owned(),
            Some(n) => format!("{n} users differ from their edges"),
            None => "not checked (events left in the outbox)".to_owned(),
        }
    );
    out.push_str("\nPhases:\n");
    for phase in &run.phases {
        let _ = writeln!(
            out,
            "- `{}`: {}. Server RSS at the window's end: {}; persisted queries in Redis after it: {}.",
            phase.name,
            phase.description,
            phase
                .server_rss_mib
                .map_or("n/a".to_owned(), |m| format!("{m:.0} MiB")),
            phase.apq_keys
        );
        for (kind, n) in &phase.legit.error_kinds {
            let sample = phase.legit.error_samples.get(kind).map_or("", |s| s);
            let _ = writeln!(
                out,
                "  - legitimate errors `{kind}`: {n}; the first: `{}`",
                one_line(sample)
            );
        }
        if let Some(attacker) = &phase.attacker {
            for (outcome, sample) in &attacker.samples {
                if !sample.is_empty() {
                    let _ = writeln!(
                        out,
                        "  - attacker, first `{outcome}`: `{}`",
                        one_line(sample)
                    );
                }
            }
        }
    }
    out
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ").replace('`', "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's default body limit: the attack bodies must fit it, or they test only the limit.
    const BODY_LIMIT: usize = 64 * 1024;

    #[test]
    fn the_big_bodies_fit_the_default_body_limit() {
        assert!(
            entities_body().len() < BODY_LIMIT,
            "{}",
            entities_body().len()
        );
        let targets: Vec<i64> = (99_001..99_001 + FOLLOW_PAIRS as i64).collect();
        let flood = follow_flood_body(&targets);
        assert!(flood.len() < BODY_LIMIT, "{}", flood.len());
        let junk = persisted_junk_body(&mut StdRng::seed_from_u64(1));
        assert!(junk.len() < BODY_LIMIT);
    }

    #[test]
    fn the_bodies_are_what_they_say() {
        let fragments: serde_json::Value =
            serde_json::from_slice(&fragments_body(3)).expect("JSON");
        assert_eq!(
            fragments["query"],
            "{ user(id: \"1\") { ...F1 } } fragment F1 on User { ...F2 ...F2 } \
             fragment F2 on User { ...F3 ...F3 } fragment F3 on User { id }"
        );
        let entities: serde_json::Value = serde_json::from_slice(&entities_body()).expect("JSON");
        let representations = entities["variables"]["r"].as_array().expect("a list");
        assert_eq!(representations.len(), ENTITY_REPRESENTATIONS);
        assert_eq!(representations[98]["id"], "99");
        assert_eq!(representations[99]["id"], "1");
        let junk: serde_json::Value =
            serde_json::from_slice(&persisted_junk_body(&mut StdRng::seed_from_u64(7)))
                .expect("JSON");
        let text = junk["query"].as_str().expect("a text");
        assert_eq!(text.len(), JUNK_BYTES);
        assert_eq!(
            junk["extensions"]["persistedQuery"]["sha256Hash"],
            sha256_hex(text)
        );
        let flood: serde_json::Value =
            serde_json::from_slice(&follow_flood_body(&[5, 6])).expect("JSON");
        assert_eq!(
            flood["query"],
            "mutation{a0:follow(userId:\"5\"){changed} b0:unfollow(userId:\"5\"){changed} \
             a1:follow(userId:\"6\"){changed} b1:unfollow(userId:\"6\"){changed} }"
        );
    }

    fn phase(attack: Option<Attack>, throughput: f64, p99: f64, errors: u64) -> PhaseReport {
        PhaseReport {
            name: String::new(),
            attack,
            description: String::new(),
            legit: LegitReport {
                scheduled: 0,
                ok: 0,
                errors,
                error_kinds: BTreeMap::new(),
                error_samples: BTreeMap::new(),
                unsent: 0,
                throughput_per_s: throughput,
                p50_ms: 1.0,
                p90_ms: 1.0,
                p99_ms: p99,
                max_ms: p99,
                max_behind_ms: 0.0,
            },
            throughput_ratio: None,
            p99_ratio: None,
            aims_met: None,
            attacker: None,
            server_rss_mib: None,
            apq_keys: 0,
            quiet_after_s: None,
        }
    }

    #[test]
    fn attacks_are_held_against_the_better_quiet_phase() {
        let mut phases = vec![
            phase(None, 490.0, 300.0, 0),
            phase(Some(Attack::Flood), 480.0, 50.0, 0),
            phase(Some(Attack::Entities), 500.0, 30.0, 1),
            phase(Some(Attack::Persisted), 390.0, 20.0, 0),
            phase(None, 500.0, 25.0, 0),
        ];
        assert_eq!(compare(&mut phases), (500.0, 25.0));
        let aims: Vec<Option<bool>> = phases.iter().map(|p| p.aims_met).collect();
        // p99 twice the quiet 25 ms is the limit; an error fails; 0.78× the throughput fails.
        assert_eq!(aims, [None, Some(true), Some(false), Some(false), None]);
        assert_eq!(phases[0].p99_ratio, Some(12.0));
        assert_eq!(phases[3].throughput_ratio, Some(0.78));
    }

    #[test]
    fn every_attack_parses_back_from_its_name() {
        for attack in Attack::ALL {
            assert_eq!(Attack::parse(attack.name()), Some(attack));
        }
    }
}
