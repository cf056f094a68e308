#!/usr/bin/env bash
# Soak test: a bounded mixed workload against the test server with faults
# injected all along (drop-every, delays, hostile modes, kill -9 + restart),
# checking invariants as it goes; prints a progress line every few seconds and
# a summary table. Exits non-zero if an invariant broke. See docs/RELIABILITY.md.
#
# Installs what is missing first (as scripts/test.sh does), builds, runs.
#
# Options: --seconds N (default 300), --seed N, --sanitize address,undefined|thread
#          (a sanitizer build), anything else is passed to the soak program
#          (--lease-threads N, --pool-threads N, --progress-every S).
#          --lane: run the shared-lane stress instead (tests/stress_lane.c, fake
#          transport, no server): socket turnover and drops for --seconds, then
#          --pools N pools (default 1000) destroyed while callbacks resubmit.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

seconds=300
sanitize=
lane=
pools=1000
args=()
while [ $# -gt 0 ]; do
    case $1 in
        --seconds) seconds=$2; shift ;;
        --sanitize) sanitize=$2; shift ;;
        --lane) lane=1 ;;
        --pools) pools=$2; shift ;;
        --seed|--lease-threads|--pool-threads|--progress-every) args+=("$1" "$2"); shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see the comment at the top of $0)" ;;
    esac
    shift
done

if [ -n "$lane" ]; then
    ensure_debs "${SURPOOL_DEB_PACKAGES[@]}" # the fake transport needs no server
else
    ensure_deps
fi
cd "$SURPOOL_ROOT"
build=${SURPOOL_BUILD_ROOT:-$SURPOOL_ROOT/build}
mkdir -p "$build"
if [ -n "$sanitize" ]; then
    dir="$build/soak-${sanitize//,/-}"
    log "build: soak with -fsanitize=$sanitize"
    configure_and_build "$dir" -DSURPOOL_WERROR=ON -DSURPOOL_SANITIZE="$sanitize" \
        -DSURPOOL_BUILD_EXAMPLES=OFF
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    export TSAN_OPTIONS=${TSAN_OPTIONS:-"halt_on_error=1 suppressions=$SURPOOL_ROOT/tests/tsan.supp"}
else
    dir="$build/plain"
    log "build: plain"
    configure_and_build "$dir" -DSURPOOL_WERROR=ON
fi

if [ -n "$lane" ]; then
    seed=()
    for ((i = 0; i < ${#args[@]}; i += 2)); do
        [ "${args[i]}" = --seed ] && seed=(--seed "${args[i + 1]}")
    done
    log "lane stress: ${seconds}s, ${pools} pools"
    exec "$dir/tests/stress_lane" --seconds "$seconds" --pools "$pools" "${seed[@]+"${seed[@]}"}"
fi
log "soak: ${seconds}s"
exec "$dir/tests/soak" --seconds "$seconds" "${args[@]+"${args[@]}"}"
