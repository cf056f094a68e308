#!/usr/bin/env bash
# Packaging checks, run by scripts/test.sh after the plain build:
#  1. the shared library exports surpool_* symbols only;
#  2. an install to a scratch prefix works with find_package() and pkg-config;
#  3. the source tree builds when vendored with add_subdirectory().
# Usage: scripts/check-packaging.sh BUILD_DIR
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
build=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

lib=$(find "$build" -maxdepth 1 -name 'libsurpool.so.*.*' | head -n 1)
[ -n "$lib" ] || die "no shared library in $build"
bad=$(nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRV]$/ {print $3}' | grep -v '^surpool_[a-z0-9]' || true)
[ -z "$bad" ] || die "exported symbols outside the public surpool_* API: $bad"
log "exports: $(nm -D --defined-only "$lib" | grep -c ' surpool_') surpool_* symbols, nothing else"

cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$SURPOOL_ROOT/tests/consumer" -B "$work/pkg" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/pkg" >/dev/null
LD_LIBRARY_PATH="$work/prefix/lib:$work/prefix/lib/x86_64-linux-gnu" "$work/pkg/consumer"
pc=$(find "$work/prefix" -name surpool.pc | head -n 1)
# --define-prefix: the .pc file names the configured prefix, not this scratch one.
pcflags=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --define-prefix --cflags --libs surpool)
cc "$SURPOOL_ROOT/tests/consumer/main.c" -o "$work/pc-consumer" $pcflags
LD_LIBRARY_PATH=$(dirname "$(dirname "$pc")") "$work/pc-consumer"
log "install: find_package and pkg-config consumers work"

cmake -S "$SURPOOL_ROOT/tests/consumer" -B "$work/vendor" -DSURPOOL_VENDOR_DIR="$SURPOOL_ROOT" \
    -DSURPOOL_WERROR=ON >/dev/null
cmake --build "$work/vendor" -j "$(nproc)" >/dev/null
"$work/vendor/consumer"
log "vendored: add_subdirectory build works (no tests or examples built)"
