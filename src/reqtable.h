/*
 * The request table of one connection: requests queued for sending, requests
 * in flight (a FIFO plus a map by RPC id), their deadlines and their
 * completions. It knows nothing of sockets or libwebsockets: the libwebsockets
 * transport and the tests' fake transport both keep their requests here, and
 * tests/test_reqtable.c exercises it alone.
 *
 * Rules:
 *  1. Nothing here locks. Every function but the done-list ones is called with
 *     the owner's mutex held (the connection's, for the transports), the same
 *     mutex for every call on one table.
 *  2. Nothing here allocates except surpool__reqtable_reserve(), so the thread
 *     that sends and routes replies never fails for lack of memory: reserve at
 *     submit time, before surpool__reqtable_queue().
 *  3. A request leaves the table exactly once: taken by its reply, expired,
 *     failed (both go to a done list), or cancelled. Whoever takes it owns it;
 *     the table never touches it again.
 *  4. Completions (done()) never run under the owner's mutex: expired and
 *     failed requests are collected on a surpool__reqdone list, and the owner
 *     runs it with surpool__reqdone_run() after unlocking.
 *  5. What a completion carries is the owner's business: surpool__reqtable_take()
 *     hands back the request with status SURPOOL_OK and the owner stores the
 *     reply (today the decoded frame in req->reply; raw bytes routed by an id
 *     peek would fit beside it without a change here).
 */
#ifndef SURPOOL_REQTABLE_H
#define SURPOOL_REQTABLE_H

#include <stddef.h>
#include <stdint.h>

#include "queue.h"
#include "transport.h"

/* treq.tstate */
enum {
    SURPOOL__TREQ_NONE = 0,     /* not in any table (new, cancelled) */
    SURPOOL__TREQ_QUEUED = 1,   /* waiting to be sent */
    SURPOOL__TREQ_INFLIGHT = 2, /* sent, waiting for its reply */
    SURPOOL__TREQ_DONE = 3      /* completed or about to be (on a done list) */
};

/* A FIFO of requests linked through treq.tlink. `sorted` stays 1 while
 * deadlines are non-decreasing from head to tail: the common case (one constant
 * request timeout) lets the deadline sweep look at the head only. */
typedef struct surpool__reqlist {
    surpool__queue head;
    size_t n;
    int sorted;
} surpool__reqlist;

/* In-flight requests by id: open addressing, linear probing, backward-shift
 * deletion. Capacity is reserved at submit() so that the service thread never
 * has to allocate (or fail) when it moves a request in flight. */
typedef struct surpool__idmap {
    surpool__treq **slots;
    size_t mask; /* capacity - 1; capacity is a power of two, 0 slots when unused */
    size_t count;
} surpool__idmap;

typedef struct surpool__reqtable {
    surpool__reqlist queue;    /* submitted, not yet sent, in submit order */
    surpool__reqlist inflight; /* sent, waiting for the reply, in send order */
    surpool__idmap map;        /* the in-flight ones by id */
    int64_t deadline_hint;     /* <= every pending deadline (INT64_MAX: none) */
} surpool__reqtable;

/* Completed requests waiting for their done() call, linked through treq.tlink. */
typedef struct surpool__reqdone {
    surpool__queue head;
} surpool__reqdone;

void surpool__reqtable_init(surpool__reqtable *rt);

/* Free the id map. Requests still listed are forgotten, not completed: fail them
 * first (surpool__reqtable_fail_all) if they are owed a done(). */
void surpool__reqtable_free(surpool__reqtable *rt);

/* Make room in the id map for every queued request plus one more. 0, or -1 when
 * out of memory (nothing changed). */
int surpool__reqtable_reserve(surpool__reqtable *rt);

/* Queue `req` for sending: reset its outputs, mark it queued, lower the
 * deadline hint. Call surpool__reqtable_reserve() first. */
void surpool__reqtable_queue(surpool__reqtable *rt, surpool__treq *req);

/* Whether a request waits to be sent. */
int surpool__reqtable_has_queued(const surpool__reqtable *rt);

/* Move the oldest queued request in flight (list and id map) and return it, or
 * NULL when none is queued. The owner sends it after this call, still under its
 * mutex: a reply cannot beat the bookkeeping, and a cancel cannot free the
 * buffer mid-send. */
surpool__treq *surpool__reqtable_send_next(surpool__reqtable *rt);

/* Route a reply: take the in-flight request with `id` out of the table, marked
 * done with status SURPOOL_OK and an empty message; the owner stores the reply
 * and calls done() after unlocking. NULL when no request with that id is in
 * flight (a late reply after a timeout or cancel, a duplicate, an unknown id):
 * the reply is to be dropped. */
surpool__treq *surpool__reqtable_take(surpool__reqtable *rt, int64_t id);

/* Remove `req` if it has not completed: 1 if it did (done() will not be called,
 * the caller owns req again), 0 if it was taken, expired or failed already. */
int surpool__reqtable_cancel(surpool__reqtable *rt, surpool__treq *req);

/* Move every in-flight request to `d` with `code` and `msg`; queued ones stay. */
void surpool__reqtable_fail_inflight(surpool__reqtable *rt, surpool__reqdone *d,
                                     surpool_err code, const char *msg);

/* Move every in-flight and every queued request to `d` with `code` and `msg`. */
void surpool__reqtable_fail_all(surpool__reqtable *rt, surpool__reqdone *d, surpool_err code,
                                const char *msg);

/* Move every request whose deadline is <= now to `d` with
 * SURPOOL_ERR_REQUEST_TIMEOUT (queued ones first, then in flight, each in list
 * order). Returns the earliest deadline left (INT64_MAX: none), which also
 * becomes the deadline hint. */
int64_t surpool__reqtable_expire(surpool__reqtable *rt, int64_t now, surpool__reqdone *d);

void surpool__reqdone_init(surpool__reqdone *d);

/* Call done() for each request on `d`, in order, and leave `d` empty. Never
 * with the owner's mutex held. */
void surpool__reqdone_run(surpool__reqdone *d);

#endif
