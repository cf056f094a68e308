#!/usr/bin/env node
// Captures real core replies in CBOR as a seed corpus for fuzz/fuzz_cbor_decode:
// starts server.mjs, runs a fixed set of requests over a `cbor` socket and writes
// every binary frame received to DIR/NN-name.cbor.
// Usage: node capture-corpus.mjs DIR
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { CborCodec, RecordId, Table } from 'surrealdb';

const dir = process.argv[2];
if (!dir) { process.stderr.write('usage: node capture-corpus.mjs DIR\n'); process.exit(2); }
mkdirSync(dir, { recursive: true });
const cbor = CborCodec.DEFAULT;
const server = spawn(process.execPath, [join(dirname(fileURLToPath(import.meta.url)), 'server.mjs'),
  '--port', '0', '--exit-on-stdin-close'], { stdio: ['pipe', 'pipe', 'inherit'] });
const port = await new Promise((resolve, reject) => {
  let out = '';
  server.stdout.on('data', (d) => { out += d; const m = /^LISTENING (\d+)\n/.exec(out); if (m) resolve(Number(m[1])); });
  server.on('exit', (code) => reject(new Error(`server exited with ${code}`)));
});
const ws = new WebSocket(`ws://127.0.0.1:${port}/rpc`, ['cbor']);
await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
let n = 0;
let waiting = null;
ws.on('message', (data) => {
  writeFileSync(join(dir, `${String(++n).padStart(2, '0')}-${waiting?.name ?? 'notification'}.cbor`), data);
  if (waiting && cbor.decode(new Uint8Array(data)).id === waiting.id) { const w = waiting; waiting = null; w.done(); }
});
let id = 0;
const call = (name, method, params) => new Promise((done) => {
  waiting = { name, id: ++id, done };
  ws.send(cbor.encode({ id, method, params }), { binary: true });
});
await call('refused', 'query', ['RETURN 1']);
await call('signin', 'signin', [{ user: 'root', pass: 'root' }]);
await call('signin-wrong', 'signin', [{ user: 'root', pass: 'nope' }]);
await call('use', 'use', ['corpus', 'corpus']);
await call('version', 'version', []);
await call('ping', 'ping', []);
await call('types', 'query', ["RETURN [d'2024-01-01T00:00:00.5Z', 1h30m, 1.50dec, u'e3b0c442-98fc-1c14-9afb-4c8996fb9242', " +
  "person:1, person:tobie, person:[1,'a'], person:{a:1}, person:u'e3b0c442-98fc-1c14-9afb-4c8996fb9242', NONE, NULL, " +
  "<bytes>'ab', 1.0f, -0.0f, 9223372036854775807, -9223372036854775808, type::table('x'), 1..5, 1>..=5, ..3, " +
  "person:1..3, <set>[1,2], (1,2), {type:'LineString',coordinates:[[0,0],[1,1]]}, " +
  "{type:'Polygon',coordinates:[[[0,0],[1,0],[0,0]]]}, {type:'MultiPoint',coordinates:[[0,0]]}, " +
  "{type:'GeometryCollection',geometries:[{type:'Point',coordinates:[1,2]}]}, " +
  "'Grüße ⟨x⟩ µ', '', true, false, 1e308, 0.1, {a:{b:[1,{c:'d'}]}}]"]);
await call('parse-error', 'query', ['SELEC']);
await call('crud', 'create', [new RecordId('p', 1), { name: 'person:01', at: new Date(0) }]);
await call('select', 'select', [new Table('p')]);
await call('live', 'live', [new Table('p')]);
await call('update', 'update', [new RecordId('p', 1), { name: 'x' }]);
await call('bad-method', 'nope', []);
await call('info', 'info', []);
await new Promise((r) => setTimeout(r, 200)); // the live notification
ws.close();
server.stdin.end();
