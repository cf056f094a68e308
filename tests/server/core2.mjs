// The SurrealDB 2.x core for `server.mjs --core 2`: the official WebAssembly
// build (@surrealdb/wasm 2.6.1, core surrealdb-2.6.0) behind the same engine
// interface server.mjs uses for the 3.x core (@surrealdb/node):
//
//   engine.execute(cbor request) -> cbor reply    (bare result, or {error})
//   engine.notifications().recv() -> cbor notification | null
//   engine.free()
//
// with 3.x-style sessions: a request may name a `session` (a UUID), `attach`
// opens one, `detach` closes it. The 2.x engine has ONE session and no
// `attach`, so this module keeps each session's state itself (auth token,
// namespace/database, variables, live queries) and, before running a request,
// puts the engine into that session's state. Every call into the engine is
// serialized: the wasm engine cannot run two requests at once (a second call
// while one is suspended, e.g. in SLEEP, aborts the process with "recursive
// use of an object").
//
// Errors: the 2.x engine throws its message as a string; it is returned as
// {error: {code, message}} with 2.x numbering (no `kind`), as a 2.x server
// sends it. See README.md ("2.x mode") for what this cannot emulate.

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { CborCodec, Uuid } from 'surrealdb';

const cbor = CborCodec.DEFAULT;
const HERE = dirname(fileURLToPath(import.meta.url));
const WASM_PKG = join(HERE, 'node_modules', '@surrealdb', 'wasm');

// ---------------------------------------------------------------------------
// 2.x error objects: {code, message}, 2.x numbering.
// ---------------------------------------------------------------------------
const NOT_ALLOWED = 'There was a problem with the database: IAM error: Not enough permissions to perform this action';

/** Errors the server itself produces, in 2.x shape (server.mjs swaps these in). */
export const serverErrors2x = {
  errInvalidRequest: () => ({ code: -32600, message: 'Invalid Request' }),
  errInvalidParams: () => ({ code: -32602, message: 'Invalid params' }),
  // 2.x has no session methods: attach/detach/sessions are unknown methods.
  errMethodNotAllowed: () => ({ code: -32601, message: 'Method not found' }),
  // What a 2.x server started with credentials answers an anonymous caller
  // (its IAM check refuses guests); -32000 like every 2.x database error.
  ERR_NOT_AUTHENTICATED: { code: -32000, message: NOT_ALLOWED },
};

/** A message thrown by the 2.x engine -> the error object a 2.x server sends. */
function errorFromThrown(thrown) {
  const message = typeof thrown === 'string' ? thrown : String(thrown?.message ?? thrown);
  if (message === 'Parse error') return { code: -32700, message };
  if (/^Invalid request/i.test(message)) return { code: -32600, message: 'Invalid Request' };
  if (message === 'Method not found') return { code: -32601, message };
  if (message.startsWith('Invalid params')) return { code: -32602, message: 'Invalid params' };
  return { code: -32000, message };
}

// ---------------------------------------------------------------------------
// Raw CBOR: requests are taken apart and rebuilt without decoding params, so
// the client's values reach the core byte for byte.
// ---------------------------------------------------------------------------

/** End offset of the (definite-length) CBOR item starting at `pos`. */
function itemEnd(buf, pos) {
  let pending = 1;
  while (pending > 0) {
    if (pos >= buf.length) throw new SyntaxError('truncated CBOR');
    const ib = buf[pos++];
    pending--;
    const major = ib >> 5;
    const ai = ib & 31;
    let n = 0;
    if (ai < 24) n = ai;
    else if (ai <= 27) {
      const w = 1 << (ai - 24);
      if (pos + w > buf.length) throw new SyntaxError('truncated CBOR');
      for (let i = 0; i < w; i++) n = n * 256 + buf[pos + i];
      pos += w;
    } else throw new SyntaxError('indefinite-length or reserved CBOR head');
    if (major === 2 || major === 3) {
      if (n > buf.length - pos) throw new SyntaxError('truncated CBOR');
      pos += n;
    } else if (major === 4 || major === 5) {
      if (n > buf.length) throw new SyntaxError('CBOR length beyond the message');
      pending += major === 5 ? 2 * n : n;
    } else if (major === 6) {
      pending += 1;
    }
  }
  return pos;
}

/** A top-level CBOR map -> Map(text key -> raw value bytes). */
function splitMap(bytes) {
  const buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const ib = buf[0];
  if (ib === undefined || ib >> 5 !== 5) throw new SyntaxError('not a CBOR map');
  let pos = 1;
  let count = ib & 31;
  if (count >= 24) {
    if (count > 27) throw new SyntaxError('indefinite-length CBOR map');
    const w = 1 << (count - 24);
    count = 0;
    for (let i = 0; i < w; i++) count = count * 256 + buf[pos + i];
    pos += w;
  }
  const out = new Map();
  for (let i = 0; i < count; i++) {
    const kEnd = itemEnd(buf, pos);
    const key = cbor.decode(buf.subarray(pos, kEnd));
    const vEnd = itemEnd(buf, kEnd);
    if (typeof key === 'string') out.set(key, buf.subarray(kEnd, vEnd));
    pos = vEnd;
  }
  return out;
}

function head(major, n) {
  if (n < 24) return Uint8Array.of((major << 5) | n);
  if (n < 256) return Uint8Array.of((major << 5) | 24, n);
  if (n < 65536) return Uint8Array.of((major << 5) | 25, n >> 8, n & 255);
  return Uint8Array.of((major << 5) | 26, n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255);
}

const enc = (v) => new Uint8Array(cbor.encode(v));

/** A CBOR map from [[text key, raw value bytes], ...]. */
function joinMap(entries) {
  const parts = [head(5, entries.length)];
  for (const [k, v] of entries) {
    const kb = Buffer.from(k, 'utf8');
    parts.push(head(3, kb.length), kb, v);
  }
  return new Uint8Array(Buffer.concat(parts));
}

const NONE = enc(undefined); // what the core returns for "nothing"

// ---------------------------------------------------------------------------
// Loading the wasm engine. dist/surrealdb-wasm.mjs keeps SurrealWasmEngine and
// the wasm-bindgen init function private, and its own loader fetch()es the
// .wasm file (Node's fetch cannot read files). The module text is loaded with
// those two names exported, and init is given the .wasm bytes.
// ---------------------------------------------------------------------------
async function loadEngineClass() {
  const distPath = join(WASM_PKG, 'dist', 'surrealdb-wasm.mjs');
  let src = readFileSync(distPath, 'utf8');
  const sdkImport = 'from "surrealdb";';
  if (!src.includes(sdkImport) || !/\bvar SurrealWasmEngine = class\b/.test(src) ||
      !/\basync function __wbg_init\(/.test(src)) {
    throw new Error(`${distPath}: unexpected layout (is @surrealdb/wasm 2.6.1 installed?)`);
  }
  const distUrl = pathToFileURL(distPath).href;
  src = src.replace(sdkImport, `from ${JSON.stringify(import.meta.resolve('surrealdb'))};`)
    .replaceAll('import.meta.url', JSON.stringify(distUrl));
  // Stack traces name the real file instead of a data: URL.
  src += `\nexport { SurrealWasmEngine as __surpoolEngine, __wbg_init as __surpoolInit };\n//# sourceURL=${distUrl}\n`;
  const mod = await import(`data:text/javascript;base64,${Buffer.from(src).toString('base64')}`);
  await mod.__surpoolInit({ module_or_path: readFileSync(join(WASM_PKG, 'wasm', 'surrealdb_bg.wasm')) });
  return mod.__surpoolEngine;
}

// ---------------------------------------------------------------------------
// The engine with emulated sessions
// ---------------------------------------------------------------------------
const UNKNOWN = Symbol('unknown');
const LIVE_RE = /\bLIVE\b/i;

/** Session state as a 2.x server keeps it per connection. */
function freshState(rawSession) {
  return { rawSession, token: null, ns: undefined, db: undefined, vars: new Map(), lives: new Set() };
}

class Core2Engine {
  constructor(wasm) {
    this.wasm = wasm;
    this.tail = Promise.resolve(); // every engine call runs after the previous one
    this.states = new Map(); // session uuid text -> state
    this.liveOwners = new Map(); // live query uuid text -> session uuid text
    // What the engine's one session holds right now (UNKNOWN forces a reset).
    this.eng = { token: UNKNOWN, ns: UNKNOWN, db: UNKNOWN, vars: new Map() };
    this.ids = 0;
    this.stats = { requests: 0, switches: 0, restoreCalls: 0 };
  }

  /** Runs `job` after every earlier job (strict FIFO, one at a time). */
  serial(job) {
    const run = this.tail.then(job);
    this.tail = run.catch(() => {});
    return run;
  }

  /** One engine call (inside a job). Throws the engine's message as an Error. */
  async call(method, rawParams) {
    const entries = [['id', enc(`c2-${++this.ids}`)], ['method', enc(method)]];
    if (rawParams !== undefined) entries.push(['params', rawParams]);
    try {
      return new Uint8Array(await this.wasm.execute(joinMap(entries)));
    } catch (thrown) {
      if (thrown instanceof Error) throw thrown; // a wasm trap or a JS bug
      throw Object.assign(new Error(String(thrown)), { thrown });
    }
  }

  /** execute(): the @surrealdb/node interface. */
  async execute(bytes) {
    const req = splitMap(bytes);
    const method = req.has('method') ? cbor.decode(req.get('method')) : undefined;
    const rawParams = req.get('params');
    const rawSession = req.get('session');
    if (rawSession === undefined) {
      // The server's own calls (version, the root user, record-id checks):
      // no session state; failures are thrown like the 3.x engine throws
      // when it cannot decode a request.
      return this.serial(() => this.call(method, rawParams));
    }
    const key = String(cbor.decode(rawSession));
    let st = this.states.get(key);
    if (!st) this.states.set(key, (st = freshState(rawSession)));
    switch (method) {
      case 'attach':
        return NONE;
      case 'detach':
        return this.serial(async () => {
          await this.killLives(st);
          this.states.delete(key);
          return NONE;
        });
      case 'reset':
        // The 2.x wasm engine aborts on `reset` (a Rust panic): emulated.
        return this.serial(async () => {
          await this.killLives(st);
          this.states.set(key, freshState(rawSession));
          return NONE;
        });
      default:
        return this.serial(() => this.run(key, st, method, rawParams));
    }
  }

  /** Runs one client request in its session's state; updates the state. */
  async run(key, st, method, rawParams) {
    this.stats.requests++;
    await this.restore(st);
    let reply;
    try {
      reply = await this.call(method, rawParams);
    } catch (err) {
      if (!('thrown' in err)) throw err;
      // A failed call leaves the engine's session as it was, except that
      // nothing is promised for the calls that change it: re-read it.
      if (STATE_METHODS.has(method)) this.eng.token = UNKNOWN;
      return enc({ error: errorFromThrown(err.thrown) });
    }
    if (STATE_METHODS.has(method) || method === 'live' || method === 'kill' || method === 'query') {
      await this.track(key, st, method, rawParams, reply);
    }
    return reply;
  }

  /** Session bookkeeping after a successful call. */
  async track(key, st, method, rawParams, reply) {
    const params = rawParams === undefined ? [] : cbor.decode(rawParams);
    const result = cbor.decode(reply);
    switch (method) {
      case 'signin':
      case 'signup':
        st.token = typeof result === 'string' ? result : (typeof result?.token === 'string' ? result.token : null);
        break;
      case 'authenticate':
        st.token = typeof params[0] === 'string' ? params[0] : null;
        break;
      case 'invalidate':
        st.token = null;
        break;
      case 'let':
        st.vars.set(String(params[0]), rawParams);
        this.eng.vars.set(String(params[0]), rawParams);
        return;
      case 'unset':
        st.vars.delete(String(params[0]));
        this.eng.vars.delete(String(params[0]));
        return;
      case 'live':
        if (result instanceof Uuid) this.addLive(key, st, result);
        return;
      case 'kill':
        if (params[0] !== undefined) this.dropLive(String(params[0]));
        return;
      case 'query':
        if (typeof params[0] === 'string' && LIVE_RE.test(params[0]) && Array.isArray(result)) {
          for (const r of result) if (r?.status === 'OK' && r.result instanceof Uuid) this.addLive(key, st, r.result);
        }
        return;
      default: // use
        break;
    }
    // signin/signup/authenticate/invalidate/use: the engine now holds this
    // session's new state; read back its namespace and database (a token
    // or a `use` with NONE/NULL may have changed or kept them).
    this.eng.token = st.token;
    const [ns, db] = await this.readNsDb();
    st.ns = ns;
    st.db = db;
    this.eng.ns = ns;
    this.eng.db = db;
  }

  async readNsDb() {
    try {
      const r = cbor.decode(await this.call('query', enc(['RETURN [session::ns(), session::db()]'])));
      const v = r?.[0]?.result;
      if (Array.isArray(v)) return [v[0] ?? undefined, v[1] ?? undefined];
    } catch {
      // fall through
    }
    return [UNKNOWN, UNKNOWN];
  }

  /** Puts the engine's one session into `st` (only what differs). */
  async restore(st) {
    const eng = this.eng;
    let calls = 0;
    if (eng.token !== st.token) {
      if (st.token !== null) {
        calls++;
        try {
          await this.call('authenticate', enc([st.token]));
        } catch (err) {
          if (!('thrown' in err)) throw err;
          // The token no longer verifies (it expired): the session is
          // unauthenticated from now on.
          st.token = null;
        }
      }
      if (st.token === null) {
        calls++;
        await this.call('invalidate', enc([]));
      }
      eng.token = st.token;
      eng.ns = UNKNOWN; // a token may carry a namespace and database
      eng.db = UNKNOWN;
    }
    if (eng.ns !== st.ns || eng.db !== st.db) {
      calls++;
      const ns = st.ns === UNKNOWN ? null : st.ns ?? null;
      const db = st.db === UNKNOWN ? null : st.db ?? null;
      await this.call('use', enc([ns, db]));
      eng.ns = st.ns;
      eng.db = st.db;
    }
    for (const name of [...eng.vars.keys()]) {
      if (!st.vars.has(name)) {
        calls++;
        await this.call('unset', enc([name]));
        eng.vars.delete(name);
      }
    }
    for (const [name, raw] of st.vars) {
      if (eng.vars.get(name) !== raw) {
        calls++;
        await this.call('let', raw);
        eng.vars.set(name, raw);
      }
    }
    if (calls > 0) {
      this.stats.switches++;
      this.stats.restoreCalls += calls;
    }
  }

  addLive(key, st, uuid) {
    const id = uuid.toString();
    st.lives.add(id);
    this.liveOwners.set(id, key);
  }

  dropLive(id) {
    const owner = this.liveOwners.get(id);
    if (owner !== undefined) this.states.get(owner)?.lives.delete(id);
    this.liveOwners.delete(id);
  }

  /** Kills a session's live queries (they die with the connection on 2.x). */
  async killLives(st) {
    if (st.lives.size === 0) return;
    await this.restore(st);
    for (const id of [...st.lives]) {
      try {
        await this.call('kill', enc([new Uuid(id)]));
      } catch (err) {
        if (!('thrown' in err)) throw err;
      }
      this.dropLive(id);
    }
  }

  /** Notifications, tagged with the owning session as the 3.x engine does. */
  notifications() {
    const reader = this.wasm.notifications().getReader();
    return {
      recv: async () => {
        const { done, value } = await reader.read();
        if (done) return null;
        const bytes = new Uint8Array(value);
        try {
          const entries = splitMap(bytes);
          const id = String(cbor.decode(entries.get('id')));
          const owner = this.liveOwners.get(id);
          const st = owner === undefined ? undefined : this.states.get(owner);
          if (cbor.decode(entries.get('action')) === 'KILLED') this.dropLive(id);
          if (!st || entries.has('session')) return bytes;
          return joinMap([...entries, ['session', st.rawSession]]);
        } catch {
          return bytes;
        }
      },
    };
  }

  free() {
    this.wasm.free();
  }
}

/** Methods whose success changes the session's state. */
const STATE_METHODS = new Set(['signin', 'signup', 'authenticate', 'invalidate', 'use', 'let', 'unset']);

/** Starts an in-memory 2.x engine (`mem://`). */
export async function connectCore2() {
  const SurrealWasmEngine = await loadEngineClass();
  return new Core2Engine(await SurrealWasmEngine.connect('mem://'));
}
