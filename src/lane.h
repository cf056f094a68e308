/*
 * The shared lane (lane.c): pool-level calls without a lease. The pool owns
 * one; the lane borrows connections through the pool's public acquire and
 * release and sends on them through the request path (rpc.h, conn.h), so it
 * needs nothing of the pool's books: this header and the three pool.c calls
 * below are the whole interface between the two. Not installed.
 */
#ifndef SURPOOL_LANE_H
#define SURPOOL_LANE_H

#include <stdint.h>

#include <jansson.h>

#include "internal.h"
#include "queue.h"

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

/* Sessions (session.c): many server-side sessions (3.x attach) ride the
 * lane's sockets. Each socket has a generation, unique in the lane and never
 * 0: a session remembers the one it is attached on and compares it before
 * each call (surpool__lane_socket_ok); once that socket failed, expired or
 * was given back the session attaches again elsewhere (docs/sessions.md). */
typedef struct surpool__lane_member {
    surpool__queue link; /* the lane's list of sessions (guarded by the lane's mutex) */
    surpool__lane *lane; /* NULL once it left, or once the lane was destroyed */
} surpool__lane_member;
/* Register a session (CLOSED once the pool closes); the lane's destroy sets
 * m->lane to NULL for every member still registered (docs/sessions.md). */
surpool_err surpool__lane_join(surpool__lane *l, surpool__lane_member *m, surpool_error *err);
/* Unregister (m->lane NULL: nothing to do). */
void surpool__lane_leave(surpool__lane_member *m);
/* 1 if the socket of generation `gen` is still there and usable. */
int surpool__lane_socket_ok(surpool__lane *l, uint64_t gen);
/* The session bound to socket `gen` left it (closed, or moved elsewhere). */
void surpool__lane_unbind(surpool__lane *l, uint64_t gen);
/* The sessions each usable socket carries, up to `max` sockets; returns how
 * many were written (tests). */
int surpool__lane_socket_sessions(surpool__lane *l, int *counts, int max);
/* What surpool__lane_session_call() says of a failed request, in *flags. */
enum {
    SURPOOL__LANE_EXPIRED = 1, /* refused because the session expired (it did not run) */
    SURPOOL__LANE_UNSENT = 2,  /* never reached a socket (refused before it was queued,
                                  or its socket was gone first) */
};
/* One synchronous request of session `session` (UUID text, in the envelope),
 * on the socket of generation *gen; with *gen == 0 on the socket with the
 * fewest sessions, which counts the session from then on: *gen receives its
 * generation once the request was sent (also when the server refused it: the
 * caller unbinds). DISCONNECTED when the socket died before or while it was
 * sent (SURPOOL__LANE_UNSENT in *flags: before). SURPOOL__LANE_EXPIRED: the
 * server refused it because the session expired (it did not run). Never
 * retried. `timeout_ms` as surpool__reqopts. Caller's thread
 * only, never from a result callback. */
surpool_err surpool__lane_session_call(surpool__lane *l, uint64_t *gen, const char *session,
                                       const char *method, const json_t *params,
                                       long timeout_ms, json_t **out, int *flags,
                                       surpool_error *err);

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
