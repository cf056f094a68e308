/*
 * stress_lane: the shared lane under socket turnover, injected drops and
 * destroy while callbacks resubmit, on the fake transport (no server).
 *
 *   stress_lane [--seconds N] [--pools N] [--seed N]
 *
 * Phase A (--seconds, default 8): one pool, lane of 3 sockets x 4 in flight,
 * max_lifetime_ms 300 (every socket is retired several times a second) and,
 * for the first half, a connection dropped at every 15th request. 8 threads call surpool_query()
 * and check that each result is their own; 4 threads keep 4 async calls each
 * outstanding, resubmitting from the callback. At the end:
 *   - every thread joins; every accepted async call completed exactly once;
 *   - the lane goes idle: lane_inflight = 0 and lane_queued = 0;
 *   - the stats balance (created - destroyed = idle + in_use, acquired -
 *     released = in_use = lane_connections) and every connection the pool
 *     does not hold is closed in the transport;
 *   - capacity is back: 12 slow requests (3 x 4) are all in flight at once
 *     with none queued (a socket expiring during the check makes the attempt
 *     void; up to 5 attempts, since expiry is random and the bug is not).
 * Phase B (--pools, default 150): create a pool, start 64 async chains that
 * resubmit from every callback, destroy it at once (drops on). Every accepted
 * call completes exactly once; every refusal is SURPOOL_ERR_CLOSED.
 *
 * Exit 0 when every invariant held, 1 if one broke, 2 on a usage error. A
 * watchdog turns a hang into exit 70 with what was awaited. The suite runs a
 * short version (ctest stress_lane); scripts/soak.sh --lane runs it longer.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fake_transport.h"
#include "fault_util.h"
#include "pool.h"

enum { SYNC_THREADS = 8, ASYNC_THREADS = 4, PER_ASYNC = 4, CHAINS = 64 };
enum { SHARED = 3, CAP = 4 };

static atomic_int g_failures;

static void failure(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void failure(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "INVARIANT BROKEN: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    atomic_fetch_add(&g_failures, 1);
}

static surpool_stats stats_of(surpool_pool *p)
{
    surpool_stats st;
    surpool_pool_stats(p, &st);
    return st;
}

/* Poll `cond` for up to `seconds` (scaled for sanitizers). */
#define POLL(cond, seconds)                                                                    \
    ({                                                                                         \
        int ok_ = 0;                                                                           \
        for (int64_t end_ = fu_now_ms() + (int64_t)(seconds)*1000 * FU_SLOW;                   \
             fu_now_ms() < end_;) {                                                            \
            if (cond) {                                                                        \
                ok_ = 1;                                                                       \
                break;                                                                         \
            }                                                                                  \
            fu_sleep_ms(1);                                                                    \
        }                                                                                      \
        ok_ || (cond);                                                                         \
    })

/* ------------------------------------------------------------------------- */
/* Phase A                                                                    */
/* ------------------------------------------------------------------------- */

typedef struct phase_a {
    surpool_pool *pool;
    fake_settings *fs;
    atomic_int stop;
    atomic_long sync_ok, sync_codes[32];
    atomic_long accepted, completed, async_codes[32];
} phase_a;

typedef struct chain {
    phase_a *a;
    atomic_int outstanding; /* 1 while an accepted call of this chain has not completed */
} chain;

static void *sync_main(void *arg)
{
    phase_a *a = arg;
    unsigned n = 0;
    while (!atomic_load(&a->stop)) {
        char sql[48];
        snprintf(sql, sizeof(sql), "RETURN %u", n++);
        json_t *out = NULL;
        surpool_error err;
        surpool_err rc = surpool_query(a->pool, sql, NULL, &out, &err);
        atomic_fetch_add(&a->sync_codes[rc < 32 ? rc : 31], 1);
        if (rc == SURPOOL_OK) {
            const char *got =
                json_string_value(json_object_get(json_array_get(out, 0), "result"));
            if (got == NULL || strcmp(got, sql) != 0)
                failure("surpool_query(%s) got another caller's result (%s)", sql,
                        got != NULL ? got : "null");
            atomic_fetch_add(&a->sync_ok, 1);
        } else if (rc != SURPOOL_ERR_DISCONNECTED) {
            failure("surpool_query: unexpected %s (%s)", surpool_strerror(rc), err.message);
        }
        json_decref(out);
    }
    return NULL;
}

static void on_chain(void *ud, surpool_err code, json_t *result, const surpool_error *err);

/* Start the next call of a chain; 0 if the lane refused it. */
static int chain_next(chain *c)
{
    atomic_store(&c->outstanding, 1); /* the callback may run before the call returns */
    surpool_err rc = surpool_query_async(c->a->pool, "RETURN 1", NULL, on_chain, c);
    if (rc == SURPOOL_OK) {
        atomic_fetch_add(&c->a->accepted, 1);
        return 1;
    }
    atomic_store(&c->outstanding, 0);
    failure("surpool_query_async refused: %s", surpool_strerror(rc));
    return 0;
}

static void on_chain(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    chain *c = ud;
    if (atomic_exchange(&c->outstanding, 0) != 1)
        failure("a callback without an accepted call (called twice?)");
    if ((code == SURPOOL_OK) != (result != NULL) || err == NULL)
        failure("callback arguments break the contract (code %d)", code);
    else if (code != SURPOOL_OK && code != SURPOOL_ERR_DISCONNECTED)
        failure("async call: unexpected %s (%s)", surpool_strerror(code), err->message);
    atomic_fetch_add(&c->a->async_codes[code < 32 ? code : 31], 1);
    atomic_fetch_add(&c->a->completed, 1);
    if (!atomic_load(&c->a->stop))
        chain_next(c);
}

static void *async_main(void *arg)
{
    chain *cs = arg;
    for (int i = 0; i < PER_ASYNC; i++)
        chain_next(&cs[i]);
    return NULL;
}

typedef struct slow {
    atomic_int done;
} slow;

static void on_slow(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)code;
    (void)result;
    (void)err;
    atomic_fetch_add(&((slow *)ud)->done, 1);
}

/* 12 slow requests all in flight at once on 3 sockets x 4, none queued. */
static int capacity_attempt(surpool_pool *p, fake_settings *fs, int *peak)
{
    slow s;
    atomic_init(&s.done, 0);
    atomic_store(&fs->call_latency_us, 300000);
    int accepted = 0;
    for (int i = 0; i < SHARED * CAP; i++)
        if (surpool_call_async(p, "ping", NULL, on_slow, &s) == SURPOOL_OK)
            accepted++;
    int full = 0;
    *peak = 0;
    int64_t end = fu_now_ms() + 30000L * FU_SLOW;
    while (atomic_load(&s.done) < accepted && fu_now_ms() < end) {
        surpool_stats st = stats_of(p);
        if (st.lane_inflight > *peak)
            *peak = st.lane_inflight;
        if (st.lane_inflight == SHARED * CAP && st.lane_queued == 0)
            full = 1;
        fu_sleep_ms(1);
    }
    if (atomic_load(&s.done) < accepted)
        failure("capacity check: %d of %d slow requests never completed", accepted - s.done,
                accepted);
    atomic_store(&fs->call_latency_us, 2000);
    return full && accepted == SHARED * CAP;
}

static void phase_a_run(long seconds)
{
    fake_settings *fs = calloc(1, sizeof(*fs));
    fake_settings_init(fs);
    atomic_store(&fs->call_latency_us, 2000);
    atomic_store(&fs->drop_every, 15);
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = 6;
    cfg.shared_connections = SHARED;
    cfg.shared_max_inflight = CAP;
    cfg.max_lifetime_ms = 300;
    cfg.request_timeout_ms = 20000;
    cfg.acquire_timeout_ms = 20000;
    phase_a a;
    memset(&a, 0, sizeof(a));
    a.fs = fs;
    surpool_error err;
    if (surpool__pool_create_with(&cfg, &fake_transport_ops, fs, &a.pool, &err) != SURPOOL_OK) {
        failure("create: %s", err.message);
        free(fs);
        return;
    }
    surpool_pool *p = a.pool;
    chain *chains = calloc(ASYNC_THREADS * PER_ASYNC, sizeof(*chains));
    for (int i = 0; i < ASYNC_THREADS * PER_ASYNC; i++)
        chains[i].a = &a;

    fu_watchdog((int)seconds + 120, "phase A: the load, its end and the checks");
    pthread_t th[SYNC_THREADS + ASYNC_THREADS];
    for (int i = 0; i < SYNC_THREADS; i++)
        pthread_create(&th[i], NULL, sync_main, &a);
    for (int i = 0; i < ASYNC_THREADS; i++)
        pthread_create(&th[SYNC_THREADS + i], NULL, async_main, &chains[i * PER_ASYNC]);
    /* Drops for the first half, then lifetime turnover alone: capacity must
     * come back after the faults end. */
    fu_sleep_ms(seconds * 500);
    atomic_store(&fs->drop_every, 0);
    int64_t retired_mid = (int64_t)stats_of(p).lifetime_retirements;
    fu_sleep_ms(seconds * 500);
    atomic_store(&a.stop, 1);
    for (int i = 0; i < SYNC_THREADS + ASYNC_THREADS; i++)
        if (fu_join(th[i], 60) != 0)
            failure("a worker thread did not join");

    if (!POLL(atomic_load(&a.completed) == atomic_load(&a.accepted), 30))
        failure("%ld accepted async calls never completed",
                atomic_load(&a.accepted) - atomic_load(&a.completed));
    for (int i = 0; i < ASYNC_THREADS * PER_ASYNC; i++)
        if (atomic_load(&chains[i].outstanding) != 0)
            failure("chain %d: an accepted call never completed", i);
    if (!POLL(stats_of(p).lane_inflight == 0 && stats_of(p).lane_queued == 0, 30))
        failure("lane not idle: %d in flight, %d queued", stats_of(p).lane_inflight,
                stats_of(p).lane_queued);
    surpool_stats st = stats_of(p);
    if (!POLL((st = stats_of(p),
               st.in_use == st.lane_connections &&
                   st.created - st.destroyed == (uint64_t)(st.idle + st.in_use) &&
                   atomic_load(&fs->open_now) == st.idle + st.in_use),
              30))
        failure("stats do not balance: created %llu destroyed %llu idle %d in_use %d lane %d, "
                "transport holds %d",
                (unsigned long long)st.created, (unsigned long long)st.destroyed, st.idle,
                st.in_use, st.lane_connections, atomic_load(&fs->open_now));
    if (st.acquired - st.released != (uint64_t)st.in_use)
        failure("acquired %llu - released %llu != in_use %d", (unsigned long long)st.acquired,
                (unsigned long long)st.released, st.in_use);
    if (st.lane_connections > SHARED)
        failure("the lane holds %d sockets (at most %d)", st.lane_connections, SHARED);

    int full = 0, peak = 0, attempts = 0;
    while (!full && attempts < 5 && atomic_load(&g_failures) == 0) {
        attempts++;
        full = capacity_attempt(p, fs, &peak);
    }
    if (!full)
        failure("capacity not restored: at most %d of %d requests in flight at once in %d "
                "attempts",
                peak, SHARED * CAP, attempts);
    st = stats_of(p);
    printf("phase A: %ld s; sync %ld OK, %ld DISCONNECTED; async %ld accepted, %ld completed "
           "(%ld OK, %ld DISCONNECTED); %d drops; %llu connections created, %llu lifetime "
           "retirements, %llu broken; lane requests %llu; capacity %d/%d in %d attempt(s)\n",
           seconds, atomic_load(&a.sync_ok),
           atomic_load(&a.sync_codes[SURPOOL_ERR_DISCONNECTED]), atomic_load(&a.accepted),
           atomic_load(&a.completed), atomic_load(&a.async_codes[SURPOOL_OK]),
           atomic_load(&a.async_codes[SURPOOL_ERR_DISCONNECTED]), atomic_load(&fs->drops),
           (unsigned long long)st.created, (unsigned long long)st.lifetime_retirements,
           (unsigned long long)st.broken, (unsigned long long)st.lane_requests, peak,
           SHARED * CAP, attempts);
    if ((int64_t)st.lifetime_retirements <= retired_mid)
        failure("no lane socket reached its lifetime after the drops: the run did not test "
                "turnover");
    if (atomic_load(&fs->drops) == 0)
        failure("no connection was dropped: the run did not test drops");
    surpool_pool_destroy(p);
    fu_watchdog(0, "");
    if (atomic_load(&fs->open_now) != 0)
        failure("%d connections left open after destroy", atomic_load(&fs->open_now));
    free(chains);
    free(fs);
}

/* ------------------------------------------------------------------------- */
/* Phase B: destroy while callbacks resubmit                                  */
/* ------------------------------------------------------------------------- */

typedef struct resub {
    surpool_pool *pool;
    atomic_int outstanding;
    atomic_long *accepted, *completed, *refused;
} resub;

static void on_resub(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)code;
    (void)result;
    (void)err;
    resub *r = ud;
    if (atomic_exchange(&r->outstanding, 0) != 1)
        failure("phase B: a callback without an accepted call");
    atomic_fetch_add(r->completed, 1);
    atomic_store(&r->outstanding, 1);
    surpool_err rc = surpool_query_async(r->pool, "RETURN 1", NULL, on_resub, r);
    if (rc == SURPOOL_OK) {
        atomic_fetch_add(r->accepted, 1);
        return;
    }
    atomic_store(&r->outstanding, 0);
    atomic_fetch_add(r->refused, 1);
    if (rc != SURPOOL_ERR_CLOSED)
        failure("phase B: resubmit refused with %s, not CLOSED", surpool_strerror(rc));
}

static void phase_b_run(int pools, unsigned seed)
{
    fake_settings *fs = calloc(1, sizeof(*fs));
    fake_settings_init(fs);
    atomic_store(&fs->drop_every, 40);
    resub *rs = calloc(CHAINS, sizeof(*rs));
    atomic_long accepted = 0, completed = 0, refused = 0;
    fu_watchdog(60 + pools / 2, "phase B: pools destroyed while callbacks resubmit");
    for (int round = 0; round < pools && atomic_load(&g_failures) == 0; round++) {
        /* Never 0: with replies inside submit() a chain that resubmits
         * forever would keep the thread that started it sending forever. */
        atomic_store(&fs->call_latency_us,
                     20 + (int)((seed + (unsigned)round * 7u) % 5u) * 100);
        surpool_config cfg;
        surpool_config_init(&cfg);
        cfg.url = "ws://fake.invalid/rpc";
        cfg.max_connections = 4;
        cfg.shared_connections = 2;
        cfg.shared_max_inflight = 8;
        cfg.request_timeout_ms = 20000;
        surpool_pool *p = NULL;
        surpool_error err;
        if (surpool__pool_create_with(&cfg, &fake_transport_ops, fs, &p, &err) != SURPOOL_OK) {
            failure("phase B: create: %s", err.message);
            break;
        }
        for (int i = 0; i < CHAINS; i++) {
            rs[i].pool = p;
            rs[i].accepted = &accepted;
            rs[i].completed = &completed;
            rs[i].refused = &refused;
            atomic_store(&rs[i].outstanding, 1);
            if (surpool_query_async(p, "RETURN 1", NULL, on_resub, &rs[i]) == SURPOOL_OK)
                atomic_fetch_add(&accepted, 1);
            else
                failure("phase B: a first call was refused");
        }
        if (round % 2 == 1)
            fu_sleep_ms(1 + (int)((seed + (unsigned)round) % 5u));
        surpool_pool_destroy(p);
        for (int i = 0; i < CHAINS; i++)
            if (atomic_load(&rs[i].outstanding) != 0)
                failure("phase B, pool %d: chain %d has an accepted call that never completed",
                        round, i);
        if (atomic_load(&accepted) != atomic_load(&completed))
            failure("phase B, pool %d: %ld accepted, %ld completed", round,
                    atomic_load(&accepted), atomic_load(&completed));
        if (atomic_load(&fs->open_now) != 0)
            failure("phase B, pool %d: %d connections left open", round,
                    atomic_load(&fs->open_now));
    }
    fu_watchdog(0, "");
    printf("phase B: %d pools destroyed under %d resubmitting chains each: %ld calls accepted "
           "and completed, %ld resubmits refused (all CLOSED), %d drops\n",
           pools, CHAINS, atomic_load(&completed), atomic_load(&refused),
           atomic_load(&fs->drops));
    free(rs);
    free(fs);
}

int main(int argc, char **argv)
{
    long seconds = 8;
    int pools = 150;
    unsigned seed = (unsigned)time(NULL);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atol(argv[++i]);
        else if (strcmp(argv[i], "--pools") == 0 && i + 1 < argc)
            pools = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
            seed = (unsigned)strtoul(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "usage: stress_lane [--seconds N] [--pools N] [--seed N]\n");
            return 2;
        }
    }
    if (seconds < 1 || pools < 1) {
        fprintf(stderr, "stress_lane: --seconds and --pools must be >= 1\n");
        return 2;
    }
    printf("stress_lane: --seconds %ld --pools %d --seed %u\n", seconds, pools, seed);
    phase_a_run(seconds);
    if (atomic_load(&g_failures) == 0)
        phase_b_run(pools, seed);
    int n = atomic_load(&g_failures);
    printf("stress_lane: %s (%d invariant failure(s))\n",
           n == 0 ? "all invariants held" : "FAILED", n);
    return n == 0 ? 0 : 1;
}
