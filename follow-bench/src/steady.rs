//! `--steady`: a scenario runs unrecorded until its caches' hit rates stop rising, then is measured.
//!
//! Every [`SCRAPE_EVERY`] the server's `/metrics` are scraped and each cache's L1 hit rate over that
//! window computed (hits / (hits + misses), as [`crate::metrics::cache_hit_rates`] does). The warm-up
//! ends when at least [`MIN_WARMUP`] has passed and no cache's rate rose by [`RISE_POINTS`] percentage
//! points or more from the previous window to the last one, or at the cap (`--steady-max`).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::metrics;

/// How often the hit rates are sampled.
pub const SCRAPE_EVERY: Duration = Duration::from_secs(5);
/// The shortest warm-up.
pub const MIN_WARMUP: Duration = Duration::from_secs(10);
/// A rise of a cache's L1 hit rate, in percentage points over one window, that means "still warming".
pub const RISE_POINTS: f64 = 0.5;

/// How a scenario's warm-up went.
#[derive(Clone, Debug, Serialize)]
pub struct Warmup {
    pub seconds: f64,
    /// Whether the hit rates stopped rising (false: the cap was reached first).
    pub settled: bool,
    /// Hit rates over the warm-up's last window, per `cache/level` as the report gives them.
    pub hit_rates: BTreeMap<String, f64>,
}

/// The L1 hit rate of each cache (`cache/l1` → rate) over one window ending `elapsed` after the start.
#[derive(Clone, Debug)]
pub struct Sample {
    pub elapsed: Duration,
    pub l1: BTreeMap<String, f64>,
}

/// Whether the hit rates of `samples` (one per window, in order) have stopped rising: the last one
/// was taken at least [`MIN_WARMUP`] after the start, and each cache's L1 hit rate in it is less than
/// [`RISE_POINTS`] points above its rate in the window before. A cache without lookups in the last
/// window is not judged; one without lookups before it cannot be judged yet (still warming). With no
/// cache lookups at all (caching off) there is nothing to wait for.
pub fn stopped_rising(samples: &[Sample]) -> bool {
    let [.., previous, last] = samples else {
        return false;
    };
    last.elapsed >= MIN_WARMUP
        && last.l1.iter().all(|(cache, rate)| {
            previous
                .l1
                .get(cache)
                .is_some_and(|before| (rate - before) * 100.0 < RISE_POINTS)
        })
}

/// Scrapes `/metrics` every [`SCRAPE_EVERY`] while the scenario `name` runs, printing progress to
/// stderr, until [`stopped_rising`] or `max` has passed.
pub async fn settle(addr: SocketAddr, name: &str, max: Duration) -> anyhow::Result<Warmup> {
    let start = Instant::now();
    let mut before = metrics::scrape(addr).await?;
    let mut samples = Vec::new();
    loop {
        let next = (SCRAPE_EVERY * (samples.len() as u32 + 1)).min(max);
        tokio::time::sleep_until((start + next).into()).await;
        let after = metrics::scrape(addr).await?;
        let rates = metrics::cache_hit_rates(&before, &after);
        before = after;
        let sample = Sample {
            elapsed: start.elapsed(),
            l1: rates
                .iter()
                .filter(|(key, _)| key.ends_with("/l1"))
                .map(|(key, rate)| (key.clone(), *rate))
                .collect(),
        };
        eprintln!(
            "steady {name}: {:>5.1} s  {}",
            sample.elapsed.as_secs_f64(),
            describe(&sample.l1)
        );
        samples.push(sample);
        let settled = stopped_rising(&samples);
        if settled || start.elapsed() >= max {
            return Ok(Warmup {
                seconds: start.elapsed().as_secs_f64(),
                settled,
                hit_rates: rates,
            });
        }
    }
}

/// `cache/level 97.1 %, …`, or a note that nothing was looked up.
pub fn describe(rates: &BTreeMap<String, f64>) -> String {
    if rates.is_empty() {
        return "no cache lookups".to_owned();
    }
    rates
        .iter()
        .map(|(key, rate)| format!("{key} {:.1} %", rate * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seconds: u64, rates: &[(&str, f64)]) -> Sample {
        Sample {
            elapsed: Duration::from_secs(seconds),
            l1: rates
                .iter()
                .map(|(cache, rate)| ((*cache).to_owned(), *rate))
                .collect(),
        }
    }

    #[test]
    fn rising_hit_rates_keep_warming() {
        let samples = [
            sample(5, &[("status/l1", 0.50), ("counts/l1", 0.90)]),
            sample(10, &[("status/l1", 0.70), ("counts/l1", 0.95)]),
            sample(15, &[("status/l1", 0.80), ("counts/l1", 0.953)]),
        ];
        assert!(!stopped_rising(&samples), "status still rose 10 points");
    }

    #[test]
    fn flat_or_falling_rates_after_ten_seconds_have_settled() {
        let samples = [
            sample(5, &[("status/l1", 0.50)]),
            sample(10, &[("status/l1", 0.90), ("counts/l1", 0.99)]),
            sample(15, &[("status/l1", 0.904), ("counts/l1", 0.97)]),
        ];
        assert!(
            stopped_rising(&samples),
            "0.4 points up and a fall: settled"
        );
    }

    #[test]
    fn every_cache_must_have_stopped_rising() {
        let samples = [
            sample(5, &[("status/l1", 0.90), ("counts/l1", 0.50)]),
            sample(10, &[("status/l1", 0.90), ("counts/l1", 0.506)]),
        ];
        assert!(!stopped_rising(&samples), "counts rose 0.6 points");
    }

    #[test]
    fn nothing_is_judged_before_ten_seconds_or_two_windows() {
        assert!(!stopped_rising(&[]));
        assert!(!stopped_rising(&[sample(15, &[("status/l1", 0.99)])]));
        let early = [
            sample(3, &[("status/l1", 0.99)]),
            sample(6, &[("status/l1", 0.99)]),
        ];
        assert!(!stopped_rising(&early), "flat, but only 6 s in");
    }

    #[test]
    fn a_cache_new_in_the_last_window_is_still_warming() {
        let samples = [
            sample(5, &[("status/l1", 0.99)]),
            sample(10, &[("status/l1", 0.99), ("counts/l1", 0.20)]),
        ];
        assert!(!stopped_rising(&samples));
    }

    #[test]
    fn without_cache_lookups_there_is_nothing_to_wait_for() {
        let samples = [sample(5, &[]), sample(10, &[])];
        assert!(stopped_rising(&samples), "FOLLOW_CACHE=off: 10 s and done");
    }
}
