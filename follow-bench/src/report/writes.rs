//! `--writes`' report: the run's figures (latest.json) and the Markdown (latest.md).

use std::collections::BTreeMap;

use follow_service::telemetry::metrics::{CONSUMER_BATCH, DB_QUERIES};
use serde::Serialize;

use crate::{
    graph::{GraphPlan, GraphReport},
    writes::{FOLLOW, IDLE_WINDOW, POLL_EVERY, PUBLISH_WAIT, WRITE_BATCH},
};

/// The whole run.
#[derive(Debug, Serialize)]
pub struct WritesReport {
    pub started_at: String,
    pub command: String,
    pub commit: String,
    pub machine: BTreeMap<String, String>,
    pub graph: GraphPlan,
    pub seeding: GraphReport,
    /// `started` (by this process) or the `--url` targeted.
    pub server: String,
    /// Settings of the started server that this process can see (`KEY=VALUE`).
    pub server_settings: Vec<String>,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// The service's idle work per second (without `--quick`): what every delta includes besides the
    /// follows.
    pub background_per_s: Option<Deltas>,
    pub levels: Vec<LevelReport>,
    /// Edges in `follows` before the run and after it.
    pub edges_before: i64,
    pub edges_after: i64,
    pub server_peak_rss_mib: Option<f64>,
}

/// One concurrency's figures.
#[derive(Debug, Serialize)]
pub struct LevelReport {
    pub concurrency: usize,
    /// Follow requests of the measured window.
    pub follows: u64,
    pub changed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub warmup_follows: u64,
    pub warmup_errors: u64,
    pub follows_per_s: f64,
    pub changed_share: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// From the end of the load until the outbox was empty and the touched users' counts exact.
    pub converged_ms: f64,
    /// Users whose counts were checked (the followers and followees of the level's follows that changed
    /// an edge or failed).
    pub touched_users: usize,
    /// Counter deltas from just before the window to just after convergence.
    pub deltas: Deltas,
    pub statements_per_follow: Option<f64>,
    pub transactions_per_follow: f64,
    pub write_transactions_per_follow: f64,
    pub wal_bytes_per_follow: f64,
    pub redis_commands_per_follow: f64,
    /// The server's resident memory after the level converged.
    pub rss_mib: Option<f64>,
    pub cleanup: Cleanup,
}

/// Counter deltas over a span.
#[derive(Clone, Debug, Serialize)]
pub struct Deltas {
    pub seconds: f64,
    /// `follow_db_queries_total` (absent: not on `/metrics`).
    pub statements: Option<f64>,
    /// `xact_commit + xact_rollback` of the bench database, less the benchmark's own checks.
    pub transactions: f64,
    /// Whether both snapshots came once every backend had published its counts (else `transactions` is
    /// approximate).
    pub transactions_exact: bool,
    /// The same of every other database but `postgres` (other work on the machine's PostgreSQL).
    pub other_db_transactions: f64,
    /// Transaction ids assigned (transactions that wrote; the whole cluster).
    pub write_transactions: f64,
    /// WAL inserted (`pg_current_wal_insert_lsn()`; the whole cluster).
    pub wal_bytes: f64,
    /// Redis `total_commands_processed` (the whole server), less the benchmark's own `INFO`.
    pub redis_commands: f64,
    /// Mean of `follow_write_batch_size` (absent: not on `/metrics`, or no batch).
    pub write_batch_mean: Option<f64>,
    pub write_batches: Option<f64>,
    /// Mean of `follow_consumer_batch_size`.
    pub consumer_batch_mean: Option<f64>,
    pub consumer_batches: Option<f64>,
}

/// How the level's edges were taken back.
#[derive(Debug, Default, Serialize)]
pub struct Cleanup {
    /// Edges the level created (follows answered `changed: true`, and failed follows found committed).
    pub edges: usize,
    pub calls: u64,
    pub unfollowed: u64,
    /// Edges that were already gone (`changed: false`).
    pub already_gone: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    /// Until the counts were exact again.
    pub converged_ms: f64,
}

/// The run as Markdown: the command and machine, the load, one row per concurrency, then notes.
pub fn markdown(run: &WritesReport) -> String {
    let mut out = crate::report::header(&run.started_at, &run.commit, &run.command, &run.machine);
    out.push_str(&format!(
        "Graph: {} users, {} edges (Zipf s = {}), top follower counts {:?}; {} in {:.1} s.\n\n",
        run.graph.users,
        run.seeding.edges,
        run.graph.exponent,
        run.seeding.top_follower_counts,
        if run.seeding.reused {
            "reused from a previous run"
        } else {
            "seeded"
        },
        run.seeding.seconds
    ));
    out.push_str(&format!(
        "Load: `{FOLLOW}`, one request at a time per keep-alive connection from one client thread; the viewer \
         uniform over all users (a token signed per request), the followee Zipf-chosen, never the viewer. \
         {:.1} s warm-up, then {:.1} s measured per level. Server: {}.{}\n\n",
        run.warmup_s,
        run.duration_s,
        if run.server == "started" {
            "started by the benchmark".to_owned()
        } else {
            format!("{} (its settings unknown here)", run.server)
        },
        if run.server_settings.is_empty() {
            String::new()
        } else {
            format!(" Server settings: `{}`.", run.server_settings.join("`, `"))
        }
    ));
    out.push_str(
        "| connections | follows | follows/s | changed | errors | p50 ms | p90 ms | p99 ms | max ms | counts exact after | PG statements / follow | PG transactions / follow | PG write transactions / follow | WAL bytes / follow | Redis commands / follow | write batch (mean) | consumer batch (mean) | server RSS |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mean = |m: Option<f64>| m.map_or("n/a".to_owned(), |m| format!("{m:.1}"));
    for l in &run.levels {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} % | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} ms | {} | {}{:.2} | {:.2} | {:.0} | {:.1} | {} | {} | {} |\n",
            l.concurrency,
            l.follows,
            l.follows_per_s,
            l.changed_share * 100.0,
            l.errors + l.warmup_errors,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.max_ms,
            l.converged_ms,
            l.statements_per_follow
                .map_or("n/a".to_owned(), |n| format!("{n:.2}")),
            if l.deltas.transactions_exact { "" } else { "≈" },
            l.transactions_per_follow,
            l.write_transactions_per_follow,
            l.wal_bytes_per_follow,
            l.redis_commands_per_follow,
            mean(l.deltas.write_batch_mean),
            mean(l.deltas.consumer_batch_mean),
            l.rss_mib.map_or("n/a".to_owned(), |m| format!("{m:.0} MiB")),
        ));
    }
    out.push_str(&format!(
        "\nFollows/s: the window's follow requests over the time until the last of them was answered. \
         Per follow: the counters' deltas from just before the measured window to just after the counts \
         were exact (the consumer's work included, the warm-up's and the cleanup's not), divided by the \
         follow requests of the window, whether they changed an edge or not. Counts exact after: from the \
         end of the load until the outbox was found empty with every follower and followee the level wrote having \
         `user_stats` equal to its edges in `follows` (polled every {} ms). Statements: the service's \
         `{DB_QUERIES}` (every pool, the consumer's included). Transactions: `xact_commit + xact_rollback` \
         of the bench database in `pg_stat_database`, less the benchmark's own checks; PostgreSQL \
         publishes a backend's counts at most once a second and an idle backend's only at its next \
         transaction, so each snapshot waited until every backend of the bench database had ended one a \
         second after the quiet began (≈: not all did within {} s, the figure is approximate). Write \
         transactions: transaction ids \
         assigned (`pg_snapshot_xmax(pg_current_snapshot())`), exact but the whole cluster's, as are WAL \
         bytes (`pg_current_wal_insert_lsn()`: `pg_current_wal_lsn()`, the write position, lags it by up to a \
         page at times); Redis commands (`total_commands_processed`) are the whole Redis \
         server's: other work on this machine counts in those three. Batch sizes: the mean of \
         `{WRITE_BATCH}` (group commit; n/a when the service does not export it) and of `{CONSUMER_BATCH}` \
         over the same span. Errors include the warm-up's. Server RSS: VmRSS after the level.\n",
        POLL_EVERY.as_millis(),
        PUBLISH_WAIT.as_secs(),
    ));
    match &run.background_per_s {
        Some(b) => out.push_str(&format!(
            "\nThe service's idle work, included in every delta (measured over {} s without load): \
             {} statements, {:.1} transactions, {:.1} write transactions, {:.0} WAL bytes, {:.1} Redis \
             commands per second.\n",
            IDLE_WINDOW.as_secs(),
            b.statements.map_or("n/a".to_owned(), |n| format!("{n:.1}")),
            b.transactions,
            b.write_transactions,
            b.wal_bytes,
            b.redis_commands
        )),
        None => out.push_str(
            "\nThe service's idle work (relay, gauge sampler, idle consumers) is included in every delta and \
             not measured apart with --quick.\n",
        ),
    }
    out.push_str("\nPer level:\n");
    for l in &run.levels {
        let c = &l.cleanup;
        out.push_str(&format!(
            "- {} connections: {} follows changed an edge, {} users' counts checked; {} warm-up follows. \
             Cleanup: {} edges unfollowed of {} created ({} already gone) in {} `unfollowMany` calls, {:.1} s, \
             counts exact again after {:.0} ms.{}\n",
            l.concurrency,
            l.changed,
            l.touched_users,
            l.warmup_follows,
            c.unfollowed,
            c.edges,
            c.already_gone,
            c.calls,
            c.seconds,
            c.converged_ms,
            if l.deltas.other_db_transactions > 0.0 {
                format!(
                    " Other databases ran {:.0} transactions meanwhile.",
                    l.deltas.other_db_transactions
                )
            } else {
                String::new()
            }
        ));
        if let Some(err) = &l.first_error {
            out.push_str(&format!("  - first error: `{}`\n", err.replace('`', "'")));
        }
        if let Some(err) = &c.first_error {
            out.push_str(&format!(
                "  - first cleanup error: `{}`\n",
                err.replace('`', "'")
            ));
        }
    }
    out.push_str(&format!(
        "\nEdges: {} before the run, {} after. Server peak RSS: {}.\n",
        run.edges_before,
        run.edges_after,
        run.server_peak_rss_mib.map_or(
            "n/a (server not started by the benchmark)".to_owned(),
            |m| format!("{m:.0} MiB")
        )
    ));
    out
}
