#!/usr/bin/env bash
# Makes sure the two services follow-service needs answer locally, starting (and, on Debian, installing)
# them when they do not:
#   - PostgreSQL on 127.0.0.1:5432, user postgres, trust authentication for local TCP connections
#     (the default DATABASE_URL is postgres://postgres@127.0.0.1:5432/follow_service);
#   - Redis on 127.0.0.1:6379 (the default REDIS_URL).
# A fast no-op when both already answer. Idempotent. Needs root (or sudo) only when it has to start,
# install or configure something. Used by .ci/run; developers may run it too.
set -euo pipefail

readonly PG_HOST=127.0.0.1 PG_PORT=5432
readonly REDIS_HOST=127.0.0.1 REDIS_PORT=6379
readonly WAIT_SECONDS=60
readonly HBA_MARKER="# follow-service: trust local TCP connections (scripts/ensure-services.sh)"

log() { printf '[ensure-services] %s\n' "$*"; }
die() { printf '[ensure-services] ERROR: %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root, else through sudo (non-interactive when there is no terminal).
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [[ -t 0 ]]; then sudo "$@"; else sudo -n "$@"; fi
    else
        die "need root to run: $* (run this script as root or install sudo)"
    fi
}

APT_UPDATED=false
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "$* is not installed and there is no apt-get here: install it by hand"
    if [[ $APT_UPDATED == false ]]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=true
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# ---------------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------------

pg_answers() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2 </dev/null; }

# Whether user postgres may connect over TCP without a password.
pg_trusts_postgres() {
    env -u PGPASSWORD PGPASSFILE=/dev/null PGCONNECT_TIMEOUT=5 psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres \
        -w -X -A -t -q -c 'SELECT 1' </dev/null >/dev/null 2>&1
}

# The version directory of the first cluster named main under /etc/postgresql (e.g. 15), if any.
pg_cluster_version() {
    local version
    [[ -d /etc/postgresql ]] || return 1
    for version in $(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V); do
        if [[ -f /etc/postgresql/$version/main/postgresql.conf ]]; then
            echo "$version"
            return 0
        fi
    done
    return 1
}

pg_wait() {
    local waited=0
    until pg_answers; do
        if ((waited >= WAIT_SECONDS)); then
            die "PostgreSQL does not answer on $PG_HOST:$PG_PORT after ${WAIT_SECONDS}s (see /var/log/postgresql/)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

# Puts the two trust lines for loopback TCP before every other line of the cluster's pg_hba.conf
# (the first matching line wins) and makes the server listen on loopback. Idempotent.
pg_configure() {
    local version=$1
    local dir=/etc/postgresql/$version/main
    local hba=$dir/pg_hba.conf
    if ! as_root grep -qxF "$HBA_MARKER" "$hba"; then
        log "trusting local TCP connections in $hba"
        as_root cp -p "$hba" "$hba.before-follow-service"
        {
            printf '%s\n' "$HBA_MARKER"
            printf 'host all all 127.0.0.1/32 trust\n'
            printf 'host all all ::1/128 trust\n'
            as_root cat "$hba.before-follow-service"
        } | as_root tee "$hba" >/dev/null
    fi
    if [[ -d $dir/conf.d ]] && [[ ! -f $dir/conf.d/follow-service.conf ]]; then
        log "listening on 127.0.0.1 and ::1 ($dir/conf.d/follow-service.conf)"
        printf "listen_addresses = '127.0.0.1,::1'\n" | as_root tee "$dir/conf.d/follow-service.conf" >/dev/null
    fi
}

pg_start() {
    local version=$1
    if as_root pg_ctlcluster "$version" main status >/dev/null 2>&1; then
        # Running (but not answering on 127.0.0.1:5432, or its configuration just changed): restart it
        # so that listen_addresses and pg_hba.conf are read again.
        log "restarting PostgreSQL $version/main"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main restart
    else
        log "starting PostgreSQL $version/main"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    fi
}

ensure_postgres() {
    local version installed=false
    if command -v pg_isready >/dev/null 2>&1 && command -v psql >/dev/null 2>&1 && pg_answers; then
        log "PostgreSQL answers on $PG_HOST:$PG_PORT"
    else
        if ! version=$(pg_cluster_version) || ! command -v pg_ctlcluster >/dev/null 2>&1 ||
            ! command -v pg_isready >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
            log "PostgreSQL is not installed"
            apt_install postgresql
            installed=true
            version=$(pg_cluster_version) ||
                die "installing postgresql created no cluster under /etc/postgresql"
            pg_configure "$version"
        fi
        # The package may have started the cluster already (where services start on install).
        if ! pg_answers; then
            pg_start "$version"
        elif [[ $installed == true ]]; then
            pg_start "$version" # read the configuration written above
        fi
        pg_wait
        log "PostgreSQL $version answers on $PG_HOST:$PG_PORT"
    fi

    if ! pg_trusts_postgres; then
        version=$(pg_cluster_version) ||
            die "user postgres cannot connect to $PG_HOST:$PG_PORT without a password, and no local cluster config was found to fix it"
        pg_configure "$version"
        log "reloading PostgreSQL $version/main"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
        local waited=0
        until pg_trusts_postgres; do
            ((waited < 10)) ||
                die "user postgres still cannot connect to $PG_HOST:$PG_PORT without a password (check /etc/postgresql/$version/main/pg_hba.conf)"
            sleep 1
            waited=$((waited + 1))
        done
    fi
    log "PostgreSQL ok: user postgres connects to $PG_HOST:$PG_PORT without a password"
}

# ---------------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------------

redis_reply() { timeout 5 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping </dev/null 2>&1 || true; }
redis_answers() { [[ $(redis_reply) == PONG ]]; }

ensure_redis() {
    if command -v redis-cli >/dev/null 2>&1 && redis_answers; then
        log "Redis ok: answers on $REDIS_HOST:$REDIS_PORT"
        return 0
    fi
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        log "Redis is not installed"
        apt_install redis-server
        # The package may have started its own service already (where services start on install).
        if redis_answers; then
            log "Redis ok: answers on $REDIS_HOST:$REDIS_PORT"
            return 0
        fi
    fi
    log "Redis does not answer on $REDIS_HOST:$REDIS_PORT (reply: $(redis_reply | head -1)); starting redis-server"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    local waited=0
    until redis_answers; do
        if ((waited >= WAIT_SECONDS)); then
            as_root tail -n 20 /var/log/redis/ci.log >&2 || true
            die "Redis does not answer on $REDIS_HOST:$REDIS_PORT after ${WAIT_SECONDS}s (log: /var/log/redis/ci.log)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "Redis ok: answers on $REDIS_HOST:$REDIS_PORT"
}

ensure_postgres
ensure_redis
