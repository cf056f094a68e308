#!/usr/bin/env node
// Self-test of the surpool test server: `node smoke.mjs` (exit 0 = all good).
// Starts server.mjs as a child on a free loopback port and talks to it with
// the `ws` client. Prints one line per check and `N passed, N failed` at the end.

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import http from 'node:http';
import https from 'node:https';
import WebSocket from 'ws';
import { CborCodec, DateTime, Decimal, Duration, RecordId, Table, Uuid } from 'surrealdb';

const HERE = dirname(fileURLToPath(import.meta.url));
const SERVER = join(HERE, 'server.mjs');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// `node smoke.mjs --core 2`: the 2.x mode's checks instead (smoke-core2.mjs).
if (process.argv[2] === '--core' && process.argv[3] === '2') await import('./smoke-core2.mjs');

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/** Starts server.mjs; resolves once it printed `LISTENING <port>`. */
function startServer(extraArgs = [], { expectFail = false } = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [SERVER, '--port', '0', '--exit-on-stdin-close', ...extraArgs], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const exited = new Promise((r) => proc.on('exit', (code, signal) => r({ code, signal })));
    const timer = setTimeout(() => reject(new Error(`server did not start: ${stderr}`)), 20000);
    proc.stderr.on('data', (d) => { stderr += d; });
    proc.stdout.on('data', (d) => {
      stdout += d;
      const m = /^LISTENING (\d+)\n/.exec(stdout);
      if (m && !expectFail) {
        clearTimeout(timer);
        resolve({
          proc, port: Number(m[1]), exited,
          stdout: () => stdout,
          stderr: () => stderr,
          stop: async () => { proc.kill('SIGTERM'); return exited; },
        });
      }
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      if (expectFail) resolve({ code, stdout, stderr });
      else reject(new Error(`server exited early with ${code}: ${stderr}`));
    });
  });
}

/** A JSON RPC client over one WebSocket. */
class Client {
  static async open(url, { protocols = ['json'], ...opts } = {}) {
    const ws = new WebSocket(url, protocols, { handshakeTimeout: 3000, maxPayload: 200 * 1024 * 1024, ...opts });
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode })));
    });
    return new Client(ws);
  }

  constructor(ws) {
    this.ws = ws;
    this.nextId = 1;
    this.pending = new Map();
    this.frames = []; // every frame received: {text, binary}
    this.closed = new Promise((r) => ws.on('close', (code) => r(code)));
    ws.on('error', () => {});
    ws.on('message', (data, binary) => {
      const text = data.toString('utf8');
      this.frames.push({ text, binary });
      let msg;
      try { msg = JSON.parse(text); } catch { return; }
      const p = this.pending.get(msg.id);
      if (p) { this.pending.delete(msg.id); p(msg); }
    });
  }

  /** Sends a request; resolves with the whole reply object, or rejects on timeout. */
  call(method, params, { timeout = 5000, id, txn } = {}) {
    const rid = id ?? this.nextId++;
    const req = { id: rid, method };
    if (params !== undefined) req.params = params;
    if (txn !== undefined) req.txn = txn;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => { this.pending.delete(rid); reject(new Error(`timeout: ${method}`)); }, timeout);
      this.pending.set(rid, (m) => { clearTimeout(t); resolve(m); });
      this.ws.send(JSON.stringify(req));
    });
  }

  /** Like call, but returns `result` and throws on an error reply. */
  async ok(method, params, opts) {
    const m = await this.call(method, params, opts);
    if (m.error) throw new Error(`${method} failed: ${JSON.stringify(m.error)}`);
    return m.result;
  }

  async nextFrame(predicate = () => true, timeout = 3000) {
    const start = Date.now();
    for (;;) {
      const i = this.frames.findIndex(predicate);
      if (i >= 0) return this.frames.splice(i, 1)[0];
      if (Date.now() - start > timeout) throw new Error('no matching frame');
      await sleep(5);
    }
  }

  close() { this.ws.close(); }
}

/** A CBOR RPC client (subprotocol `cbor`, binary frames), with the SDK's codec. */
const cbor = CborCodec.DEFAULT;
class CborClient {
  static async open(url) {
    const ws = new WebSocket(url, ['cbor'], { handshakeTimeout: 3000 });
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
    return new CborClient(ws);
  }

  constructor(ws) {
    this.ws = ws;
    this.nextId = 1;
    this.pending = new Map();
    this.frames = []; // {bytes, binary, msg}
    ws.on('error', () => {});
    ws.on('message', (data, binary) => {
      let msg;
      try { msg = cbor.decode(new Uint8Array(data)); } catch { msg = undefined; }
      this.frames.push({ bytes: Buffer.from(data), binary, msg });
      const p = msg && this.pending.get(msg.id);
      if (p) { this.pending.delete(msg.id); p(msg); }
    });
  }

  /** Sends raw request bytes (or an object, encoded by the SDK); resolves with the reply. */
  call(method, params, { id, raw } = {}) {
    const rid = id ?? this.nextId++;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => { this.pending.delete(rid); reject(new Error(`timeout: ${method}`)); }, 5000);
      this.pending.set(rid, (m) => { clearTimeout(t); resolve(m); });
      this.ws.send(raw ?? cbor.encode({ id: rid, method, params }), { binary: true });
    });
  }

  async ok(method, params, opts) {
    const m = await this.call(method, params, opts);
    if (m.error) throw new Error(`${method} failed: ${JSON.stringify(m.error)}`);
    return m.result;
  }

  async nextFrame(predicate = () => true, timeout = 3000) {
    const start = Date.now();
    for (;;) {
      const i = this.frames.findIndex(predicate);
      if (i >= 0) return this.frames.splice(i, 1)[0];
      if (Date.now() - start > timeout) throw new Error('no matching frame');
      await sleep(5);
    }
  }

  close() { this.ws.close(); }
}

/** CBOR bytes by hand: head(major, n), text(s). */
const cborHead = (major, n) => (n < 24 ? Buffer.from([(major << 5) | n]) : n < 256 ? Buffer.from([(major << 5) | 24, n])
  : Buffer.from([(major << 5) | 25, n >> 8, n & 255]));
const cborText = (s) => { const b = Buffer.from(s, 'utf8'); return Buffer.concat([cborHead(3, b.length), b]); };

function httpGet(port, path, { tls = false, method = 'GET', body } = {}) {
  return new Promise((resolve, reject) => {
    const mod = tls ? https : http;
    const req = mod.request({ host: '127.0.0.1', port, path, method, rejectUnauthorized: false }, (res) => {
      let data = '';
      res.on('data', (d) => { data += d; });
      res.on('end', () => resolve({ status: res.statusCode, body: data }));
    });
    req.on('error', reject);
    if (body !== undefined) req.end(typeof body === 'string' ? body : JSON.stringify(body));
    else req.end();
  });
}

const control = async (port, body) => {
  const r = await httpGet(port, '/control', { method: 'POST', body });
  if (r.status !== 200) throw new Error(`/control ${r.status} ${r.body}`);
  return JSON.parse(r.body);
};

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}
function assertEq(actual, expected, msg) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${msg}: expected ${e}, got ${a}`);
}

let passed = 0;
let failed = 0;
async function check(name, fn) {
  try {
    const note = await fn();
    passed++;
    console.log(`ok   ${name}${note ? ` — ${note}` : ''}`);
  } catch (err) {
    failed++;
    console.log(`FAIL ${name}: ${err.stack ?? err}`);
  }
}

async function signedIn(url) {
  const c = await Client.open(url);
  await c.ok('signin', [{ user: 'root', pass: 'root' }]);
  await c.ok('use', ['test', 'test']);
  return c;
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------
const srv = await startServer();
const URL_ = `ws://127.0.0.1:${srv.port}/rpc`;
console.log(`server on port ${srv.port}`);

await check('startup line is exactly LISTENING <port>', () => {
  assert(/^LISTENING \d+\n$/.test(srv.stdout()), `stdout was ${JSON.stringify(srv.stdout())}`);
  assertEq(srv.stderr(), '', 'stderr without --verbose');
});

await check('GET /health, /version, /stats, 404', async () => {
  assertEq(await httpGet(srv.port, '/health'), { status: 200, body: 'OK' }, '/health');
  const v = await httpGet(srv.port, '/version');
  assert(v.status === 200 && /^surrealdb-3\.0\.\d+$/.test(v.body), `/version ${JSON.stringify(v)}`);
  const s = await httpGet(srv.port, '/stats');
  const stats = JSON.parse(s.body);
  assert('sockets' in stats && 'totalSockets' in stats && 'requests' in stats, s.body);
  assertEq((await httpGet(srv.port, '/nope')).status, 404, '/nope');
  return v.body;
});

const a = await Client.open(URL_);

await check('subprotocol json is selected; no subprotocol is accepted too', async () => {
  assertEq(a.ws.protocol, 'json', 'protocol');
  const b = await Client.open(URL_, { protocols: [] });
  assertEq(b.ws.protocol, '', 'no protocol');
  assertEq(await b.ok('ping', []), null, 'ping');
  b.close();
});

await check('methods before signin are refused with -32002', async () => {
  for (const [m, p] of [['query', ['RETURN 1']], ['use', ['test', 'test']], ['select', ['person']], ['let', ['x', 1]]]) {
    const r = await a.call(m, p);
    assertEq(r.error?.code, -32002, `${m} code`);
    assertEq(r.error?.kind, 'NotAllowed', `${m} kind`);
  }
  assertEq(await a.ok('ping', []), null, 'ping allowed');
  assert(/^surrealdb-/.test(await a.ok('version', [])), 'version allowed');
});

await check('wrong password -> -32002 from the core', async () => {
  const r = await a.call('signin', [{ user: 'root', pass: 'wrong' }]);
  assertEq(r.error.code, -32002, 'code');
  assertEq(r.error.kind, 'NotAllowed', 'kind');
  return JSON.stringify(r.error);
});

let token;
await check('signin root/root returns a JWT; use returns ns/db', async () => {
  token = await a.ok('signin', [{ user: 'root', pass: 'root' }]);
  assert(typeof token === 'string' && token.split('.').length === 3, `token ${token}`);
  assertEq(await a.ok('use', ['test', 'test']), { database: 'test', namespace: 'test' }, 'use');
});

await check('query CREATE + SELECT; per-statement status and µ time', async () => {
  const r = await a.ok('query', ["CREATE person:tobie SET name='Tobie'; SELECT * FROM person"]);
  assertEq(r.length, 2, 'statements');
  assertEq(r.map((x) => x.status), ['OK', 'OK'], 'status');
  assertEq(r[1].result, [{ id: 'person:tobie', name: 'Tobie' }], 'select result');
  assert(r[0].time.includes('µ') || /\d(ns|ms|s)$/.test(r[0].time), `time ${r[0].time}`);
  const raw = a.frames.find((f) => f.text.includes('"time"'));
  assert(raw && /\d(µs|ns|ms|s)"/.test(raw.text), 'time text is raw UTF-8');
});

await check('select ["person:tobie"] converts the string to a record id', async () => {
  assertEq(await a.ok('select', ['person:tobie']), { id: 'person:tobie', name: 'Tobie' }, 'select');
});

await check('create ["person:1", {...}] creates record person:1, not a table "person:1"', async () => {
  assertEq(await a.ok('create', ['person:1', { a: 1 }]), { a: 1, id: 'person:1' }, 'create');
  const info = await a.ok('query', ['INFO FOR DB']);
  assertEq(Object.keys(info[0].result.tables), ['person'], 'tables');
});

await check('let + query with $var, and vars converted like a real server', async () => {
  assertEq(await a.ok('let', ['who', 'person:tobie']), null, 'let');
  const r = await a.ok('query', ['RETURN $who.name; RETURN [type::of($r), type::of($d), type::of($u), type::of($s), type::of($n), type::of($c)]', {
    r: 'person:1', d: '2024-01-01T00:00:00Z', u: '01a21cf6-1f2a-7b32-aea6-1341f0e7627c', s: 'Note: hi', n: { deep: ['person:1'] }, c: "t:[1, 'a']",
  }]);
  assertEq(r[0].result, 'Tobie', '$who.name');
  assertEq(r[1].result, ['record', 'datetime', 'uuid', 'string', 'object', 'record'], 'types');
  const nested = await a.ok('query', ['RETURN type::of($n.deep[0])', { n: { deep: ['person:1'] } }]);
  assertEq(nested[0].result, 'record', 'nested');
});

await check('record ids with escaping round-trip (core formats with backticks)', async () => {
  const rec = await a.ok('create', ['person:⟨a b⟩', { x: 1 }]);
  assertEq(rec.id, 'person:`a b`', 'id text');
  assertEq((await a.ok('select', [rec.id])).x, 1, 'select by returned id');
  const arr = await a.ok('create', ['t:[1,"a"]', {}]);
  assertEq(arr.id, "t:[1, 'a']", 'array id text');
  assertEq((await a.ok('select', [arr.id])).id, arr.id, 'select array id');
  return `${rec.id}, ${arr.id}`;
});

await check('value conversion core -> JSON', async () => {
  const r = await a.ok('query', ['RETURN { d: d"2024-01-01T00:00:00.5Z", dur: 1h30m, dec: 1.50dec, u: u"01a21cf6-1f2a-7b32-aea6-1341f0e7627c", n: NONE, s: <set>[1, 2], g: (1, 2), b: <bytes>"ab", t: type::table("x"), big: 9223372036854775807 }']);
  assertEq(r[0].result, {
    b: [97, 98], big: 9223372036854775807, d: '2024-01-01T00:00:00.500Z', dec: '1.5', dur: '1h30m',
    g: { type: 'Point', coordinates: [1, 2] }, n: null, s: [1, 2], t: 'x', u: '01a21cf6-1f2a-7b32-aea6-1341f0e7627c',
  }, 'values');
  const raw = a.frames.find((f) => f.text.includes('"big"'));
  assert(raw.text.includes('"big":9223372036854775807'), 'i64 max sent as exact digits');
});

await check('upsert, insert, insert_relation, relate, merge, patch, delete, run, info', async () => {
  assertEq(await a.ok('upsert', ['person:u', { y: 2 }]), { id: 'person:u', y: 2 }, 'upsert');
  assertEq(await a.ok('insert', ['person', [{ id: 5 }]]), [{ id: 'person:5' }], 'insert');
  const ir = await a.ok('insert_relation', ['likes', { in: 'person:1', out: 'person:tobie' }]);
  assertEq([ir[0].in, ir[0].out], ['person:1', 'person:tobie'], 'insert_relation');
  const rel = await a.ok('relate', ['person:1', 'knows', 'person:tobie', { since: 2020 }]);
  assertEq([rel.in, rel.out, rel.since], ['person:1', 'person:tobie', 2020], 'relate');
  assertEq(await a.ok('merge', ['person:5', { z: 1 }]), { id: 'person:5', z: 1 }, 'merge');
  const p = await a.ok('patch', ['person:5', [{ op: 'replace', path: '/z', value: 2 }]]);
  assertEq(p.z, 2, 'patch');
  assertEq((await a.ok('delete', ['person:5'])).id, 'person:5', 'delete');
  assertEq(await a.ok('run', ['string::len', null, ['abc']]), 3, 'run');
  assertEq(await a.ok('info', []), null, 'info (root user has no record)');
});

await check('200 concurrent sleep(50ms) queries on one socket finish in < 1 s', async () => {
  const t0 = performance.now();
  const rs = await Promise.all(Array.from({ length: 200 }, () => a.ok('query', ['sleep(50ms); RETURN 1'])));
  const ms = performance.now() - t0;
  assert(rs.every((r) => r[1].result === 1), 'results');
  assert(ms < 1000, `took ${ms.toFixed(0)} ms`);
  return `${ms.toFixed(0)} ms`;
});

await check('replies come out of order', async () => {
  const order = [];
  await Promise.all([
    a.ok('query', ['sleep(150ms); RETURN "slow"']).then(() => order.push('slow')),
    (async () => { await sleep(10); await a.ok('query', ['RETURN "fast"']); order.push('fast'); })(),
  ]);
  assertEq(order, ['fast', 'slow'], 'order');
});

await check('invalid JSON and binary frames -> parse error without id', async () => {
  a.ws.send('this is not json');
  const f = await a.nextFrame((x) => x.text.includes('-32700'));
  assertEq(JSON.parse(f.text), { error: { code: -32700, message: 'Parse error' } }, 'parse error');
  a.ws.send(Buffer.from('{"id":1}'), { binary: true });
  const g = await a.nextFrame((x) => x.text.includes('-32700'));
  assert(!('id' in JSON.parse(g.text)), 'no id');
});

await check('unknown method, SurrealQL parse error, bad params', async () => {
  const u = await a.call('no_such_method', []);
  assertEq([u.error.code, u.error.kind], [-32601, 'NotFound'], 'unknown method');
  const q = await a.call('query', ['SELEC * FROM x']);
  assertEq([q.error.code, q.error.kind], [-32000, 'Validation'], 'parse error');
  const np = await a.call('query', [1]);
  assertEq(np.error.code, -32603, 'invalid params');
  return `parse error message starts ${JSON.stringify(q.error.message.split('\n')[0])}`;
});

await check('txn is carried to the core: begin, a write inside, cancel drops it; a bad txn is refused', async () => {
  const txn = await a.ok('begin', []);
  await a.ok('query', ['DEFINE TABLE IF NOT EXISTS smoke_txn']);
  const inside = await a.ok('query', ['CREATE smoke_txn:1; SELECT * FROM smoke_txn'], { txn });
  assertEq(inside[1].result.length, 1, 'the transaction sees its own write');
  assertEq((await a.ok('query', ['SELECT * FROM smoke_txn']))[0].result.length, 0, 'others do not');
  assertEq(await a.ok('cancel', [txn]), null, 'cancel');
  assertEq((await a.ok('query', ['SELECT * FROM smoke_txn']))[0].result.length, 0, 'gone after cancel');
  const bad = await a.call('query', ['RETURN 1'], { txn: 'not-a-uuid' });
  assertEq(bad.error?.code, -32600, 'bad txn');
});

await check('use [null, "db"] is rejected (-32603) and the server survives', async () => {
  const r = await a.call('use', [null, 'test']);
  assertEq(r.error.code, -32603, 'code');
  assertEq(await a.ok('ping', []), null, 'alive');
});

await check('sessions are per socket; data is shared', async () => {
  const b = await Client.open(URL_);
  await b.ok('signin', [{ user: 'root', pass: 'root' }]);
  const noNs = await b.ok('query', ['RETURN session::ns()']);
  assertEq(noNs[0].result, null, 'fresh session: no namespace');
  await b.ok('use', ['test', 'test']);
  assertEq((await b.ok('query', ['RETURN $who']))[0].result, null, 'fresh session: no vars');
  assertEq((await b.ok('select', ['person:tobie'])).name, 'Tobie', 'shared data');
  b.close();
});

await check('invalidate/reset make the socket unauthenticated; authenticate restores', async () => {
  const b = await signedIn(URL_);
  assertEq(await b.ok('invalidate', []), null, 'invalidate');
  assertEq((await b.call('query', ['RETURN 1'])).error?.code, -32002, 'refused after invalidate');
  assertEq(await b.ok('authenticate', [token]), null, 'authenticate');
  assertEq((await b.ok('query', ['RETURN 1']))[0].result, 1, 'allowed after authenticate');
  assertEq(await b.ok('reset', []), null, 'reset');
  assertEq((await b.call('query', ['RETURN 1'])).error?.code, -32002, 'refused after reset');
  b.close();
});

await check('live query notification arrives without id on the owning socket', async () => {
  const b = await signedIn(URL_);
  const live = await a.ok('live', ['person']);
  await b.ok('create', ['person:live', { v: 1 }]);
  const f = await a.nextFrame((x) => x.text.includes('"action"'));
  const n = JSON.parse(f.text);
  assert(!('id' in n), 'no id');
  assertEq([n.result.action, n.result.id, n.result.record], ['CREATE', live, 'person:live'], 'notification');
  assert(!b.frames.some((x) => x.text.includes('"action"')), 'not on the other socket');
  await a.ok('kill', [live]);
  b.close();
});

// ---- CBOR sockets ---------------------------------------------------------

async function cborSignedIn(url) {
  const c = await CborClient.open(url);
  await c.ok('signin', [{ user: 'root', pass: 'root' }]);
  await c.ok('use', ['test', 'test']);
  return c;
}

await check('cbor: subprotocol cbor is selected; replies are binary; text frames are parse errors', async () => {
  const c = await CborClient.open(URL_);
  assertEq(c.ws.protocol, 'cbor', 'protocol');
  assert((await c.ok('ping', [])) == null, 'ping result (NONE or null)');
  assert(c.frames.every((f) => f.binary), 'binary frames');
  c.ws.send('{"id":1,"method":"ping"}');
  const f = await c.nextFrame((x) => x.msg && !('id' in x.msg));
  assertEq(f.msg.error.code, -32700, 'parse error');
  const m = await c.call('query', ['RETURN 1']);
  assertEq(m.error.code, -32002, 'refused before signin');
  c.close();
});

const TRICKY = ['person:01', 'sku:007', '2024-01-01', "d'2024-01-01T00:00:00Z'",
  'E3B0C442-98FC-1C14-9AFB-4C8996FB9242', '1h30m', 'NONE', "u'0000'", '', 'Grüße ⟨x⟩ µ', 'x'.repeat(1 << 20)];

await check('cbor: strings stay strings (variables, CRUD data, stored then read back)', async () => {
  const c = await cborSignedIn(URL_);
  const r = await c.ok('query', ['RETURN $v.map(|$s| type::is_string($s))', { v: TRICKY }]);
  assertEq(r[0].result, TRICKY.map(() => true), 'is_string');
  const created = await c.ok('create', [new RecordId('cborstr', 1), { v: TRICKY }]);
  const back = await c.ok('select', [new RecordId('cborstr', 1)]);
  for (const [i, s] of TRICKY.entries()) {
    assert(created.v[i] === s && back.v[i] === s, `string ${i} changed`);
  }
  const t = await c.ok('create', ['person:1']);
  const rec = Array.isArray(t) ? t[0] : t;
  assertEq(rec.id.table.name, 'person:1', 'a string thing is a table name over CBOR');
  c.close();
});

await check('cbor: typed values round-trip through the core', async () => {
  const c = await cborSignedIn(URL_);
  const vals = [new RecordId('person', 'tobie'), new RecordId('person', 1), new DateTime('2024-01-01T00:00:00.5Z'),
    new Uuid('0192a8f0-1111-7222-8333-444455556666'), new Decimal('1.5'), new Duration('1h30m'), new Table('person')];
  const r = await c.ok('query', ['RETURN $v', { v: vals }]);
  assertEq(r[0].result.map(String), vals.map(String), 'values');
  assertEq(r[0].result.map((x) => x.constructor.name), vals.map((x) => x.constructor.name), 'types');
  c.close();
});

await check('cbor: params reach the core byte for byte (a float64 1.0 stays a float)', async () => {
  const c = await cborSignedIn(URL_);
  const sql = 'RETURN [type::is_float($f), type::is_int($i)]';
  const req = Buffer.concat([cborHead(5, 3), cborText('id'), cborHead(0, 9), cborText('method'), cborText('query'),
    cborText('params'), cborHead(4, 2), cborText(sql), cborHead(5, 2),
    cborText('f'), Buffer.from([0xfb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]), cborText('i'), cborHead(0, 1)]);
  const m = await c.call('query', undefined, { id: 9, raw: req });
  assertEq(m.result[0].result, [true, true], 'float and int');
  c.close();
});

await check('cbor: live notification is a binary frame without id', async () => {
  const a = await cborSignedIn(URL_);
  const b = await cborSignedIn(URL_);
  await b.ok('query', ['DEFINE TABLE cborlive']);
  const live = await a.ok('live', [new Table('cborlive')]);
  await b.ok('create', [new RecordId('cborlive', 1), { v: 1 }]);
  const f = await a.nextFrame((x) => x.msg && x.msg.result && x.msg.result.action);
  assert(f.binary && !('id' in f.msg), 'binary, no id');
  assertEq([f.msg.result.action, String(f.msg.result.id)], ['CREATE', String(live)], 'notification');
  assert(!('session' in f.msg.result), 'no internal session');
  a.close();
  b.close();
});

await check('cbor: hostile malformed and wrong-id speak CBOR', async () => {
  const c = await cborSignedIn(URL_);
  await control(srv.port, { mode: 'malformed' });
  try {
    c.frames.length = 0;
    c.call('query', ['RETURN 1'], { id: 77 }).catch(() => {});
    const f = await c.nextFrame();
    assert(f.binary && f.msg === undefined, 'binary and undecodable');
    await control(srv.port, { mode: 'wrong-id' });
    c.call('query', ['RETURN 1'], { id: 78 }).catch(() => {});
    const g = await c.nextFrame((x) => x.msg !== undefined);
    assertEq(g.msg.id, 1000078, 'wrong id');
  } finally {
    await control(srv.port, { mode: 'normal' });
    c.close();
  }
});

await check('/stats counts sockets and requests', async () => {
  const s = JSON.parse((await httpGet(srv.port, '/stats')).body);
  assert(s.sockets >= 1 && s.totalSockets >= 4 && s.requests > 250, JSON.stringify(s));
  return JSON.stringify(s);
});

// ---- hostile modes, switched at runtime ----------------------------------

async function inMode(mode, fn) {
  const c = await signedIn(URL_);
  await control(srv.port, { mode });
  c.frames.length = 0; // forget the set-up replies
  try {
    return await fn(c);
  } finally {
    await control(srv.port, { mode: 'normal' });
    c.close();
  }
}

await check('mode malformed: query answered with {"id":N,"result":[', () => inMode('malformed', async (c) => {
  await c.ok('ping', []);
  c.frames.length = 0;
  c.call('query', ['RETURN 1'], { id: 77 }).catch(() => {});
  const f = await c.nextFrame();
  assertEq(f.text, '{"id":77,"result":[', 'frame');
}));

await check('mode truncate: half a frame, then the connection dies', () => inMode('truncate', async (c) => {
  c.call('query', ['RETURN 1']).catch(() => {});
  const code = await Promise.race([c.closed, sleep(3000).then(() => 'timeout')]);
  assert(code !== 'timeout', 'socket not closed');
  assertEq(c.frames.length, 0, 'no complete frame');
}));

await check('mode wrong-id: id + 1000000', () => inMode('wrong-id', async (c) => {
  c.call('query', ['RETURN 1'], { id: 5 }).catch(() => {});
  const f = await c.nextFrame();
  assertEq(JSON.parse(f.text).id, 1000005, 'id');
}));

await check('mode duplicate-id: two replies', () => inMode('duplicate-id', async (c) => {
  await c.ok('query', ['RETURN 1'], { id: 9 });
  await sleep(100);
  assertEq(c.frames.filter((f) => JSON.parse(f.text).id === 9).length, 2, 'copies');
}));

await check('mode no-id: error frame without id', () => inMode('no-id', async (c) => {
  c.call('query', ['RETURN 1']).catch(() => {});
  const m = JSON.parse((await c.nextFrame()).text);
  assert(!('id' in m) && m.error, JSON.stringify(m));
}));

await check('mode binary: reply in a binary frame', () => inMode('binary', async (c) => {
  const r = await c.ok('query', ['RETURN 1']);
  assertEq(r[0].result, 1, 'result');
  assert(c.frames.some((f) => f.binary), 'binary frame');
}));

await check('mode huge: 80 MiB string result', () => inMode('huge', async (c) => {
  const r = await c.ok('query', ['RETURN 1'], { timeout: 20000 });
  assertEq(r.length, 80 * 1024 * 1024, 'length');
}));

await check('mode slow: query never answered, setup methods are', () => inMode('slow', async (c) => {
  const q = c.call('query', ['RETURN 1'], { timeout: 400 });
  assertEq(await c.ok('ping', []), null, 'ping');
  assertEq(await c.ok('let', ['x', 1]), null, 'let');
  await q.then(() => { throw new Error('answered'); }, () => {});
}));

await check('mode close-mid-reply: first fragment, then the connection dies', () => inMode('close-mid-reply', async (c) => {
  c.call('query', ['RETURN 1']).catch(() => {});
  const code = await Promise.race([c.closed, sleep(3000).then(() => 'timeout')]);
  assert(code !== 'timeout', 'socket not closed');
  assertEq(c.frames.length, 0, 'no complete message');
}));

await check('mode no-upgrade: HTTP works, the upgrade is never answered', async () => {
  await control(srv.port, { mode: 'no-upgrade' });
  try {
    const t0 = Date.now();
    const err = await Client.open(URL_, { handshakeTimeout: 500 }).then(() => null, (e) => e);
    assert(err && Date.now() - t0 >= 450, `upgrade should hang (${err})`);
    assertEq((await httpGet(srv.port, '/health')).status, 200, '/health');
  } finally {
    await control(srv.port, { mode: 'normal' });
  }
});

await check('mode refuse (forMs): TCP closed on accept, then back to normal', async () => {
  await control(srv.port, { mode: 'refuse', forMs: 400 });
  const err = await Client.open(URL_).then((c) => { c.close(); return null; }, (e) => e);
  assert(err, 'connection should fail');
  await sleep(500);
  const c = await Client.open(URL_);
  assertEq(await c.ok('ping', []), null, 'ping after revert');
  c.close();
  return err.code ?? err.message;
});

await check('SIGUSR2 resets fault settings (way back from refuse)', async () => {
  await control(srv.port, { mode: 'refuse' });
  srv.proc.kill('SIGUSR2');
  await sleep(100);
  const s = JSON.parse((await httpGet(srv.port, '/control')).body);
  assertEq(s.mode, 'normal', 'mode');
});

await check('delayMs delays replies', async () => {
  const c = await signedIn(URL_);
  await control(srv.port, { delayMs: 200 });
  const t0 = Date.now();
  await c.ok('ping', []);
  const ms = Date.now() - t0;
  await control(srv.port, { delayMs: 0 });
  c.close();
  assert(ms >= 190, `took ${ms} ms`);
  return `${ms} ms`;
});

await check('dropEvery terminates the socket on every Nth request', async () => {
  const c = await Client.open(URL_);
  await control(srv.port, { dropEvery: 1 });
  c.call('ping', [], { timeout: 1000 }).catch(() => {});
  const code = await Promise.race([c.closed, sleep(2000).then(() => 'timeout')]);
  await control(srv.port, { dropEvery: 0 });
  assertEq(code, 1006, 'abnormal close');
});

await check('maxConns refuses extra upgrades with 503', async () => {
  const s = JSON.parse((await httpGet(srv.port, '/stats')).body);
  await control(srv.port, { maxConns: s.sockets });
  try {
    const err = await Client.open(URL_).then((c) => { c.close(); return null; }, (e) => e);
    assertEq(err?.status, 503, 'status');
  } finally {
    await control(srv.port, { maxConns: 0 });
  }
});

await check('/control rejects unknown modes', async () => {
  const r = await httpGet(srv.port, '/control', { method: 'POST', body: { mode: 'bogus' } });
  assertEq(r.status, 400, 'status');
});

a.close();

await check('CLI: non-loopback --host is refused', async () => {
  const r = await startServer(['--host', '0.0.0.0'], { expectFail: true });
  assertEq(r.code, 2, 'exit code');
  assertEq(r.stdout, '', 'stdout');
});

await check('CLI: custom --user/--pass and --mode at start', async () => {
  const s2 = await startServer(['--user', 'admin', '--pass', "it's", '--mode', 'slow']);
  try {
    const c = await Client.open(`ws://127.0.0.1:${s2.port}/rpc`);
    assertEq((await c.call('signin', [{ user: 'root', pass: 'root' }])).error?.code, -32002, 'root refused');
    assert(typeof await c.ok('signin', [{ user: 'admin', pass: "it's" }]) === 'string', 'admin signin');
    await c.call('query', ['RETURN 1'], { timeout: 300 }).then(() => { throw new Error('slow answered'); }, () => {});
    c.close();
  } finally {
    await s2.stop();
  }
});

await check('TLS: wss and https with a throwaway self-signed cert', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'surpool-tls-'));
  try {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=localhost',
      '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
    const s3 = await startServer(['--tls-cert', join(dir, 'cert.pem'), '--tls-key', join(dir, 'key.pem')]);
    try {
      assertEq((await httpGet(s3.port, '/health', { tls: true })).body, 'OK', 'https /health');
      const c = await Client.open(`wss://127.0.0.1:${s3.port}/rpc`, { rejectUnauthorized: false });
      await c.ok('signin', [{ user: 'root', pass: 'root' }]);
      assertEq(await c.ok('ping', []), null, 'wss ping');
      c.close();
    } finally {
      await s3.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

await check('exits when stdin closes (--exit-on-stdin-close)', async () => {
  const s4 = await startServer();
  s4.proc.stdin.end();
  const r = await Promise.race([s4.exited, sleep(5000).then(() => null)]);
  assert(r, 'did not exit');
  assertEq(r.code, 0, 'exit code');
});

await check('SIGTERM with open sockets: exit code 0, nothing else on stdout', async () => {
  const c = await Client.open(URL_);
  const t0 = Date.now();
  const r = await srv.stop();
  assertEq(r.code, 0, 'exit code');
  assert(/^LISTENING \d+\n$/.test(srv.stdout()), `stdout ${JSON.stringify(srv.stdout())}`);
  await Promise.race([c.closed, sleep(2000)]);
  return `${Date.now() - t0} ms`;
});

console.log(`\nsmoke: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
