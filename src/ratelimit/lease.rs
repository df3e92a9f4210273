//! Leases: a busy client's points taken from Redis a slice at a time, then handed out by this instance.
//!
//! Every operation spends its cost against the client's points, and every check is a round trip to
//! Redis: on a cheap request that round trip was half the work (`{ __typename }` at 0.53× its throughput
//! with the limits on). A client seen again within [`LEASE_TTL`] is busy: its next check spends its cost
//! *and a slice* in Redis, in the same script call, and the instance keeps the slice, handing it out to
//! that client's next operations without asking Redis, until it is used up or [`LEASE_TTL`] passes.
//!
//! - **Never more than the budget.** A slice is spent in Redis before any of it is handed out, so every
//!   instance together never allows more than the shared quota. What a lease can do is allow *less*: a
//!   slice not used up before it lapses is lost to the client (it was spent in Redis). A slice is sized
//!   to what the client used of its last one (twice that, at least twice the cost), and never more than
//!   1/[`MAX_SLICE_DIVISOR`] of the quota, so a client that stops loses at most that once per instance.
//! - **Exact near the limit.** A check with a slice that Redis refuses is retried at once with the cost
//!   alone, so a client close to its limit is answered exactly as without leases (only that answer
//!   counts, and only it is told), and no slice is asked for a client refused a slice or an operation
//!   during the next [`LEASE_TTL`].
//! - **Small quotas are never leased**: a slice must be at least twice the cost, within the divisor's
//!   share of the quota (a quota of 100 follows a minute is always checked in Redis).
//! - **The headers stay honest**: an operation answered from a lease reports the points Redis said were
//!   left when the slice was taken, plus what is left of the slice.
//! - While Redis is away the local fallback's answers are leased alike: the slice is then spent from
//!   the local bucket.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{Decision, Quota, Verdict};

/// How long a slice may be handed out, and how recent a client's last check must be for it to be busy.
pub const LEASE_TTL: Duration = Duration::from_secs(1);

/// A slice is at most this fraction of the quota.
pub const MAX_SLICE_DIVISOR: u32 = 100;

/// Clients tracked per instance; past it, lapsed entries are dropped (and all, if that is not enough).
const MAX_CLIENTS: usize = 50_000;

/// The leases of one instance, by client key.
#[derive(Default)]
pub struct Leases {
    clients: Mutex<HashMap<Box<str>, Lease>>,
}

/// What the instance holds for one client.
#[derive(Clone, Copy, Debug)]
struct Lease {
    /// The quota the slice was taken from (a client whose quota changed starts again).
    quota: Quota,
    /// Points of the slice not handed out yet.
    left: u32,
    /// Points of the slice handed out so far.
    handed: u32,
    /// When the slice was taken; it lapses [`LEASE_TTL`] later.
    taken: Instant,
    /// What Redis said when it was taken (after spending it).
    decision: Decision,
    /// When the client was last checked in Redis.
    last_check: Instant,
    /// No slice is asked for before this (Redis refused one).
    no_slice_until: Option<Instant>,
}

/// What to do for one operation.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Answered from the lease.
    Answered(Decision),
    /// Ask Redis for the cost plus `slice` (0: the cost alone).
    Ask { slice: u32 },
}

impl Leases {
    /// Hands `cost` points of `client`'s lease out if it holds them; else says how much to ask Redis for.
    pub fn plan(&self, client: &str, quota: Quota, cost: u32, now: Instant) -> Plan {
        let Ok(mut clients) = self.clients.lock() else {
            return Plan::Ask { slice: 0 };
        };
        let Some(lease) = clients.get_mut(client).filter(|lease| lease.quota == quota) else {
            return Plan::Ask { slice: 0 };
        };
        let lapsed = now.saturating_duration_since(lease.taken) >= LEASE_TTL;
        if !lapsed && cost > 0 && lease.left >= cost {
            lease.left -= cost;
            lease.handed += cost;
            return Plan::Answered(from_lease(lease, now));
        }
        let busy = now.saturating_duration_since(lease.last_check) < LEASE_TTL;
        let held_off = lease.no_slice_until.is_some_and(|until| now < until);
        if !busy || held_off || cost == 0 {
            return Plan::Ask { slice: 0 };
        }
        let max = quota.points / MAX_SLICE_DIVISOR;
        let wanted = lease.handed.saturating_mul(2).max(cost.saturating_mul(2));
        let slice = wanted.min(max);
        if slice < cost.saturating_mul(2) || cost.saturating_add(slice) > quota.points {
            return Plan::Ask { slice: 0 };
        }
        Plan::Ask { slice }
    }

    /// Redis answered a check of `cost` plus `slice`: keeps the slice when it was spent, and returns what
    /// to tell the client.
    pub fn answered(
        &self,
        client: &str,
        quota: Quota,
        slice: u32,
        decision: Decision,
        now: Instant,
    ) -> Decision {
        let Ok(mut clients) = self.clients.lock() else {
            return decision;
        };
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(client) {
            clients.retain(|_, lease| now.saturating_duration_since(lease.last_check) < LEASE_TTL);
            if clients.len() >= MAX_CLIENTS {
                clients.clear();
            }
        }
        let fresh = Lease {
            quota,
            left: 0,
            handed: 0,
            taken: now,
            decision,
            last_check: now,
            no_slice_until: None,
        };
        let lease = match clients.get_mut(client) {
            Some(lease) if lease.quota == quota => lease,
            _ => clients.entry(client.into()).or_insert(fresh),
        };
        let allowed = decision.verdict == Verdict::Allowed;
        // Two operations of the client may have asked for a slice at once: what is left of the other's
        // is kept, not lost (it was spent in Redis too).
        let carried = if allowed && now.saturating_duration_since(lease.taken) < LEASE_TTL {
            lease.left
        } else {
            0
        };
        *lease = Lease {
            quota,
            left: if allowed {
                slice.saturating_add(carried)
            } else {
                0
            },
            handed: 0,
            taken: now,
            decision,
            last_check: now,
            // A client refused is near its limit: it is checked exactly for a while.
            no_slice_until: if allowed {
                lease.no_slice_until
            } else {
                Some(now + LEASE_TTL)
            },
        };
        from_lease(lease, now)
    }

    /// Redis refused a slice: none is asked for this client during the next [`LEASE_TTL`].
    pub fn refused_slice(&self, client: &str, now: Instant) {
        if let Ok(mut clients) = self.clients.lock()
            && let Some(lease) = clients.get_mut(client)
        {
            lease.no_slice_until = Some(now + LEASE_TTL);
        }
    }
}

/// The decision to tell for an operation answered with `lease`: Redis's answer when the slice was taken,
/// with what is left of the slice added to the points left.
fn from_lease(lease: &Lease, now: Instant) -> Decision {
    let decision = lease.decision;
    if decision.verdict != Verdict::Allowed {
        return decision;
    }
    Decision {
        remaining: decision
            .remaining
            .saturating_add(lease.left)
            .min(decision.limit),
        reset: decision
            .reset
            .saturating_sub(now.saturating_duration_since(lease.taken)),
        ..decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(remaining: u32) -> Decision {
        Decision {
            verdict: Verdict::Allowed,
            limit: 30_000,
            remaining,
            reset: Duration::from_secs(1),
            retry_after: Duration::ZERO,
            local: false,
        }
    }

    const QUOTA: Quota = Quota::per_minute(30_000);

    #[test]
    fn a_busy_client_is_answered_from_its_slice() {
        let leases = Leases::default();
        let t0 = Instant::now();
        // First seen: exact.
        assert_eq!(leases.plan("ip:a", QUOTA, 3, t0), Plan::Ask { slice: 0 });
        leases.answered("ip:a", QUOTA, 0, allowed(29_997), t0);
        // Seen again at once: busy, asks for a slice of twice the cost.
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(leases.plan("ip:a", QUOTA, 3, t1), Plan::Ask { slice: 6 });
        let told = leases.answered("ip:a", QUOTA, 6, allowed(29_988), t1);
        assert_eq!(told.remaining, 29_994); // what Redis left, plus the slice
        // The next two operations come from the slice, with the points left going down.
        let Plan::Answered(first) = leases.plan("ip:a", QUOTA, 3, t1) else {
            panic!("from the lease");
        };
        assert_eq!(first.remaining, 29_991);
        assert!(
            matches!(leases.plan("ip:a", QUOTA, 3, t1), Plan::Answered(d) if d.remaining == 29_988)
        );
        // Used up: the next slice is twice what was handed out.
        assert_eq!(leases.plan("ip:a", QUOTA, 3, t1), Plan::Ask { slice: 12 });
        // Another client has its own.
        assert_eq!(leases.plan("ip:b", QUOTA, 3, t1), Plan::Ask { slice: 0 });
    }

    #[test]
    fn slices_taken_at_once_add_up() {
        let leases = Leases::default();
        let t0 = Instant::now();
        leases.answered("c", QUOTA, 0, allowed(29_000), t0);
        leases.answered("c", QUOTA, 10, allowed(28_990), t0);
        let told = leases.answered("c", QUOTA, 10, allowed(28_980), t0);
        assert_eq!(told.remaining, 29_000);
        for _ in 0..20 {
            assert!(matches!(leases.plan("c", QUOTA, 1, t0), Plan::Answered(_)));
        }
        assert!(matches!(leases.plan("c", QUOTA, 1, t0), Plan::Ask { .. }));
    }

    #[test]
    fn slices_lapse_and_stay_small() {
        let leases = Leases::default();
        let t0 = Instant::now();
        leases.answered("c", QUOTA, 0, allowed(29_000), t0);
        leases.answered("c", QUOTA, 100, allowed(28_000), t0);
        // Lapsed: nothing handed out, and a client not seen for a while is asked exactly.
        let later = t0 + LEASE_TTL * 2;
        assert_eq!(leases.plan("c", QUOTA, 1, later), Plan::Ask { slice: 0 });
        // A slice is at most 1/100 of the quota, and a small quota is never leased.
        let lease_after = |cost| {
            let leases = Leases::default();
            leases.answered("c", QUOTA, 0, allowed(29_000), t0);
            leases.plan("c", QUOTA, cost, t0)
        };
        assert_eq!(lease_after(100), Plan::Ask { slice: 200 });
        assert_eq!(lease_after(200), Plan::Ask { slice: 0 }); // 400 > 300
        let small = Quota::per_minute(100);
        leases.answered("s", small, 0, allowed(99), t0);
        assert_eq!(leases.plan("s", small, 1, t0), Plan::Ask { slice: 0 });
    }

    #[test]
    fn a_refused_slice_holds_leasing_off() {
        let leases = Leases::default();
        let t0 = Instant::now();
        leases.answered("c", QUOTA, 0, allowed(500), t0);
        assert_eq!(leases.plan("c", QUOTA, 2, t0), Plan::Ask { slice: 4 });
        leases.refused_slice("c", t0);
        assert_eq!(leases.plan("c", QUOTA, 2, t0), Plan::Ask { slice: 0 });
        leases.answered("c", QUOTA, 0, allowed(498), t0);
        assert_eq!(leases.plan("c", QUOTA, 2, t0), Plan::Ask { slice: 0 });
        let later = t0 + LEASE_TTL + Duration::from_millis(1);
        leases.answered("c", QUOTA, 0, allowed(496), later);
        assert_eq!(leases.plan("c", QUOTA, 2, later), Plan::Ask { slice: 4 });
    }
}
