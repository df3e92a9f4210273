//! `--subscriptions`' report: the run's figures (latest.json) and the Markdown (latest.md).

use serde::Serialize;

/// The whole run.
#[derive(Debug, Serialize)]
pub struct SubscriptionsReport {
    pub started_at: String,
    pub command: String,
    pub commit: String,
    pub machine: std::collections::BTreeMap<String, String>,
    pub write_rate: f64,
    pub duration_s: f64,
    pub lanes: usize,
    pub server_env: Vec<String>,
    pub sizes: Vec<SizeReport>,
}

/// One size's figures.
#[derive(Debug, Serialize)]
pub struct SizeReport {
    pub subscribers: usize,
    /// Seconds to open every socket, have it acknowledged and subscribed on the server.
    pub connect_s: f64,
    pub writes: u64,
    pub writes_per_s: f64,
    pub write_errors: u64,
    pub first_write_error: Option<String>,
    pub write_p50_ms: f64,
    pub write_p99_ms: f64,
    /// The longest a write was sent after its scheduled time (the client or server fell behind).
    pub max_schedule_lag_ms: f64,
    /// Writes that changed an edge: the events the subscribers must receive.
    pub events_expected: u64,
    pub events_received: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// Events no acknowledged change explains (those of writes that failed are counted apart).
    pub unexpected: u64,
    pub from_failed_writes: u64,
    /// Events that reached a subscriber other than their followee's.
    pub misrouted: u64,
    /// `error` payloads, `complete`, or sockets the server closed during the run.
    pub subscription_errors: u64,
    pub first_subscription_error: Option<String>,
    /// From the last write's answer until the last expected event arrived.
    pub drain_ms: f64,
    pub latency_p50_ms: f64,
    pub latency_p90_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
    pub latency_max_ms: f64,
    /// Share of the events read before the write's HTTP answer.
    pub before_answer_share: f64,
    /// Time from the write's answer to its event (zero for events read first).
    pub after_answer_p50_ms: f64,
    pub after_answer_p99_ms: f64,
    pub after_answer_max_ms: f64,
    pub instances: Vec<InstanceReport>,
}

/// One instance's figures at one size.
#[derive(Debug, Serialize)]
pub struct InstanceReport {
    pub name: &'static str,
    pub subscribers: usize,
    /// Events the instance says it handed to subscribers (`follow_subscription_events_total`).
    pub delivered_by_server: f64,
    pub overruns: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub idle_rss_mib: Option<f64>,
    pub connected_rss_mib: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    /// (connected − idle) per 1,000 subscribers on this instance.
    pub per_1000_subscribers_mib: Option<f64>,
}

/// The run as Markdown: the command and machine, then delivery and memory tables.
pub fn markdown(run: &SubscriptionsReport) -> String {
    let mut out = crate::report::header(&run.started_at, &run.commit, &run.command, &run.machine);
    out.push_str(&format!(
        "Two `serve` instances over one database and Redis prefix, subscribers split evenly between them \
         (graphql-transport-ws, one socket and one `followEvents` subscription per followee); \
         {:.0} follows + unfollows per second through instance A from {} keep-alive connections for {:.0} s, \
         by writer users that subscribe to nothing. Latency: from sending the mutation to the subscriber \
         reading the event, on the benchmark's one clock.{}\n\n",
        run.write_rate,
        run.lanes,
        run.duration_s,
        if run.server_env.is_empty() {
            String::new()
        } else {
            format!(" Server settings: `{}`.", run.server_env.join(" "))
        }
    ));
    out.push_str("| subscribers | connect s | writes | writes/s | write p50 ms | write p99 ms | events expected | received | missing | duplicates | unexpected | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | drain ms |\n");
    out.push_str("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for s in &run.sizes {
        out.push_str(&format!(
            "| {} | {:.1} | {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |\n",
            s.subscribers,
            s.connect_s,
            s.writes,
            s.writes_per_s,
            s.write_p50_ms,
            s.write_p99_ms,
            s.events_expected,
            s.events_received,
            s.missing,
            s.duplicates,
            s.unexpected,
            s.latency_p50_ms,
            s.latency_p90_ms,
            s.latency_p99_ms,
            s.latency_p999_ms,
            s.latency_max_ms,
            s.drain_ms,
        ));
    }
    let mib = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1}"));
    out.push_str("\n| subscribers | instance | its subscribers | delivered (server count) | overruns | p50 ms | p99 ms | max ms | idle RSS MiB | connected RSS MiB | peak RSS (VmHWM) MiB | MiB per 1,000 subscribers |\n");
    out.push_str(
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for s in &run.sizes {
        for i in &s.instances {
            out.push_str(&format!(
                "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
                s.subscribers,
                i.name,
                i.subscribers,
                i.delivered_by_server,
                i.overruns,
                i.latency_p50_ms,
                i.latency_p99_ms,
                i.latency_max_ms,
                mib(i.idle_rss_mib),
                mib(i.connected_rss_mib),
                mib(i.peak_rss_mib),
                mib(i.per_1000_subscribers_mib),
            ));
        }
    }
    if let (Some(first), Some(last)) = (run.sizes.first(), run.sizes.last())
        && last.subscribers > first.subscribers
    {
        let connected = |s: &SizeReport| -> Option<f64> {
            s.instances.iter().map(|i| i.connected_rss_mib).sum()
        };
        if let (Some(small), Some(large)) = (connected(first), connected(last)) {
            out.push_str(&format!(
                "\nBetween {} and {} subscribers, both instances' connected RSS grew by {:.1} MiB: {:.1} KiB per added subscriber.\n",
                first.subscribers,
                last.subscribers,
                large - small,
                (large - small) * 1024.0 / (last.subscribers - first.subscribers) as f64
            ));
        }
    }
    for s in &run.sizes {
        let notes: Vec<String> = [
            s.first_write_error.as_ref().map(|e| {
                format!(
                    "{} write errors, first: `{}`",
                    s.write_errors,
                    e.replace('`', "'")
                )
            }),
            s.first_subscription_error.as_ref().map(|e| {
                format!(
                    "{} subscription errors, first: `{}`",
                    s.subscription_errors,
                    e.replace('`', "'")
                )
            }),
            (s.misrouted > 0).then(|| format!("{} events misrouted", s.misrouted)),
            (s.from_failed_writes > 0).then(|| {
                format!(
                    "{} events of writes whose answer failed",
                    s.from_failed_writes
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        out.push_str(&format!(
            "\n{} subscribers: {:.0} % of the events were read before their write's HTTP answer; \
             from the answer to the event p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             writes at most {:.0} ms behind schedule{}.\n",
            s.subscribers,
            s.before_answer_share * 100.0,
            s.after_answer_p50_ms,
            s.after_answer_p99_ms,
            s.after_answer_max_ms,
            s.max_schedule_lag_ms,
            if notes.is_empty() {
                String::new()
            } else {
                format!("; {}", notes.join("; "))
            }
        ));
    }
    out
}
