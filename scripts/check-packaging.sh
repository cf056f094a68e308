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
# The .pc file is relocatable: no --define-prefix needed for a scratch prefix.
pcflags=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --cflags --libs surpool)
case $pcflags in *"$work/prefix"*) ;; *) die "surpool.pc does not point into the install prefix: $pcflags" ;; esac
cc "$SURPOOL_ROOT/tests/consumer/main.c" -o "$work/pc-consumer" $pcflags
LD_LIBRARY_PATH=$(dirname "$(dirname "$pc")") "$work/pc-consumer"
# Static: pkg-config --static lists every private dependency; link libsurpool.a itself.
libdir=$(dirname "$(dirname "$pc")")
static=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --static --cflags --libs surpool)
cc "$SURPOOL_ROOT/tests/consumer/main.c" -o "$work/pc-static" ${static/-lsurpool/$libdir/libsurpool.a}
if ldd "$work/pc-static" | grep -q libsurpool; then die "static consumer still needs libsurpool.so"; fi
"$work/pc-static"
log "install: find_package, pkg-config and pkg-config --static consumers work"

cmake -S "$SURPOOL_ROOT/tests/consumer" -B "$work/vendor" -DSURPOOL_VENDOR_DIR="$SURPOOL_ROOT" \
    -DSURPOOL_WERROR=ON >/dev/null
cmake --build "$work/vendor" -j "$(nproc)" >/dev/null
"$work/vendor/consumer"
[ -z "$(find "$work/vendor/surpool" -name 'libsurpool.so*')" ] || die "vendored build made a shared library"
[ ! -d "$work/vendor/surpool/tests" ] && [ ! -d "$work/vendor/surpool/examples" ] \
    || die "vendored build configured tests or examples"
grep -q -- '-O2' "$work/vendor/surpool/CMakeFiles/surpool_objects.dir/flags.make" \
    || die "vendored build with no build type is not optimised"
log "vendored: add_subdirectory builds the static library only, optimised, no tests or examples"
