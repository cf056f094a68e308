/*
 * "table" / "table:id" text → a typed table or record id, by SurrealQL's
 * rules (surpool_value_thing(); docs/values.md, "Thing text"). Pure.
 */
#include <string.h>

#include "value.h"

/* U+27E8 and U+27E9, the angle brackets SurrealQL escapes ids with. */
#define LANGLE "\xE2\x9F\xA8"
#define RANGLE "\xE2\x9F\xA9"

static int is_ident_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_';
}

/*
 * Read one part at s[*i]: `…` (escapes \` and \\), ⟨…⟩ (escapes \⟩ and \\) or
 * a bare [A-Za-z0-9_]+. The unescaped text goes to out (capacity: the input
 * length + 1). *escaped says which form it was. Returns 0 or -1.
 */
static int read_part(const char *s, size_t len, size_t *i, char *out, size_t *olen,
                     int *escaped)
{
    size_t o = 0;
    *escaped = 0;
    const char *close = NULL;
    size_t open_len = 0, close_len = 0;
    if (*i < len && s[*i] == '`') {
        close = "`";
        open_len = close_len = 1;
    } else if (len - *i >= 3 && memcmp(s + *i, LANGLE, 3) == 0) {
        close = RANGLE;
        open_len = close_len = 3;
    }
    if (close != NULL) {
        *escaped = 1;
        size_t j = *i + open_len;
        for (;;) {
            if (j >= len)
                return -1; /* unterminated */
            if (s[j] == '\\') {
                if (j + 1 < len && s[j + 1] == '\\') {
                    out[o++] = '\\';
                    j += 2;
                } else if (len - j - 1 >= close_len &&
                           memcmp(s + j + 1, close, close_len) == 0) {
                    memcpy(out + o, close, close_len);
                    o += close_len;
                    j += 1 + close_len;
                } else {
                    return -1; /* no other escapes */
                }
                continue;
            }
            if (len - j >= close_len && memcmp(s + j, close, close_len) == 0) {
                j += close_len;
                break;
            }
            out[o++] = s[j++];
        }
        if (o == 0)
            return -1;
        *i = j;
    } else {
        size_t j = *i;
        while (j < len && is_ident_char(s[j]))
            out[o++] = s[j++];
        if (j == *i)
            return -1;
        *i = j;
    }
    out[o] = '\0';
    *olen = o;
    return 0;
}

/* All digits and fits int64? */
static int parse_int(const char *s, size_t n, json_int_t *out)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        if (v > ((uint64_t)INT64_MAX - (uint64_t)(s[i] - '0')) / 10)
            return -2; /* digits, but too large */
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = (json_int_t)v;
    return 0;
}

static surpool_err bad(surpool_error *err, const char *text)
{
    return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                           "cannot read \"%.80s\" as \"table\" or \"table:id\" (ids: integer, "
                           "identifier, `…`, ⟨…⟩ or u'uuid')",
                           text);
}

surpool_err surpool_value_thing(const char *text, json_t **out, surpool_error *err)
{
    if (text == NULL || out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "text and out are required");
    size_t len = strlen(text), i = 0, tlen, ilen;
    int escaped;
    json_t *check = json_string(text); /* also rejects invalid UTF-8 */
    if (check == NULL || len == 0) {
        json_decref(check);
        return bad(err, "");
    }
    json_decref(check);
    char *tb = surpool__malloc(len + 1), *id = surpool__malloc(len + 1);
    json_t *o = NULL;
    surpool_err rc = SURPOOL_OK;
    if (tb == NULL || id == NULL) {
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory reading a thing");
        goto done;
    }
    if (read_part(text, len, &i, tb, &tlen, &escaped)) {
        rc = bad(err, text);
        goto done;
    }
    if (i == len) {
        o = surpool__typed_new("table", "value", json_stringn(tb, tlen));
        goto made;
    }
    if (text[i] != ':') {
        rc = bad(err, text);
        goto done;
    }
    i++;
    json_t *idv = NULL;
    if (len - i >= 3 && text[i] == 'u' && (text[i + 1] == '\'' || text[i + 1] == '"')) {
        unsigned char u[16];
        char buf[37];
        if (len - i != 39 || text[len - 1] != text[i + 1] ||
            surpool__uuid_parse(text + i + 2, 36, u)) {
            rc = bad(err, text);
            goto done;
        }
        surpool__uuid_format(u, buf);
        idv = surpool__typed_new("uuid", "value", json_string(buf));
    } else {
        if (read_part(text, len, &i, id, &ilen, &escaped) || i != len) {
            rc = bad(err, text);
            goto done;
        }
        json_int_t n;
        int r = escaped ? -1 : parse_int(id, ilen, &n);
        if (r == -2) {
            rc = bad(err, text);
            goto done;
        }
        idv = r == 0 ? json_integer(n) : json_stringn(id, ilen);
    }
    if (idv == NULL) {
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory reading a thing");
        goto done;
    }
    o = json_pack("{s:s,s:s%,s:o}", SURPOOL__TYPE_KEY, "record", "tb", tb, tlen, "id", idv);
made:
    if (o == NULL)
        rc = surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory reading a thing");
    else
        *out = o;
done:
    surpool__free(tb);
    surpool__free(id);
    return rc;
}
