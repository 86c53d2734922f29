#!/usr/bin/env bash
# Makes sure the brokers the tests use are installed and running on 127.0.0.1, and the build
# tools the broker and gRPC crates need are installed (Debian):
#   Redis 6379, NATS with JetStream 4222, Mosquitto 1883, RabbitMQ 5672, PostgreSQL 5432
#   (the event store's PgStore tests: user postgres, trust authentication on 127.0.0.1),
#   etcd 2379 (service discovery).
# Kafka needs no broker here: the tests run librdkafka's mock cluster.
# A broker already answering on its port is left alone. Idempotent. Exit 1 if one fails.
set -uo pipefail

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do port_open "$1" && return 0; sleep 0.1; done
  return 1
}

# Packages: brokers, plus cmake/libcurl (librdkafka's build) and protoc (tonic/prost).
need=()
for pair in redis-server:redis-server nats-server:nats-server mosquitto:mosquitto \
  rabbitmq-server:rabbitmq-server cmake:cmake pkg-config:pkg-config protoc:protobuf-compiler \
  etcd:etcd-server; do
  command -v "${pair%%:*}" >/dev/null || [[ -x /usr/sbin/${pair%%:*} ]] || need+=("${pair#*:}")
done
[[ -f /usr/include/x86_64-linux-gnu/curl/curl.h || -f /usr/include/curl/curl.h ]] || need+=(libcurl4-openssl-dev)
[[ -f /usr/include/sasl/sasl.h ]] || need+=(libsasl2-dev)
# etcd-client's build compiles protos that import google/protobuf/*.proto.
[[ -f /usr/include/google/protobuf/timestamp.proto ]] || need+=(libprotobuf-dev)
pg_fresh=0
compgen -G "/etc/postgresql/*/main" >/dev/null || { need+=(postgresql); pg_fresh=1; }
if ((${#need[@]})); then
  echo "brokers: installing ${need[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

failed=0
start() { # name port seconds command...
  local name=$1 port=$2 secs=$3
  shift 3
  if port_open "$port"; then
    echo "brokers: $name 127.0.0.1:$port running"
    return
  fi
  echo "brokers: starting $name on 127.0.0.1:$port"
  "$@" >/dev/null 2>&1
  if wait_port "$port" "$secs"; then
    echo "brokers: $name 127.0.0.1:$port ready"
  else
    echo "brokers: $name FAILED to start on 127.0.0.1:$port" >&2
    failed=1
  fi
}

# The same command lines as the project machines use (../shared/environment.md).
mkdir -p /var/lib/redis /var/log/redis /var/lib/nats-server 2>/dev/null
start redis 6379 10 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
  --dir /var/lib/redis --logfile /var/log/redis/ci.log
start nats 4222 10 start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
  -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
start mosquitto 1883 10 mosquitto -d -c /etc/mosquitto/mosquitto.conf
# RabbitMQ usually answers in about 10 s, but once failed to within 60 s on a freshly booted
# machine: wait longer, and on failure say why (its log), stop what is left and try once more.
failed_before=$failed
start rabbitmq 5672 120 rabbitmq-server -detached
if ! port_open 5672; then
  tail -n 20 /var/log/rabbitmq/rabbit@*.log 2>/dev/null | sed 's/^/brokers: rabbitmq log: /' >&2
  rabbitmqctl stop >/dev/null 2>&1 || pkill -f 'beam.*rabbit' || true
  sleep 2
  failed=$failed_before # the retry decides
  start rabbitmq 5672 120 rabbitmq-server -detached
fi

# Debian's package starts no etcd here (no systemd); a data dir of its own, wiped at each start
# (the registry holds only leased keys).
etcd_dir=/tmp/switchboard-etcd
start etcd 2379 20 bash -c "rm -rf $etcd_dir && mkdir -p $etcd_dir && setsid -f etcd --name switchboard --data-dir $etcd_dir \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster switchboard=http://127.0.0.1:2380 > $etcd_dir.log 2>&1"

# --- PostgreSQL: the Debian cluster `main` of the newest installed version. A fresh install
# gets what the project machines have: trust authentication for local TCP connections.
pg_version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
if [[ -z $pg_version ]]; then
  echo "brokers: postgresql FAILED to install" >&2
  failed=1
else
  pg_hba=/etc/postgresql/$pg_version/main/pg_hba.conf
  if ((pg_fresh)); then
    as_root sed -i -E 's#^(host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1/32|::1/128)[[:space:]]+)[[:alnum:]-]+#\1trust#' "$pg_hba"
  fi
  start postgresql 5432 30 as_root pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start
  if port_open 5432 && ! PGCONNECT_TIMEOUT=5 psql -h 127.0.0.1 -U postgres -Atqc 'select 1' >/dev/null 2>&1; then
    echo "brokers: postgresql is up but user postgres cannot connect to 127.0.0.1 without a password (see $pg_hba)" >&2
    failed=1
  fi
fi
# --- end PostgreSQL

# --- NATS transport's conformance suite (tests/tests/nats.rs): a second nats-server on 4223
# with an 8 MB max_payload (the suite sends 1 MiB payloads) and JetStream; the suite restarts it.
nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
start nats-suite 4223 10 setsid -f "$nats_bin" -c "$(cd "$(dirname "$0")/.." && pwd)/tests/nats/nats.conf"
# --- end NATS suite

exit "$failed"
