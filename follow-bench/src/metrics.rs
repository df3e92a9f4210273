//! The server's `/metrics` (Prometheus text format), read once for every mode: one parser of its sample
//! lines, and the figures the modes take from it (sums of series, cache hit rates, histogram buckets).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use crate::load;

/// The server's `/metrics` text, on a fresh connection.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    load::get(addr, "/metrics").await
}

/// One sample line, `name{labels} value`.
struct Sample<'a> {
    name: &'a str,
    /// Between the braces (empty without labels).
    labels: &'a str,
    value: f64,
}

impl<'a> Sample<'a> {
    /// The value of the label `key`.
    fn label(&self, key: &str) -> Option<&'a str> {
        self.labels
            .split(',')
            .find_map(|pair| pair.trim().strip_prefix(key)?.strip_prefix("=\""))
            .map(|value| value.trim_end_matches('"'))
    }
}

/// Every sample line of a `/metrics` text (comments and unreadable lines skipped).
fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.trim_end().rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.strip_suffix('}')?),
                None => (series, ""),
            };
            Some(Sample {
                name: name.trim(),
                labels,
                value,
            })
        })
}

/// The sum of every series of `name` (absent: no such series).
pub fn sum(text: &str, name: &str) -> Option<f64> {
    samples(text)
        .filter(|sample| sample.name == name)
        .fold(None, |sum, sample| Some(sum.unwrap_or(0.0) + sample.value))
}

/// Reads per target (`follow_db_reads_total{target}`) between two scrapes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReadTargets {
    pub primary: f64,
    pub replica: f64,
    /// The primary's share of the reads (0 to 1).
    pub primary_share: f64,
    /// The primary's reads by what they read (the `what` label).
    pub primary_by_what: BTreeMap<String, f64>,
}

/// Reads per target between two scrapes; `None` when the server routed none (or counts none).
pub fn read_targets(before: &str, after: &str) -> Option<ReadTargets> {
    let of = |text: &str, target: &str| {
        samples(text)
            .filter(|s| s.name == "follow_db_reads_total" && s.label("target") == Some(target))
            .map(|s| s.value)
            .sum::<f64>()
    };
    let primary = of(after, "primary") - of(before, "primary");
    let replica = of(after, "replica") - of(before, "replica");
    let total = primary + replica;
    let by_what = |text: &str| {
        let mut found: BTreeMap<String, f64> = BTreeMap::new();
        for s in samples(text)
            .filter(|s| s.name == "follow_db_reads_total" && s.label("target") == Some("primary"))
        {
            *found
                .entry(s.label("what").unwrap_or("").to_owned())
                .or_default() += s.value;
        }
        found
    };
    let before_what = by_what(before);
    let primary_by_what = by_what(after)
        .into_iter()
        .map(|(what, n)| {
            let n = n - before_what.get(&what).copied().unwrap_or(0.0);
            (what, n)
        })
        .filter(|(_, n)| *n > 0.0)
        .collect();
    (total > 0.0).then(|| ReadTargets {
        primary,
        replica,
        primary_share: primary / total,
        primary_by_what,
    })
}

/// The buckets of the histogram `name`: (upper bound, cumulative count), as listed.
pub fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let series = format!("{name}_bucket");
    samples(text)
        .filter(|sample| sample.name == series)
        .filter_map(|sample| {
            let le = match sample.label("le")? {
                "+Inf" => f64::INFINITY,
                le => le.parse().ok()?,
            };
            Some((le, sample.value))
        })
        .collect()
}

/// Hit rates between two `/metrics` scrapes, per `cache/l1` (of L1 lookups), `cache/l2` (of L2 lookups)
/// and `cache/all` (lookups answered without PostgreSQL; a load coalesced into another counts as served).
pub fn cache_hit_rates(before: &str, after: &str) -> BTreeMap<String, f64> {
    let (b, a) = (cache_counters(before), cache_counters(after));
    let delta = |key: &(String, String, String)| {
        a.get(key).copied().unwrap_or(0.0) - b.get(key).copied().unwrap_or(0.0)
    };
    let caches: BTreeSet<String> = a.keys().map(|(cache, _, _)| cache.clone()).collect();
    let mut rates = BTreeMap::new();
    for cache in caches {
        let get = |level: &str, result: &str| {
            delta(&(cache.clone(), level.to_owned(), result.to_owned()))
        };
        let (l1_hit, l1_miss, l1_bypass) =
            (get("l1", "hit"), get("l1", "miss"), get("l1", "bypass"));
        let (l2_hit, l2_miss, l2_down) = (
            get("l2", "hit"),
            get("l2", "miss"),
            get("l2", "unavailable"),
        );
        if l1_hit + l1_miss > 0.0 {
            rates.insert(format!("{cache}/l1"), l1_hit / (l1_hit + l1_miss));
        }
        if l2_hit + l2_miss + l2_down > 0.0 {
            rates.insert(format!("{cache}/l2"), l2_hit / (l2_hit + l2_miss + l2_down));
        }
        let lookups = l1_hit + l1_miss + l1_bypass;
        if lookups > 0.0 {
            rates.insert(format!("{cache}/all"), 1.0 - (l2_miss + l2_down) / lookups);
        }
    }
    rates
}

/// (cache, level, result) → count, from the `follow_cache_requests_total` series.
fn cache_counters(text: &str) -> BTreeMap<(String, String, String), f64> {
    let mut counters = BTreeMap::new();
    for sample in samples(text).filter(|s| s.name == "follow_cache_requests_total") {
        let (Some(cache), Some(level), Some(result)) = (
            sample.label("cache"),
            sample.label("level"),
            sample.label("result"),
        ) else {
            continue;
        };
        *counters
            .entry((cache.to_owned(), level.to_owned(), result.to_owned()))
            .or_insert(0.0) += sample.value;
    }
    counters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sum_their_series_and_match_whole_names() {
        let text = "# TYPE follow_db_queries_total counter\n\
                    follow_db_queries_total 120\n\
                    follow_db_queries_total_other 7\n\
                    follow_consumer_batch_size_sum{consumer=\"a\"} 30\n\
                    follow_consumer_batch_size_sum{consumer=\"b\"} 12\n\
                    follow_consumer_batch_size_count 6\n";
        assert_eq!(sum(text, "follow_db_queries_total"), Some(120.0));
        assert_eq!(sum(text, "follow_consumer_batch_size_sum"), Some(42.0));
        assert_eq!(sum(text, "follow_consumer_batch_size_count"), Some(6.0));
        assert_eq!(sum(text, "follow_write_batch_size_sum"), None);
    }

    #[test]
    fn hit_rates_come_from_counter_deltas() {
        let before = "follow_cache_requests_total{cache=\"status\",level=\"l1\",result=\"hit\"} 10\n\
                      follow_cache_requests_total{cache=\"status\",level=\"l1\",result=\"miss\"} 10\n";
        let after = "follow_cache_requests_total{cache=\"status\",level=\"l1\",result=\"hit\"} 100\n\
                     follow_cache_requests_total{cache=\"status\",level=\"l1\",result=\"miss\"} 20\n\
                     follow_cache_requests_total{cache=\"counts\",level=\"l2\",result=\"miss\"} 5\n";
        let rates = cache_hit_rates(before, after);
        assert_eq!(rates.get("status/l1").copied(), Some(0.9));
        assert_eq!(
            rates.get("status/all").copied(),
            Some(1.0),
            "no L2 misses: every lookup served without PostgreSQL"
        );
        assert_eq!(rates.get("counts/l2").copied(), Some(0.0));
    }

    #[test]
    fn histogram_buckets_are_read_with_their_bounds() {
        let text = "# TYPE follow_event_commit_to_apply_seconds histogram\n\
                    follow_event_commit_to_apply_seconds_bucket{le=\"0.005\"} 3\n\
                    follow_event_commit_to_apply_seconds_bucket{le=\"0.01\"} 7\n\
                    follow_event_commit_to_apply_seconds_bucket{le=\"+Inf\"} 9\n\
                    follow_event_commit_to_apply_seconds_sum 0.04\n\
                    follow_event_commit_to_apply_seconds_count 9\n";
        assert_eq!(
            histogram_buckets(text, "follow_event_commit_to_apply_seconds"),
            vec![(0.005, 3.0), (0.01, 7.0), (f64::INFINITY, 9.0)]
        );
        assert!(histogram_buckets(text, "follow_other_seconds").is_empty());
    }
}
