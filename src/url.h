/*
 * URL parsing for surpool_config.url: ws[s]://[user[:pass]@]host[:port][/path][?ns=..&db=..]
 * Pure (no I/O) so it can be fuzzed.
 */
#ifndef SURPOOL_URL_H
#define SURPOOL_URL_H

#include "internal.h"

/* Longest path (as written, percent-encoded) a URL may have in the upgrade
 * request (ws.c writes it; servers limit their request line too). */
#define SURPOOL__URL_PATH_MAX 2048

typedef struct surpool__url {
    int tls;      /* 1 for wss:// */
    char *host;   /* without brackets for IPv6 literals; never empty */
    int port;     /* 1..65535; default 80 (ws) / 443 (wss) */
    char *path;   /* starts with '/'; default "/rpc" */
    char *user;   /* percent-decoded userinfo, or NULL */
    char *pass;   /* percent-decoded, or NULL; a secret: freed with surpool__free_secret */
    char *ns;     /* query parameter ns, percent-decoded, or NULL */
    char *db;     /* query parameter db, or NULL */
    char *access; /* query parameter ac (record access method), or NULL */
    int format;   /* query parameter format: SURPOOL_WIRE_JSON / _CBOR, or 0 */
} surpool__url;

/* Parse `s` into `out` (zeroed first). Rejects: NULL/empty, a scheme other than
 * ws/wss, an empty host, a bad port, control characters or spaces anywhere,
 * malformed percent escapes, a fragment, unknown query keys, duplicate keys,
 * a format other than json or cbor.
 * Messages never include the password. On error `out` holds nothing.
 * Details: the scheme is case-insensitive; the host is kept as written and is a
 * name ([A-Za-z0-9_-] labels), a strict dotted-quad IPv4, or a bracketed IPv6
 * literal without zone id; a host whose last label is a number (decimal, or
 * 0x and hex) must be a strict dotted quad, so hex, octal and short IPv4 forms
 * ("0x7f000001", "0x7f.1", "127.1") are refused; the port is 1..65535 in
 * decimal; the path is kept percent-encoded, is at most SURPOOL__URL_PATH_MAX
 * bytes and may not contain '@' (almost always an unencoded '/' in a
 * password); user, pass, ns, db and ac are percent-decoded ('+' stays '+') and
 * must be non-empty, free of NUL and valid UTF-8; an empty query ("?") is fine.
 * Messages quote no part of the URL. Returns SURPOOL_ERR_INVALID_ARG or
 * SURPOOL_ERR_NOMEM. */
surpool_err surpool__url_parse(const char *s, surpool__url *out, surpool_error *err);
void surpool__url_free(surpool__url *u); /* frees members, wipes pass; NULL ok */

/* Several endpoints, as libpq's multi-host strings:
 *
 *   ws[s]://[user[:pass]@]host[:port][,host[:port]]...[/path][?query]
 *
 * One scheme, one user info, one path and one query for all of them; each
 * host:port element is checked as surpool__url_parse() checks a host (a port
 * left out is the scheme's default, per element). On success *out is a new
 * array of *n (1..SURPOOL_MAX_ENDPOINTS) URLs, each a full single-host URL with
 * its own copy of the shared parts, in the order written; free it with
 * surpool__url_free_list(). Errors (SURPOOL_ERR_INVALID_ARG, message naming
 * the element by its 1-based position, never quoting the URL): everything
 * surpool__url_parse() refuses; an empty element (",," or a leading or
 * trailing ','); more than SURPOOL_MAX_ENDPOINTS elements; the same host
 * (see surpool__url_same_endpoint) and port twice. A mistake in a part the
 * hosts share (user info, path, query) is reported without naming a host;
 * offsets in messages are offsets in `s`. NOMEM. */
surpool_err surpool__url_parse_list(const char *s, surpool__url **out, int *n,
                                    surpool_error *err);
void surpool__url_free_list(surpool__url *u, int n); /* NULL ok */

/* Do two endpoints name the same host and port? Names compare ASCII
 * case-insensitively with one root '.' ignored ("db." is "db"), IPv6 literals
 * by value ("::1" is "0:0:0:0:0:0:0:1"). No resolving: two names of one
 * address are two nodes. */
int surpool__url_same_endpoint(const surpool__url *a, const surpool__url *b);

#endif
