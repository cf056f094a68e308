#!/usr/bin/env node
// Turns the benches' JSON lines (results/run<N>/*.jsonl) into docs/PERFORMANCE.md
// and docs/perf-{throughput,burst,pool}.png (gnuplot). Called by scripts/bench.sh.
//
// Figures are medians over the rounds. Ratios are computed inside each round
// (both sides measured minutes apart on the same machine state) and then the
// median of those ratios is shown.
import { readFileSync, readdirSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: {
    results: { type: 'string' }, 'out-dir': { type: 'string', default: 'docs' },
    runs: { type: 'string' }, nproc: { type: 'string' }, cpu: { type: 'string' },
    kernel: { type: 'string' }, date: { type: 'string' }, elapsed: { type: 'string' },
    node: { type: 'string' }, lws: { type: 'string' }, zdb: { type: 'string' },
    core: { type: 'string' }, quick: { type: 'string', default: '0' },
    commit: { type: 'string', default: 'unknown' },
  },
  strict: true,
});

/** The "## ... (measured by hand ...)" sections of the first existing file, each up to the next "## ". */
function handMeasuredSections(...files) {
  for (const f of files) {
    let text;
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    const sections = [];
    let cur = null;
    for (const line of text.split('\n')) {
      if (line.startsWith('## ')) {
        if (cur) sections.push(cur.join('\n').trimEnd());
        cur = /measured by hand/i.test(line) ? [line] : null;
      } else if (cur) {
        cur.push(line);
      }
    }
    if (cur) sections.push(cur.join('\n').trimEnd());
    return sections;
  }
  return [];
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------
const records = [];
const runIds = [];
for (const dir of readdirSync(opt.results).filter((d) => /^run\d+$/.test(d)).sort()) {
  const run = Number(dir.slice(3));
  runIds.push(run);
  for (const f of readdirSync(join(opt.results, dir)).filter((x) => x.endsWith('.jsonl'))) {
    for (const line of readFileSync(join(opt.results, dir, f), 'utf8').split('\n')) {
      if (!line.trim()) continue;
      try {
        records.push({ ...JSON.parse(line), run });
      } catch {
        process.stderr.write(`report: skipping a bad line in ${dir}/${f}\n`);
      }
    }
  }
}

const median = (xs) => {
  const v = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};
const matches = (r, where) => Object.entries(where).every(([k, v]) => r[k] === v);
const select = (where) => records.filter((r) => matches(r, where));
/** Median over rounds of field `f` of the records matching `where`. */
const med = (where, f) => median(select(where).map((r) => r[f]));
/** Median over rounds of a(r)/b(r), both taken in the same round. */
function medRatio(whereA, fA, whereB, fB = fA) {
  const ratios = [];
  for (const run of runIds) {
    const a = select({ ...whereA, run })[0]?.[fA];
    const b = select({ ...whereB, run })[0]?.[fB];
    if (typeof a === 'number' && typeof b === 'number' && b !== 0) ratios.push(a / b);
  }
  return median(ratios);
}
/** Per round, a / max(b over several variants); median. */
function medRatioBest(whereA, fA, whereBs, fB = fA) {
  const ratios = [];
  for (const run of runIds) {
    const a = select({ ...whereA, run })[0]?.[fA];
    const bs = whereBs.map((w) => select({ ...w, run })[0]?.[fB]).filter((x) => typeof x === 'number');
    if (typeof a === 'number' && bs.length) ratios.push(a / Math.max(...bs));
  }
  return median(ratios);
}
const uniq = (xs) => [...new Set(xs)].sort((a, b) => a - b);
const values = (where, f) => uniq(select(where).map((r) => r[f]).filter((x) => x !== undefined && x !== null));

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------
const fmt = (x, d = 0) => (x === null || x === undefined ? '–' : Number(x).toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d }));
const fmtRate = (x) => (x === null ? '–' : x >= 100000 ? `${fmt(x / 1000, 0)}k` : x >= 10000 ? `${fmt(x / 1000, 1)}k` : fmt(x, 0));
const fmtNs = (ns) => {
  if (ns === null || ns === undefined) return '–';
  if (ns >= 1e6) return `${fmt(ns / 1e6, ns >= 1e7 ? 0 : 1)} ms`;
  if (ns >= 1e3) return `${fmt(ns / 1e3, ns >= 1e4 ? 0 : 1)} µs`;
  return `${fmt(ns, 0)} ns`;
};
const fmtX = (x, d = 2) => (x === null ? '–' : `${fmt(x, d)}×`);
const fmtPct = (x) => (x === null ? '–' : `${fmt(x * 100, 0)}%`);
const table = (head, rows) => [
  `| ${head.join(' | ')} |`,
  `| ${head.map((h, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`,
  ...rows.map((r) => `| ${r.join(' | ')} |`),
].join('\n');

const out = [];
const p = (...lines) => out.push(...lines);

// ---------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------
const SERVERS = ['real', 'null', 'bench-core', 'bench-null'];
const SDK_SERVERS = ['bench-core', 'bench-null'];
const SERVER_LABEL = {
  real: 'real core, tests/server (JSON)',
  null: 'null server, tests/server/null_server.mjs (JSON, canned replies)',
  'bench-core': 'real core, bench/cbor_server.mjs (JSON for surpool, CBOR for the SDK)',
  'bench-null': 'canned replies, bench/cbor_server.mjs --null (JSON for surpool, CBOR for the SDK)',
};
const CONC = values({ bench: 'throughput' }, 'concurrency');
const targets = [];

// 1. Burst drain on the lease path within 1.1x of ideal.
function leaseBurstsOf(server) {
  const rows = [];
  for (const M of values({ bench: 'burst', impl: 'lease', server }, 'M'))
    for (const X of values({ bench: 'burst', impl: 'lease', server, M }, 'X_ms'))
      for (const B of values({ bench: 'burst', impl: 'lease', server, M, X_ms: X }, 'B')) {
        const w = { bench: 'burst', impl: 'lease', server, B, M, X_ms: X };
        rows.push({ B, M, X, wall: med(w, 'wall_ms'), ideal: med(w, 'ideal_ms'),
          ratio: med(w, 'ratio'), round: med(w, 'round_ms'), floor: med(w, 'floor_ms'),
          ratioFloor: med(w, 'ratio_floor'), errors: med(w, 'errors') });
      }
  return rows;
}
const leaseBursts = leaseBurstsOf('real');
const leaseBurstsNull = leaseBurstsOf('null');
{
  const summary = (rows) => {
    const worst = rows.reduce((a, b) => (b.ratio > (a?.ratio ?? 0) ? b : a), null);
    const within = rows.filter((b) => b.ratio <= 1.1).length;
    return { worst, within, all: within === rows.length,
      maxFloor: rows.length ? Math.max(...rows.map((b) => b.ratioFloor ?? 0)) : null,
      text: worst ? `${within} of ${rows.length} configurations within 1.1×, worst ${fmtX(worst.ratio)} (B=${worst.B}, M=${worst.M}, X=${worst.X} ms)` : 'not measured' };
  };
  const sNull = summary(leaseBurstsNull);
  const sReal = summary(leaseBursts);
  const worstFloor = leaseBursts.reduce((a, b) => (b.ratioFloor > (a?.ratioFloor ?? 0) ? b : a), null);
  let status = 'not measured';
  if (sNull.worst && sReal.worst) status = sNull.all && sReal.all ? 'met' : sNull.all ? 'met by the pool; not met on the real core' : 'not met';
  else if (sReal.worst) status = sReal.all ? 'met' : 'not met';
  targets.push({
    name: 'Burst drain on the lease path within 1.1× of ideal `ceil(B/M)×X`',
    status,
    text: `Pool alone (null server's \`sleep\` method: the server waits X and does nothing else): ${sNull.text}; ` +
      (sNull.worst ? `one isolated round of M at once already takes ${fmt(Math.min(...leaseBurstsNull.map((b) => b.round - b.X)), 1)}–${fmt(Math.max(...leaseBurstsNull.map((b) => b.round - b.X)), 1)} ms more than X (round trip, timer and thread wake-up), and wall ÷ (rounds × that round) is at most ${fmtX(sNull.maxFloor)}: the queueing and handoff add nothing measurable. ` : '') +
      `Real core (\`sleep(Xms)\` queries): ${sReal.text}` +
      (worstFloor ? `; there one round of M requests at once already takes ${fmt(Math.min(...leaseBursts.map((b) => b.round - b.X)), 1)}–${fmt(Math.max(...leaseBursts.map((b) => b.round - b.X)), 1)} ms more than X (server work), and wall ÷ (rounds × that round) is at most ${fmtX(worstFloor.ratioFloor)}.` : '.'),
  });
}

// 2. Lane >= JS SDK throughput at every concurrency, and burst time.
{
  const rows = [];
  let allOk = true;
  let measured = false;
  for (const server of SDK_SERVERS)
    for (const c of CONC) {
      const lane = { bench: 'throughput', server, impl: 'lane_async', concurrency: c };
      const sdks = ['sdk-1sock', 'sdk-Nsock'].map((impl) => ({ bench: 'throughput', server, impl, concurrency: c }));
      const r = medRatioBest(lane, 'ops_per_s', sdks);
      if (r === null) continue;
      measured = true;
      if (r < 1) allOk = false;
      rows.push(`${server} c=${c}: ${fmtX(r)}`);
    }
  const bursts = [];
  for (const X of values({ bench: 'burst', impl: 'sdk', server: 'bench-core' }, 'X_ms'))
    for (const B of values({ bench: 'burst', impl: 'sdk', server: 'bench-core', X_ms: X }, 'B')) {
      const laneDefault = select({ bench: 'burst', impl: 'lane', server: 'bench-core', B, X_ms: X })
        .filter((r) => r.max_inflight === Math.min(...values({ bench: 'burst', impl: 'lane' }, 'max_inflight')));
      const ratios = [];
      for (const run of runIds) {
        const l = laneDefault.find((r) => r.run === run)?.wall_ms;
        const s = select({ bench: 'burst', impl: 'sdk', server: 'bench-core', B, X_ms: X, run })[0]?.wall_ms;
        if (l && s) ratios.push(s / l);
      }
      const r = median(ratios);
      if (r === null) continue;
      measured = true;
      if (r < 1) allOk = false;
      bursts.push(`B=${B} X=${X}: ${fmtX(r)}`);
    }
  targets.push({
    name: 'Shared lane ≥ the JS SDK\'s throughput at every concurrency, and its burst time',
    status: !measured ? 'not measured' : allOk ? 'met' : 'not met',
    text: `Both against bench/cbor_server.mjs (the same core; JSON for surpool, CBOR for the SDK). Throughput, lane (\`surpool_query_async\`, N in flight) ÷ the better of the SDK on 1 socket and on N sockets: ${rows.join('; ')}. ` +
      `Burst, SDK wall time ÷ lane wall time (≥ 1× means the lane drains at least as fast): ${bursts.join('; ')}.`,
  });
}

// 3. >= 90% of the bare client's throughput.
{
  const rows = [];
  const laneBare = [];
  let allOk = true;
  let measured = false;
  for (const server of SERVERS)
    for (const c of CONC) {
      const r = medRatio({ bench: 'throughput', server, impl: 'lane_async', concurrency: c }, 'ops_per_s',
        { bench: 'throughput', server, impl: 'bare', concurrency: c });
      if (r === null) continue;
      measured = true;
      if (r < 0.9) allOk = false;
      rows.push(`${server} c=${c}: ${fmtPct(r)}`);
      laneBare.push(r);
    }
  targets.push({
    name: 'Shared lane ≥ 90% of the bare client\'s throughput',
    status: !measured ? 'not measured' : allOk ? 'met' : 'not met',
    text: `lane_async ÷ bare (same transport and codec, no pool, 2 sockets), per server and concurrency: ${rows.join('; ')}. ` +
      `Median over these points ${fmtPct(median(laneBare))}, lowest ${fmtPct(laneBare.length ? Math.min(...laneBare) : null)}; ` +
      `the bare client's own spread between rounds (max ÷ min, median over points) is ${fmtX(median(SERVERS.flatMap((server) => CONC.map((c) => {
        const v = select({ bench: 'throughput', server, impl: 'bare', concurrency: c }).map((r) => r.ops_per_s);
        return v.length > 1 ? Math.max(...v) / Math.min(...v) : null;
      }))))}.`,
  });
}

// 4. Pool overhead uncontended < 200 ns per acquire+release.
{
  const rows = values({ bench: 'pool', impl: 'surpool', threads: 1 }, 'conns')
    .map((conns) => ({ conns, ns: med({ bench: 'pool', impl: 'surpool', threads: 1, conns }, 'ns_per_op') }));
  const worst = Math.max(...rows.map((r) => r.ns));
  targets.push({
    name: 'Pool overhead uncontended < 200 ns per acquire+release',
    status: rows.length === 0 ? 'not measured' : worst < 200 ? 'met' : 'not met',
    text: rows.map((r) => `${r.conns} conn${r.conns > 1 ? 's' : ''}: ${fmt(r.ns, 0)} ns`).join('; ') +
      ` (1 thread, fake transport; naive mutex+condvar pool: ${values({ bench: 'pool', impl: 'naive', threads: 1 }, 'conns').map((conns) => `${fmt(med({ bench: 'pool', impl: 'naive', threads: 1, conns }, 'ns_per_op'), 0)} ns`).join(' / ')}).`,
  });
}

// 5. No throughput collapse at 1000 connections.
{
  const ns = values({ bench: 'scale' }, 'conns');
  const rows = [];
  let allOk = true;
  let measured = false;
  if (ns.includes(1000) && ns.includes(100)) {
    for (const impl of ['lease', 'lane']) {
      const r = medRatio({ bench: 'scale', impl, conns: 1000 }, 'ops_per_s', { bench: 'scale', impl, conns: 100 });
      if (r === null) continue;
      measured = true;
      if (r < 0.9) allOk = false;
      rows.push(`${impl}: ${fmt(med({ bench: 'scale', impl, conns: 1000 }, 'ops_per_s'), 0)}/s at 1000 = ${fmtPct(r)} of its 100-connection figure`);
    }
  }
  targets.push({
    name: 'At 1000 connections ≥ 90% of the 100-connection throughput (issue 12)',
    status: !measured ? 'not measured' : allOk ? 'met' : 'not met',
    text: rows.join('; ') + '.',
  });
}

// Issue 12: head-of-line blocking and memory (bench_hol, bench_mem, bench_scale).
const HOL_PING = (bytes) => (bytes ? { bench: 'hol', kind: 'ping', load: 'big', big_bytes: bytes } : { bench: 'hol', kind: 'ping', load: 'alone' });
const HOL_TP = (bytes) => (bytes ? { bench: 'hol', kind: 'throughput', load: 'big', big_bytes: bytes } : { bench: 'hol', kind: 'throughput', load: 'alone' });
const HOL_SIZES = values({ bench: 'hol', load: 'big' }, 'big_bytes');
// bench_hol's controls: load "separate" (the pullers on a second pool), "burn" (CPU spinners).
const HOL_CTL = (load, bytes) => ({ bench: 'hol', kind: 'ping', load, big_bytes: bytes });
const fmtBytes = (b) => (b === null || b === undefined ? '–' : b >= 1e6 ? `${fmt(b / 1e6, b % 1e6 ? 1 : 0)} MB` : b >= 1e3 ? `${fmt(b / 1e3, 0)} kB` : `${fmt(b)} B`);
const pullers = (bytes) => med(HOL_PING(bytes), 'pullers');
// 6. A lease's ping p99 while other leases pull 5 MB replies.
{
  const p99 = med(HOL_PING(5000000), 'p99_ns');
  targets.push({
    name: 'A lease\'s ping p99 ≤ 10 ms while two other leases of its pool pull 5 MB replies (issue 12)',
    status: p99 === null ? 'not measured' : p99 <= 10e6 ? 'met' : 'not met',
    text: p99 === null ? 'bench_hol did not run with 5 MB pulls.' :
      `p99 ${fmtNs(p99)} (p50 ${fmtNs(med(HOL_PING(5000000), 'p50_ns'))}) with ${pullers(5000000)} leases pulling; alone: p99 ${fmtNs(med(HOL_PING(0), 'p99_ns'))}, p50 ${fmtNs(med(HOL_PING(0), 'p50_ns'))} (bench/canned_server.mjs, prebuilt replies).`,
  });
}
// 7. ... and while they pull 1 MB replies, against its own alone p99.
{
  const r = medRatio(HOL_PING(1000000), 'p99_ns', HOL_PING(0));
  const sep = medRatio(HOL_CTL('separate', 1000000), 'p99_ns', HOL_PING(0));
  const burn = medRatio(HOL_CTL('burn', 0), 'p99_ns', HOL_PING(0));
  const ctl = [];
  if (sep !== null) ctl.push(`the same pulls on leases of a second pool (its own service thread) ${fmtX(sep, 1)}`);
  if (burn !== null) ctl.push(`${fmt(med(HOL_CTL('burn', 0), 'pullers'))} threads that only spin on the CPU, no I/O, ${fmtX(burn, 1)}`);
  const controls = ctl.length ? ` Controls of the same run: ${ctl.join('; ')} (see Head-of-line).` : '';
  targets.push({
    name: 'A lease\'s ping p99 ≤ 2× its alone p99 while two other leases pull 1 MB replies (issue 12)',
    status: r === null ? 'not measured' : r <= 2 ? 'met' : 'not met',
    text: r === null ? 'bench_hol did not run with 1 MB pulls.' :
      `${fmtX(r, 1)} (p99 ${fmtNs(med(HOL_PING(1000000), 'p99_ns'))} with ${pullers(1000000)} leases pulling vs ${fmtNs(med(HOL_PING(0), 'p99_ns'))} alone, ratio taken in each round).${controls}`,
  });
}
// 8. Peak client RSS for a 50 MB result.
{
  const w = { bench: 'mem', payload_bytes: 50000000, mode: 'json_t' };
  const wr = { bench: 'mem', payload_bytes: 50000000, mode: 'raw' };
  const r = med(w, 'peak_over_payload');
  const rr = med(wr, 'peak_over_payload');
  const line = (x, ww) => `${fmtX(x, 1)} (peak ${fmt(med(ww, 'peak_rss_bytes') / 1048576)} MiB over a baseline of ${fmt(med(ww, 'rss_before_bytes') / 1048576)} MiB)`;
  targets.push({
    name: 'Peak client RSS for one 50 MB result ≤ 3× the payload (issue 12)',
    status: rr === null ? 'not measured' : rr <= 3 ? `met by raw results; ${r !== null && r <= 3 ? 'met' : 'not met'} as a json_t tree` : 'not met',
    text: r === null ? 'bench_mem did not run for 50 MB.' :
      `raw result (\`surpool_conn_query_raw\`, docs/raw.md): ${rr === null ? 'not measured' : line(rr, wr)}; json_t tree: ${line(r, w)}. getrusage ru_maxrss, one process per size and mode.`,
  });
}
// 9. Client memory per idle connection: the marginal cost between the smallest
// and the largest N of bench_scale, per round (each N is its own process).
const scaleNs = values({ bench: 'scale_open' }, 'conns');
const perIdleConn = (() => {
  if (scaleNs.length < 2) return null;
  const lo = scaleNs[0], hi = scaleNs[scaleNs.length - 1];
  const xs = [];
  for (const run of runIds) {
    const a = select({ bench: 'scale_open', conns: lo, run })[0]?.rss_delta_bytes;
    const b = select({ bench: 'scale_open', conns: hi, run })[0]?.rss_delta_bytes;
    if (typeof a === 'number' && typeof b === 'number') xs.push((b - a) / (hi - lo));
  }
  return { lo, hi, bytes: median(xs) };
})();
{
  const kib = perIdleConn?.bytes == null ? null : perIdleConn.bytes / 1024;
  targets.push({
    name: 'Client memory ≤ 16 KiB per idle connection (issue 12)',
    status: kib === null ? 'not measured' : kib <= 16 ? 'met' : 'not met',
    text: kib === null ? 'bench_scale did not run for two pool sizes.' :
      `${fmt(kib, 1)} KiB: the RSS growth of a pool of ${perIdleConn.hi} connections minus that of a pool of ${perIdleConn.lo}, over the ${perIdleConn.hi - perIdleConn.lo} extra connections (each pool in its own process, same round), so the pool's fixed cost cancels out.`,
  });
}

// ---------------------------------------------------------------------------
// Document
// ---------------------------------------------------------------------------
const nRuns = runIds.length;
p('# Performance', '',
  '_Generated by `scripts/bench.sh` — do not edit by hand; re-run the script._', '',
  'Every figure is the **median of ' + nRuns + ' rounds** (each round runs every bench once, one round after the other). ' +
  'Ratios are taken **inside each round** (the figure and its baseline measured minutes apart) and the median of those ratios is shown. ' +
  'Client and servers share the machine below; it is a noisy virtual machine, so differences under ~10% are within the noise.', '',
  '## Machine and run', '',
  table(['', ''], [
    ['CPUs (`nproc`)', opt.nproc], ['CPU model', opt.cpu], ['Kernel', opt.kernel],
    ['Date (UTC)', opt.date], ['surpool', `commit ${opt.commit}, CMAKE_BUILD_TYPE=Release`],
    ['libwebsockets', opt.lws], ['libzdb', opt.zdb], ['Node.js', opt.node],
    ['SurrealDB core (test server)', opt.core], ['JavaScript SDK', '`surrealdb` 2.0.8 (tests/server/package-lock.json)'],
    ['Rounds', String(nRuns) + (opt.quick === '1' ? ' (--quick: reduced set)' : '')],
    ['Whole `scripts/bench.sh` run', `${opt.elapsed} s (build and installs included)`],
    ['Load average (1/5/15 min) at start → end of each round', runIds.map((run) => {
      const st = select({ bench: 'load', when: 'start', run })[0]?.loadavg ?? '?';
      const en = select({ bench: 'load', when: 'end', run })[0]?.loadavg ?? '?';
      return `round ${run}: ${st} → ${en}`;
    }).join('; ')],
  ]), '');

p('## Where the targets stand', '',
  table(['Target', 'Status', 'Measured'], targets.map((t) => [t.name, `**${t.status}**`, t.text])), '');

// ---- pool ----
p('## Pool overhead (`bench_pool`)', '',
  'surpool on the fake transport (`tests/fake_transport.c`: connections open instantly, no I/O), so only the pool core is measured: ' +
  'one `surpool_pool_acquire` + `surpool_conn_release` per operation. Baselines in the same process: **naive** — a mutex, one ' +
  'condition variable and a stack of idle connections, release pushes and `pthread_cond_signal`s one waiter (written in the bench); ' +
  '**libzdb** — `ConnectionPool_getConnection` + `Connection_close` over SQLite `:memory:` (uncontended only).', '',
  '### Uncontended (1 thread)', '');
{
  const rows = values({ bench: 'pool', threads: 1 }, 'conns').map((conns) => {
    const w = (impl) => ({ bench: 'pool', impl, threads: 1, conns });
    return [String(conns), `${fmt(med(w('surpool'), 'ns_per_op'), 0)} ns`, `${fmt(med(w('naive'), 'ns_per_op'), 0)} ns`,
      `${fmt(med(w('libzdb-sqlite'), 'ns_per_op'), 0)} ns`,
      fmtX(medRatio(w('surpool'), 'ns_per_op', w('naive'))), fmtX(medRatio(w('surpool'), 'ns_per_op', w('libzdb-sqlite')))];
  });
  p(table(['Connections', 'surpool', 'naive', 'libzdb (SQLite)', 'surpool ÷ naive', 'surpool ÷ libzdb'], rows), '');
}
p('### Contended: throughput and handoff latency', '',
  'Handoff latency: from the start of a release to the return of the acquire that received that connection, counted only for ' +
  'acquires that started before that release (so they were waiting). "handoffs" is how many such samples a round saw: the naive pool ' +
  'rarely hands over at all — the releasing thread, still running, takes the connection straight back (barging) while the woken ' +
  'waiter finds the stack empty and sleeps again. surpool hands every released connection to the oldest waiter (FIFO), which costs a ' +
  'context switch per operation when callers outnumber connections: that is the price of fairness the throughput column shows.', '');
{
  const rows = [];
  for (const conns of values({ bench: 'pool', impl: 'surpool' }, 'conns'))
    for (const threads of values({ bench: 'pool', impl: 'surpool', conns }, 'threads')) {
      if (threads === 1) continue;
      const s = { bench: 'pool', impl: 'surpool', threads, conns };
      const n = { bench: 'pool', impl: 'naive', threads, conns };
      rows.push([`${threads} × ${conns}`, fmtRate(med(s, 'ops_per_s')), fmtRate(med(n, 'ops_per_s')),
        fmtX(medRatio(s, 'ops_per_s', n)),
        `${fmtNs(med(s, 'p50_ns'))} / ${fmtNs(med(s, 'p99_ns'))} (${fmt(med(s, 'handoff_samples'))})`,
        `${fmtNs(med(n, 'p50_ns'))} / ${fmtNs(med(n, 'p99_ns'))} (${fmt(med(n, 'handoff_samples'))})`]);
    }
  p(table(['threads × conns', 'surpool ops/s', 'naive ops/s', 'surpool ÷ naive', 'surpool handoff p50 / p99 (handoffs)', 'naive handoff p50 / p99 (handoffs)'], rows), '');
}
p('### Burst with a short timeout: timeouts and lost wake-ups', '',
  'Threads released together, each doing a few acquire (short timeout) → hold ~100 µs → release. "gave up while idle" counts naive ' +
  'acquires whose timed wait expired while a connection sat on the idle stack — the lost wake-up (the signal went to a thread that ' +
  'did not take the connection, or to nobody).', '');
{
  const rows = [];
  for (const [threads, conns] of uniq(select({ bench: 'pool_burst' }).map((r) => r.threads * 1000 + r.conns)).map((k) => [Math.floor(k / 1000), k % 1000])) {
    for (const impl of ['surpool', 'naive']) {
      const w = { bench: 'pool_burst', impl, threads, conns };
      if (!select(w).length) continue;
      rows.push([`${threads} × ${conns}`, impl, fmt(med(w, 'timeout_ms')) + ' ms', fmt(med(w, 'attempts')),
        fmt(med(w, 'timeouts')), impl === 'naive' ? fmt(med(w, 'lost_wakeups')) : 'n/a (direct handoff)', `${fmt(med(w, 'wall_ms'), 0)} ms`]);
    }
  }
  p(table(['threads × conns', 'pool', 'timeout', 'acquires', 'timed out', 'gave up while idle', 'wall'], rows), '');
}

// ---- burst ----
p('## Burst drain (`bench_burst`, `bench/js_sdk.mjs`)', '',
  '**Lease path**: B threads released together, each `surpool_pool_acquire` → one request → release, on a warm pool of M ' +
  'connections (min_connections = M); ideal = ceil(B/M) × X. "One round" is measured: M callers at once on M idle connections ' +
  '(no waiting in the pool), median of 3; "floor" = ceil(B/M) × one round. wall ÷ floor is what the pool adds to what the server ' +
  'and the client need anyway (below 1× when later rounds overlap better than an isolated round).', '',
  '**Pool alone** — tests/server/null_server.mjs, method `sleep [X]` (the server waits X ms, nothing else):', '');
const burstTable = (rows) => table(['B', 'M', 'X', 'ideal', 'one round', 'floor', 'wall (median)', 'wall ÷ ideal', 'wall ÷ floor', 'errors'],
  rows.map((b) => [b.B, b.M, `${b.X} ms`, `${fmt(b.ideal)} ms`, `${fmt(b.round, 1)} ms`, `${fmt(b.floor)} ms`,
    `${fmt(b.wall)} ms`, fmtX(b.ratio), fmtX(b.ratioFloor), fmt(b.errors)]));
p(burstTable(leaseBurstsNull), '',
  '**Real core** — tests/server, query `sleep(Xms)`. The server is one Node thread that adds its own work (~0.2–0.3 ms of CPU ' +
  'per request) to every sleep, so a round of M requests at once takes longer than X whatever the client does:', '',
  burstTable(leaseBursts), '');
{
  const infl = values({ bench: 'burst', impl: 'lane' }, 'max_inflight');
  const defInfl = infl.length ? Math.min(...infl) : null;
  const wideInfl = infl.length > 1 ? Math.max(...infl) : null;
  p('**Shared lane vs the JavaScript SDK**: all B requests issued at once; the ideal is X. Lane: `surpool_query_async` on the ' +
    `default lane (2 sockets × ${defInfl} in flight${wideInfl ? `; and × ${wideInfl} for bursts beyond that capacity` : ''}). ` +
    '**bare**: the same transport with no pool or lane (2 sockets) — the floor for the lane. SDK: one `Surreal` instance (CBOR); ' +
    '**raw-cbor**: a bare `ws` socket with the SDK\'s CBOR codec — the floor for the SDK. The first table is the like-for-like one ' +
    '(one server, bench/cbor_server.mjs); then surpool on tests/server, and on the null server\'s `sleep` method (no server work).', '');
  for (const server of ['bench-core', 'real', 'null']) {
    const rows = [];
    for (const X of values({ bench: 'burst', impl: 'lane', server }, 'X_ms'))
      for (const B of values({ bench: 'burst', impl: 'lane', server, X_ms: X }, 'B')) {
        const lane = { bench: 'burst', impl: 'lane', server, B, X_ms: X, max_inflight: defInfl };
        const wide = { bench: 'burst', impl: 'lane', server, B, X_ms: X, max_inflight: wideInfl };
        const bare = { bench: 'burst', impl: 'bare', server, B, X_ms: X };
        const sdk = { bench: 'burst', impl: 'sdk', server, B, X_ms: X };
        const raw = { bench: 'burst', impl: 'raw-cbor', server, B, X_ms: X };
        const lw = med(lane, 'wall_ms');
        const row = [B, `${X} ms`, `${fmt(lw, 1)} ms`,
          wideInfl && select(wide).length ? `${fmt(med(wide, 'wall_ms'), 1)} ms` : '–',
          `${fmt(med(bare, 'wall_ms'), 1)} ms`];
        if (server === 'bench-core') row.push(`${fmt(med(sdk, 'wall_ms'), 1)} ms`, `${fmt(med(raw, 'wall_ms'), 1)} ms`);
        row.push(fmtX(lw === null ? null : lw / X), fmtX(medRatio(lane, 'wall_ms', bare)));
        if (server === 'bench-core') row.push(fmtX(medRatio(sdk, 'wall_ms', raw)), fmtX(medRatio(sdk, 'wall_ms', lane)));
        rows.push(row);
      }
    if (!rows.length) continue;
    p(`${SERVER_LABEL[server]}:`, '');
    const head = ['B', 'X', 'lane', wideInfl ? `lane (×${wideInfl})` : 'lane (wide)', 'bare (C)'];
    if (server === 'bench-core') head.push('SDK', 'raw-cbor (JS)');
    head.push('lane ÷ X', 'lane ÷ bare');
    if (server === 'bench-core') head.push('SDK ÷ raw-cbor', '**SDK ÷ lane**');
    p(table(head, rows), '');
  }
}

// ---- throughput ----
const IMPL_LABEL = {
  lease: 'lease (threads: acquire/query/release)', lane_sync: 'lane, `surpool_query` from threads',
  lane_async: 'lane, `surpool_query_async`', bare: 'bare transport (no pool)',
  'sdk-1sock': 'JS SDK, 1 socket', 'sdk-Nsock': 'JS SDK, N sockets', 'raw-cbor': 'raw CBOR `ws` (no SDK)',
};
const IMPLS = ['lease', 'lane_sync', 'lane_async', 'bare', 'sdk-1sock', 'sdk-Nsock', 'raw-cbor'];
const IMPL_STYLE = {
  lease: 'lc rgb "#7b3294" pt 1', lane_sync: 'lc rgb "#1b9e77" pt 2', lane_async: 'lc rgb "#0571b0" pt 7',
  bare: 'lc rgb "#e66101" pt 5 dt 2', 'sdk-1sock': 'lc rgb "#ca0020" pt 9', 'sdk-Nsock': 'lc rgb "#f4a582" pt 11',
  'raw-cbor': 'lc rgb "#636363" pt 13 dt 2',
};
p('## Throughput (`bench_throughput`, `bench/js_sdk.mjs`)', '',
  '`RETURN 1` at a fixed concurrency (threads for lease and lane_sync; requests kept in flight for lane_async, bare, the SDK and raw-cbor). ' +
  'The like-for-like comparison with the SDK is on bench/cbor_server.mjs (one server, one core; the codec is the only difference). ' +
  'Lease uses min(concurrency, 32) connections; the lane its default 2 sockets (it opens the second only when the first is full); ' +
  'bare 2 sockets; the SDK 1 socket or N = min(concurrency, 32). CPU = the client process\'s user+sys time per request ' +
  '(`getrusage`/`process.cpuUsage`), service thread included. With canned replies the client\'s own cost dominates; with the ' +
  'core, the server (single-threaded Node on the same 2 CPUs) does.', '');
for (const server of SERVERS) {
  if (!select({ bench: 'throughput', server }).length) continue;
  p(`### ${SERVER_LABEL[server]}`, '');
  const rows = [];
  for (const impl of IMPLS)
    for (const c of CONC) {
      const w = { bench: 'throughput', server, impl, concurrency: c };
      if (!select(w).length) continue;
      const bare = { bench: 'throughput', server, impl: 'bare', concurrency: c };
      const sdk = { bench: 'throughput', server, impl: 'sdk-1sock', concurrency: c };
      const row = [IMPL_LABEL[impl], c, fmt(med(w, 'conns')), fmtRate(med(w, 'ops_per_s')),
        `${fmtNs(med(w, 'p50_ns'))} / ${fmtNs(med(w, 'p99_ns'))}`, `${fmt(med(w, 'cpu_us_per_req'), 1)} µs`,
        impl.startsWith('sdk') || impl === 'raw-cbor' ? '–' : fmtPct(medRatio(w, 'ops_per_s', bare))];
      if (SDK_SERVERS.includes(server)) row.push(fmtX(medRatio(w, 'ops_per_s', sdk)));
      rows.push(row);
    }
  const head = ['client', 'concurrency', 'sockets', 'queries/s', 'p50 / p99', 'CPU / request', '÷ bare'];
  if (SDK_SERVERS.includes(server)) head.push('÷ SDK 1 socket');
  p(table(head, rows), '');
}

// ---- scale ----
p('## Many connections (`bench_scale`, null server)', '',
  'A pool with min = max = N connections open (one process per N). Memory = RSS growth from before `surpool_pool_create` to after ' +
  'the N connections settled, divided by N (the pool\'s fixed cost — libwebsockets context, threads, fd table — is included, which ' +
  'dominates at N = 1). Then 64 threads on the lease path, and 512 requests in flight on the lane (2 sockets), with all N open.', '');
{
  const rows = values({ bench: 'scale_open' }, 'conns').map((n) => {
    const o = { bench: 'scale_open', conns: n };
    const l = { bench: 'scale', impl: 'lease', conns: n };
    const a = { bench: 'scale', impl: 'lane', conns: n };
    return [n, `${fmt(med(o, 'open_ms'))} ms`, `${fmt(med(o, 'rss_delta_bytes') / 1024)} KiB`, `${fmt(med(o, 'rss_per_conn_bytes') / 1024, 1)} KiB`,
      fmtRate(med(l, 'ops_per_s')), `${fmt(med(l, 'cpu_us_per_req'), 1)} µs`, fmtRate(med(a, 'ops_per_s')), `${fmt(med(a, 'cpu_us_per_req'), 1)} µs`];
  });
  p(table(['N', 'open', 'RSS growth', 'RSS / connection', 'lease queries/s', 'lease CPU/req', 'lane queries/s', 'lane CPU/req'], rows), '');
  if (perIdleConn?.bytes != null)
    p(`Marginal memory per idle connection between ${perIdleConn.lo} and ${perIdleConn.hi}: ${fmt(perIdleConn.bytes / 1024, 1)} KiB (see Memory below).`, '');
}

// ---- head-of-line ----
if (select({ bench: 'hol' }).length) {
  p('## Head-of-line (`bench_hol`, bench/canned_server.mjs)', '',
    'Does one big reply delay the other connections of its pool? One pool, every connection opened up front, no shared lane and ' +
    'no pings of its own. **ping**: one lease calls `surpool_conn_ping` back to back; **throughput**: ' +
    `${fmt(med(HOL_TP(0), 'concurrency'))} threads, each acquire / \`surpool_conn_query("RETURN 1")\` / release. Each is measured ` +
    `alone (the baseline, same run) and while ${fmt(pullers(HOL_SIZES[0]))} other leases of the same pool loop on ` +
    '`surpool_conn_query("big N")`: the server answers those with a prebuilt N-byte JSON reply (rows of strings and numbers, ' +
    '~190 bytes each), so its own cost is one copy and the figures are the client\'s. Percentiles are of back-to-back round trips: ' +
    'a stall shows as one long sample, so under load there are few samples (the column says how many) and p99 is close to the max.', '');
  // One row of the ping table: `w` selects the records, `bytes` the pulls (0: none).
  const pingRow = (w, label, bytes) => [label,
    fmtNs(med(w, 'p50_ns')), fmtNs(med(w, 'p90_ns')), fmtNs(med(w, 'p99_ns')), fmtNs(med(w, 'max_ns')),
    fmt(med(w, 'samples')), w.load === 'alone' ? '–' : fmtX(medRatio(w, 'p99_ns', HOL_PING(0)), 1),
    bytes ? `${fmt(med(w, 'pulls_per_s'), 1)} (${fmt(med(w, 'pull_mb_per_s'), 0)} MB/s)` : '–'];
  const prow = (bytes) => pingRow(HOL_PING(bytes),
    bytes ? `${pullers(bytes)} leases pulling ${fmtBytes(bytes)}` : 'alone (baseline)', bytes);
  const crow = (load, bytes) => {
    const w = HOL_CTL(load, bytes);
    if (!select(w).length) return null;
    return pingRow(w, load === 'burn' ? `control: ${fmt(med(w, 'pullers'))} threads spinning on the CPU (no I/O)` :
      `control: ${fmt(med(w, 'pullers'))} leases of a second pool pulling ${fmtBytes(bytes)}`, bytes);
  };
  const ctlRows = [crow('burn', 0), ...HOL_SIZES.map((b) => crow('separate', b))].filter((r) => r !== null);
  p('### A lease\'s ping', '',
    table(['while', 'p50', 'p90', 'p99', 'max', 'samples', 'p99 ÷ alone', 'big replies/s'], [...[0, ...HOL_SIZES].map(prow), ...ctlRows]), '',
    'Targets (issue 12): p99 ≤ 10 ms while two leases pull 5 MB; ≤ 2× the alone p99 while they pull 1 MB.', '');
  if (ctlRows.length)
    p('The control rows tell the pool\'s own head-of-line blocking from the machine\'s: the same pulls on leases of a ' +
      '*second* pool (its own service thread, same process, same server), and threads that only keep the two cores busy. ' +
      'Every pool has one service thread, which receives every reply: it reads 64 KiB at a time and copies each ' +
      'WebSocket frame\'s payload in blocks (the framing is wslay\'s, src/ws.c; libwebsockets 4.1\'s own parser, used ' +
      'before, ran once per byte, ~3 ms per MB on that thread). Results are decoded on the caller\'s thread. What remains ' +
      'is the machine: with two busy cores any thread waits for the scheduler now and then, which the control rows show ' +
      'without any pulls on the ping\'s pool (docs/threading.md).', '');
  const trow = (bytes) => {
    const w = HOL_TP(bytes);
    return [bytes ? `${pullers(bytes)} leases pulling ${fmtBytes(bytes)}` : 'alone (baseline)',
      fmtRate(med(w, 'ops_per_s')), bytes ? fmtPct(medRatio(w, 'ops_per_s', HOL_TP(0))) : '–',
      `${fmtNs(med(w, 'p50_ns'))} / ${fmtNs(med(w, 'p99_ns'))}`, fmtNs(med(w, 'max_ns')),
      bytes ? `${fmt(med(w, 'pulls_per_s'), 1)} (${fmt(med(w, 'pull_mb_per_s'), 0)} MB/s)` : '–'];
  };
  p('### Small-request throughput of the pool', '',
    table(['while', 'queries/s', '÷ alone', 'p50 / p99', 'max', 'big replies/s'], [0, ...HOL_SIZES].map(trow)), '');
}

// ---- memory ----
if (select({ bench: 'mem' }).length || select({ bench: 'scale_open' }).length) {
  p('## Memory (`bench_mem`, `bench_scale`)', '');
  const sizes = values({ bench: 'mem' }, 'payload_bytes');
  const modes = values({ bench: 'mem' }, 'mode');
  if (sizes.length) {
    p('### One large result', '',
      'One process per size, a pool of one connection against bench/canned_server.mjs (a prebuilt JSON reply of rows). ' +
      'Baseline: the process\'s RSS just before the call (after the pool opened and one small query). Peak: `getrusage` ' +
      '`ru_maxrss` after the call (the process\'s high-water mark, so it is this call\'s). Held: RSS while the caller still holds ' +
      'the `json_t`; after free: RSS after `json_decref` (what the allocator keeps).', '',
      'Mode `json_t`: the result as a jansson tree (the normal API). Mode `raw`: `surpool_conn_query_raw()`, the bytes of the ' +
      'result as the server sent them, no tree (docs/raw.md).', '',
      table(['payload', 'mode', 'rows', 'call', 'RSS before', 'peak RSS', '(peak − before) ÷ payload', 'held ÷ payload', 'RSS after free'],
        sizes.flatMap((b) => modes.map((m) => {
          const w = { bench: 'mem', payload_bytes: b, mode: m };
          if (!select(w).length) return null;
          const mib = (f) => `${fmt(med(w, f) / 1048576, 1)} MiB`;
          return [fmtBytes(b), m, m === 'raw' ? '—' : fmt(med(w, 'rows')), `${fmt(med(w, 'call_ms'))} ms`, mib('rss_before_bytes'), mib('peak_rss_bytes'),
            `**${fmtX(med(w, 'peak_over_payload'), 1)}**`, fmtX(med(w, 'held_over_payload'), 1), mib('rss_after_free_bytes')];
        }).filter((row) => row !== null))), '', 'Target (issue 12): peak ≤ 3× the payload for 50 MB.', '');
  }
  if (scaleNs.length) {
    p('### Idle connections', '',
      'From `bench_scale` (null server, one process per N): RSS growth from before `surpool_pool_create` to after N connections ' +
      'opened and settled. Per connection with the pool\'s fixed cost included, and the marginal cost per connection between the ' +
      'smallest and largest N of the same round (fixed cost cancelled).', '',
      table(['N', 'RSS growth', 'per connection (fixed cost included)'], scaleNs.map((n) => {
        const o = { bench: 'scale_open', conns: n };
        return [n, `${fmt(med(o, 'rss_delta_bytes') / 1024)} KiB`, `${fmt(med(o, 'rss_per_conn_bytes') / 1024, 1)} KiB`];
      })), '',
      perIdleConn?.bytes != null ? `**Per idle connection (marginal, ${perIdleConn.lo} → ${perIdleConn.hi}): ${fmt(perIdleConn.bytes / 1024, 1)} KiB.** Target (issue 12): ≤ 16 KiB.` : 'Per idle connection: needs two values of N.', '');
  }
}

// ---- profiles (static: measured with perf while writing the benches) ----
p('## What the profiles and traces say', '',
  '_Measured with `perf` and traces on this machine while the benches were written (2026-11-27); not regenerated by the ' +
  'script. Each finding below was fixed in the same session; the tables above are after the fixes._', '',
  '- **Uncontended acquire + release was ~190–240 ns** (the naive pool ~30 ns). About half was `clock_gettime` (six reads ' +
  'per pair) and about a quarter `rep stos`: `evq q = {.n = 0};` zero-filled the ~6 KB on-stack event queue twice per pair ' +
  'even with no `on_event` set. Now the fast path reads the clock once per acquire and once per release and initialises only ' +
  '`q.n`.',
  '- **The lane with many connections open.** With 1000 sockets in the pool the profile is the kernel\'s `poll()` ' +
  '(`sock_poll`, `tcp_poll`, `fdget`/`fput`) plus lws\'s `wsi_from_fd`: every pass of the service loop walks all N ' +
  'sockets. The transport used to write one frame per WRITEABLE callback, so each of the lane\'s 2 sockets sent one ' +
  'request per pass (the lane kept 14% of its 100-socket throughput at 1000). It now writes up to 32 frames per callback ' +
  'while `lws_send_pipe_choked()` says the socket can take more; what remains is the cost of `poll()` itself.',
  '- **Lane requests queued for capacity could be stranded.** `on_done()` in src/lane.c ran the callback and `pump()` ' +
  'before giving the request\'s slot back, so a queued request waited for the next completion or its deadline ' +
  '(`shared_connections = 1`, `shared_max_inflight = 1`: the second of two calls failed after its whole 3 s deadline). ' +
  'The slot is now returned first; tests/test_lane.c has the regression test.',
  '- **Contended pool throughput.** surpool hands each released connection to the oldest waiter and wakes exactly that thread: ' +
  'one context switch per acquire when callers outnumber connections. The naive pool is far faster in that table because the ' +
  'releasing thread usually takes its connection straight back (barging); the burst table shows what that costs: timeouts ' +
  'while connections sit idle.', '');

// ---- SDK notes ----
p('## The JavaScript SDK: how it was measured', '',
  '- `surrealdb` 2.0.8 cannot speak JSON over WebSocket: `WebSocketEngine.createSocket()` opens the socket with the fixed ' +
  'subprotocol `"cbor"`, and `send()` and the message handler always go through `context.codecs.cbor` with binary frames ' +
  '(dist/surrealdb.mjs). The `json` codec and the `.json()` option only reshape results after decoding. tests/server speaks JSON ' +
  'only (binary frames get a parse error), so the SDK cannot use it.',
  '- So bench/cbor_server.mjs (bench-only; tests/server/server.mjs is untouched) puts the **same embedded core** ' +
  '(`@surrealdb/node` 3.0.3) behind an endpoint with one core session per socket, like tests/server, that speaks CBOR (binary ' +
  'frames, subprotocol `cbor`) and JSON (text frames, subprotocol `json`). Per request it decodes, hands the core the request, ' +
  'and encodes the reply in the socket\'s format: the codec is the only difference between the SDK\'s and surpool\'s requests. ' +
  'tests/server does more on its JSON path (string-to-record-id/datetime/UUID conversion, core-style formatting), so surpool ' +
  'against tests/server is shown separately and not compared with the SDK. Each client also has a floor on the same server: ' +
  '**bare** (surpool\'s transport, no pool) and **raw-cbor** (a bare `ws` socket with the SDK\'s codec).',
  '- Node 20 has no global `WebSocket`: the SDK is given the `ws` package via `new Surreal({ websocketImpl })`.',
  '- With --null, cbor_server answers `query` with the core\'s own reply to `RETURN 1` captured at start (an array of one statement ' +
  'result), in CBOR or JSON; tests/server/null_server.mjs answers `"ok"`. Neither runs anything.', '');

// ---- sections measured by hand (kept) ----
// Figures no bench program here produces on its own (before/after comparisons
// against an older commit, measurements against the real core with a fault
// injected, the live-query and cluster runs) are written by hand into sections
// whose heading says "measured by hand". A regeneration keeps them verbatim,
// in their order, so that re-running the whole bench never loses them.
for (const section of handMeasuredSections(join(opt['out-dir'], 'PERFORMANCE.md'), join('docs', 'PERFORMANCE.md'))) p(section, '');

p('## Reproduce', '', '```sh', 'scripts/bench.sh            # 3 rounds, ~6–8 minutes on 2 cores', 'scripts/bench.sh --runs 5   # more rounds', 'scripts/bench.sh --quick    # 1 round, reduced set (smoke)',
  'scripts/bench.sh --only hol,mem,scale --runs 1   # some groups; report in build/bench-results/report/, docs/ untouched',
  '```', '',
  'Raw JSON lines of every measurement: `build/bench-results/run*/`. Each bench program prints one JSON object per measurement on ' +
  'stdout and nothing else; they can be run by hand (see the comment at the top of each file in bench/).', '');

writeFileSync(join(opt['out-dir'], 'PERFORMANCE.md'), out.join('\n'));

// ---------------------------------------------------------------------------
// Plots
// ---------------------------------------------------------------------------
const tmp = mkdtempSync(join(tmpdir(), 'surpool-plots-'));
const dat = (name, rows) => {
  const f = join(tmp, name);
  writeFileSync(f, rows.map((r) => r.map((x) => (x === null || x === undefined ? 'NaN' : x)).join(' ')).join('\n') + '\n');
  return f;
};
const q = (s) => `'${s.replace(/'/g, "''")}'`;
const gp = [];
const outDir = opt['out-dir'];

// Each plot only when its bench ran (scripts/bench.sh --only runs a subset).
// throughput
if (select({ bench: 'throughput' }).length) {
  gp.push(`set terminal pngcairo size 1400,1000 font 'Sans,10'`, `set output ${q(join(outDir, 'perf-throughput.png'))}`,
    'set multiplot layout 2,2 title "RETURN 1: queries/s vs concurrency (median of rounds)"',
    'set termoption noenhanced', 'set logscale x 2', 'set logscale y 10', 'set grid', 'set key bottom right font ",9"',
    'set xlabel "concurrency"', 'set ylabel "queries/s"');
  for (const server of SERVERS) {
    const series = IMPLS.map((impl) => ({ impl, f: dat(`tp-${server}-${impl}.dat`, CONC.map((c) => [c, med({ bench: 'throughput', server, impl, concurrency: c }, 'ops_per_s')])) }))
      .filter((s) => select({ bench: 'throughput', server, impl: s.impl }).length);
    if (!series.length) continue;
    gp.push(`set title ${q(SERVER_LABEL[server])}`);
    gp.push('plot ' + series.map((s) => `${q(s.f)} using 1:2 with linespoints lw 2 ${IMPL_STYLE[s.impl]} title ${q(IMPL_LABEL[s.impl].replace(/`/g, ''))}`).join(', '));
  }
  gp.push('unset multiplot', 'unset logscale');
}
// burst
if (select({ bench: 'burst' }).length) {
  gp.push(`set terminal pngcairo size 1400,560 font 'Sans,10'`, `set output ${q(join(outDir, 'perf-burst.png'))}`,
    'set multiplot layout 1,2 title "Burst drain: B requests sleep(X) (median of rounds)"', 'set termoption noenhanced');
  gp.push('set logscale x 10', 'unset logscale y', 'set grid', 'set key top left', 'set xlabel "burst size B"', 'set ylabel "wall time ÷ ideal ceil(B/M)·X"',
    'set title "lease path (warm pool of M connections)"', 'set yrange [0.9:*]');
  const lseries = [];
  for (const M of uniq(leaseBursts.map((b) => b.M)))
    for (const X of uniq(leaseBursts.map((b) => b.X)))
      lseries.push({ t: `real core, M=${M}, X=${X} ms`, f: dat(`lb-${M}-${X}.dat`, leaseBursts.filter((b) => b.M === M && b.X === X).map((b) => [b.B, b.ratio])) },
        { t: `pool alone (null sleep), M=${M}, X=${X} ms`, dt: 2, f: dat(`lbn-${M}-${X}.dat`, leaseBurstsNull.filter((b) => b.M === M && b.X === X).map((b) => [b.B, b.ratio])) });
  gp.push('plot ' + [...lseries.map((s, i) => `${q(s.f)} using 1:2 with linespoints lw 2 lc ${Math.floor(i / 2) + 1} dt ${s.dt ?? 1} title ${q(s.t)}`), '1.1 with lines dt 2 lc rgb "black" title "target 1.1×"'].join(', '));
  gp.push('set yrange [*:*]', 'set logscale y 10', 'set ylabel "wall time (ms)"', 'set title "all at once, bench/cbor_server.mjs: lane vs JS SDK vs floors"');
  const infl = values({ bench: 'burst', impl: 'lane' }, 'max_inflight');
  const defInfl = infl.length ? Math.min(...infl) : null;
  const bseries = [];
  values({ bench: 'burst', impl: 'lane', server: 'bench-core' }, 'X_ms').forEach((X, xi) => {
    const Bs = values({ bench: 'burst', impl: 'lane', server: 'bench-core', X_ms: X }, 'B');
    [['lane', { max_inflight: defInfl }, 'lane'], ['sdk', {}, 'JS SDK'], ['bare', {}, 'bare (C)'], ['raw-cbor', {}, 'raw CBOR (JS)']].forEach(([impl, extra, label], ii) =>
      bseries.push({ t: `${label}, X=${X} ms`, style: `lc ${ii + 1} dt ${xi + 1}`, f: dat(`bb-${impl}-${X}.dat`, Bs.map((B) => [B, med({ bench: 'burst', server: 'bench-core', impl, B, X_ms: X, ...extra }, 'wall_ms')])) }));
  });
  gp.push('plot ' + bseries.map((s) => `${q(s.f)} using 1:2 with linespoints lw 2 ${s.style} title ${q(s.t)}`).join(', '));
  gp.push('unset multiplot', 'unset logscale', 'set yrange [*:*]');
}
// pool
if (select({ bench: 'pool' }).length) {
  gp.push(`set terminal pngcairo size 1400,560 font 'Sans,10'`, `set output ${q(join(outDir, 'perf-pool.png'))}`,
    'set multiplot layout 1,2 title "Pool core on the fake transport (no I/O)"', 'set termoption noenhanced',
    'set logscale x 2', 'set logscale y 10', 'set grid', 'set key bottom left', 'set xlabel "threads"');
  const threads = values({ bench: 'pool', impl: 'surpool' }, 'threads');
  const conns = values({ bench: 'pool', impl: 'surpool' }, 'conns');
  const s1 = [], s2 = [];
  for (const impl of ['surpool', 'naive'])
    for (const c of conns) {
      s1.push({ t: `${impl}, ${c} conn`, f: dat(`pool-${impl}-${c}.dat`, threads.map((t) => [t, med({ bench: 'pool', impl, threads: t, conns: c }, 'ops_per_s')])) });
      s2.push({ t: `${impl}, ${c} conn`, f: dat(`poolh-${impl}-${c}.dat`, threads.filter((t) => t > c).map((t) => [t, med({ bench: 'pool', impl, threads: t, conns: c }, 'p99_ns')])) });
    }
  gp.push('set ylabel "acquire+release per second"', 'set title "throughput"');
  gp.push('plot ' + s1.map((s, i) => `${q(s.f)} using 1:2 with linespoints lw 2 lc ${(i % conns.length) + 1} dt ${i < conns.length ? 1 : 2} title ${q(s.t)}`).join(', '));
  gp.push('set ylabel "ns"', 'set title "handoff latency p99 (release → waiter returns)"', 'set key top left');
  gp.push('plot ' + s2.map((s, i) => `${q(s.f)} using 1:2 with linespoints lw 2 lc ${(i % conns.length) + 1} dt ${i < conns.length ? 1 : 2} title ${q(s.t)}`).join(', '));
  gp.push('unset multiplot');
}
const gpFile = join(tmp, 'plots.gp');
writeFileSync(gpFile, gp.join('\n') + '\n');
if (gp.length) {
  try {
    execFileSync('gnuplot', [gpFile], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    process.stderr.write(`report: gnuplot failed: ${err.stderr?.toString() ?? err.message}\n`);
    process.exitCode = 1;
  }
}
rmSync(tmp, { recursive: true, force: true });
