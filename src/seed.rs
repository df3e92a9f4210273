//! `seed`: a reproducible demo graph with power-law (Zipf) follower counts, so GraphiQL has data at once.
//!
//! Users get ids 1..=N; user 1 is the most followed, user r is followed in proportion to 1/r^s.
//! Each user follows a handful to a few dozen others. Edges go in directly (no outbox), and the
//! counters are then repaired with the reconcile query, which is safe even while a service runs.

use std::collections::HashSet;

use chrono::{Duration, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::db::{self, DbPool};

/// How big a graph to build.
#[derive(Clone, Copy, Debug)]
pub struct SeedPlan {
    pub users: i64,
    /// Mean number of users each user follows.
    pub mean_following: usize,
    /// Zipf exponent of follower counts (about 1 for social graphs).
    pub exponent: f64,
    /// RNG seed: the same plan builds the same graph.
    pub rng_seed: u64,
}

/// What `seed` wrote.
#[derive(Clone, Copy, Debug)]
pub struct SeedReport {
    pub users_created: usize,
    pub edges_created: usize,
    pub counts_fixed: usize,
}

const FIRST_NAMES: &[&str] = &[
    "ada",
    "alan",
    "grace",
    "linus",
    "margaret",
    "ken",
    "barbara",
    "dennis",
    "frances",
    "john",
    "radia",
    "guido",
    "katherine",
    "tim",
    "hedy",
    "donald",
    "edsger",
    "sophie",
    "bjarne",
    "anita",
];

/// Builds the plan's graph into the database.
pub async fn seed(db: &DbPool, plan: SeedPlan) -> anyhow::Result<SeedReport> {
    let mut rng = StdRng::seed_from_u64(plan.rng_seed);
    let mut conn = db::connect(db).await?;

    let mut users_created = 0;
    for chunk in (1..=plan.users).collect::<Vec<_>>().chunks(10_000) {
        let handles: Vec<String> = chunk.iter().map(|&id| handle_for(id)).collect();
        let names: Vec<Option<String>> = chunk.iter().map(|&id| display_name_for(id)).collect();
        users_created += db::users::insert_many(&mut conn, chunk, &handles, &names).await?;
    }

    let zipf = ZipfSampler::new(plan.users as usize, plan.exponent);
    let now = Utc::now();
    let mut edges_created = 0;
    let (mut followers, mut followees, mut times) = (Vec::new(), Vec::new(), Vec::new());
    for follower in 1..=plan.users {
        // Following counts vary too: uniform from 1 to twice the mean.
        let wanted = rng
            .random_range(1..=plan.mean_following * 2 - 1)
            .min(plan.users as usize - 1);
        let mut chosen = HashSet::with_capacity(wanted);
        let mut attempts = 0;
        while chosen.len() < wanted && attempts < wanted * 20 {
            attempts += 1;
            let followee = zipf.sample(&mut rng) as i64;
            if followee != follower {
                chosen.insert(followee);
            }
        }
        for followee in chosen {
            followers.push(follower);
            followees.push(followee);
            times.push(now - Duration::seconds(rng.random_range(0..365 * 24 * 3600)));
        }
        if followers.len() >= 20_000 {
            edges_created +=
                db::follows::insert_edges_bulk(&mut conn, &followers, &followees, &times).await?;
            followers.clear();
            followees.clear();
            times.clear();
        }
    }
    edges_created +=
        db::follows::insert_edges_bulk(&mut conn, &followers, &followees, &times).await?;
    let counts_fixed = db::stats::fix_drift(&mut conn).await?.len();
    Ok(SeedReport {
        users_created,
        edges_created,
        counts_fixed,
    })
}

/// The handle of seeded user `id`: a name for the famous few, `user<id>` for the rest.
pub fn handle_for(id: i64) -> String {
    match FIRST_NAMES.get((id - 1) as usize) {
        Some(name) => (*name).to_owned(),
        None => format!("user{id}"),
    }
}

fn display_name_for(id: i64) -> Option<String> {
    FIRST_NAMES.get((id - 1) as usize).map(|name| {
        let mut chars = name.chars();
        chars
            .next()
            .map(|c| c.to_uppercase().chain(chars).collect())
            .unwrap_or_default()
    })
}

/// Draws ranks 1..=n with probability proportional to 1/rank^s, by binary search in the cumulative weights.
pub struct ZipfSampler {
    cumulative: Vec<f64>,
}

impl ZipfSampler {
    pub fn new(n: usize, exponent: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(exponent);
                total
            })
            .collect();
        Self { cumulative }
    }

    /// A rank in 1..=n.
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let target = rng.random::<f64>() * total;
        self.cumulative
            .partition_point(|&c| c < target)
            .min(self.cumulative.len() - 1)
            + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_low_ranks() {
        let zipf = ZipfSampler::new(1_000, 1.0);
        let mut rng = StdRng::seed_from_u64(7);
        let draws: Vec<usize> = (0..20_000).map(|_| zipf.sample(&mut rng)).collect();
        let first = draws.iter().filter(|&&r| r == 1).count();
        let hundredth = draws.iter().filter(|&&r| r == 100).count();
        assert!(draws.iter().all(|&r| (1..=1_000).contains(&r)));
        assert!(
            first > 10 * hundredth.max(1),
            "rank 1: {first}, rank 100: {hundredth}"
        );
    }
}
