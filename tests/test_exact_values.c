/*
 * Exact values against the real SurrealDB 3.0 core (tests/server/server.mjs)
 * over CBOR: user strings arrive as those strings byte for byte (on a lease,
 * on the lane, async, and stored then read back), and typed values round-trip
 * per tag with the server seeing the right type. One test shows what the JSON
 * format does to the same strings, so the difference stays measured.
 */
#include <math.h>
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

#include "harness.h"
#include "surpool.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static test_server g_server;

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

static surpool_pool *make_pool(surpool_wire_format wire, const char *db)
{
    surpool_config cfg;
    char url[160];
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/rpc?ns=test&db=%s", g_server.port, db);
    harness_root_config(&cfg, url, NULL); /* the url names ns and db */
    cfg.wire_format = wire;
    cfg.max_connections = 4;
    cfg.shared_connections = 2;
    surpool_pool *p = NULL;
    surpool_error err;
    if (surpool_pool_create(&cfg, &p, &err) != SURPOOL_OK)
        fail_msg("create: %s", err.message);
    return p;
}

static surpool_conn *lease(surpool_pool *p)
{
    surpool_conn *c = NULL;
    surpool_error err;
    if (surpool_pool_acquire(p, -1, &c, &err) != SURPOOL_OK)
        fail_msg("acquire: %s: %s", surpool_strerror(err.code), err.message);
    return c;
}

/* Result of statement i; fails the test if that statement did not succeed. */
static json_t *stmt(json_t *reply, size_t i)
{
    json_t *st = json_array_get(reply, i);
    if (st == NULL)
        fail_msg("no statement %zu in the reply", i);
    const char *status = json_string_value(json_object_get(st, "status"));
    if (status == NULL || strcmp(status, "OK") != 0) {
        char *d = json_dumps(st, JSON_COMPACT);
        fail_msg("statement %zu failed: %s", i, d);
    }
    return json_object_get(st, "result");
}

/* The strings of issue 11, plus NUL and a 1 MB text (added by tricky()). */
static const char *const tricky_list[] = {
    "person:01",
    "sku:007",
    "2024-01-01",
    "d'2024-01-01T00:00:00Z'",
    "E3B0C442-98FC-1C14-9AFB-4C8996FB9242",
    "1h30m",
    "NONE",
    "u'0000'",
    "",
    "Gr\xc3\xbc\xc3\x9f"
    "e, \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x9a\x80 \xc2\xb5s \xe2\x9f\xa8x\xe2\x9f\xa9",
    "Note: hi",
};

/* A JSON array of every tricky string: the list, "a\0b" and 1 MB of text.
 * SurrealDB 2.x refuses strings that hold NUL (tests/test_integration.c checks
 * the refusal): "a\0b" is left out there. */
static json_t *tricky(void)
{
    json_t *a = json_array();
    for (size_t i = 0; i < ARRAY_LEN(tricky_list); i++)
        json_array_append_new(a, json_string(tricky_list[i]));
    if (harness_core_major() != 2)
        json_array_append_new(a, json_stringn("a\0b", 3));
    size_t mb = 1000 * 1000;
    char *big = malloc(mb);
    assert_non_null(big);
    for (size_t i = 0; i < mb; i++)
        big[i] = (char)('a' + i % 26);
    memcpy(big, "person:", 7); /* and it looks like a record id */
    json_array_append_new(a, json_stringn(big, mb));
    free(big);
    return a;
}

/* Every element of `got` is a string equal, byte for byte, to `sent`'s. */
static void assert_same_strings(const json_t *sent, const json_t *got, const char *where)
{
    if (!json_is_array(got) || json_array_size(got) != json_array_size(sent))
        fail_msg("%s: expected an array of %zu strings", where, json_array_size(sent));
    for (size_t i = 0; i < json_array_size(sent); i++) {
        const json_t *s = json_array_get(sent, i), *g = json_array_get(got, i);
        if (!json_is_string(g) || json_string_length(g) != json_string_length(s) ||
            memcmp(json_string_value(g), json_string_value(s), json_string_length(s)) != 0)
            fail_msg("%s: string %zu (\"%.40s\") did not come back as the same string", where,
                     i, json_string_value(s));
    }
}

/* All true: the server saw a string each time. */
static void assert_all_true(const json_t *flags, size_t n, const char *where)
{
    if (!json_is_array(flags) || json_array_size(flags) != n)
        fail_msg("%s: expected %zu flags", where, n);
    for (size_t i = 0; i < n; i++) {
        if (!json_is_true(json_array_get(flags, i)))
            fail_msg("%s: the server did not see string %zu as a string", where, i);
    }
}

/* SurrealQL 2.x spells the type predicates type::is::string, 3.x type::is_string. */
#define STRINGS_SQL                                                                            \
    (harness_core_major() == 2 ? "RETURN [$v.map(|$s| type::is::string($s)), $v]"              \
                               : "RETURN [$v.map(|$s| type::is_string($s)), $v]")

static void check_strings_reply(json_t *reply, const json_t *sent, const char *where)
{
    json_t *r = stmt(reply, 0);
    assert_all_true(json_array_get(r, 0), json_array_size(sent), where);
    assert_same_strings(sent, json_array_get(r, 1), where);
}

static void test_strings_on_a_lease(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(SURPOOL_WIRE_CBOR, "exact");
    surpool_conn *c = lease(p);
    json_t *sent = tricky();
    json_t *vars = json_pack("{s:O}", "v", sent);
    json_t *out = NULL;
    surpool_error err;
    if (surpool_conn_query(c, STRINGS_SQL, vars, &out, &err) != SURPOOL_OK)
        fail_msg("query: %s", err.message);
    check_strings_reply(out, sent, "query variable");
    json_decref(out);
    /* A let value, then read back. */
    assert_int_equal(surpool_conn_let(c, "v", sent, &err), SURPOOL_OK);
    assert_int_equal(surpool_conn_query(c, STRINGS_SQL, NULL, &out, &err), SURPOOL_OK);
    check_strings_reply(out, sent, "let value");
    json_decref(out);
    /* run arguments: string::concat of one string is that string. */
    for (size_t i = 0; i < json_array_size(sent); i++) {
        json_t *args = json_pack("[O]", json_array_get(sent, i));
        assert_int_equal(surpool_conn_run(c, "string::concat", NULL, args, &out, &err),
                         SURPOOL_OK);
        json_t *one = json_pack("[O]", out);
        json_t *want = json_pack("[O]", json_array_get(sent, i));
        assert_same_strings(want, one, "run argument");
        json_decref(one);
        json_decref(want);
        json_decref(out);
        json_decref(args);
    }
    json_decref(vars);
    json_decref(sent);
    surpool_conn_release(c);
    surpool_pool_destroy(p);
}

static void test_strings_on_the_lane(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(SURPOOL_WIRE_CBOR, "exact");
    json_t *sent = tricky();
    json_t *vars = json_pack("{s:O}", "v", sent);
    json_t *out = NULL;
    surpool_error err;
    if (surpool_query(p, STRINGS_SQL, vars, &out, &err) != SURPOOL_OK)
        fail_msg("lane query: %s", err.message);
    check_strings_reply(out, sent, "lane");
    json_decref(out);
    json_decref(vars);
    json_decref(sent);
    surpool_pool_destroy(p);
}

typedef struct async_box {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    surpool_err code;
    json_t *result; /* our own copy: the callback's is borrowed */
} async_box;

static void async_cb(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)err;
    async_box *b = ud;
    pthread_mutex_lock(&b->mu);
    b->code = code;
    b->result = result != NULL ? json_deep_copy(result) : NULL;
    b->done = 1;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static void test_strings_async(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(SURPOOL_WIRE_CBOR, "exact");
    json_t *sent = tricky();
    json_t *vars = json_pack("{s:O}", "v", sent);
    async_box b = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, SURPOOL_OK, NULL};
    assert_int_equal(surpool_query_async(p, STRINGS_SQL, vars, async_cb, &b), SURPOOL_OK);
    /* Bounded wait: 60 s of 10 ms steps. */
    for (int i = 0; i < 6000; i++) {
        pthread_mutex_lock(&b.mu);
        int done = b.done;
        pthread_mutex_unlock(&b.mu);
        if (done)
            break;
        usleep(10000);
    }
    pthread_mutex_lock(&b.mu);
    int done = b.done;
    pthread_mutex_unlock(&b.mu);
    if (!done)
        fail_msg("the async query's callback did not run within 60 s");
    assert_int_equal(b.code, SURPOOL_OK);
    check_strings_reply(b.result, sent, "async");
    json_decref(b.result);
    json_decref(vars);
    json_decref(sent);
    surpool_pool_destroy(p);
}

/* Stored through every CRUD method that takes data, then read back. */
static void test_strings_stored_then_read(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(SURPOOL_WIRE_CBOR, "exact");
    surpool_conn *c = lease(p);
    json_t *sent = tricky();
    json_t *data = json_pack("{s:O}", "v", sent);
    json_t *out = NULL;
    surpool_error err;
    const char *things[] = {"stored:create", "stored:update", "stored:upsert", "stored:merge"};
    assert_int_equal(surpool_conn_create(c, things[0], data, &out, &err), SURPOOL_OK);
    json_decref(out);
    assert_int_equal(surpool_conn_create(c, things[1], NULL, &out, &err), SURPOOL_OK);
    json_decref(out);
    assert_int_equal(surpool_conn_update(c, things[1], data, &out, &err), SURPOOL_OK);
    json_decref(out);
    assert_int_equal(surpool_conn_upsert(c, things[2], data, &out, &err), SURPOOL_OK);
    json_decref(out);
    assert_int_equal(surpool_conn_create(c, things[3], NULL, &out, &err), SURPOOL_OK);
    json_decref(out);
    assert_int_equal(surpool_conn_merge(c, things[3], data, &out, &err), SURPOOL_OK);
    json_decref(out);
    for (size_t i = 0; i < ARRAY_LEN(things); i++) {
        assert_int_equal(surpool_conn_select(c, things[i], &out, &err), SURPOOL_OK);
        json_t *rec = json_is_array(out) ? json_array_get(out, 0) : out;
        assert_same_strings(sent, json_object_get(rec, "v"), things[i]);
        json_decref(out);
    }
    /* insert and relate data; then stored text read by a query. */
    json_t *rows = json_pack("[{s:s,s:O}]", "id", "ins", "v", sent);
    assert_int_equal(surpool_conn_insert(c, "stored", rows, &out, &err), SURPOOL_OK);
    json_decref(out);
    json_decref(rows);
    assert_int_equal(
        surpool_conn_relate(c, "stored:create", "linked", "stored:merge", data, &out, &err),
        SURPOOL_OK);
    json_decref(out);
    assert_int_equal(surpool_conn_query(c,
                                        "(SELECT VALUE v FROM ONLY stored:ins);"
                                        "(SELECT VALUE v FROM linked)[0]",
                                        NULL, &out, &err),
                     SURPOOL_OK);
    assert_same_strings(sent, stmt(out, 0), "insert");
    assert_same_strings(sent, stmt(out, 1), "relate");
    json_decref(out);
    json_decref(data);
    json_decref(sent);
    surpool_conn_release(c);
    surpool_pool_destroy(p);
}

/* The same strings over JSON: the server converts some of them. This is the
 * documented difference (docs/json-values.md), measured. */
static void test_json_converts_strings(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(SURPOOL_WIRE_JSON, "exact");
    json_t *vars = json_pack("{s:[s,s,s,s]}", "v", "person:01", "2024-01-01",
                             "E3B0C442-98FC-1C14-9AFB-4C8996FB9242", "Note: hi");
    json_t *out = NULL;
    surpool_error err;
    assert_int_equal(surpool_query(p,
                                   harness_core_major() == 2
                                       ? "RETURN $v.map(|$s| type::is::string($s))"
                                       : "RETURN $v.map(|$s| type::is_string($s))",
                                   vars, &out, &err),
                     SURPOOL_OK);
    json_t *want = json_pack("[b,b,b,b]", 0, 0, 0, 1);
    assert_true(json_equal(stmt(out, 0), want));
    json_decref(want);
    json_decref(out);
    json_decref(vars);
    /* A typed record id goes out as its text, which the server parses back. */
    vars = json_loads("{\"v\":{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":\"a b\"}}", 0,
                      NULL);
    int v2 = harness_core_major() == 2; /* 2.x has no type::of */
    assert_int_equal(surpool_query(p,
                                   v2 ? "RETURN [type::is::record($v), <string>$v]"
                                      : "RETURN [type::of($v), <string>$v]",
                                   vars, &out, &err),
                     SURPOOL_OK);
    want = v2 ? json_pack("[b,s]", 1, "person:`a b`")
              : json_pack("[s,s]", "record", "person:`a b`");
    assert_true(json_equal(stmt(out, 0), want));
    json_decref(want);
    json_decref(out);
    json_decref(vars);
    surpool_pool_destroy(p);
}

/* ---- typed values, one per tag ------------------------------------------ */

static const struct typed_case {
    const char *json;     /* sent as $v */
    const char *type_of;  /* what type::of($v) says on the server */
    const char *expected; /* what RETURN $v gives back; NULL: the same value */
} typed_cases[] = {
    {"{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":\"tobie\"}", "record", NULL},
    {"{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":\"01\"}", "record", NULL},
    {"{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":1}", "record", NULL},
    {"{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":[1,\"a\"]}", "record", NULL},
    {"{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":{\"a\":1}}", "record", NULL},
    {"{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":{\"$surreal\":\"uuid\",\"value\":"
     "\"0192a8f0-1111-7222-8333-444455556666\"}}",
     "record", NULL},
    {"{\"$surreal\":\"record\",\"value\":\"person:tobie\"}", "record",
     "{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":\"tobie\"}"},
    {"{\"$surreal\":\"uuid\",\"value\":\"e3b0c442-98fc-1c14-9afb-4c8996fb9242\"}", "uuid",
     NULL},
    {"{\"$surreal\":\"decimal\",\"value\":\"1.5\"}", "decimal", NULL},
    {"{\"$surreal\":\"decimal\",\"value\":\"3.1415926535897932384626433832\"}", "decimal",
     NULL},
    {"{\"$surreal\":\"datetime\",\"value\":\"2024-01-01T00:00:00Z\"}", "datetime", NULL},
    {"{\"$surreal\":\"datetime\",\"value\":\"2024-02-29T12:34:56.123456789Z\"}", "datetime",
     NULL},
    {"{\"$surreal\":\"duration\",\"value\":\"1h30m\"}", "duration", NULL},
    {"{\"$surreal\":\"duration\",\"value\":\"1y2w3d4h5m6s7ms8\xc2\xb5s9ns\"}", "duration",
     NULL},
    {"{\"$surreal\":\"none\"}", "none", NULL},
    {"{\"$surreal\":\"table\",\"value\":\"person\"}", "table", NULL},
    {"{\"$surreal\":\"bytes\",\"value\":\"AAEC/w==\"}", "bytes", NULL},
    {"{\"$surreal\":\"set\",\"value\":[1,2,3]}", "set", NULL},
    {"{\"$surreal\":\"range\",\"begin\":{\"included\":1},\"end\":{\"excluded\":5}}", "range",
     NULL},
    {"{\"$surreal\":\"range\",\"begin\":{\"excluded\":1},\"end\":{\"included\":5}}", "range",
     NULL},
    {"{\"$surreal\":\"range\",\"begin\":null,\"end\":{\"excluded\":3}}", "range", NULL},
    {"{\"$surreal\":\"file\",\"bucket\":\"b\",\"key\":\"/k.txt\"}", "file", NULL},
    {"{\"$surreal\":\"point\",\"value\":[1.5,-2.25]}", "geometry<point>", NULL},
    {"{\"$surreal\":\"line\",\"value\":[{\"$surreal\":\"point\",\"value\":[0.0,0.0]},"
     "{\"$surreal\":\"point\",\"value\":[1.0,1.0]}]}",
     "geometry<line>", NULL},
    {"{\"$surreal\":\"polygon\",\"value\":[{\"$surreal\":\"line\",\"value\":["
     "{\"$surreal\":\"point\",\"value\":[0.0,0.0]},{\"$surreal\":\"point\",\"value\":[1.0,0.0]}"
     ","
     "{\"$surreal\":\"point\",\"value\":[1.0,1.0]},{\"$surreal\":\"point\",\"value\":[0.0,0.0]}"
     "]}"
     "]}",
     "geometry<polygon>", NULL},
    {"{\"$surreal\":\"multipoint\",\"value\":[{\"$surreal\":\"point\",\"value\":[1.0,2.0]}]}",
     "geometry<multipoint>", NULL},
    {"{\"$surreal\":\"multiline\",\"value\":[{\"$surreal\":\"line\",\"value\":["
     "{\"$surreal\":\"point\",\"value\":[0.0,0.0]},{\"$surreal\":\"point\",\"value\":[1.0,1.0]}"
     "]}"
     "]}",
     "geometry<multiline>", NULL},
    {"{\"$surreal\":\"multipolygon\",\"value\":[{\"$surreal\":\"polygon\",\"value\":[{\"$"
     "surreal\":\"line\",\"value\":[{\"$surreal\":\"point\",\"value\":[0.0,0.0]},{\"$surreal\":"
     "\"point\",\"value\":[1.0,0.0]},{\"$surreal\":\"point\",\"value\":[0.0,0.0]}]}]}]}",
     "geometry<multipolygon>", NULL},
    {"{\"$surreal\":\"collection\",\"value\":[{\"$surreal\":\"point\",\"value\":[1.0,2.0]}]}",
     "geometry<collection>", NULL},
    {"{\"$surreal\":\"float\",\"value\":\"NaN\"}", "float", NULL},
    {"{\"$surreal\":\"float\",\"value\":\"Infinity\"}", "float", NULL},
    {"{\"$surreal\":\"float\",\"value\":\"-Infinity\"}", "float", NULL},
    {"{\"$surreal\":\"object\",\"value\":{\"$surreal\":\"user data\",\"n\":1}}", "object",
     NULL},
    {"9223372036854775807", "int", NULL},
    {"-9223372036854775808", "int", NULL},
    {"0.1", "float", NULL},
    {"-0.0", "float", NULL},
    {"1.0", "float", NULL},
};

static json_t *load(const char *text)
{
    json_error_t je;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &je);
    if (v == NULL)
        fail_msg("bad test JSON %s: %s", text, je.text);
    return v;
}

/* The query that shows which type the server saw: 3.x "RETURN type::of($v)".
 * SurrealQL 2.x has no type::of: "RETURN type::is::T($v)" with T from type_of
 * ("geometry<point>" → point) answers true there; a table has no predicate (the
 * server saw no string). 0 when the 2.x core has no such type (set, file): it
 * refuses the CBOR tag. */
static int type_query(const char *type_of, char *sql, size_t size)
{
    if (harness_core_major() != 2) {
        snprintf(sql, size, "RETURN type::of($v); RETURN $v");
        return 1;
    }
    if (strcmp(type_of, "set") == 0 || strcmp(type_of, "file") == 0)
        return 0;
    const char *t = strncmp(type_of, "geometry<", 9) == 0 ? type_of + 9 : type_of;
    if (strcmp(t, "table") == 0)
        snprintf(sql, size, "RETURN !type::is::string($v); RETURN $v");
    else
        snprintf(sql, size, "RETURN type::is::%.*s($v); RETURN $v", (int)strcspn(t, ">"), t);
    return 1;
}

static void test_typed_values_round_trip(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(SURPOOL_WIRE_CBOR, "exact");
    surpool_conn *c = lease(p);
    surpool_error err;
    int failures = 0;
    for (size_t i = 0; i < ARRAY_LEN(typed_cases); i++) {
        const struct typed_case *tc = &typed_cases[i];
        json_t *v = load(tc->json);
        json_t *vars = json_pack("{s:O}", "v", v);
        json_t *out = NULL;
        char sql[96];
        if (!type_query(tc->type_of, sql, sizeof(sql))) {
            assert_int_equal(surpool_conn_query(c, "RETURN $v", vars, &out, &err),
                             SURPOOL_ERR_SERVER);
            if (strstr(err.message, "Encountered an unknown CBOR tag") == NULL)
                fail_msg("%s: refused with %s", tc->json, err.message);
            json_decref(vars);
            json_decref(v);
            continue;
        }
        if (surpool_conn_query(c, sql, vars, &out, &err) != SURPOOL_OK)
            fail_msg("%s: %s", tc->json, err.message);
        json_t *type = stmt(out, 0), *back = stmt(out, 1);
        json_t *want = tc->expected != NULL ? load(tc->expected) : json_incref(v);
        char *got = json_dumps(back, JSON_COMPACT | JSON_ENCODE_ANY);
        if (harness_core_major() == 2
                ? !json_is_true(type)
                : !json_is_string(type) || strcmp(json_string_value(type), tc->type_of) != 0) {
            print_message("%s: the server saw type %s, expected %s\n", tc->json,
                          json_string_value(type), tc->type_of);
            failures++;
        }
        if (!json_equal(back, want)) {
            print_message("%s came back as %s\n", tc->json, got);
            failures++;
        }
        /* Sent back once more, it stays the same (value read → parameter). */
        json_t *vars2 = json_pack("{s:O}", "v", back);
        json_t *out2 = NULL;
        assert_int_equal(surpool_conn_query(c, "RETURN $v", vars2, &out2, &err), SURPOOL_OK);
        if (!json_equal(stmt(out2, 0), back)) {
            print_message("%s changed when sent back\n", got);
            failures++;
        }
        free(got);
        json_decref(out2);
        json_decref(vars2);
        json_decref(want);
        json_decref(out);
        json_decref(vars);
        json_decref(v);
    }
    assert_int_equal(failures, 0);
    /* json_equal() cannot tell -0.0 from 0.0: check the sign itself. */
    json_t *vars = json_pack("{s:f}", "v", -0.0), *out = NULL;
    assert_int_equal(surpool_conn_query(c, "RETURN $v", vars, &out, &err), SURPOOL_OK);
    assert_true(json_is_real(stmt(out, 0)) && signbit(json_real_value(stmt(out, 0))));
    json_decref(out);
    json_decref(vars);
    surpool_conn_release(c);
    surpool_pool_destroy(p);
}

/* Typed record ids and thing text as CRUD targets; malformed typed values and
 * unknown tags. */
static void test_things_and_refusals(void **state)
{
    (void)state;
    surpool_pool *p = make_pool(SURPOOL_WIRE_CBOR, "exact");
    surpool_conn *c = lease(p);
    surpool_error err;
    json_t *out = NULL, *data = json_pack("{s:s}", "v", "x");
    /* "thing:01" is SurrealQL for the integer id 1; ⟨01⟩ keeps the text "01". */
    assert_int_equal(surpool_conn_create(c, "thing:01", data, &out, &err), SURPOOL_OK);
    json_decref(out);
    assert_int_equal(surpool_conn_create(c,
                                         "thing:\xe2\x9f\xa8"
                                         "01\xe2\x9f\xa9",
                                         data, &out, &err),
                     SURPOOL_OK);
    json_decref(out);
    assert_int_equal(
        surpool_conn_query(c, "SELECT VALUE id FROM thing ORDER BY id", NULL, &out, &err),
        SURPOOL_OK);
    json_t *want = load("[{\"$surreal\":\"record\",\"tb\":\"thing\",\"id\":1},"
                        "{\"$surreal\":\"record\",\"tb\":\"thing\",\"id\":\"01\"}]");
    assert_true(json_equal(stmt(out, 0), want));
    json_decref(want);
    json_decref(out);
    /* Thing text that is not SurrealQL is refused before sending. */
    assert_int_equal(surpool_conn_select(c, "Note: hi", &out, &err), SURPOOL_ERR_INVALID_ARG);
    /* A malformed typed value: INVALID_ARG, nothing sent, the lease still works. */
    json_t *bad = load("{\"v\":{\"$surreal\":\"datetime\",\"value\":\"yesterday\"}}");
    assert_int_equal(surpool_conn_query(c, "RETURN $v", bad, &out, &err),
                     SURPOOL_ERR_INVALID_ARG);
    json_decref(bad);
    /* An unknown tag reaches the server, which refuses it: a server error. */
    json_t *tag = load("{\"v\":{\"$surreal\":\"tag\",\"tag\":1234,\"value\":1}}");
    assert_int_equal(surpool_conn_query(c, "RETURN $v", tag, &out, &err), SURPOOL_ERR_SERVER);
    json_decref(tag);
    assert_int_equal(surpool_conn_ping(c, &err), SURPOOL_OK);
    json_decref(data);
    surpool_conn_release(c);
    surpool_pool_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strings_on_a_lease),
        cmocka_unit_test(test_strings_on_the_lane),
        cmocka_unit_test(test_strings_async),
        cmocka_unit_test(test_strings_stored_then_read),
        cmocka_unit_test(test_json_converts_strings),
        cmocka_unit_test(test_typed_values_round_trip),
        cmocka_unit_test(test_things_and_refusals),
    };
    return cmocka_run_group_tests_name("exact-values", tests, group_setup, group_teardown);
}
