// OpenTelemetry tracing for NestJS 12 microservices talking to Switchboard (or to each other):
// W3C trace context (`traceparent`, `tracestate`, `baggage`) in NestJS 12's packet `metadata`
// (TCP, Redis, MQTT), in NATS message headers and in Kafka record headers, spans named and attributed like
// Switchboard's (`send <route>` / `process <route>`, OpenTelemetry's messaging conventions).
// Plain CommonJS, no build step. See README.md beside it.
//
//   const { setupTracing, TraceInterceptor, traceClient } = require('./tracing');
//
// Its `@opentelemetry/*` (and `rxjs`, and for NATS `@nats-io/transport-node`) are loaded on first
// use with this file's own `require`; `withRequire(req)` gives the same API loading them with
// another one (e.g. `createRequire('/app/package.json')` when this file lives outside the app).
'use strict';

const INSTALLED = Symbol.for('switchboard.tracing.traceClient');
// What the first setupTracing() returned: OpenTelemetry's globals can be set only once.
let setUp;
const HEADER_KEYS = ['traceparent', 'tracestate', 'baggage'];

// NestJS's `PATTERN_HANDLER_METADATA`, `PATTERN_METADATA` and `PatternHandler.EVENT`
// (@nestjs/microservices constants.js, enums/pattern-handler.enum.js; the same in 10, 11, 12).
const PATTERN_HANDLER_METADATA = 'microservices:handler_type';
const PATTERN_METADATA = 'microservices:pattern';
const PATTERN_HANDLER_EVENT = 2;

// `messaging.system` per NestJS context / client class (OpenTelemetry's well-known names).
const SYSTEM_OF_CONTEXT = {
  TcpContext: 'tcp',
  RedisContext: 'redis',
  NatsContext: 'nats',
  MqttContext: 'mqtt',
  RmqContext: 'rabbitmq',
  KafkaContext: 'kafka',
};
const SYSTEM_OF_CLIENT = {
  ClientTCP: 'tcp',
  ClientRedis: 'redis',
  ClientNats: 'nats',
  ClientMqtt: 'mqtt',
  ClientRMQ: 'rabbitmq',
  ClientKafka: 'kafka',
};

/** The route NestJS files a pattern under (its `transformPatternToRoute`): strings and numbers
 * as text, objects as JSON with keys sorted at every level. */
function normalizePattern(pattern) {
  if (typeof pattern === 'string' || typeof pattern === 'number') return `${pattern}`;
  if (pattern === null || typeof pattern !== 'object') return String(pattern);
  const esc = (s) => s.replace(/\\/g, '\\\\').replace(/"/g, '\\"');
  const parts = Object.keys(pattern)
    .sort((a, b) => `${a}`.localeCompare(b))
    .map((k) => {
      const v = pattern[k];
      return `"${esc(k)}":${typeof v === 'string' ? `"${esc(v)}"` : normalizePattern(v)}`;
    });
  return `{${parts.join(',')}}`;
}

/** A string map of the W3C keys found by `get(key)` (string, string[] or Buffer values). */
function pickHeaders(get) {
  const out = {};
  for (const key of HEADER_KEYS) {
    let v;
    try {
      v = get(key);
    } catch {
      v = undefined;
    }
    if (Array.isArray(v)) v = v.join(',');
    if (Buffer.isBuffer(v)) v = v.toString('utf8');
    if (typeof v === 'string' && v !== '') out[key] = v;
  }
  return out;
}

/** The trace carrier of an RPC context, whatever the transport. */
function carrierOf(ctx) {
  if (!ctx || typeof ctx !== 'object') return {};
  // TCP and Redis (NestJS 12): the packet's `metadata`.
  const metadata = typeof ctx.getMetadata === 'function' ? ctx.getMetadata() : undefined;
  if (metadata && typeof metadata === 'object') {
    const found = pickHeaders((k) => metadata[k]);
    if (Object.keys(found).length) return found;
  }
  // NATS: the message's headers (a MsgHdrs; `get` returns '' when absent).
  const headers = typeof ctx.getHeaders === 'function' ? ctx.getHeaders() : undefined;
  if (headers && typeof headers.get === 'function') {
    const found = pickHeaders((k) => headers.get(k) || caseInsensitive(headers, k));
    if (Object.keys(found).length) return found;
  }
  // MQTT (NestJS 12.1's MqttContext has no getMetadata): the packet's `metadata` read from the
  // raw MQTT packet's JSON payload, else MQTT 5 user properties.
  if (typeof ctx.getPacket === 'function') {
    const packet = ctx.getPacket();
    const fromBody = packet?.payload ? metadataOfJson(packet.payload) : undefined;
    if (fromBody) {
      const found = pickHeaders((k) => fromBody[k]);
      if (Object.keys(found).length) return found;
    }
    const props = packet?.properties?.userProperties;
    if (props && typeof props === 'object') return pickHeaders((k) => props[k]);
  }
  // RabbitMQ (AMQP message headers, else the packet's `metadata` in the JSON content) and
  // Kafka (record headers).
  if (typeof ctx.getMessage === 'function') {
    const msg = ctx.getMessage();
    const h = msg?.properties?.headers ?? msg?.headers;
    if (h && typeof h === 'object') {
      const found = pickHeaders((k) => h[k]);
      if (Object.keys(found).length) return found;
    }
    const fromBody = msg?.properties && msg.content ? metadataOfJson(msg.content) : undefined;
    if (fromBody) return pickHeaders((k) => fromBody[k]);
  }
  return {};
}

function caseInsensitive(headers, key) {
  if (typeof headers.keys !== 'function') return undefined;
  for (const k of headers.keys()) if (k.toLowerCase() === key) return headers.get(k);
  return undefined;
}

function metadataOfJson(payload) {
  try {
    const m = JSON.parse(Buffer.isBuffer(payload) ? payload.toString('utf8') : String(payload))?.metadata;
    return m && typeof m === 'object' ? m : undefined;
  } catch {
    return undefined;
  }
}

/** The route of the handler being run: its declared pattern, normalised (the pattern the
 * message came in on picks one when the handler declares several). */
function routeOf(handler, ctx) {
  const patterns = handler && typeof Reflect.getMetadata === 'function' ? Reflect.getMetadata(PATTERN_METADATA, handler) : undefined;
  const incoming = incomingRoute(ctx);
  if (Array.isArray(patterns) && patterns.length) {
    const routes = patterns.map(normalizePattern);
    return routes.length > 1 && incoming !== undefined && routes.includes(incoming) ? incoming : routes[0];
  }
  return incoming ?? 'unknown';
}

function incomingRoute(ctx) {
  const raw = ctx?.getPattern?.() ?? ctx?.getChannel?.() ?? ctx?.getSubject?.() ?? ctx?.getTopic?.();
  if (typeof raw !== 'string') return raw === undefined ? undefined : normalizePattern(raw);
  try {
    return normalizePattern(JSON.parse(raw));
  } catch {
    return raw;
  }
}

function errorType(err) {
  if (err instanceof Error) return err.constructor?.name || err.name || 'Error';
  return 'rpc_error';
}

/** Marks `span` failed by `err` (an Error, or a NestJS error value: object or string). */
function fail(api, span, err) {
  const message = err instanceof Error ? err.message : typeof err === 'string' ? err : safeJson(err);
  span.recordException(err instanceof Error ? err : { name: errorType(err), message });
  span.setAttribute('error.type', errorType(err));
  span.setStatus({ code: api.SpanStatusCode.ERROR, message });
}

function safeJson(v) {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

function withRequire(req) {
  const cache = {};
  const load = (name) => (cache[name] ??= req(name));
  const api = () => load('@opentelemetry/api');
  const tracer = () => api().trace.getTracer('switchboard-nestjs-tracing', '0.1.0');

  /**
   * Sets up OpenTelemetry for this process: a tracer provider whose resource has
   * `service.name` (default `$OTEL_SERVICE_NAME`), spans exported over OTLP/gRPC to
   * `$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `$OTEL_EXPORTER_OTLP_ENDPOINT` (default
   * http://localhost:4317), AsyncLocalStorage context, and W3C trace context + baggage
   * propagation, all registered globally. `simple: true` exports each span as it ends (tests,
   * short-lived CLIs); the default batches. `$OTEL_LOG_LEVEL` (e.g. `warn`, `debug`) logs the
   * SDK's own diagnostics to stderr.
   */
  function setupTracing(serviceName = process.env.OTEL_SERVICE_NAME, { simple = false } = {}) {
    if (setUp) return setUp;
    const otel = api();
    const { CompositePropagator, W3CTraceContextPropagator, W3CBaggagePropagator } = load('@opentelemetry/core');
    const { defaultResource, resourceFromAttributes } = load('@opentelemetry/resources');
    const { AsyncLocalStorageContextManager } = load('@opentelemetry/context-async-hooks');
    const { BasicTracerProvider, SimpleSpanProcessor, BatchSpanProcessor } = load('@opentelemetry/sdk-trace-base');
    const { OTLPTraceExporter } = load('@opentelemetry/exporter-trace-otlp-grpc');

    const level = (process.env.OTEL_LOG_LEVEL ?? '').toUpperCase();
    if (level && otel.DiagLogLevel[level] !== undefined) {
      const write = (kind) => (msg, ...rest) => process.stderr.write(`[otel ${kind}] ${[msg, ...rest].map(String).join(' ')}\n`);
      const logger = Object.fromEntries(['error', 'warn', 'info', 'debug', 'verbose'].map((k) => [k, write(k)]));
      otel.diag.setLogger(logger, otel.DiagLogLevel[level]);
    }

    const exporter = new OTLPTraceExporter();
    const processor = simple ? new SimpleSpanProcessor(exporter) : new BatchSpanProcessor(exporter);
    const resource = defaultResource().merge(
      resourceFromAttributes(serviceName ? { 'service.name': serviceName } : {}),
    );
    const provider = new BasicTracerProvider({ resource, spanProcessors: [processor] });
    otel.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    otel.propagation.setGlobalPropagator(
      new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
    );
    otel.trace.setGlobalTracerProvider(provider);
    return (setUp = {
      provider,
      /** Exports every ended span not yet exported. */
      forceFlush: () => provider.forceFlush(),
      /** Flushes, then stops exporting. */
      shutdown: () => provider.shutdown(),
    });
  }

  /**
   * NestJS interceptor for microservice handlers: continues the caller's trace from the
   * message (NestJS 12 `metadata` on TCP/Redis/MQTT, NATS, AMQP and Kafka headers), runs the handler inside a
   * `process <route>` span (SERVER for @MessagePattern, CONSUMER for @EventPattern), records
   * its failure and ends the span when the handler's stream settles. Other contexts (HTTP in a
   * hybrid app) pass through untouched.
   *
   *   app.useGlobalInterceptors(new TraceInterceptor());
   */
  class TraceInterceptor {
    intercept(context, next) {
      if (context.getType?.() !== 'rpc') return next.handle();
      const otel = api();
      const { Observable } = load('rxjs');
      const rpc = context.switchToRpc().getContext();
      const handler = context.getHandler?.();
      const isEvent =
        typeof Reflect.getMetadata === 'function' && handler
          ? Reflect.getMetadata(PATTERN_HANDLER_METADATA, handler) === PATTERN_HANDLER_EVENT
          : false;
      const route = routeOf(handler, rpc);
      const system = SYSTEM_OF_CONTEXT[rpc?.constructor?.name] ?? 'custom';

      const parent = otel.propagation.extract(otel.ROOT_CONTEXT, carrierOf(rpc));
      const remote = otel.trace.getSpanContext(parent);
      const links = isEvent && remote && otel.isSpanContextValid(remote) ? [{ context: remote }] : [];
      const span = tracer().startSpan(
        `process ${route}`,
        {
          kind: isEvent ? otel.SpanKind.CONSUMER : otel.SpanKind.SERVER,
          attributes: {
            'messaging.system': system,
            'messaging.destination.name': route,
            'messaging.operation.type': 'process',
            'messaging.operation.name': 'process',
          },
          links,
        },
        parent,
      );
      const active = otel.trace.setSpan(parent, span);
      // next.handle() and the subscription both inside the span's context: NestJS binds the
      // handler's async scope when handle() is called, and everything the handler starts
      // (clients it calls, their dispatch hooks) inherits it.
      return new Observable((subscriber) => {
        let ended = false;
        const end = () => {
          if (!ended) {
            ended = true;
            span.end();
          }
        };
        const sub = otel.context.with(active, () =>
          next.handle().subscribe({
            next: (v) => subscriber.next(v),
            error: (err) => {
              fail(otel, span, err);
              end();
              subscriber.error(err);
            },
            complete: () => {
              end();
              subscriber.complete();
            },
          }),
        );
        return () => {
          sub.unsubscribe();
          end();
        };
      });
    }
  }

  /**
   * Makes a NestJS `ClientProxy` trace and propagate: `send()` runs in a `send <route>` span of
   * kind CLIENT that ends with the reply stream (complete, error, or unsubscribe), `emit()` in
   * one of kind PRODUCER that ends once the event is handed to the transport; each outgoing
   * packet carries the span's `traceparent` (+ `tracestate`, `baggage`) in `packet.metadata`
   * (merged into what is there), and on NATS also in the message headers. On Kafka, whose
   * serializer drops `metadata`, they go in the record's headers instead: the payload is sent
   * as a Kafka message `{ value: payload, headers }` (one the application passes, with `key`
   * or `value`, keeps its fields and gets the keys merged into its `headers`), which NestJS's
   * serializer unwraps as it always does. `system` is the `messaging.system` attribute
   * (default: from the client's class). Returns the client.
   *
   * Uses NestJS 12's `setOnDispatchHook`; a hook the application sets (before or after) still
   * runs, before the trace keys are merged in. On a client without that hook (NestJS <= 11)
   * the spans are made but nothing is propagated.
   */
  function traceClient(client, system) {
    if (client[INSTALLED]) return client;
    const sys = system ?? SYSTEM_OF_CLIENT[client.constructor?.name] ?? 'custom';
    const otel = api();
    const { Observable } = load('rxjs');
    const route = (pattern) => {
      try {
        return typeof client.normalizePattern === 'function' ? String(client.normalizePattern(pattern)) : normalizePattern(pattern);
      } catch {
        return normalizePattern(pattern);
      }
    };
    const startSpan = (pattern, op) => {
      const r = route(pattern);
      return tracer().startSpan(`send ${r}`, {
        kind: op === 'send' ? otel.SpanKind.CLIENT : otel.SpanKind.PRODUCER,
        attributes: {
          'messaging.system': sys,
          'messaging.destination.name': r,
          'messaging.operation.type': 'send',
          'messaging.operation.name': op,
        },
      });
    };

    if (typeof client.setOnDispatchHook === 'function') {
      let appHook = client.onDispatchHook;
      const hook = (packet) => {
        appHook?.(packet);
        const carrier = {};
        // The hook runs in the context the packet is sent from: the send/emit span below.
        otel.propagation.inject(otel.context.active(), carrier);
        if (!Object.keys(carrier).length) return;
        packet.metadata = { ...(packet.metadata && typeof packet.metadata === 'object' ? packet.metadata : {}), ...carrier };
        if (sys === 'nats') natsHeaders(packet, carrier);
      };
      const setHook = client.setOnDispatchHook.bind(client);
      setHook(hook);
      // An application hook set later runs inside ours instead of replacing it.
      client.setOnDispatchHook = (h) => {
        appHook = h;
      };
    }

    const natsHeaders = (packet, carrier) => {
      // NestJS's NATS serializer takes headers from a NatsRecord payload, else from
      // `packet.headers` (a MsgHdrs), and JSON-encodes the rest of the packet as the body:
      // a non-enumerable `headers` reaches the serializer without landing in the body.
      const record = packet.data && typeof packet.data === 'object' && packet.data.constructor?.name === 'NatsRecord' ? packet.data : undefined;
      let hdrs = record ? record.headers : packet.headers;
      if (!hdrs) {
        hdrs = natsPackage().headers();
        if (record) record.headers = hdrs;
        else Object.defineProperty(packet, 'headers', { value: hdrs, enumerable: false, configurable: true, writable: true });
      }
      for (const [k, v] of Object.entries(carrier)) hdrs.set(k, v);
    };
    const natsPackage = () => {
      try {
        return load('@nats-io/transport-node');
      } catch {
        return load('nats');
      }
    };

    // Kafka: the context as record headers (a copy; the caller's payload is not touched).
    const kafkaMessage = (data, active) => {
      // NestJS refuses a null payload itself: left as it is for that.
      if (data === null || data === undefined) return data;
      const carrier = {};
      otel.propagation.inject(active, carrier);
      if (!Object.keys(carrier).length) return data;
      const isMessage = data !== null && typeof data === 'object' && ('key' in data || 'value' in data);
      if (!isMessage) return { value: data, headers: carrier };
      const headers = data.headers && typeof data.headers === 'object' ? data.headers : {};
      return { ...data, headers: { ...headers, ...carrier } };
    };
    const outgoing = (data, active) => (sys === 'kafka' ? kafkaMessage(data, active) : data);

    const send = client.send;
    client.send = function tracedSend(pattern, data) {
      // Cold, like the original: the span starts when the reply stream is subscribed.
      return new Observable((subscriber) => {
        const span = startSpan(pattern, 'send');
        const active = otel.trace.setSpan(otel.context.active(), span);
        let ended = false;
        const end = () => {
          if (!ended) {
            ended = true;
            span.end();
          }
        };
        const sub = otel.context.with(active, () =>
          send.call(client, pattern, outgoing(data, active)).subscribe({
            next: (v) => subscriber.next(v),
            error: (err) => {
              fail(otel, span, err);
              end();
              subscriber.error(err);
            },
            complete: () => {
              end();
              subscriber.complete();
            },
          }),
        );
        return () => {
          sub.unsubscribe();
          end();
        };
      });
    };

    const emit = client.emit;
    client.emit = function tracedEmit(pattern, data) {
      // Hot, like the original: dispatched now, whether or not anyone subscribes.
      const span = startSpan(pattern, 'emit');
      const active = otel.trace.setSpan(otel.context.active(), span);
      const out = otel.context.with(active, () => emit.call(client, pattern, outgoing(data, active)));
      out.subscribe({
        error: (err) => {
          fail(otel, span, err);
          span.end();
        },
        complete: () => span.end(),
      });
      return out;
    };

    client[INSTALLED] = true;
    return client;
  }

  return { setupTracing, TraceInterceptor, traceClient, withRequire, normalizePattern };
}

module.exports = withRequire(require);
