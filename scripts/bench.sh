#!/usr/bin/env bash
# The benchmarks, from a clean clone, and docs/PERFORMANCE.md from their results.
#
#   scripts/bench.sh [--runs N] [--quick] [--only GROUPS]
#
# --only pool,throughput,js,burst,scale,hol,mem runs those groups only and
# writes the report to $SURPOOL_BUILD_ROOT/bench-results/report/ instead of
# docs/ (a partial run never replaces docs/PERFORMANCE.md).
#
#  1. Installs what is missing (Debian packages as root, the test server's
#     node_modules with npm ci), builds with -DSURPOOL_BUILD_BENCH=ON in Release.
#  2. Starts throwaway servers on free loopback ports: the test server (the
#     real SurrealDB core, JSON), the null server (canned replies, JSON),
#     bench/cbor_server.mjs twice (the same core / canned replies, speaking CBOR
#     for the JavaScript SDK — it speaks nothing else — and JSON for surpool, so
#     both can be measured against one server), and bench/canned_server.mjs
#     (prebuilt replies of a requested size, for the head-of-line and memory
#     benches). With --only, just the servers those groups need.
#  3. Runs every bench N times (default 3), one full round after another, and
#     stops the servers.
#  4. Writes docs/PERFORMANCE.md (medians, and ratios against baselines measured
#     in the same round) and docs/perf-{throughput,burst,pool}.png (gnuplot).
#
# Raw results (JSON lines) stay in $SURPOOL_BUILD_ROOT/bench-results (default
# build/bench-results). Benchmarks are not tests: this script never fails on a
# figure, only when something could not run.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

runs=${SURPOOL_BENCH_RUNS:-3}
quick=0
only=
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift ;;
        --quick) quick=1; runs=1 ;;
        --only) only=$2; shift ;;
        *) die "unknown option $1 (see the comment at the top of $0)" ;;
    esac
    shift
done

all_groups=pool,throughput,js,burst,scale,hol,mem
for g in ${only//,/ }; do
    case ",$all_groups," in *",$g,"*) ;; *) die "--only: unknown group $g (one of $all_groups)" ;; esac
done
# wants GROUP...: true when any of them is to run.
wants() {
    local g
    [ -z "$only" ] && return 0
    for g in "$@"; do
        case ",$only," in *",$g,"*) return 0 ;; esac
    done
    return 1
}

started=$(date +%s)
ensure_deps
# gnuplot draws the throughput, burst and pool plots; libzdb is bench_pool's baseline.
wants throughput burst pool && ensure_debs gnuplot-nox
wants pool && ensure_debs libzdb-dev
cd "$SURPOOL_ROOT"

build_root=${SURPOOL_BUILD_ROOT:-$SURPOOL_ROOT/build}
build=$build_root/bench
results=$build_root/bench-results
mkdir -p "$build_root"
rm -rf "$results"
mkdir -p "$results"

log "build: Release with benchmarks"
configure_and_build "$build" -DCMAKE_BUILD_TYPE=Release -DSURPOOL_BUILD_BENCH=ON \
    -DSURPOOL_BUILD_TESTS=OFF -DSURPOOL_BUILD_EXAMPLES=OFF -DSURPOOL_BUILD_SHARED=OFF
bin=$build/bench
for b in bench_pool bench_burst bench_throughput bench_scale bench_hol bench_mem; do
    [ -x "$bin/$b" ] || die "$bin/$b was not built"
done

# 1000 connections need ~1000 descriptors in this process and in the server.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
    ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge 2100 ] ||
    log "warning: ulimit -n is $(ulimit -n): the 1000-connection run may fail"

# ---- servers: started here, stopped by PID on exit ----
server_pids=()
stop_servers() {
    local p
    for p in "${server_pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${server_pids[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    server_pids=()
}
trap stop_servers EXIT

# start_server NAME SCRIPT [args...]: sets $port.
start_server() {
    local name=$1 script=$2
    shift 2
    local out=$results/server-$name.out
    node "$script" --port 0 "$@" >"$out" 2>"$results/server-$name.log" </dev/null &
    local pid=$!
    server_pids+=("$pid")
    local i
    for i in $(seq 1 900); do
        grep -q '^LISTENING ' "$out" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { cat "$results/server-$name.log" >&2; die "$name server exited"; }
        sleep 0.1
    done
    port=$(awk '/^LISTENING /{print $2; exit}' "$out")
    [ -n "$port" ] || die "$name server did not start"
    log "server $name on 127.0.0.1:$port (pid $pid)"
}

core_version=unknown
if wants throughput burst; then
    start_server real tests/server/server.mjs
    real_url=ws://127.0.0.1:$port/rpc
    real_port=$port
    core_version=$(node -e "fetch('http://127.0.0.1:$real_port/version').then(r=>r.text()).then(t=>console.log(t)).catch(()=>console.log('unknown'))")
fi
if wants throughput burst scale; then
    start_server null tests/server/null_server.mjs
    null_url="ws://127.0.0.1:$port/rpc?format=json" # canned JSON replies: JSON only
fi
if wants throughput js burst; then
    start_server bench-core bench/cbor_server.mjs
    bcore_url=ws://127.0.0.1:$port/rpc
    start_server bench-null bench/cbor_server.mjs --null
    bnull_url=ws://127.0.0.1:$port/rpc
fi
# The head-of-line and memory benches' replies: built before LISTENING (the
# 50 MB one takes seconds), so no measurement waits for Node building one.
hol_sizes=1000000,5000000
mem_sizes=(5000000 50000000)
if wants hol mem; then
    start_server canned bench/canned_server.mjs --prebuild "1000,$hol_sizes,$(
        IFS=,
        echo "${mem_sizes[*]}"
    )"
    canned_url=ws://127.0.0.1:$port/rpc
fi
auth=(--user root --pass root --ns bench --db bench)

# ---- sizes ----
dur=600; warm=150; pool_dur=150
conc=1,8,64,512; bursts=100,200,1000; burst_conns=10,50; sleeps=20,50; scale_ns=(1 100 1000)
hol_dur=5000; hol_tp_dur=2000
if [ $quick -eq 1 ]; then
    dur=300; warm=100; pool_dur=100; hol_dur=2000; hol_tp_dur=1000
    conc=1,64; bursts=100,1000; burst_conns=10; sleeps=20; scale_ns=(100 1000)
fi

# run NAME OUTFILE cmd...: stdout (JSON lines) appended to OUTFILE, stderr to a log.
run() {
    local name=$1 out=$2
    shift 2
    local t0=$SECONDS
    if ! "$@" >>"$out" 2>>"$results/$name.stderr"; then
        tail -n 20 "$results/$name.stderr" >&2
        die "$name failed"
    fi
    log "  $name: $((SECONDS - t0)) s"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
for r in $(seq 1 "$runs"); do
    d=$results/run$r
    mkdir -p "$d"
    log "round $r of $runs (load average $(loadavg))"
    echo "{\"bench\":\"load\",\"when\":\"start\",\"loadavg\":\"$(loadavg)\"}" >>"$d/load.jsonl"
    tp=(--conc "$conc" --duration-ms "$dur" --warmup-ms "$warm")
    wants pool && run pool "$d/pool.jsonl" "$bin/bench_pool" --duration-ms "$pool_dur"
    if wants throughput; then
        run throughput-real "$d/throughput.jsonl" "$bin/bench_throughput" --url "$real_url" \
            "${auth[@]}" --server real "${tp[@]}"
        run throughput-null "$d/throughput.jsonl" "$bin/bench_throughput" --url "$null_url" \
            --server null "${tp[@]}"
        run throughput-bench-core "$d/throughput.jsonl" "$bin/bench_throughput" --url "$bcore_url" \
            "${auth[@]}" --server bench-core --impls lane_sync,lane_async,bare "${tp[@]}"
        run throughput-bench-null "$d/throughput.jsonl" "$bin/bench_throughput" --url "$bnull_url" \
            "${auth[@]}" --server bench-null --impls lane_sync,lane_async,bare "${tp[@]}"
    fi
    if wants js; then
        run js-sdk-core "$d/js.jsonl" node bench/js_sdk.mjs --url "$bcore_url" --server bench-core \
            "${tp[@]}" --bursts "$bursts" --sleeps "$sleeps"
        run js-sdk-null "$d/js.jsonl" node bench/js_sdk.mjs --url "$bnull_url" --server bench-null \
            "${tp[@]}" --no-burst
    fi
    if wants burst; then
        run burst-real "$d/burst.jsonl" "$bin/bench_burst" --url "$real_url" "${auth[@]}" \
            --server real --bursts "$bursts" --conns "$burst_conns" --sleeps "$sleeps"
        run burst-null "$d/burst.jsonl" "$bin/bench_burst" --url "$null_url" --server null \
            --rpc-sleep --bursts "$bursts" --conns "$burst_conns" --sleeps "$sleeps"
        run burst-bench-core "$d/burst.jsonl" "$bin/bench_burst" --url "$bcore_url" "${auth[@]}" \
            --server bench-core --impls lane,bare --bursts "$bursts" --sleeps "$sleeps"
    fi
    if wants scale; then
        for n in "${scale_ns[@]}"; do
            run "scale-$n" "$d/scale.jsonl" "$bin/bench_scale" --url "$null_url" --conns "$n" \
                --duration-ms "$dur" --warmup-ms "$warm"
        done
    fi
    wants hol && run hol "$d/hol.jsonl" "$bin/bench_hol" --url "$canned_url" --big "$hol_sizes" \
        --duration-ms "$hol_dur" --tp-duration-ms "$hol_tp_dur"
    if wants mem; then
        for bytes in "${mem_sizes[@]}"; do
            run "mem-$bytes" "$d/mem.jsonl" "$bin/bench_mem" --url "$canned_url" --bytes "$bytes"
            run "mem-$bytes-raw" "$d/mem.jsonl" "$bin/bench_mem" --url "$canned_url" --bytes "$bytes" --raw
        done
    fi
    echo "{\"bench\":\"load\",\"when\":\"end\",\"loadavg\":\"$(loadavg)\"}" >>"$d/load.jsonl"
done
stop_servers
trap - EXIT

# ---- the report ----
cpu_model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
elapsed=$(($(date +%s) - started))
out_dir=docs
if [ -n "$only" ]; then
    out_dir=$results/report
    mkdir -p "$out_dir"
fi
log "writing $out_dir/PERFORMANCE.md and $out_dir/perf-*.png"
node bench/report.mjs --results "$results" --out-dir "$out_dir" --runs "$runs" \
    --nproc "$(nproc)" --cpu "${cpu_model:-unknown}" --kernel "$(uname -sr)" \
    --date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --elapsed "$elapsed" \
    --node "$(node --version)" --lws "$(pkg-config --modversion libwebsockets | sed 's/-$//')" \
    --zdb "$(pkg-config --modversion zdb 2>/dev/null || echo none)" \
    --core "$core_version" --quick "$quick" \
    --commit "$(git -C "$SURPOOL_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$SURPOOL_ROOT" diff --quiet HEAD -- src include 2>/dev/null || echo '+local changes')"
log "done in $(($(date +%s) - started)) s (results: $results)"
