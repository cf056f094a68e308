/*
 * The public ABI: struct layouts pinned field by field, the struct_size rule
 * (a caller built against an older, smaller struct), and the one error table.
 * A field moved, resized or removed fails here before it breaks a caller.
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
#include "pool.h"

typedef struct layout {
    const char *what;
    size_t got, want;
} layout;

#define FIELD(type, field, off, size)                                                          \
    {#type "." #field " offset", offsetof(type, field), (off)},                                \
    {                                                                                          \
#type "." #field " size", sizeof(((type *)0)->field), (size)                           \
    }
#define SIZE(type, size)                                                                       \
    {                                                                                          \
        "sizeof(" #type ")", sizeof(type), (size)                                              \
    }

/* LP64 (Linux, macOS on 64-bit): the layout 0.1.0 shipped with. Append-only:
 * a new field adds rows at the end of its struct and changes only its sizeof. */
static const layout lp64[] = {
    SIZE(surpool_error, 360),
    FIELD(surpool_error, code, 0, 4),
    FIELD(surpool_error, server_code, 4, 4),
    FIELD(surpool_error, kind, 8, 32),
    FIELD(surpool_error, message, 40, 256),
    FIELD(surpool_error, reserved, 296, 64),
    SIZE(surpool_event, 56),
    FIELD(surpool_event, type, 0, 4),
    FIELD(surpool_event, conn_id, 8, 8),
    FIELD(surpool_event, duration_us, 16, 8),
    FIELD(surpool_event, code, 24, 4),
    FIELD(surpool_event, message, 32, 8),
    FIELD(surpool_event, file, 40, 8),
    FIELD(surpool_event, line, 48, 4),
    FIELD(surpool_event, endpoint, 52, 4), /* was padding: the size did not change */
    SIZE(surpool_config, 584),
    FIELD(surpool_config, struct_size, 0, 8),
    FIELD(surpool_config, url, 8, 8),
    FIELD(surpool_config, ns, 16, 8),
    FIELD(surpool_config, db, 24, 8),
    FIELD(surpool_config, user, 32, 8),
    FIELD(surpool_config, pass, 40, 8),
    FIELD(surpool_config, auth_level, 48, 4),
    FIELD(surpool_config, access, 56, 8),
    FIELD(surpool_config, token, 64, 8),
    FIELD(surpool_config, signin_params, 72, 8),
    FIELD(surpool_config, init_sql, 80, 8),
    FIELD(surpool_config, on_connect, 88, 8),
    FIELD(surpool_config, on_connect_userdata, 96, 8),
    FIELD(surpool_config, min_connections, 104, 4),
    FIELD(surpool_config, max_connections, 108, 4),
    FIELD(surpool_config, acquire_timeout_ms, 112, 8),
    FIELD(surpool_config, connect_timeout_ms, 120, 8),
    FIELD(surpool_config, request_timeout_ms, 128, 8),
    FIELD(surpool_config, max_waiters, 136, 4),
    FIELD(surpool_config, max_concurrent_connects, 140, 4),
    FIELD(surpool_config, reconnect_backoff_min_ms, 144, 8),
    FIELD(surpool_config, reconnect_backoff_max_ms, 152, 8),
    FIELD(surpool_config, idle_timeout_ms, 160, 8),
    FIELD(surpool_config, max_lifetime_ms, 168, 8),
    FIELD(surpool_config, validation_idle_ms, 176, 8),
    FIELD(surpool_config, validation_timeout_ms, 184, 8),
    FIELD(surpool_config, keepalive_interval_ms, 192, 8),
    FIELD(surpool_config, maintenance_interval_ms, 200, 8),
    FIELD(surpool_config, breaker_threshold, 208, 4),
    FIELD(surpool_config, leak_threshold_ms, 216, 8),
    FIELD(surpool_config, lazy_start, 224, 4),
    FIELD(surpool_config, close_dirty_leases, 228, 4),
    FIELD(surpool_config, on_event, 232, 8),
    FIELD(surpool_config, event_userdata, 240, 8),
    FIELD(surpool_config, shared_connections, 248, 4),
    FIELD(surpool_config, shared_max_inflight, 252, 4),
    FIELD(surpool_config, max_message_bytes, 256, 8),
    FIELD(surpool_config, tls_ca_file, 264, 8),
    FIELD(surpool_config, tls_ca_dir, 272, 8),
    FIELD(surpool_config, tls_cert_file, 280, 8),
    FIELD(surpool_config, tls_key_file, 288, 8),
    FIELD(surpool_config, tls_insecure_skip_verify, 296, 4),
    FIELD(surpool_config, log_fn, 304, 8),
    FIELD(surpool_config, log_userdata, 312, 8),
    FIELD(surpool_config, log_level, 320, 4),
    FIELD(surpool_config, wire_format, 324, 4),
    FIELD(surpool_config, token_fn, 328, 8),
    FIELD(surpool_config, token_userdata, 336, 8),
    /* Taken from reserved (the size did not change; zero is the default). */
    FIELD(surpool_config, endpoints, 344, 8),
    FIELD(surpool_config, nendpoints, 352, 4),
    FIELD(surpool_config, placement, 356, 4),
    FIELD(surpool_config, rebalance_interval_ms, 360, 8),
    FIELD(surpool_config, live_queue_max, 368, 4),
    FIELD(surpool_config, live_max_per_connection, 372, 4),
    FIELD(surpool_config, reserved, 376, 208),
    SIZE(surpool_stats, 472),
    FIELD(surpool_stats, struct_size, 0, 8),
    FIELD(surpool_stats, total, 8, 4),
    FIELD(surpool_stats, idle, 12, 4),
    FIELD(surpool_stats, in_use, 16, 4),
    FIELD(surpool_stats, connecting, 20, 4),
    FIELD(surpool_stats, waiters, 24, 4),
    FIELD(surpool_stats, peak_waiters, 28, 4),
    FIELD(surpool_stats, acquired, 32, 8),
    FIELD(surpool_stats, released, 40, 8),
    FIELD(surpool_stats, timeouts, 48, 8),
    FIELD(surpool_stats, shed, 56, 8),
    FIELD(surpool_stats, created, 64, 8),
    FIELD(surpool_stats, destroyed, 72, 8),
    FIELD(surpool_stats, connect_failures, 80, 8),
    FIELD(surpool_stats, handoffs, 88, 8),
    FIELD(surpool_stats, broken, 96, 8),
    FIELD(surpool_stats, requests, 104, 8),
    FIELD(surpool_stats, request_errors, 112, 8),
    FIELD(surpool_stats, validations, 120, 8),
    FIELD(surpool_stats, validation_failures, 128, 8),
    FIELD(surpool_stats, reconnects, 136, 8),
    FIELD(surpool_stats, breaker_opens, 144, 8),
    FIELD(surpool_stats, lifetime_retirements, 152, 8),
    FIELD(surpool_stats, idle_retirements, 160, 8),
    FIELD(surpool_stats, leaks, 168, 8),
    FIELD(surpool_stats, resets, 176, 8),
    FIELD(surpool_stats, lane_requests, 184, 8),
    FIELD(surpool_stats, lane_connections, 192, 4),
    FIELD(surpool_stats, lane_inflight, 196, 4),
    FIELD(surpool_stats, lane_queued, 200, 4),
    FIELD(surpool_stats, breaker_open, 204, 4),
    FIELD(surpool_stats, paused, 208, 4),
    FIELD(surpool_stats, acquire_wait_p50_us, 216, 8),
    FIELD(surpool_stats, acquire_wait_p95_us, 224, 8),
    FIELD(surpool_stats, acquire_wait_p99_us, 232, 8),
    FIELD(surpool_stats, acquire_wait_max_us, 240, 8),
    FIELD(surpool_stats, connect_p50_us, 248, 8),
    FIELD(surpool_stats, connect_p95_us, 256, 8),
    FIELD(surpool_stats, connect_p99_us, 264, 8),
    FIELD(surpool_stats, connect_max_us, 272, 8),
    FIELD(surpool_stats, reserved, 280, 192),
    SIZE(surpool_endpoint_stats, 592),
    FIELD(surpool_endpoint_stats, struct_size, 0, 8),
    FIELD(surpool_endpoint_stats, index, 8, 4),
    FIELD(surpool_endpoint_stats, port, 12, 4),
    FIELD(surpool_endpoint_stats, host, 16, 256),
    FIELD(surpool_endpoint_stats, connections, 272, 4),
    FIELD(surpool_endpoint_stats, in_use, 276, 4),
    FIELD(surpool_endpoint_stats, connecting, 280, 4),
    FIELD(surpool_endpoint_stats, breaker_open, 284, 4),
    FIELD(surpool_endpoint_stats, consecutive_failures, 288, 4),
    FIELD(surpool_endpoint_stats, connects, 296, 8),
    FIELD(surpool_endpoint_stats, connect_failures, 304, 8),
    FIELD(surpool_endpoint_stats, breaker_opens, 312, 8),
    FIELD(surpool_endpoint_stats, retired_rebalance, 320, 8),
    FIELD(surpool_endpoint_stats, last_error, 328, 200),
    FIELD(surpool_endpoint_stats, reserved, 528, 64),
    SIZE(surpool_credentials, 80),
    FIELD(surpool_credentials, user, 0, 8),
    FIELD(surpool_credentials, pass, 8, 8),
    FIELD(surpool_credentials, ns, 16, 8),
    FIELD(surpool_credentials, db, 24, 8),
    FIELD(surpool_credentials, access, 32, 8),
    FIELD(surpool_credentials, vars, 40, 8),
    FIELD(surpool_credentials, reserved, 48, 32),
    SIZE(surpool_call_options, 64),
    FIELD(surpool_call_options, timeout_ms, 0, 8),
    FIELD(surpool_call_options, reserved, 8, 56),
    SIZE(surpool_live_options, 64),
    FIELD(surpool_live_options, table, 0, 8),
    FIELD(surpool_live_options, sql, 8, 8),
    FIELD(surpool_live_options, vars, 16, 8),
    FIELD(surpool_live_options, diff, 24, 4),
    FIELD(surpool_live_options, queue_max, 28, 4),
    FIELD(surpool_live_options, reserved, 32, 32),
    SIZE(surpool_live_event, 88),
    FIELD(surpool_live_event, type, 0, 4),
    FIELD(surpool_live_event, live_id, 8, 8),
    FIELD(surpool_live_event, record_id, 16, 8),
    FIELD(surpool_live_event, result, 24, 8),
    FIELD(surpool_live_event, dropped, 32, 8),
    FIELD(surpool_live_event, code, 40, 4),
    FIELD(surpool_live_event, message, 48, 8),
    FIELD(surpool_live_event, reserved, 56, 32),
};

static void test_layout_is_pinned(void **state)
{
    (void)state;
    if (sizeof(void *) != 8 || sizeof(long) != 8)
        skip(); /* the table above is for LP64 */
    int bad = 0;
    for (size_t i = 0; i < sizeof(lp64) / sizeof(lp64[0]); i++)
        if (lp64[i].got != lp64[i].want) {
            print_error("%s is %zu, the pinned ABI says %zu\n", lp64[i].what, lp64[i].got,
                        lp64[i].want);
            bad++;
        }
    assert_int_equal(bad, 0);
}

static void test_enum_values_are_pinned(void **state)
{
    (void)state;
    assert_int_equal(SURPOOL_OK, 0);
    assert_int_equal(SURPOOL_ERR_INVALID_ARG, 1);
    assert_int_equal(SURPOOL_ERR_NOMEM, 2);
    assert_int_equal(SURPOOL_ERR_TIMEOUT, 3);
    assert_int_equal(SURPOOL_ERR_CLOSED, 4);
    assert_int_equal(SURPOOL_ERR_OVERLOADED, 5);
    assert_int_equal(SURPOOL_ERR_CONNECT, 6);
    assert_int_equal(SURPOOL_ERR_AUTH, 7);
    assert_int_equal(SURPOOL_ERR_SERVER, 8);
    assert_int_equal(SURPOOL_ERR_PROTOCOL, 9);
    assert_int_equal(SURPOOL_ERR_DISCONNECTED, 10);
    assert_int_equal(SURPOOL_ERR_REQUEST_TIMEOUT, 11);
    assert_int_equal(SURPOOL_ERR_TLS, 12);
    assert_int_equal(SURPOOL_ERR_TOO_LARGE, 13);
    assert_int_equal(SURPOOL_ERR_UNAVAILABLE, 14);
    assert_int_equal(SURPOOL_ERR_BROKEN, 15);
    assert_int_equal(SURPOOL_ERR_PAUSED, 16);
    assert_int_equal(SURPOOL_ERR_UNSUPPORTED, 17);
    assert_int_equal(SURPOOL_LOG_ERROR, 0);
    assert_int_equal(SURPOOL_LOG_DEBUG, 3);
    assert_int_equal(SURPOOL_EVENT_ACQUIRE, 1);
    assert_int_equal(SURPOOL_EVENT_CONNECT_FAIL, 11);
    assert_int_equal(SURPOOL_AUTH_ROOT, 0);
    assert_int_equal(SURPOOL_AUTH_DATABASE, 2);
}

/* Every code has a name and a text; names are the C identifiers. */
static void test_every_code_has_name_and_text(void **state)
{
    (void)state;
    assert_string_equal(surpool_err_name(SURPOOL_OK), "SURPOOL_OK");
    assert_string_equal(surpool_err_name(SURPOOL_ERR_TIMEOUT), "SURPOOL_ERR_TIMEOUT");
    assert_string_equal(surpool_err_name(SURPOOL_ERR_PAUSED), "SURPOOL_ERR_PAUSED");
    assert_string_equal(surpool_err_name(SURPOOL_ERR_UNSUPPORTED), "SURPOOL_ERR_UNSUPPORTED");
    for (int i = SURPOOL_OK; i <= SURPOOL_ERR_UNSUPPORTED; i++) {
        const char *name = surpool_err_name((surpool_err)i);
        const char *text = surpool_strerror((surpool_err)i);
        assert_non_null(name);
        assert_non_null(text);
        assert_string_not_equal(name, "SURPOOL_ERR_UNKNOWN");
        assert_string_not_equal(text, "unknown error");
        for (int j = SURPOOL_OK; j < i; j++) {
            assert_string_not_equal(name, surpool_err_name((surpool_err)j));
            assert_string_not_equal(text, surpool_strerror((surpool_err)j));
        }
    }
    assert_string_equal(surpool_err_name((surpool_err)999), "SURPOOL_ERR_UNKNOWN");
    assert_string_equal(surpool_strerror((surpool_err)-1), "unknown error");
}

static int log_calls;
static void count_log(void *ud, surpool_log_level level, const char *message)
{
    (void)ud;
    (void)level;
    (void)message;
    log_calls++;
}

/* A caller built against a header whose surpool_config ended before
 * max_message_bytes: the library must not read what lies past struct_size (here
 * values that would be refused, and a log_fn), and must use the defaults. */
static void test_v0_sized_config_defaults_the_rest(void **state)
{
    (void)state;
    fake_settings fs;
    fake_settings_init(&fs);
    surpool_config cfg;
    surpool_config_init(&cfg);
    assert_int_equal(cfg.struct_size, sizeof(surpool_config));
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = 3;
    cfg.shared_connections = 0;
    cfg.struct_size = offsetof(surpool_config, max_message_bytes);
    /* Bytes the "old" caller does not have: garbage as far as we know. */
    cfg.max_message_bytes = 1; /* refused if read */
    cfg.log_fn = count_log;
    cfg.log_level = (surpool_log_level)77; /* refused if read */
    cfg.tls_insecure_skip_verify = 5;      /* refused if read */
    memset(cfg.reserved, 0xAB, sizeof(cfg.reserved));

    surpool_pool *p = NULL;
    surpool_error err;
    memset(&err, 0, sizeof(err));
    surpool_err rc = surpool__pool_create_with(&cfg, &fake_transport_ops, &fs, &p, &err);
    if (rc != SURPOOL_OK)
        fail_msg("create with a v0-sized config: %s: %s", surpool_err_name(rc), err.message);
    assert_int_equal(p->cfg.pub.max_connections, 3); /* read: inside struct_size */
    assert_int_equal(p->cfg.pub.shared_connections, 0);
    assert_int_equal(p->cfg.pub.max_message_bytes, (size_t)64 * 1024 * 1024);
    assert_null(p->cfg.pub.log_fn);
    assert_int_equal(p->cfg.pub.log_level, SURPOOL_LOG_WARN);
    assert_int_equal(p->cfg.pub.tls_insecure_skip_verify, 0);
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(p, 1000, &c, &err), SURPOOL_OK);
    surpool_conn_release(c);
    surpool_pool_destroy(p);
    assert_int_equal(log_calls, 0);
}

/* Too small to hold the url, or larger than this library's struct: refused. */
static void test_config_size_out_of_range_is_refused(void **state)
{
    (void)state;
    fake_settings fs;
    fake_settings_init(&fs);
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    size_t sizes[] = {0, 3, offsetof(surpool_config, url), sizeof(surpool_config) + 8};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        cfg.struct_size = sizes[i];
        surpool_pool *p = NULL;
        surpool_error err;
        assert_int_equal(surpool__pool_create_with(&cfg, &fake_transport_ops, &fs, &p, &err),
                         SURPOOL_ERR_INVALID_ARG);
        assert_non_null(strstr(err.message, "surpool_config_init"));
        assert_null(p);
    }
}

/* init writes only the bytes it is given; a larger (newer) struct gets its
 * unknown tail zeroed and learns how much the library knows. */
static void test_config_init_writes_only_struct_size(void **state)
{
    (void)state;
    size_t small = offsetof(surpool_config, max_message_bytes);
    unsigned char buf[sizeof(surpool_config) + 32];
    memset(buf, 0xEE, sizeof(buf));
    surpool_config_init_sized((surpool_config *)buf, small);
    surpool_config head;
    memcpy(&head, buf, small);
    assert_int_equal(head.struct_size, small);
    assert_int_equal(head.max_connections, 10);
    for (size_t i = small; i < sizeof(buf); i++)
        if (buf[i] != 0xEE)
            fail_msg("byte %zu past struct_size %zu was written", i, small);

    memset(buf, 0xEE, sizeof(buf));
    surpool_config_init_sized((surpool_config *)buf, sizeof(buf));
    memcpy(&head, buf, sizeof(head));
    assert_int_equal(head.struct_size, sizeof(surpool_config));
    for (size_t i = sizeof(surpool_config); i < sizeof(buf); i++)
        assert_int_equal(buf[i], 0);

    memset(buf, 0xEE, sizeof(buf));
    surpool_config_init_sized((surpool_config *)buf, 4); /* cannot hold url: untouched */
    assert_int_equal(buf[0], 0xEE);
    surpool_config_init_sized(NULL, sizeof(surpool_config)); /* no crash */
}

/* Stats: only the caller's bytes are written; struct_size says how many. */
static void test_stats_writes_only_struct_size(void **state)
{
    (void)state;
    fake_settings fs;
    fake_settings_init(&fs);
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.min_connections = 1;
    cfg.shared_connections = 0;
    surpool_pool *p = NULL;
    surpool_error err;
    assert_int_equal(surpool__pool_create_with(&cfg, &fake_transport_ops, &fs, &p, &err),
                     SURPOOL_OK);

    surpool_stats st;
    assert_int_equal(surpool_pool_stats(p, &st), SURPOOL_OK);
    assert_int_equal(st.struct_size, sizeof(surpool_stats));
    assert_int_equal(st.total, 1);

    size_t small = offsetof(surpool_stats, idle);
    unsigned char buf[sizeof(surpool_stats) + 32];
    memset(buf, 0xEE, sizeof(buf));
    assert_int_equal(surpool_pool_stats_sized(p, (surpool_stats *)buf, small), SURPOOL_OK);
    surpool_stats head;
    memcpy(&head, buf, small);
    assert_int_equal(head.struct_size, small);
    assert_int_equal(head.total, 1);
    for (size_t i = small; i < sizeof(buf); i++)
        if (buf[i] != 0xEE)
            fail_msg("byte %zu past struct_size %zu was written", i, small);

    memset(buf, 0xEE, sizeof(buf));
    assert_int_equal(surpool_pool_stats_sized(p, (surpool_stats *)buf, sizeof(buf)),
                     SURPOOL_OK);
    memcpy(&head, buf, sizeof(head));
    assert_int_equal(head.struct_size, sizeof(surpool_stats));
    for (size_t i = sizeof(surpool_stats); i < sizeof(buf); i++)
        assert_int_equal(buf[i], 0);

    assert_int_equal(surpool_pool_stats_sized(p, (surpool_stats *)buf, 2),
                     SURPOOL_ERR_INVALID_ARG);
    surpool_pool_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_is_pinned),
        cmocka_unit_test(test_enum_values_are_pinned),
        cmocka_unit_test(test_every_code_has_name_and_text),
        cmocka_unit_test(test_v0_sized_config_defaults_the_rest),
        cmocka_unit_test(test_config_size_out_of_range_is_refused),
        cmocka_unit_test(test_config_init_writes_only_struct_size),
        cmocka_unit_test(test_stats_writes_only_struct_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
