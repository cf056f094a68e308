# Shared by scripts/*.sh: find the repo, install what is missing, build.
# shellcheck shell=bash

SURPOOL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export SURPOOL_ROOT

# Debian packages the build, the tests and the test server need.
SURPOOL_DEB_PACKAGES=(build-essential cmake pkg-config libwebsockets-dev libwslay-dev
                      libwebsockets-evlib-uv libuv1-dev libjansson-dev
                      libcbor-dev libssl-dev libcmocka-dev openssl ca-certificates valgrind)

log() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Install the Debian packages in "$@" that are absent (apt-get only when needed).
ensure_debs() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        die "missing packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})"
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Node.js >= 18 and npm: the machine's own if present, else Debian's.
ensure_node() {
    if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
        local major
        major=$(node -p 'process.versions.node.split(".")[0]')
        [ "$major" -ge 18 ] && return 0
    fi
    ensure_debs nodejs npm
}

# The test server's node_modules, from the committed lockfile (npm ci), redone
# only when the lockfile changed.
ensure_test_server() {
    ensure_node
    local dir="$SURPOOL_ROOT/tests/server"
    local stamp="$dir/node_modules/.surpool-lock-stamp"
    if [ -L "$dir/node_modules" ]; then
        # A shared install behind a symlink: never npm ci through it (npm ci
        # empties the directory the link points to, under whoever else uses
        # it, and leaves a private copy here). Use it if every dependency of
        # the server is installed there.
        if (cd "$dir" && node -e "const fs = require('fs');
                for (const p of Object.keys(require('./package.json').dependencies))
                    fs.accessSync('node_modules/' + p + '/package.json')") >/dev/null 2>&1; then
            return 0
        fi
        die "tests/server/node_modules is a symlink and the test server's packages are not" \
            "all installed behind it: update the install it points to (npm ci there)"
    fi
    if [ -f "$stamp" ] && cmp -s "$stamp" "$dir/package-lock.json"; then
        return 0
    fi
    log "installing the test server (npm ci)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    cp "$dir/package-lock.json" "$stamp"
}

ensure_deps() {
    ensure_debs "${SURPOOL_DEB_PACKAGES[@]}"
    ensure_test_server
}

# configure_and_build DIR [cmake args...]
configure_and_build() {
    local dir=$1
    shift
    cmake -S "$SURPOOL_ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Debug "$@" >/dev/null
    cmake --build "$dir" -j "$(nproc)" >/dev/null 2>"$dir.build.log" || {
        cat "$dir.build.log" >&2
        die "build failed in $dir"
    }
}

# The test server launcher for scripts (tests/harness.c is the one for C tests):
# start_test_server SCRIPT [args...] runs `node SCRIPT --host 127.0.0.1 --port 0
# args...` (SCRIPT relative to the repository, e.g. tests/server/server.mjs),
# waits up to 30 s for its `LISTENING <port>` line and sets TEST_SERVER_PID and
# TEST_SERVER_PORT; it dies saying why if the server does not get there.
# stop_test_server stops it.
start_test_server() {
    local script=$1 out
    shift
    out=$(mktemp)
    node "$SURPOOL_ROOT/$script" --host 127.0.0.1 --port 0 "$@" >"$out" &
    TEST_SERVER_PID=$!
    TEST_SERVER_PORT=
    for _ in $(seq 1 600); do
        TEST_SERVER_PORT=$(awk '/^LISTENING / {print $2; exit}' "$out")
        [ -n "$TEST_SERVER_PORT" ] && break
        kill -0 "$TEST_SERVER_PID" 2>/dev/null || break
        sleep 0.05
    done
    rm -f "$out"
    if [ -z "$TEST_SERVER_PORT" ]; then
        stop_test_server
        die "$script did not start (no LISTENING line within 30 s)"
    fi
}

stop_test_server() {
    [ -n "${TEST_SERVER_PID:-}" ] || return 0
    kill "$TEST_SERVER_PID" 2>/dev/null || true
    wait "$TEST_SERVER_PID" 2>/dev/null || true
    TEST_SERVER_PID=
}
