//! `consent_mix` (issue 15): follows and unfollows beside blocks, removed followers, and follow requests
//! to private accounts that their owners approve or reject, with every answer checked.
//!
//! Who acts: each connection (worker) owns the writers whose index ≡ worker (mod connections), as
//! `follow_unfollow` does, and [`PRIVATE_PER_WORKER`] seeded users made private for the scenario through
//! `upsertUser` with an admin token (handle and display name kept; public again at the end). Every
//! relationship the mix makes has one of the worker's own writers at one end and, when the other end is
//! a private account, the worker owns that too; so only that worker changes it, one request at a time.
//! Each worker keeps a model of its edges, requests and blocks and knows the answer to every request
//! before it is sent. A follow across a block (either way) must be refused with `FORBIDDEN`: it counts
//! as refused (its own row), not as an error. Any other error, a `FORBIDDEN` the model does not expect,
//! and any answer that differs from the model (a mutation's `changed`/`following`/`requested`/
//! `blocking`/`followedBy`, or a relationship, block or request that a read shows) counts as an error.
//! The seed's edges are never touched: a writer follows nobody in the seed and nobody seeded follows a
//! writer, and plain follows never go to a private account of another worker.
//!
//! At the end (after main.rs drained the outbox and compared every user's counts with the edges): the
//! models against PostgreSQL (every edge, request and block with a writer at one end); the counts the
//! API answers (`users(ids) { followerCount followingCount }`) for every user the mix touched against
//! their edges, polled until equal for [`API_COUNTS_LIMIT`] at most; then the cleanup through the API
//! (every block lifted by its blocker, every edge and request of a writer unfollowed with `unfollowMany`,
//! the private accounts public again), and the checks again: the outbox drained, every count exact in
//! PostgreSQL and through the API, no block, request or writer edge left, no private account, and the
//! seed's edges as many as before. Any fault fails the run (after the report is written).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet, VecDeque},
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

use crate::{
    graph,
    load::{self, LoadResult},
    report::consent::{ApiCounts, Cleanup, ConsentReport, MixState, OperationReport},
    scenarios::{Request, Shared},
};

/// Seeded users made private per connection.
pub const PRIVATE_PER_WORKER: usize = 4;

/// How long the counts the API answers may take to equal the edges.
pub const API_COUNTS_LIMIT: Duration = Duration::from_secs(10);

/// How long the outbox may take to drain after the cleanup.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Connections the cleanup runs over.
const CLEANUP_LANES: usize = 8;

/// Ids per `unfollowMany` and per `users(ids)`.
const BATCH: usize = 100;

/// Users of a relationships read.
const RELATIONSHIP_OTHERS: usize = 10;

/// The share of follows aimed on purpose across a block (when the worker has one): the blocker or
/// the blocked trying to follow the other.
const ACROSS_BLOCK_PERCENT: u32 = 10;

/// One kind of request of the mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Follow,
    Unfollow,
    Block,
    Unblock,
    RemoveFollower,
    Approve,
    Reject,
    Relationships,
    User,
    Blocking,
    FollowRequests,
}

/// The mix: each kind and its percentage of requests.
const MIX: [(Op, u32); 11] = [
    (Op::Follow, 28),
    (Op::Unfollow, 18),
    (Op::Block, 5),
    (Op::Unblock, 4),
    (Op::RemoveFollower, 5),
    (Op::Approve, 4),
    (Op::Reject, 2),
    (Op::Relationships, 14),
    (Op::User, 12),
    (Op::Blocking, 4),
    (Op::FollowRequests, 4),
];

/// The report's row of follows refused across a block.
const REFUSED_ROW: usize = MIX.len();
const ROWS: usize = MIX.len() + 1;

impl Op {
    /// The report's row.
    fn row(self) -> usize {
        MIX.iter()
            .position(|(op, _)| *op == self)
            .expect("every kind is in the mix")
    }

    fn name(self) -> &'static str {
        match self {
            Self::Follow => "follow",
            Self::Unfollow => "unfollow",
            Self::Block => "block",
            Self::Unblock => "unblock",
            Self::RemoveFollower => "removeFollower",
            Self::Approve => "approveFollowRequest",
            Self::Reject => "rejectFollowRequest",
            Self::Relationships => "relationships",
            Self::User => "user",
            Self::Blocking => "blocking",
            Self::FollowRequests => "followRequests",
        }
    }

    fn is_write(self) -> bool {
        !matches!(
            self,
            Self::Relationships | Self::User | Self::Blocking | Self::FollowRequests
        )
    }

    /// Who sends it, and what it asks.
    fn describe(self) -> &'static str {
        match self {
            Self::Follow => {
                "a writer follows: a Zipf-chosen public user (60 %), one of the connection's private accounts (15 %: a request), another of its writers (15 %), or on purpose one side of a block the other (10 %, when the connection has a block)"
            }
            Self::Unfollow => {
                "a writer unfollows one it follows or withdraws a request (85 %, when the connection has any), else a Zipf-chosen user it does not follow"
            }
            Self::Block => {
                "a writer blocks one of its followers (40 %, when one has any), one it follows or asked (30 %), another writer (10 %), or a Zipf-chosen user"
            }
            Self::Unblock => {
                "a writer lifts one of its blocks (90 %, when the connection has any), else a block that does not stand (no change)"
            }
            Self::RemoveFollower => {
                "a writer or a private account removes one of its followers (90 %, when one has any), else a writer removes another who does not follow it"
            }
            Self::Approve => "a private account approves a pending request",
            Self::Reject => "a private account rejects a pending request",
            Self::Relationships => {
                "a writer reads `relationships(userId: self, 10 others) { following followedBy requested requestedBy blocking }`"
            }
            Self::User => {
                "a writer reads `user { isPrivate viewerHasRequested blocking followers { totalCount } }` of a private account (35 %), one it blocks or follows (15 %), or a Zipf-chosen user"
            }
            Self::Blocking => "a writer reads `blocking(first: 20) { totalCount nodes { id } }`",
            Self::FollowRequests => {
                "a private account reads `followRequests(first: 10) { totalCount nodes { id } }`"
            }
        }
    }
}

const FOLLOW: &str = "mutation($u: ID!) { follow(userId: $u) { changed following requested } }";
const UNFOLLOW: &str = "mutation($u: ID!) { unfollow(userId: $u) { changed following requested } }";
const BLOCK: &str = "mutation($u: ID!) { block(userId: $u) { changed blocking } }";
const UNBLOCK: &str = "mutation($u: ID!) { unblock(userId: $u) { changed blocking } }";
const REMOVE: &str = "mutation($u: ID!) { removeFollower(userId: $u) { changed followedBy } }";
const APPROVE: &str =
    "mutation($u: ID!) { approveFollowRequest(userId: $u) { changed followedBy } }";
const REJECT: &str = "mutation($u: ID!) { rejectFollowRequest(userId: $u) { changed followedBy } }";
const RELATIONSHIPS: &str = "query($u: ID!, $o: [ID!]!) { relationships(userId: $u, otherIds: $o) { otherId following followedBy requested requestedBy blocking } }";
const USER: &str = "query($u: ID!) { user(id: $u) { isPrivate viewerHasRequested blocking followers { totalCount } } }";
const BLOCKING: &str = "{ blocking(first: 20) { totalCount nodes { id } } }";
const FOLLOW_REQUESTS: &str = "{ followRequests(first: 10) { totalCount nodes { id } } }";
const UNFOLLOW_MANY: &str = "mutation($ids: [ID!]!) { unfollowMany(userIds: $ids) { changed } }";
const COUNTS: &str = "query($ids: [ID!]!) { users(ids: $ids) { id followerCount followingCount } }";
const HANDLES: &str = "query($ids: [ID!]!) { users(ids: $ids) { id handle displayName } }";
const UPSERT: &str = "mutation($i: UpsertUserInput!) { upsertUser(input: $i) { id isPrivate } }";

fn body(query: &str, variables: Value) -> Bytes {
    Bytes::from(json!({ "query": query, "variables": variables }).to_string())
}

/// What every worker shares: the load's samplers and tokens, and the private accounts.
struct Setup {
    shared: Arc<Shared>,
    /// (user id, token) of the private accounts; worker w owns those with index ≡ w (mod workers).
    private: Vec<(i64, Arc<str>)>,
    private_ids: HashSet<i64>,
}

impl Setup {
    /// A Zipf-chosen user of the seed who is not private.
    fn zipf_public(&self, rng: &mut StdRng) -> i64 {
        loop {
            let user = self.shared.zipf.sample(rng) as i64;
            if !self.private_ids.contains(&user) {
                return user;
            }
        }
    }
}

/// One worker's users and what it knows of them: every edge, request and block with one of its
/// writers at one end.
#[derive(Default)]
struct World {
    writers: Vec<(i64, Arc<str>)>,
    private: Vec<(i64, Arc<str>)>,
    /// (follower, followee).
    follows: BTreeSet<(i64, i64)>,
    /// (requester, private account).
    requests: BTreeSet<(i64, i64)>,
    /// (blocker, blocked).
    blocks: BTreeSet<(i64, i64)>,
    /// Users of the seed the worker's writes reached (their counts are checked at the end).
    touched: BTreeSet<i64>,
}

/// A request about to go, and what it is about.
struct Planned {
    op: Op,
    actor: i64,
    target: i64,
    others: Vec<i64>,
    request: Request,
}

/// How a request went.
#[derive(Debug, PartialEq)]
enum Verdict {
    Done {
        changed: Option<bool>,
    },
    /// A follow across a block, refused with FORBIDDEN as it must be.
    Refused,
    Failed(String),
}

fn pick<T: Copy>(rng: &mut StdRng, items: impl Iterator<Item = T>) -> Option<T> {
    let items: Vec<T> = items.collect();
    (!items.is_empty()).then(|| items[rng.random_range(0..items.len())])
}

fn range_of(user: i64) -> std::ops::RangeInclusive<(i64, i64)> {
    (user, i64::MIN)..=(user, i64::MAX)
}

impl World {
    fn followees(&self, user: i64) -> impl Iterator<Item = i64> + '_ {
        self.follows.range(range_of(user)).map(|&(_, b)| b)
    }

    fn asked(&self, user: i64) -> impl Iterator<Item = i64> + '_ {
        self.requests.range(range_of(user)).map(|&(_, b)| b)
    }

    /// Users with a block between them and `user`, either way.
    fn block_partners(&self, user: i64) -> impl Iterator<Item = i64> + '_ {
        self.blocks.iter().filter_map(move |&(a, b)| {
            if a == user {
                Some(b)
            } else if b == user {
                Some(a)
            } else {
                None
            }
        })
    }

    fn blocked_between(&self, a: i64, b: i64) -> bool {
        self.blocks.contains(&(a, b)) || self.blocks.contains(&(b, a))
    }

    fn writer(&self, rng: &mut StdRng) -> (i64, Arc<str>) {
        self.writers[rng.random_range(0..self.writers.len())].clone()
    }

    fn private_account(&self, rng: &mut StdRng) -> (i64, Arc<str>) {
        self.private[rng.random_range(0..self.private.len())].clone()
    }

    fn token_of_private(&self, id: i64) -> Arc<str> {
        self.private
            .iter()
            .find(|(p, _)| *p == id)
            .map(|(_, t)| t.clone())
            .expect("a request's target is one of the worker's private accounts")
    }

    fn is_writer(&self, id: i64) -> bool {
        self.writers.iter().any(|(w, _)| *w == id)
    }

    /// One of the worker's writers or private accounts.
    fn is_actor(&self, id: i64) -> bool {
        self.is_writer(id) || self.private_ids_hint(id)
    }

    /// The token of one of the worker's writers or private accounts.
    fn token_of(&self, id: i64) -> Arc<str> {
        self.writers
            .iter()
            .chain(&self.private)
            .find(|(u, _)| *u == id)
            .map(|(_, t)| t.clone())
            .expect("an actor is one of the worker's writers or private accounts")
    }

    fn other_writer(&self, rng: &mut StdRng, not: i64) -> Option<i64> {
        pick(
            rng,
            self.writers.iter().map(|(w, _)| *w).filter(|&w| w != not),
        )
    }

    /// The next request: its kind drawn from [`MIX`], its users from the worker's own and the graph's.
    fn plan(&mut self, rng: &mut StdRng, setup: &Setup) -> Planned {
        let mut roll = rng.random_range(0..100);
        let op = MIX
            .iter()
            .find(|(_, share)| {
                if roll < *share {
                    true
                } else {
                    roll -= share;
                    false
                }
            })
            .map_or(Op::Follow, |(op, _)| *op);
        let (w, writer_token) = self.writer(rng);
        let roll = rng.random_range(0..100u32);
        let (actor, token, target, others) = match op {
            Op::Follow if roll < ACROSS_BLOCK_PERCENT && !self.blocks.is_empty() => {
                // One side of a block tries to follow the other: the blocker (always one of the
                // worker's writers) or the blocked, when that is one of its writers too.
                let (blocker, blocked) =
                    pick(rng, self.blocks.iter().copied()).expect("there is a block");
                if self.is_writer(blocked) && rng.random_bool(0.5) {
                    (blocked, self.token_of(blocked), blocker, Vec::new())
                } else {
                    (blocker, self.token_of(blocker), blocked, Vec::new())
                }
            }
            Op::Follow => {
                let target = if roll < 25 {
                    self.private_account(rng).0
                } else if roll < 40 {
                    self.other_writer(rng, w)
                        .unwrap_or_else(|| setup.zipf_public(rng))
                } else {
                    setup.zipf_public(rng)
                };
                (w, writer_token, target, Vec::new())
            }
            Op::Unfollow => {
                // A writer unfollows one it follows or withdraws a request (every edge and request
                // of the model is one of the worker's writers'), or unfollows one it does not.
                let mine = (roll < 85)
                    .then(|| pick(rng, self.follows.iter().chain(&self.requests).copied()))
                    .flatten();
                match mine {
                    Some((writer, target)) => (writer, self.token_of(writer), target, Vec::new()),
                    None => (w, writer_token, setup.zipf_public(rng), Vec::new()),
                }
            }
            Op::Block if roll < 40 && self.follows.iter().any(|&(_, b)| self.is_writer(b)) => {
                // A writer blocks one of its followers.
                let (follower, writer) = pick(
                    rng,
                    self.follows
                        .iter()
                        .copied()
                        .filter(|&(_, b)| self.is_writer(b)),
                )
                .expect("there is such an edge");
                (writer, self.token_of(writer), follower, Vec::new())
            }
            Op::Block => {
                let chosen = if roll < 70 {
                    pick(rng, self.followees(w).chain(self.asked(w)))
                } else if roll < 80 {
                    self.other_writer(rng, w)
                } else {
                    None
                };
                let target = chosen.unwrap_or_else(|| setup.zipf_public(rng));
                (w, writer_token, target, Vec::new())
            }
            Op::Unblock => {
                // A writer lifts one of its blocks (90 %), or one that does not stand.
                match (roll < 90)
                    .then(|| pick(rng, self.blocks.iter().copied()))
                    .flatten()
                {
                    Some((blocker, blocked)) => {
                        (blocker, self.token_of(blocker), blocked, Vec::new())
                    }
                    None => (w, writer_token, setup.zipf_public(rng), Vec::new()),
                }
            }
            Op::RemoveFollower => {
                // A writer or a private account removes one of its followers (90 %), or one who does
                // not follow it (no change).
                let edge = (roll < 90)
                    .then(|| {
                        pick(
                            rng,
                            self.follows
                                .iter()
                                .copied()
                                .filter(|&(_, b)| self.is_actor(b)),
                        )
                    })
                    .flatten();
                match edge {
                    Some((follower, owner)) => (owner, self.token_of(owner), follower, Vec::new()),
                    None => {
                        let target = self
                            .other_writer(rng, w)
                            .unwrap_or_else(|| setup.zipf_public(rng));
                        (w, writer_token, target, Vec::new())
                    }
                }
            }
            Op::Approve | Op::Reject => match pick(rng, self.requests.iter().copied()) {
                Some((requester, p)) => (p, self.token_of_private(p), requester, Vec::new()),
                None => {
                    let (p, token) = self.private_account(rng);
                    (p, token, w, Vec::new())
                }
            },
            Op::Relationships => {
                let others = (0..RELATIONSHIP_OTHERS)
                    .map(|_| {
                        let roll = rng.random_range(0..100u32);
                        let chosen = if roll < 25 {
                            self.other_writer(rng, w)
                        } else if roll < 40 {
                            Some(self.private_account(rng).0)
                        } else if roll < 50 {
                            pick(rng, self.block_partners(w))
                        } else if roll < 60 {
                            pick(rng, self.followees(w))
                        } else {
                            None
                        };
                        chosen.unwrap_or_else(|| setup.zipf_public(rng))
                    })
                    .collect();
                (w, writer_token, w, others)
            }
            Op::User => {
                let chosen = if roll < 35 {
                    Some(self.private_account(rng).0)
                } else if roll < 50 {
                    pick(rng, self.block_partners(w).chain(self.followees(w)))
                } else {
                    None
                };
                let target = chosen.unwrap_or_else(|| setup.zipf_public(rng));
                (w, writer_token, target, Vec::new())
            }
            Op::Blocking => (w, writer_token, w, Vec::new()),
            Op::FollowRequests => {
                let asked = (roll < 70)
                    .then(|| pick(rng, self.requests.iter().map(|&(_, p)| p)))
                    .flatten();
                let p = asked.unwrap_or_else(|| self.private_account(rng).0);
                (p, self.token_of_private(p), p, Vec::new())
            }
        };
        let request = Request {
            body: match op {
                Op::Relationships => body(
                    RELATIONSHIPS,
                    json!({ "u": actor.to_string(),
                            "o": others.iter().map(i64::to_string).collect::<Vec<_>>() }),
                ),
                Op::Blocking => body(BLOCKING, json!({})),
                Op::FollowRequests => body(FOLLOW_REQUESTS, json!({})),
                _ => body(query_of(op), json!({ "u": target.to_string() })),
            },
            token: Some(token),
        };
        Planned {
            op,
            actor,
            target,
            others,
            request,
        }
    }

    /// Checks an answer against the model and, for a write the server made, changes the model as the
    /// server changed the graph.
    fn check(&mut self, planned: &Planned, status: u16, raw: &[u8]) -> Verdict {
        let shown = || {
            format!(
                "{} by {} of {}: HTTP {status}: {}",
                planned.op.name(),
                planned.actor,
                planned.target,
                String::from_utf8_lossy(&raw[..raw.len().min(300)])
            )
        };
        let Ok(answer) = serde_json::from_slice::<Value>(raw) else {
            return Verdict::Failed(shown());
        };
        let (a, t) = (planned.actor, planned.target);
        let across_block = planned.op == Op::Follow && self.blocked_between(a, t);
        if let Some(errors) = answer.get("errors").filter(|e| !e.is_null()) {
            let code = errors[0]["extensions"]["code"].as_str().unwrap_or_default();
            return if across_block && code == "FORBIDDEN" && status == 200 {
                Verdict::Refused
            } else {
                Verdict::Failed(shown())
            };
        }
        if status != 200 {
            return Verdict::Failed(shown());
        }
        let data = &answer["data"];
        let wrong = |expected: &Value, got: &Value| {
            Verdict::Failed(format!(
                "{} by {a} of {t}: expected {expected}, got {got}",
                planned.op.name()
            ))
        };
        if across_block {
            return Verdict::Failed(format!(
                "follow by {a} of {t} across a block was not refused: {data}"
            ));
        }
        match planned.op {
            Op::Follow
            | Op::Unfollow
            | Op::Block
            | Op::Unblock
            | Op::RemoveFollower
            | Op::Approve
            | Op::Reject => {
                let got = &data[planned.op.name()];
                let expected = self.expect_and_apply(planned.op, a, t);
                if *got != expected {
                    // The model keeps what the server should have done: the check against PostgreSQL
                    // at the end tells what it did.
                    return wrong(&expected, got);
                }
                Verdict::Done {
                    changed: expected["changed"].as_bool(),
                }
            }
            Op::Relationships => {
                let expected: Vec<Value> = planned
                    .others
                    .iter()
                    .map(|&o| {
                        json!({
                            "otherId": o.to_string(),
                            "following": self.follows.contains(&(a, o)),
                            "followedBy": self.follows.contains(&(o, a)),
                            "requested": self.requests.contains(&(a, o)),
                            "requestedBy": self.requests.contains(&(o, a)),
                            "blocking": self.blocks.contains(&(a, o)),
                        })
                    })
                    .collect();
                let expected = Value::Array(expected);
                let got = &data["relationships"];
                if *got != expected {
                    return wrong(&expected, got);
                }
                Verdict::Done { changed: None }
            }
            Op::User => {
                let user = &data["user"];
                let got = json!({
                    "isPrivate": user["isPrivate"],
                    "viewerHasRequested": user["viewerHasRequested"],
                    "blocking": user["blocking"],
                    "totalCountShown": user["followers"]["totalCount"].is_u64(),
                });
                let expected = json!({
                    "isPrivate": self.private_ids_hint(t),
                    "viewerHasRequested": self.requests.contains(&(a, t)),
                    "blocking": self.blocks.contains(&(a, t)),
                    "totalCountShown": true,
                });
                if got != expected {
                    return wrong(&expected, user);
                }
                Verdict::Done { changed: None }
            }
            Op::Blocking => {
                let mine: BTreeSet<i64> = self.blocks.range(range_of(a)).map(|&(_, b)| b).collect();
                check_list(&data["blocking"], &mine, 20)
                    .map_or(Verdict::Done { changed: None }, |(expected, got)| {
                        wrong(&expected, &got)
                    })
            }
            Op::FollowRequests => {
                let pending: BTreeSet<i64> = self
                    .requests
                    .iter()
                    .filter(|&&(_, p)| p == a)
                    .map(|&(r, _)| r)
                    .collect();
                check_list(&data["followRequests"], &pending, 10)
                    .map_or(Verdict::Done { changed: None }, |(expected, got)| {
                        wrong(&expected, &got)
                    })
            }
        }
    }

    /// Whether `user` is private, as far as this worker can tell: its own private accounts, or (for
    /// any other user the mix reads) a public one, since other workers' private accounts are never
    /// read by this one's writers except through `relationships` (which does not show privacy).
    fn private_ids_hint(&self, user: i64) -> bool {
        self.private.iter().any(|(p, _)| *p == user)
    }

    /// The payload a write must answer, given the model; and the model changed as the write changes
    /// the graph.
    fn expect_and_apply(&mut self, op: Op, a: i64, t: i64) -> Value {
        match op {
            Op::Follow => {
                if self.private_ids_hint(t) && !self.follows.contains(&(a, t)) {
                    let changed = self.requests.insert((a, t));
                    json!({ "changed": changed, "following": false, "requested": true })
                } else {
                    let changed = self.follows.insert((a, t));
                    json!({ "changed": changed, "following": true, "requested": false })
                }
            }
            Op::Unfollow => {
                let unfollowed = self.follows.remove(&(a, t));
                let withdrawn = self.requests.remove(&(a, t));
                json!({ "changed": unfollowed || withdrawn, "following": false, "requested": false })
            }
            Op::Block => {
                let changed = self.blocks.insert((a, t));
                for pair in [(a, t), (t, a)] {
                    self.follows.remove(&pair);
                    self.requests.remove(&pair);
                }
                json!({ "changed": changed, "blocking": true })
            }
            Op::Unblock => {
                let changed = self.blocks.remove(&(a, t));
                json!({ "changed": changed, "blocking": false })
            }
            Op::RemoveFollower => {
                let changed = self.follows.remove(&(t, a));
                json!({ "changed": changed, "followedBy": false })
            }
            Op::Approve => {
                let changed = self.requests.remove(&(t, a));
                if changed {
                    self.follows.insert((t, a));
                }
                json!({ "changed": changed, "followedBy": self.follows.contains(&(t, a)) })
            }
            Op::Reject => {
                let changed = self.requests.remove(&(t, a));
                json!({ "changed": changed, "followedBy": self.follows.contains(&(t, a)) })
            }
            Op::Relationships | Op::User | Op::Blocking | Op::FollowRequests => Value::Null,
        }
    }
}

/// A list read's `totalCount` and, when it all fits the page, its ids, against `expected`; the
/// (expected, got) pair when they differ.
fn check_list(list: &Value, expected: &BTreeSet<i64>, page: usize) -> Option<(Value, Value)> {
    let ids: BTreeSet<i64> = list["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["id"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let total = list["totalCount"].as_u64();
    let fits = expected.len() <= page;
    let ok = total == Some(expected.len() as u64) && (!fits || ids == *expected);
    (!ok).then(|| {
        (
            json!({ "totalCount": expected.len(), "ids": expected }),
            json!({ "totalCount": total, "ids": ids }),
        )
    })
}

fn query_of(op: Op) -> &'static str {
    match op {
        Op::Follow => FOLLOW,
        Op::Unfollow => UNFOLLOW,
        Op::Block => BLOCK,
        Op::Unblock => UNBLOCK,
        Op::RemoveFollower => REMOVE,
        Op::Approve => APPROVE,
        Op::Reject => REJECT,
        Op::Relationships => RELATIONSHIPS,
        Op::User => USER,
        Op::Blocking => BLOCKING,
        Op::FollowRequests => FOLLOW_REQUESTS,
    }
}

/// One row's figures while they are gathered.
struct Tally {
    requests: u64,
    changed: u64,
    errors: u64,
    latency_us: Histogram<u64>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            requests: 0,
            changed: 0,
            errors: 0,
            latency_us: load::latency_histogram()?,
        })
    }

    fn add(&mut self, other: &Self) -> anyhow::Result<()> {
        self.requests += other.requests;
        self.changed += other.changed;
        self.errors += other.errors;
        self.latency_us.add(&other.latency_us)?;
        Ok(())
    }
}

/// The scenario between its steps: set up, loaded, then checked and put back.
pub struct ConsentMix {
    setup: Arc<Setup>,
    worlds: Vec<World>,
    tallies: Vec<Tally>,
    measured: Duration,
    warmup_errors: u64,
    seed_edges_before: i64,
    users: i64,
}

/// A GraphQL request on `conn` that must answer without errors; its `data`.
async fn call(
    conn: &mut load::Connection,
    addr: SocketAddr,
    request: &Request,
) -> anyhow::Result<Value> {
    let (status, raw) = load::send(conn, addr, request).await?;
    let answer: Value = serde_json::from_slice(&raw).ok().unwrap_or(Value::Null);
    anyhow::ensure!(
        status == 200 && answer.get("errors").is_none_or(Value::is_null),
        "HTTP {status}: {}",
        String::from_utf8_lossy(&raw[..raw.len().min(300)])
    );
    Ok(answer["data"].clone())
}

impl ConsentMix {
    /// Makes the private accounts private (through the API), and checks that no block, request, private
    /// account or writer edge stands before the mix.
    pub async fn prepare(
        addr: SocketAddr,
        shared: Arc<Shared>,
        checks: &tokio_postgres::Client,
        workers: usize,
    ) -> anyhow::Result<Self> {
        let users = shared.users;
        anyhow::ensure!(
            users >= 2 * (workers as i64) + 10,
            "consent_mix needs at least 2 users per connection (and 10 besides)"
        );
        let (left, seed_edges_before) = residue(checks, users).await?;
        anyhow::ensure!(
            left == 0,
            "consent_mix needs a graph without blocks, requests, private accounts or writer edges; \
             {left} stand (a run stopped midway? the next run that reuses the graph clears them)"
        );
        // Spread over the graph past its ten most followed users, one stride apart.
        let count = (PRIVATE_PER_WORKER * workers).min((users as usize - 10) / 2);
        let stride = ((users - 10) / count as i64).max(1);
        let ids: Vec<i64> = (0..count as i64).map(|k| 11 + k * stride).collect();
        let private = ids
            .iter()
            .map(|&id| Ok((id, shared.sign(id)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        set_private(addr, &shared, &ids, true).await?;
        println!(
            "consent_mix: {} seeded users made private ({}…{}), {} writers over {workers} connections",
            ids.len(),
            ids.first().copied().unwrap_or_default(),
            ids.last().copied().unwrap_or_default(),
            shared.writer_tokens.len()
        );
        let setup = Setup {
            private_ids: ids.iter().copied().collect(),
            private,
            shared,
        };
        Ok(Self {
            setup: Arc::new(setup),
            worlds: Vec::new(),
            tallies: Vec::new(),
            measured: Duration::ZERO,
            warmup_errors: 0,
            seed_edges_before,
            users,
        })
    }

    /// Runs the mix with `concurrency` workers as `load::run` runs a scenario: unrecorded until
    /// `warm_up` completes, then `duration` recorded.
    pub async fn load<W>(
        &mut self,
        addr: SocketAddr,
        concurrency: usize,
        warm_up: impl Future<Output = anyhow::Result<W>>,
        duration: Duration,
        rng_seed: u64,
    ) -> anyhow::Result<(LoadResult, W)> {
        let window: Arc<OnceLock<(Instant, Instant)>> = Arc::new(OnceLock::new());
        let mut workers = Vec::with_capacity(concurrency);
        for worker in 0..concurrency {
            let setup = self.setup.clone();
            let window = window.clone();
            let world = World {
                writers: own(&setup.shared.writer_tokens, worker, concurrency),
                private: own(&setup.private, worker, concurrency),
                ..World::default()
            };
            workers.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(rng_seed ^ ((worker as u64 + 1) * 0x00C0_4E47));
                lane(addr, &setup, world, &mut rng, &window).await
            }));
        }
        let warmed = warm_up.await;
        load::open_window(&window, warmed.is_ok(), duration);
        let mut total = LoadResult::empty(duration)?;
        self.tallies = (0..ROWS)
            .map(|_| Tally::new())
            .collect::<anyhow::Result<_>>()?;
        for worker in workers {
            let lane = worker.await.context("a consent_mix worker")??;
            for (sum, part) in self.tallies.iter_mut().zip(&lane.tallies) {
                sum.add(part)?;
                total.requests += part.requests;
                total.errors += part.errors;
                total.latency_us.add(&part.latency_us)?;
            }
            total.first_error = total.first_error.or(lane.first_error);
            self.warmup_errors += lane.warmup_errors;
            self.worlds.push(lane.world);
        }
        self.measured = duration;
        Ok((total, warmed?))
    }

    /// After main.rs drained the outbox and checked the counts: the models against PostgreSQL, the
    /// counts through the API, the cleanup, and the checks again.
    pub async fn finish(
        self,
        addr: SocketAddr,
        checks: &tokio_postgres::Client,
    ) -> anyhow::Result<ConsentReport> {
        let mut faults = Vec::new();
        if self.warmup_errors > 0 {
            faults.push(format!(
                "{} requests of the warm-up failed or were answered wrong",
                self.warmup_errors
            ));
        }
        let shared = &self.setup.shared;

        // The models against PostgreSQL.
        let (db_follows, db_requests, db_blocks) = writer_relations(checks, self.users).await?;
        let union = |f: fn(&World) -> &BTreeSet<(i64, i64)>| -> BTreeSet<(i64, i64)> {
            self.worlds
                .iter()
                .flat_map(|w| f(w).iter().copied())
                .collect()
        };
        let mut after_mix = MixState {
            edges: db_follows.len(),
            requests: db_requests.len(),
            blocks: db_blocks.len(),
            model_differences: 0,
        };
        for (what, model, db) in [
            ("edges", union(|w| &w.follows), &db_follows),
            ("requests", union(|w| &w.requests), &db_requests),
            ("blocks", union(|w| &w.blocks), &db_blocks),
        ] {
            let missing: Vec<_> = model.difference(db).take(5).collect();
            let extra: Vec<_> = db.difference(&model).take(5).collect();
            let differ = model.symmetric_difference(db).count();
            if differ > 0 {
                after_mix.model_differences += differ;
                faults.push(format!(
                    "{differ} {what} differ between the answers and PostgreSQL (answered, not stored: {missing:?}; stored, not answered: {extra:?})"
                ));
            }
        }

        // The counts the API answers.
        let mut users: BTreeSet<i64> = shared.writer_tokens.iter().map(|(w, _)| *w).collect();
        users.extend(self.setup.private.iter().map(|(p, _)| *p));
        users.extend(
            self.worlds
                .iter()
                .flat_map(|w| w.touched.iter().copied())
                .take(500),
        );
        let users: Vec<i64> = users.into_iter().collect();
        let api_counts_after_mix = api_counts(addr, checks, &users).await?;
        if api_counts_after_mix.exact_after_ms.is_none() {
            faults.push(format!(
                "after the mix, {} users' counts answered by the API still differed from their edges after {} s",
                api_counts_after_mix.differing,
                API_COUNTS_LIMIT.as_secs()
            ));
        }

        // Put back.
        let mut cleanup = clean_up(addr, shared, &db_follows, &db_requests, &db_blocks).await?;
        set_private(addr, shared, &users_of(&self.setup.private), false).await?;
        let since = Instant::now();
        while graph::outbox_backlog(checks).await? > 0 {
            anyhow::ensure!(
                since.elapsed() < DRAIN_LIMIT,
                "events still unapplied {} s after the consent_mix cleanup",
                DRAIN_LIMIT.as_secs()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        cleanup.drained_ms = since.elapsed().as_secs_f64() * 1000.0;
        cleanup.count_mismatches = graph::count_mismatches(checks).await?;
        let (left_over, seed_edges_after) = residue(checks, self.users).await?;
        cleanup.left_over = left_over;
        cleanup.seed_edges_before = self.seed_edges_before;
        cleanup.seed_edges_after = seed_edges_after;
        if cleanup.errors > 0 {
            faults.push(format!("{} cleanup calls failed", cleanup.errors));
        }
        if cleanup.count_mismatches != 0 {
            faults.push(format!(
                "after the cleanup, {} users' stored counts differ from their edges",
                cleanup.count_mismatches
            ));
        }
        if left_over != 0 {
            faults.push(format!(
                "after the cleanup, {left_over} blocks, requests, writer edges or private accounts are left"
            ));
        }
        if seed_edges_after != self.seed_edges_before {
            faults.push(format!(
                "the seed had {} edges before consent_mix and {seed_edges_after} after",
                self.seed_edges_before
            ));
        }
        let api_counts_after_cleanup = api_counts(addr, checks, &users).await?;
        if api_counts_after_cleanup.exact_after_ms.is_none() {
            faults.push(format!(
                "after the cleanup, {} users' counts answered by the API still differed from their edges after {} s",
                api_counts_after_cleanup.differing,
                API_COUNTS_LIMIT.as_secs()
            ));
        }

        let seconds = self.measured.as_secs_f64().max(f64::MIN_POSITIVE);
        let operations = (0..ROWS)
            .map(|row| {
                let t = &self.tallies[row];
                let h = &t.latency_us;
                let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                let (name, description, mix_percent, write) = if row == REFUSED_ROW {
                    (
                        "follow → FORBIDDEN".to_owned(),
                        "a follow across a block (either way), refused as it must be",
                        0,
                        false,
                    )
                } else {
                    let (op, share) = MIX[row];
                    (op.name().to_owned(), op.describe(), share, op.is_write())
                };
                OperationReport {
                    name,
                    description,
                    mix_percent,
                    requests: t.requests,
                    per_s: t.requests as f64 / seconds,
                    changed: write.then_some(t.changed),
                    errors: t.errors,
                    p50_ms: ms(0.5),
                    p90_ms: ms(0.9),
                    p99_ms: ms(0.99),
                    max_ms: h.max() as f64 / 1000.0,
                }
            })
            .collect();
        let report = ConsentReport {
            private_accounts: self.setup.private.len(),
            writers: shared.writer_tokens.len(),
            operations,
            refused: self.tallies[REFUSED_ROW].requests,
            warmup_errors: self.warmup_errors,
            after_mix,
            api_counts_after_mix,
            cleanup,
            api_counts_after_cleanup,
            faults,
        };
        println!(
            "{:<22} refused follows {}, after the mix {} writer edges, {} requests, {} blocks (model differences {}), \
             API counts exact after {}; cleanup {} calls, counts mismatches {}, left over {}{}",
            "consent_mix checks:",
            report.refused,
            report.after_mix.edges,
            report.after_mix.requests,
            report.after_mix.blocks,
            report.after_mix.model_differences,
            report
                .api_counts_after_mix
                .exact_after_ms
                .map_or("never".to_owned(), |ms| format!("{ms:.0} ms")),
            report.cleanup.calls,
            report.cleanup.count_mismatches,
            report.cleanup.left_over,
            if report.faults.is_empty() {
                String::new()
            } else {
                format!("; FAULTS: {}", report.faults.join("; "))
            }
        );
        Ok(report)
    }
}

fn users_of(pairs: &[(i64, Arc<str>)]) -> Vec<i64> {
    pairs.iter().map(|(id, _)| *id).collect()
}

/// The items of `all` that worker `worker` of `workers` owns (index ≡ worker mod workers).
fn own<T: Clone>(all: &[T], worker: usize, workers: usize) -> Vec<T> {
    all.iter().skip(worker).step_by(workers).cloned().collect()
}

/// What one worker leaves.
struct LaneResult {
    world: World,
    /// The measured window's figures, per row.
    tallies: Vec<Tally>,
    warmup_errors: u64,
    first_error: Option<String>,
}

/// One worker: requests until the window ends.
async fn lane(
    addr: SocketAddr,
    setup: &Setup,
    mut world: World,
    rng: &mut StdRng,
    window: &OnceLock<(Instant, Instant)>,
) -> anyhow::Result<LaneResult> {
    let mut tallies = (0..ROWS)
        .map(|_| Tally::new())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (mut first_error, mut warmup_errors) = (None, 0);
    let mut conn = load::connect(addr).await?;
    while window.get().is_none_or(|(_, end)| Instant::now() < *end) {
        let planned = world.plan(rng, setup);
        let sent = Instant::now();
        let outcome = load::send(&mut conn, addr, &planned.request).await;
        let latency = sent.elapsed();
        let verdict = match outcome {
            Ok((status, raw)) => world.check(&planned, status, &raw),
            Err(err) => {
                conn = load::connect(addr).await?;
                Verdict::Failed(format!("{}: {err:#}", planned.op.name()))
            }
        };
        if planned.op.is_write() {
            for user in [planned.actor, planned.target] {
                if user <= setup.shared.users && world.touched.len() < 200 {
                    world.touched.insert(user);
                }
            }
        }
        if window.get().is_some_and(|(start, _)| sent >= *start) {
            let row = if verdict == Verdict::Refused {
                REFUSED_ROW
            } else {
                planned.op.row()
            };
            let tally = &mut tallies[row];
            tally.requests += 1;
            tally
                .latency_us
                .saturating_record(latency.as_micros().max(1) as u64);
            match verdict {
                Verdict::Done { changed } => tally.changed += u64::from(changed == Some(true)),
                Verdict::Refused => {}
                Verdict::Failed(err) => {
                    tally.errors += 1;
                    first_error.get_or_insert(err);
                }
            }
        } else if let Verdict::Failed(err) = verdict {
            // Not in the window's figures, but a fault all the same.
            warmup_errors += 1;
            first_error.get_or_insert(format!("(warm-up) {err}"));
        }
    }
    Ok(LaneResult {
        world,
        tallies,
        warmup_errors,
        first_error,
    })
}

/// Edges with a writer at one end, every request, every block.
type Relations = (
    BTreeSet<(i64, i64)>,
    BTreeSet<(i64, i64)>,
    BTreeSet<(i64, i64)>,
);

async fn writer_relations(
    checks: &tokio_postgres::Client,
    users: i64,
) -> anyhow::Result<Relations> {
    let pairs = |rows: Vec<tokio_postgres::Row>| -> BTreeSet<(i64, i64)> {
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let follows = checks
        .query(
            "SELECT follower_id, followee_id FROM follows WHERE follower_id > $1 \
             UNION ALL SELECT follower_id, followee_id FROM follows \
             WHERE followee_id > $1 AND follower_id <= $1",
            &[&users],
        )
        .await
        .context("reading the writers' edges")?;
    let requests = checks
        .query("SELECT requester_id, target_id FROM follow_requests", &[])
        .await?;
    let blocks = checks
        .query("SELECT blocker_id, blocked_id FROM blocks", &[])
        .await?;
    Ok((pairs(follows), pairs(requests), pairs(blocks)))
}

/// What must be gone outside the scenario (blocks, requests, private accounts, edges with a writer at
/// one end), and the seed's edges.
async fn residue(checks: &tokio_postgres::Client, users: i64) -> anyhow::Result<(i64, i64)> {
    let row = checks
        .query_one(
            "SELECT (SELECT count(*) FROM blocks) + (SELECT count(*) FROM follow_requests) \
                  + (SELECT count(*) FROM users WHERE is_private) \
                  + (SELECT count(*) FROM follows WHERE follower_id > $1) \
                  + (SELECT count(*) FROM follows WHERE followee_id > $1 AND follower_id <= $1), \
                    (SELECT count(*) FROM follows WHERE follower_id <= $1 AND followee_id <= $1)",
            &[&users],
        )
        .await
        .context("counting what consent_mix leaves")?;
    Ok((row.get(0), row.get(1)))
}

/// Makes `ids` private or public through `upsertUser` (an admin token), keeping handle and display
/// name. Making one public approves its pending requests, so the cleanup withdraws them first.
async fn set_private(
    addr: SocketAddr,
    shared: &Shared,
    ids: &[i64],
    private: bool,
) -> anyhow::Result<()> {
    let mut conn = load::connect(addr).await?;
    for chunk in ids.chunks(BATCH) {
        let names: Vec<String> = chunk.iter().map(i64::to_string).collect();
        let request = Request {
            body: body(HANDLES, json!({ "ids": names })),
            token: None,
        };
        let data = call(&mut conn, addr, &request).await?;
        for user in data["users"].as_array().into_iter().flatten() {
            let id = user["id"].as_str().unwrap_or_default();
            let input = json!({
                "id": id,
                "handle": user["handle"],
                "displayName": user["displayName"],
                "isPrivate": private,
            });
            let admin = shared.sign_admin(id.parse().unwrap_or_default())?;
            let request = Request {
                body: body(UPSERT, json!({ "i": input })),
                token: Some(admin),
            };
            let done = call(&mut conn, addr, &request)
                .await
                .with_context(|| format!("making user {id} private={private}"))?;
            anyhow::ensure!(
                done["upsertUser"]["isPrivate"] == private,
                "upsertUser of {id} answered {done}"
            );
        }
    }
    Ok(())
}

/// Polls the counts the API answers for `users` until they equal their edges in PostgreSQL, for
/// [`API_COUNTS_LIMIT`] at most.
async fn api_counts(
    addr: SocketAddr,
    checks: &tokio_postgres::Client,
    users: &[i64],
) -> anyhow::Result<ApiCounts> {
    let rows = checks
        .query(
            "SELECT u, (SELECT count(*) FROM follows WHERE followee_id = u), \
                    (SELECT count(*) FROM follows WHERE follower_id = u) \
             FROM unnest($1::int8[]) AS u",
            &[&users],
        )
        .await
        .context("counting edges")?;
    let edges: BTreeMap<String, (i64, i64)> = rows
        .iter()
        .map(|r| (r.get::<_, i64>(0).to_string(), (r.get(1), r.get(2))))
        .collect();
    let mut conn = load::connect(addr).await?;
    let since = Instant::now();
    loop {
        let mut differing = 0;
        for chunk in users.chunks(BATCH) {
            let ids: Vec<String> = chunk.iter().map(i64::to_string).collect();
            let request = Request {
                body: body(COUNTS, json!({ "ids": ids })),
                token: None,
            };
            let data = call(&mut conn, addr, &request).await?;
            for user in data["users"].as_array().into_iter().flatten() {
                let id = user["id"].as_str().unwrap_or_default();
                let answered = (
                    user["followerCount"].as_i64().unwrap_or(-1),
                    user["followingCount"].as_i64().unwrap_or(-1),
                );
                differing += usize::from(edges.get(id) != Some(&answered));
            }
        }
        if differing == 0 {
            return Ok(ApiCounts {
                users: users.len(),
                exact_after_ms: Some(since.elapsed().as_secs_f64() * 1000.0),
                differing,
            });
        }
        if since.elapsed() > API_COUNTS_LIMIT {
            return Ok(ApiCounts {
                users: users.len(),
                exact_after_ms: None,
                differing,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Lifts every block (by its blocker), unfollows every edge and withdraws every request of a writer
/// (`unfollowMany` by the follower, 100 ids a call), over [`CLEANUP_LANES`] connections.
async fn clean_up(
    addr: SocketAddr,
    shared: &Shared,
    follows: &BTreeSet<(i64, i64)>,
    requests: &BTreeSet<(i64, i64)>,
    blocks: &BTreeSet<(i64, i64)>,
) -> anyhow::Result<Cleanup> {
    let started = Instant::now();
    let mut calls: VecDeque<(bool, Request)> = VecDeque::new();
    for &(blocker, blocked) in blocks {
        calls.push_back((
            true,
            Request {
                body: body(UNBLOCK, json!({ "u": blocked.to_string() })),
                token: Some(shared.sign(blocker)?),
            },
        ));
    }
    let mut by_follower: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for &(follower, followee) in follows.iter().chain(requests) {
        by_follower
            .entry(follower)
            .or_default()
            .push(followee.to_string());
    }
    for (follower, followees) in by_follower {
        let token = shared.sign(follower)?;
        for ids in followees.chunks(BATCH) {
            calls.push_back((
                false,
                Request {
                    body: body(UNFOLLOW_MANY, json!({ "ids": ids })),
                    token: Some(token.clone()),
                },
            ));
        }
    }
    let queue = Arc::new(Mutex::new(calls));
    let mut lanes = Vec::new();
    for _ in 0..CLEANUP_LANES {
        let queue = queue.clone();
        let mut conn = load::connect(addr).await?;
        lanes.push(tokio::spawn(async move {
            let mut done = Cleanup::default();
            loop {
                let next = queue.lock().expect("the queue's lock").pop_front();
                let Some((unblock, request)) = next else {
                    break;
                };
                done.calls += 1;
                match call(&mut conn, addr, &request).await {
                    Ok(data) if unblock => {
                        done.unblocked += u64::from(data["unblock"]["changed"] == true);
                    }
                    Ok(data) => {
                        done.unfollowed += data["unfollowMany"]
                            .as_array()
                            .map_or(0, |all| all.iter().filter(|p| p["changed"] == true).count())
                            as u64;
                    }
                    Err(err) => {
                        done.errors += 1;
                        eprintln!("consent_mix cleanup: {err:#}");
                        if let Ok(fresh) = load::connect(addr).await {
                            conn = fresh;
                        }
                    }
                }
            }
            done
        }));
    }
    let mut total = Cleanup::default();
    for lane in lanes {
        let part = lane.await.context("a cleanup lane")?;
        total.calls += part.calls;
        total.unblocked += part.unblocked;
        total.unfollowed += part.unfollowed;
        total.errors += part.errors;
    }
    total.seconds = started.elapsed().as_secs_f64();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> World {
        let token: Arc<str> = Arc::from("t");
        World {
            writers: vec![(101, token.clone()), (102, token.clone())],
            private: vec![(11, token)],
            ..World::default()
        }
    }

    fn planned(op: Op, actor: i64, target: i64) -> Planned {
        Planned {
            op,
            actor,
            target,
            others: Vec::new(),
            request: Request {
                body: Bytes::new(),
                token: None,
            },
        }
    }

    fn answer(op: Op, payload: Value) -> Vec<u8> {
        json!({ "data": { op.name(): payload } })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn mix_shares_add_up_to_a_hundred() {
        assert_eq!(MIX.iter().map(|(_, s)| s).sum::<u32>(), 100);
    }

    #[test]
    fn a_follow_of_a_private_account_is_a_request_the_owner_approves() {
        let mut w = world();
        let asked = json!({ "changed": true, "following": false, "requested": true });
        assert_eq!(
            w.check(
                &planned(Op::Follow, 101, 11),
                200,
                &answer(Op::Follow, asked)
            ),
            Verdict::Done {
                changed: Some(true)
            }
        );
        assert!(w.requests.contains(&(101, 11)));
        let approved = json!({ "changed": true, "followedBy": true });
        assert_eq!(
            w.check(
                &planned(Op::Approve, 11, 101),
                200,
                &answer(Op::Approve, approved)
            ),
            Verdict::Done {
                changed: Some(true)
            }
        );
        assert!(w.follows.contains(&(101, 11)) && w.requests.is_empty());
        // Following again is no request: the edge stands.
        let again = json!({ "changed": false, "following": true, "requested": false });
        assert_eq!(
            w.check(
                &planned(Op::Follow, 101, 11),
                200,
                &answer(Op::Follow, again)
            ),
            Verdict::Done {
                changed: Some(false)
            }
        );
    }

    #[test]
    fn a_block_ends_edges_both_ways_and_refuses_follows_either_way() {
        let mut w = world();
        w.follows.extend([(101, 102), (102, 101)]);
        let blocked = json!({ "changed": true, "blocking": true });
        assert_eq!(
            w.check(
                &planned(Op::Block, 101, 102),
                200,
                &answer(Op::Block, blocked)
            ),
            Verdict::Done {
                changed: Some(true)
            }
        );
        assert!(w.follows.is_empty());
        let forbidden =
            br#"{"data":null,"errors":[{"message":"you cannot follow this user","extensions":{"code":"FORBIDDEN"}}]}"#;
        assert_eq!(
            w.check(&planned(Op::Follow, 102, 101), 200, forbidden),
            Verdict::Refused
        );
        assert_eq!(
            w.check(&planned(Op::Follow, 101, 102), 200, forbidden),
            Verdict::Refused
        );
        // FORBIDDEN where no block stands is an error; so is a follow across one that succeeds.
        assert!(matches!(
            w.check(&planned(Op::Follow, 101, 5), 200, forbidden),
            Verdict::Failed(_)
        ));
        let followed = json!({ "changed": true, "following": true, "requested": false });
        assert!(matches!(
            w.check(
                &planned(Op::Follow, 102, 101),
                200,
                &answer(Op::Follow, followed)
            ),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn a_wrong_payload_or_read_is_an_error() {
        let mut w = world();
        let wrong = json!({ "changed": false, "following": true, "requested": false });
        assert!(matches!(
            w.check(
                &planned(Op::Follow, 101, 5),
                200,
                &answer(Op::Follow, wrong)
            ),
            Verdict::Failed(_)
        ));
        let mut read = planned(Op::Relationships, 101, 101);
        read.others = vec![5];
        let shown = json!({ "data": { "relationships": [{ "otherId": "5", "following": false,
            "followedBy": false, "requested": false, "requestedBy": false, "blocking": false }] } });
        assert!(matches!(
            w.check(&read, 200, shown.to_string().as_bytes()),
            Verdict::Failed(_)
        ));
        w.follows.insert((101, 5)); // as the wrong answer above made it.
        assert_eq!(
            w.check(
                &read,
                200,
                {
                    let mut s = shown.clone();
                    s["data"]["relationships"][0]["following"] = json!(true);
                    s.to_string()
                }
                .as_bytes()
            ),
            Verdict::Done { changed: None }
        );
    }

    #[test]
    fn every_worker_owns_its_share() {
        let all: Vec<i64> = (0..10).collect();
        assert_eq!(own(&all, 1, 4), vec![1, 5, 9]);
        assert_eq!(own(&all, 3, 4), vec![3, 7]);
    }
}
