/*
 * Several nodes on the fake transport (docs/cluster.md): the placement
 * policies, the per-node breaker, the pool's circuit that opens only when
 * every node's has, per-node stats that add up to the pool's, events tagged
 * with their node, and config.endpoints checks. The fake knows a node by its
 * URL's port (fake_transport.h), so the pools here list ports 1, 2, 3.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "fake_transport.h"
#include "pool.h"
#include "testkit.h"

#define URL3 "ws://127.0.0.1:1,127.0.0.1:2,127.0.0.1:3/rpc"

static fake_settings g_fs;

static void base_config(surpool_config *cfg, const char *url)
{
    surpool_config_init(cfg);
    cfg->url = url;
    cfg->max_connections = 9;
    cfg->shared_connections = 0;
    cfg->acquire_timeout_ms = 5000;
    cfg->connect_timeout_ms = 2000;
    cfg->reconnect_backoff_min_ms = 5;
    cfg->reconnect_backoff_max_ms = 20;
    cfg->keepalive_interval_ms = 0;
    cfg->validation_idle_ms = -1;
    cfg->maintenance_interval_ms = 20;
}

static surpool_pool *make(const surpool_config *cfg)
{
    surpool_pool *p = NULL;
    surpool_error err;
    if (surpool__pool_create_with(cfg, &fake_transport_ops, &g_fs, &p, &err) != SURPOOL_OK)
        fail_msg("create: %s", err.message);
    return tk_pool_track(p);
}

static int setup(void **state)
{
    (void)state;
    fake_settings_init(&g_fs);
    return 0;
}

static surpool_conn *lease(surpool_pool *p)
{
    surpool_conn *c = NULL;
    surpool_error err;
    if (tk_acquire(p, -1, &c, &err) != SURPOOL_OK)
        fail_msg("acquire: %s: %s", surpool_strerror(err.code), err.message);
    return c;
}

static int ep_conns(surpool_pool *p, int i)
{
    surpool_endpoint_stats es;
    assert_int_equal(surpool_pool_endpoint_stats(p, i, &es), SURPOOL_OK);
    return es.connections;
}

static int ep_breaker(surpool_pool *p, int i)
{
    surpool_endpoint_stats es;
    assert_int_equal(surpool_pool_endpoint_stats(p, i, &es), SURPOOL_OK);
    return es.breaker_open;
}

/* Two pool reads agree on everything check_balance() compares. */
static int same_totals(const surpool_stats *a, const surpool_stats *b)
{
    return a->idle == b->idle && a->in_use == b->in_use && a->connecting == b->connecting &&
           a->created == b->created && a->connect_failures == b->connect_failures;
}

/* Per-node stats add up to the pool's. Each is a read of its own under the
 * pool mutex, and the pool is not always quiet: while its circuit is open it
 * keeps probing a node in the background (governor.c), so a connect can start
 * or fail between the pool's read and the nodes'. Read the nodes between two
 * pool reads that agree (created and connect_failures only grow, so nothing
 * moved in between), retrying while they differ (bounded), then compare. */
static void check_balance(surpool_pool *p)
{
    surpool_stats st, again;
    int conns, in_use, connecting;
    uint64_t connects, failures;
    int64_t end = tk_now_ms() + 5000 * TK_SLOW;
    do {
        assert_int_equal(surpool_pool_stats(p, &st), SURPOOL_OK);
        conns = in_use = connecting = 0;
        connects = failures = 0;
        for (int i = 0; i < surpool_pool_endpoint_count(p); i++) {
            surpool_endpoint_stats es;
            assert_int_equal(surpool_pool_endpoint_stats(p, i, &es), SURPOOL_OK);
            assert_int_equal(es.index, i);
            conns += es.connections;
            in_use += es.in_use;
            connecting += es.connecting;
            connects += es.connects;
            failures += es.connect_failures;
        }
        assert_int_equal(surpool_pool_stats(p, &again), SURPOOL_OK);
    } while (!same_totals(&st, &again) && tk_now_ms() < end);
    assert_int_equal(conns, st.idle + st.in_use);
    assert_int_equal(in_use, st.in_use);
    assert_int_equal(connecting, st.connecting);
    assert_int_equal(connects, st.created);
    assert_int_equal(failures, st.connect_failures);
}

static void test_least_connections_spreads(void **state)
{
    (void)state;
    surpool_config cfg;
    base_config(&cfg, URL3);
    surpool_pool *p = make(&cfg);
    assert_int_equal(surpool_pool_endpoint_count(p), 3);
    surpool_conn *c[6];
    int per[3] = {0, 0, 0};
    for (int i = 0; i < 6; i++) {
        c[i] = lease(p);
        int ep = surpool_conn_endpoint(c[i]);
        assert_true(ep >= 0 && ep < 3);
        per[ep]++;
    }
    for (int i = 0; i < 3; i++) {
        assert_int_equal(per[i], 2);
        assert_int_equal(atomic_load(&g_fs.port_now[i + 1]), 2);
        assert_int_equal(ep_conns(p, i), 2);
    }
    check_balance(p);
    /* Give back node 1's two: the next new connections go there first. */
    for (int i = 0; i < 6; i++)
        if (surpool_conn_endpoint(c[i]) == 0) {
            surpool_conn_discard(c[i]);
            tk_release(c[i]);
            c[i] = NULL;
        }
    WAIT_UNTIL(ep_conns(p, 0) == 0, 5000);
    surpool_conn *d = lease(p);
    assert_int_equal(surpool_conn_endpoint(d), 0);
    tk_release(d);
    for (int i = 0; i < 6; i++)
        if (c[i] != NULL)
            tk_release(c[i]);
    tk_pool_destroy(p);
}

static void test_round_robin_alternates(void **state)
{
    (void)state;
    surpool_config cfg;
    base_config(&cfg, URL3);
    cfg.placement = SURPOOL_PLACE_ROUND_ROBIN;
    surpool_pool *p = make(&cfg);
    surpool_conn *c[6];
    for (int i = 0; i < 6; i++) {
        c[i] = lease(p); /* held: every lease is a new connection */
        assert_int_equal(surpool_conn_endpoint(c[i]), i % 3);
    }
    /* A node that refuses is skipped in turn (node 1 is next). */
    atomic_store(&g_fs.port_down[1], 1);
    surpool_conn *d = lease(p);
    assert_int_equal(surpool_conn_endpoint(d), 1);
    tk_release(d);
    for (int i = 0; i < 6; i++)
        tk_release(c[i]);
    check_balance(p);
    tk_pool_destroy(p);
}

static void test_ordered_uses_first_healthy(void **state)
{
    (void)state;
    surpool_config cfg;
    base_config(&cfg, URL3);
    cfg.placement = SURPOOL_PLACE_ORDERED;
    cfg.breaker_threshold = 1;
    surpool_pool *p = make(&cfg);
    surpool_conn *a = lease(p), *b = lease(p);
    assert_int_equal(surpool_conn_endpoint(a), 0);
    assert_int_equal(surpool_conn_endpoint(b), 0);
    /* Node 1 dies: the leases on it fail, new connections go to node 2. */
    atomic_store(&g_fs.port_down[1], 1);
    assert_int_equal(fake_kill_port(p->transport, 1), 2);
    json_t *r = NULL;
    assert_int_equal(surpool_conn_query(a, "RETURN 1", NULL, &r, NULL),
                     SURPOOL_ERR_DISCONNECTED);
    tk_release(a);
    tk_release(b);
    surpool_conn *c = lease(p);
    assert_int_equal(surpool_conn_endpoint(c), 1);
    tk_release(c);
    WAIT_UNTIL(ep_breaker(p, 0) == 1, 5000);
    surpool_stats st;
    assert_int_equal(surpool_pool_stats(p, &st), SURPOOL_OK);
    assert_int_equal(st.breaker_open, 0); /* node 2 and 3 are fine */
    surpool_endpoint_stats es;
    assert_int_equal(surpool_pool_endpoint_stats(p, 0, &es), SURPOOL_OK);
    assert_string_equal(es.host, "127.0.0.1");
    assert_int_equal(es.port, 1);
    assert_non_null(strstr(es.last_error, "refused"));
    /* Node 1 returns: its probe closes its circuit and it is first again. */
    atomic_store(&g_fs.port_down[1], 0);
    surpool_conn *hold[3];
    int back = 0;
    for (int round = 0; round < 200 && !back; round++) {
        for (int i = 0; i < 3; i++)
            hold[i] = lease(p); /* demand: new connections, one may be the probe */
        for (int i = 0; i < 3; i++) {
            back |= surpool_conn_endpoint(hold[i]) == 0;
            surpool_conn_discard(hold[i]);
            tk_release(hold[i]);
        }
        tk_sleep_ms(5);
    }
    assert_true(back);
    WAIT_UNTIL(ep_breaker(p, 0) == 0, 5000);
    tk_pool_destroy(p);
}

static int g_breaker_events[4];
static pthread_mutex_t g_ev_mu = PTHREAD_MUTEX_INITIALIZER;
static void on_event(void *ud, const surpool_event *e)
{
    (void)ud;
    pthread_mutex_lock(&g_ev_mu);
    if (e->type == SURPOOL_EVENT_BREAKER_OPEN && e->endpoint >= 0 && e->endpoint < 4)
        g_breaker_events[e->endpoint]++;
    if (e->type == SURPOOL_EVENT_CREATE && (e->endpoint < 1 || e->endpoint > 3))
        g_breaker_events[0]++; /* a CREATE without its node: counted as an error */
    pthread_mutex_unlock(&g_ev_mu);
}

static int breaker_events(int i)
{
    pthread_mutex_lock(&g_ev_mu);
    int n = g_breaker_events[i];
    pthread_mutex_unlock(&g_ev_mu);
    return n;
}

/* UNAVAILABLE fast only when every node's circuit is open. */
static void test_unavailable_only_when_all_down(void **state)
{
    (void)state;
    memset(g_breaker_events, 0, sizeof(g_breaker_events));
    surpool_config cfg;
    base_config(&cfg, URL3);
    cfg.breaker_threshold = 2;
    cfg.acquire_timeout_ms = 60000;
    cfg.on_event = on_event;
    surpool_pool *p = make(&cfg);
    atomic_store(&g_fs.port_down[1], 1);
    atomic_store(&g_fs.port_down[2], 1);
    /* Two nodes down: acquires are served by node 3 (a new connect each),
     * until the two circuits open. */
    for (int i = 0; i < 2000 && !(ep_breaker(p, 0) && ep_breaker(p, 1)); i++) {
        surpool_conn *c = lease(p);
        assert_int_equal(surpool_conn_endpoint(c), 2);
        surpool_conn_discard(c);
        tk_release(c);
        tk_sleep_ms(2);
    }
    assert_true(ep_breaker(p, 0) && ep_breaker(p, 1));
    assert_int_equal(ep_breaker(p, 2), 0);
    /* A circuit opens under the pool mutex, where ep_breaker() sees it at
     * once; its BREAKER_OPEN event is delivered by the connector thread after
     * it lets the mutex go (events.c). The loop can see both circuits open
     * while that thread is still on its way to on_event: wait for the events,
     * then check that each came exactly once. */
    WAIT_UNTIL(breaker_events(1) >= 1 && breaker_events(2) >= 1, 5000);
    assert_int_equal(breaker_events(1), 1);
    assert_int_equal(breaker_events(2), 1);
    assert_int_equal(breaker_events(0), 0);
    /* The last one goes: acquires fail with UNAVAILABLE, not after 60 s. */
    atomic_store(&g_fs.port_down[3], 1);
    surpool_err rc = SURPOOL_OK;
    for (int i = 0; i < 100 && rc != SURPOOL_ERR_UNAVAILABLE; i++) {
        surpool_conn *c = NULL;
        surpool_error err;
        rc = tk_acquire(p, 2000, &c, &err);
        if (rc == SURPOOL_OK) {
            surpool_conn_discard(c);
            tk_release(c);
        }
    }
    assert_int_equal(rc, SURPOOL_ERR_UNAVAILABLE);
    check_balance(p);
    tk_pool_destroy(p);
}

/* Rebalance: a node that comes back gets idle connections moved to it, one
 * per interval. */
static void test_rebalance_moves_idle(void **state)
{
    (void)state;
    surpool_config cfg;
    base_config(&cfg, URL3);
    cfg.min_connections = 6;
    cfg.breaker_threshold = 1;
    cfg.rebalance_interval_ms = 10;
    atomic_store(&g_fs.port_down[3], 1);
    cfg.lazy_start = 1;
    surpool_pool *p = make(&cfg);
    WAIT_UNTIL(ep_conns(p, 0) + ep_conns(p, 1) == 6, 5000);
    assert_int_equal(ep_conns(p, 2), 0);
    atomic_store(&g_fs.port_down[3], 0);
    WAIT_UNTIL(ep_conns(p, 0) == 2 && ep_conns(p, 1) == 2 && ep_conns(p, 2) == 2, 5000);
    surpool_endpoint_stats a, b;
    assert_int_equal(surpool_pool_endpoint_stats(p, 0, &a), SURPOOL_OK);
    assert_int_equal(surpool_pool_endpoint_stats(p, 1, &b), SURPOOL_OK);
    assert_true(a.retired_rebalance + b.retired_rebalance >= 1);
    check_balance(p);
    tk_pool_destroy(p);
}

/* Connects in flight, pool-wide and the most on one node whose circuit is
 * open, under the lock. */
static void connecting_now(surpool_pool *p, int *total, int *down_node_max)
{
    pthread_mutex_lock(&p->mu);
    *total = p->nconnecting;
    *down_node_max = 0;
    for (int i = 0; i < p->neps; i++)
        if (p->eps[i].breaker_open && p->eps[i].nconnecting > *down_node_max)
            *down_node_max = p->eps[i].nconnecting;
    pthread_mutex_unlock(&p->mu);
}

typedef struct burst_arg {
    surpool_pool *pool;
    atomic_int ok, on_node2, other;
} burst_arg;

static void *burst_worker(void *arg)
{
    burst_arg *b = arg;
    surpool_conn *c = NULL;
    if (surpool_pool_acquire(b->pool, 10000 * TK_SLOW, &c, NULL) != SURPOOL_OK) {
        atomic_fetch_add(&b->other, 1);
        return NULL;
    }
    atomic_fetch_add(&b->ok, 1);
    atomic_fetch_add(surpool_conn_endpoint(c) == 1 ? &b->on_node2 : &b->other, 1);
    tk_sleep_ms(20); /* hold it: the others need connections of their own */
    surpool_conn_release(c);
    return NULL;
}

/* Every node down, then one back. While all are down, the pool probes one
 * node at a time (never more than one connect in flight, sampled throughout)
 * and acquires fail fast with UNAVAILABLE. The node that returns closes its
 * own circuit through its probe and then serves a burst of waiters alone;
 * meanwhile the dead nodes still get at most one probe each in flight. */
static void test_all_down_then_one_back(void **state)
{
    (void)state;
    surpool_config cfg;
    base_config(&cfg, URL3);
    cfg.breaker_threshold = 1;
    cfg.reconnect_backoff_min_ms = 10;
    cfg.reconnect_backoff_max_ms = 40;
    cfg.acquire_timeout_ms = 10000;
    for (int i = 1; i <= 3; i++)
        atomic_store(&g_fs.port_down[i], 1);
    atomic_store(&g_fs.connect_latency_ms, 2); /* a probe in flight is seen */
    cfg.lazy_start = 1;
    surpool_pool *p = make(&cfg);
    surpool_conn *c = NULL;
    surpool_error err;
    assert_int_not_equal(surpool_pool_acquire(p, 2000, &c, &err), SURPOOL_OK);
    WAIT_UNTIL(ep_breaker(p, 0) && ep_breaker(p, 1) && ep_breaker(p, 2), 5000);
    assert_int_equal(surpool_pool_acquire(p, 60000, &c, &err), SURPOOL_ERR_UNAVAILABLE);
    int opens = atomic_load(&g_fs.opens);
    int worst = 0, worst_node = 0;
    int64_t give_up = tk_now_ms() + 10000 * TK_SLOW;
    while (atomic_load(&g_fs.opens) < opens + 12) { /* a few probes of every node */
        if (tk_now_ms() > give_up)
            fail_msg("gave up waiting for 12 probes while every node is down");
        int total, node;
        connecting_now(p, &total, &node);
        worst = total > worst ? total : worst;
        worst_node = node > worst_node ? node : worst_node;
        tk_sleep_ms(1);
    }
    assert_int_equal(worst, 1); /* one probe at a time, pool-wide */
    assert_int_equal(worst_node, 1);

    atomic_store(&g_fs.port_down[2], 0);
    WAIT_UNTIL(!ep_breaker(p, 1), 5000);
    assert_true(ep_breaker(p, 0) && ep_breaker(p, 2));
    burst_arg b;
    memset(&b, 0, sizeof(b));
    b.pool = p;
    pthread_t th[8];
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&th[i], NULL, burst_worker, &b), 0);
    worst_node = 0;
    while (atomic_load(&b.ok) + atomic_load(&b.other) < 8) {
        int total, node;
        connecting_now(p, &total, &node);
        worst_node = node > worst_node ? node : worst_node;
        tk_sleep_ms(1);
    }
    for (int i = 0; i < 8; i++)
        assert_int_equal(tk_join(th[i], 20), 0);
    assert_true(worst_node <= 1); /* the dead nodes: one probe each at most */
    assert_int_equal(atomic_load(&b.ok), 8);
    assert_int_equal(atomic_load(&b.on_node2), 8);
    assert_int_equal(atomic_load(&g_fs.port_opens[1]) + atomic_load(&g_fs.port_opens[3]), 0);
    assert_true(ep_breaker(p, 0) && ep_breaker(p, 2));
    atomic_store(&g_fs.connect_latency_ms, 0);
    check_balance(p);
    tk_pool_destroy(p);
}

static uint64_t ep_rebalanced(surpool_pool *p, int i)
{
    surpool_endpoint_stats es;
    assert_int_equal(surpool_pool_endpoint_stats(p, i, &es), SURPOOL_OK);
    return es.retired_rebalance;
}

/* Rebalance with ordered placement. Before, it evened connections out against
 * the policy: with both nodes up and every connection on node 1 (as ordered
 * wants), it retired one from node 1 each interval, and placement opened the
 * replacement on node 1 again: a connect per interval, forever. Now ordered
 * rebalancing is failback: connections on a later node move to the first
 * healthy one, one per interval, and then nothing moves. Ticks are counted by
 * the keepalive pings the maintainer sends (no clock in the assertions). */
static void test_rebalance_ordered_fails_back_without_churn(void **state)
{
    (void)state;
    surpool_config cfg;
    base_config(&cfg, "ws://127.0.0.1:1,127.0.0.1:2/rpc");
    cfg.placement = SURPOOL_PLACE_ORDERED;
    cfg.min_connections = 3;
    cfg.breaker_threshold = 1;
    cfg.rebalance_interval_ms = 5;
    cfg.maintenance_interval_ms = 5;
    cfg.keepalive_interval_ms = 1;
    surpool_pool *p = make(&cfg);
    WAIT_UNTIL(ep_conns(p, 0) == 3, 5000);
    int calls = atomic_load(&g_fs.calls);
    WAIT_UNTIL(atomic_load(&g_fs.calls) >= calls + 30, 10000); /* >= 10 ticks */
    assert_int_equal(atomic_load(&g_fs.opens), 3);
    assert_int_equal(ep_rebalanced(p, 0), 0);
    assert_int_equal(ep_conns(p, 1), 0);

    /* Node 1 goes: its connections die and are replaced on node 2. */
    atomic_store(&g_fs.port_down[1], 1);
    fake_kill_port(p->transport, 1);
    WAIT_UNTIL(ep_conns(p, 1) == 3 && ep_conns(p, 0) == 0, 5000);
    /* It comes back: the idle connections move back to it, one per interval;
     * a lease on node 2 is never taken, and moves once given back. */
    surpool_conn *held = lease(p);
    assert_int_equal(surpool_conn_endpoint(held), 1);
    atomic_store(&g_fs.port_down[1], 0);
    WAIT_UNTIL(ep_conns(p, 0) == 2 && ep_conns(p, 1) == 1, 5000);
    assert_int_equal(surpool_conn_ping(held, NULL), SURPOOL_OK);
    tk_release(held);
    WAIT_UNTIL(ep_conns(p, 0) == 3 && ep_conns(p, 1) == 0, 5000);
    assert_true(ep_rebalanced(p, 1) >= 2);
    int opens = atomic_load(&g_fs.opens);
    calls = atomic_load(&g_fs.calls);
    WAIT_UNTIL(atomic_load(&g_fs.calls) >= calls + 30, 10000);
    assert_int_equal(atomic_load(&g_fs.opens), opens); /* settled: no churn */
    assert_int_equal(ep_rebalanced(p, 0), 0);
    check_balance(p);
    tk_pool_destroy(p);
}

/* Rebalance never moves connections toward a node whose last connect failed.
 * Before, with a node down and its circuit not open (breaker_threshold 0, or
 * failures still below it), the node counted as the least loaded healthy one
 * whenever its backoff had passed: every interval a working idle connection
 * was retired, its replacement tried the dead node, failed, and was opened on
 * a live one again. Now such a node gets background probes instead, and
 * connections once a probe has connected. */
static void test_rebalance_skips_failing_node(void **state)
{
    (void)state;
    surpool_config cfg;
    base_config(&cfg, "ws://127.0.0.1:1,127.0.0.1:2/rpc");
    cfg.min_connections = 4;
    cfg.breaker_threshold = 0; /* never open: the backoff alone paces node 2 */
    cfg.reconnect_backoff_min_ms = 1;
    cfg.reconnect_backoff_max_ms = 2;
    cfg.rebalance_interval_ms = 5;
    cfg.maintenance_interval_ms = 5;
    cfg.keepalive_interval_ms = 1;
    atomic_store(&g_fs.port_down[2], 1);
    cfg.lazy_start = 1;
    surpool_pool *p = make(&cfg);
    WAIT_UNTIL(ep_conns(p, 0) == 4, 5000);
    int calls = atomic_load(&g_fs.calls);
    WAIT_UNTIL(atomic_load(&g_fs.calls) >= calls + 40, 10000); /* >= 10 ticks */
    assert_int_equal(ep_rebalanced(p, 0), 0);
    assert_int_equal(atomic_load(&g_fs.port_opens[1]), 4);
    /* Node 2 back: its background probe connects (no demand needed), then
     * rebalance evens out: (4, 1) -> (3, 1) -> (2, 1), and min_connections
     * refills node 2. */
    atomic_store(&g_fs.port_down[2], 0);
    WAIT_UNTIL(ep_conns(p, 0) == 2 && ep_conns(p, 1) == 2, 5000);
    check_balance(p);
    tk_pool_destroy(p);
}

static uint64_t ep_failures(surpool_pool *p, int i)
{
    surpool_endpoint_stats es;
    assert_int_equal(surpool_pool_endpoint_stats(p, i, &es), SURPOOL_OK);
    return es.connect_failures;
}

static int backoff_passed(surpool_pool *p, int i)
{
    pthread_mutex_lock(&p->mu);
    int passed = surpool__now_ns() >= p->eps[i].not_before_ns;
    pthread_mutex_unlock(&p->mu);
    return passed;
}

/* A probe of a down node never takes the last free slot from a waiter that a
 * healthy node can serve. Before, the due probe went first: with one slot
 * left, the waiter waited for the probe to fail (up to connect_timeout_ms on
 * a node that drops packets) before its own connect could start. */
static void test_probe_leaves_waiter_slot(void **state)
{
    (void)state;
    surpool_config cfg;
    base_config(&cfg, "ws://127.0.0.1:1,127.0.0.1:2/rpc");
    cfg.max_connections = 2;
    cfg.breaker_threshold = 1;
    cfg.reconnect_backoff_min_ms = 1;
    cfg.reconnect_backoff_max_ms = 2;
    atomic_store(&g_fs.port_down[2], 1);
    cfg.lazy_start = 1;
    surpool_pool *p = make(&cfg);
    surpool_conn *a = lease(p);
    assert_int_equal(surpool_conn_endpoint(a), 0);
    surpool_conn *b = lease(p); /* tries node 2 first (least loaded): its circuit opens */
    assert_int_equal(surpool_conn_endpoint(b), 0);
    WAIT_UNTIL(ep_breaker(p, 1), 5000);
    surpool_conn_discard(b);
    tk_release(b); /* one free slot left */
    WAIT_UNTIL(ep_conns(p, 0) == 1, 5000);
    WAIT_UNTIL(backoff_passed(p, 1), 5000); /* node 2's probe is due */
    uint64_t f0 = ep_failures(p, 1);
    surpool_conn *c = lease(p);
    assert_int_equal(surpool_conn_endpoint(c), 0);
    assert_int_equal(ep_failures(p, 1), f0); /* no probe took the slot */
    tk_release(c);
    tk_release(a);
    check_balance(p);
    tk_pool_destroy(p);
}

static surpool_err try_create(const surpool_config *cfg, surpool_error *err)
{
    surpool_pool *p = NULL;
    surpool_err rc = surpool__pool_create_with(cfg, &fake_transport_ops, &g_fs, &p, err);
    surpool_pool_destroy(p);
    return rc;
}

static void test_config_endpoints(void **state)
{
    (void)state;
    surpool_config cfg;
    surpool_error err;
    base_config(&cfg, "ws://127.0.0.1:1/rpc?ns=a&db=b");
    const char *more[] = {"ws://127.0.0.1:2", "ws://127.0.0.1:3/rpc"};
    cfg.endpoints = more;
    cfg.nendpoints = 2;
    cfg.min_connections = 3;
    surpool_pool *p = make(&cfg);
    assert_int_equal(surpool_pool_endpoint_count(p), 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(ep_conns(p, i), 1);
    /* Each node's own host goes to the transport (TLS checks that name). */
    assert_string_equal(g_fs.last_host, "127.0.0.1");
    tk_pool_destroy(p);

    const struct {
        const char *url, *ep;
        int n;
        const char *msg;
    } bad[] = {
        {"ws://127.0.0.1:1/rpc", "wss://127.0.0.1:2", 1, "mixed schemes"},
        {"ws://127.0.0.1:1/rpc", "ws://u:p@127.0.0.1:2", 1, "user info"},
        {"ws://127.0.0.1:1/rpc", "ws://127.0.0.1:2?ns=x", 1, "query parameters"},
        {"ws://127.0.0.1:1/rpc", "ws://127.0.0.1:1/other", 1, "repeats node 1"},
        {"ws://127.0.0.1:1/rpc", "", 1, "NULL or empty"},
        {"ws://127.0.0.1:1/rpc", "http://x", 1, "config.endpoints[0]"},
        {"ws://127.0.0.1:1/rpc", NULL, -1, "nendpoints must be"},
        {"ws://127.0.0.1:1,127.0.0.1:1/rpc", NULL, 0, "repeats host 1"},
        /* An entry is one node, not a host list; the same node in another
         * text form is the same node. */
        {"ws://127.0.0.1:1/rpc", "ws://127.0.0.1:2,127.0.0.1:3", 1, "config.endpoints[0]"},
        {"ws://[::1]:1/rpc", "ws://[0:0:0:0:0:0:0:1]:1", 1, "repeats node 1"},
        {"ws://db.example:1/rpc", "ws://DB.example.:1", 1, "repeats node 1"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        base_config(&cfg, bad[i].url);
        const char *one[1] = {bad[i].ep};
        cfg.endpoints = bad[i].n > 0 ? one : NULL;
        cfg.nendpoints = bad[i].n;
        memset(&err, 0, sizeof(err));
        assert_int_equal(try_create(&cfg, &err), SURPOOL_ERR_INVALID_ARG);
        if (strstr(err.message, bad[i].msg) == NULL)
            fail_msg("case %zu: '%s' does not say '%s'", i, err.message, bad[i].msg);
    }
    /* Too many nodes, the URL's and the list's together. */
    char url[64];
    snprintf(url, sizeof(url), "ws://127.0.0.1:1/rpc");
    const char *many[SURPOOL_MAX_ENDPOINTS];
    char hosts[SURPOOL_MAX_ENDPOINTS][40];
    for (int i = 0; i < SURPOOL_MAX_ENDPOINTS; i++) {
        snprintf(hosts[i], sizeof(hosts[i]), "ws://127.0.0.1:%d", 100 + i);
        many[i] = hosts[i];
    }
    base_config(&cfg, url);
    cfg.endpoints = many;
    cfg.nendpoints = SURPOOL_MAX_ENDPOINTS;
    assert_int_equal(try_create(&cfg, &err), SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "the limit is"));
    base_config(&cfg, URL3);
    cfg.placement = (surpool_placement)7;
    assert_int_equal(try_create(&cfg, &err), SURPOOL_ERR_INVALID_ARG);
    cfg.placement = SURPOOL_PLACE_LEAST_CONNECTIONS;
    cfg.rebalance_interval_ms = -1;
    assert_int_equal(try_create(&cfg, &err), SURPOOL_ERR_INVALID_ARG);
    /* Bad arguments to the stats calls. */
    surpool_endpoint_stats es;
    assert_int_equal(surpool_pool_endpoint_stats(NULL, 0, &es), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_pool_endpoint_count(NULL), 0);
    assert_int_equal(surpool_conn_endpoint(NULL), -1);
    base_config(&cfg, URL3);
    p = make(&cfg);
    assert_int_equal(surpool_pool_endpoint_stats(p, 3, &es), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_pool_endpoint_stats(p, -1, &es), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_pool_endpoint_stats(p, 0, NULL), SURPOOL_ERR_INVALID_ARG);
    tk_pool_destroy(p);
}

/* CREATE and DESTROY events name their node (event.endpoint, 1-based). */
static int g_created[4], g_destroyed[4];
static void count_event(void *ud, const surpool_event *e)
{
    (void)ud;
    pthread_mutex_lock(&g_ev_mu);
    int k = e->endpoint >= 0 && e->endpoint < 4 ? e->endpoint : 0;
    if (e->type == SURPOOL_EVENT_CREATE)
        g_created[k]++;
    if (e->type == SURPOOL_EVENT_DESTROY)
        g_destroyed[k]++;
    pthread_mutex_unlock(&g_ev_mu);
}

static int events_of(const int *counts, int k)
{
    pthread_mutex_lock(&g_ev_mu);
    int n = counts[k];
    pthread_mutex_unlock(&g_ev_mu);
    return n;
}

static void test_events_name_the_node(void **state)
{
    (void)state;
    memset(g_created, 0, sizeof(g_created));
    memset(g_destroyed, 0, sizeof(g_destroyed));
    surpool_config cfg;
    base_config(&cfg, URL3);
    cfg.placement = SURPOOL_PLACE_ROUND_ROBIN;
    cfg.on_event = count_event;
    surpool_pool *p = make(&cfg);
    surpool_conn *c[3];
    for (int i = 0; i < 3; i++)
        c[i] = lease(p);
    for (int i = 0; i < 3; i++) {
        surpool_conn_discard(c[i]); /* closed on release: a DESTROY */
        tk_release(c[i]);
    }
    for (int k = 1; k <= 3; k++) {
        /* Events go out after the work, on the thread that did it: the
         * connector's CREATE may come after the releaser's DESTROY. */
        WAIT_UNTIL(events_of(g_destroyed, k) == 1 && events_of(g_created, k) == 1, 5000);
    }
    assert_int_equal(events_of(g_created, 0) + events_of(g_destroyed, 0), 0);
    tk_pool_destroy(p);
}

/* Creating a pool with several nodes, every allocation failing in turn:
 * SURPOOL_ERR_NOMEM, nothing leaked (ASan), then success. */
static atomic_long g_allocs, g_fail_at;
static void *nth_malloc(size_t n)
{
    return atomic_fetch_add(&g_allocs, 1) + 1 == atomic_load(&g_fail_at) ? NULL : malloc(n);
}
static void *nth_realloc(void *p, size_t n)
{
    return atomic_fetch_add(&g_allocs, 1) + 1 == atomic_load(&g_fail_at) ? NULL : realloc(p, n);
}

static void test_create_nomem(void **state)
{
    (void)state;
    surpool_config cfg;
    base_config(&cfg, "ws://u:p@127.0.0.1:1,127.0.0.1:2/rpc?ns=a&db=b");
    const char *more[] = {"ws://127.0.0.1:3"};
    cfg.endpoints = more;
    cfg.nendpoints = 1;
    cfg.maintenance_interval_ms = 60000;
    long n;
    for (n = 1; n < 500; n++) {
        atomic_store(&g_allocs, 0);
        atomic_store(&g_fail_at, n);
        surpool_set_allocator(nth_malloc, nth_realloc, free);
        surpool_pool *p = NULL;
        surpool_error err;
        surpool_err rc = surpool__pool_create_with(&cfg, &fake_transport_ops, &g_fs, &p, &err);
        surpool_set_allocator(NULL, NULL, NULL);
        if (rc == SURPOOL_OK) {
            assert_int_equal(surpool_pool_endpoint_count(p), 3);
            surpool_pool_destroy(p);
            break;
        }
        assert_int_equal(rc, SURPOOL_ERR_NOMEM);
        assert_null(p);
    }
    assert_true(n > 10 && n < 500); /* every step of reading the nodes was failed once */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_least_connections_spreads, setup, tk_teardown),
        cmocka_unit_test_setup_teardown(test_round_robin_alternates, setup, tk_teardown),
        cmocka_unit_test_setup_teardown(test_ordered_uses_first_healthy, setup, tk_teardown),
        cmocka_unit_test_setup_teardown(test_unavailable_only_when_all_down, setup,
                                        tk_teardown),
        cmocka_unit_test_setup_teardown(test_rebalance_moves_idle, setup, tk_teardown),
        cmocka_unit_test_setup_teardown(test_all_down_then_one_back, setup, tk_teardown),
        cmocka_unit_test_setup_teardown(test_rebalance_ordered_fails_back_without_churn, setup,
                                        tk_teardown),
        cmocka_unit_test_setup_teardown(test_rebalance_skips_failing_node, setup, tk_teardown),
        cmocka_unit_test_setup_teardown(test_probe_leaves_waiter_slot, setup, tk_teardown),
        cmocka_unit_test_setup_teardown(test_config_endpoints, setup, tk_teardown),
        cmocka_unit_test_setup_teardown(test_events_name_the_node, setup, tk_teardown),
        cmocka_unit_test_setup_teardown(test_create_nomem, setup, tk_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
