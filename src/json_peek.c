/*
 * Routing a JSON frame without decoding it (codec.h: surpool__codec_route).
 *
 * The transport's service thread only needs to know where a frame goes: the
 * reply's integer id, or that it has none. Building the whole jansson tree for
 * that would make every connection of a pool wait while one big reply is
 * parsed, so this walks the top-level object, compares keys, reads the "id"
 * value and skips every other value by counting brackets outside strings.
 * Routing stops at the id: the server writes it first, so a reply of any size
 * costs a few bytes here (walking a 1 MB reply to its end took ~0.5 ms of the
 * service thread, during which no other connection of the pool was served).
 * The full walk (surpool__codec_peek_info) goes on to the end: the raw path's,
 * on the caller's thread, and the transport's for a reply that matches no
 * request (dropped only if it passes). It never recurses and allocates
 * nothing. It is not a validator: the full decode (on the thread that wants
 * the result) still refuses bad JSON and repeated keys, and it agrees with
 * this walk on every frame it accepts (fuzz/fuzz_decode.c checks that).
 */
#include <string.h>

#include "codec.h"

typedef struct peek {
    const unsigned char *p, *end;
} peek;

/* JSON whitespace, and NUL: jansson 2.14 skips a NUL byte after a number, so
 * the walk does too (it may accept more than the decoder; never less). */
static int is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\0';
}

static void skip_ws(peek *s)
{
    while (s->p < s->end && is_ws(*s->p))
        s->p++;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* A string at s->p (the opening quote). With key != NULL, its first bytes are
 * decoded into key[cap] (escapes resolved; \u only below U+0080, which is all
 * the keys we look for need) and *klen is the decoded length, or cap when it
 * is longer or holds another \u escape (so it matches none of our keys).
 * Returns 0 at the byte after the closing quote, -1 on a malformed string. */
static int read_string(peek *s, char *key, size_t cap, size_t *klen)
{
    s->p++; /* the quote */
    size_t n = 0;
    while (s->p < s->end) {
        unsigned char c = *s->p++;
        if (c == '"') {
            if (klen != NULL)
                *klen = n;
            return 0;
        }
        if (c < 0x20)
            return -1;
        if (c == '\\') {
            if (s->p >= s->end)
                return -1;
            unsigned char e = *s->p++;
            switch (e) {
            case '"':
            case '\\':
            case '/': c = e; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u': {
                if (s->end - s->p < 4)
                    return -1;
                int v = 0;
                for (int i = 0; i < 4; i++) {
                    int h = hexval(s->p[i]);
                    if (h < 0)
                        return -1;
                    v = v * 16 + h;
                }
                s->p += 4;
                if (v >= 0x80 || v == 0) {
                    n = cap; /* not one of our ASCII keys */
                    continue;
                }
                c = (unsigned char)v;
                break;
            }
            default: return -1;
            }
        }
        if (key != NULL && n < cap)
            key[n] = (char)c;
        if (n < cap)
            n++;
    }
    return -1;
}

/* Skip one value of any kind. Strings are walked for their quotes; arrays and
 * objects by counting brackets (depth bounded by the frame's own size). */
static int skip_value(peek *s)
{
    skip_ws(s);
    if (s->p >= s->end)
        return -1;
    if (*s->p == '"')
        return read_string(s, NULL, 0, NULL);
    if (*s->p != '{' && *s->p != '[') {
        /* number or literal: up to the next delimiter */
        const unsigned char *start = s->p;
        while (s->p < s->end && *s->p != ',' && *s->p != '}' && *s->p != ']' && !is_ws(*s->p))
            s->p++;
        return s->p > start ? 0 : -1;
    }
    size_t depth = 0;
    while (s->p < s->end) {
        unsigned char c = *s->p;
        if (c == '"') {
            if (read_string(s, NULL, 0, NULL) != 0)
                return -1;
            continue;
        }
        s->p++;
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth == 0)
                return 0;
        }
    }
    return -1;
}

static int is_literal(const peek *s, const char *lit)
{
    size_t n = strlen(lit);
    return (size_t)(s->end - s->p) >= n && memcmp(s->p, lit, n) == 0;
}

/* The "id" value: null (no id) or an integer that fits int64. */
static surpool_err read_id(peek *s, int *has, int64_t *id, surpool_error *err)
{
    skip_ws(s);
    if (is_literal(s, "null")) {
        s->p += 4;
        *has = 0;
        return SURPOOL_OK;
    }
    int neg = 0;
    if (s->p < s->end && *s->p == '-') {
        neg = 1;
        s->p++;
    }
    const unsigned char *digits = s->p;
    uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
        unsigned d = (unsigned)(*s->p - '0');
        if (v > (limit - d) / 10)
            return surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                                   "frame from the server has an id outside int64");
        v = v * 10 + d;
        s->p++;
    }
    size_t ndigits = (size_t)(s->p - digits);
    if (ndigits == 0 || (ndigits > 1 && digits[0] == '0') ||
        (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E')))
        return surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                               "frame from the server has an id that is not an integer");
    *has = 1;
    *id = neg ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v) : (int64_t)v;
    return SURPOOL_OK;
}

/* The top-level walk of surpool__codec_peek_info(); with `route`, it returns
 * as soon as it has read an integer "id" followed by ',' or '}'
 * (surpool__codec_route()). */
static surpool_err walk(const char *buf, size_t len, surpool__peek_info *info, int route,
                        surpool_error *err)
{
    peek s = {(const unsigned char *)buf, (const unsigned char *)buf + len};
    int has_id = 0, seen_id = 0;
    int64_t idv = 0;
    surpool__peek_info in;
    memset(&in, 0, sizeof(in));
    skip_ws(&s);
    if (buf == NULL || s.p >= s.end || *s.p != '{')
        return surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                               "frame from the server is not a JSON object");
    s.p++;
    skip_ws(&s);
    if (s.p < s.end && *s.p == '}') {
        s.p++;
    } else {
        for (;;) {
            skip_ws(&s);
            char key[8];
            size_t klen = 0;
            if (s.p >= s.end || *s.p != '"' || read_string(&s, key, sizeof(key), &klen) != 0)
                goto bad;
            skip_ws(&s);
            if (s.p >= s.end || *s.p++ != ':')
                goto bad;
            int is_result = klen == 6 && memcmp(key, "result", 6) == 0;
            int is_error = klen == 5 && memcmp(key, "error", 5) == 0;
            if (klen == 2 && memcmp(key, "id", 2) == 0) {
                if (seen_id)
                    return surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                                           "frame from the server repeats its \"id\" key: "
                                           "refused, it could be routed to the wrong caller");
                seen_id = 1;
                surpool_err rc = read_id(&s, &has_id, &idv, err);
                if (rc != SURPOOL_OK)
                    return rc;
                skip_ws(&s);
                if (route && has_id && s.p < s.end && (*s.p == ',' || *s.p == '}')) {
                    info->kind = SURPOOL__FRAME_REPLY;
                    info->id = idv;
                    return SURPOOL_OK;
                }
            } else {
                skip_ws(&s);
                const unsigned char *at = s.p;
                int null = is_literal(&s, "null");
                if (skip_value(&s) != 0)
                    goto bad;
                size_t off = (size_t)(at - (const unsigned char *)buf);
                size_t n = (size_t)(s.p - at);
                if (is_result) {
                    in.dup_key |= in.has_result;
                    in.has_result = 1;
                    in.result_off = off;
                    in.result_len = n;
                } else if (is_error) {
                    in.dup_key |= in.error_len != 0;
                    /* Only the literal alone is "no error": "nullx" is a
                     * broken error, which decode_error() refuses. */
                    in.has_error = !(null && n == 4);
                    in.error_off = off;
                    in.error_len = n;
                }
            }
            skip_ws(&s);
            if (s.p < s.end && *s.p == ',') {
                s.p++;
                continue;
            }
            if (s.p < s.end && *s.p == '}') {
                s.p++;
                break;
            }
            goto bad;
        }
    }
    skip_ws(&s);
    if (s.p != s.end)
        goto bad;
    in.kind = has_id         ? SURPOOL__FRAME_REPLY
              : in.has_error ? SURPOOL__FRAME_ORPHAN_ERROR
                             : SURPOOL__FRAME_NOTIFICATION;
    in.id = has_id ? idv : 0;
    *info = in;
    return SURPOOL_OK;
bad:
    return surpool__seterr(err, SURPOOL_ERR_PROTOCOL,
                           "frame from the server is not valid JSON (at byte %zu)",
                           (size_t)(s.p - (const unsigned char *)buf));
}

surpool_err surpool__codec_peek_info(const char *buf, size_t len, surpool__peek_info *info,
                                     surpool_error *err)
{
    if (info == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "peek: info is required");
    return walk(buf, len, info, 0, err);
}

surpool_err surpool__codec_route(const char *buf, size_t len, surpool__frame_kind *kind,
                                 int64_t *id, surpool_error *err)
{
    if (kind == NULL || id == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "route: kind and id are required");
    surpool__peek_info in;
    surpool_err rc = walk(buf, len, &in, 1, err);
    if (rc != SURPOOL_OK)
        return rc;
    *kind = in.kind;
    *id = in.id;
    return SURPOOL_OK;
}
