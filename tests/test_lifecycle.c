/*
 * Lifecycle on the fake transport: circuit breaker and recovery, lifetime and
 * idle retirement, validation on acquire, keepalive, leak reports, pause /
 * resume / drain, events, percentiles, lazy start. Waits poll a condition with
 * a generous bound (against hangs); nothing asserts a duration.
 */
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "fake_transport.h"
#include "pool.h"

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

typedef struct fixture {
    fake_settings fs;
    surpool_pool *pool;
    pthread_mutex_t mu;
    char log[8192];
    int events[16];
    atomic_int pings;
    atomic_int ping_fail;
    _Atomic(surpool_pool *) event_pool; /* f->pool, published for event callbacks */
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    fake_settings_init(&f->fs);
    pthread_mutex_init(&f->mu, NULL);
    *state = f;
    return 0;
}

/* Leases held by callers (not the maintainer's pings, not the shared lane). */
static int user_leases(surpool_pool *p)
{
    pthread_mutex_lock(&p->mu);
    int n = p->nleased - p->nmaint - p->nlane;
    pthread_mutex_unlock(&p->mu);
    return n;
}

static int teardown(void **state)
{
    fixture *f = *state;
    atomic_store(&f->event_pool, NULL); /* destroy() may still deliver events */
    if (f->pool != NULL) {
        /* A test that failed while a lease was out must not hang here: destroy()
         * waits for every lease. Bounded wait, else leak the pool and say so. */
        int64_t end = surpool__now_ns() + 10 * INT64_C(1000000000);
        while (user_leases(f->pool) > 0 && surpool__now_ns() < end)
            sleep_ms(1);
        if (user_leases(f->pool) > 0)
            fail_msg("teardown: %d leases never came back; the pool is leaked, not "
                     "destroyed, so that this failure is reported instead of a hang",
                     user_leases(f->pool));
        surpool_stats st;
        surpool_pool_stats(f->pool, &st);
        assert_int_equal((int)(st.created - st.destroyed), st.idle + st.in_use);
        surpool_pool_destroy(f->pool);
    }
    assert_int_equal(atomic_load(&f->fs.open_now), 0);
    pthread_mutex_destroy(&f->mu);
    free(f);
    return 0;
}

static void capture_log(void *ud, surpool_log_level level, const char *msg)
{
    fixture *f = ud;
    (void)level;
    pthread_mutex_lock(&f->mu);
    size_t n = strlen(f->log);
    snprintf(f->log + n, sizeof(f->log) - n, "%s\n", msg);
    pthread_mutex_unlock(&f->mu);
}

static void count_event(void *ud, const surpool_event *ev)
{
    fixture *f = ud;
    assert_non_null(ev->message);
    /* The rule says a callback may read stats: prove it does not deadlock. */
    surpool_stats st;
    surpool_pool *pool = atomic_load(&f->event_pool);
    if (pool != NULL)
        surpool_pool_stats(pool, &st);
    pthread_mutex_lock(&f->mu);
    if (ev->type > 0 && ev->type < 16)
        f->events[ev->type]++;
    pthread_mutex_unlock(&f->mu);
}

static int log_has(fixture *f, const char *needle)
{
    pthread_mutex_lock(&f->mu);
    int found = strstr(f->log, needle) != NULL;
    pthread_mutex_unlock(&f->mu);
    return found;
}

static int events(fixture *f, surpool_event_type t)
{
    pthread_mutex_lock(&f->mu);
    int n = f->events[t];
    pthread_mutex_unlock(&f->mu);
    return n;
}

/* ping fails (no reply: validation timeout) while f->ping_fail is set. */
static json_t *responder(void *ud, json_int_t id, const char *method, json_t *params)
{
    fixture *f = ud;
    if (strcmp(method, "ping") == 0) {
        atomic_fetch_add(&f->pings, 1);
        if (atomic_load(&f->ping_fail))
            return NULL;
    }
    return fake_default_responder(NULL, id, method, params);
}

static void base(fixture *f, surpool_config *cfg)
{
    surpool_config_init(cfg);
    cfg->url = "ws://fake.invalid/rpc";
    cfg->max_connections = 4;
    cfg->reconnect_backoff_min_ms = 1;
    cfg->reconnect_backoff_max_ms = 10;
    cfg->maintenance_interval_ms = 5;
    cfg->log_fn = capture_log;
    cfg->log_userdata = f;
    cfg->log_level = SURPOOL_LOG_DEBUG;
    cfg->on_event = count_event;
    cfg->event_userdata = f;
    f->fs.responder = responder;
    f->fs.responder_ud = f;
}

static void create(fixture *f, surpool_config *cfg)
{
    surpool_error err;
    if (surpool__pool_create_with(cfg, &fake_transport_ops, &f->fs, &f->pool, &err) !=
        SURPOOL_OK)
        fail_msg("create: %s", err.message);
    atomic_store(&f->event_pool, f->pool);
}

static surpool_stats stats(fixture *f)
{
    surpool_stats st;
    surpool_pool_stats(f->pool, &st);
    return st;
}

/* Poll `cond` for up to 30 s of wall time (a bound against hangs only); fail
 * saying what was awaited. */
#define WAIT_BOUND_S 20
#define WAIT_UNTIL(cond)                                                                       \
    do {                                                                                       \
        int64_t wait_end_ = surpool__now_ns() + WAIT_BOUND_S * INT64_C(1000000000);            \
        while (!(cond) && surpool__now_ns() < wait_end_)                                       \
            sleep_ms(1);                                                                       \
        if (!(cond))                                                                           \
            fail_msg("gave up after %d s waiting for: %s", WAIT_BOUND_S, #cond);               \
    } while (0)

/* pthread_join with a bound: a thread stuck in the pool fails the test. */
static void join_bounded(pthread_t th, const char *what)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 2 * WAIT_BOUND_S;
    if (pthread_timedjoin_np(th, NULL, &ts) != 0)
        fail_msg("gave up after %d s waiting for %s to finish", 2 * WAIT_BOUND_S, what);
}

/* ------------------------------------------------------------------------- */

static void test_breaker_fails_fast_and_recovers(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    base(f, &cfg);
    cfg.breaker_threshold = 3;
    atomic_store(&f->fs.fail_connects, 1000000);
    create(f, &cfg);

    surpool_conn *c = NULL;
    surpool_error err;
    /* The first caller waits while connects fail; once the circuit opens it is
     * told at once, not after its whole 60 s timeout. */
    assert_int_equal(surpool_pool_acquire(f->pool, 60000, &c, &err), SURPOOL_ERR_UNAVAILABLE);
    assert_non_null(strstr(err.message, "connection refused"));
    assert_int_equal(stats(f).breaker_open, 1);
    assert_int_equal(stats(f).breaker_opens, 1);
    /* While open: fail fast, and at most one probe at a time. */
    for (int i = 0; i < 50; i++)
        assert_int_equal(surpool_pool_acquire(f->pool, 60000, &c, &err),
                         SURPOOL_ERR_UNAVAILABLE);
    assert_true(stats(f).connecting <= 1);
    WAIT_UNTIL(events(f, SURPOOL_EVENT_BREAKER_OPEN) == 1);

    /* The server comes back: a probe closes the circuit, the pool works. */
    atomic_store(&f->fs.fail_connects, 0);
    WAIT_UNTIL(stats(f).breaker_open == 0);
    assert_int_equal(surpool_pool_acquire(f->pool, 60000, &c, &err), SURPOOL_OK);
    surpool_conn_release(c);
    WAIT_UNTIL(events(f, SURPOOL_EVENT_BREAKER_CLOSE) == 1);
    assert_true(log_has(f, "circuit open"));
}

static void test_lifetime_never_closes_a_lease(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    base(f, &cfg);
    cfg.max_lifetime_ms = 40;
    create(f, &cfg);
    surpool_conn *c = NULL, *d = NULL;
    assert_int_equal(surpool_pool_acquire(f->pool, 1000, &c, NULL), SURPOOL_OK);
    assert_int_equal(surpool_pool_acquire(f->pool, 1000, &d, NULL), SURPOOL_OK);
    surpool_conn_release(d); /* idle: the maintainer retires it when it expires */
    WAIT_UNTIL(stats(f).lifetime_retirements >= 1);
    /* The lease outlived its lifetime and still works... */
    sleep_ms(60);
    assert_int_equal(surpool_conn_ping(c, NULL), SURPOOL_OK);
    uint64_t before = stats(f).lifetime_retirements;
    /* ...and is retired when it comes back. */
    surpool_conn_release(c);
    assert_int_equal(stats(f).lifetime_retirements, before + 1);
    assert_int_equal(stats(f).idle, 0);
}

static void test_idle_timeout_keeps_minimum(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    base(f, &cfg);
    cfg.min_connections = 1;
    cfg.idle_timeout_ms = 30;
    create(f, &cfg);
    surpool_conn *c[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(surpool_pool_acquire(f->pool, 1000, &c[i], NULL), SURPOOL_OK);
    for (int i = 0; i < 4; i++)
        surpool_conn_release(c[i]);
    WAIT_UNTIL(stats(f).total == 1);
    sleep_ms(60);
    assert_int_equal(stats(f).total, 1); /* never below min_connections */
    assert_int_equal(stats(f).idle_retirements, 3);
}

static void test_validation_on_acquire(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    base(f, &cfg);
    cfg.max_connections = 1;
    cfg.validation_idle_ms = 0; /* validate every idle acquire */
    cfg.validation_timeout_ms = 30;
    cfg.keepalive_interval_ms = 0;
    create(f, &cfg);
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(f->pool, 1000, &c, NULL), SURPOOL_OK); /* fresh */
    surpool_conn_release(c);
    sleep_ms(2);
    assert_int_equal(surpool_pool_acquire(f->pool, 1000, &c, NULL), SURPOOL_OK); /* pinged */
    assert_int_equal(atomic_load(&f->pings), 1);
    surpool_conn_release(c);
    sleep_ms(2);
    atomic_store(&f->ping_fail, 1); /* the idle connection has silently died */
    assert_int_equal(surpool_pool_acquire(f->pool, 5000, &c, NULL), SURPOOL_OK);
    atomic_store(&f->ping_fail, 0);
    surpool_conn_release(c);
    surpool_stats st = stats(f);
    assert_int_equal(st.validations, 2);
    assert_int_equal(st.validation_failures, 1);
    assert_int_equal(st.created, 2); /* replaced, not handed out */
    assert_int_equal(events(f, SURPOOL_EVENT_HEALTH_FAIL), 1);
}

static void test_keepalive_pings_idle(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    base(f, &cfg);
    cfg.keepalive_interval_ms = 10;
    create(f, &cfg);
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(f->pool, 1000, &c, NULL), SURPOOL_OK);
    surpool_conn_release(c);
    WAIT_UNTIL(atomic_load(&f->pings) >= 2);
    WAIT_UNTIL(stats(f).validations >= 2); /* counted when each ping completes */
    /* A keepalive failure removes the connection. */
    atomic_store(&f->ping_fail, 1);
    WAIT_UNTIL(stats(f).validation_failures >= 1);
    atomic_store(&f->ping_fail, 0);
    WAIT_UNTIL(stats(f).destroyed >= 1);
    assert_int_equal(surpool_pool_acquire(f->pool, 1000, &c, NULL), SURPOOL_OK);
    surpool_conn_release(c);
}

/* Keepalive pings prove a connection alive; they do not make it "used": an
 * idle connection still retires after idle_timeout_ms. */
static void test_keepalive_does_not_defeat_idle_timeout(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    base(f, &cfg);
    cfg.keepalive_interval_ms = 5;
    cfg.idle_timeout_ms = 300; /* dozens of keepalive ticks before it */
    create(f, &cfg);
    /* A maintainer tick first checks idle_timeout_ms, then pings: one that
     * first runs after the 300 ms (a thread starved on a loaded machine)
     * retires the connection before any ping, and then nothing was shown.
     * Such a round proves nothing either way: run another (at most 5). */
    int pinged = 0;
    for (int round = 0; round < 5 && !pinged; round++) {
        int pings = atomic_load(&f->pings);
        uint64_t retired = stats(f).idle_retirements;
        surpool_conn *c = NULL;
        assert_int_equal(surpool_pool_acquire(f->pool, 1000, &c, NULL), SURPOOL_OK);
        surpool_conn_release(c);
        WAIT_UNTIL(stats(f).idle_retirements == retired + 1);
        pinged = atomic_load(&f->pings) > pings;
    }
    assert_true(pinged);
    assert_int_equal(stats(f).total, 0);
}

static void test_leak_reported_once_with_call_site(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    base(f, &cfg);
    cfg.leak_threshold_ms = 20;
    create(f, &cfg);
    surpool_conn *c = NULL;
    int line = __LINE__ + 1;
    assert_int_equal(surpool_pool_acquire(f->pool, 1000, &c, NULL), SURPOOL_OK);
    WAIT_UNTIL(stats(f).leaks == 1);
    /* The log line goes out just before the event, after the mutex is released. */
    WAIT_UNTIL(events(f, SURPOOL_EVENT_LEAK) == 1);
    sleep_ms(60); /* a few more maintainer ticks: still reported once */
    assert_int_equal(stats(f).leaks, 1);
    assert_int_equal(events(f, SURPOOL_EVENT_LEAK), 1);
    char site[64];
    snprintf(site, sizeof(site), "test_lifecycle.c:%d", line);
    assert_true(log_has(f, "possible leak"));
    assert_true(log_has(f, site));
    surpool_conn_release(c);
}

typedef struct waiter_arg {
    surpool_pool *pool;
    surpool_err rc;
} waiter_arg;

static void *late_acquire(void *arg)
{
    waiter_arg *w = arg;
    surpool_conn *c = NULL;
    w->rc = surpool_pool_acquire(w->pool, 20000, &c, NULL);
    if (w->rc == SURPOOL_OK)
        surpool_conn_release(c);
    return NULL;
}

static void test_pause_resume_drain(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    base(f, &cfg);
    create(f, &cfg);
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(f->pool, 1000, &c, NULL), SURPOOL_OK);

    assert_int_equal(surpool_pool_pause(f->pool, 1), SURPOOL_OK);
    surpool_conn *d = NULL;
    assert_int_equal(surpool_pool_acquire(f->pool, 1000, &d, NULL), SURPOOL_ERR_PAUSED);
    assert_int_equal(surpool_pool_drain(f->pool, 10), SURPOOL_ERR_TIMEOUT); /* c is out */
    surpool_conn_release(c); /* goes idle: nobody is served while paused */
    assert_int_equal(surpool_pool_drain(f->pool, 1000), SURPOOL_OK);

    assert_int_equal(surpool_pool_pause(f->pool, 0), SURPOOL_OK); /* waiting pause */
    assert_int_equal(surpool_pool_acquire(f->pool, 10, &d, NULL), SURPOOL_ERR_TIMEOUT);
    waiter_arg w = {f->pool, SURPOOL_ERR_INVALID_ARG};
    pthread_t th;
    pthread_create(&th, NULL, late_acquire, &w);
    WAIT_UNTIL(stats(f).waiters == 1);
    assert_int_equal(stats(f).paused, 1);
    assert_int_equal(surpool_pool_resume(f->pool), SURPOOL_OK);
    join_bounded(th, "the waiter served on resume");
    assert_int_equal(w.rc, SURPOOL_OK);
    assert_int_equal(stats(f).created, 1); /* served from the idle connection */
}

static void test_events_and_percentiles(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    base(f, &cfg);
    cfg.max_connections = 1;
    cfg.max_waiters = 1;
    create(f, &cfg);
    surpool_conn *c = NULL, *d = NULL;
    for (int i = 0; i < 20; i++) {
        assert_int_equal(surpool_pool_acquire(f->pool, 1000, &c, NULL), SURPOOL_OK);
        surpool_conn_release(c);
    }
    assert_int_equal(surpool_pool_acquire(f->pool, 1000, &c, NULL), SURPOOL_OK);
    assert_int_equal(surpool_pool_acquire(f->pool, 5, &d, NULL), SURPOOL_ERR_TIMEOUT);
    waiter_arg w = {f->pool, SURPOOL_ERR_INVALID_ARG};
    pthread_t th;
    pthread_create(&th, NULL, late_acquire, &w);
    WAIT_UNTIL(stats(f).waiters == 1);
    assert_int_equal(surpool_pool_acquire(f->pool, 1000, &d, NULL), SURPOOL_ERR_OVERLOADED);
    sleep_ms(3);
    surpool_conn_release(c);
    join_bounded(th, "the queued waiter");
    assert_int_equal(w.rc, SURPOOL_OK);

    assert_int_equal(events(f, SURPOOL_EVENT_ACQUIRE), 22);
    assert_int_equal(events(f, SURPOOL_EVENT_RELEASE), 22);
    WAIT_UNTIL(events(f, SURPOOL_EVENT_CREATE) == 1); /* from the connector thread */
    assert_int_equal(events(f, SURPOOL_EVENT_TIMEOUT), 1);
    assert_int_equal(events(f, SURPOOL_EVENT_SHED), 1);
    surpool_stats st = stats(f);
    assert_true(st.acquire_wait_p50_us <= st.acquire_wait_p95_us);
    assert_true(st.acquire_wait_p95_us <= st.acquire_wait_p99_us);
    assert_true(st.acquire_wait_p99_us <= st.acquire_wait_max_us);
    assert_true(st.acquire_wait_max_us >= 3000); /* the waiter waited >= 3 ms */
    assert_true(st.connect_max_us >= st.connect_p50_us);
}

static void test_lazy_start_and_server_down_at_start(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    base(f, &cfg);
    cfg.min_connections = 2;
    cfg.breaker_threshold = 0;
    atomic_store(&f->fs.fail_connects, 1000000);
    surpool_error err;
    surpool_pool *p = NULL;
    /* Default: creation fails with the reason. */
    assert_int_equal(surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &p, &err),
                     SURPOOL_ERR_CONNECT);
    assert_null(p);
    /* lazy_start: creation succeeds; the pool fills once the server is up. */
    cfg.lazy_start = 1;
    create(f, &cfg);
    atomic_store(&f->fs.fail_connects, 0);
    WAIT_UNTIL(stats(f).idle == 2);
}

/* Every millisecond setting at its bound (365 days) at once: nothing overflows
 * (UBSan), and nothing fires that a year-long setting should not: no keepalive
 * ping, no validation, no leak report, no retirement. A per-call LONG_MAX
 * timeout saturates. */
static void test_ms_settings_at_bound_run_normally(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    base(f, &cfg);
    cfg.acquire_timeout_ms = (long)SURPOOL__MS_MAX;
    cfg.connect_timeout_ms = (long)SURPOOL__MS_MAX;
    cfg.request_timeout_ms = (long)SURPOOL__MS_MAX;
    cfg.reconnect_backoff_min_ms = (long)SURPOOL__MS_MAX;
    cfg.reconnect_backoff_max_ms = (long)SURPOOL__MS_MAX;
    cfg.idle_timeout_ms = (long)SURPOOL__MS_MAX;
    cfg.max_lifetime_ms = (long)SURPOOL__MS_MAX;
    cfg.validation_idle_ms = (long)SURPOOL__MS_MAX;
    cfg.validation_timeout_ms = (long)SURPOOL__MS_MAX;
    cfg.keepalive_interval_ms = (long)SURPOOL__MS_MAX;
    cfg.leak_threshold_ms = (long)SURPOOL__MS_MAX;
    cfg.maintenance_interval_ms = 5; /* so that the checks above get to run */
    create(f, &cfg);
    for (int i = 0; i < 5; i++) {
        surpool_conn *c = NULL, *d = NULL;
        assert_int_equal(surpool_pool_acquire(f->pool, -1, &c, NULL), SURPOOL_OK);
        assert_int_equal(surpool_pool_acquire(f->pool, LONG_MAX, &d, NULL), SURPOOL_OK);
        assert_int_equal(surpool_conn_query(c, "RETURN 1", NULL, NULL, NULL), SURPOOL_OK);
        sleep_ms(20); /* a few maintainer ticks with leases out */
        surpool_conn_release(c);
        surpool_conn_release(d);
    }
    assert_int_equal(surpool_pool_drain(f->pool, LONG_MAX), SURPOOL_OK);
    sleep_ms(20); /* a few maintainer ticks with the connections idle */
    surpool_stats st = stats(f);
    assert_int_equal(atomic_load(&f->pings), 0);
    assert_int_equal(st.validations, 0);
    assert_int_equal(st.leaks, 0);
    assert_int_equal(events(f, SURPOOL_EVENT_LEAK), 0);
    assert_int_equal(st.lifetime_retirements, 0);
    assert_int_equal(st.idle_retirements, 0);
    assert_int_equal(st.created, 2);
}

/* A server whose tokens belong to an epoch: a restart (epoch + 1) refuses the
 * older ones, as a restarted SurrealDB refuses tokens signed before it. */
typedef struct token_server {
    atomic_int epoch, signins, authenticates, refused;
} token_server;

static json_t *token_responder(void *ud, json_int_t id, const char *method, json_t *params)
{
    token_server *ts = ud;
    char tok[64];
    if (strcmp(method, "signin") == 0) {
        atomic_fetch_add(&ts->signins, 1);
        snprintf(tok, sizeof(tok), "epoch-%d", atomic_load(&ts->epoch));
        return json_pack("{s:I, s:s}", "id", id, "result", tok);
    }
    if (strcmp(method, "authenticate") == 0) {
        atomic_fetch_add(&ts->authenticates, 1);
        snprintf(tok, sizeof(tok), "epoch-%d", atomic_load(&ts->epoch));
        const char *given = json_string_value(json_array_get(params, 0));
        if (given == NULL || strcmp(given, tok) != 0) {
            atomic_fetch_add(&ts->refused, 1);
            return json_pack("{s:I, s:{s:i, s:s}}", "id", id, "error", "code", -32002,
                             "message", "The token has expired");
        }
    }
    return fake_default_responder(NULL, id, method, params);
}

/* Rules A1-A2 (src/auth.h): 16 connections opened at once cost one signin;
 * after a "restart" that refuses the old token, refilling costs one more. */
static void test_one_signin_per_pool_no_stampede(void **state)
{
    fixture *f = *state;
    token_server ts;
    memset(&ts, 0, sizeof(ts));
    surpool_config cfg;
    base(f, &cfg);
    f->fs.responder = token_responder; /* after base(), which sets its own */
    f->fs.responder_ud = &ts;
    atomic_store(&f->fs.call_latency_us, 2000); /* sign-ins overlap */
    cfg.user = "root";
    cfg.pass = "root";
    cfg.min_connections = 16;
    cfg.max_connections = 16;
    cfg.max_concurrent_connects = 16;
    cfg.shared_connections = 0;
    create(f, &cfg);
    WAIT_UNTIL(stats(f).idle == 16);
    assert_int_equal(atomic_load(&ts.signins), 1);
    assert_int_equal(atomic_load(&ts.authenticates), 15);

    atomic_fetch_add(&ts.epoch, 1);
    fake_kill_all(f->pool->transport);
    WAIT_UNTIL(stats(f).created == 32 && stats(f).idle == 16);
    assert_int_equal(atomic_load(&ts.signins), 2);
    /* Each refused at most once: no connection signed in on its own. */
    assert_true(atomic_load(&ts.refused) <= 16);
}

/* The on_connect hook gets a handle of its own (issue 9 item 7): calls on it
 * work during the hook, at connect and when a dirty lease is reset on
 * release; kept past the hook, it is stale and refused. */
static atomic_int g_hook_calls, g_hook_ok;
static _Atomic(surpool_conn *) g_hook_handle;

static surpool_err on_connect_pings(void *ud, surpool_conn *conn)
{
    (void)ud;
    atomic_fetch_add(&g_hook_calls, 1);
    if (surpool_conn_ping(conn, NULL) == SURPOOL_OK && surpool_conn_set_timeout(conn, -1) == 0)
        atomic_fetch_add(&g_hook_ok, 1);
    atomic_store(&g_hook_handle, conn);
    return SURPOOL_OK;
}

static void test_on_connect_gets_a_valid_handle(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    base(f, &cfg);
    cfg.max_connections = 1;
    cfg.on_connect = on_connect_pings;
    atomic_store(&g_hook_calls, 0);
    atomic_store(&g_hook_ok, 0);
    create(f, &cfg);
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(f->pool, 5000, &c, NULL), SURPOOL_OK);
    assert_int_equal(atomic_load(&g_hook_calls), 1);
    assert_int_equal(atomic_load(&g_hook_ok), 1);
    surpool_conn *kept = atomic_load(&g_hook_handle);
    assert_ptr_not_equal(kept, c);
    assert_int_equal(surpool_conn_ping(kept, NULL), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_ping(c, NULL), SURPOOL_OK);

    /* A dirty lease is reset on release: the hook runs again, on a new handle. */
    assert_int_equal(surpool_conn_use(c, "other", "db", NULL), SURPOOL_OK);
    surpool_conn_release(c);
    assert_int_equal(atomic_load(&g_hook_calls), 2);
    assert_int_equal(atomic_load(&g_hook_ok), 2);
    assert_int_equal(surpool_conn_ping(atomic_load(&g_hook_handle), NULL),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(stats(f).resets, 1);
    assert_int_equal(stats(f).idle, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_breaker_fails_fast_and_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_signin_per_pool_no_stampede, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lifetime_never_closes_a_lease, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout_keeps_minimum, setup, teardown),
        cmocka_unit_test_setup_teardown(test_validation_on_acquire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_pings_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_does_not_defeat_idle_timeout, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_leak_reported_once_with_call_site, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pause_resume_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_on_connect_gets_a_valid_handle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events_and_percentiles, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lazy_start_and_server_down_at_start, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ms_settings_at_bound_run_normally, setup,
                                        teardown),
    };
    return cmocka_run_group_tests_name("lifecycle", tests, NULL, NULL);
}
