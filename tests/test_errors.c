/*
 * Errors a caller reads: one error channel per lease (surpool_conn_last_error()
 * derived from the call's own surpool_error).
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_last_error_is_the_calls_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
