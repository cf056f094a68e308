#!/usr/bin/env bash
# The demo: build surpool, start the test server (the real SurrealDB core,
# in memory) on a free loopback port, run the burst scenario (200 callers on
# 50 connections, each `sleep(50ms); RETURN 1`), print the result, stop the
# server. Installs what is missing first.
#
# Extra arguments go to examples/burst (e.g. --burst 1000 --max 20).
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

ensure_deps
build=${SURPOOL_BUILD_ROOT:-$SURPOOL_ROOT/build}/demo
log "building (Release)"
cmake -S "$SURPOOL_ROOT" -B "$build" -DCMAKE_BUILD_TYPE=Release -DSURPOOL_BUILD_TESTS=OFF \
    >/dev/null
cmake --build "$build" -j "$(nproc)" --target burst >/dev/null

log "starting the test server (SurrealDB core in memory)"
portfile=$(mktemp)
node "$SURPOOL_ROOT/tests/server/server.mjs" --host 127.0.0.1 --port 0 \
    --user root --pass root >"$portfile" &
server=$!
cleanup() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -f "$portfile"
}
trap cleanup EXIT
for _ in $(seq 1 200); do
    grep -q '^LISTENING' "$portfile" && break
    kill -0 "$server" 2>/dev/null || die "the test server did not start"
    sleep 0.05
done
port=$(awk '/^LISTENING/ {print $2}' "$portfile")
[ -n "$port" ] || die "the test server did not report its port"
log "server on 127.0.0.1:$port"

"$build/examples/burst" --url "ws://root:root@127.0.0.1:$port/rpc?ns=demo&db=demo" \
    --burst 200 --max 50 --query 'sleep(50ms); RETURN 1' --query-ms 50 "$@"
