/*
 * Live queries (live.c): subscriptions that survive their socket. The pool
 * owns one manager; the transport hands it every notification frame (conn.c
 * on_notify) and every socket death (conn.c on_dead). docs/live.md is the
 * contract. Not installed.
 */
#ifndef SURPOOL_LIVE_H
#define SURPOOL_LIVE_H

#include <stdint.h>

#include <jansson.h>

#include "internal.h"

typedef struct surpool__live_mgr surpool__live_mgr;

/* The pool's manager; no thread is started until the first live query. */
surpool_err surpool__live_create(surpool_pool *p, surpool__live_mgr **out);
/* Pool destroy, the pool closed: kill every live query (best effort, bounded),
 * give the carriers back, deliver every final event, join the threads and
 * free every handle. The pool and its transport are still alive. NULL ok. */
void surpool__live_shutdown(surpool__live_mgr *m);
/* After the transport is gone (no notification can arrive any more). NULL ok. */
void surpool__live_free(surpool__live_mgr *m);

/* The transport's thread (contract 7: quick, no RPC): a notification frame
 * (borrowed) that arrived on connection `conn`. NULL m ok. */
void surpool__live_notify(surpool__live_mgr *m, const void *conn, json_t *frame);
/* The transport's thread: a connection died; the live worker looks at its
 * carriers. NULL m ok. */
void surpool__live_conn_died(surpool__live_mgr *m);

/* 1 while this thread runs a surpool_live_fn. */
int surpool__live_in_callback(void);

/* Tests: notifications queued for delivery now, and dropped so far. */
void surpool__live_counts(surpool_live *live, size_t *queued, uint64_t *dropped);
/* Tests: the connection a `live` is in flight on (NULL: none), to inject a
 * notification that beats its reply. */
const void *surpool__live_starting_conn(surpool__live_mgr *m);
/* Tests: notifications kept for an id not registered yet (L2's buffer). */
size_t surpool__live_orphans(surpool__live_mgr *m);

#endif
