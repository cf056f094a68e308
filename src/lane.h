/*
 * The shared lane (lane.c): pool-level calls without a lease. The pool owns
 * one; the lane borrows connections through the pool's public acquire and
 * release and sends on them through the request path (rpc.h, conn.h), so it
 * needs nothing of the pool's books: this header and the three pool.c calls
 * below are the whole interface between the two. Not installed.
 */
#ifndef SURPOOL_LANE_H
#define SURPOOL_LANE_H

#include "internal.h"

typedef struct surpool__lane surpool__lane;

/* The settings the lane reads, copied from the pool's config at create. */
typedef struct surpool__lane_config {
    int shared_connections;
    int max_connections;
    int shared_max_inflight;
    long acquire_timeout_ms;
    long connect_timeout_ms;
} surpool__lane_config;

surpool_err surpool__lane_create(surpool_pool *p, const surpool__lane_config *cfg,
                                 surpool__lane **out);
void surpool__lane_close(surpool__lane *l); /* pool closing: refuse new, fail queued */
/* Completes every request, returns its leases, unhooks itself from the pool
 * (surpool__pool_lane_unhook) and frees itself; the pool is still alive.
 * Until then callbacks that resubmit get SURPOOL_ERR_CLOSED. */
void surpool__lane_destroy(surpool__lane *l);
/* Fills the lane_* fields; called under the pool mutex (order pool -> lane). */
void surpool__lane_stats(surpool__lane *l, surpool_stats *out);
/* 1 while this thread runs a surpool_result_fn. Synchronous calls refuse to
 * run there (SURPOOL_ERR_INVALID_ARG): they would hold up every callback queued
 * behind it, or wait for a reply only that thread can deliver. */
int surpool__in_result_callback(void);
/* 1 on a lane's delivery thread (where async results are decoded and their
 * callbacks run); for tests. */
int surpool__lane_on_delivery_thread(void);

/* pool.c: the pool's side of the interface. */
/* The pool's lane, or NULL (shared_connections == 0); read without a lock:
 * the pool keeps it until destroy has completed every request. */
surpool__lane *surpool__pool_lane(surpool_pool *p);
/* Mark a lease as the lane's (not a user lease: no leak reports, not waited
 * for by drain). */
void surpool__pool_lane_mark(surpool_pool *p, surpool_conn *c);
/* The lane is about to be freed: forget it, under the pool mutex (an event
 * callback on a connector thread may be reading stats). */
void surpool__pool_lane_unhook(surpool_pool *p, surpool__lane *l);

#endif
