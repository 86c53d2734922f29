// NestJS gRPC microservice (Transport.GRPC, tests/proto/hero.proto) used as the peer in
// Switchboard's gRPC interop tests. Usage: node tests/nestjs/grpc-server.mjs --nest 11|12 --port N
// (--port 0 picks a free port). Prints exactly one line "READY <port>" on stdout once listening.
import net from 'node:net';
import { args, loader, logger, protoPath } from './grpc-common.mjs';

const opts = args('grpc-server.mjs');
const { require, load } = await loader(opts.nest);
const { Controller, Module } = await load('@nestjs/common');
const { NestFactory } = await load('@nestjs/core');
const { GrpcMethod, GrpcStreamMethod, RpcException, Transport } = await load('@nestjs/microservices');
const { of, map, reduce } = require('rxjs');

// grpc-js reports no bound port through Nest, so --port 0 is resolved here first.
async function freePort(host) {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}
const port = Number(opts.port) || (await freePort(opts.host));

const hero = (id) => ({ id, name: `hero-${id}` });

class HeroesController {
  findOne(data, metadata) {
    return { ...hero(data.id), name: `${hero(data.id).name}${metadata.get('x-trace')[0] ? `+${metadata.get('x-trace')[0]}` : ''}` };
  }
  listAll() {
    return of(hero(1), hero(2), hero(3));
  }
  count(messages) {
    return messages.pipe(reduce((acc, m) => ({ count: acc.count + 1, sum: acc.sum + m.id }), { count: 0, sum: 0 }));
  }
  findMany(messages) {
    return messages.pipe(map((m) => hero(m.id)));
  }
  fail() {
    throw new RpcException({ code: 5, message: 'hero not found' });
  }
  failPlain() {
    throw new Error('boom');
  }
  meta(_data, metadata) {
    const entries = {};
    for (const [k, v] of Object.entries(metadata.getMap())) entries[k] = String(v);
    return { entries };
  }
  slow(data) {
    return new Promise((resolve) => setTimeout(() => resolve({ id: data.id, name: 'slow' }), data.id));
  }
}

const decorate = (decorator, method) =>
  decorator(HeroesController.prototype, method, Object.getOwnPropertyDescriptor(HeroesController.prototype, method));
for (const [method, rpc] of [['findOne', 'FindOne'], ['listAll', 'ListAll'], ['fail', 'Fail'], ['failPlain', 'FailPlain'], ['meta', 'Meta'], ['slow', 'Slow']]) {
  decorate(GrpcMethod('HeroesService', rpc), method);
}
decorate(GrpcStreamMethod('HeroesService', 'Count'), 'count');
decorate(GrpcStreamMethod('HeroesService', 'FindMany'), 'findMany');
Controller()(HeroesController);

class AppModule {}
Module({ controllers: [HeroesController] })(AppModule);

const app = await NestFactory.createMicroservice(AppModule, {
  transport: Transport.GRPC,
  options: { package: 'hero', protoPath, url: `${opts.host}:${port}` },
  logger,
});
await app.listen();
process.stdout.write(`READY ${port}\n`);

let stopping = false;
const stop = async (signal) => {
  if (stopping) return;
  stopping = true;
  process.stderr.write(`[peer] ${signal}, closing\n`);
  setTimeout(() => process.exit(0), 2000).unref();
  try {
    await app.close();
  } finally {
    process.exit(0);
  }
};
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
