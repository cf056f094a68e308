/*
 * Hostile servers: our test server (tests/server/server.mjs, the real SurrealDB
 * core) switched into each of its hostile modes through POST /control. For each
 * mode the call must end with the documented surpool_err (not a hang, not a
 * crash), the broken connection must be replaced (after switching back, acquire
 * + query works and the stats balance), and callers holding other connections
 * must not notice: three bystander threads ping on their own leases the whole
 * time (`ping` is exempt from the modes) and every one of their pings must
 * succeed.
 *
 * Expected codes, and why:
 *   malformed        PROTOCOL      the reply frame is not JSON
 *   binary           PROTOCOL      a binary frame on a JSON connection
 *   truncate         DISCONNECTED  half a frame, then the TCP connection dies
 *   close-mid-reply  DISCONNECTED  a non-final fragment, then the socket dies
 *   wrong-id         REQUEST_TIMEOUT  the reply matches no request: dropped
 *   no-id            REQUEST_TIMEOUT  an error without id cannot be correlated
 *   slow             REQUEST_TIMEOUT  never answered
 *   huge             TOO_LARGE     80 MiB reply, max_message_bytes = 1 MiB
 *   duplicate-id     OK            the second copy is dropped; the lease stays good
 *   duplicate-key    PROTOCOL      a frame with two "id" keys (its own, then another
 *                                  caller's) is refused, never routed by either
 *   stolen-id        PROTOCOL      the same with another caller's id first: routed
 *                                  by that id, refused by its decode when that call
 *                                  is in flight on the socket, else by the walk the
 *                                  transport makes before dropping a frame, which
 *                                  fails the connection (every reply is spoilt, so
 *                                  each socket's last one names no call of it)
 *   stolen-id-once   PROTOCOL      stolen-id for one reply, on a busy lane socket:
 *                                  the call that gets the frame fails, and the
 *                                  socket fails with it, so the call whose reply it
 *                                  was ends now too (PROTOCOL), not at its deadline
 *   no-upgrade       CONNECT       (acquire) the connect times out; create with
 *                                  min_connections fails with CONNECT too
 *   refuse           CONNECT       the server drops every new TCP connection
 * Every transport-level failure breaks the lease: the next call on it returns
 * SURPOOL_ERR_BROKEN without sending anything. The reply modes are also run
 * through the pool-level surpool_query and as 20 surpool_query_async calls at
 * once on the shared lane: each callback must come exactly once, with the
 * mode's code (or DISCONNECTED, for a call on a socket another call broke).
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "fault_util.h"
#include "harness.h"
#include "surpool.h"

static test_server g_server;

static int group_setup(void **state)
{
    (void)state;
    return harness_start_root(&g_server);
}

static int group_teardown(void **state)
{
    (void)state;
    harness_stop(&g_server);
    return 0;
}

/* Every test starts from the start-up settings (normal mode, no faults). */
/* Most modes fail or answer within milliseconds; 1.5 s catches a reply that
 * never comes. test_huge raises it: the client must read past
 * max_message_bytes of an 80 MiB reply, which under TSan on a busy machine
 * can take longer than that. */
static long g_request_timeout_ms = 1500;

static int setup(void **state)
{
    (void)state;
    fu_watchdog(0, NULL);        /* a failed test may have left it armed */
    g_request_timeout_ms = 1500; /* ... or raised this */
    return harness_control(&g_server, "{\"reset\":true}") == 0 ? 0 : -1;
}

static void set_mode(const char *mode)
{
    char body[96];
    snprintf(body, sizeof(body), "{\"mode\":\"%s\"}", mode);
    if (harness_control(&g_server, body) != 0)
        fail_msg("POST /control %s failed", body);
}

static void base_config(surpool_config *cfg)
{
    /* SURPOOL_TEST_WIRE=cbor runs every mode over CBOR (tests/CMakeLists.txt). */
    harness_root_config(cfg, g_server.url, "hostile");
    cfg->ns = "hostile";
    cfg->max_connections = 8;
    cfg->acquire_timeout_ms = 10000;
    cfg->connect_timeout_ms = 1500;
    cfg->request_timeout_ms = g_request_timeout_ms;
    cfg->max_message_bytes = 1024 * 1024;
    cfg->reconnect_backoff_min_ms = 20;
    cfg->reconnect_backoff_max_ms = 200;
    cfg->breaker_threshold = 0; /* the error itself is under test, not the breaker */
}

static surpool_pool *make_pool(void)
{
    surpool_config cfg;
    base_config(&cfg);
    surpool_pool *p = NULL;
    surpool_error err;
    if (surpool_pool_create(&cfg, &p, &err) != SURPOOL_OK)
        fail_msg("create: %s: %s", surpool_strerror(err.code), err.message);
    return p;
}

static surpool_conn *lease(surpool_pool *p)
{
    surpool_conn *c = NULL;
    surpool_error err;
    if (surpool_pool_acquire(p, 10000, &c, &err) != SURPOOL_OK)
        fail_msg("acquire: %s: %s", surpool_strerror(err.code), err.message);
    return c;
}

static void expect_code(const char *what, surpool_err got, surpool_err want,
                        const surpool_error *err)
{
    if (got != want)
        fail_msg("%s: expected %s, got %s (%s)", what, surpool_strerror(want),
                 surpool_strerror(got), got != SURPOOL_OK ? err->message : "");
}

/* ------------------------------------------------------------------------- */
/* Bystanders: other callers on other connections, pinging the whole time     */
/* ------------------------------------------------------------------------- */

#define NBYSTANDERS 3

typedef struct bystanders bystanders;
typedef struct bystander_arg {
    bystanders *b;
    int i;
} bystander_arg;

/* Heap-allocated, so that the threads of a test that failed half-way (and
 * could not stop them) never touch the next test's state. */
struct bystanders {
    surpool_conn *conns[NBYSTANDERS];
    bystander_arg args[NBYSTANDERS];
    pthread_t th[NBYSTANDERS];
    atomic_int stop;
    atomic_int pings;
    atomic_int failures;
    char first_failure[320];
    pthread_mutex_t mu;
};

static void *bystander_main(void *arg)
{
    bystander_arg *a = arg;
    bystanders *b = a->b;
    while (!atomic_load(&b->stop)) {
        surpool_error err;
        surpool_err rc = surpool_conn_ping(b->conns[a->i], &err);
        if (rc != SURPOOL_OK) {
            pthread_mutex_lock(&b->mu);
            if (atomic_fetch_add(&b->failures, 1) == 0)
                snprintf(b->first_failure, sizeof(b->first_failure), "%s: %s",
                         surpool_strerror(rc), err.message);
            pthread_mutex_unlock(&b->mu);
            break;
        }
        atomic_fetch_add(&b->pings, 1);
        fu_sleep_ms(10);
    }
    return NULL;
}

/* Lease NBYSTANDERS connections (the pool opens one each) and start pinging. */
static bystanders *bystanders_start(surpool_pool *p)
{
    bystanders *b = calloc(1, sizeof(*b));
    assert_non_null(b);
    pthread_mutex_init(&b->mu, NULL);
    for (int i = 0; i < NBYSTANDERS; i++)
        b->conns[i] = lease(p);
    for (int i = 0; i < NBYSTANDERS; i++) {
        b->args[i].b = b;
        b->args[i].i = i;
        assert_int_equal(pthread_create(&b->th[i], NULL, bystander_main, &b->args[i]), 0);
    }
    return b;
}

/* Wait until the bystanders have pinged `more` more times (they keep working
 * while the hostile mode is on), bounded only to avoid a hang. */
static void bystanders_progress(bystanders *b, int more)
{
    int target = atomic_load(&b->pings) + more;
    for (int i = 0; i < 2000 * FU_SLOW && atomic_load(&b->pings) < target &&
                    atomic_load(&b->failures) == 0;
         i++)
        fu_sleep_ms(5);
    if (atomic_load(&b->failures) == 0 && atomic_load(&b->pings) < target)
        fail_msg("bystanders made no progress (%d of %d pings)", atomic_load(&b->pings),
                 target);
}

static void bystanders_stop(bystanders *b)
{
    atomic_store(&b->stop, 1);
    for (int i = 0; i < NBYSTANDERS; i++)
        if (fu_join(b->th[i], 60) != 0)
            fail_msg("a bystander's ping hung");
    for (int i = 0; i < NBYSTANDERS; i++)
        surpool_conn_release(b->conns[i]);
    pthread_mutex_destroy(&b->mu);
    int failures = atomic_load(&b->failures), pings = atomic_load(&b->pings);
    char first[sizeof(b->first_failure)];
    memcpy(first, b->first_failure, sizeof(first));
    free(b);
    if (failures != 0)
        fail_msg("%d bystander ping(s) failed on other connections; first: %s", failures,
                 first);
    assert_true(pings > 0);
}

/* After the fault: back to normal, a fresh lease works, the books balance. */
static void check_recovered(surpool_pool *p, int expect_broken)
{
    set_mode("normal");
    if (expect_broken) {
        /* A lane socket that broke is given back (and closed) by the lane
         * thread once its last slot is free, which is after the callbacks
         * returned. A connection is counted in `reconnects` only if it
         * connects after a close: wait for the close before the lease below
         * opens the replacement, or the lease may connect first and nothing
         * is counted as replaced. */
        int closed;
        surpool_stats st0;
        TK_POLL(closed, (surpool_pool_stats(p, &st0), st0.broken >= 1 && st0.destroyed >= 1),
                10000);
        if (!closed)
            fail_msg("the broken connection was never closed (broken %llu, destroyed %llu)",
                     (unsigned long long)st0.broken, (unsigned long long)st0.destroyed);
    }
    surpool_conn *c = lease(p);
    surpool_error err;
    json_t *out = NULL;
    surpool_err rc = surpool_conn_query(c, "RETURN 2", NULL, &out, &err);
    expect_code("query after recovery", rc, SURPOOL_OK, &err);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(out, 0), "result")), 2);
    json_decref(out);
    surpool_conn_release(c);

    surpool_stats st;
    /* The shared lane (surpool_query) keeps its connections leased: once the
     * lane thread has given back what it drops, in_use == lane_connections.
     * Checked on the snapshot that showed it, not on a later read: the lane
     * forgets a dead socket a moment before the pool gets it back (lane.c),
     * and a read in between sees one lease too many. */
    if (!fu_settle_leases(p, &st))
        fail_msg("%d connection(s) still leased after every lease was released, lane holds %d "
                 "(created %llu destroyed %llu idle %d connecting %d validations %llu)",
                 st.in_use, st.lane_connections, (unsigned long long)st.created,
                 (unsigned long long)st.destroyed, st.idle, st.connecting,
                 (unsigned long long)st.validations);
    if (!fu_stats_balanced(p, &st))
        fail_msg("stats do not balance: created %llu destroyed %llu idle %d in_use %d "
                 "connecting %d total %d",
                 (unsigned long long)st.created, (unsigned long long)st.destroyed, st.idle,
                 st.in_use, st.connecting, st.total);
    if (expect_broken) {
        assert_true(st.broken >= 1);
        assert_true(st.destroyed >= 1);  /* the broken one was closed... */
        assert_true(st.reconnects >= 1); /* ...and replaced */
    } else {
        assert_int_equal(st.broken, 0);
        assert_int_equal(st.destroyed, 0);
    }
}

/* ------------------------------------------------------------------------- */
/* Asynchronous lane calls: each callback exactly once, with a clean code     */
/* ------------------------------------------------------------------------- */

#define NASYNC 20

typedef struct async_batch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    atomic_int calls[NASYNC];
    surpool_err codes[NASYNC];
} async_batch;

typedef struct async_slot {
    async_batch *b;
    int i;
} async_slot;

static void async_cb(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)result;
    (void)err;
    async_slot *slot = ud;
    async_batch *b = slot->b;
    atomic_fetch_add(&b->calls[slot->i], 1);
    pthread_mutex_lock(&b->mu);
    b->codes[slot->i] = code;
    b->done++;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

/* NASYNC surpool_query_async calls in the current mode: every callback comes,
 * exactly once, with `want`, or DISCONNECTED for a call that shared a socket
 * with one that broke it first. */
static void run_async_batch(surpool_pool *p, const char *mode, surpool_err want)
{
    static async_batch b; /* static: a failed test must not leave it on a stack */
    static async_slot slots[NASYNC];
    memset(&b, 0, sizeof(b));
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, NULL);
    int accepted = 0;
    for (int i = 0; i < NASYNC; i++) {
        slots[i].b = &b;
        slots[i].i = i;
        surpool_err rc = surpool_query_async(p, "RETURN 1", NULL, async_cb, &slots[i]);
        if (rc != SURPOOL_OK)
            fail_msg("surpool_query_async in mode %s: %s", mode, surpool_strerror(rc));
        accepted++;
    }
    char what[96];
    snprintf(what, sizeof(what), "async callbacks in mode %s", mode);
    fu_watchdog(60, what);
    pthread_mutex_lock(&b.mu);
    while (b.done < accepted)
        pthread_cond_wait(&b.cv, &b.mu);
    pthread_mutex_unlock(&b.mu);
    fu_watchdog(0, NULL);
    fu_sleep_ms(50); /* a second call of any callback would show up here */
    for (int i = 0; i < NASYNC; i++) {
        if (atomic_load(&b.calls[i]) != 1)
            fail_msg("%s: callback %d called %d times", what, i, atomic_load(&b.calls[i]));
        if (b.codes[i] != want && b.codes[i] != SURPOOL_ERR_DISCONNECTED)
            fail_msg("%s: callback %d got %s, expected %s", what, i,
                     surpool_strerror(b.codes[i]), surpool_strerror(want));
    }
    pthread_cond_destroy(&b.cv);
    pthread_mutex_destroy(&b.mu);
}

/* ------------------------------------------------------------------------- */
/* Modes that spoil a reply                                                   */
/* ------------------------------------------------------------------------- */

static void run_reply_mode(const char *mode, surpool_err want)
{
    char what[128];
    surpool_pool *p = make_pool();
    bystanders *b = bystanders_start(p);
    surpool_conn *c = lease(p);
    surpool_error err;
    memset(&err, 0, sizeof(err));
    assert_int_equal(surpool_conn_ping(c, &err), SURPOOL_OK);

    set_mode(mode);
    snprintf(what, sizeof(what), "surpool_conn_query in mode %s", mode);
    fu_watchdog(60, what);
    json_t *out = NULL;
    surpool_err rc = surpool_conn_query(c, "RETURN 1", NULL, &out, &err);
    fu_watchdog(0, NULL);
    expect_code(what, rc, want, &err);
    assert_null(out);
    assert_int_equal(err.code, want);
    assert_true(strlen(err.message) > 0);
    assert_true(strlen(surpool_conn_last_error(c)) > 0);

    /* Broken: nothing more is sent on it, it is closed on release. */
    rc = surpool_conn_ping(c, &err);
    expect_code("ping on the broken lease", rc, SURPOOL_ERR_BROKEN, &err);
    surpool_conn_release(c);

    /* The same through the pool-level call. */
    snprintf(what, sizeof(what), "surpool_query in mode %s", mode);
    fu_watchdog(60, what);
    out = NULL;
    rc = surpool_query(p, "RETURN 1", NULL, &out, &err);
    fu_watchdog(0, NULL);
    expect_code(what, rc, want, &err);
    assert_null(out);

    /* And many at once on the lane, asynchronously (not for huge: 20 replies of
     * 80 MiB measure the loopback and the server's memory, not the client). */
    if (strcmp(mode, "huge") != 0)
        run_async_batch(p, mode, want);

    bystanders_progress(b, 3 * NBYSTANDERS);
    bystanders_stop(b);
    check_recovered(p, 1);
    surpool_pool_destroy(p);
}

static void test_malformed(void **state)
{
    (void)state;
    run_reply_mode("malformed", SURPOOL_ERR_PROTOCOL);
}

static void test_binary(void **state)
{
    (void)state;
    run_reply_mode("binary", SURPOOL_ERR_PROTOCOL);
}

static void test_truncate(void **state)
{
    (void)state;
    run_reply_mode("truncate", SURPOOL_ERR_DISCONNECTED);
}

static void test_close_mid_reply(void **state)
{
    (void)state;
    run_reply_mode("close-mid-reply", SURPOOL_ERR_DISCONNECTED);
}

static void test_wrong_id(void **state)
{
    (void)state;
    run_reply_mode("wrong-id", SURPOOL_ERR_REQUEST_TIMEOUT);
}

static void test_no_id(void **state)
{
    (void)state;
    run_reply_mode("no-id", SURPOOL_ERR_REQUEST_TIMEOUT);
}

static void test_slow(void **state)
{
    (void)state;
    run_reply_mode("slow", SURPOOL_ERR_REQUEST_TIMEOUT);
}

static void test_huge(void **state)
{
    (void)state;
    g_request_timeout_ms = 20000;
    run_reply_mode("huge", SURPOOL_ERR_TOO_LARGE);
    g_request_timeout_ms = 1500;
}

/* A duplicated reply: the first copy answers the call, the second is dropped
 * and must not be taken for the answer of the NEXT request on that socket. */
static void test_duplicate_id(void **state)
{
    (void)state;
    surpool_pool *p = make_pool();
    bystanders *b = bystanders_start(p);
    surpool_conn *c = lease(p);
    set_mode("duplicate-id");
    fu_watchdog(60, "queries in mode duplicate-id");
    for (int i = 1; i <= 5; i++) {
        char sql[32];
        snprintf(sql, sizeof(sql), "RETURN %d", i);
        surpool_error err;
        json_t *out = NULL;
        surpool_err rc = surpool_conn_query(c, sql, NULL, &out, &err);
        expect_code("query in mode duplicate-id", rc, SURPOOL_OK, &err);
        assert_int_equal(json_integer_value(json_object_get(json_array_get(out, 0), "result")),
                         i);
        json_decref(out);
    }
    fu_watchdog(0, NULL);
    surpool_error err;
    assert_int_equal(surpool_conn_ping(c, &err), SURPOOL_OK);
    surpool_conn_release(c);
    bystanders_progress(b, NBYSTANDERS);
    bystanders_stop(b);
    check_recovered(p, 0);
    surpool_pool_destroy(p);
}

/* A reply frame carrying two "id" keys, the second one another caller's: a
 * parser keeping the last key would hand this reply to that caller (issue 9
 * item 9). Refused as a protocol error; the connection is replaced. */
static void test_duplicate_key(void **state)
{
    (void)state;
    run_reply_mode("duplicate-key", SURPOOL_ERR_PROTOCOL);
}

/* The same frame with the other caller's id FIRST: routing reads only the
 * first "id", so the frame goes to that caller (who must get an error, never
 * this reply) or, when no such call is in flight on the socket, to no one:
 * then the transport walks it before dropping it and fails the connection, so
 * the lease's caller gets PROTOCOL, not REQUEST_TIMEOUT at its deadline. */
static void test_stolen_id(void **state)
{
    (void)state;
    run_reply_mode("stolen-id", SURPOOL_ERR_PROTOCOL);
}

/* One spoilt reply among NASYNC calls in flight on the lane: the call named
 * first in it gets PROTOCOL (never this reply), and the socket fails at once
 * (lane.c, transport.h contract 11), so the call named second ends now with
 * PROTOCOL (or DISCONNECTED, if it was still queued on the socket) instead of
 * REQUEST_TIMEOUT at its deadline. The other calls answer normally or end
 * with the socket. */
static void test_stolen_id_once(void **state)
{
    (void)state;
    static async_batch b; /* static: a failed test must not leave it on a stack */
    static async_slot slots[NASYNC];
    surpool_pool *p = make_pool();
    json_t *out = NULL;
    surpool_error err;
    surpool_err rc = surpool_query(p, "RETURN 1", NULL, &out, &err); /* the lane is up */
    expect_code("surpool_query before the mode", rc, SURPOOL_OK, &err);
    json_decref(out);
    memset(&b, 0, sizeof(b));
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, NULL);
    set_mode("stolen-id-once");
    for (int i = 0; i < NASYNC; i++) {
        slots[i].b = &b;
        slots[i].i = i;
        rc = surpool_query_async(p, "RETURN 1", NULL, async_cb, &slots[i]);
        if (rc != SURPOOL_OK)
            fail_msg("surpool_query_async: %s", surpool_strerror(rc));
    }
    fu_watchdog(60, "async callbacks in mode stolen-id-once");
    pthread_mutex_lock(&b.mu);
    while (b.done < NASYNC)
        pthread_cond_wait(&b.cv, &b.mu);
    pthread_mutex_unlock(&b.mu);
    fu_watchdog(0, NULL);
    int protocol = 0;
    for (int i = 0; i < NASYNC; i++) {
        if (atomic_load(&b.calls[i]) != 1)
            fail_msg("callback %d called %d times", i, atomic_load(&b.calls[i]));
        if (b.codes[i] != SURPOOL_OK && b.codes[i] != SURPOOL_ERR_PROTOCOL &&
            b.codes[i] != SURPOOL_ERR_DISCONNECTED)
            fail_msg("callback %d got %s, expected OK, PROTOCOL or DISCONNECTED", i,
                     surpool_strerror(b.codes[i]));
        protocol += b.codes[i] == SURPOOL_ERR_PROTOCOL;
    }
    assert_true(protocol >= 1);
    pthread_cond_destroy(&b.cv);
    pthread_mutex_destroy(&b.mu);
    check_recovered(p, 1);
    surpool_pool_destroy(p);
}

/* ------------------------------------------------------------------------- */
/* Modes that stop new connections                                            */
/* ------------------------------------------------------------------------- */

/* A second pool with min_connections = 1 must fail create with `want`. */
static void expect_create_fails(surpool_err want, const char *mode)
{
    surpool_config cfg;
    base_config(&cfg);
    cfg.min_connections = 1;
    cfg.connect_timeout_ms = 1000;
    surpool_pool *p2 = NULL;
    surpool_error err;
    memset(&err, 0, sizeof(err));
    char what[96];
    snprintf(what, sizeof(what), "surpool_pool_create (min_connections 1) in mode %s", mode);
    fu_watchdog(60, what);
    surpool_err rc = surpool_pool_create(&cfg, &p2, &err);
    fu_watchdog(0, NULL);
    if (rc == SURPOOL_OK)
        surpool_pool_destroy(p2);
    expect_code(what, rc, want, &err);
    assert_null(p2);
    assert_true(strlen(err.message) > 0);
}

/* With every pool connection leased (so acquire must open a new one), acquire
 * fails with `want` once its timeout passes; the leases keep working. */
static void run_connect_mode(const char *mode, surpool_err want, const char *msg_sub)
{
    surpool_pool *p = make_pool();
    bystanders *b = bystanders_start(p);
    surpool_stats st;
    surpool_pool_stats(p, &st);
    assert_int_equal(st.idle, 0);

    set_mode(mode); /* refuse: /control is unreachable now; SIGUSR2 brings it back */
    char what[96];
    snprintf(what, sizeof(what), "surpool_pool_acquire in mode %s", mode);
    fu_watchdog(60, what);
    surpool_conn *c = NULL;
    surpool_error err;
    memset(&err, 0, sizeof(err));
    surpool_err rc = surpool_pool_acquire(p, 10000, &c, &err); /* > connect timeout */
    fu_watchdog(0, NULL);
    if (rc == SURPOOL_OK)
        surpool_conn_release(c);
    expect_code(what, rc, want, &err);
    assert_null(c);
    if (msg_sub != NULL && strstr(err.message, msg_sub) == NULL)
        fail_msg("%s: message \"%s\" does not mention \"%s\"", what, err.message, msg_sub);

    expect_create_fails(want, mode);

    bystanders_progress(b, 3 * NBYSTANDERS);
    if (strcmp(mode, "refuse") == 0)
        assert_int_equal(kill(g_server.pid, SIGUSR2), 0);
    /* Back to normal: the pool connects again by itself (poll, bounded). */
    for (int i = 0;; i++) {
        if (harness_control(&g_server, "{\"mode\":\"normal\"}") == 0)
            break;
        if (i > 200 * FU_SLOW)
            fail_msg("the server did not come back from mode %s", mode);
        fu_sleep_ms(20);
    }
    surpool_pool_stats(p, &st);
    assert_true(st.connect_failures >= 1);
    bystanders_stop(b);
    check_recovered(p, 0);
    surpool_pool_destroy(p);
}

static void test_no_upgrade(void **state)
{
    (void)state;
    run_connect_mode("no-upgrade", SURPOOL_ERR_CONNECT, "timed out");
}

static void test_refuse(void **state)
{
    (void)state;
    run_connect_mode("refuse", SURPOOL_ERR_CONNECT, NULL);
}

int main(void)
{
    if (getenv("SURPOOL_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("SURPOOL_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_malformed, setup),
        cmocka_unit_test_setup(test_binary, setup),
        cmocka_unit_test_setup(test_truncate, setup),
        cmocka_unit_test_setup(test_close_mid_reply, setup),
        cmocka_unit_test_setup(test_wrong_id, setup),
        cmocka_unit_test_setup(test_no_id, setup),
        cmocka_unit_test_setup(test_slow, setup),
        cmocka_unit_test_setup(test_huge, setup),
        cmocka_unit_test_setup(test_duplicate_id, setup),
        cmocka_unit_test_setup(test_duplicate_key, setup),
        cmocka_unit_test_setup(test_stolen_id, setup),
        cmocka_unit_test_setup(test_stolen_id_once, setup),
        cmocka_unit_test_setup(test_no_upgrade, setup),
        cmocka_unit_test_setup(test_refuse, setup),
    };
    return cmocka_run_group_tests_name("hostile", tests, group_setup, group_teardown);
}
