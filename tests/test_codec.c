/*
 * Unit tests for src/codec.c: request encoding, frame decoding and classification,
 * server error mapping. Data-driven where the cases are alike.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec.h"
#include "utf8.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- helpers ------------------------------------------------------------ */

/* Strict UTF-8 check for messages we produce. */
static int utf8_ok(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t n = *p < 0x80             ? 1
                   : (*p & 0xE0) == 0xC0 ? 2
                   : (*p & 0xF0) == 0xE0 ? 3
                   : (*p & 0xF8) == 0xF0 ? 4
                                         : 0;
        if (n == 0)
            return 0;
        for (size_t i = 1; i < n; i++) {
            if ((p[i] & 0xC0) != 0x80)
                return 0;
        }
        p += n;
    }
    return 1;
}

/* An allocator that fails the Nth call (counting from 0); -1 = never. Shared
 * by surpool_set_allocator() and json_set_alloc_funcs() tests. */
static long g_fail_at = -1;
static long g_calls;

static void *failing_malloc(size_t n)
{
    if (g_fail_at >= 0 && g_calls++ == g_fail_at)
        return NULL;
    return malloc(n);
}

static void *failing_realloc(void *p, size_t n)
{
    if (g_fail_at >= 0 && g_calls++ == g_fail_at)
        return NULL;
    return realloc(p, n);
}

static void fail_nth(long n)
{
    g_fail_at = n;
    g_calls = 0;
}

static int restore_allocators(void **state)
{
    (void)state;
    g_fail_at = -1;
    surpool_set_allocator(NULL, NULL, NULL);
    json_set_alloc_funcs(malloc, free);
    return 0;
}

/* ---- encoding ----------------------------------------------------------- */

struct encode_case {
    int64_t id;
    const char *method;
    const char *params; /* JSON text (loaded with JSON_ALLOW_NUL) or NULL */
    const char *expect; /* exact wire text */
};

static const struct encode_case encode_cases[] = {
    {1, "ping", NULL, "{\"id\":1,\"method\":\"ping\",\"params\":[]}"},
    {2, "ping", "[]", "{\"id\":2,\"method\":\"ping\",\"params\":[]}"},
    {0, "use", "[\"ns\",\"db\"]", "{\"id\":0,\"method\":\"use\",\"params\":[\"ns\",\"db\"]}"},
    {-7, "version", "[]", "{\"id\":-7,\"method\":\"version\",\"params\":[]}"},
    {INT64_MAX, "ping", NULL, "{\"id\":9223372036854775807,\"method\":\"ping\",\"params\":[]}"},
    {INT64_MIN, "ping", NULL,
     "{\"id\":-9223372036854775808,\"method\":\"ping\",\"params\":[]}"},
    {3, "insert_relation", "[\"likes\",{}]",
     "{\"id\":3,\"method\":\"insert_relation\",\"params\":[\"likes\",{}]}"},
    /* raw UTF-8, never \u escapes: µ, é, CJK, emoji (outside the BMP) */
    {4, "query", "[\"RETURN '\xc2\xb5 \xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80'\"]",
     "{\"id\":4,\"method\":\"query\",\"params\":"
     "[\"RETURN '\xc2\xb5 \xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80'\"]}"},
    /* an embedded NUL survives as \u0000 */
    {5, "let", "[\"x\",\"a\\u0000b\"]",
     "{\"id\":5,\"method\":\"let\",\"params\":[\"x\",\"a\\u0000b\"]}"},
    /* slashes are not escaped (the server rejects \/) */
    {6, "select", "[\"a/b//c\"]", "{\"id\":6,\"method\":\"select\",\"params\":[\"a/b//c\"]}"},
    /* mandatory escapes only */
    {7, "query", "[\"q\\\"\\\\\\n\\t\\u0001\"]",
     "{\"id\":7,\"method\":\"query\",\"params\":[\"q\\\"\\\\\\n\\t\\u0001\"]}"},
    /* nested values, key order kept */
    {8, "create", "[\"person\",{\"z\":1,\"a\":[1,2.5,true,false,null,{\"b\":{\"c\":[]}}]}]",
     "{\"id\":8,\"method\":\"create\",\"params\":[\"person\",{\"z\":1,\"a\":[1,2.5,true,"
     "false,null,{\"b\":{\"c\":[]}}]}]}"},
    {9, "query", "[\"RETURN $x\",{\"x\":-9223372036854775808}]",
     "{\"id\":9,\"method\":\"query\",\"params\":"
     "[\"RETURN $x\",{\"x\":-9223372036854775808}]}"},
};

static void test_encode_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(encode_cases); i++) {
        const struct encode_case *c = &encode_cases[i];
        json_t *params = NULL;
        if (c->params != NULL) {
            json_error_t jerr;
            params = json_loads(c->params, JSON_ALLOW_NUL, &jerr);
            assert_non_null(params);
        }
        char *buf = NULL;
        size_t len = 0;
        surpool_error err;
        assert_int_equal(
            surpool__codec_encode_request(c->id, c->method, params, 0, &buf, &len, &err),
            SURPOOL_OK);
        assert_int_equal(len, strlen(c->expect));
        assert_memory_equal(buf, c->expect, len);
        assert_int_equal(buf[len], '\0');

        /* Round trip: the wire text decodes back to the same envelope. */
        surpool__frame f;
        assert_int_equal(surpool__codec_decode_frame(buf, len, &f, &err), SURPOOL_OK);
        assert_int_equal(f.kind, SURPOOL__FRAME_REPLY);
        assert_true(f.id == c->id);
        assert_string_equal(json_string_value(json_object_get(f.root, "method")), c->method);
        json_t *back = json_object_get(f.root, "params");
        if (params != NULL)
            assert_true(json_equal(back, params));
        else
            assert_int_equal(json_array_size(back), 0);
        json_decref(f.root);
        surpool__free(buf);
        json_decref(params);
    }
}

static void test_encode_headroom(void **state)
{
    (void)state;
    static const size_t headrooms[] = {0, 1, 10, 16, 255, 256, 257, 4096};
    json_t *params = json_pack("[s, {s:s}]", "RETURN $v", "v", "\xc2\xb5/x");
    assert_non_null(params);
    const char *expect = "{\"id\":42,\"method\":\"query\",\"params\":[\"RETURN "
                         "$v\",{\"v\":\"\xc2\xb5/x\"}]}";
    for (size_t i = 0; i < ARRAY_LEN(headrooms); i++) {
        size_t h = headrooms[i];
        char *buf = NULL;
        size_t len = 0;
        assert_int_equal(
            surpool__codec_encode_request(42, "query", params, h, &buf, &len, NULL),
            SURPOOL_OK);
        assert_int_equal(len, strlen(expect));
        assert_memory_equal(buf + h, expect, len);
        assert_int_equal(buf[h + len], '\0');
        /* The headroom is ours to write (ASan checks the bounds). */
        memset(buf, 'H', h);
        assert_memory_equal(buf + h, expect, len);
        surpool__free(buf);
    }
    json_decref(params);
}

/* A large value forces the buffer through several reallocs. */
static void test_encode_large(void **state)
{
    (void)state;
    size_t n = 300000;
    char *big = malloc(n + 1);
    assert_non_null(big);
    for (size_t i = 0; i < n; i++)
        big[i] = (char)('a' + i % 26);
    big[n] = '\0';
    json_t *params = json_array();
    json_array_append_new(params, json_string(big));
    for (int i = 0; i < 1000; i++)
        json_array_append_new(params, json_integer(i));

    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(surpool__codec_encode_request(1, "query", params, 32, &buf, &len, NULL),
                     SURPOOL_OK);
    assert_int_equal(strlen(buf + 32), len);
    surpool__frame f;
    assert_int_equal(surpool__codec_decode_frame(buf + 32, len, &f, NULL), SURPOOL_OK);
    assert_true(json_equal(json_object_get(f.root, "params"), params));
    json_decref(f.root);
    surpool__free(buf);
    json_decref(params);
    free(big);
}

struct bad_encode_case {
    const char *method;
    const char *params; /* JSON text, loaded with JSON_DECODE_ANY, or NULL */
};

static const struct bad_encode_case bad_encode_cases[] = {
    {NULL, NULL},      {"", NULL},        {"Query", NULL},         {"qu ery", NULL},
    {"query1", NULL},  {"query-x", NULL}, {"ping\n", NULL},        {"\xc2\xb5", NULL},
    {"q\"", NULL},     {"query", "{}"},   {"query", "\"x\""},      {"query", "1"},
    {"query", "null"}, {"query", "true"}, {"query", "{\"a\":[]}"},
};

static void test_encode_invalid_args(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(bad_encode_cases); i++) {
        const struct bad_encode_case *c = &bad_encode_cases[i];
        json_t *params = NULL;
        if (c->params != NULL) {
            json_error_t jerr;
            params = json_loads(c->params, JSON_DECODE_ANY, &jerr);
            assert_non_null(params);
        }
        char *buf = (char *)"untouched";
        size_t len = 12345;
        surpool_error err;
        assert_int_equal(
            surpool__codec_encode_request(1, c->method, params, 0, &buf, &len, &err),
            SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(err.code, SURPOOL_ERR_INVALID_ARG);
        assert_true(strlen(err.message) > 0);
        assert_string_equal(buf, "untouched"); /* *out set only on success */
        assert_int_equal(len, 12345);
        /* err is optional */
        assert_int_equal(
            surpool__codec_encode_request(1, c->method, params, 0, &buf, &len, NULL),
            SURPOOL_ERR_INVALID_ARG);
        json_decref(params);
    }
    char *buf;
    size_t len;
    assert_int_equal(surpool__codec_encode_request(1, "ping", NULL, 0, NULL, &len, NULL),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool__codec_encode_request(1, "ping", NULL, 0, &buf, NULL, NULL),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool__codec_encode_request(1, "ping", NULL, SIZE_MAX, &buf, &len, NULL),
                     SURPOOL_ERR_INVALID_ARG);
}

/* Values jansson refuses to encode end in INVALID_ARG with a clear message. */
static void test_encode_unencodable(void **state)
{
    (void)state;
    surpool_error err;
    char *buf;
    size_t len;

    /* NaN and infinities: jansson will not even build the value. */
    assert_null(json_real(NAN));
    assert_null(json_real(INFINITY));
    assert_null(json_real(-INFINITY));

    /* A string that is not UTF-8 (only possible through *_nocheck). */
    json_t *params = json_array();
    json_array_append_new(params, json_stringn_nocheck("\xff\xfe", 2));
    assert_int_equal(surpool__codec_encode_request(1, "query", params, 8, &buf, &len, &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "not valid UTF-8"));
    json_decref(params);

    /* A reference cycle: a = [b], b = [a]. */
    json_t *a = json_array();
    json_t *b = json_array();
    json_array_append(a, b);
    json_array_append(b, a);
    params = json_pack("[O]", a);
    assert_int_equal(surpool__codec_encode_request(1, "query", params, 0, &buf, &len, &err),
                     SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "cycle"));
    json_array_clear(b); /* break the cycle so everything is freed */
    json_decref(params);
    json_decref(a);
    json_decref(b);
}

/* Fail each of our allocations in turn: NOMEM, nothing leaked, then success. */
static void test_encode_nomem(void **state)
{
    (void)state;
    json_t *params = json_array();
    for (int i = 0; i < 200; i++)
        json_array_append_new(params, json_string("0123456789abcdef0123456789abcdef"));
    surpool_set_allocator(failing_malloc, failing_realloc, free);
    long n;
    for (n = 0;; n++) {
        fail_nth(n);
        char *buf = NULL;
        size_t len = 0;
        surpool_error err;
        surpool_err rc =
            surpool__codec_encode_request(1, "query", params, 16, &buf, &len, &err);
        if (rc == SURPOOL_OK) {
            surpool__free(buf);
            break;
        }
        assert_int_equal(rc, SURPOOL_ERR_NOMEM);
        assert_null(buf);
    }
    assert_true(n >= 3); /* the first malloc and at least two reallocs */
    json_decref(params);
}

/* ---- decoding ----------------------------------------------------------- */

struct decode_case {
    const char *text;
    size_t len; /* 0: strlen(text) */
    surpool_err rc;
    surpool__frame_kind kind;
    int64_t id;
    surpool_err reply_rc; /* for REPLY frames: surpool__codec_reply_result() */
    int server_code;
    const char *kind_str; /* expected err.kind after reply_result / map_error */
    const char *msg_sub;  /* substring expected in err.message, or NULL */
};

#define OK_REPLY(t, i)                                                                         \
    {                                                                                          \
        t, 0, SURPOOL_OK, SURPOOL__FRAME_REPLY, i, SURPOOL_OK, 0, "", NULL                     \
    }
#define PROTO(t, m)                                                                            \
    {                                                                                          \
        t, 0, SURPOOL_ERR_PROTOCOL, 0, 0, 0, 0, "", m                                          \
    }

static const struct decode_case decode_cases[] = {
    OK_REPLY("{\"id\":1,\"result\":null}", 1),
    OK_REPLY("{\"result\":[1,2],\"id\":2}", 2),
    OK_REPLY("{\"id\":-5,\"result\":1}", -5),
    OK_REPLY("{\"id\":0,\"result\":{}}", 0),
    OK_REPLY("{\"id\":9223372036854775807,\"result\":\"surrealdb-3.0.2\"}", INT64_MAX),
    OK_REPLY("{\"id\":-9223372036854775808,\"result\":true}", INT64_MIN),
    OK_REPLY("  {\"id\":3,\"result\":\"a\\u0000b\"}\n", 3),
    OK_REPLY("{\"id\":4,\"result\":[{\"status\":\"OK\",\"result\":[],\"time\":\"83."
             "1\xc2\xb5s\"}]}",
             4),
    OK_REPLY("{\"id\":5,\"error\":null,\"result\":1}", 5),
    /* 1.x/2.x error */
    {"{\"id\":1,\"error\":{\"code\":-32000,\"message\":\"x\"}}", 0, SURPOOL_OK,
     SURPOOL__FRAME_REPLY, 1, SURPOOL_ERR_SERVER, -32000, "", "x"},
    /* 3.x error with kind, details, cause */
    {"{\"id\":7,\"error\":{\"code\":-32000,\"message\":\"Parse error: Unexpected token\","
     "\"kind\":\"Validation\",\"details\":{\"kind\":\"Parse\"},\"cause\":{\"code\":1}}}",
     0, SURPOOL_OK, SURPOOL__FRAME_REPLY, 7, SURPOOL_ERR_SERVER, -32000, "Validation",
     "Parse error: Unexpected token"},
    /* authentication */
    {"{\"id\":8,\"error\":{\"code\":-32002,\"message\":\"There was a problem with "
     "authentication\",\"kind\":\"NotAllowed\"}}",
     0, SURPOOL_OK, SURPOOL__FRAME_REPLY, 8, SURPOOL_ERR_AUTH, -32002, "NotAllowed",
     "authentication"},
    {"{\"id\":9,\"error\":{\"code\":-32002}}", 0, SURPOOL_OK, SURPOOL__FRAME_REPLY, 9,
     SURPOOL_ERR_AUTH, -32002, "", "without message"},
    /* error wins over result */
    {"{\"id\":10,\"result\":1,\"error\":{\"code\":-32601,\"message\":\"Method not "
     "found\"}}",
     0, SURPOOL_OK, SURPOOL__FRAME_REPLY, 10, SURPOOL_ERR_SERVER, -32601, "",
     "Method not found"},
    /* malformed errors stay SERVER errors */
    {"{\"id\":11,\"error\":\"boom\"}", 0, SURPOOL_OK, SURPOOL__FRAME_REPLY, 11,
     SURPOOL_ERR_SERVER, 0, "", "malformed"},
    {"{\"id\":12,\"error\":{}}", 0, SURPOOL_OK, SURPOOL__FRAME_REPLY, 12, SURPOOL_ERR_SERVER, 0,
     "", "without message"},
    {"{\"id\":13,\"error\":{\"code\":\"-32002\",\"message\":7,\"kind\":[]}}", 0, SURPOOL_OK,
     SURPOOL__FRAME_REPLY, 13, SURPOOL_ERR_SERVER, 0, "", "without message"},
    {"{\"id\":14,\"error\":{\"code\":-32002.0,\"message\":\"m\"}}", 0, SURPOOL_OK,
     SURPOOL__FRAME_REPLY, 14, SURPOOL_ERR_SERVER, 0, "", "m"},
    /* a code that only narrows to -32002 is not an auth error; clamped */
    {"{\"id\":15,\"error\":{\"code\":4294935294,\"message\":\"m\"}}", 0, SURPOOL_OK,
     SURPOOL__FRAME_REPLY, 15, SURPOOL_ERR_SERVER, INT32_MAX, "", "m"},
    {"{\"id\":16,\"error\":{\"code\":-9223372036854775808,\"message\":\"m\"}}", 0, SURPOOL_OK,
     SURPOOL__FRAME_REPLY, 16, SURPOOL_ERR_SERVER, INT32_MIN, "", "m"},
    /* REPLY with neither result nor error */
    {"{\"id\":17}", 0, SURPOOL_OK, SURPOOL__FRAME_REPLY, 17, SURPOOL_ERR_PROTOCOL, 0, "",
     "neither"},
    {"{\"id\":18,\"error\":null}", 0, SURPOOL_OK, SURPOOL__FRAME_REPLY, 18,
     SURPOOL_ERR_PROTOCOL, 0, "", "neither"},

    /* notifications */
    {"{\"result\":{\"action\":\"CREATE\",\"id\":\"uuid\",\"result\":{}}}", 0, SURPOOL_OK,
     SURPOOL__FRAME_NOTIFICATION, 0, 0, 0, "", NULL},
    {"{\"id\":null,\"result\":{\"action\":\"KILLED\",\"id\":\"u\",\"record\":\"t:1\"}}", 0,
     SURPOOL_OK, SURPOOL__FRAME_NOTIFICATION, 0, 0, 0, "", NULL},

    /* orphan errors (server lost the id) */
    {"{\"error\":{\"code\":-32700,\"message\":\"Parse error\"}}", 0, SURPOOL_OK,
     SURPOOL__FRAME_ORPHAN_ERROR, 0, SURPOOL_ERR_SERVER, -32700, "", "Parse error"},
    {"{\"id\":null,\"error\":{\"code\":-32600,\"message\":\"Invalid request\"}}", 0, SURPOOL_OK,
     SURPOOL__FRAME_ORPHAN_ERROR, 0, SURPOOL_ERR_SERVER, -32600, "", "Invalid request"},
    /* an error never becomes a notification, even next to a notification-like result */
    {"{\"result\":{\"action\":\"CREATE\"},\"error\":{\"code\":-32000,\"message\":\"e\"}}", 0,
     SURPOOL_OK, SURPOOL__FRAME_ORPHAN_ERROR, 0, SURPOOL_ERR_SERVER, -32000, "", "e"},

    /* protocol errors */
    PROTO("{\"id\":1,\"result\":", "end of file"),
    PROTO("{\"id\":1,\"result\":1", "line 1"),
    PROTO("{\"id\":1,\"result\":1}x", "end of file expected"),
    PROTO("{\"id\":1,\"result\":1}{}", "end of file expected"),
    PROTO("[1,2]", "array"),
    PROTO("[]", "array"),
    PROTO("\"str\"", "invalid JSON"),
    PROTO("42", "invalid JSON"),
    PROTO("null", "invalid JSON"),
    PROTO("", "empty"),
    PROTO("   ", "invalid JSON"),
    PROTO("{\"id\":\"1\",\"result\":1}", "a string"),
    PROTO("{\"id\":\"a:b\",\"error\":{}}", "a string"),
    PROTO("{\"id\":1.0,\"result\":1}", "a real"),
    PROTO("{\"id\":true,\"result\":1}", "a boolean"),
    PROTO("{\"id\":{},\"result\":1}", "an object"),
    PROTO("{\"id\":[1],\"result\":1}", "an array"),
    PROTO("{\"id\":99999999999999999999,\"result\":1}", "too big"),
    PROTO("{\"id\":1,\"result\":1e400}", "overflow"),
    PROTO("{\"result\":1}", "neither"),
    PROTO("{\"result\":{\"id\":\"u\"}}", "neither"),
    PROTO("{\"result\":[{\"action\":\"CREATE\"}]}", "neither"),
    PROTO("{}", "neither"),
    PROTO("{\"id\":null}", "neither"),
    PROTO("{\"id\":1,\"result\":\"\xff\"}", "invalid JSON"),
    PROTO("{\"id\":1,\"result\":\"\xc3\"}", "invalid JSON"),
    PROTO("{\"id\":1,\"result\":\"\\ud800\"}", "invalid JSON"),
    PROTO("{\"id\":1,\"result\":'x'}", "invalid JSON"),
    PROTO("{\"id\":1,\"result\":1,}", "invalid JSON"),
    PROTO("\xef\xbb\xbf{\"id\":1,\"result\":1}", "invalid JSON"),
    /* fuzz regression: jansson's error text quotes half of 'µ' after a bad
     * escape; the message must stay valid UTF-8 */
    PROTO("[\"\\\xc2\xb5\"]", "invalid escape"),
    PROTO("{\"id\":13,\"error\":{\"code\":-32000,\"message\":\"\xc2\xb5\\\xc2\xb5null\"}}",
          "invalid escape"),
    PROTO("[\"\\\xf0\x9f\x98\x80\"]", "invalid escape"),
    /* duplicate keys anywhere are refused: keeping either "id" would let a
     * hostile server route the reply to another caller */
    PROTO("{\"id\":1,\"id\":6,\"result\":1}", "repeats an object key"),
    PROTO("{\"id\":1,\"result\":1,\"result\":2}", "repeats an object key"),
    PROTO("{\"id\":1,\"error\":{\"code\":1,\"code\":-32002,\"message\":\"m\"}}",
          "repeats an object key"),
    PROTO("{\"id\":1,\"result\":[{\"a\":1,\"a\":1}]}", "repeats an object key"),
    PROTO("{\"result\":{\"action\":\"CREATE\",\"action\":\"DELETE\"}}",
          "repeats an object key"),
    /* a NUL byte outside a string: len covers it */
    {"{\"id\":1,\"result\":1}\0", 20, SURPOOL_ERR_PROTOCOL, 0, 0, 0, 0, "", "invalid JSON"},
    /* a NUL byte inside the buffer but before the end: the frame is truncated there */
    {"{\"id\":1,\0\"result\":1}", 20, SURPOOL_ERR_PROTOCOL, 0, 0, 0, 0, "", "invalid JSON"},
};

static void check_decode_case(const struct decode_case *c, int with_err)
{
    size_t len = c->len ? c->len : strlen(c->text);
    surpool_error err;
    surpool_error *e = with_err ? &err : NULL;
    surpool__frame f;
    memset(&err, 0x5A, sizeof(err));
    memset(&f, 0x5A, sizeof(f));
    surpool_err rc = surpool__codec_decode_frame(c->text, len, &f, e);
    if (rc != c->rc)
        fail_msg("case %s: rc %d, expected %d (%s)", c->text, rc, c->rc,
                 with_err ? err.message : "");
    if (rc != SURPOOL_OK) {
        assert_null(f.root);
        if (with_err) {
            assert_int_equal(err.code, rc);
            assert_true(utf8_ok(err.message));
            if (c->msg_sub != NULL && strstr(err.message, c->msg_sub) == NULL)
                fail_msg("case %s: message '%s' lacks '%s'", c->text, err.message, c->msg_sub);
        }
        return;
    }
    assert_non_null(f.root);
    assert_int_equal(f.kind, c->kind);
    if (c->kind == SURPOOL__FRAME_REPLY) {
        assert_true(f.id == c->id);
        json_t *result = (json_t *)1;
        memset(&err, 0x5A, sizeof(err));
        rc = surpool__codec_reply_result(f.root, &result, e);
        if (rc != c->reply_rc)
            fail_msg("case %s: reply rc %d, expected %d", c->text, rc, c->reply_rc);
        if (rc == SURPOOL_OK) {
            assert_ptr_equal(result, json_object_get(f.root, "result"));
        } else {
            assert_null(result);
        }
    } else if (c->kind == SURPOOL__FRAME_ORPHAN_ERROR) {
        rc = surpool__codec_map_error(json_object_get(f.root, "error"), e);
        assert_int_equal(rc, c->reply_rc);
    } else {
        assert_true(json_is_object(json_object_get(f.root, "result")));
    }
    if (rc != SURPOOL_OK && with_err) {
        assert_int_equal(err.code, rc);
        assert_int_equal(err.server_code, c->server_code);
        assert_string_equal(err.kind, c->kind_str);
        assert_true(utf8_ok(err.message));
        if (c->msg_sub != NULL && strstr(err.message, c->msg_sub) == NULL)
            fail_msg("case %s: message '%s' lacks '%s'", c->text, err.message, c->msg_sub);
    }
    json_decref(f.root);
}

/* Routing without decoding: route's kind and id, what it refuses, and where
 * it stops (at the first integer id: what follows is the full decode's to
 * refuse). The raw path's walk (peek_info) goes to the end of the frame and
 * refuses more; both agree with the full decode wherever it accepts. */
static void test_peek_table(void **state)
{
    (void)state;
    /* `full` is peek_info's answer where it differs from route's (0: the same). */
    static const struct {
        const char *in;
        surpool_err rc;
        surpool__frame_kind kind;
        int64_t id;
        surpool_err full;
    } rows[] = {
        {"{\"id\":7,\"result\":null}", SURPOOL_OK, SURPOOL__FRAME_REPLY, 7, 0},
        {" { \"result\" : {\"id\":9,\"x\":[1,{\"id\":3}]} , \"id\" : -12 } ", SURPOOL_OK,
         SURPOOL__FRAME_REPLY, -12, 0},
        {"{\"i\\u0064\":5,\"result\":\"a\\\"}\"}", SURPOOL_OK, SURPOOL__FRAME_REPLY, 5, 0},
        {"{\"id\":9223372036854775807}", SURPOOL_OK, SURPOOL__FRAME_REPLY, INT64_MAX, 0},
        {"{\"id\":-9223372036854775808}", SURPOOL_OK, SURPOOL__FRAME_REPLY, INT64_MIN, 0},
        {"{\"id\" : 3 }", SURPOOL_OK, SURPOOL__FRAME_REPLY, 3, 0},
        {"{\"result\":{\"action\":\"CREATE\"}}", SURPOOL_OK, SURPOOL__FRAME_NOTIFICATION, 0, 0},
        {"{\"id\":null,\"error\":{\"code\":-1}}", SURPOOL_OK, SURPOOL__FRAME_ORPHAN_ERROR, 0,
         0},
        {"{\"error\":null,\"result\":{}}", SURPOOL_OK, SURPOOL__FRAME_NOTIFICATION, 0, 0},
        {"{}", SURPOOL_OK, SURPOOL__FRAME_NOTIFICATION, 0, 0},
        /* Route stops at the id; the full walk (and the decode) refuse these. */
        {"{\"id\":1,\"id\":2,\"result\":1}", SURPOOL_OK, SURPOOL__FRAME_REPLY, 1,
         SURPOOL_ERR_PROTOCOL},
        {"{\"id\":1,\"i\\u0064\":2}", SURPOOL_OK, SURPOOL__FRAME_REPLY, 1,
         SURPOOL_ERR_PROTOCOL},
        {"{\"id\":1,\"result\":[1,2}", SURPOOL_OK, SURPOOL__FRAME_REPLY, 1,
         SURPOOL_ERR_PROTOCOL},
        {"{\"id\":1,\"result\":\"open}", SURPOOL_OK, SURPOOL__FRAME_REPLY, 1,
         SURPOOL_ERR_PROTOCOL},
        {"{\"id\":1} x", SURPOOL_OK, SURPOOL__FRAME_REPLY, 1, SURPOOL_ERR_PROTOCOL},
        /* Both refuse. */
        {"{\"id\":null,\"id\":2,\"result\":1}", SURPOOL_ERR_PROTOCOL, 0, 0, 0},
        {"{\"id\":1x,\"result\":1}", SURPOOL_ERR_PROTOCOL, 0, 0, 0},
        {"{\"id\":1", SURPOOL_ERR_PROTOCOL, 0, 0, 0},
        {"{\"id\":1.0}", SURPOOL_ERR_PROTOCOL, 0, 0, 0},
        {"{\"id\":1e3}", SURPOOL_ERR_PROTOCOL, 0, 0, 0},
        {"{\"id\":\"5\"}", SURPOOL_ERR_PROTOCOL, 0, 0, 0},
        {"{\"id\":01}", SURPOOL_ERR_PROTOCOL, 0, 0, 0},
        {"{\"id\":9223372036854775808}", SURPOOL_ERR_PROTOCOL, 0, 0, 0},
        {"[1]", SURPOOL_ERR_PROTOCOL, 0, 0, 0},
        {"", SURPOOL_ERR_PROTOCOL, 0, 0, 0},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        const char *in = rows[i].in;
        surpool__frame_kind kind = 0;
        int64_t id = 42;
        surpool_error err;
        surpool__error_clear(&err);
        surpool_err rc = surpool__codec_route(in, strlen(in), &kind, &id, &err);
        if (rc != rows[i].rc)
            fail_msg("row %zu (%s): %s, expected %s (%s)", i, in, surpool_err_name(rc),
                     surpool_err_name(rows[i].rc), err.message);
        if (rc == SURPOOL_OK && (kind != rows[i].kind || id != rows[i].id))
            fail_msg("row %zu (%s): kind %d id %lld, expected %d %lld", i, in, (int)kind,
                     (long long)id, (int)rows[i].kind, (long long)rows[i].id);
        surpool__peek_info info;
        surpool_err want_full = rows[i].full != 0 ? rows[i].full : rows[i].rc;
        surpool_err frc = surpool__codec_peek_info(in, strlen(in), &info, &err);
        if (frc != want_full)
            fail_msg("row %zu (%s): peek_info %s, expected %s", i, in, surpool_err_name(frc),
                     surpool_err_name(want_full));
        if (frc == SURPOOL_OK && (info.kind != kind || info.id != id))
            fail_msg("row %zu (%s): peek_info and route disagree", i, in);
        /* Where the full decode accepts the frame, all three agree. */
        surpool__frame f;
        if (surpool__codec_decode_frame(in, strlen(in), &f, NULL) == SURPOOL_OK) {
            assert_int_equal(rc, SURPOOL_OK);
            assert_int_equal(frc, SURPOOL_OK);
            assert_int_equal(f.kind, kind);
            assert_true(f.id == id);
            json_decref(f.root);
        }
    }
    surpool__frame_kind kind;
    int64_t id;
    assert_int_equal(surpool__codec_route("{}", 2, NULL, &id, NULL), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool__codec_route("{}", 2, &kind, NULL, NULL), SURPOOL_ERR_INVALID_ARG);
}

/* Routing a big reply reads its head only: bytes after the id that no walk
 * to the end would accept (here: a frame cut in the middle of its result) do
 * not stop it, and the decode on the caller's side refuses them. */
static void test_route_stops_at_id(void **state)
{
    (void)state;
    size_t n = 1 << 20;
    char *frame = malloc(n + 64);
    assert_non_null(frame);
    int len = snprintf(frame, 64, "{\"id\":77,\"result\":\"");
    memset(frame + len, 'x', n);
    surpool__frame_kind kind;
    int64_t id = 0;
    assert_int_equal(surpool__codec_route(frame, (size_t)len + n, &kind, &id, NULL),
                     SURPOOL_OK);
    assert_int_equal(kind, SURPOOL__FRAME_REPLY);
    assert_int_equal(id, 77);
    surpool__peek_info info;
    assert_int_equal(surpool__codec_peek_info(frame, (size_t)len + n, &info, NULL),
                     SURPOOL_ERR_PROTOCOL);
    surpool__frame f;
    assert_int_equal(surpool__codec_decode_frame(frame, (size_t)len + n, &f, NULL),
                     SURPOOL_ERR_PROTOCOL);
    free(frame);
}

/* The raw path's spans: where "result" and "error" lie, found by the same
 * walk; decoding the result span alone gives the full decode's "result". */
static void test_peek_spans(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *result; /* the span's text, NULL: no "result" key */
        int has_error, dup;
    } rows[] = {
        {"{\"id\":7,\"result\":null}", "null", 0, 0},
        {"{ \"result\" : [1,{\"result\":\"}\"},[]] , \"id\":1 }", "[1,{\"result\":\"}\"},[]]",
         0, 0},
        {"{\"id\":1,\"result\":\"a\\\"b\"}", "\"a\\\"b\"", 0, 0},
        {"{\"id\":1,\"result\":-1.5e3\n}", "-1.5e3", 0, 0},
        {"{\"id\":1,\"r\\u0065sult\":true}", "true", 0, 0},
        {"{\"id\":1,\"results\":1,\"result\":{}}", "{}", 0, 0},
        {"{\"id\":1,\"error\":{\"code\":-32000,\"message\":\"x\"}}", NULL, 1, 0},
        {"{\"id\":1,\"error\":null,\"result\":2}", "2", 0, 0},
        {"{\"id\":1,\"result\":1,\"result\":2}", "2", 0, 1},
        {"{\"id\":1,\"error\":null,\"error\":{}}", NULL, 1, 1},
        {"{\"id\":1}", NULL, 0, 0},
        /* A broken error is not "no error" (nor is any literal with a tail,
         * which the full decode refuses). */
        {"{\"id\":1,\"error\":nullx,\"result\":2}", "2", 1, 0},
        {"{\"id\":1,\"result\":2,\"error\":null0}", "2", 1, 0},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        const char *in = rows[i].in;
        surpool__peek_info info;
        surpool_error err;
        if (surpool__codec_peek_info(in, strlen(in), &info, &err) != SURPOOL_OK)
            fail_msg("row %zu (%s): %s", i, in, err.message);
        assert_int_equal(info.kind, SURPOOL__FRAME_REPLY);
        assert_int_equal(info.has_error, rows[i].has_error);
        assert_int_equal(info.dup_key, rows[i].dup);
        assert_int_equal(info.has_result, rows[i].result != NULL);
        if (rows[i].result == NULL)
            continue;
        if (info.result_len != strlen(rows[i].result) ||
            memcmp(in + info.result_off, rows[i].result, info.result_len) != 0)
            fail_msg("row %zu (%s): span '%.*s', expected '%s'", i, in, (int)info.result_len,
                     in + info.result_off, rows[i].result);
        surpool__frame f;
        if (surpool__codec_decode_frame(in, strlen(in), &f, NULL) == SURPOOL_OK) {
            json_t *alone = json_loadb(in + info.result_off, info.result_len,
                                       JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
            assert_non_null(alone);
            assert_true(json_equal(alone, json_object_get(f.root, "result")));
            json_decref(alone);
            json_decref(f.root);
        } else {
            /* the only rows here the full decode refuses */
            assert_true(rows[i].dup || rows[i].has_error);
        }
    }
    /* Truncated frames are refused, never a span past the end. */
    const char *frame = "{\"id\":3,\"result\":[{\"a\":\"b\"},2,null]}";
    for (size_t n = 0; n < strlen(frame); n++) {
        surpool__peek_info info;
        assert_int_equal(surpool__codec_peek_info(frame, n, &info, NULL), SURPOOL_ERR_PROTOCOL);
    }
    assert_int_equal(surpool__codec_peek_info(frame, strlen(frame), NULL, NULL),
                     SURPOOL_ERR_INVALID_ARG);
}

static void test_decode_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(decode_cases); i++) {
        check_decode_case(&decode_cases[i], 1);
        check_decode_case(&decode_cases[i], 0);
    }
}

static void test_decode_args(void **state)
{
    (void)state;
    surpool__frame f;
    surpool_error err;
    assert_int_equal(surpool__codec_decode_frame("{}", 2, NULL, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool__codec_decode_frame(NULL, 5, &f, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool__codec_decode_frame(NULL, 0, &f, &err), SURPOOL_ERR_PROTOCOL);
    assert_null(f.root);

    json_t *result = (json_t *)1;
    assert_int_equal(surpool__codec_reply_result(NULL, &result, &err), SURPOOL_ERR_PROTOCOL);
    assert_null(result);
    json_t *arr = json_array();
    assert_int_equal(surpool__codec_reply_result(arr, &result, NULL), SURPOOL_ERR_PROTOCOL);
    json_decref(arr);
    /* result pointer is optional */
    json_t *ok = json_pack("{s:i,s:n}", "id", 1, "result");
    assert_int_equal(surpool__codec_reply_result(ok, NULL, NULL), SURPOOL_OK);
    json_decref(ok);

    assert_int_equal(surpool__codec_map_error(NULL, &err), SURPOOL_ERR_SERVER);
    assert_int_equal(err.server_code, 0);
    assert_true(strlen(err.message) > 0);
    assert_int_equal(surpool__codec_map_error(NULL, NULL), SURPOOL_ERR_SERVER);
    json_t *auth = json_pack("{s:i}", "code", -32002);
    assert_int_equal(surpool__codec_map_error(auth, NULL), SURPOOL_ERR_AUTH);
    json_decref(auth);
}

/* jansson stops at a nesting depth of 2048: deeper input fails cleanly. */
static void test_decode_deep_nesting(void **state)
{
    (void)state;
    static const size_t depths[] = {1000, 2048, 2049, 100000, 1000000};
    for (size_t d = 0; d < ARRAY_LEN(depths); d++) {
        size_t depth = depths[d];
        /* {"id":1,"result":[[[...]]]} */
        size_t len = 17 + 2 * depth + 1;
        char *text = malloc(len + 1);
        assert_non_null(text);
        memcpy(text, "{\"id\":1,\"result\":", 17);
        memset(text + 17, '[', depth);
        memset(text + 17 + depth, ']', depth);
        text[len - 1] = '}';
        text[len] = '\0';
        surpool__frame f;
        surpool_error err;
        surpool_err rc = surpool__codec_decode_frame(text, len, &f, &err);
        if (depth + 1 <= 2048) {
            assert_int_equal(rc, SURPOOL_OK);
            json_decref(f.root);
        } else {
            assert_int_equal(rc, SURPOOL_ERR_PROTOCOL);
            assert_non_null(strstr(err.message, "depth"));
            assert_null(f.root);
        }
        /* Unterminated deep input too. */
        assert_int_equal(surpool__codec_decode_frame(text, 17 + depth, &f, NULL),
                         SURPOOL_ERR_PROTOCOL);
        free(text);
    }
}

/* A parse error message quoting non-ASCII text stays valid UTF-8 and in bounds. */
static void test_decode_error_message_utf8(void **state)
{
    (void)state;
    for (size_t pad = 0; pad < 8; pad++) {
        char text[1200];
        size_t n = 0;
        text[n++] = '[';
        text[n++] = '"';
        for (size_t i = 0; i < pad; i++)
            text[n++] = 'a';
        for (int i = 0; i < 150; i++) {
            memcpy(text + n, "\xf0\x9f\x98\x80\xc2\xb5", 6);
            n += 6;
        }
        text[n++] = '\x01'; /* control character inside a string: an error */
        surpool__frame f;
        surpool_error err;
        assert_int_equal(surpool__codec_decode_frame(text, n, &f, &err), SURPOOL_ERR_PROTOCOL);
        assert_true(strlen(err.message) < sizeof(err.message));
        assert_true(utf8_ok(err.message));
        assert_non_null(strstr(err.message, "line 1"));
    }
}

/* jansson's allocation failures while parsing come back as NOMEM (or, where
 * jansson cannot tell, PROTOCOL), never as a crash or a leak. */
static void test_decode_nomem(void **state)
{
    (void)state;
    const char *text = "{\"id\":1,\"result\":[{\"status\":\"OK\",\"result\":[{\"id\":\"p:1\","
                       "\"name\":\"x\"}],\"time\":\"1\xc2\xb5s\"}]}";
    json_set_alloc_funcs(failing_malloc, free);
    long n;
    int saw_nomem = 0;
    for (n = 0;; n++) {
        fail_nth(n);
        surpool__frame f;
        surpool_error err;
        surpool_err rc = surpool__codec_decode_frame(text, strlen(text), &f, &err);
        if (rc == SURPOOL_OK && g_calls <= n) {
            json_decref(f.root);
            break;
        }
        if (rc == SURPOOL_OK) {
            json_decref(f.root);
            continue;
        }
        assert_true(rc == SURPOOL_ERR_NOMEM || rc == SURPOOL_ERR_PROTOCOL);
        saw_nomem |= rc == SURPOOL_ERR_NOMEM;
        assert_null(f.root);
    }
    assert_true(saw_nomem);
    json_set_alloc_funcs(malloc, free);
}

/* ---- error mapping: truncation ------------------------------------------ */

static json_t *error_obj(int code, const char *message, const char *kind)
{
    json_t *e = json_object();
    json_object_set_new(e, "code", json_integer(code));
    if (message != NULL)
        json_object_set_new(e, "message", json_string(message));
    if (kind != NULL)
        json_object_set_new(e, "kind", json_string(kind));
    return e;
}

/* Messages and kinds are cut on a UTF-8 boundary, for every position of a
 * 2-, 3- and 4-byte sequence relative to the cut. */
static void test_map_error_truncation(void **state)
{
    (void)state;
    static const char *seqs[] = {"\xc2\xb5", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "a"};
    surpool_error err;
    for (size_t s = 0; s < ARRAY_LEN(seqs); s++) {
        size_t sl = strlen(seqs[s]);
        for (size_t pad = 0; pad < 5; pad++) {
            char msg[600];
            size_t n = 0;
            for (size_t i = 0; i < pad; i++)
                msg[n++] = 'x';
            while (n + sl < sizeof(msg) - 1) {
                memcpy(msg + n, seqs[s], sl);
                n += sl;
            }
            msg[n] = '\0';
            json_t *e = error_obj(-32000, msg, msg);
            assert_int_equal(surpool__codec_map_error(e, &err), SURPOOL_ERR_SERVER);
            size_t ml = strlen(err.message);
            size_t kl = strlen(err.kind);
            assert_true(ml <= sizeof(err.message) - 1 && ml > sizeof(err.message) - 1 - sl);
            assert_true(kl <= sizeof(err.kind) - 1 && kl > sizeof(err.kind) - 1 - sl);
            assert_true(utf8_ok(err.message));
            assert_true(utf8_ok(err.kind));
            assert_memory_equal(err.message, msg, ml);
            assert_memory_equal(err.kind, msg, kl);
            json_decref(e);
        }
    }

    /* Exactly at capacity: nothing is cut. */
    char exact[256];
    memset(exact, 'm', 255);
    exact[255] = '\0';
    json_t *e = error_obj(-32000, exact, "0123456789012345678901234567890");
    surpool__codec_map_error(e, &err);
    assert_string_equal(err.message, exact);
    assert_string_equal(err.kind, "0123456789012345678901234567890");
    json_decref(e);

    /* A kind longer than 31 bytes. */
    e = error_obj(-32002, "no", "NotAllowedBecauseThisKindIsFarTooLongToFit");
    assert_int_equal(surpool__codec_map_error(e, &err), SURPOOL_ERR_AUTH);
    assert_string_equal(err.kind, "NotAllowedBecauseThisKindIsFarT");
    assert_int_equal(strlen(err.kind), 31);
    json_decref(e);

    /* An embedded NUL in the message is a control character: replaced. */
    e = json_pack("{s:i,s:s%}", "code", -32000, "message", "ab\0cd", (size_t)5);
    surpool__codec_map_error(e, &err);
    assert_string_equal(err.message, "ab?cd");
    json_decref(e);

    /* Control characters from the server never reach a message raw. */
    e = json_pack("{s:i,s:s,s:s}", "code", -32000, "message", "line1\nline2\x1b[31m\tz", "kind",
                  "K\r\x07");
    surpool__codec_map_error(e, &err);
    assert_string_equal(err.message, "line1\\nline2?[31m\\tz");
    assert_string_equal(err.kind, "K\\r?");
    json_decref(e);

    /* Invalid UTF-8 (built with *_nocheck): still bounded and terminated. */
    e = json_object();
    char junk[300];
    memset(junk, 0x80, sizeof(junk));
    json_object_set_new(e, "message", json_stringn_nocheck(junk, sizeof(junk)));
    json_object_set_new(e, "kind", json_stringn_nocheck(junk, sizeof(junk)));
    surpool__codec_map_error(e, &err);
    assert_true(strlen(err.message) < sizeof(err.message));
    assert_true(strlen(err.kind) < sizeof(err.kind));
    assert_true(surpool__utf8_valid_str(err.message));
    assert_true(surpool__utf8_valid_str(err.kind));
    assert_non_null(strstr(err.message, "\xEF\xBF\xBD"));
    json_decref(e);
}

/* ---- the UTF-8 helpers (src/utf8.c) -------------------------------------- */

struct utf8_case {
    const char *s;
    size_t len; /* 0: strlen */
    int valid;
};

/* One checker for the whole library: strict RFC 3629. */
static const struct utf8_case utf8_cases[] = {
    {"", 0, 1},
    {"plain ascii", 0, 1},
    {"\xC2\xB5", 0, 1},         /* U+00B5 */
    {"\xE2\x82\xAC", 0, 1},     /* U+20AC */
    {"\xED\x9F\xBF", 0, 1},     /* U+D7FF, last before the surrogates */
    {"\xEE\x80\x80", 0, 1},     /* U+E000, first after */
    {"\xEF\xBF\xBF", 0, 1},     /* U+FFFF */
    {"\xF0\x90\x80\x80", 0, 1}, /* U+10000 */
    {"\xF4\x8F\xBF\xBF", 0, 1}, /* U+10FFFF */
    {"a\0b", 3, 1},             /* U+0000 is a character */
    {"\xED\xA0\x80", 0, 0},     /* U+D800: surrogate (issue 9 item 11) */
    {"\xED\xBF\xBF", 0, 0},     /* U+DFFF */
    {"\xC0\x80", 0, 0},         /* overlong NUL */
    {"\xC1\xBF", 0, 0},         /* overlong */
    {"\xE0\x9F\xBF", 0, 0},     /* overlong 3-byte */
    {"\xF0\x8F\xBF\xBF", 0, 0}, /* overlong 4-byte */
    {"\xF4\x90\x80\x80", 0, 0}, /* U+110000 */
    {"\xF5\x80\x80\x80", 0, 0}, /* lead byte never valid */
    {"\xFF", 0, 0},
    {"\x80", 0, 0},         /* lone continuation */
    {"\xC3", 0, 0},         /* truncated */
    {"\xE2\x82", 0, 0},     /* truncated */
    {"\xE2\x28\xA1", 0, 0}, /* bad continuation */
    {"ok\xC3\x28", 0, 0},
};

static void test_utf8_checker(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(utf8_cases) / sizeof(utf8_cases[0]); i++) {
        const struct utf8_case *c = &utf8_cases[i];
        size_t len = c->len ? c->len : strlen(c->s);
        if (surpool__utf8_valid(c->s, len) != c->valid)
            fail_msg("utf8 case %zu: expected %s", i, c->valid ? "valid" : "invalid");
        if (c->len == 0 && surpool__utf8_valid_str(c->s) != c->valid)
            fail_msg("utf8 case %zu (str): expected %s", i, c->valid ? "valid" : "invalid");
    }
    assert_true(surpool__utf8_valid_str(NULL));
}

static void test_utf8_strlcpy(void **state)
{
    (void)state;
    char buf[6];
    assert_int_equal(surpool__strlcpy(buf, "abc", sizeof(buf)), 3);
    assert_string_equal(buf, "abc");
    assert_int_equal(surpool__strlcpy(buf, "abcdefgh", sizeof(buf)), 5);
    assert_string_equal(buf, "abcde");
    /* "abc" + U+20AC: the euro does not fit in 5 bytes and is dropped whole. */
    assert_int_equal(surpool__strlcpy(buf, "abc\xE2\x82\xAC", sizeof(buf)), 3);
    assert_string_equal(buf, "abc");
    assert_int_equal(surpool__strlcpy(buf, "ab\xE2\x82\xAC!", sizeof(buf)), 5);
    assert_string_equal(buf, "ab\xE2\x82\xAC");
    assert_int_equal(surpool__strlcpy(buf, NULL, sizeof(buf)), 0);
    assert_string_equal(buf, "");
    assert_int_equal(surpool__strlcpy(buf, "x", 0), 0);

    char t[8] = "ab\xE2\x82";
    assert_int_equal(surpool__utf8_trim(t), 2);
    assert_string_equal(t, "ab");
    char u[8] = "ab\xE2\x82\xAC";
    assert_int_equal(surpool__utf8_trim(u), 5);
}

/* Protocol names compared without the locale: ASCII letters fold, nothing
 * else does (strcasecmp() in a Latin-1 locale folds 0xC9 'É' to 0xE9 'é'). */
static void test_ascii_caseeq(void **state)
{
    (void)state;
    assert_true(surpool__ascii_caseeq("SEC-WEBSOCKET-EXTENSIONS", "Sec-WebSocket-Extensions"));
    assert_true(surpool__ascii_caseeq("", ""));
    assert_false(surpool__ascii_caseeq("Upgrade", "Upgrades"));
    assert_false(surpool__ascii_caseeq("Upgrades", "Upgrade"));
    assert_false(surpool__ascii_caseeq("\xc9", "\xe9"));
    assert_false(surpool__ascii_caseeq("@", "`")); /* 0x40 and 0x60: not letters */
    assert_false(surpool__ascii_caseeq("[", "{"));
    assert_true(surpool__ascii_ncaseeq("WS://host", "ws://", 5));
    assert_true(surpool__ascii_ncaseeq("live select", "LIVE", 4));
    assert_false(surpool__ascii_ncaseeq("ws:", "ws://", 5)); /* shorter: the NUL differs */
    assert_true(surpool__ascii_ncaseeq("abc", "ABD", 2));
    assert_true(surpool__ascii_ncaseeq("x", "y", 0));
}

static void test_utf8_sanitize(void **state)
{
    (void)state;
    char out[64];
    /* Valid text is kept, invalid bytes become U+FFFD, controls '?' or \n \t \r. */
    static const char mixed[] = "ok \xE2\x82\xAC \xFF\xC3 \x01\x7F\xC2\x85\n\t\r";
    surpool__text_sanitize(out, sizeof(out), mixed, sizeof(mixed) - 1);
    assert_string_equal(out, "ok \xE2\x82\xAC \xEF\xBF\xBD\xEF\xBF\xBD ???\\n\\t\\r");
    /* NUL bytes inside the given length are controls. */
    surpool__text_sanitize(out, sizeof(out), "a\0b", 3);
    assert_string_equal(out, "a?b");
    /* Cut on a character boundary, always terminated. */
    char small[5];
    assert_int_equal(surpool__text_sanitize(small, sizeof(small), "ab\xE2\x82\xAC", 5), 2);
    assert_string_equal(small, "ab");
    assert_int_equal(surpool__text_sanitize(small, sizeof(small), "abc\n", 4), 3);
    assert_string_equal(small, "abc");
    assert_int_equal(surpool__text_sanitize_str(small, sizeof(small), NULL), 0);
    assert_string_equal(small, "");
    /* Whatever goes in, what comes out is valid UTF-8 without controls. */
    unsigned char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    char big[1024];
    surpool__text_sanitize(big, sizeof(big), (const char *)all, sizeof(all));
    assert_true(surpool__utf8_valid_str(big));
    for (const char *p = big; *p; p++)
        assert_true((unsigned char)*p >= 0x20 && *p != 0x7F);
}

/* Values the API takes: every string and key checked, depth bounded. */
static void test_check_value(void **state)
{
    (void)state;
    surpool_error err;
    json_t *ok = json_pack("[s,{s:[s,i]}]", "\xE2\x82\xAC", "k\xC2\xB5", "v", 1);
    assert_int_equal(surpool__codec_check_value(ok, "x", &err), SURPOOL_OK);
    assert_int_equal(surpool__codec_check_value(NULL, "x", &err), SURPOOL_OK);
    json_decref(ok);

    /* A bad string deep inside, a bad key: both INVALID_ARG, also through encode. */
    json_t *bad_str = json_pack("[{s:[i,o]}]", "k", 1, json_string_nocheck("\xED\xA0\x80"));
    json_t *inner = json_object();
    json_object_set_new_nocheck(inner, "\xC0\x80", json_true());
    json_t *bad_key = json_pack("[[o]]", inner);
    json_t *cases[] = {bad_str, bad_key};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(surpool__codec_check_value(cases[i], "params", &err),
                         SURPOOL_ERR_INVALID_ARG);
        assert_non_null(
            strstr(err.message, "params: a string or object key is not valid UTF-8"));
        char *buf = NULL;
        size_t len = 0;
        assert_int_equal(
            surpool__codec_encode_request(1, "query", cases[i], 0, &buf, &len, &err),
            SURPOOL_ERR_INVALID_ARG);
        assert_null(buf);
        json_decref(cases[i]);
    }

    /* Deeper than the decoder accepts: refused before jansson recurses. */
    json_t *deep = json_array();
    for (int i = 0; i < SURPOOL__JSON_MAX_DEPTH + 5; i++) {
        json_t *outer = json_array();
        json_array_append_new(outer, deep);
        deep = outer;
    }
    assert_int_equal(surpool__codec_check_value(deep, "params", &err), SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "nested deeper"));
    json_decref(deep);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_encode_table, restore_allocators),
        cmocka_unit_test(test_peek_table),
        cmocka_unit_test(test_route_stops_at_id),
        cmocka_unit_test(test_peek_spans),
        cmocka_unit_test_teardown(test_encode_headroom, restore_allocators),
        cmocka_unit_test_teardown(test_encode_large, restore_allocators),
        cmocka_unit_test_teardown(test_encode_invalid_args, restore_allocators),
        cmocka_unit_test_teardown(test_encode_unencodable, restore_allocators),
        cmocka_unit_test_teardown(test_encode_nomem, restore_allocators),
        cmocka_unit_test_teardown(test_decode_table, restore_allocators),
        cmocka_unit_test_teardown(test_decode_args, restore_allocators),
        cmocka_unit_test_teardown(test_decode_deep_nesting, restore_allocators),
        cmocka_unit_test_teardown(test_decode_error_message_utf8, restore_allocators),
        cmocka_unit_test_teardown(test_decode_nomem, restore_allocators),
        cmocka_unit_test_teardown(test_map_error_truncation, restore_allocators),
        cmocka_unit_test(test_utf8_checker),
        cmocka_unit_test(test_utf8_strlcpy),
        cmocka_unit_test(test_utf8_sanitize),
        cmocka_unit_test(test_ascii_caseeq),
        cmocka_unit_test(test_check_value),
    };
    return cmocka_run_group_tests_name("codec", tests, NULL, NULL);
}
