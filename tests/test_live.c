/*
 * Live queries (surpool_live_start/kill, docs/live.md) against the real
 * SurrealDB core behind our test server, in the wire format SURPOOL_TEST_WIRE
 * names (tests/CMakeLists.txt runs it once per format, and once on the 2.x
 * core). Every event a callback gets is recorded (a json array under a mutex)
 * and the test waits, bounded, for what it expects.
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

#include <cmocka.h>

#include "fake_transport.h"
#include "harness.h"
#include "live.h"
#include "pool.h"
#include "testkit.h"

static test_server g_server;
static const char *const g_args[] = {"--user", "root", "--pass", "root", NULL};

static int group_setup(void **state)
{
    (void)state;
    return harness_start_root(&g_server);
}

static int group_teardown(void **state)
{
    (void)state;
    harness_stop(&g_server);
    return 0;
}

static surpool_pool *make_pool_cfg(long max_lifetime_ms, int live_queue_max)
{
    surpool_config cfg;
    harness_root_config(&cfg, g_server.url, "live");
    cfg.max_connections = 6;
    cfg.acquire_timeout_ms = 20000;
    cfg.request_timeout_ms = 10000;
    cfg.reconnect_backoff_max_ms = 300;
    cfg.breaker_threshold = 0;
    if (max_lifetime_ms > 0)
        cfg.max_lifetime_ms = max_lifetime_ms;
    cfg.live_queue_max = live_queue_max;
    return tk_pool_create(&cfg);
}

static surpool_pool *make_pool(void)
{
    return make_pool_cfg(0, 0);
}

static void q(surpool_pool *p, const char *sql)
{
    json_t *r = NULL;
    surpool_error err;
    if (surpool_query(p, sql, NULL, &r, &err) != SURPOOL_OK)
        fail_msg("query %s: %s", sql, err.message);
    if (surpool_query_check(r, &err) != SURPOOL_OK)
        fail_msg("query %s: %s", sql, err.message);
    json_decref(r);
}

/* ---- the recorder: every event as {"type", "id", "result", "dropped", "code", "live"} */

typedef struct rec {
    pthread_mutex_t mu;
    json_t *events;
    int block_first;       /* the first callback waits until `release` */
    volatile int released; /* guarded by mu */
    int kill_on_first;
} rec;

static void rec_init(rec *r)
{
    memset(r, 0, sizeof(*r));
    pthread_mutex_init(&r->mu, NULL);
    r->events = json_array();
}

static void rec_free(rec *r)
{
    json_decref(r->events);
    pthread_mutex_destroy(&r->mu);
}

static const char *type_name(surpool_live_event_type t)
{
    switch (t) {
    case SURPOOL_LIVE_CREATE: return "CREATE";
    case SURPOOL_LIVE_UPDATE: return "UPDATE";
    case SURPOOL_LIVE_DELETE: return "DELETE";
    case SURPOOL_LIVE_KILLED: return "KILLED";
    case SURPOOL_LIVE_RESUBSCRIBED: return "RESUBSCRIBED";
    case SURPOOL_LIVE_OVERFLOW: return "OVERFLOW";
    case SURPOOL_LIVE_CLOSED: return "CLOSED";
    }
    return "?";
}

static void on_live(void *ud, surpool_live *live, const surpool_live_event *ev)
{
    rec *r = ud;
    json_t *idtext = NULL;
    if (ev->record_id != NULL && surpool_value_text(ev->record_id, &idtext, NULL) != SURPOOL_OK)
        idtext = NULL;
    json_t *e =
        json_pack("{s:s, s:o*, s:O*, s:I, s:i, s:s}", "type", type_name(ev->type), "id", idtext,
                  "result", ev->result, "dropped", (json_int_t)ev->dropped, "code",
                  (int)ev->code, "live", ev->live_id != NULL ? ev->live_id : "");
    assert_non_null(e);
    pthread_mutex_lock(&r->mu);
    int first = json_array_size(r->events) == 0;
    json_array_append_new(r->events, e);
    int block = first && r->block_first;
    pthread_mutex_unlock(&r->mu);
    if (block) {
        int ok;
        TK_POLL(ok, __atomic_load_n(&r->released, __ATOMIC_ACQUIRE), 20000);
        (void)ok;
    }
    if (first && r->kill_on_first)
        surpool_live_kill(live);
}

static int rec_count(rec *r, const char *type)
{
    pthread_mutex_lock(&r->mu);
    int n = 0;
    size_t i;
    json_t *e;
    json_array_foreach(r->events, i,
                       e) if (strcmp(json_string_value(json_object_get(e, "type")), type) == 0)
        n++;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* The sum of the OVERFLOW counts. */
static json_int_t rec_dropped(rec *r)
{
    pthread_mutex_lock(&r->mu);
    json_int_t n = 0;
    size_t i;
    json_t *e;
    json_array_foreach(r->events, i, e) n += json_integer_value(json_object_get(e, "dropped"));
    pthread_mutex_unlock(&r->mu);
    return n;
}

static int rec_size(rec *r)
{
    pthread_mutex_lock(&r->mu);
    int n = (int)json_array_size(r->events);
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* A copy of event i (a new reference). */
static json_t *rec_get(rec *r, size_t i)
{
    pthread_mutex_lock(&r->mu);
    json_t *e = json_deep_copy(json_array_get(r->events, i));
    pthread_mutex_unlock(&r->mu);
    assert_non_null(e);
    return e;
}

/* SurrealDB 3 refuses a live query on a table that does not exist. */
static void define_table(surpool_pool *p, const char *table)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "DEFINE TABLE IF NOT EXISTS %s SCHEMALESS", table);
    q(p, sql);
}

static surpool_live *start_table(surpool_pool *p, const char *table, int diff, rec *r)
{
    define_table(p, table);
    surpool_live_options o;
    surpool_live_options_init(&o);
    o.table = table;
    o.diff = diff;
    surpool_live *l = NULL;
    surpool_error err;
    surpool_err rc = surpool_live_start(p, &o, on_live, r, &l, &err);
    if (rc != SURPOOL_OK)
        fail_msg("live start on %s: %s: %s", table, surpool_err_name(rc), err.message);
    return l;
}

static void expect_event(rec *r, size_t i, const char *type, const char *id)
{
    json_t *e = rec_get(r, i);
    const char *t = json_string_value(json_object_get(e, "type"));
    if (strcmp(t, type) != 0) {
        pthread_mutex_lock(&r->mu);
        char *all = json_dumps(r->events, JSON_COMPACT);
        pthread_mutex_unlock(&r->mu);
        fprintf(stderr, "events: %s\n", all != NULL ? all : "?");
        free(all);
        fail_msg("event %zu is %s, expected %s", i, t, type);
    }
    if (id != NULL) {
        const char *got = json_string_value(json_object_get(e, "id"));
        if (got == NULL || strcmp(got, id) != 0)
            fail_msg("event %zu (%s) record id %s, expected %s", i, t, got ? got : "(none)",
                     id);
    }
    json_decref(e);
}

/* ------------------------------------------------------------------------- */

static void test_crud_in_order(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    rec r;
    rec_init(&r);
    surpool_live *l = start_table(p, "crud", 0, &r);
    /* One write at a time: the core may send the notifications of separate
     * transactions out of commit order (docs/live.md). */
    q(p, "CREATE crud:1 SET v = 1");
    WAIT_UNTIL(rec_size(&r) >= 1, 10000);
    q(p, "UPDATE crud:1 SET v = 2");
    WAIT_UNTIL(rec_size(&r) >= 2, 10000);
    q(p, "DELETE crud:1");
    WAIT_UNTIL(rec_size(&r) >= 3, 10000);
    expect_event(&r, 0, "CREATE", "crud:1");
    expect_event(&r, 1, "UPDATE", "crud:1");
    expect_event(&r, 2, "DELETE", "crud:1");
    json_t *e = rec_get(&r, 1);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(e, "result"), "v")), 2);
    json_decref(e);
    e = rec_get(&r, 0);
    const char *live_id = json_string_value(json_object_get(e, "live"));
    assert_int_equal(strlen(live_id), 36);
    json_decref(e);
    surpool_live_kill(l);
    WAIT_UNTIL(rec_count(&r, "CLOSED") == 1, 10000);
    expect_event(&r, 3, "CLOSED", NULL);
    tk_pool_destroy(p);
    rec_free(&r);
}

/* 200 changes in one transaction arrive in order. */
static void test_order(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    rec r;
    rec_init(&r);
    surpool_live *l = start_table(p, "ordert", 0, &r);
    q(p, "BEGIN; CREATE ordert:1 SET v = 0; FOR $i IN 1..=200 { UPDATE ordert:1 SET v = $i }; "
         "COMMIT");
    WAIT_UNTIL(rec_size(&r) >= 201, 10000);
    for (size_t i = 0; i <= 200; i++) {
        json_t *e = rec_get(&r, i);
        json_int_t v = json_integer_value(json_object_get(json_object_get(e, "result"), "v"));
        if (v != (json_int_t)i)
            fail_msg("notification %zu carries v = %lld", i, (long long)v);
        json_decref(e);
    }
    surpool_live_kill(l);
    tk_pool_destroy(p);
    rec_free(&r);
}

static void test_diff(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    rec r;
    rec_init(&r);
    surpool_live *l = start_table(p, "difft", 1, &r);
    q(p, "CREATE difft:1 SET v = 1");
    WAIT_UNTIL(rec_size(&r) >= 1, 10000); /* separate transactions: see test_crud */
    q(p, "UPDATE difft:1 SET v = 5");
    WAIT_UNTIL(rec_size(&r) >= 2, 10000);
    expect_event(&r, 1, "UPDATE", "difft:1");
    json_t *e = rec_get(&r, 1);
    json_t *ops = json_object_get(e, "result");
    if (!json_is_array(ops) || json_array_size(ops) == 0)
        fail_msg("DIFF notification result is not an array of patch operations");
    json_t *op = json_array_get(ops, 0);
    assert_string_equal(json_string_value(json_object_get(op, "op")), "replace");
    assert_string_equal(json_string_value(json_object_get(op, "path")), "/v");
    json_decref(e);
    surpool_live_kill(l);
    tk_pool_destroy(p);
    rec_free(&r);
}

static void test_sql_with_var(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    rec r;
    rec_init(&r);
    surpool_live_options o;
    surpool_live_options_init(&o);
    define_table(p, "sqlt");
    o.sql = "LIVE SELECT * FROM sqlt WHERE v > $min";
    json_t *vars = json_pack("{s:i}", "min", 10);
    o.vars = vars;
    surpool_live *l = NULL;
    surpool_error err;
    surpool_err rc = surpool_live_start(p, &o, on_live, &r, &l, &err);
    json_decref(vars); /* copied */
    if (harness_core_major() == 2) {
        /* The 2.x core does not keep the statement's variables for the live
         * query: refused rather than delivering every record. */
        assert_int_equal(rc, SURPOOL_ERR_UNSUPPORTED);
        tk_pool_destroy(p);
        rec_free(&r);
        return;
    }
    if (rc != SURPOOL_OK)
        fail_msg("live start: %s", err.message);
    /* In one transaction, so that a (wrong) notification of sqlt:1 would
     * come first: the core keeps the order inside a transaction. */
    q(p, "BEGIN; CREATE sqlt:1 SET v = 5; CREATE sqlt:2 SET v = 20; CREATE sqlt:3 SET v = 30; "
         "COMMIT");
    WAIT_UNTIL(rec_size(&r) >= 2, 10000);
    expect_event(&r, 0, "CREATE", "sqlt:2");
    expect_event(&r, 1, "CREATE", "sqlt:3");
    surpool_live_kill(l);
    WAIT_UNTIL(rec_count(&r, "CLOSED") == 1, 10000);
    assert_int_equal(rec_count(&r, "CREATE"), 2);
    tk_pool_destroy(p);
    rec_free(&r);
}

static void test_bad_input(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    rec r;
    rec_init(&r);
    surpool_live_options o;
    surpool_live *l = NULL;
    surpool_error err;
    surpool_live_options_init(&o);
    assert_int_equal(surpool_live_start(p, &o, on_live, &r, &l, &err), SURPOOL_ERR_INVALID_ARG);
    o.table = "x";
    o.sql = "LIVE SELECT * FROM x";
    assert_int_equal(surpool_live_start(p, &o, on_live, &r, &l, &err), SURPOOL_ERR_INVALID_ARG);
    o.sql = NULL;
    assert_int_equal(surpool_live_start(p, &o, NULL, &r, &l, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_live_start(p, &o, on_live, &r, NULL, &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_live_start(NULL, &o, on_live, &r, &l, &err),
                     SURPOOL_ERR_INVALID_ARG);
    o.queue_max = -1;
    assert_int_equal(surpool_live_start(p, &o, on_live, &r, &l, &err), SURPOOL_ERR_INVALID_ARG);
    surpool_live_options_init(&o);
    o.sql = "LIVE SELEC nonsense";
    assert_int_equal(surpool_live_start(p, &o, on_live, &r, &l, &err), SURPOOL_ERR_SERVER);
    o.sql = "RETURN 1";
    assert_int_equal(surpool_live_start(p, &o, on_live, &r, &l, &err), SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "LIVE SELECT"));
    assert_null(l);
    surpool_live_kill(NULL);
    tk_pool_destroy(p);
    assert_int_equal(rec_size(&r), 0); /* a failed start never calls back */
    rec_free(&r);
}

#define MANY 1000

static void test_thousand(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    rec r;
    rec_init(&r);
    surpool_live *l[MANY];
    for (int i = 0; i < MANY; i++)
        l[i] = start_table(p, "many", 0, &r);
    q(p, "CREATE many:1 SET v = 1");
    WAIT_UNTIL(rec_count(&r, "CREATE") == MANY, 20000);
    surpool_stats st;
    surpool_pool_stats(p, &st);
    /* 1000 fit on one carrier (live_max_per_connection) next to the lane. */
    assert_true(st.in_use <= 3);
    for (int i = 0; i < MANY; i++)
        surpool_live_kill(l[i]);
    WAIT_UNTIL(rec_count(&r, "CLOSED") == MANY, 20000);
    tk_pool_destroy(p);
    rec_free(&r);
}

static void test_kill(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    rec r, witness;
    rec_init(&r);
    rec_init(&witness);
    surpool_live *l = start_table(p, "killt", 0, &r);
    surpool_live *w = start_table(p, "killt", 0, &witness);
    q(p, "CREATE killt:1");
    WAIT_UNTIL(rec_count(&r, "CREATE") == 1, 10000);
    surpool_live_kill(l);
    surpool_live_kill(l); /* a second kill is detected and ignored */
    WAIT_UNTIL(rec_count(&r, "CLOSED") == 1, 10000);
    json_t *e = rec_get(&r, 1);
    assert_string_equal(json_string_value(json_object_get(e, "type")), "CLOSED");
    assert_int_equal(json_integer_value(json_object_get(e, "code")), SURPOOL_OK);
    json_decref(e);
    q(p, "CREATE killt:2");
    /* The witness, on the same table, sees it: the killed one would have too. */
    WAIT_UNTIL(rec_count(&witness, "CREATE") == 2, 10000);
    tk_sleep_ms(50);
    assert_int_equal(rec_size(&r), 2);
    surpool_live_kill(w);
    tk_pool_destroy(p);
    rec_free(&r);
    rec_free(&witness);
}

static void test_kill_in_callback(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    rec r;
    rec_init(&r);
    r.kill_on_first = 1;
    start_table(p, "killcb", 0, &r); /* freed by its kill (from the callback) */
    q(p, "CREATE killcb:1");
    q(p, "CREATE killcb:2");
    WAIT_UNTIL(rec_count(&r, "CLOSED") == 1, 10000);
    assert_int_equal(rec_count(&r, "CREATE"), 1);
    expect_event(&r, 1, "CLOSED", NULL);
    tk_pool_destroy(p);
    rec_free(&r);
}

static void test_restart(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    rec r;
    rec_init(&r);
    surpool_live *l = start_table(p, "restartt", 0, &r);
    q(p, "CREATE restartt:1");
    WAIT_UNTIL(rec_count(&r, "CREATE") == 1, 10000);
    harness_kill9(&g_server);
    if (harness_restart(&g_server, "server.mjs", g_server.port, g_args) != 0)
        fail_msg("the test server did not come back on port %d", g_server.port);
    /* The restarted core starts empty: the table must exist again before the
     * live query can be started again (refusals are retried with backoff). */
    define_table(p, "restartt");
    WAIT_UNTIL(rec_count(&r, "RESUBSCRIBED") == 1, 30000);
    q(p, "CREATE restartt:2");
    WAIT_UNTIL(rec_count(&r, "CREATE") == 2, 10000);
    expect_event(&r, 1, "RESUBSCRIBED", NULL);
    expect_event(&r, 2, "CREATE", "restartt:2");
    json_t *a = rec_get(&r, 0), *b = rec_get(&r, 2);
    assert_string_not_equal(json_string_value(json_object_get(a, "live")),
                            json_string_value(json_object_get(b, "live")));
    json_decref(a);
    json_decref(b);
    surpool_live_kill(l); /* kills the new id */
    WAIT_UNTIL(rec_count(&r, "CLOSED") == 1, 10000);
    tk_pool_destroy(p);
    rec_free(&r);
}

/* Killed while its carrier is dead and the pool cannot reconnect: CLOSED at
 * once, nothing started again later, nothing leaked (ASan). */
static void test_kill_while_down(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    rec r;
    rec_init(&r);
    surpool_live *l = start_table(p, "downt", 0, &r);
    harness_kill9(&g_server);
    tk_sleep_ms(100); /* let the worker see the death and start retrying */
    surpool_live_kill(l);
    WAIT_UNTIL(rec_count(&r, "CLOSED") == 1, 10000);
    if (harness_restart(&g_server, "server.mjs", g_server.port, g_args) != 0)
        fail_msg("the test server did not come back on port %d", g_server.port);
    tk_pool_destroy(p);
    assert_int_equal(rec_size(&r), 1);
    rec_free(&r);
}

static void test_overflow(void **state)
{
    (void)state;
    surpool_pool *p = make_pool_cfg(0, 4);
    rec r;
    rec_init(&r);
    r.block_first = 1;
    surpool_live *l = start_table(p, "overt", 0, &r);
    q(p, "FOR $i IN 1..=20 { CREATE overt SET n = $i }");
    /* The first is in the (blocked) callback; at most 4 wait (usually 4 and
     * 15 dropped; 3 and 16 when all 20 arrived before the delivery thread
     * took the first); the rest were dropped. Memory: the bound. The counts
     * are final only once the first is in the callback: before that, 4
     * queued and 15 dropped also add up to 19 while the 20th is on its way,
     * and it may still be dropped before the first is taken (then 3 are
     * delivered after it, not 4). */
    size_t queued = 0;
    uint64_t dropped = 0;
    WAIT_UNTIL((surpool__live_counts(l, &queued, &dropped),
                rec_size(&r) == 1 && queued + dropped == 19),
               10000);
    assert_true(queued <= 4 && queued >= 3);
    __atomic_store_n(&r.released, 1, __ATOMIC_RELEASE);
    /* Delivered: the first and the queued ones, and OVERFLOW events saying
     * exactly which were not: each one's count is the gap in n before the
     * next delivered record. */
    WAIT_UNTIL(rec_count(&r, "CREATE") == 1 + (int)queued, 10000);
    WAIT_UNTIL(rec_dropped(&r) == (json_int_t)dropped, 10000);
    json_int_t next = 1;
    json_int_t pending_gap = 0;
    for (size_t i = 0; i < (size_t)rec_size(&r); i++) {
        json_t *e = rec_get(&r, i);
        const char *t = json_string_value(json_object_get(e, "type"));
        if (strcmp(t, "OVERFLOW") == 0) {
            pending_gap += json_integer_value(json_object_get(e, "dropped"));
        } else {
            assert_string_equal(t, "CREATE");
            json_int_t n =
                json_integer_value(json_object_get(json_object_get(e, "result"), "n"));
            if (n - next != pending_gap)
                fail_msg("record n=%lld after an OVERFLOW of %lld (expected n=%lld)",
                         (long long)n, (long long)pending_gap, (long long)(next + pending_gap));
            next = n + 1;
            pending_gap = 0;
        }
        json_decref(e);
    }
    assert_int_equal(next - 1 + pending_gap, 20);
    /* The queue works again after the overflow. */
    q(p, "CREATE overt SET n = 21");
    WAIT_UNTIL(rec_count(&r, "CREATE") == 2 + (int)queued, 10000);
    surpool_live_kill(l);
    tk_pool_destroy(p);
    rec_free(&r);
}

static void test_destroy_active(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    rec r;
    rec_init(&r);
    for (int i = 0; i < 3; i++)
        start_table(p, "destroyt", 0, &r); /* freed by destroy */
    q(p, "CREATE destroyt:1");
    WAIT_UNTIL(rec_count(&r, "CREATE") == 3, 10000);
    tk_pool_destroy(p);
    /* Every handle got its last event before destroy returned. */
    assert_int_equal(rec_count(&r, "CLOSED"), 3);
    pthread_mutex_lock(&r.mu);
    size_t i;
    json_t *e;
    json_array_foreach(r.events, i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "type")), "CLOSED") == 0)
            assert_int_equal(json_integer_value(json_object_get(e, "code")),
                             SURPOOL_ERR_CLOSED);
    }
    pthread_mutex_unlock(&r.mu);
    rec_free(&r);
}

/* A writer numbers its records while the carrier passes max_lifetime_ms: every
 * number arrives (duplicates allowed), and the live id changed. */
static void test_lifetime_no_gap(void **state)
{
    (void)state;
    surpool_pool *p = make_pool_cfg(1200, 0);
    rec r;
    rec_init(&r);
    surpool_live *l = start_table(p, "lifet", 0, &r);
    int n = 0;
    int64_t end = tk_now_ms() + 3000;
    while (tk_now_ms() < end) {
        char sql[64];
        snprintf(sql, sizeof(sql), "CREATE lifet SET n = %d", ++n);
        q(p, sql);
        tk_sleep_ms(10);
    }
    WAIT_UNTIL(rec_count(&r, "CREATE") >= n, 10000);
    char *seen = calloc((size_t)n + 1, 1);
    assert_non_null(seen);
    int changes = 0;
    char first_id[40] = "";
    pthread_mutex_lock(&r.mu);
    size_t i;
    json_t *e;
    json_array_foreach(r.events, i, e)
    {
        const char *t = json_string_value(json_object_get(e, "type"));
        if (strcmp(t, "CREATE") != 0)
            fail_msg("event %zu is %s during lifetime turnover", i, t);
        json_int_t k = json_integer_value(json_object_get(json_object_get(e, "result"), "n"));
        if (k >= 1 && k <= n)
            seen[k] = 1;
        const char *live = json_string_value(json_object_get(e, "live"));
        if (first_id[0] == '\0')
            snprintf(first_id, sizeof(first_id), "%s", live);
        else if (strcmp(first_id, live) != 0)
            changes = 1;
    }
    pthread_mutex_unlock(&r.mu);
    for (int k = 1; k <= n; k++)
        if (!seen[k])
            fail_msg("record %d of %d was never delivered (a gap at turnover)", k, n);
    free(seen);
    if (!changes)
        fail_msg("the live query never moved (max_lifetime_ms 1200, ran 3 s)");
    surpool_live_kill(l);
    tk_pool_destroy(p);
    rec_free(&r);
}

/* Fake transport: the server's first notification arrives (routed by the
 * service thread) before the reply to `live` was handled. It must be kept
 * and delivered first, not dropped as an unknown id. */
#define RACE_ID "0e6a1c5e-6f0b-4c1e-9d3a-2b9f4b1d7a10"
static surpool_pool *g_race_pool;

static json_t *race_responder(void *ud, json_int_t id, const char *method, json_t *params)
{
    if (strcmp(method, "live") == 0) {
        /* Two notifications on the socket the `live` is in flight on, before
         * its reply: the second in upper case (ids compare canonically). */
        surpool__live_mgr *m = g_race_pool->live;
        const void *conn = surpool__live_starting_conn(m);
        for (int i = 1; i <= 2; i++) {
            json_t *f =
                json_pack("{s:{s:s, s:s, s:s, s:{s:i}}}", "result", "action", "CREATE", "id",
                          i == 1 ? RACE_ID : "0E6A1C5E-6F0B-4C1E-9D3A-2B9F4B1D7A10", "record",
                          i == 1 ? "race:1" : "race:2", "result", "n", i);
            surpool__live_notify(m, conn, f);
            json_decref(f);
        }
        /* And one for an id nobody asked for: freed, never delivered. */
        json_t *f =
            json_pack("{s:{s:s, s:s, s:s, s:{}}}", "result", "action", "CREATE", "id",
                      "11111111-2222-3333-4444-555555555555", "record", "other:1", "result");
        surpool__live_notify(m, conn, f);
        json_decref(f);
        return json_pack("{s:I, s:s}", "id", id, "result", RACE_ID);
    }
    return fake_default_responder(ud, id, method, params);
}

static void test_notification_before_reply(void **state)
{
    (void)state;
    fake_settings fs;
    fake_settings_init(&fs);
    fs.responder = race_responder;
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = 3;
    surpool_error err;
    if (surpool__pool_create_with(&cfg, &fake_transport_ops, &fs, &g_race_pool, &err) !=
        SURPOOL_OK)
        fail_msg("create: %s", err.message);
    tk_pool_track(g_race_pool);
    rec r;
    rec_init(&r);
    surpool_live_options o;
    surpool_live_options_init(&o);
    o.table = "race";
    surpool_live *l = NULL;
    if (surpool_live_start(g_race_pool, &o, on_live, &r, &l, &err) != SURPOOL_OK)
        fail_msg("live start: %s", err.message);
    WAIT_UNTIL(rec_count(&r, "CREATE") == 2, 10000);
    expect_event(&r, 0, "CREATE", "race:1");
    expect_event(&r, 1, "CREATE", "race:2");
    surpool_live_kill(l);
    WAIT_UNTIL(rec_count(&r, "CLOSED") == 1, 10000);
    assert_int_equal(rec_size(&r), 3); /* other:1 was not delivered */
    tk_pool_destroy(g_race_pool);
    rec_free(&r);
}

/* ---- hostile input, on the fake transport (fast, no server) ---- */

#define STRAY_A "aaaaaaaa-0000-4000-8000-000000000001"
#define STRAY_B "aaaaaaaa-0000-4000-8000-000000000002"
static atomic_int g_fake_queries, g_fake_kills;
static pthread_mutex_t g_fake_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_fake_killed[512];

/* `query` answers two statements that each started a live query; `kill`
 * records the id. */
static json_t *stray_responder(void *ud, json_int_t id, const char *method, json_t *params)
{
    if (strcmp(method, "query") == 0) {
        atomic_fetch_add(&g_fake_queries, 1);
        return json_pack("{s:I, s:[{s:s, s:s}, {s:s, s:s}]}", "id", id, "result", "status",
                         "OK", "result", STRAY_A, "status", "OK", "result", STRAY_B);
    }
    if (strcmp(method, "kill") == 0) {
        pthread_mutex_lock(&g_fake_mu);
        strncat(g_fake_killed, json_string_value(json_array_get(params, 0)),
                sizeof(g_fake_killed) - strlen(g_fake_killed) - 1);
        pthread_mutex_unlock(&g_fake_mu);
        atomic_fetch_add(&g_fake_kills, 1);
        return json_pack("{s:I, s:n}", "id", id, "result");
    }
    return fake_default_responder(ud, id, method, params);
}

static surpool_pool *fake_pool(fake_settings *fs, fake_responder_fn fn)
{
    fake_settings_init(fs);
    fs->responder = fn;
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = 3;
    surpool_pool *p = NULL;
    surpool_error err;
    if (surpool__pool_create_with(&cfg, &fake_transport_ops, fs, &p, &err) != SURPOOL_OK)
        fail_msg("create: %s", err.message);
    return tk_pool_track(p);
}

/* Text that is not a LIVE statement is refused before anything is sent (it
 * would run: CREATE writes, RETURN <uuid> looks like a live id); a table or
 * statement that is not UTF-8 is a bad argument, not "out of memory". */
static void test_refused_before_sending(void **state)
{
    (void)state;
    fake_settings fs;
    atomic_store(&g_fake_queries, 0);
    surpool_pool *p = fake_pool(&fs, stray_responder);
    rec r;
    rec_init(&r);
    surpool_live_options o;
    surpool_live *l = NULL;
    surpool_error err;
    static const char *const texts[] = {
        "CREATE t:1", "RETURN '" STRAY_A "'",      "  -- LIVE\n SELECT * FROM t", "LIVELY",
        "",           "/* LIVE SELECT */ RETURN 1"};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        surpool_live_options_init(&o);
        o.sql = texts[i];
        surpool_err rc = surpool_live_start(p, &o, on_live, &r, &l, &err);
        if (rc != SURPOOL_ERR_INVALID_ARG)
            fail_msg("sql \"%s\": %s, expected SURPOOL_ERR_INVALID_ARG", texts[i],
                     surpool_err_name(rc));
    }
    assert_int_equal(atomic_load(&g_fake_queries), 0);
    surpool_live_options_init(&o);
    o.table = "t\xff\xfe";
    assert_int_equal(surpool_live_start(p, &o, on_live, &r, &l, &err), SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "UTF-8"));
    surpool_live_options_init(&o);
    o.sql = "LIVE SELECT * FROM \xc3\x28";
    assert_int_equal(surpool_live_start(p, &o, on_live, &r, &l, &err), SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "UTF-8"));
    assert_null(l);
    /* Comments and case before LIVE are fine: it is sent. */
    surpool_live_options_init(&o);
    o.sql = "/* c */ -- d\n # e\n live select * from t";
    assert_int_equal(surpool_live_start(p, &o, on_live, &r, &l, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(atomic_load(&g_fake_queries), 1); /* (two statements: see below) */
    tk_pool_destroy(p);
    assert_int_equal(rec_size(&r), 0);
    rec_free(&r);
}

/* `LIVE SELECT ...; LIVE SELECT ...` is refused (one statement only), and the
 * live queries the server started for it are killed, not left on the carrier. */
static void test_multi_statement_killed(void **state)
{
    (void)state;
    fake_settings fs;
    atomic_store(&g_fake_kills, 0);
    g_fake_killed[0] = '\0';
    surpool_pool *p = fake_pool(&fs, stray_responder);
    rec r;
    rec_init(&r);
    surpool_live_options o;
    surpool_live_options_init(&o);
    o.sql = "LIVE SELECT * FROM a; LIVE SELECT * FROM b";
    surpool_live *l = NULL;
    surpool_error err;
    assert_int_equal(surpool_live_start(p, &o, on_live, &r, &l, &err), SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "2 statements"));
    WAIT_UNTIL(atomic_load(&g_fake_kills) == 2, 10000);
    pthread_mutex_lock(&g_fake_mu);
    assert_non_null(strstr(g_fake_killed, STRAY_A));
    assert_non_null(strstr(g_fake_killed, STRAY_B));
    pthread_mutex_unlock(&g_fake_mu);
    tk_pool_destroy(p);
    assert_int_equal(rec_size(&r), 0);
    rec_free(&r);
}

/* A hostile server: while a `live` is in flight, 10000 notifications for ids
 * nobody asked for (the buffer for "notification before reply" stays bounded
 * and is emptied by the reply); then malformed notification frames of every
 * shape for the live query: never a crash, only well-formed ones delivered. */
#define HOSTILE_ID "5a1d3c9e-0000-4000-8000-00000000beef"
static surpool_pool *g_hostile_pool;
static const void *g_hostile_conn;
static size_t g_orphans_peak;

static json_t *hostile_responder(void *ud, json_int_t id, const char *method, json_t *params)
{
    if (strcmp(method, "live") == 0) {
        surpool__live_mgr *m = g_hostile_pool->live;
        g_hostile_conn = surpool__live_starting_conn(m);
        for (int i = 0; i < 10000; i++) {
            char uid[40];
            snprintf(uid, sizeof(uid), "%08x-0000-4000-8000-000000000000", (unsigned)i);
            json_t *f = json_pack("{s:{s:s, s:s, s:s, s:[i]}}", "result", "action", "UPDATE",
                                  "id", uid, "record", "x:1", "result", i);
            surpool__live_notify(m, g_hostile_conn, f);
            json_decref(f);
        }
        g_orphans_peak = surpool__live_orphans(m);
        return json_pack("{s:I, s:s}", "id", id, "result", HOSTILE_ID);
    }
    return fake_default_responder(ud, id, method, params);
}

static void test_hostile_notifications(void **state)
{
    (void)state;
    fake_settings fs;
    g_hostile_pool = fake_pool(&fs, hostile_responder);
    surpool__live_mgr *m = g_hostile_pool->live;
    rec r;
    rec_init(&r);
    surpool_live_options o;
    surpool_live_options_init(&o);
    o.table = "h";
    surpool_live *l = NULL;
    surpool_error err;
    if (surpool_live_start(g_hostile_pool, &o, on_live, &r, &l, &err) != SURPOOL_OK)
        fail_msg("live start: %s", err.message);
    if (g_orphans_peak == 0 || g_orphans_peak > 4096)
        fail_msg("%zu notifications kept for unknown ids (bound 4096)", g_orphans_peak);
    assert_int_equal(surpool__live_orphans(m), 0); /* freed once the reply was handled */
    static const char *const frames[] = {
        "null",
        "[]",
        "\"x\"",
        "{}",
        "{\"result\":null}",
        "{\"result\":[1,2]}",
        "{\"result\":{\"id\":\"" HOSTILE_ID "\"}}",
        "{\"result\":{\"id\":\"" HOSTILE_ID "\",\"action\":7}}",
        "{\"result\":{\"id\":\"" HOSTILE_ID "\",\"action\":\"EXPLODE\"}}",
        "{\"result\":{\"id\":17,\"action\":\"CREATE\"}}",
        "{\"result\":{\"id\":\"5a1d3c9e\",\"action\":\"CREATE\"}}",
        "{\"result\":{\"id\":{\"$surreal\":\"uuid\",\"value\":3},\"action\":\"CREATE\"}}",
        "{\"result\":{\"id\":{\"$surreal\":\"record\",\"value\":\"" HOSTILE_ID
        "\"},\"action\":\"CREATE\"}}",
        /* Well-formed enough to deliver: odd record and result shapes. */
        "{\"result\":{\"id\":\"" HOSTILE_ID "\",\"action\":\"CREATE\"}}",
        "{\"result\":{\"id\":\"" HOSTILE_ID
        "\",\"action\":\"UPDATE\",\"record\":[1,{\"a\":null}],\"result\":\"s\"}}",
        "{\"result\":{\"id\":{\"$surreal\":\"uuid\",\"value\":\"" HOSTILE_ID
        "\"},\"action\":\"DELETE\",\"record\":null,\"result\":1e300}}",
    };
    size_t n = sizeof(frames) / sizeof(frames[0]);
    for (size_t i = 0; i < n; i++) {
        json_error_t je;
        json_t *f = json_loads(frames[i], JSON_DECODE_ANY, &je);
        if (f == NULL)
            fail_msg("frame %zu does not parse: %s", i, je.text);
        surpool__live_notify(m, g_hostile_conn, f);
        json_decref(f);
    }
    /* A notification on another connection for an unknown id: dropped. */
    json_t *f = json_pack("{s:{s:s, s:s}}", "result", "action", "CREATE", "id",
                          "99999999-0000-4000-8000-000000000000");
    surpool__live_notify(m, &fs, f);
    json_decref(f);
    WAIT_UNTIL(rec_size(&r) == 3, 10000);
    expect_event(&r, 0, "CREATE", NULL);
    expect_event(&r, 1, "UPDATE", NULL);
    expect_event(&r, 2, "DELETE", NULL);
    assert_int_equal(surpool__live_orphans(m), 0);
    surpool_live_kill(l);
    WAIT_UNTIL(rec_count(&r, "CLOSED") == 1, 10000);
    assert_int_equal(rec_size(&r), 4);
    tk_pool_destroy(g_hostile_pool);
    rec_free(&r);
}

/* A callback that blocks: the service thread never waits (four threads
 * routing 10000 notifications for it all return), the other live machinery
 * and the pool keep working (another live query starts, a pool query runs),
 * the bounded queue counts every drop exactly, and a destroy from another
 * thread waits for the callback, then delivers what was queued, the drops
 * and CLOSED. */
static atomic_int g_block_ids;

static json_t *block_responder(void *ud, json_int_t id, const char *method, json_t *params)
{
    if (strcmp(method, "live") == 0) {
        g_hostile_conn = surpool__live_starting_conn(g_hostile_pool->live);
        char uid[40];
        snprintf(uid, sizeof(uid), "b10c0000-0000-4000-8000-%012d",
                 atomic_fetch_add(&g_block_ids, 1));
        return json_pack("{s:I, s:s}", "id", id, "result", uid);
    }
    return fake_default_responder(ud, id, method, params);
}

#define FLOOD_THREADS 4
#define FLOOD_EACH 2500
#define FLOOD_QUEUE 100

static void *flood_main(void *arg)
{
    (void)arg;
    json_t *f = json_pack("{s:{s:s, s:s, s:s, s:{}}}", "result", "action", "UPDATE", "id",
                          "b10c0000-0000-4000-8000-000000000000", "record", "b:1", "result");
    for (int i = 0; i < FLOOD_EACH; i++)
        surpool__live_notify(g_hostile_pool->live, g_hostile_conn, f);
    json_decref(f);
    return NULL;
}

static void *destroy_main(void *arg)
{
    surpool_pool_destroy(arg);
    return NULL;
}

static void test_blocking_callback(void **state)
{
    (void)state;
    fake_settings fs;
    atomic_store(&g_block_ids, 0);
    g_hostile_pool = fake_pool(&fs, block_responder);
    surpool_pool *p = g_hostile_pool;
    rec a, b;
    rec_init(&a);
    rec_init(&b);
    a.block_first = 1;
    surpool_live_options o;
    surpool_live_options_init(&o);
    o.table = "b";
    o.queue_max = FLOOD_QUEUE;
    surpool_live *la = NULL, *lb = NULL;
    surpool_error err;
    if (surpool_live_start(p, &o, on_live, &a, &la, &err) != SURPOOL_OK)
        fail_msg("live start: %s", err.message);
    json_t *f = json_pack("{s:{s:s, s:s, s:s, s:{}}}", "result", "action", "CREATE", "id",
                          "b10c0000-0000-4000-8000-000000000000", "record", "b:0", "result");
    surpool__live_notify(p->live, g_hostile_conn, f);
    json_decref(f);
    WAIT_UNTIL(rec_size(&a) == 1, 10000); /* its callback is blocked now */

    pthread_t th[FLOOD_THREADS];
    for (int i = 0; i < FLOOD_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, flood_main, NULL), 0);
    for (int i = 0; i < FLOOD_THREADS; i++)
        JOIN_OR_FAIL(th[i], 20, "routing notifications while a callback blocks");
    size_t queued;
    uint64_t dropped;
    surpool__live_counts(la, &queued, &dropped);
    assert_int_equal(queued, FLOOD_QUEUE);
    assert_int_equal(dropped, FLOOD_THREADS * FLOOD_EACH - FLOOD_QUEUE);

    o.queue_max = 0;
    if (surpool_live_start(p, &o, on_live, &b, &lb, &err) != SURPOOL_OK)
        fail_msg("a second live start while a callback blocks: %s", err.message);
    json_t *out = NULL;
    if (surpool_query(p, "RETURN 1", NULL, &out, &err) != SURPOOL_OK)
        fail_msg("a pool query while a live callback blocks: %s", err.message);
    json_decref(out);

    for (int i = 0; i < TK_MAX_POOLS; i++) /* destroyed by the thread below */
        if (tk_pools[i] == p)
            tk_pools[i] = NULL;
    pthread_t d;
    assert_int_equal(pthread_create(&d, NULL, destroy_main, p), 0);
    tk_sleep_ms(100); /* destroy is waiting for the blocked callback (not asserted) */
    __atomic_store_n(&a.released, 1, __ATOMIC_RELEASE);
    JOIN_OR_FAIL(d, 30, "destroy while a live callback blocks");
    /* Everything accounted for: the first, the queued ones, the drops. */
    assert_int_equal(rec_count(&a, "CREATE") + rec_count(&a, "UPDATE") + rec_dropped(&a),
                     1 + FLOOD_THREADS * FLOOD_EACH);
    assert_int_equal(rec_count(&a, "UPDATE"), FLOOD_QUEUE);
    assert_int_equal(rec_count(&a, "CLOSED"), 1);
    assert_int_equal(rec_count(&b, "CLOSED"), 1);
    expect_event(&a, (size_t)rec_size(&a) - 1, "CLOSED", NULL);
    rec_free(&a);
    rec_free(&b);
}

/* Kills racing the carriers' deaths and the restarts (fake transport, TSan):
 * one thread kills every socket again and again while the test kills the
 * live queries one by one, some mid-restart. Each handle gets exactly one
 * CLOSED; destroy (ASan) frees the rest. */
#define RACE_N 40
static atomic_int g_race_closed[RACE_N], g_race_resub;
static atomic_int g_race_stop;

static void on_race(void *ud, surpool_live *live, const surpool_live_event *ev)
{
    (void)live;
    atomic_int *closed = ud;
    if (ev->type == SURPOOL_LIVE_CLOSED)
        atomic_fetch_add(closed, 1);
    if (ev->type == SURPOOL_LIVE_RESUBSCRIBED)
        atomic_fetch_add(&g_race_resub, 1);
}

static void *killer_main(void *arg)
{
    surpool_pool *p = arg;
    while (!atomic_load(&g_race_stop)) {
        fake_kill_all(p->transport);
        tk_sleep_ms(3);
    }
    return NULL;
}

static void test_kill_races_restart(void **state)
{
    (void)state;
    fake_settings fs;
    atomic_store(&g_block_ids, 0);
    atomic_store(&g_race_stop, 0);
    atomic_store(&g_race_resub, 0);
    fake_settings_init(&fs);
    fs.responder = block_responder;
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = 6;
    cfg.acquire_timeout_ms = 5000;
    cfg.live_max_per_connection = 16; /* three carriers */
    cfg.reconnect_backoff_min_ms = 1;
    cfg.reconnect_backoff_max_ms = 5;
    cfg.breaker_threshold = 0;
    surpool_error err;
    if (surpool__pool_create_with(&cfg, &fake_transport_ops, &fs, &g_hostile_pool, &err) !=
        SURPOOL_OK)
        fail_msg("create: %s", err.message);
    surpool_pool *p = tk_pool_track(g_hostile_pool);
    surpool_live *l[RACE_N];
    surpool_live_options o;
    surpool_live_options_init(&o);
    o.table = "r";
    for (int i = 0; i < RACE_N; i++) {
        atomic_store(&g_race_closed[i], 0);
        if (surpool_live_start(p, &o, on_race, &g_race_closed[i], &l[i], &err) != SURPOOL_OK)
            fail_msg("live start %d: %s", i, err.message);
    }
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, killer_main, p), 0);
    WAIT_UNTIL(atomic_load(&g_race_resub) > 0, 10000); /* restarts are under way */
    for (int i = 0; i < RACE_N; i += 2) {              /* half of them, while it runs */
        surpool_live_kill(l[i]);
        tk_sleep_ms(1);
    }
    atomic_store(&g_race_stop, 1);
    JOIN_OR_FAIL(th, 20, "the socket killer");
    for (int i = 0; i < RACE_N; i += 2)
        WAIT_UNTIL(atomic_load(&g_race_closed[i]) == 1, 10000);
    tk_pool_destroy(p); /* the other half: CLOSED at destroy */
    for (int i = 0; i < RACE_N; i++)
        if (atomic_load(&g_race_closed[i]) != 1)
            fail_msg("live %d got %d CLOSED events", i, atomic_load(&g_race_closed[i]));
}

/* From inside a live callback: pool destroy is refused (it would wait for
 * its own thread) and the pool keeps working; a live start there works; the
 * callback kills its own handle and the one it started. */
static surpool_live *g_nested;
static atomic_int g_nested_rc = -1, g_nested_closed;

static void on_nested(void *ud, surpool_live *live, const surpool_live_event *ev)
{
    surpool_pool *p = ud;
    if (ev->type == SURPOOL_LIVE_CLOSED) {
        atomic_fetch_add(&g_nested_closed, 1);
        return;
    }
    if (ev->type != SURPOOL_LIVE_CREATE || g_nested != NULL)
        return;
    surpool_pool_destroy(p); /* refused: logged, nothing done */
    surpool_live_options o;
    surpool_live_options_init(&o);
    o.table = "n2";
    surpool_error err;
    atomic_store(&g_nested_rc, surpool_live_start(p, &o, on_nested, p, &g_nested, &err));
    surpool_live_kill(g_nested);
    surpool_live_kill(live);
}

static void test_callback_calls_back(void **state)
{
    (void)state;
    fake_settings fs;
    atomic_store(&g_block_ids, 0);
    atomic_store(&g_nested_closed, 0);
    g_nested = NULL;
    g_hostile_pool = fake_pool(&fs, block_responder);
    surpool_pool *p = g_hostile_pool;
    surpool_live_options o;
    surpool_live_options_init(&o);
    o.table = "n1";
    surpool_live *l = NULL;
    surpool_error err;
    if (surpool_live_start(p, &o, on_nested, p, &l, &err) != SURPOOL_OK)
        fail_msg("live start: %s", err.message);
    json_t *f = json_pack("{s:{s:s, s:s, s:s, s:{}}}", "result", "action", "CREATE", "id",
                          "b10c0000-0000-4000-8000-000000000000", "record", "n1:1", "result");
    surpool__live_notify(p->live, g_hostile_conn, f);
    json_decref(f);
    WAIT_UNTIL(atomic_load(&g_nested_closed) == 2, 10000);
    assert_int_equal(atomic_load(&g_nested_rc), SURPOOL_OK);
    json_t *out = NULL;
    if (surpool_query(p, "RETURN 1", NULL, &out, &err) != SURPOOL_OK)
        fail_msg("the pool after a refused destroy: %s", err.message);
    json_decref(out);
    tk_pool_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_notification_before_reply, tk_teardown),
        cmocka_unit_test_teardown(test_refused_before_sending, tk_teardown),
        cmocka_unit_test_teardown(test_multi_statement_killed, tk_teardown),
        cmocka_unit_test_teardown(test_hostile_notifications, tk_teardown),
        cmocka_unit_test_teardown(test_blocking_callback, tk_teardown),
        cmocka_unit_test_teardown(test_kill_races_restart, tk_teardown),
        cmocka_unit_test_teardown(test_callback_calls_back, tk_teardown),
        cmocka_unit_test_teardown(test_crud_in_order, tk_teardown),
        cmocka_unit_test_teardown(test_order, tk_teardown),
        cmocka_unit_test_teardown(test_diff, tk_teardown),
        cmocka_unit_test_teardown(test_sql_with_var, tk_teardown),
        cmocka_unit_test_teardown(test_bad_input, tk_teardown),
        cmocka_unit_test_teardown(test_kill, tk_teardown),
        cmocka_unit_test_teardown(test_kill_in_callback, tk_teardown),
        cmocka_unit_test_teardown(test_overflow, tk_teardown),
        cmocka_unit_test_teardown(test_destroy_active, tk_teardown),
        cmocka_unit_test_teardown(test_thousand, tk_teardown),
        cmocka_unit_test_teardown(test_lifetime_no_gap, tk_teardown),
        cmocka_unit_test_teardown(test_kill_while_down, tk_teardown),
        cmocka_unit_test_teardown(test_restart, tk_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
