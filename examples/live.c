/*
 * live: print the changes to a table as they happen (a live query on the
 * pool, which survives reconnects and server restarts).
 *
 *   live [--demo] [--seconds N] [URL] [TABLE]
 *        (default URL ws://root:root@127.0.0.1:8000/rpc?ns=test&db=test,
 *         SURPOOL_URL in the environment overrides it; TABLE default "person")
 *
 * Run it, then write to the table from another program (surreal sql, another
 * surpool program). With --demo a second thread writes to it itself. It stops
 * after N seconds (default: 10 with --demo, else until killed).
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <surpool.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static const char *type_name(surpool_live_event_type t)
{
    switch (t) {
    case SURPOOL_LIVE_CREATE: return "CREATE";
    case SURPOOL_LIVE_UPDATE: return "UPDATE";
    case SURPOOL_LIVE_DELETE: return "DELETE";
    case SURPOOL_LIVE_KILLED: return "KILLED";
    case SURPOOL_LIVE_RESUBSCRIBED: return "RESUBSCRIBED";
    case SURPOOL_LIVE_OVERFLOW: return "OVERFLOW";
    case SURPOOL_LIVE_CLOSED: return "CLOSED";
    }
    return "?";
}

/* Runs on the pool's live delivery thread, one event at a time. */
static void on_change(void *userdata, surpool_live *live, const surpool_live_event *ev)
{
    (void)userdata;
    (void)live;
    char *text = NULL;
    if (ev->result != NULL) {
        json_t *plain = NULL; /* typed values (CBOR) as plain JSON for printing */
        if (surpool_value_to_plain(ev->result, &plain, NULL) == SURPOOL_OK) {
            text = json_dumps(plain, JSON_COMPACT | JSON_SORT_KEYS);
            json_decref(plain);
        }
    }
    switch (ev->type) {
    case SURPOOL_LIVE_OVERFLOW:
        printf("%-12s %llu notifications dropped (printing too slowly)\n", type_name(ev->type),
               (unsigned long long)ev->dropped);
        break;
    case SURPOOL_LIVE_RESUBSCRIBED:
    case SURPOOL_LIVE_CLOSED: printf("%-12s %s\n", type_name(ev->type), ev->message); break;
    default: printf("%-12s %s\n", type_name(ev->type), text != NULL ? text : ""); break;
    }
    fflush(stdout);
    free(text);
}

typedef struct demo {
    surpool_pool *pool;
    const char *table;
} demo;

static void *writer(void *arg)
{
    demo *d = arg;
    char sql[256];
    for (int i = 1; !stop && i <= 1000; i++) {
        switch (i % 3) {
        case 1: snprintf(sql, sizeof(sql), "CREATE %s:%d SET n = %d", d->table, i, i); break;
        case 2: snprintf(sql, sizeof(sql), "UPDATE %s:%d SET n += 100", d->table, i - 1); break;
        default: snprintf(sql, sizeof(sql), "DELETE %s:%d", d->table, i - 2); break;
        }
        json_t *r = NULL;
        surpool_error err;
        if (surpool_query(d->pool, sql, NULL, &r, &err) != SURPOOL_OK)
            fprintf(stderr, "demo writer: %s\n", err.message);
        json_decref(r);
        struct timespec ts = {0, 300 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int demo_mode = 0;
    long seconds = -1;
    const char *url = getenv("SURPOOL_URL");
    const char *table = "person";
    int positional = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--demo") == 0)
            demo_mode = 1;
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atol(argv[++i]);
        else if (positional++ == 0)
            url = argv[i];
        else
            table = argv[i];
    }
    if (url == NULL)
        url = "ws://root:root@127.0.0.1:8000/rpc?ns=test&db=test";
    if (seconds < 0 && demo_mode)
        seconds = 10;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = url;
    cfg.max_connections = 4;
    surpool_pool *pool = NULL;
    surpool_error err;
    if (surpool_pool_create(&cfg, &pool, &err) != SURPOOL_OK) {
        fprintf(stderr, "create: %s (%s)\n", err.message, surpool_strerror(err.code));
        return 1;
    }
    /* SurrealDB 3 refuses a live query on a table that does not exist. */
    char sql[160];
    snprintf(sql, sizeof(sql), "DEFINE TABLE IF NOT EXISTS %s SCHEMALESS", table);
    json_t *r = NULL;
    if (surpool_query(pool, sql, NULL, &r, &err) != SURPOOL_OK)
        fprintf(stderr, "define table: %s\n", err.message);
    json_decref(r);

    surpool_live_options opts;
    surpool_live_options_init(&opts);
    opts.table = table;
    surpool_live *live = NULL;
    if (surpool_live_start(pool, &opts, on_change, NULL, &live, &err) != SURPOOL_OK) {
        fprintf(stderr, "live: %s (%s)\n", err.message, surpool_strerror(err.code));
        surpool_pool_destroy(pool);
        return 1;
    }
    printf("watching table %s%s\n", table, demo_mode ? " (demo writer running)" : "");
    fflush(stdout);

    demo d = {pool, table};
    pthread_t th;
    int have_writer = demo_mode && pthread_create(&th, NULL, writer, &d) == 0;
    time_t end = seconds >= 0 ? time(NULL) + seconds : 0;
    while (!stop && (seconds < 0 || time(NULL) < end)) {
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    stop = 1;
    if (have_writer)
        pthread_join(th, NULL);
    surpool_live_kill(live);    /* CLOSED is printed by the callback */
    surpool_pool_destroy(pool); /* waits for it */
    return 0;
}
