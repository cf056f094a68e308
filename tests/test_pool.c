/*
 * Burst regression suite for the pool core, on the fake transport, with real
 * threads. Every test asserts exact counts; none asserts a duration.
 *
 * The bug this suite exists for: "release, then notify one waiter" pools lose
 * wake-ups, so a burst larger than max_connections ends with max_connections
 * successes and the rest timing out although connections came back. Here every
 * caller must succeed, in arrival order, with a timeout that a lost wake-up
 * would always hit.
 */
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "fake_transport.h"
#include "lease.h"
#include "pool.h"

/* Generous: a lost wake-up waits for all of it, a working pool for a fraction.
 * Sanitizers slow everything down ~10x, so this is not tight on purpose. */
#ifndef NO_LOST_WAKEUP_TIMEOUT_MS
#define NO_LOST_WAKEUP_TIMEOUT_MS 20000
#endif

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void sleep_us(int us)
{
    struct timespec ts = {us / 1000000, (long)(us % 1000000) * 1000L};
    nanosleep(&ts, NULL);
}

/* Every wait in this file is bounded: a regression fails with a message saying
 * what it waited for, in seconds, instead of hanging until ctest kills it. The
 * bounds are generous (sanitizers); nothing asserts a duration. */
#define WAIT_BOUND_S 20

/* Poll `cond` for at most WAIT_BOUND_S seconds; fail naming `what`. */
#define WAIT_UNTIL(cond, what)                                                                 \
    do {                                                                                       \
        int64_t wait_end_ = surpool__now_ns() + WAIT_BOUND_S * INT64_C(1000000000);            \
        while (!(cond) && surpool__now_ns() < wait_end_)                                       \
            sleep_us(200);                                                                     \
        if (!(cond))                                                                           \
            fail_msg("gave up after %d s waiting for %s (%s)", WAIT_BOUND_S, what, #cond);     \
    } while (0)

/* pthread_join with a bound: a thread stuck in the pool fails the test. */
static void join_bounded(pthread_t th, const char *what)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 2 * WAIT_BOUND_S;
    if (pthread_timedjoin_np(th, NULL, &ts) != 0)
        fail_msg("gave up after %d s waiting for %s to finish", 2 * WAIT_BOUND_S, what);
}

/* Leases held by callers (not the maintainer's pings, not the shared lane). */
static int user_leases(surpool_pool *p)
{
    pthread_mutex_lock(&p->mu);
    int n = p->nleased - p->nmaint - p->nlane;
    pthread_mutex_unlock(&p->mu);
    return n;
}

typedef struct fixture {
    fake_settings fs;
    surpool_pool *pool;
} fixture;

static surpool_pool *make_pool_ex(fixture *f, int max_conns, int max_waiters, int breaker)
{
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.breaker_threshold = breaker;
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = max_conns;
    cfg.max_waiters = max_waiters;
    cfg.acquire_timeout_ms = NO_LOST_WAKEUP_TIMEOUT_MS;
    cfg.reconnect_backoff_min_ms = 1;
    cfg.reconnect_backoff_max_ms = 4;
    surpool_error err;
    surpool_err rc =
        surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &f->pool, &err);
    if (rc != SURPOOL_OK)
        fail_msg("create: %s", err.message);
    return f->pool;
}

static surpool_pool *make_pool(fixture *f, int max_conns, int max_waiters)
{
    return make_pool_ex(f, max_conns, max_waiters, 5);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    fake_settings_init(&f->fs);
    *state = f;
    return 0;
}

/* Stats must balance after every test, and destroy must close everything. */
static int teardown(void **state)
{
    fixture *f = *state;
    if (f->pool != NULL) {
        /* A test that failed while a lease was out (its own, or one a thread
         * still holds) must not hang here: destroy() waits for every lease.
         * Give them a bounded time to come back, else leak the pool. */
        int64_t end = surpool__now_ns() + 10 * INT64_C(1000000000);
        while (user_leases(f->pool) > 0 && surpool__now_ns() < end)
            sleep_us(1000);
        if (user_leases(f->pool) > 0)
            fail_msg("teardown: %d leases never came back; the pool is leaked, not "
                     "destroyed, so that this failure is reported instead of a hang",
                     user_leases(f->pool));
        surpool_stats st;
        surpool_pool_stats(f->pool, &st);
        assert_int_equal((int)(st.created - st.destroyed), st.idle + st.in_use);
        /* The fake counts a connection open a moment before the pool stops
         * counting it as connecting, and closed a moment after the pool let go:
         * wait (bounded) for a connect or close in flight to settle. */
        int open_now = atomic_load(&f->fs.open_now);
        for (int i = 0; i < 10000 && open_now != st.total - st.connecting; i++) {
            sleep_us(1000);
            surpool_pool_stats(f->pool, &st);
            open_now = atomic_load(&f->fs.open_now);
        }
        assert_int_equal(open_now, st.total - st.connecting);
        surpool_pool_destroy(f->pool);
    }
    assert_int_equal(atomic_load(&f->fs.open_now), 0);
    free(f);
    return 0;
}

/* ------------------------------------------------------------------------- */
/* Exclusivity tracker: no connection may be held by two callers at once.     */
/* ------------------------------------------------------------------------- */

#define MAX_TRACK 4096
typedef struct tracker {
    pthread_mutex_t mu;
    surpool_conn *held[MAX_TRACK];
    int nheld, peak;
    int double_lease;
} tracker;

/* The tracker keys on the connection a lease handle names (handles differ
 * per lease, connections are what must not be shared). */
static void track_acquire(tracker *t, surpool_conn *h)
{
    surpool_conn *c = surpool__lease_conn_of(h);
    assert_non_null(c);
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < t->nheld; i++)
        if (t->held[i] == c)
            t->double_lease++;
    t->held[t->nheld++] = c;
    if (t->nheld > t->peak)
        t->peak = t->nheld;
    pthread_mutex_unlock(&t->mu);
}

static void track_release(tracker *t, surpool_conn *h)
{
    surpool_conn *c = surpool__lease_conn_of(h);
    assert_non_null(c);
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < t->nheld; i++) {
        if (t->held[i] == c) {
            t->held[i] = t->held[--t->nheld];
            break;
        }
    }
    pthread_mutex_unlock(&t->mu);
}

/* ------------------------------------------------------------------------- */
/* Bursts                                                                     */
/* ------------------------------------------------------------------------- */

typedef struct burst {
    surpool_pool *pool;
    pthread_barrier_t start;
    tracker tr;
    int hold_us;
    long timeout_ms;
    atomic_int ok, timeouts, other;
    atomic_int codes[32];
} burst;

static void *burst_worker(void *arg)
{
    burst *b = arg;
    pthread_barrier_wait(&b->start);
    surpool_conn *c = NULL;
    surpool_error err;
    surpool_err rc = surpool_pool_acquire(b->pool, b->timeout_ms, &c, &err);
    atomic_fetch_add(&b->codes[rc], 1);
    if (rc == SURPOOL_OK) {
        track_acquire(&b->tr, c);
        json_t *out = NULL;
        surpool_err qrc = surpool_conn_query(c, "RETURN 1", NULL, &out, &err);
        if (qrc != SURPOOL_OK)
            atomic_fetch_add(&b->other, 1);
        json_decref(out);
        if (b->hold_us > 0)
            sleep_us(b->hold_us);
        track_release(&b->tr, c);
        surpool_conn_release(c);
        atomic_fetch_add(&b->ok, 1);
    } else if (rc == SURPOOL_ERR_TIMEOUT) {
        atomic_fetch_add(&b->timeouts, 1);
    } else {
        atomic_fetch_add(&b->other, 1);
    }
    return NULL;
}

static void run_burst(fixture *f, int callers, int max_conns, int hold_us)
{
    surpool_pool *pool = make_pool(f, max_conns, 0);
    burst *b = calloc(1, sizeof(*b));
    b->pool = pool;
    b->hold_us = hold_us;
    b->timeout_ms = NO_LOST_WAKEUP_TIMEOUT_MS;
    pthread_mutex_init(&b->tr.mu, NULL);
    pthread_barrier_init(&b->start, NULL, (unsigned)callers);
    pthread_t *th = calloc((size_t)callers, sizeof(*th));
    for (int i = 0; i < callers; i++)
        assert_int_equal(pthread_create(&th[i], NULL, burst_worker, b), 0);
    for (int i = 0; i < callers; i++)
        join_bounded(th[i], "burst caller");

    assert_int_equal(atomic_load(&b->ok), callers);
    assert_int_equal(atomic_load(&b->timeouts), 0);
    assert_int_equal(atomic_load(&b->other), 0);
    assert_int_equal(b->tr.double_lease, 0);
    assert_true(b->tr.peak <= max_conns);

    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.acquired, (uint64_t)callers);
    assert_int_equal(st.released, (uint64_t)callers);
    assert_int_equal(st.timeouts, 0);
    assert_int_equal(st.in_use, 0);
    assert_int_equal(st.waiters, 0);
    assert_true(st.created <= (uint64_t)max_conns);
    assert_int_equal(st.idle, (int)st.created);
    assert_int_equal(st.requests, (uint64_t)callers);

    pthread_barrier_destroy(&b->start);
    pthread_mutex_destroy(&b->tr.mu);
    free(th);
    free(b);
}

static void test_burst_100_on_50(void **state)
{
    run_burst(*state, 100, 50, 2000);
}

static void test_burst_200_on_50(void **state)
{
    run_burst(*state, 200, 50, 2000);
}

static void test_burst_1000_on_10(void **state)
{
    run_burst(*state, 1000, 10, 200);
}

/* Slow connects make most of the burst queue behind connects in progress. */
static void test_burst_slow_connects(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.connect_latency_ms, 20);
    run_burst(f, 300, 20, 500);
}

/* ------------------------------------------------------------------------- */
/* Arrival order                                                              */
/* ------------------------------------------------------------------------- */

typedef struct order {
    surpool_pool *pool;
    pthread_mutex_t mu;
    int seq[512];
    int nseq;
} order;

typedef struct order_arg {
    order *o;
    int index;
} order_arg;

static void *order_worker(void *arg)
{
    order_arg *a = arg;
    surpool_conn *c = NULL;
    surpool_err rc = surpool_pool_acquire(a->o->pool, NO_LOST_WAKEUP_TIMEOUT_MS, &c, NULL);
    if (rc != SURPOOL_OK)
        return NULL;
    pthread_mutex_lock(&a->o->mu);
    a->o->seq[a->o->nseq++] = a->index;
    pthread_mutex_unlock(&a->o->mu);
    surpool_conn_release(c);
    return NULL;
}

static int waiters_now(surpool_pool *pool)
{
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    return st.waiters;
}

static void wait_for_waiters(surpool_pool *pool, int n)
{
    char what[64];
    snprintf(what, sizeof(what), "%d callers queued in acquire", n);
    WAIT_UNTIL(waiters_now(pool) >= n, what);
}

/* One connection, held by the test while N callers queue one after another in
 * a known order; then a stream of late callers arrives while the queue drains.
 * With a single connection each grant follows the previous release, so the
 * recorded sequence is exactly the grant order. */
static void test_grants_in_arrival_order(void **state)
{
    fixture *f = *state;
    enum { EARLY = 64, LATE = 32 };
    surpool_pool *pool = make_pool(f, 1, 0);
    order o;
    memset(&o, 0, sizeof(o));
    o.pool = pool;
    pthread_mutex_init(&o.mu, NULL);

    surpool_conn *held = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 1000, &held, NULL), SURPOOL_OK);

    pthread_t th[EARLY + LATE];
    order_arg args[EARLY + LATE];
    for (int i = 0; i < EARLY; i++) {
        args[i] = (order_arg){&o, i};
        pthread_create(&th[i], NULL, order_worker, &args[i]);
        wait_for_waiters(pool, i + 1); /* i is queued before i+1 starts */
    }
    surpool_conn_release(held);
    for (int i = EARLY; i < EARLY + LATE; i++) {
        args[i] = (order_arg){&o, i};
        pthread_create(&th[i], NULL, order_worker, &args[i]);
    }
    for (int i = 0; i < EARLY + LATE; i++)
        join_bounded(th[i], "arrival-order caller");

    assert_int_equal(o.nseq, EARLY + LATE);
    for (int i = 0; i < EARLY; i++)
        assert_int_equal(o.seq[i], i); /* exact arrival order, nobody jumped in */
    for (int i = EARLY; i < EARLY + LATE; i++)
        assert_true(o.seq[i] >= EARLY);

    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.created, 1);
    assert_true(st.handoffs >= EARLY); /* every early grant was a direct handoff */
    pthread_mutex_destroy(&o.mu);
}

/* ------------------------------------------------------------------------- */
/* Deadlines                                                                  */
/* ------------------------------------------------------------------------- */

static void test_timeout_not_before_deadline(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_pool(f, 1, 0);
    surpool_conn *held = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 1000, &held, NULL), SURPOOL_OK);

    for (int ms = 1; ms <= 40; ms += 13) {
        surpool_conn *c = NULL;
        surpool_error err;
        int64_t t0 = surpool__now_ns();
        surpool_err rc = surpool_pool_acquire(pool, ms, &c, &err);
        int64_t waited = surpool__now_ns() - t0;
        assert_int_equal(rc, SURPOOL_ERR_TIMEOUT);
        assert_int_equal(err.code, SURPOOL_ERR_TIMEOUT);
        assert_null(c);
        assert_true(waited >= (int64_t)ms * 1000000); /* never early */
    }
    /* timeout 0: no wait at all */
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 0, &c, NULL), SURPOOL_ERR_TIMEOUT);
    surpool_conn_release(held);

    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.timeouts, 5);
    assert_int_equal(st.waiters, 0);
}

typedef struct race {
    surpool_pool *pool;
    long timeout_ms;
    surpool_err rc;
} race;

static void *race_waiter(void *arg)
{
    race *r = arg;
    surpool_conn *c = NULL;
    r->rc = surpool_pool_acquire(r->pool, r->timeout_ms, &c, NULL);
    if (r->rc == SURPOOL_OK)
        surpool_conn_release(c);
    return NULL;
}

typedef struct releaser {
    surpool_conn *conn;
    atomic_int started;
} releaser;

static void *release_worker(void *arg)
{
    releaser *r = arg;
    atomic_store(&r->started, 1);
    surpool_conn_release(r->conn); /* queues on the pool mutex the test holds */
    return NULL;
}

/* Start the releaser while the test holds the pool mutex, and give it time to
 * queue on it. On failure the mutex is let go first, so teardown can run. */
static void start_releaser_locked(surpool_pool *pool, pthread_t *rt, releaser *rel)
{
    int rc = pthread_create(rt, NULL, release_worker, rel);
    int64_t end = surpool__now_ns() + WAIT_BOUND_S * INT64_C(1000000000);
    while (rc == 0 && !atomic_load(&rel->started) && surpool__now_ns() < end)
        sleep_us(100);
    if (rc != 0 || !atomic_load(&rel->started)) {
        pthread_mutex_unlock(&pool->mu);
        fail_msg("the releaser thread did not start (pthread_create: %d)", rc);
    }
    sleep_us(5000); /* from started to queued on the mutex */
}

/* Long enough that the releaser thread is surely queued on the mutex before
 * the waiter's deadline passes; only the order matters, never the duration. */
#define RACE_TIMEOUT_MS 50

/* One round of "a release and a deadline at the same moment", forced with the
 * pool mutex (tests see the pool's internals): the test holds the mutex while
 * the releaser queues on it and the waiter's deadline passes (so the waiter's
 * timed wait returns and queues on it too), then lets both go.
 *  release_first = 1: the releaser queued first. It hands the connection to
 *    the waiter, whose deadline has already passed: the settle step (rule 4)
 *    must see the grant and succeed; a waiter that ignores it returns TIMEOUT,
 *    unlinks itself a second time (waiters -1) and loses the lease.
 *  release_first = 0: the waiter queued first. It times out and leaves; the
 *    release finds nobody waiting and the connection goes idle.
 * Returns the waiter's result. */
static surpool_err race_round(surpool_pool *pool, int release_first)
{
    surpool_conn *held = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 1000, &held, NULL), SURPOOL_OK);
    race r = {pool, RACE_TIMEOUT_MS, SURPOOL_ERR_INVALID_ARG};
    releaser rel = {held, 0};
    pthread_t wt, rt;
    assert_int_equal(pthread_create(&wt, NULL, race_waiter, &r), 0);
    wait_for_waiters(pool, 1);
    /* The waiter's acquire began before it was seen queued: by this time its
     * deadline has passed, whatever the scheduling. */
    int64_t past_deadline =
        surpool__now_ns() + (RACE_TIMEOUT_MS + 10) * (int64_t)SURPOOL__NS_PER_MS;

    pthread_mutex_lock(&pool->mu);
    if (release_first)
        start_releaser_locked(pool, &rt, &rel);
    while (surpool__now_ns() < past_deadline)
        sleep_us(1000);
    sleep_us(5000); /* the waiter's timed wait returns and queues on the mutex */
    if (!release_first)
        start_releaser_locked(pool, &rt, &rel);
    pthread_mutex_unlock(&pool->mu);
    join_bounded(rt, "the releaser");
    join_bounded(wt, "the waiter whose deadline passed");

    assert_true(r.rc == SURPOOL_OK || r.rc == SURPOOL_ERR_TIMEOUT);
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    if (st.waiters != 0 || st.in_use != 0 || st.idle != 1)
        fail_msg("release at the waiter's deadline (%s first) lost the connection: waiter "
                 "got %s; waiters %d, in_use %d, idle %d (want 0, 0, 1)",
                 release_first ? "release" : "deadline", surpool_strerror(r.rc), st.waiters,
                 st.in_use, st.idle);
    assert_int_equal((int)(st.created - st.destroyed), st.idle + st.in_use);
    assert_int_equal(st.created, 1);
    return r.rc;
}

/* Release exactly at the waiter's deadline, both ways round, 20 times each:
 * whatever wins, the connection is never lost and never given to two callers. */
static void test_release_at_deadline_loses_nothing(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_pool(f, 1, 0);
    int granted = 0, timed_out = 0;
    for (int i = 0; i < 20; i++) {
        granted += race_round(pool, 1) == SURPOOL_OK;
        timed_out += race_round(pool, 0) == SURPOOL_ERR_TIMEOUT;
    }
    /* Printed, not asserted: which thread the mutex lets in first is the
     * scheduler's choice; the invariants above hold either way. */
    print_message("release at deadline: granted after the deadline %d/20, timed out %d/20\n",
                  granted, timed_out);
    /* The connection is still there and lendable at once. */
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 0, &c, NULL), SURPOOL_OK);
    surpool_conn_release(c);
}

/* ------------------------------------------------------------------------- */
/* Connect failures                                                           */
/* ------------------------------------------------------------------------- */

static void test_connect_failures_during_burst(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.fail_connect_every, 3); /* every third connect fails */
    atomic_store(&f->fs.connect_latency_ms, 1);
    enum { MAXC = 20, CALLERS = 200 };
    run_burst(f, CALLERS, MAXC, 1000);
    surpool_stats st;
    surpool_pool_stats(f->pool, &st);
    assert_true(st.connect_failures > 0);
    /* A connector may still be finishing a connect the burst asked for. */
    for (int i = 0; i < 10000 && st.connecting != 0; i++) {
        sleep_us(1000);
        surpool_pool_stats(f->pool, &st);
    }
    assert_int_equal(st.connecting, 0);

    /* No slot leaked: the pool can still grow to its full size. */
    surpool_conn *held[MAXC];
    for (int i = 0; i < MAXC; i++)
        assert_int_equal(
            surpool_pool_acquire(f->pool, NO_LOST_WAKEUP_TIMEOUT_MS, &held[i], NULL),
            SURPOOL_OK);
    surpool_pool_stats(f->pool, &st);
    assert_int_equal(st.in_use, MAXC);
    assert_int_equal(st.total, MAXC);
    assert_int_equal((int)(st.created - st.destroyed), MAXC);
    for (int i = 0; i < MAXC; i++)
        surpool_conn_release(held[i]);
}

/* While every connect fails, a caller whose deadline passes learns why. */
static void test_timeout_carries_connect_error(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.fail_connects, 1000000);
    surpool_pool *pool = make_pool_ex(f, 2, 0, 0); /* no circuit breaker here */
    surpool_conn *c = NULL;
    surpool_error err;
    /* Long enough for failed connects to happen first, however slow the machine. */
    surpool_err rc = surpool_pool_acquire(pool, 2000, &c, &err);
    assert_int_equal(rc, SURPOOL_ERR_CONNECT);
    assert_int_equal(err.code, SURPOOL_ERR_CONNECT);
    assert_non_null(strstr(err.message, "connection refused"));
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_true(st.connect_failures >= 1);
    assert_int_equal(st.created, 0);

    /* The server comes back: the pool recovers by itself. */
    atomic_store(&f->fs.fail_connects, 0);
    assert_int_equal(surpool_pool_acquire(pool, NO_LOST_WAKEUP_TIMEOUT_MS, &c, &err),
                     SURPOOL_OK);
    surpool_conn_release(c);
}

/* ------------------------------------------------------------------------- */
/* Broken connections                                                         */
/* ------------------------------------------------------------------------- */

static void *acquire_and_report(void *arg)
{
    race *r = arg;
    surpool_conn *c = NULL;
    r->rc = surpool_pool_acquire(r->pool, r->timeout_ms, &c, NULL);
    if (r->rc == SURPOOL_OK) {
        /* must be a working connection */
        if (surpool_conn_query(c, "RETURN 1", NULL, NULL, NULL) != SURPOOL_OK)
            r->rc = SURPOOL_ERR_BROKEN;
        surpool_conn_release(c);
    }
    return NULL;
}

static void test_broken_release_replaced_for_waiter(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_pool(f, 1, 0);
    surpool_conn *held = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 1000, &held, NULL), SURPOOL_OK);
    race r = {pool, NO_LOST_WAKEUP_TIMEOUT_MS, SURPOOL_ERR_INVALID_ARG};
    pthread_t th;
    pthread_create(&th, NULL, acquire_and_report, &r);
    wait_for_waiters(pool, 1);
    fake_kill_all(pool->transport); /* the held connection dies */
    surpool_conn_release(held);
    join_bounded(th, "the waiter for a replacement");
    assert_int_equal(r.rc, SURPOOL_OK);
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.created, 2);
    assert_int_equal(st.destroyed, 1);
    assert_int_equal(st.broken, 1);
}

/* A discarded lease is closed on release; a session-dirty one is reset to the
 * configured state (or closed with close_dirty_leases). Never lent on as is. */
static void test_discard_and_dirty_leases(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_pool(f, 1, 0);
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 1000, &c, NULL), SURPOOL_OK);
    surpool_conn_discard(c);
    surpool_conn_release(c);
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.destroyed, 1);

    assert_int_equal(surpool_pool_acquire(pool, 1000, &c, NULL), SURPOOL_OK);
    assert_int_equal(surpool_conn_use(c, "elsewhere", NULL, NULL), SURPOOL_OK);
    int calls = atomic_load(&f->fs.calls);
    surpool_conn_release(c); /* dirty: reset, then set up again */
    assert_true(atomic_load(&f->fs.calls) > calls);
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.resets, 1);
    assert_int_equal(st.destroyed, 1);
    assert_int_equal(st.idle, 1);
    assert_int_equal(st.broken, 0);
}

static void test_close_dirty_leases_option(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = 1;
    cfg.close_dirty_leases = 1;
    assert_int_equal(
        surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &f->pool, NULL),
        SURPOOL_OK);
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(f->pool, 1000, &c, NULL), SURPOOL_OK);
    json_t *v = json_integer(1);
    assert_int_equal(surpool_conn_let(c, "x", v, NULL), SURPOOL_OK);
    json_decref(v);
    surpool_conn_release(c);
    surpool_stats st;
    surpool_pool_stats(f->pool, &st);
    assert_int_equal(st.resets, 0);
    assert_int_equal(st.destroyed, 1);
}

static void test_transport_failure_marks_broken(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.break_after_calls, 2);
    surpool_pool *pool = make_pool(f, 1, 0);
    surpool_conn *c = NULL;
    surpool_error err;
    assert_int_equal(surpool_pool_acquire(pool, 1000, &c, NULL), SURPOOL_OK);
    assert_int_equal(surpool_conn_query(c, "RETURN 1", NULL, NULL, &err), SURPOOL_OK);
    assert_int_equal(surpool_conn_query(c, "RETURN 2", NULL, NULL, &err), SURPOOL_OK);
    assert_int_equal(surpool_conn_query(c, "RETURN 3", NULL, NULL, &err),
                     SURPOOL_ERR_DISCONNECTED);
    assert_string_not_equal(surpool_conn_last_error(c), "");
    assert_int_equal(surpool_conn_query(c, "RETURN 4", NULL, NULL, &err), SURPOOL_ERR_BROKEN);
    surpool_conn_release(c);

    atomic_store(&f->fs.break_after_calls, 0);
    assert_int_equal(surpool_pool_acquire(pool, 1000, &c, NULL), SURPOOL_OK);
    assert_int_equal(surpool_conn_query(c, "RETURN 5", NULL, NULL, &err), SURPOOL_OK);
    surpool_conn_release(c);
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.created, 2);
    assert_int_equal(st.destroyed, 1);
}

/* An idle connection the transport reports dead is never handed out. */
static void test_dead_idle_never_handed_out(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_pool(f, 4, 0);
    surpool_conn *c[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(surpool_pool_acquire(pool, 1000, &c[i], NULL), SURPOOL_OK);
    for (int i = 0; i < 4; i++)
        surpool_conn_release(c[i]);
    fake_kill_all(pool->transport);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(surpool_pool_acquire(pool, NO_LOST_WAKEUP_TIMEOUT_MS, &c[i], NULL),
                         SURPOOL_OK);
        assert_int_equal(surpool_conn_query(c[i], "RETURN 1", NULL, NULL, NULL), SURPOOL_OK);
    }
    for (int i = 0; i < 4; i++)
        surpool_conn_release(c[i]);
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.destroyed, 4);
    assert_int_equal(st.created, 8);
}

/* ------------------------------------------------------------------------- */
/* Close, destroy, shedding                                                   */
/* ------------------------------------------------------------------------- */

typedef struct many {
    surpool_pool *pool;
    long timeout_ms;
    atomic_int codes[32];
} many;

static void *many_worker(void *arg)
{
    many *m = arg;
    surpool_conn *c = NULL;
    surpool_err rc = surpool_pool_acquire(m->pool, m->timeout_ms, &c, NULL);
    atomic_fetch_add(&m->codes[rc], 1);
    if (rc == SURPOOL_OK)
        surpool_conn_release(c);
    return NULL;
}

typedef struct destroyer {
    surpool_pool *pool;
    atomic_int finished;
} destroyer;

static void *destroy_worker(void *arg)
{
    destroyer *d = arg;
    surpool_pool_destroy(d->pool);
    atomic_store(&d->finished, 1);
    return NULL;
}

static void test_close_during_burst(void **state)
{
    fixture *f = *state;
    enum { MAXC = 5, WAITERS = 50 };
    surpool_pool *pool = make_pool(f, MAXC, 0);
    surpool_conn *held[MAXC];
    for (int i = 0; i < MAXC; i++)
        assert_int_equal(surpool_pool_acquire(pool, 1000, &held[i], NULL), SURPOOL_OK);

    many m;
    memset(&m, 0, sizeof(m));
    m.pool = pool;
    m.timeout_ms = 60000; /* a waiter not woken by close would sit here a minute */
    pthread_t th[WAITERS];
    for (int i = 0; i < WAITERS; i++)
        pthread_create(&th[i], NULL, many_worker, &m);
    wait_for_waiters(pool, WAITERS);
    surpool_pool_close(pool);
    for (int i = 0; i < WAITERS; i++)
        join_bounded(th[i], "a waiter woken by close");
    assert_int_equal(atomic_load(&m.codes[SURPOOL_ERR_CLOSED]), WAITERS);

    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 1000, &c, NULL), SURPOOL_ERR_CLOSED);
    /* Leases stay usable after close. */
    assert_int_equal(surpool_conn_query(held[0], "RETURN 1", NULL, NULL, NULL), SURPOOL_OK);

    /* destroy waits for the leases. */
    destroyer d = {pool, 0};
    pthread_t dt;
    pthread_create(&dt, NULL, destroy_worker, &d);
    sleep_ms(30);
    assert_int_equal(atomic_load(&d.finished), 0);
    for (int i = 0; i < MAXC; i++)
        surpool_conn_release(held[i]);
    join_bounded(dt, "destroy, after the leases came back");
    assert_int_equal(atomic_load(&d.finished), 1);
    f->pool = NULL; /* destroyed */
}

static void test_max_waiters_sheds_exact_overflow(void **state)
{
    fixture *f = *state;
    enum { MAXC = 2, MAXW = 10, CALLERS = 25 };
    surpool_pool *pool = make_pool(f, MAXC, MAXW);
    surpool_conn *held[MAXC];
    for (int i = 0; i < MAXC; i++)
        assert_int_equal(surpool_pool_acquire(pool, 1000, &held[i], NULL), SURPOOL_OK);
    many m;
    memset(&m, 0, sizeof(m));
    m.pool = pool;
    m.timeout_ms = NO_LOST_WAKEUP_TIMEOUT_MS;
    pthread_t th[CALLERS];
    for (int i = 0; i < CALLERS; i++)
        pthread_create(&th[i], NULL, many_worker, &m);
    /* Exactly MAXW queue; the rest are shed at once. */
    WAIT_UNTIL(atomic_load(&m.codes[SURPOOL_ERR_OVERLOADED]) >= CALLERS - MAXW,
               "the callers beyond max_waiters to be shed");
    wait_for_waiters(pool, MAXW);
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.shed, CALLERS - MAXW);
    assert_int_equal(st.waiters, MAXW);
    for (int i = 0; i < MAXC; i++)
        surpool_conn_release(held[i]);
    for (int i = 0; i < CALLERS; i++)
        join_bounded(th[i], "a queued or shed caller");
    assert_int_equal(atomic_load(&m.codes[SURPOOL_OK]), MAXW);
    assert_int_equal(atomic_load(&m.codes[SURPOOL_ERR_OVERLOADED]), CALLERS - MAXW);
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.peak_waiters, MAXW);
}

/* ------------------------------------------------------------------------- */
/* Calls on the fake transport                                                */
/* ------------------------------------------------------------------------- */

static void test_query_and_server_errors(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_pool(f, 2, 0);
    json_t *out = NULL;
    surpool_error err;
    assert_int_equal(surpool_query(pool, "RETURN 1", NULL, &out, &err), SURPOOL_OK);
    assert_true(json_is_array(out));
    assert_string_equal(json_string_value(json_object_get(json_array_get(out, 0), "result")),
                        "RETURN 1");
    assert_int_equal(surpool_query_check(out, &err), SURPOOL_OK);
    json_decref(out);

    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 1000, &c, NULL), SURPOOL_OK);
    out = NULL;
    assert_int_equal(surpool_conn_call(c, "fail", NULL, &out, &err), SURPOOL_ERR_SERVER);
    assert_null(out);
    assert_int_equal(err.server_code, -32000);
    assert_string_equal(err.kind, "Internal");
    assert_non_null(strstr(err.message, "deliberate failure"));
    assert_int_equal(surpool_conn_call(c, "authfail", NULL, NULL, &err), SURPOOL_ERR_AUTH);
    assert_int_equal(surpool_conn_call(c, "nosuch", NULL, NULL, &err), SURPOOL_ERR_SERVER);
    assert_int_equal(err.server_code, -32601);
    /* A server error does not break the lease. */
    assert_int_equal(surpool_conn_call(c, "ping", NULL, &out, &err), SURPOOL_OK);
    assert_true(json_is_null(out));
    json_decref(out);

    /* Bad input: nothing sent. */
    int calls = atomic_load(&f->fs.calls);
    assert_int_equal(surpool_conn_query(c, "", NULL, NULL, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_query(c, NULL, NULL, NULL, &err), SURPOOL_ERR_INVALID_ARG);
    json_t *notobj = json_array();
    assert_int_equal(surpool_conn_query(c, "RETURN $x", notobj, NULL, &err),
                     SURPOOL_ERR_INVALID_ARG);
    json_t *obj = json_object();
    assert_int_equal(surpool_conn_call(c, "query", obj, NULL, &err), SURPOOL_ERR_INVALID_ARG);
    json_decref(obj);
    json_decref(notobj);
    assert_int_equal(atomic_load(&f->fs.calls), calls);
    surpool_conn_release(c);
}

static void test_request_timeout_breaks_lease(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = 1;
    cfg.request_timeout_ms = 30;
    assert_int_equal(
        surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &f->pool, NULL),
        SURPOOL_OK);
    surpool_conn *c = NULL;
    surpool_error err;
    assert_int_equal(surpool_pool_acquire(f->pool, 1000, &c, NULL), SURPOOL_OK);
    assert_int_equal(surpool_conn_call(c, "noreply", NULL, NULL, &err),
                     SURPOOL_ERR_REQUEST_TIMEOUT);
    assert_int_equal(err.code, SURPOOL_ERR_REQUEST_TIMEOUT);
    surpool_conn_release(c);
    surpool_stats st;
    surpool_pool_stats(f->pool, &st);
    assert_int_equal(st.destroyed, 1);
}

/* ------------------------------------------------------------------------- */
/* Releasing a lease twice                                                    */
/* ------------------------------------------------------------------------- */

static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_log[4096];

static void capture_log(void *ud, surpool_log_level level, const char *msg)
{
    (void)ud;
    (void)level;
    pthread_mutex_lock(&g_log_mu);
    size_t n = strlen(g_log);
    snprintf(g_log + n, sizeof(g_log) - n, "%s\n", msg);
    pthread_mutex_unlock(&g_log_mu);
}

/* How many logged lines contain `needle`; clears the log. */
static int log_count_and_clear(const char *needle)
{
    pthread_mutex_lock(&g_log_mu);
    int n = 0;
    for (const char *at = g_log; needle[0] != '\0' && (at = strstr(at, needle)) != NULL; at++)
        n++;
    g_log[0] = '\0';
    pthread_mutex_unlock(&g_log_mu);
    return n;
}

static surpool_pool *make_logging_pool(fixture *f, int max_conns)
{
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = max_conns;
    cfg.shared_connections = 0;
    cfg.log_fn = capture_log;
    cfg.log_level = SURPOOL_LOG_WARN;
    surpool_error err;
    if (surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &f->pool, &err) !=
        SURPOOL_OK)
        fail_msg("create: %s", err.message);
    log_count_and_clear("");
    return f->pool;
}

/* A second release of the same lease is a detected no-op with a log line:
 * before, it put the connection on the idle list twice (idle 2, in_use -1)
 * and the next two callers shared one connection (a debug build aborted). */
static void test_double_release_is_a_logged_noop(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_logging_pool(f, 2);
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 1000, &c, NULL), SURPOOL_OK);
    surpool_conn_release(c);
    surpool_conn_release(c); /* the bug: released twice */
    assert_int_equal(log_count_and_clear("released twice"), 1);
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.idle, 1);
    assert_int_equal(st.in_use, 0);
    assert_int_equal(st.released, 1);

    /* Two callers get two different connections. */
    surpool_conn *a = NULL, *b = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 1000, &a, NULL), SURPOOL_OK);
    assert_int_equal(surpool_pool_acquire(pool, 1000, &b, NULL), SURPOOL_OK);
    assert_ptr_not_equal(surpool__lease_conn_of(a), surpool__lease_conn_of(b));
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.in_use, 2);
    assert_int_equal(st.idle, 0);
    surpool_conn_release(a);
    surpool_conn_release(b);

    /* The first release closed it (discarded): the second is refused by the
     * handle's generation, and logged through the pool because the closed
     * connection waits in the graveyard with its lease slot. */
    assert_int_equal(surpool_pool_acquire(pool, 1000, &c, NULL), SURPOOL_OK);
    surpool_conn_discard(c);
    surpool_conn_release(c);
    surpool_conn_release(c);
    assert_int_equal(log_count_and_clear("released twice"), 1);
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.destroyed, 1);
    assert_int_equal(st.in_use, 0);
    assert_int_equal(st.released, 4);
    assert_int_equal(st.idle + st.in_use, (int)(st.created - st.destroyed));
}

typedef struct dup_release {
    surpool_conn *conn;
    pthread_barrier_t go;
} dup_release;

static void *dup_release_worker(void *arg)
{
    dup_release *d = arg;
    pthread_barrier_wait(&d->go);
    surpool_conn_release(d->conn);
    return NULL;
}

/* Two threads release the same lease at once: exactly one release counts, the
 * other is logged; with a waiter queued, it gets the connection once. */
static void test_concurrent_double_release(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_logging_pool(f, 1);
    for (int i = 0; i < 50; i++) {
        dup_release d;
        assert_int_equal(surpool_pool_acquire(pool, 1000, &d.conn, NULL), SURPOOL_OK);
        pthread_barrier_init(&d.go, NULL, 2);
        pthread_t th[2];
        for (int k = 0; k < 2; k++)
            assert_int_equal(pthread_create(&th[k], NULL, dup_release_worker, &d), 0);
        for (int k = 0; k < 2; k++)
            join_bounded(th[k], "a thread releasing the lease");
        pthread_barrier_destroy(&d.go);
        assert_int_equal(log_count_and_clear("released twice"), 1);
        surpool_stats st;
        surpool_pool_stats(pool, &st);
        assert_int_equal(st.released, (uint64_t)(i + 1));
        assert_int_equal(st.idle, 1);
        assert_int_equal(st.in_use, 0);
    }
}

/* ------------------------------------------------------------------------- */
/* Stale lease handles (issue 9 item 7)                                       */
/* ------------------------------------------------------------------------- */

typedef struct relend {
    surpool_pool *pool;
    surpool_conn *got;
    surpool_err rc;
} relend;

static void *relend_waiter(void *arg)
{
    relend *r = arg;
    r->rc = surpool_pool_acquire(r->pool, NO_LOST_WAKEUP_TIMEOUT_MS, &r->got, NULL);
    return NULL;
}

static int pool_waiters(surpool_pool *p)
{
    surpool_stats st;
    surpool_pool_stats(p, &st);
    return st.waiters;
}

/* (a) A releases; the FIFO handoff lends the same connection to B, the
 * waiter, inside that release; A releases again with its old handle. Before
 * lease handles, that second release gave back B's lease (in_use 0, idle 1)
 * and the next caller shared B's connection. */
static void test_stale_release_after_relend(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_logging_pool(f, 1);
    surpool_conn *a = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 1000, &a, NULL), SURPOOL_OK);
    relend r = {pool, NULL, SURPOOL_ERR_CLOSED};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, relend_waiter, &r), 0);
    WAIT_UNTIL(pool_waiters(pool) == 1, "B to queue for the only connection");
    surpool_conn_release(a); /* hands the connection to B */
    join_bounded(th, "B's acquire");
    assert_int_equal(r.rc, SURPOOL_OK);
    assert_int_equal(log_count_and_clear("released twice"), 0);

    surpool_conn_release(a); /* stale: must not touch B's lease */
    assert_int_equal(log_count_and_clear("released twice"), 1);
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.in_use, 1);
    assert_int_equal(st.idle, 0);
    assert_int_equal(st.released, 1);
    assert_int_equal(st.handoffs, 2); /* A's fresh connection, then A's release to B */
    surpool_error err;
    assert_int_equal(surpool_conn_ping(r.got, &err), SURPOOL_OK); /* B still holds it */
    surpool_conn_release(r.got);
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.in_use, 0);
    assert_int_equal(st.idle, 1);
    assert_int_equal(st.destroyed, 0);
}

/* (b) Every entry point refuses a stale handle with INVALID_ARG (or a logged
 * no-op), and the connection's new borrower sees nothing of it. */
static void test_stale_calls_after_relend(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_logging_pool(f, 1);
    surpool_conn *a = NULL, *b = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 1000, &a, NULL), SURPOOL_OK);
    surpool_conn_release(a);
    assert_int_equal(surpool_pool_acquire(pool, 1000, &b, NULL), SURPOOL_OK);
    assert_ptr_not_equal(a, b); /* same connection, another lease */
    assert_ptr_equal(surpool__lease_conn_of(a), NULL);
    assert_non_null(surpool__lease_conn_of(b));

    surpool_error err;
    json_t *out = NULL;
    assert_int_equal(surpool_conn_query(a, "RETURN 1", NULL, &out, &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_null(out);
    assert_non_null(strstr(err.message, "already released"));
    assert_int_equal(surpool_conn_ping(a, NULL), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_use(a, "x", "y", &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_begin(a, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_set_timeout(a, 5), SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(surpool_conn_last_error(a), "already released"));
    surpool_conn_discard(a); /* stale: must not discard B's lease */
    assert_int_equal(log_count_and_clear("already given back"), 1);

    assert_string_equal(surpool_conn_last_error(b), "");
    assert_int_equal(surpool_conn_ping(b, &err), SURPOOL_OK);
    surpool_conn_release(b);
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.destroyed, 0); /* the stale discard did not reach it */
    assert_int_equal(st.idle, 1);
    assert_int_equal(st.in_use, 0);
    assert_int_equal(st.released, 2);
}

/* (c) Discard, release, then the stale handle again: its connection is closed
 * and the handle names nothing; a new lease is not affected. */
static void test_discard_then_stale_release(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_logging_pool(f, 1);
    surpool_conn *a = NULL, *b = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 1000, &a, NULL), SURPOOL_OK);
    surpool_conn_discard(a);
    surpool_conn_release(a);
    assert_int_equal(surpool_pool_acquire(pool, 1000, &b, NULL), SURPOOL_OK);
    surpool_conn_release(a);
    surpool_conn_discard(a);
    assert_int_equal(log_count_and_clear("already given back"), 2);
    assert_int_equal(surpool_conn_ping(a, NULL), SURPOOL_ERR_INVALID_ARG);
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.destroyed, 1);
    assert_int_equal(st.in_use, 1);
    assert_int_equal(surpool_conn_ping(b, NULL), SURPOOL_OK);
    surpool_conn_release(b);
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.destroyed, 1);
    assert_int_equal(st.idle, 1);
}

/* (d) Threads lease in a loop and, each time, also release and call with the
 * handle of their previous lease (by then lent to someone else or idle). The
 * books must balance, every stale use be refused, no connection be shared. */
#define STALE_THREADS 4
#define STALE_ROUNDS 400

typedef struct stale_run {
    surpool_pool *pool;
    pthread_barrier_t go;
    tracker tr;
    atomic_int acquired, stale_refused, bad;
} stale_run;

static void *stale_worker(void *arg)
{
    stale_run *s = arg;
    surpool_conn *prev = NULL;
    pthread_barrier_wait(&s->go);
    for (int i = 0; i < STALE_ROUNDS; i++) {
        surpool_conn *c = NULL;
        if (surpool_pool_acquire(s->pool, NO_LOST_WAKEUP_TIMEOUT_MS, &c, NULL) != SURPOOL_OK) {
            atomic_fetch_add(&s->bad, 1);
            continue;
        }
        atomic_fetch_add(&s->acquired, 1);
        track_acquire(&s->tr, c);
        if (surpool_conn_ping(c, NULL) != SURPOOL_OK)
            atomic_fetch_add(&s->bad, 1);
        if (prev != NULL) {
            surpool_conn_release(prev); /* stale */
            if (surpool_conn_ping(prev, NULL) == SURPOOL_ERR_INVALID_ARG)
                atomic_fetch_add(&s->stale_refused, 1);
        }
        track_release(&s->tr, c);
        surpool_conn_release(c);
        prev = c;
    }
    surpool_conn_release(prev); /* stale once more */
    return NULL;
}

static void test_concurrent_stale_releases(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_logging_pool(f, 2);
    stale_run s;
    memset(&s, 0, sizeof(s));
    s.pool = pool;
    pthread_mutex_init(&s.tr.mu, NULL);
    pthread_barrier_init(&s.go, NULL, STALE_THREADS);
    pthread_t th[STALE_THREADS];
    for (int i = 0; i < STALE_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, stale_worker, &s), 0);
    for (int i = 0; i < STALE_THREADS; i++)
        join_bounded(th[i], "a thread leasing with stale releases");
    pthread_barrier_destroy(&s.go);
    pthread_mutex_destroy(&s.tr.mu);
    log_count_and_clear("");
    assert_int_equal(atomic_load(&s.bad), 0);
    assert_int_equal(s.tr.double_lease, 0);
    assert_int_equal(atomic_load(&s.acquired), STALE_THREADS * STALE_ROUNDS);
    assert_int_equal(atomic_load(&s.stale_refused), STALE_THREADS * (STALE_ROUNDS - 1));
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.in_use, 0);
    assert_int_equal(st.idle + st.in_use, (int)(st.created - st.destroyed));
    assert_int_equal(st.released, (uint64_t)(STALE_THREADS * STALE_ROUNDS));
    assert_true(st.idle <= 2);
}

/* A release while another thread is inside a call on the same lease (which
 * the header forbids) is refused with a log line; the lease stays open and
 * the call completes; released afterwards, it is given back normally. The
 * query's reply waits for a gate the test opens, so the overlap is certain. */
static atomic_int g_gate_in, g_gate_open;

static json_t *gated_responder(void *ud, json_int_t id, const char *method, json_t *params)
{
    if (strcmp(method, "query") == 0) {
        atomic_store(&g_gate_in, 1);
        for (int i = 0; i < WAIT_BOUND_S * 5000 && !atomic_load(&g_gate_open); i++)
            sleep_us(200);
    }
    return fake_default_responder(ud, id, method, params);
}

typedef struct in_call {
    surpool_conn *conn;
    surpool_err rc;
} in_call;

static void *query_worker(void *arg)
{
    in_call *q = arg;
    json_t *out = NULL;
    q->rc = surpool_conn_query(q->conn, "RETURN 1", NULL, &out, NULL);
    json_decref(out);
    return NULL;
}

static void test_release_during_call_is_refused(void **state)
{
    fixture *f = *state;
    atomic_store(&g_gate_in, 0);
    atomic_store(&g_gate_open, 0);
    f->fs.responder = gated_responder;
    surpool_pool *pool = make_logging_pool(f, 1);
    in_call q = {NULL, SURPOOL_ERR_CLOSED};
    assert_int_equal(surpool_pool_acquire(pool, 1000, &q.conn, NULL), SURPOOL_OK);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, query_worker, &q), 0);
    WAIT_UNTIL(atomic_load(&g_gate_in), "the query to reach the server");
    surpool_conn_release(q.conn); /* refused: the lease is in a call */
    assert_int_equal(log_count_and_clear("another thread"), 1);
    surpool_error err;
    assert_int_equal(surpool_conn_ping(q.conn, &err), SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "another thread"));
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.in_use, 1);
    assert_int_equal(st.released, 0);
    atomic_store(&g_gate_open, 1);
    join_bounded(th, "the query");
    assert_int_equal(q.rc, SURPOOL_OK);
    surpool_conn_release(q.conn);
    assert_int_equal(log_count_and_clear("surpool_conn_release"), 0);
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.in_use, 0);
    assert_int_equal(st.idle, 1);
    assert_int_equal(st.released, 1);
}

/* (e) A handle whose pool is destroyed names nothing: calls are INVALID_ARG,
 * release and discard are no-ops (no pool to log to), never a use of freed
 * memory (ASan). */
static void test_handle_of_destroyed_pool(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_logging_pool(f, 1);
    surpool_conn *a = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 1000, &a, NULL), SURPOOL_OK);
    surpool_conn_release(a);
    surpool_pool_destroy(pool);
    f->pool = NULL;
    surpool_error err;
    assert_int_equal(surpool_conn_ping(a, &err), SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "already released"));
    assert_int_equal(surpool_conn_set_timeout(a, 1), SURPOOL_ERR_INVALID_ARG);
    surpool_conn_release(a);
    surpool_conn_discard(a);
    assert_non_null(strstr(surpool_conn_last_error(a), "already released"));
    assert_int_equal(log_count_and_clear("given back"), 0);
    /* A value that was never a handle is refused without being read. */
    int not_a_handle = 0;
    assert_int_equal(surpool_conn_ping((surpool_conn *)&not_a_handle, NULL),
                     SURPOOL_ERR_INVALID_ARG);
}

/* (f) Values that were never handles, given to every entry point: NULL, small
 * integers, 0xdeadbeef, all bits set, a pointer to a real object, a value
 * naming a slot of the table that no connection holds, and a forged handle
 * (the right slot, a generation that slot never lent). Each is refused
 * (INVALID_ARG, -1, or a no-op for release and discard), never dereferenced
 * (ASan), and the real lease is untouched. */
static void test_hostile_handle_values(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_logging_pool(f, 1);
    surpool_conn *real = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 1000, &real, NULL), SURPOOL_OK);
    uintptr_t rv = (uintptr_t)real;
    int local = 0;
    surpool_conn *bad[] = {
        NULL,
        (surpool_conn *)(uintptr_t)1,
        (surpool_conn *)(uintptr_t)0xdeadbeefu,
        (surpool_conn *)UINTPTR_MAX,
        (surpool_conn *)&local,
        (surpool_conn *)pool,
        surpool__lease_conn_of(real), /* the connection itself, cast */
        /* the last slot of the first chunk: allocated, never assigned here */
        (surpool_conn *)(uintptr_t)255u,
        /* the real handle's slot, generations it does not hold now */
        (surpool_conn *)(rv + ((uintptr_t)1 << (sizeof(uintptr_t) > 4 ? 32 : 16))),
        (surpool_conn *)(rv & (sizeof(uintptr_t) > 4 ? (uintptr_t)0xFFFFFFFFu : 0xFFFFu)),
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        surpool_conn *h = bad[i];
        surpool_error err;
        json_t *out = NULL;
        surpool_credentials cred;
        memset(&cred, 0, sizeof(cred));
        assert_int_equal(surpool_conn_call(h, "ping", NULL, &out, &err),
                         SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_query(h, "RETURN 1", NULL, &out, NULL),
                         SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_ping(h, &err), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_version(h, &out, &err), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_use(h, "a", "b", &err), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_signin(h, &cred, &out, &err), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_signup(h, "a", "b", "c", NULL, &out, &err),
                         SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_authenticate(h, "t", &err), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_invalidate(h, &err), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_let(h, "x", NULL, &err), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_unset(h, "x", &err), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_select(h, "t", &out, &err), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_create(h, "t", NULL, &out, &err),
                         SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_insert(h, "t", NULL, &out, &err),
                         SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_update(h, "t", NULL, &out, &err),
                         SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_upsert(h, "t", NULL, &out, &err),
                         SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_merge(h, "t", NULL, &out, &err), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_patch(h, "t", NULL, 0, &out, &err),
                         SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_delete(h, "t", &out, &err), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_relate(h, "a:1", "e", "b:1", NULL, &out, &err),
                         SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_run(h, "fn::x", NULL, NULL, &out, &err),
                         SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_info(h, &out, &err), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_begin(h, &err), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_commit(h, &err), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_cancel(h, &err), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_set_timeout(h, 5), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool_conn_endpoint(h), -1);
        assert_non_null(surpool_conn_last_error(h));
        surpool_conn_discard(h);
        surpool_conn_release(h);
        assert_null(out);
    }
    /* Nothing reached the real lease: it is open, clean, and not discarded. */
    assert_int_equal(log_count_and_clear("already given back"), 0);
    assert_string_equal(surpool_conn_last_error(real), "");
    assert_int_equal(surpool_conn_ping(real, NULL), SURPOOL_OK);
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.in_use, 1);
    assert_int_equal(st.released, 0);
    surpool_conn_release(real);
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.idle, 1);
    assert_int_equal(st.destroyed, 0);
}

/* (f2) The lease table grows in chunks of 256 slots while connectors of
 * several pools assign slots and other threads lend, pin and end leases:
 * 3 pools x 200 connections held at once need more than two chunks. Every
 * handle names its own connection, and every one is stale once its pool is
 * gone (TSan: assignment races with lookups). */
#define GROW_POOLS 3
#define GROW_CONNS 200

typedef struct grow_arg {
    fake_settings fs; /* one per pool: the fake's settings are one transport's */
    surpool_pool *pool;
    surpool_conn *h[GROW_CONNS];
    atomic_int bad;
} grow_arg;

static void *grow_worker(void *arg)
{
    grow_arg *g = arg;
    for (int i = 0; i < GROW_CONNS; i++) {
        if (surpool_pool_acquire(g->pool, NO_LOST_WAKEUP_TIMEOUT_MS, &g->h[i], NULL) !=
                SURPOOL_OK ||
            surpool_conn_ping(g->h[i], NULL) != SURPOOL_OK)
            atomic_fetch_add(&g->bad, 1);
    }
    return NULL;
}

static void test_lease_table_grows(void **state)
{
    (void)state;
    static grow_arg g[GROW_POOLS];
    pthread_t th[GROW_POOLS];
    for (int k = 0; k < GROW_POOLS; k++) {
        memset(&g[k], 0, sizeof(g[k]));
        fake_settings_init(&g[k].fs);
        surpool_config cfg;
        surpool_config_init(&cfg);
        cfg.url = "ws://fake.invalid/rpc";
        cfg.max_connections = GROW_CONNS;
        cfg.shared_connections = 0;
        surpool_error err;
        if (surpool__pool_create_with(&cfg, &fake_transport_ops, &g[k].fs, &g[k].pool, &err) !=
            SURPOOL_OK)
            fail_msg("create: %s", err.message);
    }
    for (int k = 0; k < GROW_POOLS; k++)
        assert_int_equal(pthread_create(&th[k], NULL, grow_worker, &g[k]), 0);
    for (int k = 0; k < GROW_POOLS; k++)
        join_bounded(th[k], "a thread leasing 200 connections");
    for (int k = 0; k < GROW_POOLS; k++)
        assert_int_equal(atomic_load(&g[k].bad), 0);
    /* Every handle names a distinct connection of its own pool. */
    static surpool_conn *seen[GROW_POOLS * GROW_CONNS];
    int n = 0;
    for (int k = 0; k < GROW_POOLS; k++)
        for (int i = 0; i < GROW_CONNS; i++) {
            surpool_conn *c = surpool__lease_conn_of(g[k].h[i]);
            assert_non_null(c);
            assert_ptr_equal(c->pool, g[k].pool);
            for (int j = 0; j < n; j++)
                assert_ptr_not_equal(seen[j], c);
            seen[n++] = c;
        }
    for (int k = 0; k < GROW_POOLS; k++) {
        for (int i = 0; i < GROW_CONNS; i++)
            surpool_conn_release(g[k].h[i]);
        surpool_pool_destroy(g[k].pool);
    }
    for (int k = 0; k < GROW_POOLS; k++) {
        for (int i = 0; i < GROW_CONNS; i++)
            assert_int_equal(surpool_conn_ping(g[k].h[i], NULL), SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(atomic_load(&g[k].fs.open_now), 0);
    }
}

/* (g) The on_connect hook's lease ends when the hook returns, and so does
 * what the hook set on it. Before, its surpool_conn_set_timeout() stayed in
 * force for the first borrower, a transaction it began and left open carried
 * the first borrower's calls (and was cancelled at that borrower's release,
 * their writes with it), and its surpool_conn_discard() closed the connection
 * after the first borrower had it. Now: the timeout ends, the transaction is
 * cancelled, and a discard refuses the connection as a failed hook does. */
static atomic_int g_hook_mode, g_hook_calls, g_hook_rc, g_txn_cancels;
enum { HOOK_TIMEOUT = 1, HOOK_BEGIN = 2, HOOK_DISCARD_FIRST = 3, HOOK_RELEASE = 4 };

static json_t *txn_responder(void *ud, json_int_t id, const char *method, json_t *params)
{
    if (strcmp(method, "version") == 0)
        return json_pack("{s:I, s:s}", "id", id, "result", "surrealdb-3.0.2");
    if (strcmp(method, "begin") == 0)
        return json_pack("{s:I, s:s}", "id", id, "result",
                         "01a2245f-6402-74b1-97ef-0a6d1d24550a");
    if (strcmp(method, "cancel") == 0) {
        atomic_fetch_add(&g_txn_cancels, 1);
        return json_pack("{s:I, s:n}", "id", id, "result");
    }
    return fake_default_responder(ud, id, method, params);
}

static surpool_err hook_leaves_state(void *ud, surpool_conn *conn)
{
    (void)ud;
    int n = atomic_fetch_add(&g_hook_calls, 1);
    surpool_err rc = SURPOOL_OK;
    switch (atomic_load(&g_hook_mode)) {
    case HOOK_TIMEOUT: rc = surpool_conn_set_timeout(conn, 1); break;
    case HOOK_BEGIN: rc = surpool_conn_begin(conn, NULL); break;
    case HOOK_DISCARD_FIRST:
        if (n == 0)
            surpool_conn_discard(conn);
        break;
    case HOOK_RELEASE: /* forbidden: refused, and the hook's lease goes on */
        surpool_conn_release(conn);
        rc = surpool_conn_ping(conn, NULL);
        break;
    }
    atomic_store(&g_hook_rc, rc);
    return SURPOOL_OK;
}

static surpool_pool *make_hook_pool(fixture *f, int mode)
{
    atomic_store(&g_hook_mode, mode);
    atomic_store(&g_hook_calls, 0);
    atomic_store(&g_hook_rc, -1);
    atomic_store(&g_txn_cancels, 0);
    f->fs.responder = txn_responder;
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = 1;
    cfg.shared_connections = 0;
    cfg.on_connect = hook_leaves_state;
    cfg.reconnect_backoff_min_ms = 1;
    cfg.reconnect_backoff_max_ms = 4;
    cfg.log_fn = capture_log;
    cfg.log_level = SURPOOL_LOG_WARN;
    surpool_error err;
    if (surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &f->pool, &err) !=
        SURPOOL_OK)
        fail_msg("create: %s", err.message);
    log_count_and_clear("");
    return f->pool;
}

static void test_hook_timeout_ends_with_hook(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_hook_pool(f, HOOK_TIMEOUT);
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 5000, &c, NULL), SURPOOL_OK);
    assert_int_equal(atomic_load(&g_hook_rc), SURPOOL_OK);
    assert_int_equal(surpool__lease_conn_of(c)->own_timeout, 0);
    /* Reset on release (a dirty lease): the hook runs again; same rule. */
    assert_int_equal(surpool_conn_use(c, "other", "db", NULL), SURPOOL_OK);
    surpool_conn_release(c);
    assert_int_equal(atomic_load(&g_hook_calls), 2);
    assert_int_equal(surpool_pool_acquire(pool, 5000, &c, NULL), SURPOOL_OK);
    assert_int_equal(surpool__lease_conn_of(c)->own_timeout, 0);
    surpool_conn_release(c);
}

static void test_hook_transaction_cancelled(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_hook_pool(f, HOOK_BEGIN);
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 5000, &c, NULL), SURPOOL_OK);
    assert_int_equal(atomic_load(&g_hook_rc), SURPOOL_OK);
    assert_string_equal(surpool__lease_conn_of(c)->txn, ""); /* not the borrower's */
    assert_int_equal(atomic_load(&g_txn_cancels), 1);
    assert_int_equal(log_count_and_clear("transaction"), 1);
    surpool_conn_release(c);
    assert_int_equal(atomic_load(&g_txn_cancels), 1); /* nothing left to cancel */
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.idle, 1);
    assert_int_equal(st.destroyed, 0);
}

static void test_hook_discard_refuses_connection(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_hook_pool(f, HOOK_DISCARD_FIRST);
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 5000, &c, NULL), SURPOOL_OK);
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.connect_failures, 1); /* the first, discarded by its hook */
    assert_int_equal(atomic_load(&g_hook_calls), 2);
    surpool_conn_release(c);
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.destroyed, 0); /* the one lent is kept */
    assert_int_equal(st.idle, 1);
}

/* (h) A hook that releases its own handle (the header forbids it) is refused
 * with a log line, and its lease goes on until the hook returns. Before, the
 * release ended the lease and handed the connection, still being set up, to
 * the release path (which happened to ignore it); a release racing the hook's
 * return, from a thread the hook started, could have given back the lease of
 * the connection's next borrower. */
static void test_hook_release_refused(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_hook_pool(f, HOOK_RELEASE);
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(pool, 5000, &c, NULL), SURPOOL_OK);
    assert_int_equal(atomic_load(&g_hook_calls), 1);
    assert_int_equal(atomic_load(&g_hook_rc), SURPOOL_OK); /* pinged after the release */
    assert_int_equal(log_count_and_clear("on_connect hook's own lease"), 1);
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.in_use, 1);
    assert_int_equal(st.released, 0);
    surpool_conn_release(c);
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.idle, 1);
    assert_int_equal(st.released, 1);
}

/* ------------------------------------------------------------------------- */
/* Secrets in freed memory                                                    */
/* ------------------------------------------------------------------------- */

/* An allocator for surpool that looks for the secret in every block it frees
 * (a header keeps the size). */
#define SCAN_HDR 16
static const char *g_scan_secret;
static atomic_int g_scan_hits;

static void *scan_malloc(size_t n)
{
    unsigned char *h = malloc(n + SCAN_HDR);
    if (h == NULL)
        return NULL;
    memcpy(h, &n, sizeof(n));
    return h + SCAN_HDR;
}

static void scan_free(void *p)
{
    if (p == NULL)
        return;
    unsigned char *h = (unsigned char *)p - SCAN_HDR;
    size_t n;
    memcpy(&n, h, sizeof(n));
    if (memmem(p, n, g_scan_secret, strlen(g_scan_secret)) != NULL)
        atomic_fetch_add(&g_scan_hits, 1);
    free(h);
}

static void *scan_realloc(void *p, size_t n)
{
    void *q = scan_malloc(n);
    if (q == NULL || p == NULL)
        return q;
    size_t old;
    memcpy(&old, (unsigned char *)p - SCAN_HDR, sizeof(old));
    memcpy(q, p, old < n ? old : n);
    scan_free(p); /* a moved block left behind counts as a copy */
    return q;
}

/* The pool's copy of the URL can hold the password (ws://user:pass@host): it
 * is wiped before it is freed, like every other copy of a secret that goes
 * through surpool's allocator (signing in included). */
static void test_url_password_wiped(void **state)
{
    fixture *f = *state;
    g_scan_secret = "Pw-4-wipe-test";
    atomic_store(&g_scan_hits, 0);
    assert_int_equal(surpool_set_allocator(scan_malloc, scan_realloc, scan_free), SURPOOL_OK);
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://root:Pw-4-wipe-test@fake.invalid/rpc";
    cfg.max_connections = 1;
    cfg.shared_connections = 0;
    surpool_pool *pool = NULL;
    surpool_error err;
    surpool_err rc = surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &pool, &err);
    if (rc == SURPOOL_OK) {
        /* One connection: it signs in with the URL's password, and is closed. */
        surpool_conn *c = NULL;
        rc = surpool_pool_acquire(pool, 5000, &c, &err);
        if (rc == SURPOOL_OK) {
            surpool_conn_discard(c);
            surpool_conn_release(c);
        }
        surpool_pool_destroy(pool);
    }
    surpool_set_allocator(NULL, NULL, NULL);
    assert_int_equal(rc, SURPOOL_OK);
    assert_int_equal(atomic_load(&g_scan_hits), 0);
}

/* ------------------------------------------------------------------------- */
/* Configuration                                                              */
/* ------------------------------------------------------------------------- */

static void test_config_validation(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    surpool_error err;
    surpool_pool *p = NULL;

    surpool_config_init(&cfg);
    assert_int_equal(surpool__pool_create_with(NULL, &fake_transport_ops, &f->fs, &p, &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &p, &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "url"));

#define EXPECT_BAD(stmt, needle)                                                               \
    do {                                                                                       \
        surpool_config_init(&cfg);                                                             \
        cfg.url = "ws://fake.invalid/rpc";                                                     \
        stmt;                                                                                  \
        p = NULL;                                                                              \
        assert_int_equal(                                                                      \
            surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &p, &err),            \
            SURPOOL_ERR_INVALID_ARG);                                                          \
        assert_null(p);                                                                        \
        assert_non_null(strstr(err.message, needle));                                          \
    } while (0)
    EXPECT_BAD(cfg.max_connections = 0, "max_connections");
    EXPECT_BAD(cfg.min_connections = 11, "min_connections");
    EXPECT_BAD(cfg.min_connections = -1, "min_connections");
    EXPECT_BAD(cfg.acquire_timeout_ms = -5, "acquire_timeout_ms");
    EXPECT_BAD(cfg.connect_timeout_ms = 0, "connect_timeout_ms");
    EXPECT_BAD(cfg.max_waiters = -1, "max_waiters");
    EXPECT_BAD(cfg.db = "d", "ns");
    EXPECT_BAD(cfg.user = "root", "pass");
    EXPECT_BAD(cfg.ns = "", "non-empty");
    EXPECT_BAD((cfg.user = "u", cfg.pass = "p", cfg.token = "t"), "exclusive");
    EXPECT_BAD(cfg.url = "http://x/rpc", "");
    EXPECT_BAD(cfg.url = "", "url");
    EXPECT_BAD(cfg.struct_size = 3, "surpool_config_init");
    EXPECT_BAD(cfg.auth_level = SURPOOL_AUTH_DATABASE, "auth_level");
    EXPECT_BAD(cfg.tls_cert_file = "x.pem", "tls_key_file");
#undef EXPECT_BAD
    assert_int_equal(atomic_load(&f->fs.opens), 0);
}

/* Every millisecond setting: above SURPOOL__MS_MAX (365 days) it is refused
 * with a message naming it; at the bound it is accepted. Before, LONG_MAX was
 * accepted and then overflowed (ms -> ns, deadlines, backoff doubling): the
 * maintainer spun, keepalive pinged constantly, every lease was a "leak". */
static void test_ms_settings_bounded(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *name;
        size_t off;
    } fields[] = {
#define MS_FIELD(x) {#x, offsetof(surpool_config, x)}
        MS_FIELD(acquire_timeout_ms),       MS_FIELD(connect_timeout_ms),
        MS_FIELD(request_timeout_ms),       MS_FIELD(reconnect_backoff_min_ms),
        MS_FIELD(reconnect_backoff_max_ms), MS_FIELD(idle_timeout_ms),
        MS_FIELD(max_lifetime_ms),          MS_FIELD(validation_idle_ms),
        MS_FIELD(validation_timeout_ms),    MS_FIELD(keepalive_interval_ms),
        MS_FIELD(maintenance_interval_ms),  MS_FIELD(leak_threshold_ms),
#undef MS_FIELD
    };
    const long values[] = {LONG_MAX, (long)SURPOOL__MS_MAX + 1, (long)SURPOOL__MS_MAX};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        for (size_t v = 0; v < sizeof(values) / sizeof(values[0]); v++) {
            surpool_config cfg;
            surpool_config_init(&cfg);
            cfg.url = "ws://fake.invalid/rpc";
            cfg.shared_connections = 0;
            *(long *)((char *)&cfg + fields[i].off) = values[v];
            if (strcmp(fields[i].name, "reconnect_backoff_min_ms") == 0)
                cfg.reconnect_backoff_max_ms = values[v]; /* min <= max */
            surpool_pool *p = NULL;
            surpool_error err;
            surpool_err rc =
                surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &p, &err);
            int refuse = values[v] > SURPOOL__MS_MAX;
            if (refuse && rc != SURPOOL_ERR_INVALID_ARG)
                fail_msg("config.%s = %ld was accepted (%s)", fields[i].name, values[v],
                         surpool_strerror(rc));
            if (refuse && strstr(err.message, fields[i].name) == NULL)
                fail_msg("config.%s = %ld: message does not name it: %s", fields[i].name,
                         values[v], err.message);
            if (!refuse && rc != SURPOOL_OK)
                fail_msg("config.%s = %ld (the bound) was refused: %s", fields[i].name,
                         values[v], err.message);
            surpool_pool_destroy(p);
        }
    }
    assert_int_equal(atomic_load(&f->fs.open_now), 0);
}

static void test_min_connections_warm_up(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.min_connections = 6;
    cfg.max_connections = 8;
    assert_int_equal(
        surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &f->pool, NULL),
        SURPOOL_OK);
    surpool_stats st;
    surpool_pool_stats(f->pool, &st);
    assert_true(st.idle >= 6);
    assert_int_equal(st.waiters, 0);

    /* A server that refuses at start makes create fail with the reason. */
    fixture g;
    memset(&g, 0, sizeof(g));
    fake_settings_init(&g.fs);
    atomic_store(&g.fs.fail_connects, 1000);
    surpool_error err;
    surpool_pool *p = NULL;
    assert_int_equal(surpool__pool_create_with(&cfg, &fake_transport_ops, &g.fs, &p, &err),
                     SURPOOL_ERR_CONNECT);
    assert_null(p);
    assert_non_null(strstr(err.message, "refused"));
    assert_int_equal(atomic_load(&g.fs.open_now), 0);
}

static void test_strerror_and_version(void **state)
{
    (void)state;
    for (int code = 0; code <= SURPOOL_ERR_BROKEN; code++) {
        const char *s = surpool_strerror((surpool_err)code);
        assert_non_null(s);
        assert_true(strlen(s) > 0);
        assert_string_not_equal(s, "unknown error");
    }
    assert_string_equal(surpool_strerror((surpool_err)9999), "unknown error");
    assert_string_equal(surpool_version(), SURPOOL_VERSION_STRING);
    surpool_pool_destroy(NULL);
    surpool_conn_release(NULL);
    surpool_pool_close(NULL);
    assert_int_equal(surpool_pool_stats(NULL, NULL), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_pool_acquire(NULL, 0, NULL, NULL), SURPOOL_ERR_INVALID_ARG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_burst_100_on_50, setup, teardown),
        cmocka_unit_test_setup_teardown(test_burst_200_on_50, setup, teardown),
        cmocka_unit_test_setup_teardown(test_burst_1000_on_10, setup, teardown),
        cmocka_unit_test_setup_teardown(test_burst_slow_connects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grants_in_arrival_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_not_before_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_at_deadline_loses_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_connect_failures_during_burst, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_carries_connect_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broken_release_replaced_for_waiter, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_discard_and_dirty_leases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_dirty_leases_option, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transport_failure_marks_broken, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_idle_never_handed_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_during_burst, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_waiters_sheds_exact_overflow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_query_and_server_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_timeout_breaks_lease, setup, teardown),
        cmocka_unit_test_setup_teardown(test_double_release_is_a_logged_noop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_double_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_release_after_relend, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_calls_after_relend, setup, teardown),
        cmocka_unit_test_setup_teardown(test_discard_then_stale_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_stale_releases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handle_of_destroyed_pool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_during_call_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_handle_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_table_grows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hook_timeout_ends_with_hook, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hook_transaction_cancelled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hook_discard_refuses_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hook_release_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_url_password_wiped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_validation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ms_settings_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_min_connections_warm_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_strerror_and_version, setup, teardown),
    };
    return cmocka_run_group_tests_name("pool", tests, NULL, NULL);
}
