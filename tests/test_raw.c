/*
 * Raw results (surpool_conn_query_raw and friends, docs/raw.md) against the
 * real SurrealDB core behind our test server, in the wire format
 * SURPOOL_TEST_WIRE names (tests/CMakeLists.txt runs the program once per
 * format): the bytes decode, with the library's own decoder, to what the
 * normal call returns; an error reply is the usual error, never bytes; bad
 * arguments and stale handles are refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cbor_codec.h"
#include "codec.h"
#include "harness.h"
#include "raw.h"
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

static surpool_pool *make_pool(void)
{
    surpool_config cfg;
    harness_root_config(&cfg, g_server.url, "raw");
    cfg.max_connections = 2;
    return tk_pool_create(&cfg);
}

static surpool_conn *lease(surpool_pool *p)
{
    surpool_conn *c = NULL;
    surpool_error err;
    if (tk_acquire(p, 30000, &c, &err) != SURPOOL_OK)
        fail_msg("acquire: %s", err.message);
    return c;
}

/* The raw bytes decoded by the library's own decoder for their format. */
static json_t *decode_raw(const surpool_raw *raw)
{
    const char *data = surpool_raw_data(raw);
    size_t n = surpool_raw_size(raw);
    assert_non_null(data);
    assert_int_equal(data[n], '\0');
    json_t *v = NULL;
    surpool_error err;
    if (surpool_raw_format(raw) == SURPOOL_WIRE_CBOR) {
        if (surpool__cbor_decode_value((const unsigned char *)data, n, &v, &err) != SURPOOL_OK)
            fail_msg("raw CBOR does not decode: %s", err.message);
    } else {
        json_error_t je;
        v = json_loadb(data, n, JSON_DECODE_ANY | JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &je);
        if (v == NULL)
            fail_msg("raw JSON does not decode: %s", je.text);
    }
    return v;
}

/* Each statement's status and result (the "time" differs from run to run). */
static void assert_same_statements(const json_t *a, const json_t *b)
{
    assert_true(json_is_array(a) && json_is_array(b));
    assert_int_equal(json_array_size(a), json_array_size(b));
    for (size_t i = 0; i < json_array_size(a); i++) {
        const json_t *sa = json_array_get(a, i), *sb = json_array_get(b, i);
        assert_true(json_equal(json_object_get(sa, "status"), json_object_get(sb, "status")));
        if (!json_equal(json_object_get(sa, "result"), json_object_get(sb, "result"))) {
            char *ta = json_dumps(json_object_get(sa, "result"), JSON_ENCODE_ANY);
            char *tb = json_dumps(json_object_get(sb, "result"), JSON_ENCODE_ANY);
            fail_msg("statement %zu: raw %s, normal %s", i, ta, tb);
        }
    }
}

static const char *const SETUP =
    "REMOVE TABLE IF EXISTS item; "
    "CREATE item:1 SET name = 'one', n = 1, at = d'2024-01-02T03:04:05Z', "
    "price = 1.25dec, tags = ['a', 'b'], nested = { deep: [{ x: NONE, y: null }] }; "
    "CREATE item:2 SET name = 'two: not a record', n = -2, u = u'0192a8f0-1111-7222-8333-"
    "444455556666', other = item:1";

/* A query's raw result, decoded, equals the normal call's result. */
static void test_query_raw_equals_query(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    surpool_conn *c = lease(p);
    surpool_error err;
    json_t *out = NULL;
    if (surpool_conn_query(c, SETUP, NULL, &out, &err) != SURPOOL_OK ||
        surpool_query_check(out, &err) != SURPOOL_OK)
        fail_msg("setup: %s", err.message);
    json_decref(out);

    const char *sql = "SELECT * FROM item ORDER BY n; RETURN $x; SELECT * FROM nothing_here; "
                      "THROW 'statement error stays inside'";
    json_t *vars = json_pack("{s:s}", "x", "text, not parsed?");
    surpool_raw *raw = NULL;
    surpool_err rc = surpool_conn_query_raw(c, sql, vars, &raw, &err);
    if (rc != SURPOOL_OK)
        fail_msg("query_raw: %s", err.message);
    assert_int_equal(surpool_raw_format(raw), g_wire);
    assert_int_equal(surpool_conn_query(c, sql, vars, &out, &err), SURPOOL_OK);
    json_t *decoded = decode_raw(raw);
    assert_same_statements(decoded, out);
    assert_int_equal(json_array_size(decoded), 4);
    json_decref(decoded);
    json_decref(out);
    json_decref(vars);
    surpool_raw_free(raw);

    /* call_raw: any method; the result as the normal call decodes it (ping's
     * is null over JSON, NONE over CBOR). */
    assert_int_equal(surpool_conn_call_raw(c, "ping", NULL, &raw, &err), SURPOOL_OK);
    assert_true(surpool_raw_size(raw) > 0);
    assert_int_equal(surpool_conn_call(c, "ping", NULL, &out, &err), SURPOOL_OK);
    decoded = decode_raw(raw);
    assert_true(json_equal(decoded, out));
    json_decref(decoded);
    json_decref(out);
    surpool_raw_free(raw);
    tk_release(c);
}

/* An error reply is the usual error, with the server's message; never bytes. */
static void test_error_reply(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    surpool_conn *c = lease(p);
    surpool_error err;
    surpool_raw *raw = (surpool_raw *)&err; /* must come back NULL */
    surpool_err rc = surpool_conn_query_raw(c, "SELEC nonsense FROM", NULL, &raw, &err);
    assert_int_equal(rc, SURPOOL_ERR_SERVER);
    assert_null(raw);
    assert_int_equal(err.code, SURPOOL_ERR_SERVER);
    assert_true(err.server_code != 0);
    assert_true(err.message[0] != '\0');
    assert_string_equal(surpool_conn_last_error(c), err.message);

    /* The same text as the normal call's error. */
    surpool_error err2;
    json_t *out = NULL;
    assert_int_equal(surpool_conn_query(c, "SELEC nonsense FROM", NULL, &out, &err2),
                     SURPOOL_ERR_SERVER);
    assert_string_equal(err.message, err2.message);
    assert_int_equal(err.server_code, err2.server_code);

    raw = (surpool_raw *)&err;
    assert_int_equal(surpool_conn_call_raw(c, "nosuchmethod", NULL, &raw, &err),
                     SURPOOL_ERR_SERVER);
    assert_null(raw);
    /* The lease still works after server errors. */
    assert_int_equal(surpool_conn_call_raw(c, "version", NULL, &raw, &err), SURPOOL_OK);
    json_t *v = decode_raw(raw);
    assert_non_null(strstr(json_string_value(v), "surrealdb-"));
    json_decref(v);
    surpool_raw_free(raw);
    tk_release(c);
}

/* Bad arguments and stale handles: INVALID_ARG, nothing sent, out NULL. */
static void test_bad_args(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    surpool_conn *c = lease(p);
    surpool_error err;
    surpool_raw *raw = NULL;
    assert_int_equal(surpool_conn_query_raw(c, "RETURN 1", NULL, NULL, &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_query_raw(c, "", NULL, &raw, &err), SURPOOL_ERR_INVALID_ARG);
    json_t *notobj = json_array();
    assert_int_equal(surpool_conn_query_raw(c, "RETURN 1", notobj, &raw, &err),
                     SURPOOL_ERR_INVALID_ARG);
    json_decref(notobj);
    json_t *obj = json_object();
    assert_int_equal(surpool_conn_call_raw(c, "query", obj, &raw, &err),
                     SURPOOL_ERR_INVALID_ARG);
    json_decref(obj);
    assert_int_equal(surpool_conn_call_raw(c, NULL, NULL, &raw, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_call_raw(NULL, "ping", NULL, &raw, &err),
                     SURPOOL_ERR_INVALID_ARG);
    tk_release(c);
    raw = (surpool_raw *)&err;
    assert_int_equal(surpool_conn_query_raw(c, "RETURN 1", NULL, &raw, &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_null(raw);
    assert_non_null(strstr(err.message, "released"));
    /* NULL raws are harmless. */
    assert_null(surpool_raw_data(NULL));
    assert_int_equal(surpool_raw_size(NULL), 0);
    assert_int_equal(surpool_raw_format(NULL), SURPOOL_WIRE_DEFAULT);
    surpool_raw_free(NULL);
}

/* Pool-level raw calls; a raw result outlives its pool. */
static void test_pool_level(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    surpool_error err;
    surpool_raw *raw = NULL;
    assert_int_equal(surpool_call_raw(p, "use", NULL, &raw, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_query_raw(NULL, "RETURN 1", NULL, &raw, &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_query_raw(p, "RETURN 1", NULL, NULL, &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_query_raw(p, "THROW 'x'; RETURN 'kept'", NULL, &raw, &err),
                     SURPOOL_OK);
    surpool_raw *raw2 = NULL;
    json_t *params = json_pack("[s]", "RETURN 1");
    if (surpool_call_raw(p, "query", params, &raw2, &err) != SURPOOL_OK)
        fail_msg("call_raw: %s", err.message);
    json_decref(params);
    tk_pool_destroy(p);
    json_t *v = decode_raw(raw);
    assert_string_equal(json_string_value(json_object_get(json_array_get(v, 0), "status")),
                        "ERR");
    assert_string_equal(json_string_value(json_object_get(json_array_get(v, 1), "result")),
                        "kept");
    json_decref(v);
    v = decode_raw(raw2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(v, 0), "result")), 1);
    json_decref(v);
    surpool_raw_free(raw);
    surpool_raw_free(raw2);
}

/* The frame-to-raw step alone, on crafted frames: what a hostile or broken
 * server could send (the real core never does). */
static surpool_err take(const char *frame, size_t len, int cbor, int64_t id, surpool_raw **raw,
                        json_t **reply, char *message)
{
    surpool__treq req;
    memset(&req, 0, sizeof(req));
    req.id = id;
    req.status = SURPOOL_OK;
    req.frame = surpool__malloc(len + 1);
    assert_non_null(req.frame);
    memcpy(req.frame, frame, len);
    req.frame[len] = '\0';
    req.frame_len = len;
    req.frame_cbor = cbor;
    surpool__raw_take_reply(&req, cbor ? SURPOOL_WIRE_CBOR : SURPOOL_WIRE_JSON, raw);
    assert_null(req.frame);
    *reply = req.reply;
    strcpy(message, req.message);
    return req.status;
}

static void test_take_reply_frames(void **state)
{
    (void)state;
    surpool_raw *raw = NULL;
    json_t *reply = NULL;
    char msg[200];
    /* A result: the span, NUL-terminated, in a frame it now owns. */
    const char *ok = "{\"id\":5, \"result\" : [1,{\"a\":\"}\"}] }";
    assert_int_equal(take(ok, strlen(ok), 0, 5, &raw, &reply, msg), SURPOOL_OK);
    assert_non_null(raw);
    assert_string_equal(surpool_raw_data(raw), "[1,{\"a\":\"}\"}]");
    assert_int_equal(surpool_raw_size(raw), strlen("[1,{\"a\":\"}\"}]"));
    assert_int_equal(surpool_raw_format(raw), SURPOOL_WIRE_JSON);
    assert_true(json_is_null(json_object_get(reply, "result")));
    surpool_raw_free(raw);
    json_decref(reply);
    /* An error: decoded alone, mapped as usual, no raw. */
    const char *er = "{\"id\":5,\"result\":1,\"error\":{\"code\":-32002,\"message\":\"no\"}}";
    assert_int_equal(take(er, strlen(er), 0, 5, &raw, &reply, msg), SURPOOL_OK);
    assert_null(raw);
    surpool_error err;
    assert_int_equal(surpool__codec_reply_result(reply, NULL, &err), SURPOOL_ERR_AUTH);
    assert_string_equal(err.message, "no");
    json_decref(reply);
    /* Refused: another id, a repeated key, no envelope, a broken error. */
    const char *bad[] = {
        "{\"id\":6,\"result\":1}",
        "{\"id\":5,\"result\":1,\"result\":2}",
        "{\"id\":5,\"error\":null,\"error\":{}}",
        "{\"result\":1}",
        "[1]",
        "{\"id\":5,\"result\":[1,2}",
        "{\"id\":5,\"error\":{\"a\":1,\"a\":2}}",
        /* Not "no error": the literal with a tail, which the full decode
         * refuses too (before, the result was handed over). */
        "{\"id\":5,\"error\":nullx,\"result\":1}",
        "{\"id\":5,\"result\":1,\"error\":null0}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        surpool_err rc = take(bad[i], strlen(bad[i]), 0, 5, &raw, &reply, msg);
        if (rc != SURPOOL_ERR_PROTOCOL)
            fail_msg("%s: %s, expected PROTOCOL", bad[i], surpool_err_name(rc));
        assert_null(raw);
        assert_null(reply);
        assert_true(msg[0] != '\0');
    }
    /* Neither result nor error: an empty reply, which the outcome refuses. */
    assert_int_equal(take("{\"id\":5}", 8, 0, 5, &raw, &reply, msg), SURPOOL_OK);
    assert_null(raw);
    assert_int_equal(surpool__codec_reply_result(reply, NULL, NULL), SURPOOL_ERR_PROTOCOL);
    json_decref(reply);
    /* CBOR: {"id":1,"result":6(null)}: the tagged item. */
    const unsigned char cb[] = {0xa2, 0x62, 'i', 'd', 0x01, 0x66, 'r',
                                'e',  's',  'u', 'l', 't',  0xc6, 0xf6};
    assert_int_equal(take((const char *)cb, sizeof(cb), 1, 1, &raw, &reply, msg), SURPOOL_OK);
    assert_int_equal(surpool_raw_size(raw), 2);
    assert_memory_equal(surpool_raw_data(raw), "\xc6\xf6", 2);
    assert_int_equal(surpool_raw_format(raw), SURPOOL_WIRE_CBOR);
    surpool_raw_free(raw);
    json_decref(reply);

    /* A transport without bytes hands over a tree: its result is encoded in
     * the pool's format; an error stays for the outcome to map. */
    for (int cbor = 0; cbor <= 1; cbor++) {
        surpool__treq req;
        memset(&req, 0, sizeof(req));
        req.id = 5;
        req.reply = json_pack("{s:i,s:[i,s]}", "id", 5, "result", 1, "x");
        surpool__raw_take_reply(&req, cbor ? SURPOOL_WIRE_CBOR : SURPOOL_WIRE_JSON, &raw);
        assert_int_equal(req.status, SURPOOL_OK);
        assert_non_null(raw);
        json_t *v = decode_raw(raw);
        assert_true(json_equal(v, json_object_get(req.reply, "result")));
        json_decref(v);
        surpool_raw_free(raw);
        json_decref(req.reply);
        req.reply = json_pack("{s:i,s:{s:i}}", "id", 5, "error", "code", -32000);
        surpool__raw_take_reply(&req, SURPOOL_WIRE_JSON, &raw);
        assert_int_equal(req.status, SURPOOL_OK);
        assert_null(raw);
        json_decref(req.reply);
    }
}

/* Pool-level raw calls refuse bad arguments before they take a connection:
 * with every connection leased it answers INVALID_ARG at once instead of
 * waiting for one (acquire_timeout_ms, then TIMEOUT) only to refuse them. */
static void test_pool_level_checks_before_leasing(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(); /* max_connections 2 */
    surpool_conn *c1 = lease(p);
    surpool_conn *c2 = lease(p);
    surpool_error err;
    surpool_raw *raw = (surpool_raw *)&err;
    json_t *notobj = json_array();
    surpool_err rc = surpool_query_raw(p, "RETURN 1", notobj, &raw, &err);
    json_decref(notobj);
    if (rc != SURPOOL_ERR_INVALID_ARG)
        fail_msg("query_raw with array vars: %s (%s)", surpool_err_name(rc), err.message);
    assert_null(raw);
    json_t *obj = json_object();
    raw = (surpool_raw *)&err;
    rc = surpool_call_raw(p, "query", obj, &raw, &err);
    json_decref(obj);
    if (rc != SURPOOL_ERR_INVALID_ARG)
        fail_msg("call_raw with object params: %s (%s)", surpool_err_name(rc), err.message);
    assert_null(raw);
    tk_release(c1);
    tk_release(c2);
    tk_pool_destroy(p);
}

int main(void)
{
    g_wire = harness_wire();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_query_raw_equals_query, tk_teardown),
        cmocka_unit_test_teardown(test_error_reply, tk_teardown),
        cmocka_unit_test_teardown(test_bad_args, tk_teardown),
        cmocka_unit_test_teardown(test_pool_level, tk_teardown),
        cmocka_unit_test(test_take_reply_frames),
        cmocka_unit_test_teardown(test_pool_level_checks_before_leasing, tk_teardown),
    };
    return cmocka_run_group_tests_name(g_wire == SURPOOL_WIRE_CBOR ? "raw-cbor" : "raw-json",
                                       tests, group_setup, group_teardown);
}
