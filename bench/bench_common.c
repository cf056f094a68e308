#include "bench_common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

int64_t bc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * INT64_C(1000000000) + ts.tv_nsec;
}

void bc_sleep_ns(int64_t ns)
{
    if (ns <= 0)
        return;
    struct timespec ts = {(time_t)(ns / 1000000000), (long)(ns % 1000000000)};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

double bc_cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

long bc_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (f == NULL)
        return -1;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * sysconf(_SC_PAGESIZE);
}

/* ---- samples ---- */

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

void bc_samples_init(bc_samples *s, size_t cap)
{
    memset(s, 0, sizeof(*s));
    s->cap = cap;
    s->v = malloc(cap * sizeof(int64_t));
    if (s->v == NULL)
        s->cap = 0;
    s->rng = (uint64_t)bc_now_ns() | 1u;
}

void bc_samples_add(bc_samples *s, int64_t x)
{
    s->seen++;
    if (s->n < s->cap) {
        s->v[s->n++] = x;
        return;
    }
    if (s->cap == 0)
        return;
    uint64_t j = xorshift(&s->rng) % s->seen;
    if (j < s->cap)
        s->v[j] = x;
}

void bc_samples_merge(bc_samples *dst, const bc_samples *src)
{
    for (size_t i = 0; i < src->n; i++)
        bc_samples_add(dst, src->v[i]);
}

void bc_samples_free(bc_samples *s)
{
    free(s->v);
    memset(s, 0, sizeof(*s));
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int64_t bc_percentile(bc_samples *s, double q)
{
    if (s->n == 0)
        return -1;
    qsort(s->v, s->n, sizeof(int64_t), cmp_i64);
    size_t i = (size_t)ceil(q * (double)s->n);
    if (i > 0)
        i--;
    if (i >= s->n)
        i = s->n - 1;
    return s->v[i];
}

/* ---- threads ---- */

int bc_thread_start(pthread_t *t, void *(*fn)(void *), void *arg)
{
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 256 * 1024);
    int rc = pthread_create(t, &a, fn, arg);
    pthread_attr_destroy(&a);
    return rc;
}

void bc_gate_init(bc_gate *g)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->open = 0;
    g->waiting = 0;
}

void bc_gate_wait(bc_gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->waiting++;
    pthread_cond_broadcast(&g->cv);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

void bc_gate_wait_for(bc_gate *g, int n)
{
    pthread_mutex_lock(&g->mu);
    while (g->waiting < n)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

void bc_gate_open(bc_gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

void bc_gate_destroy(bc_gate *g)
{
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
}

/* ---- arguments ---- */

const char *bc_arg(int argc, char **argv, const char *name, const char *def)
{
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return def;
}

long bc_arg_long(int argc, char **argv, const char *name, long def)
{
    const char *s = bc_arg(argc, argv, name, NULL);
    return s != NULL ? strtol(s, NULL, 10) : def;
}

int bc_flag(int argc, char **argv, const char *name)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return 1;
    return 0;
}

/* ---- output ---- */

void bc_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void bc_json_begin(const char *bench)
{
    printf("{\"bench\":\"%s\"", bench);
}

void bc_json_str(const char *key, const char *val)
{
    printf(",\"%s\":\"", key);
    for (const char *p = val; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if ((unsigned char)*p < 0x20)
            printf("\\u%04x", (unsigned)*p);
        else
            putchar(*p);
    }
    putchar('"');
}

void bc_json_int(const char *key, long long val)
{
    printf(",\"%s\":%lld", key, val);
}

void bc_json_num(const char *key, double val)
{
    if (isfinite(val))
        printf(",\"%s\":%.6g", key, val);
    else
        printf(",\"%s\":null", key);
}

void bc_json_null(const char *key)
{
    printf(",\"%s\":null", key);
}

void bc_json_end(void)
{
    printf("}\n");
    fflush(stdout);
}
