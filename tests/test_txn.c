/*
 * Interactive transactions on a lease (surpool_conn_begin/commit/cancel)
 * against the real SurrealDB 3.0 core behind our test server, in the wire
 * format SURPOOL_TEST_WIRE names (json or cbor; tests/CMakeLists.txt runs the
 * program once per format). With SURPOOL_TEST_CORE=2 the server fronts the
 * SurrealDB 2.x core instead, which has no interactive transactions: only the
 * test that says so runs. The failure paths the real core does not take on
 * demand (a cancel that fails at release, a server that hides its version)
 * run on the fake transport. Per-call deadlines (surpool_call_options,
 * surpool_conn_set_timeout) are checked here too against the real core's
 * sleep(); their fake-transport tests are in test_lane.c.
 */
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
#include "pool.h"
#include "testkit.h"

static test_server g_server;
static surpool_wire_format g_wire = SURPOOL_WIRE_JSON;

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

static surpool_pool *make_pool_timed(int max_connections, long request_timeout_ms)
{
    surpool_config cfg;
    harness_root_config(&cfg, g_server.url, "txn");
    cfg.max_connections = max_connections;
    cfg.request_timeout_ms = request_timeout_ms;
    return tk_pool_create(&cfg);
}

static surpool_pool *make_pool(int max_connections)
{
    return make_pool_timed(max_connections, 30000);
}

static surpool_conn *lease(surpool_pool *p)
{
    surpool_conn *c = NULL;
    surpool_error err;
    if (tk_acquire(p, 30000, &c, &err) != SURPOOL_OK)
        fail_msg("acquire: %s", err.message);
    return c;
}

/* A query that must succeed, statement by statement. */
static void run(surpool_conn *c, const char *sql)
{
    json_t *out = NULL;
    surpool_error err;
    if (surpool_conn_query(c, sql, NULL, &out, &err) != SURPOOL_OK ||
        surpool_query_check(out, &err) != SURPOOL_OK)
        fail_msg("%s: %s", sql, err.message);
    json_decref(out);
}

/* How many records `table` holds as `c` sees it. */
static size_t count(surpool_conn *c, const char *table)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT * FROM %s", table);
    json_t *out = NULL, *rows = NULL;
    surpool_error err;
    if (surpool_conn_query(c, sql, NULL, &out, &err) != SURPOOL_OK ||
        surpool_query_result(out, 0, &rows, &err) != SURPOOL_OK)
        fail_msg("%s: %s", sql, err.message);
    size_t n = json_array_size(rows);
    json_decref(rows);
    json_decref(out);
    return n;
}

static void must(surpool_err rc, const surpool_error *err, const char *what)
{
    if (rc != SURPOOL_OK)
        fail_msg("%s: %s (%s)", what, err->message, surpool_err_name(rc));
}

/* BEGIN, CREATE, CANCEL as separate calls: nothing is left; until then the
 * lease sees its own write and another lease does not. */
static void test_cancel_across_calls(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(2);
    surpool_conn *a = lease(p), *b = lease(p);
    surpool_error err;
    run(a, "DEFINE TABLE tx_cancel");
    must(surpool_conn_begin(a, &err), &err, "begin");
    must(surpool_conn_create(a, "tx_cancel:1", NULL, NULL, &err), &err, "create");
    run(a, "CREATE tx_cancel:2");
    assert_int_equal(count(a, "tx_cancel"), 2);
    assert_int_equal(count(b, "tx_cancel"), 0); /* uncommitted: not seen */
    must(surpool_conn_cancel(a, &err), &err, "cancel");
    assert_int_equal(count(a, "tx_cancel"), 0);
    assert_int_equal(count(b, "tx_cancel"), 0);
    tk_release(a);
    tk_release(b);
    tk_pool_destroy(p);
}

/* BEGIN, CREATE, COMMIT: kept, and seen by others only after the commit. */
static void test_commit_keeps(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(2);
    surpool_conn *a = lease(p), *b = lease(p);
    surpool_error err;
    run(a, "DEFINE TABLE tx_commit");
    must(surpool_conn_begin(a, &err), &err, "begin");
    run(a, "CREATE tx_commit:1");
    assert_int_equal(count(b, "tx_commit"), 0);
    must(surpool_conn_commit(a, &err), &err, "commit");
    assert_int_equal(count(b, "tx_commit"), 1);
    assert_int_equal(count(a, "tx_commit"), 1);
    tk_release(a);
    tk_release(b);
    tk_pool_destroy(p);
}

/* Releasing with a transaction open cancels it: the next borrower (the same
 * connection: the pool has one) is outside any transaction and the writes
 * are gone; the connection was reused, not closed. */
static void test_release_cancels(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(1);
    surpool_conn *a = lease(p);
    surpool_error err;
    run(a, "DEFINE TABLE tx_release");
    must(surpool_conn_begin(a, &err), &err, "begin");
    run(a, "CREATE tx_release:1");
    tk_release(a);
    surpool_conn *b = lease(p);
    assert_ptr_not_equal(a, b); /* a new lease (of the same connection: created == 1 below) */
    assert_int_equal(surpool_conn_commit(b, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(count(b, "tx_release"), 0);
    run(b, "CREATE tx_release:2"); /* outside a transaction: kept at once */
    tk_release(b);
    surpool_stats st;
    surpool_pool_stats(p, &st);
    assert_int_equal(st.destroyed, 0);
    assert_int_equal(st.created, 1);
    surpool_conn *c = lease(p);
    assert_int_equal(count(c, "tx_release"), 1);
    tk_release(c);
    tk_pool_destroy(p);
}

/* Two transactions write the same record: the second commit is a conflict,
 * SURPOOL_ERR_SERVER with the server's kind, and its write is not kept. */
static void test_conflict(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(2);
    surpool_conn *a = lease(p), *b = lease(p);
    surpool_error err;
    run(a, "CREATE tx_conflict:1 SET v = 0");
    must(surpool_conn_begin(a, &err), &err, "begin a");
    must(surpool_conn_begin(b, &err), &err, "begin b");
    run(a, "UPDATE tx_conflict:1 SET v = 1");
    run(b, "UPDATE tx_conflict:1 SET v = 2");
    must(surpool_conn_commit(a, &err), &err, "commit a");
    assert_int_equal(surpool_conn_commit(b, &err), SURPOOL_ERR_SERVER);
    assert_int_equal(err.code, SURPOOL_ERR_SERVER);
    assert_true(err.kind[0] != '\0');
    assert_non_null(strstr(err.message, "conflict"));
    assert_string_equal(surpool_conn_last_error(b), err.message);
    /* b is out of the transaction and its write is gone. */
    assert_int_equal(surpool_conn_cancel(b, &err), SURPOOL_ERR_INVALID_ARG);
    json_t *out = NULL, *rows = NULL;
    must(surpool_conn_query(b, "SELECT VALUE v FROM tx_conflict:1", NULL, &out, &err), &err,
         "select");
    must(surpool_query_result(out, 0, &rows, &err), &err, "result");
    assert_int_equal(json_integer_value(json_array_get(rows, 0)), 1);
    json_decref(rows);
    json_decref(out);
    tk_release(a);
    tk_release(b);
    tk_pool_destroy(p);
}

/* Begin inside an open transaction, commit or cancel without one: refused at
 * once, and the open transaction is untouched. */
static void test_misuse(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(1);
    surpool_conn *a = lease(p);
    surpool_error err;
    assert_int_equal(surpool_conn_commit(a, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_cancel(a, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_begin(NULL, &err), SURPOOL_ERR_INVALID_ARG);
    run(a, "DEFINE TABLE tx_misuse");
    must(surpool_conn_begin(a, &err), &err, "begin");
    assert_int_equal(surpool_conn_begin(a, &err), SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "already open"));
    run(a, "CREATE tx_misuse:1");
    must(surpool_conn_cancel(a, &err), &err, "cancel");
    assert_int_equal(count(a, "tx_misuse"), 0);
    tk_release(a);
    tk_pool_destroy(p);
}

/* SurrealDB 2.x has no interactive transactions: one documented code at once. */
static void test_2x_unsupported(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(1);
    surpool_conn *a = lease(p);
    surpool_error err;
    assert_int_equal(surpool_conn_begin(a, &err), SURPOOL_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.message, "does not support interactive transactions"));
    assert_int_equal(surpool_conn_commit(a, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(count(a, "tx_2x"), 0); /* the lease still works */
    tk_release(a);
    tk_pool_destroy(p);
}

/* ---- Per-call deadlines against the real core (sleep() is a real wait) ---- */

static void test_deadlines_real_core(void **state)
{
    (void)state;
    surpool_pool *p = make_pool_timed(3, 300); /* the pool's: 300 ms (setup calls fit in it) */
    surpool_call_options o;
    surpool_call_options_init(&o);
    json_t *out = NULL;
    surpool_error err;
    /* Longer than the pool's, on the lane. */
    o.timeout_ms = 20000;
    must(surpool_query_opts(p, "sleep(800ms); RETURN 1", NULL, &o, &out, &err), &err,
         "lane query with its own 20 s");
    json_decref(out);
    /* Shorter: never before its deadline. */
    o.timeout_ms = 100;
    int64_t t0 = tk_now_ms();
    assert_int_equal(surpool_query_opts(p, "sleep(3s); RETURN 1", NULL, &o, &out, &err),
                     SURPOOL_ERR_REQUEST_TIMEOUT);
    assert_true(tk_now_ms() - t0 >= 100);
    /* On a lease, until reset. */
    surpool_conn *c = lease(p);
    must(surpool_conn_set_timeout(c, 20000), &err, "set_timeout");
    run(c, "sleep(800ms)");
    must(surpool_conn_set_timeout(c, -1), &err, "set_timeout back");
    assert_int_equal(surpool_conn_query(c, "sleep(3s)", NULL, &out, &err),
                     SURPOOL_ERR_REQUEST_TIMEOUT);
    tk_release(c);
    tk_pool_destroy(p);
}

/* ---- On the fake transport ---- */

typedef struct fake_txn {
    atomic_int cancel_fails;  /* cancel answers with an error */
    atomic_int cancel_silent; /* cancel is never answered */
    atomic_int hide_version;  /* version and begin are "Method not found" */
    atomic_int versions;      /* version calls seen */
    atomic_int cancels;       /* cancel calls seen */
} fake_txn;

static json_t *txn_responder(void *ud, json_int_t id, const char *method, json_t *params)
{
    fake_txn *ft = ud;
    int hide = atomic_load(&ft->hide_version);
    if (strcmp(method, "version") == 0) {
        atomic_fetch_add(&ft->versions, 1);
        if (!hide)
            return json_pack("{s:I, s:s}", "id", id, "result", "surrealdb-3.0.2");
    }
    if (strcmp(method, "begin") == 0 && !hide)
        return json_pack("{s:I, s:s}", "id", id, "result",
                         "01a2245f-6402-74b1-97ef-0a6d1d24550a");
    if (strcmp(method, "cancel") == 0 || strcmp(method, "commit") == 0) {
        if (strcmp(method, "cancel") == 0)
            atomic_fetch_add(&ft->cancels, 1);
        if (strcmp(method, "cancel") == 0 && atomic_load(&ft->cancel_silent))
            return NULL;
        if (strcmp(method, "cancel") == 0 && atomic_load(&ft->cancel_fails))
            return json_pack("{s:I, s:{s:i, s:s, s:s}}", "id", id, "error", "code", -32603,
                             "message", "Transaction not found", "kind", "Validation");
        return json_pack("{s:I, s:n}", "id", id, "result");
    }
    return fake_default_responder(NULL, id, method, params);
}

static surpool_pool *fake_pool_timed(fake_settings *fs, fake_txn *ft, long request_timeout_ms)
{
    fake_settings_init(fs);
    fs->responder = txn_responder;
    fs->responder_ud = ft;
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = 1;
    cfg.wire_format = g_wire;
    cfg.request_timeout_ms = request_timeout_ms;
    cfg.connect_timeout_ms = 200;
    surpool_pool *p = NULL;
    surpool_error err;
    if (surpool__pool_create_with(&cfg, &fake_transport_ops, fs, &p, &err) != SURPOOL_OK)
        fail_msg("create: %s", err.message);
    return tk_pool_track(p);
}

static surpool_pool *fake_pool(fake_settings *fs, fake_txn *ft)
{
    return fake_pool_timed(fs, ft, 30000);
}

/* A cancel the server never answers, with no request deadline: release
 * still returns (bounded by connect_timeout_ms) and closes the connection. */
static void test_release_cancel_unanswered_closes(void **state)
{
    (void)state;
    fake_settings fs;
    fake_txn ft;
    memset(&ft, 0, sizeof(ft));
    surpool_pool *p = fake_pool_timed(&fs, &ft, 0);
    atomic_store(&ft.cancel_silent, 1);
    surpool_conn *a = lease(p);
    surpool_error err;
    must(surpool_conn_begin(a, &err), &err, "begin");
    tk_release(a);
    surpool_stats st;
    surpool_pool_stats(p, &st);
    assert_int_equal(st.destroyed, 1);
    tk_pool_destroy(p);
}

/* A cancel that fails at release: the connection is closed, never lent. */
static void test_release_cancel_fails_closes(void **state)
{
    (void)state;
    fake_settings fs;
    fake_txn ft;
    memset(&ft, 0, sizeof(ft));
    surpool_pool *p = fake_pool(&fs, &ft);
    atomic_store(&ft.cancel_fails, 1);
    surpool_conn *a = lease(p);
    surpool_error err;
    must(surpool_conn_begin(a, &err), &err, "begin");
    tk_release(a);
    assert_int_equal(atomic_load(&ft.cancels), 1);
    surpool_stats st;
    surpool_pool_stats(p, &st);
    assert_int_equal(st.destroyed, 1);
    assert_int_equal(st.broken, 1);
    /* The version is asked once per connection: again only on the new one. */
    surpool_conn *b = lease(p);
    must(surpool_conn_begin(b, &err), &err, "begin on the replacement");
    must(surpool_conn_commit(b, &err), &err, "commit");
    must(surpool_conn_begin(b, &err), &err, "begin again");
    atomic_store(&ft.cancel_fails, 0);
    tk_release(b); /* cancelled, kept */
    surpool_pool_stats(p, &st);
    assert_int_equal(st.destroyed, 1);
    assert_int_equal(atomic_load(&ft.versions), 2);
    assert_int_equal(atomic_load(&ft.cancels), 2);
    tk_pool_destroy(p);
}

/* A server that will not say its version and has no `begin`: UNSUPPORTED,
 * and the lease stays usable. */
static void test_hidden_version_method_not_found(void **state)
{
    (void)state;
    fake_settings fs;
    fake_txn ft;
    memset(&ft, 0, sizeof(ft));
    atomic_store(&ft.hide_version, 1);
    surpool_pool *p = fake_pool(&fs, &ft);
    surpool_conn *a = lease(p);
    surpool_error err;
    assert_int_equal(surpool_conn_begin(a, &err), SURPOOL_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.message, "does not support interactive transactions"));
    assert_int_equal(surpool_conn_begin(a, &err), SURPOOL_ERR_UNSUPPORTED);
    assert_int_equal(atomic_load(&ft.versions), 1); /* asked once */
    must(surpool_conn_ping(a, &err), &err, "ping");
    tk_release(a);
    surpool_stats st;
    surpool_pool_stats(p, &st);
    assert_int_equal(st.destroyed, 0);
    tk_pool_destroy(p);
}

int main(void)
{
    g_wire = harness_wire();
    if (harness_core_major() == 2) {
        const struct CMUnitTest tests2[] = {
            cmocka_unit_test_teardown(test_2x_unsupported, tk_teardown),
        };
        return cmocka_run_group_tests_name("txn-core2", tests2, group_setup, group_teardown);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_cancel_across_calls, tk_teardown),
        cmocka_unit_test_teardown(test_commit_keeps, tk_teardown),
        cmocka_unit_test_teardown(test_release_cancels, tk_teardown),
        cmocka_unit_test_teardown(test_conflict, tk_teardown),
        cmocka_unit_test_teardown(test_misuse, tk_teardown),
        cmocka_unit_test_teardown(test_deadlines_real_core, tk_teardown),
        cmocka_unit_test_teardown(test_release_cancel_fails_closes, tk_teardown),
        cmocka_unit_test_teardown(test_release_cancel_unanswered_closes, tk_teardown),
        cmocka_unit_test_teardown(test_hidden_version_method_not_found, tk_teardown),
    };
    return cmocka_run_group_tests_name(g_wire == SURPOOL_WIRE_CBOR ? "txn-cbor" : "txn-json",
                                       tests, group_setup, group_teardown);
}
