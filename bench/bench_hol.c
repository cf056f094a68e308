/*
 * bench_hol: head-of-line blocking between the leases of one pool. Does a big
 * reply on one connection delay the small requests on the others?
 *
 * Against bench/canned_server.mjs (prebuilt replies: `query "big N"` answers
 * with an N-byte reply of rows, anything else at once), so the figures are the
 * client's. One pool, every connection opened up front, no shared lane
 * (shared_connections = 0), no validation or keepalive pings:
 *
 *  - ping: one lease calls surpool_conn_ping() back to back for --duration-ms;
 *    p50/p90/p99/max of its round trips. Measured alone, then while --pullers
 *    (default 2) other leases of the same pool each loop
 *    surpool_conn_query("big N") (and json_decref the result), for each N in
 *    --big (default 1000000,5000000).
 *  - throughput: --tp-threads (default 8) threads, each acquire /
 *    surpool_conn_query("RETURN 1") / release, for --tp-duration-ms; queries/s
 *    and p50/p99, alone and with the same pulls.
 *
 * The pullers start before a phase and the phase starts only when each has
 * finished one pull (so the server's reply is built and the pulls are in their
 * steady state). Each big-load line also says how many pulls completed during
 * the phase and at what rate they arrived.
 *
 * Controls (--controls 1, the default), measured in the same run to tell the
 * pool's own head-of-line blocking from what the machine does to a round trip
 * when other threads keep its cores busy:
 *  - ping with load "separate": the same pullers, but on leases of a second
 *    pool (its own service thread) in this process, against the same server.
 *    What the ping would see if bulk readers had their own pool.
 *  - ping with load "burn": --pullers threads that only spin on the CPU (no
 *    I/O, no surpool call) while the lease pings. The scheduler's share.
 *
 * Targets (issue 12): ping p99 <= 10 ms while two leases pull 5 MB replies;
 * <= 2x the alone p99 while they pull 1 MB; throughput no lower than alone.
 * The report (bench/report.mjs) compares them; nothing here asserts.
 *
 * Usage: bench_hol --url URL [--big 1000000,5000000] [--pullers 2]
 *                  [--duration-ms 5000] [--tp-duration-ms 2000] [--tp-threads 8]
 *                  [--warmup-ms 300] [--controls 1]
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "bench_surpool.h"
#include "surpool.h"

#define MAX_PULLERS 16
#define MAX_TP_THREADS 64
#define MAX_SIZES 8

static surpool_pool *g_pool;

/* ---- pullers: leases looping on big replies ---- */

typedef struct puller {
    pthread_t th;
    surpool_conn *conn; /* NULL: a burner (spins, no I/O) */
    char sql[64];
    atomic_int stop;
    atomic_ullong pulls; /* completed successfully */
    atomic_ullong errors;
    surpool_err last_code;
    char last_msg[256];
} puller;

/* A control: keeps one core busy, touching nothing shared, until stopped. */
static void *burner_main(void *arg)
{
    puller *p = arg;
    volatile uint64_t x = 0;
    atomic_fetch_add(&p->pulls, 1); /* "ready", for pullers_start() */
    while (!atomic_load_explicit(&p->stop, memory_order_relaxed)) {
        for (int i = 0; i < 100000; i++)
            x += (uint64_t)i;
    }
    return NULL;
}

static void *puller_main(void *arg)
{
    puller *p = arg;
    while (!atomic_load(&p->stop)) {
        json_t *out = NULL;
        surpool_error err;
        surpool_err rc = surpool_conn_query(p->conn, p->sql, NULL, &out, &err);
        if (rc == SURPOOL_OK) {
            json_decref(out);
            atomic_fetch_add(&p->pulls, 1);
        } else {
            p->last_code = rc;
            snprintf(p->last_msg, sizeof(p->last_msg), "%s", err.message);
            atomic_fetch_add(&p->errors, 1);
            bc_sleep_ns(10 * 1000000); /* do not spin on a broken lease */
        }
    }
    return NULL;
}

static unsigned long long pulls_total(puller *ps, int n)
{
    unsigned long long s = 0;
    for (int i = 0; i < n; i++)
        s += atomic_load(&ps[i].pulls);
    return s;
}

static unsigned long long pull_errors_total(puller *ps, int n)
{
    unsigned long long s = 0;
    for (int i = 0; i < n; i++)
        s += atomic_load(&ps[i].errors);
    return s;
}

static void pullers_stop(puller *ps, int n);

/* Start n pullers on big replies of `bytes`, on leases of `from` (or n
 * burners when `from` is NULL); returns once each finished one pull. On
 * failure every puller started is stopped again. */
static int pullers_start(puller *ps, int n, long bytes, surpool_pool *from)
{
    int started = 0;
    for (int i = 0; i < n; i++) {
        puller *p = &ps[i];
        memset(p, 0, sizeof(*p));
        snprintf(p->sql, sizeof(p->sql), "big %ld", bytes);
        surpool_error err;
        if (from != NULL && surpool_pool_acquire(from, -1, &p->conn, &err) != SURPOOL_OK) {
            bc_log("bench_hol: puller acquire failed: %s", err.message);
            pullers_stop(ps, started);
            return -1;
        }
        bc_thread_start(&p->th, from != NULL ? puller_main : burner_main, p);
        started++;
    }
    int64_t deadline = bc_now_ns() + INT64_C(120000000000);
    for (int i = 0; i < n; i++) {
        while (atomic_load(&ps[i].pulls) == 0) {
            if (atomic_load(&ps[i].errors) > 0 || bc_now_ns() > deadline) {
                bc_log("bench_hol: puller %d: no pull of %ld bytes (%s: %s)", i, bytes,
                       surpool_strerror(ps[i].last_code), ps[i].last_msg);
                pullers_stop(ps, started);
                return -1;
            }
            bc_sleep_ns(1000000);
        }
    }
    return 0;
}

static void pullers_stop(puller *ps, int n)
{
    for (int i = 0; i < n; i++)
        atomic_store(&ps[i].stop, 1);
    for (int i = 0; i < n; i++) {
        pthread_join(ps[i].th, NULL);
        if (ps[i].conn != NULL)
            surpool_conn_release(ps[i].conn);
    }
}

/* ---- small-request throughput: threads on the lease path ---- */

static atomic_int g_phase; /* 0 warm, 1 measure, 2 stop */
static atomic_ullong g_ops, g_errors;
static bc_samples g_lat;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

static void *tp_main(void *arg)
{
    (void)arg;
    bc_samples local;
    bc_samples_init(&local, 50000);
    while (atomic_load_explicit(&g_phase, memory_order_relaxed) != 2) {
        int64_t t0 = bc_now_ns();
        surpool_conn *c = NULL;
        int ok = 0;
        if (surpool_pool_acquire(g_pool, -1, &c, NULL) == SURPOOL_OK) {
            json_t *out = NULL;
            ok = surpool_conn_query(c, "RETURN 1", NULL, &out, NULL) == SURPOOL_OK;
            json_decref(out);
            surpool_conn_release(c);
        }
        int64_t t1 = bc_now_ns();
        if (!ok)
            atomic_fetch_add(&g_errors, 1);
        if (atomic_load_explicit(&g_phase, memory_order_relaxed) == 1 && ok) {
            atomic_fetch_add_explicit(&g_ops, 1, memory_order_relaxed);
            bc_samples_add(&local, t1 - t0);
        }
    }
    pthread_mutex_lock(&g_mu);
    bc_samples_merge(&g_lat, &local);
    pthread_mutex_unlock(&g_mu);
    bc_samples_free(&local);
    return NULL;
}

/* ---- output ---- */

typedef struct load {
    const char *name; /* "alone", "big", or a control: "separate", "burn" */
    long bytes;       /* 0 when alone or burning */
    int pullers;
} load;

static void print_common(const char *kind, const load *ld, int64_t span_ns,
                         unsigned long long pulls, unsigned long long pull_errors)
{
    bc_json_begin("hol");
    bc_json_str("kind", kind);
    bc_json_str("load", ld->name);
    bc_json_int("big_bytes", ld->bytes);
    bc_json_int("pullers", ld->pullers);
    bc_json_num("duration_ms", (double)span_ns / 1e6);
    bc_json_int("pulls", (long long)pulls);
    bc_json_num("pulls_per_s", (double)pulls / ((double)span_ns / 1e9));
    bc_json_num("pull_mb_per_s",
                (double)pulls * (double)ld->bytes / 1e6 / ((double)span_ns / 1e9));
    bc_json_int("pull_errors", (long long)pull_errors);
}

/* ---- phases ---- */

static void phase_ping(surpool_conn *pinger, const load *ld, puller *ps, int64_t warm_ms,
                       int64_t dur_ms)
{
    bc_samples s;
    bc_samples_init(&s, 1000000);
    long long errors = 0;
    int64_t end = bc_now_ns() + warm_ms * 1000000;
    while (bc_now_ns() < end)
        if (surpool_conn_ping(pinger, NULL) != SURPOOL_OK)
            errors++;
    unsigned long long p0 = pulls_total(ps, ld->pullers);
    unsigned long long e0 = pull_errors_total(ps, ld->pullers);
    double c0 = bc_cpu_seconds();
    int64_t t0 = bc_now_ns();
    end = t0 + dur_ms * 1000000;
    int64_t now = t0;
    while (now < end) {
        int64_t a = now;
        surpool_err rc = surpool_conn_ping(pinger, NULL);
        now = bc_now_ns();
        if (rc == SURPOOL_OK)
            bc_samples_add(&s, now - a);
        else
            errors++;
    }
    double c1 = bc_cpu_seconds();
    unsigned long long pulls = pulls_total(ps, ld->pullers) - p0;
    unsigned long long perr = pull_errors_total(ps, ld->pullers) - e0;
    print_common("ping", ld, now - t0, pulls, perr);
    bc_json_int("samples", (long long)s.seen);
    bc_json_num("ops_per_s", (double)s.seen / ((double)(now - t0) / 1e9));
    bc_json_int("p50_ns", bc_percentile(&s, 0.50));
    bc_json_int("p90_ns", bc_percentile(&s, 0.90));
    bc_json_int("p99_ns", bc_percentile(&s, 0.99));
    bc_json_int("max_ns", bc_percentile(&s, 1.0));
    bc_json_num("cpu_s", c1 - c0);
    bc_json_int("errors", errors);
    bc_json_end();
    bc_log("bench_hol: ping, %s %ld: p50 %.2f ms, p99 %.2f ms (%zu samples, %llu pulls)",
           ld->name, ld->bytes, (double)bc_percentile(&s, 0.5) / 1e6,
           (double)bc_percentile(&s, 0.99) / 1e6, s.seen, pulls);
    bc_samples_free(&s);
}

static void phase_tp(int threads, const load *ld, puller *ps, int64_t warm_ms, int64_t dur_ms)
{
    pthread_t th[MAX_TP_THREADS];
    atomic_store(&g_phase, 0);
    atomic_store(&g_ops, 0);
    atomic_store(&g_errors, 0);
    bc_samples_init(&g_lat, 200000);
    for (int i = 0; i < threads; i++)
        bc_thread_start(&th[i], tp_main, NULL);
    bc_sleep_ns(warm_ms * 1000000);
    unsigned long long p0 = pulls_total(ps, ld->pullers);
    unsigned long long e0 = pull_errors_total(ps, ld->pullers);
    double c0 = bc_cpu_seconds();
    int64_t t0 = bc_now_ns();
    atomic_store(&g_phase, 1);
    bc_sleep_ns(dur_ms * 1000000);
    atomic_store(&g_phase, 2);
    int64_t t1 = bc_now_ns();
    double c1 = bc_cpu_seconds();
    unsigned long long pulls = pulls_total(ps, ld->pullers) - p0;
    unsigned long long perr = pull_errors_total(ps, ld->pullers) - e0;
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    unsigned long long ops = atomic_load(&g_ops);
    print_common("throughput", ld, t1 - t0, pulls, perr);
    bc_json_int("concurrency", threads);
    bc_json_num("ops_per_s", (double)ops / ((double)(t1 - t0) / 1e9));
    bc_json_int("p50_ns", bc_percentile(&g_lat, 0.50));
    bc_json_int("p99_ns", bc_percentile(&g_lat, 0.99));
    bc_json_int("max_ns", bc_percentile(&g_lat, 1.0));
    bc_json_num("cpu_s", c1 - c0);
    bc_json_int("errors", (long long)atomic_load(&g_errors));
    bc_json_end();
    bc_log("bench_hol: throughput, %s %ld: %.0f queries/s (%llu pulls)", ld->name, ld->bytes,
           (double)ops / ((double)(t1 - t0) / 1e9), pulls);
    bc_samples_free(&g_lat);
}

int main(int argc, char **argv)
{
    bench_target tgt;
    bench_target_from_args(&tgt, argc, argv);
    int sizes_i[MAX_SIZES];
    /* Sizes are below 2^31 here; bench_int_list parses ints. */
    int nsizes =
        bench_int_list(bc_arg(argc, argv, "--big", "1000000,5000000"), sizes_i, MAX_SIZES);
    int npullers = (int)bc_arg_long(argc, argv, "--pullers", 2);
    int tp_threads = (int)bc_arg_long(argc, argv, "--tp-threads", 8);
    int64_t dur_ms = bc_arg_long(argc, argv, "--duration-ms", 5000);
    int64_t tp_dur_ms = bc_arg_long(argc, argv, "--tp-duration-ms", 2000);
    int64_t warm_ms = bc_arg_long(argc, argv, "--warmup-ms", 300);
    int controls = bc_arg_long(argc, argv, "--controls", 1) != 0;
    if (npullers < 0 || npullers > MAX_PULLERS || tp_threads < 1 ||
        tp_threads > MAX_TP_THREADS) {
        bc_log("bench_hol: --pullers 0..%d, --tp-threads 1..%d", MAX_PULLERS, MAX_TP_THREADS);
        return 2;
    }

    surpool_config cfg;
    bench_config(&cfg, &tgt);
    /* The pinger, the pullers and the throughput threads each have a connection:
     * the throughput threads never wait for one held by a puller. */
    cfg.max_connections = 1 + npullers + tp_threads;
    cfg.min_connections = cfg.max_connections;
    cfg.shared_connections = 0;
    cfg.idle_timeout_ms = 0;
    cfg.validation_idle_ms = -1;
    cfg.keepalive_interval_ms = 0;
    cfg.max_message_bytes = (size_t)256 * 1024 * 1024;
    surpool_error err;
    if (surpool_pool_create(&cfg, &g_pool, &err) != SURPOOL_OK) {
        bc_log("bench_hol: pool create failed: %s", err.message);
        return 1;
    }
    surpool_conn *pinger = NULL;
    if (surpool_pool_acquire(g_pool, -1, &pinger, &err) != SURPOOL_OK) {
        bc_log("bench_hol: acquire failed: %s", err.message);
        surpool_pool_destroy(g_pool);
        return 1;
    }
    /* The control's second pool: the pullers' leases only. */
    surpool_pool *other = NULL;
    if (controls && npullers > 0) {
        cfg.max_connections = npullers;
        cfg.min_connections = npullers;
        if (surpool_pool_create(&cfg, &other, &err) != SURPOOL_OK) {
            bc_log("bench_hol: second pool create failed: %s", err.message);
            surpool_conn_release(pinger);
            surpool_pool_destroy(g_pool);
            return 1;
        }
    }

    puller ps[MAX_PULLERS];
    memset(ps, 0, sizeof(ps));
    int status = 0;
    load alone = {"alone", 0, 0};
    phase_ping(pinger, &alone, ps, warm_ms, dur_ms);
    /* The throughput threads must not take the pinger's connection: it stays
     * leased, and max_connections leaves them tp_threads of their own. */
    phase_tp(tp_threads, &alone, ps, warm_ms, tp_dur_ms);
    if (controls && npullers > 0) {
        load burn = {"burn", 0, npullers};
        pullers_start(ps, npullers, 0, NULL); /* burners cannot fail to start */
        phase_ping(pinger, &burn, ps, warm_ms, dur_ms);
        pullers_stop(ps, npullers);
    }
    for (int i = 0; i < nsizes && npullers > 0 && status == 0; i++) {
        load big = {"big", sizes_i[i], npullers};
        if (pullers_start(ps, npullers, sizes_i[i], g_pool) != 0) {
            status = 1;
            break;
        }
        phase_ping(pinger, &big, ps, warm_ms, dur_ms);
        phase_tp(tp_threads, &big, ps, warm_ms, tp_dur_ms);
        pullers_stop(ps, npullers);
        if (other != NULL) {
            load sep = {"separate", sizes_i[i], npullers};
            if (pullers_start(ps, npullers, sizes_i[i], other) != 0) {
                status = 1;
                break;
            }
            phase_ping(pinger, &sep, ps, warm_ms, dur_ms);
            pullers_stop(ps, npullers);
        }
    }
    surpool_conn_release(pinger);
    if (other != NULL)
        surpool_pool_destroy(other);
    surpool_pool_destroy(g_pool);
    return status;
}
