#!/usr/bin/env bash
# Starts Tansu (a Kafka-protocol broker, in memory) on 127.0.0.1:9092, installing it first
# when it is missing (`cargo install tansu`, about 16 minutes on 2 cores; not part of the
# tests, which use librdkafka's mock cluster). For measuring and trying Kafka by hand:
#   scripts/tansu.sh
#   SWITCHBOARD_BENCH_KAFKA=127.0.0.1:9092 cargo run --release -p switchboard-bench --features brokers -- --broker kafka
#   scripts/demo.sh --broker kafka://127.0.0.1:9092
# TANSU_ROOT (default ~/.cargo) is where it is installed; the broker logs to /tmp/tansu/log.
set -euo pipefail
root="${TANSU_ROOT:-$HOME/.cargo}"
tansu="$root/bin/tansu"
port=9092

if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "tansu.sh: 127.0.0.1:$port is already taken (a broker running?); leaving it alone"
  exit 0
fi
if [[ ! -x $tansu ]]; then
  echo "tansu.sh: installing tansu 0.6.0 into $root (about 16 minutes)"
  # `dynostore` brings the in-memory storage engine.
  cargo install tansu --version 0.6.0 --locked --features dynostore --root "$root"
fi
# Tansu reads ./.env and OTEL_EXPORTER_OTLP_ENDPOINT: start it in a directory of its own,
# without that variable.
mkdir -p /tmp/tansu
cd /tmp/tansu
env -u OTEL_EXPORTER_OTLP_ENDPOINT setsid "$tansu" broker --cluster-id switchboard \
  --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >/tmp/tansu/log 2>&1 &
for _ in $(seq 50); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "tansu.sh: Tansu ready on 127.0.0.1:$port (pid $!, log /tmp/tansu/log)"
    exit 0
  fi
  sleep 0.2
done
echo "tansu.sh: Tansu did not start; /tmp/tansu/log says:" >&2
cat /tmp/tansu/log >&2
exit 1
