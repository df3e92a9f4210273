//! The rate limiter against the real Redis: budgets shared across instances, all-or-nothing checks,
//! honest retry-after, and the local fallback when Redis is unreachable. Each test has its own prefix.
//! Quotas are slow (points per minute) wherever timing does not matter, so a loaded machine does not
//! refill a point between two steps; the retry test uses a period of a few seconds and sleeps ~1 s.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use follow_service::{
    ratelimit::{Limit, Quota, RateLimiter, Verdict},
    redis_health::{Permit, RedisHealth},
    redis_pool::{self, RedisTarget, redis},
};

use crate::support::{RedisProxy, eventually, redis_connection, redis_target};

const MINUTE: Quota = Quota::per_minute(10);

fn prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// A limiter over Redis at `url`, with a breaker opening after `failures_to_open` failures.
fn limiter_at(
    target: &RedisTarget,
    prefix: &str,
    timeout: Duration,
    failures_to_open: u32,
) -> (RateLimiter, Arc<RedisHealth>) {
    let pool = redis_pool::build_pool(target, 2, timeout).expect("Redis pool");
    let health = Arc::new(RedisHealth::new(
        failures_to_open,
        Duration::from_millis(100),
    ));
    let limiter = RateLimiter::new(pool, health.clone(), prefix, timeout);
    (limiter, health)
}

/// A limiter over the test Redis, with a budget generous enough that it never falls back.
fn limiter(prefix: &str) -> RateLimiter {
    limiter_at(&redis_target(), prefix, Duration::from_secs(2), 5).0
}

async fn redis_conn() -> redis_pool::Dedicated {
    redis_connection()
        .await
        .expect("Redis is reachable for tests")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_budget() {
    let prefix = prefix();
    let (a, b) = (limiter(&prefix), limiter(&prefix));
    let minute = [Limit::new("minute", "viewer:1", MINUTE)];

    let first = a.check(&minute, 6).await;
    assert_eq!(first.verdict, Verdict::Allowed);
    assert!(!first.local, "answered by Redis");
    assert_eq!((first.limit, first.remaining), (10, 4));
    assert!(first.reset > Duration::from_secs(35) && first.reset <= Duration::from_secs(36));

    let seen = b.check(&minute, 0).await;
    assert_eq!(
        (seen.verdict, seen.remaining),
        (Verdict::Allowed, 4),
        "B sees what A spent"
    );
    let rest = b.check(&minute, 4).await;
    assert_eq!((rest.verdict, rest.remaining), (Verdict::Allowed, 0));

    let refused = a.check(&minute, 1).await;
    assert_eq!(refused.verdict, Verdict::Limited, "A sees what B spent");
    assert!(!refused.local);
    assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(6));
    assert_eq!(refused.remaining, 0);

    // Another client has a budget of its own.
    let other = [Limit::new("minute", "viewer:2", MINUTE)];
    assert_eq!(a.check(&other, 10).await.verdict, Verdict::Allowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_spends_on_every_quota_or_on_none() {
    let prefix = prefix();
    let limiter = limiter(&prefix);
    let both = [
        Limit::new("follow-minute", "viewer:7", MINUTE),
        Limit::new(
            "follow-day",
            "viewer:7",
            Quota::new(3, Duration::from_secs(600)),
        ),
    ];
    for expected in [2, 1, 0] {
        let decision = limiter.check(&both, 1).await;
        assert_eq!(decision.verdict, Verdict::Allowed);
        assert_eq!(
            (decision.limit, decision.remaining),
            (3, expected),
            "the day quota is tighter"
        );
    }
    let refused = limiter.check(&both, 1).await;
    assert_eq!(
        (refused.verdict, refused.limit),
        (Verdict::Limited, 3),
        "the day quota refuses"
    );
    assert!(
        refused.retry_after > Duration::from_secs(190),
        "{refused:?}"
    );
    // The refused follow was not charged to the minute quota: 3 spent, 7 left.
    let minute = limiter.check(&both[..1], 0).await;
    assert_eq!((minute.verdict, minute.remaining), (Verdict::Allowed, 7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_retry_after_passes_and_an_earlier_one_does_not() {
    let prefix = prefix();
    let limiter = limiter(&prefix);
    // A point every 500 ms.
    let fast = [Limit::new(
        "reads",
        "viewer:3",
        Quota::new(10, Duration::from_secs(5)),
    )];
    assert_eq!(limiter.check(&fast, 10).await.verdict, Verdict::Allowed);
    // Three points need 1.5 s of refill.
    let refused = limiter.check(&fast, 3).await;
    assert_eq!(refused.verdict, Verdict::Limited);
    assert!(
        refused.retry_after > Duration::from_millis(1_000)
            && refused.retry_after <= Duration::from_millis(1_500),
        "{refused:?}"
    );
    assert_eq!(refused.retry_after_secs(), 2, "rendered rounded up");

    // Back after a third of the wait: still refused, with the rest of the wait.
    tokio::time::sleep(refused.retry_after / 3).await;
    let early = limiter.check(&fast, 3).await;
    assert_eq!(early.verdict, Verdict::Limited, "{early:?}");
    assert!(early.retry_after < refused.retry_after);

    // Back after exactly the wait told: it passes.
    tokio::time::sleep(early.retry_after).await;
    let retried = limiter.check(&fast, 3).await;
    assert_eq!(retried.verdict, Verdict::Allowed, "{retried:?}");
    assert!(!retried.local);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_above_the_quota_is_too_costly_and_spends_nothing() {
    let prefix = prefix();
    let limiter = limiter(&prefix);
    let both = [
        Limit::new("reads-minute", "viewer:4", MINUTE),
        Limit::new("reads-day", "viewer:4", Quota::per_day(1_000)),
    ];
    assert_eq!(limiter.check(&both, 4).await.remaining, 6);
    let costly = limiter.check(&both, 11).await;
    assert_eq!(costly.verdict, Verdict::TooCostly);
    assert_eq!(
        (costly.limit, costly.remaining),
        (10, 6),
        "the minute quota, unspent"
    );
    assert_eq!(costly.retry_after, Duration::ZERO);
    let rest = limiter.check(&both, 6).await;
    assert_eq!(
        (rest.verdict, rest.remaining),
        (Verdict::Allowed, 0),
        "nothing was spent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_are_keyed_by_client_and_expire_when_whole_again() {
    let prefix = prefix();
    let limiter = limiter(&prefix);
    let mut conn = redis_conn().await;
    let key = format!("{prefix}:rl:{{viewer:5}}:reads");
    let reads = [Limit::new(
        "reads",
        "viewer:5",
        Quota::new(10, Duration::from_secs(2)),
    )];

    let peek = limiter.check(&reads, 0).await;
    assert_eq!((peek.verdict, peek.remaining), (Verdict::Allowed, 10));
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert!(!exists, "a check spending nothing writes nothing");

    limiter.check(&reads, 1).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(
        ttl > 0 && ttl <= 200,
        "expires when whole again (a point is 200 ms): {ttl}"
    );
    let tat: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert!(
        tat.len() >= 16 && tat.bytes().all(|b| b.is_ascii_digit()),
        "the TAT in whole microseconds: {tat}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_falls_back_to_the_local_limiter_quickly() {
    // Nothing listens on port 1: every call fails at once, and the breaker then skips Redis.
    let (limiter, _) = limiter_at(
        &RedisTarget::Node("redis://127.0.0.1:1".into()),
        &prefix(),
        Duration::from_millis(50),
        3,
    );
    assert_local_budget(&limiter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_falls_back_after_the_timeout() {
    // A server that accepts connections and never answers: every call runs into the 50 ms timeout
    // (the breaker never opens here, so each check pays it).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("redis://{}", silent.local_addr().expect("address"));
    let (limiter, health) = limiter_at(
        &RedisTarget::Node(url.clone()),
        &prefix(),
        Duration::from_millis(50),
        1_000,
    );
    assert_local_budget(&limiter).await;
    assert!(health.is_closed());
}

/// Ten points per minute pass, locally and quickly, and the eleventh is refused.
async fn assert_local_budget(limiter: &RateLimiter) {
    let minute = [Limit::new("minute", "viewer:6", MINUTE)];
    for i in 0..10 {
        let started = Instant::now();
        let decision = limiter.check(&minute, 1).await;
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "check {i} took {:?}",
            started.elapsed()
        );
        assert_eq!(decision.verdict, Verdict::Allowed, "check {i}");
        assert!(decision.local, "answered locally");
        assert_eq!(decision.remaining, 9 - i);
    }
    let started = Instant::now();
    let refused = limiter.check(&minute, 1).await;
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!((refused.verdict, refused.local), (Verdict::Limited, true));
    assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_budget_resumes_when_redis_is_back() {
    let prefix = prefix();
    let proxy = RedisProxy::start().await;
    let (limiter, health) = limiter_at(
        &RedisTarget::Node(proxy.url.clone()),
        &prefix,
        Duration::from_millis(200),
        1,
    );
    let minute = [Limit::new("minute", "viewer:8", MINUTE)];
    let spent = limiter.check(&minute, 3).await;
    assert_eq!((spent.remaining, spent.local), (7, false));

    proxy.cut();
    let during = limiter.check(&minute, 1).await;
    assert!(during.local, "{during:?}");
    assert_eq!(during.remaining, 9, "the local limiter has its own budget");
    assert!(!health.is_closed(), "one failure opened this breaker");
    let skipped = limiter.check(&minute, 1).await;
    assert_eq!((skipped.local, skipped.remaining), (true, 8));

    // Redis returns. In the service the cache takes the breaker's probe; here the test does. A pooled
    // connection that died in the outage fails once more when next used (and is replaced), so Redis
    // may take a round or two to be trusted again.
    proxy.restore();
    let back = eventually(Duration::from_secs(3), || async {
        if health.permit() == Permit::Probe {
            health.success();
        }
        !limiter.check(&minute, 0).await.local
    })
    .await;
    assert!(back, "the limiter uses Redis again");
    let after = limiter.check(&minute, 1).await;
    assert!(!after.local, "{after:?}");
    assert_eq!(
        after.remaining, 6,
        "Redis still holds what was spent before the outage"
    );
}
