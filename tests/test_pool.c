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

static void track_acquire(tracker *t, surpool_conn *c)
{
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < t->nheld; i++)
        if (t->held[i] == c)
            t->double_lease++;
    t->held[t->nheld++] = c;
    if (t->nheld > t->peak)
        t->peak = t->nheld;
    pthread_mutex_unlock(&t->mu);
}

static void track_release(tracker *t, surpool_conn *c)
{
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
        pthread_join(th[i], NULL);

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

static void wait_for_waiters(surpool_pool *pool, int n)
{
    for (;;) {
        surpool_stats st;
        surpool_pool_stats(pool, &st);
        if (st.waiters >= n)
            return;
        sleep_us(200);
    }
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
        pthread_join(th[i], NULL);

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

/* Release right around the waiter's deadline, many times: whatever wins, the
 * connection is never lost and never given to two callers. */
static void test_release_at_deadline_loses_nothing(void **state)
{
    fixture *f = *state;
    surpool_pool *pool = make_pool(f, 1, 0);
    int got = 0, timed_out = 0;
    for (int i = 0; i < 150; i++) {
        surpool_conn *held = NULL;
        assert_int_equal(surpool_pool_acquire(pool, 1000, &held, NULL), SURPOOL_OK);
        race r = {pool, 5, SURPOOL_OK};
        pthread_t th;
        pthread_create(&th, NULL, race_waiter, &r);
        sleep_us(4000 + (i % 20) * 100); /* 4.0 .. 5.9 ms: straddles the deadline */
        surpool_conn_release(held);
        pthread_join(th, NULL);
        assert_true(r.rc == SURPOOL_OK || r.rc == SURPOOL_ERR_TIMEOUT);
        got += r.rc == SURPOOL_OK;
        timed_out += r.rc == SURPOOL_ERR_TIMEOUT;

        surpool_stats st;
        surpool_pool_stats(pool, &st);
        assert_int_equal((int)(st.created - st.destroyed), st.idle + st.in_use);
        assert_int_equal(st.idle, 1); /* the one connection is back, idle */
        assert_int_equal(st.in_use, 0);
        assert_int_equal(st.created, 1);
    }
    assert_int_equal(got + timed_out, 150);
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
    pthread_join(th, NULL);
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
        pthread_join(th[i], NULL);
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
    pthread_join(dt, NULL);
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
    while (atomic_load(&m.codes[SURPOOL_ERR_OVERLOADED]) < CALLERS - MAXW)
        sleep_us(200);
    wait_for_waiters(pool, MAXW);
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    assert_int_equal(st.shed, CALLERS - MAXW);
    assert_int_equal(st.waiters, MAXW);
    for (int i = 0; i < MAXC; i++)
        surpool_conn_release(held[i]);
    for (int i = 0; i < CALLERS; i++)
        pthread_join(th[i], NULL);
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
        cmocka_unit_test_setup_teardown(test_config_validation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_min_connections_warm_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_strerror_and_version, setup, teardown),
    };
    return cmocka_run_group_tests_name("pool", tests, NULL, NULL);
}
