/*
 * The request table (src/reqtable.h) alone: no transport, no sockets. Ids and
 * the id map, out-of-order completion, duplicate and unknown ids, deadline
 * expiry order, failing a connection's requests, and cancel racing a
 * completion on two threads (run this one under TSan too).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"
#include "reqtable.h"

typedef struct req {
    surpool__treq r;
    atomic_int done_calls;
    int order; /* position in the completion order, from the shared counter */
} req;

static atomic_int g_order;

static void on_done(surpool__treq *t)
{
    req *q = t->userdata;
    q->order = atomic_fetch_add(&g_order, 1);
    atomic_fetch_add(&q->done_calls, 1);
}

static void req_init(req *q, int64_t id, int64_t deadline_ns)
{
    memset(q, 0, sizeof(*q));
    q->r.id = id;
    q->r.deadline_ns = deadline_ns;
    q->r.done = on_done;
    q->r.userdata = q;
    q->order = -1;
}

/* reserve + queue, as a transport's submit() does. */
static void submit(surpool__reqtable *rt, req *q)
{
    assert_int_equal(surpool__reqtable_reserve(rt), 0);
    surpool__reqtable_queue(rt, &q->r);
    assert_int_equal(q->r.tstate, SURPOOL__TREQ_QUEUED);
}

static void test_send_in_submit_order_and_route_by_id(void **state)
{
    (void)state;
    enum { N = 1000 }; /* well past the map's first capacity (64 slots) */
    static req qs[N];
    surpool__reqtable rt;
    surpool__reqtable_init(&rt);
    assert_false(surpool__reqtable_has_queued(&rt));
    assert_null(surpool__reqtable_send_next(&rt));
    for (int i = 0; i < N; i++) {
        /* Spread ids so that they collide in the hash's low bits. */
        req_init(&qs[i], (int64_t)i * 4096 + 7, INT64_MAX);
        submit(&rt, &qs[i]);
    }
    assert_true(surpool__reqtable_has_queued(&rt));
    /* A queued request is not in flight: its reply (if any) is not routed. */
    assert_null(surpool__reqtable_take(&rt, qs[0].r.id));
    for (int i = 0; i < N; i++) {
        surpool__treq *r = surpool__reqtable_send_next(&rt);
        assert_ptr_equal(r, &qs[i].r);
        assert_int_equal(r->tstate, SURPOOL__TREQ_INFLIGHT);
    }
    assert_false(surpool__reqtable_has_queued(&rt));
    assert_null(surpool__reqtable_send_next(&rt));
    /* Out of order: odd positions backwards, then even ones forwards. */
    for (int i = N - 1; i >= 0; i--) {
        if (i % 2 == 0)
            continue;
        surpool__treq *r = surpool__reqtable_take(&rt, qs[i].r.id);
        assert_ptr_equal(r, &qs[i].r);
        assert_int_equal(r->tstate, SURPOOL__TREQ_DONE);
        assert_int_equal(r->status, SURPOOL_OK);
        assert_string_equal(r->message, "");
    }
    for (int i = 0; i < N; i += 2)
        assert_ptr_equal(surpool__reqtable_take(&rt, qs[i].r.id), &qs[i].r);
    assert_int_equal(rt.map.count, 0);
    assert_int_equal(rt.inflight.n, 0);
    /* take() does not complete: done() is the owner's call. */
    for (int i = 0; i < N; i++)
        assert_int_equal(atomic_load(&qs[i].done_calls), 0);
    surpool__reqtable_free(&rt);
}

static void test_duplicate_and_unknown_ids_dropped(void **state)
{
    (void)state;
    req a, b;
    surpool__reqtable rt;
    surpool__reqtable_init(&rt);
    assert_null(surpool__reqtable_take(&rt, 1)); /* empty table, no map yet */
    req_init(&a, 1, INT64_MAX);
    req_init(&b, 2, INT64_MAX);
    submit(&rt, &a);
    submit(&rt, &b);
    surpool__reqtable_send_next(&rt);
    surpool__reqtable_send_next(&rt);
    assert_null(surpool__reqtable_take(&rt, 3));
    assert_null(surpool__reqtable_take(&rt, -1));
    assert_ptr_equal(surpool__reqtable_take(&rt, 2), &b.r);
    assert_null(surpool__reqtable_take(&rt, 2)); /* the same reply twice */
    assert_ptr_equal(surpool__reqtable_take(&rt, 1), &a.r);
    assert_null(surpool__reqtable_take(&rt, 1));
    surpool__reqtable_free(&rt);
}

static void test_deadline_expiry_order(void **state)
{
    (void)state;
    /* In flight: deadlines out of order (the unsorted walk). Queued: sorted. */
    static const int64_t inflight_dl[] = {50, 10, 40, 20, 30};
    static const int64_t queued_dl[] = {15, 25, 35};
    req in[5], qd[3];
    surpool__reqtable rt;
    surpool__reqtable_init(&rt);
    for (int i = 0; i < 5; i++) {
        req_init(&in[i], 100 + i, inflight_dl[i]);
        submit(&rt, &in[i]);
        surpool__reqtable_send_next(&rt);
    }
    for (int i = 0; i < 3; i++) {
        req_init(&qd[i], 200 + i, queued_dl[i]);
        submit(&rt, &qd[i]);
    }
    assert_true(rt.deadline_hint <= 10);

    surpool__reqdone d;
    surpool__reqdone_init(&d);
    atomic_store(&g_order, 0);
    assert_int_equal(surpool__reqtable_expire(&rt, 5, &d), 10); /* nothing due yet */
    assert_true(surpool__queue_empty(&d.head));
    assert_int_equal(rt.deadline_hint, 10);

    /* At 25: queued 15 and 25 first (queue order), then in flight 10 and 20
     * (list order). */
    assert_int_equal(surpool__reqtable_expire(&rt, 25, &d), 30);
    surpool__reqdone_run(&d);
    assert_true(surpool__queue_empty(&d.head));
    assert_int_equal(qd[0].order, 0);
    assert_int_equal(qd[1].order, 1);
    assert_int_equal(in[1].order, 2);
    assert_int_equal(in[3].order, 3);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(qd[i].r.status, SURPOOL_ERR_REQUEST_TIMEOUT);
        assert_string_equal(qd[i].r.message, "request timed out before it could be sent");
    }
    assert_int_equal(in[1].r.status, SURPOOL_ERR_REQUEST_TIMEOUT);
    assert_string_equal(in[1].r.message, "request timed out waiting for the reply");
    /* An expired request's late reply is dropped. */
    assert_null(surpool__reqtable_take(&rt, in[1].r.id));
    assert_null(surpool__reqtable_take(&rt, in[3].r.id));

    /* The rest, everything at once: 35 queued, then 50, 40, 30 in list order. */
    assert_int_equal(surpool__reqtable_expire(&rt, 1000, &d), INT64_MAX);
    surpool__reqdone_run(&d);
    assert_int_equal(qd[2].order, 4);
    assert_int_equal(in[0].order, 5);
    assert_int_equal(in[2].order, 6);
    assert_int_equal(in[4].order, 7);
    assert_int_equal(rt.deadline_hint, INT64_MAX);
    for (int i = 0; i < 5; i++)
        assert_int_equal(atomic_load(&in[i].done_calls), 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(atomic_load(&qd[i].done_calls), 1);
    assert_int_equal(rt.map.count, 0);
    surpool__reqtable_free(&rt);
}

static void test_cancel(void **state)
{
    (void)state;
    req a, b, c;
    surpool__reqtable rt;
    surpool__reqtable_init(&rt);
    req_init(&a, 1, INT64_MAX);
    req_init(&b, 2, INT64_MAX);
    req_init(&c, 3, 10);
    submit(&rt, &a);
    submit(&rt, &b);
    submit(&rt, &c);
    surpool__reqtable_send_next(&rt);                         /* a in flight; b, c queued */
    assert_int_equal(surpool__reqtable_cancel(&rt, &b.r), 1); /* queued */
    assert_int_equal(b.r.tstate, SURPOOL__TREQ_NONE);
    assert_int_equal(surpool__reqtable_cancel(&rt, &b.r), 0); /* twice */
    assert_int_equal(surpool__reqtable_cancel(&rt, &a.r), 1); /* in flight */
    assert_null(surpool__reqtable_take(&rt, 1));              /* its reply comes late */
    /* c is the only one left: it goes in flight next and expires. */
    assert_ptr_equal(surpool__reqtable_send_next(&rt), &c.r);
    surpool__reqdone d;
    surpool__reqdone_init(&d);
    surpool__reqtable_expire(&rt, 10, &d);
    assert_int_equal(surpool__reqtable_cancel(&rt, &c.r), 0); /* expired: done() owed */
    surpool__reqdone_run(&d);
    assert_int_equal(atomic_load(&c.done_calls), 1);
    assert_int_equal(atomic_load(&a.done_calls), 0);
    assert_int_equal(atomic_load(&b.done_calls), 0);
    /* After take() a cancel loses too. */
    req_init(&a, 4, INT64_MAX);
    submit(&rt, &a);
    surpool__reqtable_send_next(&rt);
    assert_ptr_equal(surpool__reqtable_take(&rt, 4), &a.r);
    assert_int_equal(surpool__reqtable_cancel(&rt, &a.r), 0);
    surpool__reqtable_free(&rt);
}

static void test_fail_inflight_and_all(void **state)
{
    (void)state;
    req a, b, c;
    surpool__reqtable rt;
    surpool__reqtable_init(&rt);
    req_init(&a, 1, 100);
    req_init(&b, 2, 200);
    req_init(&c, 3, 300);
    submit(&rt, &a);
    submit(&rt, &b);
    submit(&rt, &c);
    surpool__reqtable_send_next(&rt);
    surpool__reqtable_send_next(&rt); /* a, b in flight; c queued */
    surpool__reqdone d;
    surpool__reqdone_init(&d);
    surpool__reqtable_fail_inflight(&rt, &d, SURPOOL_ERR_TOO_LARGE, "too large");
    assert_true(surpool__reqtable_has_queued(&rt));
    assert_null(surpool__reqtable_take(&rt, 1));
    atomic_store(&g_order, 0);
    surpool__reqdone_run(&d);
    assert_int_equal(a.order, 0);
    assert_int_equal(b.order, 1);
    assert_int_equal(a.r.status, SURPOOL_ERR_TOO_LARGE);
    assert_string_equal(b.r.message, "too large");
    assert_int_equal(atomic_load(&c.done_calls), 0);

    surpool__reqtable_fail_all(&rt, &d, SURPOOL_ERR_DISCONNECTED, "connection closed");
    assert_false(surpool__reqtable_has_queued(&rt));
    assert_int_equal(rt.deadline_hint, INT64_MAX);
    surpool__reqdone_run(&d);
    assert_int_equal(c.r.status, SURPOOL_ERR_DISCONNECTED);
    assert_string_equal(c.r.message, "connection closed");
    assert_int_equal(atomic_load(&a.done_calls), 1);
    assert_int_equal(atomic_load(&c.done_calls), 1);
    surpool__reqtable_free(&rt);
}

/* ---- cancel vs completion on two threads ---- */

enum { RACE_ROUNDS = 2000, RACE_BATCH = 16 };

typedef struct race {
    pthread_mutex_t mu; /* the owner's mutex: every table call under it */
    surpool__reqtable rt;
    req qs[RACE_BATCH];
    pthread_barrier_t start, end;
    int cancelled[RACE_BATCH];
} race;

/* The "service thread": routes a reply for every id, in reverse, and runs
 * done() after unlocking, as the transport does. */
static void *race_replier(void *arg)
{
    race *x = arg;
    for (int round = 0; round < RACE_ROUNDS; round++) {
        pthread_barrier_wait(&x->start);
        for (int i = RACE_BATCH - 1; i >= 0; i--) {
            pthread_mutex_lock(&x->mu);
            surpool__treq *r = surpool__reqtable_take(&x->rt, (int64_t)round * RACE_BATCH + i);
            pthread_mutex_unlock(&x->mu);
            if (r != NULL)
                r->done(r);
        }
        pthread_barrier_wait(&x->end);
    }
    return NULL;
}

static void test_cancel_races_completion(void **state)
{
    (void)state;
    race *x = calloc(1, sizeof(*x));
    assert_non_null(x);
    pthread_mutex_init(&x->mu, NULL);
    pthread_barrier_init(&x->start, NULL, 2);
    pthread_barrier_init(&x->end, NULL, 2);
    surpool__reqtable_init(&x->rt);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, race_replier, x), 0);
    long won = 0, lost = 0;
    for (int round = 0; round < RACE_ROUNDS; round++) {
        pthread_mutex_lock(&x->mu);
        for (int i = 0; i < RACE_BATCH; i++) {
            req_init(&x->qs[i], (int64_t)round * RACE_BATCH + i, INT64_MAX);
            assert_int_equal(surpool__reqtable_reserve(&x->rt), 0);
            surpool__reqtable_queue(&x->rt, &x->qs[i].r);
            surpool__reqtable_send_next(&x->rt);
        }
        pthread_mutex_unlock(&x->mu);
        pthread_barrier_wait(&x->start);
        /* The caller's side: time out waiting, in submit order. */
        for (int i = 0; i < RACE_BATCH; i++) {
            pthread_mutex_lock(&x->mu);
            x->cancelled[i] = surpool__reqtable_cancel(&x->rt, &x->qs[i].r);
            pthread_mutex_unlock(&x->mu);
        }
        pthread_barrier_wait(&x->end);
        /* Exactly one side won each request. */
        for (int i = 0; i < RACE_BATCH; i++) {
            int calls = atomic_load(&x->qs[i].done_calls);
            if (x->cancelled[i]) {
                assert_int_equal(calls, 0);
                won++;
            } else {
                assert_int_equal(calls, 1);
                assert_int_equal(x->qs[i].r.status, SURPOOL_OK);
                lost++;
            }
        }
        assert_int_equal(x->rt.map.count, 0);
        assert_int_equal(x->rt.inflight.n, 0);
    }
    assert_int_equal(won + lost, (long)RACE_ROUNDS * RACE_BATCH);
    print_message("cancel won %ld, completion won %ld\n", won, lost);
    pthread_join(th, NULL);
    surpool__reqtable_free(&x->rt);
    pthread_barrier_destroy(&x->start);
    pthread_barrier_destroy(&x->end);
    pthread_mutex_destroy(&x->mu);
    free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_send_in_submit_order_and_route_by_id),
        cmocka_unit_test(test_duplicate_and_unknown_ids_dropped),
        cmocka_unit_test(test_deadline_expiry_order),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_fail_inflight_and_all),
        cmocka_unit_test(test_cancel_races_completion),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
