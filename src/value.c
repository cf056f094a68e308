/*
 * Typed values: the public constructors, accessors, text forms and the plain
 * JSON rendering (surpool.h, "Typed values"; docs/values.md). Pure: no I/O.
 */
#include <stdio.h>
#include <string.h>

#include "cbor_codec.h"
#include "value.h"

static const char *const type_names[] = {
    [SURPOOL_VALUE_PLAIN] = "plain",
    [SURPOOL_VALUE_NONE] = "none",
    [SURPOOL_VALUE_TABLE] = "table",
    [SURPOOL_VALUE_RECORD] = "record",
    [SURPOOL_VALUE_UUID] = "uuid",
    [SURPOOL_VALUE_DECIMAL] = "decimal",
    [SURPOOL_VALUE_DATETIME] = "datetime",
    [SURPOOL_VALUE_DURATION] = "duration",
    [SURPOOL_VALUE_BYTES] = "bytes",
    [SURPOOL_VALUE_SET] = "set",
    [SURPOOL_VALUE_FUTURE] = "future",
    [SURPOOL_VALUE_RANGE] = "range",
    [SURPOOL_VALUE_FILE] = "file",
    [SURPOOL_VALUE_POINT] = "point",
    [SURPOOL_VALUE_LINE] = "line",
    [SURPOOL_VALUE_POLYGON] = "polygon",
    [SURPOOL_VALUE_MULTIPOINT] = "multipoint",
    [SURPOOL_VALUE_MULTILINE] = "multiline",
    [SURPOOL_VALUE_MULTIPOLYGON] = "multipolygon",
    [SURPOOL_VALUE_COLLECTION] = "collection",
    [SURPOOL_VALUE_BIGINT] = "bigint",
    [SURPOOL_VALUE_FLOAT] = "float",
    [SURPOOL_VALUE_OBJECT] = "object",
    [SURPOOL_VALUE_TAG] = "tag",
};
#define TYPE_COUNT ((int)(sizeof(type_names) / sizeof(type_names[0])))

const char *surpool__value_type_name(const json_t *v)
{
    if (!json_is_object(v))
        return NULL;
    const json_t *t = json_object_get(v, SURPOOL__TYPE_KEY);
    return json_is_string(t) ? json_string_value(t) : NULL;
}

json_t *surpool__typed_new(const char *type, const char *key, json_t *value)
{
    json_t *o = json_object();
    if (o == NULL || json_object_set_new_nocheck(o, SURPOOL__TYPE_KEY, json_string(type))) {
        json_decref(value);
        json_decref(o);
        return NULL;
    }
    /* json_object_set_new_nocheck() releases value even when it fails. */
    if (key != NULL && (value == NULL || json_object_set_new_nocheck(o, key, value))) {
        json_decref(o);
        return NULL;
    }
    json_decref(key == NULL ? value : NULL);
    return o;
}

surpool_value_type surpool_value_type_of(const json_t *v)
{
    if (!json_is_object(v) || json_object_get(v, SURPOOL__TYPE_KEY) == NULL)
        return SURPOOL_VALUE_PLAIN;
    const char *name = surpool__value_type_name(v);
    if (name == NULL)
        return SURPOOL_VALUE_INVALID;
    for (int i = 1; i < TYPE_COUNT; i++) {
        if (strcmp(type_names[i], name) == 0)
            return (surpool_value_type)i;
    }
    return SURPOOL_VALUE_INVALID;
}

const char *surpool_value_type_name(surpool_value_type type)
{
    if ((int)type >= 0 && (int)type < TYPE_COUNT)
        return type_names[type];
    return "invalid";
}

surpool_err surpool_value_check(const json_t *v, surpool_error *err)
{
    char *buf;
    size_t len;
    if (v == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "value is NULL");
    surpool_err rc = surpool__cbor_encode_value(v, 0, &buf, &len, err);
    if (rc == SURPOOL_OK)
        surpool__free(buf);
    return rc;
}

/* Finish a constructor: *out = o, or NOMEM. */
static surpool_err give(json_t *o, json_t **out, surpool_error *err)
{
    if (o == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory building a value");
    *out = o;
    return SURPOOL_OK;
}

static surpool_err typed_text_out(const char *type, const char *text, json_t **out,
                                  surpool_error *err)
{
    json_t *s = json_string(text);
    if (s == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory building a value");
    return give(surpool__typed_new(type, "value", s), out, err);
}

surpool_err surpool_value_none(json_t **out, surpool_error *err)
{
    if (out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "out is required");
    return give(surpool__typed_new("none", NULL, NULL), out, err);
}

surpool_err surpool_value_table(const char *name, json_t **out, surpool_error *err)
{
    if (name == NULL || *name == '\0' || out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "a table needs a non-empty name and out");
    json_t *s = json_string(name);
    if (s == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "table name is not valid UTF-8");
    return give(surpool__typed_new("table", "value", s), out, err);
}

surpool_err surpool_value_record(const char *table, const json_t *id, json_t **out,
                                 surpool_error *err)
{
    if (table == NULL || *table == '\0' || id == NULL || out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "a record id needs a non-empty table, an id and out");
    json_t *tb = json_string(table);
    if (tb == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "table name is not valid UTF-8");
    json_t *o = surpool__typed_new("record", "tb", tb);
    if (o == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory building a value");
    json_t *copy = json_deep_copy(id);
    if (copy == NULL || json_object_set_new_nocheck(o, "id", copy)) {
        json_decref(o);
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory building a value");
    }
    surpool_err rc = surpool_value_check(o, err);
    if (rc != SURPOOL_OK) {
        json_decref(o);
        return rc;
    }
    *out = o;
    return SURPOOL_OK;
}

surpool_err surpool_value_uuid(const char *text, json_t **out, surpool_error *err)
{
    unsigned char u[16];
    char buf[37];
    if (out == NULL || text == NULL || surpool__uuid_parse(text, strlen(text), u))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "a UUID needs 36-character text (8-4-4-4-12 hex digits)");
    surpool__uuid_format(u, buf);
    return typed_text_out("uuid", buf, out, err);
}

surpool_err surpool_value_decimal(const char *text, json_t **out, surpool_error *err)
{
    if (out == NULL || text == NULL || !surpool__decimal_valid(text, strlen(text)))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "a decimal needs text such as \"1.50\" or \"-2e10\"");
    return typed_text_out("decimal", text, out, err);
}

surpool_err surpool_value_datetime(const char *text, json_t **out, surpool_error *err)
{
    surpool__datetime dt;
    char buf[40];
    if (out == NULL || text == NULL || surpool__datetime_parse(text, strlen(text), &dt) ||
        surpool__datetime_format(dt, buf, sizeof(buf)))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "a datetime needs RFC 3339 text such as "
                               "\"2024-01-01T00:00:00Z\" (years 0000-9999)");
    return typed_text_out("datetime", buf, out, err);
}

surpool_err surpool_value_datetime_unix(int64_t secs, uint32_t nanos, json_t **out,
                                        surpool_error *err)
{
    surpool__datetime dt = {secs, nanos};
    char buf[40];
    if (out == NULL || surpool__datetime_format(dt, buf, sizeof(buf)))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "a datetime needs nanos below 10^9 and a year in 0000-9999");
    return typed_text_out("datetime", buf, out, err);
}

surpool_err surpool_value_datetime_get(const json_t *v, int64_t *secs, uint32_t *nanos,
                                       surpool_error *err)
{
    const char *t = surpool__value_type_name(v);
    const json_t *s = json_object_get(v, "value");
    surpool__datetime dt;
    if (t == NULL || strcmp(t, "datetime") != 0 || !json_is_string(s) ||
        surpool__datetime_parse(json_string_value(s), json_string_length(s), &dt))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "not a valid typed datetime");
    if (secs != NULL)
        *secs = dt.secs;
    if (nanos != NULL)
        *nanos = dt.nanos;
    return SURPOOL_OK;
}

surpool_err surpool_value_duration(const char *text, json_t **out, surpool_error *err)
{
    surpool__duration d;
    char buf[96];
    if (out == NULL || text == NULL || surpool__duration_parse(text, strlen(text), &d))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "a duration needs text such as \"1h30m\" (units y w d h m s "
                               "ms us ns)");
    surpool__duration_format(d, buf, sizeof(buf));
    return typed_text_out("duration", buf, out, err);
}

surpool_err surpool_value_bytes(const void *data, size_t len, json_t **out, surpool_error *err)
{
    if (out == NULL || (data == NULL && len > 0) || len > (SIZE_MAX - 1) / 4 * 3 - 3)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "bytes need data (NULL only when len is 0) and out");
    size_t n = surpool__base64_encoded_len(len);
    char *b = surpool__malloc(n + 1);
    if (b == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory building a value");
    surpool__base64_encode(data, len, b);
    json_t *s = json_stringn_nocheck(b, n);
    surpool__free(b);
    if (s == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory building a value");
    return give(surpool__typed_new("bytes", "value", s), out, err);
}

const char *surpool_value_record_table(const json_t *v)
{
    if (surpool_value_type_of(v) != SURPOOL_VALUE_RECORD)
        return NULL;
    return json_string_value(json_object_get(v, "tb"));
}

json_t *surpool_value_record_id(const json_t *v)
{
    if (surpool_value_type_of(v) != SURPOOL_VALUE_RECORD || json_object_get(v, "tb") == NULL)
        return NULL;
    return json_object_get(v, "id");
}

/* ------------------------------------------------------------------------- */
/* Text forms and plain rendering                                            */
/* ------------------------------------------------------------------------- */

/* A growable text buffer. */
struct tbuf {
    char *s;
    size_t len, cap;
    int failed;
};

static void tput(struct tbuf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (n > SIZE_MAX - 1 - b->len) {
        b->failed = 1;
        return;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap = cap > SIZE_MAX / 2 ? b->len + n + 1 : cap * 2;
        char *p = surpool__realloc(b->s, cap);
        if (p == NULL) {
            b->failed = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void tputs(struct tbuf *b, const char *s)
{
    tput(b, s, strlen(s));
}

static int tbuf_dump_cb(const char *buffer, size_t size, void *data)
{
    struct tbuf *b = data;
    tput(b, buffer, size);
    return b->failed ? -1 : 0;
}

/* An identifier SurrealQL prints bare: [A-Za-z0-9_]+, not all digits. */
static int bare_ident(const char *s, size_t n)
{
    int alpha = 0;
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return 0;
        if (!(c >= '0' && c <= '9'))
            alpha = 1;
    }
    return alpha;
}

/* Print a table or id text, escaped with backticks when not bare (SurrealDB 3
 * prints `a b`; a backtick or backslash inside is escaped with a backslash). */
static void tput_ident(struct tbuf *b, const char *s, size_t n)
{
    if (bare_ident(s, n)) {
        tput(b, s, n);
        return;
    }
    tput(b, "`", 1);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '`' || s[i] == '\\')
            tput(b, "\\", 1);
        tput(b, s + i, 1);
    }
    tput(b, "`", 1);
}

static json_t *plain(const json_t *v, surpool_err *rc);
static void text_of(struct tbuf *b, const json_t *v, surpool_err *rc);

/* Compact JSON of v's plain form. */
static void tput_json(struct tbuf *b, const json_t *v, surpool_err *rc)
{
    json_t *p = plain(v, rc);
    if (p == NULL)
        return;
    if (json_dump_callback(p, tbuf_dump_cb, b, JSON_COMPACT | JSON_ENCODE_ANY) != 0)
        b->failed = 1;
    json_decref(p);
}

static void text_bound(struct tbuf *b, const json_t *bound, int end, surpool_err *rc)
{
    if (json_is_null(bound))
        return;
    const json_t *inc = json_object_get(bound, "included");
    const json_t *v = inc != NULL ? inc : json_object_get(bound, "excluded");
    if (!end && inc == NULL) {
        text_of(b, v, rc);
        tput(b, ">", 1);
        return;
    }
    if (end && inc != NULL)
        tput(b, "=", 1);
    text_of(b, v, rc);
}

static void text_of(struct tbuf *b, const json_t *v, surpool_err *rc)
{
    if (*rc != SURPOOL_OK || b->failed)
        return;
    surpool_value_type t = surpool_value_type_of(v);
    const json_t *val = json_object_get(v, "value");
    switch (t) {
    case SURPOOL_VALUE_INVALID: *rc = SURPOOL_ERR_INVALID_ARG; return;
    case SURPOOL_VALUE_PLAIN:
        if (json_is_string(v))
            tput(b, json_string_value(v), json_string_length(v));
        else
            tput_json(b, v, rc);
        return;
    case SURPOOL_VALUE_NONE: tputs(b, "NONE"); return;
    case SURPOOL_VALUE_RECORD: {
        const json_t *tb = json_object_get(v, "tb"), *id = json_object_get(v, "id");
        if (json_is_string(val)) {
            tput(b, json_string_value(val), json_string_length(val));
            return;
        }
        tput_ident(b, json_string_value(tb), json_string_length(tb));
        tput(b, ":", 1);
        if (json_is_string(id)) {
            tput_ident(b, json_string_value(id), json_string_length(id));
        } else if (surpool_value_type_of(id) == SURPOOL_VALUE_UUID) {
            tputs(b, "u'");
            text_of(b, id, rc);
            tputs(b, "'");
        } else {
            text_of(b, id, rc);
        }
        return;
    }
    case SURPOOL_VALUE_RANGE:
        text_bound(b, json_object_get(v, "begin"), 0, rc);
        tputs(b, "..");
        text_bound(b, json_object_get(v, "end"), 1, rc);
        return;
    case SURPOOL_VALUE_FILE: {
        const json_t *bk = json_object_get(v, "bucket"), *k = json_object_get(v, "key");
        tputs(b, "f\"");
        tput(b, json_string_value(bk), json_string_length(bk));
        tput(b, ":", 1);
        tput(b, json_string_value(k), json_string_length(k));
        tputs(b, "\"");
        return;
    }
    case SURPOOL_VALUE_TABLE:
    case SURPOOL_VALUE_UUID:
    case SURPOOL_VALUE_DECIMAL:
    case SURPOOL_VALUE_DATETIME:
    case SURPOOL_VALUE_DURATION:
    case SURPOOL_VALUE_BYTES:
    case SURPOOL_VALUE_BIGINT:
    case SURPOOL_VALUE_FLOAT: tput(b, json_string_value(val), json_string_length(val)); return;
    case SURPOOL_VALUE_SET:
    case SURPOOL_VALUE_FUTURE:
    case SURPOOL_VALUE_POINT:
    case SURPOOL_VALUE_LINE:
    case SURPOOL_VALUE_POLYGON:
    case SURPOOL_VALUE_MULTIPOINT:
    case SURPOOL_VALUE_MULTILINE:
    case SURPOOL_VALUE_MULTIPOLYGON:
    case SURPOOL_VALUE_COLLECTION:
    case SURPOOL_VALUE_OBJECT:
    case SURPOOL_VALUE_TAG: tput_json(b, v, rc); return;
    }
}

/* GeoJSON type names. */
static const char *geojson_name(surpool_value_type t)
{
    switch (t) {
    case SURPOOL_VALUE_POINT: return "Point";
    case SURPOOL_VALUE_LINE: return "LineString";
    case SURPOOL_VALUE_POLYGON: return "Polygon";
    case SURPOOL_VALUE_MULTIPOINT: return "MultiPoint";
    case SURPOOL_VALUE_MULTILINE: return "MultiLineString";
    case SURPOOL_VALUE_MULTIPOLYGON: return "MultiPolygon";
    default: return "GeometryCollection";
    }
}

/* GeoJSON coordinates of a geometry (point: [x, y]; others: nested arrays). */
static json_t *geo_coords(const json_t *g, surpool_err *rc)
{
    const json_t *val = json_object_get(g, "value");
    if (surpool_value_type_of(g) == SURPOOL_VALUE_POINT)
        return json_deep_copy(val);
    json_t *a = json_array();
    size_t i;
    const json_t *e;
    json_array_foreach(val, i, e)
    {
        json_t *c = geo_coords(e, rc);
        if (c == NULL || json_array_append_new(a, c)) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

static json_t *plain(const json_t *v, surpool_err *rc)
{
    if (*rc != SURPOOL_OK)
        return NULL;
    surpool_value_type t = surpool_value_type_of(v);
    const json_t *val = json_object_get(v, "value");
    switch (t) {
    case SURPOOL_VALUE_INVALID: *rc = SURPOOL_ERR_INVALID_ARG; return NULL;
    case SURPOOL_VALUE_PLAIN:
        if (json_is_array(v)) {
            json_t *a = json_array();
            size_t i;
            json_t *e;
            json_array_foreach((json_t *)v, i, e)
            {
                json_t *p = plain(e, rc);
                if (p == NULL || json_array_append_new(a, p)) {
                    json_decref(a);
                    return NULL;
                }
            }
            return a;
        }
        /* fall through - a plain object's members may be typed */
    case SURPOOL_VALUE_OBJECT:
        if (json_is_object(t == SURPOOL_VALUE_OBJECT ? val : v)) {
            json_t *o = json_object();
            const char *k;
            json_t *m;
            json_object_foreach((json_t *)(t == SURPOOL_VALUE_OBJECT ? val : v), k, m)
            {
                json_t *p = plain(m, rc);
                if (p == NULL || json_object_set_new(o, k, p)) {
                    json_decref(o);
                    return NULL;
                }
            }
            return o;
        }
        return json_deep_copy(v);
    case SURPOOL_VALUE_NONE: return json_null();
    case SURPOOL_VALUE_SET: return plain(val, rc);
    case SURPOOL_VALUE_FUTURE:
    case SURPOOL_VALUE_TAG: return val != NULL ? plain(val, rc) : json_null();
    case SURPOOL_VALUE_POINT:
    case SURPOOL_VALUE_LINE:
    case SURPOOL_VALUE_POLYGON:
    case SURPOOL_VALUE_MULTIPOINT:
    case SURPOOL_VALUE_MULTILINE:
    case SURPOOL_VALUE_MULTIPOLYGON: {
        json_t *c = geo_coords(v, rc);
        if (c == NULL)
            return NULL;
        return json_pack("{s:s,s:o}", "type", geojson_name(t), "coordinates", c);
    }
    case SURPOOL_VALUE_COLLECTION: {
        json_t *a = json_array();
        size_t i;
        const json_t *e;
        json_array_foreach(val, i, e)
        {
            json_t *p = plain(e, rc);
            if (p == NULL || json_array_append_new(a, p)) {
                json_decref(a);
                return NULL;
            }
        }
        return json_pack("{s:s,s:o}", "type", "GeometryCollection", "geometries", a);
    }
    case SURPOOL_VALUE_TABLE:
    case SURPOOL_VALUE_RECORD:
    case SURPOOL_VALUE_UUID:
    case SURPOOL_VALUE_DECIMAL:
    case SURPOOL_VALUE_DATETIME:
    case SURPOOL_VALUE_DURATION:
    case SURPOOL_VALUE_BYTES:
    case SURPOOL_VALUE_RANGE:
    case SURPOOL_VALUE_FILE:
    case SURPOOL_VALUE_BIGINT:
    case SURPOOL_VALUE_FLOAT: {
        struct tbuf b = {NULL, 0, 0, 0};
        text_of(&b, v, rc);
        json_t *s = NULL;
        if (*rc == SURPOOL_OK && !b.failed)
            s = json_stringn(b.s != NULL ? b.s : "", b.len);
        surpool__free(b.s);
        return s;
    }
    }
    return NULL;
}

surpool_err surpool_value_text(const json_t *v, json_t **out, surpool_error *err)
{
    if (v == NULL || out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "value and out are required");
    surpool_err rc = surpool_value_check(v, err);
    if (rc != SURPOOL_OK)
        return rc;
    struct tbuf b = {NULL, 0, 0, 0};
    text_of(&b, v, &rc);
    json_t *s = NULL;
    if (rc == SURPOOL_OK && !b.failed)
        s = json_stringn(b.s != NULL ? b.s : "", b.len);
    surpool__free(b.s);
    if (rc != SURPOOL_OK)
        return surpool__seterr(err, rc, "malformed typed value");
    return give(s, out, err);
}

surpool_err surpool_value_to_plain(const json_t *v, json_t **out, surpool_error *err)
{
    if (v == NULL || out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "value and out are required");
    surpool_err rc = surpool_value_check(v, err);
    if (rc != SURPOOL_OK)
        return rc;
    json_t *p = plain(v, &rc);
    if (rc != SURPOOL_OK)
        return surpool__seterr(err, rc, "malformed typed value");
    return give(p, out, err);
}
