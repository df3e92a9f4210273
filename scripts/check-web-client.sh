#!/usr/bin/env bash
# Checks examples/web-client against schema.graphql: installs the locked npm packages, generates the
# TypeScript types from the schema (GraphQL Code Generator validates every operation against it), then
# type-checks the client. A schema change that breaks an operation the client sends fails here.
# Needs Node 20+ and npm (the npm registry only). Run from anywhere.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
cd examples/web-client

node --version
npm ci --no-audit --no-fund
npm run check
