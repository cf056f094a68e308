/*
 * bench_scale: what N open connections cost (memory) and whether throughput
 * holds up with them (against the null server, which answers at once).
 *
 * One process per N (the script runs it for 1, 100, 1000) so the RSS delta is
 * not blurred by an earlier pool's freed memory:
 *  1. RSS before surpool_pool_create, then a pool with min = max = N opened and
 *     settled: rss_per_conn = (RSS after - RSS before) / N (the pool's fixed
 *     cost included: the libwebsockets context, the threads, the fd table).
 *  2. lease: 64 threads doing acquire / surpool_conn_query / release while all
 *     N connections stay open (most of them idle in the poll set).
 *  3. lane: surpool_query_async() keeping 512 in flight on the shared lane
 *     (default 2 sockets) with the same N connections open.
 *
 * Usage: bench_scale --url URL --conns N [--warmup-ms 200] [--duration-ms 800]
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "bench_surpool.h"
#include "surpool.h"

#define SQL "RETURN 1"

static surpool_pool *g_pool;
static atomic_int g_phase; /* 0 warm, 1 measure, 2 stop */
static atomic_ullong g_ops, g_errors;
static bc_samples g_lat;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static int g_outstanding;

static void record(int64_t lat, int ok)
{
    if (!ok)
        atomic_fetch_add(&g_errors, 1);
    if (atomic_load_explicit(&g_phase, memory_order_relaxed) != 1)
        return;
    atomic_fetch_add_explicit(&g_ops, 1, memory_order_relaxed);
    pthread_mutex_lock(&g_mu);
    bc_samples_add(&g_lat, lat);
    pthread_mutex_unlock(&g_mu);
}

static void *lease_main(void *arg)
{
    (void)arg;
    while (atomic_load_explicit(&g_phase, memory_order_relaxed) != 2) {
        int64_t t0 = bc_now_ns();
        surpool_conn *c = NULL;
        int ok = 0;
        if (surpool_pool_acquire(g_pool, -1, &c, NULL) == SURPOOL_OK) {
            json_t *out = NULL;
            ok = surpool_conn_query(c, SQL, NULL, &out, NULL) == SURPOOL_OK;
            json_decref(out);
            surpool_conn_release(c);
        }
        record(bc_now_ns() - t0, ok);
    }
    return NULL;
}

typedef struct slot {
    int64_t t0;
} slot;

#if SURPOOL_BENCH_HAVE_LANE
static void lane_cb(void *ud, surpool_err code, json_t *result, const surpool_error *err);

static void lane_issue(slot *s)
{
    s->t0 = bc_now_ns();
    if (surpool_query_async(g_pool, SQL, NULL, lane_cb, s) != SURPOOL_OK) {
        atomic_fetch_add(&g_errors, 1);
        pthread_mutex_lock(&g_mu);
        if (--g_outstanding == 0)
            pthread_cond_signal(&g_cv);
        pthread_mutex_unlock(&g_mu);
    }
}

static void lane_cb(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    slot *s = ud;
    (void)result;
    (void)err;
    record(bc_now_ns() - s->t0, code == SURPOOL_OK);
    if (atomic_load_explicit(&g_phase, memory_order_relaxed) != 2) {
        lane_issue(s);
        return;
    }
    pthread_mutex_lock(&g_mu);
    if (--g_outstanding == 0)
        pthread_cond_signal(&g_cv);
    pthread_mutex_unlock(&g_mu);
}
#endif

static void reset(void)
{
    atomic_store(&g_phase, 0);
    atomic_store(&g_ops, 0);
    atomic_store(&g_errors, 0);
    bc_samples_free(&g_lat);
    bc_samples_init(&g_lat, 200000);
}

static void measure(int64_t warm_ms, int64_t dur_ms, double *ops_per_s, double *cpu_us)
{
    bc_sleep_ns(warm_ms * 1000000);
    double c0 = bc_cpu_seconds();
    int64_t t0 = bc_now_ns();
    atomic_store(&g_phase, 1);
    bc_sleep_ns(dur_ms * 1000000);
    atomic_store(&g_phase, 2);
    int64_t t1 = bc_now_ns();
    double c1 = bc_cpu_seconds();
    unsigned long long ops = atomic_load(&g_ops);
    *ops_per_s = (double)ops / ((double)(t1 - t0) / 1e9);
    *cpu_us = ops > 0 ? (c1 - c0) * 1e6 / (double)ops : -1;
}

static void print(const char *impl, int n, int threads, double ops, double cpu, long rss_delta)
{
    bc_json_begin("scale");
    bc_json_str("impl", impl);
    bc_json_int("conns", n);
    bc_json_int("concurrency", threads);
    bc_json_num("ops_per_s", ops);
    bc_json_int("p50_ns", bc_percentile(&g_lat, 0.50));
    bc_json_int("p99_ns", bc_percentile(&g_lat, 0.99));
    bc_json_num("cpu_us_per_req", cpu);
    bc_json_int("rss_delta_bytes", rss_delta);
    bc_json_num("rss_per_conn_bytes", (double)rss_delta / n);
    bc_json_int("errors", (long long)atomic_load(&g_errors));
    bc_json_end();
}

int main(int argc, char **argv)
{
    bench_target tgt;
    bench_target_from_args(&tgt, argc, argv);
    int n = (int)bc_arg_long(argc, argv, "--conns", 100);
    int64_t warm_ms = bc_arg_long(argc, argv, "--warmup-ms", 200);
    int64_t dur_ms = bc_arg_long(argc, argv, "--duration-ms", 800);
    const int threads = 64, inflight = 512;

    long rss0 = bc_rss_bytes();
    surpool_config cfg;
    bench_config(&cfg, &tgt);
    cfg.min_connections = n;
    cfg.max_connections = n + 2; /* room for the lane's sockets */
    cfg.idle_timeout_ms = 0;
    int64_t t0 = bc_now_ns();
    surpool_error err;
    if (surpool_pool_create(&cfg, &g_pool, &err) != SURPOOL_OK) {
        bc_log("bench_scale: pool create (%d connections) failed: %s", n, err.message);
        return 1;
    }
    int64_t t1 = bc_now_ns();
    bc_sleep_ns(200 * 1000000);
    long rss1 = bc_rss_bytes();
    long delta = rss1 - rss0;
    bc_log("bench_scale: %d connections open in %.0f ms, RSS +%ld KiB", n,
           (double)(t1 - t0) / 1e6, delta / 1024);
    bc_json_begin("scale_open");
    bc_json_int("conns", n);
    bc_json_num("open_ms", (double)(t1 - t0) / 1e6);
    bc_json_int("rss_before_bytes", rss0);
    bc_json_int("rss_after_bytes", rss1);
    bc_json_int("rss_delta_bytes", delta);
    bc_json_num("rss_per_conn_bytes", (double)delta / n);
    bc_json_end();

    double ops, cpu;
    reset();
    pthread_t th[64];
    for (int i = 0; i < threads; i++)
        bc_thread_start(&th[i], lease_main, NULL);
    measure(warm_ms, dur_ms, &ops, &cpu);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    print("lease", n, threads, ops, cpu, delta);

#if SURPOOL_BENCH_HAVE_LANE
    reset();
    slot *slots = calloc(inflight, sizeof(*slots));
    g_outstanding = inflight;
    for (int i = 0; i < inflight; i++)
        lane_issue(&slots[i]);
    measure(warm_ms, dur_ms, &ops, &cpu);
    pthread_mutex_lock(&g_mu);
    while (g_outstanding > 0)
        pthread_cond_wait(&g_cv, &g_mu);
    pthread_mutex_unlock(&g_mu);
    free(slots);
    print("lane", n, inflight, ops, cpu, delta);
#else
    (void)inflight;
    bc_log("bench_scale: built without the shared lane (src/lane.c): lane skipped");
#endif
    surpool_pool_destroy(g_pool);
    bc_samples_free(&g_lat);
    return 0;
}
