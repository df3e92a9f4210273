#!/usr/bin/env bash
# End-to-end test of the GraphiQL page in headless Chromium (tests/browser/graphiql.mjs): starts the
# already-built service on a fresh, seeded database and a free port, opens GET /graphql as a browser
# would, runs queries from the page, and fails if the page reaches any other host. Then, against the
# same server, runs the typed TypeScript client end to end (examples/web-client, `npm run e2e`,
# src/e2e.ts): one seeded user subscribes to followEvents while another follows and unfollows them,
# reads the follow back, pages the followers and waits for followerCount; then, with an admin token,
# the first is made private for the follow-request flow (request, approve, remove, reject), blocks the
# other (follows FORBIDDEN) and unblocks, and is made public again; bad tokens must be refused.
#
#   FOLLOW_BIN=target/debug/follow-service scripts/browser-test.sh
#
# Does not build the service (FOLLOW_BIN, default target/debug/follow-service, must exist). Installs what
# is missing: Debian's chromium (apt, as root or through sudo) and tests/browser's npm packages (npm ci).
# Expects scripts/check-web-client.sh to have run first (examples/web-client's node_modules installed and
# its types generated); when examples/web-client/node_modules is missing it runs npm ci and codegen there.
# Needs Node.js 20 or later, PostgreSQL on 127.0.0.1:5432 (user postgres, trust) and Redis on
# 127.0.0.1:6379 (scripts/ensure-services.sh starts them). Leaves target/browser/graphiql.png and
# target/browser/server.log; drops its database and Redis keys on exit, pass or fail.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly ROOT=$PWD
readonly BIN=${FOLLOW_BIN:-target/debug/follow-service}
readonly CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
readonly PG_URL=postgres://postgres@127.0.0.1:5432
readonly REDIS_HOST=127.0.0.1 REDIS_PORT=6379
readonly OUT=target/browser
readonly READY_SECONDS=60

log() { printf '[browser-test] %s\n' "$*"; }
die() { printf '[browser-test] ERROR: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root to run: $* (install it by hand, or run as root)"
    fi
}

[[ -x $BIN ]] || die "$BIN is not an executable: build it first (cargo build --bin follow-service) or set FOLLOW_BIN"
for tool in node npm psql redis-cli curl; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed"
done
node_major=$(node -p 'process.versions.node.split(".")[0]')
((node_major >= 20)) || die "Node.js 20 or later is needed (playwright-core), found $(node --version)"

if [[ ! -x $CHROMIUM ]]; then
    [[ $CHROMIUM == /usr/bin/chromium ]] || die "CHROMIUM=$CHROMIUM is not an executable"
    command -v apt-get >/dev/null 2>&1 || die "/usr/bin/chromium is missing and there is no apt-get: install Chromium"
    log "installing Debian's chromium"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
log "$("$CHROMIUM" --version 2>/dev/null | head -n 1)"

log "npm ci in tests/browser"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

# The typed client's end-to-end check (run last) expects scripts/check-web-client.sh to have installed
# and generated examples/web-client, as CI does; installed here otherwise, before the server starts.
readonly WEB_CLIENT=examples/web-client
if [[ ! -d $WEB_CLIENT/node_modules ]]; then
    log "no $WEB_CLIENT/node_modules (scripts/check-web-client.sh did not run first): npm ci and codegen there"
    (cd "$WEB_CLIENT" && npm ci --no-audit --no-fund && npm run codegen)
elif [[ ! -f $WEB_CLIENT/src/gql/index.ts ]]; then
    log "no generated types in $WEB_CLIENT/src/gql: npm run codegen there"
    (cd "$WEB_CLIENT" && npm run codegen)
fi

mkdir -p "$OUT"
readonly RUN_ID="browser_$$_${RANDOM}"
readonly DATABASE="follow_${RUN_ID}"
readonly PREFIX="follow-${RUN_ID//_/-}"
readonly SERVER_LOG=$OUT/server.log
server_pid=""

cleanup() {
    local status=$?
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if ((status != 0)) && [[ -s $SERVER_LOG ]]; then
        echo "[browser-test] last lines of $SERVER_LOG:" >&2
        tail -n 30 "$SERVER_LOG" >&2
    fi
    env -u PGPASSWORD PGCONNECT_TIMEOUT=5 psql "$PG_URL/postgres" -q -v ON_ERROR_STOP=1 \
        -c "DROP DATABASE IF EXISTS \"$DATABASE\" WITH (FORCE)" >/dev/null 2>&1 ||
        echo "[browser-test] could not drop database $DATABASE" >&2
    redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" --scan --pattern "$PREFIX:*" 2>/dev/null |
        xargs -r -n 100 redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" del >/dev/null 2>&1 || true
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(node -e '
    const server = require("net").createServer();
    server.listen(0, "127.0.0.1", () => { console.log(server.address().port); server.close(); });')

export DATABASE_URL="$PG_URL/$DATABASE"
export REDIS_URL="redis://$REDIS_HOST:$REDIS_PORT"
export FOLLOW_REDIS_PREFIX=$PREFIX
export FOLLOW_LISTEN="127.0.0.1:$port"
export FOLLOW_ENV=development
export NO_COLOR=1 # plain server log
unset FOLLOW_JWT_SECRET

log "database $DATABASE, Redis prefix $PREFIX: migrate and seed"
"$BIN" migrate >"$OUT/migrate.log" 2>&1 || { cat "$OUT/migrate.log" >&2; die "migrate failed"; }
"$BIN" seed --users 200 --mean-following 5 >"$OUT/seed.log" 2>&1 || { cat "$OUT/seed.log" >&2; die "seed failed"; }

log "starting $BIN serve on 127.0.0.1:$port"
"$BIN" serve >"$SERVER_LOG" 2>&1 &
server_pid=$!
for ((i = 0; i < READY_SECONDS * 10; i++)); do
    kill -0 "$server_pid" 2>/dev/null || die "the server exited at start"
    curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/readyz" 2>/dev/null && break
    sleep 0.1
done
curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/readyz" ||
    die "the server was not ready within ${READY_SECONDS}s"
log "ready"

# Tokens (signed with the same development secret as the server's) for the subscription check.
GRAPHIQL_VIEWER_TOKEN=$("$BIN" token --user 1)
GRAPHIQL_OTHER_TOKEN=$("$BIN" token --user 2)
export CHROMIUM GRAPHIQL_VIEWER_TOKEN GRAPHIQL_OTHER_TOKEN
GRAPHIQL_URL="http://127.0.0.1:$port/graphql" GRAPHIQL_SCREENSHOT="$ROOT/$OUT/graphiql.png" \
    node tests/browser/graphiql.mjs

# The typed client end to end, against the same server. Users 3 (A, the subscriber) and 4 (B, the
# follower) are not the GraphiQL test's 1 and 2; should the seed have made 4 follow 3, e2e.ts unfollows first.
readonly E2E_USER_A=3 E2E_USER_B=4
log "typed client end to end ($WEB_CLIENT: npm run e2e): user $E2E_USER_A subscribes, user $E2E_USER_B follows"
E2E_TOKEN_A=$("$BIN" token --user "$E2E_USER_A")
E2E_TOKEN_B=$("$BIN" token --user "$E2E_USER_B")
# The admin token (upsertUser) makes user A private for the follow-request part, then public again.
E2E_ADMIN_TOKEN=$("$BIN" token --user 1 --admin)
(
    cd "$WEB_CLIENT"
    FOLLOW_URL="http://127.0.0.1:$port/graphql" \
        FOLLOW_USER_A=$E2E_USER_A FOLLOW_TOKEN_A=$E2E_TOKEN_A \
        FOLLOW_USER_B=$E2E_USER_B FOLLOW_TOKEN_B=$E2E_TOKEN_B \
        FOLLOW_ADMIN_TOKEN=$E2E_ADMIN_TOKEN \
        npm run e2e
) || die "the typed client's end-to-end check failed (server log: $SERVER_LOG)"
log "passed: GraphiQL page and typed client end to end"
