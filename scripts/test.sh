#!/usr/bin/env bash
# The whole test suite, as CI runs it:
#   1. plain build with -Werror: every test against the SurrealDB 3.x core, then the
#      protocol-level integration tests against the 2.x core (the version matrix);
#   2. ASan+UBSan build: every test;
#   3. TSan build: every concurrency and integration test;
#   4. libFuzzer harnesses for a bounded time, when clang is installed.
# Installs what is missing first (Debian packages as root, the test server with
# npm ci). Exits non-zero on any failure.
#
# Options: --quick (plain build only), --no-fuzz, --fuzz-seconds N.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

quick=0
fuzz=1
fuzz_seconds=${SURPOOL_FUZZ_SECONDS:-60}
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --no-fuzz) fuzz=0 ;;
        --fuzz-seconds) fuzz_seconds=$2; shift ;;
        *) die "unknown option $1 (see the comment at the top of $0)" ;;
    esac
    shift
done

ensure_deps
# libFuzzer needs clang and its runtime; install them for the full run.
[ $quick -eq 1 ] || [ $fuzz -eq 0 ] || ensure_debs clang libclang-rt-dev
cd "$SURPOOL_ROOT"
build=${SURPOOL_BUILD_ROOT:-$SURPOOL_ROOT/build}
mkdir -p "$build"

passed=0          # test programs (and fuzz runs) that passed, over all builds
failed=0
failed_runs=()

# run_suite NAME DIR [ctest args...]: ctest's exit status decides; its JUnit
# report (one <testcase> per test program, status "run" when it passed) gives
# the counts for the final line. SUITE_TAG (optional) names a run's own JUnit
# report and log (ctest-junit-TAG.xml, ctest-TAG.log) when one build is run
# more than once; SUITE_CORE (optional) is the server version it runs against.
run_suite() {
    local name="$1${SUITE_CORE:+ against $SUITE_CORE}" dir=$2 rc=0 junit total ok
    local tag=${SUITE_TAG:+-$SUITE_TAG}
    shift 2
    log "tests: $name"
    junit="$dir/ctest-junit$tag.xml"
    rm -f "$junit"
    ctest --test-dir "$dir" --output-on-failure -j 2 --output-junit "$junit" "$@" 2>&1 |
        tee "$dir/ctest$tag.log" || rc=$?
    total=0
    ok=0
    if [ -f "$junit" ]; then
        total=$(grep -c '<testcase ' "$junit" || true)
        ok=$(grep -c '<testcase .*status="run"' "$junit" || true)
    fi
    passed=$((passed + ok))
    failed=$((failed + total - ok))
    if [ "$total" -eq 0 ]; then
        failed=$((failed + 1)); failed_runs+=("$name: no tests ran (ctest exit $rc)")
    elif [ $rc -ne 0 ]; then
        failed_runs+=("$name (ctest exit $rc)")
        # ctest failed although every test it reported passed: count that too.
        [ "$ok" -lt "$total" ] || failed=$((failed + 1))
    elif [ "$ok" -lt "$total" ]; then
        failed_runs+=("$name: ctest exited 0 but its report has $((total - ok)) failure(s)")
    fi
}

# core_version [server.mjs args...]: the SurrealDB version the test server runs
# (its GET /version), e.g. surrealdb-3.0.2.
core_version() {
    start_test_server tests/server/server.mjs "$@"
    node -e 'fetch(process.argv[1]).then((r) => r.text()).then((t) => console.log(t.trim()))' \
        "http://127.0.0.1:$TEST_SERVER_PORT/version" || echo "unknown version"
    stop_test_server
}

log "build: plain (-Werror)"
configure_and_build "$build/plain" -DSURPOOL_WERROR=ON
SUITE_CORE=$(core_version) run_suite plain "$build/plain"

# Optimised builds warn about what Debug builds cannot see (gcc's
# maybe-uninitialized needs -O2): the library, examples and benches, built once
# in Release with -Werror (nothing run).
log "build: Release (-Werror; library, examples, benches)"
configure_and_build "$build/release" -DSURPOOL_WERROR=ON -DCMAKE_BUILD_TYPE=Release \
    -DSURPOOL_BUILD_TESTS=OFF -DSURPOOL_BUILD_BENCH=ON

# The version matrix: the tests that exercise the protocol (every method, errors
# and their codes, auth, the dirty-lease reset, exact values in both wire
# formats, hostile frames) once more against the SurrealDB 2.x core. What the 2.x
# emulation cannot do (server-side concurrency) is skipped there, saying so.
matrix_tests='^(test_integration|test_integration_cbor|test_exact_values|test_security|test_hostile|test_hostile_cbor)$'
SURPOOL_TEST_CORE=2 SUITE_TAG=core2 SUITE_CORE=$(core_version --core 2) \
    run_suite plain "$build/plain" -R "$matrix_tests"

if command -v clang-format >/dev/null 2>&1; then
    log "format: clang-format --dry-run --Werror (cmake --build build/plain --target format fixes)"
    if cmake --build "$build/plain" --target format-check >"$build/format.log" 2>&1; then
        passed=$((passed + 1))
    else
        head -n 40 "$build/format.log"
        failed=$((failed + 1)); failed_runs+=("format")
    fi
fi

log "packaging: exported symbols, install + find_package/pkg-config, vendoring"
if "$SURPOOL_ROOT/scripts/check-packaging.sh" "$build/plain"; then
    passed=$((passed + 3))
else
    failed=$((failed + 1)); failed_runs+=("packaging")
fi

# valgrind memcheck on a subset: the unit programs, and the examples against a
# real server (TSan/ASan cover the rest; valgrind is slow).
run_valgrind() {
    local dir=$1 rc=0
    local vg=(valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite,indirect
              --error-exitcode=97)
    log "valgrind: unit programs and examples"
    for t in test_codec test_url test_lane; do
        "${vg[@]}" "$dir/tests/$t" >"$dir/valgrind-$t.log" 2>&1 || {
            tail -n 30 "$dir/valgrind-$t.log"; rc=1; }
    done
    start_test_server tests/server/server.mjs --user root --pass root \
        ${SURPOOL_TEST_CORE:+--core "$SURPOOL_TEST_CORE"}
    for ex in quickstart crud; do
        "${vg[@]}" "$dir/examples/$ex" \
            "ws://root:root@127.0.0.1:$TEST_SERVER_PORT/rpc?ns=vg&db=$ex" \
            >"$dir/valgrind-$ex.log" 2>&1 || { tail -n 30 "$dir/valgrind-$ex.log"; rc=1; }
    done
    stop_test_server
    if [ $rc -eq 0 ]; then
        passed=$((passed + 5))
    else
        failed=$((failed + 1)); failed_runs+=("valgrind")
    fi
}

if [ $quick -eq 0 ] && command -v valgrind >/dev/null 2>&1; then
    run_valgrind "$build/plain"
fi

if [ $quick -eq 0 ]; then
    log "build: ASan+UBSan"
    configure_and_build "$build/asan" -DSURPOOL_WERROR=ON -DSURPOOL_SANITIZE=address,undefined
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        run_suite asan+ubsan "$build/asan"

    log "build: TSan"
    configure_and_build "$build/tsan" -DSURPOOL_WERROR=ON -DSURPOOL_SANITIZE=thread
    TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$SURPOOL_ROOT/tests/tsan.supp" \
        run_suite tsan "$build/tsan" -L 'concurrency|integration'

    if [ $fuzz -eq 1 ] && command -v clang >/dev/null 2>&1 && [ -f fuzz/CMakeLists.txt ]; then
        log "build: fuzzers (clang)"
        CC=clang configure_and_build "$build/fuzz" -DSURPOOL_BUILD_FUZZERS=ON \
            -DSURPOOL_BUILD_TESTS=OFF -DSURPOOL_BUILD_EXAMPLES=OFF -DSURPOOL_BUILD_SHARED=OFF
        for h in "$build"/fuzz/fuzz/fuzz_*; do
            [ -x "$h" ] || continue
            n=$(basename "$h")
            log "fuzz: $n for ${fuzz_seconds}s"
            work=$(mktemp -d)
            cp -r "fuzz/corpus/${n#fuzz_}/." "$work/" 2>/dev/null || true
            if "$h" -max_total_time="$fuzz_seconds" -print_final_stats=1 \
                   -artifact_prefix="$build/fuzz/$n-" "$work" >"$build/fuzz/$n.log" 2>&1; then
                grep -E 'stat::number_of_executed_units' "$build/fuzz/$n.log" || true
                passed=$((passed + 1))
            else
                tail -n 40 "$build/fuzz/$n.log"
                failed=$((failed + 1))
                failed_runs+=("$n")
            fi
            rm -rf "$work"
        done
    fi
fi

echo
[ ${#failed_runs[@]} -eq 0 ] || echo "failed: ${failed_runs[*]}"
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ ${#failed_runs[@]} -eq 0 ]
