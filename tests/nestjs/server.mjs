// NestJS TCP microservice used as the peer in Switchboard's interop tests.
// Usage: node tests/nestjs/server.mjs --nest 11|12 (--port N [--host 127.0.0.1] | --url URL)
// --port serves TCP; --url serves any transport (tcp://, redis://, nats://, mqtt://, amqp://,
// kafka://, see transport.mjs). Prints exactly one line "READY <port>" on stdout once
// listening (--port 0 picks a free port and reports it; 0 for broker transports); everything
// else goes to stderr.
// --trace NAME (v12): OpenTelemetry as service NAME (examples/nestjs-tracing/tracing.js): spans
// exported over OTLP/gRPC to $OTEL_EXPORTER_OTLP_ENDPOINT, every handler traced, `relay` calls
// traced and propagated.
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { nestOptions } from './transport.mjs';

function usage(msg) {
  process.stderr.write(`${msg}\nusage: node server.mjs --nest 11|12 (--port N [--host 127.0.0.1] | --url URL) [--trace NAME]\n`);
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

// Load NestJS from tests/nestjs/v<N>/node_modules, whatever the cwd is.
// v11 is CommonJS, v12 is ESM only. rxjs resolves to its CJS build under Node in
// both cases (its "node" export condition), so require() yields the same copy Nest uses.
const require = createRequire(new URL(`./v${args.nest}/package.json`, import.meta.url));
const load = async (name) =>
  args.nest === '11' ? require(name) : import(pathToFileURL(require.resolve(name)).href);
require('reflect-metadata');
const { Controller, Module } = await load('@nestjs/common');
const { NestFactory } = await load('@nestjs/core');
const { MessagePattern, EventPattern, Payload, Ctx, RpcException, Transport, ClientProxyFactory } = await load('@nestjs/microservices');
const { of, interval, EMPTY, take, firstValueFrom, timeout } = require('rxjs');

// The tracing module lives in examples/; its @opentelemetry/* resolve from v12/node_modules.
const tracing = args.trace
  ? createRequire(import.meta.url)('../../examples/nestjs-tracing/tracing.js').withRequire(require)
  : null;
const tracer = tracing?.setupTracing(args.trace, { simple: true });

// Nest's default logger writes info lines to stdout; stdout is reserved for READY.
const toStderr = (level) => (...m) => process.stderr.write(`[nest ${level}] ${m.filter((x) => x !== undefined).map(String).join(' ')}\n`);
const logger = Object.fromEntries(['log', 'error', 'warn', 'debug', 'verbose', 'fatal'].map((l) => [l, toStderr(l)]));

const eventsSeen = [];

// `relay`'s clients, one per URL, made on first use (traced with --trace).
const relayClients = new Map();
function relayClient(url) {
  let client = relayClients.get(url);
  if (!client) {
    client = ClientProxyFactory.create(nestOptions(Transport, url));
    if (tracing) tracing.traceClient(client);
    relayClients.set(url, client);
  }
  return client;
}

// Plain-JS stand-in for a decorated TypeScript class. Handlers get only the payload
// unless their parameters are decorated (see `meta` below).
class PeerController {
  sum(data) { return data.reduce((a, b) => a + b, 0); }
  echo(data) { return data; }
  getUser(id) { return { id, name: 'John Doe', email: 'john@example.com' }; }
  nested() { return 'nested-ok'; }
  stream() { return of(1, 2, 3); }
  slowStream() { return interval(50).pipe(take(3)); }
  emptyStream() { return EMPTY; }
  rpcString() { throw new RpcException('bad thing'); }
  rpcObject() { throw new RpcException({ code: 42, message: 'custom msg', extra: true }); }
  plainError() { throw new Error('boom'); }
  voidRet() {}
  nullRet() { return null; }
  len(data) { return data.length; }
  delay(ms) { return new Promise((resolve) => setTimeout(() => resolve(ms), ms)); }
  evtA(data) { eventsSeen.push({ handler: 'a', data }); }
  evtB(data) { eventsSeen.push({ handler: 'b', data }); }
  eventsSeen() { return eventsSeen; }
  // v12's TcpContext exposes the packet's optional `metadata`; v11 has no getMetadata.
  meta(_data, ctx) { return ctx?.getMetadata?.() ?? null; }
  // Sends `pattern`/`data` to the service at `url` (not kafka://) and replies with its first
  // value (null if none). Its error value comes back as this handler's error; a local failure
  // (timeout, refused connection) as {status:'error', message}.
  async relay({ url, pattern, data, timeout_ms: ms = 5000 }) {
    try {
      return await firstValueFrom(relayClient(url).send(pattern, data).pipe(timeout(ms)), { defaultValue: null });
    } catch (e) {
      throw new RpcException(e instanceof Error ? e.message : e);
    }
  }
}

const messages = {
  sum: { cmd: 'sum' },
  echo: 'echo',
  getUser: { cmd: 'get_user' },
  nested: { cmd: 'get', role: 'user', v: 2, nested: { b: 1, a: 'x' } },
  stream: 'stream',
  slowStream: 'slow_stream',
  emptyStream: 'empty_stream',
  rpcString: 'rpc_string',
  rpcObject: 'rpc_object',
  plainError: 'plain_error',
  voidRet: 'void_ret',
  nullRet: 'null_ret',
  len: 'len',
  delay: 'delay',
  eventsSeen: 'events_seen',
  meta: 'meta',
  relay: 'relay',
};
const decorate = (decorator, method) =>
  decorator(PeerController.prototype, method, Object.getOwnPropertyDescriptor(PeerController.prototype, method));
for (const [method, pattern] of Object.entries(messages)) decorate(MessagePattern(pattern), method);
// Two listeners on one event pattern: Nest chains them, so both must run.
decorate(EventPattern('evt'), 'evtA');
decorate(EventPattern('evt'), 'evtB');
// Without parameter decorators Nest passes the payload alone; `meta` needs @Payload() data, @Ctx() ctx.
Payload()(PeerController.prototype, 'meta', 0);
Ctx()(PeerController.prototype, 'meta', 1);
Controller()(PeerController);

class AppModule {}
Module({ controllers: [PeerController] })(AppModule);

const url = args.url ?? `tcp://${args.host}:${args.port}`;
const app = await NestFactory.createMicroservice(AppModule, { ...nestOptions(Transport, url), logger });
if (tracing) app.useGlobalInterceptors(new tracing.TraceInterceptor());
await app.listen();
process.stdout.write(`READY ${url.startsWith('tcp:') ? app.unwrap().address().port : 0}\n`);

let stopping = false;
const stop = async (signal) => {
  if (stopping) return;
  stopping = true;
  process.stderr.write(`[peer] ${signal}, closing\n`);
  // ServerTCP.close() does not end open client sockets, so exit explicitly.
  setTimeout(() => process.exit(0), 2000).unref();
  try {
    await Promise.allSettled([...relayClients.values()].map((c) => c.close()));
    await app.close();
    await tracer?.shutdown();
  } finally {
    process.exit(0);
  }
};
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
