/*
 * Integration tests against the real SurrealDB 3.0 core, behind our test server
 * (tests/server/server.mjs), over ws:// and wss://. The group starts its own
 * server on a free loopback port and always stops it. Never skipped.
 *
 * The wire format comes from SURPOOL_TEST_WIRE ("json" or "cbor"; default
 * json): tests/CMakeLists.txt registers the program once per format.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "codec.h"
#include "harness.h"
#include "lease.h"
#include "pool.h"
#include "testkit.h"
#include "wire.h"

static test_server g_server;
static surpool_wire_format g_wire = SURPOOL_WIRE_JSON;

/* Absent: JSON sends NONE as null; CBOR keeps NONE apart ({"$surreal":"none"}). */
static int is_none(const json_t *v)
{
    return g_wire == SURPOOL_WIRE_CBOR ? surpool_value_type_of(v) == SURPOOL_VALUE_NONE
                                       : json_is_null(v);
}

/* v's text form (a record id as "person:tobie" in both formats). */
static void assert_text(const json_t *v, const char *expected)
{
    json_t *t = NULL;
    if (surpool_value_text(v, &t, NULL) != SURPOOL_OK)
        fail_msg("no text form for a value (expected %s)", expected);
    if (strcmp(json_string_value(t), expected) != 0)
        fail_msg("text form %s, expected %s", json_string_value(t), expected);
    json_decref(t);
}

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

static void base_config(surpool_config *cfg, const char *db)
{
    harness_root_config(cfg, g_server.url, db);
    cfg->max_connections = 4;
}

static surpool_pool *make_pool(const char *db)
{
    surpool_config cfg;
    base_config(&cfg, db);
    return tk_pool_create(&cfg);
}

static surpool_conn *lease(surpool_pool *p)
{
    surpool_conn *c = NULL;
    surpool_error err;
    if (tk_acquire(p, -1, &c, &err) != SURPOOL_OK)
        fail_msg("acquire: %s: %s", surpool_strerror(err.code), err.message);
    return c;
}

/* The result of statement i of a query reply. */
static json_t *stmt_result(json_t *reply, size_t i)
{
    json_t *st = json_array_get(reply, i);
    assert_non_null(st);
    assert_string_equal(json_string_value(json_object_get(st, "status")), "OK");
    return json_object_get(st, "result");
}

/* The 2.x emulation runs requests one at a time, server-wide (tests/server/
 * README.md, "2.x mode"): what needs the server to run requests concurrently
 * (out-of-order replies, bursts of sleeps, racing setups) is skipped there,
 * saying why. */
static void skip_without_server_concurrency(void)
{
    if (harness_core_major() == 2) {
        print_message("skipped on 2.x: the test server cannot run requests concurrently\n");
        skip();
    }
}

/* ------------------------------------------------------------------------- */

static void test_ping_version_query(void **state)
{
    (void)state;
    surpool_pool *p = make_pool("basics");
    surpool_conn *c = lease(p);
    surpool_error err;
    assert_int_equal(surpool_conn_ping(c, &err), SURPOOL_OK);
    json_t *v = NULL;
    assert_int_equal(surpool_conn_version(c, &v, &err), SURPOOL_OK);
    assert_true(json_is_string(v));
    assert_non_null(strstr(json_string_value(v), "surrealdb-"));
    json_decref(v);

    json_t *vars = json_pack("{s:i, s:s}", "a", 40, "b", "x");
    json_t *out = NULL;
    assert_int_equal(surpool_conn_query(c, "RETURN $a + 2; RETURN $b", vars, &out, &err),
                     SURPOOL_OK);
    json_decref(vars);
    assert_int_equal(json_array_size(out), 2);
    assert_int_equal(json_integer_value(stmt_result(out, 0)), 42);
    assert_string_equal(json_string_value(stmt_result(out, 1)), "x");
    assert_non_null(json_string_value(json_object_get(json_array_get(out, 0), "time")));
    assert_int_equal(surpool_query_check(out, &err), SURPOOL_OK);
    json_decref(out);
    tk_release(c);
    tk_pool_destroy(p);
}

static void test_statement_error_stays_in_result(void **state)
{
    (void)state;
    surpool_pool *p = make_pool("errors");
    surpool_conn *c = lease(p);
    surpool_error err;
    json_t *out = NULL;
    assert_int_equal(
        surpool_conn_query(c, "RETURN 1; THROW 'boom'; RETURN 3", NULL, &out, &err),
        SURPOOL_OK);
    assert_int_equal(json_array_size(out), 3);
    json_t *bad = json_array_get(out, 1);
    assert_string_equal(json_string_value(json_object_get(bad, "status")), "ERR");
    assert_non_null(strstr(json_string_value(json_object_get(bad, "result")), "boom"));
    assert_int_equal(json_integer_value(stmt_result(out, 2)), 3);
    assert_int_equal(surpool_query_check(out, &err), SURPOOL_ERR_SERVER);
    assert_non_null(strstr(err.message, "statement 1"));
    json_decref(out);

    /* A query that does not parse is an RPC error with the server's details. */
    out = NULL;
    assert_int_equal(surpool_conn_query(c, "SELECT * FROM ;; )(", NULL, &out, &err),
                     SURPOOL_ERR_SERVER);
    assert_null(out);
    assert_int_equal(err.code, SURPOOL_ERR_SERVER);
    assert_true(err.server_code != 0);
    assert_true(strlen(err.message) > 0);
    if (harness_core_major() == 2) {
        /* 2.x: -32000 and the message only, no kind. */
        assert_int_equal(err.server_code, -32000);
        assert_string_equal(err.kind, "");
        assert_non_null(strstr(err.message, "Parse error"));
    } else {
        assert_true(strlen(err.kind) > 0);
    }

    /* Unknown method: -32601, and the lease stays usable. */
    assert_int_equal(surpool_conn_call(c, "no_such_method", NULL, NULL, &err),
                     SURPOOL_ERR_SERVER);
    assert_int_equal(err.server_code, -32601);
    assert_int_equal(surpool_conn_ping(c, &err), SURPOOL_OK);
    tk_release(c);
    tk_pool_destroy(p);
}

/* In a failed transaction the 3.0 core marks the statements it skipped "not
 * executed due to a failed transaction" and reports the real failure later in
 * the reply: surpool_query_check() and surpool_query_result() name the
 * statement that failed, with its text and kind. */
static void test_failed_transaction_reports_the_cause(void **state)
{
    (void)state;
    surpool_pool *p = make_pool("txn_cause");
    surpool_conn *c = lease(p);
    surpool_error err;
    json_t *out = NULL;
    assert_int_equal(
        surpool_conn_query(c, "BEGIN; CREATE txn_a:1; THROW 'boom'; COMMIT;", NULL, &out, &err),
        SURPOOL_OK);
    assert_int_equal(surpool_query_check(out, &err), SURPOOL_ERR_SERVER);
    json_t *r = NULL;
    if (harness_core_major() == 2) {
        /* 2.x answers [skipped CREATE, THROW]: no entry before them, no kind;
         * the skipped statement is recognised by its text. */
        assert_int_equal(json_array_size(out), 2);
        assert_string_equal(err.kind, "");
        assert_string_equal(err.message, "statement 1 failed the transaction (statement 0 "
                                         "was not executed): An error occurred: boom");
        assert_int_equal(surpool_query_result(out, 1, &r, &err), SURPOOL_ERR_SERVER);
        assert_null(r);
        assert_string_equal(err.kind, "");
        assert_string_equal(err.message, "statement 1 failed: An error occurred: boom");
        json_decref(out);
    } else {
        assert_string_equal(err.kind, "Thrown");
        assert_non_null(strstr(err.message, "boom"));
        assert_non_null(strstr(err.message, "statement 2 failed the transaction"));
        assert_null(strstr(err.message, "not executed due to"));
        assert_int_equal(surpool_query_result(out, 1, &r, &err), SURPOOL_ERR_SERVER);
        assert_null(r);
        assert_string_equal(err.kind, "Thrown");
        assert_non_null(strstr(err.message, "boom"));
        json_decref(out);
    }

    /* A failing statement (not a THROW): the duplicate record is the cause. */
    out = NULL;
    assert_int_equal(surpool_conn_query(c, "BEGIN; CREATE txn_b:1; CREATE txn_b:1; COMMIT;",
                                        NULL, &out, &err),
                     SURPOOL_OK);
    assert_int_equal(surpool_query_check(out, &err), SURPOOL_ERR_SERVER);
    if (harness_core_major() == 2) {
        assert_string_equal(err.kind, "");
        assert_string_equal(err.message,
                            "statement 1 failed the transaction (statement 0 was not "
                            "executed): Database record `txn_b:1` already exists");
    } else {
        assert_string_equal(err.kind, "AlreadyExists");
        assert_non_null(strstr(err.message, "already exists"));
        assert_non_null(strstr(err.message, "statement 2 failed the transaction"));
    }
    json_decref(out);

    /* And the helper hands out a statement's result (a new reference). */
    out = NULL;
    assert_int_equal(surpool_conn_query(c, "RETURN 1; RETURN 'two'", NULL, &out, &err),
                     SURPOOL_OK);
    assert_int_equal(surpool_query_result(out, 1, &r, &err), SURPOOL_OK);
    assert_string_equal(json_string_value(r), "two");
    json_decref(out);
    assert_string_equal(json_string_value(r), "two"); /* ours, not borrowed */
    json_decref(r);
    tk_release(c);
    tk_pool_destroy(p);
}

/* The test server answers HTTP 404 to an upgrade on any path but /rpc, as a
 * proxy or another web server on the port would: the error says so. */
static void test_wrong_path_names_rpc(void **state)
{
    (void)state;
    surpool_config cfg;
    char url[128];
    base_config(&cfg, "wrongpath");
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/sql", g_server.port);
    cfg.url = url;
    cfg.breaker_threshold = 0; /* the last connect error, not the breaker's fast failure */
    surpool_pool *p = NULL;
    surpool_error err;
    assert_int_equal(surpool_pool_create(&cfg, &p, &err), SURPOOL_OK);
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(p, 1000, &c, &err), SURPOOL_ERR_CONNECT);
    assert_null(c);
    if (strstr(err.message, "HTTP 404") == NULL ||
        strstr(err.message, "path '/sql' is not a SurrealDB RPC endpoint (is it /rpc?)") ==
            NULL)
        fail_msg("%s", err.message);
    surpool_pool_destroy(p);
}

static void test_wrong_password(void **state)
{
    (void)state;
    surpool_config cfg;
    base_config(&cfg, "auth");
    cfg.pass = "not-the-password";
    surpool_pool *p = NULL;
    surpool_error err;
    assert_int_equal(surpool_pool_create(&cfg, &p, &err), SURPOOL_OK);
    tk_pool_track(p);
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(p, 10000, &c, &err), SURPOOL_ERR_AUTH);
    assert_int_equal(err.code, SURPOOL_ERR_AUTH);
    assert_null(strstr(err.message, "not-the-password"));
    /* As libpq does: who signed in, where, and the server's words. */
    char where[64];
    snprintf(where, sizeof(where), "at 127.0.0.1 port %d failed: ", g_server.port);
    if (strstr(err.message, "signin as root user 'root'") == NULL ||
        strstr(err.message, where) == NULL ||
        strstr(err.message, "problem with authentication") == NULL)
        fail_msg("auth failure does not name the user and server: %s", err.message);
    tk_pool_destroy(p);

    /* And on a lease, with explicit credentials. */
    p = make_pool("auth");
    c = lease(p);
    surpool_credentials cred = {0};
    cred.user = "root";
    cred.pass = "wrong";
    assert_int_equal(surpool_conn_signin(c, &cred, NULL, &err), SURPOOL_ERR_AUTH);
    if (strstr(err.message, "signin as user 'root'") == NULL ||
        strstr(err.message, where) == NULL || strstr(err.message, "wrong") != NULL)
        fail_msg("lease signin failure does not name the user and server: %s", err.message);
    cred.pass = "root";
    json_t *token = NULL;
    assert_int_equal(surpool_conn_signin(c, &cred, &token, &err), SURPOOL_OK);
    assert_true(json_is_string(token));
    json_decref(token);
    tk_release(c);
    tk_pool_destroy(p);
}

static void test_unauthenticated_refused(void **state)
{
    (void)state;
    surpool_config cfg;
    base_config(&cfg, NULL);
    cfg.user = NULL;
    cfg.pass = NULL;
    cfg.ns = NULL;
    surpool_pool *p = NULL;
    surpool_error err;
    assert_int_equal(surpool_pool_create(&cfg, &p, &err), SURPOOL_OK);
    tk_pool_track(p);
    surpool_conn *c = lease(p);
    if (harness_core_major() == 2) {
        /* 2.x has no -32002: an anonymous caller is refused by the IAM layer
         * with -32000. Only signin/signup/authenticate refusals are AUTH. */
        assert_int_equal(surpool_conn_query(c, "RETURN 1", NULL, NULL, &err),
                         SURPOOL_ERR_SERVER);
        assert_int_equal(err.server_code, -32000);
        assert_string_equal(err.kind, "");
        assert_non_null(strstr(err.message, "IAM error: Not enough permissions"));
    } else {
        assert_int_equal(surpool_conn_query(c, "RETURN 1", NULL, NULL, &err), SURPOOL_ERR_AUTH);
        assert_int_equal(err.server_code, -32002);
    }
    tk_release(c);
    tk_pool_destroy(p);
}

/* Run `sql` (no variables) and return the reply; fails unless every statement
 * succeeded. */
static json_t *query_ok(surpool_conn *c, const char *sql)
{
    json_t *out = NULL;
    surpool_error err;
    surpool_err rc = surpool_conn_query(c, sql, NULL, &out, &err);
    if (rc != SURPOOL_OK)
        fail_msg("%s: %s: %s", sql, surpool_strerror(rc), err.message);
    if (surpool_query_check(out, &err) != SURPOOL_OK) {
        json_decref(out);
        fail_msg("%s: %s", sql, err.message);
    }
    return out;
}

/* A signin, signup or authenticate the server refuses is SURPOOL_ERR_AUTH on
 * every server version, whatever its code (docs/errors.md): 3.x answers a bad
 * token with -32000 and a THROW in a SIGNIN clause with -32006; 2.x answers
 * every refusal with -32000. On a lease and in connection setup, where the
 * breaker then reports AUTH too. The server's code, kind and message are kept. */
static void test_refused_credentials_are_auth(void **state)
{
    (void)state;
    int v2 = harness_core_major() == 2;
    surpool_pool *p = make_pool("refusals");
    surpool_conn *c = lease(p);
    surpool_error err;
    json_decref(query_ok(c, "DEFINE ACCESS IF NOT EXISTS locked ON DATABASE TYPE RECORD "
                            "SIGNUP { THROW 'no signups today' } "
                            "SIGNIN { THROW 'account locked' } DURATION FOR SESSION 1h"));

    assert_int_equal(surpool_conn_authenticate(c, "not-a-token", &err), SURPOOL_ERR_AUTH);
    assert_int_equal(err.code, SURPOOL_ERR_AUTH);
    assert_int_equal(err.server_code, -32000);
    assert_string_equal(err.kind, v2 ? "" : "Internal");
    assert_string_equal(err.message, v2 ? "There was a problem with the database: There was "
                                          "a problem with authentication"
                                        : "InvalidToken");

    surpool_credentials cred = {0};
    cred.ns = "test";
    cred.db = "refusals";
    cred.access = "locked";
    assert_int_equal(surpool_conn_signin(c, &cred, NULL, &err), SURPOOL_ERR_AUTH);
    assert_int_equal(err.server_code, v2 ? -32000 : -32006);
    assert_string_equal(err.kind, v2 ? "" : "Thrown");
    assert_non_null(strstr(err.message, "An error occurred: account locked"));

    assert_int_equal(surpool_conn_signup(c, "test", "refusals", "locked", NULL, NULL, &err),
                     SURPOOL_ERR_AUTH);
    assert_int_equal(err.server_code, v2 ? -32000 : -32006);
    assert_non_null(strstr(err.message, "An error occurred: no signups today"));
    assert_int_equal(surpool_conn_ping(c, &err), SURPOOL_OK); /* still usable */
    tk_release(c);
    tk_pool_destroy(p);

    /* Connection setup with a token the server refuses, the breaker on. */
    surpool_config cfg;
    base_config(&cfg, "refusals");
    cfg.user = NULL;
    cfg.pass = NULL;
    cfg.token = "not-a-token";
    cfg.breaker_threshold = 1;
    assert_int_equal(surpool_pool_create(&cfg, &p, &err), SURPOOL_OK);
    tk_pool_track(p);
    for (int i = 0; i < 2; i++) { /* the connect's own error, then the open circuit's */
        c = NULL;
        assert_int_equal(surpool_pool_acquire(p, 10000, &c, &err), SURPOOL_ERR_AUTH);
        assert_null(c);
        assert_int_equal(err.server_code, -32000);
        assert_non_null(strstr(err.message, "authentication with config.token"));
        assert_null(strstr(err.message, "not-a-token"));
    }
    tk_pool_destroy(p);
}

static void test_crud(void **state)
{
    (void)state;
    surpool_pool *p = make_pool("crud");
    surpool_conn *c = lease(p);
    surpool_error err;
    json_t *out = NULL, *data;

    data = json_pack("{s:s, s:i}", "name", "Tobie", "age", 30);
    assert_int_equal(surpool_conn_create(c, "person:tobie", data, &out, &err), SURPOOL_OK);
    json_decref(data);
    json_t *rec = json_is_array(out) ? json_array_get(out, 0) : out;
    assert_text(json_object_get(rec, "id"), "person:tobie");
    json_decref(out);

    assert_int_equal(surpool_conn_select(c, "person:tobie", &out, &err), SURPOOL_OK);
    rec = json_is_array(out) ? json_array_get(out, 0) : out;
    assert_string_equal(json_string_value(json_object_get(rec, "name")), "Tobie");
    json_decref(out);

    data = json_pack("{s:s}", "city", "London");
    assert_int_equal(surpool_conn_merge(c, "person:tobie", data, &out, &err), SURPOOL_OK);
    json_decref(data);
    rec = json_is_array(out) ? json_array_get(out, 0) : out;
    assert_string_equal(json_string_value(json_object_get(rec, "city")), "London");
    assert_int_equal(json_integer_value(json_object_get(rec, "age")), 30);
    json_decref(out);

    json_t *ops = json_pack("[{s:s, s:s, s:i}]", "op", "replace", "path", "/age", "value", 31);
    assert_int_equal(surpool_conn_patch(c, "person:tobie", ops, 0, &out, &err), SURPOOL_OK);
    json_decref(ops);
    json_decref(out);
    assert_int_equal(surpool_conn_select(c, "person:tobie", &out, &err), SURPOOL_OK);
    rec = json_is_array(out) ? json_array_get(out, 0) : out;
    assert_int_equal(json_integer_value(json_object_get(rec, "age")), 31);
    json_decref(out);

    data = json_pack("{s:s}", "name", "Replaced");
    assert_int_equal(surpool_conn_update(c, "person:tobie", data, &out, &err), SURPOOL_OK);
    json_decref(data);
    rec = json_is_array(out) ? json_array_get(out, 0) : out;
    assert_null(json_object_get(rec, "age")); /* update replaces */
    json_decref(out);

    data = json_pack("{s:s}", "name", "Jaime");
    assert_int_equal(surpool_conn_upsert(c, "person:jaime", data, &out, &err), SURPOOL_OK);
    json_decref(data);
    json_decref(out);

    data =
        json_pack("[{s:s, s:s}, {s:s, s:s}]", "id", "a", "name", "A", "id", "b", "name", "B");
    assert_int_equal(surpool_conn_insert(c, "thing", data, &out, &err), SURPOOL_OK);
    json_decref(data);
    assert_int_equal(json_array_size(out), 2);
    json_decref(out);

    assert_int_equal(
        surpool_conn_relate(c, "person:tobie", "knows", "person:jaime", NULL, &out, &err),
        SURPOOL_OK);
    rec = json_is_array(out) ? json_array_get(out, 0) : out;
    assert_text(json_object_get(rec, "in"), "person:tobie");
    assert_text(json_object_get(rec, "out"), "person:jaime");
    json_decref(out);

    json_t *args = json_pack("[s]", "abc");
    assert_int_equal(surpool_conn_run(c, "string::uppercase", NULL, args, &out, &err),
                     SURPOOL_OK);
    json_decref(args);
    assert_string_equal(json_string_value(out), "ABC");
    json_decref(out);

    assert_int_equal(surpool_conn_delete(c, "person:tobie", &out, &err), SURPOOL_OK);
    json_decref(out);
    assert_int_equal(surpool_conn_select(c, "person:tobie", &out, &err), SURPOOL_OK);
    assert_true(is_none(out) || (json_is_array(out) && json_array_size(out) == 0));
    json_decref(out);

    /* Client-side validation: nothing is sent. */
    uint64_t before = atomic_load(&p->requests);
    assert_int_equal(surpool_conn_select(c, "", &out, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_create(c, NULL, NULL, &out, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_merge(c, "person:x", NULL, &out, &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_use(c, NULL, "db", &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_let(c, "$x", json_null(), &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_patch(c, "person:x", NULL, 0, &out, &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_query(c, "RETURN \xff", NULL, &out, &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(atomic_load(&p->requests), before);
    tk_release(c);
    tk_pool_destroy(p);
}

/* The ids of the records statement i returned, as "tb:id,tb:id" in the
 * server's order (at most a few records). */
static void record_ids(json_t *reply, size_t i, char *buf, size_t size)
{
    json_t *rows = stmt_result(reply, i);
    assert_true(json_is_array(rows));
    buf[0] = '\0';
    size_t k;
    json_t *row;
    json_array_foreach(rows, k, row)
    {
        /* A record id is a string over JSON and a typed value over CBOR:
         * compare their text forms. */
        json_t *text = NULL;
        const char *id =
            surpool_value_text(json_object_get(row, "id"), &text, NULL) == SURPOOL_OK
                ? json_string_value(text)
                : NULL;
        size_t len = strlen(buf);
        snprintf(buf + len, size - len, "%s%s", k > 0 ? "," : "", id != NULL ? id : "?");
        json_decref(text);
    }
}

/* A lease that changed its session (a variable, another database) reaches the
 * next borrower reset to the configured state: the same connection (one slot),
 * back in the configured database, without the variable, seeing none of the
 * other database's rows. */
static void test_session_state_and_dirty_release(void **state)
{
    (void)state;
    surpool_config cfg;
    base_config(&cfg, "session");
    cfg.max_connections = 1; /* the next lease is the same connection */
    surpool_pool *p = NULL;
    surpool_error err;
    assert_int_equal(surpool_pool_create(&cfg, &p, &err), SURPOOL_OK);
    tk_pool_track(p);
    surpool_conn *c = lease(p);
    char ids[128];

    /* A row in the configured database. */
    json_t *out = query_ok(c, "CREATE marker:here; SELECT * FROM marker");
    record_ids(out, 0, ids, sizeof(ids));
    assert_string_equal(ids, "marker:here");
    json_decref(out);

    /* Dirty the session: a variable, and another database with its own row. */
    json_t *v = json_string("hello");
    assert_int_equal(surpool_conn_let(c, "greeting", v, &err), SURPOOL_OK);
    json_decref(v);
    out = query_ok(c, "RETURN $greeting");
    assert_string_equal(json_string_value(stmt_result(out, 0)), "hello");
    json_decref(out);
    assert_int_equal(surpool_conn_use(c, "test", "elsewhere", &err), SURPOOL_OK);
    out = query_ok(c, "CREATE marker:there; SELECT * FROM marker; RETURN session::db()");
    record_ids(out, 1, ids, sizeof(ids));
    assert_string_equal(ids, "marker:there"); /* `use` took effect */
    assert_string_equal(json_string_value(stmt_result(out, 2)), "elsewhere");
    json_decref(out);

    /* A transaction cannot outlive its request: the server refuses it and the
     * statement error stays visible. */
    assert_int_equal(surpool_conn_query(c, "BEGIN; CREATE marker:txn;", NULL, &out, &err),
                     SURPOOL_OK);
    assert_int_equal(surpool_query_check(out, &err), SURPOOL_ERR_SERVER);
    json_decref(out);
    surpool_conn *stale = c;
    tk_release(c); /* variable set, database "elsewhere" */

    /* The next borrower: the configured database, no variable, no foreign rows. */
    c = lease(p);
    /* Same connection, new lease: the old handle is refused and cannot touch the
     * new borrower's session nor give its lease back. */
    assert_int_equal(surpool_conn_use(stale, "test", "elsewhere", &err),
                     SURPOOL_ERR_INVALID_ARG);
    surpool_conn_release(stale); /* a logged no-op */
    out = query_ok(c, "RETURN $greeting; RETURN session::ns(); RETURN session::db(); "
                      "SELECT * FROM marker");
    if (!is_none(stmt_result(out, 0)))
        fail_msg("the variable set on the previous lease survived its release");
    assert_string_equal(json_string_value(stmt_result(out, 1)), "test");
    assert_string_equal(json_string_value(stmt_result(out, 2)), "session");
    record_ids(out, 3, ids, sizeof(ids));
    assert_string_equal(ids, "marker:here");
    json_decref(out);
    tk_release(c);

    surpool_stats st;
    surpool_pool_stats(p, &st);
    assert_int_equal(st.created, 1);   /* one connection throughout */
    assert_int_equal(st.resets, 1);    /* reset + signin + use on the first release */
    assert_int_equal(st.destroyed, 0); /* and kept */
    tk_pool_destroy(p);
}

static void test_unicode_and_nul_round_trip(void **state)
{
    (void)state;
    surpool_pool *p = make_pool("unicode");
    surpool_conn *c = lease(p);
    surpool_error err;
    static const char text[] = "h\xc3\xa9llo \xc2\xb5 \xf0\x9f\x9a\x80 a/b \"q\" \\ \x00 tail";
    size_t len = sizeof(text) - 1;
    json_t *s = json_stringn(text, len);
    json_t *vars = json_pack("{s:o}", "s", s);
    json_t *out = NULL;
    if (harness_core_major() == 2) {
        /* 2.x refuses a string that holds NUL: the whole request fails. */
        assert_int_equal(surpool_conn_query(c, "RETURN <string>$s", vars, &out, &err),
                         SURPOOL_ERR_SERVER);
        assert_null(out);
        assert_int_equal(err.server_code, -32000);
        assert_string_equal(
            err.message, "Serialization error: to be serialized string contained a null byte");
        json_decref(vars);
        len = (size_t)(strchr(text, '\0') - text); /* everything before the NUL */
        vars = json_pack("{s:s%}", "s", text, len);
    }
    assert_int_equal(surpool_conn_query(c, "RETURN <string>$s", vars, &out, &err), SURPOOL_OK);
    json_decref(vars);
    json_t *r = stmt_result(out, 0);
    assert_int_equal(json_string_length(r), len);
    assert_memory_equal(json_string_value(r), text, len);
    json_decref(out);
    tk_release(c);
    tk_pool_destroy(p);
}

static void test_large_result_and_limit(void **state)
{
    (void)state;
    surpool_pool *p = make_pool("large");
    surpool_conn *c = lease(p);
    surpool_error err;
    json_t *out = NULL;
    /* The core caps one string at 1 MiB: ten of them make a 10 MB reply. */
    assert_int_equal(surpool_conn_query(c,
                                        "RETURN array::map(array::range(0, 10), "
                                        "|$i| string::repeat('x', 1000000))",
                                        NULL, &out, &err),
                     SURPOOL_OK);
    json_t *arr = stmt_result(out, 0);
    assert_int_equal(json_array_size(arr), 10);
    for (size_t i = 0; i < 10; i++)
        assert_int_equal(json_string_length(json_array_get(arr, i)), 1000000);
    json_decref(out);
    tk_release(c);
    tk_pool_destroy(p);

    /* Over max_message_bytes: a clean error, then a working replacement. */
    surpool_config cfg;
    base_config(&cfg, "large");
    cfg.max_message_bytes = 1024 * 1024;
    cfg.max_connections = 1;
    assert_int_equal(surpool_pool_create(&cfg, &p, &err), SURPOOL_OK);
    tk_pool_track(p);
    c = lease(p);
    out = NULL;
    assert_int_equal(surpool_conn_query(c,
                                        "RETURN [string::repeat('y', 1000000), "
                                        "string::repeat('z', 1000000)]",
                                        NULL, &out, &err),
                     SURPOOL_ERR_TOO_LARGE);
    assert_null(out);
    tk_release(c);
    c = lease(p);
    assert_int_equal(surpool_conn_query(c, "RETURN 7", NULL, &out, &err), SURPOOL_OK);
    assert_int_equal(json_integer_value(stmt_result(out, 0)), 7);
    json_decref(out);
    tk_release(c);
    tk_pool_destroy(p);
}

/* Many requests in flight on ONE socket, answered out of order (shorter sleeps
 * first), each matched to its caller by id. Uses the transport directly. */
typedef struct pipe_req {
    surpool__treq req;
    int ms;
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    int *left;
    int order;
    int *next_order;
} pipe_req;

static void pipe_done(surpool__treq *r)
{
    pipe_req *pr = (pipe_req *)r;
    pthread_mutex_lock(pr->mu);
    pr->order = (*pr->next_order)++;
    (*pr->left)--;
    pthread_cond_signal(pr->cv);
    pthread_mutex_unlock(pr->mu);
}

static int locked_read(pthread_mutex_t *mu, const int *v)
{
    pthread_mutex_lock(mu);
    int r = *v;
    pthread_mutex_unlock(mu);
    return r;
}

static void test_pipelined_out_of_order(void **state)
{
    (void)state;
    skip_without_server_concurrency(); /* 2.x: replies come in request order */
    enum { N = 40 };
    surpool_pool *p = make_pool("pipeline");
    surpool_conn *c = lease(p);
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    int left = N, next_order = 0;
    pipe_req *reqs = calloc(N, sizeof(*reqs));
    for (int i = 0; i < N; i++) {
        pipe_req *pr = &reqs[i];
        pr->ms = (N - i) * 20; /* sent first = sleeps longest; 20 ms apart */
        pr->mu = &mu;
        pr->cv = &cv;
        pr->left = &left;
        pr->next_order = &next_order;
        char sql[96];
        snprintf(sql, sizeof(sql), "sleep(%dms); RETURN %d", pr->ms, i);
        json_t *params = json_pack("[s]", sql);
        pr->req.id = 1000 + i;
        assert_int_equal(surpool__wire_encode_request(p->cfg.pub.wire_format, pr->req.id,
                                                      "query", params, NULL, p->ops->headroom,
                                                      &pr->req.buf, &pr->req.len, NULL),
                         SURPOOL_OK);
        json_decref(params);
        pr->req.deadline_ns = surpool__deadline_after_ms(20000);
        pr->req.done = pipe_done;
        assert_int_equal(p->ops->submit(surpool__lease_conn_of(c)->t, &pr->req), SURPOOL_OK);
    }
    WAIT_UNTIL(locked_read(&mu, &left) == 0, 30000);
    int inversions = 0;
    for (int i = 0; i < N; i++) {
        pipe_req *pr = &reqs[i];
        surpool__wire_decode_reply(&pr->req); /* the transport hands over raw bytes */
        assert_int_equal(pr->req.status, SURPOOL_OK);
        json_t *res = NULL;
        assert_int_equal(surpool__codec_reply_result(pr->req.reply, &res, NULL), SURPOOL_OK);
        /* statement 1 is the RETURN (statement 0 the sleep) */
        assert_int_equal(json_integer_value(json_object_get(json_array_get(res, 1), "result")),
                         i);
        if (i > 0 && pr->order < reqs[i - 1].order)
            inversions++;
        json_decref(pr->req.reply);
        surpool__free(pr->req.buf);
    }
    /* The last-sent (shortest) finish first: replies came back out of order. */
    assert_true(reqs[N - 1].order < reqs[0].order);
    assert_true(inversions > N / 2);
    free(reqs);
    tk_release(c);
    tk_pool_destroy(p);
}

/* ------------------------------------------------------------------------- */
/* The burst regression against the real server                               */
/* ------------------------------------------------------------------------- */

typedef struct burst {
    surpool_pool *pool;
    const char *sql;
    pthread_barrier_t start;
    atomic_int ok, timeouts, other;
} burst;

static void *burst_worker(void *arg)
{
    burst *b = arg;
    pthread_barrier_wait(&b->start);
    surpool_conn *c = NULL;
    surpool_error err;
    surpool_err rc = surpool_pool_acquire(b->pool, 30000, &c, &err);
    if (rc == SURPOOL_OK) {
        json_t *out = NULL;
        rc = surpool_conn_query(c, b->sql, NULL, &out, &err);
        if (rc == SURPOOL_OK)
            rc = surpool_query_check(out, &err);
        json_decref(out);
        surpool_conn_release(c);
    }
    if (rc == SURPOOL_OK)
        atomic_fetch_add(&b->ok, 1);
    else if (rc == SURPOOL_ERR_TIMEOUT)
        atomic_fetch_add(&b->timeouts, 1);
    else
        atomic_fetch_add(&b->other, 1);
    return NULL;
}

static void run_real_burst(int callers, int max_conns, const char *sql)
{
    surpool_config cfg;
    base_config(&cfg, "burst");
    cfg.max_connections = max_conns;
    cfg.acquire_timeout_ms = 30000;
    surpool_pool *p = NULL;
    surpool_error err;
    assert_int_equal(surpool_pool_create(&cfg, &p, &err), SURPOOL_OK);
    tk_pool_track(p);
    burst b;
    memset(&b, 0, sizeof(b));
    b.pool = p;
    b.sql = sql;
    pthread_barrier_init(&b.start, NULL, (unsigned)callers);
    pthread_t *th = calloc((size_t)callers, sizeof(*th));
    for (int i = 0; i < callers; i++)
        assert_int_equal(pthread_create(&th[i], NULL, burst_worker, &b), 0);
    for (int i = 0; i < callers; i++)
        JOIN_OR_FAIL(th[i], 60, "a burst caller (acquire + query + release)");
    assert_int_equal(atomic_load(&b.ok), callers);
    assert_int_equal(atomic_load(&b.timeouts), 0);
    assert_int_equal(atomic_load(&b.other), 0);
    surpool_stats st;
    surpool_pool_stats(p, &st);
    assert_int_equal(st.acquired, (uint64_t)callers);
    assert_true(st.created <= (uint64_t)max_conns);
    assert_int_equal((int)(st.created - st.destroyed), st.idle + st.in_use);
    pthread_barrier_destroy(&b.start);
    free(th);
    tk_pool_destroy(p);
}

/* Many connections opened at once on a database that does not exist yet: each
 * `use` defines it, and SurrealDB 3.0 answers the losers with "Transaction
 * conflict ... can be retried". Setup retries those; creation must succeed. */
static void test_parallel_setup_on_new_database(void **state)
{
    (void)state;
    /* 2.x: the emulation runs the 40 setups one at a time (no conflict can
     * happen), and 40 password checks in a row exceed the connect timeout. */
    skip_without_server_concurrency();
    for (int round = 0; round < 4; round++) {
        surpool_config cfg;
        char db[32];
        snprintf(db, sizeof(db), "fresh%d", round);
        base_config(&cfg, db);
        cfg.ns = db; /* a new namespace too */
        cfg.max_connections = 40;
        cfg.min_connections = 40;
        cfg.max_concurrent_connects = 40;
        surpool_pool *p = NULL;
        surpool_error err;
        surpool_err rc = surpool_pool_create(&cfg, &p, &err);
        if (rc != SURPOOL_OK)
            fail_msg("round %d: create: %s", round, err.message);
        surpool_stats st;
        surpool_pool_stats(p, &st);
        assert_int_equal(st.idle, 40);
        tk_pool_destroy(p);
    }
}

/* The reproduction from the original report. */
static void test_burst_100_return1_on_50(void **state)
{
    (void)state;
    run_real_burst(100, 50, "RETURN 1");
}

static void test_burst_200_sleep_on_50(void **state)
{
    (void)state;
    skip_without_server_concurrency();
    run_real_burst(200, 50, "sleep(50ms); RETURN 1");
}

/* The shared lane on the real server: 200 sleeps of 50 ms, all in flight at
 * once over the lane's sockets (the server runs them concurrently). */
typedef struct lane_tally {
    atomic_int done, ok;
} lane_tally;

static void lane_cb(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    lane_tally *t = ud;
    (void)err;
    if (code == SURPOOL_OK && surpool_query_check(result, NULL) == SURPOOL_OK &&
        json_integer_value(json_object_get(json_array_get(result, 1), "result")) == 1)
        atomic_fetch_add(&t->ok, 1);
    atomic_fetch_add(&t->done, 1);
}

static void test_lane_burst_async(void **state)
{
    (void)state;
    skip_without_server_concurrency();
    surpool_config cfg;
    base_config(&cfg, "lane");
    cfg.max_connections = 4;
    cfg.shared_connections = 2;
    surpool_pool *p = NULL;
    surpool_error err;
    assert_int_equal(surpool_pool_create(&cfg, &p, &err), SURPOOL_OK);
    tk_pool_track(p);
    lane_tally t = {0, 0};
    for (int i = 0; i < 200; i++)
        assert_int_equal(surpool_query_async(p, "sleep(50ms); RETURN 1", NULL, lane_cb, &t),
                         SURPOOL_OK);
    WAIT_UNTIL(atomic_load(&t.done) == 200, 30000);
    assert_int_equal(atomic_load(&t.ok), 200);
    surpool_stats st;
    surpool_pool_stats(p, &st);
    assert_int_equal(st.lane_requests, 200);
    assert_true(st.lane_connections <= 2);
    tk_pool_destroy(p);
}

typedef struct lane_threads {
    surpool_pool *pool;
    atomic_int ok;
} lane_threads;

static void *lane_thread(void *arg)
{
    lane_threads *lt = arg;
    for (int i = 0; i < 20; i++) {
        json_t *out = NULL;
        /* Worker thread: check without cmocka asserts (they must not longjmp
         * across threads); the main thread asserts the count. */
        json_t *st = NULL;
        if (surpool_query(lt->pool, "RETURN 1", NULL, &out, NULL) == SURPOOL_OK &&
            (st = json_array_get(out, 0)) != NULL &&
            json_integer_value(json_object_get(st, "result")) == 1)
            atomic_fetch_add(&lt->ok, 1);
        json_decref(out);
    }
    return NULL;
}

static void test_lane_sync_threads(void **state)
{
    (void)state;
    surpool_pool *p = make_pool("lane");
    lane_threads lt = {p, 0};
    pthread_t th[32];
    for (int i = 0; i < 32; i++)
        assert_int_equal(pthread_create(&th[i], NULL, lane_thread, &lt), 0);
    for (int i = 0; i < 32; i++)
        JOIN_OR_FAIL(th[i], 60, "a caller of surpool_query");
    assert_int_equal(atomic_load(&lt.ok), 32 * 20);
    tk_pool_destroy(p);
}

int main(void)
{
    const char *wire = getenv("SURPOOL_TEST_WIRE");
    if (wire != NULL && strcmp(wire, "cbor") == 0)
        g_wire = SURPOOL_WIRE_CBOR;
    else if (wire != NULL && strcmp(wire, "json") != 0 && wire[0] != '\0') {
        fprintf(stderr, "SURPOOL_TEST_WIRE must be json or cbor\n");
        return 2;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_ping_version_query, tk_teardown),
        cmocka_unit_test_teardown(test_statement_error_stays_in_result, tk_teardown),
        cmocka_unit_test_teardown(test_failed_transaction_reports_the_cause, tk_teardown),
        cmocka_unit_test_teardown(test_wrong_password, tk_teardown),
        cmocka_unit_test_teardown(test_wrong_path_names_rpc, tk_teardown),
        cmocka_unit_test_teardown(test_unauthenticated_refused, tk_teardown),
        cmocka_unit_test_teardown(test_refused_credentials_are_auth, tk_teardown),
        cmocka_unit_test_teardown(test_crud, tk_teardown),
        cmocka_unit_test_teardown(test_session_state_and_dirty_release, tk_teardown),
        cmocka_unit_test_teardown(test_unicode_and_nul_round_trip, tk_teardown),
        cmocka_unit_test_teardown(test_large_result_and_limit, tk_teardown),
        cmocka_unit_test_teardown(test_pipelined_out_of_order, tk_teardown),
        cmocka_unit_test_teardown(test_parallel_setup_on_new_database, tk_teardown),
        cmocka_unit_test_teardown(test_burst_100_return1_on_50, tk_teardown),
        cmocka_unit_test_teardown(test_burst_200_sleep_on_50, tk_teardown),
        cmocka_unit_test_teardown(test_lane_burst_async, tk_teardown),
        cmocka_unit_test_teardown(test_lane_sync_threads, tk_teardown),
    };
    return cmocka_run_group_tests_name(g_wire == SURPOOL_WIRE_CBOR ? "integration-cbor"
                                                                   : "integration-json",
                                       tests, group_setup, group_teardown);
}
