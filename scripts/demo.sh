#!/usr/bin/env bash
# Builds the example services and runs the whole system on TCP loopback (nothing to install).
#   scripts/demo.sh                                  TCP on loopback
#   scripts/demo.sh --broker nats://127.0.0.1:4222   the same services over a broker
#     (redis://, nats://, mqtt://, amqp://, kafka://; start brokers with scripts/brokers.sh)
#   scripts/demo.sh --broker kafka://mock            over librdkafka's mock cluster (no Kafka needed)
set -euo pipefail
cd "$(dirname "$0")/.."
features=()
[[ "${1:-}" == --broker ]] && features=(--features switchboard/brokers,example-demo/kafka-mock)
cargo build --quiet -p example-users -p example-math -p example-notifications -p example-analytics \
  -p example-gateway -p example-resilient -p example-user-events -p example-orders -p example-demo "${features[@]}"
exec target/debug/demo "$@"
