#!/usr/bin/env bash
# Builds the example services and runs the whole system on TCP loopback (nothing to install).
#   scripts/demo.sh                                  TCP on loopback
#   scripts/demo.sh --broker nats://127.0.0.1:4222   the same services over a broker
#     (redis://, nats://, mqtt://, amqp://, kafka://; start brokers with scripts/brokers.sh)
#   scripts/demo.sh --broker kafka://mock            over librdkafka's mock cluster (no Kafka needed)
#   scripts/demo.sh --registry etcd://127.0.0.1:2379 service discovery: two users instances in
#     etcd, the gateway finding them by name, one killed mid-stream (needs etcd and protoc)
set -euo pipefail
cd "$(dirname "$0")/.."
features=()
[[ "${1:-}" == --broker ]] && features=(--features switchboard/brokers,example-demo/kafka-mock)
[[ "${1:-}" == --registry ]] && features=(--features example-users/etcd,example-gateway/etcd)
cargo build --quiet -p example-users -p example-math -p example-notifications -p example-analytics \
  -p example-gateway -p example-resilient -p example-user-events -p example-orders -p example-demo "${features[@]}"
exec target/debug/demo "$@"
