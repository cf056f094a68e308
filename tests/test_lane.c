/*
 * The shared lane on the fake transport: pool-level calls without a lease,
 * many in flight per socket, the async API's "exactly once" rule, queueing,
 * deadlines, dead sockets, close and destroy with work outstanding.
 */
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
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    fake_settings_init(&f->fs);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    surpool_pool_destroy(f->pool);
    assert_int_equal(atomic_load(&f->fs.open_now), 0);
    free(f);
    return 0;
}

static surpool_pool *make_pool(fixture *f, int max, int shared, int inflight, long req_ms)
{
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = max;
    cfg.shared_connections = shared;
    cfg.shared_max_inflight = inflight;
    cfg.request_timeout_ms = req_ms;
    cfg.acquire_timeout_ms = 20000;
    surpool_error err;
    if (surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &f->pool, &err) !=
        SURPOOL_OK)
        fail_msg("create: %s", err.message);
    return f->pool;
}

/* Poll a counter until it reaches n; generous bound only against hangs. */
static void wait_count(atomic_int *v, int n)
{
    for (int i = 0; i < 60000 && atomic_load(v) < n; i++)
        sleep_ms(1);
    assert_int_equal(atomic_load(v), n);
}

static void test_query_through_lane(void **state)
{
    fixture *f = *state;
    surpool_pool *p = make_pool(f, 4, 2, 16, 5000);
    json_t *out = NULL;
    surpool_error err;
    assert_int_equal(surpool_query(p, "RETURN 1", NULL, &out, &err), SURPOOL_OK);
    assert_string_equal(json_string_value(json_object_get(json_array_get(out, 0), "result")),
                        "RETURN 1");
    json_decref(out);
    assert_int_equal(surpool_call(p, "ping", NULL, &out, &err), SURPOOL_OK);
    assert_true(json_is_null(out));
    json_decref(out);
    assert_int_equal(surpool_call(p, "fail", NULL, &out, &err), SURPOOL_ERR_SERVER);
    assert_int_equal(err.server_code, -32000);

    surpool_stats st;
    /* A completion counts itself out just after waking its caller. */
    for (int i = 0; i < 5000; i++) {
        surpool_pool_stats(p, &st);
        if (st.lane_inflight == 0)
            break;
        sleep_ms(1);
    }
    assert_int_equal(st.lane_requests, 3);
    assert_int_equal(st.lane_connections, 1);
    assert_int_equal(st.in_use, 1); /* the lane's connection is a lease */
    assert_int_equal(st.lane_inflight, 0);

    /* A lease is still available next to the lane. */
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(p, 1000, &c, &err), SURPOOL_OK);
    surpool_conn_release(c);
    /* Leases, not the lane, for session state. */
    assert_int_equal(surpool_call(p, "use", NULL, NULL, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_call(p, "let", NULL, NULL, &err), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_query(p, "", NULL, NULL, &err), SURPOOL_ERR_INVALID_ARG);
    json_t *arr = json_array();
    assert_int_equal(surpool_query(p, "RETURN 1", arr, NULL, &err), SURPOOL_ERR_INVALID_ARG);
    json_decref(arr);
    assert_int_equal(surpool_pool_drain(p, 1000), SURPOOL_OK); /* lane leases don't count */
}

typedef struct hammer {
    surpool_pool *pool;
    int calls;
    atomic_int ok, bad;
} hammer;

static void *hammer_main(void *arg)
{
    hammer *h = arg;
    for (int i = 0; i < h->calls; i++) {
        char sql[32];
        snprintf(sql, sizeof(sql), "RETURN %d", i);
        json_t *out = NULL;
        if (surpool_query(h->pool, sql, NULL, &out, NULL) == SURPOOL_OK &&
            strcmp(json_string_value(json_object_get(json_array_get(out, 0), "result")), sql) ==
                0)
            atomic_fetch_add(&h->ok, 1);
        else
            atomic_fetch_add(&h->bad, 1);
        json_decref(out);
    }
    return NULL;
}

static void test_many_threads_share_two_sockets(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.call_latency_us, 300);
    surpool_pool *p = make_pool(f, 8, 2, 64, 20000);
    enum { THREADS = 16, CALLS = 100 };
    hammer h = {p, CALLS, 0, 0};
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, hammer_main, &h);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&h.ok), THREADS * CALLS);
    assert_int_equal(atomic_load(&h.bad), 0);
    surpool_stats st;
    surpool_pool_stats(p, &st);
    assert_true(st.lane_connections >= 1 && st.lane_connections <= 2);
    assert_int_equal(st.created, (uint64_t)st.lane_connections); /* no lease churn */
    assert_int_equal(st.lane_requests, THREADS * CALLS);
}

/* ---- async ---- */

typedef struct tally {
    atomic_int done;
    atomic_int calls[4096];
    atomic_int codes[32];
    atomic_int bad; /* contract breaches seen in callbacks (asserted on the main thread) */
    int check_result;
} tally;

typedef struct tag {
    tally *t;
    int index;
} tag;

/* Runs on surpool's threads: records, never asserts (a cmocka failure must not
 * longjmp across threads). wait_tally() checks `bad` on the main thread. */
static void on_result(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    tag *g = ud;
    int bad = err == NULL;
    if (code == SURPOOL_OK && g->t->check_result) {
        char sql[32];
        snprintf(sql, sizeof(sql), "RETURN %d", g->index);
        const char *got =
            json_string_value(json_object_get(json_array_get(result, 0), "result"));
        if (got == NULL || strcmp(got, sql) != 0)
            code = SURPOOL_ERR_PROTOCOL; /* wrong reply matched: count as bad */
    } else if (code == SURPOOL_OK) {
        bad |= result == NULL;
    } else {
        bad |= result != NULL || (err != NULL && err->code != code);
    }
    if (bad)
        atomic_fetch_add(&g->t->bad, 1);
    atomic_fetch_add(&g->t->calls[g->index], 1);
    atomic_fetch_add(&g->t->codes[code], 1);
    atomic_fetch_add(&g->t->done, 1);
}

/* wait_count() for a tally, then the callbacks' own checks. */
static void wait_tally(tally *t, int n)
{
    wait_count(&t->done, n);
    assert_int_equal(atomic_load(&t->bad), 0);
}

static void test_async_exactly_once(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.call_latency_us, 100);
    surpool_pool *p = make_pool(f, 4, 2, 128, 20000);
    enum { N = 4000 };
    tally *t = calloc(1, sizeof(*t));
    t->check_result = 1;
    tag *tags = calloc(N, sizeof(*tags));
    for (int i = 0; i < N; i++) {
        tags[i] = (tag){t, i};
        char sql[32];
        snprintf(sql, sizeof(sql), "RETURN %d", i);
        assert_int_equal(surpool_query_async(p, sql, NULL, on_result, &tags[i]), SURPOOL_OK);
    }
    wait_tally(t, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(atomic_load(&t->calls[i]), 1);
    assert_int_equal(atomic_load(&t->codes[SURPOOL_OK]), N);
    /* Bad arguments: refused, callback never called. */
    assert_int_equal(surpool_query_async(p, NULL, NULL, on_result, &tags[0]),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_call_async(p, "signin", NULL, on_result, &tags[0]),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_query_async(p, "RETURN 1", NULL, NULL, NULL),
                     SURPOOL_ERR_INVALID_ARG);
    sleep_ms(20);
    assert_int_equal(atomic_load(&t->calls[0]), 1);
    free(tags);
    free(t);
}

/* A callback that queues the next call: chains never block or deadlock. */
typedef struct chain {
    surpool_pool *pool;
    atomic_int left;
    atomic_int done;
} chain;

static void on_chain(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)result;
    (void)err;
    chain *c = ud;
    if (code == SURPOOL_OK && atomic_fetch_sub(&c->left, 1) > 1) {
        if (surpool_query_async(c->pool, "RETURN 1", NULL, on_chain, c) == SURPOOL_OK)
            return;
    }
    atomic_store(&c->done, 1);
}

static void test_async_chain_from_callback(void **state)
{
    fixture *f = *state;
    surpool_pool *p = make_pool(f, 3, 1, 4, 20000); /* latency 0: completes inline */
    chain c = {p, 2000, 0};
    assert_int_equal(surpool_query_async(p, "RETURN 1", NULL, on_chain, &c), SURPOOL_OK);
    wait_count(&c.done, 1);
    assert_int_equal(atomic_load(&c.left), 0);

    atomic_store(&f->fs.call_latency_us, 50); /* and completing on the timer thread */
    chain d = {p, 500, 0};
    assert_int_equal(surpool_query_async(p, "RETURN 1", NULL, on_chain, &d), SURPOOL_OK);
    wait_count(&d.done, 1);
    assert_int_equal(atomic_load(&d.left), 0);
}

static void test_queue_deadline_and_capacity(void **state)
{
    fixture *f = *state;
    /* One socket, one request at a time, 60 ms deadline. */
    surpool_pool *p = make_pool(f, 2, 1, 1, 60);
    tally *t = calloc(1, sizeof(*t));
    tag tags[3] = {{t, 0}, {t, 1}, {t, 2}};
    assert_int_equal(surpool_call_async(p, "noreply", NULL, on_result, &tags[0]), SURPOOL_OK);
    assert_int_equal(surpool_call_async(p, "ping", NULL, on_result, &tags[1]), SURPOOL_OK);
    assert_int_equal(surpool_call_async(p, "ping", NULL, on_result, &tags[2]), SURPOOL_OK);
    wait_tally(t, 3);
    /* The first times out in flight, the others in the queue or right after. */
    assert_int_equal(atomic_load(&t->calls[0]), 1);
    assert_int_equal(atomic_load(&t->calls[1]), 1);
    assert_int_equal(atomic_load(&t->calls[2]), 1);
    assert_true(atomic_load(&t->codes[SURPOOL_ERR_REQUEST_TIMEOUT]) >= 1);
    assert_int_equal(atomic_load(&t->codes[SURPOOL_ERR_REQUEST_TIMEOUT]) +
                         atomic_load(&t->codes[SURPOOL_OK]),
                     3);
    free(t);
}

/* A queued request goes out as soon as the one ahead of it completes (it used
 * to wait for the next completion or its own deadline). */
static void test_queued_request_sent_when_slot_frees(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.call_latency_us, 20000);
    surpool_pool *p = make_pool(f, 2, 1, 1, 20000);
    tally *t = calloc(1, sizeof(*t));
    enum { N = 5 };
    tag tags[N];
    for (int i = 0; i < N; i++) {
        tags[i] = (tag){t, i};
        assert_int_equal(surpool_call_async(p, "ping", NULL, on_result, &tags[i]), SURPOOL_OK);
    }
    wait_tally(t, N);
    assert_int_equal(atomic_load(&t->codes[SURPOOL_OK]), N);
    free(t);
}

static void test_dead_socket_replaced(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.call_latency_us, 10000000); /* 10 s: surely in flight when killed */
    surpool_pool *p = make_pool(f, 3, 1, 32, 20000);
    tally *t = calloc(1, sizeof(*t));
    tag tags[10];
    for (int i = 0; i < 10; i++) {
        tags[i] = (tag){t, i};
        assert_int_equal(surpool_call_async(p, "ping", NULL, on_result, &tags[i]), SURPOOL_OK);
    }
    surpool_stats st;
    for (int i = 0; i < 5000; i++) {
        surpool_pool_stats(p, &st);
        if (st.lane_inflight == 10)
            break;
        sleep_ms(1);
    }
    assert_int_equal(st.lane_inflight, 10);
    fake_kill_all(p->transport);
    wait_tally(t, 10);
    assert_int_equal(atomic_load(&t->codes[SURPOOL_ERR_DISCONNECTED]), 10);
    /* The lane returns the dead socket and gets another. */
    atomic_store(&f->fs.call_latency_us, 0);
    json_t *out = NULL;
    assert_int_equal(surpool_query(p, "RETURN 1", NULL, &out, NULL), SURPOOL_OK);
    json_decref(out);
    surpool_pool_stats(p, &st);
    assert_int_equal(st.created, 2);
    free(t);
}

static void test_close_and_destroy_with_work_outstanding(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.call_latency_us, 5000000); /* replies would take 5 s */
    surpool_pool *p = make_pool(f, 2, 1, 2, 30000);
    tally *t = calloc(1, sizeof(*t));
    enum { N = 12 };
    tag tags[N];
    for (int i = 0; i < N; i++) {
        tags[i] = (tag){t, i};
        assert_int_equal(surpool_call_async(p, "ping", NULL, on_result, &tags[i]), SURPOOL_OK);
    }
    surpool_stats st;
    for (int i = 0; i < 5000; i++) {
        surpool_pool_stats(p, &st);
        if (st.lane_inflight == 2)
            break;
        sleep_ms(1);
    }
    assert_int_equal(st.lane_inflight, 2);
    assert_int_equal(st.lane_queued, N - 2);
    surpool_pool_close(p);
    wait_tally(t, N - 2); /* the queued ones: CLOSED, at once */
    assert_int_equal(atomic_load(&t->codes[SURPOOL_ERR_CLOSED]), N - 2);
    assert_int_equal(surpool_query_async(p, "RETURN 1", NULL, on_result, &tags[0]),
                     SURPOOL_ERR_CLOSED);
    surpool_pool_destroy(p); /* in flight: DISCONNECTED when the socket closes */
    f->pool = NULL;
    assert_int_equal(atomic_load(&t->done), N);
    assert_int_equal(atomic_load(&t->bad), 0);
    assert_int_equal(atomic_load(&t->codes[SURPOOL_ERR_DISCONNECTED]), 2);
    for (int i = 0; i < N; i++)
        assert_int_equal(atomic_load(&t->calls[i]), 1);
    free(t);
}

static void test_no_lane_means_leases(void **state)
{
    fixture *f = *state;
    surpool_pool *p = make_pool(f, 2, 0, 1, 5000);
    json_t *out = NULL;
    assert_int_equal(surpool_query(p, "RETURN 1", NULL, &out, NULL), SURPOOL_OK);
    json_decref(out);
    tally t;
    memset(&t, 0, sizeof(t));
    tag g = {&t, 0};
    assert_int_equal(surpool_query_async(p, "RETURN 1", NULL, on_result, &g),
                     SURPOOL_ERR_INVALID_ARG);
    surpool_stats st;
    surpool_pool_stats(p, &st);
    assert_int_equal(st.lane_requests, 0);
    assert_int_equal(st.acquired, 1);
    assert_int_equal(st.in_use, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_query_through_lane, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_threads_share_two_sockets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_exactly_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_chain_from_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_deadline_and_capacity, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queued_request_sent_when_slot_frees, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_dead_socket_replaced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_and_destroy_with_work_outstanding, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_no_lane_means_leases, setup, teardown),
    };
    return cmocka_run_group_tests_name("lane", tests, NULL, NULL);
}
