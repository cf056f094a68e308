/*
 * Pool set-up shared by the benches that talk to a server: the connection
 * arguments (--url, --user, --pass, --ns, --db) and a quiet config.
 */
#ifndef SURPOOL_BENCH_SURPOOL_H
#define SURPOOL_BENCH_SURPOOL_H

#include <string.h>

#include "bench_common.h"
#include "surpool.h"

typedef struct bench_target {
    const char *url;
    const char *user; /* NULL: no signin (the null server) */
    const char *pass;
    const char *ns;
    const char *db;
} bench_target;

static inline void bench_target_from_args(bench_target *t, int argc, char **argv)
{
    t->url = bc_arg(argc, argv, "--url", NULL);
    t->user = bc_arg(argc, argv, "--user", NULL);
    t->pass = bc_arg(argc, argv, "--pass", NULL);
    t->ns = bc_arg(argc, argv, "--ns", NULL);
    t->db = bc_arg(argc, argv, "--db", NULL);
    if (t->url == NULL) {
        bc_log("usage: %s --url ws://127.0.0.1:PORT/rpc [--user U --pass P --ns N --db D]",
               argv[0]);
        exit(2);
    }
}

/* Defaults, plus the target; sizes are the caller's. */
static inline void bench_config(surpool_config *cfg, const bench_target *t)
{
    surpool_config_init(cfg);
    cfg->url = t->url;
    cfg->user = t->user;
    cfg->pass = t->pass;
    cfg->ns = t->ns;
    cfg->db = t->db;
    cfg->acquire_timeout_ms = 120000;
    cfg->request_timeout_ms = 120000;
    cfg->connect_timeout_ms = 20000;
}

/* A comma-separated list of integers ("1,8,64"). Returns the count. */
static inline int bench_int_list(const char *s, int *out, int cap)
{
    int n = 0;
    while (s != NULL && *s != '\0' && n < cap) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s)
            break;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

#endif
