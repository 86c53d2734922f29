#!/usr/bin/env bash
# The whole test suite, set-up included, on a fresh Debian machine with Rust:
#   1. installs the NestJS peers (npm, pinned 11.x and 12.x) used by the interop tests;
#   2. runs the demo (every example service on TCP loopback) as a smoke test;
#   3. runs every Rust test: unit, integration, NestJS interop, trybuild UI, doc tests.
# Ends with one "N passed, N failed" line. With CI set, a missing peer fails its tests.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "test.sh: cargo is not installed (https://rustup.rs)" >&2; exit 1; }

echo "== NestJS peers"
scripts/setup-nestjs.sh
tests/nestjs/selfcheck.sh

echo "== demo"
scripts/demo.sh

echo "== cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
