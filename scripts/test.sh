#!/usr/bin/env bash
# Runs every test on a fresh Debian machine: installs or starts what they need (scripts/prelude.sh),
# then `cargo test` over the workspace (the service's unit and integration tests, the bench's unit
# tests). Arguments go to cargo test (e.g. `--test integration follows`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/prelude.sh"
exec cargo test --workspace --locked "$@"
