# Shared by scripts/*.sh: find the repo, install what is missing, build.
# shellcheck shell=bash

SURPOOL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export SURPOOL_ROOT

# Debian packages the build, the tests and the test server need.
SURPOOL_DEB_PACKAGES=(build-essential cmake pkg-config libwebsockets-dev libjansson-dev
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
