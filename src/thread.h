/*
 * Thread helpers shared by every file that waits: condition variables on the
 * monotonic clock and waits bounded by a monotonic deadline. Not installed.
 */
#ifndef SURPOOL_THREAD_H
#define SURPOOL_THREAD_H

#include <pthread.h>
#include <stdint.h>

/* Initialise `cv` to time its waits on CLOCK_MONOTONIC (the clock of
 * surpool__now_ns()). Returns 0, or -1 if it could not be created. */
int surpool__cond_init(pthread_cond_t *cv);

/* Wait on `cv` (with `mu` held) until signalled or until `deadline_ns`
 * (CLOCK_MONOTONIC nanoseconds; INT64_MAX waits without a deadline).
 * Returns 0 when woken (spuriously included) and ETIMEDOUT when the deadline
 * passed: callers re-check their own condition either way. */
int surpool__cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t deadline_ns);

#endif
