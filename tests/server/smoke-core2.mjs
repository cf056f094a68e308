#!/usr/bin/env node
// Self-test of the test server's 2.x mode (`server.mjs --core 2`):
// `node smoke-core2.mjs` or `node smoke.mjs --core 2` (exit 0 = all good).
// Prints one line per check and `N passed, N failed` at the end. The 3.x
// checks, the hostile modes and the CLI are in smoke.mjs (they do not depend
// on the core); this file checks what differs on 2.x.

import { spawn } from 'node:child_process';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import http from 'node:http';
import WebSocket from 'ws';

const HERE = dirname(fileURLToPath(import.meta.url));
const SERVER = join(HERE, 'server.mjs');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function startServer(extraArgs = []) {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [SERVER, '--core', '2', '--port', '0', '--exit-on-stdin-close', ...extraArgs], {
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const exited = new Promise((r) => proc.on('exit', (code, signal) => r({ code, signal })));
    const timer = setTimeout(() => reject(new Error(`server did not start: ${stderr}`)), 30000);
    proc.stderr.on('data', (d) => { stderr += d; });
    proc.stdout.on('data', (d) => {
      stdout += d;
      const m = /^LISTENING (\d+)\n/.exec(stdout);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, port: Number(m[1]), exited, stdout: () => stdout, stderr: () => stderr,
          stop: async () => { proc.kill('SIGTERM'); return exited; } });
      }
    });
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`server exited early with ${code}: ${stderr}`)); });
  });
}

class Client {
  static async open(url) {
    const ws = new WebSocket(url, ['json'], { handshakeTimeout: 3000 });
    await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
    return new Client(ws);
  }

  constructor(ws) {
    this.ws = ws;
    this.nextId = 1;
    this.pending = new Map();
    this.frames = [];
    ws.on('error', () => {});
    ws.on('message', (data) => {
      const text = data.toString('utf8');
      this.frames.push(text);
      let msg;
      try { msg = JSON.parse(text); } catch { return; }
      const p = this.pending.get(msg.id);
      if (p) { this.pending.delete(msg.id); p(msg); }
    });
  }

  call(method, params, { timeout = 10000 } = {}) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => { this.pending.delete(id); reject(new Error(`timeout: ${method}`)); }, timeout);
      this.pending.set(id, (m) => { clearTimeout(t); resolve(m); });
      this.ws.send(JSON.stringify(params === undefined ? { id, method } : { id, method, params }));
    });
  }

  async ok(method, params, opts) {
    const m = await this.call(method, params, opts);
    if (m.error) throw new Error(`${method} failed: ${JSON.stringify(m.error)}`);
    return m.result;
  }

  async nextFrame(predicate, timeout = 3000) {
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

function httpGet(port, path) {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    }).on('error', reject);
  });
}

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

const AUTH_FAILED = { code: -32000, message: 'There was a problem with the database: There was a problem with authentication' };
const NOT_ALLOWED = { code: -32000, message: 'There was a problem with the database: IAM error: Not enough permissions to perform this action' };
const NOT_FOUND = { code: -32601, message: 'Method not found' };

async function signedIn(url, ns = 'test', db = 'test') {
  const c = await Client.open(url);
  await c.ok('signin', [{ user: 'root', pass: 'root' }]);
  await c.ok('use', [ns, db]);
  return c;
}

// ---------------------------------------------------------------------------
const srv = await startServer();
const URL_ = `ws://127.0.0.1:${srv.port}/rpc`;
console.log(`server (--core 2) on port ${srv.port}`);

await check('startup: LISTENING line only; /version and the version RPC say surrealdb-2.6.0', async () => {
  assert(/^LISTENING \d+\n$/.test(srv.stdout()), `stdout ${JSON.stringify(srv.stdout())}`);
  assertEq(srv.stderr(), '', 'stderr without --verbose');
  assertEq(await httpGet(srv.port, '/version'), { status: 200, body: 'surrealdb-2.6.0' }, '/version');
  const c = await Client.open(URL_);
  assertEq(await c.ok('version', []), 'surrealdb-2.6.0', 'version');
  c.close();
});

const a = await Client.open(URL_);

await check('methods before signin are refused like a 2.x server refuses guests (-32000, no kind)', async () => {
  for (const [m, p] of [['query', ['RETURN 1']], ['use', ['test', 'test']], ['select', ['person']]]) {
    assertEq((await a.call(m, p)).error, NOT_ALLOWED, m);
  }
  assertEq(await a.ok('ping', []), null, 'ping allowed');
});

await check('wrong password -> the core\'s 2.x error', async () => {
  assertEq((await a.call('signin', [{ user: 'root', pass: 'wrong' }])).error, AUTH_FAILED, 'error');
});

let token;
await check('signin returns a JWT; use returns null (2.x)', async () => {
  token = await a.ok('signin', [{ user: 'root', pass: 'root' }]);
  assert(typeof token === 'string' && token.split('.').length === 3, `token ${token}`);
  assertEq(await a.ok('use', ['test', 'test']), null, 'use');
});

await check('query: per-statement {result, status, time} (no `type` on 2.x)', async () => {
  const r = await a.ok('query', ["CREATE person:tobie SET name='Tobie'; SELECT * FROM person; THROW 'boom'"]);
  assertEq(r.map((x) => x.status), ['OK', 'OK', 'ERR'], 'status');
  assertEq(Object.keys(r[1]).sort(), ['result', 'status', 'time'], 'keys');
  assertEq(r[1].result, [{ id: 'person:tobie', name: 'Tobie' }], 'select');
  assertEq(r[2].result, 'An error occurred: boom', 'ERR text');
});

await check('JSON strings that are record ids / datetimes / uuids are converted (2.x JSON)', async () => {
  assertEq(await a.ok('select', ['person:tobie']), { id: 'person:tobie', name: 'Tobie' }, 'select');
  assertEq(await a.ok('create', ['person:1', { a: 1 }]), { a: 1, id: 'person:1' }, 'create');
  assertEq(await a.ok('let', ['who', 'person:tobie']), null, 'let');
  const r = await a.ok('query', ['RETURN $who.name; RETURN [type::is::record($r), type::is::datetime($d), type::is::uuid($u), type::is::string($s)]', {
    r: 'person:1', d: '2024-01-01T00:00:00Z', u: '01a21cf6-1f2a-7b32-aea6-1341f0e7627c', s: 'Note: hi',
  }]);
  assertEq(r[0].result, 'Tobie', '$who.name');
  assertEq(r[1].result, [true, true, true, true], 'types');
});

await check('record ids in JSON are formatted like the 2.6 core\'s own <string> casts', async () => {
  const ids = ['person:⟨a b⟩', 'person:⟨1⟩', "t:[1, 'a']", "t:{ a: 1, `b c`: 's' }", '`a-b`:x', "t:u'01a21cf6-1f2a-7b32-aea6-1341f0e7627c'"];
  const r = await a.ok('query', [`RETURN [${ids.join(', ')}]; RETURN [${ids.map((i) => `<string> ${i}`).join(', ')}]`]);
  assertEq(r[0].result, r[1].result, 'JSON text = core text');
  const rec = await a.ok('create', ['person:⟨a b⟩', { x: 1 }]);
  assertEq((await a.ok('select', [rec.id])).x, 1, 'select by the returned id');
  return r[1].result.join('  ');
});

await check('value conversion core -> JSON', async () => {
  const r = await a.ok('query', ['RETURN { d: d"2024-01-01T00:00:00.5Z", dur: 1h30m, dec: 1.50dec, u: u"01a21cf6-1f2a-7b32-aea6-1341f0e7627c", n: NONE, s: <set>[1, 2], g: (1, 2), b: <bytes>"ab", big: 9223372036854775807 }']);
  assertEq(r[0].result, {
    b: [97, 98], big: 9223372036854775807, d: '2024-01-01T00:00:00.500Z', dec: '1.5', dur: '1h30m',
    g: { type: 'Point', coordinates: [1, 2] }, n: null, s: [1, 2], u: '01a21cf6-1f2a-7b32-aea6-1341f0e7627c',
  }, 'values');
});

await check('upsert, insert, insert_relation, relate, merge, patch, delete, run, info', async () => {
  assertEq(await a.ok('upsert', ['person:u', { y: 2 }]), { id: 'person:u', y: 2 }, 'upsert');
  assertEq(await a.ok('insert', ['person', [{ id: 5 }]]), [{ id: 'person:5' }], 'insert');
  const ir = await a.ok('insert_relation', ['likes', { in: 'person:1', out: 'person:tobie' }]);
  assertEq([ir[0].in, ir[0].out], ['person:1', 'person:tobie'], 'insert_relation');
  const rel = await a.ok('relate', ['person:1', 'knows', 'person:tobie', { since: 2020 }]);
  assertEq([rel.in, rel.out, rel.since], ['person:1', 'person:tobie', 2020], 'relate');
  assertEq(await a.ok('merge', ['person:5', { z: 1 }]), { id: 'person:5', z: 1 }, 'merge');
  assertEq((await a.ok('patch', ['person:5', [{ op: 'replace', path: '/z', value: 2 }]])).z, 2, 'patch');
  assertEq((await a.ok('delete', ['person:5'])).id, 'person:5', 'delete');
  assertEq(await a.ok('run', ['string::len', null, ['abc']]), 3, 'run');
  assertEq(await a.ok('info', []), null, 'info');
});

await check('3.x-only methods and unknown methods: -32601 Method not found', async () => {
  for (const m of ['attach', 'detach', 'sessions', 'begin', 'commit', 'cancel', 'no_such_method']) {
    assertEq((await a.call(m, [])).error, NOT_FOUND, m);
  }
});

await check('SurrealQL parse error -32000 (message only), bad params -32602', async () => {
  const q = await a.call('query', ['SELEC * FROM x']);
  assertEq(q.error.code, -32000, 'parse error code');
  assert(q.error.message.startsWith('There was a problem with the database: Parse error'), q.error.message);
  assertEq(Object.keys(q.error), ['code', 'message'], 'no kind');
  assertEq((await a.call('query', [1])).error, { code: -32602, message: 'Invalid params' }, 'query [1]');
  assertEq((await a.call('query', 'x')).error, { code: -32602, message: 'Invalid params' }, 'params not an array');
  // `sleep(50ms); RETURN 1` (3.x) parses as a SLEEP statement on 2.x and fails.
  assertEq((await a.call('query', ['sleep(1ms); RETURN 1'])).error?.code, -32000, 'statement sleep(...)');
  return q.error.message.split('\n')[0];
});

await check('use [null, "db"] clears the namespace (2.x does not panic)', async () => {
  const b = await signedIn(URL_);
  assertEq(await b.ok('use', [null, 'test']), null, 'use');
  assertEq((await b.ok('query', ['RETURN [session::ns(), session::db()]']))[0].result, [null, 'test'], 'ns/db');
  b.close();
});

await check('per-socket state: auth, ns/db and variables stay per socket while requests interleave', async () => {
  const b = await signedIn(URL_, 'other', 'odb');
  const c = await Client.open(URL_); // never signs in
  await a.ok('let', ['x', 'from a']);
  await b.ok('let', ['x', 'from b']);
  await b.ok('let', ['y', 1]);
  const q = 'RETURN [session::ns(), session::db(), $x, $y]';
  for (let i = 0; i < 3; i++) {
    const [ra, rb, rc] = await Promise.all([a.ok('query', [q]), b.ok('query', [q]), c.call('query', [q])]);
    assertEq(ra[0].result, ['test', 'test', 'from a', null], 'a');
    assertEq(rb[0].result, ['other', 'odb', 'from b', 1], 'b');
    assertEq(rc.error, NOT_ALLOWED, 'c is not signed in');
  }
  await b.ok('unset', ['x']);
  assertEq((await a.ok('query', ['RETURN $x']))[0].result, 'from a', 'unset on b leaves a');
  assertEq((await b.ok('query', ['RETURN [$x, $y]']))[0].result, [null, 1], 'b after unset');
  const fresh = await Client.open(URL_);
  await fresh.ok('signin', [{ user: 'root', pass: 'root' }]);
  assertEq((await fresh.ok('query', ['RETURN session::ns()']))[0].result, null, 'a new socket has no namespace');
  await fresh.ok('use', ['test', 'test']);
  assertEq((await fresh.ok('query', ['RETURN $x']))[0].result, null, 'a new socket has no variables');
  assertEq((await fresh.ok('query', ['SELECT VALUE name FROM person:tobie']))[0].result, ['Tobie'], 'data is shared');
  for (const s of [b, c, fresh]) s.close();
});

await check('record access users keep their own $auth per socket', async () => {
  await a.ok('query', [
    'DEFINE ACCESS acc ON DATABASE TYPE RECORD ' +
    'SIGNUP (CREATE user SET name = $name) SIGNIN (SELECT * FROM user WHERE name = $name); ' +
    'DEFINE TABLE secret PERMISSIONS FOR select WHERE owner = $auth.id; ' +
    "CREATE secret:1 SET owner = user:⟨u1⟩; CREATE secret:2 SET owner = user:⟨u2⟩; " +
    "CREATE user:⟨u1⟩ SET name = 'u1'; CREATE user:⟨u2⟩ SET name = 'u2'"]);
  const users = [];
  for (const name of ['u1', 'u2']) {
    const c = await Client.open(URL_);
    const tok = await c.ok('signin', [{ ns: 'test', db: 'test', ac: 'acc', name }]);
    assert(typeof tok === 'string', 'token');
    users.push(c);
  }
  for (let i = 0; i < 3; i++) {
    const rs = await Promise.all(users.map((c) => c.ok('query', ['RETURN [$auth, session::ns(), (SELECT VALUE id FROM secret)]'])));
    assertEq(rs.map((r) => r[0].result), [['user:u1', 'test', ['secret:1']], ['user:u2', 'test', ['secret:2']]], 'per-socket auth');
  }
  for (const c of users) c.close();
});

await check('invalidate/reset make the socket unauthenticated; reset clears ns and vars; authenticate restores', async () => {
  const b = await signedIn(URL_);
  await b.ok('let', ['v', 1]);
  assertEq(await b.ok('invalidate', []), null, 'invalidate');
  assertEq((await b.call('query', ['RETURN 1'])).error, NOT_ALLOWED, 'refused after invalidate');
  assertEq((await a.ok('query', ['RETURN 1']))[0].result, 1, 'other socket unaffected');
  assertEq(await b.ok('authenticate', [token]), null, 'authenticate');
  assertEq((await b.ok('query', ['RETURN [session::ns(), $v]']))[0].result, ['test', 1], 'ns and vars kept');
  assertEq(await b.ok('reset', []), null, 'reset');
  assertEq((await b.call('query', ['RETURN 1'])).error, NOT_ALLOWED, 'refused after reset');
  await b.ok('authenticate', [token]);
  assertEq((await b.ok('query', ['RETURN session::ns()']))[0].result, null, 'reset cleared the namespace');
  await b.ok('use', ['test', 'test']);
  assertEq((await b.ok('query', ['RETURN $v']))[0].result, null, 'reset cleared the variables');
  assertEq((await b.call('authenticate', ['garbage'])).error, AUTH_FAILED, 'bad token');
  b.close();
});

await check('live query notifications go to the owning socket only', async () => {
  const b = await signedIn(URL_);
  const live = await a.ok('live', ['person']);
  const [q] = await b.ok('query', ['LIVE SELECT * FROM person']);
  await b.ok('create', ['person:live', { v: 1 }]);
  const fa = JSON.parse(await a.nextFrame((x) => x.includes('"action"')));
  assert(!('id' in fa), 'no id');
  assertEq([fa.result.action, fa.result.id, fa.result.record], ['CREATE', live, 'person:live'], 'a');
  const fb = JSON.parse(await b.nextFrame((x) => x.includes('"action"')));
  assertEq(fb.result.id, q.result, 'b gets its LIVE SELECT');
  await sleep(50);
  assert(!a.frames.some((x) => x.includes(q.result)), 'b\'s notification not on a');
  await a.ok('kill', [live]);
  b.close();
  await sleep(100); // b's live query is killed when it closes
  await a.ok('create', ['person:after', {}]);
  await sleep(100);
  assert(!a.frames.some((x) => x.includes('"action"')), 'nothing after kill');
});

await check('requests are serialized: SLEEP on one socket delays the others, nothing crashes', async () => {
  const b = await signedIn(URL_);
  const t0 = performance.now();
  const slow = a.ok('query', ['SLEEP 150ms; RETURN "slow"']);
  await sleep(10);
  const fast = await b.ok('query', ['RETURN "fast"']);
  const msFast = performance.now() - t0;
  assertEq((await slow)[1].result, 'slow', 'slow');
  assertEq(fast[0].result, 'fast', 'fast');
  assert(msFast >= 140, `fast reply after ${msFast.toFixed(0)} ms`);
  const rs = await Promise.all([a, b].map((c) => c.ok('query', ['SLEEP 20ms; RETURN 1'])));
  assert(rs.every((r) => r[1].result === 1), 'concurrent SLEEPs');
  b.close();
  return `a reply queued behind SLEEP 150ms came after ${msFast.toFixed(0)} ms`;
});

await check('cost of the per-socket state: 1000 × RETURN 1, one socket and 10 sockets interleaved', async () => {
  let t0 = performance.now();
  for (let i = 0; i < 1000; i++) await a.ok('query', ['RETURN 1']);
  const one = performance.now() - t0;
  const cs = [];
  for (let i = 0; i < 10; i++) cs.push(await signedIn(URL_));
  for (let i = 0; i < 10; i++) await cs[i].ok('let', ['me', i]);
  t0 = performance.now();
  for (let i = 0; i < 1000; i++) {
    const r = await cs[i % 10].ok('query', ['RETURN $me']);
    if (r[0].result !== i % 10) throw new Error(`socket ${i % 10} saw $me = ${r[0].result}`);
  }
  const ten = performance.now() - t0;
  for (const c of cs) c.close();
  return `one socket ${one.toFixed(0)} ms, 10 interleaved ${ten.toFixed(0)} ms`;
});

await check('SIGTERM: exit code 0', async () => {
  a.close();
  const r = await srv.stop();
  assertEq(r.code, 0, 'exit code');
});

console.log(`\nsmoke (--core 2): ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
