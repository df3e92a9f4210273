//! A model-based test of every answer (issue 12; blocks, follower removal, private accounts and
//! follow requests since issue 15): clients run random operations concurrently against two instances
//! over one database and one Redis prefix, with faults at random points, and a model of the follow
//! graph checks every response.
//!
//! Per seed: instance A (`TestApp`, pipeline running) and instance B (`app.instance`, pipeline running
//! too) whose Redis goes through a `RedisProxy`, so that Redis can be cut for B alone. Four viewers and
//! one admin run operations concurrently (one tokio task each), each operation on a randomly chosen
//! instance. Viewers: `follow` (often of the newest user, or of another viewer, who may be private:
//! then it asks), `unfollow` (which withdraws a pending request), `followMany`/`unfollowMany` with
//! repeated ids, a follow of oneself, `block`/`unblock`, `removeFollower`,
//! `approveFollowRequest`/`rejectFollowRequest` (mostly of a user they concern, now and then of oneself
//! or of a user that never exists), and reads of 1 to 3 aliased root fields (`user` with handle,
//! `isPrivate`, counts and viewer fields — `viewerIsFollowing`, `followsViewer`, `viewerHasRequested`,
//! `blocking` —, `userByHandle`, `isFollowing`, `relationships` with `requested`, `requestedBy` and
//! `blocking`, `followers`/`following` pages with node handles and maybe the owner's `isPrivate`,
//! `knownFollowers`, the viewer's `blocking` and `followRequests` lists), selections in random order;
//! after a write a viewer often reads its own status back, mostly on the other instance. The admin
//! creates users (now and then private), renames them (`isPrivate` absent or null: kept), tries a taken
//! handle, makes accounts private or public (half the time a viewer's; public with requests pending
//! approves them all) and reads. Faults: a task deletes every key under the prefix ("Redis loses its
//! data") and cuts and restores B's Redis at random points; and a viewer's write sometimes races a
//! slow load of its own following set on an instance whose L1 lacks it (the load read PostgreSQL
//! before the write and answers after it), with Redis losing its data right after the write or not.
//!
//! The model holds, per pair and per user, the history of changes, each with the interval [request
//! sent, answer received] in which it took effect (a change in flight is open-ended): edges, pending
//! requests, blocks, and user records (handle and privacy). A pair's edges, requests and blocks now
//! have several writers (the follower, the followee that removes or approves, either side's block, the
//! admin turning the followee public), so the test serializes the writes of one pair of users (a mutex
//! per pair, held from before the model predicts until the model has the answer) and a change of a
//! user's privacy against every write of that user's pairs (a read-write lock per user): the model
//! knows the state each write starts from, and predicts its answer exactly; writes of different pairs,
//! and every read, still run concurrently. A read answered in [a, b] is checked against the values the
//! model allows there (what SERVICE.md and docs/ARCHITECTURE.md promise, no more):
//! - own status (the viewer's own pairs: `isFollowing`, `viewerIsFollowing`, `relationships` with the
//!   viewer as follower) is exact on every instance (SERVICE.md invariant 2, ARCHITECTURE.md
//!   "Read-your-writes"), whoever made the change (a removal, an approval, a block, a turn to public
//!   are published like follows);
//! - user records (handle and `isPrivate`) are exact on the instance that took the `upsertUser`
//!   ("upsertUser writes the record": its L1 and L2 before it answers), eventual elsewhere;
//! - blocks and requests (`blocking`, `viewerHasRequested`, `relationships.requested`/`requestedBy`/
//!   `blocking` — null unless the viewer is one of the two users, or the blocker —, the `blocking` and
//!   `followRequests` lists) are read from PostgreSQL: no window;
//! - a private account's `followers`/`following` show no entries (the real `totalCount`) and its
//!   `knownFollowers` nothing (count 0) to anyone but itself and its followers: since the flag lives in
//!   the cached record, a read may show either visibility while the record may be either (the window
//!   on the instance that did not take the upsert); when the response shows the owner's `isPrivate`
//!   beside the list, the list must agree with it; the follower test is the viewer's own status;
//! - everything else cached (others' statuses, counts, list pages, node handles) is eventual: the answer
//!   must be one the model allowed at some instant of [a − window, b] (a page's edges existed then, each
//!   with its `followedAt` inside the interval of the change that made it, and every edge there
//!   throughout the window that belongs on the page is on it; a count lies between the edges surely
//!   there and the edges possibly there, widened by the pairs changed twice lately, whose deltas may
//!   apply out of order for a moment);
//! - a change B took while its Redis was cut reaches A by no announcement: ARCHITECTURE.md ("Redis
//!   trouble") lets A read it stale until the consumer path repairs it, so on A such a change may show
//!   the old value until the cut heals, plus the window (and a viewer's own read of it is eventual);
//! - what is read from PostgreSQL only (`userByHandle`, `knownFollowers`) is checked with no window
//!   (a known follower the viewer followed at some instants of [a, b] only may be there or not), but
//!   for a read replica's lag bound before the read when the tests run with one;
//! - at quiescence (after `drained()` and a settle, both instances polled up to 3 s) every user, count,
//!   list page (at the page sizes the run used, so that cached pages are read), status, request and
//!   block is exact, every count equals the length of its list (of a private account read by another:
//!   no entries, the same count), and lists show the edges (blocks, requests) in the order, and with
//!   the `created_at`, that PostgreSQL holds; the tables are first checked against the model (no lost
//!   or invented write of an edge, request, block or record; `user_stats` equals the edges) and for
//!   what consent promises: no edge beside a block, no request beside a block or beside its edge, no
//!   request to a public account;
//! - every object of every response has its fields in the order the query asked;
//! - no response carries `INTERNAL_SERVER_ERROR` (nor any error the model does not expect); mutations
//!   the model says succeed succeed with the `changed` (and `following`, `requested`, `blocking`) it
//!   predicts; a follow across a block either way is `FORBIDDEN` ("you cannot follow this user"; a
//!   batch of several users names the first blocked one) and writes nothing, checked in PostgreSQL;
//!   in `followMany`/`unfollowMany` a repeated id says `changed: true` on its first copy at most; a
//!   consent payload's statuses (`followedBy`, `user.viewerIsFollowing`, `user.followsViewer`) show
//!   the write's own change exactly (its instance has it), others as any read.
//!
//! A failure is recorded (category, message, the faults so far, the tail of the operation log) and the
//! run goes on, so one seed can show several bugs; after a write answered unexpectedly the model takes
//! the pairs it concerns (or, for a change of privacy, the user's record and pairs) from PostgreSQL.
//! The test fails at the end, printing the first failure of each category per seed. Operations and
//! faults follow from the seed; interleavings depend on scheduling, so a replay usually, not always,
//! fails the same way. Each seed prints its phases' times and a tally of what it did.
//!
//! Running it:
//! - CI: `cargo test --test integration model` runs the seeds in `CI_SEEDS`, one after another.
//! - longer: `MODEL_SEEDS=200 cargo test --release --test integration model -- --nocapture` runs seeds
//!   `MODEL_SEED_BASE` (default 1000) and on; `MODEL_SEED=1234` replays one seed (`MODEL_SEED=3,11`:
//!   several). `MODEL_OPS` (operations per viewer, default 90), `MODEL_WINDOW_MS` (the window, default
//!   2500), `MODEL_PARALLEL` (seeds at once, default 1), `MODEL_FAULTS` (`0`: none, `loss`: data loss
//!   only, `cut`: cuts only; default both) and `MODEL_LOG=1` (print each seed's whole operation log)
//!   tune a run.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use follow_service::{app::App, auth::Viewer};
use futures::StreamExt;
use rand::{
    Rng, SeedableRng,
    rngs::StdRng,
    seq::{IndexedRandom, SliceRandom},
};
use serde_json::{Value, json};

use crate::support::{self, Options, RedisProxy, TestApp};

/// The seeds CI runs: on the code of issue 12 each known bug showed in at least one of them, run after
/// run (3 and 11: data loss racing an own read, stale pages, a renamed or new user stale on A; 12: the
/// payload of a follow of a user created on B while cut is INTERNAL_SERVER_ERROR; 17: a racing own read
/// again; every seed: field order and repeated ids in batches).
const CI_SEEDS: &[u64] = &[3, 11, 12, 17];

/// Page sizes reads use (and the quiescence check reads again, so that stale cached pages show).
const PAGE_SIZES: [i64; 3] = [2, 5, 20];

/// Slack on `followedAt` against the model's intervals (PostgreSQL and the test share one clock).
const CLOCK_SLACK_US: i64 = 2_000;

/// How long after a restore B's writes may still miss Redis (breaker cool-down, resubscription).
const RESTORE_MARGIN_US: i64 = 2_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_checks_every_answer() {
    let settings = Settings::from_env();
    let seeds = seeds_from_env();
    let parallel = env_number("MODEL_PARALLEL").unwrap_or(1).max(1) as usize;
    println!(
        "model: seeds {seeds:?}, {} viewers × {} ops + admin × {} ops, window {} ms, faults {}",
        settings.viewers.len(),
        settings.ops,
        settings.admin_ops,
        settings.window / 1000,
        settings.faults.describe()
    );
    let started = std::time::Instant::now();
    let failures: Vec<Failure> = futures::stream::iter(seeds.iter().copied())
        .map(|seed| {
            let settings = settings.clone();
            async move {
                let began = std::time::Instant::now();
                let failures = run_seed(seed, settings).await;
                println!(
                    "model: seed {seed}: {} failure(s) in {:.1} s",
                    failures.len(),
                    began.elapsed().as_secs_f64()
                );
                failures
            }
        })
        .buffer_unordered(parallel)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect();
    println!(
        "model: {} seed(s) in {:.1} s",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        return;
    }
    let report = report(&failures);
    println!("{report}");
    panic!(
        "the model found {} failure(s); first of each kind per seed above. Summary:\n{}",
        failures.len(),
        summary(&failures)
    );
}

// ---------------------------------------------------------------------------------------------------
// Settings

#[derive(Clone, Debug)]
struct Settings {
    /// Viewers that follow and unfollow (user ids; each is one client).
    viewers: Vec<i64>,
    /// The admin's user id (an existing user with the admin role).
    admin: i64,
    /// Users 1..=initial exist at the start (handles `u<id>`).
    initial: i64,
    /// Ids initial+1..=initial+created are created by the admin during the run.
    created: i64,
    /// Operations per viewer.
    ops: usize,
    /// Operations of the admin.
    admin_ops: usize,
    /// The eventual-consistency window, in µs.
    window: i64,
    faults: Faults,
}

/// Which faults a run injects (`MODEL_FAULTS`: `1` or `all`, `0` or `none`, `loss`, `cut`).
#[derive(Clone, Copy, Debug)]
struct Faults {
    /// Redis loses every key of the prefix.
    loss: bool,
    /// B's Redis is cut and restored.
    cut: bool,
}

impl Faults {
    fn from_env() -> Self {
        match std::env::var("MODEL_FAULTS").unwrap_or_default().trim() {
            "0" | "none" => Self {
                loss: false,
                cut: false,
            },
            "loss" => Self {
                loss: true,
                cut: false,
            },
            "cut" => Self {
                loss: false,
                cut: true,
            },
            _ => Self {
                loss: true,
                cut: true,
            },
        }
    }

    fn any(self) -> bool {
        self.loss || self.cut
    }

    fn describe(self) -> &'static str {
        match (self.loss, self.cut) {
            (true, true) => "data loss and cuts",
            (true, false) => "data loss only",
            (false, true) => "cuts only",
            (false, false) => "none",
        }
    }
}

impl Settings {
    fn from_env() -> Self {
        Self {
            viewers: vec![1, 2, 3, 4],
            admin: 5,
            initial: 8,
            created: 8,
            ops: env_number("MODEL_OPS").unwrap_or(90) as usize,
            admin_ops: (env_number("MODEL_OPS").unwrap_or(90) / 2) as usize,
            window: env_number("MODEL_WINDOW_MS").unwrap_or(2_500) as i64 * 1000,
            faults: Faults::from_env(),
        }
    }

    /// Highest id any operation names (one more than ever created: a user that never exists).
    fn max_id(&self) -> i64 {
        self.initial + self.created + 1
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn seeds_from_env() -> Vec<u64> {
    if let Ok(list) = std::env::var("MODEL_SEED") {
        let seeds: Vec<u64> = list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        if !seeds.is_empty() {
            return seeds;
        }
    }
    if let Some(n) = env_number("MODEL_SEEDS") {
        let base = env_number("MODEL_SEED_BASE").unwrap_or(1000);
        return (base..base + n).collect();
    }
    CI_SEEDS.to_vec()
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

// ---------------------------------------------------------------------------------------------------
// The model

/// One acknowledged (or in-flight: `end` None) change of a value.
#[derive(Clone, Debug)]
struct Change<T> {
    /// When the request was sent, and when its answer came (µs).
    start: i64,
    end: Option<i64>,
    value: T,
    /// Instance that took it (0: A, 1: B).
    via: usize,
    /// Taken by B while its Redis was cut (or just restored).
    partitioned: bool,
}

/// A value's history: its initial value and its changes, in order (one writer per value).
#[derive(Clone, Debug)]
struct History<T> {
    initial: T,
    changes: Vec<Change<T>>,
}

impl<T: Clone + PartialEq + std::fmt::Debug> History<T> {
    fn new(initial: T) -> Self {
        Self {
            initial,
            changes: Vec::new(),
        }
    }

    fn current(&self) -> &T {
        self.changes.last().map_or(&self.initial, |c| &c.value)
    }

    /// Until when value `i` (None: the initial one) may be current: the end of the next change.
    fn may_last_until(&self, next: usize) -> i64 {
        self.changes
            .get(next)
            .map_or(i64::MAX, |c| c.end.unwrap_or(i64::MAX))
    }

    /// The values that may have been current at some instant of [a, b], with the change that set each
    /// (None: the initial value).
    fn possible(&self, a: i64, b: i64) -> Vec<(Option<usize>, &T)> {
        let mut out = Vec::new();
        if self.may_last_until(0) >= a {
            out.push((None, &self.initial));
        }
        for (i, change) in self.changes.iter().enumerate() {
            if change.start <= b && self.may_last_until(i + 1) >= a {
                out.push((Some(i), &change.value));
            }
        }
        out
    }

    /// The value surely current throughout [a, b], if one is.
    fn sure(&self, a: i64, b: i64) -> Option<(Option<usize>, &T)> {
        let next_start = |i: usize| self.changes.get(i).map_or(i64::MAX, |c| c.start);
        if next_start(0) > b {
            return Some((None, &self.initial));
        }
        for (i, change) in self.changes.iter().enumerate() {
            if change.end.is_some_and(|e| e <= a) && next_start(i + 1) > b {
                return Some((Some(i), &change.value));
            }
        }
        None
    }

    fn describe(&self, t0: i64) -> String {
        let mut out = format!("initially {:?}", self.initial);
        for c in &self.changes {
            out.push_str(&format!(
                "; {:?} via {} in [{}, {}]{}",
                c.value,
                instance_name(c.via),
                rel(c.start, t0),
                c.end.map_or("…".to_owned(), |e| rel(e, t0)),
                if c.partitioned { " (partitioned)" } else { "" }
            ));
        }
        out
    }
}

fn rel(t: i64, t0: i64) -> String {
    format!("{:.3}s", (t - t0) as f64 / 1e6)
}

fn instance_name(i: usize) -> &'static str {
    if i == 0 { "A" } else { "B" }
}

/// A user's record as the model knows it: the handle, and whether the account is private.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    handle: String,
    private: bool,
}

/// What a pair history is about: an edge (follower, followee), a pending follow request (requester,
/// target) or a block (blocker, blocked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rel {
    Edge,
    Request,
    Block,
}

impl Rel {
    const ALL: [Rel; 3] = [Rel::Edge, Rel::Request, Rel::Block];

    /// The table that holds it, and its two id columns.
    fn table(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Edge => ("follows", "follower_id", "followee_id"),
            Self::Request => ("follow_requests", "requester_id", "target_id"),
            Self::Block => ("blocks", "blocker_id", "blocked_id"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Edge => "edge",
            Self::Request => "request",
            Self::Block => "block",
        }
    }
}

#[derive(Default)]
struct Model {
    /// Follow status per (follower, followee); absent: never followed.
    pairs: HashMap<(i64, i64), History<bool>>,
    /// Pending follow requests per (requester, target); absent: never asked.
    requests: HashMap<(i64, i64), History<bool>>,
    /// Blocks per (blocker, blocked); absent: never blocked.
    blocks: HashMap<(i64, i64), History<bool>>,
    /// Record per user id (None: no record).
    users: HashMap<i64, History<Option<Record>>>,
    /// When the last `upsertUser` of a user through an instance was answered.
    upserted_on: HashMap<(usize, i64), i64>,
    /// B's Redis cuts: (cut, restored + margin).
    cuts: Vec<(i64, Option<i64>)>,
    /// Handles given so far (to make new unique ones).
    handle_counter: u64,
}

impl Model {
    fn table(&self, rel: Rel) -> &HashMap<(i64, i64), History<bool>> {
        match rel {
            Rel::Edge => &self.pairs,
            Rel::Request => &self.requests,
            Rel::Block => &self.blocks,
        }
    }

    fn table_mut(&mut self, rel: Rel) -> &mut HashMap<(i64, i64), History<bool>> {
        match rel {
            Rel::Edge => &mut self.pairs,
            Rel::Request => &mut self.requests,
            Rel::Block => &mut self.blocks,
        }
    }

    /// The history of `pair` in `rel` (never set: false throughout).
    fn history(&self, rel: Rel, pair: (i64, i64)) -> History<bool> {
        self.table(rel)
            .get(&pair)
            .cloned()
            .unwrap_or_else(|| History::new(false))
    }

    fn now(&self, rel: Rel, pair: (i64, i64)) -> bool {
        self.table(rel).get(&pair).is_some_and(|h| *h.current())
    }

    fn pair(&self, pair: (i64, i64)) -> History<bool> {
        self.history(Rel::Edge, pair)
    }

    fn user(&self, id: i64) -> History<Option<Record>> {
        self.users
            .get(&id)
            .cloned()
            .unwrap_or_else(|| History::new(None))
    }

    /// Whether `id` is a private account now (as the last upsert, maybe in flight, set it).
    fn private_now(&self, id: i64) -> bool {
        self.user(id).current().as_ref().is_some_and(|r| r.private)
    }

    /// Whether a block stands between `a` and `b`, either way, now.
    fn blocked_either(&self, a: i64, b: i64) -> bool {
        self.now(Rel::Block, (a, b)) || self.now(Rel::Block, (b, a))
    }

    /// Whether a change taken by `via` in [start, end] may have missed Redis (B while cut).
    fn partitioned(&self, via: usize, start: i64, end: i64) -> bool {
        via == 1
            && self
                .cuts
                .iter()
                .any(|(cut, restored)| *cut <= end && restored.is_none_or(|r| r >= start))
    }

    /// Starts a change of `pair` in `rel` (in flight until `finish`).
    fn begin(&mut self, rel: Rel, pair: (i64, i64), value: bool, via: usize, start: i64) {
        self.table_mut(rel)
            .entry(pair)
            .or_insert_with(|| History::new(false))
            .changes
            .push(Change {
                start,
                end: None,
                value,
                via,
                partitioned: false,
            });
    }

    fn finish(&mut self, rel: Rel, pair: (i64, i64), end: i64) {
        let Some(last) = self
            .table(rel)
            .get(&pair)
            .and_then(|h| h.changes.last())
            .cloned()
        else {
            return;
        };
        let p = self.partitioned(last.via, last.start, end);
        if let Some(change) = self
            .table_mut(rel)
            .get_mut(&pair)
            .and_then(|h| h.changes.last_mut())
        {
            change.end = Some(end);
            change.partitioned = p;
        }
    }

    fn begin_user(&mut self, id: i64, record: Option<Record>, via: usize, start: i64) {
        self.users
            .entry(id)
            .or_insert_with(|| History::new(None))
            .changes
            .push(Change {
                start,
                end: None,
                value: record,
                via,
                partitioned: false,
            });
    }

    fn finish_user(&mut self, id: i64, via: usize, end: i64) {
        let start = self
            .users
            .get(&id)
            .and_then(|h| h.changes.last())
            .map_or(end, |c| c.start);
        let p = self.partitioned(via, start, end);
        if let Some(change) = self.users.get_mut(&id).and_then(|h| h.changes.last_mut()) {
            change.end = Some(end);
            change.partitioned = p;
        }
        self.upserted_on.insert((via, id), end);
    }

    /// Users whose record surely exists now (a follow of them must succeed).
    fn existing(&self, max_id: i64) -> Vec<i64> {
        let now = now_us();
        (1..=max_id)
            .filter(|id| {
                self.user(*id)
                    .sure(now, now)
                    .is_some_and(|(_, h)| h.is_some())
            })
            .collect()
    }

    /// Every handle any user had (for reads by handle).
    fn handles(&self) -> Vec<String> {
        self.users
            .values()
            .flat_map(|h| {
                std::iter::once(h.initial.clone()).chain(h.changes.iter().map(|c| c.value.clone()))
            })
            .flatten()
            .map(|r| r.handle)
            .collect()
    }

    /// When the cut that a change taken in [start, end] overlapped was healed (restore + margin);
    /// None while it lasts. A cut that began within the margin of that restore may have come before
    /// B could repair (under load, its probe can take most of the margin), so the heal is then that
    /// cut's own restore, and so on.
    fn heal(&self, start: i64, end: i64) -> Option<i64> {
        let mut healed = Some(i64::MIN);
        for (cut, restored) in &self.cuts {
            if *cut <= end && restored.is_none_or(|r| r >= start) {
                healed = healed.zip(*restored).map(|(h, r)| h.max(r));
            }
        }
        while let Some(h) = healed {
            match self
                .cuts
                .iter()
                .find(|(cut, restored)| *cut < h && restored.is_none_or(|r| r > h))
            {
                Some((_, restored)) => healed = *restored,
                None => break,
            }
        }
        healed
    }

    /// A history as instance `ctx.instance` may see it. A change B took while its Redis was cut reaches
    /// A's caches by no announcement: the design lets A show the old value until the partition heals
    /// (ARCHITECTURE.md, "Redis trouble": repaired by the consumer path), so on A such a change counts
    /// as in effect from its start until the heal. Not at rest: then everything must have converged.
    fn seen<T: Clone>(&self, history: &History<T>, ctx: Ctx) -> History<T> {
        let mut history = history.clone();
        if ctx.instance == 0 && !ctx.at_rest {
            for change in history.changes.iter_mut().filter(|c| c.partitioned) {
                let end = change.end.unwrap_or(i64::MAX);
                change.end = self.heal(change.start, end).map(|h| h.max(end));
            }
        }
        history
    }

    /// The records a read of user `id` in `ctx` may show (None: no user). Exact on the instance that
    /// took the last upsert; the window elsewhere.
    fn user_values(&self, id: i64, ctx: Ctx) -> Vec<Option<Record>> {
        let mut lower = ctx.a - ctx.window;
        if let Some(&acked) = self.upserted_on.get(&(ctx.instance, id))
            && acked <= ctx.a
        {
            lower = lower.max(acked);
        }
        self.seen(&self.user(id), ctx)
            .possible(lower, ctx.b)
            .into_iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The statuses a read of `pair` in `ctx` may show. `own`: asked by the follower, exact (unless the
    /// last change is partitioned).
    fn status_values(&self, pair: (i64, i64), ctx: Ctx, own: bool) -> Vec<bool> {
        let history = self.pair(pair);
        let partitioned = history.changes.last().is_some_and(|c| c.partitioned);
        let lower = if own && !partitioned {
            ctx.a
        } else {
            ctx.a - ctx.window
        };
        self.seen(&history, ctx)
            .possible(lower, ctx.b)
            .into_iter()
            .map(|(_, v)| *v)
            .collect()
    }

    /// The values a read of a request or block (PostgreSQL only: no window) in [a, b] may show.
    fn exact_values(&self, rel: Rel, pair: (i64, i64), ctx: Ctx) -> Vec<bool> {
        self.history(rel, pair)
            .possible(ctx.a, ctx.b)
            .into_iter()
            .map(|(_, v)| *v)
            .collect()
    }

    /// Whether the lists of `owner` may be hidden from, and may be shown to, `ctx`'s viewer, when the
    /// owner's record says private as one of `privates`: a private account's lists show to itself and
    /// its followers only (the viewer's own status: exact unless partitioned).
    fn visibility(&self, owner: i64, privates: &[bool], ctx: Ctx) -> (bool, bool) {
        let (mut hidden, mut shown) = (false, false);
        for &private in privates {
            if !private {
                shown = true;
                continue;
            }
            match ctx.viewer {
                None => hidden = true,
                Some(v) if v == owner => shown = true,
                Some(v) => {
                    let statuses = self.status_values((v, owner), ctx, true);
                    shown |= statuses.contains(&true);
                    hidden |= statuses.contains(&false);
                }
            }
        }
        (hidden, shown)
    }

    /// The pairs of `owner`'s list, as `ctx` may see them (None: as PostgreSQL has them).
    fn pairs_of(
        &self,
        kind: Kind,
        owner: i64,
        max_id: i64,
        ctx: Option<Ctx>,
    ) -> Vec<(i64, History<bool>)> {
        (1..=max_id)
            .filter(|o| *o != owner)
            .map(|other| {
                let history = self.pair(kind.pair(owner, other));
                let history = match ctx {
                    Some(ctx) => self.seen(&history, ctx),
                    None => history,
                };
                (other, history)
            })
            .collect()
    }

    /// The other ends of `owner`'s list of requests or blocks (PostgreSQL only), with their histories.
    fn consent_list(&self, rel: Rel, owner: i64, max_id: i64) -> Vec<(i64, History<bool>)> {
        (1..=max_id)
            .filter(|o| *o != owner)
            .map(|other| {
                let pair = match rel {
                    Rel::Request => (other, owner),
                    _ => (owner, other),
                };
                (other, self.history(rel, pair))
            })
            .collect()
    }
}

/// Bounds of a count over `histories` read in [lower, b]: the edges surely there throughout, and the
/// edges possibly there; widened by the pairs changed twice or more since `lower` (their deltas may be
/// applied out of order, briefly), when `widen`.
fn count_bounds<'a>(
    histories: impl Iterator<Item = &'a History<bool>>,
    lower: i64,
    b: i64,
    widen: bool,
) -> (i64, i64) {
    let (mut lo, mut hi, mut churn) = (0, 0, 0);
    for h in histories {
        if h.sure(lower, b).is_some_and(|(_, v)| *v) {
            lo += 1;
        }
        if h.possible(lower, b).iter().any(|(_, v)| **v) {
            hi += 1;
        }
        let recent = h
            .changes
            .iter()
            .filter(|c| c.end.is_none_or(|e| e >= lower))
            .count();
        if widen && recent >= 2 {
            churn += 1;
        }
    }
    ((lo - churn).max(0), hi + churn)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Followers,
    Following,
}

impl Kind {
    fn field(self) -> &'static str {
        match self {
            Self::Followers => "followers",
            Self::Following => "following",
        }
    }

    /// The pair of an edge of `owner`'s list whose other end is `other`.
    fn pair(self, owner: i64, other: i64) -> (i64, i64) {
        match self {
            Self::Followers => (other, owner),
            Self::Following => (owner, other),
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Queries: read parts, and the selection order check

/// One aliased root field of a read.
#[derive(Clone, Debug)]
enum Part {
    User {
        id: i64,
        fields: Vec<&'static str>,
    },
    ByHandle {
        handle: String,
        fields: Vec<&'static str>,
    },
    IsFollowing {
        a: i64,
        b: i64,
    },
    Relationships {
        user: i64,
        others: Vec<i64>,
        fields: Vec<&'static str>,
    },
    List {
        owner: i64,
        kind: Kind,
        first: i64,
        selection: String,
        /// `isPrivate` asked beside the list (before it: `Some(true)`, after: `Some(false)`).
        private: Option<bool>,
    },
    Known {
        owner: i64,
        first: i64,
        selection: String,
    },
    /// The viewer's blocks (`Query.blocking`; a viewer only).
    Blocking {
        first: i64,
        selection: String,
    },
    /// The requests pending to the viewer (`Query.followRequests`; a viewer only).
    Requests {
        first: i64,
        selection: String,
    },
}

impl Part {
    fn text(&self, alias: &str) -> String {
        match self {
            Self::User { id, fields } => {
                format!("{alias}: user(id: \"{id}\") {{ {} }}", fields.join(" "))
            }
            Self::ByHandle { handle, fields } => format!(
                "{alias}: userByHandle(handle: \"{handle}\") {{ {} }}",
                fields.join(" ")
            ),
            Self::IsFollowing { a, b } => {
                format!("{alias}: isFollowing(followerId: \"{a}\", followeeId: \"{b}\")")
            }
            Self::Relationships {
                user,
                others,
                fields,
            } => format!(
                "{alias}: relationships(userId: \"{user}\", otherIds: [{}]) {{ {} }}",
                ids_literal(others),
                fields.join(" ")
            ),
            Self::List {
                owner,
                kind,
                first,
                selection,
                private,
            } => {
                let list = format!("{}(first: {first}) {{ {selection} }}", kind.field());
                let inner = match private {
                    Some(true) => format!("isPrivate {list}"),
                    Some(false) => format!("{list} isPrivate"),
                    None => list,
                };
                format!("{alias}: user(id: \"{owner}\") {{ {inner} }}")
            }
            Self::Known {
                owner,
                first,
                selection,
            } => format!(
                "{alias}: user(id: \"{owner}\") {{ knownFollowers(first: {first}) {{ {selection} }} }}"
            ),
            Self::Blocking { first, selection } => {
                format!("{alias}: blocking(first: {first}) {{ {selection} }}")
            }
            Self::Requests { first, selection } => {
                format!("{alias}: followRequests(first: {first}) {{ {selection} }}")
            }
        }
    }
}

fn ids_literal(ids: &[i64]) -> String {
    ids.iter()
        .map(|id| format!("\"{id}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A random non-empty subset of `items` in random order (each kept with probability `keep`).
fn subset(rng: &mut StdRng, items: &[&'static str], keep: f64) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = items
        .iter()
        .copied()
        .filter(|_| rng.random_bool(keep))
        .collect();
    if out.is_empty() {
        out.push(*items.choose(rng).expect("non-empty"));
    }
    out.shuffle(rng);
    out
}

fn shuffled(rng: &mut StdRng, items: &[&str]) -> String {
    let mut items: Vec<&str> = items.to_vec();
    items.shuffle(rng);
    items.join(" ")
}

/// A connection selection: edges (`time` — followedAt, blockedAt or requestedAt —, node id, maybe
/// handle), totalCount, pageInfo, in a random order and subset.
fn connection_selection(rng: &mut StdRng, handles: bool, time: &str) -> String {
    let node = if handles && rng.random_bool(0.7) {
        format!("node {{ {} }}", shuffled(rng, &["id", "handle"]))
    } else {
        "node { id }".to_owned()
    };
    let edges = format!("edges {{ {} }}", shuffled(rng, &[time, &node]));
    let page_info = format!(
        "pageInfo {{ {} }}",
        shuffled(rng, &["hasNextPage", "endCursor"])
    );
    let mut parts: Vec<String> = Vec::new();
    if rng.random_bool(0.9) {
        parts.push(edges);
    }
    if rng.random_bool(0.6) {
        parts.push("totalCount".to_owned());
    }
    if rng.random_bool(0.5) || parts.is_empty() {
        parts.push(page_info);
    }
    parts.shuffle(rng);
    parts.join(" ")
}

/// One response key with the keys of its selection, in the order asked.
#[derive(Debug)]
struct Selected {
    key: String,
    children: Vec<Selected>,
}

/// The selection tree of a document's operation (names, aliases, arguments and nested sets; no
/// fragments: the test's queries have none).
fn selection_of(query: &str) -> Vec<Selected> {
    let chars: Vec<char> = query.chars().collect();
    let mut i = 0;
    let mut depth = 0;
    while i < chars.len() {
        match chars[i] {
            '(' => depth += 1,
            ')' => depth -= 1,
            '{' if depth == 0 => break,
            _ => {}
        }
        i += 1;
    }
    if i >= chars.len() {
        return Vec::new();
    }
    selection_set(&chars, &mut i)
}

fn skip_blank(c: &[char], i: &mut usize) {
    while *i < c.len() && (c[*i].is_whitespace() || c[*i] == ',') {
        *i += 1;
    }
}

fn name(c: &[char], i: &mut usize) -> String {
    let start = *i;
    while *i < c.len() && (c[*i].is_alphanumeric() || c[*i] == '_') {
        *i += 1;
    }
    c[start..*i].iter().collect()
}

fn skip_arguments(c: &[char], i: &mut usize) {
    let mut depth = 0;
    let mut in_string = false;
    while *i < c.len() {
        let ch = c[*i];
        *i += 1;
        if in_string {
            if ch == '\\' {
                *i += 1;
            } else if ch == '"' {
                in_string = false;
            }
            continue;
        }
        match ch {
            '"' => in_string = true,
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
            _ => {}
        }
    }
}

fn selection_set(c: &[char], i: &mut usize) -> Vec<Selected> {
    *i += 1; // '{'
    let mut out = Vec::new();
    loop {
        skip_blank(c, i);
        if *i >= c.len() {
            return out;
        }
        if c[*i] == '}' {
            *i += 1;
            return out;
        }
        let key = name(c, i);
        if key.is_empty() {
            *i += 1; // not a name: skip the character (the test's documents have none)
            continue;
        }
        skip_blank(c, i);
        if *i < c.len() && c[*i] == ':' {
            *i += 1;
            skip_blank(c, i);
            let _field = name(c, i);
            skip_blank(c, i);
        }
        if *i < c.len() && c[*i] == '(' {
            skip_arguments(c, i);
            skip_blank(c, i);
        }
        let children = if *i < c.len() && c[*i] == '{' {
            selection_set(c, i)
        } else {
            Vec::new()
        };
        out.push(Selected { key, children });
    }
}

/// Whether every object of `value` has the keys of `selection`, in that order.
fn check_order(value: &Value, selection: &[Selected], path: &str) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            let got: Vec<&str> = map.keys().map(String::as_str).collect();
            let asked: Vec<&str> = selection.iter().map(|s| s.key.as_str()).collect();
            if got != asked {
                return Err(format!(
                    "{}: fields came as {got:?}, the query asked {asked:?}",
                    if path.is_empty() { "data" } else { path }
                ));
            }
            for s in selection {
                if !s.children.is_empty() {
                    check_order(&map[&s.key], &s.children, &format!("{path}.{}", s.key))?;
                }
            }
            Ok(())
        }
        Value::Array(items) => {
            for (n, item) in items.iter().enumerate() {
                check_order(item, selection, &format!("{path}[{n}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------------
// One seed's run

#[derive(Clone, Debug)]
struct Failure {
    seed: u64,
    category: String,
    message: String,
    tail: Vec<String>,
    /// The faults so far (time since start and what).
    faults: Vec<String>,
}

/// How many log lines a failure keeps.
const TAIL: usize = 30;

/// The test's own locks, so that the model knows the state each write starts from: every write of a
/// pair's edges, requests or blocks (either way) holds the pair's mutex, and reads its two users' locks;
/// a change of privacy (whose turn to public approves the requests to the user) holds the user's lock
/// for writing. Writes of different pairs, and every read, still run concurrently.
struct Locks {
    users: HashMap<i64, tokio::sync::RwLock<()>>,
    pairs: HashMap<(i64, i64), tokio::sync::Mutex<()>>,
}

/// The locks of a write of some pairs (held until dropped).
struct PairLocks<'a> {
    _users: Vec<tokio::sync::RwLockReadGuard<'a, ()>>,
    _pairs: Vec<tokio::sync::MutexGuard<'a, ()>>,
}

impl Locks {
    fn new(max_id: i64) -> Self {
        let users = (1..=max_id)
            .map(|id| (id, tokio::sync::RwLock::new(())))
            .collect();
        let pairs = (1..=max_id)
            .flat_map(|a| (a + 1..=max_id).map(move |b| ((a, b), tokio::sync::Mutex::new(()))))
            .collect();
        Self { users, pairs }
    }

    /// The locks of writes between `me` and each of `others`: the users' read locks, then the pairs'
    /// mutexes, each in order (a privacy change holds one user lock and nothing else: no deadlock).
    async fn pairs(&self, me: i64, others: &[i64]) -> PairLocks<'_> {
        let mut users: Vec<i64> = others.iter().copied().chain([me]).collect();
        users.sort_unstable();
        users.dedup();
        let mut guards = Vec::new();
        for id in users {
            if let Some(lock) = self.users.get(&id) {
                guards.push(lock.read().await);
            }
        }
        let mut pairs: Vec<(i64, i64)> = others
            .iter()
            .filter(|o| **o != me)
            .map(|&o| (o.min(me), o.max(me)))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut held = Vec::new();
        for pair in pairs {
            if let Some(lock) = self.pairs.get(&pair) {
                held.push(lock.lock().await);
            }
        }
        PairLocks {
            _users: guards,
            _pairs: held,
        }
    }

    /// The lock of a change of `id`'s privacy.
    async fn privacy(&self, id: i64) -> Option<tokio::sync::RwLockWriteGuard<'_, ()>> {
        match self.users.get(&id) {
            Some(lock) => Some(lock.write().await),
            None => None,
        }
    }
}

struct Run {
    seed: u64,
    settings: Settings,
    apps: [App; 2],
    database: String,
    prefix: String,
    model: Mutex<Model>,
    locks: Locks,
    log: Mutex<Vec<String>>,
    failures: Mutex<Vec<Failure>>,
    faults: Mutex<Vec<String>>,
    /// How many of each kind of operation and outcome the run had (printed per seed).
    tally: Mutex<std::collections::BTreeMap<&'static str, usize>>,
    t0: i64,
}

/// When and where a read ran.
#[derive(Clone, Copy, Debug)]
struct Ctx {
    instance: usize,
    viewer: Option<i64>,
    a: i64,
    b: i64,
    window: i64,
    /// At quiescence: every change is expected everywhere, partitioned or not.
    at_rest: bool,
}

impl Ctx {
    /// For what is read from PostgreSQL uncached and may come from a read replica (`userByHandle`,
    /// `knownFollowers`): with `TEST_DATABASE_REPLICA_URLS` set, the read may show the state of up to the
    /// test apps' replica lag bound (250 ms, see `support/app.rs`) before it began.
    fn may_lag(self) -> Self {
        if self.at_rest || std::env::var_os("TEST_DATABASE_REPLICA_URLS").is_none() {
            return self;
        }
        Self {
            a: self.a - REPLICA_LAG_US,
            ..self
        }
    }
}

/// The test apps' replica lag bound, in the model's microseconds.
const REPLICA_LAG_US: i64 = 250_000;

type Checked = Result<(), (&'static str, String)>;

impl Run {
    fn note(&self, client: &str, instance: usize, text: String) {
        let line = format!(
            "{} {client}@{} {text}",
            rel(now_us(), self.t0),
            instance_name(instance)
        );
        if let Ok(mut log) = self.log.lock() {
            log.push(line);
        }
    }

    /// Notes a fault in the log and in the faults list.
    fn fault(&self, instance: usize, text: &str) {
        if let Ok(mut faults) = self.faults.lock() {
            faults.push(format!("{} {text}", rel(now_us(), self.t0)));
        }
        self.note("faults", instance, text.to_owned());
    }

    fn fail(&self, category: &'static str, message: String) {
        let tail = self
            .log
            .lock()
            .map(|log| log[log.len().saturating_sub(TAIL)..].to_vec())
            .unwrap_or_default();
        if let Ok(mut log) = self.log.lock() {
            log.push(format!("{} FAILURE {category}", rel(now_us(), self.t0)));
        }
        let faults = self.faults.lock().map(|f| f.clone()).unwrap_or_default();
        if let Ok(mut failures) = self.failures.lock() {
            failures.push(Failure {
                seed: self.seed,
                category: category.to_owned(),
                message,
                tail,
                faults,
            });
        }
    }

    /// Counts one `what` in the run's tally.
    fn tally(&self, what: &'static str) {
        if let Ok(mut tally) = self.tally.lock() {
            *tally.entry(what).or_default() += 1;
        }
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().expect("model lock")
    }

    /// Runs one operation; returns the response and when it was sent and answered.
    async fn send(
        &self,
        instance: usize,
        viewer: Option<Viewer>,
        query: &str,
    ) -> (Value, i64, i64) {
        let a = now_us();
        let answered = tokio::time::timeout(
            Duration::from_secs(10),
            support::run_as(&self.apps[instance], viewer, query, json!({})),
        )
        .await;
        let b = now_us();
        let response = answered.unwrap_or_else(|_| {
            json!({ "data": null, "errors": [{ "message": "no answer within 10 s", "extensions": { "code": "TEST_TIMEOUT" } }] })
        });
        (response, a, b)
    }

    /// Sends `query` as `as_viewer`, logs it under `client` (`label` before the query) and returns the
    /// response with the context its checks need.
    async fn exchange(
        &self,
        client: &str,
        instance: usize,
        as_viewer: Option<Viewer>,
        label: &str,
        query: &str,
    ) -> (Value, Ctx) {
        let (response, a, b) = self.send(instance, as_viewer, query).await;
        self.note(
            client,
            instance,
            format!("{label}{query} → {}", truncate(&response.to_string(), 400)),
        );
        let ctx = Ctx {
            instance,
            viewer: as_viewer.map(|v| v.user_id),
            a,
            b,
            window: self.settings.window,
            at_rest: false,
        };
        (response, ctx)
    }

    /// Checks what every response must satisfy: no INTERNAL_SERVER_ERROR, no error but `expected`,
    /// fields in the order asked. Returns the data when there was no error.
    fn common_checks<'v>(
        &self,
        query: &str,
        response: &'v Value,
        expected: Option<&str>,
        ctx: Ctx,
    ) -> Option<&'v Value> {
        let errors = response["errors"].as_array().cloned().unwrap_or_default();
        let where_ = format!(
            "on {} as {:?}: {query}",
            instance_name(ctx.instance),
            ctx.viewer
        );
        for error in &errors {
            let code = error["extensions"]["code"].as_str().unwrap_or("");
            if code == "INTERNAL_SERVER_ERROR" {
                self.fail(
                    "internal_error",
                    format!("INTERNAL_SERVER_ERROR {where_}\nresponse: {response}"),
                );
            } else if Some(code) != expected {
                self.fail(
                    "unexpected_error",
                    format!("unexpected error {code:?} {where_}\nresponse: {response}"),
                );
            }
        }
        if let Some(code) = expected
            && !errors
                .iter()
                .any(|e| e["extensions"]["code"].as_str() == Some(code))
        {
            self.fail(
                "mutation",
                format!("expected a {code} error {where_}\nresponse: {response}"),
            );
        }
        if !errors.is_empty() {
            return None;
        }
        let data = &response["data"];
        if let Err(message) = check_order(data, &selection_of(query), "") {
            self.fail(
                "field_order",
                format!("{message}\n{where_}\nresponse: {response}"),
            );
        }
        Some(data)
    }

    /// Which of `pairs` hold in `rel` in PostgreSQL.
    async fn rel_in_db(&self, rel: Rel, pairs: &[(i64, i64)]) -> Option<HashSet<(i64, i64)>> {
        if pairs.is_empty() {
            return Some(HashSet::new());
        }
        let (table, a, b) = rel.table();
        let values = pairs
            .iter()
            .map(|(x, y)| format!("({x}, {y})"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sql(
            &self.database,
            &format!("SELECT {a}, {b} FROM {table} WHERE ({a}, {b}) IN ({values})"),
        )
        .await?;
        Some(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Both ways of each pair of users (`me` with each of `others`, oneself left out).
    fn both_ways(me: i64, others: &[i64]) -> Vec<(i64, i64)> {
        let mut out: Vec<(i64, i64)> = others
            .iter()
            .filter(|o| **o != me)
            .flat_map(|&o| [(me, o), (o, me)])
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Where PostgreSQL and the model (now) disagree on `pairs`, described; empty when they agree.
    /// Only for pairs whose locks the caller holds.
    async fn disagreements(&self, pairs: &[(i64, i64)]) -> Vec<String> {
        let mut out = Vec::new();
        for rel in Rel::ALL {
            let Some(truth) = self.rel_in_db(rel, pairs).await else {
                continue;
            };
            let model = self.model();
            for pair in pairs {
                let expected = model.now(rel, *pair);
                if truth.contains(pair) != expected {
                    out.push(format!(
                        "{} {} → {}: PostgreSQL has {}, the model {}",
                        rel.name(),
                        pair.0,
                        pair.1,
                        truth.contains(pair),
                        model.history(rel, *pair).describe(self.t0)
                    ));
                }
            }
        }
        out
    }

    /// After a write answered unexpectedly: the model takes `pairs` (edges, requests, blocks) from
    /// PostgreSQL (changes in flight end now, or are dropped when they did not happen; others are added
    /// as [start, now]). Only for pairs whose locks the caller holds.
    async fn resync(&self, pairs: &[(i64, i64)], instance: usize, start: i64) {
        for rel in Rel::ALL {
            let Some(truth) = self.rel_in_db(rel, pairs).await else {
                continue;
            };
            let now = now_us();
            let mut model = self.model();
            for &pair in pairs {
                let truth = truth.contains(&pair);
                let pending = model
                    .table(rel)
                    .get(&pair)
                    .and_then(|h| h.changes.last())
                    .is_some_and(|c| c.end.is_none());
                if pending {
                    if model.now(rel, pair) == truth {
                        model.finish(rel, pair, now);
                    } else if let Some(h) = model.table_mut(rel).get_mut(&pair) {
                        h.changes.pop();
                    }
                }
                if model.now(rel, pair) != truth {
                    model.begin(rel, pair, truth, instance, start);
                    model.finish(rel, pair, now);
                }
            }
        }
    }

    // ---- checks of read parts ----

    fn check_part(&self, part: &Part, value: &Value, ctx: Ctx) -> Checked {
        let model = self.model();
        let max_id = self.settings.max_id();
        let t0 = self.t0;
        match part {
            Part::User { id, fields } => {
                if !self.check_user_value(&model, *id, value, ctx)? {
                    return Ok(());
                }
                for field in fields {
                    let got = &value[*field];
                    match *field {
                        "id" => expect_eq("user", got, &json!(id.to_string()))?,
                        "followerCount" | "followingCount" => {
                            let kind = if *field == "followerCount" {
                                Kind::Followers
                            } else {
                                Kind::Following
                            };
                            let pairs = model.pairs_of(kind, *id, max_id, Some(ctx));
                            let (lo, hi) = count_bounds(
                                pairs.iter().map(|(_, h)| h),
                                ctx.a - ctx.window,
                                ctx.b,
                                ctx.window > 0,
                            );
                            let n = got.as_i64().unwrap_or(-1);
                            if n < lo || n > hi {
                                return Err((
                                    "count",
                                    format!(
                                        "user {id} {field} = {n} on {} (answered in [{}, {}]), the model allows {lo}..={hi} within the window\n{}",
                                        instance_name(ctx.instance),
                                        rel(ctx.a, t0),
                                        rel(ctx.b, t0),
                                        describe_pairs(&pairs, kind, *id, t0)
                                    ),
                                ));
                            }
                        }
                        "viewerIsFollowing" | "followsViewer" => {
                            let expected = match ctx.viewer {
                                Some(v) if v != *id => {
                                    let (pair, own) = if *field == "viewerIsFollowing" {
                                        ((v, *id), true)
                                    } else {
                                        ((*id, v), false)
                                    };
                                    Some((pair, own))
                                }
                                _ => None,
                            };
                            let got = got.as_bool();
                            match expected {
                                None => {
                                    if got != Some(false) {
                                        return Err((
                                            "status",
                                            format!("user {id} {field} = {got:?}, expected false"),
                                        ));
                                    }
                                }
                                Some((pair, own)) => {
                                    check_status(&model, pair, got, ctx, own, field, t0)?
                                }
                            }
                        }
                        "viewerHasRequested" | "blocking" => {
                            let rel = if *field == "blocking" {
                                Rel::Block
                            } else {
                                Rel::Request
                            };
                            let pair = ctx.viewer.filter(|v| v != id).map(|v| (v, *id));
                            check_exact(&model, rel, pair, got, ctx, field, t0)?;
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            Part::ByHandle { handle, fields } => {
                // PostgreSQL only: no window (but a read replica's lag, when the tests run with one).
                let ctx = ctx.may_lag();
                let matches = |h: &Option<Record>| {
                    h.as_ref()
                        .is_some_and(|r| r.handle.eq_ignore_ascii_case(handle.as_str()))
                };
                if value.is_null() {
                    for id in 1..=max_id {
                        if model
                            .user(id)
                            .sure(ctx.a, ctx.b)
                            .is_some_and(|(_, h)| matches(h))
                        {
                            return Err((
                                "by_handle",
                                format!(
                                    "userByHandle({handle:?}) = null, but user {id} had that handle throughout: {}",
                                    model.user(id).describe(t0)
                                ),
                            ));
                        }
                    }
                    return Ok(());
                }
                let id: i64 = value["id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(-1);
                let history = model.user(id);
                let possible: Vec<Record> = history
                    .possible(ctx.a, ctx.b)
                    .into_iter()
                    .map(|(_, h)| h.clone())
                    .filter(matches)
                    .flatten()
                    .collect();
                let fits = |r: &Record| {
                    (!fields.contains(&"handle") || value["handle"].as_str() == Some(&r.handle))
                        && (!fields.contains(&"isPrivate")
                            || value["isPrivate"].as_bool() == Some(r.private))
                };
                if !possible.iter().any(fits) {
                    return Err((
                        "by_handle",
                        format!(
                            "userByHandle({handle:?}) = {value}, model of user {id}: {}",
                            history.describe(t0)
                        ),
                    ));
                }
                Ok(())
            }
            Part::IsFollowing { a, b } => {
                if a == b {
                    return expect_eq("isFollowing", value, &json!(false));
                }
                let own = ctx.viewer == Some(*a);
                check_status(
                    &model,
                    (*a, *b),
                    value.as_bool(),
                    ctx,
                    own,
                    "isFollowing",
                    t0,
                )
            }
            Part::Relationships {
                user,
                others,
                fields,
            } => {
                let items = value.as_array().cloned().unwrap_or_default();
                if items.len() != others.len() {
                    return Err((
                        "status",
                        format!("relationships of {user} with {others:?}: {value}"),
                    ));
                }
                for (item, other) in items.iter().zip(others) {
                    for field in fields {
                        let got = &item[*field];
                        match *field {
                            "userId" => expect_eq("relationships", got, &json!(user.to_string()))?,
                            "otherId" => {
                                expect_eq("relationships", got, &json!(other.to_string()))?
                            }
                            "following" | "followedBy" => {
                                let pair = if *field == "following" {
                                    (*user, *other)
                                } else {
                                    (*other, *user)
                                };
                                if user == other {
                                    expect_eq("relationships", got, &json!(false))?;
                                    continue;
                                }
                                let own = ctx.viewer == Some(pair.0);
                                check_status(&model, pair, got.as_bool(), ctx, own, field, t0)?;
                            }
                            "requested" | "requestedBy" | "blocking" => {
                                let (rel, pair, shown) =
                                    relationship_consent(field, *user, *other, ctx.viewer);
                                if !shown {
                                    if !got.is_null() {
                                        return Err((
                                            if rel == Rel::Block {
                                                "block"
                                            } else {
                                                "request"
                                            },
                                            format!(
                                                "relationships({user}, {other}).{field} = {got} as {:?}: expected null (not the viewer's to see)",
                                                ctx.viewer
                                            ),
                                        ));
                                    }
                                    continue;
                                }
                                let what = format!("relationships({user}, {other}).{field}");
                                check_exact(&model, rel, Some(pair), got, ctx, &what, t0)?;
                            }
                            _ => {}
                        }
                    }
                }
                Ok(())
            }
            Part::List {
                owner, kind, first, ..
            } => {
                if !self.check_user_value(&model, *owner, value, ctx)? {
                    return Ok(());
                }
                let connection = &value[kind.field()];
                let privates = privates_of(&model, *owner, value, ctx);
                let (may_hide, may_show) = model.visibility(*owner, &privates, ctx);
                if may_hide {
                    self.tally(if may_show {
                        "list reads, privacy uncertain"
                    } else {
                        "list reads, hidden"
                    });
                }
                let candidates = model.pairs_of(*kind, *owner, max_id, Some(ctx));
                let lower = ctx.a - ctx.window;
                check_connection(
                    &model,
                    &ListCheck {
                        what: format!("{} of {owner}", kind.field()),
                        category: "list",
                        time: "followedAt",
                        kind: *kind,
                        owner: *owner,
                        first: *first,
                        candidates: &candidates,
                        optional: &HashSet::new(),
                        lower,
                        b: ctx.b,
                        widen: ctx.window > 0,
                        exact: None,
                        may_hide,
                        may_show,
                    },
                    connection,
                    ctx,
                    t0,
                )
            }
            Part::Known { owner, first, .. } => {
                if !self.check_user_value(&model, *owner, value, ctx)? {
                    return Ok(());
                }
                let connection = &value["knownFollowers"];
                let privates = privates_of(&model, *owner, value, ctx);
                let (may_hide, may_show) = model.visibility(*owner, &privates, ctx);
                // To whom may not see the owner's lists: no entries and a zero count.
                let empty = connection["edges"].as_array().is_none_or(Vec::is_empty)
                    && connection
                        .get("totalCount")
                        .is_none_or(|n| n.as_i64() == Some(0));
                if ctx.viewer.is_some() && may_hide && empty {
                    self.tally("knownFollowers reads, hidden");
                    return Ok(());
                }
                if ctx.viewer.is_some() && !may_show {
                    return Err((
                        "visibility",
                        format!(
                            "knownFollowers of {owner} for {:?} on {}: {connection}, but the viewer may not see the lists of that private account; record: {}",
                            ctx.viewer,
                            instance_name(ctx.instance),
                            model.user(*owner).describe(t0)
                        ),
                    ));
                }
                let ctx = ctx.may_lag();
                // Followers of owner whom the viewer follows; PostgreSQL only: no window. A follower
                // the viewer followed only at some instants of [a, b] may be there or not.
                let (candidates, optional): (Vec<(i64, History<bool>)>, HashSet<i64>) =
                    match ctx.viewer {
                        None => (Vec::new(), HashSet::new()),
                        Some(viewer) => {
                            let mut optional = HashSet::new();
                            let candidates = model
                                .pairs_of(Kind::Followers, *owner, max_id, None)
                                .into_iter()
                                .filter(|(f, _)| *f != viewer)
                                .filter(|(f, _)| {
                                    let mine = model.pair((viewer, *f));
                                    let sure = mine.sure(ctx.a, ctx.b).is_some_and(|(_, v)| *v);
                                    if !sure {
                                        optional.insert(*f);
                                    }
                                    mine.possible(ctx.a, ctx.b).iter().any(|(_, v)| **v)
                                })
                                .collect();
                            (candidates, optional)
                        }
                    };
                check_connection(
                    &model,
                    &ListCheck {
                        what: format!("knownFollowers of {owner} for {:?}", ctx.viewer),
                        category: "list",
                        time: "followedAt",
                        kind: Kind::Followers,
                        owner: *owner,
                        first: *first,
                        candidates: &candidates,
                        optional: &optional,
                        lower: ctx.a,
                        b: ctx.b,
                        widen: false,
                        exact: None,
                        may_hide: false,
                        may_show: true,
                    },
                    connection,
                    ctx,
                    t0,
                )
            }
            Part::Blocking { first, .. } | Part::Requests { first, .. } => {
                let Some(viewer) = ctx.viewer else {
                    return Ok(());
                };
                let (rel, kind, field, time, category) = match part {
                    Part::Blocking { .. } => (
                        Rel::Block,
                        Kind::Following,
                        "blocking",
                        "blockedAt",
                        "block_list",
                    ),
                    _ => (
                        Rel::Request,
                        Kind::Followers,
                        "followRequests",
                        "requestedAt",
                        "request_list",
                    ),
                };
                let candidates = model.consent_list(rel, viewer, max_id);
                // PostgreSQL only: no window.
                check_connection(
                    &model,
                    &ListCheck {
                        what: format!("{field} of {viewer}"),
                        category,
                        time,
                        kind,
                        owner: viewer,
                        first: *first,
                        candidates: &candidates,
                        optional: &HashSet::new(),
                        lower: ctx.a,
                        b: ctx.b,
                        widen: false,
                        exact: None,
                        may_hide: false,
                        may_show: true,
                    },
                    value,
                    ctx,
                    t0,
                )
            }
        }
    }

    /// Checks a user field (null or an object, with its `handle` and `isPrivate` when asked) against
    /// the model; returns whether it is an object (so that its fields are checked next).
    fn check_user_value(
        &self,
        model: &Model,
        id: i64,
        value: &Value,
        ctx: Ctx,
    ) -> Result<bool, (&'static str, String)> {
        let possible = model.user_values(id, ctx);
        let fail = |category: &'static str, what: String| {
            Err((
                category,
                format!(
                    "user {id} on {}: {what}; the model allows {possible:?}; history: {}",
                    instance_name(ctx.instance),
                    model.user(id).describe(self.t0)
                ),
            ))
        };
        if value.is_null() {
            if !possible.contains(&None) {
                return fail("stale_user", "null".to_owned());
            }
            return Ok(false);
        }
        if !possible.iter().any(Option::is_some) {
            return fail("stale_user", format!("{value}"));
        }
        let handle = value.get("handle").map(|h| h.as_str().map(str::to_owned));
        let private = value.get("isPrivate").map(Value::as_bool);
        let handle_fits = |r: &Record| {
            handle
                .as_ref()
                .is_none_or(|h| h.as_deref() == Some(r.handle.as_str()))
        };
        let private_fits = |r: &Record| private.is_none_or(|p| p == Some(r.private));
        let records: Vec<&Record> = possible.iter().flatten().collect();
        if !records.iter().any(|r| handle_fits(r) && private_fits(r)) {
            let category = if records.iter().any(|r| handle_fits(r)) {
                "stale_privacy"
            } else {
                "stale_user"
            };
            return fail(
                category,
                format!("handle {handle:?}, isPrivate {private:?}"),
            );
        }
        Ok(true)
    }
}

/// Which request or block a `relationships` field is about, and whether `viewer` may see it: requests
/// show to their two users, blocks to the blocker (`userId`) only; never for oneself.
fn relationship_consent(
    field: &str,
    user: i64,
    other: i64,
    viewer: Option<i64>,
) -> (Rel, (i64, i64), bool) {
    let concerned = viewer.is_some_and(|v| v == user || v == other) && user != other;
    match field {
        "requested" => (Rel::Request, (user, other), concerned),
        "requestedBy" => (Rel::Request, (other, user), concerned),
        _ => (
            Rel::Block,
            (user, other),
            viewer == Some(user) && user != other,
        ),
    }
}

/// The privacy values the owner's record may have in a list read: the one the response shows beside
/// the list (the same record decided the list's visibility), else those the model allows.
fn privates_of(model: &Model, owner: i64, value: &Value, ctx: Ctx) -> Vec<bool> {
    match value.get("isPrivate").and_then(Value::as_bool) {
        Some(private) => vec![private],
        None => model
            .user_values(owner, ctx)
            .into_iter()
            .flatten()
            .map(|r| r.private)
            .collect(),
    }
}

/// Checks a request or block read (PostgreSQL only: any value of [a, b]); `pair` None: the field must
/// be false (no viewer, or the viewer itself).
fn check_exact(
    model: &Model,
    which: Rel,
    pair: Option<(i64, i64)>,
    got: &Value,
    ctx: Ctx,
    what: &str,
    t0: i64,
) -> Checked {
    let category = if which == Rel::Block {
        "block"
    } else {
        "request"
    };
    let Some(pair) = pair else {
        if got.as_bool() == Some(false) {
            return Ok(());
        }
        return Err((
            category,
            format!("{what} = {got} as {:?}, expected false", ctx.viewer),
        ));
    };
    let allowed = model.exact_values(which, pair, ctx);
    match got.as_bool() {
        Some(v) if allowed.contains(&v) => Ok(()),
        _ => Err((
            category,
            format!(
                "{what} ({} {} → {}) = {got} on {} (asked by {:?}, answered in [{}, {}]); the model allows {allowed:?} (PostgreSQL: exact); history: {}",
                which.name(),
                pair.0,
                pair.1,
                instance_name(ctx.instance),
                ctx.viewer,
                rel(ctx.a, t0),
                rel(ctx.b, t0),
                model.history(which, pair).describe(t0)
            ),
        )),
    }
}

fn expect_eq(what: &'static str, got: &Value, expected: &Value) -> Checked {
    if got == expected {
        Ok(())
    } else {
        Err(("status", format!("{what}: got {got}, expected {expected}")))
    }
}

fn check_status(
    model: &Model,
    pair: (i64, i64),
    got: Option<bool>,
    ctx: Ctx,
    own: bool,
    what: &str,
    t0: i64,
) -> Checked {
    let allowed = model.status_values(pair, ctx, own);
    match got {
        Some(got) if allowed.contains(&got) => Ok(()),
        _ => Err((
            if own { "own_status" } else { "status" },
            format!(
                "{what} {} → {} = {got:?} on {} (asked by {:?}, answered in [{}, {}]); the model allows {allowed:?}{}; history: {}",
                pair.0,
                pair.1,
                instance_name(ctx.instance),
                ctx.viewer,
                rel(ctx.a, t0),
                rel(ctx.b, t0),
                if own {
                    " (the viewer's own pair: exact)"
                } else {
                    " within the window"
                },
                model.pair(pair).describe(t0)
            ),
        )),
    }
}

fn describe_pairs(pairs: &[(i64, History<bool>)], kind: Kind, owner: i64, t0: i64) -> String {
    pairs
        .iter()
        .filter(|(_, h)| !h.changes.is_empty())
        .map(|(other, h)| {
            let (a, b) = kind.pair(owner, *other);
            format!("  {a} → {b}: {}", h.describe(t0))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a list answer is checked against.
struct ListCheck<'a> {
    what: String,
    /// The category of a wrong answer.
    category: &'static str,
    /// The edge's time field (`followedAt`, `blockedAt`, `requestedAt`).
    time: &'static str,
    kind: Kind,
    owner: i64,
    first: i64,
    /// Every other end of the list that may be in it, with its pair's history.
    candidates: &'a [(i64, History<bool>)],
    /// Candidates that may be missing even when their pair held throughout (and count as maybe there).
    optional: &'a HashSet<i64>,
    /// The answer may show any state of [lower, b].
    lower: i64,
    b: i64,
    /// Counts may lag (the stored counts): widen their bounds.
    widen: bool,
    /// At quiescence: each edge's `created_at` from PostgreSQL, which the answer must show exactly.
    exact: Option<&'a HashMap<(i64, i64), i64>>,
    /// The list may be hidden from this viewer (a private account's): no entries, the count still real.
    may_hide: bool,
    /// The list may be shown to this viewer (else any entry is wrong).
    may_show: bool,
}

fn check_connection(
    model: &Model,
    check: &ListCheck<'_>,
    connection: &Value,
    ctx: Ctx,
    t0: i64,
) -> Checked {
    let err = |message: String| {
        Err((
            check.category,
            format!(
                "{} (first {}) on {} answered in [{}, {}], model state from {}: {message}\nanswer: {connection}\nmodel:\n{}",
                check.what,
                check.first,
                instance_name(ctx.instance),
                rel(ctx.a, t0),
                rel(ctx.b, t0),
                rel(check.lower, t0),
                describe_pairs(check.candidates, check.kind, check.owner, t0)
            ),
        ))
    };
    let history_of = |other: i64| check.candidates.iter().find(|(o, _)| *o == other);
    let mut edges: Vec<(i64, i64)> = Vec::new(); // (time µs, other id)
    if let Some(items) = connection["edges"].as_array() {
        if !items.is_empty() && !check.may_show {
            return Err((
                "visibility",
                format!(
                    "{} on {} as {:?}: entries shown, but the viewer may not see the lists of this private account\nanswer: {connection}\nrecord: {}",
                    check.what,
                    instance_name(ctx.instance),
                    ctx.viewer,
                    model.user(check.owner).describe(t0)
                ),
            ));
        }
        for item in items {
            let other: i64 = item["node"]["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1);
            let at = item[check.time]
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .map_or(i64::MIN, |t| t.timestamp_micros());
            // The edge existed at some instant of the window, made by a change whose interval holds
            // its time.
            let Some((_, history)) = history_of(other) else {
                return err(format!("edge of {other} is not a possible member"));
            };
            let made_by = history
                .possible(check.lower, check.b)
                .into_iter()
                .filter(|(_, v)| **v)
                .filter_map(|(i, _)| i)
                .any(|i| {
                    let c = &history.changes[i];
                    at >= c.start - CLOCK_SLACK_US
                        && at <= c.end.unwrap_or(i64::MAX).saturating_add(CLOCK_SLACK_US)
                });
            if !made_by {
                return err(format!(
                    "edge of {other} ({} {}) did not exist in the window, or not with that time",
                    check.time,
                    rel(at, t0)
                ));
            }
            if let Some(exact) = check.exact {
                let pair = check.kind.pair(check.owner, other);
                if exact.get(&pair) != Some(&at) {
                    return err(format!(
                        "edge of {other}: {} {} but PostgreSQL has {:?}",
                        check.time,
                        rel(at, t0),
                        exact.get(&pair).map(|t| rel(*t, t0))
                    ));
                }
            }
            if let Some(handle) = item["node"].get("handle") {
                let possible: Vec<Option<String>> = model
                    .user_values(other, ctx)
                    .into_iter()
                    .map(|r| r.map(|r| r.handle))
                    .collect();
                let handle = handle.as_str().map(str::to_owned);
                if !possible.contains(&handle) || handle.is_none() {
                    return Err((
                        "stale_user",
                        format!(
                            "{}: node {other} has handle {handle:?} on {}; the model allows {possible:?}; history: {}",
                            check.what,
                            instance_name(ctx.instance),
                            model.user(other).describe(t0)
                        ),
                    ));
                }
            }
            edges.push((at, other));
        }
        if edges.len() as i64 > check.first {
            return err(format!("{} edges for first {}", edges.len(), check.first));
        }
        for pair in edges.windows(2) {
            if pair[0] <= pair[1] {
                return err("edges are not newest first".to_owned());
            }
        }
        let seen: HashSet<i64> = edges.iter().map(|e| e.1).collect();
        if seen.len() != edges.len() {
            return err("an edge is repeated".to_owned());
        }
        let has_next = connection["pageInfo"]["hasNextPage"].as_bool();
        let whole = has_next == Some(false) || (edges.len() as i64) < check.first;
        let last_at = edges.last().map_or(i64::MAX, |e| e.0);
        // A hidden list has no entries: nothing is missing from it.
        let hidden = check.may_hide && edges.is_empty();
        for (other, history) in check.candidates {
            if seen.contains(other) || check.optional.contains(other) || hidden {
                continue;
            }
            if let Some((Some(i), true)) = history.sure(check.lower, check.b).map(|(i, v)| (i, *v))
            {
                let made = history.changes[i].start;
                if whole || made > last_at + CLOCK_SLACK_US {
                    return err(format!(
                        "edge of {other}, there throughout the window (made at {}), is missing",
                        rel(made, t0)
                    ));
                }
            }
        }
        if has_next == Some(true) && (edges.len() as i64) != check.first {
            return err("hasNextPage with a page that is not full".to_owned());
        }
        if let Some(end) = connection["pageInfo"].get("endCursor")
            && end.is_null() != edges.is_empty()
        {
            return err("endCursor does not match the edges".to_owned());
        }
    }
    if let Some(total) = connection.get("totalCount") {
        let sure = check
            .candidates
            .iter()
            .filter(|(o, _)| !check.optional.contains(o))
            .map(|(_, h)| h);
        let maybe = check
            .candidates
            .iter()
            .filter(|(o, _)| check.optional.contains(o))
            .map(|(_, h)| h);
        let (lo, hi) = count_bounds(sure, check.lower, check.b, check.widen);
        let (_, more) = count_bounds(maybe, check.lower, check.b, check.widen);
        let hi = hi + more;
        let n = total.as_i64().unwrap_or(-1);
        if n < lo || n > hi {
            return Err((
                if check.category == "list" {
                    "count"
                } else {
                    check.category
                },
                format!(
                    "{} totalCount = {n} on {} (answered in [{}, {}]), the model allows {lo}..={hi}\nmodel:\n{}",
                    check.what,
                    instance_name(ctx.instance),
                    rel(ctx.a, t0),
                    rel(ctx.b, t0),
                    describe_pairs(check.candidates, check.kind, check.owner, t0)
                ),
            ));
        }
    }
    Ok(())
}

async fn sql(database: &str, query: &str) -> Option<Vec<tokio_postgres::Row>> {
    let (client, connection) =
        tokio_postgres::connect(&support::database_url(database), tokio_postgres::NoTls)
            .await
            .ok()?;
    tokio::spawn(connection);
    client.query(query, &[]).await.ok()
}

// ---------------------------------------------------------------------------------------------------
// Clients

fn viewer(user_id: i64, is_admin: bool) -> Option<Viewer> {
    Some(Viewer { user_id, is_admin })
}

/// A random read of 1 to 3 parts, as `client` would send it (as `reader`: the viewer's own lists need
/// one).
fn random_read(rng: &mut StdRng, run: &Run, me: i64, reader: Option<i64>) -> Vec<Part> {
    let max_id = run.settings.max_id();
    let viewers = &run.settings.viewers;
    let handles: Vec<String> = run.model().handles();
    let n = rng.random_range(1..=3);
    (0..n)
        .map(|_| {
            let id = rng.random_range(1..=max_id);
            let roll = rng.random_range(0..100);
            if roll < 20 {
                Part::User {
                    id,
                    fields: subset(
                        rng,
                        &[
                            "id",
                            "handle",
                            "isPrivate",
                            "followerCount",
                            "followingCount",
                            "viewerIsFollowing",
                            "followsViewer",
                            "viewerHasRequested",
                            "blocking",
                        ],
                        0.45,
                    ),
                }
            } else if roll < 27 && !handles.is_empty() {
                let handle = handles.choose(rng).cloned().unwrap_or_default();
                let handle = if rng.random_bool(0.3) {
                    handle.to_uppercase()
                } else {
                    handle
                };
                let mut fields = vec!["id"];
                if rng.random_bool(0.7) {
                    fields.push("handle");
                }
                if rng.random_bool(0.3) {
                    fields.push("isPrivate");
                }
                fields.shuffle(rng);
                Part::ByHandle { handle, fields }
            } else if roll < 45 {
                let a = if rng.random_bool(0.5) {
                    me
                } else {
                    *viewers.choose(rng).expect("viewers")
                };
                Part::IsFollowing { a, b: id }
            } else if roll < 59 {
                let user = if rng.random_bool(0.5) {
                    me
                } else {
                    rng.random_range(1..=max_id)
                };
                let others = (0..rng.random_range(1..=4))
                    .map(|_| {
                        if rng.random_bool(0.3) {
                            *viewers.choose(rng).expect("viewers")
                        } else {
                            rng.random_range(1..=max_id)
                        }
                    })
                    .collect();
                Part::Relationships {
                    user,
                    others,
                    fields: subset(
                        rng,
                        &[
                            "userId",
                            "otherId",
                            "following",
                            "followedBy",
                            "requested",
                            "requestedBy",
                            "blocking",
                        ],
                        0.5,
                    ),
                }
            } else if roll < 84 || (roll < 90 && reader.is_none()) {
                let owner = if rng.random_bool(0.5) {
                    *viewers.choose(rng).expect("viewers")
                } else {
                    id
                };
                Part::List {
                    owner,
                    kind: if rng.random_bool(0.5) {
                        Kind::Followers
                    } else {
                        Kind::Following
                    },
                    first: *PAGE_SIZES.choose(rng).expect("sizes"),
                    selection: connection_selection(rng, true, "followedAt"),
                    private: rng.random_bool(0.4).then(|| rng.random_bool(0.5)),
                }
            } else if roll < 87 {
                Part::Blocking {
                    first: *PAGE_SIZES.choose(rng).expect("sizes"),
                    selection: connection_selection(rng, true, "blockedAt"),
                }
            } else if roll < 90 {
                Part::Requests {
                    first: *PAGE_SIZES.choose(rng).expect("sizes"),
                    selection: connection_selection(rng, true, "requestedAt"),
                }
            } else {
                Part::Known {
                    owner: if rng.random_bool(0.4) {
                        *viewers.choose(rng).expect("viewers")
                    } else {
                        id
                    },
                    first: *PAGE_SIZES.choose(rng).expect("sizes"),
                    selection: connection_selection(rng, false, "followedAt"),
                }
            }
        })
        .collect()
}

/// Sends a read of `parts` and checks every part.
async fn read(run: &Run, client: &str, instance: usize, as_viewer: Option<Viewer>, parts: &[Part]) {
    read_as(run, client, instance, as_viewer, parts, None).await;
}

/// `read`, with own-status failures filed under `own_category` when given.
async fn read_as(
    run: &Run,
    client: &str,
    instance: usize,
    as_viewer: Option<Viewer>,
    parts: &[Part],
    own_category: Option<&'static str>,
) {
    let body: Vec<String> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| p.text(&format!("p{i}")))
        .collect();
    let query = format!("{{ {} }}", body.join(" "));
    let (response, ctx) = run
        .exchange(client, instance, as_viewer, "read ", &query)
        .await;
    let Some(data) = run.common_checks(&query, &response, None, ctx) else {
        return;
    };
    for (i, part) in parts.iter().enumerate() {
        let value = &data[format!("p{i}")];
        if let Err((category, message)) = run.check_part(part, value, ctx) {
            let category = match own_category {
                Some(own) if category == "own_status" => own,
                _ => category,
            };
            run.fail(
                category,
                format!("{message}\nquery on {}: {query}", instance_name(instance)),
            );
        }
    }
}

fn truncate(text: &str, n: usize) -> String {
    if text.len() <= n {
        return text.to_owned();
    }
    let mut cut = n;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// `preferred` if given, else one of `pool` (not empty) at random.
fn pick(pool: &[i64], preferred: Option<&i64>, rng: &mut StdRng) -> i64 {
    match preferred {
        Some(id) => *id,
        None => *pool.choose(rng).expect("non-empty"),
    }
}

/// One viewer's operations.
async fn viewer_client(run: Arc<Run>, me: i64, mut rng: StdRng) {
    let client = format!("V{me}");
    let max_id = run.settings.max_id();
    for _ in 0..run.settings.ops {
        tokio::time::sleep(Duration::from_micros(rng.random_range(0..6_000))).await;
        let instance = rng.random_range(0..2);
        let roll = rng.random_range(0..100);
        // Whom to pick from (a snapshot: the predictions are made under the pairs' locks).
        let (existing, mine, followers, requesters, blocked, related) = {
            let model = run.model();
            let existing: Vec<i64> = model
                .existing(max_id)
                .into_iter()
                .filter(|id| *id != me)
                .collect();
            let of = |f: &dyn Fn(i64) -> bool| -> Vec<i64> {
                existing.iter().copied().filter(|id| f(*id)).collect()
            };
            let mine =
                of(&|id| model.now(Rel::Edge, (me, id)) || model.now(Rel::Request, (me, id)));
            let followers = of(&|id| model.now(Rel::Edge, (id, me)));
            let requesters = of(&|id| model.now(Rel::Request, (id, me)));
            let blocked = of(&|id| model.now(Rel::Block, (me, id)));
            let related = of(&|id| {
                Rel::ALL[..2]
                    .iter()
                    .any(|r| model.now(*r, (me, id)) || model.now(*r, (id, me)))
            });
            (existing, mine, followers, requesters, blocked, related)
        };
        let other_viewers: Vec<i64> = run
            .settings
            .viewers
            .iter()
            .copied()
            .filter(|v| *v != me && existing.contains(v))
            .collect();
        // A consent target: from `pool` mostly, else anyone; now and then oneself or a user that never
        // exists.
        let consent_target = |rng: &mut StdRng, pool: &[i64], keep: f64| -> i64 {
            let r = rng.random_range(0..100);
            if r < 4 {
                me
            } else if r < 7 {
                max_id
            } else if !pool.is_empty() && rng.random_bool(keep) {
                pick(pool, None, rng)
            } else {
                pick(&existing, None, rng)
            }
        };
        // A single follow (often of the newest user: the one most likely to be cached as missing
        // somewhere; or of another viewer, who may be private) or unfollow (mostly of a followed or
        // asked user: an unfollow withdraws a request).
        let single = if roll < 17 && !existing.is_empty() {
            let newest = rng.random_bool(0.3);
            let pool = if !newest && !other_viewers.is_empty() && rng.random_bool(0.45) {
                &other_viewers
            } else {
                &existing
            };
            Some((
                pick(
                    pool,
                    newest.then(|| existing.iter().max()).flatten(),
                    &mut rng,
                ),
                true,
            ))
        } else if roll < 27 && !existing.is_empty() {
            let from_mine = !mine.is_empty() && rng.random_bool(0.7);
            let pool = if from_mine { &mine } else { &existing };
            Some((pick(pool, None, &mut rng), false))
        } else {
            None
        };
        // A viewer with requests pending answers one now and then, in place of a read.
        let answer = roll >= 55 && !requesters.is_empty() && rng.random_bool(0.2);
        let consent_op = if answer {
            let op = if rng.random_bool(0.6) {
                Consent::Approve
            } else {
                Consent::Reject
            };
            Some((op, pick(&requesters, None, &mut rng)))
        } else if existing.is_empty() || !(41..55).contains(&roll) {
            None
        } else if roll < 44 {
            Some((Consent::Block, consent_target(&mut rng, &related, 0.5)))
        } else if roll < 47 {
            Some((Consent::Unblock, consent_target(&mut rng, &blocked, 0.8)))
        } else if roll < 50 {
            Some((Consent::Remove, consent_target(&mut rng, &followers, 0.7)))
        } else if roll < 53 {
            Some((Consent::Approve, consent_target(&mut rng, &requesters, 0.8)))
        } else {
            Some((Consent::Reject, consent_target(&mut rng, &requesters, 0.8)))
        };
        let wrote = if let Some((target, follow)) = single {
            edge(
                &run,
                &client,
                instance,
                me,
                &[target],
                follow,
                false,
                false,
                &mut rng,
            )
            .await;
            Some(target)
        } else if roll < 35 && !existing.is_empty() {
            let follow = rng.random_bool(0.6);
            let mut ids: Vec<i64> = (0..rng.random_range(1..=4))
                .map(|_| *existing.choose(&mut rng).expect("non-empty"))
                .collect();
            // Repeated ids: copies of some, anywhere in the list.
            for _ in 0..rng.random_range(1..=3) {
                let copy = *ids.choose(&mut rng).expect("non-empty");
                let at = rng.random_range(0..=ids.len());
                ids.insert(at, copy);
            }
            edge(
                &run, &client, instance, me, &ids, follow, true, false, &mut rng,
            )
            .await;
            ids.first().copied()
        } else if roll < 36 {
            self_follow(&run, &client, instance, me).await;
            None
        } else if roll < 41 && !existing.is_empty() {
            let target = *existing.choose(&mut rng).expect("non-empty");
            let lose_data = rng.random_bool(0.5) && run.settings.faults.loss;
            own_write_racing_a_slow_load(&run, &client, me, target, lose_data, &mut rng).await;
            None
        } else if let Some((op, target)) = consent_op {
            consent(&run, &client, instance, me, target, op, &mut rng).await;
            (target != me && target != max_id).then_some(target)
        } else {
            let as_viewer = if rng.random_bool(0.7) {
                viewer(me, false)
            } else {
                None
            };
            let parts = random_read(&mut rng, &run, me, as_viewer.map(|v| v.user_id));
            read(&run, &client, instance, as_viewer, &parts).await;
            None
        };
        // Read one's own write back at once, often on the other instance.
        if let Some(target) = wrote
            && rng.random_bool(0.6)
        {
            let instance = if rng.random_bool(0.7) {
                1 - instance
            } else {
                instance
            };
            let mut parts = vec![
                Part::IsFollowing { a: me, b: target },
                Part::Relationships {
                    user: me,
                    others: vec![target],
                    fields: subset(
                        &mut rng,
                        &[
                            "otherId",
                            "following",
                            "followedBy",
                            "requested",
                            "requestedBy",
                            "blocking",
                        ],
                        0.6,
                    ),
                },
                Part::User {
                    id: target,
                    fields: subset(
                        &mut rng,
                        &[
                            "viewerIsFollowing",
                            "handle",
                            "id",
                            "viewerHasRequested",
                            "blocking",
                            "followsViewer",
                        ],
                        0.5,
                    ),
                },
            ];
            parts.shuffle(&mut rng);
            parts.truncate(rng.random_range(1..=3));
            read(&run, &client, instance, viewer(me, false), &parts).await;
        }
    }
}

/// What a follow or unfollow of one user should answer: (following, requested, changed).
type Outcome = (bool, bool, bool);

/// follow/unfollow (one id) or followMany/unfollowMany (`batch`), with the payload checked: a follow of
/// a private account asks (requested, not following), an unfollow withdraws a request, a follow across
/// a block either way is FORBIDDEN with nothing written. `held`: the caller holds the pairs' locks.
#[allow(clippy::too_many_arguments)]
async fn edge(
    run: &Run,
    client: &str,
    instance: usize,
    me: i64,
    ids: &[i64],
    follow: bool,
    batch: bool,
    held: bool,
    rng: &mut StdRng,
) {
    let field = match (follow, batch) {
        (true, false) => "follow",
        (false, false) => "unfollow",
        (true, true) => "followMany",
        (false, true) => "unfollowMany",
    };
    let mut user_fields = vec!["id"];
    if rng.random_bool(0.6) {
        user_fields.push("handle");
    }
    if rng.random_bool(0.25) {
        user_fields.push("isPrivate");
    }
    user_fields.shuffle(rng);
    let user_selection = format!("user {{ {} }}", user_fields.join(" "));
    let mut items = vec!["changed", "following", user_selection.as_str()];
    if rng.random_bool(0.5) {
        items.push("requested");
    }
    let selection = shuffled(rng, &items);
    let argument = if batch {
        format!("userIds: [{}]", ids_literal(ids))
    } else {
        format!("userId: \"{}\"", ids[0])
    };
    let query = format!("mutation {{ {field}({argument}) {{ {selection} }} }}");
    let mut unique: Vec<i64> = ids.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let pairs = Run::both_ways(me, &unique);
    // No other write of these pairs (nor change of these users' privacy) until this one is done.
    let _locks = if held {
        None
    } else {
        Some(run.locks.pairs(me, &unique).await)
    };
    // What the model predicts, and the changes in flight from now on.
    let start = now_us();
    let (predicted, changes, refused) = {
        let model = run.model();
        let refused = unique
            .iter()
            .copied()
            .find(|id| follow && model.blocked_either(me, *id));
        let mut predicted: HashMap<i64, Outcome> = HashMap::new();
        let mut changes: Vec<(Rel, (i64, i64), bool)> = Vec::new();
        for &id in &unique {
            let pair = (me, id);
            let edge = model.now(Rel::Edge, pair);
            let request = model.now(Rel::Request, pair);
            let outcome = if follow {
                if edge {
                    (true, false, false)
                } else if model.private_now(id) {
                    if !request {
                        changes.push((Rel::Request, pair, true));
                    }
                    (false, true, !request)
                } else {
                    changes.push((Rel::Edge, pair, true));
                    (true, false, true)
                }
            } else if edge {
                changes.push((Rel::Edge, pair, false));
                (false, false, true)
            } else if request {
                changes.push((Rel::Request, pair, false));
                (false, false, true)
            } else {
                (false, false, false)
            };
            predicted.insert(id, outcome);
        }
        (predicted, changes, refused)
    };
    run.tally(field);
    for (which, _, value) in &changes {
        match (which, value) {
            (Rel::Request, true) => run.tally("requests made"),
            (Rel::Request, false) => run.tally("requests withdrawn"),
            _ => {}
        }
    }
    if let Some(blocked) = refused {
        run.tally("follows refused (block)");
        let (response, ctx) = run
            .exchange(client, instance, viewer(me, false), "", &query)
            .await;
        let data = run.common_checks(&query, &response, Some("FORBIDDEN"), ctx);
        let expected_message = if unique.len() > 1 {
            format!("you cannot follow user {blocked}")
        } else {
            "you cannot follow this user".to_owned()
        };
        let messages: Vec<&str> = response["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter(|e| e["extensions"]["code"].as_str() == Some("FORBIDDEN"))
                    .filter_map(|e| e["message"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        if !messages.is_empty() && !messages.contains(&expected_message.as_str()) {
            run.fail(
                "mutation",
                format!(
                    "{field} of {ids:?} by {me} across a block: expected the message {expected_message:?}\nresponse: {response}"
                ),
            );
        }
        // Nothing written: the pairs in PostgreSQL are as the model had them.
        let wrong = run.disagreements(&pairs).await;
        if !wrong.is_empty() {
            run.fail(
                "forbidden_wrote",
                format!(
                    "{field} of {ids:?} by {me} on {} was refused (a block with {blocked}), yet wrote:\n{}\nresponse: {response}",
                    instance_name(instance),
                    wrong.join("\n")
                ),
            );
        }
        if data.is_some() || !wrong.is_empty() {
            run.resync(&pairs, instance, start).await;
        }
        return;
    }
    {
        let mut model = run.model();
        for (which, pair, value) in &changes {
            model.begin(*which, *pair, *value, instance, start);
        }
    }
    let (response, ctx) = run
        .exchange(client, instance, viewer(me, false), "", &query)
        .await;
    let data = run.common_checks(&query, &response, None, ctx).cloned();
    let outcomes: Vec<Value> = match &data {
        Some(data) if batch => data[field].as_array().cloned().unwrap_or_default(),
        Some(data) => vec![data[field].clone()],
        None => Vec::new(),
    };
    let mut as_predicted = outcomes.len() == ids.len();
    let mut seen = HashSet::new();
    for (n, (id, outcome)) in ids.iter().zip(&outcomes).enumerate() {
        let first_copy = seen.insert(*id);
        let (following, requested, changed) = predicted[id];
        let changed = first_copy && changed;
        let got_changed = outcome["changed"].as_bool();
        if outcome["following"].as_bool() != Some(following)
            || outcome
                .get("requested")
                .is_some_and(|r| r.as_bool() != Some(requested))
            || outcome["user"]["id"].as_str() != Some(id.to_string().as_str())
        {
            as_predicted = false;
        }
        if got_changed != Some(changed) {
            if !first_copy && got_changed == Some(true) {
                run.fail(
                    "batch_changed",
                    format!(
                        "{field} of {ids:?} by {me} on {}: item {n} (a repeated copy of {id}) says changed: true; only the first copy may\nresponse: {response}",
                        instance_name(instance)
                    ),
                );
            } else {
                as_predicted = false;
            }
        }
    }
    if as_predicted {
        let mut model = run.model();
        for (which, pair, _) in &changes {
            model.finish(*which, *pair, ctx.b);
        }
        drop(model);
        // The payload's user: exact record on this instance (the record rule).
        for (id, outcome) in ids.iter().zip(&outcomes) {
            let user = &outcome["user"];
            if user.get("handle").is_some() || user.get("isPrivate").is_some() {
                let model = run.model();
                if let Err((category, message)) = run.check_user_value(&model, *id, user, ctx) {
                    drop(model);
                    run.fail(category, format!("{message}\nin the payload of {query}"));
                }
            }
        }
        return;
    }
    if data.is_some() {
        run.fail(
            "mutation",
            format!(
                "{field} of {ids:?} by {me} on {}: the model predicted (following, requested, changed) {:?}\nresponse: {response}",
                instance_name(instance),
                ids.iter()
                    .scan(HashSet::new(), |seen, id| {
                        let (f, r, c) = predicted[id];
                        Some((f, r, seen.insert(*id) && c))
                    })
                    .collect::<Vec<_>>()
            ),
        );
    }
    run.resync(&pairs, instance, start).await;
}

/// The viewer's consent writes: blocks, removing a follower, answering follow requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Consent {
    Block,
    Unblock,
    Remove,
    Approve,
    Reject,
}

impl Consent {
    fn field(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Unblock => "unblock",
            Self::Remove => "removeFollower",
            Self::Approve => "approveFollowRequest",
            Self::Reject => "rejectFollowRequest",
        }
    }

    /// Its name in the tally when it changed something.
    fn changed_name(self) -> &'static str {
        match self {
            Self::Block => "blocks made",
            Self::Unblock => "blocks lifted",
            Self::Remove => "followers removed",
            Self::Approve => "requests approved",
            Self::Reject => "requests rejected",
        }
    }
}

/// `op` by `me` on `target` (maybe oneself, or a user that never exists), with the payload checked: a
/// block ends the edges and requests both ways, an unblock lifts it, a removal ends the follower's edge,
/// an approval makes the requester's edge, a rejection drops the request.
async fn consent(
    run: &Run,
    client: &str,
    instance: usize,
    me: i64,
    target: i64,
    op: Consent,
    rng: &mut StdRng,
) {
    let field = op.field();
    let blocks = matches!(op, Consent::Block | Consent::Unblock);
    let extra: [&'static str; 3] = if blocks {
        ["handle", "blocking", "viewerIsFollowing"]
    } else {
        ["handle", "followsViewer", "isPrivate"]
    };
    let mut user_fields = vec!["id"];
    for f in extra {
        if rng.random_bool(0.4) {
            user_fields.push(f);
        }
    }
    user_fields.shuffle(rng);
    let user_selection = format!("user {{ {} }}", user_fields.join(" "));
    let status_field = if blocks { "blocking" } else { "followedBy" };
    let selection = shuffled(rng, &["changed", status_field, &user_selection]);
    let query = format!("mutation {{ {field}(userId: \"{target}\") {{ {selection} }} }}");
    let pairs = Run::both_ways(me, &[target]);
    let _locks = run.locks.pairs(me, &[target]).await;
    run.tally(field);
    let start = now_us();
    let (expected_error, changed, changes) = {
        let model = run.model();
        let now = |which: Rel, pair: (i64, i64)| model.now(which, pair);
        let (t, m) = (target, me);
        let mut changes: Vec<(Rel, (i64, i64), bool)> = Vec::new();
        if target == me {
            let error = (op == Consent::Block).then_some("BAD_USER_INPUT");
            (error, false, changes)
        } else if model.user(target).current().is_none() {
            (Some("NOT_FOUND"), false, changes)
        } else {
            let changed = match op {
                Consent::Block => {
                    if !now(Rel::Block, (m, t)) {
                        changes.push((Rel::Block, (m, t), true));
                        for pair in [(m, t), (t, m)] {
                            for which in [Rel::Edge, Rel::Request] {
                                if now(which, pair) {
                                    changes.push((which, pair, false));
                                }
                            }
                        }
                    }
                    !changes.is_empty()
                }
                Consent::Unblock => {
                    if now(Rel::Block, (m, t)) {
                        changes.push((Rel::Block, (m, t), false));
                    }
                    !changes.is_empty()
                }
                Consent::Remove => {
                    if now(Rel::Edge, (t, m)) {
                        changes.push((Rel::Edge, (t, m), false));
                    }
                    !changes.is_empty()
                }
                Consent::Approve | Consent::Reject => {
                    let pending = now(Rel::Request, (t, m));
                    if pending {
                        changes.push((Rel::Request, (t, m), false));
                        if op == Consent::Approve && !now(Rel::Edge, (t, m)) {
                            changes.push((Rel::Edge, (t, m), true));
                        }
                    }
                    pending
                }
            };
            (None, changed, changes)
        }
    };
    if changed {
        run.tally(op.changed_name());
    }
    {
        let mut model = run.model();
        for (which, pair, value) in &changes {
            model.begin(*which, *pair, *value, instance, start);
        }
    }
    let (response, ctx) = run
        .exchange(client, instance, viewer(me, false), "", &query)
        .await;
    let data = run
        .common_checks(&query, &response, expected_error, ctx)
        .cloned();
    if expected_error.is_some() {
        if data.is_some() {
            run.resync(&pairs, instance, start).await;
        }
        return;
    }
    let payload = data.as_ref().map(|d| d[field].clone());
    let as_predicted = payload.as_ref().is_some_and(|p| {
        p["changed"].as_bool() == Some(changed)
            && p["user"]["id"].as_str() == Some(target.to_string().as_str())
            && (!blocks || p["blocking"].as_bool() == Some(op == Consent::Block))
    });
    if !as_predicted {
        if data.is_some() {
            run.fail(
                "mutation",
                format!(
                    "{field}({target}) by {me} on {}: the model predicted changed {changed}\nresponse: {response}\nmodel:\n{}",
                    instance_name(instance),
                    describe_rels(&run.model(), &pairs, run.t0)
                ),
            );
        }
        run.resync(&pairs, instance, start).await;
        return;
    }
    let mut model = run.model();
    for (which, pair, _) in &changes {
        model.finish(*which, *pair, ctx.b);
    }
    let Some(payload) = payload else {
        return;
    };
    // The statuses the payload reads: what this write did is exact on its instance (it put it in L1
    // before answering); a pair it did not change is read as any other (the viewer's own: exact).
    let changed_here = |pair: (i64, i64)| {
        changes
            .iter()
            .any(|(w, p, _)| *w == Rel::Edge && *p == pair)
    };
    let status = |pair: (i64, i64), own: bool| -> Vec<bool> {
        if target == me {
            vec![false]
        } else if changed_here(pair) {
            vec![model.now(Rel::Edge, pair)]
        } else {
            model.status_values(pair, ctx, own)
        }
    };
    let mut checks: Vec<(String, Option<bool>, Vec<bool>)> = Vec::new();
    if !blocks {
        checks.push((
            "followedBy".to_owned(),
            payload["followedBy"].as_bool(),
            status((target, me), false),
        ));
    }
    let user = &payload["user"];
    if user.get("blocking").is_some() {
        let expected = target != me && model.now(Rel::Block, (me, target));
        checks.push((
            "user.blocking".to_owned(),
            user["blocking"].as_bool(),
            vec![expected],
        ));
    }
    if user.get("viewerIsFollowing").is_some() {
        checks.push((
            "user.viewerIsFollowing".to_owned(),
            user["viewerIsFollowing"].as_bool(),
            status((me, target), true),
        ));
    }
    if user.get("followsViewer").is_some() {
        checks.push((
            "user.followsViewer".to_owned(),
            user["followsViewer"].as_bool(),
            status((target, me), false),
        ));
    }
    let mut problems: Vec<String> = checks
        .into_iter()
        .filter(|(_, got, allowed)| !got.is_some_and(|g| allowed.contains(&g)))
        .map(|(what, got, allowed)| format!("{what} = {got:?}, the model allows {allowed:?}"))
        .collect();
    if (user.get("handle").is_some() || user.get("isPrivate").is_some())
        && let Err((_, message)) = run.check_user_value(&model, target, user, ctx)
    {
        problems.push(message);
    }
    if !problems.is_empty() {
        let described = describe_rels(&model, &pairs, run.t0);
        drop(model);
        run.fail(
            "payload",
            format!(
                "{field}({target}) by {me} on {} answered in [{}, {}]: {}\nresponse: {response}\nmodel:\n{described}",
                instance_name(instance),
                rel(ctx.a, run.t0),
                rel(ctx.b, run.t0),
                problems.join("; ")
            ),
        );
    }
}

/// The edges, requests and blocks of `pairs`, as the model has them (those ever set).
fn describe_rels(model: &Model, pairs: &[(i64, i64)], t0: i64) -> String {
    let mut out = Vec::new();
    for which in Rel::ALL {
        for pair in pairs {
            if model.table(which).contains_key(pair) {
                out.push(format!(
                    "  {} {} → {}: {}",
                    which.name(),
                    pair.0,
                    pair.1,
                    model.history(which, *pair).describe(t0)
                ));
            }
        }
    }
    out.join("\n")
}

/// A fault of timing: another reader's load of `me`'s following set is slow (it read PostgreSQL before
/// `me`'s write and answers after it); `me` flips its edge to `target` on that instance, Redis may lose
/// its data right then (`lose_data`), and `me` reads its own status back there while the load is still
/// in flight. Read-your-writes must hold (the read may not take the old load's answer). Runs only on an
/// instance whose L1 lacks `me`'s set (else no load happens); otherwise it is a plain write.
async fn own_write_racing_a_slow_load(
    run: &Arc<Run>,
    client: &str,
    me: i64,
    target: i64,
    lose_data: bool,
    rng: &mut StdRng,
) {
    // The pair's locks first: a load held while waiting for them could hold up a write that holds them
    // (a removal's or an approval's payload reads `me`'s set), each waiting for the other.
    let _locks = run.locks.pairs(me, &[target]).await;
    let follow = !*run.model().pair((me, target)).current();
    let cold: Vec<usize> = [0, 1]
        .into_iter()
        .filter(|i| {
            let caches = &run.apps[*i].caches;
            caches.l1_active() && caches.peek_following(me).is_none()
        })
        .collect();
    let Some(&instance) = cold.choose(rng) else {
        edge(run, client, 0, me, &[target], follow, false, true, rng).await;
        return;
    };
    // The slow load: an anonymous status question about `me`, whose set load reads PostgreSQL now and
    // answers when released.
    let (has_read, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let other = if target == run.settings.admin {
        run.settings.initial
    } else {
        run.settings.admin
    };
    let load = {
        let caches = run.apps[instance].caches.clone();
        let database = run.database.clone();
        let (has_read, release) = (has_read.clone(), release.clone());
        tokio::spawn(async move {
            let _ = caches
                .statuses(
                    &[(me, other)],
                    None,
                    |users: Vec<i64>| {
                        let (database, has_read, release) =
                            (database.clone(), has_read.clone(), release.clone());
                        async move {
                            let listed = users
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(",");
                            let rows = sql(
                                &database,
                                &format!(
                                    "SELECT follower_id, followee_id FROM follows \
                                     WHERE follower_id IN ({listed})"
                                ),
                            )
                            .await
                            .unwrap_or_default();
                            let mut sets: HashMap<i64, Vec<i64>> =
                                users.iter().map(|u| (*u, Vec::new())).collect();
                            for row in rows {
                                sets.entry(row.get(0)).or_default().push(row.get(1));
                            }
                            has_read.notify_one();
                            release.notified().await;
                            Ok::<_, ()>(sets)
                        }
                    },
                    |_| async { Ok::<_, ()>(HashSet::new()) },
                )
                .await;
        })
    };
    // Until the load has read PostgreSQL (it may not load at all if another request filled L1 since).
    let loading = tokio::time::timeout(Duration::from_millis(500), has_read.notified())
        .await
        .is_ok();
    run.note(
        client,
        instance,
        format!("a set load of {me} read PostgreSQL and is held (loading: {loading})"),
    );
    edge(
        run,
        client,
        instance,
        me,
        &[target],
        follow,
        false,
        true,
        rng,
    )
    .await;
    if lose_data {
        let deleted = support::redis_forget(&run.prefix).await;
        run.fault(
            0,
            &format!("Redis lost its data ({deleted} keys deleted), right after {me}'s write"),
        );
    }
    let own_read = {
        let run = run.clone();
        let client = client.to_owned();
        tokio::spawn(async move {
            let parts = [Part::IsFollowing { a: me, b: target }];
            read_as(
                &run,
                &client,
                instance,
                viewer(me, false),
                &parts,
                Some("ryw_slow_load"),
            )
            .await;
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    release.notify_one();
    if let Err(err) = own_read.await {
        run.fail("panic", format!("a read panicked: {err}"));
    }
    let _ = load.await;
}

async fn self_follow(run: &Run, client: &str, instance: usize, me: i64) {
    let query = format!("mutation {{ follow(userId: \"{me}\") {{ changed }} }}");
    let (response, ctx) = run
        .exchange(client, instance, viewer(me, false), "", &query)
        .await;
    run.common_checks(&query, &response, Some("BAD_USER_INPUT"), ctx);
}

/// The admin: creates users (often read just before they exist, now and then private from the start),
/// renames them, tries taken handles, makes accounts private or public (often viewers', who answer
/// requests; public with requests pending approves them all), and reads.
async fn admin_client(run: Arc<Run>, mut rng: StdRng) {
    let client = "admin";
    let me = run.settings.admin;
    let max_id = run.settings.max_id();
    let mut to_create: Vec<i64> =
        (run.settings.initial + 1..=run.settings.initial + run.settings.created).collect();
    to_create.shuffle(&mut rng);
    for _ in 0..run.settings.admin_ops {
        tokio::time::sleep(Duration::from_micros(rng.random_range(0..15_000))).await;
        let instance = rng.random_range(0..2);
        let roll = rng.random_range(0..100);
        if roll < 35 {
            let create = !to_create.is_empty() && rng.random_bool(0.6);
            if create {
                let id = to_create.pop().expect("non-empty");
                // Read it before it exists, on both instances, so that the miss is cached.
                if rng.random_bool(0.8) {
                    for i in [0, 1] {
                        let parts = [Part::User {
                            id,
                            fields: vec!["id", "handle"],
                        }];
                        read(&run, client, i, None, &parts).await;
                    }
                }
                let privacy = if rng.random_bool(0.2) {
                    Privacy::Set(true)
                } else if rng.random_bool(0.3) {
                    Privacy::Null
                } else {
                    Privacy::Absent
                };
                upsert(&run, client, instance, id, &mut rng, false, privacy, false).await;
            } else {
                let existing = run.model().existing(max_id);
                let id = *existing.choose(&mut rng).expect("users exist");
                let taken = rng.random_bool(0.1);
                let privacy = if rng.random_bool(0.3) {
                    Privacy::Null
                } else {
                    Privacy::Absent
                };
                upsert(&run, client, instance, id, &mut rng, taken, privacy, false).await;
            }
        } else if roll < 55 {
            // Often a private account with requests pending (turned public, it approves them all),
            // else a viewer (who answers requests), else anyone.
            let (existing, asked) = {
                let model = run.model();
                let existing = model.existing(max_id);
                let asked: Vec<i64> = existing
                    .iter()
                    .copied()
                    .filter(|t| {
                        model.private_now(*t)
                            && (1..=max_id).any(|x| model.now(Rel::Request, (x, *t)))
                    })
                    .collect();
                (existing, asked)
            };
            let r = rng.random_range(0..100);
            let id = if r < 30 && !asked.is_empty() {
                *asked.choose(&mut rng).expect("non-empty")
            } else if r < 65 {
                *run.settings.viewers.choose(&mut rng).expect("viewers")
            } else {
                *existing.choose(&mut rng).expect("users exist")
            };
            // Only the admin changes records: this is the privacy the next upsert starts from.
            let private = run.model().private_now(id);
            let to = if rng.random_bool(0.9) {
                !private
            } else {
                private
            };
            let keep_handle = rng.random_bool(0.6);
            upsert(
                &run,
                client,
                instance,
                id,
                &mut rng,
                false,
                Privacy::Set(to),
                keep_handle,
            )
            .await;
        } else {
            let as_viewer = if rng.random_bool(0.5) {
                viewer(me, true)
            } else {
                None
            };
            let parts = random_read(&mut rng, &run, me, as_viewer.map(|v| v.user_id));
            read(&run, client, instance, as_viewer, &parts).await;
        }
    }
}

/// The `isPrivate` of an `upsertUser`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Privacy {
    /// Not given: kept (a new user is public).
    Absent,
    /// `isPrivate: null`: kept.
    Null,
    Set(bool),
}

/// `upsertUser` of `id` with a new handle (or its own when `keep_handle`; or, when `taken`, another
/// user's handle in another case), and `privacy`. Turning public approves every pending request to the
/// user in the same transaction: their edges are published like follows.
#[allow(clippy::too_many_arguments)]
async fn upsert(
    run: &Run,
    client: &str,
    instance: usize,
    id: i64,
    rng: &mut StdRng,
    taken: bool,
    privacy: Privacy,
    keep_handle: bool,
) {
    let max_id = run.settings.max_id();
    // A change of privacy waits for the writes of the user's pairs in flight, and holds new ones back.
    let _lock = match privacy {
        Privacy::Set(_) => run.locks.privacy(id).await,
        _ => None,
    };
    let (record, expect_taken, approved) = {
        let mut model = run.model();
        let current = model.user(id).current().clone();
        let others: Vec<String> = (1..=max_id)
            .filter(|u| *u != id)
            .filter_map(|u| model.user(u).current().clone())
            .map(|r| r.handle)
            .collect();
        let (handle, expect_taken) = match (others.choose(rng), &current) {
            (Some(other), _) if taken => (other.to_uppercase(), true),
            (_, Some(current)) if keep_handle => (current.handle.clone(), false),
            _ => {
                model.handle_counter += 1;
                let base = ["ann", "Bo", "cy", "DEE", "eve_x"]
                    .choose(rng)
                    .expect("bases");
                (format!("{base}_{}", model.handle_counter), false)
            }
        };
        let private = match privacy {
            Privacy::Set(p) => p,
            _ => current.as_ref().is_some_and(|r| r.private),
        };
        let approved: Vec<i64> = if privacy == Privacy::Set(false) {
            (1..=max_id)
                .filter(|x| *x != id && model.now(Rel::Request, (*x, id)))
                .collect()
        } else {
            Vec::new()
        };
        (Record { handle, private }, expect_taken, approved)
    };
    let handle = record.handle.clone();
    let argument = match privacy {
        Privacy::Absent => String::new(),
        Privacy::Null => ", isPrivate: null".to_owned(),
        Privacy::Set(p) => format!(", isPrivate: {p}"),
    };
    let mut fields = vec!["id", "handle", "displayName"];
    if rng.random_bool(0.5) {
        fields.push("isPrivate");
    }
    let query = format!(
        "mutation {{ upsertUser(input: {{ id: \"{id}\", handle: \"{handle}\"{argument} }}) {{ {} }} }}",
        shuffled(rng, &fields)
    );
    match privacy {
        Privacy::Set(true) => run.tally("made private"),
        Privacy::Set(false) => run.tally("made public"),
        _ => {}
    }
    for _ in &approved {
        run.tally("requests approved by turning public");
    }
    let start = now_us();
    let mut changes: Vec<(Rel, (i64, i64), bool)> = Vec::new();
    if !expect_taken {
        let mut model = run.model();
        model.begin_user(id, Some(record.clone()), instance, start);
        for &x in &approved {
            changes.push((Rel::Request, (x, id), false));
            if !model.now(Rel::Edge, (x, id)) {
                changes.push((Rel::Edge, (x, id), true));
            }
        }
        for (which, pair, value) in &changes {
            model.begin(*which, *pair, *value, instance, start);
        }
    }
    let (response, ctx) = run
        .exchange(
            client,
            instance,
            viewer(run.settings.admin, true),
            "",
            &query,
        )
        .await;
    let expected = expect_taken.then_some("BAD_USER_INPUT");
    let data = run.common_checks(&query, &response, expected, ctx);
    if expect_taken {
        return;
    }
    let ok = data.is_some_and(|d| {
        let user = &d["upsertUser"];
        user["id"].as_str() == Some(id.to_string().as_str())
            && user["handle"].as_str() == Some(handle.as_str())
            && user
                .get("isPrivate")
                .is_none_or(|p| p.as_bool() == Some(record.private))
    });
    if ok {
        let mut model = run.model();
        model.finish_user(id, instance, ctx.b);
        for (which, pair, _) in &changes {
            model.finish(*which, *pair, ctx.b);
        }
        return;
    }
    if data.is_some() {
        run.fail(
            "mutation",
            format!("upsertUser({id}, {handle:?}, {privacy:?}) answered {response}"),
        );
    }
    // The model takes the record, and the requests to the user and their edges, from PostgreSQL.
    let rows = sql(
        &run.database,
        &format!("SELECT handle, is_private FROM users WHERE id = {id}"),
    )
    .await
    .unwrap_or_default();
    let truth: Option<Record> = rows.first().map(|r| Record {
        handle: r.get(0),
        private: r.get(1),
    });
    {
        let mut model = run.model();
        if truth.as_ref() == Some(&record) {
            model.finish_user(id, instance, now_us());
        } else if let Some(h) = model.users.get_mut(&id) {
            h.changes.pop();
        }
    }
    if privacy != Privacy::Absent && privacy != Privacy::Null {
        let others: Vec<i64> = (1..=max_id).collect();
        run.resync(&Run::both_ways(id, &others), instance, start)
            .await;
    }
}

/// Faults at random points until the clients are done: Redis loses every key of the prefix; B's Redis
/// is cut, and restored.
async fn fault_driver(
    run: Arc<Run>,
    proxy: Arc<RedisProxy>,
    prefix: String,
    mut rng: StdRng,
    done: Arc<AtomicBool>,
) {
    let mut cut = false;
    while !done.load(Ordering::SeqCst) {
        let pause = rng.random_range(150..700);
        for _ in 0..pause / 10 {
            if done.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if done.load(Ordering::SeqCst) {
            break;
        }
        let kinds = run.settings.faults;
        let lose = rng.random_bool(0.4);
        if (lose && kinds.loss) || !kinds.cut {
            let deleted = support::redis_forget(&prefix).await;
            run.fault(0, &format!("Redis lost its data ({deleted} keys deleted)"));
        } else if cut {
            proxy.restore();
            cut = false;
            if let Some(last) = run.model().cuts.last_mut() {
                last.1 = Some(now_us() + RESTORE_MARGIN_US);
            }
            run.fault(1, "B's Redis restored");
        } else {
            run.model().cuts.push((now_us(), None));
            proxy.cut();
            cut = true;
            run.fault(1, "B's Redis cut");
        }
    }
    if cut {
        proxy.restore();
        if let Some(last) = run.model().cuts.last_mut() {
            last.1 = Some(now_us() + RESTORE_MARGIN_US);
        }
        run.fault(1, "B's Redis restored (end)");
    }
}

fn options() -> Options {
    Options {
        env: vec![("FOLLOW_CONSUMERS", "2".to_owned())],
        ..Options::default()
    }
}

async fn run_seed(seed: u64, settings: Settings) -> Vec<Failure> {
    let proxy = Arc::new(RedisProxy::start().await);
    let app = TestApp::with_options(options()).await;
    let second = app
        .instance(Options {
            redis_url: proxy.url.clone(),
            ..options()
        })
        .await;
    app.create_users(1..=settings.initial).await;
    let mut model = Model::default();
    for id in 1..=settings.initial {
        model.users.insert(
            id,
            History::new(Some(Record {
                handle: format!("u{id}"),
                private: false,
            })),
        );
    }
    let run = Arc::new(Run {
        seed,
        settings: settings.clone(),
        apps: [app.app.clone(), second.app.clone()],
        database: app.database.clone(),
        prefix: app.prefix.clone(),
        model: Mutex::new(model),
        locks: Locks::new(settings.max_id()),
        log: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
        tally: Mutex::new(Default::default()),
        t0: now_us(),
    });
    run.note("setup", 0, format!("seed {seed}, prefix {}", app.prefix));

    let mut clients = Vec::new();
    for (n, &v) in settings.viewers.iter().enumerate() {
        let rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000).wrapping_add(n as u64));
        clients.push(tokio::spawn(viewer_client(run.clone(), v, rng)));
    }
    clients.push(tokio::spawn(admin_client(
        run.clone(),
        StdRng::seed_from_u64(seed.wrapping_mul(1_000).wrapping_add(100)),
    )));
    let done = Arc::new(AtomicBool::new(false));
    let faults = settings.faults.any().then(|| {
        tokio::spawn(fault_driver(
            run.clone(),
            proxy.clone(),
            app.prefix.clone(),
            StdRng::seed_from_u64(seed.wrapping_mul(1_000).wrapping_add(200)),
            done.clone(),
        ))
    });
    let began = std::time::Instant::now();
    for client in clients {
        if let Err(err) = client.await {
            run.fail("panic", format!("a client panicked: {err}"));
        }
    }
    done.store(true, Ordering::SeqCst);
    if let Some(faults) = faults
        && let Err(err) = faults.await
    {
        run.fail("panic", format!("the fault task panicked: {err}"));
    }
    proxy.restore();
    run.note(
        "quiescence",
        0,
        "clients done; waiting for the pipeline".to_owned(),
    );
    let clients_done = began.elapsed();
    app.wait_for_l1(&second.app).await;
    app.drained().await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let settled = began.elapsed();
    quiescence(&run).await;
    let tally = run
        .tally
        .lock()
        .map(|t| {
            t.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    println!(
        "model: seed {seed}: clients {:.1} s, pipeline {:.1} s, quiescence {:.1} s; {tally}",
        clients_done.as_secs_f64(),
        (settled - clients_done).as_secs_f64(),
        (began.elapsed() - settled).as_secs_f64()
    );

    let failures = run.failures.lock().map(|f| f.clone()).unwrap_or_default();
    if env_number("MODEL_LOG").is_some_and(|v| v != 0)
        && let Ok(log) = run.log.lock()
    {
        println!("model: seed {seed}, the whole log:\n{}", log.join("\n"));
    }
    drop(second);
    drop(app);
    failures
}

/// When each edge, block and request PostgreSQL holds at rest was made (µs).
struct AtRest {
    edges: HashMap<(i64, i64), i64>,
    blocks: HashMap<(i64, i64), i64>,
    requests: HashMap<(i64, i64), i64>,
}

impl AtRest {
    fn of(&self, which: Rel) -> &HashMap<(i64, i64), i64> {
        match which {
            Rel::Edge => &self.edges,
            Rel::Block => &self.blocks,
            Rel::Request => &self.requests,
        }
    }
}

/// At rest: PostgreSQL holds the model's graph (edges, requests, blocks, records), with no edge beside a
/// block, no request beside an edge or a block, none to a public account; and both instances answer
/// it exactly.
async fn quiescence(run: &Run) {
    let max_id = run.settings.max_id();
    let t0 = run.t0;
    // 1. The model against the tables (a lost or invented write shows here).
    let mut made: Vec<HashMap<(i64, i64), i64>> = Vec::new();
    for which in Rel::ALL {
        let (table, a, b) = which.table();
        let rows = sql(
            &run.database,
            &format!(
                "SELECT {a}, {b}, (EXTRACT(EPOCH FROM created_at) * 1000000)::bigint FROM {table}"
            ),
        )
        .await
        .unwrap_or_default();
        let created: HashMap<(i64, i64), i64> = rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        let model = run.model();
        for a in 1..=max_id {
            for b in 1..=max_id {
                let history = model.history(which, (a, b));
                let expected = *history.current();
                match created.get(&(a, b)) {
                    Some(at) if expected => {
                        let c = history.changes.last().expect("a change");
                        if *at < c.start - CLOCK_SLACK_US
                            || *at > c.end.unwrap_or(i64::MAX) + CLOCK_SLACK_US
                        {
                            run.fail(
                                "model",
                                format!(
                                    "{} {a} → {b} created at {} outside the change that made it: {}",
                                    which.name(),
                                    rel(*at, t0),
                                    history.describe(t0)
                                ),
                            );
                        }
                    }
                    None if !expected => {}
                    found => run.fail(
                        "lost_write",
                        format!(
                            "{} {a} → {b}: PostgreSQL has {found:?}, the model {}",
                            which.name(),
                            history.describe(t0)
                        ),
                    ),
                }
            }
        }
        made.push(created);
    }
    let at_rest = AtRest {
        edges: std::mem::take(&mut made[0]),
        requests: std::mem::take(&mut made[1]),
        blocks: std::mem::take(&mut made[2]),
    };
    let users = sql(&run.database, "SELECT id, handle, is_private FROM users")
        .await
        .unwrap_or_default();
    let records: HashMap<i64, Record> = users
        .iter()
        .map(|r| {
            (
                r.get(0),
                Record {
                    handle: r.get(1),
                    private: r.get(2),
                },
            )
        })
        .collect();
    {
        let model = run.model();
        for id in 1..=max_id {
            if records.get(&id) != model.user(id).current().as_ref() {
                run.fail(
                    "lost_write",
                    format!(
                        "user {id}: PostgreSQL has {:?}, the model {}",
                        records.get(&id),
                        model.user(id).describe(t0)
                    ),
                );
            }
        }
    }
    // Who may follow whom: what a block ends, an approval or a turn to public moves, stays ended.
    for (what, query) in [
        (
            "an edge beside a block",
            "SELECT f.follower_id, f.followee_id FROM follows f JOIN blocks b \
             ON (b.blocker_id = f.follower_id AND b.blocked_id = f.followee_id) \
             OR (b.blocker_id = f.followee_id AND b.blocked_id = f.follower_id)",
        ),
        (
            "a request beside a block",
            "SELECT q.requester_id, q.target_id FROM follow_requests q JOIN blocks b \
             ON (b.blocker_id = q.requester_id AND b.blocked_id = q.target_id) \
             OR (b.blocker_id = q.target_id AND b.blocked_id = q.requester_id)",
        ),
        (
            "a request beside its edge",
            "SELECT q.requester_id, q.target_id FROM follow_requests q JOIN follows f \
             ON f.follower_id = q.requester_id AND f.followee_id = q.target_id",
        ),
        (
            "a request to a public account",
            "SELECT q.requester_id, q.target_id FROM follow_requests q JOIN users u \
             ON u.id = q.target_id WHERE NOT u.is_private",
        ),
    ] {
        let rows = sql(&run.database, query).await.unwrap_or_default();
        for row in rows {
            let (a, b): (i64, i64) = (row.get(0), row.get(1));
            let model = run.model();
            let described = describe_rels(&model, &[(a, b), (b, a)], t0);
            let record = model.user(b).describe(t0);
            drop(model);
            run.fail(
                "invariant",
                format!("{what}: {a} → {b}\nmodel:\n{described}\nrecord of {b}: {record}"),
            );
        }
    }

    // Stored counts equal the edges (SERVICE.md invariant 3), whatever Redis lost meanwhile.
    let drift = sql(
        &run.database,
        "SELECT u.id, COALESCE(s.follower_count, 0), COALESCE(s.following_count, 0), \
                (SELECT count(*) FROM follows WHERE followee_id = u.id), \
                (SELECT count(*) FROM follows WHERE follower_id = u.id) \
         FROM users u LEFT JOIN user_stats s ON s.user_id = u.id",
    )
    .await
    .unwrap_or_default();
    for row in drift {
        let (id, followers, following, edges_in, edges_out): (i64, i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if (followers, following) != (edges_in, edges_out) {
            run.fail(
                "stored_counts",
                format!(
                    "user {id}: user_stats has {followers} followers and {following} following, follows has {edges_in} and {edges_out}"
                ),
            );
        }
    }

    // 2. Both instances, exactly (polled up to 3 s: the design's convergence). Viewers read as
    // themselves (their own pairs take the read-your-writes path); other users anonymously, and a
    // private one as itself too (anonymously its lists are hidden).
    let lists: Vec<String> = [Kind::Followers, Kind::Following]
        .iter()
        .flat_map(|kind| {
            PAGE_SIZES.iter().map(move |n| {
                format!(
                    "{}: {}(first: {n}) {{ totalCount edges {{ followedAt node {{ id handle }} }} pageInfo {{ hasNextPage endCursor }} }}",
                    rest_alias(*kind, *n),
                    kind.field()
                )
            })
        })
        .collect();
    let query_of = |id: i64, as_self: bool| {
        let own = if as_self {
            " blocking(first: 20) { totalCount edges { blockedAt node { id handle } } pageInfo { hasNextPage endCursor } } \
              followRequests(first: 20) { totalCount edges { requestedAt node { id handle } } pageInfo { hasNextPage endCursor } }"
        } else {
            ""
        };
        format!(
            "{{ user(id: \"{id}\") {{ id handle isPrivate followerCount followingCount {} }} \
               relationships(userId: \"{id}\", otherIds: [{}]) {{ otherId following followedBy requested requestedBy blocking }}{own} }}",
            lists.join(" "),
            ids_literal(&(1..=max_id).collect::<Vec<_>>())
        )
    };
    let private_at_rest: Vec<i64> = {
        let model = run.model();
        (1..=max_id).filter(|id| model.private_now(*id)).collect()
    };
    let viewers = &run.settings.viewers;
    let private_at_rest = &private_at_rest;
    let mut pending: Vec<(usize, i64, bool)> = [0, 1]
        .into_iter()
        .flat_map(|instance| {
            (1..=max_id).flat_map(move |id| {
                let as_self = viewers.contains(&id);
                let private = !as_self && private_at_rest.contains(&id);
                std::iter::once((instance, id, as_self))
                    .chain(private.then_some((instance, id, true)))
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut last: HashMap<(usize, i64, bool), (&'static str, String)> = HashMap::new();
    loop {
        run.tally("quiescence rounds");
        let mut still = Vec::new();
        for (instance, id, as_self) in pending {
            let query = query_of(id, as_self);
            let as_viewer = as_self.then_some(Viewer {
                user_id: id,
                is_admin: false,
            });
            let (response, a, b) = run.send(instance, as_viewer, &query).await;
            match check_at_rest(
                run, instance, id, as_self, &query, &response, &at_rest, a, b,
            ) {
                Ok(()) => {
                    last.remove(&(instance, id, as_self));
                }
                Err(failure) => {
                    last.insert((instance, id, as_self), failure);
                    still.push((instance, id, as_self));
                }
            }
        }
        if still.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut remaining: Vec<_> = last.into_iter().collect();
    remaining.sort_by_key(|(key, _)| *key);
    for (_, (category, message)) in remaining {
        run.fail(category, format!("at quiescence, after 3 s: {message}"));
    }
}

/// The alias of a list page in the quiescence query.
fn rest_alias(kind: Kind, first: i64) -> String {
    match kind {
        Kind::Followers => format!("followers{first}"),
        Kind::Following => format!("following{first}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn check_at_rest(
    run: &Run,
    instance: usize,
    id: i64,
    as_self: bool,
    query: &str,
    response: &Value,
    at_rest: &AtRest,
    a: i64,
    b: i64,
) -> Checked {
    if response.get("errors").is_some() {
        return Err(("quiescence_error", format!("{query}\nresponse: {response}")));
    }
    let data = &response["data"];
    check_order(data, &selection_of(query), "")
        .map_err(|m| ("field_order", format!("{m}\nresponse: {response}")))?;
    let max_id = run.settings.max_id();
    let ctx = Ctx {
        instance,
        viewer: as_self.then_some(id),
        a,
        b,
        window: 0,
        at_rest: true,
    };
    let model = run.model();
    let user = &data["user"];
    let exists = model.user(id).current().is_some();
    if !run.check_user_value(&model, id, user, ctx)? || !exists {
        return Ok(());
    }
    let private = model.private_now(id);
    let (hidden, shown) = model.visibility(id, &[private], ctx);
    for kind in [Kind::Followers, Kind::Following] {
        let candidates = model.pairs_of(kind, id, max_id, Some(ctx));
        let expected = candidates.iter().filter(|(_, h)| *h.current()).count() as i64;
        let count_field = if kind == Kind::Followers {
            "followerCount"
        } else {
            "followingCount"
        };
        let count = user[count_field].as_i64().unwrap_or(-1);
        for n in PAGE_SIZES {
            let connection = &user[rest_alias(kind, n)];
            check_connection(
                &model,
                &ListCheck {
                    what: format!("{} of {id}", kind.field()),
                    category: "list",
                    time: "followedAt",
                    kind,
                    owner: id,
                    first: n,
                    candidates: &candidates,
                    optional: &HashSet::new(),
                    lower: a,
                    b,
                    widen: false,
                    exact: Some(&at_rest.edges),
                    may_hide: hidden,
                    may_show: shown,
                },
                connection,
                ctx,
                run.t0,
            )?;
            let total = connection["totalCount"].as_i64().unwrap_or(-1);
            let on_page = connection["edges"].as_array().map_or(0, Vec::len) as i64;
            // Hidden (a private account's, to another): no entries, the count still real.
            let want = if hidden { 0 } else { expected.min(n) };
            if count != expected || total != expected || on_page != want {
                return Err((
                    "count",
                    format!(
                        "user {id} on {} as {:?}: {count_field} {count}, {}(first: {n}) totalCount {total} with {on_page} edges; the model has {expected} (private: {private}, so {want} shown)",
                        instance_name(instance),
                        ctx.viewer,
                        kind.field()
                    ),
                ));
            }
        }
    }
    let relationships = data["relationships"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (other, item) in (1..=max_id).zip(&relationships) {
        for (field, pair) in [("following", (id, other)), ("followedBy", (other, id))] {
            let expected = other != id && *model.pair(pair).current();
            if item[field].as_bool() != Some(expected) {
                return Err((
                    if ctx.viewer == Some(pair.0) {
                        "own_status"
                    } else {
                        "status"
                    },
                    format!(
                        "relationships({id}, {other}).{field} = {} on {}, the model has {expected}: {}",
                        item[field],
                        instance_name(instance),
                        model.pair(pair).describe(run.t0)
                    ),
                ));
            }
        }
        for field in ["requested", "requestedBy", "blocking"] {
            let (which, pair, visible) = relationship_consent(field, id, other, ctx.viewer);
            let expected = visible.then(|| model.now(which, pair));
            if item[field].as_bool() != expected || (expected.is_none() && !item[field].is_null()) {
                return Err((
                    if which == Rel::Block {
                        "block"
                    } else {
                        "request"
                    },
                    format!(
                        "relationships({id}, {other}).{field} = {} on {} as {:?}, the model has {expected:?}: {}",
                        item[field],
                        instance_name(instance),
                        ctx.viewer,
                        model.history(which, pair).describe(run.t0)
                    ),
                ));
            }
        }
    }
    if as_self {
        for (which, field, time, kind, category) in [
            (
                Rel::Block,
                "blocking",
                "blockedAt",
                Kind::Following,
                "block_list",
            ),
            (
                Rel::Request,
                "followRequests",
                "requestedAt",
                Kind::Followers,
                "request_list",
            ),
        ] {
            let candidates = model.consent_list(which, id, max_id);
            let expected = candidates.iter().filter(|(_, h)| *h.current()).count() as i64;
            let connection = &data[field];
            check_connection(
                &model,
                &ListCheck {
                    what: format!("{field} of {id}"),
                    category,
                    time,
                    kind,
                    owner: id,
                    first: 20,
                    candidates: &candidates,
                    optional: &HashSet::new(),
                    lower: a,
                    b,
                    widen: false,
                    exact: Some(at_rest.of(which)),
                    may_hide: false,
                    may_show: true,
                },
                connection,
                ctx,
                run.t0,
            )?;
            let total = connection["totalCount"].as_i64().unwrap_or(-1);
            let on_page = connection["edges"].as_array().map_or(0, Vec::len) as i64;
            if total != expected || on_page != expected {
                return Err((
                    category,
                    format!(
                        "{field} of {id} on {}: totalCount {total} with {on_page} edges; the model has {expected}",
                        instance_name(instance)
                    ),
                ));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------
// Reporting

fn report(failures: &[Failure]) -> String {
    let mut out = String::new();
    let mut seen: HashMap<(u64, String), usize> = HashMap::new();
    for failure in failures {
        *seen
            .entry((failure.seed, failure.category.clone()))
            .or_default() += 1;
    }
    let mut printed = HashSet::new();
    for failure in failures {
        let key = (failure.seed, failure.category.clone());
        if !printed.insert(key.clone()) {
            continue;
        }
        out.push_str(&format!(
            "\n=== seed {} — {} ({} time(s)); replay: MODEL_SEED={} cargo test --test integration model -- --nocapture\n{}\n--- faults before it: {}\n--- the operations before it (time since start, client@instance):\n{}\n",
            failure.seed,
            failure.category,
            seen[&key],
            failure.seed,
            failure.message,
            if failure.faults.is_empty() {
                "none".to_owned()
            } else {
                failure.faults.join("; ")
            },
            failure.tail.join("\n")
        ));
    }
    out
}

fn summary(failures: &[Failure]) -> String {
    let mut by_seed: Vec<(u64, Vec<String>)> = Vec::new();
    for failure in failures {
        match by_seed.iter_mut().find(|(s, _)| *s == failure.seed) {
            Some((_, categories)) => {
                if !categories.contains(&failure.category) {
                    categories.push(failure.category.clone());
                }
            }
            None => by_seed.push((failure.seed, vec![failure.category.clone()])),
        }
    }
    by_seed
        .iter()
        .map(|(seed, categories)| format!("seed {seed}: {}", categories.join(", ")))
        .collect::<Vec<_>>()
        .join("\n")
}
