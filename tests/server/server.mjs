#!/usr/bin/env node
// surpool test server: a SurrealDB-style WebSocket JSON RPC endpoint (`/rpc`)
// in front of the real embedded SurrealDB 3.0.x core (@surrealdb/node), with
// fault-injection knobs for testing the C client.
//
// See README.md in this folder for the CLI, the hostile modes and the value
// conversion rules. Startup contract: once listening, exactly one line
// `LISTENING <port>` is printed to stdout; logs go to stderr with --verbose.

import { createRequire } from 'node:module';
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';

import { WebSocketServer } from 'ws';
import {
  CborCodec,
  DateTime,
  Decimal,
  Duration,
  FileRef,
  Future,
  Geometry,
  Range,
  RecordId,
  RecordIdRange,
  StringRecordId,
  Table,
  Uuid,
} from 'surrealdb';
// `--core 2`: the SurrealDB 2.x core (WebAssembly build) behind the same
// engine interface; see core2.mjs and README.md ("2.x mode").
import { connectCore2, serverErrors2x } from './core2.mjs';

// ---------------------------------------------------------------------------
// Native engine. The package's exports map only exposes the SDK wrapper, so
// the N-API module is loaded by file path.
// ---------------------------------------------------------------------------
const require = createRequire(import.meta.url);
const { SurrealNodeEngine } = require(
  './node_modules/@surrealdb/node/dist/surrealdb-node.linux-x64-gnu.node',
);
const cbor = CborCodec.DEFAULT;

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------
const MODES = new Set([
  'normal', 'malformed', 'truncate', 'wrong-id', 'duplicate-id', 'no-id',
  'binary', 'huge', 'slow', 'no-upgrade', 'close-mid-reply', 'refuse',
  'duplicate-key', 'stolen-id', 'stolen-id-once',
]);

function usage(msg) {
  if (msg) process.stderr.write(`server.mjs: ${msg}\n`);
  process.stderr.write(
    'usage: node server.mjs [--host 127.0.0.1] [--port 0] [--user root] [--pass root]\n' +
    '       [--tls-cert FILE --tls-key FILE] [--delay-ms N] [--delay-jitter-ms N]\n' +
    '       [--drop-every N] [--max-conns N] [--mode MODE] [--core 3|2] [--exit-on-stdin-close] [--verbose]\n' +
    '       [--nodes N]  (cluster simulator: N WebSocket nodes over one core, see README.md)\n' +
    `modes: ${[...MODES].join(', ')}\n`,
  );
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
      user: { type: 'string', default: 'root' },
      pass: { type: 'string', default: 'root' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'delay-ms': { type: 'string', default: '0' },
      'delay-jitter-ms': { type: 'string', default: '0' },
      'drop-every': { type: 'string', default: '0' },
      'max-conns': { type: 'string', default: '0' },
      mode: { type: 'string', default: 'normal' },
      core: { type: 'string', default: '3' },
      'exit-on-stdin-close': { type: 'boolean', default: false },
      nodes: { type: 'string', default: '1' },
      verbose: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  }));
} catch (err) {
  usage(err.message);
}
if (args.help) usage();

function intArg(name, min = 0, max = Number.MAX_SAFE_INTEGER) {
  const s = args[name];
  if (!/^\d+$/.test(s)) usage(`--${name} must be a non-negative integer`);
  const n = Number(s);
  if (n < min || n > max) usage(`--${name} out of range`);
  return n;
}

/** Only loopback addresses may be served (tests never leave this machine). */
function isLoopback(host) {
  if (host === 'localhost' || host === '::1') return true;
  return net.isIPv4(host) && host.split('.')[0] === '127';
}

const HOST = args.host;
if (!isLoopback(HOST)) usage(`refusing non-loopback --host ${HOST} (allowed: 127.0.0.0/8, ::1, localhost)`);
const PORT = intArg('port', 0, 65535);
if (!!args['tls-cert'] !== !!args['tls-key']) usage('--tls-cert and --tls-key go together');
if (!MODES.has(args.mode)) usage(`unknown --mode ${args.mode}`);
if (args.core !== '3' && args.core !== '2') usage('--core must be 3 or 2');
const CORE2 = args.core === '2';

/** Fault settings; changeable at runtime with POST /control. */
const initialSettings = Object.freeze({
  mode: args.mode,
  delayMs: intArg('delay-ms'),
  delayJitterMs: intArg('delay-jitter-ms'),
  dropEvery: intArg('drop-every'),
  maxConns: intArg('max-conns'),
  refuseAuthenticate: false,
});
const settings = { ...initialSettings };

const VERBOSE = args.verbose;
function log(...parts) {
  if (VERBOSE) process.stderr.write(`[surpool-test-server] ${parts.join(' ')}\n`);
}

// ---------------------------------------------------------------------------
// Protocol constants
// ---------------------------------------------------------------------------

/** Methods a socket may call before it has authenticated. */
const PRE_AUTH_METHODS = new Set(['signin', 'signup', 'authenticate', 'ping', 'version', 'invalidate', 'reset']);

/** Methods that behave normally in every hostile mode (connection set-up). */
const SETUP_METHODS = new Set([
  'signin', 'signup', 'authenticate', 'invalidate', 'reset', 'use', 'ping', 'version', 'let', 'unset',
  'attach', 'detach', 'sessions',
]);

/** Session methods. A request naming a `session` runs in a core session of its
 *  own (ClientSession below): `attach` opens one for that client id on this
 *  socket, `detach` closes it, `sessions` lists this socket's. The socket's
 *  own core session is never touched by them. On the 2.x core they are
 *  "Method not found", as on a 2.x server. */
const SESSION_METHODS = new Set(['attach', 'detach', 'sessions']);
const ERR_METHOD_NOT_FOUND = { code: -32601, message: 'Method not found' };

// Error shapes mirror the 3.0 core's own errors (code, message, kind, details).
const ERR_PARSE = { code: -32700, message: 'Parse error' };
let errInvalidRequest = (message) => ({ code: -32600, message, kind: 'Validation', details: { kind: 'InvalidRequest' } });
let errInvalidParams = (message) => ({ code: -32603, message, kind: 'Validation', details: { kind: 'InvalidParams' } });
// Same shape as the core's reply to a wrong password.
let ERR_NOT_AUTHENTICATED = {
  code: -32002,
  message: 'There was a problem with authentication',
  kind: 'NotAllowed',
  details: { kind: 'Auth', details: { kind: 'InvalidAuth' } },
};
let errMethodNotAllowed = (name) => ({
  code: -32602, message: 'Method not allowed', kind: 'NotAllowed', details: { kind: 'Method', details: { name } },
});
// 2.x errors are {code, message}, 2.x numbering.
if (CORE2) ({ errInvalidRequest, errInvalidParams, ERR_NOT_AUTHENTICATED, errMethodNotAllowed } = serverErrors2x);

const MAX_MESSAGE = 128 * 1024 * 1024; // the real server's frame/message limit
const HUGE_BYTES = 80 * 1024 * 1024;

// ---------------------------------------------------------------------------
// JSON -> core values
//
// A real SurrealDB server parses JSON params with the SurrealQL literal parser
// ("legacy strands"): every JSON string, anywhere in params (nested objects
// and arrays, query variables, even the query text and signin credentials),
// is re-parsed and becomes a typed value when it is one. We reproduce this
// for whole strings of these shapes (first match wins, in the server's order):
//   1. record id  TABLE:ID -> RecordId
//        TABLE  [A-Za-z_][A-Za-z0-9_]*, or `...` / ⟨...⟩ (backslash escapes)
//        ID     [A-Za-z0-9_]+  -> integer id if all digits and within i64,
//                                 otherwise a string id
//               -digits        -> negative integer id
//               `...` / ⟨...⟩  -> string id (text between the brackets)
//               [...] / {...} / u'...' / u"..." (array, object, uuid ids, in
//                  SurrealQL or JSON syntax) -> parsed by the core's own
//                  record-id parser; left a string if it rejects them
//   2. datetime  YYYY-MM-DD, or YYYY-MM-DD(T| )HH:MM:SS(.f{1,9})?(Z|±HH:MM)
//      (a time needs a zone, as in the core's datetime lexer; impossible
//      dates such as 2024-02-30 stay strings) -> DateTime
//   3. UUID  8-4-4-4-12 hex digits -> Uuid
// Everything else (numbers, booleans, null, other strings, object keys) is
// left as it is. Integers beyond 2^53 but within i64 are kept exact; larger
// ones become floats; 1.0 arrives as the integer 1 (JSON.parse semantics).
// Known difference: the real parser converts a record-id *prefix* too (it
// does not check the end of the string: "t:a-b" may become t:a); we only
// convert whole matches.
// ---------------------------------------------------------------------------
const RID_SIMPLE_RE =
  /^([A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)*`|⟨(?:[^⟩\\]|\\.)*⟩):(-?\d+|[A-Za-z0-9_]+|`(?:[^`\\]|\\.)*`|⟨(?:[^⟩\\]|\\.)*⟩)$/s;
const RID_COMPLEX_RE =
  /^(?:[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)*`|⟨(?:[^⟩\\]|\\.)*⟩):(?:\[.*\]|\{.*\}|u'[^']*'|u"[^"]*")$/s;
const UUID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const DATETIME_RE = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2}))?$/;
const I64_MAX = 2n ** 63n - 1n;
const I64_MIN = -(2n ** 63n);

/** Text of an identifier, without its `...` or ⟨...⟩ brackets and escapes. */
function unbracket(s) {
  if (s.startsWith('`') || s.startsWith('⟨')) return s.slice(1, -1).replace(/\\(.)/gs, '$1');
  return s;
}

function toSimpleRecordId(s) {
  const m = RID_SIMPLE_RE.exec(s);
  if (!m) return undefined;
  const table = unbracket(m[1]);
  const raw = m[2];
  let id = unbracket(raw);
  if (/^-?\d+$/.test(raw)) {
    const big = BigInt(raw);
    if (big >= I64_MIN && big <= I64_MAX) id = Number.isSafeInteger(Number(big)) ? Number(big) : big;
  }
  return new RecordId(table, id);
}

/** Asks the core whether it parses `s` as a record id (decode fails otherwise). */
async function coreParsesRecordId(s) {
  try {
    await engine.execute(cbor.encode({ id: '0', method: 'ping', params: [new StringRecordId(s)] }));
    return true;
  } catch {
    return false;
  }
}

function toDateTime(s) {
  const m = DATETIME_RE.exec(s);
  if (!m) return undefined;
  const [, y, mo, d, h = '00', mi = '00', sec = '00', frac = '', zone = 'Z'] = m;
  const [Y, MO, D, H, MI, S] = [y, mo, d, h, mi, sec].map(Number);
  const ms = Date.UTC(Y, MO - 1, D, H, MI, S);
  const check = new Date(ms);
  // Reject out-of-range fields (2024-02-30, 25:00:00) rather than rolling over.
  if (check.getUTCFullYear() !== Y || check.getUTCMonth() !== MO - 1 || check.getUTCDate() !== D ||
      check.getUTCHours() !== H || check.getUTCMinutes() !== MI || check.getUTCSeconds() !== S) return undefined;
  let offsetSec = 0;
  if (zone !== 'Z') {
    const sign = zone[0] === '-' ? -1 : 1;
    const [zh, zm] = zone.slice(1).split(':').map(Number);
    if (zh > 23 || zm > 59) return undefined;
    offsetSec = sign * (zh * 3600 + zm * 60);
  }
  const seconds = BigInt(ms / 1000 - offsetSec);
  const nanos = frac ? BigInt(frac.padEnd(9, '0')) : 0n;
  return new DateTime([seconds, nanos]);
}

async function convertString(s) {
  const rid = toSimpleRecordId(s);
  if (rid) return rid;
  if (RID_COMPLEX_RE.test(s) && await coreParsesRecordId(s)) return new StringRecordId(s);
  return toDateTime(s) ?? (UUID_RE.test(s) ? new Uuid(s) : s);
}

/** Converts a parsed JSON value into what the core would see over JSON RPC. */
async function toCore(v) {
  if (typeof v === 'string') return convertString(v);
  if (Array.isArray(v)) return Promise.all(v.map(toCore));
  if (v !== null && typeof v === 'object') {
    const entries = await Promise.all(Object.entries(v).map(async ([k, x]) => [k, await toCore(x)]));
    return Object.fromEntries(entries);
  }
  return v;
}

// ---------------------------------------------------------------------------
// JSON parsing that keeps integers beyond 2^53 exact (as BigInt). Only used
// when the text contains a run of 16+ digits; otherwise JSON.parse is used.
// ---------------------------------------------------------------------------
function parseJson(text) {
  if (!/\d{16,}/.test(text)) return JSON.parse(text);
  let i = 0;
  const fail = () => { throw new SyntaxError(`Unexpected token in JSON at position ${i}`); };
  const ws = () => { while (i < text.length && ' \t\n\r'.includes(text[i])) i++; };
  const value = () => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++; const obj = {}; ws();
      if (text[i] === '}') { i++; return obj; }
      for (;;) {
        ws(); if (text[i] !== '"') fail();
        const k = string(); ws(); if (text[i++] !== ':') fail();
        Object.defineProperty(obj, k, { value: value(), enumerable: true, writable: true, configurable: true });
        ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === '}') { i++; return obj; }
        fail();
      }
    }
    if (c === '[') {
      i++; const arr = []; ws();
      if (text[i] === ']') { i++; return arr; }
      for (;;) {
        arr.push(value()); ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === ']') { i++; return arr; }
        fail();
      }
    }
    if (c === '"') return string();
    const m = /^-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (m) {
      i += m[0].length;
      if (m[1] || m[2]) return Number(m[0]);
      const n = Number(m[0]);
      if (Number.isSafeInteger(n)) return n;
      const big = BigInt(m[0]);
      return big >= I64_MIN && big <= I64_MAX ? big : n; // beyond i64: a float

    }
    for (const [lit, val] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(lit, i)) { i += lit.length; return val; }
    }
    return fail();
  };
  const string = () => {
    // Find the closing quote, skipping escapes, and let JSON.parse decode it.
    const start = i++;
    while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    if (i >= text.length) fail();
    i++;
    return JSON.parse(text.slice(start, i));
  };
  const out = value();
  ws();
  if (i !== text.length) fail();
  return out;
}

// ---------------------------------------------------------------------------
// Record ids as text, formatted like the 3.0 core itself (checked against
// `<string> person:⟨a b⟩` etc.): identifiers that need escaping are put in
// backticks (person:`a b`, person:`1`, `a-b`:x), array ids as [1, 'a'],
// object ids as { a: 1, "b c": 's' }. Note: the JS SDK's toString would
// use ⟨⟩ instead; the core (and so a real 3.0 server) uses backticks.
// Limitation: a float that is integral (1.0) cannot be told from an integer
// after CBOR decoding and prints as 1 (the core prints 1f).
// ---------------------------------------------------------------------------
const IDENT_RE = /^[A-Za-z0-9_]+$/;

function escapeIdent(s) {
  if (IDENT_RE.test(s) && !/^\d+$/.test(s)) return s;
  return '`' + s.replace(/\\/g, '\\\\').replace(/`/g, '\\`') + '`';
}

function quoteString(s) {
  const q = s.includes("'") && !s.includes('"') ? '"' : "'";
  return q + s.replace(/\\/g, '\\\\').replaceAll(q, `\\${q}`) + q;
}

function formatObjectKey(k) {
  return IDENT_RE.test(k) ? k : JSON.stringify(k);
}

/** SurrealQL text of a value inside a record id. */
function surqlValue(v) {
  if (v === undefined) return 'NONE';
  if (v === null) return 'NULL';
  switch (typeof v) {
    case 'string': return quoteString(v);
    case 'boolean': case 'bigint': return String(v);
    case 'number': return Number.isInteger(v) ? String(v) : `${v}f`;
    default: break;
  }
  if (Array.isArray(v)) return `[${v.map(surqlValue).join(', ')}]`;
  if (v instanceof RecordId) return formatRecordId(v);
  if (v instanceof Uuid) return `u'${v}'`;
  if (v instanceof DateTime) return `d'${dateTimeToString(v)}'`;
  if (v instanceof Decimal) return `${v}dec`;
  if (v instanceof Duration || v instanceof Table || v instanceof Range ||
      v instanceof StringRecordId || v instanceof RecordIdRange) return v.toString();
  if (Object.getPrototypeOf(v) === Object.prototype) {
    const parts = Object.entries(v).map(([k, x]) => `${formatObjectKey(k)}: ${surqlValue(x)}`);
    return `{ ${parts.join(', ')} }`;
  }
  return String(v);
}

function formatRecordId(rid) {
  const table = escapeIdent(rid.table.name);
  const id = rid.id;
  let key;
  if (typeof id === 'string') key = escapeIdent(id);
  else if (typeof id === 'number' || typeof id === 'bigint') key = String(id);
  else key = surqlValue(id);
  return `${table}:${key}`;
}

// ---------------------------------------------------------------------------
// core values -> JSON (what a real server sends over JSON RPC)
//   RecordId -> "table:id" formatted like the core (see formatRecordId)
//   StringRecordId / RecordIdRange -> SDK toString
//   Uuid, Decimal, Duration ("1h30m"), Table, Range ("1..3"), FileRef, Future -> string
//   DateTime -> RFC 3339 UTC string, fraction shown as 3/6/9 digits only when
//     non-zero (like the server: "2024-01-01T00:00:00Z", "...:00.500Z")
//   NONE (undefined) -> null; Map -> object; Set -> array
//   bigint -> JSON integer when it fits in an i64 (exact digits, even beyond
//     2^53), otherwise a string
//   Geometry -> GeoJSON object ({"type":"Point","coordinates":[x,y]}, ...)
//   bytes (ArrayBuffer / typed array) -> array of byte values (0..255)
// Objects keep NONE-valued keys as null (e.g. a query result's "type").
// ---------------------------------------------------------------------------
const BIG_MARK = '\u0000surpool-bigint:';

function dateTimeToString(dt) {
  const [s, ns] = dt.toCompact();
  const base = new Date(Number(s) * 1000).toISOString().slice(0, 19);
  if (ns === 0n) return `${base}Z`;
  let frac = ns.toString().padStart(9, '0');
  frac = frac.endsWith('000000') ? frac.slice(0, 3) : frac.endsWith('000') ? frac.slice(0, 6) : frac;
  return `${base}.${frac}Z`;
}

function toJsonValue(v, ctx) {
  if (v === undefined || v === null) return null;
  switch (typeof v) {
    case 'string': case 'boolean': return v;
    case 'number': return v; // NaN/Infinity become null in JSON.stringify, like serde_json
    case 'bigint':
      if (v >= I64_MIN && v <= I64_MAX) {
        if (Number.isSafeInteger(Number(v))) return Number(v);
        ctx.big = true;
        return `${BIG_MARK}${v}`;
      }
      return v.toString();
    default: break;
  }
  if (Array.isArray(v)) return v.map((x) => toJsonValue(x, ctx));
  if (v instanceof DateTime) return dateTimeToString(v);
  if (v instanceof Date) return v.toISOString();
  if (v instanceof RecordId) return formatRecordId(v);
  if (v instanceof StringRecordId || v instanceof RecordIdRange ||
      v instanceof Uuid || v instanceof Decimal || v instanceof Duration || v instanceof Table ||
      v instanceof Range || v instanceof FileRef || v instanceof Future) return v.toString();
  if (v instanceof Geometry) return toJsonValue(v.toJSON(), ctx);
  if (v instanceof Set) return [...v].map((x) => toJsonValue(x, ctx));
  if (v instanceof Map) {
    return Object.fromEntries([...v].map(([k, x]) => [String(k), toJsonValue(x, ctx)]));
  }
  if (v instanceof ArrayBuffer) return Array.from(new Uint8Array(v));
  if (ArrayBuffer.isView(v)) return Array.from(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, toJsonValue(x, ctx)]));
}

/** JSON text of a core value; exact i64 digits for big integers. */
function stringifyCore(v) {
  const ctx = { big: false };
  let text = JSON.stringify(toJsonValue(v, ctx));
  if (ctx.big) text = text.replace(/"\\u0000surpool-bigint:(-?\d+)"/g, '$1');
  return text;
}

/** A reply frame: `{"id":..,"result":..}` / `{"id":..,"error":..}`; idText undefined -> no id key. */
function frame(idText, key, bodyText) {
  return idText === undefined ? `{"${key}":${bodyText}}` : `{"id":${idText},"${key}":${bodyText}}`;
}

// ---------------------------------------------------------------------------
// CBOR sockets (subprotocol `cbor`, binary frames). Requests go to the core as
// the client wrote them: the top-level map is split into raw byte slices and
// rebuilt with the server's own id and the socket's session, so params (and
// the core's results on the way back) are never decoded and re-encoded —
// every tag, float width and string arrives byte for byte. The SDK's codec
// only decodes copies for inspection (method, auth, live ids, `use` check).
// ---------------------------------------------------------------------------

/** End offset of the CBOR item starting at `pos` (throws when truncated,
 *  malformed or indefinite-length: neither surpool nor the core sends those). */
function cborItemEnd(buf, pos) {
  let pending = 1;
  while (pending > 0) {
    if (pos >= buf.length) throw new SyntaxError('truncated CBOR');
    const ib = buf[pos++];
    pending--;
    const major = ib >> 5;
    const ai = ib & 31;
    let n;
    if (ai < 24) n = BigInt(ai);
    else if (ai <= 27) {
      const w = 1 << (ai - 24);
      if (pos + w > buf.length) throw new SyntaxError('truncated CBOR');
      n = 0n;
      for (let i = 0; i < w; i++) n = (n << 8n) | BigInt(buf[pos + i]);
      pos += w;
    } else throw new SyntaxError('malformed or indefinite-length CBOR head');
    switch (major) {
      case 2: case 3:
        if (n > BigInt(buf.length - pos)) throw new SyntaxError('truncated CBOR');
        pos += Number(n);
        break;
      case 4: case 5:
        if (n > BigInt(buf.length)) throw new SyntaxError('CBOR length beyond the frame');
        pending += (major === 5 ? 2 : 1) * Number(n);
        break;
      case 6: pending += 1; break;
      default: break; // integers, simple values, floats: the head is all
    }
  }
  return pos;
}

/** Top-level map → [[key, raw value bytes], ...] (text keys only). */
function cborSplitMap(buf) {
  const entries = [];
  const ib = buf[0];
  if (ib === undefined || ib >> 5 !== 5 || (ib & 31) === 31) throw new SyntaxError('not a definite map');
  let pos = 0;
  let count;
  const ai = ib & 31;
  if (ai < 24) { count = ai; pos = 1; } else {
    const w = 1 << (ai - 24);
    count = 0;
    for (let i = 0; i < w; i++) count = count * 256 + buf[1 + i];
    pos = 1 + w;
  }
  for (let i = 0; i < count; i++) {
    const kEnd = cborItemEnd(buf, pos);
    const key = cbor.decode(buf.subarray(pos, kEnd));
    if (typeof key !== 'string') throw new SyntaxError('map key is not text');
    const vEnd = cborItemEnd(buf, kEnd);
    entries.push([key, buf.subarray(kEnd, vEnd)]);
    pos = vEnd;
  }
  if (pos !== buf.length) throw new SyntaxError('trailing bytes after the map');
  return entries;
}

function cborHead(major, n) {
  if (n < 24) return Buffer.from([(major << 5) | n]);
  if (n < 256) return Buffer.from([(major << 5) | 24, n]);
  if (n < 65536) { const b = Buffer.alloc(3); b[0] = (major << 5) | 25; b.writeUInt16BE(n, 1); return b; }
  const b = Buffer.alloc(5); b[0] = (major << 5) | 26; b.writeUInt32BE(n, 1); return b;
}

/** A CBOR map from [[key, raw value bytes], ...]. */
function cborMap(entries) {
  const parts = [cborHead(5, entries.length)];
  for (const [k, v] of entries) {
    const kb = Buffer.from(k, 'utf8');
    parts.push(cborHead(3, kb.length), kb, Buffer.from(v.buffer, v.byteOffset, v.byteLength));
  }
  return Buffer.concat(parts);
}

const cborBytes = (v) => Buffer.from(cbor.encode(v));

/** A CBOR reply frame {id, key: body} from raw slices; rawId undefined → no id key. */
function cborFrame(rawId, key, rawBody) {
  const entries = rawId === undefined ? [] : [['id', rawId]];
  entries.push([key, rawBody]);
  return cborMap(entries);
}

/** Decoded copy for inspection only; undefined when the SDK cannot decode it. */
function cborPeek(bytes) {
  try {
    return cbor.decode(bytes);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// Engine
// ---------------------------------------------------------------------------
const engine = CORE2 ? await connectCore2() : await SurrealNodeEngine.connect('mem://');
let internalIds = 0;

/** Runs one RPC request through the core; returns the decoded CBOR reply. */
async function execute(method, params, session, txn) {
  const req = { id: String(++internalIds), method };
  if (params !== undefined) req.params = params;
  if (session) req.session = session;
  if (txn) req.txn = txn;
  return cbor.decode(await engine.execute(cbor.encode(req)));
}

/** Methods whose successful result the server must read (afterSuccess). */
const INSPECTED_METHODS = new Set(['signin', 'signup', 'authenticate', 'invalidate', 'reset', 'live', 'query']);
const ERROR_MAP_HEAD = Buffer.from([0xa1, 0x65, ...Buffer.from('error')]); // {"error": ...
const LIVE_TYPE = Buffer.from([0x64, ...Buffer.from('type'), 0x64, ...Buffer.from('live')]); // "type":"live"

/** Runs a client's CBOR request (raw params/txn slices) through the core. Returns
 *  { bytes, error, value }: the core's raw reply, whether it is the core's
 *  {error} form, and a decoded copy when the server needs to read it (errors,
 *  auth methods, live queries; a query only when its reply holds a live one),
 *  so ordinary replies are never decoded here. */
async function executeRaw(method, rawParams, session, rawTxn) {
  const entries = [['id', cborBytes(String(++internalIds))], ['method', cborBytes(method)]];
  if (rawParams !== undefined) entries.push(['params', rawParams]);
  entries.push(['session', cborBytes(session)]);
  if (rawTxn !== undefined) entries.push(['txn', rawTxn]);
  const bytes = Buffer.from(await engine.execute(cborMap(entries)));
  let value;
  const maybeError = bytes.subarray(0, ERROR_MAP_HEAD.length).equals(ERROR_MAP_HEAD);
  if (maybeError || (INSPECTED_METHODS.has(method) && (method !== 'query' || bytes.includes(LIVE_TYPE)))) {
    value = cborPeek(bytes);
  }
  return { bytes, error: maybeError && isErrorReply(value), value };
}

function isErrorReply(r) {
  return r !== null && typeof r === 'object' && !Array.isArray(r) && Object.getPrototypeOf(r) === Object.prototype &&
    Object.keys(r).length === 1 && 'error' in r && r.error && typeof r.error === 'object' && 'code' in r.error;
}

const coreVersion = String(await execute('version', []));

// Root user, so that the core itself checks signin credentials.
{
  const user = '`' + args.user.replace(/\\/g, '\\\\').replace(/`/g, '\\`') + '`';
  const pass = "'" + args.pass.replace(/\\/g, '\\\\').replace(/'/g, "\\'") + "'";
  const res = await execute('query', [`DEFINE USER ${user} ON ROOT PASSWORD ${pass} ROLES OWNER`]);
  if (isErrorReply(res) || res[0]?.status !== 'OK') {
    process.stderr.write(`server.mjs: cannot define root user: ${stringifyCore(res)}\n`);
    process.exit(1);
  }
}

// ---------------------------------------------------------------------------
// Live query notifications: routed to the socket whose session made the live
// query (the core tags notifications with the session; KILLED ones are not
// tagged, so live query ids are also remembered).
// ---------------------------------------------------------------------------
const sessions = new Map(); // session uuid string -> Conn
const liveOwners = new Map(); // live query uuid string -> Conn

const notifications = await engine.notifications();
(async () => {
  for (;;) {
    let raw;
    try {
      raw = await notifications.recv();
    } catch (err) {
      log('notification receiver failed:', err.message);
      return;
    }
    if (raw === null) return;
    try {
      const n = cbor.decode(raw);
      const liveId = n.id?.toString();
      let conn = n.session ? sessions.get(n.session.toString()) : undefined;
      conn ??= liveOwners.get(liveId);
      if (n.action === 'KILLED') liveOwners.delete(liveId);
      if (!conn || conn.closed) continue;
      const { session: _internal, ...payload } = n;
      conn.sendNotification(raw, payload);
    } catch (err) {
      log('bad notification:', err.message);
    }
  }
})();

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------
// signins / signinFailures: `signin` calls the core answered (each one a
// password verification); authenticates: `authenticate` calls (token checks).
// coreSessions: core sessions open (one per socket, plus the client-named ones);
// clientSessions: client-named sessions open (attach ... detach, or socket close).
const stats = {
  sockets: 0, totalSockets: 0, requests: 0, signins: 0, signinFailures: 0, authenticates: 0,
  coreSessions: 0, clientSessions: 0,
};
const conns = new Set(); // every open Conn, for /control dropAll

/** Errors for a client-named session, shaped as the 3.0 core's own. */
const errSessionNotFound = (id) => ({
  code: -32000, message: `Session not found: ${id}`, kind: 'NotFound', details: { kind: 'Session', details: { id } },
});
const errSessionExists = (id) => ({
  code: -32000, message: `Session already exists: ${id}`, kind: 'AlreadyExists', details: { kind: 'Session', details: { id } },
});

/** Counts what the auth methods cost the server (tests assert on them). */
function countAuth(method, failed) {
  if (method === 'signin') {
    if (failed) stats.signinFailures++;
    else stats.signins++;
  } else if (method === 'authenticate') {
    stats.authenticates++;
  }
}
let requestCounter = 0; // server-wide, for --drop-every
let hugeFrameTail = null; // cached `,"result":"xxx…"}` of the huge mode
let hugeCborBody = null; // the same text as a CBOR text string

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
function replyDelay() {
  const { delayMs, delayJitterMs } = settings;
  return delayMs + (delayJitterMs > 0 ? Math.floor(Math.random() * (delayJitterMs + 1)) : 0);
}

/** Writes a raw, unmasked server->client WebSocket frame header. */
function frameHeader(opcode, fin, length) {
  const first = (fin ? 0x80 : 0) | opcode;
  if (length < 126) return Buffer.from([first, length]);
  if (length < 65536) {
    const b = Buffer.alloc(4); b[0] = first; b[1] = 126; b.writeUInt16BE(length, 2); return b;
  }
  const b = Buffer.alloc(10); b[0] = first; b[1] = 127; b.writeBigUInt64BE(BigInt(length), 2); return b;
}

class Conn {
  constructor(ws, socketId) {
    this.ws = ws;
    this.id = socketId;
    this.session = Uuid.v4();
    this.sessionKey = this.session.toString();
    this.authed = false;
    this.closed = false;
    this.liveIds = new Set();
    this.detached = null;
    // `cbor` when the client chose that subprotocol: binary frames both ways.
    this.format = ws.protocol === 'cbor' ? 'cbor' : 'json';
    // client session id (text) -> { core: Uuid, coreKey, authed }
    this.clientSessions = new Map();
    conns.add(this);
    sessions.set(this.sessionKey, this);
    this.attached = execute('attach', undefined, this.session).then((r) => {
      if (isErrorReply(r)) throw new Error(r.error.message);
      stats.coreSessions++;
    });
    this.attached.catch((err) => {
      log(`#${this.id} attach failed: ${err.message}`);
      ws.close(1011, 'session attach failed');
    });
    ws.on('message', (data, isBinary) => {
      this.onMessage(data, isBinary).catch((err) => process.stderr.write(`server.mjs: request failed: ${err.stack}\n`));
    });
    ws.on('close', () => this.onClose());
    ws.on('error', (err) => log(`#${this.id} socket error: ${err.message}`));
  }

  sendText(text) {
    if (!this.closed && this.ws.readyState === this.ws.OPEN) this.ws.send(text, { binary: false });
  }

  sendBinary(buf) {
    if (!this.closed && this.ws.readyState === this.ws.OPEN) this.ws.send(buf, { binary: true });
  }

  /** A live-query notification (core values) in this socket's format. */
  sendNotification(rawCbor, payload) {
    if (this.format === 'cbor') {
      const entries = cborSplitMap(Buffer.from(rawCbor)).filter(([k]) => k !== 'session');
      this.sendBinary(cborMap([['result', cborMap(entries)]]));
    } else {
      this.sendText(`{"result":${stringifyCore(payload)}}`);
    }
  }

  /** Terminates the TCP connection without a close frame. */
  kill() {
    this.ws.terminate();
  }

  onClose() {
    if (this.closed) return;
    this.closed = true;
    stats.sockets--;
    log(`#${this.id} closed`);
    conns.delete(this);
    for (const id of this.liveIds) liveOwners.delete(id);
    const clients = [...this.clientSessions.values()];
    this.clientSessions.clear();
    this.detached = Promise.allSettled(clients.map((cs) => this.detachCore(cs)))
      .then(() => this.attached)
      .then(() => execute('detach', undefined, this.session))
      .then(() => { stats.coreSessions--; })
      .catch(() => {})
      .finally(() => sessions.delete(this.sessionKey));
  }

  /** Ends a client session's core session (already out of clientSessions). */
  async detachCore(cs) {
    stats.clientSessions--;
    try {
      await execute('detach', undefined, cs.core);
      stats.coreSessions--;
    } finally {
      sessions.delete(cs.coreKey);
    }
  }

  /** A request naming session `key` (client id text): handles attach, detach
   *  and unknown sessions. Returns { error } to refuse, { result } when
   *  answered here, or { target } (the ClientSession) to run the request in. */
  async clientSession(method, key) {
    if (CORE2) return { error: ERR_METHOD_NOT_FOUND };
    if (method === 'sessions') return { result: [...this.clientSessions.keys()] };
    const cs = this.clientSessions.get(key);
    if (method === 'attach') {
      if (cs) return { error: errSessionExists(key) };
      const core = Uuid.v4();
      const entry = { core, coreKey: core.toString(), authed: false };
      this.clientSessions.set(key, entry);
      const r = await execute('attach', undefined, core);
      if (isErrorReply(r)) {
        this.clientSessions.delete(key);
        return { error: r.error };
      }
      stats.coreSessions++;
      stats.clientSessions++;
      sessions.set(entry.coreKey, this); // live-query notifications of that session
      if (this.closed) {
        this.clientSessions.delete(key);
        await this.detachCore(entry).catch(() => {});
      }
      return { result: null };
    }
    if (method === 'detach') {
      if (cs) {
        this.clientSessions.delete(key);
        await this.detachCore(cs).catch(() => {});
      }
      return { result: null };
    }
    if (!cs) return { error: errSessionNotFound(key) };
    return { target: cs };
  }

  async onMessage(data, isBinary) {
    stats.requests++;
    requestCounter++;
    if (settings.dropEvery > 0 && requestCounter % settings.dropEvery === 0) {
      log(`#${this.id} dropping connection on request #${requestCounter}`);
      this.kill();
      return;
    }
    if (this.format === 'cbor') return this.onCborMessage(data, isBinary);
    // JSON sockets: binary frames are parse errors.
    let req;
    try {
      if (isBinary) throw new SyntaxError('binary frame');
      req = parseJson(data.toString('utf8'));
    } catch {
      await this.reply(undefined, 'error', JSON.stringify(ERR_PARSE));
      return;
    }
    let idText;
    if (req !== null && typeof req === 'object' && !Array.isArray(req) && 'id' in req) {
      idText = typeof req.id === 'bigint' ? req.id.toString() : JSON.stringify(req.id ?? null);
    }
    const error = (e) => this.reply(idText, 'error', JSON.stringify(e));
    if (req === null || typeof req !== 'object' || Array.isArray(req)) return error(errInvalidRequest('Invalid request'));
    const { method, params } = req;
    if (typeof method !== 'string') return error(errInvalidRequest('Invalid request: missing method'));
    if (params !== undefined && params !== null && !Array.isArray(params)) {
      return error(errInvalidParams('Invalid params: params must be an array'));
    }
    const hostile = settings.mode !== 'normal' && !SETUP_METHODS.has(method);
    if (hostile && await this.hostileBeforeExecute(idText)) return;

    // The session the request runs in: this socket's, or a client-named one.
    let target = this;
    const hasSession = req.session !== undefined && req.session !== null;
    if (hasSession || SESSION_METHODS.has(method)) {
      if (CORE2) return error(ERR_METHOD_NOT_FOUND);
      if (hasSession && (typeof req.session !== 'string' || !UUID_RE.test(req.session))) {
        return error(errInvalidRequest('Invalid request: session must be a UUID string'));
      }
      if (!hasSession && method !== 'sessions') return error(errInvalidRequest(`Invalid request: ${method} needs a session`));
      const key = hasSession ? req.session.toLowerCase() : undefined;
      const cs = await this.clientSession(method, key);
      if (cs.error) return error(cs.error);
      if (cs.result !== undefined) return this.reply(idText, 'result', stringifyCore(cs.result));
      target = cs.target;
    }
    if (!target.authed && !PRE_AUTH_METHODS.has(method)) return error(ERR_NOT_AUTHENTICATED);
    // refuseAuthenticate: a server that does not take tokens (clients must sign in).
    if (method === 'authenticate' && settings.refuseAuthenticate) return error(errMethodNotAllowed(method));
    if (!CORE2 && method === 'use' && Array.isArray(params) && params[0] === null) {
      // The 3.0.x core panics on a null namespace; a release server aborts.
      return error(errInvalidParams('Invalid params: use [null, db] is not supported (the namespace must be a string)'));
    }

    // A txn that is not a UUID must not quietly run the request outside the
    // transaction the client meant: refused, as the core refuses a bad one.
    const hasTxn = req.txn !== undefined && req.txn !== null;
    if (hasTxn && (typeof req.txn !== 'string' || !UUID_RE.test(req.txn))) {
      return error(errInvalidRequest('Invalid request: txn must be a UUID string'));
    }

    let result;
    try {
      await this.attached;
      const txn = hasTxn ? new Uuid(req.txn) : undefined;
      const core = target === this ? this.session : target.core;
      result = await execute(method, params == null ? undefined : await toCore(params), core, txn);
    } catch (err) {
      result = { error: { code: -32000, message: String(err?.message ?? err), kind: 'Internal' } };
    }
    if (this.closed) return;

    let failed = isErrorReply(result);
    countAuth(method, failed);
    if (!failed) this.afterSuccess(method, result, target);
    let body;
    try {
      body = stringifyCore(failed ? result.error : result);
    } catch (err) {
      failed = true;
      body = JSON.stringify({ code: -32000, message: `Serialization error: ${err.message}`, kind: 'Serialization' });
    }
    const key = failed ? 'error' : 'result';
    if (hostile) return this.hostileReply(req.id, idText, key, body);
    return this.reply(idText, key, body);
  }

  /** A request on a `cbor` socket: passed to the core as written (see cborSplitMap). */
  async onCborMessage(data, isBinary) {
    let entries;
    try {
      if (!isBinary) throw new SyntaxError('text frame on a cbor socket');
      entries = cborSplitMap(data);
    } catch {
      await this.replyCbor(undefined, 'error', cborBytes(ERR_PARSE));
      return;
    }
    const raw = new Map();
    for (const [k, v] of entries) {
      if (raw.has(k)) {
        await this.replyCbor(undefined, 'error', cborBytes(errInvalidRequest('Invalid request: duplicate key')));
        return;
      }
      raw.set(k, v);
    }
    const rawId = raw.get('id');
    const error = (e) => this.replyCbor(rawId, 'error', cborBytes(e));
    const id = rawId === undefined ? undefined : cborPeek(rawId);
    const method = raw.has('method') ? cborPeek(raw.get('method')) : undefined;
    if (typeof method !== 'string') return error(errInvalidRequest('Invalid request: missing method'));
    let rawParams = raw.get('params');
    if (rawParams !== undefined && rawParams[0] === 0xf6) rawParams = undefined; // null
    if (rawParams !== undefined && rawParams[0] >> 5 !== 4) {
      return error(errInvalidParams('Invalid params: params must be an array'));
    }
    const hostile = settings.mode !== 'normal' && !SETUP_METHODS.has(method);
    if (hostile && await this.hostileBeforeExecute(undefined, rawId)) return;

    // The session the request runs in: this socket's, or a client-named one
    // (a UUID, tag 37, or its text), rewritten to its core session below.
    let target = this;
    const rawSession = raw.get('session');
    const hasSession = rawSession !== undefined && rawSession[0] !== 0xf6;
    if (hasSession || SESSION_METHODS.has(method)) {
      if (CORE2) return error(ERR_METHOD_NOT_FOUND);
      const sid = hasSession ? cborPeek(rawSession) : undefined;
      const key = sid instanceof Uuid ? sid.toString() : typeof sid === 'string' && UUID_RE.test(sid) ? sid.toLowerCase() : undefined;
      if (hasSession && key === undefined) return error(errInvalidRequest('Invalid request: session must be a UUID'));
      if (!hasSession && method !== 'sessions') return error(errInvalidRequest(`Invalid request: ${method} needs a session`));
      const cs = await this.clientSession(method, key);
      if (cs.error) return error(cs.error);
      if (cs.result !== undefined) return this.replyCbor(rawId, 'result', cborBytes(cs.result));
      target = cs.target;
    }
    if (!target.authed && !PRE_AUTH_METHODS.has(method)) return error(ERR_NOT_AUTHENTICATED);
    // refuseAuthenticate: a server that does not take tokens (clients must sign in).
    if (method === 'authenticate' && settings.refuseAuthenticate) return error(errMethodNotAllowed(method));
    if (!CORE2 && method === 'use' && rawParams !== undefined) {
      const p = cborPeek(rawParams);
      if (Array.isArray(p) && (p[0] === null || p[0] === undefined)) {
        return error(errInvalidParams('Invalid params: use [null, db] is not supported (the namespace must be a string)'));
      }
    }

    let key;
    let body;
    try {
      await this.attached;
      const core = target === this ? this.session : target.core;
      const reply = await executeRaw(method, rawParams, core, raw.get('txn'));
      countAuth(method, reply.error);
      if (reply.error) {
        key = 'error';
        body = cborSplitMap(reply.bytes).find(([k]) => k === 'error')[1];
      } else {
        key = 'result';
        body = reply.bytes;
        this.afterSuccess(method, reply.value, target);
      }
    } catch (err) {
      key = 'error';
      body = cborBytes({ code: -32000, message: String(err?.message ?? err), kind: 'Internal' });
    }
    if (this.closed) return;
    if (hostile) return this.hostileReply(id, undefined, key, body, rawId);
    return this.replyCbor(rawId, key, body);
  }

  async replyCbor(rawId, key, rawBody) {
    const delay = replyDelay();
    if (delay > 0) await sleep(delay);
    this.sendBinary(cborFrame(rawId, key, rawBody));
  }

  /** Session bookkeeping after a successful core call in session `target`
   *  (this socket's own, or a client-named one). */
  afterSuccess(method, result, target = this) {
    if (method === 'signin' || method === 'signup' || method === 'authenticate') target.authed = true;
    else if (method === 'invalidate' || method === 'reset') target.authed = false;
    else if (method === 'live' && result instanceof Uuid) this.trackLive(result);
    else if (method === 'query' && Array.isArray(result)) {
      for (const r of result) if (r?.type === 'live' && r.result instanceof Uuid) this.trackLive(r.result);
    }
  }

  trackLive(uuid) {
    const key = uuid.toString();
    liveOwners.set(key, this);
    this.liveIds.add(key);
  }

  async reply(idText, key, bodyText) {
    const delay = replyDelay();
    if (delay > 0) await sleep(delay);
    this.sendText(frame(idText, key, bodyText));
  }

  /** Hostile modes that answer without running the request. Returns true if handled. */
  async hostileBeforeExecute(idText, rawId) {
    if (this.format === 'cbor') return this.hostileBeforeExecuteCbor(rawId);
    switch (settings.mode) {
      case 'slow':
        return true; // never answered
      case 'malformed': {
        const delay = replyDelay();
        if (delay > 0) await sleep(delay);
        this.sendText(`{"id":${idText ?? 'null'},"result":[`);
        return true;
      }
      case 'no-id':
        await this.reply(undefined, 'error', JSON.stringify({
          code: -32000, message: 'surpool test server: injected error without id', kind: 'Internal',
        }));
        return true;
      case 'huge': {
        hugeFrameTail ??= Buffer.from(`,"result":"${'x'.repeat(HUGE_BYTES)}"}`);
        const delay = replyDelay();
        if (delay > 0) await sleep(delay);
        if (!this.closed) this.ws.send(Buffer.concat([Buffer.from(`{"id":${idText ?? 'null'}`), hugeFrameTail]), { binary: false });
        return true;
      }
      default:
        return false;
    }
  }

  /** The same modes on a `cbor` socket, with CBOR frames. */
  async hostileBeforeExecuteCbor(rawId) {
    const id = rawId ?? cborBytes(null);
    switch (settings.mode) {
      case 'slow':
        return true;
      case 'malformed': {
        const delay = replyDelay();
        if (delay > 0) await sleep(delay);
        const whole = cborFrame(id, 'result', cborBytes([1, 2, 3]));
        this.sendBinary(whole.subarray(0, whole.length - 1)); // the array misses an item
        return true;
      }
      case 'no-id':
        await this.replyCbor(undefined, 'error', cborBytes({
          code: -32000, message: 'surpool test server: injected error without id', kind: 'Internal',
        }));
        return true;
      case 'huge': {
        const delay = replyDelay();
        if (delay > 0) await sleep(delay);
        hugeCborBody ??= Buffer.concat([cborHead(3, HUGE_BYTES), Buffer.alloc(HUGE_BYTES, 'x')]);
        this.sendBinary(cborFrame(id, 'result', hugeCborBody));
        return true;
      }
      default:
        return false;
    }
  }

  /** Hostile modes that mangle the real reply. On a `cbor` socket bodyText is
   *  the raw CBOR body and rawId the request's raw id. */
  async hostileReply(id, idText, key, bodyText, rawId) {
    const delay = replyDelay();
    if (delay > 0) await sleep(delay);
    if (this.closed) return;
    const isCbor = this.format === 'cbor';
    const text = isCbor ? cborFrame(rawId, key, bodyText) : frame(idText, key, bodyText);
    const send = (payload) => (isCbor ? this.sendBinary(payload) : this.sendText(payload));
    const ws = this.ws;
    switch (settings.mode) {
      case 'wrong-id': {
        if (isCbor) {
          const wrong = typeof id === 'number' ? id + 1000000 : typeof id === 'bigint' ? id + 1000000n : `${id}-wrong`;
          return send(cborFrame(cborBytes(wrong), key, bodyText));
        }
        const wrong = typeof id === 'number' ? String(id + 1000000)
          : typeof id === 'bigint' ? String(id + 1000000n) : JSON.stringify(`${id}-wrong`);
        return this.sendText(frame(wrong, key, bodyText));
      }
      case 'duplicate-id':
        send(text);
        return send(text);
      case 'duplicate-key': {
        // One frame, two "id" keys: the request's own first, the next id
        // (another caller's, on a busy socket) last. A parser that keeps the
        // last key routes this reply to that other caller.
        if (isCbor) {
          const next = typeof id === 'number' ? id + 1 : typeof id === 'bigint' ? id + 1n : `${id}-other`;
          return send(cborMap([['id', rawId ?? cborBytes(null)], ['id', cborBytes(next)], [key, bodyText]]));
        }
        const other = typeof id === 'number' ? String(id + 1)
          : typeof id === 'bigint' ? String(id + 1n) : JSON.stringify(`${id}-other`);
        return this.sendText(`{"id":${idText ?? 'null'},"id":${other},"${key}":${bodyText}}`);
      }
      case 'stolen-id-once': // stolen-id for the first reply after the mode is set
        if (stolenOnceLeft === 0) return send(text);
        stolenOnceLeft = 0;
      // falls through
      case 'stolen-id': {
        // duplicate-key the other way round: another caller's id (the next
        // one) first, the request's own last. Routing reads the first "id",
        // so the frame goes to that caller, or to no one when it is not in
        // flight on this socket; a parser that keeps the last key would take
        // it for the request's own reply.
        if (isCbor) {
          const next = typeof id === 'number' ? id + 1 : typeof id === 'bigint' ? id + 1n : `${id}-other`;
          return send(cborMap([['id', cborBytes(next)], ['id', rawId ?? cborBytes(null)], [key, bodyText]]));
        }
        const other = typeof id === 'number' ? String(id + 1)
          : typeof id === 'bigint' ? String(id + 1n) : JSON.stringify(`${id}-other`);
        return this.sendText(`{"id":${other},"id":${idText ?? 'null'},"${key}":${bodyText}}`);
      }
      case 'binary': // the wrong frame type for the socket's format
        return ws.send(Buffer.from(text), { binary: !isCbor });
      case 'truncate': {
        // A single text frame whose header announces the full length, but
        // only half of the payload is written before the TCP connection dies.
        const payload = Buffer.from(text);
        const half = payload.subarray(0, Math.floor(payload.length / 2));
        const sock = ws._socket;
        if (!sock) return this.kill();
        // Only one truncated frame per socket: a second one written before
        // the first write's callback destroys the socket would complete the
        // first frame's payload with its bytes.
        if (this.truncated) return;
        this.truncated = true;
        sock.write(Buffer.concat([frameHeader(isCbor ? 0x2 : 0x1, true, payload.length), half]), () => sock.destroy());
        return;
      }
      case 'close-mid-reply': {
        // First fragment of a fragmented message (FIN=0), then the TCP
        // connection dies.
        const payload = Buffer.from(text);
        const half = payload.subarray(0, Math.max(1, Math.floor(payload.length / 2)));
        ws.send(half, { binary: isCbor, fin: false }, () => this.kill());
        return;
      }
      default: // modes acting on the transport only (no-upgrade, refuse)
        return send(text);
    }
  }
}

// ---------------------------------------------------------------------------
// HTTP server, upgrades and control
// ---------------------------------------------------------------------------
const tls = args['tls-cert'] ? { cert: readFileSync(args['tls-cert']), key: readFileSync(args['tls-key']) } : null;

function sendHttp(res, status, body, type = 'text/plain; charset=utf-8') {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

let revertTimer = null;
let stolenOnceLeft = 0; // stolen-id-once: replies still to spoil (1 when the mode is set)
function applyControl(body) {
  const next = { ...settings };
  if ('mode' in body) {
    if (!MODES.has(body.mode)) throw new Error(`unknown mode ${body.mode}`);
    next.mode = body.mode;
    stolenOnceLeft = body.mode === 'stolen-id-once' ? 1 : 0;
  }
  for (const k of ['delayMs', 'delayJitterMs', 'dropEvery', 'maxConns']) {
    if (k in body) {
      if (!Number.isSafeInteger(body[k]) || body[k] < 0) throw new Error(`${k} must be a non-negative integer`);
      next[k] = body[k];
    }
  }
  if ('refuseAuthenticate' in body) {
    if (typeof body.refuseAuthenticate !== 'boolean') throw new Error('refuseAuthenticate must be a boolean');
    next.refuseAuthenticate = body.refuseAuthenticate;
  }
  if ('reset' in body && body.reset === true) Object.assign(next, initialSettings);
  if ('forMs' in body && (!Number.isSafeInteger(body.forMs) || body.forMs <= 0)) throw new Error('forMs must be a positive integer');
  const previous = { ...settings };
  Object.assign(settings, next);
  clearTimeout(revertTimer);
  if (body.forMs) {
    revertTimer = setTimeout(() => {
      Object.assign(settings, previous);
      log('control: reverted to', JSON.stringify(settings));
    }, body.forMs);
    revertTimer.unref();
  }
  log('control:', JSON.stringify(settings));
}

async function onRequest(req, res) {
  const url = new URL(req.url, 'http://x');
  if (url.pathname === '/health' && req.method === 'GET') return sendHttp(res, 200, 'OK');
  if (url.pathname === '/version' && req.method === 'GET') return sendHttp(res, 200, coreVersion);
  if (url.pathname === '/stats' && req.method === 'GET') {
    return sendHttp(res, 200, JSON.stringify(stats), 'application/json');
  }
  if (url.pathname === '/control' && req.method === 'GET') {
    return sendHttp(res, 200, JSON.stringify(settings), 'application/json');
  }
  if (url.pathname === '/control' && req.method === 'POST') {
    let body = '';
    for await (const chunk of req) {
      body += chunk;
      if (body.length > 65536) return sendHttp(res, 413, 'too large');
    }
    try {
      const parsed = JSON.parse(body || '{}');
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('expected a JSON object');
      if ('node' in parsed) return sendHttp(res, 200, JSON.stringify(await nodeControl(parsed)), 'application/json');
      applyControl(parsed);
      // dropAll: a one-shot action, not a setting: kill every open socket now.
      if (parsed.dropAll === true) for (const c of [...conns]) c.kill();
    } catch (err) {
      return sendHttp(res, 400, JSON.stringify({ error: err.message }), 'application/json');
    }
    return sendHttp(res, 200, JSON.stringify(settings), 'application/json');
  }
  if (url.pathname === '/rpc') return sendHttp(res, 400, 'Expected a WebSocket upgrade');
  return sendHttp(res, 404, 'Not Found');
}

const server = tls ? https.createServer(tls, onRequest) : http.createServer(onRequest);
const wss = new WebSocketServer({
  noServer: true,
  maxPayload: MAX_MESSAGE,
  perMessageDeflate: false,
  // Select the first offered of `json` and `cbor`; accept without a
  // subprotocol otherwise (then JSON).
  handleProtocols: (protocols) => [...protocols].find((p) => p === 'json' || p === 'cbor') ?? false,
});

const tcpSockets = new Set(); // every accepted TCP connection, for shutdown
let pendingUpgrades = 0;
let nextSocketId = 0;

// Cluster simulator (--nodes N): every node is an HTTP(S) server of its own
// on its own loopback port, all over the ONE core above, so data written
// through one node is read through another (as SurrealDB nodes over TiKV).
// `node.sockets` are its TCP sockets, destroyed when the node is killed.
// With one node (the default) the only node is `server`.
const NODES = intArg('nodes', 1, 16);
const nodes = [];

function newNode(index) {
  const srv = tls ? https.createServer(tls, onRequest) : http.createServer(onRequest);
  const node = { index, srv, port: 0, down: false, sockets: new Set() };
  wireNode(node);
  return node;
}

function trackSocket(node, sock) {
  tcpSockets.add(sock);
  node.sockets.add(sock);
  sock.on('close', () => {
    tcpSockets.delete(sock);
    node.sockets.delete(sock);
  });
}

function wireNode(node) {
  const srv = node.srv;
  srv.on('connection', (sock) => {
    if (settings.mode === 'refuse' || node.down) {
      sock.destroy();
      return;
    }
    trackSocket(node, sock);
  });
  // With TLS, 'connection' is the raw TCP socket; track the TLS socket too.
  srv.on('secureConnection', (sock) => trackSocket(node, sock));
  srv.on('upgrade', onUpgrade);
  srv.on('clientError', onClientError);
}

/** Kill a node: stop listening (connects are refused) and drop its sockets
 *  without a close frame, as a node that died. */
function nodeKill(node) {
  if (node.down) return;
  node.down = true;
  node.srv.close();
  for (const sock of node.sockets) sock.destroy();
  log(`node ${node.index} (port ${node.port}) killed`);
}

/** Bring a killed node back on the same port. */
function nodeRevive(node) {
  if (!node.down) return Promise.resolve();
  const fresh = newNode(node.index);
  return new Promise((resolve, reject) => {
    fresh.srv.once('error', reject);
    fresh.srv.listen(node.port, HOST, () => {
      node.srv = fresh.srv;
      node.sockets = fresh.sockets;
      // The fresh server's handlers close over `fresh`: keep using it.
      nodes[node.index - 1] = fresh;
      fresh.port = node.port;
      log(`node ${node.index} (port ${node.port}) revived`);
      resolve();
    });
  });
}

/** POST /control {"node": k (1-based), "action": "kill" | "revive"}. */
async function nodeControl(body) {
  const k = body.node;
  if (!Number.isSafeInteger(k) || k < 1 || k > nodes.length) throw new Error(`node must be 1..${nodes.length}`);
  const node = nodes[k - 1];
  if (body.action === 'kill') nodeKill(node);
  else if (body.action === 'revive') await nodeRevive(node);
  else throw new Error('action must be kill or revive');
  return nodes.map((n) => ({ node: n.index, port: n.port, down: n.down, sockets: n.sockets.size }));
}

function rejectUpgrade(sock, status, text) {
  sock.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: ${text.length}\r\n\r\n${text}`);
}

function onUpgrade(req, sock, head) {
  if (settings.mode === 'no-upgrade') {
    log('no-upgrade: leaving an upgrade request unanswered');
    sock.on('error', () => {});
    return; // keep the socket open and silent
  }
  const { pathname } = new URL(req.url, 'http://x');
  if (pathname !== '/rpc') return rejectUpgrade(sock, 404, 'Not Found');
  if (settings.maxConns > 0 && stats.sockets + pendingUpgrades >= settings.maxConns) {
    log('max-conns reached: 503');
    return rejectUpgrade(sock, 503, 'Service Unavailable');
  }
  pendingUpgrades++;
  let done = false;
  const finish = () => { if (!done) { done = true; pendingUpgrades--; } };
  sock.once('close', finish);
  wss.handleUpgrade(req, sock, head, (ws) => {
    finish();
    stats.sockets++;
    stats.totalSockets++;
    const id = ++nextSocketId;
    log(`#${id} connected (protocol ${ws.protocol || 'none'})`);
    new Conn(ws, id); // eslint-disable-line no-new
  });
}

function onClientError(err, sock) {
  if (sock.writable) sock.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
  else sock.destroy();
}

nodes.push({ index: 1, srv: server, port: 0, down: false, sockets: new Set() });
wireNode(nodes[0]);
for (let i = 2; i <= NODES; i++) nodes.push(newNode(i));
// The control server (--nodes > 1): plain HTTP on its own loopback port that
// stays up whichever nodes are killed; it answers what a node's HTTP server
// answers (/control, /stats, ...) plus the node actions.
const controlServer = NODES > 1 ? http.createServer(onRequest) : null;

// ---------------------------------------------------------------------------
// Start and stop
// ---------------------------------------------------------------------------
if (NODES === 1) {
  server.listen(PORT, HOST, () => {
    nodes[0].port = server.address().port;
    process.stdout.write(`LISTENING ${server.address().port}\n`);
    log(`listening on ${tls ? 'wss' : 'ws'}://${HOST}:${server.address().port}/rpc, core ${coreVersion}, settings ${JSON.stringify(settings)}`);
  });
} else {
  // `LISTENING <port1> <port2> ... <portN> CONTROL <control port>`: the first
  // token after LISTENING is node 1's port, as for one node.
  const listen = (srv, port) => new Promise((resolve) => srv.listen(port, HOST, () => resolve(srv.address().port)));
  (async () => {
    for (const n of nodes) n.port = await listen(n.srv, n.index === 1 ? PORT : 0);
    const cport = await listen(controlServer, 0);
    process.stdout.write(`LISTENING ${nodes.map((n) => n.port).join(' ')} CONTROL ${cport}\n`);
    log(`cluster of ${NODES} nodes on ${nodes.map((n) => n.port).join(', ')}, control on ${cport}`);
  })();
}
server.on('error', (err) => {
  process.stderr.write(`server.mjs: ${err.message}\n`);
  process.exit(1);
});

let stopping = false;
async function shutdown(why) {
  if (stopping) return;
  stopping = true;
  log(`shutting down (${why})`);
  const hardStop = setTimeout(() => process.exit(0), 3000);
  hardStop.unref();
  for (const n of nodes) n.srv.close();
  controlServer?.close();
  const conns = [...sessions.values()];
  for (const ws of wss.clients) ws.close(1001, 'server shutting down');
  for (const sock of tcpSockets) sock.destroy();
  for (const c of conns) c.onClose();
  await Promise.allSettled(conns.map((c) => c.detached));
  try {
    engine.free();
  } catch {
    // already freed
  }
  process.exit(0);
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
// SIGUSR2 resets every fault setting to its start-up value (a way back from
// `refuse`, where /control is unreachable).
process.on('SIGUSR2', () => {
  clearTimeout(revertTimer);
  Object.assign(settings, initialSettings.mode === 'refuse' ? { ...initialSettings, mode: 'normal' } : initialSettings);
  log('SIGUSR2: settings reset to', JSON.stringify(settings));
});
if (args['exit-on-stdin-close']) {
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('close', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume();
}
