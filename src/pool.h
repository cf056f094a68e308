/*
 * Internal view of the pool and its connections, shared by pool.c (the core:
 * waiters, handoff, acquire/release, lifecycle), governor.c (connector
 * threads, backoff, breaker), maintainer.c (retirement, keepalive, leaks),
 * events.c (events and log lines deferred past the mutex), conn.c
 * (per-connection state) and rpc.c (methods). Narrower headers say what the
 * other layers need of each other: conn.h (a connection), rpc.h (the request
 * path), lane.h (the lane and its interface to the pool); the lane includes
 * those, not this one.
 */
#ifndef SURPOOL_POOL_H
#define SURPOOL_POOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "auth.h"
#include "conn.h"
#include "histogram.h"
#include "internal.h"
#include "lane.h"
#include "live.h"
#include "queue.h"
#include "rpc.h"
#include "transport.h"
#include "url.h"

typedef enum surpool__conn_state {
    SURPOOL__CONN_SETUP = 0, /* being opened by a connector; not in any list */
    SURPOOL__CONN_IDLE = 1,
    SURPOOL__CONN_LEASED = 2,
    SURPOOL__CONN_RELEASING = 3, /* a release claimed it; the same lease released
                                    again meanwhile is a detected no-op */
    SURPOOL__CONN_CLOSED = 4,    /* forgotten by the pool; kept in the graveyard
                                    (pool.c, rule 9) */
} surpool__conn_state;

struct surpool_conn {
    surpool_pool *pool;
    surpool__tconn *t;         /* transport handle; NULL once closed */
    uint32_t lease_slot;       /* its slot in the lease table + 1 (lease.c), for as
                                  long as its memory lives; 0 = none */
    surpool__conn_state state; /* pool mutex */

    /* Pool lists (pool mutex). idle_link also links the graveyard. */
    surpool__queue all_link;
    surpool__queue idle_link;

    _Atomic uint64_t serial; /* 1, 2, ... in creation order; atomic: the transport's
                              on_dead may log it while the connector books it */
    int64_t created_ns;
    int64_t connect_ns;      /* how long opening it took */
    int64_t expires_ns;      /* INT64_MAX: no lifetime limit */
    int64_t last_used_ns;    /* pool mutex: when a user last gave it back */
    int64_t last_checked_ns; /* pool mutex: last proof of life (use or ping) */
    int64_t lease_start_ns;  /* pool mutex: when the current lease began */
    const char *lease_file;  /* pool mutex: acquire call site */
    int lease_line;
    int leak_reported; /* pool mutex */
    int maint;         /* pool mutex: lent to the maintainer, not a user */

    atomic_int dead;   /* set by the transport's on_dead event */
    int broken;        /* lease holder: a transport failure happened */
    int discard;       /* lease holder: surpool_conn_discard() */
    int session_dirty; /* lease holder: session state changed (use, let, ...) */
    int lane;          /* pool mutex: held by the shared lane */
    int ep;            /* the node it is connected to: index into pool->eps; set
                          by surpool__conn_open, never changes */
    int pool_auth;     /* lease holder: the pool is authenticating it (setup, re-auth) */
    int user_auth;     /* lease holder: the borrower signed in / authenticated itself,
                          so an expired session is not the pool's to renew */
    int server_major;  /* lease holder: the server's major version, asked once
                          (surpool__rpc_server_major): 0 not yet, -1 unknown */
    int own_timeout;   /* lease holder: surpool_conn_set_timeout() is in effect
                          (cleared by release); else the pool's request_timeout_ms */
    long timeout_ms;   /* lease holder: its value, 0 = none */
    char txn[37];      /* lease holder: the open interactive transaction
                          (surpool_conn_begin), "" when none */

    char last_error[256]; /* lease holder: message of the last failed call */
};

typedef struct surpool__waiter surpool__waiter;

/* One node of the pool (docs/cluster.md): its URL (scheme, host, port and path
 * are what a connect uses; the shared credentials and query parts are read
 * from eps[0] only, at create) and its own connect governor state
 * (governor.c). Everything but url is guarded by the pool mutex. */
typedef struct surpool__endpoint {
    surpool__url url;
    int nconns;               /* open connections on it: idle + leased (pool.c) */
    int nconnecting;          /* connects to it in progress */
    int consecutive_failures; /* failed connects in a row */
    int64_t not_before_ns;    /* its backoff: no connect to it before */
    int breaker_open;
    uint64_t connects, connect_failures, breaker_opens, retired_rebalance;
    char last_error[200]; /* sanitized message of its last connect failure */
} surpool__endpoint;

/* Per-pool configuration, copied and validated at create. */
typedef struct surpool__pool_config {
    surpool_config pub; /* string members point into the copies below */
    char *url, *ns, *db, *user, *pass, *access, *token, *init_sql;
    char *tls_ca_file, *tls_ca_dir, *tls_cert_file, *tls_key_file;
    char **endpoints;      /* copies of config.endpoints (pub.endpoints points here) */
    json_t *signin_params; /* deep copy, or NULL */
    int max_concurrent_connects;
} surpool__pool_config;

struct surpool_pool {
    pthread_mutex_t mu;
    surpool__pool_config cfg;
    surpool__endpoint *eps; /* the nodes, in list order (never empty); eps[0].url
                               also gives the credentials, ns and db (config.c) */
    int neps;
    int rr_next;               /* round-robin placement: next node to try (mu) */
    int nprobing;              /* connects that are breaker probes (mu) */
    int64_t next_rebalance_ns; /* maintainer.c (mu) */
    surpool__logger logger;
    const surpool__transport_ops *ops;
    surpool__transport *transport;

    /* Connections (mu). */
    surpool__queue all;  /* surpool_conn.all_link */
    surpool__queue idle; /* surpool_conn.idle_link; head = most recently used */
    int nidle, nleased, nconnecting;
    int nclosing; /* forgotten, close() in progress outside mu */
    /* Closed connections whose memory (and so lease slot) is kept a while
     * (FIFO, at most SURPOOL__GRAVE_MAX), so that a stale lease handle of one
     * still names its pool for the ERROR line of a second release (mu). */
    surpool__queue grave; /* surpool_conn.idle_link; head = the oldest */
    int ngrave;
    int nmaint;    /* leased to the maintainer (counted in nleased) */
    int ndrainers; /* threads in surpool_pool_drain() */
    uint64_t next_serial;

    /* FIFO of waiters (mu): head is the oldest. */
    surpool__queue waiters; /* surpool__waiter.link */
    int nwaiters;

    /* Connector threads (mu): open connections on behalf of waiters. */
    pthread_cond_t connector_cv;
    pthread_t *connectors;
    int nconnectors, nconnectors_idle;
    int consecutive_failures;
    surpool_error last_connect_error;
    int connect_failures_pending; /* for create(): failures seen while warming up */
    uint64_t rng;                 /* jitter state */

    /* Lifecycle (mu). */
    int closed;
    int paused, pause_fail_fast;
    int breaker_open;
    pthread_cond_t state_cv; /* broadcast when leases/connects finish */
    pthread_cond_t maint_cv; /* wakes the maintainer */
    pthread_t maintainer;
    int maintainer_started;
    atomic_int reap_pending; /* a connection died: the maintainer should look */

    /* Histograms (mu): fixed buckets, no allocation on the hot path. */
    surpool__hist wait_hist, connect_hist;

    surpool_stats stats; /* counters (mu) */
    surpool__auth auth;  /* the pool's token and its serialized refresh (auth.h) */
    surpool__lane *lane; /* NULL when shared_connections == 0 */
    atomic_ullong requests, request_errors, resets;
    atomic_llong next_id;    /* RPC ids: unique across the pool, never reused,
                                       so a late reply can never match a newer call */
    int nlane;               /* (mu) connections held by the shared lane */
    surpool__live_mgr *live; /* live queries (live.c): set at create, freed after the
                                transport (it receives notifications until then) */
};

/* config.c */
/* Copy the caller's config (its first struct_size bytes) over the defaults:
 * the only place create reads the caller's struct. */
surpool_err surpool__config_widen(const surpool_config *given, surpool_config *full,
                                  surpool_error *err);
surpool_err surpool__config_validate(const surpool_config *c, surpool_error *err);
surpool_err surpool__config_validate_merged(const surpool_config *c, surpool_error *err);
surpool_err surpool__config_copy(surpool__pool_config *dst, const surpool_config *src,
                                 const surpool__url *url, surpool_error *err);
void surpool__config_free(surpool__pool_config *c);
/* The pool's nodes: the hosts of the merged config's url, then
 * config.endpoints, checked (same scheme, no user info or query in an entry,
 * none repeated, at most SURPOOL_MAX_ENDPOINTS). *out is a new array of *n
 * endpoints, zeroed but for their URL; free with surpool__config_free_endpoints. */
surpool_err surpool__config_endpoints(const surpool_config *c, surpool__endpoint **out, int *n,
                                      surpool_error *err);
void surpool__config_free_endpoints(surpool__endpoint *eps, int n);

/* ---- pool.c: the core. Every *_locked function is called with pool->mu held
 * and returns with it held, never dropping it on the way. ---- */

/* Closed connections kept readable for stale handles (pool.c, rule 9). */
#define SURPOOL__GRAVE_MAX 32

/* Invariants of the books (rule 1); fatal in the test builds only. */
void surpool__pool_check_locked(const surpool_pool *p);
/* Book a freshly opened connection: its serial, the list of all. */
void surpool__pool_add_locked(surpool_pool *p, surpool_conn *c);
/* Why `c` must be retired rather than lent at `now` ("dead", "max_lifetime
 * reached", counted in the stats), or NULL. */
const char *surpool__pool_worn_out_locked(surpool_pool *p, const surpool_conn *c, int64_t now);
/* Take an idle connection out of the idle list as a lease. */
void surpool__pool_take_idle_locked(surpool_pool *p, surpool_conn *c);
/* idle + leased + connecting: the slots in use. */
int surpool__pool_total_locked(const surpool_pool *p);
/* A usable connection is free: give it to the oldest waiter, else make it
 * idle (rule 3). The caller has taken `c` out of nleased / nconnecting. */
void surpool__pool_put_locked(surpool_pool *p, surpool_conn *c, int used, int64_t now);
/* Remove an idle or leased connection from the books; the caller closes it
 * with surpool__pool_close_forgotten() once the mutex is released. */
void surpool__pool_forget_locked(surpool_pool *p, surpool_conn *c);
/* Close a forgotten connection; mu NOT held (takes it briefly). */
void surpool__pool_close_forgotten(surpool_pool *p, surpool_conn *c);
/* Leases drain() and destroy() wait for changed: wake them. */
void surpool__pool_leases_changed_locked(surpool_pool *p);
/* Wake every waiter with `outcome` (an error): close, or a stranded queue. */
void surpool__pool_fail_waiters_locked(surpool_pool *p, surpool_err outcome);

/* ---- events.c: events and log lines decided under the mutex wait in a
 * surpool__evq and go out once it is released (rule 8): neither a user
 * callback nor a user logger ever runs under it. ---- */
#define SURPOOL__EVQ_MAX 32
typedef struct surpool__evq {
    surpool_event ev[SURPOOL__EVQ_MAX];
    int log_level[SURPOOL__EVQ_MAX]; /* -1: an event; else a log line of that level */
    char msg[SURPOOL__EVQ_MAX][192];
    int n;
} surpool__evq;
/* `ep`: the node the event is about (0-based index into pool->eps), or -1. */
void surpool__evq_add(const surpool_pool *p, surpool__evq *q, surpool_event_type type,
                      uint64_t conn_id, int ep, int64_t duration_us, surpool_err code,
                      const char *msg, const char *file, int line);
void surpool__evq_log(const surpool_pool *p, surpool__evq *q, surpool_log_level level,
                      const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void surpool__evq_flush(const surpool_pool *p, surpool__evq *q); /* mu NOT held */
/* Called with the mutex held: if anything is queued, drops the mutex to
 * flush, and takes it again. */
void surpool__evq_flush_dropping(surpool_pool *p, surpool__evq *q);

/* ---- governor.c: connector threads, backoff, the circuit breaker (rules 5
 * and 6 live there). ---- */
/* Make sure a connector will look at the demand: wake an idle one, or start a
 * new one if all are busy and the cap allows. */
void surpool__governor_kick_locked(surpool_pool *p);
/* The error for callers nothing can serve while the circuit is open. */
surpool_err surpool__governor_unavailable_locked(const surpool_pool *p, surpool_error *err);
/* The error a waiter gets when its deadline passes. */
surpool_err surpool__governor_timeout_error_locked(surpool_pool *p, long timeout_ms,
                                                   surpool_error *err);
/* Join every connector thread; the pool is closed and no connect is running. */
void surpool__governor_join(surpool_pool *p);

/* ---- maintainer.c: idle retirement, lifetime, keepalive, leak reports. ---- */
int surpool__maintainer_start(surpool_pool *p); /* 0 or -1 */
void surpool__maintainer_join(surpool_pool *p); /* the pool is closed */
/* The transport said this connection died (any thread, no locks). */
void surpool__pool_conn_died(surpool_pool *pool);

/* pool.c: create with an explicit transport (tests pass the fake one). */
surpool_err surpool__pool_create_with(const surpool_config *cfg,
                                      const surpool__transport_ops *ops, void *transport_arg,
                                      surpool_pool **out, surpool_error *err);

#endif
