/*
 * Errors a caller reads: one error channel per lease (surpool_conn_last_error()
 * derived from the call's own surpool_error), and query replies read through
 * surpool_query_check() / surpool_query_result(), on replies the SurrealDB 3.0
 * core really sent (tests/test_integration.c checks them against the core).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fake_transport.h"
#include "pool.h"

static surpool_pool *make_pool(fake_settings *fs)
{
    fake_settings_init(fs);
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = 2;
    cfg.shared_connections = 0;
    surpool_pool *p = NULL;
    surpool_error err;
    if (surpool__pool_create_with(&cfg, &fake_transport_ops, fs, &p, &err) != SURPOOL_OK)
        fail_msg("create: %s", err.message);
    return p;
}

/* jansson allocations fail on the test thread only while `failing` is set
 * (the pool's own threads must not be hit). */
static pthread_t test_thread;
static int failing;
static void *maybe_failing_malloc(size_t n)
{
    if (failing && pthread_equal(pthread_self(), test_thread))
        return NULL;
    return malloc(n);
}

/* Every failure path of a lease call records its message, whatever filled it:
 * a server error, a bad argument with err == NULL, an allocation failure while
 * building the params (which used to leave the previous text), and a success
 * clears it. The text is the call's own err->message. */
static void test_last_error_is_the_calls_error(void **state)
{
    (void)state;
    fake_settings fs;
    surpool_pool *p = make_pool(&fs);
    surpool_conn *c = NULL;
    surpool_error err;
    assert_int_equal(surpool_pool_acquire(p, 5000, &c, &err), SURPOOL_OK);
    assert_string_equal(surpool_conn_last_error(c), "");

    assert_int_equal(surpool_conn_call(c, "fail", NULL, NULL, &err), SURPOOL_ERR_SERVER);
    assert_string_not_equal(surpool_conn_last_error(c), "");
    assert_string_equal(surpool_conn_last_error(c), err.message);

    assert_int_equal(surpool_conn_call(c, "", NULL, NULL, NULL), SURPOOL_ERR_INVALID_ARG);
    assert_string_equal(surpool_conn_last_error(c), "method must be a non-empty string");

    json_t *v = json_integer(1);
    test_thread = pthread_self();
    json_set_alloc_funcs(maybe_failing_malloc, free);
    failing = 1;
    surpool_err rc = surpool_conn_let(c, "x", v, &err);
    failing = 0;
    json_set_alloc_funcs(malloc, free);
    json_decref(v);
    assert_int_equal(rc, SURPOOL_ERR_NOMEM);
    assert_string_equal(surpool_conn_last_error(c), err.message);
    assert_non_null(strstr(surpool_conn_last_error(c), "out of memory"));

    assert_int_equal(surpool_conn_ping(c, &err), SURPOOL_OK);
    assert_string_equal(surpool_conn_last_error(c), "");
    assert_int_equal(surpool_conn_ping(NULL, &err), SURPOOL_ERR_INVALID_ARG);
    assert_string_equal(surpool_conn_last_error(NULL), "");
    surpool_conn_release(c);
    surpool_pool_destroy(p);
}

static json_t *parse(const char *text)
{
    json_error_t je;
    json_t *v = json_loads(text, 0, &je);
    if (v == NULL)
        fail_msg("bad test JSON: %s", je.text);
    return v;
}

/* `BEGIN; CREATE a:1; THROW "boom"; COMMIT;` on the 3.0 core. */
static const char *const thrown_in_txn =
    "[{\"result\":null,\"status\":\"OK\",\"time\":\"0ns\",\"type\":null},"
    "{\"details\":{\"kind\":\"NotExecuted\"},\"kind\":\"Query\",\"result\":\"The query was "
    "not executed due to a failed transaction\",\"status\":\"ERR\",\"time\":\"1µs\","
    "\"type\":null},"
    "{\"kind\":\"Thrown\",\"result\":\"An error occurred: boom\",\"status\":\"ERR\","
    "\"time\":\"1µs\",\"type\":null}]";

/* `BEGIN; CREATE d:1 SET x = 1; CREATE d:2 SET x = <int>"abc"; CREATE d:3; COMMIT;`:
 * the statement after the failure is reported as "cancelled". */
static const char *const cast_in_txn =
    "[{\"result\":null,\"status\":\"OK\"},"
    "{\"details\":{\"kind\":\"NotExecuted\"},\"kind\":\"Query\",\"result\":\"The query was "
    "not executed due to a failed transaction\",\"status\":\"ERR\"},"
    "{\"kind\":\"Validation\",\"result\":\"Could not cast into `int` using input "
    "`'abc'`\",\"status\":\"ERR\"},"
    "{\"details\":{\"kind\":\"Cancelled\"},\"kind\":\"Query\",\"result\":\"The query was not "
    "executed due to a cancelled transaction\",\"status\":\"ERR\"}]";

/* `BEGIN; CREATE e:1; CANCEL;`: nothing failed, the user cancelled. */
static const char *const cancelled =
    "[{\"result\":null,\"status\":\"OK\"},"
    "{\"details\":{\"kind\":\"Cancelled\"},\"kind\":\"Query\",\"result\":\"The query was not "
    "executed due to a cancelled transaction\",\"status\":\"ERR\"},"
    "{\"result\":null,\"status\":\"OK\"}]";

/* A server without `details` (1.x/2.x wording only). */
static const char *const old_server =
    "[{\"result\":\"The query was not executed due to a failed transaction\","
    "\"status\":\"ERR\"},"
    "{\"result\":\"An error occurred: boom\",\"status\":\"ERR\"}]";

static void test_query_check_names_the_failing_statement(void **state)
{
    (void)state;
    surpool_error err;
    json_t *r = parse(thrown_in_txn);
    assert_int_equal(surpool_query_check(r, &err), SURPOOL_ERR_SERVER);
    assert_string_equal(err.message, "statement 2 failed the transaction (statement 1 was not "
                                     "executed): An error occurred: boom");
    assert_string_equal(err.kind, "Thrown");
    assert_int_equal(err.server_code, 0);
    json_decref(r);

    r = parse(cast_in_txn);
    assert_int_equal(surpool_query_check(r, &err), SURPOOL_ERR_SERVER);
    assert_non_null(strstr(err.message, "statement 2 failed the transaction"));
    assert_non_null(strstr(err.message, "Could not cast"));
    assert_string_equal(err.kind, "Validation");
    json_t *out = NULL;
    assert_int_equal(surpool_query_result(r, 3, &out, &err), SURPOOL_ERR_SERVER);
    assert_non_null(strstr(err.message, "cancelled transaction")); /* itself: not skipped */
    assert_null(out);
    json_decref(r);

    r = parse(cancelled);
    assert_int_equal(surpool_query_check(r, &err), SURPOOL_ERR_SERVER);
    assert_non_null(strstr(err.message, "statement 1 failed: "));
    assert_non_null(strstr(err.message, "cancelled transaction"));
    json_decref(r);

    r = parse(old_server);
    assert_int_equal(surpool_query_check(r, &err), SURPOOL_ERR_SERVER);
    assert_string_equal(err.message, "statement 1 failed the transaction (statement 0 was not "
                                     "executed): An error occurred: boom");
    assert_string_equal(err.kind, "");
    json_decref(r);
}

static void test_query_result(void **state)
{
    (void)state;
    surpool_error err;
    json_t *r = parse("[{\"result\":1,\"status\":\"OK\"},{\"result\":[{\"id\":\"a:1\"}],"
                      "\"status\":\"OK\"},{\"status\":\"OK\"},"
                      "{\"kind\":\"NotFound\",\"result\":\"The table 'x' does not exist\","
                      "\"status\":\"ERR\"}]");
    json_t *out = NULL;
    assert_int_equal(surpool_query_result(r, 1, &out, &err), SURPOOL_OK);
    assert_true(json_is_array(out));
    assert_int_equal(out->refcount, 2); /* a new reference: ours and the reply's */
    json_decref(out);
    out = NULL;
    assert_int_equal(surpool_query_result(r, 2, &out, &err), SURPOOL_OK);
    assert_true(json_is_null(out)); /* no result member: null */
    json_decref(out);
    out = NULL;
    assert_int_equal(surpool_query_result(r, 3, &out, &err), SURPOOL_ERR_SERVER);
    assert_string_equal(err.message, "statement 3 failed: The table 'x' does not exist");
    assert_string_equal(err.kind, "NotFound");
    assert_null(out);
    assert_int_equal(surpool_query_result(r, 4, &out, &err), SURPOOL_ERR_INVALID_ARG);
    assert_string_equal(err.message, "statement 4 does not exist (the reply has 4)");
    assert_int_equal(surpool_query_result(r, 0, NULL, &err), SURPOOL_ERR_INVALID_ARG);
    json_decref(r);
    r = json_object();
    assert_int_equal(surpool_query_result(r, 0, &out, &err), SURPOOL_ERR_PROTOCOL);
    assert_int_equal(surpool_query_result(NULL, 0, &out, NULL), SURPOOL_ERR_PROTOCOL);
    json_decref(r);
    assert_null(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_last_error_is_the_calls_error),
        cmocka_unit_test(test_query_check_names_the_failing_statement),
        cmocka_unit_test(test_query_result),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
