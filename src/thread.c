/*
 * Condition variables on the monotonic clock (thread.h).
 */
#include <time.h>

#include "thread.h"

int surpool__cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0)
        return -1;
    int rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cv, &attr);
    pthread_condattr_destroy(&attr);
    return rc == 0 ? 0 : -1;
}

int surpool__cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t deadline_ns)
{
    if (deadline_ns == INT64_MAX)
        return pthread_cond_wait(cv, mu);
    if (deadline_ns < 0)
        deadline_ns = 0;
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline_ns / INT64_C(1000000000));
    ts.tv_nsec = (long)(deadline_ns % INT64_C(1000000000));
    return pthread_cond_timedwait(cv, mu, &ts);
}
