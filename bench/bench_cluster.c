/*
 * bench_cluster: several nodes (docs/cluster.md) against the cluster simulator
 * (tests/server/server.mjs --nodes 3, started by this program through the
 * test harness). Not a test: nothing here asserts timings.
 *
 *  1. throughput: `threads` callers for `seconds` each, over a pool of 1, 2
 *     and 3 nodes (the first N of the simulator's), through leases (acquire,
 *     query "RETURN 1", release) and through the shared lane (surpool_query).
 *     The simulator is ONE Node process over one core: its nodes share that
 *     process's single thread, so more nodes cannot add server capacity here;
 *     the lines show what spreading costs the client, not what a real cluster
 *     gains.
 *  2. failover: a pool over 3 nodes whose connections are all on node 1
 *     (placement ORDERED); node 1 is killed; time from the kill to the first
 *     successful call on another node (the caller loops acquire + query,
 *     discarding what fails). `reps` repetitions, p50 / p99 / max. Also with
 *     LEAST_CONNECTIONS (connections on every node): the time to the first
 *     success after the kill.
 *  3. burst: 200 callers, each acquire + "sleep(50ms)" + release, on 30
 *     connections over 3 nodes; node 2 is killed once 40 calls have completed.
 *     wall_ms against the 2-node ideal ceil(200 / 20) x 50 ms (and the same
 *     burst with no kill against the 3-node ideal).
 *
 * One JSON line per measurement (bench_common.h). Usage:
 *   bench_cluster [--threads 16] [--seconds 3] [--reps 30] [--wire cbor|json]
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "harness.h"
#include "surpool.h"

static test_server g_srv;
static surpool_wire_format g_wire = SURPOOL_WIRE_CBOR;

static void die(const char *what, const surpool_error *err)
{
    fprintf(stderr, "bench_cluster: %s: %s\n", what, err != NULL ? err->message : "");
    harness_stop(&g_srv);
    exit(1);
}

/* "ws://127.0.0.1:p1,...,127.0.0.1:pn/rpc" for the first n nodes. */
static void url_for(int n, char *buf, size_t size)
{
    size_t off = (size_t)snprintf(buf, size, "ws://");
    for (int i = 0; i < n; i++)
        off += (size_t)snprintf(buf + off, size - off, "%s127.0.0.1:%d", i > 0 ? "," : "",
                                g_srv.node_ports[i]);
    snprintf(buf + off, size - off, "/rpc");
}

static void config(surpool_config *cfg, const char *url)
{
    surpool_config_init(cfg);
    cfg->url = url;
    cfg->wire_format = g_wire;
    cfg->user = "root";
    cfg->pass = "root";
    cfg->ns = "bench";
    cfg->db = "cluster";
    cfg->reconnect_backoff_min_ms = 20;
    cfg->reconnect_backoff_max_ms = 200;
    cfg->breaker_threshold = 2;
    cfg->maintenance_interval_ms = 50;
}

static surpool_pool *make(const surpool_config *cfg)
{
    surpool_pool *p = NULL;
    surpool_error err;
    if (surpool_pool_create(cfg, &p, &err) != SURPOOL_OK)
        die("create", &err);
    return p;
}

static void revive_all(void)
{
    for (int k = 1; k <= g_srv.nnodes; k++)
        harness_node_revive(&g_srv, k);
}

/* ---- 1. throughput ---- */

typedef struct worker {
    surpool_pool *p;
    int lane;
    int64_t end_ns;
    long ops, errors;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    while (bc_now_ns() < w->end_ns) {
        json_t *r = NULL;
        surpool_err rc;
        if (w->lane) {
            rc = surpool_query(w->p, "RETURN 1", NULL, &r, NULL);
        } else {
            surpool_conn *c = NULL;
            rc = surpool_pool_acquire(w->p, -1, &c, NULL);
            if (rc == SURPOOL_OK) {
                rc = surpool_conn_query(c, "RETURN 1", NULL, &r, NULL);
                surpool_conn_release(c);
            }
        }
        json_decref(r);
        if (rc == SURPOOL_OK)
            w->ops++;
        else
            w->errors++;
    }
    return NULL;
}

static void throughput(int nodes, int lane, int threads, int seconds)
{
    char url[256];
    url_for(nodes, url, sizeof(url));
    surpool_config cfg;
    config(&cfg, url);
    cfg.max_connections = lane ? 8 : threads;
    cfg.min_connections = cfg.max_connections;
    cfg.shared_connections = lane ? 3 : 0;
    surpool_pool *p = make(&cfg);
    worker *w = calloc((size_t)threads, sizeof(*w));
    pthread_t *th = calloc((size_t)threads, sizeof(*th));
    int64_t t0 = bc_now_ns(), end = t0 + (int64_t)seconds * 1000000000;
    for (int i = 0; i < threads; i++) {
        w[i] = (worker){p, lane, end, 0, 0};
        bc_thread_start(&th[i], worker_main, &w[i]);
    }
    long ops = 0, errors = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(th[i], NULL);
        ops += w[i].ops;
        errors += w[i].errors;
    }
    double secs = (double)(bc_now_ns() - t0) / 1e9;
    bc_json_begin("cluster_throughput");
    bc_json_str("via", lane ? "lane" : "leases");
    bc_json_int("nodes", nodes);
    bc_json_int("threads", threads);
    bc_json_str("wire", g_wire == SURPOOL_WIRE_CBOR ? "cbor" : "json");
    bc_json_num("ops_per_s", (double)ops / secs);
    bc_json_int("errors", errors);
    bc_json_end();
    free(w);
    free(th);
    surpool_pool_destroy(p);
}

/* ---- 2. failover ---- */

/* Kill node 1 of a warm pool; ns from the kill to the first successful call on
 * another node. */
static int64_t failover_once(surpool_placement placement)
{
    char url[256];
    url_for(3, url, sizeof(url));
    surpool_config cfg;
    config(&cfg, url);
    cfg.placement = placement;
    cfg.max_connections = 6;
    cfg.min_connections = placement == SURPOOL_PLACE_ORDERED ? 2 : 3;
    cfg.shared_connections = 0;
    cfg.validation_idle_ms = -1; /* the first call finds out, as in production */
    surpool_pool *p = make(&cfg);
    int64_t t0 = bc_now_ns();
    harness_node_kill(&g_srv, 1);
    int64_t took = -1;
    for (;;) {
        surpool_conn *c = NULL;
        if (surpool_pool_acquire(p, 10000, &c, NULL) != SURPOOL_OK)
            break;
        json_t *r = NULL;
        surpool_err rc = surpool_conn_query(c, "RETURN 1", NULL, &r, NULL);
        json_decref(r);
        int ep = surpool_conn_endpoint(c);
        if (rc != SURPOOL_OK)
            surpool_conn_discard(c);
        surpool_conn_release(c);
        if (rc == SURPOOL_OK && ep != 0) {
            took = bc_now_ns() - t0;
            break;
        }
        if (bc_now_ns() - t0 > INT64_C(10000000000))
            break;
    }
    surpool_pool_destroy(p);
    revive_all();
    return took;
}

static void failover(surpool_placement placement, const char *name, int reps)
{
    bc_samples s;
    bc_samples_init(&s, (size_t)reps);
    int failed = 0;
    for (int i = 0; i < reps; i++) {
        int64_t ns = failover_once(placement);
        if (ns < 0)
            failed++;
        else
            bc_samples_add(&s, ns / 1000);
    }
    bc_json_begin("cluster_failover");
    bc_json_str("placement", name);
    bc_json_int("reps", reps);
    bc_json_int("failed", failed);
    bc_json_num("p50_ms", (double)bc_percentile(&s, 0.50) / 1000.0);
    bc_json_num("p99_ms", (double)bc_percentile(&s, 0.99) / 1000.0);
    bc_json_num("max_ms", (double)bc_percentile(&s, 1.0) / 1000.0);
    bc_json_end();
    bc_samples_free(&s);
}

/* ---- 3. burst with a node killed ---- */

enum { BURST = 200, BURST_CONNS = 30, SLEEP_MS = 50 };

typedef struct bcaller {
    surpool_pool *p;
    bc_gate *gate;
    atomic_int *completed;
    surpool_err rc;
} bcaller;

static void *bcaller_main(void *arg)
{
    bcaller *c = arg;
    bc_gate_wait(c->gate);
    surpool_conn *conn = NULL;
    c->rc = surpool_pool_acquire(c->p, 60000, &conn, NULL);
    if (c->rc == SURPOOL_OK) {
        json_t *r = NULL;
        c->rc = surpool_conn_query(conn, "sleep(50ms); RETURN 1", NULL, &r, NULL);
        json_decref(r);
        surpool_conn_release(conn);
    }
    atomic_fetch_add(c->completed, 1);
    return NULL;
}

static void burst(int kill)
{
    char url[256];
    url_for(3, url, sizeof(url));
    surpool_config cfg;
    config(&cfg, url);
    cfg.max_connections = BURST_CONNS;
    cfg.min_connections = BURST_CONNS;
    cfg.shared_connections = 0;
    cfg.acquire_timeout_ms = 60000;
    surpool_pool *p = make(&cfg);
    static bcaller callers[BURST];
    pthread_t th[BURST];
    bc_gate gate;
    bc_gate_init(&gate);
    atomic_int completed;
    atomic_init(&completed, 0);
    for (int i = 0; i < BURST; i++) {
        callers[i] = (bcaller){p, &gate, &completed, SURPOOL_OK};
        bc_thread_start(&th[i], bcaller_main, &callers[i]);
    }
    bc_gate_wait_for(&gate, BURST);
    int64_t t0 = bc_now_ns();
    bc_gate_open(&gate);
    if (kill) {
        while (atomic_load(&completed) < 40)
            bc_sleep_ns(100000);
        harness_node_kill(&g_srv, 2);
    }
    int failed = 0;
    for (int i = 0; i < BURST; i++) {
        pthread_join(th[i], NULL);
        failed += callers[i].rc != SURPOOL_OK;
    }
    double wall = (double)(bc_now_ns() - t0) / 1e6;
    int ideal_conns = kill ? BURST_CONNS * 2 / 3 : BURST_CONNS;
    double ideal = (double)((BURST + ideal_conns - 1) / ideal_conns) * SLEEP_MS;
    bc_json_begin("cluster_burst");
    bc_json_str("case", kill ? "3 nodes, node 2 killed mid-burst" : "3 nodes, none killed");
    bc_json_int("callers", BURST);
    bc_json_int("conns", BURST_CONNS);
    bc_json_int("failed", failed);
    bc_json_num("wall_ms", wall);
    bc_json_str("ideal",
                kill ? "2-node: ceil(200/20) x 50 ms" : "3-node: ceil(200/30) x 50 ms");
    bc_json_num("ideal_ms", ideal);
    bc_json_num("ratio", wall / ideal);
    bc_json_end();
    bc_gate_destroy(&gate);
    surpool_pool_destroy(p);
    revive_all();
}

int main(int argc, char **argv)
{
    int threads = (int)bc_arg_long(argc, argv, "--threads", 16);
    int seconds = (int)bc_arg_long(argc, argv, "--seconds", 3);
    int reps = (int)bc_arg_long(argc, argv, "--reps", 30);
    if (strcmp(bc_arg(argc, argv, "--wire", "cbor"), "json") == 0)
        g_wire = SURPOOL_WIRE_JSON;
    const char *args[] = {"--user", "root", "--pass", "root", NULL};
    if (harness_start_cluster(&g_srv, 3, args) != 0)
        die("cannot start tests/server/server.mjs --nodes 3", NULL);
    for (int nodes = 1; nodes <= 3; nodes++) {
        throughput(nodes, 0, threads, seconds);
        throughput(nodes, 1, threads, seconds);
    }
    failover(SURPOOL_PLACE_ORDERED, "ordered", reps);
    failover(SURPOOL_PLACE_LEAST_CONNECTIONS, "least_connections", reps);
    for (int i = 0; i < 3; i++) {
        burst(0);
        burst(1);
    }
    harness_stop(&g_srv);
    return 0;
}
