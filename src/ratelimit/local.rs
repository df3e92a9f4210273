//! The in-process limiter answering while Redis is unavailable: the same GCRA over the same quotas,
//! per instance, in a bounded map.
//!
//! Not `governor`, though it is the usual in-process GCRA: a check here spends against several quotas
//! all or nothing, and governor can neither test one limiter without spending on it nor give points
//! back, so the per-minute quota would be charged for a follow that the per-day quota refuses. It also
//! fixes its quota when the limiter is built (ours arrive with each check), refuses a cost of zero
//! (`NonZeroU32`), and its keyed store grows until someone calls `retain_recent`. A TAT per key under
//! one mutex gives the all-or-nothing check for free and shares every rule with the Redis script
//! ([`super::gcra`]). The mutex is held for a few map lookups, and only while Redis is down.
//!
//! Bounded: at most `max_keys` buckets. When a new bucket finds the map full, buckets already whole
//! (TAT passed) are dropped first; if clients that still owe time fill it, those closest to whole are
//! forgotten (down to three quarters, so the sweep is rare), which errs towards letting them through.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Instant,
};

use super::{
    Limit,
    gcra::{self, Cell, Outcome},
};

/// Buckets kept by default: about 100 bytes each.
pub(super) const DEFAULT_MAX_KEYS: usize = 100_000;

/// TATs in µs since the limiter's epoch, by limit name, then client.
pub(super) struct LocalLimiter {
    buckets: Mutex<Buckets>,
    epoch: Instant,
    max_keys: usize,
}

#[derive(Default)]
struct Buckets {
    by_limit: HashMap<&'static str, HashMap<Box<str>, u64>>,
    len: usize,
}

impl LocalLimiter {
    pub fn new(max_keys: usize) -> Self {
        Self {
            buckets: Mutex::new(Buckets::default()),
            epoch: Instant::now(),
            max_keys: max_keys.max(1),
        }
    }

    /// Checks `limits` (with their `cells`) now.
    pub fn check(&self, limits: &[Limit<'_>], cells: &[Cell]) -> Outcome {
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.check_at(limits, cells, now)
    }

    /// Checks `limits` at `now` (µs since the epoch): every bucket admits its increment, and all are
    /// spent, or none is.
    pub fn check_at(&self, limits: &[Limit<'_>], cells: &[Cell], now: u64) -> Outcome {
        // A panic elsewhere while holding the lock leaves only numbers behind: still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut debts: Vec<u64> = limits
            .iter()
            .map(|l| buckets.tat(l).map_or(0, |tat| tat.saturating_sub(now)))
            .collect();
        let spent = debts
            .iter()
            .zip(cells)
            .all(|(&debt, cell)| gcra::admits(debt, cell));
        if spent {
            if buckets.len + limits.len() > self.max_keys {
                buckets.make_room(now, self.max_keys, limits.len());
            }
            for ((limit, cell), debt) in limits.iter().zip(cells).zip(debts.iter_mut()) {
                if cell.increment > 0 {
                    *debt += cell.increment;
                    buckets.set(limit, now + *debt);
                }
            }
        }
        Outcome { spent, debts }
    }

    /// Buckets held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len
    }
}

impl Buckets {
    fn tat(&self, limit: &Limit<'_>) -> Option<u64> {
        self.by_limit.get(limit.name)?.get(limit.client).copied()
    }

    fn set(&mut self, limit: &Limit<'_>, tat: u64) {
        let clients = self.by_limit.entry(limit.name).or_default();
        if let Some(held) = clients.get_mut(limit.client) {
            *held = tat;
        } else {
            clients.insert(limit.client.into(), tat);
            self.len += 1;
        }
    }

    fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        for clients in self.by_limit.values_mut() {
            clients.retain(|_, tat| keep(*tat));
        }
        self.by_limit.retain(|_, clients| !clients.is_empty());
        self.len = self.by_limit.values().map(HashMap::len).sum();
    }

    /// Makes room for `incoming` buckets: drops whole buckets, then if need be the buckets closest to
    /// whole, down to 3/4 of `max_keys`.
    fn make_room(&mut self, now: u64, max_keys: usize, incoming: usize) {
        self.retain(|tat| tat > now);
        if self.len + incoming <= max_keys || self.len == 0 {
            return;
        }
        let keep = (max_keys * 3 / 4).min(max_keys.saturating_sub(incoming));
        let forget = self.len.saturating_sub(keep).max(1);
        let mut tats: Vec<u64> = self
            .by_limit
            .values()
            .flat_map(|clients| clients.values().copied())
            .collect();
        let (_, &mut threshold, _) = tats.select_nth_unstable(forget - 1);
        self.retain(|tat| tat > threshold);
        tracing::debug!(
            kept = self.len,
            "local rate limiter full: forgot the clients closest to a whole budget"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ratelimit::{Quota, Verdict, gcra::decide};

    const MS: u64 = 1_000;

    fn limits(client: &str) -> [Limit<'_>; 2] {
        [
            Limit {
                name: "minute",
                client,
                quota: Quota::new(10, Duration::from_secs(2)),
            },
            Limit {
                name: "day",
                client,
                quota: Quota::new(3, Duration::from_secs(10)),
            },
        ]
    }

    fn check(
        local: &LocalLimiter,
        limits: &[Limit<'_>],
        cost: u32,
        now: u64,
    ) -> crate::ratelimit::Decision {
        let spend = if limits.iter().any(|l| cost > l.quota.points) {
            0
        } else {
            cost
        };
        let cells: Vec<Cell> = limits.iter().map(|l| Cell::new(l.quota, spend)).collect();
        let outcome = local.check_at(limits, &cells, now);
        decide(limits, &cells, cost, &outcome, true).0
    }

    #[test]
    fn a_burst_of_the_whole_quota_passes_then_refills_at_the_rate() {
        let local = LocalLimiter::new(100);
        let minute = &limits("viewer:1")[..1];
        for i in 0..10 {
            let decision = check(&local, minute, 1, 0);
            assert_eq!(decision.verdict, Verdict::Allowed, "point {i}");
            assert_eq!(decision.remaining, 9 - i);
        }
        let refused = check(&local, minute, 1, 0);
        assert_eq!(refused.verdict, Verdict::Limited);
        assert_eq!(refused.retry_after, Duration::from_millis(200));
        assert_eq!(refused.reset, Duration::from_secs(2));
        // Honest: one microsecond early is refused, at the retry it passes.
        assert_eq!(
            check(&local, minute, 1, 200 * MS - 1).verdict,
            Verdict::Limited
        );
        assert_eq!(check(&local, minute, 1, 200 * MS).verdict, Verdict::Allowed);
        // Costs: five points need a second of refill.
        let five = check(&local, minute, 5, 200 * MS);
        assert_eq!(five.verdict, Verdict::Limited);
        assert_eq!(five.retry_after, Duration::from_secs(1));
        assert_eq!(
            check(&local, minute, 5, 1_200 * MS).verdict,
            Verdict::Allowed
        );
        // Whole again a period after the last spend.
        let peek = check(&local, minute, 0, 3_200 * MS);
        assert_eq!((peek.verdict, peek.remaining), (Verdict::Allowed, 10));
        assert_eq!(peek.reset, Duration::ZERO);
    }

    #[test]
    fn every_quota_spends_or_none_does() {
        let local = LocalLimiter::new(100);
        let both = limits("viewer:1");
        for _ in 0..3 {
            assert_eq!(check(&local, &both, 1, 0).verdict, Verdict::Allowed);
        }
        let refused = check(&local, &both, 1, 0);
        assert_eq!(refused.verdict, Verdict::Limited);
        assert_eq!(refused.limit, 3, "the day quota refused");
        // A point is 3,333,333 µs (rounded down): three owe 9,999,999 µs, the fourth fits 3,333,332 µs on.
        assert_eq!(refused.retry_after, Duration::from_micros(3_333_332));
        // The minute quota was not charged for the refused request.
        let minute = check(&local, &both[..1], 0, 0);
        assert_eq!(minute.remaining, 7);
        // Another client has budgets of its own.
        assert_eq!(
            check(&local, &limits("viewer:2"), 1, 0).verdict,
            Verdict::Allowed
        );
    }

    #[test]
    fn zero_cost_spends_nothing_and_too_costly_never_passes() {
        let local = LocalLimiter::new(100);
        let minute = &limits("viewer:1")[..1];
        let free = check(&local, minute, 0, 0);
        assert_eq!((free.verdict, free.remaining), (Verdict::Allowed, 10));
        assert_eq!(local.len(), 0, "a zero cost leaves no bucket");
        check(&local, minute, 4, 0);
        let costly = check(&local, minute, 11, 0);
        assert_eq!(costly.verdict, Verdict::TooCostly);
        assert_eq!((costly.limit, costly.remaining), (10, 6), "nothing spent");
        assert_eq!(costly.retry_after, Duration::ZERO);
        // Even from a whole bucket, much later.
        assert_eq!(
            check(&local, minute, 11, 60_000 * MS).verdict,
            Verdict::TooCostly
        );
        // Exactly the whole quota is not too costly.
        assert_eq!(
            check(&local, minute, 10, 60_000 * MS).verdict,
            Verdict::Allowed
        );
    }

    #[test]
    fn the_map_stays_bounded_forgetting_whole_buckets_first() {
        let local = LocalLimiter::new(8);
        let quota = Quota::new(10, Duration::from_secs(2));
        let spend = |client: &str, cost: u32, now: u64| {
            let limit = [Limit {
                name: "minute",
                client,
                quota,
            }];
            check(&local, &limit, cost, now)
        };
        // A heavy client, then many light ones, all still owing time.
        assert_eq!(spend("heavy", 10, 0).verdict, Verdict::Allowed);
        for i in 0..100 {
            spend(&format!("light:{i}"), 1, i * MS);
            assert!(local.len() <= 8, "{} buckets", local.len());
        }
        assert_eq!(
            spend("heavy", 1, 100 * MS).verdict,
            Verdict::Limited,
            "the most indebted client is remembered"
        );
        // Later every bucket is whole: they are dropped before anyone is forgotten.
        for i in 0..8 {
            spend(&format!("late:{i}"), 1, 10_000 * MS);
        }
        assert!(local.len() <= 8);
    }
}
