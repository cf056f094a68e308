/*
 * The connection layer (conn.c): one connection of a pool, opened and set up
 * (auth, namespace/database, the user's hook), and the one place that hands
 * its requests to the transport. What the pool, the rpc layer and the lane
 * need of a connection, without the pool's books. Not installed.
 */
#ifndef SURPOOL_CONN_H
#define SURPOOL_CONN_H

#include <stdint.h>

#include "internal.h"
#include "transport.h"

surpool_err surpool__conn_open(surpool_pool *pool, int ep, surpool_conn **out,
                               surpool_error *err);
void surpool__conn_close(surpool_conn *c); /* closes transport, frees; no locks held */
/* Close the transport only, keeping the memory (the pool's graveyard); no
 * locks held. */
void surpool__conn_close_transport(surpool_conn *c);
int surpool__conn_usable(const surpool_conn *c);
/* 1 once `now` (monotonic ns) is past the connection's max lifetime. */
int surpool__conn_expired(const surpool_conn *c, int64_t now);
/* A transport failure was seen on it: the pool must close it, not lend it. */
void surpool__conn_mark_broken(surpool_conn *c);
/* A reply on it did not decode: have the transport fail it now (transport.h,
 * contract 11), so that its other requests in flight end at once instead of
 * at their deadlines. From any thread except a done() or an event; the
 * connection stays open as a handle until closed. */
void surpool__conn_fail(surpool_conn *c, surpool_err code, const char *msg);
/* One ping with its own deadline (validation, keepalive); no locks held. */
surpool_err surpool__conn_ping(surpool_conn *c, long timeout_ms, surpool_error *err);
/* Bring a dirty lease back to the configured state (reset, signin, use, hooks). */
surpool_err surpool__conn_restore(surpool_conn *c, surpool_error *err);

/* 1 if the pool authenticates its connections (user, token, token_fn or
 * signin_params configured). */
int surpool__pool_authenticates(const surpool_pool *p);
/* 1 if an expired session of `c` is the pool's to renew: the pool
 * authenticates its connections, the borrower did not sign in itself, and
 * this is not the pool's own authentication in progress. */
int surpool__conn_may_reauth(const surpool_conn *c);
/* Authenticate `c` again as the pool does (its session expired); on failure
 * the connection is marked broken. Blocks (RPCs); no locks held. */
surpool_err surpool__conn_reauth(surpool_conn *c, surpool_error *err);

/* Borrowing a real connection (pool.c), for the library's own borrowers: the
 * lane, and any later one. surpool_pool_acquire_at() and surpool_conn_release()
 * wrap these for users, handing out and taking back lease handles (lease.h),
 * which internal code never sees nor passes. Same arguments, errors and
 * thread rules as the public pair. */
surpool_err surpool__pool_acquire_conn(surpool_pool *pool, long timeout_ms, surpool_conn **out,
                                       surpool_error *err, const char *file, int line);
void surpool__pool_release_conn(surpool_conn *c);

/* Hand a prepared request (surpool__rpc_prepare) to the connection's
 * transport, and take one back; the transport's contracts 3 and 5. */
surpool_err surpool__conn_submit(surpool_conn *c, surpool__treq *req);
int surpool__conn_cancel(surpool_conn *c, surpool__treq *req);

#endif
