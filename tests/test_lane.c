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
#include <unistd.h>

#include <cmocka.h>

#include "fake_transport.h"
#include "lane.h"
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

/* Poll until `cond` holds; the bound (~30 s) exists only against hangs, and
 * the failure says what was awaited. */
#define WAIT_FOR(cond, what)                                                                   \
    do {                                                                                       \
        int ok_ = 0;                                                                           \
        for (int i_ = 0; i_ < 30000; i_++) {                                                   \
            if (cond) {                                                                        \
                ok_ = 1;                                                                       \
                break;                                                                         \
            }                                                                                  \
            sleep_ms(1);                                                                       \
        }                                                                                      \
        if (!ok_)                                                                              \
            fail_msg("gave up waiting for %s", what);                                          \
    } while (0)

/* As WAIT_FOR, for a wait whose failure leaves a surpool thread stuck for good
 * (teardown's destroy would then hang): say what was awaited and end the
 * process at once. */
#define WAIT_OR_EXIT(cond, what)                                                               \
    do {                                                                                       \
        int ok_ = 0;                                                                           \
        for (int i_ = 0; i_ < 30000; i_++) {                                                   \
            if (cond) {                                                                        \
                ok_ = 1;                                                                       \
                break;                                                                         \
            }                                                                                  \
            sleep_ms(1);                                                                       \
        }                                                                                      \
        if (!ok_) {                                                                            \
            fprintf(stderr, "FAILED: gave up waiting for %s (a thread is stuck)\n", what);     \
            _exit(1);                                                                          \
        }                                                                                      \
    } while (0)

static surpool_stats stats_of(surpool_pool *p)
{
    surpool_stats st;
    surpool_pool_stats(p, &st);
    return st;
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

/* Async results are decoded and their callbacks run on the lane's delivery
 * thread, never on the thread that completed the request (the transport's, or
 * here, with no call latency, the submitting thread itself inside submit()),
 * and in completion order. */
typedef struct where {
    pthread_t submitter;
    atomic_int on_delivery, on_submitter, done, out_of_order, last;
} where;

static void on_where(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)err;
    where *w = ud;
    if (surpool__lane_on_delivery_thread())
        atomic_fetch_add(&w->on_delivery, 1);
    if (pthread_equal(pthread_self(), w->submitter))
        atomic_fetch_add(&w->on_submitter, 1);
    /* "RETURN n" came back as the statement's result (fake responder). */
    const char *sql =
        code == SURPOOL_OK
            ? json_string_value(json_object_get(json_array_get(result, 0), "result"))
            : NULL;
    int n = sql != NULL ? atoi(sql + 7) : -1;
    if (n != atomic_load(&w->last) + 1)
        atomic_fetch_add(&w->out_of_order, 1);
    atomic_store(&w->last, n);
    atomic_fetch_add(&w->done, 1);
}

static void test_callbacks_on_delivery_thread(void **state)
{
    fixture *f = *state;
    /* One socket, one request in flight: completion order is queueing order. */
    surpool_pool *p = make_pool(f, 3, 1, 1, 20000);
    for (int round = 0; round < 2; round++) {
        atomic_store(&f->fs.call_latency_us, round == 0 ? 0 : 50);
        where *w = calloc(1, sizeof(*w));
        w->submitter = pthread_self();
        enum { N = 200 };
        for (int i = 1; i <= N; i++) {
            char sql[32];
            snprintf(sql, sizeof(sql), "RETURN %d", i);
            assert_int_equal(surpool_query_async(p, sql, NULL, on_where, w), SURPOOL_OK);
        }
        wait_count(&w->done, N);
        assert_int_equal(atomic_load(&w->on_delivery), N);
        assert_int_equal(atomic_load(&w->on_submitter), 0);
        assert_int_equal(atomic_load(&w->out_of_order), 0);
        free(w);
    }
    /* A sync call is settled by its own thread. */
    assert_false(surpool__lane_on_delivery_thread());
    json_t *out = NULL;
    assert_int_equal(surpool_query(p, "RETURN 1", NULL, &out, NULL), SURPOOL_OK);
    json_decref(out);
}

/* A reply that reaches its request but does not decode (the transport routes
 * by id without parsing) ends that request as PROTOCOL, on the caller's
 * thread, and its socket is not used again; sync and async alike. */
static int conn_with_new_calls(fixture *f, const int *before)
{
    for (int i = 1; i < FAKE_MAX_CONNS; i++)
        if (atomic_load(&f->fs.conn_calls[i]) != before[i])
            return i;
    return 0;
}

static void snapshot_calls(fixture *f, int *out)
{
    for (int i = 0; i < FAKE_MAX_CONNS; i++)
        out[i] = atomic_load(&f->fs.conn_calls[i]);
}

static void test_undecodable_reply_retires_socket(void **state)
{
    fixture *f = *state;
    surpool_pool *p = make_pool(f, 3, 1, 4, 20000);
    int before[FAKE_MAX_CONNS];
    json_t *out = NULL;
    assert_int_equal(surpool_query(p, "RETURN 1", NULL, &out, NULL), SURPOOL_OK);
    json_decref(out);

    snapshot_calls(f, before);
    atomic_store(&f->fs.corrupt_replies, 1);
    surpool_error err;
    out = NULL;
    assert_int_equal(surpool_query(p, "RETURN 2", NULL, &out, &err), SURPOOL_ERR_PROTOCOL);
    assert_null(out);
    int bad = conn_with_new_calls(f, before);
    assert_true(bad > 0);

    snapshot_calls(f, before);
    assert_int_equal(surpool_query(p, "RETURN 3", NULL, &out, NULL), SURPOOL_OK);
    json_decref(out);
    int next = conn_with_new_calls(f, before);
    assert_true(next > 0);
    assert_int_not_equal(next, bad);

    /* Async: the callback gets PROTOCOL. */
    tally *t = calloc(1, sizeof(*t));
    tag g = {t, 0};
    atomic_store(&f->fs.corrupt_replies, 1);
    assert_int_equal(surpool_query_async(p, "RETURN 0", NULL, on_result, &g), SURPOOL_OK);
    wait_tally(t, 1);
    assert_int_equal(atomic_load(&t->codes[SURPOOL_ERR_PROTOCOL]), 1);
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

/* The delivery thread settles what completed while it was busy as one batch:
 * a completion that arrives while a callback runs is not lost (no signal is
 * sent to an awake delivery thread), and the resubmits the batch's callbacks
 * make reach the transport together once its last callback returned, not one
 * by one between them (one wake-up of the transport's thread per batch). */
typedef struct batch {
    surpool_pool *pool;
    fake_settings *fs;
    atomic_int gate_entered, gate_open, gate_timed_out;
    atomic_int b_seen, calls_at_first_b, sent_during_batch, refused;
    atomic_int c_done, c_ok, c_off_delivery;
} batch;

static void on_batch_gate(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)code;
    (void)result;
    (void)err;
    batch *b = ud;
    atomic_store(&b->gate_entered, 1);
    for (int i = 0; i < 30000 && !atomic_load(&b->gate_open); i++)
        sleep_ms(1);
    if (!atomic_load(&b->gate_open))
        atomic_store(&b->gate_timed_out, 1);
}

static void on_batch_c(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)result;
    (void)err;
    batch *b = ud;
    if (code == SURPOOL_OK)
        atomic_fetch_add(&b->c_ok, 1);
    if (!surpool__lane_on_delivery_thread())
        atomic_fetch_add(&b->c_off_delivery, 1);
    atomic_fetch_add(&b->c_done, 1);
}

static void on_batch_b(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)code;
    (void)result;
    (void)err;
    batch *b = ud;
    int calls = atomic_load(&b->fs->calls);
    if (atomic_fetch_add(&b->b_seen, 1) == 0)
        atomic_store(&b->calls_at_first_b, calls);
    else if (calls != atomic_load(&b->calls_at_first_b))
        atomic_fetch_add(&b->sent_during_batch, 1);
    if (surpool_query_async(b->pool, "RETURN 1", NULL, on_batch_c, b) != SURPOOL_OK)
        atomic_fetch_add(&b->refused, 1);
}

static void test_batch_sends_after_its_callbacks(void **state)
{
    fixture *f = *state;
    /* Latency 0: each request completes inside submit(), on the thread that
     * sent it, and is handed to the delivery thread from there. */
    surpool_pool *p = make_pool(f, 3, 1, 16, 20000);
    json_t *out = NULL;
    assert_int_equal(surpool_query(p, "RETURN 1", NULL, &out, NULL), SURPOOL_OK);
    json_decref(out);
    batch *b = calloc(1, sizeof(*b));
    b->pool = p;
    b->fs = &f->fs;
    /* Hold the delivery thread in a callback... */
    assert_int_equal(surpool_query_async(p, "RETURN 0", NULL, on_batch_gate, b), SURPOOL_OK);
    WAIT_FOR(atomic_load(&b->gate_entered), "the gate callback to start");
    /* ...while five more complete: they wait for it, as one batch. */
    enum { N = 5 };
    for (int i = 0; i < N; i++)
        assert_int_equal(surpool_query_async(p, "RETURN 2", NULL, on_batch_b, b), SURPOOL_OK);
    WAIT_FOR(atomic_load(&f->fs.calls) == 2 + N, "the five requests to reach the transport");
    atomic_store(&b->gate_open, 1);
    WAIT_FOR(atomic_load(&b->c_done) == N, "the five resubmitted requests to complete");
    assert_int_equal(atomic_load(&b->gate_timed_out), 0);
    assert_int_equal(atomic_load(&b->b_seen), N);
    assert_int_equal(atomic_load(&b->refused), 0);
    assert_int_equal(atomic_load(&b->sent_during_batch), 0);
    assert_int_equal(atomic_load(&b->calls_at_first_b), 2 + N);
    assert_int_equal(atomic_load(&b->c_ok), N);
    assert_int_equal(atomic_load(&b->c_off_delivery), 0);
    assert_int_equal(atomic_load(&f->fs.calls), 2 + 2 * N);
    free(b);
}

/* A slot freed inside a delivery batch whose next callback blocks: the request
 * queued for that slot still goes out (by the lane thread's next tick), not
 * only when the batch ends. Before, it waited for the blocking callback to
 * return, or failed at its deadline with "no lane capacity" though the lane
 * had room. */
typedef struct stall {
    fake_settings *fs;
    atomic_int gate_entered, gate_open;
    atomic_int seen_sent, waited, done;
} stall;

static void on_stall_gate(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)code;
    (void)result;
    (void)err;
    stall *s = ud;
    atomic_store(&s->gate_entered, 1);
    for (int i = 0; i < 30000 && !atomic_load(&s->gate_open); i++)
        sleep_ms(1);
    atomic_fetch_add(&s->done, 1);
}

static void on_stall_quick(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)code;
    (void)result;
    (void)err;
    atomic_fetch_add(&((stall *)ud)->done, 1);
}

/* Blocks until the last queued request reached the transport (bounded). */
static void on_stall_wait(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)code;
    (void)result;
    (void)err;
    stall *s = ud;
    atomic_store(&s->waited, 1);
    for (int i = 0; i < 10000 && atomic_load(&s->fs->calls) < 7; i++)
        sleep_ms(1);
    atomic_store(&s->seen_sent, atomic_load(&s->fs->calls) >= 7);
    atomic_fetch_add(&s->done, 1);
}

static void test_slot_freed_in_blocked_batch_is_used(void **state)
{
    fixture *f = *state;
    /* One socket, four slots; latency 0: each request completes inside
     * submit() and is handed to the delivery thread at once. */
    surpool_pool *p = make_pool(f, 3, 1, 4, 20000);
    json_t *out = NULL;
    assert_int_equal(surpool_query(p, "RETURN 1", NULL, &out, NULL), SURPOOL_OK);
    json_decref(out);
    stall *s = calloc(1, sizeof(*s));
    s->fs = &f->fs;
    /* Slot 1: never answered. Slot 2: holds the delivery thread. */
    assert_int_equal(surpool_call_async(p, "noreply", NULL, on_stall_quick, s), SURPOOL_OK);
    assert_int_equal(surpool_query_async(p, "RETURN 0", NULL, on_stall_gate, s), SURPOOL_OK);
    WAIT_FOR(atomic_load(&s->gate_entered), "the gate callback to start");
    /* Slots 3 and 4 complete behind it: the next batch is [quick, wait]. */
    assert_int_equal(surpool_query_async(p, "RETURN 2", NULL, on_stall_quick, s), SURPOOL_OK);
    assert_int_equal(surpool_query_async(p, "RETURN 3", NULL, on_stall_wait, s), SURPOOL_OK);
    /* Two more queue; the gate's own slot sends the first when it returns. */
    assert_int_equal(surpool_query_async(p, "RETURN 4", NULL, on_stall_quick, s), SURPOOL_OK);
    assert_int_equal(surpool_query_async(p, "RETURN 5", NULL, on_stall_quick, s), SURPOOL_OK);
    assert_int_equal(atomic_load(&f->fs.calls), 5);
    atomic_store(&s->gate_open, 1);
    /* The batch's first callback frees a slot; the second blocks until the
     * last queued request was sent on it. */
    WAIT_FOR(atomic_load(&s->done) == 5, "the five answered requests' callbacks");
    assert_int_equal(atomic_load(&s->waited), 1);
    if (!atomic_load(&s->seen_sent))
        fail_msg("a queued request was not sent while a callback blocked, with a slot free");
    assert_int_equal(atomic_load(&f->fs.calls), 7);
    surpool_pool_destroy(p); /* the unanswered one: CLOSED */
    f->pool = NULL;
    assert_int_equal(atomic_load(&s->done), 6);
    free(s);
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

/* ---- issue 9 item 1: a replaced lane socket must not corrupt the accounting ---- */

/* Three lane sockets with one request each. The first socket dies and is given
 * back while the LAST one still has a request in flight; then the last one
 * dies too. Its completion must count against its own socket (it used to hit
 * a stale array slot: the socket kept "1 in flight" for good and its pool slot
 * was never given back). */
static void test_replaced_socket_keeps_accounting(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.call_latency_us, 10000000); /* 10 s: in flight until killed */
    surpool_pool *p = make_pool(f, 4, 3, 1, 30000);
    tally *t = calloc(1, sizeof(*t));
    tag tags[3] = {{t, 0}, {t, 1}, {t, 2}};
    for (int i = 0; i < 3; i++)
        assert_int_equal(surpool_call_async(p, "ping", NULL, on_result, &tags[i]), SURPOOL_OK);
    WAIT_FOR(stats_of(p).lane_inflight == 3 && stats_of(p).lane_connections == 3,
             "3 lane sockets with 1 request each");
    assert_int_equal(atomic_load(&f->fs.open_ok), 3);

    assert_true(fake_kill_conn(p->transport, 1));
    WAIT_FOR(atomic_load(&f->fs.open_now) == 2, "the first dead lane socket to be given back");
    assert_true(fake_kill_conn(p->transport, 3));
    WAIT_FOR(atomic_load(&f->fs.open_now) == 1,
             "the second dead lane socket (the last one opened) to be given back");
    assert_true(fake_kill_conn(p->transport, 2));
    wait_tally(t, 3);
    assert_int_equal(atomic_load(&t->codes[SURPOOL_ERR_DISCONNECTED]), 3);
    WAIT_FOR(atomic_load(&f->fs.open_now) == 0, "every dead lane socket to be given back");
    WAIT_FOR(stats_of(p).lane_connections == 0, "the lane to hold no socket");

    /* Capacity is back: 3 sockets x 1 request can again be in flight at once. */
    tally *t2 = calloc(1, sizeof(*t2));
    tag tags2[3] = {{t2, 0}, {t2, 1}, {t2, 2}};
    for (int i = 0; i < 3; i++)
        assert_int_equal(surpool_call_async(p, "ping", NULL, on_result, &tags2[i]), SURPOOL_OK);
    WAIT_FOR(stats_of(p).lane_inflight == 3, "3 requests in flight on fresh sockets");
    surpool_stats st = stats_of(p);
    assert_int_equal(st.lane_queued, 0);
    assert_int_equal(st.lane_connections, 3);
    fake_kill_all(p->transport);
    wait_tally(t2, 3);
    /* The lane forgets a socket before it gives the connection back to the
     * pool: wait for both. */
    WAIT_FOR(stats_of(p).lane_inflight == 0 && stats_of(p).lane_connections == 0 &&
                 stats_of(p).in_use == 0,
             "the lane to be idle and empty and its connections given back");
    st = stats_of(p);
    assert_int_equal(st.lane_queued, 0);
    assert_int_equal(st.in_use, 0);
    assert_int_equal(st.created - st.destroyed, (uint64_t)(st.idle + st.in_use));
    free(t);
    free(t2);
}

/* ---- issue 9 item 2: callbacks resubmitting while the pool is destroyed ---- */

typedef struct resub_chain {
    surpool_pool *pool;
    atomic_int outstanding; /* 1 while a call of this chain is accepted and not completed */
    atomic_int *accepted, *completed, *bad;
} resub_chain;

static void on_resubmit(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)code;
    (void)result;
    (void)err;
    resub_chain *c = ud;
    if (atomic_exchange(&c->outstanding, 0) != 1)
        atomic_fetch_add(c->bad, 1); /* a callback without an accepted call */
    atomic_fetch_add(c->completed, 1);
    atomic_store(&c->outstanding, 1); /* the callback may run before the call returns */
    surpool_err rc = surpool_query_async(c->pool, "RETURN 1", NULL, on_resubmit, c);
    if (rc == SURPOOL_OK) {
        atomic_fetch_add(c->accepted, 1);
        return;
    }
    atomic_store(&c->outstanding, 0);
    if (rc != SURPOOL_ERR_CLOSED)
        atomic_fetch_add(c->bad, 1); /* the documented refusal is CLOSED */
}

static void test_resubmit_during_destroy(void **state)
{
    fixture *f = *state;
    enum { POOLS = 150, CHAINS = 64 };
    resub_chain *chains = calloc(CHAINS, sizeof(*chains));
    atomic_int accepted = 0, completed = 0, bad = 0;
    for (int round = 0; round < POOLS; round++) {
        /* Never 0: with replies inside submit() a chain that resubmits
         * forever would keep the thread that started it sending forever. */
        atomic_store(&f->fs.call_latency_us, 20 + 50 * (round % 7));
        surpool_pool *p = make_pool(f, 4, 2, 8, 20000);
        for (int i = 0; i < CHAINS; i++) {
            chains[i].pool = p;
            chains[i].accepted = &accepted;
            chains[i].completed = &completed;
            chains[i].bad = &bad;
            atomic_store(&chains[i].outstanding, 1);
            if (surpool_query_async(p, "RETURN 1", NULL, on_resubmit, &chains[i]) == SURPOOL_OK)
                atomic_fetch_add(&accepted, 1);
            else
                fail_msg("round %d: call %d refused before destroy", round, i);
        }
        surpool_pool_destroy(p); /* callbacks resubmit all through it */
        f->pool = NULL;
        for (int i = 0; i < CHAINS; i++)
            if (atomic_load(&chains[i].outstanding) != 0)
                fail_msg("round %d: chain %d has an accepted call that never completed", round,
                         i);
        assert_int_equal(atomic_load(&accepted), atomic_load(&completed));
        assert_int_equal(atomic_load(&bad), 0);
    }
    free(chains);
}

/* ---- issue 9 item 3: queued lane requests keep their deadline ---- */

static void test_deadline_while_lane_has_no_connection(void **state)
{
    fixture *f = *state;
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = 2;
    cfg.shared_connections = 1;
    cfg.request_timeout_ms = 500;
    cfg.acquire_timeout_ms = 8000;
    surpool_error err;
    assert_int_equal(
        surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &f->pool, &err),
        SURPOOL_OK);
    surpool_pool *p = f->pool;
    surpool_conn *a = NULL, *b = NULL; /* every connection leased: the lane gets none */
    assert_int_equal(surpool_pool_acquire(p, 5000, &a, &err), SURPOOL_OK);
    assert_int_equal(surpool_pool_acquire(p, 5000, &b, &err), SURPOOL_OK);

    tally *t = calloc(1, sizeof(*t));
    tag g = {t, 0};
    int64_t t0 = surpool__now_ns();
    assert_int_equal(surpool_query_async(p, "RETURN 1", NULL, on_result, &g), SURPOOL_OK);
    surpool_err rc = surpool_query(p, "RETURN 1", NULL, NULL, &err);
    int64_t sync_ms = (surpool__now_ns() - t0) / 1000000;
    for (int i = 0; i < 30000 && atomic_load(&t->done) < 1; i++)
        sleep_ms(1);
    int64_t async_ms = (surpool__now_ns() - t0) / 1000000;
    /* Give the leases back before asserting: a failed assertion must not
     * leave teardown's destroy waiting for them. */
    surpool_conn_release(a);
    surpool_conn_release(b);
    /* Figures for the report, not asserted: ~500 ms (it was acquire_timeout_ms, 8 s). */
    print_message("    sync back after %lld ms (%s), async after %lld ms\n", (long long)sync_ms,
                  surpool_strerror(rc), (long long)async_ms);
    assert_int_equal(rc, SURPOOL_ERR_REQUEST_TIMEOUT);
    wait_tally(t, 1);
    assert_int_equal(atomic_load(&t->codes[SURPOOL_ERR_REQUEST_TIMEOUT]), 1);
    /* The lane gets a connection once one is free. */
    json_t *out = NULL;
    assert_int_equal(surpool_query(p, "RETURN 1", NULL, &out, &err), SURPOOL_OK);
    json_decref(out);
    free(t);
}

/* ---- issue 9 item 4: acquire_timeout_ms = 0 and a cold pool ---- */

static void test_acquire_timeout_zero_cold_pool(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.connect_latency_ms, 20); /* the connect outlasts a 0 ms wait */
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = 4;
    cfg.shared_connections = 2;
    cfg.acquire_timeout_ms = 0;
    cfg.request_timeout_ms = 20000;
    surpool_error err;
    assert_int_equal(
        surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &f->pool, &err),
        SURPOOL_OK);
    for (int i = 0; i < 3; i++) {
        json_t *out = NULL;
        surpool_err rc = surpool_query(f->pool, "RETURN 1", NULL, &out, &err);
        if (rc != SURPOOL_OK)
            fail_msg("query %d on a cold pool with acquire_timeout_ms = 0: %s (%s)", i,
                     surpool_strerror(rc), err.message);
        json_decref(out);
    }
}

/* ---- issue 9 item 5: a callback of pool A calling into idle pool B ---- */

typedef struct cross {
    surpool_pool *b;
    tally *t;
    tag g;
    atomic_int submitted; /* 1: accepted by B, 2: refused */
} cross;

static void on_a_result(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)code;
    (void)result;
    (void)err;
    cross *x = ud;
    surpool_err rc = surpool_query_async(x->b, "RETURN 0", NULL, on_result, &x->g);
    atomic_store(&x->submitted, rc == SURPOOL_OK ? 1 : 2);
}

static void test_callback_into_other_pool(void **state)
{
    fixture *f = *state;
    /* Pool A completes inside submit (latency 0), so A's callback runs while
     * A's lane is sending. Pool B has one lane socket, already open and idle. */
    surpool_pool *a = make_pool(f, 2, 1, 4, 20000);
    fake_settings *fsb = calloc(1, sizeof(*fsb));
    fake_settings_init(fsb);
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = 2;
    cfg.shared_connections = 1;
    cfg.request_timeout_ms = 2000; /* the stalled request used to wait for this */
    surpool_error err;
    surpool_pool *b = NULL;
    assert_int_equal(surpool__pool_create_with(&cfg, &fake_transport_ops, fsb, &b, &err),
                     SURPOOL_OK);
    assert_int_equal(surpool_query(b, "RETURN 1", NULL, NULL, &err), SURPOOL_OK);

    tally *t = calloc(1, sizeof(*t));
    t->check_result = 1;
    cross x = {b, t, {t, 0}, 0};
    assert_int_equal(surpool_query_async(a, "RETURN 1", NULL, on_a_result, &x), SURPOOL_OK);
    wait_tally(t, 1);
    assert_int_equal(atomic_load(&x.submitted), 1);
    /* Served, not left queued until B's deadline. */
    assert_int_equal(atomic_load(&t->codes[SURPOOL_OK]), 1);
    surpool_pool_destroy(b);
    assert_int_equal(atomic_load(&fsb->open_now), 0);
    free(fsb);
    free(t);
}

/* ---- issue 9 item 6: a synchronous call from inside a callback ---- */

typedef struct sync_in_cb {
    surpool_pool *pool;
    atomic_int done;
    atomic_int rc_query, rc_call, rc_acquire, rc_conn;
    surpool_conn *lease; /* held by the test: a lease RPC from the callback */
    char message[256];
} sync_in_cb;

static void on_sync_inside(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)code;
    (void)result;
    (void)err;
    sync_in_cb *s = ud;
    surpool_error e;
    atomic_store(&s->rc_query, surpool_query(s->pool, "RETURN 1", NULL, NULL, &e));
    snprintf(s->message, sizeof(s->message), "%s", e.message);
    atomic_store(&s->rc_call, surpool_call(s->pool, "ping", NULL, NULL, NULL));
    surpool_conn *c = NULL;
    atomic_store(&s->rc_acquire, surpool_pool_acquire(s->pool, 1000, &c, NULL));
    if (c != NULL)
        surpool_conn_release(c);
    atomic_store(&s->rc_conn, surpool_conn_ping(s->lease, NULL));
    /* Destroy would wait for this very thread: refused, the pool untouched. */
    surpool_pool_destroy(s->pool);
    atomic_store(&s->done, 1);
}

static void test_sync_call_from_callback(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.call_latency_us, 1000); /* callbacks on the transport's thread */
    surpool_pool *p = make_pool(f, 4, 1, 4, 2000);
    sync_in_cb s;
    memset(&s, 0, sizeof(s));
    s.pool = p;
    surpool_error err;
    assert_int_equal(surpool_pool_acquire(p, 5000, &s.lease, &err), SURPOOL_OK);
    assert_int_equal(surpool_query_async(p, "RETURN 1", NULL, on_sync_inside, &s), SURPOOL_OK);
    WAIT_OR_EXIT(atomic_load(&s.done),
                 "the synchronous calls (and the destroy) made inside a callback to return");
    assert_int_equal(atomic_load(&s.rc_query), SURPOOL_ERR_INVALID_ARG);
    assert_non_null(strstr(s.message, "callback"));
    assert_int_equal(atomic_load(&s.rc_call), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(atomic_load(&s.rc_acquire), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(atomic_load(&s.rc_conn), SURPOOL_ERR_INVALID_ARG);
    /* Outside a callback the same calls work: the pool was not destroyed. */
    assert_int_equal(surpool_conn_ping(s.lease, &err), SURPOOL_OK);
    surpool_conn_release(s.lease);
    assert_int_equal(surpool_query(p, "RETURN 1", NULL, NULL, &err), SURPOOL_OK);
}

/* ---- issue 9 item 15: setup errors on the lane keep server_code and kind ---- */

static json_t *refuse_signin(void *ud, json_int_t id, const char *method, json_t *params)
{
    if (strcmp(method, "signin") == 0)
        return json_pack("{s:I, s:{s:i, s:s, s:s}}", "id", id, "error", "code", -32002,
                         "message", "There was a problem with authentication", "kind",
                         "NotAllowed");
    return fake_default_responder(ud, id, method, params);
}

typedef struct seen_error {
    surpool_err code;
    surpool_error err; /* written by the callback before `done`, read after it */
    atomic_int done;
} seen_error;

static void on_seen_error(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)result;
    seen_error *s = ud;
    s->code = code;
    if (err != NULL)
        s->err = *err;
    atomic_store(&s->done, 1);
}

static void test_setup_error_keeps_server_code(void **state)
{
    fixture *f = *state;
    f->fs.responder = refuse_signin;
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.user = "root";
    cfg.pass = "wrong";
    cfg.max_connections = 3;
    cfg.shared_connections = 1;
    cfg.acquire_timeout_ms = 300;
    cfg.connect_timeout_ms = 300;
    cfg.request_timeout_ms = 20000;
    surpool_error err;
    assert_int_equal(
        surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &f->pool, &err),
        SURPOOL_OK);
    surpool_pool *p = f->pool;
    surpool_conn *c = NULL;
    assert_int_equal(surpool_pool_acquire(p, -1, &c, &err), SURPOOL_ERR_AUTH);
    assert_int_equal(err.server_code, -32002);
    assert_string_equal(err.kind, "NotAllowed");

    memset(&err, 0, sizeof(err));
    assert_int_equal(surpool_query(p, "RETURN 1", NULL, NULL, &err), SURPOOL_ERR_AUTH);
    assert_int_equal(err.code, SURPOOL_ERR_AUTH);
    assert_int_equal(err.server_code, -32002);
    assert_string_equal(err.kind, "NotAllowed");

    seen_error s;
    memset(&s, 0, sizeof(s));
    assert_int_equal(surpool_query_async(p, "RETURN 1", NULL, on_seen_error, &s), SURPOOL_OK);
    wait_count(&s.done, 1);
    assert_int_equal(s.code, SURPOOL_ERR_AUTH);
    assert_int_equal(s.err.server_code, -32002);
    assert_string_equal(s.err.kind, "NotAllowed");
}

/* ---- issue 17 item 2: requests go to the least-loaded socket ---- */

static void test_spreads_over_sockets(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.call_latency_us, 200000);
    surpool_pool *p = make_pool(f, 3, 2, 8, 30000);
    /* 16 at once fill one socket (8) and make the lane open its second: its
     * acquirer decides to when it wakes, if 8 still queue then. The first 8
     * are answered after 200 ms and the queue drains; an acquirer that wakes
     * later (starved on a loaded machine) finds nothing queued and the lane
     * stays at one socket, which is right. Run another round then (at most
     * 10): a lane that never grows still fails. */
    int rounds = 0;
    do {
        tally *t1 = calloc(1, sizeof(*t1));
        tag tags1[16];
        for (int i = 0; i < 16; i++) {
            tags1[i] = (tag){t1, i};
            assert_int_equal(surpool_call_async(p, "ping", NULL, on_result, &tags1[i]),
                             SURPOOL_OK);
        }
        wait_tally(t1, 16);
        assert_int_equal(atomic_load(&t1->codes[SURPOOL_OK]), 16);
        WAIT_FOR(stats_of(p).lane_inflight == 0, "the lane to be idle");
        free(t1);
    } while (stats_of(p).lane_connections < 2 && ++rounds < 10);
    assert_int_equal(stats_of(p).lane_connections, 2);
    assert_int_equal(atomic_load(&f->fs.open_ok), 2);

    /* Both sockets idle: 8 concurrent calls split evenly. */
    tally *t = calloc(1, sizeof(*t));
    tag tags[24];
    for (int i = 0; i < 24; i++)
        tags[i] = (tag){t, i};
    atomic_store(&f->fs.call_latency_us, 10000000); /* in flight until destroy */
    int before1 = atomic_load(&f->fs.conn_calls[1]),
        before2 = atomic_load(&f->fs.conn_calls[2]);
    for (int i = 16; i < 24; i++)
        assert_int_equal(surpool_call_async(p, "ping", NULL, on_result, &tags[i]), SURPOOL_OK);
    WAIT_FOR(stats_of(p).lane_inflight == 8, "8 requests in flight");
    int n1 = atomic_load(&f->fs.conn_calls[1]) - before1;
    int n2 = atomic_load(&f->fs.conn_calls[2]) - before2;
    print_message("    8 calls over 2 sockets: %d / %d\n", n1, n2);
    assert_int_equal(n1 + n2, 8);
    assert_true(n1 >= 3 && n2 >= 3);
    surpool_pool_destroy(p); /* the 8 complete with DISCONNECTED */
    f->pool = NULL;
    assert_int_equal(atomic_load(&t->done), 8);
    assert_int_equal(atomic_load(&t->codes[SURPOOL_ERR_DISCONNECTED]), 8);
    free(t);
}

/* ---- issue 17 item 3: an expired lane socket is drained and replaced ---- */

static void test_expired_socket_replaced(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.call_latency_us, 20000);
    surpool_config cfg;
    surpool_config_init(&cfg);
    cfg.url = "ws://fake.invalid/rpc";
    cfg.max_connections = 3;
    cfg.shared_connections = 1;
    cfg.shared_max_inflight = 4;
    cfg.max_lifetime_ms = 300;
    cfg.request_timeout_ms = 20000;
    surpool_error err;
    assert_int_equal(
        surpool__pool_create_with(&cfg, &fake_transport_ops, &f->fs, &f->pool, &err),
        SURPOOL_OK);
    surpool_pool *p = f->pool;
    tally *t = calloc(1, sizeof(*t));
    enum { MAXN = 4000 };
    tag *tags = calloc(MAXN, sizeof(*tags));
    int n = 0;
    /* Keep requests in flight (and queued) across the expiry. */
    while (n < MAXN &&
           (stats_of(p).lifetime_retirements < 1 || atomic_load(&f->fs.open_ok) < 2)) {
        for (int k = 0; k < 4 && n < MAXN; k++, n++) {
            tags[n] = (tag){t, n};
            assert_int_equal(surpool_call_async(p, "ping", NULL, on_result, &tags[n]),
                             SURPOOL_OK);
        }
        sleep_ms(10);
    }
    if (n == MAXN)
        fail_msg("no lane socket was retired after %d calls over %d ms of lifetime", n, 300);
    wait_tally(t, n);
    assert_int_equal(atomic_load(&t->codes[SURPOOL_OK]), n); /* no request lost */
    /* A new connection serves. */
    int calls = atomic_load(&f->fs.calls);
    assert_int_equal(surpool_query(p, "RETURN 1", NULL, NULL, &err), SURPOOL_OK);
    assert_true(atomic_load(&f->fs.calls) > calls);
    surpool_stats st = stats_of(p);
    assert_true(st.lifetime_retirements >= 1);
    assert_true(st.created >= 2);
    WAIT_FOR(stats_of(p).lane_inflight == 0, "the lane to be idle");
    st = stats_of(p);
    assert_int_equal(st.lane_queued, 0);
    assert_int_equal(st.in_use, st.lane_connections);
    free(tags);
    free(t);
}

/* ---- Per-call deadlines (surpool_call_options, surpool_conn_set_timeout) ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct timed {
    atomic_int done;
    surpool_err code;
    int64_t at_ms; /* when the callback ran */
} timed;

static void on_timed(void *ud, surpool_err code, json_t *result, const surpool_error *err)
{
    (void)result;
    (void)err;
    timed *t = ud;
    t->code = code;
    t->at_ms = now_ms();
    atomic_store(&t->done, 1);
}

/* A call's own timeout replaces request_timeout_ms, longer or shorter, sync
 * and async, and never ends a call before its own deadline. */
static void test_call_own_timeout(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.call_latency_us, 300000); /* every reply takes 300 ms */
    surpool_pool *p = make_pool(f, 3, 1, 8, 50);
    surpool_call_options o;
    surpool_call_options_init(&o);
    assert_int_equal(o.timeout_ms, -1);
    json_t *out = NULL;
    surpool_error err;
    /* The pool's 50 ms is too short for a 300 ms reply... */
    assert_int_equal(surpool_query(p, "RETURN 1", NULL, &out, &err),
                     SURPOOL_ERR_REQUEST_TIMEOUT);
    assert_int_equal(surpool_query_opts(p, "RETURN 1", NULL, &o, &out, &err),
                     SURPOOL_ERR_REQUEST_TIMEOUT);
    /* ...a call of its own gets longer, or no deadline at all. */
    o.timeout_ms = 20000;
    assert_int_equal(surpool_query_opts(p, "RETURN 1", NULL, &o, &out, &err), SURPOOL_OK);
    json_decref(out);
    o.timeout_ms = 0;
    assert_int_equal(surpool_call_opts(p, "ping", NULL, &o, NULL, &err), SURPOOL_OK);
    timed t;
    memset(&t, 0, sizeof(t));
    o.timeout_ms = 20000;
    assert_int_equal(surpool_query_async_opts(p, "RETURN 1", NULL, &o, on_timed, &t),
                     SURPOOL_OK);
    WAIT_FOR(atomic_load(&t.done), "the async call with its own timeout");
    assert_int_equal(t.code, SURPOOL_OK);
    /* Shorter than the pool's: never before its deadline. */
    atomic_store(&f->fs.call_latency_us, 10000000); /* 10 s */
    memset(&t, 0, sizeof(t));
    o.timeout_ms = 100;
    int64_t t0 = now_ms();
    assert_int_equal(surpool_call_async_opts(p, "ping", NULL, &o, on_timed, &t), SURPOOL_OK);
    WAIT_FOR(atomic_load(&t.done), "the async call's own deadline");
    assert_int_equal(t.code, SURPOOL_ERR_REQUEST_TIMEOUT);
    assert_true(t.at_ms - t0 >= 100);
    /* Out of range: refused, callback never called. */
    o.timeout_ms = SURPOOL__MS_MAX + 1;
    assert_int_equal(surpool_call_async_opts(p, "ping", NULL, &o, on_timed, &t),
                     SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_query_opts(p, "RETURN 1", NULL, &o, &out, &err),
                     SURPOOL_ERR_INVALID_ARG);
}

/* The lane's deadline includes queueing: a request that waits behind a full
 * socket ends at its own deadline, not request_timeout_ms after it is sent. */
static void test_call_own_timeout_counts_queueing(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.call_latency_us, 10000000); /* 10 s: the socket stays full */
    surpool_pool *p = make_pool(f, 2, 1, 1, 20000);
    timed first, queued;
    memset(&first, 0, sizeof(first));
    memset(&queued, 0, sizeof(queued));
    assert_int_equal(surpool_call_async(p, "ping", NULL, on_timed, &first), SURPOOL_OK);
    surpool_stats st;
    WAIT_FOR((surpool_pool_stats(p, &st), st.lane_inflight == 1),
             "the first request in flight");
    surpool_call_options o;
    surpool_call_options_init(&o);
    o.timeout_ms = 100;
    int64_t t0 = now_ms();
    assert_int_equal(surpool_call_async_opts(p, "ping", NULL, &o, on_timed, &queued),
                     SURPOOL_OK);
    WAIT_FOR(atomic_load(&queued.done), "the queued request's own deadline");
    assert_int_equal(queued.code, SURPOOL_ERR_REQUEST_TIMEOUT);
    assert_true(queued.at_ms - t0 >= 100);
    assert_int_equal(atomic_load(&first.done), 0); /* the pool's 20 s still runs */
    surpool_pool_destroy(p);
    f->pool = NULL;
    assert_int_equal(atomic_load(&first.done), 1);
}

/* Without a lane the call's deadline covers its lease's call too. */
static void test_call_own_timeout_without_lane(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.call_latency_us, 300000);
    surpool_pool *p = make_pool(f, 2, 0, 1, 50);
    surpool_call_options o;
    surpool_call_options_init(&o);
    o.timeout_ms = 20000;
    json_t *out = NULL;
    assert_int_equal(surpool_query_opts(p, "RETURN 1", NULL, &o, &out, NULL), SURPOOL_OK);
    json_decref(out);
    assert_int_equal(surpool_query(p, "RETURN 1", NULL, &out, NULL),
                     SURPOOL_ERR_REQUEST_TIMEOUT);
}

/* A lease's own timeout holds for its calls until reset or release. */
static void test_lease_set_timeout(void **state)
{
    fixture *f = *state;
    atomic_store(&f->fs.call_latency_us, 300000);
    surpool_pool *p = make_pool(f, 1, 0, 1, 50);
    surpool_conn *c = NULL;
    surpool_error err;
    assert_int_equal(surpool_pool_acquire(p, -1, &c, &err), SURPOOL_OK);
    assert_int_equal(surpool_conn_set_timeout(NULL, 10), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_set_timeout(c, SURPOOL__MS_MAX + 1), SURPOOL_ERR_INVALID_ARG);
    assert_int_equal(surpool_conn_set_timeout(c, 20000), SURPOOL_OK);
    assert_int_equal(surpool_conn_ping(c, &err), SURPOOL_OK);
    assert_int_equal(surpool_conn_set_timeout(c, 0), SURPOOL_OK); /* none */
    assert_int_equal(surpool_conn_ping(c, &err), SURPOOL_OK);
    assert_int_equal(surpool_conn_set_timeout(c, 20000), SURPOOL_OK);
    surpool_conn_release(c); /* the setting ends with the lease */
    assert_int_equal(surpool_pool_acquire(p, -1, &c, &err), SURPOOL_OK);
    assert_int_equal(surpool_conn_ping(c, &err), SURPOOL_ERR_REQUEST_TIMEOUT);
    surpool_conn_release(c);
    /* Shorter than the pool's, and back to the pool's with < 0. */
    atomic_store(&f->fs.call_latency_us, 10000000);
    assert_int_equal(surpool_pool_acquire(p, -1, &c, &err), SURPOOL_OK);
    assert_int_equal(surpool_conn_set_timeout(c, 5000), SURPOOL_OK);
    assert_int_equal(surpool_conn_set_timeout(c, -1), SURPOOL_OK);
    int64_t t0 = now_ms();
    assert_int_equal(surpool_conn_ping(c, &err), SURPOOL_ERR_REQUEST_TIMEOUT);
    assert_true(now_ms() - t0 >= 50);
    surpool_conn_release(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_query_through_lane, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_threads_share_two_sockets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_exactly_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_chain_from_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_callbacks_on_delivery_thread, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_sends_after_its_callbacks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slot_freed_in_blocked_batch_is_used, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_undecodable_reply_retires_socket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_deadline_and_capacity, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queued_request_sent_when_slot_frees, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_dead_socket_replaced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_and_destroy_with_work_outstanding, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_no_lane_means_leases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replaced_socket_keeps_accounting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resubmit_during_destroy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deadline_while_lane_has_no_connection, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_acquire_timeout_zero_cold_pool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_callback_into_other_pool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_setup_error_keeps_server_code, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spreads_over_sockets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expired_socket_replaced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_call_from_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_call_own_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_call_own_timeout_counts_queueing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_call_own_timeout_without_lane, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_set_timeout, setup, teardown),
    };
    /* LANE_TEST=<pattern> runs only the matching tests (cmocka's filter). */
    if (getenv("LANE_TEST") != NULL)
        cmocka_set_test_filter(getenv("LANE_TEST"));
    return cmocka_run_group_tests_name("lane", tests, NULL, NULL);
}
