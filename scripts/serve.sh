#!/usr/bin/env bash
# Serves the API on a fresh Debian machine: installs or starts what it needs (scripts/prelude.sh),
# then runs `follow-service serve` (release build) with the environment's settings, or the defaults:
# GraphiQL at http://127.0.0.1:8080/graphql. Arguments go to follow-service (e.g. `seed`, `worker`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/prelude.sh"
exec cargo run --release --locked -p follow-service -- "${@:-serve}"
