//! `--abuse`'s report: the run's figures (latest.json), the console line of each phase, and the
//! Markdown (latest.md).

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{
    abuse::{ATTACKER_ADDRESS, Attack, QUIET_PROBE, QUIET_PROBES},
    graph::{GraphPlan, GraphReport},
    scenarios::Scenario,
};

/// The whole run.
#[derive(Debug, Serialize)]
pub struct AbuseReport {
    pub started_at: String,
    pub command: String,
    pub commit: String,
    pub machine: BTreeMap<String, String>,
    pub graph: GraphPlan,
    pub seeding: GraphReport,
    pub rate: f64,
    pub connections: usize,
    pub attacker_connections: usize,
    pub attacker_user: i64,
    pub initial_warmup_s: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub grace_s: f64,
    pub fragment_depth: usize,
    pub slow_connections: usize,
    pub idle_connections: usize,
    /// Why the slowloris class opens fewer connections than asked, if it does.
    pub socket_note: Option<String>,
    pub server_env: Vec<String>,
    /// What one legitimate identity sends: requests per second per address and per viewer token, and
    /// writes per minute per writer token.
    pub per_address_per_s: f64,
    pub per_viewer_per_s: f64,
    pub writes_per_writer_per_min: f64,
    /// What the phases with an attacker are held against: the higher throughput and the lower p99
    /// of the two phases without it (the first and the last). The machine is shared: other work can
    /// disturb one quiet phase, and judging the attacks against a disturbed one would flatter them.
    pub reference_throughput_per_s: f64,
    pub reference_p99_ms: f64,
    pub phases: Vec<PhaseReport>,
    pub server_peak_rss_mib: Option<f64>,
    /// After the last phase: users whose counts differ from their edges (`None`: events were left in
    /// the outbox, so not checked).
    pub count_mismatches: Option<i64>,
}

/// One phase's figures.
#[derive(Debug, Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub attack: Option<Attack>,
    pub description: String,
    pub legit: LegitReport,
    /// Throughput and p99 over the reference's (see [`AbuseReport::reference_throughput_per_s`]).
    pub throughput_ratio: Option<f64>,
    pub p99_ratio: Option<f64>,
    /// At least 0.8× the throughput, p99 at most 2×, no legitimate errors.
    pub aims_met: Option<bool>,
    pub attacker: Option<AttackerReport>,
    /// The server's resident memory at the end of the window.
    pub server_rss_mib: Option<f64>,
    /// Persisted queries registered in Redis under the server's prefix, after the phase.
    pub apq_keys: u64,
    /// Seconds from the attacker's stop until the server answered promptly and the outbox was empty;
    /// `None`: not within the limit.
    pub quiet_after_s: Option<f64>,
}

/// The legitimate traffic of one phase's measured window.
#[derive(Debug, Serialize)]
pub struct LegitReport {
    /// Requests the schedule offered within the window (rate × window).
    pub scheduled: u64,
    /// Answered 200 without `errors` during the window.
    pub ok: u64,
    /// Failed answers received from the window's start on, and requests without an answer.
    pub errors: u64,
    /// Outcomes that are not a clean 200, by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// The first error of each kind.
    pub error_samples: BTreeMap<String, String>,
    /// Requests not sent by the window's end because their connection was still behind schedule
    /// (scheduled during the warm-up or the window).
    pub unsent: u64,
    pub throughput_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The furthest behind its schedule a request was sent.
    pub max_behind_ms: f64,
}

/// What the attacker got during the phase (warm-up included).
#[derive(Debug, Serialize)]
pub struct AttackerReport {
    pub seconds: f64,
    /// Requests answered (or connections ended), by outcome: HTTP status, `200 with errors`,
    /// `transport error`, slowloris connection fates.
    pub outcomes: BTreeMap<String, u64>,
    /// The first answer of each outcome, shortened.
    pub samples: BTreeMap<String, String>,
    /// Requests still unanswered (or slowloris connections still open) when the phase ended.
    pub open_at_end: u64,
    /// Time each request took (for slowloris: until the server closed the connection).
    pub p50_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// One phase on one line, for the console.
pub fn summary_line(phase: &PhaseReport) -> String {
    let l = &phase.legit;
    let mut line = format!(
        "legit {:>6.0} req/s{}  p50 {:>7.2} ms  p99 {:>8.2} ms{}  errors {}  unsent {}",
        l.throughput_per_s,
        phase
            .throughput_ratio
            .map_or(String::new(), |r| format!(" ({r:.2}×)")),
        l.p50_ms,
        l.p99_ms,
        phase
            .p99_ratio
            .map_or(String::new(), |r| format!(" ({r:.2}×)")),
        l.errors,
        l.unsent
    );
    if let Some(attacker) = &phase.attacker {
        let _ = write!(
            line,
            "  | attacker {}, p50 {}",
            outcomes_text(attacker),
            attacker
                .p50_ms
                .map_or("n/a".to_owned(), |ms| format!("{ms:.1} ms"))
        );
    }
    let _ = write!(
        line,
        "  | quiet after {}",
        phase
            .quiet_after_s
            .map_or("(not within the limit)".to_owned(), |s| format!("{s:.1} s"))
    );
    line
}

fn outcomes_text(attacker: &AttackerReport) -> String {
    let mut parts: Vec<String> = attacker
        .outcomes
        .iter()
        .map(|(outcome, n)| format!("{outcome}: {n}"))
        .collect();
    if attacker.open_at_end > 0 {
        parts.push(format!("open at the end: {}", attacker.open_at_end));
    }
    if parts.is_empty() {
        "nothing answered".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The run as Markdown: the header, the settings, one table of the legitimate traffic per phase, then
/// what the attacker got.
pub fn markdown(run: &AbuseReport) -> String {
    let mut out = crate::report::header(&run.started_at, &run.commit, &run.command, &run.machine);
    let _ = writeln!(
        out,
        "Graph: {} users ({} writers besides), {} edges (Zipf s = {}); {} in {:.1} s.",
        run.graph.users,
        run.graph.writers,
        run.seeding.edges,
        run.graph.exponent,
        if run.seeding.reused {
            "reused from a previous run"
        } else {
            "seeded"
        },
        run.seeding.seconds
    );
    let _ = writeln!(
        out,
        "Legitimate load: the `mix` scenario ({}) offered at {:.0} requests/s over {} keep-alive connections, \
         every request from one of 1,024 client addresses (`X-Forwarded-For: 2001:db8:<n>::1`) and, where it has a token, one of the active viewers drawn uniformly, or a writer; \
         latency from each request's scheduled time. {:.0} s of warm-up before the first phase; each phase \
         {:.1} s of warm-up (the attacker already at work) then {:.1} s measured.",
        Scenario::Mix.describe(),
        run.rate,
        run.connections,
        run.initial_warmup_s,
        run.warmup_s,
        run.duration_s
    );
    let _ = writeln!(
        out,
        "Per legitimate identity: {:.2} requests/s per address, {:.2} requests/s per viewer token, \
         {:.1} writes/min per writer token.",
        run.per_address_per_s, run.per_viewer_per_s, run.writes_per_writer_per_min
    );
    let _ = writeln!(
        out,
        "Attacker: one client, `X-Forwarded-For: {ATTACKER_ADDRESS}` and user {}'s token, on {} connections \
         flat out (slowloris: its own sockets).{}",
        run.attacker_user,
        run.attacker_connections,
        run.socket_note
            .as_ref()
            .map_or(String::new(), |n| format!(" Note: {n}."))
    );
    let _ = writeln!(out, "Server settings: `{}`.\n", run.server_env.join(" "));

    out.push_str(
        "| phase | legit req/s | × reference | p50 ms | p99 ms | p99 × reference | legit errors | not sent | aims met | attacker's outcomes | attacker p50 ms | quiet after |\n",
    );
    out.push_str(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |\n",
    );
    for phase in &run.phases {
        let l = &phase.legit;
        let ratio = |r: Option<f64>| r.map_or("—".to_owned(), |r| format!("{r:.2}"));
        let aims = match phase.aims_met {
            None => "—".to_owned(),
            Some(true) => "yes".to_owned(),
            Some(false) => "no".to_owned(),
        };
        let (outcomes, attacker_p50) = match &phase.attacker {
            Some(a) => (
                outcomes_text(a),
                a.p50_ms.map_or("—".to_owned(), |ms| format!("{ms:.1}")),
            ),
            None => ("—".to_owned(), "—".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
            phase.name,
            l.throughput_per_s,
            ratio(phase.throughput_ratio),
            l.p50_ms,
            l.p99_ms,
            ratio(phase.p99_ratio),
            l.errors,
            l.unsent,
            aims,
            outcomes,
            attacker_p50,
            phase
                .quiet_after_s
                .map_or("not within the limit".to_owned(), |s| format!("{s:.1} s")),
        );
    }
    let _ = writeln!(
        out,
        "\nReference: {:.0} requests/s and p99 {:.2} ms, the better throughput and the better p99 of the two \
         phases without the attacker (the machine is shared: other work can disturb one of them). Aims \
         (issue 10), against it: legitimate throughput at least 0.8×, p99 at most 2×, no legitimate \
         errors. Throughput counts the clean answers (200 without `errors`) received during the \
         window; latency runs from each request's scheduled time; an error is any other answer (a 429 \
         included), a broken connection, or no answer {:.0} s after the window. \"Not sent\": requests a \
         connection behind schedule had not sent when the window closed (the time they had waited counts \
         in the percentiles). \"Quiet after\": from the attacker's stop until `/healthz` answered within \
         {} ms {} times in a row and the outbox was empty.",
        run.reference_throughput_per_s,
        run.reference_p99_ms,
        run.grace_s,
        QUIET_PROBE.as_millis(),
        QUIET_PROBES
    );
    let _ = writeln!(
        out,
        "\nServer peak RSS: {}. Counts after the run: {}.",
        run.server_peak_rss_mib
            .map_or("n/a".to_owned(), |m| format!("{m:.0} MiB")),
        match run.count_mismatches {
            Some(0) => "exact".to_owned(),
            Some(n) => format!("{n} users differ from their edges"),
            None => "not checked (events left in the outbox)".to_owned(),
        }
    );
    out.push_str("\nPhases:\n");
    for phase in &run.phases {
        let _ = writeln!(
            out,
            "- `{}`: {}. Server RSS at the window's end: {}; persisted queries in Redis after it: {}.",
            phase.name,
            phase.description,
            phase
                .server_rss_mib
                .map_or("n/a".to_owned(), |m| format!("{m:.0} MiB")),
            phase.apq_keys
        );
        for (kind, n) in &phase.legit.error_kinds {
            let sample = phase.legit.error_samples.get(kind).map_or("", |s| s);
            let _ = writeln!(
                out,
                "  - legitimate errors `{kind}`: {n}; the first: `{}`",
                one_line(sample)
            );
        }
        if let Some(attacker) = &phase.attacker {
            for (outcome, sample) in &attacker.samples {
                if !sample.is_empty() {
                    let _ = writeln!(
                        out,
                        "  - attacker, first `{outcome}`: `{}`",
                        one_line(sample)
                    );
                }
            }
        }
    }
    out
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ").replace('`', "'")
}
