#!/usr/bin/env python3
"""Checks the operations files against the service: alert rules, their tests, the dashboard, the runbook.

Usage: check_operations.py --metrics FILE [--metrics FILE ...]
  FILE: the /metrics text of a running instance (an API instance and a worker, after some requests).

Fails (exit 1) when
  - a rule or a dashboard expression names a `follow_*` series the instances do not export, a
    `follow:*` recording rule that recording.yml does not define, or any other series but `up`;
  - a dashboard expression is not valid PromQL (checked by `promtool check rules` on a generated file);
  - an alert lacks `for:`, a severity, a summary or a `runbook_url` to its own runbook entry;
  - docs/RUNBOOK.md lacks a `## <AlertName>` section for an alert;
  - deploy/prometheus/tests/ lacks, for an alert, a case where it fires and a case where it stays quiet.
Only the standard library: the YAML files are read line by line, as they are written in this repository
(one key per line), which the promtool checks run before this one have validated.
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
RULES = [ROOT / "deploy/prometheus/recording.yml", ROOT / "deploy/prometheus/alerts.yml"]
TESTS = sorted((ROOT / "deploy/prometheus/tests").glob("*.yml"))
DASHBOARD = ROOT / "deploy/grafana/follow-service.json"
RUNBOOK = ROOT / "docs/RUNBOOK.md"

# Series that Prometheus makes itself, not the service.
PROMETHEUS_OWN = {"up"}
# PromQL words that look like names: functions are followed by "(", these are not always.
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan", "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk",
    "bottomk", "quantile", "count_values", "group", "atan2",
}


def exported_names(metrics_texts):
    """Every series name in the exposition texts (histograms' _bucket/_sum/_count as they appear)."""
    names = set()
    for text in metrics_texts:
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def series_names(expr):
    """The series an expression selects: identifiers outside strings, label matchers, grouping
    clauses and range brackets that are not functions or keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    expr = re.sub(r"\{[^}]*\}", "{}", expr)                  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)                 # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", expr)
    names = set()
    # Not inside a number (the e of 1e9) or another token.
    for match in re.finditer(r"(?<![0-9.a-zA-Z_:])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        name = match.group(0)
        rest = expr[match.end():].lstrip()
        if rest.startswith("(") or name.lower() in KEYWORDS:
            continue
        # durations such as 5m are digits first and never match
        names.add(name)
    return names


def yaml_exprs(path):
    """The `expr:` values of a rules file, block scalars included."""
    exprs, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)(?:- )?expr:\s*(.*)$", lines[i])
        if not match:
            i += 1
            continue
        indent, value = len(match.group(1)), match.group(2)
        if value in ("|", ">", "|-", ">-"):
            body = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                body.append(lines[i].strip())
                i += 1
            exprs.append(" ".join(body))
        else:
            exprs.append(value.strip().strip("'\""))
            i += 1
    return exprs


def alert_blocks(path):
    """Each alert of a rules file: its name and the text of its rule."""
    text = path.read_text()
    starts = [m for m in re.finditer(r"^\s*- alert:\s*(\S+)\s*$", text, re.M)]
    blocks = []
    for n, start in enumerate(starts):
        end = starts[n + 1].start() if n + 1 < len(starts) else len(text)
        blocks.append((start.group(1), text[start.end():end]))
    return blocks


def dashboard_exprs(path):
    """Every PromQL expression of the dashboard: panel targets and query variables."""
    board = json.loads(path.read_text())
    exprs = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    exprs.append((panel.get("title", "?"), target["expr"]))
            walk(panel.get("panels", []))

    walk(board.get("panels", []))
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            inner = re.fullmatch(r"label_values\((.*)\)", query.strip())
            if inner:
                # label_values(selector, label): the selector is the PromQL part.
                query = inner.group(1).rsplit(",", 1)[0] if "," in inner.group(1) else inner.group(1)
            exprs.append((f"variable {variable.get('name')}", query))
    return exprs


def grafana_to_promql(expr):
    """A dashboard expression with Grafana's variables replaced by values PromQL accepts."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--metrics", action="append", required=True, type=pathlib.Path)
    args = parser.parse_args()
    failures = []
    exported = exported_names(path.read_text() for path in args.metrics)
    recorded = set()
    for path in RULES:
        recorded |= set(re.findall(r"^\s*- record:\s*(\S+)\s*$", path.read_text(), re.M))

    def check_names(where, expr):
        for name in series_names(expr):
            if name.startswith("follow:"):
                if name not in recorded:
                    failures.append(f"{where}: {name} is no recording rule of recording.yml")
            elif name.startswith("follow_"):
                if name not in exported:
                    failures.append(f"{where}: {name} is not exported by the service")
            elif name not in PROMETHEUS_OWN:
                failures.append(f"{where}: {name} is neither the service's nor Prometheus's own")

    checked = 0
    for path in RULES:
        for expr in yaml_exprs(path):
            check_names(path.name, expr)
            checked += 1

    dashboard = dashboard_exprs(DASHBOARD)
    for title, expr in dashboard:
        check_names(f"dashboard panel '{title}'", grafana_to_promql(expr))
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as rules:
        rules.write("groups:\n  - name: dashboard\n    rules:\n")
        for n, (_, expr) in enumerate(dashboard):
            rules.write(f"      - record: dashboard:expr_{n}\n        expr: {json.dumps(grafana_to_promql(expr))}\n")
    syntax = subprocess.run(["promtool", "check", "rules", rules.name], capture_output=True, text=True)
    if syntax.returncode != 0:
        failures.append("dashboard expressions that are not PromQL:\n" + syntax.stdout + syntax.stderr)
    pathlib.Path(rules.name).unlink()

    runbook = RUNBOOK.read_text() if RUNBOOK.exists() else ""
    headings = set(re.findall(r"^## (\S+)\s*$", runbook, re.M))
    tests = "\n".join(path.read_text() for path in TESTS)
    # Each alert_rule_test entry: its alert name and whether it expects alerts.
    cases = re.findall(r"alertname:\s*(\S+)\s*\n\s*exp_alerts:\s*(\[\])?", tests)
    alerts = [block for path in RULES for block in alert_blocks(path)]
    for name, body in alerts:
        for field, pattern in [
            ("for", r"^\s*for:\s*\S+"),
            ("severity", r"^\s*severity:\s*(critical|warning)\s*$"),
            ("summary", r"^\s*summary:\s*\S"),
            ("runbook_url", rf"^\s*runbook_url:\s*docs/RUNBOOK\.md#{name.lower()}\s*$"),
        ]:
            if not re.search(pattern, body, re.M):
                failures.append(f"alert {name}: no {field} (runbook_url must be docs/RUNBOOK.md#{name.lower()})")
        if name not in headings:
            failures.append(f"alert {name}: docs/RUNBOOK.md has no '## {name}' section")
        fires = any(alert == name and not quiet for alert, quiet in cases)
        quiet = any(alert == name and quiet for alert, quiet in cases)
        if not (fires and quiet):
            failures.append(f"alert {name}: the rule tests need a case that fires it and one that keeps it quiet")

    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1
    print(
        f"{checked} rule expressions and {len(dashboard)} dashboard expressions name only exported series "
        f"({len(exported)} exported names read); {len(alerts)} alerts, each with a runbook entry and "
        "firing and quiet tests"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
