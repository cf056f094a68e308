/*
 * bench_sessions: many sessions over a few sockets (issue 15, docs/sessions.md).
 *
 *  1. A pool whose lane has --sockets sockets; every allocation of surpool and
 *     of jansson goes through counting hooks (surpool_set_allocator,
 *     json_set_alloc_funcs), so the live heap bytes are known exactly.
 *  2. Open --sessions sessions from --threads threads, each authenticated with
 *     a token of its own (--token-bytes long, the size of a record user's
 *     JWT) and with ns/db: live bytes per session (`bytes_per_session`).
 *  3. Give each session its own variable (`let v = i`): the extra live bytes
 *     per session are the variable's copy (`var_bytes_per_session`).
 *  4. Throughput, same run, same threads, alternating rounds of --seconds:
 *     plain lane calls (surpool_query "RETURN 1") against session calls
 *     (surpool_session_query "RETURN 1", each thread cycling over its
 *     sessions). The best round of each; `session_over_lane` = the ratio
 *     of the bests, `session_over_lane_median` the median of the per-round
 *     ratios (the target is >= 0.9). The client process's CPU per call
 *     (getrusage, the lowest round) separates the client's cost from the
 *     server's: both share the machine.
 * Against bench/canned_server.mjs the server's share is small (it answers
 * from prebuilt replies), so the figures are the client's.
 *
 * Usage: bench_sessions --url URL [--sessions 10000] [--sockets 4]
 *                       [--threads 4] [--seconds 1] [--rounds 7] [--token-bytes 300]
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bench_common.h"
#include "bench_surpool.h"
#include "lane.h"
#include "surpool.h"

/* ---- counting allocator -------------------------------------------------- */

static atomic_llong g_live;
typedef struct {
    size_t n;
    size_t pad; /* keeps the user block 16-byte aligned */
} hdr;

static void *cnt_malloc(size_t n)
{
    hdr *h = malloc(sizeof(hdr) + n);
    if (h == NULL)
        return NULL;
    h->n = n;
    atomic_fetch_add(&g_live, (long long)n);
    return h + 1;
}

static void cnt_free(void *p)
{
    if (p == NULL)
        return;
    hdr *h = (hdr *)p - 1;
    atomic_fetch_sub(&g_live, (long long)h->n);
    free(h);
}

static void *cnt_realloc(void *p, size_t n)
{
    if (p == NULL)
        return cnt_malloc(n);
    hdr *h = (hdr *)p - 1;
    size_t old = h->n;
    hdr *nh = realloc(h, sizeof(hdr) + n);
    if (nh == NULL)
        return NULL;
    nh->n = n;
    atomic_fetch_add(&g_live, (long long)n - (long long)old);
    return nh + 1;
}

/* ---- workers --------------------------------------------------------------- */

typedef struct {
    surpool_pool *pool;
    surpool_session **s;
    int from, to;
    int token_bytes;
    int phase; /* 0 open, 1 let, 2 lane calls, 3 session calls */
    int64_t until_ns;
    long calls, errors;
} worker;

static const char *g_ns = "bench", *g_db = "sessions";

static void *run(void *arg)
{
    worker *w = arg;
    surpool_error err;
    w->calls = w->errors = 0;
    if (w->phase == 0) {
        char *tok = malloc((size_t)w->token_bytes + 1);
        for (int i = w->from; i < w->to; i++) {
            int n = snprintf(tok, (size_t)w->token_bytes + 1, "token-%d-", i);
            memset(tok + n, 'x', (size_t)(w->token_bytes - n));
            tok[w->token_bytes] = '\0';
            surpool_session_options o;
            surpool_session_options_init(&o);
            o.token = tok;
            o.ns = g_ns;
            o.db = g_db;
            if (surpool_session_open(w->pool, &o, &w->s[i], &err) != SURPOOL_OK) {
                bc_log("open %d: %s", i, err.message);
                w->errors++;
            }
        }
        free(tok);
    } else if (w->phase == 1) {
        for (int i = w->from; i < w->to; i++) {
            json_t *v = json_integer(i);
            if (w->s[i] == NULL || surpool_session_let(w->s[i], "v", v, &err) != SURPOOL_OK)
                w->errors++;
            json_decref(v);
        }
    } else {
        int i = w->from;
        while (bc_now_ns() < w->until_ns) {
            json_t *out = NULL;
            surpool_err rc;
            if (w->phase == 2) {
                rc = surpool_query(w->pool, "RETURN 1", NULL, &out, &err);
            } else {
                rc = surpool_session_query(w->s[i], "RETURN 1", NULL, &out, &err);
                if (++i == w->to)
                    i = w->from;
            }
            json_decref(out);
            if (rc == SURPOOL_OK)
                w->calls++;
            else
                w->errors++;
        }
    }
    return NULL;
}

/* Run `phase` on every worker; returns calls per second (timed phases) and,
 * in *cpu_us (may be NULL), the process's CPU microseconds per call. */
static double phase(worker *w, int threads, int ph, double seconds, long *errors,
                    double *cpu_us)
{
    pthread_t th[64];
    double cpu0 = bc_cpu_seconds();
    int64_t t0 = bc_now_ns();
    for (int t = 0; t < threads; t++) {
        w[t].phase = ph;
        w[t].until_ns = t0 + (int64_t)(seconds * 1e9);
        if (bc_thread_start(&th[t], run, &w[t]) != 0) {
            bc_log("cannot start a thread");
            exit(1);
        }
    }
    long calls = 0;
    for (int t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
        calls += w[t].calls;
        *errors += w[t].errors;
    }
    double el = (double)(bc_now_ns() - t0) / 1e9;
    if (cpu_us != NULL)
        *cpu_us = calls > 0 ? (bc_cpu_seconds() - cpu0) * 1e6 / (double)calls : 0;
    return el > 0 ? (double)calls / el : 0;
}

int main(int argc, char **argv)
{
    bench_target tgt;
    bench_target_from_args(&tgt, argc, argv);
    int nsess = (int)bc_arg_long(argc, argv, "--sessions", 10000);
    int sockets = (int)bc_arg_long(argc, argv, "--sockets", 4);
    int threads = (int)bc_arg_long(argc, argv, "--threads", 4);
    double seconds = (double)bc_arg_long(argc, argv, "--seconds", 1);
    int rounds = (int)bc_arg_long(argc, argv, "--rounds", 7);
    int token_bytes = (int)bc_arg_long(argc, argv, "--token-bytes", 300);
    if (threads < 1 || threads > 64 || nsess < threads || token_bytes < 32) {
        bc_log("bench_sessions: need 1..64 threads, sessions >= threads, token-bytes >= 32");
        return 2;
    }
    surpool_set_allocator(cnt_malloc, cnt_realloc, cnt_free);
    json_set_alloc_funcs(cnt_malloc, cnt_free);

    surpool_config cfg;
    bench_config(&cfg, &tgt);
    cfg.shared_connections = sockets;
    cfg.max_connections = sockets + 1;
    surpool_pool *pool = NULL;
    surpool_error err;
    if (surpool_pool_create(&cfg, &pool, &err) != SURPOOL_OK) {
        bc_log("bench_sessions: pool: %s", err.message);
        return 1;
    }
    surpool_session **s = calloc((size_t)nsess, sizeof(*s));
    worker w[64];
    for (int t = 0; t < threads; t++)
        w[t] = (worker){
            pool, s, nsess * t / threads, nsess * (t + 1) / threads, token_bytes, 0, 0, 0, 0};
    long errors = 0;
    /* Warm up: the lane's sockets open and every thread's first call is paid. */
    phase(w, threads, 2, 0.5, &errors, NULL);

    long long live0 = atomic_load(&g_live);
    long rss0 = bc_rss_bytes();
    int64_t t0 = bc_now_ns();
    phase(w, threads, 0, 0, &errors, NULL);
    double open_s = (double)(bc_now_ns() - t0) / 1e9;
    long long live1 = atomic_load(&g_live);
    long rss1 = bc_rss_bytes();
    phase(w, threads, 1, 0, &errors, NULL);
    long long live2 = atomic_load(&g_live);

    double best_lane = 0, best_sess = 0, cpu_lane = 1e30, cpu_sess = 1e30;
    double ratios[64];
    if (rounds > 64)
        rounds = 64;
    for (int r = 0; r < rounds; r++) {
        double ca, cb;
        double a = phase(w, threads, 2, seconds, &errors, &ca);
        double b = phase(w, threads, 3, seconds, &errors, &cb);
        best_lane = a > best_lane ? a : best_lane;
        best_sess = b > best_sess ? b : best_sess;
        cpu_lane = ca < cpu_lane ? ca : cpu_lane;
        cpu_sess = cb < cpu_sess ? cb : cpu_sess;
        ratios[r] = a > 0 ? b / a : 0;
    }
    /* The median of the per-round ratios: each pair ran back to back, so
     * the load of other work on the machine moves both alike. */
    for (int i = 1; i < rounds; i++)
        for (int j = i; j > 0 && ratios[j - 1] > ratios[j]; j--) {
            double t = ratios[j];
            ratios[j] = ratios[j - 1];
            ratios[j - 1] = t;
        }
    double median = rounds > 0 ? ratios[rounds / 2] : 0;

    bc_json_begin("sessions");
    bc_json_int("sessions", nsess);
    bc_json_int("sockets", sockets);
    bc_json_int("threads", threads);
    bc_json_int("token_bytes", token_bytes);
    bc_json_num("open_per_s", open_s > 0 ? nsess / open_s : 0);
    bc_json_num("bytes_per_session", (double)(live1 - live0) / nsess);
    bc_json_num("var_bytes_per_session", (double)(live2 - live1) / nsess);
    bc_json_num("rss_bytes_per_session", (double)(rss1 - rss0) / nsess);
    bc_json_num("lane_calls_per_s", best_lane);
    bc_json_num("session_calls_per_s", best_sess);
    bc_json_num("session_over_lane", best_lane > 0 ? best_sess / best_lane : 0);
    bc_json_num("session_over_lane_median", median);
    bc_json_num("lane_cpu_us_per_call", cpu_lane);
    bc_json_num("session_cpu_us_per_call", cpu_sess);
    int counts[16], nsock = surpool__lane_socket_sessions(surpool__pool_lane(pool), counts, 16);
    char spread[160] = "";
    for (int i = 0; i < nsock; i++)
        snprintf(spread + strlen(spread), sizeof(spread) - strlen(spread), "%s%d",
                 i > 0 ? "/" : "", counts[i]);
    bc_json_str("sessions_per_socket", spread);
    bc_json_int("errors", errors);
    bc_json_end();

    for (int i = 0; i < nsess; i++)
        surpool_session_close(s[i]);
    free(s);
    surpool_pool_destroy(pool);
    return errors > 0;
}
