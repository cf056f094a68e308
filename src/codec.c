/*
 * JSON codec for SurrealDB RPC frames (jansson 2.14). See codec.h.
 *
 * Pure: no I/O, no globals, no threads. Everything this file allocates for
 * itself goes through surpool__malloc/realloc/free; jansson values are
 * allocated by jansson (json_set_alloc_funcs() governs those).
 */
#include <limits.h>
#include <string.h>

#include "codec.h"
#include "utf8.h"
#include "value.h"

/* Initial text capacity of an encode buffer, on top of the headroom. Most
 * requests (ping, use, signin, short queries) fit without a realloc. */
#define ENCODE_INITIAL_CAPACITY 256

/* Every frame from the server is parsed with these. */
#define DECODE_FLAGS (JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES)

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "an unknown type";
}

/* ------------------------------------------------------------------------- */
/* Checking values we are given                                              */
/* ------------------------------------------------------------------------- */

/* 0 when every string and key in v is valid UTF-8 and v nests no deeper than
 * SURPOOL__JSON_MAX_DEPTH; else 1 (bad text) or 2 (too deep). */
static int check_value(const json_t *v, int depth)
{
    if (depth > SURPOOL__JSON_MAX_DEPTH)
        return 2;
    if (json_is_string(v))
        return surpool__utf8_valid(json_string_value(v), json_string_length(v)) ? 0 : 1;
    if (json_is_object(v)) {
        const char *k;
        json_t *m;
        json_object_foreach((json_t *)v, k, m)
        {
            if (!surpool__utf8_valid_str(k))
                return 1;
            int rc = check_value(m, depth + 1);
            if (rc != 0)
                return rc;
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m)
        {
            int rc = check_value(m, depth + 1);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

surpool_err surpool__codec_check_value(const json_t *v, const char *what, surpool_error *err)
{
    switch (v != NULL ? check_value(v, 1) : 0) {
    case 1:
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "%s: a string or object key is not valid UTF-8", what);
    case 2:
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "%s: nested deeper than %d levels (or a reference cycle)", what,
                               SURPOOL__JSON_MAX_DEPTH);
    default: return SURPOOL_OK;
    }
}

/* ------------------------------------------------------------------------- */
/* Encoding                                                                  */
/* ------------------------------------------------------------------------- */

/* A growable output buffer: `headroom` bytes reserved at the front, text
 * after. `failed` is sticky: jansson 2.14 ignores the return value of some of
 * its internal writes (object keys), so once a write fails every later write
 * must fail too for json_dump_callback() to report the error. */
struct encbuf {
    char *data;
    size_t cap;  /* bytes allocated */
    size_t used; /* headroom + text bytes written so far */
    int failed;  /* an allocation failed */
};

static int encbuf_append(struct encbuf *b, const char *bytes, size_t n)
{
    if (b->failed)
        return -1;
    /* Keep one byte for the final NUL. */
    if (n > SIZE_MAX - 1 - b->used) {
        b->failed = 1;
        return -1;
    }
    size_t need = b->used + n + 1;
    if (need > b->cap) {
        size_t cap = b->cap;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        char *p = surpool__realloc(b->data, cap);
        if (p == NULL) {
            b->failed = 1;
            return -1;
        }
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->used, bytes, n);
    b->used += n;
    return 0;
}

static int encbuf_dump_cb(const char *buffer, size_t size, void *data)
{
    return encbuf_append(data, buffer, size);
}

/* Methods are lowercase identifiers such as "query" or "insert_relation". */
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

/*
 * The envelope is written by hand around jansson's dump of `params`:
 *   {"id":<id>,"method":"<method>","params":<params>}
 * This keeps the key order fixed, needs no envelope json_t, and never touches
 * the caller's `params` (no json_incref on a const, possibly shared value: we
 * only read it, and jansson 2.14's dump keeps its loop detection in a local
 * table rather than in the values, so concurrent encodes of one value are
 * safe). The method needs no escaping: it is [a-z_]+.
 */
surpool_err surpool__codec_encode_request(int64_t id, const char *method, const json_t *params,
                                          size_t headroom, char **out, size_t *len,
                                          surpool_error *err)
{
    return surpool__codec_encode_request_txn(id, method, params, NULL, headroom, out, len, err);
}

surpool_err surpool__codec_encode_request_txn(int64_t id, const char *method,
                                              const json_t *params, const char *txn,
                                              size_t headroom, char **out, size_t *len,
                                              surpool_error *err)
{
    return surpool__codec_encode_request_env(id, method, params, NULL, txn, headroom, out, len,
                                             err);
}

surpool_err surpool__codec_encode_request_env(int64_t id, const char *method,
                                              const json_t *params, const char *session,
                                              const char *txn, size_t headroom, char **out,
                                              size_t *len, surpool_error *err)
{
    if (out == NULL || len == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "encode_request: out and len are required");
    if (!method_is_valid(method))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "RPC method must be a non-empty lowercase name ([a-z_]+)");
    if (params != NULL && !json_is_array(params))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "RPC params must be a JSON array, not %s",
                               json_type_name(params));
    if (headroom > SIZE_MAX / 2)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "encode headroom too large");
    /* Written into the text as it is: only UUID text may get there. */
    unsigned char uuid[16];
    if (txn != NULL && surpool__uuid_parse(txn, strlen(txn), uuid))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "RPC txn must be UUID text");
    if (session != NULL && surpool__uuid_parse(session, strlen(session), uuid))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "RPC session must be UUID text");
    /* jansson's dump refuses a bad string but writes a bad key as it is, and
     * recurses without a depth limit: check both before writing anything. */
    surpool_err vrc = surpool__codec_check_value(params, "RPC params", err);
    if (vrc != SURPOOL_OK)
        return vrc;

    struct encbuf b = {NULL, 0, headroom, 0};
    b.cap = headroom + ENCODE_INITIAL_CAPACITY;
    b.data = surpool__malloc(b.cap);
    if (b.data == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory encoding a request");

    char head[64];
    int hn = snprintf(head, sizeof(head), "{\"id\":%lld,\"method\":\"", (long long)id);
    int rc = encbuf_append(&b, head, (size_t)hn);
    rc = rc ? rc : encbuf_append(&b, method, strlen(method));
    rc = rc ? rc : encbuf_append(&b, "\",\"params\":", 11);
    int transient = 0;
    if (rc == 0) {
        if (params == NULL) {
            rc = encbuf_append(&b, "[]", 2);
        } else {
            size_t mark = b.used;
            rc = json_dump_callback(params, encbuf_dump_cb, &b, JSON_COMPACT);
            if (rc != 0 && !b.failed) {
                /* jansson refuses a string that is not valid UTF-8 (only
                 * possible through the *_nocheck constructors), a reference
                 * cycle, or fails an allocation of its own (it does not say
                 * which). Those two are properties of the value: a second try
                 * fails again. One that then succeeds was out of memory. */
                b.used = mark;
                rc = json_dump_callback(params, encbuf_dump_cb, &b, JSON_COMPACT);
                transient = rc == 0;
            }
        }
    }
    if (rc == 0 && session != NULL) {
        rc = encbuf_append(&b, ",\"session\":\"", 12);
        rc = rc ? rc : encbuf_append(&b, session, strlen(session));
        rc = rc ? rc : encbuf_append(&b, "\"", 1);
    }
    if (rc == 0 && txn != NULL) {
        rc = encbuf_append(&b, ",\"txn\":\"", 8);
        rc = rc ? rc : encbuf_append(&b, txn, strlen(txn));
        rc = rc ? rc : encbuf_append(&b, "\"", 1);
    }
    rc = rc ? rc : encbuf_append(&b, "}", 1);

    if (rc != 0 || transient) {
        surpool__free(b.data);
        if (b.failed || transient)
            return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory encoding a request");
        return surpool__seterr(
            err, SURPOOL_ERR_INVALID_ARG,
            "RPC params cannot be encoded as JSON (a value jansson refuses to write)");
    }
    b.data[b.used] = '\0';
    *out = b.data;
    *len = b.used - headroom;
    return SURPOOL_OK;
}

/* ------------------------------------------------------------------------- */
/* Decoding                                                                  */
/* ------------------------------------------------------------------------- */

surpool_err surpool__codec_load(const char *buf, size_t len, size_t flags, json_t **out,
                                surpool_error *err)
{
    json_error_t jerr;
    memset(&jerr, 0, sizeof(jerr)); /* jansson leaves the error code byte unset */
    /* Duplicate keys are refused: jansson would keep the last one, so a frame
     * such as {"id":1,"id":2,...} could be routed to another caller. */
    flags |= DECODE_FLAGS;
    json_t *root = json_loadb(buf, len, flags, &jerr);
    if (root == NULL && jerr.text[0] != '\0') {
        /* jansson reports an allocation failure in its lexer as a syntax
         * error. Bad JSON is bad every time: parse once more, and a frame
         * that parses now was fine (the first failure was out of memory). */
        json_error_t again;
        memset(&again, 0, sizeof(again));
        root = json_loadb(buf, len, flags, &again);
    }
    *out = root;
    if (root != NULL)
        return SURPOOL_OK;
    /* jansson 2.14 reports most of its allocation failures by returning
     * NULL without filling jerr (its text stays ""); every syntax error
     * has a text (and failed twice above). */
    if (jerr.text[0] == '\0' || json_error_code(&jerr) == json_error_out_of_memory)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory decoding a frame");
    char text[sizeof(jerr.text)];
    int duplicate = json_error_code(&jerr) == json_error_duplicate_key;
    jerr.text[sizeof(jerr.text) - 1] = '\0'; /* the error code byte */
    surpool__text_sanitize_str(text, sizeof(text), jerr.text);
    if (duplicate)
        return surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                               "frame from the server repeats an object key (%s): "
                               "refused, it could be routed to the wrong caller",
                               text);
    return surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                           "invalid JSON from the server at byte %d (line %d, column %d): %s",
                           jerr.position, jerr.line, jerr.column, text);
}

surpool_err surpool__codec_decode_frame(const char *buf, size_t len, surpool__frame *out,
                                        surpool_error *err)
{
    if (out == NULL || (buf == NULL && len > 0))
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "decode_frame: out is required and buf may only be NULL "
                               "when len is 0");
    memset(out, 0, sizeof(*out));
    if (len == 0)
        return surpool__seterr(err, SURPOOL_ERR_PROTOCOL, "empty frame from the server");

    json_t *root;
    surpool_err rc = surpool__codec_load(buf, len, 0, &root, err);
    if (rc != SURPOOL_OK)
        return rc;
    if (!json_is_object(root)) {
        surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                        "frame from the server is %s, expected an object",
                        json_type_name(root));
        json_decref(root);
        return SURPOOL_ERR_PROTOCOL;
    }

    return surpool__codec_classify_frame(root, out, err);
}

surpool_err surpool__codec_classify_frame(json_t *root, surpool__frame *out, surpool_error *err)
{
    json_t *id = json_object_get(root, "id");
    if (id != NULL && !json_is_null(id)) {
        if (!json_is_integer(id)) {
            surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                            "frame from the server has an id that is %s, expected an integer",
                            json_type_name(id));
            json_decref(root);
            return SURPOOL_ERR_PROTOCOL;
        }
        out->kind = SURPOOL__FRAME_REPLY;
        out->id = (int64_t)json_integer_value(id);
        out->root = root;
        return SURPOOL_OK;
    }

    /* No id (or "id":null). An error wins over a result: an uncorrelated error
     * must never be mistaken for a live-query notification. */
    json_t *error = json_object_get(root, "error");
    if (error != NULL && !json_is_null(error)) {
        out->kind = SURPOOL__FRAME_ORPHAN_ERROR;
        out->root = root;
        return SURPOOL_OK;
    }
    json_t *result = json_object_get(root, "result");
    if (json_is_object(result) && json_object_get(result, "action") != NULL) {
        out->kind = SURPOOL__FRAME_NOTIFICATION;
        out->root = root;
        return SURPOOL_OK;
    }
    surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                    "frame from the server has no id and is neither a live-query "
                    "notification nor an error");
    json_decref(root);
    return SURPOOL_ERR_PROTOCOL;
}

surpool_err surpool__codec_reply_result(const json_t *root, json_t **result, surpool_error *err)
{
    if (result != NULL)
        *result = NULL;
    if (!json_is_object(root))
        return surpool__seterr(err, SURPOOL_ERR_PROTOCOL, "reply is not a JSON object");

    /* "error": null is read as "no error", as JSON-RPC 1.0 peers send it. */
    json_t *error = json_object_get(root, "error");
    if (error != NULL && !json_is_null(error))
        return surpool__codec_map_error(error, err);

    json_t *res = json_object_get(root, "result");
    if (res == NULL)
        return surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                               "reply from the server has neither a result nor an error");
    if (result != NULL)
        *result = res;
    return SURPOOL_OK;
}

surpool_err surpool__codec_map_error(const json_t *error, surpool_error *err)
{
    if (!json_is_object(error)) {
        if (error == NULL)
            return surpool__seterr(err, SURPOOL_ERR_SERVER, "server error without details");
        return surpool__seterr(err, SURPOOL_ERR_SERVER,
                               "malformed server error: %s, expected an object",
                               json_type_name(error));
    }

    json_int_t code = 0;
    json_t *jcode = json_object_get(error, "code");
    if (json_is_integer(jcode))
        code = json_integer_value(jcode);
    /* Decide on the full-width value: a code that only narrows to -32002 is
     * not the authentication error. */
    surpool_err rc = code == -32002 ? SURPOOL_ERR_AUTH : SURPOOL_ERR_SERVER;
    if (err == NULL)
        return rc;

    memset(err, 0, sizeof(*err));
    err->code = rc;
    err->server_code = code < INT_MIN ? INT_MIN : code > INT_MAX ? INT_MAX : (int)code;

    json_t *kind = json_object_get(error, "kind");
    if (json_is_string(kind))
        surpool__text_sanitize(err->kind, sizeof(err->kind), json_string_value(kind),
                               json_string_length(kind));

    json_t *msg = json_object_get(error, "message");
    if (json_is_string(msg) && json_string_length(msg) > 0)
        surpool__text_sanitize(err->message, sizeof(err->message), json_string_value(msg),
                               json_string_length(msg));
    else
        surpool__strlcpy(err->message, "server error without message", sizeof(err->message));
    return rc;
}

surpool_err surpool__codec_auth_refusal(const json_t *root, surpool_error *err)
{
    /* A conflict the server says may pass as it is ("... can be retried") is
     * not a refusal: connection setup retries it. */
    json_t *msg = json_object_get(json_object_get(root, "error"), "message");
    if (json_is_string(msg) && strstr(json_string_value(msg), "can be retried") != NULL)
        return SURPOOL_ERR_SERVER;
    if (err != NULL)
        err->code = SURPOOL_ERR_AUTH;
    return SURPOOL_ERR_AUTH;
}
