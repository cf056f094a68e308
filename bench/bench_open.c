/*
 * bench_open: how long a pool takes to open N connections (create with
 * min_connections = max_connections = N, every connect in parallel), against
 * the real core (tests/server/server.mjs), signed in as root. With one sign-in
 * per pool (docs/lifecycle.md, "Authentication") a pool of 50 should be ready
 * in a small multiple of a pool of 1; with one password check per connection
 * it pays the server's slow hash 50 times.
 *
 * Usage: bench_open --url URL [--conns N] [--runs 5] [--user root --pass root]
 * Output: one JSON object per N on stdout (median and min of the runs, ms).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "surpool.h"

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    const char *url = bc_arg(argc, argv, "--url", NULL);
    long conns = bc_arg_long(argc, argv, "--conns", 50);
    long runs = bc_arg_long(argc, argv, "--runs", 5);
    if (url == NULL || conns < 1 || conns > 1000 || runs < 1 || runs > 100) {
        fprintf(stderr,
                "usage: bench_open --url URL [--conns N] [--runs R] [--user U --pass P]\n");
        return 2;
    }
    int64_t t[100];
    for (long r = 0; r < runs; r++) {
        surpool_config cfg;
        surpool_config_init(&cfg);
        cfg.url = url;
        cfg.user = bc_arg(argc, argv, "--user", "root");
        cfg.pass = bc_arg(argc, argv, "--pass", "root");
        cfg.min_connections = (int)conns;
        cfg.max_connections = (int)conns;
        cfg.max_concurrent_connects = (int)conns;
        cfg.shared_connections = 0;
        cfg.connect_timeout_ms = 60000;
        surpool_pool *p = NULL;
        surpool_error err;
        int64_t t0 = bc_now_ns();
        if (surpool_pool_create(&cfg, &p, &err) != SURPOOL_OK) {
            fprintf(stderr, "bench_open: create: %s\n", err.message);
            return 1;
        }
        t[r] = bc_now_ns() - t0;
        surpool_pool_destroy(p);
    }
    qsort(t, (size_t)runs, sizeof(t[0]), cmp_i64);
    printf(
        "{\"bench\":\"open\",\"conns\":%ld,\"runs\":%ld,\"median_ms\":%.1f,\"min_ms\":%.1f}\n",
        conns, runs, (double)t[runs / 2] / 1e6, (double)t[0] / 1e6);
    return 0;
}
