#!/usr/bin/env bash
# Checks what operators run against the service as it is:
#   1. the alert and recording rules parse (promtool check rules) and their unit tests pass
#      (promtool test rules: a firing and a quiet case for every alert);
#   2. docker-compose's Prometheus configuration is valid (promtool check config);
#   3. a live API instance and a live worker, after a few requests of every class, export every series
#      the rules and the dashboard name, in a text that `promtool check metrics` accepts, and the runbook
#      has an entry for every alert (scripts/check_operations.py).
# Needs the local PostgreSQL and Redis (scripts/ensure-services.sh), starts a streaming replica of the
# PostgreSQL (scripts/ensure-pg-replica.sh), and needs a built follow-service
# (FOLLOW_BIN, default target/debug/follow-service). Installs promtool (Debian's prometheus package) when
# it is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v promtool >/dev/null 2>&1; then
    echo "promtool missing: installing Debian's prometheus package (it ships promtool)"
    SUDO=$([[ $(id -u) -eq 0 ]] && echo "" || echo sudo)
    # The package would start a Prometheus server where systemd runs; only its promtool is wanted.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null ||
        { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null; }
fi
promtool --version | head -1

promtool check rules deploy/prometheus/recording.yml deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/tests/*.yml
# The configuration names its rule files by their path in the Prometheus container: check a copy whose
# paths point here.
config=$(mktemp -d)
sed "s#/etc/prometheus/rules/#$PWD/deploy/prometheus/#" deploy/prometheus/prometheus.yml > "$config/prometheus.yml"
promtool check config "$config/prometheus.yml"

BIN=${FOLLOW_BIN:-target/debug/follow-service}
[[ -x $BIN ]] || { echo "$BIN is not built (cargo build --bins)" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
API_PORT=$(free_port)
API_METRICS_PORT=$(free_port)
WORKER_METRICS_PORT=$(free_port)
RUN=ops_check_$$
export DATABASE_URL=${OPS_DATABASE_BASE:-postgres://postgres@127.0.0.1:5432}/follow_$RUN
export FOLLOW_REDIS_PREFIX=follow-$RUN
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export FOLLOW_JWT_SECRET=ops-check-secret-not-for-production
export FOLLOW_RATE_LIMIT=off
export FOLLOW_METRICS_SAMPLE_MS=200
export RUST_LOG=${RUST_LOG:-warn}
# The instances read through a streaming replica too (the rules name its series): the local one of
# scripts/ensure-pg-replica.sh, which streams every database of the primary, this run's included.
REPLICA_URL=$(scripts/ensure-pg-replica.sh | tail -n 1)
export DATABASE_REPLICA_URLS=${REPLICA_URL%/*}/follow_$RUN

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql -q "${DATABASE_URL%/*}/postgres" -c "DROP DATABASE IF EXISTS follow_$RUN WITH (FORCE)" >/dev/null 2>&1 || true
    redis-cli -u "$REDIS_URL" --scan --pattern "$FOLLOW_REDIS_PREFIX:*" | xargs -r redis-cli -u "$REDIS_URL" DEL >/dev/null 2>&1 || true
    rm -rf "$config"
}
trap cleanup EXIT

FOLLOW_LISTEN=127.0.0.1:$API_PORT FOLLOW_METRICS_LISTEN=127.0.0.1:$API_METRICS_PORT "$BIN" serve >"$config/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$API_METRICS_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$API_METRICS_PORT/readyz" >/dev/null || { cat "$config/serve.log" >&2; exit 1; }
# The worker after the server: the server creates and migrates the database.
FOLLOW_METRICS_LISTEN=127.0.0.1:$WORKER_METRICS_PORT "$BIN" worker >"$config/worker.log" 2>&1 &
pids+=($!)

ADMIN=$("$BIN" token --user 1 --admin)
VIEWER=$("$BIN" token --user 1)
gql() { # token, document: the response, failing on a transport error
    python3 - "$API_PORT" "$1" "$2" <<'EOF'
import json, sys, urllib.request
port, token, query = sys.argv[1:]
request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", json.dumps({"query": query}).encode(),
                                 {"content-type": "application/json", "authorization": f"Bearer {token}"})
print(urllib.request.urlopen(request, timeout=10).read().decode())
EOF
}
for id in 1 2 3; do
    gql "$ADMIN" "mutation { upsertUser(input: {id: \"$id\", handle: \"ops$id\"}) { id } }" >/dev/null
done
gql "$VIEWER" 'mutation { follow(userId: "2") { following } }' >/dev/null
gql "$VIEWER" 'mutation { followMany(userIds: ["2", "3"]) { following } }' >/dev/null
gql "$VIEWER" '{ isFollowing(followerId: "1", followeeId: "2") relationships(userId: "1", otherIds: ["2", "3"]) { following } }' >/dev/null
gql "$VIEWER" '{ user(id: "2") { followers(first: 5) { totalCount edges { node { handle } } } } }' >/dev/null
gql "$VIEWER" '{ user(id: "2") { handle } }' >/dev/null
gql "$VIEWER" '{ __typename }' >/dev/null
gql "$VIEWER" '{ nope }' >/dev/null
# Counts once the consumers applied the follows (the consumer histograms appear with them).
for _ in $(seq 1 100); do
    counts=$(gql "$VIEWER" '{ user(id: "1") { followingCount } }')
    [[ $counts == *'"followingCount":2'* ]] && break
    sleep 0.1
done
[[ $counts == *'"followingCount":2'* ]] || { echo "counts never arrived: $counts" >&2; exit 1; }
sleep 1 # two samples of the gauges

curl -sf "http://127.0.0.1:$API_METRICS_PORT/metrics" >"$config/api.metrics"
curl -sf "http://127.0.0.1:$WORKER_METRICS_PORT/metrics" >"$config/worker.metrics"
for instance in api worker; do
    promtool check metrics <"$config/$instance.metrics"
done
python3 scripts/check_operations.py --metrics "$config/api.metrics" --metrics "$config/worker.metrics"
