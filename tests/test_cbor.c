/*
 * Unit tests for src/cbor_codec.c, src/value.c, src/value_text.c and
 * src/thing.c: strings byte for byte, every typed value both ways, numbers at
 * the edges, frames and peek, hostile input, thing text, text forms.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cbor_codec.h"
#include "url.h"
#include "value.h"
#include "wire.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- helpers ------------------------------------------------------------ */

struct bytes {
    unsigned char *p;
    size_t n;
};

static struct bytes enc(const json_t *v)
{
    char *out = NULL;
    size_t len = 0;
    surpool_error e;
    memset(&e, 0, sizeof(e));
    surpool_err rc = surpool__cbor_encode_value(v, 0, &out, &len, &e);
    if (rc != SURPOOL_OK)
        fail_msg("encode failed: %s", e.message);
    struct bytes b = {(unsigned char *)out, len};
    return b;
}

static json_t *dec(const unsigned char *p, size_t n)
{
    json_t *v = NULL;
    surpool_error e;
    memset(&e, 0, sizeof(e));
    surpool_err rc = surpool__cbor_decode_value(p, n, &v, &e);
    if (rc != SURPOOL_OK)
        fail_msg("decode failed: %s", e.message);
    return v;
}

/* Hex text ("d8 25 50 ...", spaces ignored) to bytes; caller frees. */
static struct bytes hex(const char *h)
{
    struct bytes b = {malloc(strlen(h) / 2 + 1), 0};
    assert_non_null(b.p);
    for (const char *s = h; *s != '\0';) {
        if (*s == ' ') {
            s++;
            continue;
        }
        unsigned v;
        assert_int_equal(sscanf(s, "%2x", &v), 1);
        b.p[b.n++] = (unsigned char)v;
        s += 2;
    }
    return b;
}

static json_t *dec_hex(const char *h)
{
    struct bytes b = hex(h);
    json_t *v = dec(b.p, b.n);
    free(b.p);
    return v;
}

static surpool_err dec_rc(const unsigned char *p, size_t n, surpool_error *e)
{
    json_t *v = (json_t *)1;
    memset(e, 0, sizeof(*e));
    surpool_err rc = surpool__cbor_decode_value(p, n, &v, e);
    if (rc == SURPOOL_OK)
        json_decref(v);
    else
        assert_null(v);
    return rc;
}

/* Encode then decode: the result must equal v. */
static void assert_round_trip(const json_t *v)
{
    struct bytes b = enc(v);
    json_t *back = dec(b.p, b.n);
    if (!json_equal(v, back)) {
        char *a = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        char *c = json_dumps(back, JSON_ENCODE_ANY | JSON_COMPACT);
        fail_msg("round trip changed %s into %s", a, c);
    }
    json_decref(back);
    surpool__free(b.p);
}

static json_t *load(const char *text)
{
    json_error_t je;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &je);
    if (v == NULL)
        fail_msg("bad test JSON %s: %s", text, je.text);
    return v;
}

static void assert_json(const json_t *v, const char *expected)
{
    json_t *x = load(expected);
    if (!json_equal(v, x)) {
        char *a = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        fail_msg("got %s, expected %s", a, expected);
    }
    json_decref(x);
}

/* ---- strings stay strings ----------------------------------------------- */

static const char *const tricky_strings[] = {
    "person:01",
    "sku:007",
    "2024-01-01",
    "d'2024-01-01T00:00:00Z'",
    "E3B0C442-98FC-1C14-9AFB-4C8996FB9242",
    "1h30m",
    "NONE",
    "u'0000'",
    "",
    "Grüße, 世界 🌍 µs ⟨x⟩",
    "{\"$surreal\":\"record\"}",
};

/* A CBOR text string head for length n followed by exactly the bytes. */
static void check_text_encoding(const char *s, size_t n)
{
    json_t *v = json_stringn(s, n);
    assert_non_null(v);
    struct bytes b = enc(v);
    size_t head = n < 24 ? 1 : n < 256 ? 2 : n < 65536 ? 3 : n < 4294967296u ? 5 : 9;
    assert_int_equal(b.n, head + n);
    assert_int_equal(b.p[0] >> 5, 3); /* major type 3: text */
    assert_memory_equal(b.p + head, s, n);
    json_t *back = dec(b.p, b.n);
    assert_true(json_is_string(back));
    assert_int_equal(json_string_length(back), n);
    assert_memory_equal(json_string_value(back), s, n);
    json_decref(back);
    json_decref(v);
    surpool__free(b.p);
}

static void test_strings_byte_for_byte(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(tricky_strings); i++)
        check_text_encoding(tricky_strings[i], strlen(tricky_strings[i]));
    check_text_encoding("a\0b", 3); /* NUL inside */
    size_t mb = 1024 * 1024;
    char *big = malloc(mb);
    assert_non_null(big);
    for (size_t i = 0; i < mb; i++)
        big[i] = (char)('a' + i % 26);
    check_text_encoding(big, mb);
    free(big);
}

static void test_strings_in_containers(void **state)
{
    (void)state;
    json_t *arr = json_array();
    json_t *obj = json_object();
    for (size_t i = 0; i < ARRAY_LEN(tricky_strings); i++) {
        json_array_append_new(arr, json_string(tricky_strings[i]));
        char key[16];
        snprintf(key, sizeof(key), "k%zu", i);
        json_object_set_new(obj, key, json_string(tricky_strings[i]));
    }
    json_t *v = json_pack("{s:o,s:o}", "a", arr, "o", obj);
    assert_round_trip(v);
    json_decref(v);
}

static void test_invalid_utf8_refused(void **state)
{
    (void)state;
    json_t *v = json_stringn_nocheck("\xC3\x28", 2);
    char *out;
    size_t len;
    surpool_error e;
    assert_int_equal(surpool__cbor_encode_value(v, 0, &out, &len, &e), SURPOOL_ERR_INVALID_ARG);
    json_decref(v);
}

/* ---- numbers ------------------------------------------------------------ */

static void test_numbers(void **state)
{
    (void)state;
    const char *cases[] = {
        "0",
        "1",
        "-1",
        "23",
        "24",
        "255",
        "256",
        "65535",
        "65536",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "-9223372036854775808",
        "0.1",
        "1.5e308",
        "-2.2250738585072014e-308",
        "5e-324",
        "true",
        "false",
        "null",
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        json_t *v = load(cases[i]);
        assert_round_trip(v);
        json_decref(v);
    }
    /* -0.0 keeps its sign. */
    json_t *nz = json_real(-0.0);
    struct bytes b = enc(nz);
    json_t *back = dec(b.p, b.n);
    assert_true(json_is_real(back));
    assert_true(signbit(json_real_value(back)));
    json_decref(back);
    json_decref(nz);
    surpool__free(b.p);
    /* Doubles are sent as 64-bit floats: exact. */
    json_t *d = json_real(0.1);
    b = enc(d);
    assert_int_equal(b.n, 9);
    assert_int_equal(b.p[0], 0xfb);
    surpool__free(b.p);
    json_decref(d);
}

static void test_numbers_beyond_json(void **state)
{
    (void)state;
    json_t *v = dec_hex("1b ff ff ff ff ff ff ff ff"); /* 2^64-1 */
    assert_json(v, "{\"$surreal\":\"bigint\",\"value\":\"18446744073709551615\"}");
    assert_round_trip(v);
    json_decref(v);
    v = dec_hex("1b 80 00 00 00 00 00 00 00"); /* 2^63 */
    assert_json(v, "{\"$surreal\":\"bigint\",\"value\":\"9223372036854775808\"}");
    json_decref(v);
    v = dec_hex("3b ff ff ff ff ff ff ff ff"); /* -2^64 */
    assert_json(v, "{\"$surreal\":\"bigint\",\"value\":\"-18446744073709551616\"}");
    assert_round_trip(v);
    json_decref(v);
    v = dec_hex("3b 80 00 00 00 00 00 00 00"); /* -2^63-1 */
    assert_json(v, "{\"$surreal\":\"bigint\",\"value\":\"-9223372036854775809\"}");
    assert_round_trip(v);
    json_decref(v);
    v = dec_hex("3b 7f ff ff ff ff ff ff ff"); /* INT64_MIN fits */
    assert_true(json_is_integer(v));
    assert_true(json_integer_value(v) == INT64_MIN);
    json_decref(v);
    /* NaN, ±Inf in every width. */
    const struct {
        const char *hex, *text;
    } f[] = {
        {"f9 7e 00", "NaN"},
        {"fa 7f c0 00 00", "NaN"},
        {"fb 7f f8 00 00 00 00 00 00", "NaN"},
        {"f9 7c 00", "Infinity"},
        {"fb 7f f0 00 00 00 00 00 00", "Infinity"},
        {"fb ff f0 00 00 00 00 00 00", "-Infinity"},
    };
    for (size_t i = 0; i < ARRAY_LEN(f); i++) {
        v = dec_hex(f[i].hex);
        assert_int_equal(surpool_value_type_of(v), SURPOOL_VALUE_FLOAT);
        assert_string_equal(json_string_value(json_object_get(v, "value")), f[i].text);
        assert_round_trip(v);
        json_decref(v);
    }
    v = dec_hex("f9 3c 00"); /* half 1.0 */
    assert_true(json_is_real(v) && json_real_value(v) == 1.0);
    json_decref(v);
    /* A bigint inside int64 range is accepted too; outside 64 bits is not. */
    json_t *ok = load("{\"$surreal\":\"bigint\",\"value\":\"-5\"}");
    struct bytes b = enc(ok);
    assert_int_equal(b.n, 1);
    assert_int_equal(b.p[0], 0x24);
    surpool__free(b.p);
    json_decref(ok);
}

/* ---- typed values both ways -------------------------------------------- */

static const char *const typed_cases[] = {
    "{\"$surreal\":\"none\"}",
    "{\"$surreal\":\"table\",\"value\":\"person\"}",
    "{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":\"tobie\"}",
    "{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":\"01\"}",
    "{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":1}",
    "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":[1,\"a\",{\"b\":2}]}",
    "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":{\"a\":1}}",
    "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":{\"$surreal\":\"uuid\",\"value\":"
    "\"0192a8f0-1111-7222-8333-444455556666\"}}",
    "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":{\"$surreal\":\"range\",\"begin\":"
    "{\"included\":1},\"end\":{\"excluded\":5}}}",
    "{\"$surreal\":\"record\",\"value\":\"person:tobie\"}",
    "{\"$surreal\":\"uuid\",\"value\":\"e3b0c442-98fc-1c14-9afb-4c8996fb9242\"}",
    "{\"$surreal\":\"decimal\",\"value\":\"1.50\"}",
    "{\"$surreal\":\"decimal\",\"value\":\"3.14159265358979323846264338327950288\"}",
    "{\"$surreal\":\"datetime\",\"value\":\"2024-01-01T00:00:00Z\"}",
    "{\"$surreal\":\"datetime\",\"value\":\"1969-12-31T23:59:59.999999999Z\"}",
    "{\"$surreal\":\"datetime\",\"value\":\"0000-01-01T00:00:00Z\"}",
    "{\"$surreal\":\"datetime\",\"value\":\"9999-12-31T23:59:59.500Z\"}",
    "{\"$surreal\":\"duration\",\"value\":\"1h30m\"}",
    "{\"$surreal\":\"duration\",\"value\":\"0ns\"}",
    "{\"$surreal\":\"duration\",\"value\":\"1y2w3d4h5m6s7ms8\xC2\xB5s9ns\"}",
    "{\"$surreal\":\"bytes\",\"value\":\"\"}",
    "{\"$surreal\":\"bytes\",\"value\":\"AAEC/w==\"}",
    "{\"$surreal\":\"set\",\"value\":[1,\"a\",null]}",
    "{\"$surreal\":\"future\",\"value\":\"time::now()\"}",
    "{\"$surreal\":\"range\",\"begin\":null,\"end\":null}",
    "{\"$surreal\":\"range\",\"begin\":{\"excluded\":\"a\"},\"end\":{\"included\":\"z\"}}",
    "{\"$surreal\":\"file\",\"bucket\":\"b\",\"key\":\"/k/x.txt\"}",
    "{\"$surreal\":\"point\",\"value\":[1.5,-2.25]}",
    "{\"$surreal\":\"line\",\"value\":[{\"$surreal\":\"point\",\"value\":[0.0,0.0]},"
    "{\"$surreal\":\"point\",\"value\":[1.0,1.0]}]}",
    "{\"$surreal\":\"polygon\",\"value\":[{\"$surreal\":\"line\",\"value\":["
    "{\"$surreal\":\"point\",\"value\":[0.0,0.0]},{\"$surreal\":\"point\",\"value\":[1.0,0.0]},"
    "{\"$surreal\":\"point\",\"value\":[0.0,0.0]}]}]}",
    "{\"$surreal\":\"multipoint\",\"value\":[{\"$surreal\":\"point\",\"value\":[1.0,2.0]}]}",
    "{\"$surreal\":\"multiline\",\"value\":[{\"$surreal\":\"line\",\"value\":[]}]}",
    "{\"$surreal\":\"multipolygon\",\"value\":[{\"$surreal\":\"polygon\",\"value\":[]}]}",
    "{\"$surreal\":\"collection\",\"value\":[{\"$surreal\":\"point\",\"value\":[1.0,2.0]},"
    "{\"$surreal\":\"multipoint\",\"value\":[]}]}",
    "{\"$surreal\":\"bigint\",\"value\":\"18446744073709551615\"}",
    "{\"$surreal\":\"float\",\"value\":\"-Infinity\"}",
    "{\"$surreal\":\"object\",\"value\":{\"$surreal\":\"user data\",\"n\":1}}",
    "{\"$surreal\":\"tag\",\"tag\":1234,\"value\":[1,2]}",
    "{\"$surreal\":\"tag\",\"tag\":6,\"value\":1}",
    "{\"plain\":{\"$surreal\":\"none\"},\"list\":[{\"$surreal\":\"table\",\"value\":\"x\"}]}",
};

static void test_typed_round_trip(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(typed_cases); i++) {
        json_t *v = load(typed_cases[i]);
        assert_int_equal(surpool_value_check(v, NULL), SURPOOL_OK);
        assert_true(surpool_value_type_of(v) != SURPOOL_VALUE_INVALID);
        assert_round_trip(v);
        json_decref(v);
    }
}

/* What the server sends, byte for byte, and what it decodes to. */
static void test_server_shapes(void **state)
{
    (void)state;
    const struct {
        const char *hex, *json;
    } c[] = {
        /* tag 12 [1704067200, 0] */
        {"cc 82 1a 65 92 00 80 00",
         "{\"$surreal\":\"datetime\",\"value\":\"2024-01-01T00:00:00Z\"}"},
        /* tag 12 [1704067200, 500000000] */
        {"cc 82 1a 65 92 00 80 1a 1d cd 65 00",
         "{\"$surreal\":\"datetime\",\"value\":\"2024-01-01T00:00:00.500Z\"}"},
        /* tag 0 "2024-01-01T02:00:00+02:00" */
        {"c0 78 19 32 30 32 34 2d 30 31 2d 30 31 54 30 32 3a 30 30 3a 30 30 2b 30 32 3a 30 30",
         "{\"$surreal\":\"datetime\",\"value\":\"2024-01-01T00:00:00Z\"}"},
        /* tag 14 [5400] */
        {"ce 81 19 15 18", "{\"$surreal\":\"duration\",\"value\":\"1h30m\"}"},
        /* tag 13 "90m" */
        {"cd 63 39 30 6d", "{\"$surreal\":\"duration\",\"value\":\"1h30m\"}"},
        /* tag 9 upper-case UUID text */
        {"c9 78 24 45 33 42 30 43 34 34 32 2d 39 38 46 43 2d 31 43 31 34 2d 39 41 46 42 2d 34 "
         "43 38 39 39 36 46 42 39 32 34 32",
         "{\"$surreal\":\"uuid\",\"value\":\"e3b0c442-98fc-1c14-9afb-4c8996fb9242\"}"},
        /* tag 37 16 bytes */
        {"d8 25 50 e3 b0 c4 42 98 fc 1c 14 9a fb 4c 89 96 fb 92 42",
         "{\"$surreal\":\"uuid\",\"value\":\"e3b0c442-98fc-1c14-9afb-4c8996fb9242\"}"},
        /* tag 8 ["person", 1] */
        {"c8 82 66 70 65 72 73 6f 6e 01",
         "{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":1}"},
        /* tag 6 null */
        {"c6 f6", "{\"$surreal\":\"none\"}"},
        /* undefined */
        {"f7", "{\"$surreal\":\"none\"}"},
        /* tag 7 "a" */
        {"c7 61 61", "{\"$surreal\":\"table\",\"value\":\"a\"}"},
        /* tag 49 [tag 50 1, tag 51 5] */
        {"d8 31 82 d8 32 01 d8 33 05",
         "{\"$surreal\":\"range\",\"begin\":{\"included\":1},\"end\":{\"excluded\":5}}"},
        /* tag 49 [null, tag 50 5]: ..=5 */
        {"d8 31 82 f6 d8 32 05",
         "{\"$surreal\":\"range\",\"begin\":null,\"end\":{\"included\":5}}"},
        /* a bound alone is an unknown tag */
        {"d8 32 05", "{\"$surreal\":\"tag\",\"tag\":50,\"value\":5}"},
        /* a known tag with the wrong content keeps tag + value */
        {"c7 01", "{\"$surreal\":\"tag\",\"tag\":7,\"value\":1}"},
        {"c7 60", "{\"$surreal\":\"tag\",\"tag\":7,\"value\":\"\"}"},
        {"d8 25 41 00",
         "{\"$surreal\":\"tag\",\"tag\":37,\"value\":{\"$surreal\":\"bytes\",\"value\":"
         "\"AA==\"}}"},
        /* bytes */
        {"43 00 01 02", "{\"$surreal\":\"bytes\",\"value\":\"AAEC\"}"},
        /* tag 88 [1.5, 2] */
        {"d8 58 82 f9 3e 00 02", "{\"$surreal\":\"point\",\"value\":[1.5,2]}"},
        /* a user map with a "$surreal" key stays data */
        {"a1 68 24 73 75 72 72 65 61 6c 64 6e 6f 6e 65",
         "{\"$surreal\":\"object\",\"value\":{\"$surreal\":\"none\"}}"},
    };
    for (size_t i = 0; i < ARRAY_LEN(c); i++) {
        json_t *v = dec_hex(c[i].hex);
        assert_json(v, c[i].json);
        json_decref(v);
    }
}

/* Encodings we send: compact forms, like the official SDKs. */
static void test_encoded_forms(void **state)
{
    (void)state;
    const struct {
        const char *json, *hex;
    } c[] = {
        {"{\"$surreal\":\"datetime\",\"value\":\"2024-01-01T00:00:00Z\"}", "cc821a6592008000"},
        {"{\"$surreal\":\"duration\",\"value\":\"1h30m\"}", "ce8219151800"},
        {"{\"$surreal\":\"uuid\",\"value\":\"E3B0C442-98FC-1C14-9AFB-4C8996FB9242\"}",
         "d82550e3b0c44298fc1c149afb4c8996fb9242"},
        {"{\"$surreal\":\"none\"}", "c6f6"},
        {"{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":1}", "c8826670657273 6f6e01"},
        {"{\"$surreal\":\"decimal\",\"value\":\"1.50\"}", "ca64312e3530"},
    };
    for (size_t i = 0; i < ARRAY_LEN(c); i++) {
        json_t *v = load(c[i].json);
        struct bytes got = enc(v);
        char h[128] = "";
        for (size_t k = 0; k < got.n && 2 * k + 2 < sizeof(h); k++)
            snprintf(h + 2 * k, 3, "%02x", got.p[k]);
        struct bytes want = hex(c[i].hex);
        if (!(got.n == want.n && memcmp(got.p, want.p, got.n) == 0))
            fail_msg("%s encoded as %s, expected %s", c[i].json, h, c[i].hex);
        free(want.p);
        surpool__free(got.p);
        json_decref(v);
    }
}

static void test_malformed_typed_refused(void **state)
{
    (void)state;
    const char *bad[] = {
        "{\"$surreal\":1}",
        "{\"$surreal\":\"nope\"}",
        "{\"$surreal\":\"none\",\"value\":1}",
        "{\"$surreal\":\"table\",\"value\":\"\"}",
        "{\"$surreal\":\"table\"}",
        "{\"$surreal\":\"record\",\"tb\":\"t\"}",
        "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":null}",
        "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":1.5}",
        "{\"$surreal\":\"record\",\"tb\":\"\",\"id\":1}",
        "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":1,\"x\":2}",
        "{\"$surreal\":\"uuid\",\"value\":\"E3B0C442-98FC-1C14-9AFB-4C8996FB924\"}",
        "{\"$surreal\":\"uuid\",\"value\":\"E3B0C44298FC1C149AFB4C8996FB9242\"}",
        "{\"$surreal\":\"decimal\",\"value\":\"1.\"}",
        "{\"$surreal\":\"decimal\",\"value\":1.5}",
        "{\"$surreal\":\"datetime\",\"value\":\"2024-02-30\"}",
        "{\"$surreal\":\"datetime\",\"value\":\"2024-01-01T10:00:00\"}",
        "{\"$surreal\":\"datetime\",\"value\":\"d'2024-01-01T00:00:00Z'\"}",
        "{\"$surreal\":\"duration\",\"value\":\"1x\"}",
        "{\"$surreal\":\"duration\",\"value\":\"h\"}",
        "{\"$surreal\":\"duration\",\"value\":\"99999999999999999999s\"}",
        "{\"$surreal\":\"bytes\",\"value\":\"AAE\"}",
        "{\"$surreal\":\"bytes\",\"value\":\"AA=A\"}",
        "{\"$surreal\":\"bytes\",\"value\":\"AB==\"}",
        "{\"$surreal\":\"set\",\"value\":{}}",
        "{\"$surreal\":\"future\"}",
        "{\"$surreal\":\"range\",\"begin\":1,\"end\":null}",
        "{\"$surreal\":\"range\",\"begin\":{\"included\":1,\"excluded\":2},\"end\":null}",
        "{\"$surreal\":\"file\",\"bucket\":\"b\"}",
        "{\"$surreal\":\"point\",\"value\":[1]}",
        "{\"$surreal\":\"point\",\"value\":[1,\"2\"]}",
        "{\"$surreal\":\"line\",\"value\":[[1,2]]}",
        "{\"$surreal\":\"polygon\",\"value\":[{\"$surreal\":\"point\",\"value\":[1,2]}]}",
        "{\"$surreal\":\"collection\",\"value\":[{\"$surreal\":\"none\"}]}",
        "{\"$surreal\":\"bigint\",\"value\":\"18446744073709551616\"}",
        "{\"$surreal\":\"bigint\",\"value\":\"-18446744073709551617\"}",
        "{\"$surreal\":\"bigint\",\"value\":\"1e3\"}",
        "{\"$surreal\":\"float\",\"value\":\"nan\"}",
        "{\"$surreal\":\"object\",\"value\":[]}",
        "{\"$surreal\":\"tag\",\"tag\":-1,\"value\":1}",
        "{\"$surreal\":\"tag\",\"tag\":1}",
        "[1,{\"a\":{\"$surreal\":\"bogus\"}}]",
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        json_t *v = load(bad[i]);
        surpool_error e;
        memset(&e, 0, sizeof(e));
        if (surpool_value_check(v, &e) != SURPOOL_ERR_INVALID_ARG)
            fail_msg("accepted malformed %s", bad[i]);
        assert_true(e.message[0] != '\0');
        /* ... and a request carrying it is refused before anything is built. */
        json_t *params = json_pack("[O]", v);
        char *out = NULL;
        size_t len = 0;
        assert_int_equal(
            surpool__cbor_encode_request(1, "query", params, NULL, NULL, 16, &out, &len, NULL),
            SURPOOL_ERR_INVALID_ARG);
        assert_null(out);
        json_decref(params);
        json_decref(v);
    }
}

static void test_depth_bound_encode(void **state)
{
    (void)state;
    json_t *v = json_array();
    json_t *inner = v;
    for (int i = 0; i < SURPOOL__CBOR_MAX_DEPTH + 5; i++) {
        json_t *a = json_array();
        json_array_append_new(inner, a);
        inner = a;
    }
    assert_int_equal(surpool_value_check(v, NULL), SURPOOL_ERR_INVALID_ARG);
    json_decref(v);
}

/* ---- frames and peek ---------------------------------------------------- */

static void test_request_envelope(void **state)
{
    (void)state;
    json_t *params = json_pack("[s,{s:s}]", "SELECT * FROM $x", "x", "person:01");
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(surpool__cbor_encode_request(42, "query", params,
                                                  "0192A8F0-1111-7222-8333-444455556666", NULL,
                                                  16, &out, &len, NULL),
                     SURPOOL_OK);
    json_t *v = dec((unsigned char *)out + 16, len);
    assert_json(v, "{\"id\":42,\"method\":\"query\",\"params\":[\"SELECT * FROM $x\","
                   "{\"x\":\"person:01\"}],\"session\":{\"$surreal\":\"uuid\",\"value\":"
                   "\"0192a8f0-1111-7222-8333-444455556666\"}}");
    json_decref(v);
    surpool__free(out);
    assert_int_equal(
        surpool__cbor_encode_request(1, "Query", params, NULL, NULL, 0, &out, &len, NULL),
        SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(
        surpool__cbor_encode_request(1, "query", params, "x", NULL, 0, &out, &len, NULL),
        SURPOOL_ERR_INVALID_ARG);
    json_t *notarray = json_object();
    assert_int_equal(
        surpool__cbor_encode_request(1, "query", notarray, NULL, NULL, 0, &out, &len, NULL),
        SURPOOL_ERR_INVALID_ARG);
    json_decref(notarray);
    assert_int_equal(
        surpool__cbor_encode_request(7, "ping", NULL, NULL, NULL, 0, &out, &len, NULL),
        SURPOOL_OK);
    v = dec((unsigned char *)out, len);
    assert_json(v, "{\"id\":7,\"method\":\"ping\",\"params\":[]}");
    json_decref(v);
    surpool__free(out);
    json_decref(params);
}

static struct bytes enc_json(const char *text)
{
    json_t *v = load(text);
    struct bytes b = enc(v);
    json_decref(v);
    return b;
}

static void test_frames(void **state)
{
    (void)state;
    surpool__frame f;
    surpool_error e;
    struct bytes b = enc_json("{\"id\":5,\"result\":[{\"$surreal\":\"none\"}]}");
    assert_int_equal(surpool__cbor_decode_frame(b.p, b.n, &f, &e), SURPOOL_OK);
    assert_int_equal(f.kind, SURPOOL__FRAME_REPLY);
    assert_int_equal(f.id, 5);
    json_t *result = NULL;
    assert_int_equal(surpool__codec_reply_result(f.root, &result, &e), SURPOOL_OK);
    assert_int_equal(surpool_value_type_of(json_array_get(result, 0)), SURPOOL_VALUE_NONE);
    json_decref(f.root);
    surpool__free(b.p);

    b = enc_json("{\"id\":6,\"error\":{\"code\":-32002,\"message\":\"no\",\"kind\":"
                 "\"NotAllowed\"}}");
    assert_int_equal(surpool__cbor_decode_frame(b.p, b.n, &f, &e), SURPOOL_OK);
    assert_int_equal(surpool__codec_reply_result(f.root, &result, &e), SURPOOL_ERR_AUTH);
    assert_int_equal(e.server_code, -32002);
    assert_string_equal(e.kind, "NotAllowed");
    json_decref(f.root);
    surpool__free(b.p);

    b = enc_json("{\"result\":{\"action\":\"CREATE\",\"id\":{\"$surreal\":\"uuid\",\"value\":"
                 "\"0192a8f0-1111-7222-8333-444455556666\"}}}");
    assert_int_equal(surpool__cbor_decode_frame(b.p, b.n, &f, &e), SURPOOL_OK);
    assert_int_equal(f.kind, SURPOOL__FRAME_NOTIFICATION);
    json_decref(f.root);
    surpool__frame_kind k;
    int64_t id = 99;
    assert_int_equal(surpool__cbor_route(b.p, b.n, &k, &id, &e), SURPOOL_OK);
    assert_int_equal(k, SURPOOL__FRAME_NOTIFICATION);
    surpool__free(b.p);

    b = enc_json("{\"id\":null,\"error\":{\"code\":-32700,\"message\":\"parse\"}}");
    assert_int_equal(surpool__cbor_decode_frame(b.p, b.n, &f, &e), SURPOOL_OK);
    assert_int_equal(f.kind, SURPOOL__FRAME_ORPHAN_ERROR);
    json_decref(f.root);
    assert_int_equal(surpool__cbor_route(b.p, b.n, &k, &id, &e), SURPOOL_OK);
    assert_int_equal(k, SURPOOL__FRAME_ORPHAN_ERROR);
    surpool__free(b.p);

    const char *bad[] = {"[1]", "{\"id\":\"a\",\"result\":1}", "{\"result\":1}",
                         "{\"$surreal\":\"none\"}"};
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        b = enc_json(bad[i]);
        assert_int_equal(surpool__cbor_decode_frame(b.p, b.n, &f, &e), SURPOOL_ERR_PROTOCOL);
        assert_null(f.root);
        surpool__free(b.p);
    }
}

static void test_peek(void **state)
{
    (void)state;
    surpool__frame_kind k;
    int64_t id;
    surpool_error e;
    surpool__peek_info in;
    /* A big nested result before the id is skipped, not built. */
    json_t *big = json_array();
    for (int i = 0; i < 2000; i++)
        json_array_append_new(big, json_pack("{s:i,s:[s,{s:f}]}", "n", i, "a", "x", "y", 1.5));
    json_t *frame = json_pack("{s:O,s:I}", "result", big, "id", (json_int_t)INT64_MIN);
    struct bytes b = enc(frame);
    assert_int_equal(surpool__cbor_route(b.p, b.n, &k, &id, &e), SURPOOL_OK);
    assert_int_equal(k, SURPOOL__FRAME_REPLY);
    assert_true(id == INT64_MIN);
    /* Every truncation is refused: the id is the last item. */
    for (size_t n = 0; n < b.n; n += 97)
        assert_int_equal(surpool__cbor_route(b.p, n, &k, &id, &e), SURPOOL_ERR_PROTOCOL);
    surpool__free(b.p);
    json_decref(frame);

    /* With the id first (as the server writes it), routing reads the head
     * only: a frame cut anywhere after the id still routes, and it is the
     * full walk (raw path) and the decode on the caller's side that refuse it. */
    frame = json_pack("{s:I,s:o}", "id", (json_int_t)7, "result", big);
    b = enc(frame);
    assert_int_equal(surpool__cbor_peek_info(b.p, b.n, &in, &e), SURPOOL_OK);
    /* The map's head, "id" and 7: the "result" key (7 bytes) comes next. */
    size_t head = in.result_off - 7;
    assert_int_equal(head, 5);
    for (size_t n = head; n < b.n; n += 97) {
        assert_int_equal(surpool__cbor_route(b.p, n, &k, &id, &e), SURPOOL_OK);
        assert_int_equal(k, SURPOOL__FRAME_REPLY);
        assert_int_equal(id, 7);
        assert_int_equal(surpool__cbor_peek_info(b.p, n, &in, &e), SURPOOL_ERR_PROTOCOL);
        surpool__frame f;
        assert_int_equal(surpool__cbor_decode_frame(b.p, n, &f, &e), SURPOOL_ERR_PROTOCOL);
    }
    for (size_t n = 0; n < head; n++)
        assert_int_equal(surpool__cbor_route(b.p, n, &k, &id, &e), SURPOOL_ERR_PROTOCOL);
    surpool__free(b.p);
    json_decref(frame);

    /* `route`: 1 when routing accepts it as a reply to id 1 (what follows the
     * id is the decode's to refuse); every row is refused by the full walk. */
    static const struct {
        const char *hex;
        int route;
    } bad[] = {
        {"82 01 02", 0},                                           /* array root */
        {"a2 62 69 64 01 62 69 64 02", 1},                         /* duplicate id */
        {"a2 62 69 64 f6 62 69 64 02", 0},                         /* null id, then another */
        {"a1 62 69 64 61 31", 0},                                  /* id "1" */
        {"a1 62 69 64 1b 80 00 00 00 00 00 00 00", 0},             /* id 2^63 */
        {"a1 01 02", 0},                                           /* integer key */
        {"bf 62 69 64 01 ff", 0},                                  /* indefinite map */
        {"a1 62 69 64 01 00", 1},                                  /* trailing byte */
        {"a2 62 69 64 01 66 72 65 73 75 6c 74 9f 01 ff", 1},       /* indefinite array value */
        {"a1 66 72 65 73 75 6c 74 5b ff ff ff ff ff ff ff f0", 0}, /* huge bytes */
        {"a1 66 72 65 73 75 6c 74 9b ff ff ff ff ff ff ff f0", 0}, /* huge array */
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        struct bytes h = hex(bad[i].hex);
        surpool_err rc = surpool__cbor_route(h.p, h.n, &k, &id, &e);
        if (bad[i].route ? (rc != SURPOOL_OK || k != SURPOOL__FRAME_REPLY || id != 1)
                         : rc != SURPOOL_ERR_PROTOCOL)
            fail_msg("route of %s: %s", bad[i].hex, surpool_err_name(rc));
        if (surpool__cbor_peek_info(h.p, h.n, &in, &e) != SURPOOL_ERR_PROTOCOL)
            fail_msg("peek_info accepted %s", bad[i].hex);
        surpool__frame f;
        if (surpool__cbor_decode_frame(h.p, h.n, &f, &e) != SURPOOL_ERR_PROTOCOL)
            fail_msg("the decode accepted %s", bad[i].hex);
        free(h.p);
    }
    /* Route and the full decode agree on the id. */
    struct bytes h = hex("a2 66 72 65 73 75 6c 74 f6 62 69 64 18 2a");
    assert_int_equal(surpool__cbor_route(h.p, h.n, &k, &id, &e), SURPOOL_OK);
    assert_int_equal(k, SURPOOL__FRAME_REPLY);
    assert_int_equal(id, 42);
    free(h.p);
    assert_int_equal(surpool__cbor_route(NULL, 0, &k, &id, &e), SURPOOL_ERR_INVALID_ARG);
}

/* The raw path's spans: the result item's bytes (tags included) decode
 * alone to the full decode's "result"; errors and duplicates are reported. */
static void test_peek_spans(void **state)
{
    (void)state;
    surpool_error e;
    surpool__peek_info in;
    const char *frames[] = {
        "{\"id\":5,\"result\":[{\"$surreal\":\"none\"},{\"$surreal\":\"uuid\",\"value\":"
        "\"0192a8f0-1111-7222-8333-444455556666\"},{\"result\":{\"error\":1}}]}",
        "{\"result\":{\"$surreal\":\"datetime\",\"value\":\"2024-01-02T03:04:05Z\"},\"id\":6}",
        "{\"id\":7,\"error\":null,\"result\":\"x\"}",
        "{\"id\":8,\"results\":1,\"result\":null}",
    };
    for (size_t i = 0; i < ARRAY_LEN(frames); i++) {
        struct bytes b = enc_json(frames[i]);
        if (surpool__cbor_peek_info(b.p, b.n, &in, &e) != SURPOOL_OK)
            fail_msg("%s: %s", frames[i], e.message);
        assert_int_equal(in.kind, SURPOOL__FRAME_REPLY);
        assert_true(in.has_result && !in.has_error && !in.dup_key);
        assert_true(in.result_off + in.result_len <= b.n);
        surpool__frame f;
        assert_int_equal(surpool__cbor_decode_frame(b.p, b.n, &f, &e), SURPOOL_OK);
        json_t *alone = dec(b.p + in.result_off, in.result_len);
        if (!json_equal(alone, json_object_get(f.root, "result")))
            fail_msg("%s: the span decodes to another value", frames[i]);
        json_decref(alone);
        json_decref(f.root);
        /* Every truncation is refused. */
        for (size_t n = 0; n < b.n; n++)
            assert_int_equal(surpool__cbor_peek_info(b.p, n, &in, &e), SURPOOL_ERR_PROTOCOL);
        surpool__free(b.p);
    }
    /* An error frame: the error's span, no result. */
    struct bytes b = enc_json("{\"id\":9,\"error\":{\"code\":-32000,\"message\":\"m\"}}");
    assert_int_equal(surpool__cbor_peek_info(b.p, b.n, &in, &e), SURPOOL_OK);
    assert_true(in.has_error && !in.has_result);
    json_t *ev = dec(b.p + in.error_off, in.error_len);
    assert_string_equal(json_string_value(json_object_get(ev, "message")), "m");
    json_decref(ev);
    surpool__free(b.p);
    /* A tagged result: the tag is part of the item. {"id":1,"result":6(null)} */
    struct bytes h = hex("a2 62 69 64 01 66 72 65 73 75 6c 74 c6 f6");
    assert_int_equal(surpool__cbor_peek_info(h.p, h.n, &in, &e), SURPOOL_OK);
    assert_int_equal(in.result_len, 2);
    assert_int_equal(h.p[in.result_off], 0xc6);
    free(h.p);
    /* Duplicate "result" (or "error") keys: reported (the full decode refuses). */
    h = hex("a3 62 69 64 01 66 72 65 73 75 6c 74 01 66 72 65 73 75 6c 74 02");
    assert_int_equal(surpool__cbor_peek_info(h.p, h.n, &in, &e), SURPOOL_OK);
    assert_true(in.dup_key);
    free(h.p);
    h = hex("a3 62 69 64 01 65 65 72 72 6f 72 f6 65 65 72 72 6f 72 a0");
    assert_int_equal(surpool__cbor_peek_info(h.p, h.n, &in, &e), SURPOOL_OK);
    assert_true(in.dup_key && in.has_error);
    free(h.p);
    assert_int_equal(surpool__cbor_peek_info(NULL, 0, &in, &e), SURPOOL_ERR_INVALID_ARG);
}

/* ---- hostile input ------------------------------------------------------- */

static void test_hostile_decode(void **state)
{
    (void)state;
    const char *bad[] = {
        "",                              /* empty */
        "18",                            /* truncated head */
        "62 61",                         /* truncated text */
        "82 01",                         /* truncated array */
        "9f 01 ff",                      /* indefinite array */
        "7f 61 61 ff",                   /* indefinite text */
        "5f 41 00 ff",                   /* indefinite bytes */
        "bf ff",                         /* indefinite map */
        "ff",                            /* lone break */
        "9a ff ff ff ff 00",             /* 4G-item array in 6 bytes */
        "9b 00 00 00 01 00 00 00 00 00", /* 2^32 items */
        "bb 7f ff ff ff ff ff ff ff 00", /* huge map */
        "7b ff ff ff ff ff ff ff ff 00", /* 2^64-1 text */
        "7b 7f ff ff ff ff ff ff f0 00", /* text longer than the frame */
        "5b ff ff ff ff ff ff ff f8 00", /* bytes longer than the frame */
        "a1 01 02",                      /* integer key */
        "a2 61 61 01 61 61 02",          /* duplicate key */
        "a1 63 61 00 62 01",             /* key with NUL */
        "62 c3 28",                      /* invalid UTF-8 */
        "63 ed a0 80",                   /* surrogate */
        "01 02",                         /* trailing bytes */
        "f0",                            /* simple value 16 */
        "f8 20",                         /* simple value 32 */
        "1c",                            /* reserved additional info */
        "db ff ff ff ff ff ff ff ff 01", /* tag 2^64-1 */
        "c6",                            /* tag without content */
    };
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        struct bytes h = hex(bad[i]);
        surpool_error e;
        surpool_err rc = dec_rc(h.p, h.n, &e);
        if (rc != SURPOOL_ERR_PROTOCOL)
            fail_msg("decode of %s returned %d, expected PROTOCOL", bad[i], rc);
        assert_true(e.message[0] != '\0');
        free(h.p);
    }
}

static void test_depth_bound_decode(void **state)
{
    (void)state;
    size_t n = 100000;
    unsigned char *p = malloc(n + 1);
    assert_non_null(p);
    memset(p, 0x81, n); /* [[[[... */
    p[n] = 0x01;
    surpool_error e;
    assert_int_equal(dec_rc(p, n + 1, &e), SURPOOL_ERR_PROTOCOL);
    assert_non_null(strstr(e.message, "deeper"));
    memset(p, 0xc6, n); /* tag 6 tag 6 ... */
    assert_int_equal(dec_rc(p, n + 1, &e), SURPOOL_ERR_PROTOCOL);
    /* Exactly at the bound is fine. */
    memset(p, 0x81, SURPOOL__CBOR_MAX_DEPTH);
    p[SURPOOL__CBOR_MAX_DEPTH] = 0x01;
    assert_int_equal(dec_rc(p, SURPOOL__CBOR_MAX_DEPTH + 1, &e), SURPOOL_OK);
    assert_int_equal(dec_rc(p, SURPOOL__CBOR_MAX_DEPTH, &e), SURPOOL_ERR_PROTOCOL);
    /* An empty array or map innermost counts as a level, as when encoding:
     * 256 tags around [] decoded before, into a value the encoder (and so
     * surpool_value_check) refuses (found by fuzz_cbor_decode). */
    /* [], {}, and a negative integer below int64 (a typed bigint object). */
    const unsigned char empties[] = {0x80, 0xa0, 0x3b};
    for (size_t k = 0; k < sizeof(empties); k++) {
        for (size_t tags = SURPOOL__CBOR_MAX_DEPTH - 1; tags <= SURPOOL__CBOR_MAX_DEPTH;
             tags++) {
            memset(p, 0xcf, tags); /* tag 15 (future) ... */
            p[tags] = empties[k];
            size_t len = tags + 1;
            if (empties[k] == 0x3b) { /* -1 - 0xff00000000000000 */
                memset(p + len, 0, 8);
                p[len] = 0xff;
                len += 8;
            }
            json_t *v = NULL;
            surpool_err rc = surpool__cbor_decode_value(p, len, &v, &e);
            if (tags < SURPOOL__CBOR_MAX_DEPTH) {
                assert_int_equal(rc, SURPOOL_OK);
                assert_int_equal(surpool_value_check(v, &e), SURPOOL_OK);
                json_decref(v);
            } else {
                assert_int_equal(rc, SURPOOL_ERR_PROTOCOL);
                assert_null(v);
            }
        }
    }
    free(p);
}

/* Every prefix and every single-byte corruption of a rich frame decodes or
 * fails cleanly (no crash, no leak under ASan). */
static void test_corruptions(void **state)
{
    (void)state;
    json_t *v = load("{\"id\":1,\"result\":[" /* one of each */
                     "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":[1,\"a\"]},"
                     "{\"$surreal\":\"datetime\",\"value\":\"2024-01-01T00:00:00.5Z\"},"
                     "{\"$surreal\":\"range\",\"begin\":{\"included\":1},\"end\":null},"
                     "{\"$surreal\":\"bytes\",\"value\":\"AAEC\"},"
                     "{\"k\":\"v\",\"n\":-1.5}]}");
    struct bytes b = enc(v);
    surpool_error e;
    for (size_t n = 0; n < b.n; n++)
        assert_int_equal(dec_rc(b.p, n, &e), SURPOOL_ERR_PROTOCOL);
    for (size_t i = 0; i < b.n; i++) {
        for (int bit = 0; bit < 8; bit++) {
            b.p[i] ^= (unsigned char)(1u << bit);
            surpool_err rc = dec_rc(b.p, b.n, &e);
            assert_true(rc == SURPOOL_OK || rc == SURPOOL_ERR_PROTOCOL);
            surpool__frame_kind k;
            int64_t id;
            rc = surpool__cbor_route(b.p, b.n, &k, &id, &e);
            assert_true(rc == SURPOOL_OK || rc == SURPOOL_ERR_PROTOCOL);
            b.p[i] ^= (unsigned char)(1u << bit);
        }
    }
    surpool__free(b.p);
    json_decref(v);
}

/* ---- constructors, thing text, text forms ------------------------------- */

static void want_value(surpool_err rc, json_t **vp, const char *json)
{
    json_t *v = *vp;
    assert_int_equal(rc, SURPOOL_OK);
    assert_json(v, json);
    assert_int_equal(surpool_value_check(v, NULL), SURPOOL_OK);
    json_decref(v);
}

static void test_constructors(void **state)
{
    (void)state;
    json_t *v = NULL;
    want_value(surpool_value_none(&v, NULL), &v, "{\"$surreal\":\"none\"}");
    want_value(surpool_value_table("person", &v, NULL), &v,
               "{\"$surreal\":\"table\",\"value\":\"person\"}");
    json_t *id = json_string("01");
    want_value(surpool_value_record("person", id, &v, NULL), &v,
               "{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":\"01\"}");
    json_decref(id);
    id = json_real(1.5);
    assert_int_equal(surpool_value_record("person", id, &v, NULL), SURPOOL_ERR_INVALID_ARG);
    json_decref(id);
    want_value(surpool_value_uuid("E3B0C442-98FC-1C14-9AFB-4C8996FB9242", &v, NULL), &v,
               "{\"$surreal\":\"uuid\",\"value\":\"e3b0c442-98fc-1c14-9afb-4c8996fb9242\"}");
    want_value(surpool_value_decimal("123456789012345678901234567890.123", &v, NULL), &v,
               "{\"$surreal\":\"decimal\",\"value\":\"123456789012345678901234567890.123\"}");
    want_value(surpool_value_datetime("2024-01-01", &v, NULL), &v,
               "{\"$surreal\":\"datetime\",\"value\":\"2024-01-01T00:00:00Z\"}");
    want_value(surpool_value_datetime("2024-01-01t10:00:00.5+02:00", &v, NULL), &v,
               "{\"$surreal\":\"datetime\",\"value\":\"2024-01-01T08:00:00.500Z\"}");
    want_value(surpool_value_datetime("2000-02-29 00:00:00.000001-00:30", &v, NULL), &v,
               "{\"$surreal\":\"datetime\",\"value\":\"2000-02-29T00:30:00.000001Z\"}");
    want_value(surpool_value_datetime_unix(0, 1, &v, NULL), &v,
               "{\"$surreal\":\"datetime\",\"value\":\"1970-01-01T00:00:00.000000001Z\"}");
    want_value(surpool_value_datetime_unix(-1, 0, &v, NULL), &v,
               "{\"$surreal\":\"datetime\",\"value\":\"1969-12-31T23:59:59Z\"}");
    assert_int_equal(surpool_value_datetime_unix(0, 1000000000u, &v, NULL),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_value_datetime_unix(INT64_C(253402300800), 0, &v, NULL),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_value_datetime("2023-02-29", &v, NULL), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_value_datetime("2024-01-01T24:00:00Z", &v, NULL),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_value_datetime_unix(1704067200, 5, &v, NULL), SURPOOL_OK);
    int64_t secs;
    uint32_t nanos;
    assert_int_equal(surpool_value_datetime_get(v, &secs, &nanos, NULL), SURPOOL_OK);
    assert_true(secs == 1704067200 && nanos == 5);
    json_decref(v);
    want_value(surpool_value_duration("90m", &v, NULL), &v,
               "{\"$surreal\":\"duration\",\"value\":\"1h30m\"}");
    want_value(surpool_value_duration("1500ms", &v, NULL), &v,
               "{\"$surreal\":\"duration\",\"value\":\"1s500ms\"}");
    want_value(surpool_value_duration("1us1\xC2\xB5s", &v, NULL), &v,
               "{\"$surreal\":\"duration\",\"value\":\"2\xC2\xB5s\"}");
    assert_int_equal(surpool_value_duration("", &v, NULL), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_value_duration("1h 30m", &v, NULL), SURPOOL_ERR_INVALID_ARG);
    const unsigned char raw[] = {0, 1, 2, 255};
    want_value(surpool_value_bytes(raw, sizeof(raw), &v, NULL), &v,
               "{\"$surreal\":\"bytes\",\"value\":\"AAEC/w==\"}");
    want_value(surpool_value_bytes(NULL, 0, &v, NULL), &v,
               "{\"$surreal\":\"bytes\",\"value\":\"\"}");
    assert_int_equal(surpool_value_type_of(NULL), SURPOOL_VALUE_PLAIN);
    json_t *s = json_string("x");
    assert_int_equal(surpool_value_type_of(s), SURPOOL_VALUE_PLAIN);
    json_decref(s);
    assert_string_equal(surpool_value_type_name(SURPOOL_VALUE_RECORD), "record");
    assert_string_equal(surpool_value_type_name(SURPOOL_VALUE_INVALID), "invalid");
}

static void test_thing_text(void **state)
{
    (void)state;
    const struct {
        const char *text, *json; /* json NULL: INVALID_ARG */
    } c[] = {
        {"person", "{\"$surreal\":\"table\",\"value\":\"person\"}"},
        {"person:tobie", "{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":\"tobie\"}"},
        {"person:01", "{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":1}"},
        {"sku:007", "{\"$surreal\":\"record\",\"tb\":\"sku\",\"id\":7}"},
        {"t:9223372036854775807",
         "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":9223372036854775807}"},
        {"t:1a", "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":\"1a\"}"},
        {"t:⟨01⟩", "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":\"01\"}"},
        {"t:⟨a b⟩", "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":\"a b\"}"},
        {"t:⟨a\\⟩b⟩", "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":\"a⟩b\"}"},
        {"t:`a b`", "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":\"a b\"}"},
        {"t:`a\\`\\\\b`", "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":\"a`\\\\b\"}"},
        {"`my table`:x", "{\"$surreal\":\"record\",\"tb\":\"my table\",\"id\":\"x\"}"},
        {"⟨my table⟩", "{\"$surreal\":\"table\",\"value\":\"my table\"}"},
        {"t:u'E3B0C442-98FC-1C14-9AFB-4C8996FB9242'",
         "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":{\"$surreal\":\"uuid\",\"value\":"
         "\"e3b0c442-98fc-1c14-9afb-4c8996fb9242\"}}"},
        {"t:u\"e3b0c442-98fc-1c14-9afb-4c8996fb9242\"",
         "{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":{\"$surreal\":\"uuid\",\"value\":"
         "\"e3b0c442-98fc-1c14-9afb-4c8996fb9242\"}}"},
        {"", NULL},
        {":", NULL},
        {"t:", NULL},
        {":x", NULL},
        {"t:a b", NULL},
        {"t:a:b", NULL},
        {"t:9223372036854775808", NULL},
        {"t:[1,2]", NULL},
        {"t:{a:1}", NULL},
        {"t:1..5", NULL},
        {"t:⟨⟩", NULL},
        {"t:`x", NULL},
        {"t:⟨x", NULL},
        {"t:`a\\nb`", NULL},
        {"t:u'0000'", NULL},
        {"Note: hi", NULL},
        {"2024-01-01", NULL},
    };
    for (size_t i = 0; i < ARRAY_LEN(c); i++) {
        json_t *v = NULL;
        surpool_err rc = surpool_value_thing(c[i].text, &v, NULL);
        if (c[i].json == NULL) {
            if (rc != SURPOOL_ERR_INVALID_ARG)
                fail_msg("accepted thing text \"%s\"", c[i].text);
            continue;
        }
        if (rc != SURPOOL_OK)
            fail_msg("refused thing text \"%s\"", c[i].text);
        assert_json(v, c[i].json);
        assert_round_trip(v);
        json_decref(v);
    }
}

static void test_text_forms(void **state)
{
    (void)state;
    const struct {
        const char *json, *text;
    } c[] = {
        {"{\"$surreal\":\"none\"}", "NONE"},
        {"{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":\"tobie\"}", "person:tobie"},
        {"{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":\"01\"}", "person:`01`"},
        {"{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":1}", "person:1"},
        {"{\"$surreal\":\"record\",\"tb\":\"a b\",\"id\":\"x`y\"}", "`a b`:`x\\`y`"},
        {"{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":[1,\"a\"]}", "t:[1,\"a\"]"},
        {"{\"$surreal\":\"record\",\"tb\":\"t\",\"id\":{\"$surreal\":\"uuid\",\"value\":"
         "\"e3b0c442-98fc-1c14-9afb-4c8996fb9242\"}}",
         "t:u'e3b0c442-98fc-1c14-9afb-4c8996fb9242'"},
        {"{\"$surreal\":\"datetime\",\"value\":\"2024-01-01T00:00:00Z\"}",
         "2024-01-01T00:00:00Z"},
        {"{\"$surreal\":\"range\",\"begin\":{\"included\":1},\"end\":{\"excluded\":5}}",
         "1..5"},
        {"{\"$surreal\":\"range\",\"begin\":{\"excluded\":1},\"end\":{\"included\":5}}",
         "1>..=5"},
        {"{\"$surreal\":\"range\",\"begin\":null,\"end\":null}", ".."},
        {"{\"$surreal\":\"file\",\"bucket\":\"b\",\"key\":\"/k\"}", "f\"b:/k\""},
        {"\"person:01\"", "person:01"},
        {"[1,{\"$surreal\":\"none\"},{\"$surreal\":\"duration\",\"value\":\"1h\"}]",
         "[1,null,\"1h\"]"},
    };
    for (size_t i = 0; i < ARRAY_LEN(c); i++) {
        json_t *v = load(c[i].json), *t = NULL;
        assert_int_equal(surpool_value_text(v, &t, NULL), SURPOOL_OK);
        if (strcmp(json_string_value(t), c[i].text) != 0)
            fail_msg("text of %s is %s, expected %s", c[i].json, json_string_value(t),
                     c[i].text);
        json_decref(t);
        json_decref(v);
    }
    json_t *bad = load("{\"$surreal\":\"uuid\",\"value\":\"x\"}"), *t = NULL;
    assert_int_equal(surpool_value_text(bad, &t, NULL), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_value_to_plain(bad, &t, NULL), SURPOOL_ERR_INVALID_ARG);
    json_decref(bad);
}

static void test_to_plain(void **state)
{
    (void)state;
    json_t *v = load(
        "{\"id\":{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":1},"
        "\"at\":{\"$surreal\":\"datetime\",\"value\":\"2024-01-01T00:00:00Z\"},"
        "\"gone\":{\"$surreal\":\"none\"},"
        "\"tags\":{\"$surreal\":\"set\",\"value\":[\"a\",{\"$surreal\":\"decimal\",\"value\":"
        "\"1.5\"}]},"
        "\"where\":{\"$surreal\":\"point\",\"value\":[1.5,2.5]},"
        "\"shape\":{\"$surreal\":\"collection\",\"value\":[{\"$surreal\":\"line\",\"value\":"
        "[{\"$surreal\":\"point\",\"value\":[0.0,0.0]}]}]},"
        "\"odd\":{\"$surreal\":\"object\",\"value\":{\"$surreal\":\"x\",\"y\":"
        "{\"$surreal\":\"bigint\",\"value\":\"18446744073709551615\"}}},"
        "\"n\":1}");
    json_t *p = NULL;
    assert_int_equal(surpool_value_to_plain(v, &p, NULL), SURPOOL_OK);
    assert_json(p, "{\"id\":\"person:1\",\"at\":\"2024-01-01T00:00:00Z\",\"gone\":null,"
                   "\"tags\":[\"a\",\"1.5\"],"
                   "\"where\":{\"type\":\"Point\",\"coordinates\":[1.5,2.5]},"
                   "\"shape\":{\"type\":\"GeometryCollection\",\"geometries\":[{\"type\":"
                   "\"LineString\",\"coordinates\":[[0.0,0.0]]}]},"
                   "\"odd\":{\"$surreal\":\"x\",\"y\":\"18446744073709551615\"},\"n\":1}");
    json_decref(p);
    json_decref(v);
}

/* ---- wire format selection -------------------------------------------- */

static void test_url_format_key(void **state)
{
    (void)state;
    const struct {
        const char *url;
        int format; /* -1: refused */
    } c[] = {
        {"ws://h/rpc", 0},
        {"ws://h/rpc?format=cbor", SURPOOL_WIRE_CBOR},
        {"ws://h/rpc?ns=a&format=json&db=b", SURPOOL_WIRE_JSON},
        {"ws://h/rpc?format=CBOR", -1},
        {"ws://h/rpc?format=", -1},
        {"ws://h/rpc?format=xml", -1},
        {"ws://h/rpc?format=cbor&format=json", -1},
    };
    for (size_t i = 0; i < ARRAY_LEN(c); i++) {
        surpool__url u;
        surpool_err rc = surpool__url_parse(c[i].url, &u, NULL);
        if (c[i].format < 0) {
            assert_int_equal(rc, SURPOOL_ERR_INVALID_ARG);
            continue;
        }
        assert_int_equal(rc, SURPOOL_OK);
        assert_int_equal(u.format, c[i].format);
        surpool__url_free(&u);
    }
}

/* The envelope's txn: a UUID string over JSON, a UUID (tag 37) over CBOR;
 * anything but UUID text is refused before it reaches the text. */
static void test_wire_txn(void **state)
{
    (void)state;
    const char *txn = "01a2245f-6402-74b1-97ef-0a6d1d24550a";
    json_t *params = load("[\"CREATE t\"]");
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(surpool__wire_encode_request(SURPOOL_WIRE_JSON, 7, "query", params, txn, 2,
                                                  &out, &len, NULL),
                     SURPOOL_OK);
    assert_string_equal(out + 2, "{\"id\":7,\"method\":\"query\",\"params\":[\"CREATE t\"],"
                                 "\"txn\":\"01a2245f-6402-74b1-97ef-0a6d1d24550a\"}");
    surpool__free(out);
    assert_int_equal(surpool__wire_encode_request(SURPOOL_WIRE_CBOR, 7, "query", params, txn, 2,
                                                  &out, &len, NULL),
                     SURPOOL_OK);
    json_t *v = dec((unsigned char *)out + 2, len);
    json_t *want = load("{\"$surreal\":\"uuid\",\"value\":"
                        "\"01a2245f-6402-74b1-97ef-0a6d1d24550a\"}");
    assert_true(json_equal(json_object_get(v, "txn"), want));
    json_decref(want);
    json_decref(v);
    surpool__free(out);
    const char *bad[] = {"", "nope", "01a2245f-6402-74b1-97ef-0a6d1d24550a\",\"x\":\""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(surpool__wire_encode_request(SURPOOL_WIRE_JSON, 1, "query", params,
                                                      bad[i], 0, &out, &len, NULL),
                         SURPOOL_ERR_INVALID_ARG);
        assert_int_equal(surpool__wire_encode_request(SURPOOL_WIRE_CBOR, 1, "query", params,
                                                      bad[i], 0, &out, &len, NULL),
                         SURPOOL_ERR_INVALID_ARG);
    }
    json_decref(params);
}

static void test_wire_encoding(void **state)
{
    (void)state;
    /* Over JSON a typed value goes out as its text form; over CBOR as its tag. */
    json_t *params = load("[\"RETURN $x\",{\"x\":{\"$surreal\":\"record\",\"tb\":\"person\","
                          "\"id\":1},\"s\":\"person:01\"}]");
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(surpool__wire_encode_request(SURPOOL_WIRE_JSON, 3, "query", params, NULL,
                                                  4, &out, &len, NULL),
                     SURPOOL_OK);
    assert_string_equal(out + 4, "{\"id\":3,\"method\":\"query\",\"params\":[\"RETURN $x\","
                                 "{\"x\":\"person:1\",\"s\":\"person:01\"}]}");
    surpool__free(out);
    assert_int_equal(surpool__wire_encode_request(SURPOOL_WIRE_CBOR, 3, "query", params, NULL,
                                                  4, &out, &len, NULL),
                     SURPOOL_OK);
    json_t *v = dec((unsigned char *)out + 4, len);
    assert_true(json_equal(json_object_get(v, "params"), params));
    json_decref(v);
    surpool__free(out);
    json_decref(params);
    /* A malformed typed value is refused in both formats. */
    params = load("[{\"$surreal\":\"uuid\",\"value\":\"nope\"}]");
    assert_int_equal(surpool__wire_encode_request(SURPOOL_WIRE_JSON, 1, "query", params, NULL,
                                                  0, &out, &len, NULL),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool__wire_encode_request(SURPOOL_WIRE_CBOR, 1, "query", params, NULL,
                                                  0, &out, &len, NULL),
                     SURPOOL_ERR_INVALID_ARG);
    json_decref(params);
    /* Thing text: a string over JSON, a typed id over CBOR. */
    json_t *t = surpool__wire_thing(SURPOOL_WIRE_JSON, "person:01", NULL);
    assert_string_equal(json_string_value(t), "person:01");
    json_decref(t);
    t = surpool__wire_thing(SURPOOL_WIRE_CBOR, "person:01", NULL);
    assert_json(t, "{\"$surreal\":\"record\",\"tb\":\"person\",\"id\":1}");
    json_decref(t);
    surpool_error e;
    assert_null(surpool__wire_thing(SURPOOL_WIRE_CBOR, "Note: hi", &e));
    assert_int_equal(e.code, SURPOOL_ERR_INVALID_ARG);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strings_byte_for_byte),
        cmocka_unit_test(test_strings_in_containers),
        cmocka_unit_test(test_invalid_utf8_refused),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_numbers_beyond_json),
        cmocka_unit_test(test_typed_round_trip),
        cmocka_unit_test(test_server_shapes),
        cmocka_unit_test(test_encoded_forms),
        cmocka_unit_test(test_malformed_typed_refused),
        cmocka_unit_test(test_depth_bound_encode),
        cmocka_unit_test(test_request_envelope),
        cmocka_unit_test(test_frames),
        cmocka_unit_test(test_peek),
        cmocka_unit_test(test_peek_spans),
        cmocka_unit_test(test_hostile_decode),
        cmocka_unit_test(test_depth_bound_decode),
        cmocka_unit_test(test_corruptions),
        cmocka_unit_test(test_constructors),
        cmocka_unit_test(test_thing_text),
        cmocka_unit_test(test_text_forms),
        cmocka_unit_test(test_to_plain),
        cmocka_unit_test(test_url_format_key),
        cmocka_unit_test(test_wire_encoding),
        cmocka_unit_test(test_wire_txn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
