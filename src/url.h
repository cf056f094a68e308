/*
 * URL parsing for surpool_config.url: ws[s]://[user[:pass]@]host[:port][/path][?ns=..&db=..]
 * Pure (no I/O) so it can be fuzzed.
 */
#ifndef SURPOOL_URL_H
#define SURPOOL_URL_H

#include "internal.h"

typedef struct surpool__url {
    int tls;     /* 1 for wss:// */
    char *host;  /* without brackets for IPv6 literals; never empty */
    int port;    /* 1..65535; default 80 (ws) / 443 (wss) */
    char *path;  /* starts with '/'; default "/rpc" */
    char *user;  /* percent-decoded userinfo, or NULL */
    char *pass;  /* percent-decoded, or NULL; a secret: freed with surpool__free_secret */
    char *ns;    /* query parameter ns, percent-decoded, or NULL */
    char *db;    /* query parameter db, or NULL */
    char *access; /* query parameter ac (record access method), or NULL */
} surpool__url;

/* Parse `s` into `out` (zeroed first). Rejects: NULL/empty, a scheme other than
 * ws/wss, an empty host, a bad port, control characters or spaces anywhere,
 * malformed percent escapes, a fragment, unknown query keys, duplicate keys.
 * Messages never include the password. On error `out` holds nothing. */
surpool_err surpool__url_parse(const char *s, surpool__url *out, surpool_error *err);
void surpool__url_free(surpool__url *u); /* frees members, wipes pass; NULL ok */

#endif
