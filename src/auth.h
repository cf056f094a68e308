/*
 * The pool's authentication state (auth.c): the token the pool signed in for
 * (or got from the application's token provider), shared by every connection
 * of the pool, and the gate that lets one refresh (a password sign-in or a
 * provider call) run at a time. conn.c does the RPCs; this file only keeps the
 * token and decides who refreshes. Not installed.
 *
 * Rules:
 *  A1. New connections authenticate with the cached token (`authenticate`,
 *      cheap for the server); only when there is none, it is due for renewal,
 *      or the server refused it does a connection refresh it.
 *  A2. One refresh in flight per pool: the first connection to need one does
 *      it; the others wait for its outcome (until their own deadline) and
 *      take its token. No stampede: N connections cost one password check.
 *  A3. A refresh that failed on the credentials (SURPOOL_ERR_AUTH) is the
 *      answer for everyone who waited for it; a later connection tries again
 *      (paced by the connect governor's backoff and breaker). Any other
 *      failure (a dead socket) is not shared: a waiter refreshes itself.
 *  A4. The token is a secret: copies handed out are freed with
 *      surpool__free_secret(); the cached one is wiped when replaced and at
 *      destroy; it never reaches a message, a log line or an event.
 */
#ifndef SURPOOL_AUTH_H
#define SURPOOL_AUTH_H

#include <pthread.h>
#include <stdint.h>

#include <jansson.h>

#include "internal.h"

typedef struct surpool__auth {
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* broadcast when a refresh ends */
    char *token;             /* guarded by mu: the current token (a secret), or NULL */
    int64_t renew_ns;        /* guarded by mu: monotonic; from then on refresh first */
    uint64_t gen;            /* guarded by mu: bumped when a refresh ends with an outcome */
    int busy;                /* guarded by mu: a refresh is in flight (rule A2) */
    surpool_error failure;   /* guarded by mu: the last shared failure (rule A3) */
    int no_authenticate;     /* guarded by mu: the server refused `authenticate` with a
                               fresh token: every connection signs in itself */
    unsigned long refreshes; /* guarded by mu: refreshes done (tests) */
} surpool__auth;

int surpool__auth_init(surpool__auth *a);     /* 0 or -1 */
void surpool__auth_destroy(surpool__auth *a); /* wipes the token */

/* A copy of the current token (free it with surpool__free_secret), or NULL
 * when there is none or it is due for renewal. *gen receives its generation. */
char *surpool__auth_current(surpool__auth *a, uint64_t *gen);
/* The server refused the token of generation `gen`: forget it (a newer one
 * stays). `server_refuses`: refused for another reason than the credentials
 * or its age (method not allowed, ...): from now on every connection signs
 * in itself (the "a server that refuses authenticate"). */
void surpool__auth_refused(surpool__auth *a, uint64_t gen, int server_refuses);
/* 1 once the server was seen refusing `authenticate` (rule A1 is off). */
int surpool__auth_signin_only(surpool__auth *a);

/* What surpool__auth_enter() decided. */
enum {
    SURPOOL__AUTH_FAILED = -1, /* err says why (a shared failure, or the deadline) */
    SURPOOL__AUTH_REFRESH = 0, /* the caller refreshes, then calls surpool__auth_done() */
    SURPOOL__AUTH_NEWER = 1,   /* a newer token: *token (a copy), *gen its generation */
};
/* Called after the token of generation *gen was missing or refused: wait for
 * a refresh in flight, up to `deadline_ns` (monotonic). */
int surpool__auth_enter(surpool__auth *a, uint64_t *gen, int64_t deadline_ns, char **token,
                        surpool_error *err);
/* End the caller's refresh: `token` (copied; NULL: the server gave none) on
 * success, else `failure` (shared when its code is SURPOOL_ERR_AUTH). */
void surpool__auth_done(surpool__auth *a, const char *token, const surpool_error *failure);

/* The JWT's `exp` claim (seconds since the epoch), or 0 when the token is
 * not a JWT or has none. Reads the payload only; no signature check. */
int64_t surpool__jwt_exp(const char *token);
/* The same, and its `iat` claim in *iat (0 when absent); iat may be NULL. */
int64_t surpool__jwt_exp_iat(const char *token, int64_t *iat);

/* 1 if `reply` (a reply frame) is the server refusing a call because the
 * session expired (3.x: details {kind:"Auth", details:{kind:"SessionExpired"}};
 * 2.x: the message says so). Such a call was refused before it ran. */
int surpool__reply_session_expired(const json_t *reply);

#endif
