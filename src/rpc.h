/*
 * The request path (rpc.c), shared by leases and the lane: a request is
 * prepared (pool-wide id, payload encoded in the pool's wire format, deadline)
 * by surpool__rpc_prepare, sent with surpool__conn_submit (conn.h), and its
 * reply read by surpool__rpc_outcome. Not installed.
 */
#ifndef SURPOOL_RPC_H
#define SURPOOL_RPC_H

#include <pthread.h>
#include <stdint.h>

#include <jansson.h>

#include "internal.h"
#include "transport.h"

/* A one-shot completion a thread can wait for. */
typedef struct surpool__sync {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} surpool__sync;
int surpool__sync_init(surpool__sync *s); /* 0 or -1 */
void surpool__sync_destroy(surpool__sync *s);
void surpool__sync_signal(surpool__sync *s);
void surpool__sync_wait(surpool__sync *s);

int surpool__method_changes_session(const char *method);
/* The shape every pool-level call checks first (the lane, sessions):
 * `method` a non-empty string shorter than 32 bytes, `params` an array or
 * NULL; SURPOOL_ERR_INVALID_ARG saying which. */
surpool_err surpool__check_method_params(const char *method, const json_t *params,
                                         surpool_error *err);
/* Transport failures after which a connection must not be lent again. */
int surpool__breaks_connection(surpool_err code);
/* [sql] or [sql, vars] for `query`, checked (INVALID_ARG, NOMEM) and packed;
 * *params is a new reference. Shared by leases and the lane. */
surpool_err surpool__query_params(const char *sql, const json_t *vars, json_t **params,
                                  surpool_error *err);

/* `signin` params ([{user, pass, ns, db, ac, ...vars}]) from credentials,
 * checked as surpool_conn_signin() checks them (INVALID_ARG, NOMEM); *params
 * is a new reference holding a password: the caller wipes what it encodes. */
surpool_err surpool__signin_params(const surpool_credentials *cred, json_t **params,
                                   surpool_error *err);
/* `signup` params ([{ns, db, ac, ...vars}]), checked as surpool_conn_signup()
 * checks them (INVALID_ARG, NOMEM); *params is a new reference. */
surpool_err surpool__signup_params(const char *ns, const char *db, const char *access,
                                   const json_t *vars, json_t **params, surpool_error *err);

/* `let` params ([name, value]) or, `value` NULL, `unset` params ([name]):
 * the name [A-Za-z_][A-Za-z0-9_]*, the value checked (INVALID_ARG, NOMEM);
 * `method` is "let" or "unset". *params is a new reference. */
surpool_err surpool__var_params(const char *method, const char *name, const json_t *value,
                                json_t **params, surpool_error *err);

/* What one request adds to the pool's settings. */
typedef struct surpool__reqopts {
    const char *txn;     /* the interactive transaction it runs in (UUID text), or NULL */
    long timeout_ms;     /* its own deadline from now: < 0 the pool's request_timeout_ms,
                        0 none, > 0 this many ms */
    const char *session; /* the session it runs in (UUID text, 3.x attach), or NULL */
} surpool__reqopts;

/* Prepare `req` for submission on a connection of `p`: a pool-wide id (never
 * reused, so a late reply can never match a newer call), the payload encoded
 * in the pool's wire format behind the transport's headroom (req->buf, freed
 * with surpool__rpc_free_payload), and the deadline: request_timeout_ms (or
 * o->timeout_ms) from now, or `deadline_ns` if sooner (INT64_MAX: none of the
 * caller's). `o` (NULL: none) adds the request's own settings. The caller sets req->done and
 * req->userdata. On error nothing is allocated. */
surpool_err surpool__rpc_prepare(surpool_pool *p, surpool__treq *req, const char *method,
                                 const json_t *params, int64_t deadline_ns,
                                 const surpool__reqopts *o, surpool_error *err);
/* Free a prepared request's payload, wiping it first if `method` carries a
 * password or token. NULL buf ok. */
void surpool__rpc_free_payload(surpool_pool *p, surpool__treq *req, const char *method);
/* A completed request's outcome: decodes the reply frame the transport handed
 * over (surpool__wire_decode_reply: call this on the thread that wants the
 * result, never in done()), then *result BORROWED from req->reply on success,
 * else the error in err; counts the request in the pool's stats. */
surpool_err surpool__rpc_outcome(surpool_pool *p, const char *method, surpool__treq *req,
                                 json_t **result, surpool_error *err);

/* One synchronous RPC on a connection, deadline absolute (monotonic ns).
 * *out (may be NULL) receives the result as a new reference. Inside the
 * lease's open transaction, if any (surpool_conn_begin). */
surpool_err surpool__rpc(surpool_conn *c, const char *method, const json_t *params,
                         int64_t deadline_ns, json_t **out, surpool_error *err);

/* The major version in a `version` reply ("surrealdb-3.0.2" -> 3), 0 if none. */
int surpool__server_major_of(const char *version);
/* The server's major version (3 for "surrealdb-3.0.2"), asked with one
 * `version` call the first time a feature needs it and kept on the
 * connection for its life; 0 when the server would not say (or the call
 * failed: a transport failure leaves the lease broken). Lease holder. */
int surpool__rpc_server_major(surpool_conn *c);
/* The lease's open transaction, if any, is cancelled (release; within
 * connect_timeout_ms as a reset is, and request_timeout_ms): SURPOOL_OK
 * when there was none or the server dropped it; else the connection must not
 * be lent again. */
surpool_err surpool__rpc_end_txn(surpool_conn *c, surpool_error *err);

#endif
