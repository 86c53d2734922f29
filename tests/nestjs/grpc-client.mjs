// NestJS's gRPC client (ClientGrpcProxy over @grpc/grpc-js, tests/proto/hero.proto) calling
// every HeroesService method once, for Switchboard's gRPC interop tests.
// Usage: node tests/nestjs/grpc-client.mjs --nest 11|12 --port N [--host 127.0.0.1]
// Prints one JSON object on stdout: each method's values, or {code, details} for its error.
import { args, loader, protoPath } from './grpc-common.mjs';

const opts = args('grpc-client.mjs');
const { require, load } = await loader(opts.nest);
const { ClientGrpcProxy } = await load('@nestjs/microservices');
const grpc = require('@grpc/grpc-js');
const { of, lastValueFrom, toArray } = require('rxjs');

const client = new ClientGrpcProxy({ package: 'hero', protoPath, url: `${opts.host}:${opts.port}` });
const heroes = client.getService('HeroesService');

// Every value of a call, or its error as the grpc-js client reports it.
async function run(observable) {
  try {
    return { ok: await lastValueFrom(observable.pipe(toArray())) };
  } catch (e) {
    return { err: { code: e.code, details: e.details } };
  }
}

const metadata = new grpc.Metadata();
metadata.set('x-trace', 'abc');
const out = {
  findOne: await run(heroes.findOne({ id: 7 })),
  listAll: await run(heroes.listAll({})),
  count: await run(heroes.count(of({ id: 1 }, { id: 2 }, { id: 3 }, { id: 4 }))),
  findMany: await run(heroes.findMany(of({ id: 3 }, { id: 1 }, { id: 2 }))),
  fail: await run(heroes.fail({ id: 1 })),
  failPlain: await run(heroes.failPlain({ id: 1 })),
  meta: await run(heroes.meta({}, metadata)),
  notServed: await run(heroes.notServed({})),
};
process.stdout.write(`${JSON.stringify(out)}\n`);
client.close();
process.exit(0);
