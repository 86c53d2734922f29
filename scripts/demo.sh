#!/usr/bin/env bash
# Builds the example services and runs the whole system on TCP loopback (nothing to install).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet -p example-users -p example-math -p example-notifications -p example-analytics -p example-gateway -p example-demo
exec target/debug/demo "$@"
