/*
 * burst: the scenario that makes "release → notify one waiter" pools lose
 * wake-ups. B callers start at once on a pool of M connections, each leases a
 * connection, runs one query, and releases. Every caller must succeed.
 *
 *   burst [--url URL] [--burst B] [--max M] [--query SQL] [--query-ms X]
 *         [--timeout MS] [--cold]
 *
 * Defaults: ws://root:root@127.0.0.1:8000/rpc?ns=test&db=test, B=200, M=50,
 * "sleep(50ms); RETURN 1" with X=50, timeout 30000 ms. The pool is warmed up to
 * M connections first unless --cold. Prints a progress line while it runs (only
 * when standard output is a terminal), then succeeded/failed/timeouts, the wall
 * time from the start signal to the moment the last caller finished, and the
 * ideal ceil(B/M) × X.
 * Exit status 0 only if every caller succeeded.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <surpool.h>

typedef struct run {
    surpool_pool *pool;
    const char *sql;
    long timeout_ms;
    pthread_barrier_t start;
    atomic_int done, ok, timeouts, failed;
    atomic_int first_error_set;
    char first_error[300];
    double t0;     /* written before the start barrier */
    double end_ms; /* written by the last caller to finish */
    long burst;
} run;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void note_error(run *r, const surpool_error *err)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&r->first_error_set, &expected, 1))
        snprintf(r->first_error, sizeof(r->first_error), "%s: %s", surpool_strerror(err->code),
                 err->message);
}

static void *caller(void *arg)
{
    run *r = arg;
    pthread_barrier_wait(&r->start);
    surpool_conn *c = NULL;
    surpool_error err;
    surpool_err rc = surpool_pool_acquire(r->pool, r->timeout_ms, &c, &err);
    if (rc == SURPOOL_OK) {
        json_t *out = NULL;
        rc = surpool_conn_query(c, r->sql, NULL, &out, &err);
        if (rc == SURPOOL_OK)
            rc = surpool_query_check(out, &err);
        json_decref(out);
        surpool_conn_release(c);
    }
    if (rc == SURPOOL_OK) {
        atomic_fetch_add(&r->ok, 1);
    } else {
        atomic_fetch_add(rc == SURPOOL_ERR_TIMEOUT ? &r->timeouts : &r->failed, 1);
        note_error(r, &err);
    }
    /* The clock stops when the last caller finishes, not on the progress tick. */
    if (atomic_fetch_add(&r->done, 1) + 1 == r->burst)
        r->end_ms = now_ms();
    return NULL;
}

static void usage(void)
{
    fprintf(stderr, "usage: burst [--url URL] [--burst B] [--max M] [--query SQL] "
                    "[--query-ms X] [--timeout MS] [--cold]\n");
    exit(2);
}

static long parse_long(const char *s, long lo, long hi)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < lo || v > hi)
        usage();
    return v;
}

int main(int argc, char **argv)
{
    const char *url = getenv("SURPOOL_URL");
    if (url == NULL)
        url = "ws://root:root@127.0.0.1:8000/rpc?ns=test&db=test";
    long burst = 200, max = 50, query_ms = 50, timeout_ms = 30000;
    const char *sql = "sleep(50ms); RETURN 1";
    int cold = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--cold") == 0) {
            cold = 1;
            continue;
        }
        if (v == NULL)
            usage();
        if (strcmp(a, "--url") == 0)
            url = v;
        else if (strcmp(a, "--burst") == 0)
            burst = parse_long(v, 1, 100000);
        else if (strcmp(a, "--max") == 0)
            max = parse_long(v, 1, 10000);
        else if (strcmp(a, "--query") == 0)
            sql = v;
        else if (strcmp(a, "--query-ms") == 0)
            query_ms = parse_long(v, 0, 3600000);
        else if (strcmp(a, "--timeout") == 0)
            timeout_ms = parse_long(v, 0, 3600000);
        else
            usage();
        i++;
    }

    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = url;
    cfg.max_connections = (int)max;
    cfg.min_connections = cold ? 0 : (int)max;
    cfg.max_concurrent_connects = (int)max;
    cfg.acquire_timeout_ms = timeout_ms;
    surpool_pool *pool = NULL;
    surpool_error err;
    if (surpool_pool_create(&cfg, &pool, &err) != SURPOOL_OK) {
        fprintf(stderr, "burst: cannot create the pool: %s (%s%s%s)\n", err.message,
                surpool_strerror(err.code), err.kind[0] ? ", kind " : "", err.kind);
        return 1;
    }

    run *r = calloc(1, sizeof(*r));
    pthread_t *th = calloc((size_t)burst, sizeof(*th));
    if (r == NULL || th == NULL) {
        fprintf(stderr, "burst: out of memory\n");
        return 1;
    }
    r->pool = pool;
    r->sql = sql;
    r->timeout_ms = timeout_ms;
    r->burst = burst;
    pthread_barrier_init(&r->start, NULL, (unsigned)burst + 1);
    long started = 0;
    for (; started < burst; started++) {
        if (pthread_create(&th[started], NULL, caller, r) != 0)
            break;
    }
    if (started < burst) {
        fprintf(stderr, "burst: could only start %ld threads\n", started);
        return 1;
    }

    printf("burst: %ld callers, %ld connections (%s), query \"%s\"\n", burst, max,
           cold ? "cold" : "warm", sql);
    fflush(stdout);
    int tty = isatty(STDOUT_FILENO);
    r->t0 = now_ms();
    pthread_barrier_wait(&r->start);
    while (tty && atomic_load(&r->done) < burst) {
        printf("\r  %d/%ld done, %d ok, %d timeouts, %d failed   ", atomic_load(&r->done),
               burst, atomic_load(&r->ok), atomic_load(&r->timeouts), atomic_load(&r->failed));
        fflush(stdout);
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    for (long i = 0; i < burst; i++)
        pthread_join(th[i], NULL);
    double wall = r->end_ms - r->t0; /* the joins order end_ms before this read */

    double ideal = ceil((double)burst / (double)max) * (double)query_ms;
    if (tty)
        printf("\r  %ld/%ld done%40s\n", burst, burst, "");
    printf("succeeded: %d\nfailed:    %d\ntimeouts:  %d\n", atomic_load(&r->ok),
           atomic_load(&r->failed), atomic_load(&r->timeouts));
    printf("wall time: %.1f ms\nideal:     %.1f ms (ceil(%ld/%ld) x %ld ms)", wall, ideal,
           burst, max, query_ms);
    if (ideal > 0)
        printf("  ratio %.2f", wall / ideal);
    printf("\n");
    if (r->first_error_set)
        printf("first error: %s\n", r->first_error);

    surpool_stats st;
    surpool_pool_stats(pool, &st);
    printf("pool: created %llu, handoffs %llu, peak waiters %d, connect failures %llu\n",
           (unsigned long long)st.created, (unsigned long long)st.handoffs, st.peak_waiters,
           (unsigned long long)st.connect_failures);
    int status = atomic_load(&r->ok) == burst ? 0 : 1;
    pthread_barrier_destroy(&r->start);
    free(th);
    free(r);
    surpool_pool_destroy(pool);
    return status;
}
