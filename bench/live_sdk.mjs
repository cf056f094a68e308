#!/usr/bin/env node
// The official SurrealDB JavaScript SDK's live queries (`surrealdb` 2.0.8, the
// copy in tests/server/node_modules) under the same load as bench/bench_live.c,
// on the same server (tests/server/server.mjs; the SDK speaks CBOR only).
//
//   node bench/live_sdk.mjs --url ws://127.0.0.1:PORT/rpc [--samples 500]
//        [--fanout 1,100] [--notifications 20000]
//
// latency:    one writer (a second Surreal instance, as surpool writes on its
//             lane and listens on another socket) creates a record and waits
//             for its notification before the next: write sent -> handler
//             entered, p50/p99 in microseconds.
// throughput: `fanout` live queries on one table, ONE statement creating
//             notifications/fanout records; notifications handled per second
//             from the write being sent to the last handler call, and CPU per
//             notification (process.cpuUsage()).
// One JSON line per measurement on stdout (the same fields as bench_live).
import { parseArgs } from 'node:util';

const SERVER_DIR = new URL('../tests/server/', import.meta.url);
const { Surreal, Table } = await import(
  new URL('node_modules/surrealdb/dist/surrealdb.server.mjs', SERVER_DIR).href);
const { default: WebSocket } = await import(new URL('node_modules/ws/wrapper.mjs', SERVER_DIR).href);

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    samples: { type: 'string', default: '500' },
    fanout: { type: 'string', default: '1,100' },
    notifications: { type: 'string', default: '20000' },
  },
  strict: true,
});
if (!args.url) {
  process.stderr.write('usage: live_sdk.mjs --url ws://127.0.0.1:PORT/rpc\n');
  process.exit(2);
}
const log = (...a) => process.stderr.write(`live_sdk: ${a.join(' ')}\n`);
const emit = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
const nowNs = () => process.hrtime.bigint();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Frames the listener's socket received (notifications + replies): tells the
// SDK's losses apart from the server's.
let rawFrames = 0;
let lastFrameNs = 0n;
class CountingWebSocket extends WebSocket {
  constructor(...a) {
    super(...a);
    this.on('message', () => { rawFrames++; lastFrameNs = nowNs(); });
  }
}

async function connect(counting) {
  // Sign in before `use`: the test server, like a server started with
  // credentials, refuses everything else on an unauthenticated socket.
  const db = new Surreal({ websocketImpl: counting ? CountingWebSocket : WebSocket });
  await db.connect(args.url, { reconnect: false });
  await db.signin({ username: 'root', password: 'root' });
  await db.use({ namespace: 'bench', database: 'live' });
  return db;
}

const percentile = (sorted, q) =>
  sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))];

const listener = await connect(true);
const writer = await connect();
await writer.query('DEFINE TABLE IF NOT EXISTS lat SCHEMALESS; DEFINE TABLE IF NOT EXISTS thr SCHEMALESS');

// Latency.
{
  const samples = Number(args.samples);
  let count = 0;
  let stamp = 0n;
  let wake = null;
  const lat = [];
  const live = await listener.live(new Table('lat'));
  await live.ready(); // registered on the server: no notification missed
  live.subscribe((msg) => {
    if (msg.action !== 'CREATE') return;
    const us = Number((nowNs() - stamp) / 1000n);
    count++;
    if (count > 50) lat.push(us);
    if (wake) wake();
  });
  for (let i = 0; i < samples + 50; i++) {
    const want = count + 1;
    const arrived = new Promise((r) => { wake = r; });
    stamp = nowNs();
    await writer.query('CREATE lat');
    while (count < want) await Promise.race([arrived, sleep(10000)]);
  }
  await live.kill();
  lat.sort((a, b) => a - b);
  emit({ bench: 'live_latency', impl: 'js-sdk', wire: 'cbor', samples, p50_us: percentile(lat, 0.5), p99_us: percentile(lat, 0.99) });
}

// Throughput.
for (const fan of args.fanout.split(',').map(Number).filter((x) => x > 0)) {
  const n = Math.max(1, Math.floor(Number(args.notifications) / fan));
  let count = 0;
  const lives = [];
  for (let i = 0; i < fan; i++) {
    const live = await listener.live(new Table('thr'));
    await live.ready();
    live.subscribe((msg) => { if (msg.action === 'CREATE') count++; });
    lives.push(live);
  }
  const want = n * fan;
  const raw0 = rawFrames;
  const cpu0 = process.cpuUsage();
  const t0 = nowNs();
  await writer.query(`FOR $i IN 1..=${n} { CREATE thr SET n = $i }`);
  // SDK 2.0.8 loses notifications that arrive in a burst: ChannelIterator.
  // submit() resolves its pending waiter but never clears it, so every later
  // message until the consumer's next next() resolves a settled promise and
  // is lost. Do not wait the whole bound for what will never come.
  const deadline = Date.now() + 20000;
  while (count < want && Date.now() < deadline) await sleep(1);
  const t1 = nowNs();
  const cpu = process.cpuUsage(cpu0);
  for (const l of lives) await l.kill();
  await writer.query('DELETE thr');
  emit({
    bench: 'live_throughput', impl: 'js-sdk', wire: 'cbor', fanout: fan, records: n,
    notifications: count, complete: count >= want ? 1 : 0, frames_received: rawFrames - raw0,
    // What reached the SDK's socket, per second until its last frame: the
    // server's side of the rate, whatever the SDK then does with them.
    frames_per_s: (rawFrames - raw0) / (Number(lastFrameNs - t0) / 1e9),
    per_s: count / (Number(t1 - t0) / 1e9),
    client_cpu_us_per_notification: (cpu.user + cpu.system) / Math.max(1, count),
  });
}
await listener.close();
await writer.close();
log('done');
