#!/usr/bin/env node
// Bench-only: a WebSocket RPC endpoint (`/rpc`) in front of the SAME embedded
// SurrealDB core as tests/server/server.mjs (tests/server/server.mjs is not
// modified), speaking CBOR — the only format the official JavaScript SDK speaks
// over WebSocket — and, on the `json` subprotocol, JSON, so that surpool and
// the SDK can be measured against one server whose work per request differs
// only in the codec.
//
//   node bench/cbor_server.mjs [--port 0] [--user root --pass root] [--null]
//        [--exit-on-stdin-close]
//
// Prints exactly one line on stdout, `LISTENING <port>`. Loopback only.
//
// Per socket: its own core session (attach on open, detach on close), like
// server.mjs. Subprotocol `cbor` (or none): each binary frame is one CBOR
// request {id, method, params}, answered with a binary CBOR frame {id, result}
// or {id, error}. Subprotocol `json`: text frames, same shapes in JSON. Either
// way the request is run through the core with the socket's session, and
// requests run concurrently.
//
// --null: `query` is answered at once with a canned reply (the core's own reply
// to `RETURN 1`, captured at start) without running it — so that client costs
// can be compared with the core out of the way. Every other method (signin,
// use, version) still goes through the core: the SDK needs real answers to
// connect.
//
// Work per request: decode (CBOR or JSON.parse), CBOR-encode for the core, run,
// CBOR-decode the core's reply, encode (CBOR or JSON). tests/server/server.mjs
// does more on its JSON path (it re-parses strings into record ids, datetimes
// and UUIDs as a real server would, and formats record ids like the core): its
// figures are reported separately.
import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import http from 'node:http';
import net from 'node:net';

const SERVER_DIR = new URL('../tests/server/', import.meta.url);
const { WebSocketServer } = await import(new URL('node_modules/ws/wrapper.mjs', SERVER_DIR).href);
const { CborCodec, Uuid } = await import(
  new URL('node_modules/surrealdb/dist/surrealdb.mjs', SERVER_DIR).href);
const require = createRequire(new URL('server.mjs', SERVER_DIR));
const { SurrealNodeEngine } = require(
  './node_modules/@surrealdb/node/dist/surrealdb-node.linux-x64-gnu.node');
const cbor = CborCodec.DEFAULT;

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '0' },
    user: { type: 'string', default: 'root' },
    pass: { type: 'string', default: 'root' },
    null: { type: 'boolean', default: false },
    'exit-on-stdin-close': { type: 'boolean', default: false },
  },
  strict: true,
});
const HOST = args.host;
if (!(HOST === 'localhost' || HOST === '::1' || (net.isIPv4(HOST) && HOST.startsWith('127.')))) {
  process.stderr.write(`cbor_server.mjs: refusing non-loopback --host ${HOST}\n`);
  process.exit(2);
}

const engine = await SurrealNodeEngine.connect('mem://');
let internalIds = 0;
async function execute(req) {
  req.id = String(++internalIds);
  return cbor.decode(await engine.execute(cbor.encode(req)));
}
function isErrorReply(r) {
  return r !== null && typeof r === 'object' && !Array.isArray(r) &&
    Object.getPrototypeOf(r) === Object.prototype && Object.keys(r).length === 1 &&
    'error' in r && r.error && typeof r.error === 'object' && 'code' in r.error;
}

{
  const user = '`' + args.user.replace(/\\/g, '\\\\').replace(/`/g, '\\`') + '`';
  const pass = "'" + args.pass.replace(/\\/g, '\\\\').replace(/'/g, "\\'") + "'";
  const res = await execute({ method: 'query', params: [`DEFINE USER ${user} ON ROOT PASSWORD ${pass} ROLES OWNER`] });
  if (isErrorReply(res) || res[0]?.status !== 'OK') {
    process.stderr.write('cbor_server.mjs: cannot define the root user\n');
    process.exit(1);
  }
}
const CANNED = args.null ? await execute({ method: 'query', params: ['RETURN 1'] }) : null;
const REFUSED = new Set(['attach', 'detach', 'sessions']);

// Core values -> JSON: SDK value classes (RecordId, Uuid, DateTime, Duration,
// Decimal, ...) as their string form, big integers as numbers when exact (else
// strings), NONE dropped as JSON.stringify drops undefined.
function jsonReplacer(_key, v) {
  if (typeof v === 'bigint') return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
  if (v !== null && typeof v === 'object' && !Array.isArray(v) &&
      Object.getPrototypeOf(v) !== Object.prototype) {
    if (v instanceof Map) return Object.fromEntries(v);
    if (v instanceof Set) return [...v];
    return String(v);
  }
  return v;
}

function onConnection(ws) {
  const session = Uuid.v4();
  const json = ws.protocol === 'json';
  let closed = false;
  const attached = execute({ method: 'attach', session });
  attached.catch(() => ws.close(1011, 'session attach failed'));
  const send = (obj) => {
    if (closed || ws.readyState !== ws.OPEN) return;
    if (json) {
      let text;
      try {
        text = JSON.stringify(obj); // SDK value classes have toJSON()
      } catch {
        text = JSON.stringify(obj, jsonReplacer); // BigInt
      }
      ws.send(text, { binary: false });
    }
    else ws.send(cbor.encode(obj), { binary: true });
  };
  ws.on('message', async (data, isBinary) => {
    let req;
    try {
      if (json) {
        if (isBinary) throw new Error('binary frame');
        req = JSON.parse(data.toString('utf8'));
      } else {
        if (!isBinary) throw new Error('text frame');
        req = cbor.decode(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
      }
    } catch {
      send({ error: { code: -32700, message: 'Parse error' } });
      return;
    }
    const { id, method, params } = req ?? {};
    if (typeof method !== 'string') return send({ id, error: { code: -32600, message: 'Invalid request' } });
    if (REFUSED.has(method)) return send({ id, error: { code: -32602, message: 'Method not allowed' } });
    if (CANNED !== null && method === 'query') return send({ id, result: CANNED });
    let result;
    try {
      await attached;
      const core = { method, session };
      if (params !== undefined && params !== null) core.params = params;
      if (req.txn instanceof Uuid) core.txn = req.txn;
      result = await execute(core);
    } catch (err) {
      result = { error: { code: -32000, message: String(err?.message ?? err) } };
    }
    if (isErrorReply(result)) send({ id, error: result.error });
    else send({ id, result });
  });
  ws.on('close', () => {
    closed = true;
    attached.then(() => execute({ method: 'detach', session })).catch(() => {});
  });
  ws.on('error', () => {});
}

const server = http.createServer((req, res) => {
  res.writeHead(req.url === '/health' ? 200 : 404);
  res.end(req.url === '/health' ? 'OK' : 'Not Found');
});
const wss = new WebSocketServer({
  server,
  path: '/rpc',
  perMessageDeflate: false,
  maxPayload: 128 * 1024 * 1024,
  handleProtocols: (protocols) => (protocols.has('cbor') ? 'cbor' : protocols.has('json') ? 'json' : false),
});
wss.on('connection', onConnection);
server.listen(Number(args.port), HOST, () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});

function shutdown() {
  for (const ws of wss.clients) ws.terminate();
  server.close();
  setTimeout(() => process.exit(0), 200).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
if (args['exit-on-stdin-close']) {
  process.stdin.on('end', shutdown);
  process.stdin.on('close', shutdown);
  process.stdin.resume();
}
