//! Rate limits shared by every instance: a GCRA in Redis, one Lua script per check, and an in-process
//! limiter with the same quotas while Redis is unavailable.
//!
//! **Why GCRA.** The generic cell rate algorithm keeps one number per client and quota, the theoretical
//! arrival time (TAT): when the bucket would be whole again. Spending `cost` points of a quota of
//! `points` per `period` moves the TAT `cost × period / points` later, and is allowed if the TAT stays
//! within one period of now. That is a token bucket holding `points` (the whole quota may be spent at
//! once) without a refill job or a second field, exact to the microsecond, and it answers the
//! `RateLimit-*` headers directly: what is left is the room between the TAT and now + period, the reset
//! is TAT − now, and a refused request passes exactly when the TAT has come back far enough, which is
//! the `retry_after` we tell (a retry after it succeeds, unless something else spent meanwhile). A fixed
//! window lets a client spend twice its quota across a window's edge; a sliding log stores every request.
//! The arithmetic lives in [`gcra`], shared by both backends.
//!
//! **Why one Lua script.** A check may name several quotas (a follow spends one point against a
//! per-minute and a per-day quota) and spends on all of them or on none: reading and writing every
//! bucket in one script is atomic in Redis, so two instances never interleave between the read and the
//! write, and a check costs one round trip whatever it names. The clock is Redis's `TIME`, read inside
//! the script, so instances with skewed clocks agree on every bucket. A bucket that was spent expires
//! (`SET … PX`) when it would be whole again, so a client that stops coming leaves no key. The script is
//! called by its hash (EVALSHA), and sent once more (EVAL) when Redis answers `NOSCRIPT` after a restart.
//!
//! **Keys.** `{prefix}:rl:{<client>}:<limit>`, e.g. `follow:rl:{viewer:42}:follow-day`, holding the TAT
//! in µs of Redis's clock. The hash tag is the client, so one client's quotas share a Cluster slot and
//! the all-or-nothing script stays legal in a Cluster. (A check naming several clients, say a viewer and
//! an address, works on one Redis; in a Cluster its buckets would have to share a tag.)
//!
//! **Costs.** A check spends `cost` points against each quota: writes one per edge change, reads their
//! query cost. `cost == 0` spends nothing and reports what is left. A cost above a quota's points could
//! never pass: it is [`Verdict::TooCostly`] at once, spends nothing, and tells no wait, so the caller can
//! say so instead of sending the client into endless retries.
//!
//! **When Redis is unavailable** (the shared breaker [`RedisHealth`] is not closed, the call fails, or it
//! exceeds its time budget) the check is answered by [`local`]: the same GCRA over the same quotas, per
//! instance, in a bounded map. A request is never failed because Redis failed. Meanwhile N instances
//! allow up to N times a quota, and what was spent on one side is not carried to the other when Redis
//! returns; both err towards letting clients through, which is the right way for an outage to err. The
//! first failure of an outage is logged at warn, the rest at debug; every local answer is counted in
//! `follow_rate_limiter_fallback_total`. Like the persisted queries, the limiter never takes the
//! breaker's half-open probe: the cache takes it, and must clean up before Redis is trusted again.
//!
//! **Leases.** The points an operation costs go through [`RateLimiter::spend`]: a busy client's points
//! are taken from Redis a slice at a time and handed out by the instance (see [`lease`]), never more
//! than the shared budget, so that a cheap request does not pay a round trip to Redis each time.

mod gcra;
pub mod lease;
mod local;
mod script;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use self::{
    gcra::{Cell, Outcome},
    local::LocalLimiter,
};
use crate::{
    redis_health::RedisHealth,
    redis_pool::RedisPool,
    telemetry::metrics::{RATE_LIMITED, RATE_LIMITER_FALLBACK},
};

/// A budget: `points` per `period`, all of which may be spent at once (burst = points).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub points: u32,
    pub period: Duration,
}

impl Quota {
    pub const fn new(points: u32, period: Duration) -> Self {
        Self { points, period }
    }

    pub const fn per_second(points: u32) -> Self {
        Self::new(points, Duration::from_secs(1))
    }

    pub const fn per_minute(points: u32) -> Self {
        Self::new(points, Duration::from_secs(60))
    }

    pub const fn per_hour(points: u32) -> Self {
        Self::new(points, Duration::from_secs(3_600))
    }

    pub const fn per_day(points: u32) -> Self {
        Self::new(points, Duration::from_secs(86_400))
    }
}

/// One quota to check under one key, e.g. ("follow-day", "viewer:42"). The name is a metric label, so
/// it is one of a few constants; the client is anything that identifies who spends.
#[derive(Clone, Copy, Debug)]
pub struct Limit<'a> {
    pub name: &'static str,
    pub client: &'a str,
    pub quota: Quota,
}

impl<'a> Limit<'a> {
    pub const fn new(name: &'static str, client: &'a str, quota: Quota) -> Self {
        Self {
            name,
            client,
            quota,
        }
    }
}

/// What a check decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The cost was spent against every quota.
    Allowed,
    /// Some quota has not enough points now; nothing was spent. Retry after `retry_after`.
    Limited,
    /// The cost exceeds some quota's points: it can never pass. Nothing was spent.
    TooCostly,
}

/// What a check decided, with what the `RateLimit-*` and `Retry-After` headers say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The most restrictive quota's points (RateLimit-Limit): when allowed, the quota with the fewest
    /// points left; when limited, the one that keeps the request waiting longest; when too costly, the
    /// smallest quota the cost exceeds.
    pub limit: u32,
    /// Points left in that quota after this check (RateLimit-Remaining).
    pub remaining: u32,
    /// Until that quota is whole again (RateLimit-Reset).
    pub reset: Duration,
    /// When [`Verdict::Limited`]: the wait after which the same request passes, if nothing else spends
    /// meanwhile (Retry-After; round up to whole seconds when rendered). Zero otherwise.
    pub retry_after: Duration,
    /// Whether the answer came from the local fallback (Redis unavailable).
    pub local: bool,
}

impl Decision {
    /// The answer of a limiter that limits nothing (disabled, or a check naming no quota): allowed, with
    /// `u32::MAX` points left. Send no `RateLimit-*` headers for it.
    pub const fn unlimited() -> Self {
        Self {
            verdict: Verdict::Allowed,
            limit: u32::MAX,
            remaining: u32::MAX,
            reset: Duration::ZERO,
            retry_after: Duration::ZERO,
            local: false,
        }
    }

    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allowed
    }

    /// `retry_after` in whole seconds, rounded up (a retry a second early would be refused again).
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after)
    }

    /// `reset` in whole seconds, rounded up.
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset)
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// The rate limiter; cheap to clone (the clones share their state).
#[derive(Clone)]
pub struct RateLimiter {
    /// `None` when disabled.
    inner: Option<Arc<Inner>>,
}

struct Inner {
    redis: RedisPool,
    health: Arc<RedisHealth>,
    prefix: String,
    timeout: Duration,
    local: LocalLimiter,
    /// Slices of busy clients' points held by this instance.
    leases: lease::Leases,
    /// Whether this outage has been logged at warn already (cleared by the next answer from Redis).
    warned: AtomicBool,
}

/// Why a check was answered locally (the fallback metric's `reason`).
#[derive(Clone, Copy, Debug)]
enum Fallback {
    BreakerOpen,
    Error,
    Timeout,
}

impl Fallback {
    const ALL: [Self; 3] = [Self::BreakerOpen, Self::Error, Self::Timeout];

    fn label(self) -> &'static str {
        match self {
            Self::BreakerOpen => "breaker_open",
            Self::Error => "error",
            Self::Timeout => "timeout",
        }
    }
}

impl RateLimiter {
    /// A limiter keeping its buckets in Redis under `prefix`, each call within `timeout`.
    pub fn new(
        redis: RedisPool,
        health: Arc<RedisHealth>,
        prefix: &str,
        timeout: Duration,
    ) -> Self {
        // Every fallback reason's series from the start (at zero unless counting already).
        for reason in Fallback::ALL {
            ::metrics::counter!(RATE_LIMITER_FALLBACK, "reason" => reason.label()).increment(0);
        }
        Self {
            inner: Some(Arc::new(Inner {
                redis,
                health,
                prefix: prefix.to_owned(),
                timeout,
                local: LocalLimiter::new(local::DEFAULT_MAX_KEYS),
                leases: lease::Leases::default(),
                warned: AtomicBool::new(false),
            })),
        }
    }

    /// A limiter that allows everything (FOLLOW_RATE_LIMIT=off).
    pub fn disabled() -> Self {
        Self { inner: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Spends `cost` points against every limit, all or nothing.
    pub async fn check(&self, limits: &[Limit<'_>], cost: u32) -> Decision {
        let Some(inner) = &self.inner else {
            return Decision::unlimited();
        };
        if limits.is_empty() {
            return Decision::unlimited();
        }
        let (decision, decisive) = inner.decide(limits, cost).await;
        count_refusal(limits, &decision, decisive);
        decision
    }

    /// Spends `cost` points against one quota, like [`check`](Self::check), except that a busy client's
    /// points are taken from Redis a slice at a time and handed out here (see [`lease`]).
    pub async fn spend(&self, limit: Limit<'_>, cost: u32) -> Decision {
        let Some(inner) = &self.inner else {
            return Decision::unlimited();
        };
        let limits = [limit];
        let slice = match inner
            .leases
            .plan(limit.client, limit.quota, cost, Instant::now())
        {
            lease::Plan::Answered(decision) => return decision,
            lease::Plan::Ask { slice } => slice,
        };
        if slice > 0 {
            let (decision, _) = inner.decide(&limits, cost.saturating_add(slice)).await;
            if decision.is_allowed() {
                return inner.leases.answered(
                    limit.client,
                    limit.quota,
                    slice,
                    decision,
                    Instant::now(),
                );
            }
            // Near the limit: the cost alone decides, as without leases (and only that is counted).
            inner.leases.refused_slice(limit.client, Instant::now());
        }
        let (decision, decisive) = inner.decide(&limits, cost).await;
        count_refusal(&limits, &decision, decisive);
        inner
            .leases
            .answered(limit.client, limit.quota, 0, decision, Instant::now())
    }
}

/// Counts a refusal in `follow_rate_limited_total`, by the quota that refused and where.
fn count_refusal(limits: &[Limit<'_>], decision: &Decision, decisive: usize) {
    if !decision.is_allowed() {
        let source = if decision.local { "local" } else { "redis" };
        let name = limits.get(decisive).map_or("unknown", |limit| limit.name);
        ::metrics::counter!(RATE_LIMITED, "limit" => name, "source" => source).increment(1);
    }
}

impl Inner {
    /// One check, in Redis or, while it is unavailable, locally; and the index of the decisive quota.
    async fn decide(&self, limits: &[Limit<'_>], cost: u32) -> (Decision, usize) {
        // A cost no quota can hold spends nothing: the check only reads what is left.
        let spend = if limits.iter().any(|l| cost > l.quota.points) {
            0
        } else {
            cost
        };
        let cells: Vec<Cell> = limits.iter().map(|l| Cell::new(l.quota, spend)).collect();
        let (outcome, local) = match self.shared(limits, &cells).await {
            Ok(outcome) => (outcome, false),
            Err(reason) => {
                ::metrics::counter!(RATE_LIMITER_FALLBACK, "reason" => reason.label()).increment(1);
                (self.local.check(limits, &cells), true)
            }
        };
        gcra::decide(limits, &cells, cost, &outcome, local)
    }

    fn key(&self, limit: &Limit<'_>) -> String {
        format!("{}:rl:{{{}}}:{}", self.prefix, limit.client, limit.name)
    }

    /// The check in Redis, if the breaker allows and Redis answers in time.
    async fn shared(&self, limits: &[Limit<'_>], cells: &[Cell]) -> Result<Outcome, Fallback> {
        if !self.health.is_closed() {
            return Err(Fallback::BreakerOpen);
        }
        let keys: Vec<String> = limits.iter().map(|l| self.key(l)).collect();
        match tokio::time::timeout(self.timeout, script::check(&self.redis, &keys, cells)).await {
            Ok(Ok(outcome)) => {
                self.health.success();
                self.warned.store(false, Ordering::Relaxed);
                Ok(outcome)
            }
            Ok(Err(err)) => {
                self.failed(&format!("{err:#}"));
                Err(Fallback::Error)
            }
            Err(_) => {
                self.failed("timed out");
                Err(Fallback::Timeout)
            }
        }
    }

    fn failed(&self, error: &str) {
        self.health.failure();
        if self.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(%error, "rate limit check in Redis failed; answered locally");
        } else {
            tracing::warn!(
                %error,
                "rate limit check in Redis failed; answering from this instance's limiter until Redis is back"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_seconds_round_up() {
        let decision = Decision {
            retry_after: Duration::from_millis(200),
            reset: Duration::from_secs(2),
            ..Decision::unlimited()
        };
        assert_eq!(decision.retry_after_secs(), 1);
        assert_eq!(decision.reset_secs(), 2);
        assert_eq!(Decision::unlimited().retry_after_secs(), 0);
    }

    #[tokio::test]
    async fn a_disabled_limiter_allows_everything() {
        let limiter = RateLimiter::disabled();
        assert!(!limiter.is_enabled());
        let limit = Limit {
            name: "follow-minute",
            client: "viewer:1",
            quota: Quota::per_minute(0),
        };
        let decision = limiter.check(&[limit], 1_000).await;
        assert_eq!(decision, Decision::unlimited());
    }
}
