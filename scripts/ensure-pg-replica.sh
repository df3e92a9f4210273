#!/usr/bin/env bash
# Makes sure a streaming replica of the local PostgreSQL primary (127.0.0.1:5432, as
# scripts/ensure-services.sh sets it up) answers on 127.0.0.1:5433: a pg_basebackup -R copy under
# ${FOLLOW_REPLICA_DIR:-/tmp/follow-pg-replica}, run by the postgres user with Debian's binaries of the
# primary's major version. A fast no-op when the replica answers and is in recovery. Idempotent; needs
# root (or sudo) to let the primary accept replication connections and to act as the postgres user.
# Prints the replica's URL (for DATABASE_REPLICA_URLS) on its last line.
#   scripts/ensure-pg-replica.sh          # start (or check) the replica
#   scripts/ensure-pg-replica.sh --stop   # stop it and remove its directory
set -euo pipefail

readonly PRIMARY_HOST=127.0.0.1 PRIMARY_PORT=5432
readonly REPLICA_PORT=5433
readonly DIR=${FOLLOW_REPLICA_DIR:-/tmp/follow-pg-replica}
readonly HBA_MARKER="# follow-service: local streaming replicas (scripts/ensure-pg-replica.sh)"
readonly WAIT_SECONDS=60

log() { printf '[ensure-pg-replica] %s\n' "$*" >&2; }
die() { printf '[ensure-pg-replica] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"; else sudo -n "$@"; fi
}
as_postgres() { as_root runuser -u postgres -- "$@"; }

primary_sql() { psql -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U postgres -d postgres -X -A -t -q -c "$1"; }

replica_url() { echo "postgres://postgres@127.0.0.1:$REPLICA_PORT/follow_service"; }

replica_in_recovery() {
    [[ $(psql -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres -d postgres -X -A -t -q \
        -c 'SELECT pg_is_in_recovery()' 2>/dev/null) == t ]]
}

bin_dir() {
    local major
    major=$(primary_sql 'SHOW server_version_num' | cut -c1-2)
    [[ -x /usr/lib/postgresql/$major/bin/pg_ctl ]] || die "no /usr/lib/postgresql/$major/bin/pg_ctl (package postgresql-$major)"
    echo "/usr/lib/postgresql/$major/bin"
}

if [[ ${1:-} == --stop ]]; then
    if [[ -d $DIR ]]; then
        as_postgres "$(bin_dir)/pg_ctl" -D "$DIR" -m fast stop >/dev/null 2>&1 || true
        as_root rm -rf "$DIR"
    fi
    log "stopped; removed $DIR"
    exit 0
fi

pg_isready -q -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -t 2 ||
    die "the primary does not answer on $PRIMARY_HOST:$PRIMARY_PORT: run scripts/ensure-services.sh first"

if replica_in_recovery; then
    log "replica ok on 127.0.0.1:$REPLICA_PORT"
    replica_url
    exit 0
fi

# The primary must accept replication connections from loopback (the `all` of pg_hba.conf does not
# cover them) and keep enough WAL senders; wal_level replica is PostgreSQL's default.
[[ $(primary_sql 'SHOW wal_level') != minimal ]] || die "the primary has wal_level = minimal: set it to replica and restart it"
hba=$(primary_sql 'SHOW hba_file')
if ! as_root grep -qF "$HBA_MARKER" "$hba"; then
    log "letting $hba accept replication connections from 127.0.0.1"
    as_root sed -i "1i $HBA_MARKER\nhost replication postgres 127.0.0.1/32 trust" "$hba"
    primary_sql 'SELECT pg_reload_conf()' >/dev/null
fi

bin=$(bin_dir)
# A directory left by a replica that no longer answers is taken afresh (it may be far behind).
if [[ -d $DIR ]]; then
    as_postgres "$bin/pg_ctl" -D "$DIR" -m immediate stop >/dev/null 2>&1 || true
    as_root rm -rf "$DIR"
fi
as_root install -d -o postgres -g postgres -m 0700 "$DIR"
log "pg_basebackup -R from $PRIMARY_HOST:$PRIMARY_PORT into $DIR"
as_postgres "$bin/pg_basebackup" -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U postgres -D "$DIR" -R -X stream -c fast
# Debian keeps a cluster's configuration in /etc, so the copy has none: the replica gets its own, which
# trusts loopback as the primary does.
as_postgres tee "$DIR/postgresql.conf" >/dev/null <<EOF
# The local replica of scripts/ensure-pg-replica.sh; replication settings are in postgresql.auto.conf.
port = $REPLICA_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
hot_standby = on
EOF
as_postgres tee "$DIR/pg_hba.conf" >/dev/null <<EOF
local all all trust
host all all 127.0.0.1/32 trust
EOF
as_postgres touch "$DIR/pg_ident.conf"
as_postgres "$bin/pg_ctl" -D "$DIR" -l "$DIR/replica.log" -w -t "$WAIT_SECONDS" \
    start >/dev/null

waited=0
until replica_in_recovery; do
    ((waited < WAIT_SECONDS)) || die "the replica on 127.0.0.1:$REPLICA_PORT is not in recovery (see $DIR/replica.log)"
    sleep 1
    waited=$((waited + 1))
done
log "replica ok on 127.0.0.1:$REPLICA_PORT, streaming from $PRIMARY_HOST:$PRIMARY_PORT"
replica_url
