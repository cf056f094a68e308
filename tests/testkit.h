/*
 * The test toolkit: what every test program needs to wait, hold leases and
 * clean up without ever hanging silently. Header-only (each test program is
 * one translation unit); docs/testing.md describes how to use it.
 *
 *  - WAIT_UNTIL(cond, ms): poll `cond` until it holds; after `ms` (scaled by
 *    TK_SLOW under sanitizers) fail with a message naming the condition and
 *    where it was waited for. TK_POLL is the same without the failure, for
 *    threads other than the test's own (cmocka asserts must not run there).
 *  - The lease tracker: every lease a test takes through tk_acquire() is
 *    recorded until tk_release(); a connection leased twice at once is
 *    counted. tk_teardown() (a cmocka teardown) gives back what a failed test
 *    left held and destroys the pools it registered with tk_pool_track(), so
 *    a failing assertion cannot leave surpool_pool_destroy() waiting forever
 *    for a lease that will never come back; tk_pool_destroy() itself runs
 *    under the watchdog, so a lease or request the library loses fails the
 *    test with a message instead of hanging it.
 *  - tk_watchdog(seconds, what): the last resort for a blocking call.
 *  - The test server launcher is harness.[ch] (the tests/server scripts on a free
 *    port, bounded start, stop, restart on the same port, /control).
 *
 * Include <cmocka.h> before this header in cmocka programs: failures then go
 * through fail_msg(). Elsewhere (soak.c) a failure prints the message and
 * ends the process with status 70.
 */
#ifndef SURPOOL_TESTKIT_H
#define SURPOOL_TESTKIT_H

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "surpool.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TK_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TK_SANITIZED 1
#endif
#endif
#ifndef TK_SANITIZED
#define TK_SANITIZED 0
#endif

/* Sanitizers slow everything down several times: bounds (never assertions on
 * durations) scale with this. */
#define TK_SLOW (TK_SANITIZED ? 4 : 1)

static inline int64_t tk_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void tk_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* ---- failing ---- */

#ifdef fail_msg
#define TK_FAIL(...) fail_msg(__VA_ARGS__)
#else
#define TK_FAIL(...)                                                                           \
    do {                                                                                       \
        fprintf(stderr, "FAILED: " __VA_ARGS__);                                               \
        fputc('\n', stderr);                                                                   \
        fflush(stderr);                                                                        \
        _exit(70);                                                                             \
    } while (0)
#endif

/* ---- bounded waits ---- */

/* Set `ok` to 1 as soon as `cond` holds, or to 0 once `ms` (times TK_SLOW)
 * have passed without it. Polls every millisecond. Any thread. */
#define TK_POLL(ok, cond, ms)                                                                  \
    do {                                                                                       \
        int64_t tk_end_ = tk_now_ms() + (int64_t)(ms)*TK_SLOW;                                 \
        for (;;) {                                                                             \
            if (cond) {                                                                        \
                (ok) = 1;                                                                      \
                break;                                                                         \
            }                                                                                  \
            if (tk_now_ms() >= tk_end_) {                                                      \
                (ok) = 0;                                                                      \
                break;                                                                         \
            }                                                                                  \
            tk_sleep_ms(1);                                                                    \
        }                                                                                      \
    } while (0)

/* Wait until `cond` holds; fail the test after `ms` (times TK_SLOW) with
 * "file:line: timed out after N ms waiting for: cond". The test's thread. */
#define WAIT_UNTIL(cond, ms)                                                                   \
    do {                                                                                       \
        int tk_ok_;                                                                            \
        TK_POLL(tk_ok_, cond, ms);                                                             \
        if (!tk_ok_)                                                                           \
            TK_FAIL("%s:%d: timed out after %ld ms waiting for: %s", __FILE__, __LINE__,       \
                    (long)(ms)*TK_SLOW, #cond);                                                \
    } while (0)

/* Join with a bound (seconds times TK_SLOW): 0 if joined, -1 if the thread is
 * still running (hung). */
static inline int tk_join(pthread_t th, int seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += seconds * TK_SLOW;
    return pthread_timedjoin_np(th, NULL, &ts) == 0 ? 0 : -1;
}

/* Join or fail the test naming what the thread was doing. */
#define JOIN_OR_FAIL(th, seconds, what)                                                        \
    do {                                                                                       \
        if (tk_join((th), (seconds)) != 0)                                                     \
            TK_FAIL("%s:%d: thread still running after %d s: %s", __FILE__, __LINE__,          \
                    (seconds)*TK_SLOW, (what));                                                \
    } while (0)

/* ---- watchdog: a step that does not return in time ends the process ---- */

static char tk_wd_what[160];

static inline void tk_wd_handler(int sig)
{
    (void)sig;
    static const char pre[] = "\nWATCHDOG: hung (did not return in time): ";
    ssize_t ignored = write(STDERR_FILENO, pre, sizeof(pre) - 1);
    ignored = write(STDERR_FILENO, tk_wd_what, strnlen(tk_wd_what, sizeof(tk_wd_what)));
    ignored = write(STDERR_FILENO, "\n", 1);
    (void)ignored;
    _exit(70);
}

/* Arm (seconds > 0, times TK_SLOW) or disarm (0) the process's one watchdog
 * (SIGALRM): for a blocking call that cannot be polled. Keep the bound below
 * the test's ctest limit, or ctest kills the program first and the message is
 * lost. The test's thread. */
static inline void tk_watchdog(int seconds, const char *what)
{
    if (seconds <= 0) {
        alarm(0);
        return;
    }
    size_t n = strnlen(what, sizeof(tk_wd_what) - 1);
    memcpy(tk_wd_what, what, n);
    tk_wd_what[n] = '\0';
    signal(SIGALRM, tk_wd_handler);
    alarm((unsigned)(seconds * TK_SLOW));
}

/* ---- the lease tracker ---- */

#define TK_MAX_LEASES 1024

typedef struct tk_leases {
    pthread_mutex_t mu;
    surpool_conn *held[TK_MAX_LEASES];  /* the handles (each lease has its own) */
    surpool_conn *conns[TK_MAX_LEASES]; /* the connections they name */
    int nheld;                          /* leases out now */
    int peak;                           /* most leases out at once */
    int double_lease;                   /* a connection recorded while already held */
    int overflow; /* leases not recorded: more than TK_MAX_LEASES at once */
} tk_leases;

static inline void tk_leases_init(tk_leases *t)
{
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->mu, NULL);
}

static inline void tk_leases_destroy(tk_leases *t)
{
    pthread_mutex_destroy(&t->mu);
}

/* The connection an open lease handle names (src/lease.h; the tests link the
 * library's internals): handles differ per lease, so "one connection leased
 * twice at once" compares connections. */
surpool_conn *surpool__lease_conn_of(const surpool_conn *h);

/* Record `c` as held. Any thread. */
static inline void tk_lease_track(tk_leases *t, surpool_conn *c)
{
    surpool_conn *conn = surpool__lease_conn_of(c);
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < t->nheld; i++)
        if (t->held[i] == c || (conn != NULL && t->conns[i] == conn))
            t->double_lease++;
    if (t->nheld < TK_MAX_LEASES) {
        t->conns[t->nheld] = conn;
        t->held[t->nheld++] = c;
        if (t->nheld > t->peak)
            t->peak = t->nheld;
    } else {
        t->overflow++;
    }
    pthread_mutex_unlock(&t->mu);
}

/* Forget `c`. Returns 1 if it was recorded. Any thread. */
static inline int tk_lease_untrack(tk_leases *t, surpool_conn *c)
{
    int found = 0;
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < t->nheld; i++) {
        if (t->held[i] == c) {
            --t->nheld;
            t->held[i] = t->held[t->nheld];
            t->conns[i] = t->conns[t->nheld];
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return found;
}

/* The tracker tk_acquire/tk_release/tk_teardown use. */
static tk_leases tk_default_leases = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* surpool_pool_acquire, recorded in the default tracker on success. Any
 * thread; asserts nothing. */
static inline surpool_err tk_acquire(surpool_pool *p, long timeout_ms, surpool_conn **out,
                                     surpool_error *err)
{
    surpool_err rc = surpool_pool_acquire(p, timeout_ms, out, err);
    if (rc == SURPOOL_OK)
        tk_lease_track(&tk_default_leases, *out);
    return rc;
}

/* Forget, then surpool_conn_release. Any thread. */
static inline void tk_release(surpool_conn *c)
{
    if (c == NULL)
        return;
    tk_lease_untrack(&tk_default_leases, c);
    surpool_conn_release(c);
}

/* Give back every lease still recorded in `t` (a failed test's). Returns how
 * many there were. */
static inline int tk_release_all(tk_leases *t)
{
    int n = 0;
    for (;;) {
        pthread_mutex_lock(&t->mu);
        surpool_conn *c = t->nheld > 0 ? t->held[--t->nheld] : NULL;
        pthread_mutex_unlock(&t->mu);
        if (c == NULL)
            return n;
        surpool_conn_release(c);
        n++;
    }
}

/* Pools tk_teardown destroys if the test did not get to it. */
#define TK_MAX_POOLS 16
static surpool_pool *tk_pools[TK_MAX_POOLS];

/* Register `p` for tk_teardown. Returns p. The test's thread. */
static inline surpool_pool *tk_pool_track(surpool_pool *p)
{
    for (int i = 0; p != NULL && i < TK_MAX_POOLS; i++) {
        if (tk_pools[i] == NULL) {
            tk_pools[i] = p;
            return p;
        }
    }
    if (p != NULL)
        TK_FAIL("testkit: more than %d pools registered at once", TK_MAX_POOLS);
    return p;
}

/* surpool_pool_create, failing the test (with the code and the message) if it
 * does not succeed; the pool is registered with tk_pool_track. The test's
 * thread. */
static inline surpool_pool *tk_pool_create(const surpool_config *cfg)
{
    surpool_pool *p = NULL;
    surpool_error err;
    surpool_err rc = surpool_pool_create(cfg, &p, &err);
    if (rc != SURPOOL_OK)
        TK_FAIL("pool create: %s: %s", surpool_err_name(rc), err.message);
    return tk_pool_track(p);
}

/* How long surpool_pool_destroy may take in a test (times TK_SLOW). */
#define TK_DESTROY_S 20

/* Unregister and destroy `p` (NULL is fine), under the watchdog unless one is
 * armed already: destroy waits for every lease and lane request to come back,
 * and one that never does must fail the test with a message, not hang it.
 * The test's thread. */
static inline void tk_pool_destroy(surpool_pool *p)
{
    for (int i = 0; p != NULL && i < TK_MAX_POOLS; i++)
        if (tk_pools[i] == p)
            tk_pools[i] = NULL;
    unsigned armed = alarm(0);
    if (armed > 0)
        alarm(armed); /* the test's own bound stands */
    else
        tk_watchdog(TK_DESTROY_S, "surpool_pool_destroy (a lease, a connect or a lane request "
                                  "never came back)");
    surpool_pool_destroy(p);
    if (armed == 0)
        tk_watchdog(0, NULL);
}

/* A cmocka teardown: after a failed test, give back the leases it left held
 * (worker threads must have been joined or stopped by then), then destroy the
 * pools it registered. After a test that passed there is nothing to do. */
static inline int tk_teardown(void **state)
{
    (void)state;
    int n = tk_release_all(&tk_default_leases);
    if (n > 0)
        fprintf(stderr, "testkit: gave back %d lease(s) the test left held\n", n);
    for (int i = 0; i < TK_MAX_POOLS; i++)
        if (tk_pools[i] != NULL)
            tk_pool_destroy(tk_pools[i]);
    return 0;
}

#endif
