/*
 * URL parsing for surpool_config.url. See url.h.
 *
 *   ws[s]://[user[:pass]@]host[:port][/path][?ns=..&db=..&ac=..]
 *
 * Pure (no I/O, no locale, no globals) so it can be fuzzed. Error messages name
 * the part of the URL that is wrong but never quote the URL: a password with
 * an unencoded '/', '?' or '@' shifts every boundary, so any quoted piece
 * could be part of a secret.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "url.h"
#include "utf8.h"

#define URL_DEFAULT_PATH "/rpc"
#define URL_HOSTNAME_MAX 253
#define URL_LABEL_MAX 63

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* First occurrence of c in [s, end), or NULL. */
static const char *find_char(const char *s, const char *end, char c)
{
    for (; s < end; s++) {
        if (*s == c)
            return s;
    }
    return NULL;
}

/* Dotted-quad IPv4: exactly four decimal parts 0..255 without leading zeros
 * (so "010.1.1.1" is not silently read as octal by a resolver). */
static int ipv4_valid(const char *s, size_t n)
{
    size_t i = 0;
    for (int part = 0; part < 4; part++) {
        if (part > 0) {
            if (i >= n || s[i] != '.')
                return 0;
            i++;
        }
        size_t start = i;
        int v = 0;
        while (i < n && is_digit(s[i]) && i - start < 3)
            v = v * 10 + (s[i++] - '0');
        size_t digits = i - start;
        if (digits == 0 || v > 255 || (digits > 1 && s[start] == '0'))
            return 0;
    }
    return i == n;
}

/* Does the host's last label (one trailing '.' ignored) look like a number:
 * decimal digits only, or "0x"/"0X" then hex digits only? Then resolvers read
 * the whole host as an IPv4 address in one of the old inet_aton forms
 * ("0x7f000001", "0x7f.1", "127.1", "0177.0.0.1"), so it must be a strict
 * dotted quad instead of a name (the WHATWG URL rule "ends in a number"). */
static int ends_in_number(const char *s, size_t n)
{
    if (n > 0 && s[n - 1] == '.')
        n--;
    size_t start = n;
    while (start > 0 && s[start - 1] != '.')
        start--;
    const char *l = s + start;
    size_t len = n - start;
    if (len == 0)
        return 0;
    size_t i = 0;
    int hex = len >= 2 && l[0] == '0' && (l[1] == 'x' || l[1] == 'X');
    if (hex)
        i = 2;
    for (; i < len; i++) {
        if (hex ? hex_value(l[i]) < 0 : !is_digit(l[i]))
            return 0;
    }
    return 1;
}

/* IPv6 literal as found between brackets (RFC 4291 2.2 text forms, including
 * a trailing dotted quad). Zone identifiers are not supported. */
static int ipv6_valid(const char *s, size_t n)
{
    size_t i = 0;
    int groups = 0;
    int compressed = 0;

    if (n == 0)
        return 0;
    if (s[0] == ':') {
        if (n < 2 || s[1] != ':')
            return 0;
        compressed = 1;
        i = 2;
    }
    while (i < n) {
        size_t start = i;
        while (i < n && hex_value(s[i]) >= 0)
            i++;
        if (i < n && s[i] == '.') {
            /* Embedded IPv4: the last 32 bits. */
            if (!ipv4_valid(s + start, n - start))
                return 0;
            groups += 2;
            break;
        }
        if (i == start || i - start > 4)
            return 0;
        groups++;
        if (i == n)
            break;
        if (s[i] != ':')
            return 0;
        i++;
        if (i < n && s[i] == ':') {
            if (compressed)
                return 0;
            compressed = 1;
            i++;
        } else if (i == n) {
            return 0; /* a single trailing ':' */
        }
    }
    return compressed ? groups <= 7 : groups == 8;
}

/* A DNS-style host name: labels of [A-Za-z0-9_-], 1..63 bytes, not starting or
 * ending with '-'; at most 253 bytes; one trailing '.' allowed. '_' is not
 * valid in DNS host names but is common in container setups (Docker service
 * names) and resolvers accept it, so we do too. */
static int hostname_valid(const char *s, size_t n)
{
    if (n > 0 && s[n - 1] == '.')
        n--;
    if (n == 0 || n > URL_HOSTNAME_MAX)
        return 0;
    size_t label = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == '.') {
            if (label == 0 || label > URL_LABEL_MAX || s[i - 1] == '-')
                return 0;
            label = 0;
            continue;
        }
        char c = s[i];
        if (!(is_alpha(c) || is_digit(c) || c == '-' || c == '_'))
            return 0;
        if (label == 0 && c == '-')
            return 0;
        label++;
    }
    return 1;
}

/* Copy [s, s+n) into a new NUL-terminated string. */
static char *dup_range(const char *s, size_t n)
{
    char *d = surpool__malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/*
 * Percent-decode [s, s+n) into a new string (*out). `what` names the part for
 * messages. Rejects malformed escapes, a decoded NUL and a result that is not
 * UTF-8 (these values end up as JSON strings, which must be UTF-8). '+' is
 * kept as '+': this is a URL, not a form. The scratch buffer is wiped on
 * failure because it may hold part of a password.
 */
static surpool_err percent_decode(const char *s, size_t n, const char *what, char **out,
                                  surpool_error *err)
{
    char *d = surpool__malloc(n + 1);
    if (d == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory parsing the URL");
    size_t j = 0;
    surpool_err rc = SURPOOL_OK;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            int hi = n - i >= 3 ? hex_value(s[i + 1]) : -1;
            int lo = hi >= 0 ? hex_value(s[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                rc = surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                     "invalid URL: malformed percent-escape in the %s "
                                     "(expected %% and two hex digits)",
                                     what);
                break;
            }
            c = (char)(hi * 16 + lo);
            if (c == '\0') {
                rc =
                    surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                    "invalid URL: the %s contains an encoded NUL (%%00)", what);
                break;
            }
            i += 2;
        }
        d[j++] = c;
    }
    if (rc == SURPOOL_OK && !surpool__utf8_valid(d, j))
        rc = surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                             "invalid URL: the %s is not valid UTF-8 once percent-decoded",
                             what);
    if (rc != SURPOOL_OK) {
        surpool__wipe(d, n + 1);
        surpool__free(d);
        return rc;
    }
    d[j] = '\0';
    *out = d;
    return SURPOOL_OK;
}

/* RFC 3986 pchar plus '/': unreserved, sub-delims, ':'; '%' is checked
 * separately. Everything else (non-ASCII, '"', '\\', '<', '{', ...) must be
 * percent-encoded because the path goes verbatim into the HTTP request line.
 * RFC 3986 also allows '@', but in our URLs an '@' after the host nearly
 * always means a user name or password with an unencoded '/', so it is
 * refused with a hint (write %40 if a path really needs one). */
static int path_char_ok(char c)
{
    if (is_alpha(c) || is_digit(c))
        return 1;
    return c != '\0' && strchr("-._~!$&'()*+,;=:/", c) != NULL;
}

static surpool_err parse_path(const char *s, size_t n, surpool__url *u, surpool_error *err)
{
    if (n > SURPOOL__URL_PATH_MAX)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "invalid URL: the path is %zu bytes, the limit is %d (it goes "
                               "into the HTTP upgrade request, which libwebsockets keeps in "
                               "a 4096-byte header buffer)",
                               n, SURPOOL__URL_PATH_MAX);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '@') {
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: '@' in the path (percent-encode '/', '?', "
                                   "'#' and '@' in the user name and password)");
        } else if (s[i] == '%') {
            if (n - i < 3 || hex_value(s[i + 1]) < 0 || hex_value(s[i + 2]) < 0)
                return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                       "invalid URL: malformed percent-escape in the path "
                                       "(expected %% and two hex digits)");
            i += 2;
        } else if (!path_char_ok(s[i])) {
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: character not allowed in the path at "
                                   "offset %zu (percent-encode it)",
                                   i);
        }
    }
    u->path = dup_range(s, n);
    if (u->path == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory parsing the URL");
    return SURPOOL_OK;
}

/* Query: '&'-separated key=value pairs; keys ns, db, ac, format, each at most
 * once, values non-empty and percent-decoded (format: "json" or "cbor"). An
 * empty query ("...?") is accepted. */
static surpool_err parse_query(const char *s, const char *end, surpool__url *u,
                               surpool_error *err)
{
    while (s < end) {
        const char *amp = find_char(s, end, '&');
        const char *pend = amp != NULL ? amp : end;
        if (pend == s)
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: empty query parameter (stray '&')");
        const char *eq = find_char(s, pend, '=');
        if (eq == NULL)
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: query parameter without '=value'");
        size_t klen = (size_t)(eq - s);
        char **slot = NULL;
        const char *what = NULL;
        if (klen == 2 && memcmp(s, "ns", 2) == 0) {
            slot = &u->ns;
            what = "ns parameter";
        } else if (klen == 2 && memcmp(s, "db", 2) == 0) {
            slot = &u->db;
            what = "db parameter";
        } else if (klen == 2 && memcmp(s, "ac", 2) == 0) {
            slot = &u->access;
            what = "ac parameter";
        } else if (klen == 6 && memcmp(s, "format", 6) == 0) {
            size_t vlen = (size_t)(pend - eq - 1);
            if (u->format != 0)
                return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                       "invalid URL: the format parameter is given twice");
            if (vlen == 4 && memcmp(eq + 1, "json", 4) == 0)
                u->format = SURPOOL_WIRE_JSON;
            else if (vlen == 4 && memcmp(eq + 1, "cbor", 4) == 0)
                u->format = SURPOOL_WIRE_CBOR;
            else
                return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                       "invalid URL: format must be json or cbor");
        } else {
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: unknown query parameter (the URL accepts "
                                   "only ns, db, ac and format)");
        }
        if (slot != NULL) { /* NULL: format, handled above */
            if (*slot != NULL)
                return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                       "invalid URL: the %s is given twice", what);
            if (eq + 1 == pend)
                return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                       "invalid URL: the %s is empty", what);
            surpool_err rc = percent_decode(eq + 1, (size_t)(pend - eq - 1), what, slot, err);
            if (rc != SURPOOL_OK)
                return rc;
        }
        if (amp == NULL)
            break;
        s = amp + 1;
        if (s == end)
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: empty query parameter (stray '&')");
    }
    return SURPOOL_OK;
}

static surpool_err parse_userinfo(const char *s, const char *end, surpool__url *u,
                                  surpool_error *err)
{
    const char *colon = find_char(s, end, ':');
    const char *uend = colon != NULL ? colon : end;
    if (uend == s)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "invalid URL: empty user name before '@'");
    surpool_err rc = percent_decode(s, (size_t)(uend - s), "user name", &u->user, err);
    if (rc != SURPOOL_OK || colon == NULL)
        return rc;
    if (colon + 1 == end)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "invalid URL: empty password after ':' (omit the ':' for "
                               "no password)");
    return percent_decode(colon + 1, (size_t)(end - colon - 1), "password", &u->pass, err);
}

/* Port: 1..65535, decimal digits only. `hint` is set when the URL still holds
 * an '@' after the authority: the likely cause is then a password with an
 * unencoded '/' or '?', so say that instead of quoting anything. */
static surpool_err parse_port(const char *s, const char *end, int hint, surpool__url *u,
                              surpool_error *err)
{
    const char *why = hint ? " (percent-encode '/', '?', '#' and '@' in the user name and "
                             "password)"
                           : "";
    if (s == end)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "invalid URL: empty port after ':'%s", why);
    long v = 0;
    for (const char *p = s; p < end; p++) {
        if (!is_digit(*p))
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: the port must be decimal digits%s", why);
        v = v * 10 + (*p - '0');
        if (v > 65535)
            break;
    }
    if (v < 1 || v > 65535)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "invalid URL: the port must be between 1 and 65535");
    u->port = (int)v;
    return SURPOOL_OK;
}

static surpool_err parse_host(const char *s, const char *end, int hint, surpool__url *u,
                              surpool_error *err)
{
    const char *hend;   /* end of the host text as stored */
    const char *rest;   /* where ':port' may start */
    const char *hs = s; /* start of the host text as stored */

    if (s < end && *s == '[') {
        const char *close = find_char(s, end, ']');
        if (close == NULL)
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: IPv6 address without closing ']'");
        hs = s + 1;
        hend = close;
        if (find_char(hs, hend, '%') != NULL)
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: IPv6 zone identifiers are not supported");
        if (!ipv6_valid(hs, (size_t)(hend - hs)))
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: malformed IPv6 address");
        rest = close + 1;
        if (rest < end && *rest != ':')
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: unexpected text after the IPv6 address");
    } else {
        rest = find_char(s, end, ':');
        if (rest == NULL)
            rest = end;
        hend = rest;
        size_t n = (size_t)(hend - s);
        if (n == 0)
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "invalid URL: empty host");
        /* A host whose last label is a number is an IPv4 address, checked
         * strictly so that "1.2.3", "12345", "0x7f000001" or "0x7f.1" never
         * reach a resolver that would read them in the old inet_aton forms. */
        int numeric = ends_in_number(s, n);
        if (numeric && !ipv4_valid(s, n))
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: malformed IPv4 address (expected four "
                                   "decimal numbers 0-255 without leading zeros; hex, octal "
                                   "and short forms are refused)");
        if (!numeric && !hostname_valid(s, n))
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: malformed host name (letters, digits, "
                                   "'-', '_' and '.' only)%s",
                                   hint ? "; percent-encode '/', '?', '#' and '@' in the "
                                          "user name and password"
                                        : "");
    }

    u->port = u->tls ? 443 : 80;
    if (rest < end) {
        surpool_err rc = parse_port(rest + 1, end, hint, u, err);
        if (rc != SURPOOL_OK)
            return rc;
    }
    u->host = dup_range(hs, (size_t)(hend - hs));
    if (u->host == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory parsing the URL");
    return SURPOOL_OK;
}

static surpool_err parse(const char *s, surpool__url *u, surpool_error *err)
{
    if (s == NULL || *s == '\0')
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "URL is empty");

    size_t len = strlen(s);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7F)
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: space or control character at offset %zu", i);
    }

    const char *p;
    if (surpool__ascii_ncaseeq(s, "ws://", 5)) {
        p = s + 5;
    } else if (surpool__ascii_ncaseeq(s, "wss://", 6)) {
        u->tls = 1;
        p = s + 6;
    } else {
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "invalid URL: it must start with ws:// or wss://");
    }
    const char *end = s + len;
    if (find_char(p, end, '#') != NULL)
        return surpool__seterr(
            err, SURPOOL_ERR_INVALID_ARG, "invalid URL: fragments ('#') are not allowed%s",
            find_char(p, end, '@') != NULL ? " (percent-encode '#' in a password as %23)" : "");

    /* Authority: up to the first '/' or '?'. */
    const char *aend = p;
    while (aend < end && *aend != '/' && *aend != '?')
        aend++;
    int hint = find_char(aend, end, '@') != NULL;

    const char *at = find_char(p, aend, '@');
    const char *host = p;
    if (at != NULL) {
        if (find_char(at + 1, aend, '@') != NULL)
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: more than one '@' (percent-encode '@' in "
                                   "a user name or password as %%40)");
        surpool_err rc = parse_userinfo(p, at, u, err);
        if (rc != SURPOOL_OK)
            return rc;
        host = at + 1;
    }
    surpool_err rc = parse_host(host, aend, hint, u, err);
    if (rc != SURPOOL_OK)
        return rc;

    const char *q = find_char(aend, end, '?');
    const char *pend = q != NULL ? q : end;
    if (aend < pend) {
        rc = parse_path(aend, (size_t)(pend - aend), u, err);
    } else {
        u->path = surpool__strdup(URL_DEFAULT_PATH);
        rc = u->path != NULL
                 ? SURPOOL_OK
                 : surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory parsing the URL");
    }
    if (rc != SURPOOL_OK)
        return rc;
    if (q != NULL)
        rc = parse_query(q + 1, end, u, err);
    return rc;
}

surpool_err surpool__url_parse(const char *s, surpool__url *out, surpool_error *err)
{
    if (out == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "url_parse: out is required");
    memset(out, 0, sizeof(*out));
    surpool_err rc = parse(s, out, err);
    if (rc != SURPOOL_OK)
        surpool__url_free(out);
    return rc;
}

int surpool__url_same_endpoint(const surpool__url *a, const surpool__url *b)
{
    if (a->port != b->port || a->host == NULL || b->host == NULL)
        return 0;
    /* IPv6 literals by value: "::1" and "0:0:0:0:0:0:0:1" are one address.
     * (Only IPv6 hosts contain ':'; the parser checked their form.) */
    unsigned char va[16], vb[16];
    if (strchr(a->host, ':') != NULL && strchr(b->host, ':') != NULL &&
        inet_pton(AF_INET6, a->host, va) == 1 && inet_pton(AF_INET6, b->host, vb) == 1)
        return memcmp(va, vb, sizeof(va)) == 0;
    /* Names ASCII case-insensitively, one root '.' ignored ("db." is "db"). */
    size_t nx = strlen(a->host), ny = strlen(b->host);
    if (nx > 1 && a->host[nx - 1] == '.')
        nx--;
    if (ny > 1 && b->host[ny - 1] == '.')
        ny--;
    if (nx != ny)
        return 0;
    for (size_t i = 0; i < nx; i++) {
        char cx = a->host[i], cy = b->host[i];
        cx = cx >= 'A' && cx <= 'Z' ? (char)(cx - 'A' + 'a') : cx;
        cy = cy >= 'A' && cy <= 'Z' ? (char)(cy - 'A' + 'a') : cy;
        if (cx != cy)
            return 0;
    }
    return 1;
}

void surpool__url_free_list(surpool__url *u, int n)
{
    if (u == NULL)
        return;
    for (int i = 0; i < n; i++)
        surpool__url_free(&u[i]);
    surpool__free(u);
}

/* Parse one element of a host list: the URL rebuilt around it
 * ("scheme" "userinfo@" "host:port" "rest"), so that it is checked exactly as a
 * single-host URL is. The scratch copy may hold the password: wiped. */
static surpool_err parse_element(const char *s, size_t head, const char *user, size_t user_len,
                                 const char *elem, size_t elem_len, const char *rest,
                                 surpool__url *out, surpool_error *err)
{
    size_t rest_len = strlen(rest);
    size_t n = head + user_len + elem_len + rest_len;
    char *buf = surpool__malloc(n + 1);
    if (buf == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory parsing the URL");
    memcpy(buf, s, head);
    memcpy(buf + head, user, user_len);
    memcpy(buf + head + user_len, elem, elem_len);
    memcpy(buf + head + user_len + elem_len, rest, rest_len);
    buf[n] = '\0';
    surpool_err rc = surpool__url_parse(buf, out, err);
    surpool__wipe(buf, n);
    surpool__free(buf);
    return rc;
}

surpool_err surpool__url_parse_list(const char *s, surpool__url **out, int *n,
                                    surpool_error *err)
{
    if (out == NULL || n == NULL)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "url_parse_list: out and n are required");
    *out = NULL;
    *n = 0;
    if (s == NULL || *s == '\0')
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG, "URL is empty");
    size_t head;
    if (surpool__ascii_ncaseeq(s, "ws://", 5))
        head = 5;
    else if (surpool__ascii_ncaseeq(s, "wss://", 6))
        head = 6;
    else {
        surpool__url bad;
        return surpool__url_parse(s, &bad, err); /* fails, with its message */
    }
    const char *end = s + strlen(s);
    const char *p = s + head;
    const char *aend = p;
    while (aend < end && *aend != '/' && *aend != '?' && *aend != '#')
        aend++;
    /* The host list follows the user info's '@' (the last one: more than one
     * is refused by the element parse, with its hint). */
    const char *hosts = p;
    for (const char *q = p; q < aend; q++)
        if (*q == '@')
            hosts = q + 1;
    int count = 1;
    for (const char *q = hosts; q < aend; q++)
        count += *q == ',';
    if (count == 1) {
        surpool__url *u = surpool__calloc(1, sizeof(*u));
        if (u == NULL)
            return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory parsing the URL");
        surpool_err rc = surpool__url_parse(s, u, err);
        if (rc != SURPOOL_OK) {
            surpool__free(u);
            return rc;
        }
        *out = u;
        *n = 1;
        return SURPOOL_OK;
    }
    if (count > SURPOOL_MAX_ENDPOINTS)
        return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                               "invalid URL: %d hosts in the host list, the limit is %d", count,
                               SURPOOL_MAX_ENDPOINTS);
    /* Spaces and control characters first, at their offset in `s` (each
     * element is parsed as a URL rebuilt around it, whose offsets differ). */
    for (const char *q = s; q < end; q++)
        if ((unsigned char)*q <= 0x20 || *q == 0x7F)
            return surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                   "invalid URL: space or control character at offset %zu",
                                   (size_t)(q - s));
    {
        /* The parts every host shares (user info, path, query), checked once
         * around a stand-in host, so that a mistake there is not blamed on
         * host 1. */
        surpool__url probe;
        surpool_err prc =
            parse_element(s, head, p, (size_t)(hosts - p), "h", 1, aend, &probe, err);
        if (prc != SURPOOL_OK)
            return prc;
        surpool__url_free(&probe);
    }
    surpool__url *u = surpool__calloc((size_t)count, sizeof(*u));
    if (u == NULL)
        return surpool__seterr(err, SURPOOL_ERR_NOMEM, "out of memory parsing the URL");
    const char *e = hosts;
    surpool_err rc = SURPOOL_OK;
    int i = 0;
    for (; i < count; i++) {
        const char *comma = find_char(e, aend, ',');
        const char *eend = comma != NULL ? comma : aend;
        if (eend == e) {
            rc = surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                 "invalid URL: host %d of the host list is empty (a stray ',')",
                                 i + 1);
            break;
        }
        surpool_error eerr;
        surpool__error_clear(&eerr);
        rc = parse_element(s, head, p, (size_t)(hosts - p), e, (size_t)(eend - e), aend, &u[i],
                           &eerr);
        if (rc != SURPOOL_OK) {
            if (err != NULL) {
                char prefix[48];
                snprintf(prefix, sizeof(prefix), "host %d of the host list: ", i + 1);
                *err = eerr;
                surpool__error_prefix(err, prefix);
            }
            break;
        }
        for (int j = 0; j < i; j++) {
            if (surpool__url_same_endpoint(&u[j], &u[i])) {
                rc = surpool__seterr(err, SURPOOL_ERR_INVALID_ARG,
                                     "invalid URL: host %d of the host list repeats host %d "
                                     "(same host and port)",
                                     i + 1, j + 1);
                break;
            }
        }
        if (rc != SURPOOL_OK) {
            i++; /* u[i] is parsed: free it too */
            break;
        }
        e = eend + 1;
    }
    if (rc != SURPOOL_OK) {
        surpool__url_free_list(u, i);
        return rc;
    }
    *out = u;
    *n = count;
    return SURPOOL_OK;
}

void surpool__url_free(surpool__url *u)
{
    if (u == NULL)
        return;
    surpool__free(u->host);
    surpool__free(u->path);
    surpool__free(u->user);
    surpool__free_secret(u->pass);
    surpool__free(u->ns);
    surpool__free(u->db);
    surpool__free(u->access);
    memset(u, 0, sizeof(*u));
}
