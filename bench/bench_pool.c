/*
 * bench_pool: the pool's own overhead, with no I/O at all.
 *
 * surpool runs on the fake transport (tests/fake_transport.c): connections open
 * instantly and the loop is acquire + release only, so what is measured is the
 * pool core (mutex, idle list, FIFO waiters, direct handoff, bookkeeping).
 *
 * Baselines, measured in the same process:
 *  - "naive": the textbook pool written below — one mutex, one condition
 *    variable, a stack of idle connections; release pushes and
 *    pthread_cond_signal()s one waiter; a timed-out wait gives up without
 *    looking at the stack again.
 *  - "libzdb-sqlite": libzdb's ConnectionPool over SQLite :memory: (when libzdb
 *    was found at configure time), uncontended only (1 thread).
 *
 * Measurements (one JSON line each):
 *  - bench=pool: acquire+release throughput for threads x conns; ns_per_op is
 *    wall time per acquire+release (for 1 thread: the cost of one pair); the
 *    handoff latency p50/p99 is the time from the start of a release to the
 *    return of the acquire that received that connection, counted only for
 *    acquires that began before that release (so they were waiting).
 *  - bench=pool_burst: a burst of threads with a short acquire timeout; how
 *    many acquires time out, and (naive) how many gave up while a connection
 *    sat idle on the stack — the lost wake-up.
 *
 * Usage: bench_pool [--duration-ms 200] [--quick]
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_common.h"
#include "fake_transport.h"
#include "lease.h"
#include "pool.h"
#include "surpool.h"

#ifdef SURPOOL_BENCH_HAVE_ZDB
#include <zdb.h>
#endif

#define MAX_CONNS 64

/* ------------------------------------------------------------------------- */
/* Baseline A: the naive pool                                                 */
/* ------------------------------------------------------------------------- */

typedef struct naive_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void *stack[MAX_CONNS];
    int top;
    atomic_long timeouts;
    atomic_long lost; /* timed out while a connection sat on the stack */
} naive_pool;

static void naive_init(naive_pool *p, int nconns, void **conns)
{
    pthread_mutex_init(&p->mu, NULL);
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cv, &a);
    pthread_condattr_destroy(&a);
    for (int i = 0; i < nconns; i++)
        p->stack[i] = conns[i];
    p->top = nconns;
    atomic_init(&p->timeouts, 0);
    atomic_init(&p->lost, 0);
}

static void naive_destroy(naive_pool *p)
{
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
}

/* 0 on success, 1 on timeout. timeout_ms < 0 waits forever. */
static int naive_acquire(naive_pool *p, long timeout_ms, void **out)
{
    struct timespec ts;
    if (timeout_ms >= 0) {
        int64_t d = bc_now_ns() + (int64_t)timeout_ms * 1000000;
        ts.tv_sec = (time_t)(d / 1000000000);
        ts.tv_nsec = (long)(d % 1000000000);
    }
    pthread_mutex_lock(&p->mu);
    while (p->top == 0) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&p->cv, &p->mu);
        } else if (pthread_cond_timedwait(&p->cv, &p->mu, &ts) == ETIMEDOUT) {
            if (p->top > 0)
                atomic_fetch_add(&p->lost, 1);
            atomic_fetch_add(&p->timeouts, 1);
            pthread_mutex_unlock(&p->mu);
            return 1;
        }
    }
    *out = p->stack[--p->top];
    pthread_mutex_unlock(&p->mu);
    return 0;
}

static void naive_release(naive_pool *p, void *c)
{
    pthread_mutex_lock(&p->mu);
    p->stack[p->top++] = c;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* ------------------------------------------------------------------------- */
/* A pool under test                                                          */
/* ------------------------------------------------------------------------- */

enum { IMPL_SURPOOL = 0, IMPL_NAIVE = 1 };
static const char *const impl_names[] = {"surpool", "naive"};

typedef struct bpool {
    int impl;
    int nconns;
    surpool_pool *sp;
    fake_settings fs;
    naive_pool np;
    void *conns[MAX_CONNS]; /* identities, for the index lookup */
    _Atomic int64_t rel_ts[MAX_CONNS];
    bc_gate gate;
    atomic_int stop;
} bpool;

static int bp_open(bpool *b, int impl, int nconns)
{
    memset(b, 0, sizeof(*b));
    b->impl = impl;
    b->nconns = nconns;
    for (int i = 0; i < MAX_CONNS; i++)
        atomic_init(&b->rel_ts[i], 0);
    atomic_init(&b->stop, 0);
    bc_gate_init(&b->gate);
    if (impl == IMPL_NAIVE) {
        for (int i = 0; i < nconns; i++)
            b->conns[i] = (void *)(intptr_t)(i + 1);
        naive_init(&b->np, nconns, b->conns);
        return 0;
    }
    fake_settings_init(&b->fs);
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://127.0.0.1:9/rpc"; /* never dialled: the fake transport */
    cfg.min_connections = nconns;
    cfg.max_connections = nconns;
    cfg.shared_connections = 0; /* the lane is not under test here */
    surpool_error err;
    surpool_err rc = surpool__pool_create_with(&cfg, &fake_transport_ops, &b->fs, &b->sp, &err);
    if (rc != SURPOOL_OK) {
        bc_log("bench_pool: pool create failed: %s", err.message);
        return -1;
    }
    /* Learn the connections' identities. */
    surpool_conn *held[MAX_CONNS];
    for (int i = 0; i < nconns; i++) {
        if (surpool_pool_acquire(b->sp, 5000, &held[i], &err) != SURPOOL_OK) {
            bc_log("bench_pool: warm-up acquire failed: %s", err.message);
            return -1;
        }
        b->conns[i] = surpool__lease_conn_of(held[i]); /* a handle names one lease only */
    }
    for (int i = 0; i < nconns; i++)
        surpool_conn_release(held[i]);
    return 0;
}

static void bp_close(bpool *b)
{
    if (b->impl == IMPL_NAIVE)
        naive_destroy(&b->np);
    else
        surpool_pool_destroy(b->sp);
    bc_gate_destroy(&b->gate);
}

/* 0 ok, 1 timeout, -1 other failure. */
static inline int bp_acquire(bpool *b, long timeout_ms, void **out)
{
    if (b->impl == IMPL_NAIVE)
        return naive_acquire(&b->np, timeout_ms, out);
    surpool_conn *c = NULL;
    surpool_err rc = surpool_pool_acquire(b->sp, timeout_ms, &c, NULL);
    if (rc == SURPOOL_OK) {
        *out = c;
        return 0;
    }
    return rc == SURPOOL_ERR_TIMEOUT ? 1 : -1;
}

static inline void bp_release(bpool *b, void *c)
{
    if (b->impl == IMPL_NAIVE)
        naive_release(&b->np, c);
    else
        surpool_conn_release(c);
}

static inline int bp_index(const bpool *b, const void *c)
{
    if (b->impl != IMPL_NAIVE) /* a lease handle, held: the connection it names */
        c = surpool__lease_conn_of(c);
    for (int i = 0; i < b->nconns; i++)
        if (b->conns[i] == c)
            return i;
    return -1;
}

/* ------------------------------------------------------------------------- */
/* Throughput and handoff latency                                             */
/* ------------------------------------------------------------------------- */

typedef struct worker {
    bpool *b;
    pthread_t th;
    uint64_t ops;
    int failures;
    bc_samples lat;
    /* burst */
    int iterations;
    long timeout_ms;
    int64_t hold_ns;
    int timeouts;
} worker;

static void *tp_worker(void *arg)
{
    worker *w = arg;
    bpool *b = w->b;
    uint64_t ops = 0;
    bc_gate_wait(&b->gate);
    while (!atomic_load_explicit(&b->stop, memory_order_relaxed)) {
        for (int i = 0; i < 64; i++) {
            void *c;
            if (bp_acquire(b, -1, &c) != 0) {
                w->failures++;
                continue;
            }
            bp_release(b, c);
            ops++;
        }
    }
    w->ops = ops;
    return NULL;
}

static void *lat_worker(void *arg)
{
    worker *w = arg;
    bpool *b = w->b;
    uint64_t ops = 0;
    bc_gate_wait(&b->gate);
    while (!atomic_load_explicit(&b->stop, memory_order_relaxed)) {
        void *c;
        int64_t t0 = bc_now_ns();
        if (bp_acquire(b, -1, &c) != 0) {
            w->failures++;
            continue;
        }
        int64_t t1 = bc_now_ns();
        int idx = bp_index(b, c);
        if (idx >= 0) {
            int64_t rel = atomic_load_explicit(&b->rel_ts[idx], memory_order_relaxed);
            if (rel > t0)
                bc_samples_add(&w->lat, t1 - rel);
            atomic_store_explicit(&b->rel_ts[idx], bc_now_ns(), memory_order_relaxed);
        }
        bp_release(b, c);
        ops++;
    }
    w->ops = ops;
    return NULL;
}

/* Run `fn` on `threads` workers for duration_ms; returns ops/s. */
static double run_phase(bpool *b, int threads, void *(*fn)(void *), int64_t duration_ms,
                        worker *ws, bc_samples *merged)
{
    atomic_store(&b->stop, 0);
    bc_gate_init(&b->gate);
    for (int i = 0; i < threads; i++) {
        memset(&ws[i], 0, sizeof(ws[i]));
        ws[i].b = b;
        bc_samples_init(&ws[i].lat, merged != NULL ? 20000 : 0);
        bc_thread_start(&ws[i].th, fn, &ws[i]);
    }
    bc_gate_wait_for(&b->gate, threads);
    int64_t t0 = bc_now_ns();
    bc_gate_open(&b->gate);
    bc_sleep_ns(duration_ms * 1000000);
    atomic_store(&b->stop, 1);
    int64_t t1 = bc_now_ns();
    uint64_t ops = 0;
    int failures = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(ws[i].th, NULL);
        ops += ws[i].ops;
        failures += ws[i].failures;
        if (merged != NULL)
            bc_samples_merge(merged, &ws[i].lat);
        bc_samples_free(&ws[i].lat);
    }
    bc_gate_destroy(&b->gate);
    if (failures > 0)
        bc_log("bench_pool: %d acquires failed", failures);
    return (double)ops / ((double)(t1 - t0) / 1e9);
}

static void bench_throughput(int impl, int threads, int nconns, int64_t duration_ms)
{
    bpool b;
    if (bp_open(&b, impl, nconns) != 0)
        exit(1);
    worker *ws = calloc((size_t)threads, sizeof(worker));
    /* Phase 1: throughput, no timestamps in the loop. */
    double ops_per_s = run_phase(&b, threads, tp_worker, duration_ms, ws, NULL);
    /* Phase 2: handoff latency (only when callers outnumber connections). */
    bc_samples lat;
    bc_samples_init(&lat, 200000);
    if (threads > nconns)
        run_phase(&b, threads, lat_worker, duration_ms, ws, &lat);
    size_t nsamples = lat.seen;
    int64_t p50 = bc_percentile(&lat, 0.50), p99 = bc_percentile(&lat, 0.99);

    bc_json_begin("pool");
    bc_json_str("impl", impl_names[impl]);
    bc_json_int("threads", threads);
    bc_json_int("conns", nconns);
    bc_json_num("ops_per_s", ops_per_s);
    bc_json_num("ns_per_op", 1e9 / ops_per_s);
    if (nsamples > 0) {
        bc_json_int("p50_ns", p50);
        bc_json_int("p99_ns", p99);
    } else {
        bc_json_null("p50_ns");
        bc_json_null("p99_ns");
    }
    bc_json_int("handoff_samples", (long long)nsamples);
    bc_json_end();
    bc_samples_free(&lat);
    free(ws);
    bp_close(&b);
}

/* ------------------------------------------------------------------------- */
/* Burst with a short timeout: timeouts and lost wake-ups                     */
/* ------------------------------------------------------------------------- */

static void *burst_worker(void *arg)
{
    worker *w = arg;
    bpool *b = w->b;
    bc_gate_wait(&b->gate);
    for (int i = 0; i < w->iterations; i++) {
        void *c;
        int rc = bp_acquire(b, w->timeout_ms, &c);
        if (rc == 1) {
            w->timeouts++;
            continue;
        }
        if (rc != 0) {
            w->failures++;
            continue;
        }
        bc_sleep_ns(w->hold_ns); /* "use" the connection */
        bp_release(b, c);
        w->ops++;
    }
    return NULL;
}

static void bench_burst(int impl, int threads, int nconns, int iterations, long timeout_ms,
                        int64_t hold_us)
{
    bpool b;
    if (bp_open(&b, impl, nconns) != 0)
        exit(1);
    worker *ws = calloc((size_t)threads, sizeof(worker));
    bc_gate_init(&b.gate);
    for (int i = 0; i < threads; i++) {
        ws[i].b = &b;
        ws[i].iterations = iterations;
        ws[i].timeout_ms = timeout_ms;
        ws[i].hold_ns = hold_us * 1000;
        bc_thread_start(&ws[i].th, burst_worker, &ws[i]);
    }
    bc_gate_wait_for(&b.gate, threads);
    int64_t t0 = bc_now_ns();
    bc_gate_open(&b.gate);
    long timeouts = 0, ok = 0, failures = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(ws[i].th, NULL);
        timeouts += ws[i].timeouts;
        ok += (long)ws[i].ops;
        failures += ws[i].failures;
    }
    int64_t t1 = bc_now_ns();
    bc_json_begin("pool_burst");
    bc_json_str("impl", impl_names[impl]);
    bc_json_int("threads", threads);
    bc_json_int("conns", nconns);
    bc_json_int("timeout_ms", timeout_ms);
    bc_json_int("hold_us", hold_us);
    bc_json_int("attempts", (long long)threads * iterations);
    bc_json_int("ok", ok);
    bc_json_int("timeouts", timeouts);
    bc_json_int("other_failures", failures);
    if (impl == IMPL_NAIVE)
        bc_json_int("lost_wakeups", atomic_load(&b.np.lost));
    else
        bc_json_null("lost_wakeups");
    bc_json_num("wall_ms", (double)(t1 - t0) / 1e6);
    bc_json_end();
    free(ws);
    bp_close(&b);
}

/* ------------------------------------------------------------------------- */
/* Baseline B: libzdb ConnectionPool over SQLite :memory:                     */
/* ------------------------------------------------------------------------- */

#ifdef SURPOOL_BENCH_HAVE_ZDB
static void bench_zdb(int nconns, int64_t duration_ms)
{
    URL_T url = URL_new("sqlite:///:memory:");
    ConnectionPool_T pool = ConnectionPool_new(url);
    ConnectionPool_setInitialConnections(pool, nconns);
    ConnectionPool_setMaxConnections(pool, nconns);
    volatile int started = 0;
    TRY
    {
        ConnectionPool_start(pool);
        started = 1;
    }
    CATCH(SQLException)
    {
        bc_log("bench_pool: libzdb could not start: %s", Exception_frame.message);
    }
    END_TRY;
    if (!started) {
        ConnectionPool_free(&pool);
        URL_free(&url);
        return;
    }
    uint64_t ops = 0;
    int64_t t0 = bc_now_ns(), deadline = t0 + duration_ms * 1000000, t1;
    for (;;) {
        for (int i = 0; i < 256; i++) {
            Connection_T c = ConnectionPool_getConnection(pool);
            if (c != NULL)
                Connection_close(c);
            ops++;
        }
        t1 = bc_now_ns();
        if (t1 >= deadline)
            break;
    }
    double ops_per_s = (double)ops / ((double)(t1 - t0) / 1e9);
    bc_json_begin("pool");
    bc_json_str("impl", "libzdb-sqlite");
    bc_json_int("threads", 1);
    bc_json_int("conns", nconns);
    bc_json_num("ops_per_s", ops_per_s);
    bc_json_num("ns_per_op", 1e9 / ops_per_s);
    bc_json_null("p50_ns");
    bc_json_null("p99_ns");
    bc_json_int("handoff_samples", 0);
    bc_json_end();
    ConnectionPool_stop(pool);
    ConnectionPool_free(&pool);
    URL_free(&url);
}
#endif

int main(int argc, char **argv)
{
    int64_t duration_ms = bc_arg_long(argc, argv, "--duration-ms", 200);
    int quick = bc_flag(argc, argv, "--quick");
    static const int thread_counts[] = {1, 2, 8, 64};
    static const int conn_counts[] = {1, 4, 32};

#ifndef SURPOOL_BENCH_HAVE_ZDB
    bc_log("bench_pool: built without libzdb (pkg-config zdb not found): "
           "the libzdb-sqlite baseline is skipped");
#endif
    for (size_t ci = 0; ci < sizeof(conn_counts) / sizeof(conn_counts[0]); ci++) {
        for (size_t ti = 0; ti < sizeof(thread_counts) / sizeof(thread_counts[0]); ti++) {
            if (quick && ti % 2 == 1)
                continue;
            for (int impl = 0; impl < 2; impl++) {
                bc_log("bench_pool: %s threads=%d conns=%d", impl_names[impl],
                       thread_counts[ti], conn_counts[ci]);
                bench_throughput(impl, thread_counts[ti], conn_counts[ci], duration_ms);
            }
        }
#ifdef SURPOOL_BENCH_HAVE_ZDB
        bc_log("bench_pool: libzdb-sqlite threads=1 conns=%d", conn_counts[ci]);
        bench_zdb(conn_counts[ci], duration_ms);
#endif
    }
    /* A burst with a short timeout: many callers, few connections. */
    long burst_timeout = bc_arg_long(argc, argv, "--burst-timeout-ms", 20);
    for (int impl = 0; impl < 2; impl++) {
        bc_log("bench_pool: burst %s", impl_names[impl]);
        bench_burst(impl, 64, 4, 30, burst_timeout, 100);
        bench_burst(impl, 256, 8, 10, burst_timeout, 100);
    }
    return 0;
}
