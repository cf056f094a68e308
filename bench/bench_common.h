/*
 * Shared helpers for the surpool benchmarks: clocks, latency samples and
 * percentiles, CPU time and RSS, small-stack threads, argument parsing and the
 * one-JSON-object-per-line output.
 *
 * Output rule for every bench program: stdout carries one JSON object per
 * measurement and nothing else; progress and diagnostics go to stderr.
 * Benchmarks are not tests: nothing here asserts on timings.
 */
#ifndef SURPOOL_BENCH_COMMON_H
#define SURPOOL_BENCH_COMMON_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* ---- clocks ---- */
int64_t bc_now_ns(void); /* CLOCK_MONOTONIC */
void bc_sleep_ns(int64_t ns);
double bc_cpu_seconds(void); /* getrusage(RUSAGE_SELF) user + sys */
long bc_rss_bytes(void);     /* /proc/self/statm resident pages * page size */

/* ---- latency samples: a fixed-capacity reservoir (uniform beyond cap) ---- */
typedef struct bc_samples {
    int64_t *v;
    size_t n;    /* stored (<= cap) */
    size_t seen; /* offered */
    size_t cap;
    uint64_t rng;
} bc_samples;

void bc_samples_init(bc_samples *s, size_t cap);
void bc_samples_add(bc_samples *s, int64_t x);
void bc_samples_merge(bc_samples *dst, const bc_samples *src); /* appends, reservoir */
void bc_samples_free(bc_samples *s);
/* Percentile (0..1) of the stored samples; sorts them in place. -1 when empty. */
int64_t bc_percentile(bc_samples *s, double q);

/* ---- threads ---- */
/* pthread_create with a small stack (benches start up to ~1000 threads). */
int bc_thread_start(pthread_t *t, void *(*fn)(void *), void *arg);

/* A start gate: threads wait on it, the main thread opens it once. */
typedef struct bc_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int open;
    int waiting;
} bc_gate;
void bc_gate_init(bc_gate *g);
void bc_gate_wait(bc_gate *g);
void bc_gate_wait_for(bc_gate *g, int n); /* main: until n threads wait */
void bc_gate_open(bc_gate *g);
void bc_gate_destroy(bc_gate *g);

/* ---- arguments: --name value ---- */
const char *bc_arg(int argc, char **argv, const char *name, const char *def);
long bc_arg_long(int argc, char **argv, const char *name, long def);
int bc_flag(int argc, char **argv, const char *name);

/* ---- output ---- */
void bc_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One JSON line: bc_json_begin("pool"); bc_json_str("impl", "surpool");
 * bc_json_int("threads", 8); bc_json_num("ops_per_s", x); bc_json_end();
 * Not thread-safe (the main thread prints). */
void bc_json_begin(const char *bench);
void bc_json_str(const char *key, const char *val);
void bc_json_int(const char *key, long long val);
void bc_json_num(const char *key, double val);
void bc_json_null(const char *key);
void bc_json_end(void);

#endif
