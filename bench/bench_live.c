/*
 * bench_live: live-query notifications through surpool, against a running
 * server (tests/server/server.mjs), for comparison with the official JS SDK's
 * live() on the same server (bench/live_sdk.mjs prints the same lines).
 *
 *   bench_live --url ws://127.0.0.1:PORT/rpc [--wire cbor|json] [--samples 500]
 *              [--fanout 1,100] [--notifications 20000]
 *
 * latency:    one writer (surpool_query on the pool's lane) creates a record
 *             and waits for its notification before the next; p50/p99 of
 *             write-sent -> callback-entered, in microseconds.
 * throughput: `fanout` live queries on one table, then ONE statement creates
 *             notifications/fanout records (so each run delivers about
 *             `notifications`); notifications delivered per second, from the
 *             write being sent to the last callback, and client CPU per
 *             notification.
 * One JSON line per measurement on stdout, progress on stderr. Figures, not
 * assertions.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <surpool.h>

#include "bench_common.h"

static atomic_llong g_count;
static atomic_llong g_stamp; /* ns of the write the latency loop waits for */
static bc_samples g_lat;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

static void on_lat(void *ud, surpool_live *live, const surpool_live_event *ev)
{
    (void)ud;
    (void)live;
    if (ev->type != SURPOOL_LIVE_CREATE)
        return;
    int64_t now = bc_now_ns();
    pthread_mutex_lock(&g_mu);
    bc_samples_add(&g_lat, (now - atomic_load(&g_stamp)) / 1000);
    pthread_mutex_unlock(&g_mu);
    atomic_fetch_add(&g_count, 1);
}

static void on_count(void *ud, surpool_live *live, const surpool_live_event *ev)
{
    (void)ud;
    (void)live;
    if (ev->type == SURPOOL_LIVE_CREATE)
        atomic_fetch_add(&g_count, 1);
    else if (ev->type == SURPOOL_LIVE_OVERFLOW)
        bc_log("overflow: %llu dropped", (unsigned long long)ev->dropped);
}

static void run(surpool_pool *p, const char *sql)
{
    json_t *r = NULL;
    surpool_error err;
    if (surpool_query(p, sql, NULL, &r, &err) != SURPOOL_OK ||
        surpool_query_check(r, &err) != SURPOOL_OK) {
        bc_log("query failed: %s: %s", sql, err.message);
        exit(1);
    }
    json_decref(r);
}

static surpool_live *start(surpool_pool *p, const char *table, surpool_live_fn fn)
{
    surpool_live_options o;
    surpool_live_options_init(&o);
    o.table = table;
    surpool_live *l = NULL;
    surpool_error err;
    if (surpool_live_start(p, &o, fn, NULL, &l, &err) != SURPOOL_OK) {
        bc_log("live start: %s", err.message);
        exit(1);
    }
    return l;
}

static int wait_count(long long n, int64_t timeout_ms)
{
    int64_t end = bc_now_ns() + timeout_ms * 1000000;
    while (atomic_load(&g_count) < n) {
        if (bc_now_ns() > end)
            return -1;
        bc_sleep_ns(20000);
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *url = bc_arg(argc, argv, "--url", NULL);
    if (url == NULL) {
        fprintf(stderr, "usage: bench_live --url ws://127.0.0.1:PORT/rpc [--wire cbor|json] "
                        "[--samples 500] [--fanout 1,100] [--notifications 20000]\n");
        return 2;
    }
    const char *wire = bc_arg(argc, argv, "--wire", "cbor");
    long samples = bc_arg_long(argc, argv, "--samples", 500);
    long total = bc_arg_long(argc, argv, "--notifications", 20000);
    const char *fanouts = bc_arg(argc, argv, "--fanout", "1,100");

    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = url;
    cfg.user = "root";
    cfg.pass = "root";
    cfg.ns = "bench";
    cfg.db = "live";
    cfg.wire_format = strcmp(wire, "json") == 0 ? SURPOOL_WIRE_JSON : SURPOOL_WIRE_CBOR;
    cfg.live_queue_max = 1 << 20; /* measure delivery, not the bound */
    surpool_pool *p = NULL;
    surpool_error err;
    if (surpool_pool_create(&cfg, &p, &err) != SURPOOL_OK) {
        bc_log("create: %s", err.message);
        return 1;
    }
    run(p, "DEFINE TABLE IF NOT EXISTS lat SCHEMALESS; DEFINE TABLE IF NOT EXISTS thr "
           "SCHEMALESS");

    /* Latency: one write at a time. */
    bc_samples_init(&g_lat, (size_t)samples);
    surpool_live *l = start(p, "lat", on_lat);
    for (long i = 0; i < samples + 50; i++) {
        if (i == 50) { /* warm-up done */
            pthread_mutex_lock(&g_mu);
            bc_samples_free(&g_lat);
            bc_samples_init(&g_lat, (size_t)samples);
            pthread_mutex_unlock(&g_mu);
        }
        long long want = atomic_load(&g_count) + 1;
        atomic_store(&g_stamp, bc_now_ns());
        run(p, "CREATE lat");
        if (wait_count(want, 10000) != 0) {
            bc_log("latency: notification %ld never came", i);
            return 1;
        }
    }
    surpool_live_kill(l);
    bc_json_begin("live_latency");
    bc_json_str("impl", "surpool");
    bc_json_str("wire", wire);
    bc_json_int("samples", samples);
    bc_json_int("p50_us", bc_percentile(&g_lat, 0.50));
    bc_json_int("p99_us", bc_percentile(&g_lat, 0.99));
    bc_json_end();
    bc_samples_free(&g_lat);

    /* Throughput: fanout live queries, one statement, count deliveries. */
    char list[64];
    snprintf(list, sizeof(list), "%s", fanouts);
    for (char *tok = strtok(list, ","); tok != NULL; tok = strtok(NULL, ",")) {
        long fan = atol(tok);
        if (fan < 1)
            continue;
        long n = fan > 0 ? total / fan : 0;
        if (n < 1)
            n = 1;
        surpool_live **ls = calloc((size_t)fan, sizeof(*ls));
        for (long i = 0; i < fan; i++)
            ls[i] = start(p, "thr", on_count);
        atomic_store(&g_count, 0);
        char sql[96];
        snprintf(sql, sizeof(sql), "FOR $i IN 1..=%ld { CREATE thr SET n = $i }", n);
        double cpu0 = bc_cpu_seconds();
        int64_t t0 = bc_now_ns();
        run(p, sql);
        long long want = (long long)n * fan;
        int ok = wait_count(want, 120000) == 0;
        int64_t t1 = bc_now_ns();
        double cpu = bc_cpu_seconds() - cpu0;
        for (long i = 0; i < fan; i++)
            surpool_live_kill(ls[i]);
        free(ls);
        run(p, "DELETE thr");
        bc_json_begin("live_throughput");
        bc_json_str("impl", "surpool");
        bc_json_str("wire", wire);
        bc_json_int("fanout", fan);
        bc_json_int("records", n);
        bc_json_int("notifications", atomic_load(&g_count));
        bc_json_int("complete", ok);
        bc_json_num("per_s", (double)atomic_load(&g_count) / ((double)(t1 - t0) / 1e9));
        bc_json_num("client_cpu_us_per_notification",
                    cpu * 1e6 /
                        (double)(atomic_load(&g_count) > 0 ? atomic_load(&g_count) : 1));
        bc_json_end();
    }
    surpool_pool_destroy(p);
    return 0;
}
