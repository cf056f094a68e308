/*
 * soak: a bounded mixed workload against the test server (tests/server) with
 * faults injected all along, checking invariants as it goes.
 *
 *   soak [--seconds N] [--lease-threads N] [--pool-threads N] [--seed N]
 *        [--progress-every S]
 *
 * Workload: lease workers (acquire, then a query / CRUD / let+query /
 * multi-statement query, sometimes a discard, release), pool-level workers
 * (surpool_query on the shared lane) and bursts of 30 short-lived threads.
 * Every successful call is checked to carry its own result.
 *
 * Faults, through POST /control with forMs (the server reverts by itself):
 * drop-every N, reply delays with jitter, hostile modes for a short window
 * (malformed, truncate, wrong-id, duplicate-id, no-id, binary, slow,
 * close-mid-reply), no-upgrade, refuse; and every ~20 s a kill -9 of the
 * server followed by a restart on the same port. ("huge" is left out: 80 MiB
 * replies to every worker would measure the loopback, not the pool.)
 *
 * Invariants: the stats balance at every progress line; no connection held by
 * two callers at once; no call running far past its deadline; every result is
 * the caller's own; at the end every thread joins, the pool recovers by itself
 * (acquire + query), no lease is lost, and no file descriptor is left behind.
 * Exit status 0 when every invariant held, 1 otherwise, 2 on a usage or setup
 * error.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fault_util.h"
#include "harness.h"
#include "surpool.h"

#define MAX_THREADS 64
#define BURST 30
#define STUCK_MS (30000L * FU_SLOW) /* far beyond any deadline used here */

static const char *const g_server_args[] = {"--user", "root", "--pass", "root", NULL};

/* ------------------------------------------------------------------------- */
/* Shared state                                                               */
/* ------------------------------------------------------------------------- */

static surpool_pool *g_pool;
static atomic_int g_stop;
static fu_tracker g_tracker;
static atomic_long g_calls, g_ok, g_err;
static atomic_long g_codes[32];
static atomic_long g_wrong;
static char g_wrong_msg[256];
static pthread_mutex_t g_msg_mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_long g_events[32];
static atomic_long g_bursts;

/* Fault kinds. */
enum {
    F_DROP,
    F_DELAY,
    F_MALFORMED,
    F_TRUNCATE,
    F_WRONG_ID,
    F_DUP_ID,
    F_NO_ID,
    F_BINARY,
    F_SLOW,
    F_CLOSE_MID,
    F_NO_UPGRADE,
    F_REFUSE,
    F_KILL9,
    F_COUNT
};
static const char *const g_fault_names[F_COUNT] = {
    "drop-every",   "delay+jitter", "malformed",        "truncate", "wrong-id",
    "duplicate-id", "no-id",        "binary",           "slow",     "close-mid-reply",
    "no-upgrade",   "refuse",       "kill -9 + restart"};
static const char *const g_modes[F_COUNT] = {
    NULL,           NULL,     "malformed", "truncate", "wrong-id",
    "duplicate-id", "no-id",  "binary",    "slow",     "close-mid-reply",
    "no-upgrade",   "refuse", NULL};
static atomic_long g_faults[F_COUNT];
static atomic_long g_control_failures;

/* Per-thread "in a call since" (ms, 0 when idle), for the stuck-call check. */
static atomic_llong g_busy_since[MAX_THREADS + BURST + 4];
static atomic_int g_stuck;

/* Invariant checks made and failed. */
static long g_balance_checks, g_balance_failures;
static char g_balance_msg[256];

/* The server (owned by the fault thread while it runs). */
static test_server g_srv;
static int g_port;

/* ------------------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

static long rng_range(uint64_t *s, long lo, long hi)
{
    return lo + (long)(rng_next(s) % (uint64_t)(hi - lo + 1));
}

static void count(surpool_err rc)
{
    atomic_fetch_add(&g_calls, 1);
    atomic_fetch_add(&g_codes[(int)rc & 31], 1);
    if (rc == SURPOOL_OK)
        atomic_fetch_add(&g_ok, 1);
    else
        atomic_fetch_add(&g_err, 1);
}

static void wrong(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void wrong(const char *fmt, ...)
{
    if (atomic_fetch_add(&g_wrong, 1) > 0)
        return;
    pthread_mutex_lock(&g_msg_mu);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_wrong_msg, sizeof(g_wrong_msg), fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&g_msg_mu);
}

static json_t *stmt(json_t *out, size_t i)
{
    return json_object_get(json_array_get(out, i), "result");
}

static void on_event(void *ud, const surpool_event *ev)
{
    (void)ud;
    atomic_fetch_add(&g_events[(int)ev->type & 31], 1);
}

/* ------------------------------------------------------------------------- */
/* Workers                                                                    */
/* ------------------------------------------------------------------------- */

typedef struct worker {
    int slot;
    uint64_t rng;
    int pool_level;
    int once; /* burst: one round then exit */
} worker;

static void busy(int slot, int on)
{
    atomic_store(&g_busy_since[slot], on ? fu_now_ms() : 0);
}

/* One operation on a lease; returns the last call's code. */
static surpool_err lease_op(worker *w, surpool_conn *c)
{
    surpool_error err;
    json_t *out = NULL;
    long n = rng_range(&w->rng, 0, 1000000);
    surpool_err rc;
    switch (rng_range(&w->rng, 0, 3)) {
    case 0: { /* query with a variable */
        json_t *vars = json_pack("{s:I}", "n", (json_int_t)n);
        rc = surpool_conn_query(c, "RETURN $n", vars, &out, &err);
        json_decref(vars);
        count(rc);
        if (rc == SURPOOL_OK && json_integer_value(stmt(out, 0)) != n)
            wrong("RETURN $n (n=%ld) answered %lld", n,
                  (long long)json_integer_value(stmt(out, 0)));
        break;
    }
    case 1: { /* CRUD on a record of our own */
        char id[64];
        snprintf(id, sizeof(id), "soak:w%d_%ld", w->slot, n);
        json_t *data = json_pack("{s:I}", "v", (json_int_t)n);
        rc = surpool_conn_create(c, id, data, &out, &err);
        json_decref(data);
        count(rc);
        if (rc != SURPOOL_OK)
            break;
        json_decref(out);
        out = NULL;
        rc = surpool_conn_select(c, id, &out, &err);
        count(rc);
        if (rc == SURPOOL_OK) {
            json_t *rec = json_is_array(out) ? json_array_get(out, 0) : out;
            if (json_integer_value(json_object_get(rec, "v")) != n)
                wrong("select %s: expected v=%ld", id, n);
        }
        json_decref(out);
        out = NULL;
        if (rc != SURPOOL_OK)
            break;
        rc = surpool_conn_delete(c, id, &out, &err);
        count(rc);
        break;
    }
    case 2: { /* a session variable: the lease becomes dirty (reset on release) */
        json_t *v = json_integer(n);
        rc = surpool_conn_let(c, "soak_x", v, &err);
        json_decref(v);
        count(rc);
        if (rc != SURPOOL_OK)
            break;
        rc = surpool_conn_query(c, "RETURN $soak_x", NULL, &out, &err);
        count(rc);
        if (rc == SURPOOL_OK && json_integer_value(stmt(out, 0)) != n)
            wrong("RETURN $soak_x (let %ld) answered %lld", n,
                  (long long)json_integer_value(stmt(out, 0)));
        break;
    }
    default: { /* two statements, and a clean lease must not see $soak_x */
        json_t *vars = json_pack("{s:I}", "n", (json_int_t)n);
        rc = surpool_conn_query(c, "RETURN $n; RETURN $n + 1", vars, &out, &err);
        json_decref(vars);
        count(rc);
        if (rc == SURPOOL_OK && (json_integer_value(stmt(out, 0)) != n ||
                                 json_integer_value(stmt(out, 1)) != n + 1))
            wrong("RETURN $n; RETURN $n + 1 (n=%ld): wrong results", n);
        break;
    }
    }
    json_decref(out);
    return rc;
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    do {
        surpool_error err;
        if (w->pool_level) {
            long n = rng_range(&w->rng, 0, 1000000);
            json_t *vars = json_pack("{s:I}", "n", (json_int_t)n);
            json_t *out = NULL;
            busy(w->slot, 1);
            surpool_err rc = surpool_query(g_pool, "RETURN $n", vars, &out, &err);
            busy(w->slot, 0);
            count(rc);
            if (rc == SURPOOL_OK && json_integer_value(stmt(out, 0)) != n)
                wrong("surpool_query RETURN $n (n=%ld) answered %lld", n,
                      (long long)json_integer_value(stmt(out, 0)));
            json_decref(out);
            json_decref(vars);
            if (rc != SURPOOL_OK)
                fu_sleep_ms(5);
            continue;
        }
        surpool_conn *c = NULL;
        busy(w->slot, 1);
        surpool_err rc = surpool_pool_acquire(g_pool, 3000, &c, &err);
        count(rc);
        if (rc == SURPOOL_OK) {
            fu_track_acquire(&g_tracker, c);
            int ops = (int)rng_range(&w->rng, 1, 3);
            for (int i = 0; i < ops; i++) {
                surpool_err orc = lease_op(w, c);
                if (orc != SURPOOL_OK && orc != SURPOOL_ERR_SERVER)
                    break; /* broken: the next call would only say so */
            }
            if (rng_range(&w->rng, 0, 50) == 0)
                surpool_conn_discard(c);
            fu_track_release(&g_tracker, c);
            surpool_conn_release(c);
        }
        busy(w->slot, 0);
        if (rc != SURPOOL_OK)
            fu_sleep_ms(5);
    } while (!w->once && !atomic_load(&g_stop));
    return NULL;
}

/* Bursts: BURST threads at once, every few seconds. */
static void *burst_main(void *arg)
{
    uint64_t rng = *(uint64_t *)arg;
    int base = MAX_THREADS;
    while (!atomic_load(&g_stop)) {
        long wait = rng_range(&rng, 3000, 6000);
        for (long t = 0; t < wait && !atomic_load(&g_stop); t += 50)
            fu_sleep_ms(50);
        if (atomic_load(&g_stop))
            break;
        pthread_t th[BURST];
        worker ws[BURST];
        int started = 0;
        for (int i = 0; i < BURST; i++) {
            ws[i].slot = base + i;
            ws[i].rng = rng_next(&rng) | 1;
            ws[i].pool_level = i % 5 == 0;
            ws[i].once = 1;
            if (pthread_create(&th[i], NULL, worker_main, &ws[i]) == 0)
                started++;
            else
                break;
        }
        for (int i = 0; i < started; i++) {
            if (fu_join(th[i], 60) != 0) {
                fprintf(stderr, "soak: a burst thread hung\n");
                atomic_fetch_add(&g_stuck, 1);
                for (;;) /* its worker record lives on this stack: never return */
                    fu_sleep_ms(1000);
            }
        }
        atomic_fetch_add(&g_bursts, 1);
    }
    return NULL;
}

/* ------------------------------------------------------------------------- */
/* Faults                                                                     */
/* ------------------------------------------------------------------------- */

static int start_server(int port)
{
    return harness_restart(&g_srv, "server.mjs", port, g_server_args);
}

/* Returns 1 when the server took the fault, so only injected faults count. */
static int control(const char *body)
{
    if (harness_control(&g_srv, body) == 0)
        return 1;
    atomic_fetch_add(&g_control_failures, 1);
    return 0;
}

static atomic_int g_server_lost; /* a restart failed: nothing more to test against */

static void *fault_main(void *arg)
{
    uint64_t rng = *(uint64_t *)arg;
    int64_t last_kill = fu_now_ms();
    int cycle[F_KILL9], next_in_cycle = F_KILL9;
    for (int i = 0; i < F_KILL9; i++)
        cycle[i] = i;
    while (!atomic_load(&g_stop)) {
        long wait = rng_range(&rng, 1500, 4000);
        for (long t = 0; t < wait && !atomic_load(&g_stop); t += 50)
            fu_sleep_ms(50);
        if (atomic_load(&g_stop))
            break;
        /* Every kind in turn, in a fresh random order each cycle, so that even a
         * short run sees each; a kill -9 every ~20 s on top. */
        if (next_in_cycle == F_KILL9) {
            for (int i = F_KILL9 - 1; i > 0; i--) {
                int j = (int)rng_range(&rng, 0, i), t = cycle[i];
                cycle[i] = cycle[j];
                cycle[j] = t;
            }
            next_in_cycle = 0;
        }
        int kind;
        if (fu_now_ms() - last_kill > 20000)
            kind = F_KILL9;
        else
            kind = cycle[next_in_cycle++];
        char body[160];
        int injected = 1;
        switch (kind) {
        case F_DROP:
            snprintf(body, sizeof(body), "{\"dropEvery\":%ld,\"forMs\":%ld}",
                     rng_range(&rng, 3, 12), rng_range(&rng, 500, 2000));
            injected = control(body);
            break;
        case F_DELAY:
            snprintf(
                body, sizeof(body), "{\"delayMs\":%ld,\"delayJitterMs\":%ld,\"forMs\":%ld}",
                rng_range(&rng, 0, 50), rng_range(&rng, 0, 300), rng_range(&rng, 1000, 3000));
            injected = control(body);
            break;
        case F_KILL9:
            harness_kill9(&g_srv);
            fu_sleep_ms(rng_range(&rng, 300, 1500));
            if (start_server(g_port) != 0) {
                fprintf(stderr, "soak: cannot restart the server on port %d\n", g_port);
                atomic_store(&g_server_lost, 1);
                return NULL;
            }
            last_kill = fu_now_ms();
            break;
        default:
            snprintf(body, sizeof(body), "{\"mode\":\"%s\",\"forMs\":%ld}", g_modes[kind],
                     kind == F_REFUSE ? rng_range(&rng, 300, 1000)
                                      : rng_range(&rng, 300, 1500));
            injected = control(body);
            break;
        }
        if (injected)
            atomic_fetch_add(&g_faults[kind], 1);
    }
    return NULL;
}

/* ------------------------------------------------------------------------- */
/* Monitor                                                                    */
/* ------------------------------------------------------------------------- */

static void check_balance(const char *when)
{
    surpool_stats st;
    g_balance_checks++;
    if (!fu_stats_balanced(g_pool, &st)) {
        if (g_balance_failures++ == 0)
            snprintf(g_balance_msg, sizeof(g_balance_msg),
                     "%s: created %" PRIu64 " destroyed %" PRIu64 " idle %d in_use %d "
                     "connecting %d total %d",
                     when, st.created, st.destroyed, st.idle, st.in_use, st.connecting,
                     st.total);
    }
}

static void check_stuck(int nslots)
{
    int64_t now = fu_now_ms();
    for (int i = 0; i < nslots; i++) {
        long long since = atomic_load(&g_busy_since[i]);
        if (since != 0 && now - since > STUCK_MS) {
            if (atomic_fetch_add(&g_stuck, 1) == 0)
                fprintf(stderr, "soak: thread slot %d in one call for %lld ms\n", i,
                        (long long)(now - since));
            atomic_store(&g_busy_since[i], 0); /* report once */
        }
    }
}

static void progress(int64_t t0)
{
    surpool_stats st;
    surpool_pool_stats(g_pool, &st);
    long faults = 0;
    for (int i = 0; i < F_COUNT; i++)
        faults += atomic_load(&g_faults[i]);
    printf("[%5.1fs] calls %ld ok %ld err %ld faults %ld | pool total %d idle %d in_use %d "
           "waiters %d created %" PRIu64 " destroyed %" PRIu64 " breaker %s\n",
           (double)(fu_now_ms() - t0) / 1000.0, atomic_load(&g_calls), atomic_load(&g_ok),
           atomic_load(&g_err), faults, st.total, st.idle, st.in_use, st.waiters, st.created,
           st.destroyed, st.breaker_open ? "OPEN" : "closed");
    fflush(stdout);
}

/* ------------------------------------------------------------------------- */

static int g_bad; /* invariants broken */

static void inv(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void inv(int ok, const char *fmt, ...)
{
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    g_bad += !ok;
    printf("  %-60s %s\n", what, ok ? "OK" : "BROKEN");
}

static void usage(void)
{
    fprintf(stderr, "usage: soak [--seconds N] [--lease-threads N] [--pool-threads N] "
                    "[--seed N] [--progress-every S]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    long seconds = 300, progress_every = 5;
    int lease_threads = 8, pool_threads = 2;
    uint64_t seed = (uint64_t)time(NULL);
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (strcmp(argv[i], "--seconds") == 0)
            seconds = atol(argv[++i]);
        else if (strcmp(argv[i], "--lease-threads") == 0)
            lease_threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--pool-threads") == 0)
            pool_threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seed") == 0)
            seed = strtoull(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--progress-every") == 0)
            progress_every = atol(argv[++i]);
        else
            usage();
    }
    if (seconds < 1 || lease_threads < 1 || pool_threads < 0 ||
        lease_threads + pool_threads > MAX_THREADS || progress_every < 1)
        usage();
    signal(SIGPIPE, SIG_IGN);

    if (start_server(0) != 0) {
        fprintf(stderr, "soak: cannot start tests/server/server.mjs (did npm ci run?)\n");
        return 2;
    }
    g_port = g_srv.port;
    int fds_start = fu_count_fds();

    surpool_config cfg;
    surpool_config_init(&cfg);
    char url[128];
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/rpc", g_port);
    cfg.url = url;
    cfg.user = "root";
    cfg.pass = "root";
    cfg.ns = "soak";
    cfg.db = "soak";
    cfg.min_connections = 2;
    cfg.max_connections = 12;
    cfg.acquire_timeout_ms = 3000;
    cfg.connect_timeout_ms = 1500;
    cfg.request_timeout_ms = 1500;
    cfg.reconnect_backoff_min_ms = 20;
    cfg.reconnect_backoff_max_ms = 500;
    cfg.max_message_bytes = 1024 * 1024;
    cfg.keepalive_interval_ms = 1000;
    cfg.validation_idle_ms = 500;
    cfg.validation_timeout_ms = 1000;
    cfg.max_lifetime_ms = 8000;
    cfg.idle_timeout_ms = 4000;
    cfg.maintenance_interval_ms = 200;
    cfg.on_event = on_event;
    surpool_error err;
    if (surpool_pool_create(&cfg, &g_pool, &err) != SURPOOL_OK) {
        fprintf(stderr, "soak: create: %s\n", err.message);
        harness_stop(&g_srv);
        return 2;
    }
    fu_tracker_init(&g_tracker);

    printf("soak: %ld s, %d lease threads, %d pool-level threads, bursts of %d, seed %" PRIu64
           ", server port %d\n",
           seconds, lease_threads, pool_threads, BURST, seed, g_port);
    int64_t t0 = fu_now_ms();
    uint64_t rng = seed * UINT64_C(0x9e3779b97f4a7c15) | 1;
    int nworkers = lease_threads + pool_threads;
    worker *ws = calloc((size_t)nworkers, sizeof(*ws));
    pthread_t th[MAX_THREADS], burst_th, fault_th;
    for (int i = 0; i < nworkers; i++) {
        ws[i].slot = i;
        ws[i].rng = rng_next(&rng) | 1;
        ws[i].pool_level = i >= lease_threads;
        if (pthread_create(&th[i], NULL, worker_main, &ws[i]) != 0) {
            fprintf(stderr, "soak: cannot start threads\n");
            return 2;
        }
    }
    uint64_t burst_seed = rng_next(&rng) | 1, fault_seed = rng_next(&rng) | 1;
    pthread_create(&burst_th, NULL, burst_main, &burst_seed);
    pthread_create(&fault_th, NULL, fault_main, &fault_seed);

    int64_t end = t0 + seconds * 1000, next_progress = t0 + progress_every * 1000;
    while (fu_now_ms() < end && !atomic_load(&g_server_lost)) {
        fu_sleep_ms(100);
        check_stuck(MAX_THREADS + BURST);
        if (fu_now_ms() >= next_progress) {
            check_balance("during the run");
            progress(t0);
            next_progress += progress_every * 1000;
        }
    }

    /* Stop, join (bounded). */
    atomic_store(&g_stop, 1);
    int unjoined = 0;
    for (int i = 0; i < nworkers; i++)
        unjoined += fu_join(th[i], 60) != 0;
    unjoined += fu_join(burst_th, 90) != 0;
    unjoined += fu_join(fault_th, 60) != 0;
    progress(t0);

    /* Recovery: faults off, the pool heals by itself. */
    int recovered = 0;
    if (!atomic_load(&g_server_lost)) {
        harness_control(&g_srv, "{\"reset\":true}");
        int64_t rend = fu_now_ms() + 30000L * FU_SLOW;
        while (!recovered && fu_now_ms() < rend) {
            surpool_conn *c = NULL;
            if (surpool_pool_acquire(g_pool, 2000, &c, &err) == SURPOOL_OK) {
                json_t *out = NULL;
                recovered = surpool_conn_query(c, "RETURN 1", NULL, &out, &err) == SURPOOL_OK;
                json_decref(out);
                surpool_conn_release(c);
            }
            if (!recovered)
                fu_sleep_ms(50);
        }
    }
    surpool_stats st;
    int lost_leases = -1;
    if (unjoined == 0) {
        check_balance("at the end");
        fu_settle_leases(g_pool, &st);
        lost_leases = st.in_use - st.lane_connections;
    } else {
        surpool_pool_stats(g_pool, &st);
    }
    int fds_end = -1;
    if (unjoined == 0) {
        surpool_pool_destroy(g_pool);
        fds_end = fu_count_fds();
    }

    /* ---- The table ---- */
    long faults = 0;
    for (int i = 0; i < F_COUNT; i++)
        faults += atomic_load(&g_faults[i]);
    printf("\n== soak summary: %.1f s, seed %" PRIu64 " ==\n",
           (double)(fu_now_ms() - t0) / 1000.0, seed);
    printf("%-48s %12ld\n", "calls (acquire + RPC)", atomic_load(&g_calls));
    printf("%-48s %12ld\n", "  ok", atomic_load(&g_ok));
    printf("%-48s %12ld\n", "  errors", atomic_load(&g_err));
    printf("%-48s %12ld\n", "bursts", atomic_load(&g_bursts));
    printf("errors by code:\n");
    for (int i = 1; i < 32; i++)
        if (atomic_load(&g_codes[i]) > 0)
            printf("  %-46s %12ld\n", surpool_strerror((surpool_err)i),
                   atomic_load(&g_codes[i]));
    printf("faults injected: %ld\n", faults);
    for (int i = 0; i < F_COUNT; i++)
        if (atomic_load(&g_faults[i]) > 0)
            printf("  %-46s %12ld\n", g_fault_names[i], atomic_load(&g_faults[i]));
    if (atomic_load(&g_control_failures) > 0)
        printf("  %-46s %12ld\n", "(/control unreachable)", atomic_load(&g_control_failures));
    printf("pool: created %" PRIu64 " destroyed %" PRIu64 " reconnects %" PRIu64
           " broken %" PRIu64 " connect failures %" PRIu64 " breaker opens %" PRIu64
           " resets %" PRIu64 "\n      validations %" PRIu64 " (failed %" PRIu64
           ") lifetime retirements %" PRIu64 " idle retirements %" PRIu64 " requests %" PRIu64
           "\n",
           st.created, st.destroyed, st.reconnects, st.broken, st.connect_failures,
           st.breaker_opens, st.resets, st.validations, st.validation_failures,
           st.lifetime_retirements, st.idle_retirements, st.requests);

    printf("invariants:\n");
    inv(faults > 0, "faults were injected (%ld)", faults);
    inv(atomic_load(&g_ok) > 0, "calls succeeded between faults (%ld)", atomic_load(&g_ok));
    inv(g_balance_failures == 0, "stats balance (%ld checks)", g_balance_checks);
    if (g_balance_failures > 0)
        printf("    first failure: %s\n", g_balance_msg);
    inv(g_tracker.double_lease == 0, "no connection leased twice (%d seen)",
        g_tracker.double_lease);
    inv(atomic_load(&g_wrong) == 0, "every result was the caller's own (%ld wrong)",
        atomic_load(&g_wrong));
    if (atomic_load(&g_wrong) > 0)
        printf("    first: %s\n", g_wrong_msg);
    inv(atomic_load(&g_stuck) == 0, "no call stuck past %ld ms (%d)", (long)STUCK_MS,
        atomic_load(&g_stuck));
    inv(unjoined == 0, "all threads joined (%d not)", unjoined);
    inv(!atomic_load(&g_server_lost), "server restarted after every kill -9");
    inv(recovered, "pool recovered by itself after the faults");
    inv(lost_leases == 0, "no lease lost (in_use - lane = %d)", lost_leases);
    inv(fds_end >= 0 && fds_end <= fds_start + 2, "fd count (start %d, end %d)", fds_start,
        fds_end);
    printf("result: %s\n", g_bad == 0 ? "PASS" : "FAIL");

    if (unjoined != 0) {
        fflush(stdout);
        _exit(1); /* threads still run inside the pool: do not tear it down */
    }
    fu_tracker_destroy(&g_tracker);
    harness_stop(&g_srv);
    free(ws);
    return g_bad == 0 ? 0 : 1;
}
