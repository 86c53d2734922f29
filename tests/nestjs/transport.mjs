// Maps a Switchboard transport URL to NestJS microservice options, so the peer app and client
// run on the same transport as the Rust side. Query parameters mirror Switchboard's where NestJS
// has the same option; see the README's transport table.
export function nestOptions(Transport, url) {
  const u = new URL(url);
  const q = Object.fromEntries(u.searchParams);
  const port = (d) => Number(u.port || d);
  switch (u.protocol) {
    case 'tcp:':
      return { transport: Transport.TCP, options: { host: u.hostname, port: port(3000) } };
    case 'redis:':
      return { transport: Transport.REDIS, options: { host: u.hostname, port: port(6379) } };
    case 'nats:':
      return {
        transport: Transport.NATS,
        options: { servers: [`nats://${u.hostname}:${port(4222)}`], ...(q.queue ? { queue: q.queue } : {}) },
      };
    case 'mqtt:':
      return { transport: Transport.MQTT, options: { url: `mqtt://${u.hostname}:${port(1883)}` } };
    case 'amqp:': {
      const auth = u.username ? `${u.username}:${u.password}@` : '';
      return {
        transport: Transport.RMQ,
        options: {
          urls: [`amqp://${auth}${u.hostname}:${port(5672)}${u.pathname === '/' ? '' : u.pathname}`],
          queue: q.queue ?? 'default',
          queueOptions: { durable: (q.durable ?? 'true') === 'true' },
        },
      };
    }
    case 'kafka:':
      return {
        transport: Transport.KAFKA,
        options: {
          client: { brokers: u.host.split(','), clientId: q.client_id ?? 'nestjs-consumer' },
          consumer: {
            groupId: q.group ?? 'nestjs-group',
            // Kafka: how long a fetch may wait for data (kafkajs' default is 5 s, which
            // librdkafka's mock broker waits out in full before every reply).
            ...(q.max_wait_ms ? { maxWaitTimeInMs: Number(q.max_wait_ms) } : {}),
          },
        },
      };
    default:
      throw new Error(`unsupported transport URL ${url}`);
  }
}
