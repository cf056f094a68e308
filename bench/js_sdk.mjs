#!/usr/bin/env node
// The official SurrealDB JavaScript SDK (`surrealdb` 2.0.8, the copy pinned in
// tests/server/package-lock.json) under the same load as bench_throughput and
// bench_burst, so that surpool's shared lane can be compared with it.
//
// The SDK's WebSocket engine only speaks CBOR: WebSocketEngine.createSocket()
// opens the socket with the fixed subprotocol "cbor", and send()/the message
// handler always use context.codecs.cbor with binary frames (the `json` codec
// and the `.json()` query option only reshape results after decoding). There is
// no option to make it send JSON. tests/server/server.mjs speaks JSON only, so
// this runs against bench/cbor_server.mjs: the same embedded core behind a CBOR
// endpoint (or, with --null there, canned replies).
//
//   node bench/js_sdk.mjs --url ws://127.0.0.1:PORT/rpc --server LABEL
//        [--conc 1,8,64,512] [--duration-ms 800] [--warmup-ms 200]
//        [--bursts 100,200,1000 --sleeps 20,50] [--no-burst] [--no-throughput]
//
// impls (one JSON line per measurement on stdout, progress on stderr):
//   sdk-1sock  one Surreal instance (one socket), `concurrency` queries in flight
//   sdk-Nsock  N = min(concurrency, 32) instances, round robin
//   raw-cbor   no SDK: a bare `ws` socket with the SDK's own CborCodec,
//              pipelined — the floor the SDK is judged against on this server
// CPU per request is process.cpuUsage() (user + sys) over the measured window.
import { parseArgs } from 'node:util';

const SERVER_DIR = new URL('../tests/server/', import.meta.url);
const { Surreal, CborCodec } = await import(
  new URL('node_modules/surrealdb/dist/surrealdb.server.mjs', SERVER_DIR).href);
const { default: WebSocket } = await import(new URL('node_modules/ws/wrapper.mjs', SERVER_DIR).href);

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    server: { type: 'string', default: 'real' },
    conc: { type: 'string', default: '1,8,64,512' },
    'duration-ms': { type: 'string', default: '800' },
    'warmup-ms': { type: 'string', default: '200' },
    bursts: { type: 'string', default: '100,200,1000' },
    sleeps: { type: 'string', default: '20,50' },
    'no-burst': { type: 'boolean', default: false },
    'no-throughput': { type: 'boolean', default: false },
    user: { type: 'string', default: 'root' },
    pass: { type: 'string', default: 'root' },
    ns: { type: 'string', default: 'bench' },
    db: { type: 'string', default: 'bench' },
  },
  strict: true,
});
if (!args.url) {
  process.stderr.write('usage: js_sdk.mjs --url ws://127.0.0.1:PORT/rpc --server real|null\n');
  process.exit(2);
}
const ints = (s) => s.split(',').filter(Boolean).map(Number);
const CONC = ints(args.conc);
const DURATION = Number(args['duration-ms']);
const WARMUP = Number(args['warmup-ms']);
const SQL = 'RETURN 1';
const log = (...a) => process.stderr.write(`js_sdk: ${a.join(' ')}\n`);
const emit = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const nowNs = () => process.hrtime.bigint();

function percentile(sorted, q) {
  if (sorted.length === 0) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

async function sdkConnect() {
  // Node 20 has no global WebSocket: the SDK takes an implementation (the `ws`
  // package, as its docs suggest for Node < 22).
  const db = new Surreal({ websocketImpl: WebSocket });
  await db.connect(args.url, {
    namespace: args.ns,
    database: args.db,
    authentication: { username: args.user, password: args.pass },
    reconnect: false,
  });
  return db;
}

// A bare pipelined CBOR client with the SDK's codec: no SDK machinery.
async function rawConnect() {
  const codec = CborCodec.DEFAULT;
  const ws = new WebSocket(args.url, 'cbor');
  ws.binaryType = 'nodebuffer';
  const pending = new Map();
  let nextId = 0;
  ws.on('message', (data) => {
    const msg = codec.decode(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    const p = pending.get(msg.id);
    if (p) {
      pending.delete(msg.id);
      if (msg.error) p.reject(new Error(msg.error.message));
      else p.resolve(msg.result);
    }
  });
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  const call = (method, params) => new Promise((resolve, reject) => {
    const id = String(++nextId);
    pending.set(id, { resolve, reject });
    ws.send(codec.encode({ id, method, params }));
  });
  await call('signin', [{ user: args.user, pass: args.pass }]);
  await call('use', [args.ns, args.db]);
  return { query: (sql) => call('query', [sql]), close: () => ws.close() };
}

// `concurrency` async workers, each awaiting one query at a time on
// clients[i % clients.length]; measure a window after a warm-up.
async function throughput(impl, clients, conc, query) {
  const state = { phase: 0, ops: 0, errors: 0, lat: [] };
  const worker = async (i) => {
    const c = clients[i % clients.length];
    while (state.phase !== 2) {
      const t0 = nowNs();
      let ok = true;
      try {
        await query(c);
      } catch {
        ok = false;
      }
      if (!ok) state.errors++;
      if (state.phase === 1) {
        state.ops++;
        state.lat.push(Number(nowNs() - t0));
      }
    }
  };
  const workers = Array.from({ length: conc }, (_, i) => worker(i));
  await sleep(WARMUP);
  const cpu0 = process.cpuUsage();
  const t0 = nowNs();
  state.phase = 1;
  await sleep(DURATION);
  state.phase = 2;
  const t1 = nowNs();
  const cpu = process.cpuUsage(cpu0);
  const ops = state.ops;
  await Promise.all(workers);
  const lat = state.lat.sort((a, b) => a - b);
  emit({
    bench: 'throughput',
    server: args.server,
    wire: 'cbor',
    impl,
    concurrency: conc,
    conns: clients.length,
    ops_per_s: ops / (Number(t1 - t0) / 1e9),
    p50_ns: percentile(lat, 0.5),
    p99_ns: percentile(lat, 0.99),
    cpu_us_per_req: ops > 0 ? (cpu.user + cpu.system) / ops : null,
    requests: ops,
    errors: state.errors,
  });
}

async function burst(impl, client, query, B, X) {
  const sql = `sleep(${X}ms)`;
  const t0 = nowNs();
  const results = await Promise.allSettled(Array.from({ length: B }, () => query(client, sql)));
  const wall = Number(nowNs() - t0) / 1e6;
  emit({
    bench: 'burst',
    server: args.server,
    wire: 'cbor',
    impl,
    B,
    M: 1,
    X_ms: X,
    wall_ms: wall,
    ideal_ms: X,
    ratio: wall / X,
    ratio_x: wall / X,
    errors: results.filter((r) => r.status === 'rejected').length,
  });
}

const sdkQuery = (db, sql = SQL) => db.query(sql);
const rawQuery = (c, sql = SQL) => c.query(sql);

// JIT warm-up (not measured): the first measurement should not pay for it.
{
  const db = await sdkConnect();
  const raw = await rawConnect();
  for (let i = 0; i < 100; i++) {
    await Promise.all(Array.from({ length: 8 }, () => Promise.all([sdkQuery(db), rawQuery(raw)])));
  }
  await db.close();
  raw.close();
}

if (!args['no-throughput']) {
  for (const conc of CONC) {
    log(`${args.server} sdk-1sock c=${conc}`);
    const one = await sdkConnect();
    await throughput('sdk-1sock', [one], conc, sdkQuery);
    await one.close();

    const n = Math.min(conc, 32);
    log(`${args.server} sdk-Nsock c=${conc} N=${n}`);
    const many = await Promise.all(Array.from({ length: n }, sdkConnect));
    await throughput('sdk-Nsock', many, conc, sdkQuery);
    await Promise.all(many.map((db) => db.close()));

    log(`${args.server} raw-cbor c=${conc}`);
    const raw = await rawConnect();
    await throughput('raw-cbor', [raw], conc, rawQuery);
    raw.close();
  }
}
if (!args['no-burst']) {
  const db = await sdkConnect();
  const raw = await rawConnect();
  await sdkQuery(db);
  for (const X of ints(args.sleeps)) {
    for (const B of ints(args.bursts)) {
      log(`burst sdk B=${B} X=${X}`);
      await burst('sdk', db, sdkQuery, B, X);
      log(`burst raw-cbor B=${B} X=${X}`);
      await burst('raw-cbor', raw, rawQuery, B, X);
    }
  }
  await db.close();
  raw.close();
}
process.exit(0);
