#!/usr/bin/env bash
# CI entry point for the TON contracts:
#   1. install the pinned toolchain exactly from package-lock.json (npm ci)
#   2. recompile every contract and FAIL if the code/hash differs from build/*.json
#   3. run the emulator test suite (@ton/sandbox, node --test) against the compiled code
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
node scripts/compile.js --check
npm test
