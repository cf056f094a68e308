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

/* Initial text capacity of an encode buffer, on top of the headroom. Most
 * requests (ping, use, signin, short queries) fit without a realloc. */
#define ENCODE_INITIAL_CAPACITY 256

/* Length of the UTF-8 sequence introduced by lead byte `c`: 1 for ASCII, 2..4
 * for a lead byte, 0 for a continuation byte or a byte never valid in UTF-8. */
static size_t utf8_seq_len(unsigned char c)
{
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return 2;
    if (c >= 0xE0 && c <= 0xEF)
        return 3;
    if (c >= 0xF0 && c <= 0xF4)
        return 4;
    return 0;
}

/*
 * Copy the NUL-terminated `src` into `dst` (capacity `dstsize`, NUL included),
 * truncating if needed so that the copy never ends inside a multi-byte UTF-8
 * sequence: when the cut falls inside a sequence, that whole sequence is
 * dropped. Input is expected to be valid UTF-8 (jansson validates every string
 * it parses); for invalid input the result is still NUL-terminated and in
 * bounds, the back-off is limited to 3 bytes. Returns the bytes copied.
 */
static size_t surpool__utf8_copy(char *dst, size_t dstsize, const char *src)
{
    if (dst == NULL || dstsize == 0)
        return 0;
    if (src == NULL) {
        dst[0] = '\0';
        return 0;
    }
    size_t n = 0;
    while (n < dstsize && src[n] != '\0')
        n++;
    if (n >= dstsize) {
        /* src[n] is the first byte left out. If it continues a sequence, back
         * off to (and drop) that sequence's lead byte. */
        n = dstsize - 1;
        for (int i = 0; i < 3 && n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80; i++)
            n--;
        if (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n = dstsize - 1; /* not UTF-8 anyway: plain byte cut */
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
    return n;
}

/* After a vsnprintf that may have truncated `s` in the middle of a UTF-8
 * sequence (e.g. inside jansson's error text), drop that incomplete tail. */
static void utf8_trim_tail(char *s)
{
    size_t len = strlen(s);
    size_t i = len;
    /* Walk back over at most 3 continuation bytes to the lead byte. */
    for (int k = 0; k < 3 && i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80; k++)
        i--;
    if (i == 0)
        return;
    size_t lead = i - 1;
    size_t need = utf8_seq_len((unsigned char)s[lead]);
    if (need > 1 && lead + need > len)
        s[lead] = '\0';
}

/* Length of the well-formed UTF-8 sequence at s (n bytes available), or 0:
 * no overlong forms, no surrogates, nothing above U+10FFFF. */
static size_t utf8_valid_seq(const unsigned char *s, size_t n)
{
    size_t len = utf8_seq_len(s[0]);
    if (len == 0 || len > n)
        return 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (s[0] == 0xE0)
        lo = 0xA0;
    else if (s[0] == 0xED)
        hi = 0x9F;
    else if (s[0] == 0xF0)
        lo = 0x90;
    else if (s[0] == 0xF4)
        hi = 0x8F;
    if (len > 1 && (s[1] < lo || s[1] > hi))
        return 0;
    for (size_t k = 2; k < len; k++) {
        if ((s[k] & 0xC0) != 0x80)
            return 0;
    }
    return len;
}

/* Copy the NUL-terminated src into dst (dstsize > 0), replacing every byte
 * that does not start a well-formed UTF-8 sequence with '?'. jansson's parse
 * error text quotes the offending token byte by byte, so it can end in (or
 * contain) half a character; our messages are always valid UTF-8. */
static void utf8_sanitize(char *dst, size_t dstsize, const char *src)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t n = strlen(src);
    size_t i = 0, j = 0;
    while (i < n && j + 1 < dstsize) {
        size_t len = utf8_valid_seq(s + i, n - i);
        if (len == 0) {
            dst[j++] = '?';
            i++;
        } else if (j + len < dstsize) {
            memcpy(dst + j, s + i, len);
            i += len;
            j += len;
        } else {
            break;
        }
    }
    dst[j] = '\0';
}

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
    rc = rc ? rc : encbuf_append(&b, "}", 1);

    if (rc != 0 || transient) {
        surpool__free(b.data);
        if (b.failed || transient)
            return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory encoding a request");
        return surpool__seterr(
            err, SURPOOL_ERR_INVALID_ARG,
            "RPC params cannot be encoded as JSON (a string that is not valid UTF-8, "
            "or a reference cycle)");
    }
    b.data[b.used] = '\0';
    *out = b.data;
    *len = b.used - headroom;
    return SURPOOL_OK;
}

/* ------------------------------------------------------------------------- */
/* Decoding                                                                  */
/* ------------------------------------------------------------------------- */

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

    json_error_t jerr;
    memset(&jerr, 0, sizeof(jerr)); /* jansson leaves the error code byte unset */
    json_t *root = json_loadb(buf, len, JSON_ALLOW_NUL, &jerr);
    if (root == NULL && jerr.text[0] != '\0') {
        /* jansson reports an allocation failure in its lexer as a syntax
         * error. Bad JSON is bad every time: parse once more, and a frame
         * that parses now was fine (the first failure was out of memory). */
        json_error_t again;
        memset(&again, 0, sizeof(again));
        root = json_loadb(buf, len, JSON_ALLOW_NUL, &again);
    }
    if (root == NULL) {
        /* jansson 2.14 reports most of its allocation failures by returning
         * NULL without filling jerr (its text stays ""); every syntax error
         * has a text (and failed twice above). */
        if (jerr.text[0] == '\0' || json_error_code(&jerr) == json_error_out_of_memory)
            return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory decoding a frame");
        char text[sizeof(jerr.text)];
        jerr.text[sizeof(jerr.text) - 1] = '\0'; /* the error code byte */
        utf8_sanitize(text, sizeof(text), jerr.text);
        surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                        "invalid JSON from the server at byte %d (line %d, column %d): %s",
                        jerr.position, jerr.line, jerr.column, text);
        if (err != NULL)
            utf8_trim_tail(err->message);
        return SURPOOL_ERR_PROTOCOL;
    }
    if (!json_is_object(root)) {
        surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                        "frame from the server is %s, expected an object",
                        json_type_name(root));
        json_decref(root);
        return SURPOOL_ERR_PROTOCOL;
    }

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
        surpool__utf8_copy(err->kind, sizeof(err->kind), json_string_value(kind));

    json_t *msg = json_object_get(error, "message");
    const char *text = "server error without message";
    if (json_is_string(msg) && json_string_value(msg)[0] != '\0')
        text = json_string_value(msg);
    surpool__utf8_copy(err->message, sizeof(err->message), text);
    return rc;
}
