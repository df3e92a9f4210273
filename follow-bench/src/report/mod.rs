//! Every report the benchmark writes, in one place: what each mode's run found (written as
//! `latest.json`) and its Markdown (`latest.md`, also printed), with the parts they share here: the
//! run's time, command, commit and machine, the Markdown header, and saving.

pub mod abuse;
pub mod consent;
pub mod scenarios;
pub mod subscriptions;
pub mod writes;

use std::collections::BTreeMap;

use serde::Serialize;

/// Now, as a report's `started_at` (RFC 3339, seconds, UTC).
pub fn started_at() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The command line of this run, as a report's `command`.
pub fn command_line() -> String {
    std::iter::once("follow-bench".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The short hash of the checked-out commit, as a report's `commit` (`unknown` outside a repository).
pub fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Facts about the machine the run used.
pub fn machine() -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(model) = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")) {
        facts.insert(
            "cpu".into(),
            model.trim_start_matches([' ', '\t', ':']).to_owned(),
        );
    }
    facts.insert(
        "cores".into(),
        std::thread::available_parallelism()
            .map_or(0, |n| n.get())
            .to_string(),
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(total) = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")) {
        let kib: f64 = total
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or(0.0);
        facts.insert("memory".into(), format!("{:.1} GiB", kib / 1024.0 / 1024.0));
    }
    if let Ok(kernel) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        facts.insert("kernel".into(), kernel.trim().to_owned());
    }
    facts
}

/// Writes a run to `out/latest.md` and `out/latest.json`, and prints the Markdown.
pub fn save(out: &std::path::Path, markdown: &str, run: &impl Serialize) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("latest.md"), markdown)?;
    std::fs::write(out.join("latest.json"), serde_json::to_string_pretty(run)?)?;
    println!(
        "\n{markdown}\nwritten to {}/latest.md and latest.json",
        out.display()
    );
    Ok(())
}

/// A report's opening: when, at which commit, the command, and the machine.
pub fn header(
    started_at: &str,
    commit: &str,
    command: &str,
    machine: &std::collections::BTreeMap<String, String>,
) -> String {
    let machine: Vec<String> = machine.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(
        "Run {started_at} at commit `{commit}`:\n\n```sh\n{command}\n```\n\nMachine: {}.\n\n",
        machine.join(", ")
    )
}
