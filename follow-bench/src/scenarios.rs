//! The scenarios: what each request of a scenario asks, drawn from Zipf-distributed users.

use std::sync::Arc;

use bytes::Bytes;
use follow_service::{auth::JwtKeys, seed::ZipfSampler};
use rand::{Rng, rngs::StdRng};
use serde_json::json;

use crate::graph::GraphPlan;

/// One scenario of the benchmark, reported alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// `{ __typename }`: the floor of the HTTP and GraphQL layers on this machine.
    Typename,
    /// `isFollowing` of a follower uniform over all users and a Zipf followee.
    IsFollowing,
    /// `relationships` of a user uniform over all users against 100 Zipf-chosen others.
    Relationships,
    /// One user's follower and following counts.
    Counts,
    /// First page (20) of a popular user's followers, each with viewerIsFollowing and counts.
    FollowersFirstPage,
    /// A page halfway down a popular user's followers, by cursor.
    FollowersDeepPage,
    /// follow then unfollow by writer users, Zipf targets.
    Writes,
    /// LinkBench-like: about half list reads, 15 % writes, the rest status and counts; viewers are the
    /// active ones (as `--abuse` uses it).
    Mix,
    /// The same mix with the keys of the single scenarios: viewers uniform over all users.
    MixUniformViewers,
    /// Follows and unfollows beside blocks, removed followers and follow requests to private accounts,
    /// every answer checked (issue 15; consent.rs drives it).
    ConsentMix,
}

impl Scenario {
    pub const ALL: [Scenario; 10] = [
        Self::Typename,
        Self::IsFollowing,
        Self::Relationships,
        Self::Counts,
        Self::FollowersFirstPage,
        Self::FollowersDeepPage,
        Self::Writes,
        Self::Mix,
        Self::MixUniformViewers,
        Self::ConsentMix,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Typename => "typename",
            Self::IsFollowing => "is_following",
            Self::Relationships => "relationships_1x100",
            Self::Counts => "counts",
            Self::FollowersFirstPage => "followers_first_page",
            Self::FollowersDeepPage => "followers_deep_page",
            Self::Writes => "follow_unfollow",
            Self::Mix => "mix",
            Self::MixUniformViewers => "mix_uniform_viewers",
            Self::ConsentMix => "consent_mix",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Typename => "`{ __typename }`",
            Self::IsFollowing => {
                "`isFollowing(followerId, followeeId)`: follower uniform over all users of the graph, followee Zipf-chosen"
            }
            Self::Relationships => {
                "`relationships(userId, otherIds)`: user uniform over all users of the graph, 100 Zipf-chosen others"
            }
            Self::Counts => "`followerCount` + `followingCount` of a Zipf-chosen user",
            Self::FollowersFirstPage => {
                "first page (20) of a Zipf-chosen owner's followers with handles, `viewerIsFollowing` and counts; the viewer (a token issued per request) uniform over all users"
            }
            Self::FollowersDeepPage => {
                "20 followers halfway down one of the 10 most followed users' lists, by cursor; the viewer an active one (Zipf over 2,000)"
            }
            Self::Writes => "`follow` then `unfollow` of a Zipf-chosen user (each call one sample)",
            Self::Mix => {
                "35 % followers page, 15 % following page, 10 % isFollowing, 10 % relationships(10), 15 % counts, 15 % follow/unfollow; owners, followees, others and targets Zipf-chosen, viewers active ones (Zipf over 2,000)"
            }
            Self::MixUniformViewers => {
                "as `mix`, but every viewer (of pages, isFollowing, relationships) uniform over all users, as in the single scenarios"
            }
            Self::ConsentMix => {
                "28 % follow, 18 % unfollow, 5 % block, 4 % unblock, 5 % removeFollower, 4 % approveFollowRequest, 2 % rejectFollowRequest, 14 % relationships(10) with requested/requestedBy/blocking, 12 % user with isPrivate/viewerHasRequested/blocking/followers.totalCount, 4 % blocking, 4 % followRequests; viewers the writers (each connection its own) and 4 seeded users per connection made private; a follow across a block must be FORBIDDEN (counted apart, not an error), every other answer must match the connection's model; see its own table below"
            }
        }
    }

    pub fn writes(self) -> bool {
        matches!(
            self,
            Self::Writes | Self::Mix | Self::MixUniformViewers | Self::ConsentMix
        )
    }

    /// Whether `--steady` warms this scenario up until its cache hit rates stop rising: every scenario
    /// that reads through the caches (not `typename`, not the writes alone).
    pub fn warms_caches(self) -> bool {
        !matches!(self, Self::Typename | Self::Writes)
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// What every worker shares: the graph's shape, tokens, cursors.
pub struct Shared {
    /// Users of the graph (ids 1..=users).
    pub users: i64,
    /// Signs a token for a viewer drawn from all users, per request.
    keys: JwtKeys,
    pub zipf: ZipfSampler,
    /// Picks among the active viewers (Zipf: some are on far more often than others).
    pub active_zipf: ZipfSampler,
    /// Tokens of the active viewers (user id, token), spread over the whole id range.
    pub viewer_tokens: Vec<(i64, Arc<str>)>,
    /// Writer users and their tokens; worker w owns the writers with index ≡ w (mod workers).
    pub writer_tokens: Vec<(i64, Arc<str>)>,
    /// Deep cursors: (owner, cursor).
    pub deep_cursors: Vec<(i64, String)>,
}

impl Shared {
    /// The samplers and tokens of `plan`'s graph: 2,000 active viewers (fewer in a small graph) spread
    /// over the id range, and the `writers` given (user ids) with their tokens.
    pub fn new(
        plan: &GraphPlan,
        keys: &JwtKeys,
        writers: impl IntoIterator<Item = i64>,
        deep_cursors: Vec<(i64, String)>,
    ) -> anyhow::Result<Self> {
        let active = 2_000.min(plan.users);
        let viewer_tokens = (0..active)
            .map(|i| {
                let id = 1 + (i * 7919) % plan.users;
                Ok((id, Arc::from(keys.issue(id, false, 24 * 3600)?)))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let writer_tokens = writers
            .into_iter()
            .map(|id| Ok((id, Arc::from(keys.issue(id, false, 24 * 3600)?))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            users: plan.users,
            keys: keys.clone(),
            zipf: ZipfSampler::new(plan.users as usize, plan.exponent),
            active_zipf: ZipfSampler::new(active as usize, plan.exponent),
            viewer_tokens,
            writer_tokens,
            deep_cursors,
        })
    }

    /// A token of `user`, signed now (a few microseconds; the server keeps no per-token state).
    pub fn sign(&self, user: i64) -> anyhow::Result<Arc<str>> {
        Ok(Arc::from(self.keys.issue(user, false, 3600)?))
    }

    /// A token of `user` with the admin role, as the user service has (for `upsertUser`).
    pub fn sign_admin(&self, user: i64) -> anyhow::Result<Arc<str>> {
        Ok(Arc::from(self.keys.issue(user, true, 3600)?))
    }
}

/// One request to send: its JSON body and bearer token.
pub struct Request {
    pub body: Bytes,
    pub token: Option<Arc<str>>,
}

/// Whom a request's viewer is drawn from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Viewers {
    /// The active viewers: by Zipf over 2,000 (uniformly among them with `uniform_viewers`).
    Active,
    /// Any user of the graph, uniformly.
    All,
}

const LIST_FIELDS: &str = "edges { cursor node { id handle viewerIsFollowing followerCount followingCount } } pageInfo { hasNextPage endCursor }";

/// Builds one worker's requests; keeps the follow it must undo.
pub struct Generator {
    pub worker: usize,
    pub workers: usize,
    pub rng: StdRng,
    /// A follow this worker made and has not undone yet: (writer index, target).
    pending_unfollow: Option<(usize, i64)>,
    next_writer: usize,
    /// Whether viewers are drawn uniformly from the active ones instead of by Zipf: `--abuse` measures
    /// many clients at a human pace each, as per-client rate limits see real traffic.
    pub uniform_viewers: bool,
}

fn body(query: &str, variables: serde_json::Value) -> Bytes {
    Bytes::from(json!({ "query": query, "variables": variables }).to_string())
}

impl Generator {
    pub fn new(worker: usize, workers: usize, rng: StdRng) -> Self {
        Self {
            worker,
            workers,
            rng,
            pending_unfollow: None,
            next_writer: 0,
            uniform_viewers: false,
        }
    }

    fn zipf_user(&mut self, shared: &Shared) -> i64 {
        shared.zipf.sample(&mut self.rng) as i64
    }

    /// The rank of an active viewer: by Zipf (the busiest most often), or uniformly.
    fn viewer_rank(&mut self, shared: &Shared) -> usize {
        if self.uniform_viewers {
            self.rng.random_range(0..shared.viewer_tokens.len().max(1))
        } else {
            shared.active_zipf.sample(&mut self.rng) - 1
        }
    }

    fn viewer(&mut self, shared: &Shared) -> Arc<str> {
        let rank = self.viewer_rank(shared);
        shared.viewer_tokens[rank % shared.viewer_tokens.len()]
            .1
            .clone()
    }

    /// A viewer's user id drawn from `viewers`.
    fn viewer_id(&mut self, shared: &Shared, viewers: Viewers) -> i64 {
        match viewers {
            Viewers::Active => self.active_user(shared),
            Viewers::All => self.rng.random_range(1..=shared.users),
        }
    }

    /// A viewer's token drawn from `viewers`; one of all users gets a token signed now.
    fn viewer_token(&mut self, shared: &Shared, viewers: Viewers) -> Arc<str> {
        match viewers {
            Viewers::Active => self.viewer(shared),
            Viewers::All => {
                let id = self.viewer_id(shared, viewers);
                shared
                    .sign(id)
                    .expect("signing a token of a few claims cannot fail")
            }
        }
    }

    /// The next request of `scenario`.
    pub fn next(&mut self, scenario: Scenario, shared: &Shared) -> Request {
        match scenario {
            Scenario::Typename => Request {
                body: Bytes::from_static(br#"{"query":"{ __typename }"}"#),
                token: None,
            },
            Scenario::IsFollowing => self.is_following(shared, Viewers::All),
            Scenario::Relationships => self.relationships(shared, 100, Viewers::All),
            Scenario::Counts => self.counts(shared),
            Scenario::FollowersFirstPage => self.list(shared, "followers", Viewers::All),
            Scenario::FollowersDeepPage => {
                let (owner, cursor) =
                    &shared.deep_cursors[self.rng.random_range(0..shared.deep_cursors.len())];
                let query = format!(
                    "query($u: ID!, $after: String) {{ user(id: $u) {{ followers(first: 20, after: $after) {{ {LIST_FIELDS} }} }} }}"
                );
                Request {
                    body: body(&query, json!({ "u": owner.to_string(), "after": cursor })),
                    token: Some(self.viewer(shared)),
                }
            }
            Scenario::Writes => self.write(shared),
            Scenario::Mix => self.mix(shared, Viewers::Active),
            Scenario::MixUniformViewers => self.mix(shared, Viewers::All),
            // Its requests depend on the answers before them: consent.rs sends them.
            Scenario::ConsentMix => unreachable!("consent_mix runs through consent::ConsentMix"),
        }
    }

    fn mix(&mut self, shared: &Shared, viewers: Viewers) -> Request {
        match self.rng.random_range(0..100) {
            0..35 => self.list(shared, "followers", viewers),
            35..50 => self.list(shared, "following", viewers),
            50..60 => self.is_following(shared, viewers),
            60..70 => self.relationships(shared, 10, viewers),
            70..85 => self.counts(shared),
            _ => self.write(shared),
        }
    }

    /// A user who is looking at the product now: one of the active viewers, the busiest most often.
    fn active_user(&mut self, shared: &Shared) -> i64 {
        let rank = self.viewer_rank(shared);
        shared.viewer_tokens[rank % shared.viewer_tokens.len()].0
    }

    fn is_following(&mut self, shared: &Shared, viewers: Viewers) -> Request {
        let (a, b) = (self.viewer_id(shared, viewers), self.zipf_user(shared));
        Request {
            body: body(
                "query($a: ID!, $b: ID!) { isFollowing(followerId: $a, followeeId: $b) }",
                json!({ "a": a.to_string(), "b": b.to_string() }),
            ),
            token: None,
        }
    }

    fn relationships(&mut self, shared: &Shared, others: usize, viewers: Viewers) -> Request {
        let user = self.viewer_id(shared, viewers);
        let ids: Vec<String> = (0..others)
            .map(|_| self.zipf_user(shared).to_string())
            .collect();
        Request {
            body: body(
                "query($u: ID!, $o: [ID!]!) { relationships(userId: $u, otherIds: $o) { otherId following followedBy } }",
                json!({ "u": user.to_string(), "o": ids }),
            ),
            token: None,
        }
    }

    fn counts(&mut self, shared: &Shared) -> Request {
        let user = self.zipf_user(shared);
        Request {
            body: body(
                "query($u: ID!) { user(id: $u) { followerCount followingCount } }",
                json!({ "u": user.to_string() }),
            ),
            token: None,
        }
    }

    fn list(&mut self, shared: &Shared, field: &str, viewers: Viewers) -> Request {
        let user = self.zipf_user(shared);
        let query = format!(
            "query($u: ID!) {{ user(id: $u) {{ {field}(first: 20) {{ {LIST_FIELDS} }} }} }}"
        );
        Request {
            body: body(&query, json!({ "u": user.to_string() })),
            token: Some(self.viewer_token(shared, viewers)),
        }
    }

    /// Alternates a follow by one of this worker's writers and its unfollow, so the graph ends unchanged.
    fn write(&mut self, shared: &Shared) -> Request {
        let (writer, target, mutation) = match self.pending_unfollow.take() {
            Some((writer, target)) => (writer, target, "unfollow"),
            None => {
                let mine: Vec<usize> = (self.worker..shared.writer_tokens.len())
                    .step_by(self.workers)
                    .collect();
                let writer = mine[self.next_writer % mine.len().max(1)];
                self.next_writer += 1;
                let target = self.zipf_user(shared);
                self.pending_unfollow = Some((writer, target));
                (writer, target, "follow")
            }
        };
        Request {
            body: body(
                &format!("mutation($u: ID!) {{ {mutation}(userId: $u) {{ changed }} }}"),
                json!({ "u": target.to_string() }),
            ),
            token: Some(shared.writer_tokens[writer].1.clone()),
        }
    }

    /// The unfollow that puts the graph back, if a follow is outstanding.
    pub fn cleanup(&mut self, shared: &Shared) -> Option<Request> {
        self.pending_unfollow.is_some().then(|| self.write(shared))
    }
}
