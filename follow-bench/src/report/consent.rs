//! `consent_mix`'s own figures and checks, and its section of the scenarios' Markdown.

use serde::Serialize;

use crate::consent::API_COUNTS_LIMIT;

/// One request kind's figures over the measured window.
#[derive(Clone, Debug, Serialize)]
pub struct OperationReport {
    pub name: String,
    pub description: &'static str,
    /// The kind's share of the mix, in percent (of requests drawn; refused follows are follows).
    pub mix_percent: u32,
    pub requests: u64,
    pub per_s: f64,
    /// Writes that changed something (absent for reads).
    pub changed: Option<u64>,
    pub errors: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Users, their counts checked through the API against the edges.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ApiCounts {
    pub users: usize,
    /// Until every answer equalled the edges (absent: not within the limit).
    pub exact_after_ms: Option<f64>,
    /// Users whose answered counts still differed at the limit.
    pub differing: usize,
}

/// What the mix left, before the cleanup, and how the models compared with PostgreSQL.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MixState {
    pub edges: usize,
    pub requests: usize,
    pub blocks: usize,
    /// Edges, requests and blocks in one and not the other (models against PostgreSQL).
    pub model_differences: usize,
}

/// How the graph was put back.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cleanup {
    pub calls: u64,
    pub unblocked: u64,
    pub unfollowed: u64,
    pub errors: u64,
    pub seconds: f64,
    /// From the end of the cleanup until the outbox was empty.
    pub drained_ms: f64,
    /// Users whose stored counts differ from their edges after it.
    pub count_mismatches: i64,
    /// Blocks, requests, writer edges and private accounts left after it (all must be 0).
    pub left_over: i64,
    /// Edges of the seed (neither end a writer) before the scenario and after the cleanup.
    pub seed_edges_before: i64,
    pub seed_edges_after: i64,
}

/// The scenario's own figures and checks, beside its row in the main table.
#[derive(Clone, Debug, Serialize)]
pub struct ConsentReport {
    pub private_accounts: usize,
    pub writers: usize,
    pub operations: Vec<OperationReport>,
    /// Follows refused with FORBIDDEN across a block, as they must be (not errors).
    pub refused: u64,
    /// Requests of the (unrecorded) warm-up that failed or were answered wrong: a fault.
    pub warmup_errors: u64,
    pub after_mix: MixState,
    pub api_counts_after_mix: ApiCounts,
    pub cleanup: Cleanup,
    pub api_counts_after_cleanup: ApiCounts,
    /// Failed checks; any fails the run.
    pub faults: Vec<String>,
}

/// The scenario's section of the report: one row per request kind, then the checks.
pub fn markdown(report: &ConsentReport) -> String {
    let mut out = format!(
        "\n### `consent_mix`: per request kind\n\n{} writers (split over the connections) and {} seeded users made private \
         for the scenario. Every answer is checked against each connection's model of its own users' edges, \
         requests and blocks; a follow across a block must be refused with FORBIDDEN and is counted on its own row, \
         not as an error.\n\n\
         | request | mix % | requests | req/s | changed | errors | p50 ms | p90 ms | p99 ms | max ms |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        report.writers, report.private_accounts
    );
    for op in &report.operations {
        out.push_str(&format!(
            "| `{}` | {} | {} | {:.0} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            op.name,
            if op.mix_percent == 0 {
                String::new()
            } else {
                op.mix_percent.to_string()
            },
            op.requests,
            op.per_s,
            op.changed.map_or(String::new(), |c| c.to_string()),
            op.errors,
            op.p50_ms,
            op.p90_ms,
            op.p99_ms,
            op.max_ms,
        ));
    }
    let a = &report.after_mix;
    let c = &report.cleanup;
    let api = |counts: &ApiCounts| match counts.exact_after_ms {
        Some(ms) => format!(
            "the counts the API answers for {} users equalled their edges after {ms:.0} ms",
            counts.users
        ),
        None => format!(
            "the counts the API answers for {} users: {} still differed from their edges after {} s",
            counts.users,
            counts.differing,
            API_COUNTS_LIMIT.as_secs()
        ),
    };
    out.push_str(&format!(
        "\nChecks: after the mix, {} edges with a writer at one end, {} pending requests and {} blocks stood, \
         {}; {}. The cleanup ({} calls in {:.1} s: {} blocks lifted, {} edges and requests unfollowed, {} failed) \
         then the private accounts public again: outbox drained after {:.0} ms, {} users' stored counts off, \
         {} blocks, requests, writer edges or private accounts left, seed edges {} before and {} after; {}.\n",
        a.edges,
        a.requests,
        a.blocks,
        if a.model_differences == 0 {
            "exactly as the answers said".to_owned()
        } else {
            format!("{} differing from the answers", a.model_differences)
        },
        api(&report.api_counts_after_mix),
        c.calls,
        c.seconds,
        c.unblocked,
        c.unfollowed,
        c.errors,
        c.drained_ms,
        c.count_mismatches,
        c.left_over,
        c.seed_edges_before,
        c.seed_edges_after,
        api(&report.api_counts_after_cleanup),
    ));
    if report.faults.is_empty() {
        out.push_str("\nEvery check passed.\n");
    } else {
        out.push_str("\n**Faults:**\n");
        for fault in &report.faults {
            out.push_str(&format!("- {fault}\n"));
        }
    }
    out.push_str("\nRequest kinds:\n");
    for op in &report.operations {
        out.push_str(&format!("- `{}`: {}\n", op.name, op.description));
    }
    out
}
