#!/usr/bin/env node
// Bench-only: a WebSocket RPC endpoint (`/rpc`) that answers from prebuilt
// replies, so that a client's cost of receiving and decoding replies of a given
// size can be measured without the server's work in the picture. No database
// behind it.
//
//   node bench/canned_server.mjs [--port 0] [--prebuild 1000000,5000000]
//
// Prints exactly one line on stdout, `LISTENING <port>`, once it accepts
// connections (port 0 = pick a free one). Loopback only. Nothing per request.
//
// Subprotocols: `json` (text frames, as surpool speaks today) and `cbor`
// (binary frames: the same replies encoded with the CBOR codec of the
// `surrealdb` npm package in tests/server/node_modules). A client offering
// both gets `cbor`.
//
// Replies ({id, result}):
//   ping, use, let, unset, invalidate, authenticate, reset   null
//   signin, signup      "canned-token"
//   version             "surrealdb-3.0.0"
//   query  "big N"      [{status:"OK", time, result: [rows...]}]: rows are
//                       objects of strings and numbers (a record id, a name, an
//                       email, an age, a score, a flag, two tags, a timestamp).
//                       In JSON the whole frame is N bytes (give or take the
//                       digits of the request id); the CBOR frame carries the
//                       same rows, so it is smaller.
//   query  (other SQL)  [{status:"OK", time, result: 1}] (as RETURN 1)
//   anything else       null
//
// A size's reply is built once, on its first request (or at start with
// --prebuild), and kept: every later request only splices its id in front of
// the prebuilt bytes, so Node does no per-request work proportional to the
// reply beyond one copy into the socket.
import { parseArgs } from 'node:util';
import http from 'node:http';

const SERVER_DIR = new URL('../tests/server/', import.meta.url);
const { WebSocketServer } = await import(new URL('node_modules/ws/wrapper.mjs', SERVER_DIR).href);
let cbor = null;
try {
  const { CborCodec } = await import(
    new URL('node_modules/surrealdb/dist/surrealdb.mjs', SERVER_DIR).href);
  cbor = CborCodec.DEFAULT;
} catch {
  process.stderr.write('canned_server.mjs: no CBOR codec in tests/server/node_modules: json only\n');
}

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    prebuild: { type: 'string', default: '' },
  },
  strict: true,
});

// ---- reply bodies ----------------------------------------------------------
// A body is everything a reply holds besides its id, prebuilt once per kind:
//   json: the bytes after `{"id":<id>` — `,"result":...}`
//   cbor: the map entry `"result": ...` (the reply map's header and the id
//         entry are written per request).
const FIRST = ['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Donald', 'Ken', 'Dennis'];
const LAST = ['Lovelace', 'Hopper', 'Turing', 'Dijkstra', 'Liskov', 'Knuth', 'Thompson'];
const TAGS = ['admin', 'staff', 'beta', 'eu', 'us', 'mobile', 'legacy', 'trial'];
function row(i) {
  const first = FIRST[i % FIRST.length];
  const last = LAST[(i * 7) % LAST.length];
  return {
    id: `person:${(i * 2654435761 % 4294967296).toString(36).padStart(7, '0')}`,
    name: `${first} ${last}`,
    email: `${first.toLowerCase()}.${last.toLowerCase()}${i}@example.com`,
    age: 18 + (i * 13) % 70,
    score: Math.round(((i * 7919) % 100000) / 7.0) / 100,
    active: i % 3 !== 0,
    tags: [TAGS[i % TAGS.length], TAGS[(i * 5 + 3) % TAGS.length]],
    created_at: new Date(Date.UTC(2025, 0, 1) + i * 61000).toISOString(),
  };
}
const stmt = (result) => [{ result, status: 'OK', time: '1.234ms' }];

/** Rows whose JSON reply frame (with a one-digit id) is exactly n bytes when n
 *  is above a few hundred; the last row's name pads the difference. */
function bigRows(n) {
  const frame = (rows) => `{"id":1,"result":${JSON.stringify(stmt(rows))}}`;
  const base = Buffer.byteLength(frame([]));
  const rows = [];
  let len = base;
  for (let i = 0; ; i++) {
    const r = row(i);
    const add = Buffer.byteLength(JSON.stringify(r)) + (rows.length ? 1 : 0);
    if (len + add > n) break;
    rows.push(r);
    len += add;
  }
  if (rows.length) {
    const last = rows[rows.length - 1];
    last.name += 'x'.repeat(n - len);
    // Check, in case a guess above was off: the JSON frame must be n bytes.
    const got = Buffer.byteLength(frame(rows));
    if (got !== n) process.stderr.write(`canned_server.mjs: big ${n} built ${got} bytes\n`);
  }
  return rows;
}

function bodies(result) {
  const json = Buffer.from(`,"result":${JSON.stringify(result)}}`);
  let cb = null;
  if (cbor !== null) {
    const m = Buffer.from(cbor.encode({ result })); // 0xa1, then the entry
    cb = m.subarray(1);
  }
  return { json, cbor: cb };
}

const FIXED = {
  null: bodies(null),
  token: bodies('canned-token'),
  version: bodies('surrealdb-3.0.0'),
  small: bodies(stmt(1)),
};
const bigCache = new Map();
function bigBody(n) {
  let b = bigCache.get(n);
  if (b === undefined) {
    const t0 = process.hrtime.bigint();
    b = bodies(stmt(bigRows(n)));
    bigCache.set(n, b);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    process.stderr.write(`canned_server.mjs: built big ${n} (frames with id 1): json ${b.json.length + 7} bytes` +
      `${b.cbor ? `, cbor ${b.cbor.length + 5} bytes` : ''} in ${ms.toFixed(0)} ms\n`);
  }
  return b;
}
for (const s of args.prebuild.split(',').filter((x) => x.trim()))
  bigBody(Number(s));

function bodyFor(method, params) {
  switch (method) {
  case 'signin': case 'signup': return FIXED.token;
  case 'version': return FIXED.version;
  case 'query': {
    const sql = Array.isArray(params) && typeof params[0] === 'string' ? params[0] : '';
    const m = /^\s*big\s+(\d+)\s*$/i.exec(sql);
    return m ? bigBody(Number(m[1])) : FIXED.small;
  }
  default: return FIXED.null;
  }
}

// ---- the socket side -------------------------------------------------------
// surpool writes the id and the method first: take them with a regular
// expression and parse only what needs params (query).
const HEAD = /^\{"id":(-?\d+|"(?:[^"\\]|\\.)*"),"method":"([A-Za-z_]+)"/;

function onJson(ws, text) {
  let id, method, params;
  const m = HEAD.exec(text);
  if (m !== null && m[2] !== 'query') {
    id = m[1];
    method = m[2];
  } else {
    let req;
    try {
      req = JSON.parse(text);
    } catch {
      ws.send('{"error":{"code":-32700,"message":"Parse error"}}');
      return;
    }
    id = m !== null ? m[1] : JSON.stringify(req?.id ?? null);
    method = req?.method;
    params = req?.params;
  }
  const body = bodyFor(method, params).json;
  const head = Buffer.from(`{"id":${id}`);
  const frame = Buffer.allocUnsafe(head.length + body.length);
  head.copy(frame, 0);
  body.copy(frame, head.length);
  ws.send(frame, { binary: false });
}

function onCbor(ws, data) {
  let req;
  try {
    req = cbor.decode(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
  } catch {
    ws.send(Buffer.from(cbor.encode({ error: { code: -32700, message: 'Parse error' } })),
      { binary: true });
    return;
  }
  const body = bodyFor(req?.method, req?.params).cbor;
  const idEntry = Buffer.from(cbor.encode({ id: req?.id ?? null })).subarray(1);
  const frame = Buffer.allocUnsafe(1 + idEntry.length + body.length);
  frame[0] = 0xa2; // a map of two entries: id, result
  idEntry.copy(frame, 1);
  body.copy(frame, 1 + idEntry.length);
  ws.send(frame, { binary: true });
}

function onConnection(ws) {
  const useCbor = ws.protocol === 'cbor';
  ws.on('message', (data, isBinary) => {
    if (useCbor) {
      if (isBinary) onCbor(ws, data);
      return;
    }
    if (!isBinary) onJson(ws, data.toString('utf8'));
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
  maxPayload: 16 * 1024 * 1024,
  handleProtocols: (protocols) =>
    (cbor !== null && protocols.has('cbor') ? 'cbor' : protocols.has('json') ? 'json' : false),
});
wss.on('connection', onConnection);
server.listen(Number(args.port), '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});

function shutdown() {
  for (const ws of wss.clients) ws.terminate();
  server.close();
  setTimeout(() => process.exit(0), 200).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
