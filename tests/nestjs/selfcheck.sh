#!/usr/bin/env bash
# Proves the NestJS peer works JS <-> JS before the Rust tests rely on it: for each NestJS
# version, starts server.mjs on a free port, drives every handler through client.mjs, checks
# the results, checks a few raw frames byte for byte, and checks clean shutdown.
# Usage: tests/nestjs/selfcheck.sh [11] [12]   (default: both; run scripts/setup-nestjs.sh first)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if (($#)); then versions=("$@"); else versions=(11 12); fi
tmp="$(mktemp -d)"
server_pid=""
cleanup() {
  [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "  ok   $*"; }
fail() { failed=$((failed + 1)); echo "  FAIL $*"; }

# The cases: `ops <v>` prints the client script, `check <v> <results.json>` prints one
# "ok|FAIL <name>" line per case. Kept in one place so ops and expectations stay aligned.
cases_js='
const { isDeepStrictEqual } = require("node:util");
const [mode, v, resultsFile] = process.argv.slice(1);
const v12 = v === "12";
const NO_HANDLER = "There is no matching message handler defined in the remote service.";
const meta = { traceparent: "00-abc-def-01" };
const big = "x".repeat(1 << 20);
const send = (pattern, data, timeout_ms = 5000) => ({ op: "send", pattern, data, timeout_ms });
const cases = [
  ["sum", send({ cmd: "sum" }, [1, 2, 3]), { ok: [6] }],
  ["sum, pattern as JSON string", send("{\"cmd\":\"sum\"}", [1, 2]), { ok: [3] }],
  ["echo (non-BMP text)", send("echo", { x: "é😀", n: [1, null, true] }), { ok: [{ x: "é😀", n: [1, null, true] }] }],
  ["get_user", send({ cmd: "get_user" }, 7), { ok: [{ id: 7, name: "John Doe", email: "john@example.com" }] }],
  ["nested object pattern, other key order", send({ nested: { a: "x", b: 1 }, v: 2, role: "user", cmd: "get" }, {}), { ok: ["nested-ok"] }],
  ["stream", send("stream", {}), { ok: [1, 2, 3] }],
  ["slow_stream", send("slow_stream", {}), { ok: [0, 1, 2] }],
  ["empty_stream", send("empty_stream", {}), { ok: [] }],
  ["rpc_string", send("rpc_string", {}), { err: { status: "error", message: "bad thing" } }],
  ["rpc_object", send("rpc_object", {}), { err: { code: 42, message: "custom msg", extra: true } }],
  ["plain_error", send("plain_error", {}), { err: { status: "error", message: "Internal server error" } }],
  ["void_ret", send("void_ret", {}), { ok: [] }],
  ["null_ret", send("null_ret", {}), { ok: [null] }],
  ["len 1 MiB", send("len", big), { ok: [1 << 20] }],
  ["len counts UTF-16 units", send("len", "é😀"), { ok: [3] }],
  ["delay", send("delay", 100), { ok: [100] }],
  ["client timeout", send("delay", 1000, 100), { err: { error_message: "Timeout has occurred", name: "TimeoutError" } }],
  ["unknown pattern", send("nope", {}), { err: NO_HANDLER }],
  ["emit evt 1", { op: "emit", pattern: "evt", data: { n: 1 } }, { ok: true }],
  ["emit evt 2", { op: "emit", pattern: "evt", data: { n: 2 } }, { ok: true }],
  ["sleep", { op: "sleep", ms: 200 }, { ok: true }],
  ["events_seen: both listeners ran for both events", send("events_seen", {}), (r) =>
    isDeepStrictEqual(sortJson(r.ok?.[0]), sortJson(["a", "b"].flatMap((h) => [1, 2].map((n) => ({ handler: h, data: { n } })))))],
  ["send_many: 200 concurrent sums", { op: "send_many", pattern: { cmd: "sum" }, data_list: [...Array(200).keys()].map((i) => [i, 1]), timeout_ms: 10000 },
    { ok: [...Array(200).keys()].map((i) => [i + 1]) }],
  ["send_many: results keep request order", { op: "send_many", pattern: "delay", data_list: [300, 10, 150], timeout_ms: 5000 }, { ok: [[300], [10], [150]] }],
  ["send_many: first failure", { op: "send_many", pattern: "rpc_string", data_list: [1, 2], timeout_ms: 5000 }, { err: { status: "error", message: "bad thing" } }],
  ["meta without metadata", send("meta", {}), { ok: [null] }],
  ["set_metadata", { op: "set_metadata", metadata: meta }, v12 ? { ok: true } : { err: "unsupported" }],
  ["meta with metadata", send("meta", {}), { ok: [v12 ? meta : null] }],
  ["set_metadata null", { op: "set_metadata", metadata: null }, v12 ? { ok: true } : { err: "unsupported" }],
  ["meta after clearing", send("meta", {}), { ok: [null] }],
];
function sortJson(list) { return Array.isArray(list) ? list.map((x) => JSON.stringify(x)).sort() : list; }
if (mode === "ops") {
  process.stdout.write(JSON.stringify(cases.map(([, op]) => op)));
} else {
  const results = JSON.parse(require("node:fs").readFileSync(resultsFile, "utf8"));
  if (results.length !== cases.length) console.log(`FAIL result count: ${results.length} != ${cases.length}`);
  cases.forEach(([name, , want], i) => {
    const got = results[i];
    const ok = typeof want === "function" ? want(got ?? {}) : isDeepStrictEqual(got, want);
    const shown = JSON.stringify(got) ?? "undefined";
    console.log(ok ? `ok ${name}` : `FAIL ${name}: got ${shown.slice(0, 300)}`);
  });
}
'

# Sends raw frames on one connection, prints everything received within 500 ms as JSON text.
raw_js='
const [port, ...frames] = process.argv.slice(1);
const s = require("node:net").connect(Number(port), "127.0.0.1", () => frames.forEach((f) => s.write(f)));
let got = "";
s.setEncoding("utf8").on("data", (d) => (got += d));
setTimeout(() => { process.stdout.write(got); s.destroy(); }, 500);
'

expect_eq() { # name got want
  if [[ "$2" == "$3" ]]; then pass "$1"; else fail "$1: got [$2], want [$3]"; fi
}

start_server() { # version -> sets server_pid and port
  local out="$tmp/server-$1.out"
  node "$here/server.mjs" --nest "$1" --port 0 >"$out" 2>"$tmp/server-$1.err" &
  server_pid=$!
  for _ in $(seq 200); do
    if grep -q '^READY ' "$out"; then port="$(awk '/^READY /{print $2}' "$out")"; return 0; fi
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "server v$1 did not become ready; its stderr:" >&2
  cat "$tmp/server-$1.err" >&2
  return 1
}

for v in "${versions[@]}"; do
  [[ -d "$here/v$v/node_modules" ]] || { echo "tests/nestjs/v$v/node_modules missing: run scripts/setup-nestjs.sh" >&2; exit 1; }
  echo "NestJS $v"
  if ! start_server "$v"; then fail "v$v server start"; continue; fi
  expect_eq "server stdout is exactly 'READY <port>'" "$(cat "$tmp/server-$v.out")" "READY $port"

  node -e "$cases_js" ops "$v" >"$tmp/ops.json"
  if node "$here/client.mjs" --nest "$v" --port "$port" <"$tmp/ops.json" >"$tmp/results.json" 2>"$tmp/client-$v.err"; then
    pass "client exit code 0"
    while read -r status name; do
      if [[ "$status" == ok ]]; then pass "$name"; else fail "$name"; fi
    done < <(node -e "$cases_js" check "$v" "$tmp/results.json")
  else
    fail "client exited non-zero; stderr: $(head -c 2000 "$tmp/client-$v.err")"
  fi

  # Exact bytes from nestjs-wire.md §1.4 / tcp-server-responses.txt.
  expect_eq "raw: sum frame" \
    "$(node -e "$raw_js" "$port" '52#{"pattern":{"cmd":"sum"},"data":[1,2,3],"id":"abc1"}')" \
    '44#{"response":6,"isDisposed":true,"id":"abc1"}'
  expect_eq "raw: UTF-16 length prefix" \
    "$(node -e "$raw_js" "$port" '47#{"pattern":"echo","data":{"x":"é😀"},"id":"u1"}')" \
    '52#{"response":{"x":"é😀"},"isDisposed":true,"id":"u1"}'
  expect_eq "raw: stream merges completion into the last value" \
    "$(node -e "$raw_js" "$port" '40#{"pattern":"stream","data":{},"id":"s1"}')" \
    '24#{"response":1,"id":"s1"}24#{"response":2,"id":"s1"}42#{"response":3,"isDisposed":true,"id":"s1"}'

  kill -TERM "$server_pid"
  rc=0
  wait "$server_pid" || rc=$?
  server_pid=""
  expect_eq "server exits 0 on SIGTERM" "$rc" 0

  # Nothing listens any more: the client reports the local Error, not a crash.
  result="$(echo '[{"op":"send","pattern":"echo","data":1,"timeout_ms":2000}]' | node "$here/client.mjs" --nest "$v" --port "$port" 2>/dev/null || echo "exit $?")"
  if [[ "$result" == *'"error_message":"connect ECONNREFUSED'* ]]; then pass "connection refused reported as err"; else fail "connection refused: got $result"; fi
done

echo "$passed passed, $failed failed"
((failed == 0))
