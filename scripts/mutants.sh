#!/usr/bin/env bash
# Mutation check (not part of CI: it takes a while). Plants, one at a time, a
# list of single plausible bugs in the pool core, the lane, the codec and the
# transport, runs the fast suite (ctest -LE stress, plain Debug build: unit tests first) against
# each, and prints which mutants the suite killed and which survived. All
# killed is the bar. docs/testing.md says when to run it and how to update a
# mutant whose anchor text moved.
#
# Everything happens in a scratch copy of the working tree (tracked and
# untracked, not ignored, files as they are now): the tree itself is never
# mutated, even when the script is interrupted.
#
# Usage: scripts/mutants.sh [--list] [--check] [--keep] [--no-baseline] [--jobs N] [NAME...]
#   NAME...        only these mutants (default: all; --list prints them)
#   --check        only check that every mutant still plants (no build, no tests)
#   --keep         keep the scratch copy (its path is printed)
#   --no-baseline  skip the run of the unmutated suite (it must be green)
#   --jobs N       ctest parallelism (default 2)
# Exit status: 0 if every mutant planted was killed, 1 if one survived, 2 if
# a mutant could not be planted (its anchor text moved) or the baseline fails.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

# ---------------------------------------------------------------------------
# The mutants. Each is `plant FILE COUNT OLD NEW [OLD NEW]...`: every OLD must
# occur exactly COUNT times in FILE (else the source moved and the mutant
# fails loudly instead of silently testing nothing), and each occurrence is
# replaced with NEW. Anchor on text that says what the code does, not on line
# numbers.
# ---------------------------------------------------------------------------

MUTANTS=(handoff_newest release_notify_one max_off_by_one connect_slot_leak
         dirty_not_reset breaker_never_opens lane_inflight_kept id_mismatch_accepted
         errors_all_server kind_dropped deadlines_ignored settle_drops_grant
         lane_most_loaded lane_never_retires)

# A released connection goes to the newest waiter instead of the oldest.
m_handoff_newest() {
    plant src/pool.c 1 \
'    surpool__waiter *w = oldest_waiter_locked(p);
    c->last_checked_ns = now;' \
'    surpool__queue *newest = surpool__queue_tail(&p->waiters);
    surpool__waiter *w =
        newest != NULL ? SURPOOL__QUEUE_DATA(newest, surpool__waiter, link) : NULL;
    c->last_checked_ns = now;'
}

# Release makes the connection idle and signals one waiter, which was granted
# nothing: a lost wake-up (the invariant that would catch it is removed too,
# as a real bug of this kind would not come with its own assert).
m_release_notify_one() {
    plant src/pool.c 1 \
'        p->stats.handoffs++;
        waiter_finish(p, w, SURPOOL_OK, c);' \
'        p->nleased--;
        c->last_used_ns = now;
        idle_push_front(p, c);
        pthread_cond_signal(&w->cv);
        (void)waiter_finish;' \
'    SURPOOL__CHECK(p->nidle == 0 || p->nwaiters == 0 || p->closed || p->paused);' \
'    (void)0;'
}

# The pool never opens its last slot.
m_max_off_by_one() {
    plant src/governor.c 1 \
'    int free_slots = p->cfg.pub.max_connections - surpool__pool_total_locked(p);' \
'    int free_slots = p->cfg.pub.max_connections - 1 - surpool__pool_total_locked(p);'
}

# A failed connect keeps its reserved slot.
m_connect_slot_leak() {
    plant src/governor.c 1 \
'        p->nconnecting--;
        if (rc == SURPOOL_OK) {' \
'        if (rc == SURPOOL_OK)
            p->nconnecting--;
        if (rc == SURPOOL_OK) {'
}

# A dirty lease is "reset" (and counted as reset) without anything being sent:
# the next borrower inherits the namespace, database and variables.
m_dirty_not_reset() {
    plant src/conn.c 1 \
'    surpool_err rc = setup_rpc(c, "reset", NULL, deadline, NULL, err);
    if (rc == SURPOOL_OK)
        rc = setup(c, deadline, err);' \
'    surpool_err rc = SURPOOL_OK;
    (void)deadline;
    (void)err;'
}

# The circuit breaker never opens.
m_breaker_never_opens() {
    plant src/governor.c 1 \
'if (threshold > 0 && p->consecutive_failures >= threshold && !p->breaker_open) {' \
'if (0 && threshold > 0 && p->consecutive_failures >= threshold && !p->breaker_open) {'
}

# A completed lane request does not give its in-flight slot back.
m_lane_inflight_kept() {
    plant src/lane.c 1 \
'    lc->inflight--; /* last touch of lc: the lane thread may free it from here on */
    l->inflight--;
    l->completing++;' \
'    l->completing++;'
}

# A reply whose id matches no request is given to the oldest one in flight.
m_id_mismatch_accepted() {
    plant src/reqtable.c 1 \
'    size_t i = map_find(&rt->map, id, NULL);
    if (i == SIZE_MAX)
        return NULL;' \
'    size_t i = map_find(&rt->map, id, NULL);
    if (i == SIZE_MAX && list_head(&rt->inflight) != NULL)
        i = map_find(&rt->map, list_head(&rt->inflight)->id, NULL);
    if (i == SIZE_MAX)
        return NULL;'
}

# Every server error is SERVER (authentication failures included).
m_errors_all_server() {
    plant src/codec.c 1 \
'    surpool_err rc = code == -32002 ? SURPOOL_ERR_AUTH : SURPOOL_ERR_SERVER;' \
'    surpool_err rc = SURPOOL_ERR_SERVER;'
}

# The server error's kind is not copied into the caller's error.
m_kind_dropped() {
    plant src/codec.c 1 \
'    if (json_is_string(kind))
        surpool__text_sanitize(err->kind, sizeof(err->kind), json_string_value(kind),
                               json_string_length(kind));' \
'    (void)kind;'
}

# Request deadlines never expire anything.
m_deadlines_ignored() {
    plant src/reqtable.c 2 \
'r->deadline_ns <= now) {' \
'r->deadline_ns <= now && 0) {'
}

# A waiter whose deadline passes as it is granted a connection returns TIMEOUT
# and drops the grant.
m_settle_drops_grant() {
    plant src/pool.c 1 \
'        if (wrc == ETIMEDOUT && !w.done) {' \
'        if (wrc == ETIMEDOUT) {'
}

# The lane sends to its most-loaded socket.
m_lane_most_loaded() {
    plant src/lane.c 1 \
'        if (best == NULL || lc->inflight < best->inflight)' \
'        if (best == NULL || lc->inflight > best->inflight)'
}

# The lane never retires a socket past max_lifetime_ms.
m_lane_never_retires() {
    plant src/lane.c 1 \
'                if (surpool__conn_expired(lc->c, now))' \
'                if (0 && surpool__conn_expired(lc->c, now))'
}

# ---------------------------------------------------------------------------

# plant FILE COUNT OLD NEW [OLD NEW]...: in the scratch copy.
plant() {
    local file=$1 count=$2
    shift 2
    python3 - "$scratch/$file" "$count" "$@" <<'EOF'
import sys
path, count, pairs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
text = open(path).read()
for old, new in zip(pairs[0::2], pairs[1::2]):
    n = text.count(old)
    if n != count:
        sys.exit("%s: anchor found %d times, expected %d:\n%s" % (path, n, count, old))
    text = text.replace(old, new)
open(path, "w").write(text)
EOF
}

keep=0
check=0
baseline=1
jobs=2
selected=()
while [ $# -gt 0 ]; do
    case $1 in
        --list) printf '%s\n' "${MUTANTS[@]}"; exit 0 ;;
        --check) check=1 ;;
        --keep) keep=1 ;;
        --no-baseline) baseline=0 ;;
        --jobs) jobs=$2; shift ;;
        -*) die "unknown option $1 (see the comment at the top of $0)" ;;
        *) selected+=("$1") ;;
    esac
    shift
done
[ ${#selected[@]} -gt 0 ] || selected=("${MUTANTS[@]}")
for m in "${selected[@]}"; do
    declare -F "m_$m" >/dev/null || die "no mutant named $m (--list shows them)"
done
command -v python3 >/dev/null || die "python3 is needed to plant the mutants"

if [ $check -eq 1 ]; then
    scratch=$(mktemp -d -t surpool-mutants.XXXXXX)
    trap 'rm -rf "$scratch"' EXIT
    bad=0
    for m in "${selected[@]}"; do
        rm -rf "$scratch/src"
        cp -a "$SURPOOL_ROOT/src" "$scratch/src"
        if "m_$m"; then echo "$m: plants"; else echo "$m: DOES NOT PLANT"; bad=1; fi
    done
    exit $((bad * 2))
fi

ensure_deps
scratch=$(mktemp -d -t surpool-mutants.XXXXXX)
cleanup() { [ $keep -eq 1 ] && log "scratch copy kept: $scratch" || rm -rf "$scratch"; }
trap cleanup EXIT

log "scratch copy of the working tree: $scratch"
(cd "$SURPOOL_ROOT" && git ls-files -z -co --exclude-standard) |
    (cd "$SURPOOL_ROOT" && tar --null -T - -cf -) | tar -C "$scratch" -xf -
ln -s "$(cd "$SURPOOL_ROOT/tests/server/node_modules" && pwd -P)" \
    "$scratch/tests/server/node_modules"
mkdir -p "$scratch/.pristine"
cp -a "$scratch/src" "$scratch/.pristine/src"

build="$scratch/build"
cmake -S "$scratch" -B "$build" -DCMAKE_BUILD_TYPE=Debug -DSURPOOL_BUILD_EXAMPLES=OFF \
    -DSURPOOL_BUILD_BENCH=OFF -DSURPOOL_BUILD_FUZZERS=OFF >/dev/null

# run_suite LOG: 0 when every fast test passed. The unit tests first (seconds),
# then the rest; stops at the first failure.
run_suite() {
    nice ctest --test-dir "$build" -L unit -j "$jobs" --stop-on-failure >"$1" 2>&1 &&
        nice ctest --test-dir "$build" -LE 'stress|unit' -j "$jobs" --stop-on-failure \
            >>"$1" 2>&1
}
# The tests that failed (or timed out) in LOG, on one line.
failed_tests() {
    grep -E '^ *[0-9]+/[0-9]+ Test +#[0-9]+: ' "$1" | grep -v ' Passed ' |
        sed -E 's/.*Test +#[0-9]+: ([^ ]+) .*\*+ *([A-Za-z]+).*/\1 (\2)/;
                s/.*Test +#[0-9]+: ([^ ]+) .*/\1/' | paste -sd, -
}

if [ $baseline -eq 1 ]; then
    log "baseline: the unmutated suite"
    nice cmake --build "$build" -j "$jobs" >"$scratch/build.log" 2>&1 ||
        { tail -n 30 "$scratch/build.log"; die "the unmutated tree does not build"; }
    if ! run_suite "$scratch/baseline.log"; then
        tail -n 30 "$scratch/baseline.log"
        echo "baseline FAILED: $(failed_tests "$scratch/baseline.log")" >&2
        exit 2
    fi
fi

killed=0
survived=0
unplanted=0
survivors=()
for m in "${selected[@]}"; do
    rm -rf "$scratch/src"
    cp -a "$scratch/.pristine/src" "$scratch/src"
    touch "$scratch"/src/* # a restored file must be rebuilt even if older
    if ! "m_$m" 2>"$scratch/plant.log"; then
        cat "$scratch/plant.log" >&2
        printf '%-22s NOT PLANTED (anchor moved: update it in %s)\n' "$m" "$0"
        unplanted=$((unplanted + 1))
        continue
    fi
    log "mutant $m"
    if ! nice cmake --build "$build" -j "$jobs" >"$scratch/build-$m.log" 2>&1; then
        tail -n 20 "$scratch/build-$m.log" >&2
        printf '%-22s NOT PLANTED (does not compile: fix the mutant)\n' "$m"
        unplanted=$((unplanted + 1))
        continue
    fi
    t0=$(date +%s)
    if run_suite "$scratch/run-$m.log"; then
        printf '%-22s SURVIVED (%ds)\n' "$m" $(($(date +%s) - t0))
        survived=$((survived + 1))
        survivors+=("$m")
    else
        printf '%-22s killed by %s (%ds)\n' "$m" "$(failed_tests "$scratch/run-$m.log")" \
            $(($(date +%s) - t0))
        killed=$((killed + 1))
    fi
done
rm -rf "$scratch/src"
cp -a "$scratch/.pristine/src" "$scratch/src"

echo
[ ${#survivors[@]} -eq 0 ] || echo "survived: ${survivors[*]}"
echo "mutants: $killed killed, $survived survived, $unplanted not planted"
[ $unplanted -eq 0 ] || exit 2
[ $survived -eq 0 ]
