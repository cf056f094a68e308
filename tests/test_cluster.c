/*
 * Several SurrealDB nodes against the cluster simulator (server.mjs --nodes 3:
 * three WebSocket nodes on their own loopback ports over one shared core).
 * docs/cluster.md says what the pool does per node; these tests hold it to
 * that: data written through one node is read through another; a node killed
 * during a burst fails only the calls in flight on it while every waiter is
 * served by the others; a node that comes back gets connections back (by
 * rebalance, and by lifetime turnover); every node down is UNAVAILABLE long
 * before acquire_timeout_ms; the per-node stats add up to the pool's.
 *
 * The wire format comes from SURPOOL_TEST_WIRE ("json" or "cbor"; default
 * json): tests/CMakeLists.txt registers the program once per format.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "surpool.h"

#include "harness.h"
#include "testkit.h"

#define NODES 3

static test_server g_server;

static int group_setup(void **state)
{
    (void)state;
    const char *args[] = {"--user", "root", "--pass", "root", NULL};
    if (harness_start_cluster(&g_server, NODES, args) != 0) {
        fprintf(stderr, "cannot start tests/server/server.mjs --nodes %d\n", NODES);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    harness_stop(&g_server);
    return 0;
}

/* Every test starts with every node up. */
static int setup(void **state)
{
    (void)state;
    for (int k = 1; k <= NODES; k++)
        if (harness_node_revive(&g_server, k) != 0)
            return -1;
    return 0;
}

static void base_config(surpool_config *cfg, const char *url, const char *db)
{
    harness_root_config(cfg, url, db);
    cfg->shared_connections = 0;
    cfg->connect_timeout_ms = 5000;
    cfg->reconnect_backoff_min_ms = 20;
    cfg->reconnect_backoff_max_ms = 200;
    cfg->maintenance_interval_ms = 50;
}

static int ep_conns(surpool_pool *p, int i)
{
    surpool_endpoint_stats es;
    if (surpool_pool_endpoint_stats(p, i, &es) != SURPOOL_OK)
        fail_msg("endpoint stats %d", i);
    return es.connections;
}

/* Two pool reads agree on everything check_balance() compares. */
static int same_totals(const surpool_stats *a, const surpool_stats *b)
{
    return a->idle == b->idle && a->in_use == b->in_use && a->created == b->created &&
           a->connect_failures == b->connect_failures;
}

/* Per-node stats add up to the pool's. Each is a read of its own under the
 * pool mutex, and the pool is not always quiet: with every circuit open
 * (test_all_down_unavailable) it keeps probing a node in the background
 * (governor.c), so a connect can fail between the pool's read and the
 * nodes'. Read the nodes between two pool reads that agree (created and
 * connect_failures only grow, so nothing moved in between), retrying while
 * they differ (bounded), then compare. */
static void check_balance(surpool_pool *p)
{
    surpool_stats st, again;
    int conns, in_use;
    uint64_t connects, failures;
    int64_t end = tk_now_ms() + 5000 * TK_SLOW;
    do {
        assert_int_equal(surpool_pool_stats(p, &st), SURPOOL_OK);
        conns = in_use = 0;
        connects = failures = 0;
        for (int i = 0; i < surpool_pool_endpoint_count(p); i++) {
            surpool_endpoint_stats es;
            assert_int_equal(surpool_pool_endpoint_stats(p, i, &es), SURPOOL_OK);
            conns += es.connections;
            in_use += es.in_use;
            connects += es.connects;
            failures += es.connect_failures;
        }
        assert_int_equal(surpool_pool_stats(p, &again), SURPOOL_OK);
    } while (!same_totals(&st, &again) && tk_now_ms() < end);
    assert_int_equal(conns, st.idle + st.in_use);
    assert_int_equal(in_use, st.in_use);
    assert_int_equal(connects, st.created);
    assert_int_equal(failures, st.connect_failures);
}

/* Data written through node 1 is read through node 2: one store behind them. */
static void test_write_a_read_b(void **state)
{
    (void)state;
    char a_url[64], b_url[64];
    harness_node_url(&g_server, 1, a_url, sizeof(a_url));
    harness_node_url(&g_server, 2, b_url, sizeof(b_url));
    surpool_config cfg;
    base_config(&cfg, a_url, "cluster_ab");
    surpool_pool *a = tk_pool_create(&cfg);
    base_config(&cfg, b_url, "cluster_ab");
    surpool_pool *b = tk_pool_create(&cfg);
    json_t *r = NULL;
    surpool_error err;
    if (surpool_query(a, "DELETE item; CREATE item:one SET n = 42", NULL, &r, &err) !=
        SURPOOL_OK)
        fail_msg("write via node 1: %s", err.message);
    json_decref(r);
    if (surpool_query(b, "SELECT VALUE n FROM item:one", NULL, &r, &err) != SURPOOL_OK)
        fail_msg("read via node 2: %s", err.message);
    json_t *vals = json_object_get(json_array_get(r, 0), "result");
    assert_int_equal(json_array_size(vals), 1);
    assert_int_equal(json_integer_value(json_array_get(vals, 0)), 42);
    json_decref(r);
    tk_pool_destroy(a);
    tk_pool_destroy(b);
}

/* ---- kill one of three nodes during a burst ---- */

enum { CALLERS = 200, CONNS = 30 };

typedef struct caller {
    surpool_pool *p;
    surpool_err acquire_rc, call_rc;
    int ep;
} caller;

static atomic_int g_completed;

static void *caller_main(void *arg)
{
    caller *c = arg;
    surpool_conn *conn = NULL;
    surpool_error err;
    c->acquire_rc = surpool_pool_acquire(c->p, -1, &conn, &err);
    if (c->acquire_rc == SURPOOL_OK) {
        c->ep = surpool_conn_endpoint(conn);
        json_t *r = NULL;
        c->call_rc = surpool_conn_query(conn, "sleep(50ms); RETURN 1", NULL, &r, &err);
        json_decref(r);
        surpool_conn_release(conn);
    }
    atomic_fetch_add(&g_completed, 1);
    return NULL;
}

static void test_kill_one_during_burst(void **state)
{
    (void)state;
    if (harness_core_major() == 2) {
        print_message("skipped on 2.x: the test server cannot run requests concurrently\n");
        skip();
    }
    surpool_config cfg;
    base_config(&cfg, g_server.url, "cluster_burst");
    cfg.max_connections = CONNS;
    cfg.min_connections = CONNS;
    cfg.acquire_timeout_ms = 60000;
    surpool_pool *p = tk_pool_create(&cfg);
    for (int i = 0; i < NODES; i++)
        assert_int_equal(ep_conns(p, i), CONNS / NODES);

    static caller callers[CALLERS];
    pthread_t th[CALLERS];
    atomic_store(&g_completed, 0);
    for (int i = 0; i < CALLERS; i++) {
        callers[i] = (caller){p, SURPOOL_OK, SURPOOL_OK, -1};
        if (pthread_create(&th[i], NULL, caller_main, &callers[i]) != 0)
            fail_msg("pthread_create %d", i);
    }
    /* Kill node 2 once the burst is under way (calls in flight on every node). */
    WAIT_UNTIL(atomic_load(&g_completed) >= 40, 30000);
    assert_int_equal(harness_node_kill(&g_server, 2), 0);
    for (int i = 0; i < CALLERS; i++)
        JOIN_OR_FAIL(th[i], 60, "a caller of the burst (acquire, sleep(50ms), release)");

    int failed = 0, per_node[NODES] = {0, 0, 0};
    for (int i = 0; i < CALLERS; i++) {
        caller *c = &callers[i];
        if (c->acquire_rc != SURPOOL_OK)
            fail_msg("caller %d: acquire failed: %s (no waiter may fail: the other nodes "
                     "serve it)",
                     i, surpool_strerror(c->acquire_rc));
        per_node[c->ep]++;
        if (c->call_rc == SURPOOL_OK)
            continue;
        failed++;
        if (c->call_rc != SURPOOL_ERR_DISCONNECTED || c->ep != 1)
            fail_msg("caller %d: call on node %d failed with %s: only calls in flight on the "
                     "killed node 2 may fail, with DISCONNECTED",
                     i, c->ep + 1, surpool_strerror(c->call_rc));
    }
    print_message("    node 2 killed mid-burst: %d of %d calls failed (in flight on it); calls "
                  "per node %d/%d/%d\n",
                  failed, CALLERS, per_node[0], per_node[1], per_node[2]);
    assert_true(failed <= CONNS / NODES); /* at most one call per connection it had */
    surpool_stats st;
    assert_int_equal(surpool_pool_stats(p, &st), SURPOOL_OK);
    assert_int_equal(st.timeouts, 0);
    /* The pool refills to min_connections on the two nodes left. */
    WAIT_UNTIL(ep_conns(p, 0) + ep_conns(p, 2) == CONNS && ep_conns(p, 1) == 0, 20000);
    check_balance(p);
    tk_pool_destroy(p);
}

/* ---- a node that comes back gets connections back ---- */

static void run_comeback(int rebalance)
{
    surpool_config cfg;
    base_config(&cfg, g_server.url, "cluster_back");
    cfg.max_connections = 9;
    cfg.min_connections = 6;
    cfg.breaker_threshold = 2;
    if (rebalance) {
        cfg.rebalance_interval_ms = 100;
    } else {
        cfg.max_lifetime_ms = 1500; /* turnover replaces every connection often */
        cfg.idle_timeout_ms = 0;
    }
    surpool_pool *p = tk_pool_create(&cfg);
    WAIT_UNTIL(ep_conns(p, 0) == 2 && ep_conns(p, 1) == 2 && ep_conns(p, 2) == 2, 20000);
    assert_int_equal(harness_node_kill(&g_server, 3), 0);
    WAIT_UNTIL(ep_conns(p, 2) == 0 && ep_conns(p, 0) + ep_conns(p, 1) == 6, 20000);
    /* Let node 3's circuit open: the pool keeps probing it while it is down. */
    surpool_endpoint_stats es;
    WAIT_UNTIL(surpool_pool_endpoint_stats(p, 2, &es) == SURPOOL_OK && es.breaker_open, 20000);
    print_message("    node 3 down: %s\n", es.last_error);
    assert_true(es.last_error[0] != '\0');
    assert_int_equal(harness_node_revive(&g_server, 3), 0);
    WAIT_UNTIL(ep_conns(p, 2) >= 2, 30000);
    assert_int_equal(surpool_pool_endpoint_stats(p, 2, &es), SURPOOL_OK);
    assert_int_equal(es.breaker_open, 0);
    print_message("    node 3 back (%s): %d/%d/%d connections\n",
                  rebalance ? "rebalance" : "lifetime turnover", ep_conns(p, 0), ep_conns(p, 1),
                  ep_conns(p, 2));
    if (rebalance) {
        uint64_t moved = 0;
        for (int i = 0; i < NODES; i++) {
            assert_int_equal(surpool_pool_endpoint_stats(p, i, &es), SURPOOL_OK);
            moved += es.retired_rebalance;
        }
        assert_true(moved >= 1);
    }
    tk_pool_destroy(p);
}

static void test_comeback_rebalance(void **state)
{
    (void)state;
    run_comeback(1);
}

static void test_comeback_lifetime(void **state)
{
    (void)state;
    run_comeback(0);
}

/* ---- the lane's sockets move ---- */

/* Lane sockets on killed nodes die; the lane leases replacements, which the
 * pool opens on the node left: pool-level calls work again without anyone
 * touching the lane. */
static void test_lane_moves(void **state)
{
    (void)state;
    surpool_config cfg;
    base_config(&cfg, g_server.url, "cluster_lane");
    cfg.max_connections = 6;
    cfg.shared_connections = 3; /* one per node with least-connections */
    surpool_pool *p = tk_pool_create(&cfg);
    json_t *r = NULL;
    surpool_error err;
    for (int i = 0; i < 20; i++) {
        if (surpool_query(p, "RETURN 1", NULL, &r, &err) != SURPOOL_OK)
            fail_msg("lane call %d: %s", i, err.message);
        json_decref(r);
    }
    assert_int_equal(harness_node_kill(&g_server, 1), 0);
    assert_int_equal(harness_node_kill(&g_server, 2), 0);
    /* Calls in flight on the killed nodes may fail; the lane recovers. */
    WAIT_UNTIL(ep_conns(p, 0) == 0 && ep_conns(p, 1) == 0, 20000);
    int ok = 0;
    for (int i = 0; i < 200 && ok < 20; i++) {
        surpool_err rc = surpool_query(p, "RETURN 1", NULL, &r, &err);
        json_decref(r);
        r = NULL;
        ok = rc == SURPOOL_OK ? ok + 1 : 0;
        if (rc != SURPOOL_OK)
            tk_sleep_ms(20);
    }
    assert_int_equal(ok, 20); /* 20 in a row once it moved */
    assert_true(ep_conns(p, 2) >= 1);
    check_balance(p);
    tk_pool_destroy(p);
}

/* ---- every node down ---- */

typedef struct all_down {
    surpool_pool *p;
    surpool_err rc;
    atomic_int done;
} all_down;

static void *acquire_main(void *arg)
{
    all_down *a = arg;
    surpool_conn *c = NULL;
    surpool_error err;
    a->rc = surpool_pool_acquire(a->p, -1, &c, &err);
    if (a->rc == SURPOOL_OK)
        surpool_conn_release(c);
    atomic_store(&a->done, 1);
    return NULL;
}

static void test_all_down_unavailable(void **state)
{
    (void)state;
    surpool_config cfg;
    base_config(&cfg, g_server.url, "cluster_down");
    cfg.max_connections = 6;
    cfg.min_connections = 3;
    cfg.breaker_threshold = 2;
    cfg.acquire_timeout_ms = 120000; /* far beyond this test's bounded waits */
    surpool_pool *p = tk_pool_create(&cfg);
    for (int k = 1; k <= NODES; k++)
        assert_int_equal(harness_node_kill(&g_server, k), 0);
    WAIT_UNTIL(ep_conns(p, 0) + ep_conns(p, 1) + ep_conns(p, 2) == 0, 20000);
    /* Acquires fail fast with UNAVAILABLE once every node's circuit is open;
     * until then they wait for connects that fail. Each one runs on its own
     * thread under a bound far below acquire_timeout_ms. */
    surpool_err rc = SURPOOL_OK;
    for (int i = 0; i < 20 && rc != SURPOOL_ERR_UNAVAILABLE; i++) {
        all_down a = {p, SURPOOL_OK, 0};
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, acquire_main, &a), 0);
        WAIT_UNTIL(atomic_load(&a.done), 20000); /* not acquire_timeout_ms (120 s) */
        JOIN_OR_FAIL(th, 5, "an acquire with every node down");
        rc = a.rc;
        assert_true(rc == SURPOOL_ERR_UNAVAILABLE || rc == SURPOOL_ERR_CONNECT);
    }
    assert_int_equal(rc, SURPOOL_ERR_UNAVAILABLE);
    surpool_stats st;
    assert_int_equal(surpool_pool_stats(p, &st), SURPOOL_OK);
    assert_int_equal(st.breaker_open, 1);
    check_balance(p);
    tk_pool_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_write_a_read_b, setup, tk_teardown),
        cmocka_unit_test_setup_teardown(test_kill_one_during_burst, setup, tk_teardown),
        cmocka_unit_test_setup_teardown(test_comeback_rebalance, setup, tk_teardown),
        cmocka_unit_test_setup_teardown(test_comeback_lifetime, setup, tk_teardown),
        cmocka_unit_test_setup_teardown(test_lane_moves, setup, tk_teardown),
        cmocka_unit_test_setup_teardown(test_all_down_unavailable, setup, tk_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
