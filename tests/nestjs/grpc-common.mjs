// Shared by grpc-server.mjs and grpc-client.mjs: argument parsing and loading NestJS 11 or 12
// from tests/nestjs/v<N>/node_modules (v11 is CommonJS, v12 ESM only).
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

export const protoPath = fileURLToPath(new URL('../proto/hero.proto', import.meta.url));

export function args(script, extra = {}) {
  const usage = (msg) => {
    process.stderr.write(`${msg}\nusage: node ${script} --nest 11|12 --port N [--host 127.0.0.1]\n`);
    process.exit(2);
  };
  let values;
  try {
    values = parseArgs({
      options: { nest: { type: 'string' }, port: { type: 'string' }, host: { type: 'string', default: '127.0.0.1' }, ...extra },
    }).values;
  } catch (e) {
    usage(e.message);
  }
  if (!['11', '12'].includes(values.nest)) usage('--nest must be 11 or 12');
  if (!/^\d+$/.test(values.port ?? '') || Number(values.port) > 65535) usage('--port must be 0..65535');
  return values;
}

export async function loader(nest) {
  const require = createRequire(new URL(`./v${nest}/package.json`, import.meta.url));
  const load = async (name) => (nest === '11' ? require(name) : import(pathToFileURL(require.resolve(name)).href));
  require('reflect-metadata');
  return { require, load };
}

// Nest's default logger writes to stdout; stdout is reserved for the script's output.
const toStderr = (level) => (...m) =>
  process.stderr.write(`[nest ${level}] ${m.filter((x) => x !== undefined).map(String).join(' ')}\n`);
export const logger = Object.fromEntries(['log', 'error', 'warn', 'debug', 'verbose', 'fatal'].map((l) => [l, toStderr(l)]));
