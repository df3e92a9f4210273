#!/usr/bin/env bash
# Checks that subgraph.graphql (follow-service's Apollo Federation v2 subgraph SDL, what
# `_service { sdl }` answers) composes into a supergraph with a second subgraph
# (tests/federation/accounts.graphql), using Apollo's own composition library from npm
# (@apollo/composition, pinned in tests/federation/package-lock.json). Fails, printing every
# composition error and hint, when it does not compose or the composed schema lacks User's fields
# from either subgraph. Writes the supergraph SDL to target/federation/supergraph.graphql.
# Needs Node 20+ and npm (the npm registry only). Run from anywhere.
# FOLLOW_SUBGRAPH_SDL=/path/to/other.graphql composes that file instead of subgraph.graphql.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
cd tests/federation

node --version
npm ci --no-audit --no-fund
node compose.mjs
