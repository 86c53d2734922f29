// NestJS ClientProxy (TCP) driven by a JSON script, used as the peer in Switchboard's interop tests.
// Usage: node tests/nestjs/client.mjs --nest 11|12 (--port N [--host 127.0.0.1] | --url URL) < ops.json
// --url picks any transport (see transport.mjs); --port means TCP.
// Reads one JSON array of operations from stdin and prints one JSON array of results
// (one per operation) on stdout. Logs go to stderr. Exit code 2 = bad usage or bad script.
// --trace NAME (v12): OpenTelemetry as service NAME (examples/nestjs-tracing/tracing.js): each
// op runs in a root span `client <op>`, the client's calls are traced and propagated, and the
// spans are flushed to $OTEL_EXPORTER_OTLP_ENDPOINT before exiting.
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { nestOptions } from './transport.mjs';

function usage(msg) {
  process.stderr.write(`${msg}\nusage: node client.mjs --nest 11|12 (--port N [--host 127.0.0.1] | --url URL) [--trace NAME] < ops.json\n`);
  process.exit(2);
}

let args;
try {
  args = parseArgs({
    options: {
      nest: { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string', default: '127.0.0.1' },
      url: { type: 'string' },
      trace: { type: 'string' },
    },
  }).values;
} catch (e) {
  usage(e.message);
}
if (!['11', '12'].includes(args.nest)) usage('--nest must be 11 or 12');
if (!args.url && (!/^\d+$/.test(args.port ?? '') || Number(args.port) > 65535)) usage('--port must be 0..65535');
if (args.trace !== undefined && args.nest !== '12') usage('--trace needs --nest 12 (NestJS 11 has no packet metadata)');
if (args.trace === '') usage('--trace needs a service name');

const REQUIRED = {
  send: ['pattern', 'data'],
  emit: ['pattern', 'data'],
  send_many: ['pattern', 'data_list'],
  sleep: ['ms'],
  send_until: ['pattern', 'data', 'contains', 'times'],
  set_metadata: ['metadata'],
  traceparent: [],
};
let ops;
try {
  let text = '';
  // Decode as one UTF-8 stream: a character split across two chunks must not become U+FFFD.
  process.stdin.setEncoding('utf8');
  for await (const chunk of process.stdin) text += chunk;
  ops = JSON.parse(text);
} catch (e) {
  usage(`stdin is not JSON: ${e.message}`);
}
if (!Array.isArray(ops)) usage('stdin must be a JSON array of operations');
ops.forEach((op, i) => {
  const missing = REQUIRED[op?.op]?.filter((k) => !(k in op));
  if (!missing) usage(`op #${i}: unknown op ${JSON.stringify(op?.op)}`);
  if (missing.length) usage(`op #${i} (${op.op}): missing ${missing.join(', ')}`);
});

// Load NestJS from tests/nestjs/v<N>/node_modules (see server.mjs for why rxjs is require()d).
const require = createRequire(new URL(`./v${args.nest}/package.json`, import.meta.url));
const load = async (name) =>
  args.nest === '11' ? require(name) : import(pathToFileURL(require.resolve(name)).href);
require('reflect-metadata');
const { Logger } = await load('@nestjs/common');
const { ClientProxyFactory, Transport } = await load('@nestjs/microservices');
const { lastValueFrom, toArray, timeout } = require('rxjs');

// The tracing module lives in examples/; its @opentelemetry/* resolve from v12/node_modules.
const tracing = args.trace
  ? createRequire(import.meta.url)('../../examples/nestjs-tracing/tracing.js').withRequire(require)
  : null;
const tracer = tracing?.setupTracing(args.trace, { simple: true });
const otel = tracing ? require('@opentelemetry/api') : null;
let lastTraceparent = null;

// Nest's default logger writes info lines to stdout; stdout is reserved for the results.
const toStderr = (level) => (...m) => process.stderr.write(`[nest ${level}] ${m.filter((x) => x !== undefined).map(String).join(' ')}\n`);
Logger.overrideLogger(Object.fromEntries(['log', 'error', 'warn', 'debug', 'verbose', 'fatal'].map((l) => [l, toStderr(l)])));

const client = ClientProxyFactory.create(nestOptions(Transport, args.url ?? `tcp://${args.host}:${args.port}`));
if (tracing) tracing.traceClient(client);
// Kafka clients must subscribe to every reply topic before connecting.
if (typeof client.subscribeToResponseOf === 'function') {
  for (const op of ops) if (op.op === 'send' || op.op === 'send_many') client.subscribeToResponseOf(op.pattern);
}

// A NestJS client errors with the server's `err` value as-is (object or string);
// local failures (timeout, ECONNREFUSED, "Connection closed") are Error instances.
const errValue = (e) => (e instanceof Error ? { error_message: e.message, name: e.name } : e);
const collect = (pattern, data, ms = 5000) => lastValueFrom(client.send(pattern, data).pipe(toArray(), timeout(ms)));

async function run(op) {
  switch (op.op) {
    case 'send':
      return { ok: await collect(op.pattern, op.data, op.timeout_ms) };
    case 'emit':
      // emit() is hot and completes without a value once the frame is written.
      await lastValueFrom(client.emit(op.pattern, op.data), { defaultValue: null });
      return { ok: true };
    case 'send_many':
      return { ok: await Promise.all(op.data_list.map((d) => collect(op.pattern, d, op.timeout_ms ?? 10000))) };
    case 'send_until': {
      // Asks again (every 50 ms, up to within_ms) until the reply's JSON holds `contains`
      // `times` times: waiting on a condition, not for a fixed time.
      const until = Date.now() + (op.within_ms ?? 10000);
      for (;;) {
        const values = await collect(op.pattern, op.data, op.timeout_ms);
        if (JSON.stringify(values).split(op.contains).length - 1 >= op.times || Date.now() > until) return { ok: values };
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    case 'sleep':
      await new Promise((resolve) => setTimeout(resolve, op.ms));
      return { ok: true };
    case 'set_metadata':
      // v12 only: the hook sees every outgoing packet; null removes it.
      if (typeof client.setOnDispatchHook !== 'function') return { err: 'unsupported' };
      client.setOnDispatchHook(op.metadata === null ? undefined : (packet) => { packet.metadata = op.metadata; });
      return { ok: true };
    case 'traceparent':
      // The root span of the last traced op, as a W3C traceparent (null before one, or without --trace).
      return { ok: lastTraceparent };
  }
}

// With --trace, each op but the bookkeeping ones runs in its own root span `client <op>`.
const UNTRACED = new Set(['sleep', 'set_metadata', 'traceparent']);
function traced(op) {
  if (!tracing || UNTRACED.has(op.op)) return run(op);
  const tracer = otel.trace.getTracer('switchboard-nestjs-peer');
  return tracer.startActiveSpan(`client ${op.op}`, { root: true }, async (span) => {
    const sc = span.spanContext();
    lastTraceparent = `00-${sc.traceId}-${sc.spanId}-${sc.traceFlags.toString(16).padStart(2, '0')}`;
    try {
      const result = await run(op);
      if (result?.err !== undefined) span.setStatus({ code: otel.SpanStatusCode.ERROR });
      return result;
    } catch (e) {
      span.setStatus({ code: otel.SpanStatusCode.ERROR, message: e?.message ?? String(e) });
      throw e;
    } finally {
      span.end();
    }
  });
}

const results = [];
for (const op of ops) {
  try {
    results.push(await traced(op));
  } catch (e) {
    results.push({ err: errValue(e) });
  }
}
await client.close();
// Every span is exported before exiting (a no-op without --trace).
await tracer?.forceFlush().catch((e) => process.stderr.write(`[peer] exporting spans failed: ${e?.message ?? e}\n`));
await tracer?.shutdown().catch(() => {});
process.stdout.write(`${JSON.stringify(results)}\n`, () => process.exit(0));
