#!/usr/bin/env bash
# Sourced by scripts/serve.sh and scripts/test.sh: what a fresh Debian machine needs before cargo can
# build follow-service and its tests can run, installed or started when missing.
#   - a C compiler and make (jemalloc, the allocator, is built from C);
#   - Rust (cargo) of at least the crate's rust-version, from rustup;
#   - PostgreSQL and Redis answering locally (scripts/ensure-services.sh).

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# rustup installs into ~/.cargo/bin, which a non-login shell may not have on its PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install Rust $(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml) or newer with rustup" >&2
    echo "  (curl --proto '=https' -sSf https://sh.rustup.rs | sh; Debian's own cargo package is too old)" >&2
    exit 1
fi

if ! command -v cc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
    echo "[prelude] installing a C compiler and make (apt-get install gcc make)" >&2
    if [[ $EUID -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc make
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc make
    fi
fi

scripts/ensure-services.sh
