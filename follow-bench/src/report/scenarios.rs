//! The scenarios' report (the default mode): each scenario's figures, the run's (latest.json), and
//! the Markdown table (latest.md).

use std::collections::BTreeMap;

use serde::Serialize;

use super::header;

/// One scenario's figures.
#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    pub name: &'static str,
    pub description: &'static str,
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub throughput_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Hit rate per `cache/level` during the measured window (absent: no lookups).
    pub cache_hit_rates: BTreeMap<String, f64>,
    /// Reads per target during the measured window (absent: the server counts none).
    pub reads: Option<crate::metrics::ReadTargets>,
    /// For write scenarios: time from the scenario's end until every event was applied.
    pub converged_ms: Option<f64>,
    /// For write scenarios: users whose stored counts differ from their edges once converged.
    pub count_mismatches: Option<i64>,
    /// With `--steady`: how the warm-up to settled hit rates went.
    pub warmup: Option<crate::steady::Warmup>,
    /// Throughput over `typename`'s in the same run, when `typename` ran.
    pub typename_ratio: Option<f64>,
    /// `consent_mix`'s figures per request kind and its checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent: Option<crate::report::consent::ConsentReport>,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub started_at: String,
    pub command: String,
    pub commit: String,
    pub machine: BTreeMap<String, String>,
    pub graph: crate::graph::GraphPlan,
    pub seeding: crate::graph::GraphReport,
    pub concurrency: usize,
    pub warmup_s: f64,
    /// With `--steady`: the longest warm-up of a scenario that reads through the caches.
    pub steady_max_s: Option<f64>,
    pub duration_s: f64,
    pub server_env: Vec<String>,
    pub scenarios: Vec<ScenarioReport>,
    pub server_peak_rss_mib: Option<f64>,
    /// With `--read-your-writes`: what its checks found.
    pub read_your_writes: Option<crate::replicas::ReadYourWrites>,
}

/// Sets each scenario's throughput over `typename`'s (when `typename` ran, with some throughput).
pub fn set_typename_ratios(scenarios: &mut [ScenarioReport]) {
    let typename = scenarios
        .iter()
        .find(|s| s.name == "typename")
        .map(|s| s.throughput_per_s)
        .filter(|&t| t > 0.0);
    for s in scenarios {
        s.typename_ratio = typename.map(|t| s.throughput_per_s / t);
    }
}

/// The run as Markdown: a header with the command and machine, then one table.
pub fn markdown(run: &RunReport) -> String {
    let mut out = header(&run.started_at, &run.commit, &run.command, &run.machine);
    out.push_str(&format!(
        "Graph: {} users ({} writers besides), {} edges (Zipf s = {}), top follower counts {:?}; {} in {:.1} s.\n",
        run.graph.users,
        run.graph.writers,
        run.seeding.edges,
        run.graph.exponent,
        run.seeding.top_follower_counts,
        if run.seeding.reused { "reused from a previous run" } else { "seeded" },
        run.seeding.seconds
    ));
    let warm_up = match run.steady_max_s {
        Some(max) => format!(
            "each scenario that reads through the caches warmed up until its caches' L1 hit rates stopped rising \
             (scraped every {} s: none rose by {} points or more over the last window, at least {} s, at most {max:.0} s; \
             the others {:.1} s)",
            crate::steady::SCRAPE_EVERY.as_secs(),
            crate::steady::RISE_POINTS,
            crate::steady::MIN_WARMUP.as_secs(),
            run.warmup_s
        ),
        None => format!("{:.1} s warm-up", run.warmup_s),
    };
    out.push_str(&format!(
        "Load: {} keep-alive connections from one client thread, {warm_up} then {:.1} s measured per scenario; cache hit rates are the measured window's. Rate limits off (`FOLLOW_RATE_LIMIT=off`) unless the settings say otherwise: every request comes from one address.{}\n\n",
        run.concurrency,
        run.duration_s,
        if run.server_env.is_empty() { String::new() } else { format!(" Server settings: `{}`.", run.server_env.join(" ")) }
    ));
    let ratios = run.scenarios.iter().any(|s| s.typename_ratio.is_some());
    out.push_str(&format!(
        "| scenario | req/s |{} p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | cache hit rates | converged after | counts exact |\n",
        if ratios { " × typename |" } else { "" }
    ));
    out.push_str(&format!(
        "| --- | ---: |{} ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |\n",
        if ratios { " ---: |" } else { "" }
    ));
    for s in &run.scenarios {
        let rates = if s.cache_hit_rates.is_empty() {
            "n/a".to_owned()
        } else {
            s.cache_hit_rates
                .iter()
                .map(|(k, v)| format!("{k} {:.1} %", v * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let ratio = if ratios {
            format!(
                " {} |",
                s.typename_ratio
                    .map_or("".to_owned(), |r| format!("{r:.3}"))
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| {} | {:.0} |{ratio} {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
            s.name,
            s.throughput_per_s,
            s.p50_ms,
            s.p90_ms,
            s.p99_ms,
            s.p999_ms,
            s.max_ms,
            s.errors,
            rates,
            s.converged_ms
                .map_or("".to_owned(), |ms| format!("{ms:.0} ms")),
            s.count_mismatches.map_or("".to_owned(), |n| if n == 0 {
                "yes".to_owned()
            } else {
                format!("NO: {n} users differ")
            }),
        ));
    }
    out.push_str(&format!(
        "\nServer peak RSS: {}.\n\nScenarios:\n",
        run.server_peak_rss_mib.map_or(
            "n/a (server not started by the benchmark)".to_owned(),
            |m| format!("{m:.0} MiB")
        )
    ));
    for s in &run.scenarios {
        out.push_str(&format!("- `{}`: {}\n", s.name, s.description));
        if let Some(w) = &s.warmup {
            out.push_str(&format!(
                "  - warm-up: {:.0} s, {}; last window's hit rates: {}\n",
                w.seconds,
                if w.hit_rates.is_empty() {
                    "nothing to settle"
                } else if w.settled {
                    "hit rates settled"
                } else {
                    "hit rates still rising at the cap"
                },
                crate::steady::describe(&w.hit_rates)
            ));
        }
        if let Some(r) = &s.reads {
            out.push_str(&format!(
                "  - reads: primary {:.0}, replica {:.0}: the primary served {:.1} % ({})\n",
                r.primary,
                r.replica,
                r.primary_share * 100.0,
                r.primary_by_what
                    .iter()
                    .map(|(what, n)| format!("{what} {n:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(err) = &s.first_error {
            out.push_str(&format!("  - first error: `{}`\n", err.replace('`', "'")));
        }
    }
    for consent in run.scenarios.iter().filter_map(|s| s.consent.as_ref()) {
        out.push_str(&crate::report::consent::markdown(consent));
    }
    if let Some(found) = &run.read_your_writes {
        out.push_str(&found.markdown());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(name: &'static str, throughput_per_s: f64) -> ScenarioReport {
        ScenarioReport {
            name,
            description: "",
            requests: 1,
            errors: 0,
            first_error: None,
            throughput_per_s,
            p50_ms: 1.0,
            p90_ms: 2.0,
            p99_ms: 3.0,
            p999_ms: 4.0,
            max_ms: 5.0,
            cache_hit_rates: BTreeMap::new(),
            reads: None,
            converged_ms: None,
            count_mismatches: None,
            warmup: None,
            typename_ratio: None,
            consent: None,
        }
    }

    fn run(scenarios: Vec<ScenarioReport>) -> RunReport {
        RunReport {
            started_at: "2026-01-01T00:00:00Z".into(),
            command: "follow-bench".into(),
            commit: "abc1234".into(),
            machine: BTreeMap::new(),
            graph: crate::graph::GraphPlan {
                users: 10,
                edges: 10,
                writers: 1,
                exponent: 1.0,
                rng_seed: 1,
            },
            seeding: crate::graph::GraphReport {
                reused: true,
                seconds: 0.0,
                edges: 10,
                top_follower_counts: vec![],
            },
            concurrency: 1,
            warmup_s: 1.0,
            steady_max_s: None,
            duration_s: 1.0,
            server_env: vec![],
            scenarios,
            server_peak_rss_mib: None,
            read_your_writes: None,
        }
    }

    #[test]
    fn throughputs_are_compared_with_typename_of_the_same_run() {
        let mut scenarios = vec![scenario("typename", 40_000.0), scenario("counts", 8_000.0)];
        set_typename_ratios(&mut scenarios);
        assert_eq!(scenarios[0].typename_ratio, Some(1.0));
        assert_eq!(scenarios[1].typename_ratio, Some(0.2));
        let markdown = markdown(&run(scenarios));
        assert!(markdown.contains("| scenario | req/s | × typename | p50 ms |"));
        assert!(markdown.contains("| counts | 8000 | 0.200 | 1.00 | 2.00 | 3.00 |"));
        assert!(markdown.contains("| typename | 40000 | 1.000 | 1.00 |"));
    }

    #[test]
    fn without_typename_there_is_no_ratio_column() {
        let mut scenarios = vec![scenario("counts", 8_000.0)];
        set_typename_ratios(&mut scenarios);
        assert_eq!(scenarios[0].typename_ratio, None);
        let markdown = markdown(&run(scenarios));
        assert!(!markdown.contains("× typename"));
        assert!(markdown.contains("| counts | 8000 | 1.00 | 2.00 | 3.00 |"));
    }
}
