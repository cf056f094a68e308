/*
 * bench_burst: how fast a burst drains on the real server (tests/server).
 *
 * Every request is `sleep(Xms)`, so the server's work is known: B requests on
 * M connections cannot finish before ceil(B/M) x X (the ideal).
 *  - lease: B threads released together each acquire a connection from a warm
 *    pool (min_connections = max_connections = M), run the query, release.
 *  - lane: B surpool_query_async() calls issued at once on the shared lane
 *    (shared_connections sockets, shared_max_inflight per socket); the server
 *    runs them concurrently, so the ideal is X as long as B fits in the lane's
 *    capacity (ceil(B / capacity) x X otherwise). The lane does not depend on M
 *    (M only caps the pool); it runs with M = 10.
 *
 * One JSON line per (impl, B, M, X): wall_ms, ideal_ms, ratio = wall/ideal
 * (and ratio_x = wall/X for the lane).
 *
 * Usage: bench_burst --url URL --user root --pass root --ns bench --db bench
 *        [--bursts 100,200,1000] [--conns 10,50] [--sleeps 20,50]
 *        [--impls lease,lane,bare] [--server LABEL] [--rpc-sleep]
 *
 * --rpc-sleep: against tests/server/null_server.mjs, send its `sleep [X]` method
 * instead of the query: the server waits X ms and does nothing else, so the
 * ideal is reachable and what remains is the client's (the pool's) cost.
 *
 * Also: "bare" (bench_bare.c: the transport alone, B requests at once on 2
 * sockets) is the floor the lane is judged against on this server; and the
 * lease lines carry floor_ms = ceil(B/M) x round_ms, where round_ms is the
 * measured time of one round (M callers at once on M idle connections): the
 * test server is one Node thread and adds its per-request work to every sleep,
 * so M x that work is in every round whatever the pool does.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_bare.h"
#include "bench_common.h"
#include "bench_surpool.h"
#include "surpool.h"

typedef struct lease_worker {
    pthread_t th;
    surpool_pool *pool;
    bc_gate *gate;
    const char *method;
    json_t *params;
    int64_t end_ns;
    surpool_err rc;
} lease_worker;

static void *lease_main(void *arg)
{
    lease_worker *w = arg;
    bc_gate_wait(w->gate);
    surpool_conn *c = NULL;
    surpool_error err;
    w->rc = surpool_pool_acquire(w->pool, -1, &c, &err);
    if (w->rc == SURPOOL_OK) {
        json_t *out = NULL;
        w->rc = surpool_conn_call(c, w->method, w->params, &out, &err);
        json_decref(out);
        surpool_conn_release(c);
    }
    w->end_ns = bc_now_ns();
    if (w->rc != SURPOOL_OK)
        bc_log("bench_burst: lease call failed: %s", err.message);
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static const char *g_server = "real";
static int g_rpc_sleep; /* --rpc-sleep: the null server's `sleep [ms]` method */

/* The request of a burst: query ["sleep(Xms)"], or sleep [X] on the null
 * server (which then waits X ms and does nothing else). New reference. */
static json_t *sleep_request(int X, const char **method)
{
    if (g_rpc_sleep) {
        *method = "sleep";
        return json_pack("[i]", X);
    }
    char sql[64];
    snprintf(sql, sizeof(sql), "sleep(%dms)", X);
    *method = "query";
    return json_pack("[s]", sql);
}

/* B threads released together, each acquire / sleep(Xms) / release; returns
 * the wall time from the release of the gate to the last completion. */
static int64_t lease_wave(surpool_pool *pool, int B, int X, int *errors)
{
    const char *method;
    json_t *params = sleep_request(X, &method);
    lease_worker *ws = calloc((size_t)B, sizeof(*ws));
    bc_gate gate;
    bc_gate_init(&gate);
    for (int i = 0; i < B; i++) {
        ws[i].pool = pool;
        ws[i].gate = &gate;
        ws[i].method = method;
        ws[i].params = params;
        if (bc_thread_start(&ws[i].th, lease_main, &ws[i]) != 0) {
            bc_log("bench_burst: cannot start thread %d", i);
            exit(1);
        }
    }
    bc_gate_wait_for(&gate, B);
    int64_t t0 = bc_now_ns();
    bc_gate_open(&gate);
    int64_t end = t0;
    *errors = 0;
    for (int i = 0; i < B; i++) {
        pthread_join(ws[i].th, NULL);
        if (ws[i].end_ns > end)
            end = ws[i].end_ns;
        *errors += ws[i].rc != SURPOOL_OK;
    }
    bc_gate_destroy(&gate);
    free(ws);
    json_decref(params);
    return end - t0;
}

/* What one round really costs on this server: M callers at once on M idle
 * connections (no waiting in the pool), median of 3. The server is one Node
 * thread: M concurrent requests cost it M x its per-request work on top of X. */
static int64_t round_ns(surpool_pool *pool, int M, int X)
{
    int64_t t[3];
    int errors;
    for (int i = 0; i < 3; i++)
        t[i] = lease_wave(pool, M, X, &errors);
    qsort(t, 3, sizeof(t[0]), cmp_i64);
    return t[1];
}

static void burst_lease(surpool_pool *pool, int B, int M, int X, int64_t round)
{
    int errors = 0;
    int64_t wall = lease_wave(pool, B, X, &errors);
    double wall_ms = (double)wall / 1e6;
    int rounds = (B + M - 1) / M;
    double ideal_ms = (double)rounds * X;
    /* The floor this server allows: rounds x one real round of M. */
    double floor_ms = (double)rounds * (double)round / 1e6;
    bc_json_begin("burst");
    bc_json_str("server", g_server);
    bc_json_str("impl", "lease");
    bc_json_int("B", B);
    bc_json_int("M", M);
    bc_json_int("X_ms", X);
    bc_json_num("wall_ms", wall_ms);
    bc_json_num("ideal_ms", ideal_ms);
    bc_json_num("ratio", wall_ms / ideal_ms);
    bc_json_num("round_ms", (double)round / 1e6);
    bc_json_num("floor_ms", floor_ms);
    bc_json_num("ratio_floor", wall_ms / floor_ms);
    bc_json_int("errors", errors);
    bc_json_end();
}

/* ---- lane ---- */

typedef struct lane_burst {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, errors;
    int64_t end_ns;
} lane_burst;

static void lane_cb(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    lane_burst *lb = ud;
    (void)result;
    int64_t now = bc_now_ns();
    pthread_mutex_lock(&lb->mu);
    lb->done++;
    if (code != SURPOOL_OK) {
        if (lb->errors++ == 0)
            bc_log("bench_burst: lane call failed: %s", err != NULL ? err->message : "?");
    }
    if (now > lb->end_ns)
        lb->end_ns = now;
    pthread_cond_signal(&lb->cv);
    pthread_mutex_unlock(&lb->mu);
}

/* Issue n async queries and wait for all; returns wall ns, -1 on failure. */
static int64_t lane_round(surpool_pool *pool, const char *method, const json_t *params, int n,
                          int *errors)
{
    lane_burst lb;
    memset(&lb, 0, sizeof(lb));
    pthread_mutex_init(&lb.mu, NULL);
    pthread_cond_init(&lb.cv, NULL);
    int accepted = 0;
    int64_t t0 = bc_now_ns();
    for (int i = 0; i < n; i++) {
        if (surpool_call_async(pool, method, params, lane_cb, &lb) == SURPOOL_OK)
            accepted++;
    }
    pthread_mutex_lock(&lb.mu);
    while (lb.done < accepted)
        pthread_cond_wait(&lb.cv, &lb.mu);
    pthread_mutex_unlock(&lb.mu);
    *errors = lb.errors + (n - accepted);
    pthread_cond_destroy(&lb.cv);
    pthread_mutex_destroy(&lb.mu);
    return lb.end_ns - t0;
}

static void burst_lane(surpool_pool *pool, int B, int M, int X, int max_inflight)
{
    const char *method;
    json_t *params = sleep_request(X, &method);
    int errors = 0;
    int64_t wall = lane_round(pool, method, params, B, &errors);
    json_decref(params);
    surpool_stats st;
    surpool_pool_stats(pool, &st);
    int lane_conns = st.lane_connections > 0 ? st.lane_connections : 1;
    int cap = lane_conns * max_inflight;
    double wall_ms = (double)wall / 1e6;
    double ideal_ms = (double)((B + cap - 1) / cap) * X;
    bc_json_begin("burst");
    bc_json_str("server", g_server);
    bc_json_str("impl", "lane");
    bc_json_int("B", B);
    bc_json_int("M", M);
    bc_json_int("X_ms", X);
    bc_json_int("lane_conns", st.lane_connections);
    bc_json_int("max_inflight", max_inflight);
    bc_json_num("wall_ms", wall_ms);
    bc_json_num("ideal_ms", ideal_ms);
    bc_json_num("ratio", wall_ms / ideal_ms);
    bc_json_num("ratio_x", wall_ms / X);
    bc_json_int("errors", errors);
    bc_json_end();
}

/* ---- bare: the transport alone, B requests at once on 2 sockets ---- */

static void bare_cb_fn(void *ud, int ok)
{
    lane_cb(ud, ok ? SURPOOL_OK : SURPOOL_ERR_SERVER, NULL, NULL);
}

static void burst_bare(bare *b, int B, int X)
{
    const char *method;
    json_t *params = sleep_request(X, &method);
    lane_burst lb;
    memset(&lb, 0, sizeof(lb));
    pthread_mutex_init(&lb.mu, NULL);
    pthread_cond_init(&lb.cv, NULL);
    int accepted = 0;
    int64_t t0 = bc_now_ns();
    for (int i = 0; i < B; i++)
        if (bare_submit(b, i % bare_nconns(b), method, params, bare_cb_fn, &lb) == 0)
            accepted++;
    pthread_mutex_lock(&lb.mu);
    while (lb.done < accepted)
        pthread_cond_wait(&lb.cv, &lb.mu);
    pthread_mutex_unlock(&lb.mu);
    json_decref(params);
    double wall_ms = (double)(lb.end_ns - t0) / 1e6;
    bc_json_begin("burst");
    bc_json_str("server", g_server);
    bc_json_str("impl", "bare");
    bc_json_int("B", B);
    bc_json_int("M", bare_nconns(b));
    bc_json_int("X_ms", X);
    bc_json_num("wall_ms", wall_ms);
    bc_json_num("ideal_ms", X);
    bc_json_num("ratio", wall_ms / X);
    bc_json_num("ratio_x", wall_ms / X);
    bc_json_int("errors", lb.errors + (B - accepted));
    bc_json_end();
    pthread_cond_destroy(&lb.cv);
    pthread_mutex_destroy(&lb.mu);
}

int main(int argc, char **argv)
{
    bench_target tgt;
    bench_target_from_args(&tgt, argc, argv);
    int bursts[8], conns[8], sleeps[8];
    int nb = bench_int_list(bc_arg(argc, argv, "--bursts", "100,200,1000"), bursts, 8);
    int nm = bench_int_list(bc_arg(argc, argv, "--conns", "10,50"), conns, 8);
    int nx = bench_int_list(bc_arg(argc, argv, "--sleeps", "20,50"), sleeps, 8);
    const char *impls = bc_arg(argc, argv, "--impls", "lease,lane,bare");
    g_server = bc_arg(argc, argv, "--server", "real");
    g_rpc_sleep = bc_flag(argc, argv, "--rpc-sleep");

    if (strstr(impls, "lease") != NULL) {
        for (int mi = 0; mi < nm; mi++) {
            surpool_config cfg;
            bench_config(&cfg, &tgt);
            cfg.min_connections = conns[mi];
            cfg.max_connections = conns[mi];
            cfg.shared_connections = 0;
            surpool_pool *pool;
            surpool_error err;
            if (surpool_pool_create(&cfg, &pool, &err) != SURPOOL_OK) {
                bc_log("bench_burst: pool create failed: %s", err.message);
                return 1;
            }
            for (int xi = 0; xi < nx; xi++) {
                int64_t round = round_ns(pool, conns[mi], sleeps[xi]);
                for (int bi = 0; bi < nb; bi++) {
                    bc_log("bench_burst: lease B=%d M=%d X=%d", bursts[bi], conns[mi],
                           sleeps[xi]);
                    burst_lease(pool, bursts[bi], conns[mi], sleeps[xi], round);
                }
            }
            surpool_pool_destroy(pool);
        }
    }
#if SURPOOL_BENCH_HAVE_LANE
    if (strstr(impls, "lane") != NULL) {
        /* Default lane capacity, and one wide enough for the largest burst. */
        int max_b = 0;
        for (int bi = 0; bi < nb; bi++)
            if (bursts[bi] > max_b)
                max_b = bursts[bi];
        surpool_config probe;
        surpool_config_init(&probe);
        int inflights[2] = {probe.shared_max_inflight,
                            (max_b + probe.shared_connections - 1) /
                                (probe.shared_connections > 0 ? probe.shared_connections : 1)};
        int ninf = inflights[1] > inflights[0] ? 2 : 1;
        for (int ii = 0; ii < ninf; ii++) {
            surpool_config cfg;
            bench_config(&cfg, &tgt);
            cfg.min_connections = 2;
            cfg.max_connections = 10;
            cfg.shared_max_inflight = inflights[ii];
            surpool_pool *pool;
            surpool_error err;
            if (surpool_pool_create(&cfg, &pool, &err) != SURPOOL_OK) {
                bc_log("bench_burst: pool create failed: %s", err.message);
                return 1;
            }
            /* Warm: enough requests at once for the lane to open all its sockets. */
            int werr = 0;
            json_t *warm = json_pack("[s]", "RETURN 1");
            lane_round(pool, "query", warm,
                       cfg.shared_connections * cfg.shared_max_inflight + 1, &werr);
            json_decref(warm);
            for (int xi = 0; xi < nx; xi++)
                for (int bi = 0; bi < nb; bi++) {
                    if (ii == 1 && bursts[bi] <= inflights[0] * cfg.shared_connections)
                        continue; /* fits the default capacity: nothing new to learn */
                    bc_log("bench_burst: lane B=%d X=%d max_inflight=%d", bursts[bi],
                           sleeps[xi], inflights[ii]);
                    burst_lane(pool, bursts[bi], 10, sleeps[xi], inflights[ii]);
                }
            surpool_pool_destroy(pool);
        }
    }
#endif
    if (strstr(impls, "bare") != NULL) {
        bare *b = bare_open(tgt.url, 2, tgt.user, tgt.pass, tgt.ns, tgt.db);
        if (b == NULL)
            return 1;
        for (int xi = 0; xi < nx; xi++)
            for (int bi = 0; bi < nb; bi++) {
                bc_log("bench_burst: bare B=%d X=%d", bursts[bi], sleeps[xi]);
                burst_bare(b, bursts[bi], sleeps[xi]);
            }
        bare_close(b);
    }
#if !SURPOOL_BENCH_HAVE_LANE
    bc_log("bench_burst: built without the shared lane (src/lane.c): lane bursts skipped");
#endif
    return 0;
}
