/*
 * bench_mem: what one large result costs in client memory.
 *
 * One process per measurement (the script runs it once per size), so the
 * process's peak RSS (getrusage ru_maxrss, a high-water mark for the whole
 * process) is that result's:
 *  1. a pool of one connection (no lane, no pings) against
 *     bench/canned_server.mjs; one small warm-up query ("big 1000");
 *  2. RSS before (/proc/self/statm) and ru_maxrss before;
 *  3. surpool_conn_query("big N"): the server answers with an N-byte reply of
 *     rows (prebuilt, so the server's time is one copy);
 *  4. ru_maxrss after (the peak), RSS while the result is held, RSS after
 *     json_decref.
 * peak_over_payload = (peak - RSS before) / N: the issue-12 target is <= 3.
 * held_over_payload = (RSS holding the result - RSS before) / N.
 * If ru_maxrss did not grow during the call the peak belongs to something
 * earlier and `peak_in_call` is 0 (the ratio is then an upper bound).
 *
 * --raw takes the result through surpool_conn_query_raw() instead (the bytes
 * of the reply's result, no json_t tree; docs/raw.md): "held" is then the
 * raw result. Run once per mode (each its own process: the peak is the
 * process's); `mode` in the JSON line says which.
 *
 * Usage: bench_mem --url URL [--bytes 50000000] [--raw]
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

#include "bench_common.h"
#include "bench_surpool.h"
#include "surpool.h"

static long maxrss_bytes(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss * 1024L; /* Linux: kilobytes */
}

int main(int argc, char **argv)
{
    bench_target tgt;
    bench_target_from_args(&tgt, argc, argv);
    long bytes = bc_arg_long(argc, argv, "--bytes", 50000000);
    int raw_mode = bc_flag(argc, argv, "--raw");

    surpool_config cfg;
    bench_config(&cfg, &tgt);
    cfg.min_connections = 1;
    cfg.max_connections = 1;
    cfg.shared_connections = 0;
    cfg.idle_timeout_ms = 0;
    cfg.validation_idle_ms = -1;
    cfg.keepalive_interval_ms = 0;
    cfg.max_message_bytes = (size_t)bytes * 2 + 1024 * 1024;
    surpool_pool *pool = NULL;
    surpool_conn *c = NULL;
    surpool_error err;
    if (surpool_pool_create(&cfg, &pool, &err) != SURPOOL_OK ||
        surpool_pool_acquire(pool, -1, &c, &err) != SURPOOL_OK) {
        bc_log("bench_mem: pool: %s", err.message);
        return 1;
    }
    json_t *out = NULL;
    if (surpool_conn_query(c, "big 1000", NULL, &out, &err) != SURPOOL_OK) {
        bc_log("bench_mem: warm-up query: %s", err.message);
        return 1;
    }
    json_decref(out);
    out = NULL;

    char sql[64];
    snprintf(sql, sizeof(sql), "big %ld", bytes);
    long rss0 = bc_rss_bytes();
    long max0 = maxrss_bytes();
    surpool_raw *raw = NULL;
    int64_t t0 = bc_now_ns();
    surpool_err rc = raw_mode ? surpool_conn_query_raw(c, sql, NULL, &raw, &err)
                              : surpool_conn_query(c, sql, NULL, &out, &err);
    int64_t t1 = bc_now_ns();
    long max1 = maxrss_bytes();
    long rss_held = bc_rss_bytes();
    if (rc != SURPOOL_OK) {
        bc_log("bench_mem: query \"%s\": %s: %s", sql, surpool_strerror(rc), err.message);
        return 1;
    }
    size_t rows = 0; /* counted on the tree only: the raw path builds none */
    json_t *stmt = json_array_get(out, 0);
    json_t *res = stmt != NULL ? json_object_get(stmt, "result") : NULL;
    if (json_is_array(res))
        rows = json_array_size(res);
    size_t raw_size = surpool_raw_size(raw);
    json_decref(out);
    surpool_raw_free(raw);
    long rss_freed = bc_rss_bytes();

    bc_json_begin("mem");
    bc_json_str("mode", raw_mode ? "raw" : "json_t");
    bc_json_int("payload_bytes", bytes);
    bc_json_int("raw_result_bytes", (long long)raw_size);
    bc_json_int("rows", (long long)rows);
    bc_json_num("call_ms", (double)(t1 - t0) / 1e6);
    bc_json_int("rss_before_bytes", rss0);
    bc_json_int("maxrss_before_bytes", max0);
    bc_json_int("peak_rss_bytes", max1);
    bc_json_int("peak_in_call", max1 > max0);
    bc_json_int("rss_held_bytes", rss_held);
    bc_json_int("rss_after_free_bytes", rss_freed);
    bc_json_num("peak_over_payload", (double)(max1 - rss0) / (double)bytes);
    bc_json_num("held_over_payload", (double)(rss_held - rss0) / (double)bytes);
    bc_json_end();
    bc_log("bench_mem (%s): %ld bytes, %zu rows in %.0f ms: RSS %ld MiB before, peak %ld MiB "
           "(%.2fx the payload above the baseline), %ld MiB held, %ld MiB after free",
           raw_mode ? "raw" : "json_t", bytes, rows, (double)(t1 - t0) / 1e6, rss0 >> 20,
           max1 >> 20, (double)(max1 - rss0) / (double)bytes, rss_held >> 20, rss_freed >> 20);

    surpool_conn_release(c);
    surpool_pool_destroy(pool);
    return 0;
}
