/*
 * The internal toolkit: the intrusive list (src/queue.h) and the monotonic
 * condition-variable helpers (src/thread.h).
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "internal.h"
#include "queue.h"
#include "thread.h"

typedef struct item {
    int v;
    surpool__queue link;
} item;

/* The values of the list, in order, as a number (1,2,3 -> 123). */
static long digits(const surpool__queue *h)
{
    long n = 0;
    const surpool__queue *q;
    SURPOOL__QUEUE_FOREACH(q, h)
    n = n * 10 + SURPOOL__QUEUE_DATA(q, item, link)->v;
    return n;
}

static void test_queue(void **state)
{
    (void)state;
    item it[5];
    surpool__queue h, other;
    surpool__queue_init(&h);
    surpool__queue_init(&other);
    assert_true(surpool__queue_empty(&h));
    assert_null(surpool__queue_head(&h));
    assert_null(surpool__queue_tail(&h));
    for (int i = 0; i < 5; i++) {
        it[i].v = i + 1;
        surpool__queue_init(&it[i].link);
        assert_false(surpool__queue_linked(&it[i].link));
    }
    surpool__queue_insert_tail(&h, &it[1].link);
    surpool__queue_insert_tail(&h, &it[2].link);
    surpool__queue_insert_head(&h, &it[0].link);
    assert_int_equal(digits(&h), 123);
    assert_ptr_equal(surpool__queue_head(&h), &it[0].link);
    assert_ptr_equal(surpool__queue_tail(&h), &it[2].link);
    assert_true(surpool__queue_linked(&it[1].link));

    /* Remove from the middle, then again: the second remove is harmless. */
    surpool__queue_remove(&it[1].link);
    surpool__queue_remove(&it[1].link);
    assert_false(surpool__queue_linked(&it[1].link));
    assert_int_equal(digits(&h), 13);

    /* Removing while walking with the _SAFE form. */
    surpool__queue_insert_tail(&other, &it[3].link);
    surpool__queue_insert_tail(&other, &it[4].link);
    surpool__queue_move_tail(&h, &other);
    assert_true(surpool__queue_empty(&other));
    assert_int_equal(digits(&h), 1345);
    surpool__queue *q, *n;
    SURPOOL__QUEUE_FOREACH_SAFE(q, n, &h)
    {
        if (SURPOOL__QUEUE_DATA(q, item, link)->v % 2 == 1)
            surpool__queue_remove(q);
    }
    assert_int_equal(digits(&h), 4);
    surpool__queue_move_tail(&h, &other); /* an empty list moves nothing */
    assert_int_equal(digits(&h), 4);
    surpool__queue_remove(&it[3].link);
    assert_true(surpool__queue_empty(&h));
}

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int flag;
} waiter;

static void *signal_later(void *arg)
{
    waiter *w = arg;
    pthread_mutex_lock(&w->mu);
    w->flag = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void test_cond_wait_until(void **state)
{
    (void)state;
    waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    assert_int_equal(surpool__cond_init(&w.cv), 0);
    pthread_mutex_lock(&w.mu);
    /* A deadline in the past (or before the epoch of the clock) times out. */
    assert_int_equal(surpool__cond_wait_until(&w.cv, &w.mu, surpool__now_ns() - 1), ETIMEDOUT);
    assert_int_equal(surpool__cond_wait_until(&w.cv, &w.mu, -5), ETIMEDOUT);
    /* A signal wakes a waiter whose deadline is far away, and one without. */
    for (int round = 0; round < 2; round++) {
        w.flag = 0;
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, signal_later, &w), 0);
        int64_t far = round == 0 ? surpool__now_ns() + 60000 * SURPOOL__NS_PER_MS : INT64_MAX;
        while (!w.flag)
            assert_int_equal(surpool__cond_wait_until(&w.cv, &w.mu, far), 0);
        pthread_mutex_unlock(&w.mu);
        pthread_join(th, NULL);
        pthread_mutex_lock(&w.mu);
    }
    pthread_mutex_unlock(&w.mu);
    pthread_cond_destroy(&w.cv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queue),
        cmocka_unit_test(test_cond_wait_until),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
