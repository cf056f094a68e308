/*
 * monitor: a pool under load, with its events and a stats line every second.
 *
 *   monitor [--url URL] [--threads N] [--max M] [--seconds S]
 *
 * N threads lease a connection, run a short query and release, for S seconds,
 * while the main thread prints the pool's numbers: sizes, waiters, acquire-wait
 * percentiles, connect times, and counters. Events (create, destroy, health
 * failures, circuit breaker, leaks, timeouts) are printed as they happen.
 * Defaults: ws://root:root@127.0.0.1:8000/rpc?ns=test&db=test, 16 threads,
 * 4 connections, 5 seconds.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <surpool.h>

static atomic_int g_stop;
static atomic_long g_ok, g_failed;
static pthread_mutex_t g_out = PTHREAD_MUTEX_INITIALIZER;

static const char *event_name(surpool_event_type t)
{
    switch (t) {
    case SURPOOL_EVENT_ACQUIRE: return "acquire";
    case SURPOOL_EVENT_RELEASE: return "release";
    case SURPOOL_EVENT_CREATE: return "create";
    case SURPOOL_EVENT_DESTROY: return "destroy";
    case SURPOOL_EVENT_TIMEOUT: return "timeout";
    case SURPOOL_EVENT_SHED: return "shed";
    case SURPOOL_EVENT_HEALTH_FAIL: return "health-fail";
    case SURPOOL_EVENT_BREAKER_OPEN: return "breaker-open";
    case SURPOOL_EVENT_BREAKER_CLOSE: return "breaker-close";
    case SURPOOL_EVENT_LEAK: return "leak";
    case SURPOOL_EVENT_CONNECT_FAIL: return "connect-fail";
    }
    return "?";
}

/* Runs on surpool's threads, without the pool lock: keep it short. */
static void on_event(void *ud, const surpool_event *ev)
{
    (void)ud;
    if (ev->type == SURPOOL_EVENT_ACQUIRE || ev->type == SURPOOL_EVENT_RELEASE)
        return; /* too many to print */
    pthread_mutex_lock(&g_out);
    printf("  event %-13s conn=%llu %lld us %s%s%s\n", event_name(ev->type),
           (unsigned long long)ev->conn_id, (long long)ev->duration_us,
           ev->code != SURPOOL_OK ? surpool_strerror(ev->code) : "", ev->message[0] ? " " : "",
           ev->message);
    pthread_mutex_unlock(&g_out);
}

static void *worker(void *arg)
{
    surpool_pool *pool = arg;
    while (!atomic_load(&g_stop)) {
        surpool_conn *c = NULL;
        surpool_error err;
        if (surpool_pool_acquire(pool, 2000, &c, &err) != SURPOOL_OK) {
            atomic_fetch_add(&g_failed, 1);
            continue;
        }
        json_t *out = NULL;
        if (surpool_conn_query(c, "sleep(2ms); RETURN 1", NULL, &out, &err) == SURPOOL_OK)
            atomic_fetch_add(&g_ok, 1);
        else
            atomic_fetch_add(&g_failed, 1);
        json_decref(out);
        surpool_conn_release(c);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    const char *url = getenv("SURPOOL_URL");
    if (url == NULL)
        url = "ws://root:root@127.0.0.1:8000/rpc?ns=test&db=test";
    int threads = 16, max = 4, seconds = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--url") == 0)
            url = argv[i + 1];
        else if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--max") == 0)
            max = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: monitor [--url U] [--threads N] [--max M] [--seconds S]\n");
            return 2;
        }
    }
    if (threads < 1 || threads > 1024 || max < 1 || seconds < 1) {
        fprintf(stderr, "monitor: bad numbers\n");
        return 2;
    }

    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = url;
    cfg.max_connections = max;
    cfg.on_event = on_event;
    cfg.leak_threshold_ms = 1000;
    surpool_pool *pool = NULL;
    surpool_error err;
    if (surpool_pool_create(&cfg, &pool, &err) != SURPOOL_OK) {
        fprintf(stderr, "monitor: %s\n", err.message);
        return 1;
    }
    pthread_t *th = calloc((size_t)threads, sizeof(*th));
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, worker, pool);

    printf("%4s %5s %4s %6s %7s %9s %9s %9s %9s %9s %8s\n", "sec", "total", "idle", "in_use",
           "waiters", "wait_p50", "wait_p99", "wait_max", "conn_p50", "queries", "failed");
    for (int s = 1; s <= seconds; s++) {
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
        surpool_stats st;
        surpool_pool_stats(pool, &st);
        pthread_mutex_lock(&g_out);
        printf("%4d %5d %4d %6d %7d %7lldus %7lldus %7lldus %7lldus %9ld %8ld\n", s, st.total,
               st.idle, st.in_use, st.waiters, (long long)st.acquire_wait_p50_us,
               (long long)st.acquire_wait_p99_us, (long long)st.acquire_wait_max_us,
               (long long)st.connect_p50_us, atomic_load(&g_ok), atomic_load(&g_failed));
        fflush(stdout);
        pthread_mutex_unlock(&g_out);
    }
    atomic_store(&g_stop, 1);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    free(th);

    surpool_stats st;
    surpool_pool_stats(pool, &st);
    printf("acquired %llu, handoffs %llu, timeouts %llu, created %llu, destroyed %llu, "
           "validations %llu, peak waiters %d\n",
           (unsigned long long)st.acquired, (unsigned long long)st.handoffs,
           (unsigned long long)st.timeouts, (unsigned long long)st.created,
           (unsigned long long)st.destroyed, (unsigned long long)st.validations,
           st.peak_waiters);
    surpool_pool_destroy(pool);
    return atomic_load(&g_failed) == 0 ? 0 : 1;
}
