#!/usr/bin/env bash
# Makes sure a local Redis Cluster answers: three masters on 127.0.0.1:7001-7003 (one per third of the
# slots, no replicas), from Debian's redis-server, each in its own directory under
# ${FOLLOW_CLUSTER_DIR:-/tmp/follow-redis-cluster}, nothing kept on disk between starts.
# A fast no-op when the cluster answers with every slot covered. Idempotent.
# Prints the seed list for REDIS_CLUSTER_URLS on its last line.
#   scripts/ensure-redis-cluster.sh          # start (or check) the cluster
#   scripts/ensure-redis-cluster.sh --stop   # stop it and remove its directories
set -euo pipefail

readonly HOST=127.0.0.1
readonly PORTS=(7001 7002 7003)
readonly DIR=${FOLLOW_CLUSTER_DIR:-/tmp/follow-redis-cluster}
readonly WAIT_SECONDS=30

log() { printf '[ensure-redis-cluster] %s\n' "$*" >&2; }
die() { printf '[ensure-redis-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

seeds() {
    local port out=()
    for port in "${PORTS[@]}"; do out+=("redis://$HOST:$port"); done
    (IFS=,; echo "${out[*]}")
}

node_answers() { [[ $(redis-cli -h "$HOST" -p "$1" ping 2>/dev/null) == PONG ]]; }

# Whether every node answers, is a master, and reports the cluster healthy with all 16384 slots assigned
# over as many masters as there are nodes.
cluster_ok() {
    local port info
    for port in "${PORTS[@]}"; do
        info=$(redis-cli -h "$HOST" -p "$port" cluster info 2>/dev/null) || return 1
        grep -q '^cluster_state:ok' <<<"$info" && grep -q '^cluster_slots_assigned:16384' <<<"$info" || return 1
        # Every node a master with slots (a master that lost all its slots turns into a replica).
        grep -q "^cluster_size:${#PORTS[@]}" <<<"$info" || return 1
        redis-cli -h "$HOST" -p "$port" role 2>/dev/null | head -1 | grep -q '^master$' || return 1
    done
    info=$(redis-cli -h "$HOST" -p "${PORTS[0]}" cluster info 2>/dev/null) || return 1
    grep -q '^cluster_state:ok' <<<"$info" && grep -q '^cluster_slots_assigned:16384' <<<"$info"
}

stop() {
    local port
    for port in "${PORTS[@]}"; do
        redis-cli -h "$HOST" -p "$port" shutdown nosave >/dev/null 2>&1 || true
    done
    rm -rf "$DIR"
    log "stopped; removed $DIR"
}

if [[ ${1:-} == --stop ]]; then
    stop
    exit 0
fi

command -v redis-server >/dev/null 2>&1 || {
    log "redis-server is missing: installing Debian's redis-server (scripts/ensure-services.sh does the same)"
    if [[ $EUID -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
    fi
}

if cluster_ok; then
    log "cluster ok on ports ${PORTS[*]}"
    seeds
    exit 0
fi

# Start each node that does not answer, from a fresh directory (a node's cluster config file from an
# earlier, half-made cluster would stop `--cluster create`).
for port in "${PORTS[@]}"; do
    if node_answers "$port"; then
        continue
    fi
    rm -rf "${DIR:?}/$port"
    mkdir -p "$DIR/$port"
    redis-server --port "$port" --bind "$HOST" --daemonize yes \
        --dir "$DIR/$port" --logfile "$DIR/$port/redis.log" --pidfile "$DIR/$port/redis.pid" \
        --cluster-enabled yes --cluster-config-file "nodes-$port.conf" --cluster-node-timeout 2000 \
        --save '' --appendonly no
done
for port in "${PORTS[@]}"; do
    waited=0
    until node_answers "$port"; do
        ((waited < WAIT_SECONDS)) || die "the node on $HOST:$port does not answer (see $DIR/$port/redis.log)"
        sleep 1
        waited=$((waited + 1))
    done
done

# Nodes that answer but do not form a healthy cluster (just started, or one node restarted empty):
# make the cluster again from scratch. This is a local test cluster: its data is not kept.
if ! cluster_ok; then
    addresses=()
    for port in "${PORTS[@]}"; do
        # A node left from another cluster must forget it before it can join this one.
        redis-cli -h "$HOST" -p "$port" flushall >/dev/null 2>&1 || true
        redis-cli -h "$HOST" -p "$port" cluster reset hard >/dev/null 2>&1 || true
        addresses+=("$HOST:$port")
    done
    log "creating the cluster: ${addresses[*]}"
    redis-cli --cluster create "${addresses[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
fi

waited=0
until cluster_ok; do
    ((waited < WAIT_SECONDS)) || die "the cluster on ports ${PORTS[*]} did not reach state ok"
    sleep 1
    waited=$((waited + 1))
done
log "cluster ok on ports ${PORTS[*]}"
seeds
