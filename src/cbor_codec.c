/*
 * CBOR codec for SurrealDB RPC frames (libcbor 0.8). See cbor_codec.h and
 * docs/values.md for the mapping between CBOR tags and json_t.
 *
 * Encoding walks the json_t tree recursively (depth bounded) and writes CBOR
 * heads with libcbor's cbor_encode_* helpers into one growable buffer.
 * Decoding drives libcbor's streaming decoder (one head per call) and builds
 * the json_t tree on an explicit stack, so hostile nesting never recurses and
 * no libcbor item tree is built. Pure: no I/O, no globals, no threads.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <cbor.h>

#include "cbor_codec.h"
#include "value.h"

#define ENCODE_INITIAL_CAPACITY 256

/* SurrealDB's CBOR tags (docs/values.md). */
enum {
    TAG_DATETIME_TEXT = 0,
    TAG_NONE = 6,
    TAG_TABLE = 7,
    TAG_RECORD = 8,
    TAG_UUID_TEXT = 9,
    TAG_DECIMAL = 10,
    TAG_DATETIME = 12,
    TAG_DURATION_TEXT = 13,
    TAG_DURATION = 14,
    TAG_FUTURE = 15,
    TAG_UUID = 37,
    TAG_RANGE = 49,
    TAG_BOUND_INCLUDED = 50,
    TAG_BOUND_EXCLUDED = 51,
    TAG_FILE = 55,
    TAG_SET = 56,
    TAG_POINT = 88,
    TAG_LINE = 89,
    TAG_POLYGON = 90,
    TAG_MULTIPOINT = 91,
    TAG_MULTILINE = 92,
    TAG_MULTIPOLYGON = 93,
    TAG_COLLECTION = 94,
};

/* Well-formed UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
            len = 2;
        else if (c >= 0xE0 && c <= 0xEF)
            len = 3;
        else if (c >= 0xF0 && c <= 0xF4)
            len = 4;
        else
            return 0;
        if (len > n - i)
            return 0;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
        else if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t k = 2; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
        }
        i += len;
    }
    return 1;
}

/* ------------------------------------------------------------------------- */
/* Encoding                                                                  */
/* ------------------------------------------------------------------------- */

struct enc {
    unsigned char *data;
    size_t cap;
    size_t used;
    surpool_err rc; /* first failure, sticky */
    surpool_error *err;
};

static int enc_fail(struct enc *e, surpool_err code, const char *msg)
{
    if (e->rc == SURPOOL_OK) {
        e->rc = code;
        if (code == SURPOOL_ERR_NOMEM)
            surpool__seterr(e->err, code, "out of memory encoding a request");
        else
            surpool__seterr(e->err, code, "%s", msg);
    }
    return -1;
}

static int enc_reserve(struct enc *e, size_t n)
{
    if (e->rc != SURPOOL_OK)
        return -1;
    /* One spare byte for the trailing NUL. */
    if (n > SIZE_MAX - 1 - e->used)
        return enc_fail(e, SURPOOL_ERR_NOMEM, "");
    size_t need = e->used + n + 1;
    if (need <= e->cap)
        return 0;
    size_t cap = e->cap;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    unsigned char *p = surpool__realloc(e->data, cap);
    if (p == NULL)
        return enc_fail(e, SURPOOL_ERR_NOMEM, "");
    e->data = p;
    e->cap = cap;
    return 0;
}

static int enc_raw(struct enc *e, const void *bytes, size_t n)
{
    if (enc_reserve(e, n))
        return -1;
    if (n > 0)
        memcpy(e->data + e->used, bytes, n);
    e->used += n;
    return 0;
}

/* Write one head with a cbor_encode_* helper (at most 9 bytes). */
#define ENC_HEAD(e, call)                                                                      \
    do {                                                                                       \
        if (enc_reserve((e), 9) == 0) {                                                        \
            unsigned char *p_ = (e)->data + (e)->used;                                         \
            size_t cap_ = 9;                                                                   \
            size_t n_ = call;                                                                  \
            (e)->used += n_;                                                                   \
        }                                                                                      \
    } while (0)

static void enc_uint(struct enc *e, uint64_t v)
{
    ENC_HEAD(e, cbor_encode_uint(v, p_, cap_));
}

static void enc_int(struct enc *e, int64_t v)
{
    if (v >= 0)
        ENC_HEAD(e, cbor_encode_uint((uint64_t)v, p_, cap_));
    else
        ENC_HEAD(e, cbor_encode_negint((uint64_t)(-(v + 1)), p_, cap_));
}

static void enc_tag(struct enc *e, uint64_t tag)
{
    ENC_HEAD(e, cbor_encode_tag(tag, p_, cap_));
}

static void enc_array(struct enc *e, size_t n)
{
    ENC_HEAD(e, cbor_encode_array_start(n, p_, cap_));
}

static void enc_map(struct enc *e, size_t n)
{
    ENC_HEAD(e, cbor_encode_map_start(n, p_, cap_));
}

static void enc_double(struct enc *e, double d)
{
    ENC_HEAD(e, cbor_encode_double(d, p_, cap_));
}

static void enc_null(struct enc *e)
{
    ENC_HEAD(e, cbor_encode_null(p_, cap_));
}

static void enc_text(struct enc *e, const char *s, size_t n)
{
    if (!utf8_valid((const unsigned char *)s, n)) {
        enc_fail(e, SURPOOL_ERR_INVALID_ARG, "a string is not valid UTF-8");
        return;
    }
    ENC_HEAD(e, cbor_encode_string_start(n, p_, cap_));
    enc_raw(e, s, n);
}

static void enc_bytes(struct enc *e, const unsigned char *b, size_t n)
{
    ENC_HEAD(e, cbor_encode_bytestring_start(n, p_, cap_));
    enc_raw(e, b, n);
}

static void enc_value(struct enc *e, const json_t *v, int depth);

static int enc_bad(struct enc *e, const char *type, const char *why)
{
    char msg[160];
    snprintf(msg, sizeof(msg), "malformed typed value {\"$surreal\":\"%s\"}: %s", type, why);
    return enc_fail(e, SURPOOL_ERR_INVALID_ARG, msg);
}

/* The object has exactly the keys "$surreal" plus `keys` (NULL-terminated)? */
static int has_exactly(const json_t *obj, const char *const *keys)
{
    size_t n = 1;
    for (; *keys != NULL; keys++, n++) {
        if (json_object_get(obj, *keys) == NULL)
            return 0;
    }
    return json_object_size(obj) == n;
}

static const char *const K_NONE[] = {NULL};
static const char *const K_VALUE[] = {"value", NULL};
static const char *const K_RECORD[] = {"tb", "id", NULL};
static const char *const K_RANGE[] = {"begin", "end", NULL};
static const char *const K_FILE[] = {"bucket", "key", NULL};
static const char *const K_TAG[] = {"tag", "value", NULL};

static const json_t *string_member(const json_t *obj, const char *key)
{
    const json_t *s = json_object_get(obj, key);
    return json_is_string(s) ? s : NULL;
}

/* Geometry tags and the type each element of their array must have. */
static const struct geo {
    const char *name;
    uint64_t tag;
    const char *elem; /* element type name; NULL: point coordinates; "*": any geometry */
} geos[] = {
    {"point", TAG_POINT, NULL},           {"line", TAG_LINE, "point"},
    {"polygon", TAG_POLYGON, "line"},     {"multipoint", TAG_MULTIPOINT, "point"},
    {"multiline", TAG_MULTILINE, "line"}, {"multipolygon", TAG_MULTIPOLYGON, "polygon"},
    {"collection", TAG_COLLECTION, "*"},
};

static const struct geo *geo_by_name(const char *name)
{
    for (size_t i = 0; i < sizeof(geos) / sizeof(geos[0]); i++) {
        if (strcmp(geos[i].name, name) == 0)
            return &geos[i];
    }
    return NULL;
}

static const struct geo *geo_by_tag(uint64_t tag)
{
    for (size_t i = 0; i < sizeof(geos) / sizeof(geos[0]); i++) {
        if (geos[i].tag == tag)
            return &geos[i];
    }
    return NULL;
}

static void enc_geometry(struct enc *e, const struct geo *g, const json_t *obj, int depth)
{
    const json_t *arr = json_object_get(obj, "value");
    if (!has_exactly(obj, K_VALUE) || !json_is_array(arr)) {
        enc_bad(e, g->name, "needs exactly \"value\", an array");
        return;
    }
    size_t n = json_array_size(arr);
    if (g->elem == NULL) {
        if (n != 2 || !json_is_number(json_array_get(arr, 0)) ||
            !json_is_number(json_array_get(arr, 1))) {
            enc_bad(e, g->name, "\"value\" must be [x, y], two numbers");
            return;
        }
        enc_tag(e, g->tag);
        enc_array(e, 2);
        enc_double(e, json_number_value(json_array_get(arr, 0)));
        enc_double(e, json_number_value(json_array_get(arr, 1)));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        const char *t = surpool__value_type_name(json_array_get(arr, i));
        if (t == NULL ||
            (strcmp(g->elem, "*") == 0 ? geo_by_name(t) == NULL : strcmp(t, g->elem) != 0)) {
            char why[64];
            snprintf(why, sizeof(why), "every element must be a typed %s",
                     strcmp(g->elem, "*") == 0 ? "geometry" : g->elem);
            enc_bad(e, g->name, why);
            return;
        }
    }
    enc_tag(e, g->tag);
    enc_array(e, n);
    for (size_t i = 0; i < n && e->rc == SURPOOL_OK; i++)
        enc_value(e, json_array_get(arr, i), depth + 1);
}

/* "begin"/"end" of a range: null (open) or {"included"|"excluded": v}. */
static void enc_bound(struct enc *e, const json_t *b, int depth)
{
    if (json_is_null(b)) {
        enc_null(e);
        return;
    }
    const json_t *inc = json_object_get(b, "included");
    const json_t *exc = json_object_get(b, "excluded");
    if (!json_is_object(b) || json_object_size(b) != 1 || (inc == NULL && exc == NULL)) {
        enc_bad(e, "range", "a bound is null or {\"included\": v} or {\"excluded\": v}");
        return;
    }
    enc_tag(e, inc != NULL ? TAG_BOUND_INCLUDED : TAG_BOUND_EXCLUDED);
    enc_value(e, inc != NULL ? inc : exc, depth + 1);
}

/* Parse integer text into a CBOR integer (major type 0 or 1, 64-bit range). */
static int bigint_parse(const char *s, size_t len, int *neg, uint64_t *mag)
{
    size_t i = 0;
    *neg = 0;
    if (i < len && s[i] == '-') {
        *neg = 1;
        i++;
    }
    if (i == len)
        return -1;
    /* For a negative number CBOR stores n = -1 - value, so up to 2^64. */
    unsigned __int128 v = 0;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
        if (v > (unsigned __int128)UINT64_MAX + 1)
            return -1;
    }
    if (*neg) {
        if (v == 0)
            return -1;
        *mag = (uint64_t)(v - 1);
    } else {
        if (v > UINT64_MAX)
            return -1;
        *mag = (uint64_t)v;
    }
    return 0;
}

static void enc_typed(struct enc *e, const json_t *obj, int depth)
{
    const json_t *tv = json_object_get(obj, SURPOOL__TYPE_KEY);
    if (!json_is_string(tv)) {
        enc_fail(e, SURPOOL_ERR_INVALID_ARG,
                 "malformed typed value: \"$surreal\" must be a type name string");
        return;
    }
    const char *type = json_string_value(tv);
    const json_t *value = json_object_get(obj, "value");
    const json_t *sv = string_member(obj, "value");
    const char *s = sv != NULL ? json_string_value(sv) : NULL;
    size_t slen = sv != NULL ? json_string_length(sv) : 0;

    if (strcmp(type, "none") == 0) {
        if (!has_exactly(obj, K_NONE)) {
            enc_bad(e, type, "takes no other member");
            return;
        }
        enc_tag(e, TAG_NONE);
        enc_null(e);
    } else if (strcmp(type, "table") == 0) {
        if (!has_exactly(obj, K_VALUE) || sv == NULL || slen == 0) {
            enc_bad(e, type, "needs exactly \"value\", a non-empty string");
            return;
        }
        enc_tag(e, TAG_TABLE);
        enc_text(e, s, slen);
    } else if (strcmp(type, "record") == 0) {
        if (has_exactly(obj, K_VALUE) && sv != NULL && slen > 0) {
            enc_tag(e, TAG_RECORD); /* record id text, parsed by the server */
            enc_text(e, s, slen);
            return;
        }
        const json_t *tb = string_member(obj, "tb");
        const json_t *id = json_object_get(obj, "id");
        if (!has_exactly(obj, K_RECORD) || tb == NULL || json_string_length(tb) == 0) {
            enc_bad(e, type, "needs \"tb\" (a non-empty string) and \"id\", or \"value\"");
            return;
        }
        const char *idt = surpool__value_type_name(id);
        int ok = json_is_string(id) || json_is_integer(id) || json_is_array(id) ||
                 (json_is_object(id) && idt == NULL) ||
                 (idt != NULL && (strcmp(idt, "uuid") == 0 || strcmp(idt, "range") == 0 ||
                                  strcmp(idt, "object") == 0));
        if (!ok) {
            enc_bad(e, type, "\"id\" must be a string, integer, array, object, uuid or range");
            return;
        }
        enc_tag(e, TAG_RECORD);
        enc_array(e, 2);
        enc_text(e, json_string_value(tb), json_string_length(tb));
        enc_value(e, id, depth + 1);
    } else if (strcmp(type, "uuid") == 0) {
        unsigned char u[16];
        if (!has_exactly(obj, K_VALUE) || sv == NULL || surpool__uuid_parse(s, slen, u)) {
            enc_bad(e, type, "\"value\" must be UUID text (8-4-4-4-12 hex digits)");
            return;
        }
        enc_tag(e, TAG_UUID);
        enc_bytes(e, u, 16);
    } else if (strcmp(type, "decimal") == 0) {
        if (!has_exactly(obj, K_VALUE) || sv == NULL || !surpool__decimal_valid(s, slen)) {
            enc_bad(e, type, "\"value\" must be decimal text such as \"1.50\"");
            return;
        }
        enc_tag(e, TAG_DECIMAL);
        enc_text(e, s, slen);
    } else if (strcmp(type, "datetime") == 0) {
        surpool__datetime dt;
        if (!has_exactly(obj, K_VALUE) || sv == NULL || surpool__datetime_parse(s, slen, &dt)) {
            enc_bad(e, type, "\"value\" must be RFC 3339 text");
            return;
        }
        enc_tag(e, TAG_DATETIME);
        enc_array(e, 2);
        enc_int(e, dt.secs);
        enc_uint(e, dt.nanos);
    } else if (strcmp(type, "duration") == 0) {
        surpool__duration d;
        if (!has_exactly(obj, K_VALUE) || sv == NULL || surpool__duration_parse(s, slen, &d)) {
            enc_bad(e, type, "\"value\" must be duration text such as \"1h30m\"");
            return;
        }
        enc_tag(e, TAG_DURATION);
        enc_array(e, 2);
        enc_uint(e, d.secs);
        enc_uint(e, d.nanos);
    } else if (strcmp(type, "bytes") == 0) {
        if (!has_exactly(obj, K_VALUE) || sv == NULL || slen % 4 != 0) {
            enc_bad(e, type, "\"value\" must be base64 text");
            return;
        }
        unsigned char *buf = surpool__malloc(slen / 4 * 3 + 1);
        if (buf == NULL) {
            enc_fail(e, SURPOOL_ERR_NOMEM, "");
            return;
        }
        long long n = surpool__base64_decode(s, slen, buf);
        if (n < 0)
            enc_bad(e, type, "\"value\" must be base64 text");
        else
            enc_bytes(e, buf, (size_t)n);
        surpool__free(buf);
    } else if (strcmp(type, "set") == 0) {
        if (!has_exactly(obj, K_VALUE) || !json_is_array(value)) {
            enc_bad(e, type, "needs exactly \"value\", an array");
            return;
        }
        enc_tag(e, TAG_SET);
        enc_value(e, value, depth + 1);
    } else if (strcmp(type, "future") == 0) {
        if (!has_exactly(obj, K_VALUE)) {
            enc_bad(e, type, "needs exactly \"value\"");
            return;
        }
        enc_tag(e, TAG_FUTURE);
        enc_value(e, value, depth + 1);
    } else if (strcmp(type, "range") == 0) {
        if (!has_exactly(obj, K_RANGE)) {
            enc_bad(e, type, "needs exactly \"begin\" and \"end\"");
            return;
        }
        enc_tag(e, TAG_RANGE);
        enc_array(e, 2);
        enc_bound(e, json_object_get(obj, "begin"), depth + 1);
        enc_bound(e, json_object_get(obj, "end"), depth + 1);
    } else if (strcmp(type, "file") == 0) {
        const json_t *b = string_member(obj, "bucket"), *k = string_member(obj, "key");
        if (!has_exactly(obj, K_FILE) || b == NULL || k == NULL) {
            enc_bad(e, type, "needs exactly \"bucket\" and \"key\", two strings");
            return;
        }
        enc_tag(e, TAG_FILE);
        enc_array(e, 2);
        enc_text(e, json_string_value(b), json_string_length(b));
        enc_text(e, json_string_value(k), json_string_length(k));
    } else if (geo_by_name(type) != NULL) {
        enc_geometry(e, geo_by_name(type), obj, depth);
    } else if (strcmp(type, "bigint") == 0) {
        int neg;
        uint64_t mag;
        if (!has_exactly(obj, K_VALUE) || sv == NULL || bigint_parse(s, slen, &neg, &mag)) {
            enc_bad(e, type, "\"value\" must be integer text in [-2^64, 2^64-1]");
            return;
        }
        if (neg)
            ENC_HEAD(e, cbor_encode_negint(mag, p_, cap_));
        else
            enc_uint(e, mag);
    } else if (strcmp(type, "float") == 0) {
        double d;
        if (!has_exactly(obj, K_VALUE) || sv == NULL) {
            enc_bad(e, type, "\"value\" must be \"NaN\", \"Infinity\" or \"-Infinity\"");
            return;
        }
        if (strcmp(s, "NaN") == 0)
            d = NAN;
        else if (strcmp(s, "Infinity") == 0)
            d = INFINITY;
        else if (strcmp(s, "-Infinity") == 0)
            d = -INFINITY;
        else {
            enc_bad(e, type, "\"value\" must be \"NaN\", \"Infinity\" or \"-Infinity\"");
            return;
        }
        enc_double(e, d);
    } else if (strcmp(type, "object") == 0) {
        if (!has_exactly(obj, K_VALUE) || !json_is_object(value)) {
            enc_bad(e, type, "needs exactly \"value\", an object");
            return;
        }
        /* The wrapped object's own keys are data: never read as a type. */
        enc_map(e, json_object_size(value));
        const char *key;
        json_t *m;
        json_object_foreach((json_t *)value, key, m)
        {
            enc_text(e, key, strlen(key));
            enc_value(e, m, depth + 1);
            if (e->rc != SURPOOL_OK)
                return;
        }
    } else if (strcmp(type, "tag") == 0) {
        const json_t *t = json_object_get(obj, "tag");
        if (!has_exactly(obj, K_TAG) || !json_is_integer(t) || json_integer_value(t) < 0) {
            enc_bad(e, type, "needs exactly \"tag\" (an integer >= 0) and \"value\"");
            return;
        }
        enc_tag(e, (uint64_t)json_integer_value(t));
        enc_value(e, value, depth + 1);
    } else {
        enc_bad(e, type, "unknown type name");
    }
}

static void enc_value(struct enc *e, const json_t *v, int depth)
{
    if (e->rc != SURPOOL_OK)
        return;
    /* Containers and typed values count, as on the decoding side. */
    if (depth > SURPOOL__CBOR_MAX_DEPTH && (json_is_object(v) || json_is_array(v))) {
        enc_fail(e, SURPOOL_ERR_INVALID_ARG,
                 "value nested deeper than the CBOR limit (256 levels)");
        return;
    }
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        if (json_object_get(v, SURPOOL__TYPE_KEY) != NULL) {
            enc_typed(e, v, depth);
            return;
        }
        enc_map(e, json_object_size(v));
        const char *key;
        json_t *m;
        json_object_foreach((json_t *)v, key, m)
        {
            enc_text(e, key, strlen(key));
            enc_value(e, m, depth + 1);
            if (e->rc != SURPOOL_OK)
                return;
        }
        return;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        enc_array(e, n);
        for (size_t i = 0; i < n && e->rc == SURPOOL_OK; i++)
            enc_value(e, json_array_get(v, i), depth + 1);
        return;
    }
    case JSON_STRING: enc_text(e, json_string_value(v), json_string_length(v)); return;
    case JSON_INTEGER: enc_int(e, (int64_t)json_integer_value(v)); return;
    case JSON_REAL: enc_double(e, json_real_value(v)); return;
    case JSON_TRUE: ENC_HEAD(e, cbor_encode_bool(true, p_, cap_)); return;
    case JSON_FALSE: ENC_HEAD(e, cbor_encode_bool(false, p_, cap_)); return;
    case JSON_NULL: enc_null(e); return;
    }
}

static int method_is_valid(const char *m)
{
    if (m == NULL || *m == '\0')
        return 0;
    for (; *m != '\0'; m++) {
        if (!((*m >= 'a' && *m <= 'z') || *m == '_'))
            return 0;
    }
    return 1;
}

static surpool_err enc_begin(struct enc *e, size_t headroom, surpool_error *err)
{
    memset(e, 0, sizeof(*e));
    e->err = err;
    if (headroom > SIZE_MAX / 2)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "encode headroom too large");
    e->cap = headroom + ENCODE_INITIAL_CAPACITY;
    e->data = surpool__malloc(e->cap);
    if (e->data == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory encoding a request");
    e->used = headroom;
    return SURPOOL_OK;
}

static surpool_err enc_finish(struct enc *e, size_t headroom, char **out, size_t *len)
{
    if (e->rc != SURPOOL_OK) {
        surpool__free(e->data);
        return e->rc;
    }
    e->data[e->used] = '\0'; /* enc_reserve kept room for it */
    *out = (char *)e->data;
    *len = e->used - headroom;
    return SURPOOL_OK;
}

surpool_err surpool__cbor_encode_value(const json_t *v, size_t headroom, char **out,
                                       size_t *len, surpool_error *err)
{
    if (v == NULL || out == NULL || len == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "encode_value: v, out and len are required");
    struct enc e;
    surpool_err rc = enc_begin(&e, headroom, err);
    if (rc != SURPOOL_OK)
        return rc;
    enc_value(&e, v, 1);
    return enc_finish(&e, headroom, out, len);
}

static void enc_uuid_member(struct enc *e, const char *key, const char *uuid)
{
    unsigned char u[16];
    if (surpool__uuid_parse(uuid, strlen(uuid), u)) {
        enc_fail(e, SURPOOL_ERR_INVALID_ARG, "RPC session and txn must be UUID text");
        return;
    }
    enc_text(e, key, strlen(key));
    enc_tag(e, TAG_UUID);
    enc_bytes(e, u, 16);
}

surpool_err surpool__cbor_encode_request(int64_t id, const char *method, const json_t *params,
                                         const char *session, const char *txn, size_t headroom,
                                         char **out, size_t *len, surpool_error *err)
{
    if (out == NULL || len == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "encode_request: out and len are required");
    if (!method_is_valid(method))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "RPC method must be a non-empty lowercase name ([a-z_]+)");
    if (params != NULL && !json_is_array(params))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "RPC params must be a JSON array");
    struct enc e;
    surpool_err rc = enc_begin(&e, headroom, err);
    if (rc != SURPOOL_OK)
        return rc;
    enc_map(&e, 3 + (session != NULL) + (txn != NULL));
    enc_text(&e, "id", 2);
    enc_int(&e, id);
    enc_text(&e, "method", 6);
    enc_text(&e, method, strlen(method));
    enc_text(&e, "params", 6);
    if (params == NULL)
        enc_array(&e, 0);
    else
        enc_value(&e, params, 1);
    if (session != NULL)
        enc_uuid_member(&e, "session", session);
    if (txn != NULL)
        enc_uuid_member(&e, "txn", txn);
    return enc_finish(&e, headroom, out, len);
}

/* ------------------------------------------------------------------------- */
/* Decoding                                                                  */
/* ------------------------------------------------------------------------- */

/* libcbor 0.8's streaming decoder refuses the one-byte tag heads 0xC6..0xD4
 * (tags 6 to 20, "unassigned" when it was written) — exactly where SurrealDB's
 * NONE, table, record id, UUID, decimal, datetime and duration tags live. We
 * read those heads ourselves: the tag number is the low five bits. */
static int short_tag(unsigned char b)
{
    return b >= 0xC6 && b <= 0xD4;
}

enum { FR_ARRAY, FR_MAP, FR_TAG };

struct dframe {
    int kind;
    json_t *c;       /* array or object being filled; NULL for a tag */
    uint64_t left;   /* items still expected (a map counts keys and values) */
    json_t *key;     /* map: the key read, waiting for its value */
    uint64_t tag;    /* tag number */
    int has_typekey; /* map: a "$surreal" key was seen */
};

struct dec {
    const unsigned char *base;
    size_t len;
    size_t pos;           /* start of the head being decoded */
    struct dframe *stack; /* inline_stack, or a heap copy once deeper */
    int cap;
    struct dframe inline_stack[32]; /* most replies nest less: no allocation */
    int depth;
    json_t *root;         /* the finished top-level item */
    json_t *pending_uuid; /* tag 37 content already turned into UUID text */
    surpool_err rc;
    surpool_error *err;
};

static void dec_fail(struct dec *d, surpool_err code, const char *msg)
{
    if (d->rc == SURPOOL_OK) {
        d->rc = code;
        surpool__seterr(d->err, code, "%s (CBOR from the server, byte %zu)", msg, d->pos);
    }
}

static void dec_nomem(struct dec *d)
{
    if (d->rc == SURPOOL_OK) {
        d->rc = SURPOOL_ERR_NOMEM;
        surpool__seterr(d->err, SURPOOL_ERR_NOMEM, "out of memory decoding a frame");
    }
}

static json_t *typed(struct dec *d, const char *type, const char *key, json_t *value)
{
    json_t *o = surpool__typed_new(type, key, value);
    if (o == NULL)
        dec_nomem(d);
    return o;
}

static json_t *typed_text(struct dec *d, const char *type, const char *text)
{
    json_t *s = json_string(text);
    if (s == NULL) {
        dec_nomem(d);
        return NULL;
    }
    return typed(d, type, "value", s);
}

static int is_generic_tag(const json_t *v, uint64_t tag)
{
    const char *t = surpool__value_type_name(v);
    json_t *n = json_object_get(v, "tag");
    return t != NULL && strcmp(t, "tag") == 0 && json_is_integer(n) &&
           (uint64_t)json_integer_value(n) == tag;
}

/* A range bound decoded so far: null, or the generic form of tag 50/51. New
 * reference to {"included"|"excluded": v}, json null, or NULL if not a bound. */
static json_t *bound_from(struct dec *d, json_t *b)
{
    if (json_is_null(b))
        return json_incref(b);
    const char *which = is_generic_tag(b, TAG_BOUND_INCLUDED)   ? "included"
                        : is_generic_tag(b, TAG_BOUND_EXCLUDED) ? "excluded"
                                                                : NULL;
    if (which == NULL)
        return NULL;
    json_t *o = json_object();
    if (o == NULL || json_object_set(o, which, json_object_get(b, "value"))) {
        json_decref(o);
        dec_nomem(d);
        return NULL;
    }
    return o;
}

/* [secs, nanos] with up to two non-negative integers (nanos < 10^9). */
static int secs_nanos(const json_t *a, int64_t *secs, uint32_t *nanos, int secs_signed)
{
    size_t n = json_array_size(a);
    if (!json_is_array(a) || n > 2)
        return -1;
    json_t *s = json_array_get(a, 0), *ns = json_array_get(a, 1);
    if ((n > 0 && !json_is_integer(s)) || (n > 1 && !json_is_integer(ns)))
        return -1;
    *secs = n > 0 ? (int64_t)json_integer_value(s) : 0;
    int64_t v = n > 1 ? (int64_t)json_integer_value(ns) : 0;
    if (v < 0 || v > 999999999 || (!secs_signed && *secs < 0))
        return -1;
    *nanos = (uint32_t)v;
    return 0;
}

/* Convert a finished tag into its typed form; steals `content`. Content that
 * does not fit the tag keeps the generic {"$surreal":"tag"} form. */
static json_t *tag_value(struct dec *d, uint64_t tag, json_t *content)
{
    const char *type = NULL;
    json_t *out = NULL;
    size_t n = json_array_size(content);
    switch (tag) {
    case TAG_DATETIME_TEXT: {
        surpool__datetime dt;
        char buf[40];
        if (json_is_string(content) &&
            surpool__datetime_parse(json_string_value(content), json_string_length(content),
                                    &dt) == 0 &&
            surpool__datetime_format(dt, buf, sizeof(buf)) == 0) {
            json_decref(content);
            return typed_text(d, "datetime", buf);
        }
        break;
    }
    case TAG_NONE:
        if (json_is_null(content)) {
            json_decref(content);
            return typed(d, "none", NULL, NULL);
        }
        break;
    case TAG_TABLE:
        /* A table name is never empty (the encoder refuses one). */
        type = json_is_string(content) && json_string_length(content) > 0 ? "table" : NULL;
        break;
    case TAG_UUID_TEXT: {
        unsigned char u[16];
        char buf[37];
        if (json_is_string(content) &&
            surpool__uuid_parse(json_string_value(content), json_string_length(content), u) ==
                0) {
            surpool__uuid_format(u, buf);
            json_decref(content);
            return typed_text(d, "uuid", buf);
        }
        break;
    }
    case TAG_DECIMAL:
        type = json_is_string(content) && surpool__decimal_valid(json_string_value(content),
                                                                 json_string_length(content))
                   ? "decimal"
                   : NULL;
        break;
    case TAG_DURATION_TEXT: {
        surpool__duration du;
        char buf[96];
        if (json_is_string(content) &&
            surpool__duration_parse(json_string_value(content), json_string_length(content),
                                    &du) == 0) {
            surpool__duration_format(du, buf, sizeof(buf));
            json_decref(content);
            return typed_text(d, "duration", buf);
        }
        break;
    }
    case TAG_DATETIME: {
        surpool__datetime dt;
        char buf[40];
        if (secs_nanos(content, &dt.secs, &dt.nanos, 1) == 0 &&
            surpool__datetime_format(dt, buf, sizeof(buf)) == 0) {
            json_decref(content);
            return typed_text(d, "datetime", buf);
        }
        break;
    }
    case TAG_DURATION: {
        int64_t secs;
        uint32_t nanos;
        char buf[96];
        if (secs_nanos(content, &secs, &nanos, 0) == 0) {
            surpool__duration du = {(uint64_t)secs, nanos};
            surpool__duration_format(du, buf, sizeof(buf));
            json_decref(content);
            return typed_text(d, "duration", buf);
        }
        break;
    }
    case TAG_FUTURE: type = "future"; break;
    case TAG_SET: type = json_is_array(content) ? "set" : NULL; break;
    case TAG_RECORD:
        if (json_is_string(content) && json_string_length(content) > 0) {
            type = "record";
        } else if (n == 2 && json_is_string(json_array_get(content, 0)) &&
                   json_string_length(json_array_get(content, 0)) > 0) {
            json_t *id = json_array_get(content, 1);
            const char *idt = surpool__value_type_name(id);
            if (json_is_string(id) || json_is_integer(id) || json_is_array(id) ||
                (json_is_object(id) && idt == NULL) ||
                (idt != NULL && (strcmp(idt, "uuid") == 0 || strcmp(idt, "range") == 0 ||
                                 strcmp(idt, "object") == 0))) {
                out = json_pack("{s:s,s:O,s:O}", SURPOOL__TYPE_KEY, "record", "tb",
                                json_array_get(content, 0), "id", id);
                if (out == NULL)
                    dec_nomem(d);
                json_decref(content);
                return out;
            }
        }
        break;
    case TAG_RANGE:
        if (n == 2) {
            json_t *b = bound_from(d, json_array_get(content, 0));
            json_t *e = b != NULL ? bound_from(d, json_array_get(content, 1)) : NULL;
            if (b != NULL && e != NULL) {
                out = json_pack("{s:s,s:o,s:o}", SURPOOL__TYPE_KEY, "range", "begin", b, "end",
                                e);
                if (out == NULL)
                    dec_nomem(d);
                json_decref(content);
                return out;
            }
            json_decref(b);
        }
        break;
    case TAG_FILE:
        if (n == 2 && json_is_string(json_array_get(content, 0)) &&
            json_is_string(json_array_get(content, 1))) {
            out = json_pack("{s:s,s:O,s:O}", SURPOOL__TYPE_KEY, "file", "bucket",
                            json_array_get(content, 0), "key", json_array_get(content, 1));
            if (out == NULL)
                dec_nomem(d);
            json_decref(content);
            return out;
        }
        break;
    default: {
        const struct geo *g = geo_by_tag(tag);
        if (g == NULL)
            break;
        int ok = json_is_array(content);
        if (ok && g->elem == NULL) {
            ok = n == 2 && json_is_number(json_array_get(content, 0)) &&
                 json_is_number(json_array_get(content, 1));
        } else {
            for (size_t i = 0; ok && i < n; i++) {
                const char *t = surpool__value_type_name(json_array_get(content, i));
                ok = t != NULL && (strcmp(g->elem, "*") == 0 ? geo_by_name(t) != NULL
                                                             : strcmp(t, g->elem) == 0);
            }
        }
        type = ok ? g->name : NULL;
        break;
    }
    }
    if (type != NULL)
        return typed(d, type, "value", content);
    /* Unknown tag, or content that does not fit: keep tag and value. */
    out = json_pack("{s:s,s:I,s:o}", SURPOOL__TYPE_KEY, "tag", "tag", (json_int_t)tag, "value",
                    content);
    if (out == NULL)
        dec_nomem(d);
    return out;
}

static void dec_push(struct dec *d, int kind, json_t *c, uint64_t left, uint64_t tag);

/* A complete item: hand it to the enclosing frame, closing frames that fill. */
static void dec_emit(struct dec *d, json_t *v)
{
    while (d->rc == SURPOOL_OK) {
        if (v == NULL) {
            dec_nomem(d);
            return;
        }
        /* Every object or array is a level, as the encoder counts them: an
         * empty container, or a scalar item that decodes to a typed object (a
         * bigint, bytes), below 256 frames would make a value the library
         * cannot send back (surpool_value_check refuses it). */
        if (d->depth >= SURPOOL__CBOR_MAX_DEPTH && (json_is_object(v) || json_is_array(v))) {
            json_decref(v);
            dec_fail(d, SURPOOL_ERR_PROTOCOL, "nested deeper than 256 levels");
            return;
        }
        if (d->depth == 0) {
            if (d->root != NULL) {
                json_decref(v);
                dec_fail(d, SURPOOL_ERR_PROTOCOL, "more than one item");
                return;
            }
            d->root = v;
            return;
        }
        struct dframe *f = &d->stack[d->depth - 1];
        if (f->kind == FR_TAG) {
            d->depth--;
            v = tag_value(d, f->tag, v);
            continue;
        }
        if (f->kind == FR_ARRAY) {
            if (json_array_append_new(f->c, v)) {
                dec_nomem(d);
                return;
            }
        } else if (f->key == NULL) {
            if (!json_is_string(v)) {
                json_decref(v);
                dec_fail(d, SURPOOL_ERR_PROTOCOL, "a map key is not a text string");
                return;
            }
            if (memchr(json_string_value(v), '\0', json_string_length(v)) != NULL) {
                json_decref(v);
                dec_fail(d, SURPOOL_ERR_PROTOCOL, "a map key holds a NUL byte");
                return;
            }
            if (json_object_get(f->c, json_string_value(v)) != NULL) {
                json_decref(v);
                dec_fail(d, SURPOOL_ERR_PROTOCOL, "a map has a duplicate key");
                return;
            }
            if (strcmp(json_string_value(v), SURPOOL__TYPE_KEY) == 0)
                f->has_typekey = 1;
            f->key = v;
        } else {
            int rc = json_object_set_new_nocheck(f->c, json_string_value(f->key), v);
            json_decref(f->key);
            f->key = NULL;
            if (rc) {
                dec_nomem(d);
                return;
            }
        }
        if (--f->left > 0)
            return;
        /* The frame is full: it becomes an item of its own. */
        d->depth--;
        v = f->c;
        f->c = NULL;
        if (f->kind == FR_MAP && f->has_typekey)
            v = typed(d, "object", "value", v); /* data that looks typed stays data */
    }
    json_decref(v);
}

static void dec_push(struct dec *d, int kind, json_t *c, uint64_t left, uint64_t tag)
{
    if (d->rc != SURPOOL_OK) {
        json_decref(c);
        return;
    }
    if (d->depth >= SURPOOL__CBOR_MAX_DEPTH) {
        json_decref(c);
        dec_fail(d, SURPOOL_ERR_PROTOCOL, "nested deeper than 256 levels");
        return;
    }
    if (d->depth == d->cap) {
        int cap = d->cap * 2 < SURPOOL__CBOR_MAX_DEPTH ? d->cap * 2 : SURPOOL__CBOR_MAX_DEPTH;
        struct dframe *s = d->stack == d->inline_stack
                               ? surpool__malloc((size_t)cap * sizeof(*s))
                               : surpool__realloc(d->stack, (size_t)cap * sizeof(*s));
        if (s == NULL) {
            json_decref(c);
            dec_nomem(d);
            return;
        }
        if (d->stack == d->inline_stack)
            memcpy(s, d->inline_stack, sizeof(d->inline_stack));
        d->stack = s;
        d->cap = cap;
    }
    struct dframe *f = &d->stack[d->depth++];
    memset(f, 0, sizeof(*f));
    f->kind = kind;
    f->c = c;
    f->left = left;
    f->tag = tag;
}

static void on_uint(void *ctx, uint64_t v)
{
    struct dec *d = ctx;
    if (v <= INT64_MAX) {
        dec_emit(d, json_integer((json_int_t)v));
        return;
    }
    char buf[24];
    snprintf(buf, sizeof(buf), "%llu", (unsigned long long)v);
    dec_emit(d, typed_text(d, "bigint", buf));
}
static void on_uint8(void *ctx, uint8_t v)
{
    on_uint(ctx, v);
}
static void on_uint16(void *ctx, uint16_t v)
{
    on_uint(ctx, v);
}
static void on_uint32(void *ctx, uint32_t v)
{
    on_uint(ctx, v);
}

/* CBOR negative integer: the value is -1 - n. */
static void on_negint(void *ctx, uint64_t n)
{
    struct dec *d = ctx;
    if (n <= INT64_MAX) {
        dec_emit(d, json_integer(-1 - (json_int_t)n));
        return;
    }
    char buf[32];
    if (n == UINT64_MAX)
        snprintf(buf, sizeof(buf), "-18446744073709551616"); /* -2^64 */
    else
        snprintf(buf, sizeof(buf), "-%llu", (unsigned long long)n + 1);
    dec_emit(d, typed_text(d, "bigint", buf));
}
static void on_negint8(void *ctx, uint8_t v)
{
    on_negint(ctx, v);
}
static void on_negint16(void *ctx, uint16_t v)
{
    on_negint(ctx, v);
}
static void on_negint32(void *ctx, uint32_t v)
{
    on_negint(ctx, v);
}

/* libcbor hands over a pointer into our buffer: check it really is inside. */
static int in_buffer(struct dec *d, const unsigned char *p, size_t n)
{
    if (p < d->base || p > d->base + d->len || n > (size_t)(d->base + d->len - p)) {
        dec_fail(d, SURPOOL_ERR_PROTOCOL, "a string runs past the end of the frame");
        return 0;
    }
    return 1;
}

static void on_string(void *ctx, cbor_data p, size_t n)
{
    struct dec *d = ctx;
    if (d->rc != SURPOOL_OK || !in_buffer(d, p, n))
        return;
    if (!utf8_valid(p, n)) {
        dec_fail(d, SURPOOL_ERR_PROTOCOL, "a text string is not valid UTF-8");
        return;
    }
    dec_emit(d, json_stringn_nocheck((const char *)p, n));
}

static void on_bytes(void *ctx, cbor_data p, size_t n)
{
    struct dec *d = ctx;
    if (d->rc != SURPOOL_OK || !in_buffer(d, p, n))
        return;
    if (d->depth > 0 && d->stack[d->depth - 1].kind == FR_TAG &&
        d->stack[d->depth - 1].tag == TAG_UUID && n == 16) {
        /* Tag 37 around 16 bytes: a UUID. */
        char buf[37];
        surpool__uuid_format(p, buf);
        d->depth--;
        dec_emit(d, typed_text(d, "uuid", buf));
        return;
    }
    if (n > (SIZE_MAX - 1) / 4 * 3) {
        dec_fail(d, SURPOOL_ERR_PROTOCOL, "a byte string is too long");
        return;
    }
    char *b64 = surpool__malloc(surpool__base64_encoded_len(n) + 1);
    if (b64 == NULL) {
        dec_nomem(d);
        return;
    }
    surpool__base64_encode(p, n, b64);
    json_t *s = json_stringn_nocheck(b64, surpool__base64_encoded_len(n));
    surpool__free(b64);
    if (s == NULL) {
        dec_nomem(d);
        return;
    }
    dec_emit(d, typed(d, "bytes", "value", s));
}

static void on_indef(void *ctx)
{
    dec_fail(ctx, SURPOOL_ERR_PROTOCOL, "indefinite-length items are not accepted");
}

static void on_array(void *ctx, size_t n)
{
    struct dec *d = ctx;
    if (d->rc != SURPOOL_OK)
        return;
    /* Every item takes at least one byte: a longer count is a lie. */
    if (n > d->len - d->pos) {
        dec_fail(d, SURPOOL_ERR_PROTOCOL, "an array is longer than the frame");
        return;
    }
    json_t *a = json_array();
    if (a == NULL) {
        dec_nomem(d);
        return;
    }
    if (n == 0) {
        dec_emit(d, a);
        return;
    }
    dec_push(d, FR_ARRAY, a, n, 0);
}

static void on_map(void *ctx, size_t n)
{
    struct dec *d = ctx;
    if (d->rc != SURPOOL_OK)
        return;
    if (n > (d->len - d->pos) / 2) {
        dec_fail(d, SURPOOL_ERR_PROTOCOL, "a map is longer than the frame");
        return;
    }
    json_t *o = json_object();
    if (o == NULL) {
        dec_nomem(d);
        return;
    }
    if (n == 0) {
        dec_emit(d, o);
        return;
    }
    dec_push(d, FR_MAP, o, (uint64_t)n * 2, 0);
}

static void on_tag(void *ctx, uint64_t tag)
{
    struct dec *d = ctx;
    if (tag > INT64_MAX) {
        dec_fail(d, SURPOOL_ERR_PROTOCOL, "a tag number is above 2^63-1");
        return;
    }
    dec_push(d, FR_TAG, NULL, 1, tag);
}

static void on_double(void *ctx, double v)
{
    struct dec *d = ctx;
    if (isnan(v))
        dec_emit(d, typed_text(d, "float", "NaN"));
    else if (isinf(v))
        dec_emit(d, typed_text(d, "float", v > 0 ? "Infinity" : "-Infinity"));
    else
        dec_emit(d, json_real(v));
}
static void on_float(void *ctx, float v)
{
    on_double(ctx, (double)v);
}

static void on_undefined(void *ctx)
{
    struct dec *d = ctx;
    dec_emit(d, typed(d, "none", NULL, NULL));
}

static void on_null(void *ctx)
{
    dec_emit(ctx, json_null());
}

static void on_bool(void *ctx, bool v)
{
    dec_emit(ctx, json_boolean(v));
}

static void on_break(void *ctx)
{
    dec_fail(ctx, SURPOOL_ERR_PROTOCOL, "unexpected break");
}

static const struct cbor_callbacks dec_callbacks = {
    .uint8 = on_uint8,
    .uint16 = on_uint16,
    .uint32 = on_uint32,
    .uint64 = on_uint,
    .negint8 = on_negint8,
    .negint16 = on_negint16,
    .negint32 = on_negint32,
    .negint64 = on_negint,
    .byte_string = on_bytes,
    .byte_string_start = on_indef,
    .string = on_string,
    .string_start = on_indef,
    .array_start = on_array,
    .indef_array_start = on_indef,
    .map_start = on_map,
    .indef_map_start = on_indef,
    .tag = on_tag,
    .float2 = on_float,
    .float4 = on_float,
    .float8 = on_double,
    .undefined = on_undefined,
    .null = on_null,
    .boolean = on_bool,
    .indef_break = on_break,
};

surpool_err surpool__cbor_decode_value(const unsigned char *buf, size_t len, json_t **out,
                                       surpool_error *err)
{
    if (out == NULL || (buf == NULL && len > 0))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "decode_value: out is required and buf may only be NULL "
                               "when len is 0");
    *out = NULL;
    if (len == 0)
        return surpool__seterr(err, SURPOOL_ERR_PROTOCOL, "empty frame from the server");
    struct dec dstate;
    struct dec *d = &dstate;
    memset(d, 0, sizeof(*d));
    d->stack = d->inline_stack;
    d->cap = (int)(sizeof(d->inline_stack) / sizeof(d->inline_stack[0]));
    d->base = buf;
    d->len = len;
    d->err = err;
    while (d->rc == SURPOOL_OK && d->pos < len) {
        if (d->root != NULL) {
            dec_fail(d, SURPOOL_ERR_PROTOCOL, "trailing bytes after the item");
            break;
        }
        struct cbor_decoder_result r;
        if (short_tag(buf[d->pos])) {
            on_tag(d, (uint64_t)(buf[d->pos] - 0xC0));
            r.status = CBOR_DECODER_FINISHED;
            r.read = 1;
        } else {
            r = cbor_stream_decode(buf + d->pos, len - d->pos, &dec_callbacks, d);
        }
        if (r.status == CBOR_DECODER_NEDATA) {
            dec_fail(d, SURPOOL_ERR_PROTOCOL, "truncated CBOR");
        } else if (r.status != CBOR_DECODER_FINISHED || r.read == 0 || r.read > len - d->pos) {
            dec_fail(d, SURPOOL_ERR_PROTOCOL, "malformed CBOR");
        } else {
            d->pos += r.read;
        }
    }
    if (d->rc == SURPOOL_OK && d->root == NULL)
        dec_fail(d, SURPOOL_ERR_PROTOCOL, "truncated CBOR");
    surpool_err rc = d->rc;
    /* Unwind whatever was half built. */
    for (int i = 0; i < d->depth; i++) {
        json_decref(d->stack[i].c);
        json_decref(d->stack[i].key);
    }
    if (rc == SURPOOL_OK)
        *out = d->root;
    else
        json_decref(d->root);
    if (d->stack != d->inline_stack)
        surpool__free(d->stack);
    return rc;
}

surpool_err surpool__cbor_decode_frame(const unsigned char *buf, size_t len,
                                       surpool__frame *out, surpool_error *err)
{
    if (out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "decode_frame: out is required");
    memset(out, 0, sizeof(*out));
    json_t *root;
    surpool_err rc = surpool__cbor_decode_value(buf, len, &root, err);
    if (rc != SURPOOL_OK)
        return rc;
    if (!json_is_object(root) || surpool__value_type_name(root) != NULL) {
        json_decref(root);
        return surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                               "frame from the server is not a plain map");
    }
    return surpool__codec_classify_frame(root, out, err);
}

/* ------------------------------------------------------------------------- */
/* Peek                                                                      */
/* ------------------------------------------------------------------------- */

/* The peek walker: counts items still to skip instead of building them. */
struct peek {
    const unsigned char *base;
    size_t len, pos;
    uint64_t pending; /* items still to read at the current level walk */
    int bad;          /* malformed or indefinite */
    /* What the last head was, for the top-level walk. */
    int is_text;
    const unsigned char *text;
    size_t text_len;
    int is_int, is_null;
    int64_t ival;
    int int_ok;
};

static void pk_reset(struct peek *k)
{
    k->is_text = k->is_int = k->is_null = k->int_ok = 0;
}
static void pk_uint(void *ctx, uint64_t v)
{
    struct peek *k = ctx;
    k->is_int = 1;
    k->int_ok = v <= INT64_MAX;
    k->ival = (int64_t)v;
}
static void pk_uint8(void *ctx, uint8_t v)
{
    pk_uint(ctx, v);
}
static void pk_uint16(void *ctx, uint16_t v)
{
    pk_uint(ctx, v);
}
static void pk_uint32(void *ctx, uint32_t v)
{
    pk_uint(ctx, v);
}
static void pk_negint(void *ctx, uint64_t n)
{
    struct peek *k = ctx;
    k->is_int = 1;
    k->int_ok = n <= INT64_MAX;
    k->ival = -1 - (int64_t)(n & INT64_MAX);
}
static void pk_negint8(void *ctx, uint8_t v)
{
    pk_negint(ctx, v);
}
static void pk_negint16(void *ctx, uint16_t v)
{
    pk_negint(ctx, v);
}
static void pk_negint32(void *ctx, uint32_t v)
{
    pk_negint(ctx, v);
}
static void pk_string(void *ctx, cbor_data p, size_t n)
{
    struct peek *k = ctx;
    if (p < k->base || p > k->base + k->len || n > (size_t)(k->base + k->len - p)) {
        k->bad = 1;
        return;
    }
    k->is_text = 1;
    k->text = p;
    k->text_len = n;
}
static void pk_bytes(void *ctx, cbor_data p, size_t n)
{
    struct peek *k = ctx;
    if (p < k->base || p > k->base + k->len || n > (size_t)(k->base + k->len - p))
        k->bad = 1;
}
static void pk_indef(void *ctx)
{
    ((struct peek *)ctx)->bad = 1;
}
static void pk_array(void *ctx, size_t n)
{
    struct peek *k = ctx;
    if (n > k->len - k->pos)
        k->bad = 1;
    else
        k->pending += n;
}
static void pk_map(void *ctx, size_t n)
{
    struct peek *k = ctx;
    if (n > (k->len - k->pos) / 2)
        k->bad = 1;
    else
        k->pending += (uint64_t)n * 2;
}
static void pk_tag(void *ctx, uint64_t t)
{
    SURPOOL__UNUSED(t);
    ((struct peek *)ctx)->pending += 1;
}
static void pk_float(void *ctx, float v)
{
    SURPOOL__UNUSED(ctx);
    SURPOOL__UNUSED(v);
}
static void pk_double(void *ctx, double v)
{
    SURPOOL__UNUSED(ctx);
    SURPOOL__UNUSED(v);
}
static void pk_null(void *ctx)
{
    ((struct peek *)ctx)->is_null = 1;
}
static void pk_simple(void *ctx)
{
    SURPOOL__UNUSED(ctx);
}
static void pk_bool(void *ctx, bool v)
{
    SURPOOL__UNUSED(ctx);
    SURPOOL__UNUSED(v);
}

static const struct cbor_callbacks peek_callbacks = {
    .uint8 = pk_uint8,
    .uint16 = pk_uint16,
    .uint32 = pk_uint32,
    .uint64 = pk_uint,
    .negint8 = pk_negint8,
    .negint16 = pk_negint16,
    .negint32 = pk_negint32,
    .negint64 = pk_negint,
    .byte_string = pk_bytes,
    .byte_string_start = pk_indef,
    .string = pk_string,
    .string_start = pk_indef,
    .array_start = pk_array,
    .indef_array_start = pk_indef,
    .map_start = pk_map,
    .indef_map_start = pk_indef,
    .tag = pk_tag,
    .float2 = pk_float,
    .float4 = pk_float,
    .float8 = pk_double,
    .undefined = pk_simple,
    .null = pk_null,
    .boolean = pk_bool,
    .indef_break = pk_indef,
};

/* Decode one head at k->pos. Returns 0 or -1 (malformed, truncated). */
static int pk_head(struct peek *k)
{
    pk_reset(k);
    if (k->pos >= k->len)
        return -1;
    struct cbor_decoder_result r;
    if (short_tag(k->base[k->pos])) {
        pk_tag(k, (uint64_t)(k->base[k->pos] - 0xC0));
        r.status = CBOR_DECODER_FINISHED;
        r.read = 1;
    } else {
        r = cbor_stream_decode(k->base + k->pos, k->len - k->pos, &peek_callbacks, k);
    }
    if (r.status != CBOR_DECODER_FINISHED || r.read == 0 || r.read > k->len - k->pos || k->bad)
        return -1;
    k->pos += r.read;
    return 0;
}

/* Skip one complete item (its head and everything nested in it). */
static int pk_skip(struct peek *k)
{
    uint64_t saved = k->pending;
    k->pending = 1;
    while (k->pending > 0) {
        k->pending--;
        if (pk_head(k))
            return -1;
    }
    k->pending = saved;
    return 0;
}

/* The top-level walk of surpool__cbor_peek_info(); with `route`, it returns
 * as soon as it has read an integer "id" (surpool__cbor_route()). */
static surpool_err peek_walk(const unsigned char *buf, size_t len, surpool__peek_info *info,
                             int route, surpool_error *err)
{
    struct peek k;
    memset(&k, 0, sizeof(k));
    k.base = buf;
    k.len = len;
    surpool__peek_info in;
    memset(&in, 0, sizeof(in));
    /* Major type 5 is a map (pk_head rejects the indefinite form). */
    if (len == 0 || (buf[0] >> 5) != 5 || pk_head(&k))
        goto not_map;
    uint64_t pairs = k.pending / 2;
    k.pending = 0;
    int have_id = 0;
    int64_t found = 0;
    for (uint64_t i = 0; i < pairs; i++) {
        if (pk_head(&k) || !k.is_text)
            return surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                                   "CBOR frame: a top-level key is not a text string");
        int is_id = k.text_len == 2 && memcmp(k.text, "id", 2) == 0;
        int is_error = k.text_len == 5 && memcmp(k.text, "error", 5) == 0;
        int is_result = k.text_len == 6 && memcmp(k.text, "result", 6) == 0;
        if (is_id) {
            if (have_id)
                return surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                                       "CBOR frame: duplicate \"id\" key");
            have_id = 1;
            if (pk_head(&k))
                goto malformed;
            if (k.is_null) {
                have_id = 2; /* present but null: no id */
                continue;
            }
            if (!k.is_int || !k.int_ok || k.pending != 0) {
                return surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                                       "CBOR frame: the id is not an integer in int64");
            }
            found = k.ival;
            if (route) {
                memset(info, 0, sizeof(*info));
                info->kind = SURPOOL__FRAME_REPLY;
                info->id = found;
                return SURPOOL_OK;
            }
            continue;
        }
        size_t at = k.pos;
        if (pk_skip(&k))
            goto malformed;
        if (is_error) {
            in.dup_key |= in.error_len != 0;
            /* null is a single byte 0xf6 */
            in.has_error = !(k.pos - at == 1 && buf[at] == 0xf6);
            in.error_off = at;
            in.error_len = k.pos - at;
        } else if (is_result) {
            in.dup_key |= in.has_result;
            in.has_result = 1;
            in.result_off = at;
            in.result_len = k.pos - at;
        }
    }
    if (k.pos != len)
        goto malformed;
    if (have_id == 1) {
        in.kind = SURPOOL__FRAME_REPLY;
        in.id = found;
    } else {
        in.kind = in.has_error ? SURPOOL__FRAME_ORPHAN_ERROR : SURPOOL__FRAME_NOTIFICATION;
        in.id = 0;
    }
    *info = in;
    return SURPOOL_OK;
not_map:
    return surpool__seterr(err, SURPOOL_ERR_PROTOCOL, "CBOR frame: the root is not a map");
malformed:
    return surpool__seterr(err, SURPOOL_ERR_PROTOCOL, "CBOR frame: malformed or truncated");
}

surpool_err surpool__cbor_peek_info(const unsigned char *buf, size_t len,
                                    surpool__peek_info *info, surpool_error *err)
{
    if (buf == NULL || info == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "peek: buf and info are required");
    return peek_walk(buf, len, info, 0, err);
}

surpool_err surpool__cbor_route(const unsigned char *buf, size_t len, surpool__frame_kind *kind,
                                int64_t *id, surpool_error *err)
{
    if (buf == NULL || kind == NULL || id == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "route: buf, kind and id are required");
    surpool__peek_info in;
    surpool_err rc = peek_walk(buf, len, &in, 1, err);
    if (rc != SURPOOL_OK)
        return rc;
    *kind = in.kind;
    *id = in.id;
    return SURPOOL_OK;
}
