/*
 * bench_throughput: queries/s, latency p50/p99 and client CPU per request at a
 * given concurrency, against one server (run it once per server).
 *
 * impls:
 *  - lease:      `concurrency` threads, each acquire / surpool_conn_query /
 *                release, on a warm pool of min(concurrency, 32) connections
 *                (shared_connections = 0).
 *  - lane_sync:  `concurrency` threads calling surpool_query() (shared lane,
 *                default 2 sockets x 256 in flight). Run for concurrency <= 64.
 *  - lane_async: surpool_query_async() keeping `concurrency` requests in flight
 *                (the completion callback issues the next one).
 *  - bare:       the transport alone (bench_bare.c) keeping `concurrency`
 *                requests in flight over 2 sockets, like the lane's default.
 *
 * Every request is `RETURN 1` (the null server answers "ok" to anything).
 * Latency is submit-to-completion of one request (for lease: acquire to
 * release). cpu_us_per_req = getrusage(RUSAGE_SELF) user+sys over the measured
 * window / requests completed in it: all of this process's threads, the
 * transport's service thread included.
 *
 * Usage: bench_throughput --url URL [--user U --pass P --ns N --db D]
 *        --server real|null [--conc 1,8,64,512] [--impls lease,lane_sync,lane_async,bare]
 *        [--warmup-ms 200] [--duration-ms 800]
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_bare.h"
#include "bench_common.h"
#include "bench_surpool.h"
#include "surpool.h"

#define SQL "RETURN 1"
#define LAT_CAP (1u << 21)

enum { PH_WARM = 0, PH_MEASURE = 1, PH_STOP = 2 };

typedef struct run {
    atomic_int phase;
    atomic_ullong ops;    /* completed in the measured window */
    atomic_ullong errors; /* any phase */
    int64_t *lat;
    atomic_size_t nlat;
    /* async completion tracking */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int outstanding;
    /* targets */
    surpool_pool *pool;
    bare *bare;
    json_t *params; /* ["RETURN 1"] for bare */
} run;

static run R;

static void run_reset(void)
{
    atomic_store(&R.phase, PH_WARM);
    atomic_store(&R.ops, 0);
    atomic_store(&R.errors, 0);
    atomic_store(&R.nlat, 0);
    R.outstanding = 0;
}

static inline void record(int64_t lat_ns, int ok)
{
    if (!ok)
        atomic_fetch_add_explicit(&R.errors, 1, memory_order_relaxed);
    if (atomic_load_explicit(&R.phase, memory_order_relaxed) != PH_MEASURE)
        return;
    atomic_fetch_add_explicit(&R.ops, 1, memory_order_relaxed);
    size_t i = atomic_fetch_add_explicit(&R.nlat, 1, memory_order_relaxed);
    if (i < LAT_CAP)
        R.lat[i] = lat_ns;
}

typedef struct measurement {
    double ops_per_s, cpu_us_per_req;
    int64_t p50, p99;
    unsigned long long requests, errors;
} measurement;

/* Warm up, measure, stop. The workers see the phase. */
static void measure(int64_t warm_ms, int64_t dur_ms, measurement *res)
{
    bc_sleep_ns(warm_ms * 1000000);
    double cpu0 = bc_cpu_seconds();
    int64_t t0 = bc_now_ns();
    atomic_store(&R.phase, PH_MEASURE);
    bc_sleep_ns(dur_ms * 1000000);
    atomic_store(&R.phase, PH_STOP);
    int64_t t1 = bc_now_ns();
    double cpu1 = bc_cpu_seconds();
    unsigned long long ops = atomic_load(&R.ops);
    res->requests = ops;
    res->ops_per_s = (double)ops / ((double)(t1 - t0) / 1e9);
    res->cpu_us_per_req = ops > 0 ? (cpu1 - cpu0) * 1e6 / (double)ops : -1;
}

static void finish_result(measurement *res)
{
    size_t n = atomic_load(&R.nlat);
    if (n > LAT_CAP)
        n = LAT_CAP;
    bc_samples s = {.v = R.lat, .n = n, .seen = n, .cap = LAT_CAP};
    res->p50 = bc_percentile(&s, 0.50);
    res->p99 = bc_percentile(&s, 0.99);
    res->errors = atomic_load(&R.errors);
}

static void print_result(const char *server, const char *impl, int conc, int conns,
                         const measurement *res)
{
    bc_json_begin("throughput");
    bc_json_str("server", server);
    bc_json_str("impl", impl);
    bc_json_int("concurrency", conc);
    bc_json_int("conns", conns);
    bc_json_num("ops_per_s", res->ops_per_s);
    if (res->p50 >= 0) {
        bc_json_int("p50_ns", res->p50);
        bc_json_int("p99_ns", res->p99);
    } else {
        bc_json_null("p50_ns");
        bc_json_null("p99_ns");
    }
    bc_json_num("cpu_us_per_req", res->cpu_us_per_req);
    bc_json_int("requests", (long long)res->requests);
    bc_json_int("errors", (long long)res->errors);
    bc_json_end();
}

/* ---- threads: lease and lane_sync ---- */

static void *lease_main(void *arg)
{
    (void)arg;
    while (atomic_load_explicit(&R.phase, memory_order_relaxed) != PH_STOP) {
        int64_t t0 = bc_now_ns();
        surpool_conn *c = NULL;
        surpool_error err;
        int ok = 0;
        if (surpool_pool_acquire(R.pool, -1, &c, &err) == SURPOOL_OK) {
            json_t *out = NULL;
            ok = surpool_conn_query(c, SQL, NULL, &out, &err) == SURPOOL_OK;
            json_decref(out);
            surpool_conn_release(c);
        }
        record(bc_now_ns() - t0, ok);
    }
    return NULL;
}

static void *lane_sync_main(void *arg)
{
    (void)arg;
    while (atomic_load_explicit(&R.phase, memory_order_relaxed) != PH_STOP) {
        int64_t t0 = bc_now_ns();
        json_t *out = NULL;
        surpool_error err;
        int ok = surpool_query(R.pool, SQL, NULL, &out, &err) == SURPOOL_OK;
        json_decref(out);
        record(bc_now_ns() - t0, ok);
    }
    return NULL;
}

static void run_threads(void *(*fn)(void *), int n, int64_t warm_ms, int64_t dur_ms,
                        measurement *res)
{
    pthread_t *th = calloc((size_t)n, sizeof(*th));
    for (int i = 0; i < n; i++)
        if (bc_thread_start(&th[i], fn, NULL) != 0) {
            bc_log("bench_throughput: cannot start thread %d", i);
            exit(1);
        }
    measure(warm_ms, dur_ms, res);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    free(th);
    finish_result(res);
}

/* ---- async: lane_async and bare ---- */

typedef struct slot {
    int64_t t0;
    int idx;
} slot;

static void slot_retire(void)
{
    pthread_mutex_lock(&R.mu);
    if (--R.outstanding == 0)
        pthread_cond_signal(&R.cv);
    pthread_mutex_unlock(&R.mu);
}

#if SURPOOL_BENCH_HAVE_LANE
static void lane_cb(void *ud, surpool_err code, json_t *result, const surpool_error *err);

static void lane_issue(slot *s)
{
    s->t0 = bc_now_ns();
    if (surpool_query_async(R.pool, SQL, NULL, lane_cb, s) != SURPOOL_OK) {
        atomic_fetch_add(&R.errors, 1);
        slot_retire();
    }
}

static void lane_cb(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    slot *s = ud;
    (void)result;
    (void)err;
    record(bc_now_ns() - s->t0, code == SURPOOL_OK);
    if (atomic_load_explicit(&R.phase, memory_order_relaxed) != PH_STOP)
        lane_issue(s);
    else
        slot_retire();
}
#endif

static void bare_done_cb(void *ud, int ok);

static void bare_issue(slot *s)
{
    s->t0 = bc_now_ns();
    if (bare_submit(R.bare, s->idx % bare_nconns(R.bare), "query", R.params, bare_done_cb, s) !=
        0) {
        atomic_fetch_add(&R.errors, 1);
        slot_retire();
    }
}

static void bare_done_cb(void *ud, int ok)
{
    slot *s = ud;
    record(bc_now_ns() - s->t0, ok);
    if (atomic_load_explicit(&R.phase, memory_order_relaxed) != PH_STOP)
        bare_issue(s);
    else
        slot_retire();
}

static void run_async(void (*issue)(slot *), int n, int64_t warm_ms, int64_t dur_ms,
                      measurement *res)
{
    slot *slots = calloc((size_t)n, sizeof(*slots));
    pthread_mutex_lock(&R.mu);
    R.outstanding = n;
    pthread_mutex_unlock(&R.mu);
    for (int i = 0; i < n; i++) {
        slots[i].idx = i;
        issue(&slots[i]);
    }
    measure(warm_ms, dur_ms, res);
    pthread_mutex_lock(&R.mu);
    while (R.outstanding > 0)
        pthread_cond_wait(&R.cv, &R.mu);
    pthread_mutex_unlock(&R.mu);
    free(slots);
    finish_result(res);
}

static surpool_pool *make_pool(const bench_target *tgt, int min, int max, int shared)
{
    surpool_config cfg;
    bench_config(&cfg, tgt);
    cfg.min_connections = min;
    cfg.max_connections = max;
    cfg.shared_connections = shared;
    surpool_pool *pool;
    surpool_error err;
    if (surpool_pool_create(&cfg, &pool, &err) != SURPOOL_OK) {
        bc_log("bench_throughput: pool create failed: %s", err.message);
        exit(1);
    }
    return pool;
}

int main(int argc, char **argv)
{
    bench_target tgt;
    bench_target_from_args(&tgt, argc, argv);
    const char *server = bc_arg(argc, argv, "--server", "real");
    const char *impls = bc_arg(argc, argv, "--impls", "lease,lane_sync,lane_async,bare");
    int conc[8];
    int nc = bench_int_list(bc_arg(argc, argv, "--conc", "1,8,64,512"), conc, 8);
    int64_t warm_ms = bc_arg_long(argc, argv, "--warmup-ms", 200);
    int64_t dur_ms = bc_arg_long(argc, argv, "--duration-ms", 800);

    R.lat = malloc(LAT_CAP * sizeof(int64_t));
    pthread_mutex_init(&R.mu, NULL);
    pthread_cond_init(&R.cv, NULL);
    R.params = json_pack("[s]", SQL);
    measurement res;

    if (strstr(impls, "lease") != NULL) {
        for (int i = 0; i < nc; i++) {
            int conns = conc[i] < 32 ? conc[i] : 32;
            bc_log("bench_throughput: %s lease c=%d conns=%d", server, conc[i], conns);
            R.pool = make_pool(&tgt, conns, conns, 0);
            run_reset();
            run_threads(lease_main, conc[i], warm_ms, dur_ms, &res);
            surpool_pool_destroy(R.pool);
            print_result(server, "lease", conc[i], conns, &res);
        }
    }
#if SURPOOL_BENCH_HAVE_LANE
    if (strstr(impls, "lane_sync") != NULL || strstr(impls, "lane_async") != NULL) {
        surpool_config probe;
        surpool_config_init(&probe);
        int lane_conns = probe.shared_connections;
        R.pool = make_pool(&tgt, lane_conns, 10, lane_conns);
        if (strstr(impls, "lane_sync") != NULL) {
            for (int i = 0; i < nc; i++) {
                if (conc[i] > 64)
                    continue;
                bc_log("bench_throughput: %s lane_sync c=%d", server, conc[i]);
                run_reset();
                run_threads(lane_sync_main, conc[i], warm_ms, dur_ms, &res);
                surpool_stats st;
                surpool_pool_stats(R.pool, &st);
                print_result(server, "lane_sync", conc[i], st.lane_connections, &res);
            }
        }
        if (strstr(impls, "lane_async") != NULL) {
            for (int i = 0; i < nc; i++) {
                bc_log("bench_throughput: %s lane_async c=%d", server, conc[i]);
                run_reset();
                run_async(lane_issue, conc[i], warm_ms, dur_ms, &res);
                surpool_stats st;
                surpool_pool_stats(R.pool, &st);
                print_result(server, "lane_async", conc[i], st.lane_connections, &res);
            }
        }
        surpool_pool_destroy(R.pool);
    }
#else
    bc_log("bench_throughput: built without the shared lane (src/lane.c): lane skipped");
#endif
    if (strstr(impls, "bare") != NULL) {
        R.bare = bare_open(tgt.url, 2, tgt.user, tgt.pass, tgt.ns, tgt.db);
        if (R.bare == NULL)
            return 1;
        for (int i = 0; i < nc; i++) {
            bc_log("bench_throughput: %s bare c=%d", server, conc[i]);
            run_reset();
            run_async(bare_issue, conc[i], warm_ms, dur_ms, &res);
            print_result(server, "bare", conc[i], bare_nconns(R.bare), &res);
        }
        bare_close(R.bare);
    }
    json_decref(R.params);
    free(R.lat);
    return 0;
}
