#!/usr/bin/env bash
# Starts a follow-service binary against the benchmark graph, drives one wrk scenario for a few
# seconds, and prints its req/s and the server's own CPU time per request. Usage:
#   scripts/wrk/run.sh BINARY typename|is_following off|on [seconds] [extra KEY=VALUE ...]
# The server gets the environment follow-bench gives it (DATABASE_URL, REDIS_URL, prefix, secret,
# RUST_LOG=warn), FOLLOW_CACHE=off, and FOLLOW_RATE_LIMIT as asked; with the limits on, budgets of 10^8
# points so that every request pays the check and none is refused. PERF=1 records a profile
# (perf record $PERF_ARGS, default -g) of the server during the load into $OUT/perf.data. CHECK=1 makes
# the wrk scripts print error answers. Needs wrk (Debian package), curl, redis-cli and the database
# follow_bench (`cargo run --release -p follow-bench` seeds it; DATABASE_URL overrides it).
set -euo pipefail
binary=$1; scenario=$2; limits=$3; seconds=${4:-10}; shift $(( $# < 4 ? $# : 4 ))
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-/tmp/wrk-run}; mkdir -p "$out"
port=${PORT:-18080}
redis-cli --scan --pattern 'follow-wrk:*' | xargs -r -n 1000 redis-cli del >/dev/null
env -i PATH="$PATH" HOME="$HOME" \
  DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/follow_bench} \
  REDIS_URL=redis://127.0.0.1:6379 FOLLOW_REDIS_PREFIX=follow-wrk \
  FOLLOW_JWT_SECRET=wrk-benchmark-secret-0123456789 FOLLOW_LISTEN=127.0.0.1:$port \
  RUST_LOG=warn FOLLOW_CACHE=off FOLLOW_RATE_LIMIT=$limits \
  FOLLOW_RATE_ANONYMOUS_POINTS=100000000 FOLLOW_RATE_VIEWER_POINTS=100000000 \
  "$@" "$binary" serve >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.1
done
# 2 s of warm-up (connections, prepared statements, the parse cache), then the measured run.
wrk -t1 -c16 -d2s -s "$here/$scenario.lua" "http://127.0.0.1:$port/graphql" >/dev/null
if [ -n "${PERF:-}" ]; then
  perf record ${PERF_ARGS:--g} -o "$out/perf.data" -p $server -- sleep "$seconds" >/dev/null 2>&1 &
  perf=$!
fi
cpu() { awk '{print $14 + $15}' "/proc/$server/stat"; }
before=$(cpu)
wrk -t1 -c16 -d${seconds}s -s "$here/$scenario.lua" "http://127.0.0.1:$port/graphql" >"$out/wrk.txt"
after=$(cpu)
[ -n "${PERF:-}" ] && wait $perf
# req/s, then the server's own CPU per request (user + system, µs): less sensitive than req/s to what
# else runs on the machine.
requests=$(awk '/requests in/ {print $1}' "$out/wrk.txt")
rate=$(awk '/Requests\/sec/ {print $2}' "$out/wrk.txt")
tick=$(getconf CLK_TCK)
echo "$rate req/s, $(( (after - before) * 1000000 / tick / requests )) us CPU/request (load $(cut -d' ' -f1 /proc/loadavg))"
grep -E "Non-2xx|Socket errors" "$out/wrk.txt" >&2 || true
