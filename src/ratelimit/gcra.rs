//! The arithmetic of the generic cell rate algorithm, shared by the Redis script and the local limiter.
//!
//! Everything is in microseconds. A quota of `points` per `period` is a bucket whose theoretical arrival
//! time (TAT) may run at most `tau = period` ahead of now; spending `cost` points moves the TAT
//! `increment = cost × period / points` later. A bucket's *debt* is `TAT − now` (never negative): zero is
//! a whole bucket, `tau` an empty one. The backends (the Lua script, [`super::local`]) only keep TATs and
//! apply [`admits`] to every bucket of a check; everything the caller is told is derived here from the
//! debts they return, so both backends answer alike.

use std::time::Duration;

use super::{Decision, Limit, Quota, Verdict};

/// The longest period honoured (a longer one counts as this): TATs must stay exact in the double
/// precision numbers of Redis's Lua (integers up to 2^53 µs, about 285 years of Unix time).
pub(super) const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 3600);

/// One quota's part in one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cell {
    /// The quota's points (the most that can be spent at once).
    pub points: u32,
    /// The quota's period in µs: how far the TAT may run ahead of now.
    pub tau: u64,
    /// What this check adds to the TAT, in µs; 0 spends nothing.
    pub increment: u64,
}

impl Cell {
    /// The bucket of `quota` spending `cost` points.
    ///
    /// The increment rounds down, so a full burst of `points` always fits in `tau`, whatever the
    /// division leaves (3 per second: 333,333 µs a point, 999,999 µs for three). A quota finer than a
    /// point per microsecond counts as one point per microsecond (any positive cost moves the TAT).
    pub fn new(quota: Quota, cost: u32) -> Self {
        let tau = u64::try_from(quota.period.min(MAX_PERIOD).as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let increment = if cost == 0 || quota.points == 0 {
            0
        } else {
            let exact = u128::from(cost) * u128::from(tau) / u128::from(quota.points);
            u64::try_from(exact).unwrap_or(u64::MAX).max(1)
        };
        Self {
            points: quota.points,
            tau,
            increment,
        }
    }

    /// Points that could be spent now by a bucket owing `debt` (0..=points).
    pub fn remaining(&self, debt: u64) -> u32 {
        let free = self.tau.saturating_sub(debt);
        let points = u128::from(free) * u128::from(self.points) / u128::from(self.tau);
        u32::try_from(points).unwrap_or(self.points)
    }

    /// How long a bucket owing `debt` must wait before this cell's increment fits (0 if it fits now).
    pub fn wait(&self, debt: u64) -> u64 {
        if self.increment == 0 {
            return 0;
        }
        debt.saturating_add(self.increment).saturating_sub(self.tau)
    }
}

/// Whether a bucket owing `debt` may take this cell's increment now. Spending nothing always passes,
/// even from a bucket that owes more than its period (the quota was shortened since).
pub(super) fn admits(debt: u64, cell: &Cell) -> bool {
    cell.increment == 0 || debt.saturating_add(cell.increment) <= cell.tau
}

/// What a backend answered for one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Outcome {
    /// Whether every cell's increment was added (all of them or none).
    pub spent: bool,
    /// Each bucket's debt after the check, in the order of the cells.
    pub debts: Vec<u64>,
}

/// The decision for `limits` (with their `cells`, spending `cost`) from what a backend answered, and
/// the index of the quota it is about (the most restrictive one).
pub(super) fn decide(
    limits: &[Limit<'_>],
    cells: &[Cell],
    cost: u32,
    outcome: &Outcome,
    local: bool,
) -> (Decision, usize) {
    debug_assert_eq!(limits.len(), cells.len());
    debug_assert_eq!(cells.len(), outcome.debts.len());
    let debt = |i: usize| outcome.debts.get(i).copied().unwrap_or(0);
    let indices = 0..cells.len().min(outcome.debts.len());
    let (verdict, decisive) = if limits.iter().any(|l| cost > l.quota.points) {
        // The smallest quota that the cost exceeds.
        let i = indices
            .filter(|&i| cost > cells[i].points)
            .min_by_key(|&i| cells[i].points);
        (Verdict::TooCostly, i)
    } else if outcome.spent {
        // The fewest points left; between equals, the one that takes longest to be whole.
        let i = indices.min_by_key(|&i| (cells[i].remaining(debt(i)), std::cmp::Reverse(debt(i))));
        (Verdict::Allowed, i)
    } else {
        // The one that keeps the request waiting longest.
        let i = indices.max_by_key(|&i| (cells[i].wait(debt(i)), debt(i)));
        (Verdict::Limited, i)
    };
    let Some(i) = decisive else {
        return (Decision::unlimited(), 0);
    };
    let cell = &cells[i];
    let retry_after = match verdict {
        Verdict::Limited => Duration::from_micros(cell.wait(debt(i))),
        Verdict::Allowed | Verdict::TooCostly => Duration::ZERO,
    };
    let decision = Decision {
        verdict,
        limit: cell.points,
        remaining: cell.remaining(debt(i)),
        reset: Duration::from_micros(debt(i)),
        retry_after,
        local,
    };
    (decision, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000;

    fn limit(name: &'static str, points: u32, period: Duration) -> Limit<'static> {
        Limit {
            name,
            client: "viewer:1",
            quota: Quota { points, period },
        }
    }

    #[test]
    fn increments_split_the_period_and_a_full_burst_always_fits() {
        let cell = Cell::new(Quota::new(10, Duration::from_secs(2)), 1);
        assert_eq!((cell.tau, cell.increment), (2 * SECOND, 200_000));
        assert_eq!(
            Cell::new(Quota::new(10, Duration::from_secs(2)), 10).increment,
            2 * SECOND
        );
        // An uneven division rounds down: three single points and one triple both fit in one second.
        let third = Cell::new(Quota::per_second(3), 1);
        assert_eq!(third.increment, 333_333);
        assert!(3 * third.increment <= third.tau);
        assert!(admits(0, &Cell::new(Quota::per_second(3), 3)));
        // Large quotas and costs do not overflow: 20,000 points against a day of 4 billion.
        let day = Cell::new(Quota::per_day(u32::MAX), 20_000);
        assert_eq!(
            day.increment,
            20_000 * 86_400 * SECOND / u64::from(u32::MAX)
        );
        // Finer than a point per microsecond: each positive cost still counts.
        assert_eq!(
            Cell::new(Quota::new(1_000, Duration::from_micros(10)), 1).increment,
            1
        );
        assert_eq!(Cell::new(Quota::per_minute(10), 0).increment, 0);
        // A period beyond the cap counts as the cap.
        let long = Cell::new(Quota::new(1, Duration::from_secs(u64::MAX)), 1);
        assert_eq!(long.tau, MAX_PERIOD.as_micros() as u64);
    }

    #[test]
    fn remaining_wait_and_admission_agree() {
        let cell = Cell::new(Quota::new(10, Duration::from_secs(2)), 3);
        assert_eq!(cell.remaining(0), 10);
        assert_eq!(cell.remaining(200_000), 9);
        assert_eq!(cell.remaining(200_001), 8, "a partial point is not offered");
        assert_eq!(cell.remaining(2 * SECOND), 0);
        assert_eq!(cell.remaining(5 * SECOND), 0, "owing more than the period");
        // 3 points need 600 ms free: with 1.5 s owed, 100 ms must pass first.
        assert!(!admits(1_500_000, &cell));
        assert_eq!(cell.wait(1_500_000), 100_000);
        assert!(
            admits(1_500_000 - 100_000, &cell),
            "and after that wait it fits"
        );
        assert!(admits(1_400_000, &cell));
        assert_eq!(cell.wait(1_400_000), 0);
        // Spending nothing always passes.
        let free = Cell::new(Quota::new(10, Duration::from_secs(2)), 0);
        assert!(admits(10 * SECOND, &free));
        assert_eq!(free.wait(10 * SECOND), 0);
        // Whenever `remaining` offers r points, r points fit.
        let quota = Quota::per_second(7);
        for debt in (0..=SECOND).step_by(9_973) {
            let r = Cell::new(quota, 1).remaining(debt);
            if r > 0 {
                assert!(
                    admits(debt, &Cell::new(quota, r)),
                    "debt {debt}: {r} offered"
                );
            }
        }
    }

    #[test]
    fn allowed_reports_the_quota_with_fewest_points_left() {
        let limits = [
            limit("minute", 10, Duration::from_secs(60)),
            limit("day", 100, Duration::from_secs(86_400)),
        ];
        let cells: Vec<Cell> = limits.iter().map(|l| Cell::new(l.quota, 1)).collect();
        // The minute bucket has 4 points left, the day bucket 50.
        let outcome = Outcome {
            spent: true,
            debts: vec![36 * SECOND, 43_200 * SECOND],
        };
        let (decision, i) = decide(&limits, &cells, 1, &outcome, false);
        assert_eq!(i, 0);
        assert_eq!(decision.verdict, Verdict::Allowed);
        assert_eq!((decision.limit, decision.remaining), (10, 4));
        assert_eq!(decision.reset, Duration::from_secs(36));
        assert_eq!(decision.retry_after, Duration::ZERO);
        assert!(!decision.local);
        // Day nearly spent: it is the most restrictive now.
        let outcome = Outcome {
            spent: true,
            debts: vec![36 * SECOND, 86_000 * SECOND],
        };
        let (decision, i) = decide(&limits, &cells, 1, &outcome, true);
        assert_eq!((i, decision.limit, decision.remaining), (1, 100, 0));
        assert!(decision.local);
    }

    #[test]
    fn limited_reports_the_longest_wait() {
        let limits = [
            limit("minute", 10, Duration::from_secs(60)),
            limit("day", 100, Duration::from_secs(86_400)),
        ];
        let cells: Vec<Cell> = limits.iter().map(|l| Cell::new(l.quota, 1)).collect();
        // Both full: the minute frees a point in 6 s, the day in 864 s.
        let outcome = Outcome {
            spent: false,
            debts: vec![60 * SECOND, 86_400 * SECOND],
        };
        let (decision, i) = decide(&limits, &cells, 1, &outcome, false);
        assert_eq!((decision.verdict, i), (Verdict::Limited, 1));
        assert_eq!(decision.retry_after, Duration::from_secs(864));
        assert_eq!(decision.remaining, 0);
        assert_eq!(decision.reset, Duration::from_secs(86_400));
        // Only the minute is full: it decides, although the day has fewer points.
        let outcome = Outcome {
            spent: false,
            debts: vec![60 * SECOND, 0],
        };
        let (decision, i) = decide(&limits, &cells, 1, &outcome, false);
        assert_eq!(
            (decision.verdict, i, decision.limit),
            (Verdict::Limited, 0, 10)
        );
        assert_eq!(decision.retry_after, Duration::from_secs(6));
    }

    #[test]
    fn a_cost_above_a_quota_is_too_costly_without_a_wait() {
        let limits = [
            limit("burst", 5, Duration::from_secs(1)),
            limit("minute", 20, Duration::from_secs(60)),
            limit("day", 1000, Duration::from_secs(86_400)),
        ];
        // Too costly spends nothing: the backend was asked for increments of zero.
        let cells: Vec<Cell> = limits.iter().map(|l| Cell::new(l.quota, 0)).collect();
        let outcome = Outcome {
            spent: true,
            debts: vec![0, 3 * SECOND, 0],
        };
        let (decision, i) = decide(&limits, &cells, 30, &outcome, false);
        assert_eq!(decision.verdict, Verdict::TooCostly);
        assert_eq!(i, 0, "the smallest quota exceeded");
        assert_eq!((decision.limit, decision.remaining), (5, 5));
        assert_eq!(decision.retry_after, Duration::ZERO);
    }

    #[test]
    fn no_limits_allow_everything() {
        let (decision, _) = decide(
            &[],
            &[],
            7,
            &Outcome {
                spent: true,
                debts: vec![],
            },
            false,
        );
        assert_eq!(decision.verdict, Verdict::Allowed);
        assert_eq!(decision.remaining, u32::MAX);
    }
}
